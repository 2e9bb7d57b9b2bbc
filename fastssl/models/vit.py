"""Vision Transformer backbones (ViT-Tiny/Small/Base), pre-norm, attention through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).

Parameter and state-dict names follow timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``,
``head``), so timm / DeiT / DINO / MAE checkpoints of the same configuration load directly;
``vit_base(patch_size=16, img_size=224, num_classes=1000)`` has exactly timm's
``vit_base_patch16_224`` parameter count, 86,567,656.

``forward_features(x)`` returns all tokens ``[B, 1 + N, D]`` after the final LayerNorm;
``forward(x)`` returns the cls token (``pool="cls"``) or the mean of the patch tokens
(``pool="mean"``), ``[B, feature_dim]``, or logits when ``num_classes > 0``.

``model.config()`` gives every constructor argument as built and ``model.arch`` its builder's name, so
``build_backbone(model.arch, **model.config())`` rebuilds it (what an exported backbone records).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["check_patch_grid", "PatchEmbed", "Attention", "Mlp", "Block", "VisionTransformer", "sincos_pos_embed_2d",
           "vit_tiny", "vit_small", "vit_base"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _plain(v: int | tuple[int, int]) -> int | list[int]:
    """A size as JSON data: an int for a square, else [H, W]."""
    h, w = _pair(v)
    return h if h == w else [h, w]


def check_patch_grid(size: int | tuple[int, int], patch_size: int | tuple[int, int], what: str = "img_size") -> None:
    """The patch embedding's rule: ValueError ``"<what> (H, W) is not divisible by patch_size (p, q)"`` unless the
    patches tile ``size`` exactly. Shared by ``PatchEmbed`` (built size and every input) and the command line's
    parse-time check (fastssl.methods.base.check_backbone), so both apply the same rule."""
    size, patch = _pair(size), _pair(patch_size)
    if min(patch) < 1 or size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"{what} {size} is not divisible by patch_size {patch}")


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: a stride-``patch_size`` Conv2d, then flatten.

    ``forward(x: [B, C, H, W]) -> [B, (H/p) * (W/p), D]``. Kept as its own module (key
    ``patch_embed.proj``) so it can be swapped for a fused kernel.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        check_patch_grid(self.img_size, self.patch_size, "img_size")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"PatchEmbed expects [B, C, H, W], got shape {tuple(x.shape)}")
        check_patch_grid(tuple(x.shape[-2:]), self.patch_size, "input size")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; keys ``qkv`` (one Linear D -> 3D) and ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or p=0)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE / MoCo v3): ``[1, (1 +) gh*gw, embed_dim]``.

    Half the channels encode the row, half the column; each half is ``[sin(p*w), cos(p*w)]`` with
    ``w_i = 10000^(-i / (D/4))``. The cls token's embedding is zero.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    gh, gw = grid_size
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                            indexing="ij")

    def enc(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([enc(ys), enc(xs)], dim=1)  # [gh*gw, D]
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)
    return emb.float().unsqueeze(0)


class VisionTransformer(nn.Module):
    """ViT backbone. ``forward(x: float [B, C, H, W]) -> [B, feature_dim]``.

    Args:
        img_size: training image size; sets the position-embedding grid (``img_size / patch_size``).
            Other input sizes (multiples of the patch) work: the embedding is interpolated bicubically
            (learned) or recomputed (sin-cos).
        patch_size: 16 by default; 8 or 4 for small (32-64 px) images.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer.
        num_classes: 0 (default) -> ``head = nn.Identity()``; > 0 -> ``nn.Linear(embed_dim, num_classes)``.
        pool: ``"cls"`` (default) or ``"mean"`` (mean of the patch tokens) for ``forward``.
        pos_embed: ``"learned"`` (default, a Parameter) or ``"sincos"`` (fixed, a persistent buffer
            under the same key ``pos_embed``, so it is neither trained nor counted as a parameter).
        drop_rate, attn_drop_rate, drop_path_rate: dropout / stochastic depth (linearly increasing
            over depth, as in DeiT/DINO).

    Attributes:
        feature_dim: ``embed_dim``.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, num_classes: int = 0, pool: str = "cls", pos_embed: str = "learned",
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        # What rebuilds this network (``config()``): every constructor argument, as built.
        self.init_kwargs = {"img_size": _plain(img_size), "patch_size": _plain(patch_size), "in_chans": in_chans,
                            "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                            "qkv_bias": qkv_bias, "num_classes": num_classes, "pool": pool, "pos_embed": pos_embed,
                            "drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate, "drop_path_rate": drop_path_rate}
        self.arch: str | None = None  # the builder's name (vit_tiny, ...), set by it
        self.pool = pool
        self.pos_embed_type = pos_embed
        self.embed_dim = self.feature_dim = embed_dim
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        n_tok = self.patch_embed.num_patches + 1
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_tok, embed_dim))
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.patch_embed.grid_size))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def config(self) -> dict:
        """The keyword arguments this network was built with (JSON-able; ``pool`` as it is now):
        ``build_backbone(self.arch, **self.config())`` builds the same network (modules, shapes, pooling, position
        embedding and forward; the weights aside)."""
        return {**self.init_kwargs, "pool": self.pool}

    def _init_weights(self) -> None:
        # timm / DeiT: truncated normal (std .02) for tokens and Linear layers; the patch projection
        # like a Linear layer (xavier on the flattened kernel, as in MAE).
        if self.pos_embed_type == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.patch_embed.grid_size:
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            return sincos_pos_embed_2d(self.embed_dim, grid).to(self.pos_embed)
        gh, gw = self.patch_embed.grid_size
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: ``[B, 1 + N, embed_dim]`` (index 0 is the cls token)."""
        grid = (x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed_for(grid))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The transformer over given tokens ``[B, N, embed_dim]`` (position embeddings already added,
        e.g. MAE's visible tokens): dropout, blocks, final norm -> ``[B, N, embed_dim]``."""
        x = self.pos_drop(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(x)
        feats = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)
        return self.head(feats)

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay (timm's hook)."""
        return {"pos_embed", "cls_token"}


_VIT_CONFIGS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


def _vit(name: str, **kw) -> VisionTransformer:
    cfg = dict(_VIT_CONFIGS[name], mlp_ratio=4.0)
    cfg.update(kw)
    model = VisionTransformer(**cfg)
    model.arch = name
    return model


def vit_tiny(**kw) -> VisionTransformer:
    """ViT-Tiny: dim 192, depth 12, 3 heads (5,717,416 params at /16, 224 px, 1000 classes)."""
    return _vit("vit_tiny", **kw)


def vit_small(**kw) -> VisionTransformer:
    """ViT-Small: dim 384, depth 12, 6 heads (22,050,664 params at /16, 224 px, 1000 classes)."""
    return _vit("vit_small", **kw)


def vit_base(**kw) -> VisionTransformer:
    """ViT-Base: dim 768, depth 12, 12 heads (86,567,656 params at /16, 224 px, 1000 classes)."""
    return _vit("vit_base", **kw)


