"""Gradient caching: a contrastive step over a batch larger than the activations allow
(``python -m fastssl.train --chunk-size C``).

After Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(GradCache), Alg. 1. A step over the per-process batch of ``b`` images (``b = --batch-size / processes``,
a multiple of ``C``) runs

  (a) the method's ``embed`` (backbone + projector) over the images in chunks of ``C`` without autograd,
      to get all the embeddings ``z`` (``[V*b, D]``, V views);
  (b) the method's ``loss_from_embeddings`` on ``z`` as a leaf (the fused NT-Xent: O(b*D) memory, with
      ``gather=True`` under DDP as in the unchunked step), whose gradient ``dL/dz`` is taken after the
      trainer's all-reduce and non-finite-loss check (so a NaN step still stops before any backward);
  (c) ``embed`` again over each chunk, with autograd, back-propagating that chunk's rows of ``dL/dz``;
      under DDP all chunks but the last run in ``no_sync()``, so the gradients are all-reduced once.

then the trainer's optimizer step. Peak activation memory is that of one chunk; the cost is one extra
forward (about 4/3 of an unchunked step).

Exact semantics (tested in tests/engine/test_gradcache.py):
- Without batch statistics (e.g. a model without BatchNorm) the gradient equals the unchunked step's
  (up to the summation order of floating point).
- BatchNorm is "ghost" batch norm: every pass normalizes a chunk (the ``V*C`` views of C images) with
  that chunk's statistics, in (a) and (c) alike, so the embeddings of (a) are exactly those (c)
  differentiates. Under DDP the BN is global (SyncBatchNorm / fastssl.engine.parallel.GlobalBatchNorm): the
  statistics of chunk ``i`` cover chunk ``i`` of every process (``processes*V*C`` views). The running
  statistics (``running_mean``, ``running_var``, ``num_batches_tracked``: every buffer of the model) are
  restored after (a), so they are updated once per chunk, by (c): a chunked step updates them exactly as
  ``b/C`` consecutive unchunked forward passes over the chunks would.
- Random state: the CPU (and CUDA) generator state is saved before each chunk of (a) and restored
  before the same chunk of (c), so both passes draw the same numbers (dropout, drop-path); after the
  step the generators are where (a) left them: each chunk's draws are consumed once. (The SimCLR
  backbones draw none; under ``--compile`` the compiled graphs of the two passes are not guaranteed to
  consume the generator alike.)
- The embeddings of (a) are computed under the same autocast as (c); ``embed`` must return the rows of
  its views in view-major order (all of view 0, then view 1, ...).

Memory that still grows with the batch: the embeddings and their gradient (2 x V*b*D fp32) and the
batch of views itself, which the data loader delivers whole (V*b*3*H*W: 79 GB in fp32 for b=65536 at
224 px with 2 views).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fastssl.base.errors import ConfigError


def check_config(method_cls, cfg: dict) -> None:
    """ConfigError (one line) when ``--chunk-size`` is set for a method that cannot chunk, or does not
    divide the global ``--batch-size`` (the per-process check is in :class:`GradCache`)."""
    c = cfg.get("chunk_size")
    if not c:
        return
    if not getattr(method_cls, "chunkable", False):
        raise ConfigError(f"--chunk-size: method {cfg['method']!r} cannot be chunked (gradient caching needs a "
                          "loss computed from per-image embeddings, e.g. --method simclr); drop --chunk-size")
    if cfg["batch_size"] % c:
        raise ConfigError(f"--chunk-size {c} does not divide --batch-size {cfg['batch_size']} (the global batch); "
                          "each process's batch must be a whole number of chunks")


class Embedder(nn.Module):
    """What DDP and torch.compile wrap in chunked mode: ``forward(views) = method.embed(views)``."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.method.embed(views)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class GradCache:
    """The chunked step's passes; the trainer calls :meth:`forward` where it would call the model and
    :meth:`backward` where it would call ``loss.backward()``.

    Args:
        method: the Method (``chunkable``, with ``embed`` and ``loss_from_embeddings``).
        chunk_size: images per backbone pass per process (C >= 1).
        local_batch: images per process per step (b); must be a multiple of C.
        device: where the model runs (whose generator state is saved with the CPU one).
    Raises:
        ConfigError: C does not divide b.
    """

    def __init__(self, method: nn.Module, chunk_size: int, local_batch: int, world_size: int,
                 device: torch.device):
        if local_batch % chunk_size:
            raise ConfigError(f"--chunk-size {chunk_size} does not divide the per-process batch {local_batch} "
                              f"(--batch-size {local_batch * world_size} is the global batch over {world_size} "
                              "processes)")
        self.method, self.chunk, self.device = method, chunk_size, device
        self.n_chunks = local_batch // chunk_size
        self._saved = None

    def _chunks(self, views):
        c = self.chunk
        return [[v[i * c:(i + 1) * c] for v in views] for i in range(self.n_chunks)]

    def forward(self, model, views: list[torch.Tensor], labels, autocast) -> tuple[torch.Tensor, dict]:
        """Passes (a) and (b): (loss, metrics) as the method's forward would give them; ``model`` is the
        (DDP-/compile-wrapped) :class:`Embedder`."""
        buffers = [b.detach().clone() for b in self.method.buffers()]
        states, parts = [], []
        with torch.no_grad(), autocast:
            for chunk in self._chunks(views):
                states.append(_rng_state(self.device))
                parts.append(model(chunk).detach())
        with torch.no_grad():
            for b, saved in zip(self.method.buffers(), buffers):
                b.copy_(saved)
        end_state = _rng_state(self.device)
        v = len(views)
        # Each chunk's rows are view-major ([V*C, D]); the whole batch's must be too ([V*b, D]).
        z = torch.cat([p.unflatten(0, (v, self.chunk)) for p in parts], dim=1).flatten(0, 1)
        z = z.requires_grad_(True)
        with autocast:
            loss, metrics = self.method.loss_from_embeddings(z)
        self._saved = (views, z, states, end_state)
        return loss, metrics

    def backward(self, model, scaled_loss: torch.Tensor, autocast) -> None:
        """Pass (c): ``dL/dz`` from (b), then each chunk again with autograd, back-propagating its rows.
        Parameter gradients accumulate; under DDP they are all-reduced with the last chunk."""
        if self._saved is None:
            raise RuntimeError("GradCache.backward without a forward")
        views, z, states, end_state = self._saved
        self._saved = None
        (grad,) = torch.autograd.grad(scaled_loss, z)
        v, b = len(views), views[0].shape[0]
        grad = grad.unflatten(0, (v, b))
        no_sync = getattr(model, "no_sync", None)
        for i, chunk in enumerate(self._chunks(views)):
            last = i == self.n_chunks - 1
            _set_rng_state(states[i], self.device)
            with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
                with autocast:
                    zc = model(chunk)
                zc.backward(grad[:, i * self.chunk:(i + 1) * self.chunk].flatten(0, 1))
        _set_rng_state(end_state, self.device)
