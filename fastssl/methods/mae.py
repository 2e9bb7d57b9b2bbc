"""MAE (He et al. 2021): mask a random 75% of the patches, encode the visible ones with a ViT,
reconstruct the pixels of the masked ones with a light decoder; MSE on per-patch normalized pixels.

The token bookkeeping runs in fastssl's fused ops (random_masking, masked_patch_embed, unshuffle,
masked_patch_mse; see fastssl/models/mae.py). Masks come from ``random_masking`` seeded from the
global torch RNG, which the trainer seeds and checkpoints, so runs and resumes are reproducible.
The encoder is the method's ``backbone`` (fixed sin-cos position embeddings; features for kNN and the
linear probe are the mean of the patch tokens of the whole image).
"""

from __future__ import annotations

import argparse

import torch

from fastssl.base.argtypes import positive_int
from fastssl.base.errors import ConfigError
from fastssl.base.viz import denormalize, save_grid
from fastssl.methods._masked_vit import DECODER_HEAD_DIM, check_vit_config, mae_backbone, mae_decoder
from fastssl.methods.base import Method, register
from fastssl.models.mae import mae_predict, masked_input, reconstruct_images
from fastssl.ops import masked_patch_mse, masked_patch_mse_ref, random_masking
from fastssl.ops.random_masking import num_keep

VIZ_SEED = 0  # the picture's masks: the same images and the same masks every epoch


def _mask_ratio(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) (the fraction of patches removed), got {value}")
    return value


def _decoder_dim(text: str) -> int:
    value = int(text)
    if value < DECODER_HEAD_DIM or value % DECODER_HEAD_DIM:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of {DECODER_HEAD_DIM} (heads of "
                                         f"{DECODER_HEAD_DIM} dims), got {value}")
    return value


def mae_forward(encoder, decoder, images: torch.Tensor, ids_keep: torch.Tensor, ids_restore: torch.Tensor,
                mask: torch.Tensor, norm_pix: bool = True, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One MAE step's forward on given masks -> (loss: fp32 scalar, pred ``[B, L, p*p*C]``): the model's
    prediction (fastssl.models.mae.mae_predict) and the MSE on the masked patches only, of per-patch
    normalized pixels with ``norm_pix`` (He et al. 2021, sec. 3; the original ``forward_loss``), by the fused
    ``masked_patch_mse`` (``fused=False``: its reference on the original token path)."""
    pred = mae_predict(encoder, decoder, images, ids_keep, ids_restore, fused)
    loss_fn = masked_patch_mse if fused else masked_patch_mse_ref
    return loss_fn(pred, images, mask, decoder.patch_size, norm_pix), pred


@register("mae")
class MAE(Method):
    recipe = "mae"
    # The built-in demo (64 px, 2-core CPU): ViT-Tiny at patch 8 (64 tokens, 16 visible), a 2 x 128
    # decoder; batch 128 at base lr 1e-3 (the same lr as batch 256 at 5e-4, twice the updates: linear
    # probe 36.7% against 27.7%, random init 28.9%), measured in docs/methods/mae.md. ImageNet (the paper):
    # vit_base, 224 px, --decoder-depth 8 --decoder-dim 512, batch 4096, lr 1.5e-4, 800 epochs, 40 warmup.
    defaults = dict(arch="vit_tiny", image_size=64, batch_size=128, epochs=10, optimizer="adamw", lr=1e-3,
                    weight_decay=0.05, warmup_epochs=1)
    adamw_betas = (0.9, 0.95)  # the paper's AdamW beta2

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("mae")
        g.add_argument("--mask-ratio", type=_mask_ratio, default=0.75, help="fraction of patches removed")
        g.add_argument("--norm-pix", action=argparse.BooleanOptionalAction, default=True,
                       help="targets are per-patch normalized pixels (the paper's norm_pix_loss)")
        g.add_argument("--decoder-depth", type=positive_int, default=2, help="decoder blocks (the paper: 8)")
        g.add_argument("--decoder-dim", type=_decoder_dim, default=128,
                       help=f"decoder width, a multiple of {DECODER_HEAD_DIM} (the paper: 512)")

    @classmethod
    def check_config(cls, cfg):
        patch = check_vit_config(cfg, "MAE needs a ViT (vit_tiny, vit_small, vit_base)")
        n = (cfg["image_size"] // patch) ** 2
        if cfg["image_size"] % patch == 0 and n - num_keep(n, cfg["mask_ratio"]) < 1:  # (else: check_backbone)
            # the loss is a mean over the masked patches: with none it is 0/0 (a loss of 0 that trains nothing)
            raise ConfigError(f"--mask-ratio {cfg['mask_ratio']:g} masks none of the {n} patches (--image-size "
                              f"{cfg['image_size']}, {patch} px patches), and MAE's loss is over the masked ones; "
                              f"use --mask-ratio >= {1 / n:.3g}" if n > 1 else
                              f"--image-size {cfg['image_size']} is a single {patch} px patch: MAE masks some patches "
                              f"and encodes the others, so it needs at least 2; e.g. --image-size {2 * patch}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = mae_backbone(cfg)
        pe = self.backbone.patch_embed
        self.patch_size, self.num_patches = pe.patch_size[0], pe.num_patches
        self.decoder = mae_decoder(self.backbone, cfg)
        self.mask_ratio, self.norm_pix = cfg["mask_ratio"], cfg["norm_pix"]

    def forward(self, views, labels):
        images = views[0]
        ids_keep, ids_restore, mask = random_masking(images.shape[0], self.num_patches, self.mask_ratio,
                                                     device=images.device)
        loss, _ = mae_forward(self.backbone, self.decoder, images, ids_keep, ids_restore, mask, self.norm_pix)
        return loss, {}

    def visualize(self, views, labels, path, epoch):
        """image | masked input | reconstruction | reconstruction with the visible patches pasted back,
        for fixed images and fixed masks (a private generator). Predictions are un-normalized with the
        visible patches' image-level statistics (``fastssl.models.mae.reconstruct_images``)."""
        images = views[0].float()
        g = torch.Generator().manual_seed(VIZ_SEED)
        ids_keep, ids_restore, mask = random_masking(images.shape[0], self.num_patches, self.mask_ratio,
                                                     generator=g, device=images.device)
        loss, pred = mae_forward(self.backbone, self.decoder, images, ids_keep, ids_restore, mask, self.norm_pix)
        recon, pasted = reconstruct_images(pred, images, mask, self.patch_size, self.norm_pix)
        shown = masked_input(images, mask, self.patch_size)
        rows = [[denormalize(images[i]), denormalize(shown[i]), denormalize(recon[i]), denormalize(pasted[i])]
                for i in range(images.shape[0])]
        save_grid(rows, path, col_titles=["image", "masked", "recon", "recon+visible"])
