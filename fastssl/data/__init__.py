"""Data: DALI pipelines (CPU or GPU, one definition), view recipes, and the built-in demo dataset.

    from fastssl.data import demo_root, dataset_splits, make_loader, RECIPES
    train, val = dataset_splits(demo_root(seed=0))      # val uses train's class-to-index map
    for views, labels in make_loader(train, recipe="simclr", batch_size=256, epoch=0, image_size=64): ...
"""

from fastssl.base.errors import DataError

from .demo import CLASSES as DEMO_CLASSES
from .demo import demo_root, generate_demo
from .folders import ImageFolderSource, check_image_file, dataset_splits, epoch_shard, walk_images
from .recipes import RECIPES, Recipe, get_recipe

_LOADER_NAMES = ("EpochLoader", "augment_seed", "make_loader")


def __getattr__(name: str):
    """The loader (the only part that needs nvidia.dali) is imported on first use, so folders, recipes and
    the demo set work where DALI is not installed (the GPU check's machine)."""
    if name in _LOADER_NAMES:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DEMO_CLASSES", "RECIPES", "DataError", "EpochLoader", "ImageFolderSource", "Recipe",
           "augment_seed", "check_image_file", "dataset_splits", "demo_root", "epoch_shard", "generate_demo",
           "get_recipe", "make_loader", "walk_images"]
