"""nt_xent(gather=True) on 2 processes (gloo, CPU, torch.multiprocessing spawn) equals the
single-process loss over the global batch: mean over ranks of the returned losses == the global
loss, and each rank's gradient / world_size (what DDP's averaging applies) == the single-process
gradient of its rows. Checked on the blockwise path (fp64), the reference and the Triton kernels
(interpreter, fp32), for both backward paths (the one-pass backward from the gathered lse, and the
keys' gradient reduce-scattered through all_gather_with_grad), plus info_nce over keys gathered with
all_gather_with_grad. A second run gives the ranks different upstream gradients and a learnable
temperature (the one-pass path weights each row's P by its rank's gradient) and counts the bytes each
path hands to the collectives."""

import importlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import exit_spawned_worker

WORLD = 2
N_LOCAL, D, TAU = 5, 24, 0.1

# (FASTSSL_BACKEND, dtype, tolerance)
CASES = [("native", torch.float64, 1e-12), ("ref", torch.float64, 1e-12), ("triton", torch.float32, 2e-6)]


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from fastssl.ops import info_nce, nt_xent, nt_xent_ref
        from fastssl.ops.distributed import all_gather_with_grad

        ntx = importlib.import_module("fastssl.ops.nt_xent")
        for (backend, dtype, tol), mode in [(c, m) for c in CASES for m in ("one_pass", "reduce_scatter")]:
            ntx.GATHER_BACKWARD = mode
            if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
                continue  # Triton on CPU tensors runs only under the interpreter
            os.environ["FASTSSL_BACKEND"] = backend
            g = torch.Generator().manual_seed(1234)  # same global batch on every rank
            z1 = torch.randn(WORLD * N_LOCAL, D, generator=g, dtype=torch.float64).to(dtype)
            z2 = torch.randn(WORLD * N_LOCAL, D, generator=g, dtype=torch.float64).to(dtype)
            rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)

            # single process, global batch, float64 reference (no gather)
            a64 = z1.double().clone().requires_grad_()
            b64 = z2.double().clone().requires_grad_()
            ref = nt_xent_ref(a64, b64, TAU)
            ref.backward()

            a = z1[rows].clone().requires_grad_()
            b = z2[rows].clone().requires_grad_()
            loss = nt_xent(a, b, TAU, gather=True)
            loss.backward()

            losses = [torch.zeros_like(loss) for _ in range(WORLD)]
            dist.all_gather(losses, loss.detach())
            mean_loss = torch.stack(losses).double().mean()
            ref = ref.detach()
            assert abs(float(mean_loss) - float(ref)) <= tol * (1 + abs(float(ref))), (backend, mode)
            # a rank alone does not see the whole loss: its local part differs from the global mean
            assert not torch.allclose(losses[0], losses[1])
            for name, got, want in (("z1", a.grad, a64.grad[rows]), ("z2", b.grad, b64.grad[rows])):
                err = float((got.double() / WORLD - want).abs().max())
                assert err <= tol * (1 + float(want.abs().max())), (backend, mode, name, err)

            # without gather each rank only sees its local batch: a different loss
            local = nt_xent(z1[rows], z2[rows], TAU, gather=False)
            assert abs(float(local) - float(loss)) > 1e-6

        # general form: local queries against keys gathered from every rank, gradient to the owners
        os.environ["FASTSSL_BACKEND"] = "native"
        g = torch.Generator().manual_seed(99)
        q = torch.randn(WORLD * 3, D, generator=g, dtype=torch.float64)
        k = torch.randn(WORLD * 4, D, generator=g, dtype=torch.float64)
        pos = torch.randint(0, WORLD * 4, (WORLD * 3,), generator=g)
        qa, ka = q.clone().requires_grad_(), k.clone().requires_grad_()
        info_nce(qa, ka, pos, TAU).backward()
        ql = q[rank * 3:(rank + 1) * 3].clone().requires_grad_()
        kl = k[rank * 4:(rank + 1) * 4].clone().requires_grad_()
        keys = all_gather_with_grad(kl)
        torch.testing.assert_close(keys, k)
        out = info_nce(ql, keys, pos[rank * 3:(rank + 1) * 3], TAU)
        out.backward()
        torch.testing.assert_close(ql.grad / WORLD, qa.grad[rank * 3:(rank + 1) * 3])
        torch.testing.assert_close(kl.grad / WORLD, ka.grad[rank * 4:(rank + 1) * 4])
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()  # teardown can abort after a pass (tests/helpers.py)


