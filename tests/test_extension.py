"""The extension fastssl._C: what got built, how the build is configured, and its failure modes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastssl.ops import _build_config as cfg
from fastssl.ops import _ext


def test_build_info_reports_cpu_and_cuda_parts():
    info = _ext.build_info()
    assert info["cpu"] is True
    want_cuda, why = cfg.build_cuda(torch.version.cuda)
    # CI runs with torch's CUDA build and nvcc: this asserts the CUDA sources compiled and linked.
    assert info["cuda"] is want_cuda, why
    if want_cuda:
        assert info["cuda_archs"].split("/") == cfg._archs()


def test_arch_flags_follow_torch_cuda_arch_list(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    flags = cfg.nvcc_flags()
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90,code=sm_90" in flags
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0+PTX")
    flags = cfg.nvcc_flags()
    assert "-gencode=arch=compute_86,code=sm_86" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags
    assert not any("sm_80" in f for f in flags)


def test_skip_cuda_env(monkeypatch):
    monkeypatch.setenv("FASTSSL_SKIP_CUDA", "1")
    assert cfg.build_cuda("13.0") == (False, "FASTSSL_SKIP_CUDA=1")
    monkeypatch.delenv("FASTSSL_SKIP_CUDA")
    assert cfg.build_cuda(None)[0] is False


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(_ext.ExtensionBuildError, match="no C\\+\\+ compiler found"):
        _ext._jit_build()


@pytest.mark.slow
def test_concurrent_first_builds_share_one_build(tmp_path):
    """Two processes building into an empty cache at once: both load, one compiles (file lock)."""
    script = textwrap.dedent(
        """
        from fastssl.ops import _ext
        print(_ext.build_info()["cpu"])
        """
    )
    env = {**__import__("os").environ, "FASTSSL_CACHE": str(tmp_path), "FASTSSL_SKIP_CUDA": "1",
           "FASTSSL_FORCE_JIT": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(o[0].strip() == "True" for o in outs)
    compiled = sum("compiling the extension" in o[1] for o in outs)
    assert compiled >= 1
    # The other one says why it sits still (it waited on the lock while the first compiled), and the
    # import of cpp_extension on this GPU-less machine leaks no "No CUDA runtime is found" log line.
    assert all("compiling the extension" in err or "waiting for another process" in err for _, err in outs), outs
    assert not any("No CUDA runtime" in err for _, err in outs), outs
    built = list((tmp_path / "ext").glob("fastssl_C_*/*.so"))
    assert len(built) == 1, built


def test_cuda_home_is_corrected_when_cpp_extension_was_imported_first(monkeypatch):
    """torch.utils.cpp_extension guesses CUDA_HOME at import (torch.compile imports it early); from a
    wrapper nvcc it guesses wrong and -lcudart fails to link. The build must override the guess."""
    from torch.utils import cpp_extension

    if cfg.cuda_home() is None:
        pytest.skip("no CUDA toolkit on this machine")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/nonexistent-cuda")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    _ext._jit_build()  # loads the cached build (same flags), or rebuilds correctly
    assert cpp_extension.CUDA_HOME == cfg.cuda_home()


def test_build_key_follows_the_torch_installation_and_the_sources_folder(monkeypatch):
    sources = cfg.cpp_sources()
    key = _ext._build_key(sources, ["-O3"], "2.14.1", "/venv-a/site-packages/torch")
    assert key == _ext._build_key(sources, ["-O3"], "2.14.1", "/venv-a/site-packages/torch")
    assert key != _ext._build_key(sources, ["-O3"], "2.14.1", "/venv-b/site-packages/torch")  # same version
    assert key != _ext._build_key(sources, ["-O2"], "2.14.1", "/venv-a/site-packages/torch")
    monkeypatch.setattr(cfg, "csrc_dir", lambda: Path("/another/checkout/csrc"))
    assert key != _ext._build_key(sources, ["-O3"], "2.14.1", "/venv-a/site-packages/torch")


@pytest.mark.slow
def test_two_torch_installations_each_build_once_then_load_without_compiling(tmp_path):
    """Two environments with the same torch version alternate (A, B, A, B): each compiles once, into its own
    folder, and then loads without compiling. Environment B sees torch through another site-packages folder
    (a symlink: cpp_extension then writes other include paths into build.ninja, as a second virtual
    environment does); with one shared build folder ninja rebuilt at every switch."""
    import os

    import torch

    site_b = tmp_path / "site-b"
    site_b.mkdir()
    (site_b / "torch").symlink_to(Path(torch.__file__).parent)
    script = "from fastssl.ops import _ext; import torch; print(_ext.build_info()['cpu'], torch.__file__)"
    base = {**os.environ, "FASTSSL_CACHE": str(tmp_path / "cache"), "FASTSSL_SKIP_CUDA": "1",
            "FASTSSL_FORCE_JIT": "1"}
    envs = {"A": base, "B": {**base, "PYTHONPATH": os.pathsep.join([str(site_b), base.get("PYTHONPATH", "")])}}
    compiled = []
    for name in "ABAB":
        p = subprocess.run([sys.executable, "-c", script], env=envs[name], capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split()[0] == "True"
        assert (str(site_b) in p.stdout) == (name == "B")
        compiled.append("compiling the extension" in p.stderr)
    assert compiled == [True, True, False, False], compiled
    assert len(list((tmp_path / "cache" / "ext").glob("fastssl_C_*/*.so"))) == 2
