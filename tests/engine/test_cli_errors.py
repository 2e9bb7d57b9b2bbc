"""User errors through the real commands (`python -m fastssl.train` / `fastssl.eval` in a subprocess):
non-zero exit, no traceback, one last line `...fastssl.<cli>: error: ...` naming the flag or path, and no
run folder left behind. Also: opening a checkpoint never runs code; a resume that would change the
schedule is refused."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from fastssl.cli import train as train_cli
from fastssl.data import generate_demo


def _cmd(module, args, env=None):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


def assert_one_line_error(r, code, prog, *needles):
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert f"{prog}: error: " in last, r.stderr[-2000:]
    for n in needles:
        assert str(n) in last, (n, last)
    return last


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """40 train + 24 val images (16 px), and a finished 1-epoch run on them (a real checkpoint)."""
    root = tmp_path_factory.mktemp("small")
    data = generate_demo(root / "data", seed=1, n_train=40, n_val=24, size=16, progress=False)
    run = root / "run"
    assert train_cli.main(_flags(data, run, "--eval", "none", "--epochs", "1")) == 0
    return data, run


def _flags(data, out, *extra):
    return ["--method", "simclr", "--data", str(data), "--width", "8", "--image-size", "16", "--batch-size", "8",
            "--epochs", "1", "--workers", "1", "--proj-hidden", "16", "--proj-dim", "8", "--quiet", "--out", str(out),
            *extra]


@pytest.mark.parametrize("extra,needles", [
    (["--temperature", "0"], ["--temperature", "must be > 0"]),
    (["--proj-dim", "0"], ["--proj-dim", "must be >= 1"]),
    (["--batch-size", "1"], ["--batch-size 1", "at least 2"]),
    (["--lr", "-1"], ["--lr"]),
    (["--seed", "-3"], ["--seed"]),
    (["--momentum", "1"], ["--momentum", "must be in [0, 1)"]),
    (["--arch", "resnet7"], ["--arch", "unknown arch 'resnet7'"]),
    (["--recipe-options", '{"hue_strength": 1}'], ["--recipe-options", "hue_strength"]),
    (["--recipe-options", "[1, 2]"], ["--recipe-options", "JSON object"]),
    (["--recipe-options", '{"scale": [0.9, 0.2]}'], ["--recipe-options", "scale=[0.9, 0.2]", "0 < min <= max <= 1"]),
    (["--recipe-options", '{"flip_p": 1.5}'], ["--recipe-options", "flip_p=1.5", "probability in [0, 1]"]),
    (["--warmup-epochs", "3"], ["--warmup-epochs 3 is longer than --epochs 1"]),
    (["--eval-every", "2"], ["--eval-every 2 is more than --epochs 1", "no point"]),
    (["--data", "/no/such/folder"], ["--data", "/no/such/folder"]),
    (["--resume", "/no/such/run"], ["--resume", "/no/such/run"]),
    (["--out", "A_FILE"], ["is a file, not a run folder"]),
])
def test_bad_flag_is_refused_where_parsed(extra, needles, small, tmp_path):
    data, _ = small
    out = tmp_path / "run"
    (tmp_path / "A_FILE").write_text("x")
    extra = [str(tmp_path / "A_FILE") if a == "A_FILE" else a for a in extra]
    r = _cmd("fastssl.train", _flags(data, out, *extra))
    assert_one_line_error(r, 2, "fastssl.train", *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,needles", [
    # fastssl issue 22, item 3: the backbone's own size rule, for every method (here two), with sizes that work
    (["--method", "simclr", "--arch", "vit_tiny", "--image-size", "50"],
     ["--arch vit_tiny --image-size 50", "not divisible by patch_size (4, 4)", "--image-size 48 or 52 works"]),
    (["--method", "rotation", "--arch", "vit_small", "--image-size", "130"],
     ["--arch vit_small --image-size 130", "--image-size 128 or 144 works"]),
    (["--method", "jigsaw", "--arch", "vit_tiny", "--image-size", "12"],
     ["--arch vit_tiny --tile 3 (its default)", "input size (3, 3)", "--tile 4 works"]),
    # item 4: an image too small for the tile grid names a size that works, not `--tile <= 0`
    (["--method", "jigsaw", "--image-size", "2"],
     ["--image-size 2 is too small", "the smallest --image-size that works with --arch resnet18 is 3"]),
    (["--method", "context", "--arch", "vit_tiny", "--image-size", "2"],
     ["--image-size 2 is too small", "the smallest --image-size that works with --arch vit_tiny is 16"]),
    # item 2: lambda 0 gives the colours the counts never saw an infinite class weight
    (["--method", "colorize", "--rebalance-lambda", "0"], ["argument --rebalance-lambda", "infinite at 0"]),
    (["--method", "colorize", "--image-size", "3"], ["--image-size 3", "needs --image-size >= 4"]),
    (["--method", "mae", "--image-size", "16", "--mask-ratio", "0.01"],
     ["--mask-ratio 0.01 masks none of the 16 patches", "--mask-ratio >= 0.0625"]),
])
def test_sizes_and_weights_that_cannot_work_are_refused_where_parsed(extra, needles, tmp_path):
    out = tmp_path / "run"
    r = _cmd("fastssl.train", [*extra, "--out", out])
    assert_one_line_error(r, 2, "fastssl.train", *needles)
    assert not out.exists()


def test_bad_config_file_value(small, tmp_path):
    data, _ = small
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: simclr\nepochs: 0\n")
    r = _cmd("fastssl.train", ["--config", cfg, "--data", data, "--out", tmp_path / "run"])
    assert_one_line_error(r, 2, "fastssl.train", str(cfg), "--epochs", "must be >= 1")
    cfg.write_text("method: simclr\nepochs: [unclosed\n")
    assert_one_line_error(_cmd("fastssl.train", ["--config", cfg]), 2, "fastssl.train", str(cfg), "YAML")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_dataset(small, tmp_path):
    data, _ = small
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _flags(data, out, "--batch-size", "64"))
    assert_one_line_error(r, 2, "fastssl.train", "--batch-size 64", "40 images")
    assert not out.exists()


def test_out_with_a_checkpoint_and_resume_with_a_changed_flag(small):
    data, run = small
    before = (run / "last.pt").read_bytes()
    r = _cmd("fastssl.train", _flags(data, run))
    assert_one_line_error(r, 2, "fastssl.train", "--out", str(run), "already holds a checkpoint")
    r = _cmd("fastssl.train", _flags(data, run, "--resume", "auto", "--temperature", "0.5"))
    assert_one_line_error(r, 2, "fastssl.train", "config differs", "temperature: checkpoint 0.2 vs now 0.5")
    assert (run / "last.pt").read_bytes() == before


def test_resume_on_a_changed_dataset_is_refused(small, tmp_path):
    """The schedule facts are in the checkpoint: more images (same flags) means other steps per epoch."""
    data, _ = small
    grown = tmp_path / "data"
    shutil.copytree(data, grown)
    run = tmp_path / "run"
    assert train_cli.main(_flags(grown, run, "--eval", "none")) == 0
    for f in sorted(p for p in (grown / "train").rglob("*") if p.is_file())[:16]:
        shutil.copy(f, f.with_name("copy-" + f.name))
    r = _cmd("fastssl.train", _flags(grown, run, "--eval", "none", "--resume", "auto"))
    assert_one_line_error(r, 2, "fastssl.train", "train images: checkpoint 40 vs now 56",
                          "steps per epoch: checkpoint 5 vs now 7")


def test_not_an_image_names_the_file_and_the_flag(small, tmp_path):
    data, _ = small
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    notes = next((bad / "train").iterdir()) / "notes.jpg"
    notes.write_text("remember to buy milk")
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _flags(bad, out))
    assert_one_line_error(r, 1, "fastssl.train", str(notes), "not an image", "--on-bad skip")
    assert not out.exists()
    r = _cmd("fastssl.train", _flags(bad, out, "--on-bad", "skip", "--eval", "none"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"fastssl.train: warning: skipping 1 bad image file(s) under {bad / 'train'}: {notes}" in r.stderr
    r = _cmd("fastssl.eval", ["knn", "--checkpoint", out, "--data", bad, "--workers", 1])
    assert_one_line_error(r, 2, "fastssl.eval", str(notes), "--on-bad skip")
    r = _cmd("fastssl.eval", ["knn", "--checkpoint", out, "--data", bad, "--workers", 1, "--on-bad", "skip"])
    assert r.returncode == 0 and "knn: top-1" in r.stdout, r.stderr[-2000:]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_nothing(small, tmp_path):
    data, run = small
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"model": _Evil(marker), "config": {"method": "simclr"}}, evil / "last.pt")
    r = _cmd("fastssl.eval", ["knn", "--checkpoint", evil])
    assert_one_line_error(r, 2, "fastssl.eval", str(evil / "last.pt"), "nothing in it ran")
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    shutil.copy(evil / "last.pt", out / "last.pt")
    r = _cmd("fastssl.train", _flags(data, out, "--resume", "auto"))
    assert_one_line_error(r, 1, "fastssl.train", str(out / "last.pt"), "not unpickled")
    assert not marker.exists()
    torch.load(evil / "last.pt", weights_only=False)  # the same file under full pickle: the command runs
    assert marker.exists()  # (so the file is a real attack and the refusal above is what stopped it)


@pytest.mark.parametrize("args,needles", [
    (["knn", "--checkpoint", "/no/such/run"], ["checkpoint not found: /no/such/run"]),
    (["knn", "--checkpoint", "RUN", "--k", "0"], ["--k", "must be >= 1"]),
    (["knn", "--checkpoint", "RUN", "--temperature", "0"], ["--temperature", "must be > 0"]),
    (["knn", "--checkpoint", "RUN", "--data", "TRAIN_ONLY"], ["no val/ split"]),
    (["knn", "--checkpoint", "NOT_A_CKPT"], ["cannot read checkpoint"]),
    (["knn", "--checkpoint", "RUN", "--k", "100000"], ["--k 100000 is larger than the", "training images"]),
    (["linear", "--checkpoint", "RUN", "--data", "ONE_CLASS"], ["has 1 class", "at least 2 labelled classes"]),
    (["knn", "--checkpoint", "RUN", "--data", "ONE_CLASS", "--export", "EXPORT"], ["has 1 class"]),
    (["knn", "--checkpoint", "RUN", "--export", "B_TXT"], ["b.txt", "written as safetensors", "b.safetensors"]),
])
def test_eval_errors(args, needles, small, tmp_path):
    data, run = small
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    subs = {"RUN": run, "TRAIN_ONLY": data / "train", "NOT_A_CKPT": tmp_path / "junk.pt",
            "ONE_CLASS": _one_class(data, tmp_path / "one"), "EXPORT": tmp_path / "b.safetensors",
            "B_TXT": tmp_path / "b.txt"}
    r = _cmd("fastssl.eval", [subs.get(a, a) for a in args])
    assert_one_line_error(r, 2, "fastssl.eval", *needles)
    assert not subs["EXPORT"].exists() and not subs["B_TXT"].exists()  # refused before anything is written


def _one_class(data, root):
    """A copy of ``data`` with only its first class (unlabelled images in one folder, as users keep them)."""
    cls = sorted(d.name for d in (data / "train").iterdir())[0]
    for split in ("train", "val"):
        shutil.copytree(data / split / cls, root / split / cls)
    return root


def test_one_class_trains_without_a_meaningless_knn(small, tmp_path):
    """A single class folder trains (SSL needs no labels), but its kNN would read a trivial 100%: the final
    kNN is skipped with a line saying why, and --eval-every (a curve of nothing) is refused up front."""
    data, _ = small
    one = _one_class(data, tmp_path / "one")
    out = tmp_path / "curve"
    r = _cmd("fastssl.train", _flags(one, out, "--batch-size", "2", "--eval-every", "1"))
    assert_one_line_error(r, 2, "fastssl.train", "--eval-every 1", "has 1 class", "at least 2")
    assert not out.exists()
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _flags(one, out, "--batch-size", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "has 1 class" in r.stderr and "skipping the kNN evaluation" in r.stderr
    assert (out / "last.pt").exists() and not (out / "eval.json").exists()


def test_the_training_loop_imports_no_command_line():
    """The trainer raises what the CLIs catch because the error types live in fastssl.base.errors; it must
    not import train.py / eval.py (that cycle made `python -m fastssl.train` print tracebacks)."""
    code = ("import sys, fastssl.engine.trainer, fastssl.evaluation, fastssl.data; "
            "print(sorted(m for m in sys.modules if m in ('fastssl.train', 'fastssl.eval')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_corrupt_jpeg_body_stops_the_run_naming_it(small, tmp_path):
    """Header and end marker intact, body zeroed: DALI would train on flat grey; the run refuses it."""
    data, _ = small
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    victim = sorted(p for p in (bad / "train").rglob("*") if p.is_file())[3]
    raw = victim.read_bytes()  # zero the entropy-coded bytes after the SOS segment, keep the end marker
    sos = raw.index(b"\xff\xda")
    body = sos + 2 + int.from_bytes(raw[sos + 2:sos + 4], "big")
    victim.write_bytes(raw[:body] + bytes(len(raw) - body - 2) + b"\xff\xd9")
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _flags(bad, out), env={"FASTSSL_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(r, 1, "fastssl.train", str(victim), "corrupt JPEG data", "--on-bad skip")
    assert not out.exists()


@pytest.mark.parametrize("module,args", [
    ("fastssl.train", ["--epochs", "0"]),
    ("fastssl.train", ["--method", "colorize", "--soft-k", "10000"]),
    ("fastssl.train", ["--method", "jigsaw", "--tile-norm", "input", "--no-tile-norm"]),  # not a silent winner
    ("fastssl.train", ["--resume", "auto", "--out", "RUN"]),  # no --method: says how to resume with the run's flags
    ("fastssl.eval", ["knn", "--checkpoint", "x", "--k", "0"]),
    ("fastssl.data.verify", ["--no-such-flag"]),
])
def test_parser_errors_are_one_line_without_the_usage_block(module, args):
    r = _cmd(module, args)
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("W1")]  # torch's CUDA_HOME notice
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"{module}: error: "), lines


def test_error_lines_are_single_writes():
    """Every rank under torchrun prints its error at the same moment: each line must reach the pipe as ONE
    write (message and newline together), or two ranks' lines run together (seen in CI). print_line does
    that, and no command line prints an error line another way."""
    import pathlib
    import re

    from fastssl.base.errors import print_line

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, s):
            self.writes.append(s)

        def flush(self):
            pass

    rec = Recorder()
    print_line("fastssl.train: error: x", file=rec)
    assert rec.writes == ["fastssl.train: error: x\n"]
    root = pathlib.Path(__file__).resolve().parents[2] / "fastssl"
    bad = [f"{f.relative_to(root)}:{i}" for f in root.rglob("*.py")
           for i, line in enumerate(f.read_text().splitlines(), 1)
           if re.search(r'print\(f?"fastssl\.[\w.]+: (error|warning)', line)]
    assert not bad, f"error/warning lines printed with print(), not print_line: {bad}"
