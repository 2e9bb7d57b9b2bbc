"""nt_xent / info_nce against the float64 full-matrix reference: values, gradients (inputs and a
learnable temperature), dtypes, odd shapes, the converged regime, bad input, NaN policy,
determinism, torch.library registration (opcheck), torch.compile and autocast.

The full grid runs on the blockwise CPU path. The Triton kernels run a representative subset under
TRITON_INTERPRET=1 (tiny shapes; the interpreter rounds G to the input dtype as the GPU does), and
the same tests run the compiled kernels on CUDA in the GPU check (`pytest -m cuda`). Errors are
bounded relative to the reference's scale (tests/helpers.assert_rel_close)."""

import math

import pytest
import torch
from helpers import assert_rel_close

from fastssl.ops import NTXentLoss, info_nce, info_nce_ref, nt_xent, nt_xent_ref
from fastssl.ops._backend import triton_interpreting
from fastssl.ops.nt_xent import MAX_TRITON_D, MAX_TRITON_D_FP32
from fastssl.ops.nt_xent import cpu as ntx_cpu
from fastssl.ops.nt_xent import register as ntx_register
from fastssl.ops.nt_xent.ref import info_nce_ref_core, nt_xent_positives

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# relative error floors in the converged regime (aligned positives), against the float64 reference,
# scaled by the largest gradient element; the unfused path (normalize, round to 16 bits, multiply)
# measured ~2e-2 in bf16 there. fp32: 1 - P_i,pos ~ loss is itself resolved to ~6e-8 absolute.
CONVERGED_RTOL = {torch.float32: 1e-3, torch.float16: 1e-3, torch.bfloat16: 8e-3}

# (back end, device kind): the blockwise path, the Triton kernels under the interpreter (CPU
# tensors) and compiled on a GPU
NATIVE = ("native", "cpu")
INTERP = ("triton", "interp")
CUDA = pytest.param(("triton", "cuda"), marks=pytest.mark.cuda, id="triton-cuda")
ALL_BACKENDS = [pytest.param(NATIVE, id="native"), pytest.param(INTERP, id="triton-interp"), CUDA]
TRITON_BACKENDS = [pytest.param(INTERP, id="triton-interp"), CUDA]


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        if name is None:
            monkeypatch.delenv("FASTSSL_BACKEND", raising=False)
        else:
            monkeypatch.setenv("FASTSSL_BACKEND", name)
    return use


@pytest.fixture
def on(backend):
    """Select (back end, device kind) and return the torch device to put the inputs on."""
    def use(be_dev):
        be, dev = be_dev
        if dev == "interp" and not triton_interpreting():
            pytest.skip("the Triton interpreter is off (TRITON_INTERPRET=0): the cuda variant runs instead")
        backend(be)
        return torch.device("cuda" if dev == "cuda" else "cpu")
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
    monkeypatch.setattr(ntx_cpu, "CPU_BLOCK_ELEMS", 1 << 14)


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs)
    out.backward()
    return out.detach(), [x.grad for x in xs]


def _pair(n, d, dtype, device="cpu", aligned=False):
    z1 = torch.randn(n, d, dtype=torch.float64)
    z2 = z1 + 0.02 * torch.randn(n, d, dtype=torch.float64) if aligned else torch.randn(n, d, dtype=torch.float64)
    return z1.to(device=device, dtype=dtype), z2.to(device=device, dtype=dtype)


