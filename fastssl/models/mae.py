"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"), wired
from fastssl's ViT and the fused token ops.

- encoder: a :class:`~fastssl.models.vit.VisionTransformer` with fixed 2-D sin-cos position
  embeddings; it sees the visible patches only: :func:`mae_encode` embeds just the kept patches
  (``fastssl.ops.masked_patch_embed``), prepends the cls token and runs the blocks.
- decoder: :class:`MAEDecoder` (keys as the original: ``decoder_embed``, ``mask_token``,
  ``decoder_pos_embed`` (fixed sin-cos), ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``):
  visible latents -> decoder width, mask tokens at the masked positions plus the position embedding
  in one pass (``fastssl.ops.unshuffle``), blocks, a linear prediction of each patch's p*p*C pixels.
- the loss is the method's (fastssl.methods.mae: ``fastssl.ops.masked_patch_mse`` on the masked patches,
  per-patch normalized pixels with ``norm_pix``); this module returns predictions.

``fused=False`` runs the original token path on the same ids instead (Conv2d on every patch + gather,
concatenate + gather): the reference the tests and benches compare to.
Init follows the original ``initialize_weights``: xavier-uniform Linear weights (and the flattened
patch projection), zero biases, LayerNorm 1/0, cls and mask tokens N(0, 0.02).
"""

from __future__ import annotations

import torch
from torch import nn

from fastssl.models.vit import Block, VisionTransformer, sincos_pos_embed_2d
from fastssl.ops import masked_patch_embed, masked_patch_embed_ref, unshuffle
from fastssl.ops.masked_patch_mse import patchify, unpatchify
from fastssl.ops.unshuffle import unshuffle_ref

__all__ = ["MAEDecoder", "init_mae_weights", "mae_encode", "mae_predict", "reconstruct_images"]

NORM_PIX_EPS = 1e-6


def init_mae_weights(module: nn.Module) -> None:
    """The original MAE initialization (models_mae.py ``initialize_weights`` / ``_init_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):  # the patch projection, like a Linear layer
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name in ("cls_token", "mask_token"):
        t = getattr(module, name, None)
        if isinstance(t, nn.Parameter):
            nn.init.normal_(t, std=0.02)


class MAEDecoder(nn.Module):
    """MAE's light decoder: ``forward(latent [B, 1+K, D], ids_restore [B, L]) -> pred [B, L, p*p*C]``.

    Args: ``embed_dim`` D of the encoder, ``grid`` (gh, gw) patch grid, ``patch_size`` p,
    ``decoder_dim`` (512 at ViT-B scale; a multiple of 4 for the sin-cos embedding), ``decoder_depth``
    (8), ``decoder_heads`` (16), ``in_chans`` C.
    """

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch_size: int, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, mlp_ratio: float = 4.0, in_chans: int = 3):
        super().__init__()
        self.grid, self.patch_size, self.in_chans = tuple(grid), patch_size, in_chans
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, self.grid))
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)
        init_mae_weights(self)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, fused: bool = True) -> torch.Tensor:
        x = self.decoder_embed(latent)
        pos = self.decoder_pos_embed
        if fused:
            tokens = unshuffle(x[:, 1:], self.mask_token, ids_restore, pos[:, 1:])
            x = torch.cat([x[:, :1] + pos[:, :1], tokens], dim=1)
        else:  # the original: repeat the mask token, concatenate, gather, then add pos to all
            x = torch.cat([x[:, :1], unshuffle_ref(x[:, 1:], self.mask_token, ids_restore)], dim=1) + pos
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, 1:])


def mae_encode(encoder: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor,
               fused: bool = True) -> torch.Tensor:
    """Encode the visible patches: images [B, C, H, W], ids_keep [B, K] -> latent [B, 1+K, D] (cls first)."""
    pe = encoder.patch_embed
    if tuple(images.shape[-2:]) != pe.img_size:
        raise ValueError(f"MAE expects {pe.img_size} images (its position grid), got {tuple(images.shape[-2:])}")
    p = pe.patch_size[0]
    pos = encoder.pos_embed
    embed = masked_patch_embed if fused else masked_patch_embed_ref
    x = embed(images, pe.proj.weight, pe.proj.bias, pos[:, 1:], p, ids_keep)
    cls = (encoder.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
    return encoder.forward_tokens(torch.cat([cls, x], dim=1))


def mae_predict(encoder: VisionTransformer, decoder: MAEDecoder, images: torch.Tensor, ids_keep: torch.Tensor,
                ids_restore: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """One MAE forward on given masks -> the decoder's prediction of every patch ``[B, L, p*p*C]`` (the
    loss is the method's: fastssl.methods.mae.mae_forward). ``fused=False``: the original token path
    (Conv2d on all patches, gather, cat + gather)."""
    return decoder(mae_encode(encoder, images, ids_keep, fused), ids_restore, fused)


@torch.no_grad()
def reconstruct_images(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
                       norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images from predictions for a picture: (reconstruction, reconstruction with the visible patches
    pasted back), both [B, C, H, W] float32 in the images' (normalized) units.

    Never reads a masked patch's pixels: with ``norm_pix`` the predictions are normalized pixels, and
    every patch is un-normalized with **image-level statistics of the visible patches**: the mean of
    their per-patch means and the mean of their per-patch (unbiased) variances (a masked patch's own
    mean and variance would leak its true content). Masked entries are excluded with ``where``, so
    even inf/NaN in masked pixels cannot reach the result.
    """
    images = images.float()
    b, c, h, w = images.shape
    target = patchify(images, patch_size)  # [B, L, P]
    pred = pred.float()
    masked = (mask > 0)[..., None]  # [B, L, 1]
    visible_target = torch.where(masked, 0.0, target)
    if norm_pix:
        n_vis = (~masked).sum(dim=1).clamp_min(1)  # [B, 1]
        npix = target.shape[-1]
        means = visible_target.mean(dim=-1, keepdim=True)  # [B, L, 1]; 0 for masked patches
        centered = torch.where(masked, 0.0, visible_target - means)
        variances = (centered * centered).sum(dim=-1, keepdim=True) / max(npix - 1, 1)
        mu = means.sum(dim=1) / n_vis  # [B, 1]
        var = variances.sum(dim=1) / n_vis
        pix = pred * (var + NORM_PIX_EPS).sqrt()[:, None] + mu[:, None]
    else:
        pix = pred
    grid = (h // patch_size, w // patch_size)
    recon = unpatchify(pix, patch_size, grid, c)
    pasted = unpatchify(torch.where(masked, pix, visible_target), patch_size, grid, c)
    return recon, pasted


def masked_input(images: torch.Tensor, mask: torch.Tensor, patch_size: int, fill: float = 0.0) -> torch.Tensor:
    """The encoder's view for a picture: masked patches replaced by ``fill`` (normalized units)."""
    b, c, h, w = images.shape
    grid = (h // patch_size, w // patch_size)
    target = patchify(images.float(), patch_size)
    return unpatchify(torch.where((mask > 0)[..., None], fill, target), patch_size, grid, c)
