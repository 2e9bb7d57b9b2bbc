"""`python -m fastssl.info`: versions, what the extension was built with, which back end each op uses."""

from __future__ import annotations

import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report, don't fail
        return f"not available ({type(e).__name__}: {e})"


def collect(build: bool = True) -> dict:
    import torch

    import fastssl
    from fastssl import _build_config as cfg
    from fastssl import ops
    from fastssl.ops._backend import forced_backend

    info = {
        "fastssl": fastssl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "triton": _version("triton"),
        "DALI": _version("nvidia.dali"),
        "CUDA device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "nvcc": cfg.find_nvcc() or "not found",
    }
    if build:
        from fastssl import _ext

        try:
            b = _ext.build_info()
            if b["cuda"]:
                parts = f"CPU + CUDA (archs {b['cuda_archs']})"
            else:
                parts = f"CPU only ({cfg.build_cuda(torch.version.cuda)[1]})"
            info["extension fastssl._C"] = "built: " + parts
        except Exception as e:  # noqa: BLE001
            info["extension fastssl._C"] = f"NOT BUILT: {e}"
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
    args = p.parse_args(argv)
    info = collect(build=not args.no_build)
    width = max(map(len, info))
    for key, value in info.items():
        if key == "ops":
            print("ops (back end by input device):")
            for op, where in value.items():
                print(f"  {op:<24} {where}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