def _check_nt_xent(z1, z2, tau, normalize=True, rtol=None):
    """Loss and both gradients of nt_xent (current back end) against the reference in fp64 and in
    the input dtype (the 2x rule); with ``rtol``, the gradients also within rtol x their scale."""
    dtype = z1.dtype
    loss, (g1, g2) = _grads(lambda a, b: nt_xent(a, b, tau, normalize=normalize), z1, z2)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert g1.dtype == dtype and g2.dtype == dtype
    ref = lambda a, b: nt_xent_ref(a, b, tau, normalize=normalize)
    ref64, (r1, r2) = _grads(ref, z1.double().cpu(), z2.double().cpu())
    low, (l1, l2) = _grads(ref, z1, z2)
    if rtol is None:
        assert_rel_close(loss, ref64, low, dtype=dtype, name="loss")
    else:  # converged: the loss is far below the 16-bit reference's own error; fp32 accumulation resolves it
        assert_rel_close(loss, ref64, dtype=dtype, name="loss")
    # fp32 resolves G = P_ij + P_ji - 2[pos] to ~eps32 absolute: dz_i to ~eps32 / (tau |z_i|); a gradient
    # below that (a saturated loss, e.g. N=2, tau=0.01) is checked against that resolution instead
    z = torch.cat([z1, z2]).double().cpu()
    res = 16 * torch.finfo(torch.float32).eps / tau / float(z.norm(dim=1).clamp_min(1e-12).min()) if normalize else 0.0
    assert_rel_close(g1, r1, l1, dtype=dtype, name="grad z1", resolution=res)
    assert_rel_close(g2, r2, l2, dtype=dtype, name="grad z2", resolution=res)
    if rtol is not None:
        assert_rel_close(g1, r1, dtype=dtype, rtol=rtol, name="grad z1 (floor)")
        assert_rel_close(g2, r2, dtype=dtype, rtol=rtol, name="grad z2 (floor)")


