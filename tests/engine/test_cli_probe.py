"""What a new user tried and got wrong answers for (a probe of the CLI): each now ends in one line
``fastssl.train: error: ...`` naming the flag, exit 2, no run folder; and ``--help`` without ``--method``
does not show built-in defaults that every method replaces. Through the real ``python -m fastssl.train``."""

import json
import os
import subprocess
import sys

import pytest

from fastssl.methods import METHODS


def _train(args):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


@pytest.mark.parametrize("extra, needles", [
    # --dry-run-batch alone was silently ignored: a full training run started at --batch-size.
    (["--dry-run-batch", "4"], ["--dry-run-batch 4", "needs --dry-run N"]),
    # fp16 on a CPU trained with loss-scaling noise (skipped first updates, PyTorch's scheduler warning).
    (["--precision", "fp16", "--device", "cpu"], ["--precision fp16", "needs a CUDA device"]),
    # A folder given as the label file / the config was reported as "file not found".
    (["--val-list", "{data}"], ["--val-list", "is a folder"]),
    (["--config", "{data}"], ["--config", "is a folder"]),
    # Another method's preset: "unknown keys" did not say why.
    (["--config", "imagenet/mae"], ["--config imagenet/mae", "config for --method mae", "--method simclr"]),
    # --dry-run-batch was ignored with --chunk-size (the dry run kept the config's batch).
    (["--chunk-size", "4", "--dry-run", "1", "--dry-run-batch", "6"], ["--dry-run-batch 6", "--chunk-size 4"]),
])
def test_one_line_error_and_no_run_folder(tiny_args, tiny_data, tmp_path, extra, needles):
    out = tmp_path / "run"
    r = _train(tiny_args(out, *[str(x).format(data=tiny_data) for x in extra]))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "warning" not in r.stderr.lower(), r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: error: "), r.stderr[-2000:]
    for n in needles:
        assert n in last, (n, last)
    assert not out.exists()


def test_help_without_a_method_does_not_show_defaults_no_run_uses():
    flat = " ".join(_train(["--help"]).stdout.split())
    assert "training epochs (default: set by the method" in flat, flat
    assert "training epochs (default: 100)" not in flat  # the built-in value: every method sets its own
    assert "--method M --help" in flat
    epochs = METHODS["simclr"].defaults["epochs"]
    flat = " ".join(_train(["--method", "simclr", "--help"]).stdout.split())
    assert f"training epochs (default: {epochs})" in flat, flat
    assert "set by the method" not in flat


def test_help_shows_zero_and_method_defaults_of_the_tile_flags():
    # A default of 0.0 was hidden (0.0 == False); the tile methods' image size is theirs (128 px, issue 23).
    flat = " ".join(_train(["--method", "jigsaw", "--help"]).stdout.split())
    assert "random channel) (default: 0.0)" in flat and "(default: 128)" in flat, flat
    flat = " ".join(_train(["--config", "imagenet/jigsaw", "--help"]).stdout.split())
    assert "32 px at the demo's 128 px (default: 64)" in flat, flat  # the preset's --tile


def test_chunked_dry_run_on_a_cpu_measures_two_chunks(tiny_args, tmp_path):
    # A chunked dry run kept the config's whole batch, also on a CPU (imagenet/simclr: 4096 ResNet-50 images a
    # step); on a CPU it now measures 2 chunks per process, and says so.
    out = tmp_path / "dry"
    r = _train(tiny_args(out, "--chunk-size", "4", "--dry-run", "1"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "dryrun.json").read_text())
    assert (res["step_batch_size"], res["config_batch_size"], res["chunk_size"]) == (8, 16, 4)
    assert "2 chunks of 4" in res["reduced_because"]
    assert "SMALLER than the config's 16" in r.stdout


def test_ctrl_c_outside_the_training_loop_is_one_line(tiny_args, tmp_path):
    # SIGINT in the training loop checkpoints and exits 130 (test_train.py); outside it (data checks, set-up,
    # the final kNN) it printed a KeyboardInterrupt traceback. A real SIGINT, raised where train() runs.
    out = tmp_path / "run"
    code = ("import os, runpy, signal, sys, time\n"
            "import fastssl.engine.trainer\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # a terminal's Ctrl-C (not inherited SIG_IGN)
            "def interrupted(cfg):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(60)\n"
            "fastssl.engine.trainer.train = interrupted\n"
            f"sys.argv = ['fastssl.train', *{[str(a) for a in tiny_args(out)]!r}]\n"
            "runpy.run_module('fastssl.train', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: interrupted (SIGINT) outside the training loop"), last
    assert str(out / "last.pt") in last


def test_an_out_that_cannot_be_created_names_the_flag(tiny_args):
    # /proc refuses new folders (also to root, who ignores permission bits): the error said only "No such file
    # or directory: /proc/...", without the flag.
    r = _train(tiny_args("/proc/fastssl-probe-run", "--epochs", "1", "--eval", "none"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: error: --out /proc/fastssl-probe-run: cannot write the run folder"), last
