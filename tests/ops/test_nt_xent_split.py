"""Split-K NT-Xent / InfoNCE kernels (the key range split across programs when row blocks are few,
partials combined in split order) and the gathered one-pass backward, without a process group.

Split vs unsplit: the same sums in another order, so values and gradients agree to fp32 rounding
(16-bit gradients: to one rounding of the output dtype), bounded relative to their scale; odd N,
forward and backward, under TRITON_INTERPRET=1 (and compiled in `pytest -m cuda`). The gathered
backward (``torch.ops.fastssl.nt_xent_gathered_bwd``) is checked against the float64 spec of the
sum over simulated ranks of their weighted local losses, split and unsplit."""

import pytest
import torch
from helpers import assert_rel_close

from fastssl.ops import info_nce, nt_xent
from fastssl.ops._backend import triton_interpreting
from fastssl.ops.nt_xent import plans
from fastssl.ops.nt_xent.ref import info_nce_ref_core, nt_xent_positives

BACKENDS = [pytest.param("interp", id="triton-interp"),
            pytest.param("cuda", marks=pytest.mark.cuda, id="triton-cuda")]
# split vs unsplit: relative to the largest element; fp32 sums in another order (~1e-7 each), 16-bit
# gradients may round to the neighbouring value of the output dtype
SPLIT_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def dev(request, monkeypatch):
    if request.param == "interp" and not triton_interpreting():
        pytest.skip("the Triton interpreter is off (TRITON_INTERPRET=0): the cuda variant runs instead")
    monkeypatch.setenv("FASTSSL_BACKEND", "triton")
    return torch.device("cuda" if request.param == "cuda" else "cpu")


def _rel(a, b, rtol, name):
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max())
    assert scale > 0, f"{name}: all-zero reference proves nothing"
    err = float((a - b).abs().max())
    assert err <= rtol * scale, f"{name}: split vs unsplit error {err:.3e} > {rtol:.1e} x scale {scale:.3e}"


def _run(fn, tensors, split, monkeypatch):
    monkeypatch.setattr(plans, "SPLIT_K", split)
    xs = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*xs)
    out.backward()
    return out.detach(), [x.grad for x in xs]


