"""The torch-facing loader: one object = one epoch of one rank, exact and reproducible.

``make_loader(src, recipe, batch_size, epoch, seed, shard_id, num_shards, device, ...)`` returns an
:class:`EpochLoader`. ``len(loader)`` is the exact number of batches it yields; iterating yields
``(views, labels)``: ``views`` a list of NCHW tensors on ``device`` (2 for simclr, 1 otherwise),
float32 normalized (``output="float"``) or uint8 (``output="uint8"``); ``labels`` int64 ``[B]``.

Exactness:
- Order: folders.epoch_shard (a numpy permutation from (seed, epoch), padded by wrap-around to a
  multiple of num_shards, equal strided shards). ``drop_last=True`` drops this rank's last partial
  batch (every rank has the same count, so the same number of batches); ``drop_last=False`` yields it
  smaller.
- Augmentations: the DALI pipeline seed is derived from (seed, epoch, shard_id), so the same arguments
  give bitwise the same batches (on the same device and DALI version), and iterating the same loader
  twice gives the same batches again (each ``__iter__`` builds a fresh pipeline).
- ``skip_batches=n`` (mid-epoch resume) yields exactly batches n.. of the uninterrupted epoch. DALI's
  random state advances per sample as batches are produced, so the only exact way is to run and
  discard the first n batches: resuming costs the decode/augment time of n batches (no model
  compute), e.g. a few seconds per thousand batches on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from .folders import DataError, ImageFolderSource, epoch_shard
from .pipeline import READER_NAME, build_pipeline
from .recipes import get_recipe


def augment_seed(seed: int, epoch: int, shard_id: int) -> int:
    """The DALI pipeline seed for (seed, epoch, shard_id): independent streams, 31-bit."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(shard_id), 0xDA11]).generate_state(1)[0]
               & 0x7FFFFFFF)


class EpochLoader:
    """One epoch of one rank. Build with :func:`make_loader`."""

    def __init__(self, files, labels, *, recipe, opts, batch_size, device, image_size, output, num_threads,
                 seed, skip_batches, drop_last, prefetch_queue_depth=2):
        self.files, self.labels = files, labels
        self.recipe, self.opts = recipe, opts
        self.batch_size = batch_size
        self.device = device
        self.image_size, self.output = image_size, output
        self.num_threads, self.seed = num_threads, seed
        self.drop_last = drop_last
        self.prefetch_queue_depth = prefetch_queue_depth
        self.n_views = recipe.n_views
        self.total_batches = (len(files) // batch_size if drop_last else -(-len(files) // batch_size))
        if not 0 <= skip_batches <= self.total_batches:
            raise ValueError(f"skip_batches={skip_batches} outside [0, {self.total_batches}] for this epoch")
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return self.total_batches - self.skip_batches

    def __iter__(self):
        if len(self) == 0:
            return
        n = self.total_batches * self.batch_size if self.drop_last else len(self.files)
        pipe = build_pipeline(self.files[:n], self.labels[:n], self.recipe, self.opts,
                              device=self.device.type, device_index=self.device.index,
                              image_size=self.image_size, output=self.output, batch_size=self.batch_size,
                              num_threads=self.num_threads, seed=self.seed,
                              prefetch_queue_depth=self.prefetch_queue_depth)
        names = [f"view{i}" for i in range(self.n_views)] + ["label"]
        i = 0
        try:
            it = DALIGenericIterator(pipe, names, reader_name=READER_NAME, auto_reset=False,
                                     last_batch_policy=LastBatchPolicy.PARTIAL, last_batch_padded=False)
            for i, out in enumerate(it):  # noqa: B007  (i is read by the except clause)
                if i < self.skip_batches:
                    continue
                batch = out[0]
                views = [batch[k] for k in names[:-1]]
                if self.device.type == "cpu" or views[0].device != self.device:
                    views = [v.to(self.device, non_blocking=True) for v in views]
                labels = batch["label"].reshape(-1).to(self.device, torch.int64, non_blocking=True)
                yield views, labels
        except RuntimeError as e:
            self._raise_decode_error(e, i)
            raise

    def _raise_decode_error(self, err: RuntimeError, batch: int):
        """DALI's decode errors do not name the file: find it with PIL among the batches in flight."""
        if "decod" not in str(err) and "nvImageCodec" not in str(err):
            return
        from PIL import Image

        lo, hi = batch * self.batch_size, (batch + self.prefetch_queue_depth + 2) * self.batch_size
        bad = []
        for f in dict.fromkeys(self.files[lo:hi]):
            try:
                with Image.open(f) as im:
                    im.load()
            except Exception as pil_err:  # noqa: BLE001  (any failure means undecodable)
                bad.append(f"{f} ({' '.join(str(pil_err).split())})")
        if bad:
            raise DataError(f"image decoding failed in batch {batch} of this epoch; undecodable file(s): "
                            f"{'; '.join(bad)} (delete them, or verify the dataset once with python -m "
                            f"fastssl.data.verify, then run again)") from err

    def __repr__(self) -> str:
        return (f"EpochLoader(recipe={self.recipe.name!r}, files={len(self.files)}, "
                f"batch_size={self.batch_size}, "
                f"batches={len(self)}, device={self.device})")


def make_loader(src: ImageFolderSource, recipe: str = "simclr", batch_size: int = 256, epoch: int = 0,
                seed: int = 0, shard_id: int = 0, num_shards: int = 1, device="cpu", image_size: int = 32,
                num_threads: int = 2, skip_batches: int = 0, drop_last: bool = True, output: str = "float",
                *, recipe_options: dict | None = None, shuffle: bool = True,
                prefetch_queue_depth: int = 2) -> EpochLoader:
    """One epoch of ``src`` for rank ``shard_id`` of ``num_shards``; see the module docstring.

    ``recipe_options`` overrides the recipe's defaults (recipes.py), e.g. ``{"jitter": 0.8, "hue": 0.2}``.
    ``shuffle=False`` keeps the source order (for evaluation / feature extraction).
    """
    rec = get_recipe(recipe)
    opts = rec.options(recipe_options)
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch.cuda.is_available() is False")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if batch_size < 1 or num_shards < 1 or num_threads < 1:
        raise ValueError("batch_size, num_shards and num_threads must be >= 1")
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    if len(src) == 0:
        raise ValueError(f"empty dataset: {src!r}")
    files, labels = epoch_shard(src, epoch=epoch, seed=seed, shard_id=shard_id, num_shards=num_shards,
                                shuffle=shuffle)
    if drop_last and len(files) < batch_size:
        raise ValueError(f"each of {num_shards} shard(s) gets {len(files)} images, fewer than batch_size="
                         f"{batch_size} with drop_last=True: no batch at all (dataset {src.root})")
    return EpochLoader(files, labels, recipe=rec, opts=opts, batch_size=batch_size, device=dev,
                       image_size=image_size, output=output, num_threads=num_threads,
                       seed=augment_seed(seed, epoch, shard_id), skip_batches=skip_batches,
                       drop_last=drop_last, prefetch_queue_depth=prefetch_queue_depth)
