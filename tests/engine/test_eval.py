"""`python -m fastssl.eval`: kNN and linear probe on frozen features, backbone export."""

import torch

from fastssl import eval as fe
from fastssl import train as train_cli
from fastssl.models import build_backbone


def test_knn_on_clustered_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 5
    ytr, yva = torch.arange(100) % 5, torch.arange(40) % 5
    tr = centers[ytr] + 0.1 * torch.randn(100, 16, generator=g)
    va = centers[yva] + 0.1 * torch.randn(40, 16, generator=g)
    res = fe.knn_classify(tr, ytr, va, yva, k=20, temperature=0.07, num_classes=5, chunk=7)
    assert res == {"top1": 100.0, "top5": 100.0}
    shuffled = fe.knn_classify(tr, ytr[torch.randperm(100, generator=g)], va, yva, k=20)
    assert shuffled["top1"] < 60


def test_linear_probe_separable():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, generator=g)
    xtr, xva = torch.randn(300, 8, generator=g), torch.randn(100, 8, generator=g)
    res = fe.linear_probe(xtr, (xtr @ w).argmax(1), xva, (xva @ w).argmax(1), epochs=30, lr=0.1)
    assert res["top1"] > 90


def test_eval_cli_knn_linear_and_export(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(tiny_args(run, "--epochs", "1", "--eval", "none")) == 0
    capsys.readouterr()
    export = tmp_path / "backbone.pt"
    assert fe.main(["knn", "--checkpoint", str(run), "--export", str(export), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "knn: top-1" in out
    state = torch.load(export)
    bb = build_backbone("resnet18", width=8, cifar_stem=True)
    bb.load_state_dict(state)  # the backbone alone, loadable without fastssl's method wrapper
    assert fe.main(["linear", "--checkpoint", str(run / "last.pt"), "--epochs", "3", "--workers", "1"]) == 0
    assert "linear: top-1" in capsys.readouterr().out
    assert fe.main(["knn", "--checkpoint", str(tmp_path / "missing")]) == 2
