"""`python -m fastssl.train`: a tiny end-to-end run, exact resume after SIGKILL, signals, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import nan_loss_at_call, run_train, step_losses

from fastssl.cli import train as train_cli

_run = functools.partial(run_train, timeout=600)


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_help_lists_the_cli():
    r = _run(["--help"])
    assert r.returncode == 0
    for flag in ["--method", "--data", "--arch", "--epochs", "--batch-size", "--lr", "--out", "--optimizer",
                 "--precision", "--compile", "--seed", "--resume", "--workers", "--config", "--ckpt-every"]:
        assert flag in r.stdout, flag
    r = _run(["--method", "simclr", "--help"])
    assert "--temperature" in r.stdout


def test_tiny_run_writes_the_run_folder(tiny_args, tmp_path, capsys):
    # SimCLR's flags; every other method has its own tiny `python -m fastssl.train` run in its tests.
    out = tmp_path / "run"
    args = tiny_args(out)
    assert train_cli.main(args) == 0
    for name in ["config.json", "metrics.jsonl", "last.pt", "best.pt", "eval.json"]:
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "step" in x and "loss" in x]
    assert [x["step"] for x in steps] == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in steps)
    assert len([x for x in lines if "epoch_loss" in x]) == 2
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev) == {"learned", "random_init", "k", "temperature", "train_images", "val_images", "classes", "layers"}
    assert ev["layers"]["taps"]["pool"]["learned"] == ev["learned"]  # today's keys are the pooled output's
    assert 0 <= ev["learned"]["top1"] <= ev["learned"]["top5"] <= 100
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["state"]["epoch"] == 2 and ck["state"]["global_step"] == 12
    assert set(ck) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config", "state", "schedule"}
    assert ck["schedule"] == {"world_size": 1, "train_images": 96, "steps_per_epoch": 6, "total_steps": 12}
    assert "random init" in capsys.readouterr().out


def test_resume_after_sigkill_matches_uninterrupted(tiny_args, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = _run(tiny_args(a, "--eval", "none"))
    assert ra.returncode == 0, ra.stderr
    # Killed by SIGKILL after global step 9 (mid epoch 2); the last checkpoint is from step 8.
    rb = _run(tiny_args(b, "--eval", "none", "--ckpt-every", "4"), env={"FASTSSL_DEBUG_SIGKILL_AT_STEP": "9"})
    assert rb.returncode == -signal.SIGKILL, rb.stderr
    state = torch.load(b / "last.pt", weights_only=True)["state"]
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (8, 1, 2)
    rc = _run(tiny_args(b, "--eval", "none", "--ckpt-every", "4", "--resume", "auto"))
    assert rc.returncode == 0, rc.stderr
    assert "resumed from" in rc.stderr
    assert "done at global step 12 (4 this session)" in rc.stderr  # 12 steps in all, 8 were done before
    wa, wb = _model(a / "last.pt"), _model(b / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    loss_a = {x["step"]: x["loss"] for x in la if "loss" in x}
    loss_b = {x["step"]: x["loss"] for x in lb if "loss" in x}  # step 9 appears twice: same value
    assert loss_a == loss_b


def test_sigterm_checkpoints_then_exits(tiny_args, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(out, "--eval", "none", "--epochs", "50")
    p = subprocess.Popen([sys.executable, "-m", "fastssl.train", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().strip()):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal" in err
    state = torch.load(out / "last.pt", weights_only=True)["state"]
    assert state["global_step"] >= 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_args, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    nan_loss_at_call(monkeypatch, 5)
    assert train_cli.main(tiny_args(out, "--ckpt-every", "2", "--eval", "none")) == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "last good checkpoint" in err
    state = torch.load(out / "last.pt", weights_only=True)["state"]
    assert state["global_step"] == 4  # the step-5 update never happened, nothing overwrote step 4


@pytest.mark.parametrize(
    "extra,code,message",
    [
        (["--method", "nope"], 2, "unknown method 'nope'"),
        (["--batch-size", "4096"], 2, "larger than the dataset"),
        (["--data", "/no/such/folder"], 2, "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(extra, code, message, tiny_args, tmp_path, capsys):
    args = tiny_args(tmp_path / "run")
    for i in range(0, len(extra), 2):  # override, don't append: argparse keeps the last one anyway
        args += extra[i:i + 2]
    assert train_cli.main(args) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_with_incompatible_config_and_no_silent_overwrite(tiny_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(tiny_args(out, "--epochs", "1", "--eval", "none")) == 0
    before = (out / "last.pt").read_bytes()
    assert train_cli.main(tiny_args(out, "--epochs", "1", "--width", "16", "--resume", "auto")) == 2
    assert "config differs" in capsys.readouterr().err
    assert train_cli.main(tiny_args(out, "--epochs", "1")) == 2  # same folder without --resume
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before


def test_config_file_reproduces_the_flags(tiny_args, tmp_path):
    cfg = train_cli.parse_config(tiny_args(tmp_path / "a", "--temperature", "0.3"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    again = train_cli.parse_config(["--config", str(path)])
    assert again.pop("config") == str(path)
    cfg.pop("config")
    assert again == cfg
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("method: simclr\nepochs: 3\ntemperature: 0.5\n")
    c = train_cli.parse_config(["--config", str(yaml_path), "--epochs", "4"])
    assert (c["epochs"], c["temperature"]) == (4, 0.5)  # the command line wins over the file


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(tmp_path):
    """The issue's case: 47 images, global batch 16, killed after step 1 in 1 process, resumed with
    torchrun --nproc_per_node 2: the epoch would have 3 steps instead of 2 (wrap-around padding) and
    the LR schedule would change, so the resume is refused with a line naming both differences."""
    from fastssl.data import generate_demo

    data = generate_demo(tmp_path / "data", seed=2, n_train=47, n_val=12, size=16, progress=False)
    out = tmp_path / "run"
    flags = ["--method", "simclr", "--data", str(data), "--width", "8", "--image-size", "16", "--batch-size", "16",
             "--epochs", "2", "--workers", "1", "--proj-hidden", "16", "--proj-dim", "8", "--quiet",
             "--eval", "none", "--ckpt-every", "1", "--out", str(out)]
    r = _run(flags, env={"FASTSSL_DEBUG_SIGKILL_AT_STEP": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert torch.load(out / "last.pt", weights_only=True)["schedule"]["steps_per_epoch"] == 2
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29563", "-m", "fastssl.train", *flags, "--resume", "auto"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ours = two.stderr.split("torch/distributed/elastic")[0]  # what follows is torchrun's own report
    assert two.returncode != 0 and "Traceback" not in ours, two.stderr[-3000:]
    lines = [x for x in ours.splitlines() if x.startswith("fastssl.")]
    assert len(lines) == 2 and all(x.startswith("fastssl.train: error: --resume ") for x in lines), ours  # per rank
    assert "world size: checkpoint 1 vs now 2" in lines[0] and "steps per epoch: checkpoint 2 vs now 3" in lines[0]
    assert torch.load(out / "last.pt", weights_only=True)["state"]["global_step"] == 1


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_args, tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 16 = 2 x 8, vs 1 process with batch 16: the
    same loss curve. Deterministic views (no random augmentation) so both see identical inputs."""
    fixed = json.dumps({"scale": [1, 1], "ratio": [1, 1], "flip_p": 0, "jitter_p": 0, "gray_p": 0,
                        "blur_p": [0, 0], "solarize_p": [0, 0]})
    common = ["--eval", "none", "--epochs", "1", "--recipe-options", fixed]
    one = _run(tiny_args(tmp_path / "one", *common))
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29561", "-m", "fastssl.train", *tiny_args(tmp_path / "two", *common)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if '"loss"' in x]

    l1, l2 = losses("one"), losses("two")
    assert len(l1) == len(l2) == 6
    assert torch.allclose(torch.tensor(l1), torch.tensor(l2), rtol=1e-3, atol=1e-4), (l1, l2)


@pytest.mark.parametrize("arch,optimizer,precision", [("vit_tiny", "adamw", "fp32"), ("resnet18", "sgd", "bf16")])
def test_other_arch_optimizer_precision(arch, optimizer, precision, tiny_args, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(out, "--arch", arch, "--optimizer", optimizer, "--precision", precision, "--epochs", "1",
                     "--eval", "none", "--lr", "0.001" if optimizer == "adamw" else "0.1")
    assert train_cli.main(args) == 0
    losses = step_losses(out)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["config"]["arch"] == arch and saved["config"]["optimizer"] == optimizer


@pytest.mark.slow
def test_compile_flag_runs(tiny_args, tmp_path):
    """--compile: torch.compile of the method (the fused loss is a graph break; the rest compiles)."""
    out = tmp_path / "run"
    assert train_cli.main(tiny_args(out, "--compile", "--epochs", "1", "--eval", "none")) == 0
    assert torch.load(out / "last.pt", weights_only=True)["state"]["global_step"] == 6