# ---------------------------------------------------------------------------------------------------
# the grid on the blockwise CPU path


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [0.01, 0.07, 0.5])
@pytest.mark.parametrize("d", [3, 64, 128, 200])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 257])
def test_blockwise_matches_reference(n, d, tau, dtype, backend, small_blocks):
    backend("native")
    _check_nt_xent(*_pair(n, d, dtype), tau)


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("n", [1, 3, 64])
def test_blockwise_unnormalized(n, tau, backend, small_blocks):
    backend("native")
    z1, z2 = 0.3 * torch.randn(n, 16), 0.3 * torch.randn(n, 16)
    _check_nt_xent(z1, z2, tau, normalize=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("be", ALL_BACKENDS)
@pytest.mark.parametrize("n,d,tau", [(40, 64, 0.1), (70, 32, 0.1)])
def test_converged_regime(n, d, tau, be, dtype, on, small_blocks):
    """Aligned positive pairs (a trained model): the gradient is almost all radial and normalization's
    backward removes that part. Fused normalization keeps the rest at the dtype's floor."""
    dev = on(be)
    _check_nt_xent(*_pair(n, d, dtype, dev, aligned=True), tau, rtol=CONVERGED_RTOL[dtype])


# ---------------------------------------------------------------------------------------------------
# the Triton kernels (interpreter on CPU; compiled on CUDA)

TRITON_CASES = [
    (1, 3, 0.07, torch.float32),
    (2, 64, 0.5, torch.float32),
    (3, 100, 0.01, torch.float32),
    (17, 64, 0.01, torch.float32),
    (17, 3, 0.07, torch.float16),
    (9, 128, 0.5, torch.bfloat16),
    (17, 64, 0.07, torch.bfloat16),
    (40, 200, 0.07, torch.float16),
]


@pytest.mark.parametrize("be", TRITON_BACKENDS)
@pytest.mark.parametrize("n,d,tau,dtype", TRITON_CASES, ids=str)
def test_triton_matches_reference(n, d, tau, dtype, be, on):
    dev = on(be)
    _check_nt_xent(*_pair(n, d, dtype, dev), tau)


@pytest.mark.parametrize("be", TRITON_BACKENDS)
def test_triton_unnormalized(be, on):
    dev = on(be)
    _check_nt_xent(0.3 * torch.randn(5, 16, device=dev), 0.3 * torch.randn(5, 16, device=dev), 0.1, normalize=False)


def test_default_dispatch(device, backend):
    """No override: CPU -> blockwise path; CUDA (GPU check) -> the compiled Triton kernels, with
    several row blocks, tail tiles, and every dtype."""
    backend(None)
    for n, d, tau, dtype in [(33, 128, 0.07, torch.float32), (130, 64, 0.1, torch.bfloat16),
                             (257, 200, 0.01, torch.float16), (300, 128, 0.1, torch.bfloat16)]:
        _check_nt_xent(*_pair(n, d, dtype, device), tau)


# ---------------------------------------------------------------------------------------------------
# info_nce (general form: dq and dk kernels)


def _check_info_nce(q, k, pos, tau, exclude_self):
    dtype = q.dtype
    f = lambda a, b: info_nce(a, b, pos, tau, exclude_self=exclude_self)
    fr = lambda a, b: info_nce_ref(a, b, pos.cpu(), tau, exclude_self=exclude_self)
    loss, (gq, gk) = _grads(f, q, k)
    ref64, (rq, rk) = _grads(fr, q.double().cpu(), k.double().cpu())
    low, (lq, lk) = _grads(lambda a, b: info_nce_ref(a, b, pos, tau, exclude_self=exclude_self), q, k)
    assert loss.dtype == torch.float32
    assert_rel_close(loss, ref64, low, dtype=dtype, name="loss")
    assert_rel_close(gq, rq, lq, dtype=dtype, name="grad query")
    assert_rel_close(gk, rk, lk, dtype=dtype, name="grad keys")


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("be", ALL_BACKENDS)
@pytest.mark.parametrize("m,nk,d,dtype", [(5, 19, 64, torch.float32), (20, 33, 3, torch.float32),
                                          (17, 40, 128, torch.bfloat16), (35, 50, 64, torch.float16)], ids=str)
def test_info_nce_matches_reference(m, nk, d, dtype, be, exclude_self, on, small_blocks):
    dev = on(be)
    q, k = torch.randn(m, d, device=dev).to(dtype), torch.randn(nk, d, device=dev).to(dtype)
    pos = torch.randint(0, nk, (m,), device=dev)
    if exclude_self:
        pos = torch.where(pos == torch.arange(m, device=dev), (pos + 1) % nk, pos)
    _check_info_nce(q, k, pos, 0.07, exclude_self)


@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_info_nce_self_offset(be, on):
    """The gathered NT-Xent path: local rows against all rows, the self key at a non-zero offset."""
    dev = on(be)
    m, nk, off, d = 12, 36, 12, 24
    q, k = torch.randn(m, d, device=dev), torch.randn(nk, d, device=dev)
    pos = nt_xent_positives(m, off, dev)
    be_name = be[0]

    def op(a, b, t):
        return torch.ops.fastssl.info_nce_fwd(a, b, pos, t, True, off, True, be_name)[0]

    tau = torch.tensor(0.1, device=dev)
    loss, (gq, gk, gt) = _grads(op, q, k, tau)
    ref64, (rq, rk, rt) = _grads(lambda a, b, t: info_nce_ref_core(a, b, pos.cpu(), t, True, off),
                                 q.double().cpu(), k.double().cpu(), tau.double().cpu())
    assert_rel_close(loss, ref64, name="loss")
    assert_rel_close(gq, rq, name="grad query")
    assert_rel_close(gk, rk, name="grad keys")
    assert_rel_close(gt, rt, name="grad tau")


@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_nt_xent_is_info_nce_case(be, on):
    dev = on(be)
    z1, z2 = torch.randn(6, 32, device=dev), torch.randn(6, 32, device=dev)
    z = torch.cat([z1, z2])
    pos = (torch.arange(12, device=dev) + 6) % 12
    a = nt_xent(z1, z2, 0.2)
    b = info_nce(z, z, pos, 0.2, exclude_self=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# temperature: a learnable tensor (dL/dtau), validation without a host read


def test_gradcheck_float64(backend):
    backend("native")
    z1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    for normalize in (True, False):
        assert torch.autograd.gradcheck(lambda a, b, t, nm=normalize: nt_xent(a, b, t, normalize=nm), (z1, z2, tau))
    q = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([1, 0, 5, 2])
    for normalize in (True, False):
        for exclude_self in (False, True):
            assert torch.autograd.gradcheck(
                lambda a, b, t, nm=normalize, ex=exclude_self: info_nce(a, b, pos, t, normalize=nm, exclude_self=ex),
                (q, k, tau))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_learnable_temperature(be, dtype, on):
    """dL/dtau = -(1/(2 tau)) sum_i <dL/du_i, u_i> from the kernels' epilogue, against autograd on
    the float64 reference; the temperature a CLIP-style parametrization produces (1 / exp(t))."""
    dev = on(be)
    z1, z2 = _pair(19, 64, dtype, dev)
    t = torch.tensor(2.0, device=dev, requires_grad=True)
    loss = nt_xent(z1, z2, 1.0 / t.exp())
    loss.backward()
    t64 = t.detach().double().cpu().requires_grad_()
    ref = nt_xent_ref(z1.double().cpu(), z2.double().cpu(), 1.0 / t64.exp())
    ref.backward()
    assert_rel_close(loss, ref.detach(), dtype=dtype, name="loss")
    assert_rel_close(t.grad, t64.grad, dtype=dtype, name="grad t")


@pytest.mark.parametrize("be", ALL_BACKENDS + [pytest.param(("ref", "cpu"), id="ref")])
@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_tensor_temperature_not_positive_gives_nan(tau, be, on):
    dev = on(be)
    loss = nt_xent(torch.randn(4, 8, device=dev), torch.randn(4, 8, device=dev), torch.tensor(tau, device=dev))
    assert torch.isnan(loss)


# ---------------------------------------------------------------------------------------------------
# gradients on one input, layouts, analytic case


@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_non_contiguous(be, on):
    dev = on(be)
    big1, big2 = torch.randn(40, 16, device=dev), torch.randn(12, 40, device=dev)
    z1, z2 = big1[:, ::2][:, :7], big2.t()[:, 3:10]  # strided columns / transposed
    assert not z1.is_contiguous() and not z2.is_contiguous()
    loss = nt_xent(z1, z2, 0.1)
    ref = nt_xent(z1.contiguous(), z2.contiguous(), 0.1)
    assert torch.equal(loss, ref)
    _check_nt_xent(z1, z2, 0.1)


@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_requires_grad_on_one_only(be, on):
    dev = on(be)
    z1 = torch.randn(7, 16, device=dev, requires_grad=True)
    z2 = torch.randn(7, 16, device=dev)
    nt_xent(z1, z2, 0.1).backward()
    a = z1.detach().double().cpu().requires_grad_()
    nt_xent_ref(a, z2.double().cpu(), 0.1).backward()
    assert z2.grad is None
    assert_rel_close(z1.grad, a.grad, dtype=torch.float32, name="grad z1")


@pytest.mark.parametrize("be", ALL_BACKENDS + [pytest.param(("ref", "cpu"), id="ref")])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_identical_embeddings_analytic(n, be, on):
    dev = on(be)
    z = torch.ones(n, 8, device=dev)
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
    (torch.randn(3, 4), torch.randn(3, 4), torch.ones(2), "1-element"),
], ids=["rows", "dims", "1d", "d0", "n0", "devices", "dtypes", "int", "tau0", "tau-", "taunan", "taustr", "tau2"])
def test_bad_input(z1, z2, tau, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(z1, z2, tau)
    with pytest.raises(ValueError, match=match):
        nt_xent_ref(z1, z2, tau)


def test_bad_input_info_nce():
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="out of range"):
        info_nce(q, k, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="out of range"):
        info_nce(q, k, torch.tensor([0, -1, 2]))
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


