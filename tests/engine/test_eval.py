"""`python -m fastssl.eval`: kNN and linear probe of a run, the safetensors backbone export and its loader.

(The kNN / linear-probe computations are tested in test_evaluation.py; the error cases through the real
command in test_cli_errors.py; the printed numbers against an independent kNN in test_numbers.py.)
"""

import pytest
import torch

from fastssl import eval as fe
from fastssl import train as train_cli
from fastssl.errors import DataError
from fastssl.evaluation import backbone_from_checkpoint
from fastssl.models import load_backbone


def test_eval_cli_knn_linear_and_export(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(tiny_args(run, "--epochs", "1", "--eval", "none")) == 0
    capsys.readouterr()
    export = tmp_path / "backbone.safetensors"
    assert fe.main(["knn", "--checkpoint", str(run), "--export", str(export), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "knn: top-1" in out
    # The export rebuilds from its own metadata, without the run's flags, and computes what the run's backbone does.
    model, meta = load_backbone(export)
    assert (meta["arch"], meta["kwargs"], meta["image_size"], meta["method"]) == (
        "resnet18", {"cifar_stem": True, "width": 8}, 16, "simclr")
    ref, _ = backbone_from_checkpoint(run)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x), ref.eval()(x), rtol=0, atol=0)
    # An exported backbone is itself evaluable (its metadata gives the image size; --data the images).
    assert fe.main(["knn", "--checkpoint", str(export), "--data", meta["data"], "--workers", "1"]) == 0
    knn_line = [x for x in out.splitlines() if x.startswith("knn:")]
    assert [x for x in capsys.readouterr().out.splitlines() if x.startswith("knn:")] == knn_line
    assert fe.main(["linear", "--checkpoint", str(run / "last.pt"), "--epochs", "3", "--workers", "1"]) == 0
    assert "linear: top-1" in capsys.readouterr().out


def test_load_backbone_refuses_what_it_cannot_rebuild(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(DataError, match="not found"):
        load_backbone(tmp_path / "none.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(DataError, match="cannot read"):
        load_backbone(tmp_path / "text.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DataError, match="not a fastssl backbone"):
        load_backbone(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"),
              metadata={"format": "fastssl-backbone", "arch": "resnet18", "kwargs": '{"width": 8}'})
    with pytest.raises(DataError, match="do not fit resnet18"):
        load_backbone(tmp_path / "wrong.safetensors")


def test_random_init_baseline_is_the_runs_starting_network(tiny_args, tmp_path):
    """`eval --random-init` evaluates the network the run started from: its kNN equals the random-init kNN
    the trainer itself computed (eval.json), and differs from the learned one; through the real CLI."""
    import json
    import os
    import subprocess
    import sys

    def cli(mod, *args):
        r = subprocess.run([sys.executable, "-m", mod, *args], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert r.returncode == 0, r.stderr
        return r

    run = tmp_path / "run"
    cli("fastssl.train", *tiny_args(run, "--epochs", "1"))
    saved = json.loads((run / "eval.json").read_text())
    rand = json.loads(cli("fastssl.eval", "knn", "--checkpoint", str(run), "--random-init", "--workers", "1")
                      .stdout.splitlines()[-1])
    learned = json.loads(cli("fastssl.eval", "knn", "--checkpoint", str(run), "--workers", "1").stdout.splitlines()[-1])
    assert rand["random_init"] is True and learned["random_init"] is False
    assert rand["top1"] == pytest.approx(saved["random_init"]["top1"], abs=1e-9)
    assert learned["top1"] == pytest.approx(saved["learned"]["top1"], abs=1e-9)
    r = subprocess.run([sys.executable, "-m", "fastssl.eval", "knn", "--checkpoint", str(run), "--random-init",
                        "--export", str(tmp_path / "b.safetensors")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--random-init" in r.stderr


def test_export_is_not_written_when_the_command_fails(tiny_args, tmp_path):
    """`eval --export X` with bad --data / --k stops with one line and leaves no X behind (the export comes
    after every input check); through the real CLI."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fastssl.train", *tiny_args(run, "--epochs", "1", "--eval", "none")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    export = tmp_path / "backbone.safetensors"
    for bad in (["--data", str(tmp_path / "absent")], ["--k", "100000"]):
        r = subprocess.run([sys.executable, "-m", "fastssl.eval", "knn", "--checkpoint", str(run), "--export",
                            str(export), "--workers", "1", *bad], capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith("fastssl.eval: error: ") and len(r.stderr.strip().splitlines()) == 1
        assert not export.exists()
