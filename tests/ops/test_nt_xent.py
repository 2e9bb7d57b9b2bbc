"""nt_xent / info_nce against the float64 full-matrix reference: values, gradients, dtypes, odd
shapes, bad input, NaN policy, determinism. The full issue grid runs on the blockwise CPU path; the
Triton kernels run a representative subset under TRITON_INTERPRET=1 (tiny shapes)."""

import importlib
import math

import pytest
import torch
from helpers import assert_close_to_ref

from fastssl.ops import NTXentLoss, info_nce, info_nce_ref, nt_xent, nt_xent_ref
from fastssl.ops._backend import triton_interpreting

ntx = importlib.import_module("fastssl.ops.nt_xent")  # the module (fastssl.ops.nt_xent is the function)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        if name == "triton" and not triton_interpreting():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (CUDA runs: test_default_dispatch)")
        if name is None:
            monkeypatch.delenv("FASTSSL_BACKEND", raising=False)
        else:
            monkeypatch.setenv("FASTSSL_BACKEND", name)
    return use


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a shared, oversubscribed CPU the
    OpenMP barriers of hundreds of tiny ops make them 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of a few dozen rows, so the blockwise path's block loop is exercised on small N."""
    monkeypatch.setattr(ntx, "CPU_BLOCK_ELEMS", 1 << 14)


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs)
    out.backward()
    return out.detach(), [x.grad for x in xs]


def _check_nt_xent(z1, z2, tau, normalize=True):
    """Loss and both gradients of nt_xent (current back end) against the reference in fp64 and in
    the input dtype (the 2x rule of tests/helpers)."""
    dtype = z1.dtype
    loss, (g1, g2) = _grads(lambda a, b: nt_xent(a, b, tau, normalize=normalize), z1, z2)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert g1.dtype == dtype and g2.dtype == dtype
    ref = lambda a, b: nt_xent_ref(a, b, tau, normalize=normalize)
    ref64, (r1, r2) = _grads(ref, z1.double(), z2.double())
    low, (l1, l2) = _grads(ref, z1, z2)
    assert_close_to_ref(loss, ref64, low, dtype=dtype, name="loss")
    assert_close_to_ref(g1, r1, l1, dtype=dtype, name="grad z1")
    assert_close_to_ref(g2, r2, l2, dtype=dtype, name="grad z2")


# ---------------------------------------------------------------------------------------------------
# the grid on the blockwise CPU path


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [0.01, 0.07, 0.5])
@pytest.mark.parametrize("d", [3, 64, 128, 200])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 257])
def test_blockwise_matches_reference(n, d, tau, dtype, backend, small_blocks):
    backend("native")
    z1, z2 = torch.randn(n, d).to(dtype), torch.randn(n, d).to(dtype)
    _check_nt_xent(z1, z2, tau)


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("n", [1, 3, 64])
def test_blockwise_unnormalized(n, tau, backend, small_blocks):
    backend("native")
    z1, z2 = 0.3 * torch.randn(n, 16), 0.3 * torch.randn(n, 16)
    _check_nt_xent(z1, z2, tau, normalize=False)


# ---------------------------------------------------------------------------------------------------
# the Triton kernels under the interpreter (representative subset)

TRITON_CASES = [
    (1, 3, 0.07, torch.float32),
    (2, 64, 0.5, torch.float32),
    (3, 200, 0.01, torch.float32),
    (17, 64, 0.01, torch.float32),
    (17, 3, 0.07, torch.float16),
    (9, 128, 0.5, torch.bfloat16),
    (17, 64, 0.07, torch.bfloat16),
    (40, 200, 0.07, torch.float16),
]


@pytest.mark.parametrize("n,d,tau,dtype", TRITON_CASES, ids=str)
def test_triton_matches_reference(n, d, tau, dtype, backend):
    backend("triton")
    z1, z2 = torch.randn(n, d).to(dtype), torch.randn(n, d).to(dtype)
    _check_nt_xent(z1, z2, tau)


def test_triton_unnormalized(backend):
    backend("triton")
    _check_nt_xent(0.3 * torch.randn(5, 16), 0.3 * torch.randn(5, 16), 0.1, normalize=False)


def test_default_dispatch(device, backend):
    """No override: CPU -> blockwise path; CUDA (GPU check) -> the compiled Triton kernels."""
    backend(None)
    for n, d, tau, dtype in [(33, 128, 0.07, torch.float32), (130, 64, 0.1, torch.bfloat16),
                             (257, 200, 0.01, torch.float16)]:
        z1, z2 = torch.randn(n, d, device=device).to(dtype), torch.randn(n, d, device=device).to(dtype)
        _check_nt_xent(z1, z2, tau)


# ---------------------------------------------------------------------------------------------------
# info_nce (general form: dq and dk kernels)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("be", ["native", "triton"])
@pytest.mark.parametrize("m,nk,d,dtype", [(5, 19, 64, torch.float32), (20, 33, 3, torch.float32),
                                          (17, 40, 128, torch.bfloat16)], ids=str)
