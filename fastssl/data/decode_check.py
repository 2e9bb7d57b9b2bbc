"""Full-decode checks of image files, cached per file (the machinery behind ``python -m fastssl.data.verify``
and the start-up check of ``ImageFolderSource(..., verify="auto")``; see fastssl.data.verify for why and how)."""


from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastssl.base.atomic import atomic_write_text

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
    from fastssl.base.cache import cache_dir

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
    atomic_write_text(path, json.dumps({"format": _FORMAT, "version": _VERSION, "folder": os.path.realpath(folder),
                                        "files": entries}, separators=(",", ":")))


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
