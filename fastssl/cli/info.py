"""`python -m fastssl.info`: versions, what the extension was built with, which back end each op uses.

Exit status: 0 when the extension fastssl._C was built and loaded (or ``--no-build``); 1 when it was NOT
BUILT, with the reason on the last line (``fastssl.info: error: ...``). ``--require-cuda`` (used by
benches/gpu_check.sh) also fails unless a CUDA device works, the extension's CUDA part was compiled,
and the device's compute capability is among the archs it was compiled for.
"""

from __future__ import annotations

import importlib
import platform
import sys

from fastssl.base.errors import print_line


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report, don't fail
        return f"not available ({type(e).__name__}: {e})"


def _device_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor})"


def cuda_problems(build: dict) -> list[str]:
    """Why the extension cannot serve this machine's CUDA device ([] when it can). ``build`` is
    ``fastssl.ops._ext.build_info()``."""
    import torch

    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if not torch.version.cuda else "torch.cuda.is_available() is False"
        return [f"no CUDA device ({why})"]
    if not build.get("cuda"):
        from fastssl.ops import _build_config as cfg

        return [f"the extension's CUDA part was not compiled ({cfg.build_cuda(torch.version.cuda)[1]})"]
    major, minor = torch.cuda.get_device_capability(0)
    archs = {a.removesuffix("+PTX") for a in str(build.get("cuda_archs", "")).split("/") if a}
    if f"{major}.{minor}" not in archs:
        return [f"the extension was compiled for archs {sorted(archs)}, not for this device's "
                f"{major}.{minor} (set TORCH_CUDA_ARCH_LIST={major}.{minor})"]
    return []


def collect(build: bool = True) -> dict:
    import torch

    import fastssl
    from fastssl import ops
    from fastssl.ops import _build_config as cfg
    from fastssl.ops._backend import forced_backend

    info = {
        "fastssl": fastssl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "triton": _version("triton"),
        "DALI": _version("nvidia.dali"),
        "CUDA device": _device_line(),
        "nvcc": cfg.find_nvcc() or "not found",
    }
    if build:
        from fastssl.ops import _ext

        try:
            b = _ext.build_info()
            if b["cuda"]:
                parts = f"CPU + CUDA (archs {b['cuda_archs']})"
            else:
                parts = f"CPU only ({cfg.build_cuda(torch.version.cuda)[1]})"
            info["extension fastssl._C"] = "built: " + parts
            info["_build"] = b
        except Exception as e:  # noqa: BLE001
            info["extension fastssl._C"] = f"NOT BUILT: {e}"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            info["_error"] = f"the extension fastssl._C is NOT BUILT: {first}"
    backends = {}
    forced = forced_backend()
    # Each op module declares BACKENDS = {op_name: {"cpu": ..., "cuda": ...}}.
    modules = {sys.modules[getattr(ops, name).__module__] for name in ops.__all__}
    for module in sorted(modules, key=lambda m: m.__name__):
        for name, table in getattr(module, "BACKENDS", {}).items():
            backends[name] = (f"{forced} (FASTSSL_BACKEND)" if forced else
                              f"cpu: {table['cpu']} | cuda: {table['cuda']}")
    info["ops"] = backends
    return info


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastssl.info", description=__doc__)
    p.add_argument("--no-build", action="store_true", help="don't build/load the extension")
    p.add_argument("--require-cuda", action="store_true",
                   help="exit 1 unless a CUDA device works and the extension's CUDA part was built for it")
    args = p.parse_args(argv)
    if args.require_cuda and args.no_build:
        p.error("--require-cuda needs the extension: drop --no-build")
    info = collect(build=not args.no_build)
    problems = [info.pop("_error")] if "_error" in info else []
    build = info.pop("_build", None)
    if args.require_cuda and build is not None:
        problems += cuda_problems(build)
    width = max(map(len, info))
    for key, value in info.items():
        if key == "ops":
            print("ops (back end by input device):")
            for op, where in value.items():
                print(f"  {op:<24} {where}")
        else:
            print(f"{key:<{width}}  {value}")
    for problem in problems:
        print_line(f"fastssl.info: error: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
