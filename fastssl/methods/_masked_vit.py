"""Shared parts of the methods that mask ViT patch tokens (mae, halves): the config check, the MAE-style
encoder (fixed sin-cos position embeddings, mean pooling, the original MAE init) and the MAE decoder."""

from __future__ import annotations

from fastssl.base.errors import ConfigError
from fastssl.methods.base import backbone_kwargs
from fastssl.models import build_backbone
from fastssl.models.mae import MAEDecoder, init_mae_weights
from fastssl.models.vit import VisionTransformer

DECODER_HEAD_DIM = 32  # decoder heads = decoder_dim / 32 (MAE: the paper's 512 / 16)


def check_vit_config(cfg: dict, not_vit: str) -> int:
    """The patch size (``backbone_kwargs``); ConfigError unless ``--arch`` is a ViT (message ``--arch <arch>:
    <not_vit>``). That the patch divides ``--image-size`` is the backbone's own rule, checked for every method
    after ``check_config`` (fastssl.methods.base.check_backbone, with sizes that work)."""
    if not str(cfg["arch"]).startswith("vit"):
        raise ConfigError(f"--arch {cfg['arch']}: {not_vit}")
    return backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"])["patch_size"]


def mae_backbone(cfg: dict) -> VisionTransformer:
    """``--arch`` at ``--image-size`` with fixed 2-D sin-cos position embeddings, mean pooling over the
    patch tokens (what kNN / the linear probe see) and MAE's init (``init_mae_weights``)."""
    kw = backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"])
    backbone = build_backbone(cfg["arch"], pos_embed="sincos", pool="mean", **kw)
    init_mae_weights(backbone)
    return backbone


def mae_decoder(backbone: VisionTransformer, cfg: dict) -> MAEDecoder:
    """An :class:`MAEDecoder` for ``backbone``'s patch grid: ``--decoder-dim`` wide (heads of
    ``DECODER_HEAD_DIM`` dims), ``--decoder-depth`` blocks."""
    pe = backbone.patch_embed
    return MAEDecoder(backbone.embed_dim, pe.grid_size, pe.patch_size[0], cfg["decoder_dim"], cfg["decoder_depth"],
                      cfg["decoder_dim"] // DECODER_HEAD_DIM)
