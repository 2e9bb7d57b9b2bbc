"""--val-list: the official flat val folder with a label file, read against a written reference; bad lists
end in one line through the real commands, with no run folder left."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastssl.base.errors import DataError
from fastssl.data import dataset_splits
from fastssl.data.folders import read_val_list

# Deliberately not in sorted order: the labels must follow the train split's sorted class folders.
WNIDS = ["n04592741", "n01440764", "n02119789"]
REFERENCE = {  # val file -> wnid, the truth the lists below encode
    "ILSVRC2012_val_00000001.JPEG": "n02119789", "ILSVRC2012_val_00000002.JPEG": "n01440764",
    "ILSVRC2012_val_00000003.JPEG": "n04592741", "ILSVRC2012_val_00000004.JPEG": "n01440764",
    "ILSVRC2012_val_00000005.JPEG": "n02119789", "ILSVRC2012_val_00000006.JPEG": "n04592741",
}


def _jpeg(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """train/<wnid>/ (4 images each) + the flat val/ of the official layout + both label-file forms."""
    root = tmp_path_factory.mktemp("official")
    for k, w in enumerate(WNIDS):
        for i in range(4):
            _jpeg(root / "train" / w / f"{w}_{i}.JPEG", [k, i])
    for i, name in enumerate(REFERENCE):
        _jpeg(root / "val" / name, [99, i])
    text = root / "val_labels.txt"
    text.write_text("# file wnid\n" + "".join(f"{f} {w}\n" for f, w in REFERENCE.items()))
    kaggle = root / "LOC_val_solution.csv"
    kaggle.write_text("ImageId,PredictionString\n" + "".join(
        f"{f.removesuffix('.JPEG')},{w} 10 20 30 40 {w} 1 2 3 4\n" for f, w in reversed(REFERENCE.items())))
    return root


def _expected(src):
    classes = sorted(WNIDS)
    by_file = {os.path.basename(f): lab for f, lab in zip(src.files, src.labels)}
    return by_file, {f: classes.index(w) for f, w in REFERENCE.items()}


@pytest.mark.parametrize("form", ["val_labels.txt", "LOC_val_solution.csv"])
def test_both_forms_read_labels_in_the_train_class_order(official, form):
    train, val = dataset_splits(official, val_list=official / form)
    assert train.classes == sorted(WNIDS)
    got, want = _expected(val)
    assert got == want
    assert len(val) == len(REFERENCE) and val.classes == train.classes


def test_flat_val_without_a_list_names_the_flag(official):
    with pytest.raises(DataError, match="--val-list"):
        dataset_splits(official)


@pytest.mark.parametrize("body, needle", [
    ("ILSVRC2012_val_00000001.JPEG n99999999\n", "n99999999' is not a class"),
    ("ILSVRC2012_val_00000001.JPEG n01440764\nILSVRC2012_val_00000001.JPEG n01440764\n", "already listed on line 1"),
    ("ILSVRC2012_val_00000404.JPEG n01440764\n", "do not exist"),
    ("65\n970\n230\n", "ILSVRC2012_IDs"),
    ("ILSVRC2012_val_00000001.JPEG 65\n", "integer label"),
    ("ILSVRC2012_val_00000001.JPEG\n", "expected '<file> <wnid>'"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001\n", "ImageId,PredictionString"),
    ("# nothing\n", "empty"),
])
def test_bad_lists_are_one_line_data_errors(official, tmp_path, body, needle):
    bad = tmp_path / "bad.txt"
    bad.write_text(body)
    with pytest.raises(DataError) as e:
        read_val_list(bad, official / "val", sorted(WNIDS))
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        read_val_list(tmp_path / "none.txt", official / "val", sorted(WNIDS))


@pytest.mark.parametrize("form", ["val_labels.txt", "LOC_val_solution.csv"])
@pytest.mark.parametrize("dress", ["bom", "crlf", "trailing_blank_lines", "all"])
def test_lists_saved_by_other_tools_read_the_same(official, tmp_path, form, dress):
    # A byte-order mark (Excel, Notepad), CRLF line ends (Windows) and trailing blank lines change nothing.
    text = (official / form).read_text()
    if dress in ("crlf", "all"):
        text = text.replace("\n", "\r\n")
    if dress in ("trailing_blank_lines", "all"):
        text += "\n  \n\t\n"
    data = text.encode()
    if dress in ("bom", "all"):
        data = b"\xef\xbb\xbf" + data
    dressed = tmp_path / form
    dressed.write_bytes(data)
    src = read_val_list(dressed, official / "val", sorted(WNIDS))
    got, want = _expected(src)
    assert got == want and len(src) == len(REFERENCE)


def test_a_folder_as_list_is_named_as_such(official):
    with pytest.raises(DataError, match="is a folder") as e:
        read_val_list(official / "val", official / "val", sorted(WNIDS))
    assert "\n" not in str(e.value)


def _cmd(module, args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def _train_flags(data, out, *extra):
    return ["--method", "rotation", "--data", data, "--arch", "resnet18", "--width", "8", "--image-size", "16",
            "--batch-size", "4", "--epochs", "1", "--workers", "1", "--quiet", "--out", out, *extra]


def test_bad_list_through_the_cli_leaves_no_run_folder(official, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG n99999999\n")
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _train_flags(official, out, "--val-list", bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: error: --val-list") and "n99999999" in last, last
    assert not out.exists()
    r = _cmd("fastssl.train", _train_flags(official, out, "--val-list", tmp_path / "missing.txt"))
    assert r.returncode == 2 and "--val-list: file not found" in r.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.slow
def test_train_knn_and_eval_use_the_list(official, tmp_path):
    out = tmp_path / "run"
    r = _cmd("fastssl.train", _train_flags(official, out, "--val-list", official / "LOC_val_solution.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((out / "eval.json").read_text())
    assert (ev["val_images"], ev["classes"], ev["train_images"]) == (6, 3, 12)
    r = _cmd("fastssl.eval", ["knn", "--checkpoint", out, "--k", "3"])  # the run's --val-list by default
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert (res["val_images"], res["classes"]) == (6, 3)
    r = _cmd("fastssl.eval", ["knn", "--checkpoint", out, "--data", official, "--val-list", official / "val_labels.txt",
                              "--k", "3"])
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["val_images"] == 6, r.stderr[-2000:]
