"""Full-decode verification of a dataset, done once, in parallel, and cached per file.

    python -m fastssl.data.verify --data ROOT [--workers 16]

Why: the start-up check (folders.check_image_file) reads a file's header and a JPEG's end marker, but
a JPEG whose entropy-coded body is corrupt while its header and end marker are intact passes it, and
DALI's CPU decoder turns it into a flat grey image with only a libjpeg warning on stderr. Only a full,
strict decode finds it: JPEGs are decoded with libjpeg-turbo through ``simplejpeg`` with
``strict=True`` (every libjpeg warning, e.g. "Corrupt JPEG data: premature end of data segment", is an
error); other formats are checked (``verify()``: structure, checksums) and decoded fully with Pillow.

A full decode of ImageNet's 1.28M files takes minutes even in parallel, so it is not repeated at
every start: each result is cached as ``(size, mtime_ns, reason or null)`` keyed by the file's path
relative to the split folder, in ``$FASTSSL_CACHE/verify/<hash of the folder's real path>.json`` (JSON:
data only, never code). A changed file (size or mtime) is verified again.

What a run does (``ImageFolderSource(..., verify="auto")``, the trainer and ``fastssl.eval``): files
already verified use the cached result; when at most ``AUTO_VERIFY_MAX`` files are not yet verified
they are decoded at start (the demo's 7,200 files: a few seconds, once), otherwise the run warns that
N files are unverified, names this command, and goes on (a corrupt body that DALI cannot decode at all
still stops the run with the file's name; one it decodes to grey would not). Bad files follow the
run's ``--on-bad`` policy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastssl.argtypes import OneLineErrorParser

AUTO_VERIFY_MAX = 20_000
_FORMAT = "fastssl-verify"
_VERSION = 1


def decode_check(path: str | os.PathLike) -> str | None:
    """Decode the whole file; None when it decodes cleanly, else the reason (one line).

    JPEG: libjpeg-turbo (simplejpeg, strict: warnings are errors); other formats: Pillow ``load()``.
    Both release the GIL while decoding, so a thread pool runs them in parallel.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if data[:3] == b"\xff\xd8\xff":
        import simplejpeg

        try:
            simplejpeg.decode_jpeg(data, strict=True)
        except Exception as e:  # noqa: BLE001 (any failure means the pixels are not the file's)
            return f"corrupt JPEG data ({' '.join(str(e).split())})"
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # chunk structure and checksums (PNG), which load() alone does not check
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001
        return f"does not decode ({' '.join(str(e).split())})"
    return None


def cache_file(folder: str | os.PathLike) -> Path:
    """Where the verification results of the files under ``folder`` are cached."""
    from fastssl._ext import cache_dir

    key = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]
    return cache_dir() / "verify" / f"{key}.json"


def _load(path: Path, folder: Path) -> dict:
    """The cached entries {relpath: [size, mtime_ns, reason]}; an unreadable or foreign cache is empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") != _VERSION
            or data.get("folder") != os.path.realpath(folder) or not isinstance(data.get("files"), dict)):
        return {}
    return data["files"]


def _save(path: Path, folder: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": _FORMAT, "version": _VERSION, "folder": os.path.realpath(folder),
                               "files": entries}, separators=(",", ":")))
    os.replace(tmp, path)


def _decode_all(files: list[str], workers: int, desc: str) -> list[str | None]:
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool, \
            tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, disable=None, leave=False) as bar:
        out = []
        for r in pool.map(decode_check, files, chunksize=64):
            out.append(r)
            bar.update(1)
    return out


def check_verified(folder: str | os.PathLike, files: list[str], stats: list[tuple], *, force: bool = False,
                   workers: int | None = None) -> list[str | None]:
    """Full-decode results for ``files`` (under ``folder``; ``stats[i] = (size, mtime_ns, ...)``).

    Cached results are reused; the rest are decoded when ``force`` or when there are at most
    ``AUTO_VERIFY_MAX`` of them (results cached), otherwise a ``UserWarning`` names the verify command
    and they count as good. Returns one reason-or-None per file.
    """
    import warnings

    from filelock import FileLock

    folder = Path(folder)
    path = cache_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = [os.path.relpath(f, folder) for f in files]
    with FileLock(str(path) + ".lock"):  # the ranks of one run: the first decodes, the others read
        entries = _load(path, folder)
        out: list[str | None] = [None] * len(files)
        todo = []
        for i, (r, st) in enumerate(zip(rel, stats)):
            e = entries.get(r)
            if isinstance(e, list) and len(e) == 3 and e[0] == st[0] and e[1] == st[1]:
                out[i] = e[2]
            else:
                todo.append(i)
        if not todo:
            return out
        if not force and len(todo) > AUTO_VERIFY_MAX:
            warnings.warn(f"{len(todo)} of {len(files)} images under {folder} have never been fully decoded: a "
                          "JPEG with a corrupt body would reach training as grey pixels. Verify them once "
                          f"(parallel, cached): python -m fastssl.data.verify --data {folder}", stacklevel=3)
            return out
        t0 = time.perf_counter()
        results = _decode_all([files[i] for i in todo], workers or min(32, os.cpu_count() or 1),
                              f"verifying {folder}")
        for i, r in zip(todo, results):
            out[i] = r
            entries[rel[i]] = [stats[i][0], stats[i][1], r]
        _save(path, folder, entries)
        if len(todo) > 1000:
            print(f"fastssl.data.verify: decoded {len(todo)} new image(s) under {folder} in "
                  f"{time.perf_counter() - t0:.1f} s (cached in {path})", file=sys.stderr)
    return out


def verify_folder(folder: str | os.PathLike, workers: int | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Verify every image of a split folder (``folder/<class>/...``): (number of files, [(path, reason)])."""
    from .folders import ImageFolderSource, _stat

    src = ImageFolderSource(folder, validate=False)
    files = src.files
    with ThreadPoolExecutor(max_workers=8) as pool:
        scanned = list(pool.map(_stat, files, chunksize=256))
    bad = [(f, r) for f, (r, st) in zip(files, scanned) if r is not None]
    ok = [(f, st) for f, (r, st) in zip(files, scanned) if r is None]
    reasons = check_verified(folder, [f for f, _ in ok], [st for _, st in ok], force=True, workers=workers)
    bad += [(f, r) for (f, _), r in zip(ok, reasons) if r is not None]
    return len(files), sorted(bad)


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = OneLineErrorParser(prog="python -m fastssl.data.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (train/ [+ val/] of class folders, or class folders)")
    p.add_argument("--workers", type=_workers, default=min(32, os.cpu_count() or 1), help="decoding threads")
    args = p.parse_args(argv)
    from fastssl.errors import DataError

    root = Path(args.data).expanduser()
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()] or [root]
    total, bad = 0, []
    t0 = time.perf_counter()
    try:
        for folder in splits:
            n, b = verify_folder(folder, args.workers)
            total += n
            bad += b
    except DataError as e:
        print(f"fastssl.data.verify: error: {e}", file=sys.stderr)
        return 2
    for f, r in bad:
        print(f"{f}: {r}")
    print(f"fastssl.data.verify: {total} images under {root} in {time.perf_counter() - t0:.1f} s: "
          f"{len(bad)} bad{' (listed above)' if bad else ''}; results cached for later runs", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
