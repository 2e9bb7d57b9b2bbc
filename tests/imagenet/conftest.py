"""Fixtures for the ImageNet-readiness tests: a small generated ImageNet-layout folder of full-size JPEGs."""

import pytest

from fastssl.data.synthetic import generate


@pytest.fixture(scope="session")
def imagenet_like(tmp_path_factory):
    """24 JPEGs of 500x375 in 1000 class folders (sparse), train/ only: the dry run's data, small."""
    return generate(tmp_path_factory.mktemp("imagenet_like"), n_images=24, n_classes=1000, progress=False)
