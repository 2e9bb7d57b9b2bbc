"""Colorization as classification (Zhang et al. 2016, "Colorful Image Colorization"): from the L channel of
CIE Lab, predict a distribution over the quantized ab colours of each pixel.

On the device, inside ``forward``: RGB -> Lab (fastssl.methods._color); the backbone sees ``(L - 50) / 50`` only;
the ab target, average-pooled to 1/4 of the image size (the paper predicts at 1/4 resolution), is
soft-encoded over its 5 nearest in-gamut bins (sigma 5, fastssl.methods._color.soft_encode); the loss is the
class-rebalanced multinomial cross-entropy of Eq. 2: each pixel weighted by ``w[q*]`` of its
target's most likely bin ``q*``. The weights (Eq. 4: the empirical bin distribution of the training
data, Gaussian-smoothed with sigma 5, mixed with the uniform with lambda 0.5, expectation 1) come from
a first pass over the training set (centre crops, no shuffle), shown with a progress bar and cached
under ``$FASTSSL_CACHE/colorize`` (or ``~/.cache/fastssl/colorize``). Saved colourizations use the
annealed-mean decode with T=0.38 (Sec. 2.3).

The backbone (``self.backbone``, what kNN / the linear probe evaluate) is ``LuminanceInput``: it takes
the pipeline's normalized RGB views and computes L itself, so the evaluation feeds it exactly what
training did (the paper evaluates its features on grayscale input too).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fastssl.base import argtypes as at
from fastssl.base.argtypes import positive_float
from fastssl.base.errors import ConfigError
from fastssl.base.viz import save_grid
from fastssl.methods._cached_pass import CachedPass
from fastssl.methods._color import ab_gamut_bins, annealed_mean, lab_to_rgb, rebalance_weights, rgb_to_lab, soft_encode
from fastssl.methods.base import Method, backbone_kwargs, register
from fastssl.methods.generative import image_decoder, positive_int, require_resnet, to_pixels
from fastssl.models import build_backbone
from fastssl.models.inputs import LuminanceInput  # (importable from here, where it was defined before)

AB_GRID = 10  # the paper's grid size


LAMBDA_MIN = 1e-6  # the smallest --rebalance-lambda: no class weight exceeds Q / lambda (fastssl.methods._color)


def _lam(text) -> float:
    """``--rebalance-lambda`` in [LAMBDA_MIN, 1]. 0 (the pure inverse frequency) is refused: a bin whose smoothed
    share of the training counts is 0 (or underflows; colours far from every counted one) would weigh 1/0, and a
    colour seen only outside the counted centre crops makes the loss inf (richzhang/colorization issue 69)."""
    value = at.ranged(float, 0, 1)(text)
    if value < LAMBDA_MIN:
        raise argparse.ArgumentTypeError(
            f"must be in [{LAMBDA_MIN:g}, 1], got {value:g}: the weight of a colour the training counts never saw "
            "is up to Q / lambda (Q bins), infinite at 0")
    return value


def bin_counts(cfg: dict, bins: torch.Tensor, subsample: int) -> torch.Tensor:
    """Counts ``[Q]`` (float64) of the nearest bin of every ab value of the training set, at the
    training target's resolution (``subsample``-pooled centre crops); cached (atomic write)."""
    cp = CachedPass(cfg, "colorize", "bin_counts", ("colorize-bins", subsample, bins.tolist()))
    counts = cp.cached()
    if counts is not None:
        return counts
    counts = torch.zeros(bins.shape[0], dtype=torch.float64, device=cp.device)
    c = bins.to(cp.device)
    for x in cp.batches("ab bin statistics"):
        ab = F.avg_pool2d(rgb_to_lab(to_pixels(x.float()).clamp(0, 1))[:, 1:], subsample)
        idx = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), c).argmin(1)
        counts += torch.bincount(idx, minlength=c.shape[0]).double()
    return cp.save(counts)


