"""MAE token path on the CPU: fastssl's fused ops against the original MAE code's path (facebookresearch/
mae models_mae.py, which lightly and timm follow too) on the same inputs in the same run; ratio and
peak memory of each; rows go to benches/results/<cpu>.csv.

- masking + masked patch embedding at ViT-B/16 shapes (B=64, 224 px, L=196, D=768, ratio 0.75),
  forward + backward into the projection: ``random_masking`` + ``masked_patch_embed`` against Conv2d
  on every patch + pos + torch.rand/argsort masking + gather;
- unshuffle (B=64, L=196, 49 visible, decoder width 512), forward + backward, against the original
  repeat + cat + gather + pos;
- the loss (pred [64, 196, 768], norm_pix), forward + backward, against patchify + normalize + error
  of all L patches + masked mean;
- one whole MAE training step (encoder + decoder, forward + backward + AdamW) at the demo size
  (vit_tiny, 64 px, patch 8, decoder 2 x 128, batch 64) with the fused ops against the same model on
  the original token path: images/s.

CUDA rows (B=256, bf16, GB/s against the measured copy bandwidth, ViT-B/16 training step):
benches/gpu_mae.py, called by benches/gpu_check.sh.
"""

from __future__ import annotations

import harness
import torch
import torch.nn.functional as F

from fastssl.methods.mae import mae_forward
from fastssl.models.mae import MAEDecoder, init_mae_weights
from fastssl.models.vit import vit_tiny
from fastssl.ops import (
    masked_patch_embed,
    masked_patch_mse,
    masked_patch_mse_ref,
    random_masking,
    random_masking_ref,
    unshuffle,
    unshuffle_ref,
)
from fastssl.ops.random_masking import num_keep

B, IMG, P, D, RATIO = 64, 224, 16, 768, 0.75
L = (IMG // P) ** 2
DEC = 512


def original_mask_embed(images, weight, bias, pos, ratio):
    """PatchEmbed (Conv2d on all patches) + pos, then the original random_masking's rand/argsort/gather."""
    x = F.conv2d(images, weight, bias, stride=P).flatten(2).transpose(1, 2) + pos
    noise = torch.rand(x.shape[0], x.shape[1], device=x.device)
    ids_keep, ids_restore, mask = random_masking_ref(noise, num_keep(x.shape[1], ratio))
    return torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1])), ids_restore, mask


def fused_mask_embed(images, weight, bias, pos, ratio):
    ids_keep, ids_restore, mask = random_masking(images.shape[0], L, ratio, device=images.device)
    return masked_patch_embed(images, weight, bias, pos, P, ids_keep), ids_restore, mask


def _embed_inputs(device="cpu", dtype=torch.float32, b=B):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, IMG, IMG, generator=g).to(device, dtype)
    weight = (torch.randn(D, 3, P, P, generator=g) * 0.02).to(device, dtype).requires_grad_()
    bias = torch.zeros(D, device=device, dtype=dtype).requires_grad_()
    pos = torch.randn(L, D, generator=g).to(device, dtype)
    return images, weight, bias, pos


def embed_step(fn, images, weight, bias, pos):
    def run():
        x, _, _ = fn(images, weight, bias, pos, RATIO)
        x.sum().backward()
        weight.grad = bias.grad = None
    return run


def test_mask_embed_cpu(benchmark):
    args = _embed_inputs()
    res = harness.compare(benchmark, "mae_mask_embed_fwd_bwd", f"B={B},{IMG}px,L={L},D={D},r={RATIO},fp32",
                          embed_step(fused_mask_embed, *args), {"original": embed_step(original_mask_embed, *args)},
                          rounds=3)
    print(f"\nmask+embed: fastssl {res['ms']:.0f} ms, peak {res['peak_mb']:.0f} MB | original "
          f"{res['original']['ms']:.0f} ms (x{res['original']['ratio']:.2f}), peak {res['original']['peak_mb']:.0f} MB")