@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_invalid_positive_gives_nan_in_the_op(be, on):
    """Where positive_index is not read on the host (CUDA, torch.compile), the kernels mark an
    out-of-range or excluded positive with a NaN loss instead of a silent number."""
    dev = on(be)
    q, k = torch.randn(4, 8, device=dev), torch.randn(6, 8, device=dev)
    tau = torch.tensor(0.1, device=dev)
    for pos, excl in [([0, 1, 6, 2], False), ([0, -1, 3, 2], False), ([1, 1, 3, 4], True)]:
        p = torch.tensor(pos, device=dev)
        loss = torch.ops.fastssl.info_nce_fwd(q, k, p, tau, True, 0, excl, be[0])[0]
        assert torch.isnan(loss), (pos, excl)
    good = torch.ops.fastssl.info_nce_fwd(q, k, torch.tensor([1, 2, 3, 5], device=dev), tau, True, 0, True, be[0])[0]
    assert torch.isfinite(good)


@pytest.mark.parametrize("be", ALL_BACKENDS + [pytest.param(("ref", "cpu"), id="ref")])
def test_nan_input_gives_nan(be, on):
    dev = on(be)
    z1, z2 = torch.randn(5, 8, device=dev), torch.randn(5, 8, device=dev)
    z1[2, 3] = float("nan")
    assert torch.isnan(nt_xent(z1, z2, 0.1))
    z2[4, 0] = float("inf")
    z1[2, 3] = 0.0
    assert torch.isnan(nt_xent(z1, z2, 0.1))  # inf / inf in the normalization


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("be", ALL_BACKENDS)
def test_deterministic(be, dtype, on):
    dev = on(be)
    z1, z2 = _pair(33, 64, dtype, dev)
    tau = torch.tensor(0.07, device=dev)
    runs = [_grads(lambda a, b, t: nt_xent(a, b, t), z1, z2, tau) for _ in range(2)]
    (l0, g0), (l1, g1) = runs
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


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


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, MAX_TRITON_D + 1),
                                     (torch.float32, MAX_TRITON_D_FP32 + 1)], ids=str)
