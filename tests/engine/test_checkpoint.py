"""fastssl.base.checkpoint: plain data only (weights_only loading), atomic writes, exact RNG round trip."""

import random

import numpy as np
import pytest
import torch

from fastssl.base import checkpoint as ckpt_io


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    random.random()
    np.random.randn()  # noqa: NPY002 (the legacy global RNG is what the checkpoint restores)
    state = ckpt_io.rng_state()
    want = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))  # noqa: NPY002
    ckpt_io.atomic_save({"rng": state}, tmp_path / "r.pt")
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "r.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))  # noqa: NPY002
    assert got[:4] == want[:4] and torch.equal(got[4], want[4])


def test_only_plain_data_is_saved(tmp_path):
    with pytest.raises(TypeError, match="ndarray"):
        ckpt_io.atomic_save({"x": np.zeros(2)}, tmp_path / "a.pt")
    with pytest.raises(TypeError, match="key"):
        ckpt_io.atomic_save({(1, 2): 3}, tmp_path / "a.pt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file
    ckpt_io.atomic_save({"a": [1, 2.5, "s", None, True], "t": torch.ones(2), "d": {"k": (1, 2)}}, tmp_path / "a.pt")
    assert ckpt_io.load(tmp_path / "a.pt", required=("a", "t"))["d"] == {"k": (1, 2)}
    with pytest.raises(ckpt_io.CheckpointError, match="missing model"):
        ckpt_io.load(tmp_path / "a.pt", required=("model",))
