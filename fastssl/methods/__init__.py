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
from fastssl.methods.base import METHODS, Method, backbone_kwargs, register


def build_method(name: str, cfg: dict) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    return cls(cfg)


__all__ = ["METHODS", "Method", "backbone_kwargs", "build_method", "register"]
