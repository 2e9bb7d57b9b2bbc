"""Dataset discovery and validation, and the per-epoch file lists (pure Python, no DALI).

Layouts accepted by :class:`ImageFolderSource`:

- ImageNet layout ``root/<class>/<image>`` (``split=None``), or ``root/train/<class>/...`` and
  ``root/val/<class>/...`` (``split="train"`` / ``"val"``). Classes are the sorted subfolder names;
  label i is the i-th class; :func:`dataset_splits` gives the val split the train split's map. Files
  are sorted, so ``files``/``labels`` are deterministic.
- A file list: ``ImageFolderSource.from_file_list(root, "list.txt")`` where each non-empty line is
  ``<path relative to root> <integer label>`` (``#`` starts a comment).

The walk (one rule at every depth): names starting with ``.`` (files or folders, e.g.
``.ipynb_checkpoints``, ``._x.jpg``) are skipped; only image extensions count; symlinks are followed
but a folder is walked once (no cycles, no double walk); a file reached by two paths (symlink, hard
link: same device and inode) is read once, and is a ``DataError`` if the two paths give it two labels.

Bad data policy (decided once, at start-up, never hours into a run):

- A missing root, a root with no class subfolders, or no image files gives a ``DataError`` (a
  ``ValueError``) naming the path.
- Every file gets a cheap check when the source is built: it must be non-empty, start with the magic
  bytes of a format DALI decodes (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, PNM), and a JPEG must carry
  its end-of-image marker (FF D9) in its last bytes, which catches truncated downloads. A stat and two
  small reads per file, on a thread pool (about 10 s per million files on a local SSD).
- Then the full decode (fastssl.data.verify): a JPEG with an intact header and end marker but a
  corrupt body decodes to flat grey in DALI's CPU decoder without an error, so only a strict decode
  of every file finds it. Its results are cached per file (size, mtime); ``verify="auto"`` decodes
  the not-yet-verified files at start when there are at most ``AUTO_VERIFY_MAX`` of them, else warns
  with the command that verifies once, in parallel (``python -m fastssl.data.verify --data ROOT``);
  ``"full"`` always decodes them; ``"off"`` skips it. ``validate=False`` skips every check.
- ``on_bad="error"`` (default): fail fast with a one-line ``DataError`` giving the count and the bad
  files' paths (first 20). ``on_bad="skip"``: drop them, emit one ``UserWarning`` with the count and
  the first paths; ``src.skipped`` keeps the full list.
- A file that still fails to decode in DALI (an unverified large dataset) stops the run at that
  batch with a ``DataError`` naming the file(s) (the loader re-decodes the batches in flight with
  PIL); delete it and start again (the file count is part of the resume check, so a resume refuses).

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

from fastssl.base.errors import DataError
from fastssl.data.vallist import read_val_entries

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


def _stat(path: str) -> tuple[str | None, tuple[int, int, int, int] | None]:
    """(cheap-check reason or None, (size, mtime_ns, st_dev, st_ino) or None if unreadable)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"unreadable ({e.strerror or e})", None
    return check_image_file(path), (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def _report(bad: list[tuple[str, str]], where: Path, on_bad: str, total: int) -> None:
    """Raise (on_bad="error") or warn (on_bad="skip") about bad files in one line: the count, then
    the first 20 paths with their reasons."""
    shown = "; ".join(f"{f} ({r})" for f, r in bad[:20])
    more = f"; ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    if on_bad == "error":
        raise DataError(f"{len(bad)} bad image file(s) under {where} (delete them, or pass --on-bad skip, "
                        f"on_bad='skip' in Python, to leave them out): {shown}{more}")
    warnings.warn(f"skipping {len(bad)} bad image file(s) under {where}: {shown}{more}", stacklevel=4)
    if len(bad) == total:
        raise DataError(f"no readable image files under {where} (all {len(bad)} were bad)")


def _validate(files: list[str], labels: list[int], on_bad: str, where: Path, verify: str):
    """Cheap check of every file, then the full-decode verification (verify.py) where due; drops the
    second path to a file already listed (same device and inode: a symlink or hard link)."""
    from .decode_check import check_verified

    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if verify not in ("auto", "full", "off"):
        raise ValueError(f"verify must be 'auto', 'full' or 'off', got {verify!r}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        scanned = list(pool.map(_stat, files, chunksize=256))
    reasons = [r for r, _ in scanned]
    first: dict[tuple[int, int], int] = {}
    dupes = []
    for i, (_, st) in enumerate(scanned):
        if st is None:
            continue
        j = first.setdefault((st[2], st[3]), i)
        if j != i:
            if labels[j] != labels[i]:
                raise DataError(f"the same image file is listed under two labels ({labels[j]} and {labels[i]}): "
                                f"{files[j]} and {files[i]} (a link?); keep one")
            dupes.append(files[i])
            reasons[i] = "duplicate"
    if dupes:
        warnings.warn(f"{len(dupes)} path(s) under {where} lead to a file already listed (symlink or hard "
                      f"link), each read once: e.g. {dupes[0]}", stacklevel=3)
    if verify != "off":
        ok = [i for i, r in enumerate(reasons) if r is None]
        full = check_verified(where, [files[i] for i in ok], [scanned[i][1] for i in ok], force=verify == "full")
        for i, r in zip(ok, full):
            reasons[i] = r
    bad = [(f, r) for f, r in zip(files, reasons) if r is not None and r != "duplicate"]
    if bad:
        _report(bad, where, on_bad, len(files) - len(dupes))
    keep = [r is None for r in reasons]
    files = [f for f, k in zip(files, keep) if k]
    labels = [lab for lab, k in zip(labels, keep) if k]
    return files, labels, [f for f, _ in bad]


def _is_hidden(name: str) -> bool:
    """The one rule of the folder walk: a file or folder whose name starts with '.' is not data
    (.ipynb_checkpoints, .DS_Store, macOS ._resource forks, .git, .cache, ...)."""
    return name.startswith(".")


def walk_images(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                seen_dirs: set | None = None) -> list[str]:
    """Image files under ``folder`` (recursively, symlinks followed), in sorted walk order.

    Hidden names (``_is_hidden``) are skipped at every depth; a folder reached a second time (a
    symlink cycle, or two links to one folder) is walked once; ``seen_dirs`` carries that memory across
    calls (the class folders of one split). Only names ending in ``extensions`` (any case) count.
    """
    exts = tuple(e.lower() for e in extensions)
    seen_dirs = set() if seen_dirs is None else seen_dirs
    out = []
    top = True
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs and not top:  # the folder asked for is always walked
            dirnames[:] = []
            continue
        top = False
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        out += [os.path.join(dirpath, n) for n in sorted(names) if not _is_hidden(n) and n.lower().endswith(exts)]
    return out


class ImageFolderSource:
    """A sorted, validated list of (file, label) pairs; see the module docstring for layouts/policy.

    Attributes: ``root`` (the folder actually scanned), ``files`` (absolute paths, str), ``labels``
    (ints), ``classes`` (names, index = label), ``skipped`` (bad files dropped with on_bad="skip").

    ``classes``: the class-to-index map to use (a val split takes the train split's ``classes``); a
    class folder not in it is a ``DataError``; classes of the map without a folder simply have no
    images. Default: the sorted class folder names. ``verify``: "auto" | "full" | "off", the
    full-decode verification policy (fastssl.data.verify).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, *, validate: bool = True,
                 on_bad: str = "error", extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                 classes: list[str] | None = None, verify: str = "auto"):
        base = Path(root).expanduser()
        if not base.exists():
            raise DataError(f"dataset path does not exist: {base}")
        if not base.is_dir():
            raise DataError(f"dataset path is not a directory: {base}")
        folder = base / split if split else base
        if split and not folder.is_dir():
            raise DataError(f"split folder {split!r} not found: {folder} "
                            f"(expected {base}/{split}/<class>/...)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not _is_hidden(d.name))
        if not found:
            raise DataError(f"no class subfolders in {folder} (expected {folder}/<class>/<image>)")
        if classes is None:
            classes = found
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(f"class folder(s) {unknown[:5]} in {folder} are not classes of the training split "
                            f"({len(classes)} classes: {', '.join(list(classes)[:5])}, ...)")
        index = {c: i for i, c in enumerate(classes)}
        files, labels = [], []
        # A link inside a class folder that leads back to the split (or its parent, or another class
        # folder) must not pull other classes' images in under this class's label: those folders are
        # marked as seen before the walk, so only their own class walk reads them.
        seen_dirs: set = set()
        for d in [folder, folder.parent, *(folder / c for c in found)]:
            try:
                st = os.stat(d)
                seen_dirs.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        for cls in found:
            got = walk_images(folder / cls, extensions, seen_dirs)
            files += got
            labels += [index[cls]] * len(got)
        if not files:
            raise DataError(f"no image files ({', '.join(extensions[:3])}, ...) in the class folders of {folder}")
        have = set(labels)
        empty = [c for c in found if index[c] not in have]
        if empty:  # a class index with nothing behind it: usually an incomplete copy of the data
            warnings.warn(f"{len(empty)} class folder(s) in {folder} hold no image files (their classes get no "
                          f"training images): {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}",
                          stacklevel=2)
        self._init(folder, files, labels, classes, validate, on_bad, verify)

    def _init(self, folder, files, labels, classes, validate, on_bad, verify="auto"):
        self.root = folder
        self.classes = list(classes)
        self.skipped: list[str] = []
        if validate:
            files, labels, self.skipped = _validate(files, labels, on_bad, folder, verify)
        self.files: list[str] = list(files)
        self.labels: list[int] = [int(x) for x in labels]

    @classmethod
    def from_file_list(cls, root: str | os.PathLike, list_file: str | os.PathLike, *, validate: bool = True,
                       on_bad: str = "error", verify: str = "auto") -> ImageFolderSource:
        """``list_file`` lines: ``<path relative to root (or absolute)> <int label>``; kept in file order.

        A relative ``list_file`` is looked up under ``root`` first, then the working directory. A path
        listed twice is a ``DataError`` naming both lines.
        """
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"dataset path does not exist or is not a directory: {base}")
        lf = Path(list_file).expanduser()
        if not lf.is_absolute() and (base / lf).is_file():
            lf = base / lf
        if not lf.is_file():
            raise DataError(f"file list not found: {lf}")
        files, labels, line_of = [], [], {}
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
            full = os.path.normpath(str(base / path.strip()))
            if full in line_of:
                raise DataError(f"{lf}:{n}: {path.strip()} is already listed on line {line_of[full]}")
            line_of[full] = n
            files.append(full)
        if not files:
            raise DataError(f"file list is empty: {lf}")
        if min(labels) < 0:
            raise DataError(f"{lf}: labels must be >= 0")
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DataError(f"{len(missing)} file(s) in {lf} do not exist, e.g. {missing[0]}")
        self = cls.__new__(cls)
        self._init(base, files, labels, [str(i) for i in range(max(labels) + 1)], validate, on_bad, verify)
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


def read_val_list(list_file: str | os.PathLike, image_root: str | os.PathLike | None, classes: list[str], *,
                  validate: bool = True, on_bad: str = "error", verify: str = "auto") -> ImageFolderSource:
    """The val split named by ``list_file`` (fastssl.data.vallist) as an ``ImageFolderSource`` whose labels
    index ``classes``; files in list order. ``image_root``: where relative names are (None: the list
    file's folder). Raises ``DataError`` (one line) for a bad list (fastssl.data.vallist's refusals)."""
    root, files, labels = read_val_entries(list_file, image_root, classes)
    src = ImageFolderSource.__new__(ImageFolderSource)
    src._init(root, files, labels, classes, validate, on_bad, verify)
    return src


def dataset_splits(root: str | os.PathLike, *, on_bad: str = "error", verify: str = "auto",
                   val_list: str | os.PathLike | None = None):
    """(train source, val source or None) of a dataset root: ``root/train`` (+ ``root/val``) of class
    folders, or ``root/<class>`` (train only). The val split uses the train split's class-to-index map,
    so a val label always means the same class as in training (a val class unknown to train is a
    ``DataError``). ``val_list``: the val split is the label file's images instead (the official flat
    ``val/`` folder; fastssl.data.vallist), relative names under ``root/val`` (else the list's folder)."""
    root = Path(root).expanduser()
    kw = dict(on_bad=on_bad, verify=verify)
    has_train = (root / "train").is_dir()
    train = ImageFolderSource(root, split="train", **kw) if has_train else ImageFolderSource(root, **kw)
    if val_list is not None:
        return train, read_val_list(val_list, root / "val" if (root / "val").is_dir() else None, train.classes,
                                    **kw)
    if has_train and (root / "val").is_dir():
        flat = any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in (root / "val").iterdir())
        if flat and not any(d.is_dir() and not _is_hidden(d.name) for d in (root / "val").iterdir()):
            raise DataError(f"{root / 'val'} holds images but no class folders (the official flat val layout): "
                            "give its labels with --val-list FILE ('<file> <wnid>' lines or Kaggle's "
                            "LOC_val_solution.csv)")
        return train, ImageFolderSource(root, split="val", classes=train.classes, **kw)
    return train, None
