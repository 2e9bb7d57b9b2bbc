"""The MAE Triton kernels compile ahead of time for sm80 and sm90 (no GPU needed) with the launch
configurations the launchers use on CUDA, without register spills and within shared memory: the
interpreter does not enforce what the compiler does (constexpr-only globals, types, shapes)."""

import os
import subprocess
import sys

import pytest

AOT_SCRIPT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastssl.kernels.masked_patch_embed import _masked_patch_embed_fwd_kernel
from fastssl.kernels.masked_patch_mse import _masked_patch_mse_bwd_kernel, _masked_patch_mse_fwd_kernel
from fastssl.kernels.random_masking import _random_masking_kernel
from fastssl.kernels.unshuffle import _unshuffle_bwd_kernel, _unshuffle_fwd_kernel

def sig(fn, consts, types):
    return {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}

CASES = []
CASES.append((_random_masking_kernel, dict(BLOCK_L=256, CHUNK=16),
              {"SEED": "*i64", "IDS_KEEP": "*i64", "IDS_RESTORE": "*i64", "MASK": "*fp32"}, 4))
for t, prec in (("bf16", "ieee"), ("fp32", "tf32"), ("fp32", "ieee")):
    CASES.append((_masked_patch_embed_fwd_kernel,
                  dict(P=16, HAS_BIAS=True, HAS_POS=True, UPCAST=False, DOT_PRECISION=prec, BLOCK_M=64, BLOCK_N=64,
                       BLOCK_R=32),
                  {"IMG": f"*{t}", "IDS": "*i64", "WF": f"*{t}", "BIAS": f"*{t}", "POS": f"*{t}", "OUT": f"*{t}"}, 4))
for t in ("bf16", "fp32"):
    CASES.append((_unshuffle_fwd_kernel, dict(HAS_POS=True, BLOCK_L=32, BLOCK_D=128),
                  {"X": f"*{t}", "MT": f"*{t}", "IDS": "*i64", "POS": f"*{t}", "OUT": f"*{t}"}, 4))
    CASES.append((_unshuffle_bwd_kernel, dict(BLOCK_L=32, BLOCK_D=128),
                  {"DOUT": f"*{t}", "IDS": "*i64", "DX": f"*{t}", "DMT_PART": "*fp32"}, 4))
    mse = dict(P=16, C=3, NPIX=768, NORM_PIX=True, BLOCK_M=4, BLOCK_P=1024)
    CASES.append((_masked_patch_mse_fwd_kernel, mse,
                  {"PRED": f"*{t}", "IMG": "*fp32", "W": "*fp32", "ERR": "*fp32"}, 4))
    CASES.append((_masked_patch_mse_bwd_kernel, mse,
                  {"PRED": f"*{t}", "IMG": "*fp32", "W": "*fp32", "COEF": "*fp32", "DPRED": f"*{t}"}, 4))
for arch in (80, 90):
    for fn, consts, types, nw in CASES:
        k = triton.compile(ASTSource(fn=fn, signature=sig(fn, consts, types), constexprs=consts),
                           target=GPUTarget("cuda", arch, 32), options=dict(num_warps=nw))
        assert "cubin" in k.asm, fn
        assert not re.search(r"st\.local", k.asm["ptx"]), f"register spills in {fn.__name__} sm{arch} {types}"
        assert k.metadata.shared <= 160 * 1024, (fn.__name__, arch, k.metadata.shared)
print("compiled", len(CASES) * 2)
"""


def test_mae_kernels_compile_for_sm80_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
