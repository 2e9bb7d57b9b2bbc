"""GPU check for the MAE token ops (called by benches/gpu_check.sh; plain script, no pytest).

bf16 CUDA at ViT-B/16 shapes (B=256, 224 px, L=196, D=768, ratio 0.75; decoder width 512):
- masking + masked patch embedding (forward) against the original path (Conv2d on all patches +
  pos + torch.rand/argsort masking + gather): ms, ratio (target >= 3x), peak memory (target <= 0.3x);
- unshuffle forward and the loss forward+backward: ms and GB/s (bytes each must move: read the visible
  tokens / write the full sequence; read pred + masked pixels / write dpred) against the card's
  measured copy bandwidth (target >= 70%), and against the original PyTorch path;
- a whole ViT-B/16 MAE training step (decoder 8 x 512, bf16 autocast, AdamW) with the fused ops
  against the same model on the original token path: images/s.
Prints a table and appends rows to benches/results/<device>.csv through harness.append_row.

    TRITON_INTERPRET=0 python benches/gpu_mae.py                 # on a CUDA machine
    python benches/gpu_mae.py --device cpu --batch 2 --no-record  # logic smoke test on CPU (tiny)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from bench_mae import (  # noqa: E402
    DEC,
    IMG,
    RATIO,
    L,
    P,
    _embed_inputs,
    _loss_inputs,
    _unshuffle_inputs,
    build_mae,
    fused_mask_embed,
    original_mask_embed,
    train_step,
)

from fastssl.models.vit import vit_base, vit_tiny  # noqa: E402
from fastssl.ops import masked_patch_mse, masked_patch_mse_ref, unshuffle, unshuffle_ref  # noqa: E402

COPY_TARGET = 0.7  # of the measured copy bandwidth
EMBED_TARGET = 3.0  # x the original path


def copy_gbps(device, mb: int = 512, rounds: int = 20) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second)."""
    a = torch.empty(mb * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = harness.time_ms(lambda: b.copy_(a), device, rounds, warmup=3)
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="print only (no CSV rows)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    smoke = dev.type == "cpu"
    dtype = torch.float32 if smoke else torch.bfloat16
    b, rounds = args.batch, (1 if smoke else args.rounds)
    name = harness.device_name(dev)
    rows = []

    def record(op, shape, ms, base_ms, peak, base_peak, extra=""):
        rows.append((op, ms, base_ms, base_ms / ms, extra))
        if not args.no_record:
            harness.append_row(dict(device=name, op=op, shape=shape, impl="fastssl", ms=f"{ms:.3f}",
                                    baseline="original", baseline_ms=f"{base_ms:.3f}", ratio=f"{base_ms / ms:.3f}",
                                    peak_mb=f"{peak:.1f}", baseline_peak_mb=f"{base_peak:.1f}", extra=extra))

    bw = copy_gbps(dev, 64 if smoke else 512, rounds)
    # masking + masked embed (forward)
    images, weight, bias, pos = (t.detach() for t in _embed_inputs(dev, dtype, b))
    fused = lambda: fused_mask_embed(images, weight, bias, pos, RATIO)  # noqa: E731
    orig = lambda: original_mask_embed(images, weight, bias, pos, RATIO)  # noqa: E731
    ms, base = harness.time_ms(fused, dev, rounds), harness.time_ms(orig, dev, rounds)
    pk, bpk = harness.peak_memory_mb(fused, dev), harness.peak_memory_mb(orig, dev)
    record("mae_mask_embed_fwd", f"B={b},{IMG}px,L={L},r={RATIO},{dtype}", ms, base, pk, bpk,
           f"target >= {EMBED_TARGET}x, peak <= 0.3x: peak ratio {pk / max(bpk, 1e-9):.2f}")
    # unshuffle (forward): bytes = read visible tokens + write [B, L, D] (+ ids, pos once)
    x, mt, ids, pos_d = (t.detach() if t.is_floating_point() else t for t in _unshuffle_inputs(dev, dtype, b))
    ms = harness.time_ms(lambda: unshuffle(x, mt, ids, pos_d), dev, rounds)
    base = harness.time_ms(lambda: unshuffle_ref(x, mt, ids, pos_d), dev, rounds)
    nbytes = (x.numel() + b * L * DEC) * x.element_size() + ids.numel() * 8 + pos_d.numel() * pos_d.element_size()
    gbps = nbytes / (ms * 1e-3) / 1e9
    record("mae_unshuffle_fwd", f"B={b},L={L},D={DEC},{dtype}", ms, base, float("nan"), float("nan"),
           f"{gbps:.0f} GB/s = {gbps / bw:.0%} of copy {bw:.0f} GB/s (target {COPY_TARGET:.0%})")
    # loss (forward + backward): bytes = read pred + masked pixels (+ mask), write dpred, twice (fwd, bwd)
    pred, imgs, mask = _loss_inputs(dev, dtype, b)

    def loss_fb(fn):
        def run():
            fn(pred, imgs, mask, P, True).backward()
            pred.grad = None
        return run

    ms = harness.time_ms(loss_fb(masked_patch_mse), dev, rounds)
    base = harness.time_ms(loss_fb(masked_patch_mse_ref), dev, rounds)
    masked_frac = 1 - round(L * (1 - RATIO)) / L
    nbytes = 2 * (pred.numel() * pred.element_size() + masked_frac * imgs.numel() * imgs.element_size()) \
        + pred.numel() * pred.element_size()
    gbps = nbytes / (ms * 1e-3) / 1e9
    record("mae_loss_fwd_bwd", f"B={b},L={L},P={P * P * 3},{dtype}", ms, base, float("nan"), float("nan"),
           f"{gbps:.0f} GB/s = {gbps / bw:.0%} of copy {bw:.0f} GB/s (target {COPY_TARGET:.0%})")
    # whole training step
    if smoke:
        enc, dec, opt = build_mae(32, 8, vit_tiny, 32, 1, dev)
        step_imgs = torch.randn(b, 3, 32, 32, device=dev)
        shape, ac = f"vit_tiny,32px,B={b},fp32", None
    else:
        enc, dec, opt = build_mae(224, 16, vit_base, 512, 8, dev)
        step_imgs = torch.randn(min(b, 128), 3, 224, 224, device=dev)
        shape, ac = f"vit_base/16,224px,dec8x512,B={step_imgs.shape[0]},bf16 autocast", torch.bfloat16
    nb = step_imgs.shape[0]
    ms = harness.time_ms(train_step(enc, dec, opt, step_imgs, True, ac), dev, max(rounds // 2, 1))
    base = harness.time_ms(train_step(enc, dec, opt, step_imgs, False, ac), dev, max(rounds // 2, 1))
    record("mae_train_step", shape, ms, base, float("nan"), float("nan"),
           f"{nb / ms * 1e3:.0f} vs {nb / base * 1e3:.0f} images/s")
    print(f"\nMAE on {name} (copy bandwidth {bw:.0f} GB/s)")
    print(f"{'op':<22}{'ms':>10}{'original ms':>13}{'ratio':>8}  note")
    for op, ms, base, ratio, extra in rows:
        print(f"{op:<22}{ms:>10.3f}{base:>13.3f}{ratio:>8.2f}  {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
