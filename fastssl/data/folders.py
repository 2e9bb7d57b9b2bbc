"""Dataset discovery and validation, and the per-epoch file lists (pure Python, no DALI).

Layouts accepted by :class:`ImageFolderSource`:

- ImageNet layout ``root/<class>/<image>`` (``split=None``), or ``root/train/<class>/...`` and
  ``root/val/<class>/...`` (``split="train"`` / ``"val"``). Classes are the sorted subfolder names;
  label i is the i-th class. Files are sorted, so ``files``/``labels`` are deterministic.
- A file list: ``ImageFolderSource.from_file_list(root, "list.txt")`` where each non-empty line is
  ``<path relative to root> <integer label>`` (``#`` starts a comment).

Bad data policy (decided once, at start-up, never hours into a run):

- A missing root, a root with no class subfolders, or no image files gives a ``DataError`` (a
  ``ValueError``) naming the path.
- Every file gets a cheap check when the source is built: it must be non-empty, start with the magic
  bytes of a format DALI decodes (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, PNM), and a JPEG must carry
  its end-of-image marker (FF D9) in its last bytes, which catches truncated downloads. Two small
  reads per file, done on a thread pool (about 10 s per million files on a local SSD); pass
  ``validate=False`` to skip it.
- ``on_bad="error"`` (default): fail fast with a ``DataError`` listing the bad files' paths (first 20)
  and their count. ``on_bad="skip"``: drop them, emit one ``UserWarning`` with the count and the
  first paths; ``src.skipped`` keeps the full list.
- A file that passes the check but still fails to decode (corrupt body) makes DALI fail at that
  batch; the loader then decodes the files of the batches in flight with PIL and raises a
  ``DataError`` naming the undecodable file(s), chained to DALI's error. The run stops loudly instead
  of silently substituting data; remove the file and resume (the checkpoint's epoch/batch stay exact).

Per-epoch order (:func:`epoch_shard`): a permutation of the file list drawn with
``numpy.random.default_rng([seed, epoch])`` (identical on every rank), padded by wrapping around to
a multiple of ``num_shards`` (like ``torch.utils.data.DistributedSampler``), then split into
``num_shards`` equal strided shards (rank r takes every num_shards-th file from r). Every file is
seen exactly once per epoch across shards when
``len(files) % num_shards == 0``; otherwise at most ``num_shards - 1`` files are seen twice in that
epoch (different ones each epoch). All ranks get the same number of samples, hence the same number of
batches, so DDP collectives never hang.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fastssl.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm",
                    ".jp2", ".j2k")

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),
    (b"\xff\x4f\xff\x51", "j2k"),
    (b"P5", "pnm"),
    (b"P6", "pnm"),
)


def check_image_file(path: str | os.PathLike) -> str | None:
    """Cheap header check. Returns None when the file looks decodable, else the reason."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            kind = None
            for magic, name in _MAGIC:
                if head.startswith(magic):
                    kind = name
                    break
            if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                kind = "webp"
            if kind is None:
                return "not an image (unknown header)"
            if kind == "jpeg":
                f.seek(max(size - 64, 0))
                if b"\xff\xd9" not in f.read(64):
                    return "truncated JPEG (no end-of-image marker)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def _validate(files: list[str], labels: list[int], on_bad: str, where: Path):
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(check_image_file, files, chunksize=256))
    bad = [(f, r) for f, r in zip(files, reasons) if r is not None]
    if not bad:
        return files, labels, []
    shown = "\n".join(f"  {f}: {r}" for f, r in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    if on_bad == "error":
        raise DataError(f"{len(bad)} bad image file(s) under {where} (pass on_bad='skip' to drop them):\n"
                        f"{shown}{more}")
    warnings.warn(f"skipping {len(bad)} bad image file(s) under {where}:\n{shown}{more}", stacklevel=3)
    keep = [r is None for r in reasons]
    files = [f for f, k in zip(files, keep) if k]
    labels = [lab for lab, k in zip(labels, keep) if k]
    if not files:
        raise DataError(f"no readable image files under {where} (all {len(bad)} were bad)")
    return files, labels, [f for f, _ in bad]


class ImageFolderSource:
    """A sorted, validated list of (file, label) pairs; see the module docstring for layouts/policy.

    Attributes: ``root`` (the folder actually scanned), ``files`` (absolute paths, str), ``labels``
    (ints), ``classes`` (names, index = label), ``skipped`` (bad files dropped with on_bad="skip").
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, *, validate: bool = True,
                 on_bad: str = "error", extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        base = Path(root).expanduser()
        if not base.exists():
            raise DataError(f"dataset path does not exist: {base}")
        if not base.is_dir():
            raise DataError(f"dataset path is not a directory: {base}")
        folder = base / split if split else base
        if split and not folder.is_dir():
            raise DataError(f"split folder {split!r} not found: {folder} "
                            f"(expected {base}/{split}/<class>/...)")
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"no class subfolders in {folder} (expected {folder}/<class>/<image>)")
        exts = tuple(e.lower() for e in extensions)
        files, labels = [], []
        for label, cls in enumerate(classes):
            for dirpath, dirnames, names in os.walk(folder / cls, followlinks=True):
                dirnames.sort()
                for name in sorted(names):
                    if name.lower().endswith(exts) and not name.startswith("."):
                        files.append(os.path.join(dirpath, name))
                        labels.append(label)
        if not files:
            raise DataError(f"no image files ({', '.join(exts[:3])}, ...) in the class folders of {folder}")
        self._init(folder, files, labels, classes, validate, on_bad)

    def _init(self, folder, files, labels, classes, validate, on_bad):
        self.root = folder
        self.classes = list(classes)
        self.skipped: list[str] = []
        if validate:
            files, labels, self.skipped = _validate(files, labels, on_bad, folder)
        self.files: list[str] = list(files)
        self.labels: list[int] = [int(x) for x in labels]

    @classmethod
    def from_file_list(cls, root: str | os.PathLike, list_file: str | os.PathLike, *, validate: bool = True,
                       on_bad: str = "error") -> ImageFolderSource:
        """``list_file`` lines: ``<path relative to root (or absolute)> <int label>``; kept in file order.

        A relative ``list_file`` is looked up under ``root`` first, then the working directory.
        """
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"dataset path does not exist or is not a directory: {base}")
        lf = Path(list_file).expanduser()
        if not lf.is_absolute() and (base / lf).is_file():
            lf = base / lf
        if not lf.is_file():
            raise DataError(f"file list not found: {lf}")
        files, labels = [], []
        for n, line in enumerate(lf.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            path, _, label = line.rpartition(" ")
            try:
                if not path.strip():
                    raise ValueError
                labels.append(int(label))
            except ValueError:
                raise DataError(f"{lf}:{n}: expected '<path> <int label>', got {line!r}") from None
            files.append(str(base / path.strip()))
        if not files:
            raise DataError(f"file list is empty: {lf}")
        if min(labels) < 0:
            raise DataError(f"{lf}: labels must be >= 0")
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DataError(f"{len(missing)} file(s) in {lf} do not exist, e.g. {missing[0]}")
        self = cls.__new__(cls)
        self._init(base, files, labels, [str(i) for i in range(max(labels) + 1)], validate, on_bad)
        return self

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} files, {len(self.classes)} classes)"


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's order of indices 0..n-1: a permutation from (seed, epoch), or arange when not shuffling."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def shard_indices(order: np.ndarray, shard_id: int, num_shards: int) -> np.ndarray:
    """Pad ``order`` by wrapping to a multiple of num_shards; return shard ``shard_id`` (strided).

    Strided (rank r takes order[r::num_shards]) rather than contiguous so that with a per-rank batch
    of B/num_shards, the union of the ranks' step-t batches is exactly the single-process step-t batch
    of size B: a global batch is the same set of images whatever the number of processes.
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    n = len(order)
    per = -(-n // num_shards)
    padded = np.concatenate([order, np.resize(order, per * num_shards - n)])
    return padded[shard_id::num_shards]


def epoch_shard(src: ImageFolderSource, *, epoch: int, seed: int, shard_id: int = 0, num_shards: int = 1,
                shuffle: bool = True) -> tuple[list[str], list[int]]:
    """This rank's (files, labels) for one epoch, in reading order."""
    idx = shard_indices(epoch_order(len(src), seed, epoch, shuffle), shard_id, num_shards)
    return [src.files[i] for i in idx], [src.labels[i] for i in idx]