def test_wide_embeddings_take_blockwise_path(dtype, d, backend, monkeypatch):
    """D > 512 (fp32: D > 128) falls back to the blockwise path under FASTSSL_BACKEND=triton."""
    backend("triton")
    if not triton_interpreting():
        pytest.skip("FASTSSL_BACKEND=triton on CPU tensors needs the interpreter")
    calls = []
    real = ntx_register.native_nt_xent_fwd
    monkeypatch.setattr(ntx_register, "native_nt_xent_fwd", lambda *a: calls.append(1) or real(*a))
    _check_nt_xent(*_pair(3, d, dtype), 0.1)
    assert calls


def test_memory_is_linear_in_batch(backend, monkeypatch):
    """The blockwise path never allocates a 2N x 2N matrix: every similarity block it builds has at
    most CPU_BLOCK_ELEMS entries."""
    backend("native")
    monkeypatch.setattr(ntx_cpu, "CPU_BLOCK_ELEMS", 1 << 14)
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


# ---------------------------------------------------------------------------------------------------
# autocast, torch.library, torch.compile


def test_autocast_keeps_the_fp32_contract(backend):
    """Inside torch.autocast the blockwise path still computes in fp32: the same bits as outside."""
    backend("native")
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    tau = torch.tensor(0.1)
    out, grads = _grads(lambda a, b, t: nt_xent(a, b, t), z1, z2, tau)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac, grads_ac = _grads(lambda a, b, t: nt_xent(a, b, t), z1, z2, tau)
        q_ac, gq_ac = _grads(lambda a, b: info_nce(a, b, torch.arange(64), 0.1), z1, z2)
    assert out_ac.dtype == torch.float32
    assert torch.equal(out, out_ac) and all(torch.equal(a, b) for a, b in zip(grads, grads_ac))
    q, gq = _grads(lambda a, b: info_nce(a, b, torch.arange(64), 0.1), z1, z2)
    assert torch.equal(q, q_ac) and all(torch.equal(a, b) for a, b in zip(gq, gq_ac))


def _op_samples(device):
    z = torch.randn(10, 8, device=device, requires_grad=True)
    q = torch.randn(5, 8, device=device, requires_grad=True)
    k = torch.randn(7, 8, device=device, requires_grad=True)
    tau = torch.tensor(0.2, device=device, requires_grad=True)
    pos = torch.tensor([1, 0, 6, 2, 3], device=device)
    return z, q, k, tau, pos


