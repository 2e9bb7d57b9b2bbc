"""One pass over a run's training images whose result is cached by a hash (bow's vocabulary, colorize's
bin counts).

The training split is the run's (``--data``, else the demo set; ``--val-list`` as the run has it); the
images are the ``eval`` recipe's centre crops at ``--image-size``, in file order, never shuffled, so the
pass is deterministic and its result can be cached under ``$FASTSSL_CACHE/<folder>/`` keyed by what it
depends on. The result is written atomically, so an interrupted pass leaves no cache file.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fastssl.base import checkpoint as ckpt_io
from fastssl.base.cache import cache_dir
from fastssl.base.progress import Progress


def default_device(cfg: dict) -> torch.device:
    """The run's ``device`` (a config key), else cuda when there is one, else cpu."""
    return torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))


class CachedPass:
    """The first ``max_images`` (all when None) training images of ``cfg``'s data, once.

    ``key``: everything besides the data and the image size that the result depends on (hashed with the
    training folder, its image count, the number of images used and ``--image-size``). Use:
    ``cached()`` -> the saved tensor or None; else iterate ``batches(what)`` and ``save(result)``.
    """

    def __init__(self, cfg: dict, folder: str, stem: str, key: tuple, max_images: int | None = None):
        from fastssl.data import dataset_splits, demo_root

        self.cfg = cfg
        root = cfg.get("data") or str(demo_root(seed=0))
        self.src, _ = dataset_splits(root, val_list=cfg.get("val_list"))
        self.n = len(self.src) if max_images is None else min(max_images, len(self.src))
        digest = hashlib.sha256(repr((key, str(self.src.root), len(self.src), self.n, cfg["image_size"], 2))
                                .encode()).hexdigest()[:16]
        self.path: Path = cache_dir() / folder / f"{stem}_{digest}.pt"
        self.device = default_device(cfg)

    def cached(self) -> torch.Tensor | None:
        return torch.load(self.path, map_location="cpu", weights_only=True) if self.path.is_file() else None

    def batches(self, what: str) -> Iterator[torch.Tensor]:
        """The images ``[b, 3, S, S]`` (normalized, on ``self.device``), ``self.n`` in all, with a progress
        bar unless the run is quiet; says on stderr what is computed and where it is cached."""
        from fastssl.data import make_loader

        cfg = self.cfg
        bs = min(256, self.n)
        loader = make_loader(self.src, "eval", batch_size=bs, epoch=0, seed=0, device=self.device,
                             image_size=cfg["image_size"], num_threads=cfg.get("workers") or 1, drop_last=False,
                             shuffle=False)
        n_batches = -(-self.n // bs)
        print(f"fastssl.train: {cfg['method']}: {what} of {self.n} training images (cached in {self.path})",
              file=sys.stderr)
        progress = Progress(n_batches, bs, enabled=not cfg.get("quiet"))
        seen = 0
        try:
            with torch.no_grad():
                for i, (views, _) in enumerate(loader):
                    x = views[0][: self.n - seen]
                    seen += x.shape[0]
                    yield x
                    progress.update(i + 1, prefix=f"{cfg['method']} {what} ", force=seen >= self.n)
                    if seen >= self.n:
                        break
        finally:
            progress.close()

    def save(self, result: torch.Tensor) -> torch.Tensor:
        result = result.cpu()
        ckpt_io.atomic_save(result, self.path)
        return result