def test_info_nce_matches_reference(m, nk, d, dtype, be, exclude_self, backend, small_blocks):
    backend(be)
    q, k = torch.randn(m, d).to(dtype), torch.randn(nk, d).to(dtype)
    pos = torch.randint(0, nk, (m,))
    if exclude_self:
        pos = torch.where(pos == torch.arange(m), (pos + 1) % nk, pos)
    tau = 0.07
    f = lambda a, b: info_nce(a, b, pos, tau, exclude_self=exclude_self)
    fr = lambda a, b: info_nce_ref(a, b, pos, tau, exclude_self=exclude_self)
    loss, (gq, gk) = _grads(f, q, k)
    ref64, (rq, rk) = _grads(fr, q.double(), k.double())
    low, (lq, lk) = _grads(fr, q, k)
    assert loss.dtype == torch.float32
    assert_close_to_ref(loss, ref64, low, dtype=dtype, name="loss")
    assert_close_to_ref(gq, rq, lq, dtype=dtype, name="grad query")
    assert_close_to_ref(gk, rk, lk, dtype=dtype, name="grad keys")


@pytest.mark.parametrize("be", ["native", "triton"])
def test_nt_xent_is_info_nce_case(be, backend):
    backend(be)
    z1, z2 = torch.randn(6, 32), torch.randn(6, 32)
    z = torch.cat([z1, z2])
    pos = (torch.arange(12) + 6) % 12
    a = nt_xent(z1, z2, 0.2)
    b = info_nce(z, z, pos, 0.2, exclude_self=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# gradcheck, layouts, analytic case


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_float64(normalize, backend):
    backend("native")
    z1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3, normalize=normalize), (z1, z2))
    q = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([1, 0, 5, 2])
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, pos, 0.3, normalize=normalize), (q, k))
    assert torch.autograd.gradcheck(
        lambda a, b: info_nce(a, b, pos, 0.3, normalize=normalize, exclude_self=True), (q, k))


@pytest.mark.parametrize("be", ["native", "triton"])
def test_non_contiguous(be, backend):
    backend(be)
    big1, big2 = torch.randn(40, 16), torch.randn(12, 40)
    z1, z2 = big1[:, ::2][:, :7], big2.t()[:, 3:10]  # strided columns / transposed
    assert not z1.is_contiguous() and not z2.is_contiguous()
    loss = nt_xent(z1, z2, 0.1)
    ref = nt_xent(z1.contiguous(), z2.contiguous(), 0.1)
    assert torch.equal(loss, ref)
    _check_nt_xent(z1, z2, 0.1)


@pytest.mark.parametrize("be", ["native", "triton"])
def test_requires_grad_on_one_only(be, backend):
    backend(be)
    z1 = torch.randn(7, 16, requires_grad=True)
    z2 = torch.randn(7, 16)
    nt_xent(z1, z2, 0.1).backward()
    a = z1.detach().double().requires_grad_()
    nt_xent_ref(a, z2.double(), 0.1).backward()
    assert z2.grad is None
    assert_close_to_ref(z1.grad, a.grad, dtype=torch.float32, name="grad z1")


@pytest.mark.parametrize("be", ["native", "triton", "ref"])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_identical_embeddings_analytic(n, be, backend):
    backend(be)
    z = torch.ones(n, 8)
    loss = nt_xent(z, z.clone(), 0.07)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), math.log(2 * n - 1), rel_tol=1e-5, abs_tol=1e-5)


# ---------------------------------------------------------------------------------------------------
# bad input, NaN policy, determinism, module, gather without a process group


