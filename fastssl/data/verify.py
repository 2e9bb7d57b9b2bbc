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
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastssl.base.argtypes import OneLineErrorParser
from fastssl.data.decode_check import AUTO_VERIFY_MAX, cache_file, check_verified, decode_check  # noqa: F401
from fastssl.data.folders import ImageFolderSource, _stat


def verify_folder(folder: str | os.PathLike, workers: int | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Verify every image of a split folder (``folder/<class>/...``): (number of files, [(path, reason)])."""
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
    from fastssl.base.errors import DataError, print_line

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
        print_line(f"fastssl.data.verify: error: {e}")
        return 2
    for f, r in bad:
        print(f"{f}: {r}")
    print(f"fastssl.data.verify: {total} images under {root} in {time.perf_counter() - t0:.1f} s: "
          f"{len(bad)} bad{' (listed above)' if bad else ''}; results cached for later runs", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
