"""What goes into the extension fastssl._C and with which flags.

Shared by the JIT build (fastssl/ops/_ext.py) and the opt-in ahead-of-time build (setup.py), so both
compile the same sources with the same flags. Imports nothing from fastssl (setup.py loads this
file by path before the package is installed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# sm_80 (A100) and sm_90 (H100/H200) at least; TORCH_CUDA_ARCH_LIST overrides.
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def csrc_dir() -> Path:
    """csrc/ of a source checkout (editable install) or the copy installed as fastssl/csrc."""
    pkg = Path(__file__).resolve().parents[1]  # fastssl/ (this file is fastssl/ops/_build_config.py)
    for cand in (pkg.parent / "csrc", pkg / "csrc"):
        if (cand / "ops.cpp").is_file():
            return cand
    raise FileNotFoundError(f"fastssl: C++ sources not found next to {pkg} (expected csrc/ops.cpp)")


def cpp_sources(root: Path | None = None) -> list[Path]:
    root = root or csrc_dir()
    return sorted(root.glob("*.cpp"))


def cuda_sources(root: Path | None = None) -> list[Path]:
    root = root or csrc_dir()
    return sorted((root / "cuda").glob("*.cu"))


def cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda, else nvcc's ../..

    torch guesses the root from `which nvcc` alone, which is wrong when nvcc on PATH is a wrapper
    script (as /usr/local/bin/nvcc here) and then fails to link -lcudart.
    """
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and (Path(cand) / "bin" / "nvcc").is_file():
            return cand
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def find_nvcc() -> str | None:
    home = cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else None


def cuda_archs() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS


def build_cuda(torch_cuda_version: str | None) -> tuple[bool, str]:
    """(whether to compile csrc/cuda, why). CUDA needs a CUDA build of torch and nvcc."""
    if os.environ.get("FASTSSL_SKIP_CUDA", "0") == "1":
        return False, "FASTSSL_SKIP_CUDA=1"
    if not torch_cuda_version:
        return False, "torch is a CPU-only build"
    if find_nvcc() is None:
        return False, "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch CUDA {torch_cuda_version}, nvcc {find_nvcc()}"


def _archs() -> list[str]:
    return [a for a in cuda_archs().replace(",", ";").replace(" ", ";").split(";") if a]


def _archs_macro() -> str:
    # "/"-separated, unquoted: the shell splits on ";", nvcc on ",", and quotes get mangled.
    return "/".join(_archs())


def cxx_flags(with_cuda: bool) -> list[str]:
    flags = ["-O3"]  # torch adds -std=c++20
    if with_cuda:
        flags.append("-DFASTSSL_WITH_CUDA")
    # Recorded in the binary so `python -m fastssl.info` can say what was built.
    flags.append(f"-DFASTSSL_CUDA_ARCHS={_archs_macro() if with_cuda else 'none'}")
    return flags


def nvcc_flags() -> list[str]:
    flags = ["-O3", "--expt-relaxed-constexpr", "-DFASTSSL_WITH_CUDA",
             f"-DFASTSSL_CUDA_ARCHS={_archs_macro()}"]
    for arch in _archs():
        ptx = arch.endswith("+PTX")
        num = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags
