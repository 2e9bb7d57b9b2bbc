"""SSL methods, one file each, registered by name (``--method NAME``).

``METHODS`` maps names to :class:`Method` subclasses; ``build_method(name, cfg)`` builds one.
"""

from fastssl.methods import (  # noqa: F401  (each import registers its method)
    bow,
    colorize,
    context,
    denoise,
    halves,
    inpaint,
    jigsaw,
    mae,
    rotation,
    simclr,
)
from fastssl.methods.base import METHODS, Method, backbone_kwargs, build_method, register

__all__ = ["METHODS", "Method", "backbone_kwargs", "build_method", "register"]