def test_key_splits_cover_the_keys_once(monkeypatch):
    """Every key lands in exactly one split of whole tiles; no split when the row blocks fill the SMs;
    SPLIT_K overrides."""
    for row_blocks, nk, bn, sms in [(64, 8192, 64, 132), (1, 100, 16, 4), (3, 4097, 64, 108), (2, 5, 16, 132)]:
        n, chunk = plans.key_splits(row_blocks, nk, bn, sms, interpreter=False)
        assert chunk % bn == 0 and n * chunk >= nk and (n - 1) * chunk < nk
        assert n <= plans.MAX_SPLIT and n <= max(1, row_blocks and -(-sms // row_blocks))
    assert plans.key_splits(64, 8192, 64, 132, False)[0] == 3  # N=4096 fwd, BLOCK_M=128 on an H100/H200
    assert plans.key_splits(200, 8192, 64, 132, False)[0] == 1
    assert plans.key_splits(2, 64, 16, 4, True) == (2, 32)  # interpreter: one tile per split allowed
    monkeypatch.setattr(plans, "SPLIT_K", 3)
    assert plans.key_splits(1000, 160, 16, 4, True) == (3, 64)


@pytest.mark.parametrize("dev", BACKENDS, indirect=True)
@pytest.mark.parametrize("n,d,dtype,normalize", [(23, 24, torch.float32, True), (37, 64, torch.bfloat16, True),
                                                 (29, 40, torch.float16, True), (23, 16, torch.float32, False)],
                         ids=str)
def test_nt_xent_split_equals_unsplit(n, d, dtype, normalize, dev, monkeypatch):
    z1 = torch.randn(n, d, device=dev).to(dtype)
    z2 = (z1.float() + 0.5 * torch.randn(n, d, device=dev)).to(dtype)
    tau = torch.tensor(0.1, device=dev)

    def f(a, b, t):
        return nt_xent(a, b, t, normalize=normalize)

    base, gb = _run(f, (z1, z2, tau), 1, monkeypatch)
    rtol = SPLIT_RTOL[dtype]
    for split in (2, 3, 5):
        out, gs = _run(f, (z1, z2, tau), split, monkeypatch)
        # the loss is lse - s_pos with both O(1/tau): fp32 resolves it to ~eps32 / tau, whatever its size
        assert abs(float(out) - float(base)) <= 8 * torch.finfo(torch.float32).eps / 0.1, f"loss split={split}"
        for name, a, b in zip(("z1", "z2", "tau"), gs, gb):
            _rel(a, b, rtol if name != "tau" else 1e-5, f"grad {name} split={split}")
    # deterministic with a split: the same bits twice
    again, ga = _run(f, (z1, z2, tau), 3, monkeypatch)
    out, gs = _run(f, (z1, z2, tau), 3, monkeypatch)
    assert torch.equal(again, out) and all(torch.equal(a, b) for a, b in zip(ga, gs))


@pytest.mark.parametrize("dev", BACKENDS, indirect=True)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_info_nce_forward_split_equals_unsplit(exclude_self, dev, monkeypatch):
    """The general forward (arbitrary positives, self exclusion) through the split kernel + combine."""
    m, nk, d = 19, 41, 24
    q = torch.randn(m, d, device=dev)
    k = torch.cat([q, torch.randn(nk - m, d, device=dev)]) if exclude_self else torch.randn(nk, d, device=dev)
    pos = torch.randint(0, nk, (m,), device=dev)
    if exclude_self:
        pos = torch.where(pos == torch.arange(m, device=dev), (pos + 1) % nk, pos)

    def f(a, b):
        return info_nce(a, b, pos, 0.1, exclude_self=exclude_self)

    base, gb = _run(f, (q, k), 1, monkeypatch)
    out, gs = _run(f, (q, k), 3, monkeypatch)
    assert abs(float(out) - float(base)) <= 8 * torch.finfo(torch.float32).eps / 0.1, "loss"
    for name, a, b in zip(("q", "k"), gs, gb):
        _rel(a, b, 1e-5, f"grad {name}")


def _gathered_spec(z, world, tau, weights, normalize):
    """float64 spec: d(sum_r w_r L_r)/dz, L_r the mean over rank r's 2n rows against all rows."""
    z = z.double().clone().requires_grad_()
    m = z.shape[0] // world
    total = sum(w * info_nce_ref_core(z[r * m:(r + 1) * m], z, nt_xent_positives(m, r * m, z.device),
                                      tau, normalize, r * m)
                for r, w in enumerate(weights))
    (g,) = torch.autograd.grad(total, z)
    return g


@pytest.mark.parametrize("dev", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype,normalize", [(torch.float32, True), (torch.bfloat16, True), (torch.float16, True),
                                             (torch.float32, False)], ids=str)
def test_gathered_backward_without_process_group(dtype, normalize, dev, monkeypatch):
    """Each simulated rank's rows: lse from the op's own forward (its rows against all rows), every
    rank's lse concatenated, then nt_xent_gathered_bwd per rank == the float64 spec (also the
    blockwise path), with rank-dependent upstream gradients (one of them negative); split == unsplit."""
    world, n, d, tau = 3, 7, 24, 0.2
    z = torch.randn(2 * n * world, d, device=dev)
    z = (0.3 * z if not normalize else z).to(dtype)
    t = torch.tensor(tau, device=dev)
    weights = [1.0, -0.5, 2.0]
    m = 2 * n
    lse, rnk = [], None
    for r in range(world):
        pos = nt_xent_positives(m, r * m, dev)
        _, lse_r, _, rnk = torch.ops.fastssl.info_nce_fwd(z[r * m:(r + 1) * m], z, pos, t, normalize, r * m, True,
                                                          "triton")
        lse.append(lse_r)
    lse = torch.cat(lse)
    grads = torch.tensor(weights, device=dev)
    spec = _gathered_spec(z, world, tau, weights, normalize)
    # sum_j P_kj s_kj of every row (the learnable temperature's term), float64 full matrix
    u = torch.nn.functional.normalize(z.double(), dim=1) if normalize else z.double()
    logits = (u @ u.t() / tau).cpu()
    logits.fill_diagonal_(float("-inf"))
    p_mat = torch.softmax(logits, dim=1)
    ps_spec = (p_mat * logits.nan_to_num(neginf=0.0)).sum(1)
    for r in range(world):
        want = spec[r * m:(r + 1) * m]
        got = {}
        for split in (1, 2):
            monkeypatch.setattr(plans, "SPLIT_K", split)
            # need_ps=True (the learnable-temperature variant; the plain one runs in the distributed tests)
            dz, ps = torch.ops.fastssl.nt_xent_gathered_bwd(grads, z, t, lse, rnk, r * m, normalize, True, "triton")
            assert dz.shape == (m, d) and dz.dtype == dtype
            assert_rel_close(dz, want, dtype=dtype, name=f"rank {r} split={split}",
                             rtol=None if dtype == torch.float32 else 2e-2)
            assert_rel_close(ps, ps_spec[r * m:(r + 1) * m], dtype=torch.float32, name=f"PS rank {r}",
                             rtol=1e-5 if dtype == torch.float32 else 2e-2)
            got[split] = dz
        _rel(got[2], got[1], SPLIT_RTOL[dtype], f"rank {r} split vs unsplit")
        if dtype == torch.float32:  # the blockwise path from the same lse
            native, ps = torch.ops.fastssl.nt_xent_gathered_bwd(grads, z.cpu(), t.cpu(), lse.cpu(), rnk.cpu(),
                                                                r * m, normalize, True, "native")
            assert_rel_close(native, want.cpu(), dtype=dtype, name=f"rank {r} native")
            assert_rel_close(ps, ps_spec[r * m:(r + 1) * m], dtype=dtype, name=f"PS rank {r} native", rtol=1e-5)
