"""Ahead-of-time compiles of the MAE Triton kernels (random masking, masked patch embedding, unshuffle,
masked-patch MSE) for sm80, sm86, sm89 and sm90 (no GPU needed).

Each launch is built by the op's own launch plan (``fastssl.ops.<op>.*_plan``) from CPU tensors of a
real step (ViT-B/16 at 224 px, batch 64: the paper's model; the decoder's x[:, 1:] view as unshuffle
gets it), so the compile sees the specialization a real launch gets (dtypes, divisibility-by-16
hints on pointers and strides, unit strides as constants), for NCHW and channels_last images and
each dtype. The cubin's resource usage is then checked (tests/ops/aot_helpers.py: cuobjdump
``-res-usage`` and the SASS): no local memory and no spill instructions, static + dynamic shared
memory within each arch's per-block limit.

Run as a script for the table: ``TRITON_INTERPRET=0 python tests/ops/test_mae_kernels_aot.py [--full]``;
``--dump FILE`` writes the specs for another Triton (see tests/ops/aot_helpers.py).
"""

from __future__ import annotations

import sys

import pytest
from aot_helpers import ARCHS, check, main, run_script, specialize

# A real step: ViT-B/16 at 224 px (L = 196 patches, 49 kept), decoder width 512, batch 64.
VIT_B = dict(batch=64, channels=3, size=224, patch=16, dim=768, decoder_dim=512, keep=49)
# The full grid adds fp16, the demo scale (64 px, 8 px patches, ViT-Tiny width, decoder 128) with an odd
# batch (no divisibility hints on the token counts) and 16-bit images for the loss.
DEMO = dict(batch=3, channels=3, size=64, patch=8, dim=192, decoder_dim=128, keep=16)


def _plans(cfg: dict, dtype, layout: str, arch, full: bool) -> dict:
    """{label: plan} of every MAE launch of one step in ``dtype`` with ``layout`` images."""
    import importlib

    import torch

    # the modules (fastssl.ops exports functions of the same names)
    emb, mse, rm, un = (importlib.import_module(f"fastssl.ops.{m}") for m in
                        ("masked_patch_embed", "masked_patch_mse", "random_masking", "unshuffle"))

    b, c, s, p, d, dd, k = (cfg[n] for n in ("batch", "channels", "size", "patch", "dim", "decoder_dim", "keep"))
    n = (s // p) ** 2
    name = str(dtype).removeprefix("torch.")
    cl = layout == "nhwc"

    def images(dt):
        x = torch.empty(b, c, s, s, dtype=dt)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    plans = {}
    # the embed: weight in the kernel's pixel order, pos_embed[:, 1:] of [1, 1 + L, D] (offset one row)
    ids_keep = torch.empty(b, k, dtype=torch.int64)
    wf, bias = torch.empty(d, c * p * p, dtype=dtype), torch.empty(d, dtype=dtype)
    pos = torch.empty(1 + n, d, dtype=dtype)[1:]
    out = torch.empty(b, k, d, dtype=dtype)
    for tf32 in ((True, False) if dtype == torch.float32 else (False,)):
        plans[f"embed {name} {layout}{' tf32' if tf32 else ''}"] = emb.embed_plan(
            images(dtype), ids_keep, wf, bias, pos, out, p, channels_last=cl, tf32=tf32, arch=arch)
    # the loss: pred from the decoder (dtype), images as the step feeds them (fp32; 16-bit too in --full)
    pred = torch.empty(b, n, p * p * c, dtype=dtype)
    w, err, coef = torch.empty(b * n), torch.empty(b * n), torch.empty(1)
    for img_dt in (torch.float32, dtype) if full else (torch.float32,):
        tag = f"mse {name} img {str(img_dt).removeprefix('torch.')} {layout}"
        plans[f"{tag} fwd"] = mse.fwd_plan(pred, images(img_dt), w, err, p, True, arch=arch)
        plans[f"{tag} bwd"] = mse.bwd_plan(pred, images(img_dt), w, coef, torch.empty_like(pred), p, True, arch=arch)
    if not cl:  # no image: one layout
        x = torch.empty(b, 1 + k, dd, dtype=dtype)[:, 1:]  # the decoder's tokens without the cls row
        ids_restore = torch.empty(b, n, dtype=torch.int64)
        dpos = torch.empty(1 + n, dd, dtype=dtype)[1:]
        plans[f"unshuffle {name} fwd"] = un.fwd_plan(x, torch.empty(dd, dtype=dtype), ids_restore, dpos,
                                                     torch.empty(b, n, dd, dtype=dtype), arch=arch)
        plans[f"unshuffle {name} bwd"] = un.bwd_plan(torch.empty(b, n, dd, dtype=dtype), ids_restore,
                                                     torch.empty(b, k, dd, dtype=dtype),
                                                     torch.empty(b, dd, dtype=torch.float32), arch=arch)
        if dtype == torch.float32:  # integer outputs: once; a seed below 2**31 is an i32 argument, above i64
            outs = (torch.empty(b, k, dtype=torch.int64), torch.empty(b, n, dtype=torch.int64), torch.empty(b, n))
            plans["random_masking seed i64"] = rm.masking_plan(2**40 + 3, *outs)
            plans["random_masking seed i32"] = rm.masking_plan(12345, *outs)
    return plans


def build_specs(full: bool) -> list[tuple[tuple[int, int], dict]]:
    import torch

    specs = []
    for cfg in (VIT_B, DEMO) if full else (VIT_B,):
        for arch in ARCHS:
            for dtype in (torch.bfloat16, torch.float16, torch.float32) if full else (torch.bfloat16, torch.float32):
                for layout in ("nchw", "nhwc"):
                    for label, plan in _plans(cfg, dtype, layout, arch, full).items():
                        tag = "" if cfg is VIT_B else " demo"
                        specs += [(arch, specialize(kernel, args, kw, label + tag)) for kernel, _, args, kw in plan]
    return specs


def test_mae_kernels_compile_without_spills():
    """Every MAE kernel, bf16 and fp32 (tf32 and IEEE dots), NCHW and channels_last, sm80/86/89/90, at
    ViT-B/16 224 px: no local memory, no spills, shared memory within each arch's limit."""
    pytest.importorskip("triton.backends.nvidia")
    check(run_script(__file__))


@pytest.mark.slow
@pytest.mark.aot_full  # opt-in (pyproject addopts)
def test_mae_kernels_compile_without_spills_full():
    """The full grid: also fp16, the demo scale with an odd batch, and 16-bit images for the loss."""
    pytest.importorskip("triton.backends.nvidia")
    check(run_script(__file__, "--full"))


if __name__ == "__main__":
    main(sys.argv, build_specs)
