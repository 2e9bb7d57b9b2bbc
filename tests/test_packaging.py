"""A normal (non-editable) install must carry kernels/ as fastssl.kernels and the C++ sources."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _copy_tracked(tmp_path):
    """A copy of the tracked files: builds then leave nothing in the checkout."""
    src = tmp_path / "src"
    files = subprocess.check_output(["git", "ls-files"], cwd=ROOT, text=True).split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    return src, files


@pytest.mark.slow
def test_wheel_contains_kernels_and_sources(tmp_path):
    src, files = _copy_tracked(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("fastssl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for want in ["fastssl/__init__.py", "fastssl/kernels/__init__.py", "fastssl/ops/__init__.py",
                 "fastssl/ops/nt_xent/__init__.py", "fastssl/ops/nt_xent/register.py", "fastssl/engine/trainer.py",
                 "fastssl/cli/train.py", "fastssl/base/errors.py", "fastssl/evaluation/taps.py",
                 "fastssl/ops/_build_config.py", "fastssl/csrc/ops.cpp", "fastssl/csrc/hamming_greedy.h",
                 "fastssl/csrc/cuda/hamming_greedy.cu"]:
        assert want in names, f"{want} missing from {wheel.name}"
    assert not any(n.startswith("kernels/") or n.startswith("csrc/") for n in names), "top-level leak"
    for f in files:  # every tracked Triton kernel file is installed
        if f.startswith("kernels/") and f.endswith(".py"):
            assert "fastssl/" + f in names
    presets = [f for f in files if f.startswith("fastssl/configs/") and f.endswith(".yaml")]
    assert presets and all(p in names for p in presets), [p for p in presets if p not in names]
    assert "fastssl/cli/presets.py" in names


@pytest.mark.slow
def test_aot_build_puts_the_extension_in_the_wheel(tmp_path):
    """FASTSSL_AOT=1 compiles fastssl._C at install time (C++ part here, to keep the test short; the
    CUDA part is the same code path, compiled by the JIT build in test_extension.py)."""
    src, _ = _copy_tracked(tmp_path)
    env = {**os.environ, "FASTSSL_AOT": "1", "FASTSSL_SKIP_CUDA": "1", "MAX_JOBS": "2"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=env)
    wheel = next((tmp_path / "dist").glob("fastssl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastssl/_C") and n.endswith(".so") for n in names), names
