"""``halves`` — complementary masked halves (a pretext task of fastssl's own).

The task: take two augmented views of an image (the ``simclr`` recipe: random resized crop, flip,
colour jitter, grayscale, blur, solarize), draw two **disjoint** random sets of K = round(keep x L)
patch positions (at least 1, at most L // 2; ``--keep 0.5``: complementary halves, the name's origin; the
default 0.25: a quarter each), let the encoder see only view 1's patches at the first set's positions and
only view 2's at the second's, mean-pool each pass's tokens, and make the two pooled embeddings of an image
find each other among the batch (NT-Xent over the 2N "halves", cosine / temperature).

Why it should learn transferable features: the two halves share no patch position and, through the
augmentations, no exact colours or crop, so the only way to match them among the batch is to encode
what both halves have in common — the object's shape, its extent, its texture statistics, not the
pixels of any one patch. Each pass runs on its visible tokens only (``fastssl.ops.masked_patch_embed``):
at ``--keep 0.5`` a step over two views costs about what one full view costs, at 0.25 about half that.
Optionally (``--recon-weight w > 0``) a light MAE decoder also
reconstructs each view's hidden patches from its visible ones (``fastssl.ops.unshuffle`` +
``masked_patch_mse``), adding a local, pixel-level signal to the global one.

Related work: SplitMask (El-Nouby et al. 2021, "Are Large-scale Datasets Necessary for
Self-Supervised Pre-training?") contrasts two disjoint patch subsets of the *same* view (plus a
reconstruction loss); MSN (Assran et al. 2022) matches a masked view to an unmasked one by prototypes.
Here the halves come from two differently augmented views and the loss is plain NT-Xent with the
batch's other halves as negatives.

Masks: :func:`complementary_masks` draws view 1's kept positions with ``random_masking`` and view 2's
among the rest (a second ``random_masking`` over the complement), both from the global torch RNG,
which the trainer seeds and checkpoints (runs and resumes are reproducible).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.base.argtypes import fraction, positive_float, positive_int, probability, ranged
from fastssl.base.errors import ConfigError
from fastssl.methods._masked_vit import DECODER_HEAD_DIM, check_vit_config, mae_backbone, mae_decoder
from fastssl.methods.base import Method, register
from fastssl.models import MLPHead
from fastssl.models.mae import mae_encode, masked_input
from fastssl.ops import masked_patch_mse, masked_patch_mse_ref, nt_xent, nt_xent_ref, random_masking

VIZ_SEED = 0  # the picture's masks: the same images and masks every epoch
keep_fraction = ranged(float, 0, 0.5, lo_open=True)  # (0, 0.5]: two disjoint sets must fit in the grid


def keep_count(num_patches: int, keep: float) -> int:
    """K = round(L * keep) patches per view, at least 1, at most L // 2 (the two sets are disjoint)."""
    return min(max(1, round(num_patches * keep)), num_patches // 2)


def _restore(ids_keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ids_restore of a mask whose kept ids are ascending: the slot of each position in [kept | masked],
    both parts ascending (random_masking's convention)."""
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)  # kept (0) positions first, each part ascending
    return torch.argsort(ids_shuffle, dim=1)


def complementary_masks(batch: int, num_patches: int, keep: float, generator: torch.Generator | None = None,
                        device=None) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Two disjoint random patch sets per sample, K = ``keep_count(L, keep)`` patches each.

    Returns ``((ids_keep1, ids_restore1, mask1), (ids_keep2, ids_restore2, mask2))`` in
    ``fastssl.ops.random_masking``'s format: ids_keep int64 [B, K] ascending, ids_restore int64 [B, L],
    mask float32 [B, L] (1 = hidden). Set 1 is ``random_masking`` keeping K of L; set 2 keeps K of the
    L - K positions set 1 hides (a second ``random_masking`` over them, the complement itself when
    2K = L). So mask1 + mask2 >= 1 everywhere, and == 1 everywhere when 2K = L. Every draw comes from
    ``generator`` (default: the global CPU generator). Raises ValueError for keep outside (0, 0.5] or
    L < 2.
    """
    if not 0 < keep <= 0.5:
        raise ValueError(f"keep must be in (0, 0.5], got {keep}")
    if num_patches < 2:
        raise ValueError(f"need at least 2 patches to split, got {num_patches}")
    n = num_patches
    k = keep_count(n, keep)
    ids1, restore1, mask1 = random_masking(batch, n, (n - k) / n, generator=generator, device=device)
    rest = torch.argsort(restore1, dim=1)[:, k:]  # the positions set 1 hides, ascending [B, L - K]
    if 2 * k == n:
        ids2 = rest
    else:
        sub, _, _ = random_masking(batch, n - k, (n - 2 * k) / (n - k), generator=generator, device=device)
        ids2 = rest.gather(1, sub)  # ascending: rest and sub are
    mask2 = torch.ones(batch, n, device=mask1.device).scatter_(1, ids2, 0.0)
    return (ids1, restore1, mask1), (ids2, _restore(ids2, mask2), mask2)


def complementary_masks_ref(ids_keep1: list[list[int]], sub: list[list[int]] | None,
                            num_patches: int) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """Plain-Python spec of set 2 from set 1's kept ids and the second draw ``sub`` (indices into the
    ascending complement; None when 2K = L): (ids_keep2, mask2, ids_restore2) as lists."""
    ids2, masks, restores = [], [], []
    for b, kept in enumerate(ids_keep1):
        rest = sorted(set(range(num_patches)) - set(kept))
        chosen = rest if sub is None else sorted(rest[j] for j in sub[b])
        mask = [0.0 if p in chosen else 1.0 for p in range(num_patches)]
        order = chosen + [p for p in range(num_patches) if p not in chosen]
        ids2.append(chosen)
        masks.append(mask)
        restores.append([order.index(p) for p in range(num_patches)])
    return ids2, masks, restores


@register("halves")
class Halves(Method):
    recipe = "simclr"  # two augmented views; the method masks them itself
    # Demo defaults: ViT-Tiny at patch 8 on 64 px (64 patches), batch 128, AdamW. Each view shows a quarter
    # of the patches (--keep 0.25, 16 of 64, disjoint): a step costs about half a --keep 0.5 step, so 8 epochs
    # take the time 4 did at 0.5, and learned more at that budget on both datasets (issue 23,
    # docs/methods/halves.md).
    defaults = dict(arch="vit_tiny", image_size=64, batch_size=128, epochs=8, optimizer="adamw", lr=1e-3,
                    weight_decay=0.05, warmup_epochs=0.5)
    adamw_betas = (0.9, 0.95)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("halves")
        g.add_argument("--keep", type=keep_fraction, default=0.25,
                       help="fraction of the patches each view shows, in (0, 0.5]; the two sets are disjoint "
                            "(0.5: complementary halves)")
        g.add_argument("--temperature", type=positive_float, default=0.2, help="NT-Xent temperature tau (> 0)")
        g.add_argument("--proj-hidden", type=positive_int, default=1024, help="projector hidden width")
        g.add_argument("--proj-dim", type=positive_int, default=128, help="projector output width")
        g.add_argument("--recon-weight", type=ranged(float, 0), default=0.0,
                       help="weight of an MAE reconstruction of each view's hidden patches (0: off)")
        g.add_argument("--decoder-dim", type=ranged(int, DECODER_HEAD_DIM), default=128,
                       help=f"reconstruction decoder width, a multiple of {DECODER_HEAD_DIM}")
        g.add_argument("--decoder-depth", type=positive_int, default=1, help="reconstruction decoder blocks")
        g.add_argument("--jitter", type=probability, default=0.8,
                       help="colour jitter strength in [0, 1] (hue = jitter/4)")
        g.add_argument("--min-scale", type=fraction, default=0.5, help="smallest random-resized-crop area")

    @classmethod
    def check_config(cls, cfg):
        patch = check_vit_config(cfg, "halves masks ViT patch tokens; use vit_tiny, vit_small or vit_base")
        if cfg["image_size"] % patch == 0 and (cfg["image_size"] // patch) ** 2 < 2:  # (else: check_backbone)
            raise ConfigError(f"--image-size {cfg['image_size']} gives one {patch} px patch: halves splits the patches "
                              "into two disjoint sets, so it needs at least 2")
        if cfg["batch_size"] < 2:
            raise ConfigError(f"--batch-size {cfg['batch_size']}: halves contrasts each half with the other "
                              "images of the global batch, so it needs a global batch of at least 2")
        if cfg["decoder_dim"] % DECODER_HEAD_DIM:
            raise ConfigError(f"--decoder-dim {cfg['decoder_dim']} is not a multiple of {DECODER_HEAD_DIM}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = mae_backbone(cfg)
        pe = self.backbone.patch_embed
        self.patch_size, self.num_patches = pe.patch_size[0], pe.num_patches
        self.projector = MLPHead(self.backbone.embed_dim, cfg["proj_hidden"], cfg["proj_dim"], num_layers=2)
        self.keep, self.temperature = cfg["keep"], cfg["temperature"]
        self.recon_weight = cfg["recon_weight"]
        self.decoder = None
        if self.recon_weight > 0:
            self.decoder = mae_decoder(self.backbone, cfg)
        self.gather = torch.distributed.is_available() and torch.distributed.is_initialized()

    def recipe_options(self):
        s = self.cfg["jitter"]
        return {"jitter": s, "hue": min(s / 4, 0.5), "scale": (self.cfg["min_scale"], 1.0)}

    def embed_halves(self, views, masks, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(z1, z2) projections [N, proj_dim] (fp32, or fp64 for a fp64 model) of the two halves, and the
        latents [N, 1+K, D] of each (for the reconstruction). One encoder pass over both halves (2N samples
        of K tokens)."""
        (ids1, _, _), (ids2, _, _) = masks
        latent = mae_encode(self.backbone, torch.cat(views), torch.cat([ids1, ids2]), fused)
        pooled = latent[:, 1:].mean(dim=1)  # the backbone's pool="mean": patch tokens, no cls
        z = self.projector(pooled)
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # fp32 loss under autocast; fp64 stays fp64
        z1, z2 = z.chunk(2)
        return z1, z2, list(latent.chunk(2))

    def losses(self, views, masks, fused: bool = True) -> tuple[torch.Tensor, dict]:
        z1, z2, latents = self.embed_halves(views, masks, fused)
        contrast = nt_xent(z1, z2, self.temperature, gather=self.gather) if fused else \
            nt_xent_ref(z1, z2, self.temperature)
        loss, metrics = contrast, {"contrast": contrast.detach()}
        if self.decoder is not None:
            mse = masked_patch_mse if fused else masked_patch_mse_ref
            recon = sum(mse(self.decoder(lat, restore, fused), img, mask, self.patch_size, True)
                        for lat, img, (_, restore, mask) in zip(latents, views, masks)) / 2
            loss = loss + self.recon_weight * recon
            metrics["recon"] = recon.detach()
        with torch.no_grad():  # how often a half's nearest other half (cosine) is its partner
            sim = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
            metrics["match"] = (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
        return loss, metrics

    def forward(self, views, labels):
        masks = complementary_masks(views[0].shape[0], self.num_patches, self.keep, device=views[0].device)
        return self.losses(views, masks)

    def visualize(self, views, labels, path, epoch):
        """Per image: view 1 | its visible half | view 2's visible (complementary) half | the view-2 half
        the view-1 half is closest to among the shown images (row title: right/wrong, cosine). Fixed
        masks (a private generator), so epochs are comparable."""
        from fastssl.base.viz import denormalize, save_grid

        v1, v2 = (v.float() for v in views[:2])
        g = torch.Generator().manual_seed(VIZ_SEED)
        masks = complementary_masks(v1.shape[0], self.num_patches, self.keep, generator=g, device=v1.device)
        z1, z2, _ = self.embed_halves([v1, v2], masks)
        sim = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
        best = sim.argmax(1).cpu()
        half1 = masked_input(v1, masks[0][2], self.patch_size)
        half2 = masked_input(v2, masks[1][2], self.patch_size)
        rows, titles = [], []
        for i in range(v1.shape[0]):
            j = int(best[i])
            rows.append([denormalize(v1[i]), denormalize(half1[i]), denormalize(half2[i]), denormalize(half2[j])])
            titles.append(f"{'right' if j == i else 'wrong'} cos {float(sim[i, j]):.2f}")
        save_grid(rows, path, row_titles=titles,
                  col_titles=[f"epoch {epoch}: view 1", "half 1", "half 2 (partner)", "closest half 2"])