def _count_bytes(counter: dict):
    """Wrap the collectives the loss uses so that the payload (bytes of the tensors handed in) is counted."""
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "reduce_scatter_tensor")}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            t = args[1] if name in ("all_gather", "reduce_scatter_tensor") else args[0]
            counter[name] = counter.get(name, 0) + t.numel() * t.element_size()
            return fn(*args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    return originals


def _weighted_worker(rank: int, init_file: str) -> None:
    """Ranks with different upstream gradients (loss x (1 + rank)) and a learnable temperature: the
    one-pass backward equals the reduce-scatter path and the float64 single-process spec
    T = sum_r (1 + r) L_r (L_r: rank r's rows against the global batch); and its backward hands no
    [2nW, D] tensor to a collective."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from fastssl.ops import nt_xent
        from fastssl.ops.nt_xent.ref import info_nce_ref_core, nt_xent_positives

        ntx = importlib.import_module("fastssl.ops.nt_xent")
        n, d = 4, 13
        for backend, dtype, tol in [("native", torch.float64, 1e-12), ("triton", torch.float32, 2e-6)]:
            if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
                continue
            os.environ["FASTSSL_BACKEND"] = backend
            for normalize in (True, False):
                g = torch.Generator().manual_seed(7)
                z1 = torch.randn(WORLD * n, d, generator=g, dtype=torch.float64)
                z2 = torch.randn(WORLD * n, d, generator=g, dtype=torch.float64)
                if not normalize:
                    z1, z2 = 0.3 * z1, 0.3 * z2
                rows = slice(rank * n, (rank + 1) * n)

                # spec: rank r's local loss against the global batch, float64, full matrix
                zz = torch.cat([torch.cat([z1[r * n:(r + 1) * n], z2[r * n:(r + 1) * n]]) for r in range(WORLD)])
                zz = zz.clone().requires_grad_()
                tau64 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
                m = 2 * n
                mine = info_nce_ref_core(zz[rank * m:(rank + 1) * m], zz,
                                         nt_xent_positives(m, rank * m, zz.device), tau64, normalize,
                                         rank * m)
                total = sum((1 + r) * info_nce_ref_core(zz[r * m:(r + 1) * m], zz,
                                                        nt_xent_positives(m, r * m, zz.device),
                                                        tau64.detach(), normalize, r * m)
                            for r in range(WORLD))
                (want_z,) = torch.autograd.grad(total, zz)
                (want_tau,) = torch.autograd.grad((1 + rank) * mine, tau64)
                want_z1, want_z2 = want_z[rank * m:rank * m + n], want_z[rank * m + n:(rank + 1) * m]

                got = {}
                for mode in ("one_pass", "reduce_scatter"):
                    ntx.GATHER_BACKWARD = mode
                    a = z1[rows].to(dtype).clone().requires_grad_()
                    b = z2[rows].to(dtype).clone().requires_grad_()
                    tau = torch.tensor(0.2, dtype=dtype, requires_grad=True)
                    loss = nt_xent(a, b, tau, normalize=normalize, gather=True)
                    counter = {}
                    originals = _count_bytes(counter)
                    try:
                        ((1 + rank) * loss).backward()
                    finally:
                        for name, fn in originals.items():
                            setattr(dist, name, fn)
                    got[mode] = (loss.detach(), a.grad, b.grad, tau.grad, counter)
                    assert abs(float(loss) - float(mine)) <= tol * (1 + abs(float(mine))), (backend, mode)
                    scale = float(want_z.abs().max())
                    for name, x, y in (("z1", a.grad, want_z1), ("z2", b.grad, want_z2)):
                        err = float((x.double() - y).abs().max())
                        assert err <= tol * (1 + scale), (backend, mode, normalize, name, err)
                    err = abs(float(tau.grad) - float(want_tau))
                    assert err <= tol * (1 + abs(float(want_tau))), (backend, mode, normalize, "tau", err)
                # bytes the backward hands to collectives: the upstream gradients (W scalars) vs the keys'
                # gradient [2nW, D] (gloo: an all-reduce of it)
                one, old = got["one_pass"][4], got["reduce_scatter"][4]
                assert one == {"all_gather": torch.finfo(dtype).bits // 8}, one  # this rank's upstream gradient
                assert sum(old.values()) == 2 * n * WORLD * d * torch.finfo(dtype).bits // 8, old
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()  # teardown can abort after a pass (tests/helpers.py)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_gather_two_processes_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg_init"),), nprocs=WORLD, join=True)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_gather_one_pass_backward_weighted_ranks(tmp_path):
    mp.spawn(_weighted_worker, args=(str(tmp_path / "pg_init"),), nprocs=WORLD, join=True)
