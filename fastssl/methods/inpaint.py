"""Context encoder (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting"): remove a
region, encode the rest, reconstruct the region; L2 loss on the region.

Region (on the device, inside ``forward``), ``--mask``:
- ``center``: the central square of side ``--hole`` x image size (the paper: 64 of 128 px, 0.5);
- ``random``: ``--blocks`` squares of side ``image_size / 4`` at uniform random positions, possibly
  overlapping (the paper's "random block" masks, covering up to 1/4 of the image with 4 blocks).
The removed pixels are set to the dataset mean (0 after normalization), as in the paper.

Model: encoder (the backbone's last feature map) -> channel-wise fully connected layer + 1x1 conv
(fastssl.models.decoder.ChannelwiseFC, Sec. 3.1) -> ConvDecoder to the full image. Loss: mean squared
error over the removed region only (Sec. 3.2, L_rec). ``--overlap P`` (center mask; the released
code's ``overlapPred``, 4 px of a 64 px centre) keeps a band of P px inside the centre square visible
to the encoder while the loss still covers the whole square, with weight ``--overlap-weight`` (10 in
the released code) on that band and 1 inside.
``--norm-pix P``: the target is per-patch standardized pixels of P x P patches (MAE's norm_pix_loss), each
patch weighted by its pixels' mean loss weight; ``--input-norm image``: the encoder standardizes each image per
channel first (``StandardizedInput``), at evaluation too. Both off by default (docs/methods/inpaint.md).

Adversarial term (Sec. 3.2), off by default (the paper's "L2 only" variant, which its Table 2 reports
for feature learning): ``--adv-weight w > 0`` adds a discriminator D (fastssl.models.discriminator,
DCGAN-style as the released netD) on the inpainted region (the centre square, or the whole image with
the prediction pasted into the removed blocks) and trains the joint loss
L = (1 - w) L_rec + w L_adv (the paper: w = 0.001). One backward, one optimizer step for everything
(the trainer builds a single optimizer over all the method's parameters, so D's are in it; AdamW
normalizes each parameter's step, so the two players' losses need no common scale):
- D's loss, BCE(D(real), 1) + BCE(D(fake.detach()), 0), reaches D's parameters only (fake detached);
- the generator's non-saturating loss BCE(D(fake), 1) (Goodfellow et al. 2014) runs D with its
  parameters detached (``torch.func.functional_call``), so it reaches the encoder / decoder only.
The returned loss is (1 - w) L_rec + w L_G + L_D (metrics ``rec``, ``adv_g``, ``adv_d``). Unlike the
released code, D and the generator step together (simultaneous, not alternating, updates), with the
run's optimizer and learning rate.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastssl.base.argtypes import ranged
from fastssl.base.errors import ConfigError
from fastssl.base.viz import denormalize, save_grid
from fastssl.methods.base import Method, register
from fastssl.methods.generative import (
    add_input_norm_arg,
    add_norm_pix_arg,
    check_norm_pix,
    image_decoder,
    non_negative,
    positive_int,
    reconstruction_loss,
    require_resnet,
    unnormalize_patches,
    wrap_input,
)
from fastssl.models.decoder import ChannelwiseFC, feature_stride
from fastssl.models.discriminator import Discriminator


def _hole(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _overlap(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def center_mask(batch: int, size: int, hole: float, overlap: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(removed, loss weight), both ``[batch, 1, size, size]`` float: the central square of side
    ``round(hole * size)``; ``removed`` is that square shrunk by ``overlap`` px on each side, the weight
    is ``1`` inside ``removed``, the overlap band is marked 2 (the caller scales it) and 0 outside."""
    side = max(1, round(hole * size))
    lo = (size - side) // 2
    region = torch.zeros(size, size, device=device)
    region[lo:lo + side, lo:lo + side] = 2.0
    o = overlap
    if 2 * o >= side:
        raise ConfigError(f"--overlap {o} leaves no hole in a {side} px centre square")
    region[lo + o:lo + side - o, lo + o:lo + side - o] = 1.0
    removed = (region == 1.0).float()
    return removed.expand(batch, 1, size, size), region.expand(batch, 1, size, size)


