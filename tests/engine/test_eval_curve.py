"""``--eval-every K``: a kNN learning curve at the method's default taps, logged beside the loss, that does
not change what training computes."""

import json

import torch

from fastssl.cli import train as train_cli


def test_eval_every_logs_a_curve_and_leaves_training_unchanged(tiny_args, tmp_path):
    with_curve, without = tmp_path / "curve", tmp_path / "plain"
    assert train_cli.main(tiny_args(with_curve, "--eval-every", "1")) == 0
    assert train_cli.main(tiny_args(without)) == 0
    lines = [json.loads(x) for x in (with_curve / "metrics.jsonl").read_text().splitlines()]
    curve = [x for x in lines if "eval_s" in x]
    # The epoch index of the loss records of the epoch just finished (0-based), so both plot on one axis.
    assert [x["epoch"] for x in curve] == [0, 1]
    epochs = [x["epoch"] for x in lines if "epoch_loss" in x]
    assert epochs == [0, 1]
    assert all({"knn_top1_layer4", "knn_top1_pool"} <= set(x) and x["eval_s"] >= 0 for x in curve)
    # The last point is the final evaluation's learned kNN at the same weights (one computation).
    ev = json.loads((with_curve / "eval.json").read_text())
    assert curve[-1]["knn_top1_pool"] == ev["learned"]["top1"]
    final = next(x for x in lines if "knn_top1_random_init" in x)  # the final evaluation: the same names
    assert final["knn_top1_pool"] == final["knn_top1"] == ev["learned"]["top1"]
    assert curve[-1]["knn_top1_layer4"] == ev["layers"]["taps"]["layer4"]["learned"]["top1"]
    # Training is untouched: the same weights bit for bit, and the same step losses.
    a, b = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (with_curve, without))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[x["loss"] for x in (json.loads(y) for y in (d / "metrics.jsonl").read_text().splitlines())
               if "loss" in x] for d in (with_curve, without)]
    assert losses[0] == losses[1]
    # --eval-every may change on --resume (it does not change what is computed).
    from fastssl.engine.runconfig import RUNTIME_KEYS

    assert "eval_every" in RUNTIME_KEYS
