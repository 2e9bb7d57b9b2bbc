"""Packaging. Metadata is in pyproject.toml; this file holds the package layout (kernels/ is
installed as fastssl.kernels, csrc/ as fastssl/csrc for the JIT build) and the opt-in ahead-of-time
build of the extension:

    FASTSSL_AOT=1 pip install --no-build-isolation .    # compiles fastssl._C now (needs torch)

Without FASTSSL_AOT the extension is compiled on first use (fastssl/_ext.py).
"""

import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# Every package under fastssl/ (layers as folders: base, cli, engine, evaluation, ...), plus kernels/ and csrc/
# installed as fastssl.kernels and fastssl.csrc.
PACKAGES = sorted({*find_packages(include=["fastssl", "fastssl.*"]), "fastssl.kernels", "fastssl.csrc"})


def _aot_extension():
    path = ROOT / "fastssl" / "ops" / "_build_config.py"
    spec = importlib.util.spec_from_file_location("_fastssl_build_config", path)
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda, why = cfg.build_cuda(torch.version.cuda)
    print(f"fastssl: ahead-of-time build of fastssl._C, CUDA: {with_cuda} ({why})")
    csrc = ROOT / "csrc"
    sources = [str(p.relative_to(ROOT)) for p in cfg.cpp_sources(csrc)]
    kwargs = dict(include_dirs=[str(csrc)], extra_compile_args={"cxx": cfg.cxx_flags(with_cuda)})
    if with_cuda:
        sources += [str(p.relative_to(ROOT)) for p in cfg.cuda_sources(csrc)]
        kwargs["extra_compile_args"]["nvcc"] = cfg.nvcc_flags()
        ext = CUDAExtension("fastssl._C", sources, **kwargs)
    else:
        ext = CppExtension("fastssl._C", sources, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _aot_extension() if os.environ.get("FASTSSL_AOT") == "1" else ([], {})

setup(
    packages=PACKAGES,
    package_dir={"fastssl.kernels": "kernels", "fastssl.csrc": "csrc"},
    package_data={"fastssl.csrc": ["*.cpp", "*.h", "cuda/*.cu", "cuda/*.h"],
                  "fastssl": ["configs/*/*.yaml"]},  # the training presets (fastssl.cli.presets)
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