def _unshuffle_inputs(device="cpu", dtype=torch.float32, b=B):
    k = num_keep(L, RATIO)
    x = torch.randn(b, k, DEC, device=device, dtype=dtype, requires_grad=True)
    mt = torch.randn(DEC, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(L, DEC, device=device, dtype=dtype)
    ids_restore = random_masking(b, L, RATIO, generator=torch.Generator().manual_seed(0), device=device)[1]
    return x, mt, ids_restore, pos


def unshuffle_step(fn, x, mt, ids, pos):
    def run():
        fn(x, mt, ids, pos).sum().backward()
        x.grad = mt.grad = None
    return run


def test_unshuffle_cpu(benchmark):
    args = _unshuffle_inputs()
    res = harness.compare(benchmark, "mae_unshuffle_fwd_bwd", f"B={B},L={L},K={args[0].shape[1]},D={DEC},fp32",
                          unshuffle_step(unshuffle, *args), {"original": unshuffle_step(unshuffle_ref, *args)},
                          rounds=5)
    print(f"\nunshuffle: fastssl {res['ms']:.1f} ms | original {res['original']['ms']:.1f} ms "
          f"(x{res['original']['ratio']:.2f})")


def _loss_inputs(device="cpu", dtype=torch.float32, b=B):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(b, L, P * P * 3, generator=g).to(device, dtype).requires_grad_()
    images = torch.randn(b, 3, IMG, IMG, generator=g).to(device)
    mask = random_masking(b, L, RATIO, generator=g, device=device)[2]
    return pred, images, mask


def loss_step(fn, pred, images, mask):
    def run():
        fn(pred, images, mask, P, True).backward()
        pred.grad = None
    return run


def test_loss_cpu(benchmark):
    args = _loss_inputs()
    res = harness.compare(benchmark, "mae_loss_fwd_bwd", f"B={B},L={L},P={P * P * 3},norm_pix,fp32",
                          loss_step(masked_patch_mse, *args), {"original": loss_step(masked_patch_mse_ref, *args)},
                          rounds=5)
    print(f"\nloss: fastssl {res['ms']:.1f} ms, peak {res['peak_mb']:.0f} MB | original {res['original']['ms']:.1f} "
          f"ms (x{res['original']['ratio']:.2f}), peak {res['original']['peak_mb']:.0f} MB")


def build_mae(image_size=64, patch=8, encoder=vit_tiny, dec_dim=128, dec_depth=2, device="cpu"):
    torch.manual_seed(0)
    enc = encoder(img_size=image_size, patch_size=patch, pos_embed="sincos", pool="mean")
    init_mae_weights(enc)
    dec = MAEDecoder(enc.embed_dim, enc.patch_embed.grid_size, patch, dec_dim, dec_depth, dec_dim // 32)
    enc, dec = enc.to(device), dec.to(device)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=1e-4, betas=(0.9, 0.95))
    return enc, dec, opt


def train_step(enc, dec, opt, images, fused, autocast=None):
    n = enc.patch_embed.num_patches

    def run():
        ids_keep, ids_restore, mask = random_masking(images.shape[0], n, RATIO, device=images.device)
        ctx = torch.autocast(images.device.type, dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            loss, _ = mae_forward(enc, dec, images, ids_keep, ids_restore, mask, True, fused=fused)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def test_mae_train_step_cpu(benchmark):
    b = 64
    enc, dec, opt = build_mae()
    images = torch.randn(b, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    fused, original = train_step(enc, dec, opt, images, True), train_step(enc, dec, opt, images, False)
    res = harness.compare(benchmark, "mae_train_step", f"vit_tiny,64px,p8,dec2x128,B={b},fp32", fused,
                          {"original": original}, rounds=3, extra=f"images/s = {b} / (ms / 1000)")
    o = res["original"]
    print(f"\nMAE step (demo size, B={b}): fastssl {res['ms']:.0f} ms ({b / res['ms'] * 1e3:.0f} img/s) | original "
          f"{o['ms']:.0f} ms ({b / o['ms'] * 1e3:.0f} img/s, x{o['ratio']:.2f})")
