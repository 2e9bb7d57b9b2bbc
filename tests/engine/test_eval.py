"""`python -m fastssl.eval`: kNN and linear probe of a run, the safetensors backbone export and its loader.

(The kNN / linear-probe computations are tested in test_evaluation.py; the error cases through the real
command in test_cli_errors.py; the printed numbers against an independent kNN in test_numbers.py.)
"""

import pytest
import torch

from fastssl.base.errors import DataError
from fastssl.cli import eval as fe
from fastssl.cli import train as train_cli
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
    assert (meta["arch"], meta["kwargs"], meta["input"], meta["image_size"], meta["method"]) == (
        "resnet18", {"cifar_stem": True, "width": 8, "in_chans": 3, "num_classes": 0, "zero_init_residual": False},
        "rgb", 16, "simclr")  # every constructor argument as built (fastssl issue 22; tests/engine/test_export.py)
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
    # A folder or an empty name as the export: refused the same way, and nothing (no temporary file) is left.
    folder = tmp_path / "exports"
    folder.mkdir()
    for target, said in ((folder, "is a folder"), ("", "needs a file name")):
        r = subprocess.run([sys.executable, "-m", "fastssl.eval", "knn", "--checkpoint", str(run), "--export",
                            str(target), "--workers", "1"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(folder.iterdir()) == [] and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_eval_cli_layers_table_through_python_m(tiny_args, tmp_path):
    """`python -m fastssl.eval knn|linear --layers ...`: one table (every tap, learned vs the run's random
    init, best marked) and its JSON line; the trainer's own final per-layer kNN (eval.json) agrees with it
    at the run's default taps; bad --layers values are one-line errors naming the valid taps."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    def cli(mod, *args, rc=0):
        r = subprocess.run([sys.executable, "-m", mod, *args], capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == rc, r.stderr
        return r

    run = tmp_path / "run"
    train = cli("fastssl.train", *tiny_args(run, "--epochs", "1"))
    saved = json.loads((run / "eval.json").read_text())
    assert list(saved["layers"]["taps"]) == ["layer4", "pool"]  # simclr's default taps ("output")
    assert saved["learned"] == saved["layers"]["taps"]["pool"]["learned"]  # today's keys are the pooled output's
    assert "* " in train.stdout and "layer4" in train.stdout  # the run ends with its per-layer table

    r = cli("fastssl.eval", "knn", "--checkpoint", str(run), "--layers", "all", "--workers", "1")
    res = json.loads(r.stdout.splitlines()[-1])
    layers = res["layers"]
    assert list(layers["taps"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]
    for name in ("layer4", "pool"):  # the same computation as the trainer's final evaluation
        assert layers["taps"][name] == saved["layers"]["taps"][name]
    best = max(layers["taps"], key=lambda n: layers["taps"][n]["learned"]["top1"])
    assert layers["taps"][layers["best"]]["learned"]["top1"] == layers["taps"][best]["learned"]["top1"]
    table = r.stdout.splitlines()
    assert any(line.startswith(f"* {layers['best']}") for line in table)
    assert (res["top1"], res["top5"]) == (saved["learned"]["top1"], saved["learned"]["top5"])
    widths = {n: t["width"] for n, t in layers["taps"].items()}
    assert widths == {"stem": 8 * 16 * 16, "layer1": 8 * 16 * 16, "layer2": 16 * 8 * 8, "layer3": 32 * 4 * 4,
                      "layer4": 64 * 2 * 2, "pool": 64}  # resnet18 width 8, CIFAR stem, 16 px

    r = cli("fastssl.eval", "linear", "--checkpoint", str(run), "--layers", "layer2,pool", "--epochs", "2",
            "--workers", "1")
    assert list(json.loads(r.stdout.splitlines()[-1])["layers"]["taps"]) == ["layer2", "pool"]
    assert "linear per layer" in r.stdout

    for bad, said in ((["--layers", "layer9"], "layer9; the taps of this resnet18 are: stem, layer1"),
                      (["--layers", ","], "--layers"), (["--layers", "pool,pool"], "twice"),
                      (["--layers", "all", "--random-init"], "drop --random-init"),
                      (["--layers", "all,pool"], "'all' stands alone")):
        r = cli("fastssl.eval", "knn", "--checkpoint", str(run), "--workers", "1", *bad, rc=2)
        err = r.stderr.strip()
        assert err.startswith("fastssl.eval: error: ") and "\n" not in err and "Traceback" not in err, err
        assert said in err, err