def random_block_mask(batch: int, size: int, blocks: int, device, generator=None) -> torch.Tensor:
    """``[batch, 1, size, size]`` float: the union of ``blocks`` squares of side ``size // 4`` per image,
    top-left corners uniform over the valid positions (drawn on ``device`` from ``generator``)."""
    side = max(1, size // 4)
    corners = torch.randint(0, size - side + 1, (batch, blocks, 2), device=device, generator=generator)
    r = torch.arange(size, device=device)
    ys = (r.view(1, 1, size) >= corners[..., :1]) & (r.view(1, 1, size) < corners[..., :1] + side)
    xs = (r.view(1, 1, size) >= corners[..., 1:]) & (r.view(1, 1, size) < corners[..., 1:] + side)
    m = (ys[..., :, None] & xs[..., None, :]).any(1)  # [batch, size, size]
    return m[:, None].float()


@register("inpaint")
class Inpaint(Method):
    recipe = "crop"
    # Demo defaults (a 2-core CPU): see docs/methods/inpaint.md.
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=128, epochs=12, optimizer="adamw",
                    lr=2e-3, weight_decay=0.05, warmup_epochs=0.1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("inpaint")
        g.add_argument("--mask", choices=["center", "random"], default="center",
                       help="center: one central square; random: --blocks squares of side image_size/4")
        g.add_argument("--hole", type=_hole, default=0.5, help="side of the central square / image size")
        g.add_argument("--blocks", type=positive_int, default=4, help="number of random blocks (--mask random)")
        g.add_argument("--overlap", type=_overlap, default=0,
                       help="px of the centre square left visible but still reconstructed (paper's code: 4 of 64)")
        g.add_argument("--overlap-weight", type=non_negative, default=10.0,
                       help="loss weight of the overlap band (paper's code: 10)")
        g.add_argument("--adv-weight", type=ranged(float, 0, 1, hi_open=True), default=0.0,
                       help="adversarial weight w in [0, 1): loss (1-w) L2 + w L_adv with a discriminator on the "
                            "inpainted region (0: off, L2 only; the paper: 0.001)")
        g.add_argument("--disc-width", type=positive_int, default=32,
                       help="discriminator width (first conv's channels; the released code: 64)")
        add_norm_pix_arg(g, default=0)
        add_input_norm_arg(g, default="none")

    @classmethod
    def check_config(cls, cfg):
        require_resnet(cfg, "inpaint")
        check_norm_pix(cfg)
        if cfg.get("norm_pix") and cfg.get("adv_weight"):
            raise ConfigError("--norm-pix with --adv-weight: the discriminator judges pixels, and a --norm-pix "
                              "prediction is per-patch normalized; use one of them")
        if cfg["overlap"] and cfg["mask"] != "center":
            raise ConfigError("--overlap applies to --mask center only")
        side = max(1, round(cfg["hole"] * cfg["image_size"]))
        if 2 * cfg["overlap"] >= side:
            raise ConfigError(f"--overlap {cfg['overlap']} leaves no hole in the {side} px centre square "
                              f"(--hole {cfg['hole']} of --image-size {cfg['image_size']})")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = wrap_input(self.backbone, cfg)
        s = cfg["image_size"]
        feature_stride(self.backbone)  # a ResNet (ValueError otherwise)
        h = self._feature_size(s)
        self.bottleneck = ChannelwiseFC(self.backbone.feature_dim, h, h)
        self.decoder = image_decoder(self.backbone, s)
        self.adv_weight = cfg.get("adv_weight", 0.0)
        self.norm_pix = cfg.get("norm_pix", 0)  # runs saved before --norm-pix reconstructed raw pixels
        self.discriminator = None
        if self.adv_weight > 0:
            self.discriminator = Discriminator(3, self._adv_size(s), cfg.get("disc_width", 32))

    def _feature_size(self, s: int) -> int:
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            h = self.backbone.forward_features(torch.zeros(1, 3, s, s)).shape[-1]
            self.backbone.train(was)
        return h

    def masks(self, x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(removed, loss weight) ``[B, 1, H, W]`` for the batch ``x``."""
        b, _, size, _ = x.shape
        cfg = self.cfg
        if cfg["mask"] == "center":
            removed, region = center_mask(b, size, cfg["hole"], cfg["overlap"], x.device)
            weight = torch.where(region == 2.0, torch.full_like(region, cfg["overlap_weight"]), region)
            return removed, weight
        removed = random_block_mask(b, size, cfg["blocks"], x.device, generator)
        return removed, removed

    def reconstruct(self, x_in: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck(self.backbone.forward_features(x_in)))

    def _adv_size(self, s: int) -> int:
        """Side of what D sees: the centre square (--mask center) or the whole image (random blocks)."""
        return max(1, round(self.cfg["hole"] * s)) if self.cfg["mask"] == "center" else s

    def adv_region(self, x: torch.Tensor) -> torch.Tensor:
        """What the discriminator judges: the centre square of ``x`` (--mask center) or all of it."""
        if self.cfg["mask"] != "center":
            return x
        size = x.shape[-1]
        side = self._adv_size(size)
        lo = (size - side) // 2
        return x[..., lo:lo + side, lo:lo + side]

    def adversarial_losses(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_G, L_D) on D's regions ``real`` / ``fake`` [B, 3, s, s]: L_G = BCE(D(fake), 1) with D's
        parameters detached (gradient to ``fake`` only), L_D = BCE(D(real), 1) + BCE(D(fake.detach()), 0)
        (gradient to D only). fp32 scalars."""
        d = self.discriminator
        frozen = {name: p.detach() for name, p in d.named_parameters()}
        g_logit = functional_call(d, frozen, (fake,)).float()
        loss_g = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
        r_logit, f_logit = d(real).float(), d(fake.detach()).float()
        loss_d = (F.binary_cross_entropy_with_logits(r_logit, torch.ones_like(r_logit))
                  + F.binary_cross_entropy_with_logits(f_logit, torch.zeros_like(f_logit)))
        return loss_g, loss_d

    def forward(self, views, labels):
        x = views[0]
        removed, weight = self.masks(x)
        pred = self.reconstruct(x * (1 - removed).to(x.dtype))
        loss = reconstruction_loss(pred, x, weight, self.norm_pix)
        if self.discriminator is None:
            return loss, {}
        region = (weight > 0).to(pred.dtype)
        fake = self.adv_region(x * (1 - region) + pred * region)
        loss_g, loss_d = self.adversarial_losses(self.adv_region(x), fake)
        w = self.adv_weight
        total = (1 - w) * loss + w * loss_g + loss_d
        return total, {"rec": loss.detach(), "adv_g": loss_g.detach(), "adv_d": loss_d.detach()}

    def visualize(self, views, labels, path, epoch):
        x = views[0]
        gen = torch.Generator(device=x.device).manual_seed(0)
        removed, weight = self.masks(x, gen)
        x_in = x * (1 - removed)
        norm_pix = self.norm_pix
        # --norm-pix predictions are per-patch standardized; shown with each patch's TRUE mean / std, which the
        # network never sees (so the titles say so: the patch means alone already draw the shapes coarsely)
        stats = " (true patch stats)" if norm_pix else ""
        pred = unnormalize_patches(self.reconstruct(x_in), x, norm_pix)
        region = (weight > 0).to(x.dtype)
        pasted = x * (1 - region) + pred * region
        rows = [[denormalize(a), denormalize(b), denormalize(c), denormalize(d)]
                for a, b, c, d in zip(x, x_in, pasted, pred)]
        save_grid(rows, path, col_titles=["image", "input", f"inpainted ep{epoch}{stats}",
                                                f"prediction{stats}"])
