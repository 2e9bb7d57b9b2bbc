"""The GPU check (benches/gpu_check.sh) and its parts, on a machine without a usable GPU: it must fail
with a clear message (never a traceback, never a pass), and each part it relies on must judge right.

The GPU is hidden with CUDA_VISIBLE_DEVICES="" where it matters, so these tests mean the same on a
CUDA machine.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ROOT / "benches"
sys.path.insert(0, str(BENCHES))

import check_cuda_tests  # noqa: E402
import harness  # noqa: E402
import summary  # noqa: E402


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "FASTSSL_COMMIT", "FASTSSL_BENCH_OUT")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, **extra}


def _run_check(tmp_path: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCHES / "gpu_check.sh"), *args], cwd=tmp_path, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


# --- the script -------------------------------------------------------------------------------------

def test_gpu_check_without_a_gpu_fails_with_a_clear_message(tmp_path):
    res, out_dir = tmp_path / "res", tmp_path / "device_out"
    out_dir.mkdir()
    p = _run_check(tmp_path, "res", "abc1234", CUDA_VISIBLE_DEVICES="", OUT=str(out_dir))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "no CUDA device: torch.cuda.is_available() is False" in out
    assert "Traceback" not in out and "GPU CHECK PASSED" not in out
    assert out.rstrip().splitlines()[-1].startswith("GPU CHECK FAILED (1 failure(s)"), out
    assert "commit abc1234" in out
    log = (res / "gpu_check.log").read_text()
    assert "GPU CHECK FAILED" in log and "no CUDA device" in log
    assert (out_dir / "gpu_check.log").read_text() == log  # the device tool brings back $OUT only


_FAKE_BENCH = """
import argparse, sys
sys.path.insert(0, {benches!r})
import harness
ap = argparse.ArgumentParser()
{out_arg}
args = ap.parse_args()
harness.perf_row("{op}", "n=8", "float32", 2.0, "cpu", flops=4e9, out={out_expr})
print("OWED: {op} on a real card")
"""


@pytest.mark.slow
def test_gpu_check_smoke_run_wires_every_step_and_still_fails(tmp_path):
    """GPU_CHECK_SMOKE=1 runs the steps after the GPU probe on the CPU: tests + reports, ceilings, benches
    (with and without --out), the table; skipped CUDA tests and the missing GPU make it fail. Without
    nvidia.dali, as on the GPU machine: the DALI tests and the data bench are OWED, nothing else changes."""
    for name, out_arg, out_expr in (("gpu_fake_out", 'ap.add_argument("--out")', "args.out"),
                                    ("gpu_fake_env", "", "None")):
        (tmp_path / f"{name}.py").write_text(_FAKE_BENCH.format(benches=str(BENCHES), out_arg=out_arg,
                                                                op=name, out_expr=out_expr))
    from fastssl.base.cache import cache_dir

    p = _run_check(tmp_path, "res", "abc1234", CUDA_VISIBLE_DEVICES="", GPU_CHECK_SMOKE="1",
                   FASTSSL_CACHE=str(cache_dir()),  # the extension this session already built
                   PYTHONPATH=_no_dali_pythonpath(tmp_path),
                   GPU_CHECK_TESTS="tests/ops/test_jigsaw_permutations.py",
                   GPU_CHECK_BENCHES=f"{tmp_path}/gpu_fake_*.py {BENCHES}/gpu_train.py {BENCHES}/gpu_data.py")
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert re.search(r"^DALI +not available \(ModuleNotFoundError", out, re.M), out  # python -m fastssl.info
    assert re.search(r"^OWED: CUDA tests under tests/data and tests/imagenet \(nvidia.dali is not", out, re.M), out
    assert re.search(r"^OWED: .*benches/gpu_data.py: the GPU data pipeline rows", out, re.M), out[-3000:]
    lines = out.rstrip().splitlines()
    assert lines[-1].startswith("GPU CHECK FAILED ("), out[-3000:]
    assert "SMOKE RUN (GPU_CHECK_SMOKE=1): no CUDA device" in out
    assert re.search(r"^SKIPPED: tests\.ops\.test_jigsaw_permutations::test_cuda_kernel_matches_cpu", out, re.M), out
    assert re.search(r"^FAILED: .*benches/gpu_train.py \(exit 1\)$", out, re.M), out[-3000:]
    for name in ("gpu_fake_out", "gpu_fake_env"):
        assert re.search(rf"^OWED: .*{name}.py: {name} on a real card$", out, re.M), out[-3000:]
    res = tmp_path / "res"
    assert (res / "pytest_cuda.xml").is_file() and (res / "pytest_extension.xml").is_file()
    ops = [r["op"] for r in harness.read_rows(res)]
    assert ops == [harness.CEILING_COPY, harness.CEILING_MATMUL, "gpu_fake_env", "gpu_fake_out"]
    table = (res / "table.txt").read_text()
    assert "gpu_fake_out" in table and "2 TFLOP/s" in table and "Traceback" not in out


def test_gpu_check_runs_from_a_plain_copy_of_the_tree(tmp_path):
    """As on the GPU machine: no .git, no fastssl/kernels link (git ignores it), the commit from a file."""
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.so", "runs", ".benchmarks", ".pytest_cache", ".ruff_cache", "COMMIT"))
    if (copy / "fastssl" / "kernels").is_symlink():
        (copy / "fastssl" / "kernels").unlink()
    run = lambda: subprocess.run(["bash", "benches/gpu_check.sh", "res"], cwd=copy, capture_output=True, text=True,
                                 env=_env(CUDA_VISIBLE_DEVICES="", PYTHONPATH=""), timeout=300)  # noqa: E731
    p = run()
    assert p.returncode == 1 and "GPU CHECK FAILED: no commit to record" in p.stdout, p.stdout + p.stderr
    (copy / "benches" / "COMMIT").write_text("c0ffee1\n")
    p = run()
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "commit c0ffee1" in out and "created the link fastssl/kernels -> ../kernels" in out
    assert f"fastssl from {copy}/fastssl/__init__.py" in out
    assert "GPU CHECK FAILED: no CUDA device" in out and "Traceback" not in out


def test_gpu_check_needs_a_results_folder(tmp_path):
    p = _run_check(tmp_path)
    assert p.returncode == 2 and "usage: bash benches/gpu_check.sh RESULTS_DIR [COMMIT]" in p.stderr


def test_gpu_check_stops_when_the_tree_cannot_be_imported(tmp_path):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('this torch is broken on purpose')\n")
    p = _run_check(tmp_path, "res", "abc1234", PYTHONPATH=str(fake))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "import torch failed: ImportError: this torch is broken on purpose" in out
    assert "cannot import fastssl and its needs" in out
    assert "Traceback" not in out and "GPU CHECK PASSED" not in out
    assert "=== CUDA device" not in out  # stopped before


def test_the_check_pins_the_arch_of_the_card_and_runs_the_extension_tests_unfiltered():
    script = (BENCHES / "gpu_check.sh").read_text()
    assert re.search(r"^\s*export TORCH_CUDA_ARCH_LIST=\$arch\b", script, re.M)
    assert "local require_cuda=(--require-cuda)" in script
    assert 'fastssl.info ${require_cuda[@]+"${require_cuda[@]}"}' in script
    # Only a smoke run (which always fails) drops --require-cuda.
    smoke = script.index("&& [[ $SMOKE == 1 ]]; then")
    assert script.count("require_cuda=()") == 1 and smoke < script.index("require_cuda=()") < script.index(
        "elif (( rc != 0 ))", smoke)
    assert re.search(r'-m "not slow" tests/test_extension.py', script)
    assert not re.search(r"^[^#\n]*pip install", script, re.M)  # works from the copied tree as it is


def test_device_probe(monkeypatch, capsys):
    import check_device

    assert check_device.main(["--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ARCH=none"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device.main([]) == 1
    assert capsys.readouterr().out.startswith("no CUDA device: ")


# --- python -m fastssl.info ---------------------------------------------------------------------------

def _info(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastssl.info", *args], env=_env(**env), capture_output=True,
                          text=True, timeout=900)


def test_info_exits_nonzero_when_the_extension_is_not_built(tmp_path):
    p = _info(CXX="no-such-compiler-xyz", FASTSSL_FORCE_JIT="1", FASTSSL_CACHE=str(tmp_path))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "NOT BUILT" in p.stdout
    assert p.stderr.rstrip().splitlines()[-1].startswith(
        "fastssl.info: error: the extension fastssl._C is NOT BUILT: fastssl: no C++ compiler found")
    assert "Traceback" not in p.stderr


def test_info_require_cuda_fails_without_a_device(monkeypatch, capsys):
    from fastssl.cli import info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert info.main(["--require-cuda"]) == 1
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("fastssl.info: error: no CUDA device")


def test_info_cuda_problems_name_a_missing_cuda_part_and_a_wrong_arch(monkeypatch):
    from fastssl.cli import info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (8, 6))
    assert info.cuda_problems({"cuda": True, "cuda_archs": "8.6"}) == []
    assert info.cuda_problems({"cuda": True, "cuda_archs": "8.0/8.6+PTX"}) == []
    (wrong,) = info.cuda_problems({"cuda": True, "cuda_archs": "8.0/9.0"})
    assert "not for this device's 8.6" in wrong and "TORCH_CUDA_ARCH_LIST=8.6" in wrong
    (no_cuda,) = info.cuda_problems({"cuda": False, "cuda_archs": "none"})
    assert "CUDA part was not compiled" in no_cuda


# --- judging the CUDA test reports --------------------------------------------------------------------

def _case(classname: str, name: str, outcome: str = "passed") -> dict:
    return {"classname": classname, "name": name, "outcome": outcome, "message": "why"}


OPS = {"nt_xent": ["nt_xent", "info_nce"], "jigsaw_permutations": ["jigsaw_permutations"]}


def test_reports_pass_only_when_every_cuda_op_has_a_passed_test_and_nothing_skipped():
    good = [_case("tests.ops.test_nt_xent", "test_grad[cuda-bf16]"),
            _case("tests.ops.test_jigsaw_permutations", "test_cuda_kernel_matches_cpu[maxmin]")]
    assert check_cuda_tests.problems(good, OPS) == []
    skipped = good + [_case("tests.models.test_models", "test_x[cuda]", "skipped")]
    assert check_cuda_tests.problems(skipped, OPS) == ["SKIPPED: tests.models.test_models::test_x[cuda]  why"]
    failed = good + [_case("tests.ops.test_nt_xent", "test_y[cuda]", "failed")]
    assert check_cuda_tests.problems(failed, OPS) == ["FAILED: tests.ops.test_nt_xent::test_y[cuda]  why"]
    missing = check_cuda_tests.problems(good[:1], OPS)
    assert len(missing) == 1 and missing[0].startswith("NO CUDA TEST: fastssl.ops.jigsaw_permutations")
    # A passed test named after the op counts wherever it lives; a skipped one does not.
    elsewhere = good[:1] + [_case("tests.ops.test_other", "test_jigsaw_permutations_cuda")]
    assert check_cuda_tests.problems(elsewhere, OPS) == []
    assert check_cuda_tests.problems([], OPS)[0] == "no test ran (an empty CUDA run proves nothing)"


def test_the_ops_with_a_cuda_back_end_are_found():
    mods = check_cuda_tests.cuda_op_modules()
    assert "nt_xent" in mods["nt_xent"] and "info_nce" in mods["nt_xent"]
    assert mods["jigsaw_permutations"] == ["jigsaw_permutations"]


def test_a_real_pytest_report_with_a_skip_is_a_failure(tmp_path):
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok():
            assert 1 + 1 == 2
        def test_skip():
            pytest.skip("needs a CUDA device")
    """))
    xml = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_tiny.py"),
                    f"--junitxml={xml}", "-o", "addopts="], cwd=tmp_path, capture_output=True, timeout=120)
    cases = check_cuda_tests.read_junit(xml)
    assert sorted((c["name"], c["outcome"]) for c in cases) == [("test_ok", "passed"), ("test_skip", "skipped")]
    p = subprocess.run([sys.executable, str(BENCHES / "check_cuda_tests.py"), str(xml), "--no-op-coverage"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 1 and "1 passed, 0 failed, 0 error, 1 skipped" in p.stdout
    assert "SKIPPED: test_tiny::test_skip  needs a CUDA device" in p.stdout
    p = subprocess.run([sys.executable, str(BENCHES / "check_cuda_tests.py"), str(tmp_path / "absent.xml")],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 1 and "no report" in p.stdout and "Traceback" not in p.stderr


# --- without DALI (the GPU machine has none) ---------------------------------------------------------
# The GPU check's machine has torch, triton and pytest but no nvidia.dali and no package index. So the
# check's whole path (its imports, every GPU bench, every CUDA test) must run without DALI: it is imported
# only where a DALI pipeline is built or run. The tests below run that path on the CPU in such an
# environment: every Python process started there (benches, pytest, their children) gets a sitecustomize
# that refuses nvidia.dali and logs each attempt, caught or not, with the importing stack.

_NO_DALI = "import sys; sys.modules['nvidia.dali'] = None\n"

_NO_DALI_SITE = '''
"""No nvidia.dali, as on the GPU check's machine (tests/test_gpu_check.py): importing it raises
ModuleNotFoundError, and each attempt is appended with its stack to $FASTSSL_NO_DALI_LOG if set."""
import os
import sys
import traceback


class _NoDali:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "nvidia.dali" and not name.startswith("nvidia.dali."):
            return None
        log = os.environ.get("FASTSSL_NO_DALI_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"import {name} (pid {os.getpid()}, {sys.argv[:3]}):\\n"
                        + "".join(traceback.format_stack(limit=30)[:-1]) + "\\n")
        raise ModuleNotFoundError(f"No module named {name!r} (no DALI here, as on the GPU machine)", name=name)


sys.meta_path.insert(0, _NoDali())
'''


def _no_dali_pythonpath(tmp_path: Path) -> str:
    """PYTHONPATH for the tree with which Python cannot import nvidia.dali (a sitecustomize first on it)."""
    site = tmp_path / "no_dali_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_DALI_SITE)
    return f"{site}{os.pathsep}{ROOT}"


def _no_dali_env(tmp_path: Path, **extra) -> tuple[dict, Path]:
    """(environment, log): Python processes started with it cannot import nvidia.dali; each attempt is
    logged to ``log`` (absent if there was none)."""
    log = tmp_path / "dali_imports.log"
    env = _env(PYTHONPATH=_no_dali_pythonpath(tmp_path), FASTSSL_NO_DALI_LOG=str(log), TRITON_INTERPRET="1",
               PYTHONUNBUFFERED="1", **extra)
    return env, log


def _no_dali_imports(log: Path) -> str:
    return log.read_text()[-4000:] if log.exists() else ""


def test_the_no_dali_environment_refuses_and_logs_dali(tmp_path):
    env, log = _no_dali_env(tmp_path)
    code = ("try:\n    import nvidia.dali\nexcept ImportError as e:\n    print('refused:', e)\n"
            "import fastssl.data\nprint(fastssl.data.RECIPES['simclr'].n_views)\nfastssl.data.make_loader\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.splitlines() == ["refused: No module named 'nvidia.dali' (no DALI here, as on the GPU machine)",
                                     "2"], p.stdout + p.stderr
    assert "ModuleNotFoundError" in p.stderr  # make_loader is the loader, which needs DALI
    imports = _no_dali_imports(log)
    assert re.findall(r"^import (\S+) \(pid", imports, re.M) == ["nvidia.dali", "nvidia.dali"], imports
    assert "fastssl/data/loader.py" in imports and "fastssl/data/recipes.py" not in imports


def test_the_check_imports_work_without_dali():
    code = _NO_DALI + "import fastssl.ops, fastssl.models, fastssl.methods, fastssl.train, fastssl.kernels\n"
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


# Each GPU bench's CPU smoke mode: the same script (argument parsing, the method built from the flags as
# `python -m fastssl.train` builds it, the timing, the rows it records), at toy sizes and 1-2 iterations.
# A new benches/gpu_*.py needs its entry here (or a DALI-only skip in gpu_check.sh).
BENCH_CPU_SMOKE = {
    "gpu_gradcache.py": ["--device", "cpu", "--tiny", "--only", "16"],
    "gpu_jigsaw_permutations.py": ["--device", "cpu", "--k", "20", "--n", "5"],
    "gpu_mae.py": ["--device", "cpu", "--batch", "2", "--rounds", "1"],
    "gpu_nt_xent.py": ["--device", "cpu", "--sizes", "64", "--dtypes", "float32", "--rounds", "1"],
    "gpu_tiles.py": ["--device", "cpu", "--batch", "8", "--rounds", "1"],
    "gpu_train.py": ["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0"],
}


def _check_script_dali_only_benches() -> set[str]:
    """The benches gpu_check.sh skips (as OWED) where nvidia.dali cannot be imported."""
    script = (BENCHES / "gpu_check.sh").read_text()
    return set(re.findall(r"\[\[ \$\{b##\*/\} == (gpu_\w+\.py) && \$has_dali == 0 \]\]", script))


@pytest.mark.slow
def test_every_gpu_bench_runs_on_the_cpu_without_dali(tmp_path):
    """Every benches/gpu_*.py the check runs without DALI, run as gpu_check.sh runs it (`python BENCH`, from
    the tree's root, --out if it takes one, FASTSSL_BENCH_OUT) with its CPU smoke arguments: it must exit 0,
    record rows, and never try to import nvidia.dali."""
    dali_only = _check_script_dali_only_benches()
    assert dali_only == {"gpu_data.py"}, dali_only  # the only bench that runs a DALI pipeline
    on_disk = {p.name for p in BENCHES.glob("gpu_*.py")}
    assert on_disk - dali_only == set(BENCH_CPU_SMOKE), "give every GPU bench its CPU smoke arguments here"
    out = tmp_path / "res"
    env, log = _no_dali_env(tmp_path, FASTSSL_BENCH_OUT=str(out), FASTSSL_COMMIT="abc1234")
    failures, n_rows = [], 0
    for name, args in sorted(BENCH_CPU_SMOKE.items()):
        src = BENCHES / name
        extra = ["--out", str(out)] if '"--out"' in src.read_text() else []
        p = subprocess.run([sys.executable, str(src), *args, *extra], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
        rows = len(harness.read_rows(out)) if out.exists() else 0
        if p.returncode != 0 or "Traceback" in p.stderr:
            failures.append(f"{name} {' '.join(args)}: exit {p.returncode}\n{(p.stdout + p.stderr)[-2500:]}")
        elif rows <= n_rows:
            failures.append(f"{name}: recorded no row\n{p.stdout[-1500:]}")
        n_rows = rows
    assert not failures, "\n\n".join(failures)
    assert not log.exists(), "a GPU bench tried to import nvidia.dali:\n" + _no_dali_imports(log)
    assert {r["commit"] for r in harness.read_rows(out)} == {"abc1234"}


_CPU_TWINS = textwrap.dedent(r'''
    import json, re, sys
    import pytest

    # A CUDA test's parameter id names its device: "...[cuda]" or "...[triton-cuda-...]"; its CPU twin is the
    # same test with this device's CPU counterpart ("cpu", the Triton interpreter), else any non-CUDA id in
    # its place (e.g. "native").
    COUNTERPART = {"cuda": "cpu", "triton-cuda": "triton-interp"}
    TOKEN = re.compile(r"(?<=[\[-])(triton-cuda|cuda)(?=[\]-])")

    class CpuTwins:
        @pytest.hookimpl(trylast=True)
        def pytest_collection_modifyitems(self, config, items):
            by_id = {it.nodeid: it for it in items}
            cpu = [i for i in by_id if by_id[i].get_closest_marker("cuda") is None]
            twins, cuda_only, missing = [], [], []
            for it in items:
                if it.get_closest_marker("cuda") is None:
                    continue
                m = TOKEN.search(it.nodeid)
                if m is None:
                    cuda_only.append(it.nodeid)
                    continue
                head, tail = it.nodeid[:m.start()], it.nodeid[m.end():]
                anyone = re.compile(re.escape(head) + r"[^\]]+?" + re.escape(tail))
                found = [head + COUNTERPART[m.group(1)] + tail] + [i for i in cpu if anyone.fullmatch(i)]
                found = [i for i in found if i in by_id and i in cpu]
                (twins.append(found[0]) if found else missing.append(it.nodeid))
            with open(sys.argv[1], "w") as f:
                json.dump(dict(twins=twins, cuda_only=cuda_only, missing=missing), f, indent=1)
            keep = set(twins)
            config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in keep])
            items[:] = [i for i in items if i.nodeid in keep]

    sys.exit(pytest.main(["-q", "-rfEs", "-p", "no:cacheprovider", "tests", *sys.argv[2:]], plugins=[CpuTwins()]))
''')


@pytest.mark.slow
def test_the_cpu_twin_of_every_cuda_test_passes_without_dali(tmp_path):
    """What `pytest -m cuda tests` runs in the check, run on the CPU where nvidia.dali cannot be imported:
    the whole tree is collected with the check's DALI ignores (a collection error fails), and the CPU
    twin of every CUDA test (the same test, parametrized for the CPU or the Triton interpreter) must pass,
    none skipped, and nothing may try to import DALI. CUDA tests that only exist for CUDA (e.g. "CUDA equals
    CPU") have no twin: their modules are collected here, their bodies run only on the card."""
    script = (BENCHES / "gpu_check.sh").read_text()
    dirs = re.search(r"for d in ([^;]+); do ignore\+=", script).group(1).split()
    assert dirs == ["tests/data", "tests/imagenet"], dirs  # those alone run DALI pipelines
    env, log = _no_dali_env(tmp_path)
    found = tmp_path / "twins.json"
    p = subprocess.run([sys.executable, "-c", _CPU_TWINS, str(found), *[f"--ignore={d}" for d in dirs]], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    out = p.stdout[-4000:] + p.stderr[-3000:]
    assert found.exists(), out  # written at collection
    twins = json.loads(found.read_text())
    assert twins["missing"] == [], f"CUDA tests without a CPU twin: {twins['missing']}"
    assert p.returncode == 0, out
    assert len(twins["twins"]) >= 50 and len(twins["cuda_only"]) >= 10, twins
    assert re.search(rf"^{len(twins['twins'])} passed, \d+ deselected", p.stdout.splitlines()[-1]), out
    assert "tests/test_gradcache.py::test_bf16_autocast_matches_the_chunk_by_chunk_reference[cpu]" in twins["twins"]
    assert "tests/ops/test_nt_xent.py::test_opcheck[native]" in twins["twins"]  # no interpreter variant
    assert not log.exists(), "a test on the check's path tried to import nvidia.dali:\n" + _no_dali_imports(log)


# --- harness: rows, commit, timing helpers, ceilings; the summary table --------------------------------

def test_append_row_writes_to_out_and_upgrades_an_old_header(tmp_path, monkeypatch):
    old_fields = harness.FIELDS[:13]
    path = tmp_path / "dev.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields)
        w.writeheader()
        w.writerow({k: "" for k in old_fields} | {"device": "dev", "op": "old_op", "ms": "1.5"})
    monkeypatch.setenv("FASTSSL_COMMIT", "feed123")
    harness.append_row({"device": "dev", "op": "new_op", "ms": "2.0", "tflops": "3.0"}, out=tmp_path)
    rows = harness.read_rows(tmp_path)
    assert [(r["op"], r["ms"], r["tflops"]) for r in rows] == [("old_op", "1.5", ""), ("new_op", "2.0", "3.0")]
    assert rows[1]["commit"] == "feed123"
    monkeypatch.setenv("FASTSSL_BENCH_OUT", str(tmp_path / "env_out"))
    assert harness.append_row({"device": "dev 2", "op": "x"}) == tmp_path / "env_out" / "dev_2.csv"


def test_commit_comes_from_env_then_the_commit_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSSL_COMMIT", " abc1234 ")
    assert harness.git_commit() == "abc1234"
    monkeypatch.delenv("FASTSSL_COMMIT")
    (tmp_path / "COMMIT").write_text("0badc0de-dirty\nwritten before the copy\n")
    monkeypatch.setattr(harness, "COMMIT_FILE", tmp_path / "COMMIT")
    assert harness.git_commit() == "0badc0de-dirty"


def test_input_sets_cover_twice_the_l2_within_memory():
    mib = 2**20
    assert harness.n_input_sets(10 * mib, l2=50 * mib, free=80 * 2**30) == 10
    assert harness.n_input_sets(1 * mib, l2=50 * mib, free=80 * 2**30) == 64          # capped
    assert harness.n_input_sets(4 * 2**30, l2=50 * mib, free=80 * 2**30) == 2         # at least 2
    assert harness.n_input_sets(30 * 2**30, l2=50 * mib, free=80 * 2**30) == 1        # memory first


def test_bench_ms_and_ceilings_on_cpu(tmp_path):
    calls = []
    ms = harness.bench_ms(lambda a, b: calls.append((a, b)) or a @ b, lambda: (torch.randn(64, 64),
                                                                             torch.randn(64, 64)), "cpu")
    assert ms > 0 and len(calls) >= 6
    c = harness.measure_ceilings("cpu", out=tmp_path)
    assert c["gbps"] > 0 and c["tflops"] > 0
    rows = harness.read_rows(tmp_path)
    assert [r["op"] for r in rows] == [harness.CEILING_COPY, harness.CEILING_MATMUL]
    assert float(rows[0]["gbps"]) == pytest.approx(c["gbps"], abs=0.051)


def test_summary_rates_are_a_percentage_of_the_measured_ceilings(tmp_path):
    dev = "NVIDIA H200"
    rows = [
        dict(device=dev, date="d1", op=harness.CEILING_MATMUL, tflops="800.0"),
        dict(device=dev, date="d1", op=harness.CEILING_COPY, gbps="4000.0"),
        dict(device=dev, date="d2", op="nt_xent_fwd_bwd", shape="N=4096", ms="2.000", ratio="3.500",
             baseline="naive", baseline_ms="7.000", peak_mb="12.3", extra="tflops=200.0;pct_of_ceiling=30.0"),
        dict(device=dev, date="d2", op="mae_unshuffle", gbps="1000.0", ms="0.1"),
        dict(device=dev, date="d3", op="train_simclr_resnet50", ms="150.0", peak_mb="30000.0",
             extra="images_per_s=1707;median step"),
    ]
    cells = {r["op"]: r for r in summary.table_rows(rows)}
    assert cells[harness.CEILING_MATMUL]["%ceil"] == "100.0"
    nt = cells["nt_xent_fwd_bwd"]
    assert (nt["rate"], nt["%ceil"], nt["speed-up"], nt["peak MB"]) == ("200 TFLOP/s", "25.0", "3.50x", "12")
    assert cells["mae_unshuffle"]["%ceil"] == "25.0"
    assert cells["train_simclr_resnet50"]["note"] == "1707 images/s"
    # Without ceiling rows the recorded percentage is shown as recorded.
    assert summary.table_rows(rows[2:3])[0]["%ceil"] == "30.0"
    text = summary.render(rows)
    assert text.splitlines()[0].startswith("NVIDIA H200") and "% " not in text.splitlines()[1]


# --- the training bench --------------------------------------------------------------------------------

def test_gpu_train_rows_for_registered_methods_and_owed_for_the_others(tmp_path, capsys):
    import gpu_train

    from fastssl.methods import METHODS

    assert gpu_train.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--out",
                           str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {r["op"]: r for r in harness.read_rows(tmp_path)}
    for name, target in gpu_train.TARGETS.items():
        if name in METHODS:
            (op,) = [op for op in rows if op.startswith(f"train_{name}_")]
            assert float(rows[op]["ms"]) > 0 and "images_per_s=" in rows[op]["extra"]
        else:
            assert f"OWED: {name} training row ({target['arch']}, {target['image_size']} px)" in out
    assert "simclr" in METHODS and any(op.startswith("train_simclr_resnet18") for op in rows)


def test_gpu_train_without_a_gpu_is_an_error(monkeypatch, capsys):
    import gpu_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_train.main([]) == 1
    assert "gpu_train.py: error: no CUDA device" in capsys.readouterr().err


def test_gpu_jigsaw_bench_smoke_on_cpu(tmp_path, capsys):
    import gpu_jigsaw_permutations

    assert gpu_jigsaw_permutations.main(["--device", "cpu", "--k", "20", "--n", "5", "--out", str(tmp_path)]) == 0
    (row,) = harness.read_rows(tmp_path)
    assert row["op"] == "jigsaw_permutations" and row["shape"] == "k=20,n=5,maxmin"
    assert float(row["ms"]) > 0 and float(row["baseline_ms"]) > 0 and row["baseline"] == "cpu_cxx_kernel"
