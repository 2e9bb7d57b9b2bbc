"""Dataset discovery, validation (bad-data policy) and the per-epoch shard lists."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.data import DataError, ImageFolderSource, check_image_file, epoch_shard
from fastssl.data.folders import shard_indices


def _jpeg(path: Path, seed: int = 0, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _folder(root: Path, per_class=(3, 2, 4), names=("cat", "ant", "dog")):
    for k, (cls, n) in enumerate(zip(names, per_class)):
        for i in range(n):
            _jpeg(root / cls / f"{i}.JPEG", seed=10 * k + i)
    return root


def test_flat_layout_labels_match_folders(tmp_path):
    _folder(tmp_path)
    (tmp_path / "dog" / "notes.txt").write_text("not an image, ignored by extension")
    src = ImageFolderSource(tmp_path)
    assert src.classes == ["ant", "cat", "dog"]
    assert len(src) == 9
    for f, lab in zip(src.files, src.labels):
        assert Path(f).parent.name == src.classes[lab]
    assert src.files == sorted(src.files)
    assert ImageFolderSource(tmp_path).files == src.files  # deterministic


def test_split_layout_and_file_list(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "val", per_class=(1, 1, 1))
    assert len(ImageFolderSource(tmp_path, split="train")) == 9
    val = ImageFolderSource(tmp_path, split="val")
    assert len(val) == 3 and val.labels == [0, 1, 2]
    (tmp_path / "list.txt").write_text("# path label\ntrain/cat/0.JPEG 4\n\ntrain/dog/1.JPEG 1\n")
    fl = ImageFolderSource.from_file_list(tmp_path, "list.txt")
    assert fl.labels == [4, 1] and len(fl.classes) == 5
    assert fl.files[0] == str(tmp_path / "train/cat/0.JPEG")


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "empty_classes", "missing_split"])
def test_clear_errors_name_the_path(tmp_path, case):
    root = tmp_path / "data"
    split = None
    if case == "file":
        root.write_text("x")
    elif case == "no_classes":
        root.mkdir()
        _jpeg(root / "loose.jpg")
    elif case == "empty_classes":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    elif case == "missing_split":
        _folder(root / "train")
        split = "val"
    with pytest.raises(DataError, match=str(root)):
        ImageFolderSource(root, split=split)


def test_file_list_errors(tmp_path):
    _folder(tmp_path)
    with pytest.raises(DataError, match="list.txt"):
        ImageFolderSource.from_file_list(tmp_path, "list.txt")
    (tmp_path / "list.txt").write_text("cat/0.JPEG notalabel\n")
    with pytest.raises(DataError, match=r"list.txt:1"):
        ImageFolderSource.from_file_list(tmp_path, "list.txt")
    (tmp_path / "list.txt").write_text("cat/missing.JPEG 0\n")
    with pytest.raises(DataError, match="missing.JPEG"):
        ImageFolderSource.from_file_list(tmp_path, "list.txt")


def _add_bad_files(root: Path):
    bad = {
        root / "cat" / "text.jpg": b"hello, not a jpeg",
        root / "cat" / "empty.jpg": b"",
    }
    for p, data in bad.items():
        p.write_bytes(data)
    good = (root / "dog" / "0.JPEG").read_bytes()
    trunc = root / "dog" / "truncated.JPEG"
    trunc.write_bytes(good[: len(good) // 2])
    return sorted(map(str, [*bad, trunc]))


def test_bad_files_fail_fast_with_paths(tmp_path):
    _folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    with pytest.raises(DataError) as e:
        ImageFolderSource(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "--on-bad skip" in msg  # one line, naming the CLI flag that exists
    assert "3 bad image file(s)" in msg
    for p in bad:
        assert p in msg
    assert "truncated JPEG" in msg and "empty file" in msg and "not an image" in msg


def test_bad_files_skip_with_warning_and_count(tmp_path):
    _folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    with pytest.warns(UserWarning, match="skipping 3 bad image file"):
        src = ImageFolderSource(tmp_path, on_bad="skip")
    assert len(src) == 9 and sorted(src.skipped) == bad
    assert len(ImageFolderSource(tmp_path, validate=False).files) == 12


def test_header_check_accepts_png(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    _jpeg(tmp_path / "b.jpg")
    assert check_image_file(tmp_path / "a.png") is None
    assert check_image_file(tmp_path / "b.jpg") is None
    assert "unreadable" in check_image_file(tmp_path / "nope.jpg")


@pytest.mark.parametrize("n,shards", [(12, 1), (12, 2), (13, 2), (10, 3), (2, 3)])
def test_shards_cover_every_index(n, shards):
    order = np.random.default_rng(0).permutation(n)
    parts = [shard_indices(order, r, shards) for r in range(shards)]
    assert len({len(p) for p in parts}) == 1  # equal length on every rank
    seen = np.concatenate(parts)
    assert set(seen.tolist()) == set(range(n))
    assert len(seen) - n == (-n) % shards  # padding only to a multiple of num_shards
    if n % shards == 0:
        assert sorted(seen.tolist()) == list(range(n))


def test_epoch_order_depends_on_seed_and_epoch(tmp_path):
    _folder(tmp_path, per_class=(5, 5, 5))
    src = ImageFolderSource(tmp_path)
    a = epoch_shard(src, epoch=0, seed=0)
    assert a == epoch_shard(src, epoch=0, seed=0)
    assert a != epoch_shard(src, epoch=1, seed=0)
    assert a != epoch_shard(src, epoch=0, seed=1)
    assert sorted(a[0]) == src.files
    assert epoch_shard(src, epoch=3, seed=0, shuffle=False)[0] == src.files
    with pytest.raises(ValueError, match="shard_id"):
        epoch_shard(src, epoch=0, seed=0, shard_id=2, num_shards=2)


def test_val_uses_the_train_class_map(tmp_path):
    """train/{a,b,c}, val/{a,c}: val's c must be label 2 (train's), not 1 (its own sorted position)."""
    from fastssl.data import dataset_splits

    _folder(tmp_path / "train", per_class=(2, 2, 2), names=("a", "b", "c"))
    _folder(tmp_path / "val", per_class=(1, 1), names=("a", "c"))
    train, val = dataset_splits(tmp_path)
    assert train.classes == val.classes == ["a", "b", "c"]
    assert [train.classes[lab] for lab in val.labels] == [Path(f).parent.name for f in val.files] == ["a", "c"]
    _folder(tmp_path / "val", per_class=(1,), names=("zebra",))
    with pytest.raises(DataError, match="zebra"):
        dataset_splits(tmp_path)


def test_one_hidden_rule_for_the_whole_walk(tmp_path):
    _folder(tmp_path, per_class=(2, 2, 2))
    _jpeg(tmp_path / "cat" / ".ipynb_checkpoints" / "0-checkpoint.JPEG")  # hidden folder inside a class
    _jpeg(tmp_path / "cat" / "sub" / ".hidden" / "x.jpg")  # deeper
    _jpeg(tmp_path / "dog" / "._0.JPEG")  # macOS resource fork
    _jpeg(tmp_path / ".trash" / "x.jpg")  # hidden class folder
    src = ImageFolderSource(tmp_path)
    assert len(src) == 6 and src.classes == ["ant", "cat", "dog"]
    assert not any("/." in f for f in src.files)
    _jpeg(tmp_path / "cat" / "sub" / "visible.jpg")  # a visible subfolder still counts
    assert len(ImageFolderSource(tmp_path)) == 7


def test_links_never_count_a_file_twice(tmp_path):
    _folder(tmp_path, per_class=(2, 2, 2))
    (tmp_path / "cat" / "loop").symlink_to(tmp_path / "cat")  # a cycle: walked once, terminates
    (tmp_path / "cat" / "again.JPEG").symlink_to(tmp_path / "cat" / "0.JPEG")  # the same file twice
    with pytest.warns(UserWarning, match="read once"):
        src = ImageFolderSource(tmp_path)
    assert len(src) == 6 and len({Path(f).resolve() for f in src.files}) == 6
    (tmp_path / "dog" / "stolen.JPEG").symlink_to(tmp_path / "cat" / "1.JPEG")  # same file, two labels
    with pytest.raises(DataError, match="two labels"):
        ImageFolderSource(tmp_path)


def test_file_list_line_twice_is_an_error(tmp_path):
    _folder(tmp_path)
    (tmp_path / "list.txt").write_text("cat/0.JPEG 0\ndog/1.JPEG 1\n./cat/0.JPEG 0\n")
    with pytest.raises(DataError, match=r"list.txt:3: ./cat/0.JPEG is already listed on line 1"):
        ImageFolderSource.from_file_list(tmp_path, "list.txt")


def test_a_link_back_to_the_split_does_not_relabel_another_class(tmp_path):
    # c0/loop -> the split itself: walking it would list c1's images under c0's label (found by a
    # new-user probe). Each class's images must keep their own class's label.
    for c in ("c0", "c1"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.jpg")
    (tmp_path / "c0" / "loop").symlink_to(tmp_path)
    src = ImageFolderSource(tmp_path, validate=False)
    by_label = {lab: sorted(Path(f).parent.name for f, lb in zip(src.files, src.labels) if lb == lab)
                for lab in (0, 1)}
    assert by_label == {0: ["c0"] * 3, 1: ["c1"] * 3}


def test_an_empty_class_folder_is_warned_about(tmp_path):
    # An empty class folder (an incomplete copy) silently added a class with no images (new-user probe).
    _folder(tmp_path)
    (tmp_path / "zebra").mkdir()
    with pytest.warns(UserWarning, match=r"1 class folder\(s\) in .* hold no image files .*: zebra"):
        src = ImageFolderSource(tmp_path, validate=False)
    assert src.classes[-1] == "zebra" and len(src.classes) - 1 == len(set(src.labels))
