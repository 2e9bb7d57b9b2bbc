"""Every number a run reports is checked against an independent computation of what happened.

One tiny in-process run (2 epochs x 6 steps, global batch 16) under a controlled clock that advances
exactly 2 s inside each loss computation and nowhere else: every duration and rate the trainer
reports then has one true value. The loss function is wrapped to record its inputs and output.
"""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_evaluation import knn_reference  # tests/engine is on sys.path (pytest's rootdir-less import)

from fastssl.cli import eval as eval_cli
from fastssl.cli import train as train_cli
from fastssl.data import dataset_splits
from fastssl.engine import trainer
from fastssl.evaluation import extract_features
from fastssl.methods import build_method

STEP_S, BATCH, STEPS_PER_EPOCH, EPOCHS = 2.0, 16, 6, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):
    from fastssl.methods import simclr

    out = tmp_path_factory.mktemp("numbers") / "run"
    clock = {"t": 1000.0}
    calls = []
    real = simclr.nt_xent

    def recording(z1, z2, temperature, **kw):
        loss = real(z1, z2, temperature, **kw)
        calls.append({"loss": loss.item(), "pos_cos": F.cosine_similarity(z1, z2).mean().item()})
        clock["t"] += STEP_S
        return loss

    args = ["--method", "simclr", "--data", str(tiny_data), "--arch", "resnet18", "--width", "8",
            "--image-size", "16", "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--workers", "1",
            "--proj-hidden", "32", "--proj-dim", "16", "--lr", "0.3", "--warmup-epochs", "0.5", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simclr, "nt_xent", recording)
        mp.setattr(trainer, "_clock", lambda: clock["t"])
        import contextlib
        import io

        err, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            assert train_cli.main(args) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(out=out, calls=calls, lines=lines, stderr=err.getvalue(), stdout=stdout.getvalue(), data=tiny_data)


def test_step_records_loss_lr_metrics_and_times(run):
    steps = [x for x in run["lines"] if "loss" in x]
    assert [x["step"] for x in steps] == list(range(1, 13)) and len(run["calls"]) == 12
    total, warmup, base = STEPS_PER_EPOCH * EPOCHS, round(0.5 * STEPS_PER_EPOCH), 0.3 * BATCH / 256
    for rec, call in zip(steps, run["calls"]):
        s = rec["step"] - 1  # the update of step s+1 uses the schedule's value at index s
        factor = (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert rec["lr"] == pytest.approx(base * factor, rel=1e-12), rec
        assert rec["loss"] == call["loss"] and rec["pos_cos"] == pytest.approx(call["pos_cos"], abs=1e-6)
        assert rec["step_s"] == STEP_S and rec["data_s"] == 0.0
        assert rec["epoch"] == s // STEPS_PER_EPOCH


def test_epoch_records(run):
    epochs = [x for x in run["lines"] if "epoch_loss" in x]
    assert len(epochs) == EPOCHS
    for e, rec in enumerate(epochs):
        losses = [c["loss"] for c in run["calls"][e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH]]
        assert rec["epoch_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
        assert rec["images"] == STEPS_PER_EPOCH * BATCH and rec["epoch_s"] == STEPS_PER_EPOCH * STEP_S
        assert rec["img_per_s"] == BATCH / STEP_S
    best = torch.load(run["out"] / "best.pt", weights_only=True)["state"]
    assert best["best_loss"] == min(r["epoch_loss"] for r in epochs)


def test_tensorboard_holds_the_same_numbers(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["out"] / "tb"))
    acc.Reload()
    steps = [x for x in run["lines"] if "loss" in x]
    for key in ("loss", "lr", "pos_cos", "step_s"):
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert got == [(x["step"], pytest.approx(x[key], rel=1e-6)) for x in steps], key
    assert [e.value for e in acc.Scalars("epoch/img_per_s")] == [BATCH / STEP_S] * EPOCHS
    knn = [x for x in run["lines"] if "knn_top1" in x][0]
    assert acc.Scalars("eval/knn_top5")[0].value == pytest.approx(knn["knn_top5"], rel=1e-6)


def test_progress_lines_and_summary(run):
    lines = [x for x in run["stderr"].splitlines() if "/12 [" in x]
    assert lines, run["stderr"]
    for line in lines:  # every line: the true step count, rate and ETA at 2 s per step
        step = int(re.search(r"(\d+)/12 \[", line).group(1))
        assert f"{BATCH / STEP_S:.0f} img/s" in line and "2.00s/step" in line
        elapsed, left = step * STEP_S, (12 - step) * STEP_S
        assert f"[00:{elapsed:02.0f}<00:{left:02.0f}," in line, line
    assert "done at global step 12, 8 img/s (0.50 step/s)" in run["stderr"]


class _Layer4(torch.nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        t = self.t
        y = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        for i in range(1, 5):
            y = getattr(t, f"layer{i}")(y)
        return F.adaptive_avg_pool2d(y, 2).flatten(1)


def _features(run, backbone, src):
    return extract_features(backbone, src, image_size=16, device="cpu", num_threads=1)


def test_eval_json_and_eval_cli_match_an_independent_knn(run, capsys):
    ev = json.loads((run["out"] / "eval.json").read_text())
    ck = torch.load(run["out"] / "last.pt", weights_only=True)
    cfg = ck["config"]
    train_src, val_src = dataset_splits(run["data"])
    learned = build_method("simclr", cfg)
    learned.load_state_dict(ck["model"])
    torch.manual_seed(cfg["seed"])
    random_init = build_method("simclr", cfg)
    for name, m in (("learned", learned), ("random_init", random_init)):
        tr, va = _features(run, m.backbone, train_src), _features(run, m.backbone, val_src)
        assert torch.equal(tr[1], torch.tensor(train_src.labels)) and torch.equal(va[1], torch.tensor(val_src.labels))
        assert ev[name] == knn_reference(*tr, *va, k=20, temperature=0.07), name
    assert (ev["k"], ev["temperature"], ev["val_images"], ev["classes"]) == (20, 0.07, len(val_src), 12)
    # The per-layer kNN at simclr's default taps: layer4 recomputed here by running the trunk by hand and
    # average-pooling its 64 x 2 x 2 map to 2 x 2 (fastssl.evaluation.taps' rule keeps it whole).
    for name, m in (("learned", learned), ("random_init", random_init)):
        stage4 = _Layer4(m.backbone)
        tr, va = _features(run, stage4, train_src), _features(run, stage4, val_src)
        assert tr[0].shape[1] == ev["layers"]["taps"]["layer4"]["width"] == 256
        assert ev["layers"]["taps"]["layer4"][name] == knn_reference(*tr, *va, k=20, temperature=0.07), name
        assert ev["layers"]["taps"]["pool"][name] == ev[name]
    printed = run["stdout"]
    assert f"top-1 {ev['learned']['top1']:6.2f}%  top-5 {ev['learned']['top5']:6.2f}%" in printed
    assert eval_cli.main(["knn", "--checkpoint", str(run["out"]), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    assert {k: res[k] for k in ("top1", "top5")} == ev["learned"]
    assert f"knn: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  ({len(val_src)} val images, 12 classes)" in out