@pytest.mark.parametrize("z1,z2,tau,match", [
    (torch.randn(3, 4), torch.randn(4, 4), 0.1, "same shape"),
    (torch.randn(3, 4), torch.randn(3, 5), 0.1, "same shape"),
    (torch.randn(4), torch.randn(4), 0.1, "2-D"),
    (torch.randn(3, 0), torch.randn(3, 0), 0.1, "D=0"),
    (torch.randn(0, 4), torch.randn(0, 4), 0.1, "empty batch"),
    (torch.randn(3, 4), torch.randn(3, 4, device="meta"), 0.1, "is on"),
    (torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), 0.1, "float64"),
    (torch.randint(0, 3, (3, 4)), torch.randint(0, 3, (3, 4)), 0.1, "float16"),
    (torch.randn(3, 4), torch.randn(3, 4), 0.0, "> 0"),
    (torch.randn(3, 4), torch.randn(3, 4), -0.5, "> 0"),
    (torch.randn(3, 4), torch.randn(3, 4), float("nan"), "> 0"),
    (torch.randn(3, 4), torch.randn(3, 4), "0.1", "positive number"),
], ids=["rows", "dims", "1d", "d0", "n0", "devices", "dtypes", "int", "tau0", "tau-", "taunan", "taustr"])
def test_bad_input(z1, z2, tau, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(z1, z2, tau)
    with pytest.raises(ValueError, match=match):
        nt_xent_ref(z1, z2, tau)


def test_bad_input_info_nce():
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="out of range"):
        info_nce(q, k, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="shape"):
        info_nce(q, k, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        info_nce(q, k, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="same dim"):
        info_nce(q, torch.randn(5, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="exclude_self"):
        info_nce(q, k, torch.tensor([1, 1, 3]), exclude_self=True)
    with pytest.raises(ValueError, match="> 0"):
        NTXentLoss(temperature=0)


@pytest.mark.parametrize("be", ["native", "triton", "ref"])
def test_nan_input_gives_nan(be, backend):
    backend(be)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    z1[2, 3] = float("nan")
    assert torch.isnan(nt_xent(z1, z2, 0.1))
    z2[4, 0] = float("inf")
    z1[2, 3] = 0.0
    assert torch.isnan(nt_xent(z1, z2, 0.1))  # inf / inf in the normalization


@pytest.mark.parametrize("be,dtype", [("native", torch.float32), ("native", torch.bfloat16),
                                      ("triton", torch.float32), ("triton", torch.float16)])
def test_deterministic(be, dtype, backend):
    backend(be)
    z1, z2 = torch.randn(33, 64).to(dtype), torch.randn(33, 64).to(dtype)
    runs = [_grads(lambda a, b: nt_xent(a, b, 0.07), z1, z2) for _ in range(2)]
    (l0, (a0, b0)), (l1, (a1, b1)) = runs
    assert torch.equal(l0, l1) and torch.equal(a0, a1) and torch.equal(b0, b1)


def test_module_and_gather_without_process_group(backend):
    backend("native")
    z1, z2 = torch.randn(6, 16), torch.randn(6, 16)
    mod = NTXentLoss(temperature=0.2, gather=True)
    assert "temperature=0.2" in repr(mod)
    assert torch.equal(mod(z1, z2), nt_xent(z1, z2, 0.2))
    assert torch.equal(nt_xent(z1, z2, 0.2, gather=True), nt_xent(z1, z2, 0.2, gather=False))


def test_ref_backend_returns_fp32(backend):
    backend("ref")
    loss = nt_xent(torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16(), 0.1)
    assert loss.dtype == torch.float32


def test_wide_embeddings_take_blockwise_path(backend):
    backend("triton")  # D > MAX_TRITON_D falls back to the blockwise path
    z1, z2 = torch.randn(3, ntx.MAX_TRITON_D + 1), torch.randn(3, ntx.MAX_TRITON_D + 1)
    _check_nt_xent(z1, z2, 0.1)


def test_memory_is_linear_in_batch(backend, monkeypatch):
    """The blockwise path never allocates a 2N x 2N matrix: every similarity block it builds has at
    most CPU_BLOCK_ELEMS entries."""
    backend("native")
    monkeypatch.setattr(ntx, "CPU_BLOCK_ELEMS", 1 << 14)
    seen = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        out = real_mm(a, b, **kw)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch, "mm", spy)
    n = 300  # 2N x 2N = 360000 entries, blocks of <= 16384
    z1 = torch.randn(n, 8, requires_grad=True)
    nt_xent(z1, torch.randn(n, 8), 0.1).backward()
    assert seen and max(seen) <= 1 << 14


AOT_SCRIPT = r"""
import re, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastssl.kernels.nt_xent as K
from fastssl.ops.nt_xent import _dot_precision, _triton_config

class Cuda:  # what _triton_config reads from a CUDA tensor
    is_cuda = True
    def __init__(self, dtype): self.dtype = dtype
    def element_size(self): return torch.empty(0, dtype=self.dtype).element_size()

TYPES = {"Q": "*T", "K": "*T", "Z": "*T", "POS": "*i64", "LSE": "*fp32", "DZ": "*fp32",
         "DQ": "*fp32", "DK": "*fp32", "self_offset": "i64", "qk_scale": "fp32", "inv_tau": "fp32",
         "grad_scale": "fp32"}
for dtype, name, d in [(torch.bfloat16, "bf16", 128), (torch.float32, "fp32", 200)]:
    cfg = _triton_config(Cuda(dtype), d)
    nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
    for fn in (K._info_nce_fwd_kernel, K._nt_xent_bwd_kernel, K._info_nce_bwd_dq_kernel,
               K._info_nce_bwd_dk_kernel):
        consts = dict(cfg, DOT_PRECISION=_dot_precision(dtype))
        if "EXCLUDE_SELF" in fn.arg_names:
            consts["EXCLUDE_SELF"] = True
        sig = {a: "constexpr" if a in consts else TYPES.get(a, "i32").replace("T", name) for a in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=nw, num_stages=ns))
        assert "cubin" in k.asm, fn
        assert not re.search(r"st\.local", k.asm["ptx"]), f"register spills in {fn} {name}"
        assert k.metadata.shared <= 160 * 1024, (fn, name, k.metadata.shared)
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The interpreter does not enforce what the compiler does (constexpr-only globals, shapes,
    shared memory): compile every kernel ahead of time for sm90 (no GPU needed) in a subprocess."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