@pytest.mark.parametrize("be", [pytest.param(NATIVE, id="native"), CUDA])
def test_opcheck(be, on):
    """torch.library.opcheck: schema, fake (meta) implementations, autograd registration, AOT dispatch."""
    dev = on(be)
    name = be[0]
    z, q, k, tau, pos = _op_samples(dev)
    ops = torch.ops.fastssl
    for normalize in (True, False):
        torch.library.opcheck(ops.nt_xent_fwd.default, (z, tau, normalize, name))
        torch.library.opcheck(ops.info_nce_fwd.default, (q, k, pos, tau, normalize, 0, False, name))
        torch.library.opcheck(ops.info_nce_fwd.default, (q, k, pos, tau, normalize, 0, True, name))
    loss, lse, rn = ops.nt_xent_fwd(z, tau, True, name)
    g = torch.ones((), device=dev)
    torch.library.opcheck(ops.nt_xent_bwd.default, (g, z.detach(), tau.detach(), lse.detach(), rn.detach(), True,
                                                    True, name))
    _, lse, rnq, rnk = ops.info_nce_fwd(q, k, pos, tau, True, 0, False, name)
    torch.library.opcheck(ops.info_nce_bwd.default, (g, q.detach(), k.detach(), pos, tau.detach(), lse.detach(),
                                                     rnq.detach(), rnk.detach(), True, 0, False, True, True, True,
                                                     name))
    # gathered backward (the distributed one pass): 2 simulated ranks of 2n = 6 rows
    zg = torch.randn(12, 8, device=dev)
    lse_all = []
    for r in range(2):
        pos_r = nt_xent_positives(6, 6 * r, zg.device)
        _, lse_r, _, rn_all = ops.info_nce_fwd(zg[6 * r:6 * r + 6], zg, pos_r, tau.detach(), True, 6 * r, True, name)
        lse_all.append(lse_r)
    torch.library.opcheck(ops.nt_xent_gathered_bwd.default, (torch.tensor([1.0, 0.5], device=dev), zg, tau.detach(),
                                                             torch.cat(lse_all), rn_all, 6, True, False, name))
    torch.library.opcheck(ops.nt_xent_gathered_bwd.default, (torch.tensor([1.0, 0.5], device=dev), zg, tau.detach(),
                                                             torch.cat(lse_all), rn_all, 0, False, True, name))


@pytest.mark.parametrize("be", [pytest.param(NATIVE, id="native"), CUDA])
def test_compile_fullgraph_matches_eager(be, on):
    """torch.compile(fullgraph=True) of a function calling nt_xent and info_nce (with a learnable
    temperature) gives the same values and gradients as eager."""
    dev = on(be)
    torch._dynamo.reset()
    z1, z2 = torch.randn(24, 16, device=dev), torch.randn(24, 16, device=dev)
    pos = torch.randint(0, 24, (24,), device=dev)

    def f(a, b, t):
        return nt_xent(a, b, t) + 0.5 * info_nce(a, b, pos, t)

    eager, ge = _grads(f, z1, z2, torch.tensor(0.2, device=dev))
    compiled, gc = _grads(torch.compile(f, fullgraph=True), z1, z2, torch.tensor(0.2, device=dev))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backend_env_var_is_not_stale_under_compile(backend, monkeypatch):
    """FASTSSL_BACKEND is read at every call of the public function and torch.compile guards on the
    read: changing it recompiles (the compiled function never keeps a stale back end)."""
    torch._dynamo.reset()
    calls = []
    real = ntx_register.native_nt_xent_fwd
    monkeypatch.setattr(ntx_register, "native_nt_xent_fwd", lambda *a: calls.append(1) or real(*a))
    f = torch.compile(lambda a, b: nt_xent(a, b, 0.1), fullgraph=True)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    backend("native")
    native = f(z1, z2)
    assert len(calls) == 1
    backend("ref")
    ref = f(z1, z2)
    assert len(calls) == 1  # the ref path ran: the blockwise op was not called
    backend("native")
    f(z1, z2)
    assert len(calls) == 2
    torch.testing.assert_close(native, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
def test_cuda_launch_on_the_inputs_device(backend):
    """Launches run under the inputs' device: tensors on the last GPU while the current device is 0."""
    backend(None)
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.set_device(0)
    z1, z2 = _pair(70, 128, torch.bfloat16, dev)
    _check_nt_xent(z1, z2, 0.1)
    q, k = torch.randn(30, 64, device=dev), torch.randn(50, 64, device=dev)
    _check_info_nce(q, k, torch.randint(0, 50, (30,), device=dev), 0.1, False)
