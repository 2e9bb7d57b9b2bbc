"""View recipes: what each SSL method gets from one encoded image (DALI graph fragments).

A recipe turns the reader's encoded bytes into ``n_views`` uint8/float HWC views plus, per view, a
mirror flag; the pipeline (pipeline.py) then flips, normalizes and lays them out as NCHW. Every
recipe is written once for both devices: ``ctx.decode_device`` is "cpu" or "mixed" and the operators
after the decoder run where their input lives (DALI places an operator on the GPU when its input is
on the GPU). Sizes: ``image_size`` is the output side (64 for the demo, 224 for ImageNet).

Recipes and their options (override any through ``make_loader(..., recipe_options={...})``):

- ``simclr`` (2 views): random resized crop ``scale=(0.08, 1)``, ``ratio=(3/4, 4/3)``; horizontal flip
  ``flip_p=0.5``; colour jitter with probability ``jitter_p=0.8`` of strengths ``brightness=0.4``,
  ``contrast=0.4``, ``saturation=0.4``, ``hue=0.1`` (``jitter=s`` sets the first three at once; hue is a
  fraction of the colour wheel, as in torchvision); grayscale ``gray_p=0.2``; Gaussian blur with
  probability ``blur_p=(1.0, 0.1)`` per view and ``blur_sigma=(0.1, 2.0)`` (pixels at 224 px, scaled by
  image_size/224); solarize with probability ``solarize_p=(0.0, 0.2)`` per view (second view only, as in
  BYOL); then per-view normalization. The image is decoded once and cropped twice; the blur with
  p < 1 and the solarize are DALI conditionals (``if`` on a per-sample coin), so only the selected
  samples pay for them.
- ``mae`` (1 view): fused random-crop decode ``scale=(0.2, 1)``, ``ratio=(3/4, 4/3)``, resize, flip 0.5.
- ``eval`` (1 view): resize the shorter side to ``image_size / crop_ratio`` (``crop_ratio=0.875``), center
  crop ``image_size``.
- ``rotation`` (1 view): resize the shorter side to ``image_size * resize`` (``resize=256/224``), one
  random ``image_size`` crop, flip 0.5. The method rotates it 4 ways itself.
- ``crop`` (1 view): as ``rotation`` (resize the shorter side to ``image_size * resize``, one random
  crop, flip 0.5), for the methods that corrupt or recolour the view themselves (denoise, inpaint,
  colorize).
- ``jigsaw`` / ``context`` (1 view): resize the shorter side to ``image_size * resize`` (``resize=1.15``),
  one random crop of the grid size ``image_size``, no flip (the tile methods cut tiles themselves).

All recipes normalize with ``mean``/``std`` (ImageNet's, in 0..1 units) when output="float".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD

# nvidia.dali is imported inside the graph-building functions only: the recipes' names, defaults and
# option checks (used when flags are parsed) work where DALI is not installed (the GPU check's machine).


@dataclass
class Ctx:
    """What a recipe needs to know at graph-build time."""
    decode_device: str  # "cpu" or "mixed"
    image_size: int
    opts: dict

    @property
    def gpu(self) -> bool:
        return self.decode_device == "mixed"

    @property
    def dev(self) -> str:
        """Device of the image operators after the decoder (explicit, not inferred)."""
        return "gpu" if self.gpu else "cpu"


@dataclass(frozen=True)
class Recipe:
    name: str
    n_views: int
    build: Callable  # (encoded, ctx) -> list[(image HWC node, mirror node or None)]
    defaults: dict = field(default_factory=dict)

    def options(self, overrides: dict | None) -> dict:
        opts = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **self.defaults}
        overrides = dict(overrides or {})
        for k, v in overrides.items():
            _check_option(self.name, k, v)
        if "jitter" in overrides and "jitter" not in self.defaults:
            raise ValueError(f"recipe {self.name!r} has no option 'jitter'")
        if "jitter" in overrides:  # shorthand for brightness = contrast = saturation
            s = overrides.pop("jitter")
            opts.update(brightness=s, contrast=s, saturation=s, jitter=s)
        unknown = set(overrides) - set(opts)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for recipe {self.name!r}; "
                             f"known: {sorted(opts)}")
        opts.update(overrides)
        return opts


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pair(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(x) for x in v)


# What each option accepts: (test, wording). Per-view options (blur_p, solarize_p) take a number or a
# pair (one per view).
_PROB = (lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]")
_PROB_VIEWS = (lambda v: (_number(v) and 0 <= v <= 1) or (_pair(v) and all(0 <= x <= 1 for x in v)),
               "a probability in [0, 1] or a pair of them (one per view)")
_OPTION_RULES = {
    "flip_p": _PROB, "jitter_p": _PROB, "gray_p": _PROB, "blur_p": _PROB_VIEWS, "solarize_p": _PROB_VIEWS,
    "brightness": (lambda v: _number(v) and v >= 0, "a strength >= 0"),
    "contrast": (lambda v: _number(v) and v >= 0, "a strength >= 0"),
    "saturation": (lambda v: _number(v) and v >= 0, "a strength >= 0"),
    "jitter": (lambda v: _number(v) and v >= 0, "a strength >= 0"),
    "hue": (lambda v: _number(v) and 0 <= v <= 0.5, "a fraction of the colour wheel in [0, 0.5]"),
    "scale": (lambda v: _pair(v) and 0 < v[0] <= v[1] <= 1, "a pair 0 < min <= max <= 1 (crop area fractions)"),
    "ratio": (lambda v: _pair(v) and 0 < v[0] <= v[1], "a pair 0 < min <= max (aspect ratios)"),
    "blur_sigma": (lambda v: _pair(v) and 0 < v[0] <= v[1], "a pair 0 < min <= max (pixels at 224 px)"),
    "crop_ratio": (lambda v: _number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "resize": (lambda v: _number(v) and v >= 1, "a factor >= 1 (the crop must fit in the resized image)"),
    "mean": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(_number(x) for x in v),
             "3 numbers (R, G, B in 0..1 units)"),
    "std": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(_number(x) and x > 0 for x in v),
            "3 positive numbers (R, G, B in 0..1 units)"),
}


def _check_option(recipe: str, name: str, value) -> None:
    """ValueError (one line, naming the option and what it accepts) for a value the graph cannot use."""
    rule = _OPTION_RULES.get(name)
    if rule is not None and not rule[0](value):
        raise ValueError(f"recipe {recipe!r} option {name}={value!r}: expected {rule[1]}")


# ----------------------------------------------------------------------------- building blocks

def _decode(encoded, ctx: Ctx):
    from nvidia.dali import fn, types
    return fn.decoders.image(encoded, device=ctx.decode_device, output_type=types.RGB)


def _coin(p: float):
    from nvidia.dali import fn
    return fn.random.coin_flip(probability=float(p))


def _fcoin(p: float):
    from nvidia.dali import fn, types
    return fn.cast(_coin(p), dtype=types.FLOAT)


def _uniform(lo: float, hi: float):
    from nvidia.dali import fn
    return fn.random.uniform(range=(float(lo), float(hi)))


def _jitter_factor(strength: float, applied):
    """1 + applied * (U(1-s, 1+s) - 1): identity when the jitter coin says no."""
    if strength <= 0:
        return 1.0
    return 1.0 + applied * (_uniform(max(0.0, 1 - strength), 1 + strength) - 1.0)


def _colour(img, ctx: Ctx):
    """Colour jitter (p=jitter_p) and random grayscale (p=gray_p) in one color_twist.

    Grayscale is saturation 0 (luma), so multiplying the saturation factors composes both."""
    from nvidia.dali import fn
    o = ctx.opts
    applied = _fcoin(o["jitter_p"])
    brightness = _jitter_factor(o["brightness"], applied)
    contrast = _jitter_factor(o["contrast"], applied)
    saturation = _jitter_factor(o["saturation"], applied) * (1.0 - _fcoin(o["gray_p"]))
    hue = applied * _uniform(-360.0 * o["hue"], 360.0 * o["hue"]) if o["hue"] > 0 else 0.0
    return fn.color_twist(img, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                          device=ctx.dev)


def _blur(img, p: float, ctx: Ctx):
    """Gaussian blur with probability p, sigma ~ U(blur_sigma) * image_size/224. With p < 1 the blur is
    a DALI conditional, so only the selected samples pay for it."""
    from nvidia.dali import fn
    if p <= 0:
        return img
    lo, hi = ctx.opts["blur_sigma"]
    k = ctx.image_size / 224.0
    if p >= 1:
        return fn.gaussian_blur(img, sigma=_uniform(lo * k, hi * k), device=ctx.dev)
    if _coin(p):
        img = fn.gaussian_blur(img, sigma=_uniform(lo * k, hi * k), device=ctx.dev)
    return img


def _solarize(img, p: float, ctx: Ctx):
    """x -> 255 - x where x >= 128, with probability p (a conditional: only selected samples pay)."""
    from nvidia.dali import fn, types
    if p <= 0:
        return img
    if _coin(p):
        f = fn.cast(img, dtype=types.FLOAT, device=ctx.dev)
        img = fn.cast(f + (f >= 128.0) * (255.0 - 2.0 * f), dtype=types.UINT8, device=ctx.dev)
    return img


def _random_crop(img, ctx: Ctx):
    from nvidia.dali import fn
    s = ctx.image_size
    img = fn.resize(img, resize_shorter=float(round(s * ctx.opts["resize"])), device=ctx.dev)
    return fn.crop(img, crop=(s, s), crop_pos_x=_uniform(0, 1), crop_pos_y=_uniform(0, 1), device=ctx.dev)


def _per_view(value, i: int) -> float:
    return float(value[i] if isinstance(value, (tuple, list)) else value)


# ----------------------------------------------------------------------------- recipes

def _simclr(encoded, ctx: Ctx):
    from nvidia.dali import fn
    o, s = ctx.opts, ctx.image_size
    img = _decode(encoded, ctx)
    views = []
    for i in range(2):
        v = fn.random_resized_crop(img, size=(s, s), random_area=tuple(o["scale"]),
                                   random_aspect_ratio=tuple(o["ratio"]), device=ctx.dev)
        v = _colour(v, ctx)
        v = _blur(v, _per_view(o["blur_p"], i), ctx)
        v = _solarize(v, _per_view(o["solarize_p"], i), ctx)
        views.append((v, _coin(o["flip_p"])))
    return views


def _mae(encoded, ctx: Ctx):
    from nvidia.dali import fn, types
    o, s = ctx.opts, ctx.image_size
    img = fn.decoders.image_random_crop(encoded, device=ctx.decode_device, output_type=types.RGB,
                                        random_area=tuple(o["scale"]), random_aspect_ratio=tuple(o["ratio"]))
    img = fn.resize(img, size=(s, s), device=ctx.dev)
    return [(img, _coin(o["flip_p"]))]


def _eval(encoded, ctx: Ctx):
    from nvidia.dali import fn
    s = ctx.image_size
    img = fn.resize(_decode(encoded, ctx), resize_shorter=float(round(s / ctx.opts["crop_ratio"])),
                    device=ctx.dev)
    return [(fn.crop(img, crop=(s, s), device=ctx.dev), None)]


def _one_crop(encoded, ctx: Ctx):
    img = _random_crop(_decode(encoded, ctx), ctx)
    p = ctx.opts["flip_p"]
    return [(img, _coin(p) if p > 0 else None)]


RECIPES: dict[str, Recipe] = {
    "simclr": Recipe("simclr", 2, _simclr, dict(
        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4,
        saturation=0.4, hue=0.1, jitter=0.4, gray_p=0.2, blur_p=(1.0, 0.1), blur_sigma=(0.1, 2.0),
        solarize_p=(0.0, 0.2))),
    "mae": Recipe("mae", 1, _mae, dict(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)),
    "eval": Recipe("eval", 1, _eval, dict(crop_ratio=0.875)),
    "rotation": Recipe("rotation", 1, _one_crop, dict(resize=256 / 224, flip_p=0.5)),
    "crop": Recipe("crop", 1, _one_crop, dict(resize=256 / 224, flip_p=0.5)),
    "jigsaw": Recipe("jigsaw", 1, _one_crop, dict(resize=1.15, flip_p=0.0)),
    "context": Recipe("context", 1, _one_crop, dict(resize=1.15, flip_p=0.0)),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}") from None
