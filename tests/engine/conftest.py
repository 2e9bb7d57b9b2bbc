"""Fixtures for the training-engine tests: a tiny ImageNet-layout dataset and tiny-run flags."""

import pytest

from fastssl.data import generate_demo


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """12 classes, 96 train + 48 val JPEGs of 32x32 (the demo generator, small)."""
    return generate_demo(tmp_path_factory.mktemp("tiny_data"), seed=0, n_train=96, n_val=48, size=32,
                         progress=False)


@pytest.fixture
def tiny_args(tiny_data):
    """Flags of a 2-epoch SimCLR run of 6 steps/epoch that takes seconds on a CPU."""

    def make(out, *extra):
        return ["--method", "simclr", "--data", str(tiny_data), "--arch", "resnet18", "--width", "8",
                "--image-size", "16", "--batch-size", "16", "--epochs", "2", "--workers", "1",
                "--proj-hidden", "32", "--proj-dim", "16", "--lr", "0.3", "--warmup-epochs", "0.5",
                "--quiet", "--out", str(out), *extra]

    return make