@register("colorize")
class Colorize(Method):
    recipe = "crop"
    # Demo defaults (a 2-core CPU): see docs/methods/colorize.md.
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=128, epochs=12, optimizer="adamw",
                    lr=2e-3, weight_decay=0.05, warmup_epochs=0.1)
    subsample = 4  # targets at 1/4 of the image size (the paper: 56 of 224)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("colorize")
        g.add_argument("--soft-k", type=positive_int, default=5, help="nearest bins of the soft encoding")
        g.add_argument("--soft-sigma", type=positive_float, default=5.0, help="soft-encoding Gaussian sigma (ab units)")
        g.add_argument("--rebalance-lambda", type=_lam, default=0.5,
                       help=f"mix of the smoothed bin distribution with the uniform, in [{LAMBDA_MIN:g}, 1] (1: no "
                       "rebalancing; 0, the pure inverse frequency, would weigh unseen colours infinitely)")
        g.add_argument("--anneal-t", type=positive_float, default=0.38, help="annealed-mean temperature (pictures)")

    @classmethod
    def check_config(cls, cfg):
        require_resnet(cfg, "colorize")
        if cfg["image_size"] < cls.subsample:
            raise ConfigError(f"--image-size {cfg['image_size']}: colorize predicts colours at 1/{cls.subsample} of "
                              f"the image size, so it needs --image-size >= {cls.subsample}")
        q = ab_gamut_bins(AB_GRID).shape[0]
        if cfg["soft_k"] > q:
            raise ConfigError(f"--soft-k {cfg['soft_k']} exceeds the {q} in-gamut ab bins")

    def __init__(self, cfg):
        super().__init__(cfg)
        net = build_backbone(cfg["arch"], in_chans=1, **backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"]))
        self.backbone = LuminanceInput(net)
        self.register_buffer("bins", ab_gamut_bins(AB_GRID))
        q = self.bins.shape[0]
        if cfg["soft_k"] > q:
            raise ValueError(f"--soft-k {cfg['soft_k']} exceeds the {q} bins")
        s = cfg["image_size"]
        self.decoder = image_decoder(self.backbone, s, out_channels=q, upsample_to=max(1, s // self.subsample),
                                     min_width=32)
        counts = bin_counts(cfg, self.bins, self.subsample)
        self.register_buffer("class_weights", rebalance_weights(counts, self.bins, sigma=5.0,
                                                                lam=cfg["rebalance_lambda"]).float())

    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft targets ``[B, Q, h, w]``, per-pixel weights ``[B, h, w]``) of normalized views ``x``."""
        with torch.no_grad():
            ab = rgb_to_lab(to_pixels(x.float()).clamp(0, 1))[:, 1:]
            h = max(1, x.shape[-1] // self.subsample)
            ab = F.adaptive_avg_pool2d(ab, h)
            z = soft_encode(ab, self.bins, k=self.cfg["soft_k"], sigma=self.cfg["soft_sigma"])
            return z, self.class_weights[z.argmax(1)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_features(x))

    def forward(self, views, labels):
        x = views[0]
        z, v = self.targets(x)
        logp = torch.log_softmax(self.logits(x).float(), dim=1)
        loss = -(v * (z * logp).sum(1)).mean()
        with torch.no_grad():
            acc = (logp.argmax(1) == z.argmax(1)).float().mean()
        return loss, {"bin_acc": acc}

    def visualize(self, views, labels, path, epoch):
        x = views[0]
        lab = rgb_to_lab(to_pixels(x.float()).clamp(0, 1))
        ab = annealed_mean(self.logits(x), self.bins, self.cfg["anneal_t"])
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        rgb = lab_to_rgb(torch.cat([lab[:, :1], ab], 1)).cpu()
        gray = (lab[:, :1] / 100).clamp(0, 1).cpu()
        truth = to_pixels(x.float()).clamp(0, 1).cpu()
        rows = [[g, t, r] for g, t, r in zip(gray, truth, rgb)]
        save_grid(rows, path, col_titles=["L (input)", "ground truth", f"annealed mean ep{epoch}"])
