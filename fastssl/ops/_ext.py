"""Build (once) and load the C++/CUDA extension fastssl._C.

Order: an ahead-of-time build installed as `fastssl._C` (``FASTSSL_AOT=1 pip install
--no-build-isolation .``) wins; otherwise the sources in csrc/ are compiled with ninja on first use
into a per-user cache (``$FASTSSL_CACHE`` or ``~/.cache/fastssl``), keyed by a hash of the sources,
the torch version and the flags, under a file lock so concurrent processes (torchrun ranks, pytest
workers) build it once. Loading registers the ``torch.ops.fastssl.*`` operators.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path

from fastssl.base.cache import cache_dir
from fastssl.ops import _build_config as cfg


class ExtensionBuildError(RuntimeError):
    """The C++/CUDA extension could not be compiled or loaded."""


def _build_key(sources: list[Path], flags: list[str], torch_version: str, torch_dir: str | None = None) -> str:
    """The build folder's key: the sources (names and bytes, headers included), the flags, the torch version,
    the Python, and WHERE the build happens and links: the sources' folder and the torch installation
    (``torch_dir``). Two environments with the same torch version but different torch installations (two
    virtual environments), or two checkouts, then build once each into their own folders: a shared folder
    made ninja rebuild whenever the other one had written its build.ninja last (include paths differ)."""
    h = hashlib.sha256()
    h.update(str(cfg.csrc_dir()).encode())
    h.update(str(torch_dir).encode())
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    for header in sorted(cfg.csrc_dir().rglob("*.h")):
        h.update(header.read_bytes())
    h.update(" ".join(flags).encode())
    h.update(torch_version.encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def _jit_build():
    import logging

    import torch
    from filelock import FileLock

    # Importing cpp_extension on a machine without a GPU logs "No CUDA runtime is found, using
    # CUDA_HOME=..." (expected here: we compile CUDA sources we cannot run); keep it off the user's screen.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_log.setLevel(level)

    home = cfg.cuda_home()
    if home:
        # cpp_extension guesses CUDA_HOME once, at import, from `which nvcc` (wrong for a wrapper script
        # such as /usr/local/bin/nvcc: -lcudart then fails to link), and it may have been imported
        # already (torch.compile does). Set both the module global it reads and the env for children.
        os.environ.setdefault("CUDA_HOME", home)
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise ExtensionBuildError(
            f"fastssl: no C++ compiler found (looked for '{cxx}' on PATH). Install one "
            "(e.g. `apt-get install g++`) or set CXX; the extension fastssl._C is built on first use."
        )
    with_cuda, why = cfg.build_cuda(torch.version.cuda)
    sources = cfg.cpp_sources() + (cfg.cuda_sources() if with_cuda else [])
    cflags, nvflags = cfg.cxx_flags(with_cuda), (cfg.nvcc_flags() if with_cuda else [])
    # torch's folder as cpp_extension sees it (abspath, not realpath: its include paths are made the same way)
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    key = _build_key(sources, cflags + nvflags, torch.__version__, torch_dir)
    name = f"fastssl_C_{key}"
    build_dir = cache_dir() / "ext" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(build_dir) + ".lock")
    try:
        lock.acquire(timeout=2)
    except TimeoutError:  # filelock.Timeout subclasses TimeoutError
        # Another process (a torchrun rank, a parallel test) is building it: say so instead of hanging silently.
        print(f"fastssl: waiting for another process to finish building the extension in {build_dir} "
              f"(lock {lock.lock_file})...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        if not (build_dir / f"{name}.so").exists():
            what = "C++ and CUDA" if with_cuda else f"C++ only ({why})"
            print(f"fastssl: compiling the extension fastssl._C ({what}) into {build_dir}; "
                  "first use only, this takes a minute or two...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            mod = cpp_extension.load(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=cflags,
                extra_cuda_cflags=nvflags,
                extra_include_paths=[str(cfg.csrc_dir())],
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=True,
                verbose=os.environ.get("FASTSSL_VERBOSE_BUILD") == "1",
            )
        except Exception as e:  # compiler errors come back as RuntimeError / CalledProcessError
            raise ExtensionBuildError(
                f"fastssl: building the extension in {build_dir} failed: {e}\n"
                "Set FASTSSL_VERBOSE_BUILD=1 for the full compiler output, FASTSSL_SKIP_CUDA=1 to build "
                "the CPU part only."
            ) from e
        if time.time() - t0 > 5:
            print(f"fastssl: extension built in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        lock.release()
    return mod


@lru_cache(maxsize=1)
def load():
    """The extension module (pybind11 part); importing it registers torch.ops.fastssl.*."""
    if os.environ.get("FASTSSL_FORCE_JIT") != "1":
        try:
            from fastssl import _C  # type: ignore[attr-defined]  # the AOT build, if installed

            return _C
        except ImportError:
            pass
    return _jit_build()


def build_info() -> dict:
    """What the loaded extension was compiled with: {'cpu': True, 'cuda': bool, 'cuda_archs': str}."""
    return dict(load().build_info())
