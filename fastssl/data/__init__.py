"""Data: DALI pipelines (CPU or GPU, one definition), view recipes, and the built-in demo dataset.

    from fastssl.data import demo_root, ImageFolderSource, make_loader, RECIPES
    src = ImageFolderSource(demo_root(seed=0), split="train")
    for views, labels in make_loader(src, recipe="simclr", batch_size=256, epoch=0, image_size=64): ...
"""

from .demo import CLASSES as DEMO_CLASSES
from .demo import demo_root, generate_demo
from .folders import DataError, ImageFolderSource, check_image_file, epoch_shard
from .loader import EpochLoader, augment_seed, make_loader
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["DEMO_CLASSES", "RECIPES", "DataError", "EpochLoader", "ImageFolderSource", "Recipe",
           "augment_seed", "check_image_file", "demo_root", "epoch_shard", "generate_demo", "get_recipe",
           "make_loader"]
