"""Every real image is read once, exactly as it is: the full-decode verification and its cache."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.data import DataError, ImageFolderSource, make_loader
from fastssl.data import decode_check as dc
from fastssl.data import verify as fv


def _jpeg(path: Path, seed: int, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)


def corrupt_body(path: Path) -> None:
    """Overwrite the entropy-coded bytes after the SOS segment, keeping every header and the end marker:
    the file passes the header / end-marker check and DALI's CPU decoder returns flat grey for it."""
    data = path.read_bytes()
    sos = data.index(b"\xff\xda")
    body = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    path.write_bytes(data[:body] + bytes(len(data) - body - 2) + b"\xff\xd9")


@pytest.fixture
def data(tmp_path, fastssl_cache):
    for i in range(8):
        _jpeg(tmp_path / "d" / f"c{i}" / "a.jpg", seed=i)
    victim = tmp_path / "d" / "c5" / "a.jpg"
    corrupt_body(victim)
    return tmp_path / "d", victim


def test_dali_alone_would_train_on_grey(data):
    """The case: without verification, the loader yields the file as a near-constant image, no error."""
    root, victim = data
    src = ImageFolderSource(root, verify="off")
    assert str(victim) in src.files
    views, labels = next(iter(make_loader(src, "eval", batch_size=8, image_size=16, output="uint8", shuffle=False)))
    i = src.files.index(str(victim))
    grey, good = views[0][i].float(), views[0][i - 1].float()
    assert grey.std() < 10 and abs(grey.mean() - 128) < 5 and good.std() > 20  # resized noise: std ~ 30


def test_corrupt_body_is_caught_and_named(data):
    root, victim = data
    with pytest.raises(DataError, match=str(victim)) as e:
        ImageFolderSource(root)
    assert "corrupt JPEG data" in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match=str(victim)):
        src = ImageFolderSource(root, on_bad="skip")
    assert str(victim) not in src.files and src.skipped == [str(victim)] and len(src) == 7


def test_results_are_cached_and_changed_files_rechecked(data, monkeypatch):
    root, victim = data
    with pytest.raises(DataError):
        ImageFolderSource(root)
    assert fv.cache_file(root).is_file()
    calls = []
    real = fv.decode_check
    monkeypatch.setattr(dc, "decode_check", lambda p: calls.append(p) or real(p))
    with pytest.raises(DataError, match=str(victim)):  # the cached verdict, no decode at all
        ImageFolderSource(root)
    assert calls == []
    _jpeg(victim, seed=99)  # replaced by a good file: size/mtime change, so it is decoded again
    os.utime(victim, ns=(1, 1))
    assert len(ImageFolderSource(root)) == 8 and calls == [str(victim)]


def test_large_unverified_dataset_warns_with_the_command(data, monkeypatch):
    root, _ = data
    monkeypatch.setattr(dc, "AUTO_VERIFY_MAX", 3)
    monkeypatch.setattr(dc, "decode_check", lambda p: pytest.fail("decoded at start"))
    with pytest.warns(UserWarning, match=r"python -m fastssl.data.verify --data"):
        src = ImageFolderSource(root)
    assert len(src) == 8  # goes on: the policy for datasets too large to decode at every start


def test_verify_command_lists_bad_files_and_fills_the_cache(data, fastssl_cache, monkeypatch):
    root, victim = data
    env = {**os.environ, "FASTSSL_CACHE": str(fastssl_cache[0])}
    r = subprocess.run([sys.executable, "-m", "fastssl.data.verify", "--data", str(root), "--workers", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"{victim}: corrupt JPEG data" in r.stdout and "Traceback" not in r.stderr
    assert "8 images" in r.stderr and "1 bad" in r.stderr
    monkeypatch.setattr(dc, "AUTO_VERIFY_MAX", 0)  # a later run uses the command's results
    monkeypatch.setattr(dc, "decode_check", lambda p: pytest.fail("decoded again"))
    with pytest.warns(UserWarning, match=str(victim)):
        assert len(ImageFolderSource(root, on_bad="skip")) == 7


def test_decode_check_formats(tmp_path):
    _jpeg(tmp_path / "ok.jpg", 0)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    png = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF  # one byte of the compressed data: the chunk checksum no longer fits
    (tmp_path / "flip.png").write_bytes(bytes(flipped))
    assert fv.decode_check(tmp_path / "ok.jpg") is None and fv.decode_check(tmp_path / "ok.png") is None
    assert fv.decode_check(tmp_path / "cut.png") is not None and fv.decode_check(tmp_path / "flip.png") is not None
