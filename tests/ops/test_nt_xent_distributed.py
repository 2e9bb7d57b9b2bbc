"""nt_xent(gather=True) on 2 processes (gloo, CPU, torch.multiprocessing spawn) equals the
single-process loss over the global batch: mean over ranks of the returned losses == the global
loss, and each rank's gradient / world_size (what DDP's averaging applies) == the single-process
gradient of its rows. Checked on the blockwise path (fp64), the reference and the Triton kernels
(interpreter, fp32), plus info_nce over keys gathered with all_gather_with_grad."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
N_LOCAL, D, TAU = 5, 24, 0.1

# (FASTSSL_BACKEND, dtype, tolerance)
CASES = [("native", torch.float64, 1e-12), ("ref", torch.float64, 1e-12), ("triton", torch.float32, 2e-6)]


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from fastssl.ops import info_nce, nt_xent, nt_xent_ref
        from fastssl.ops.distributed import all_gather_with_grad

        for backend, dtype, tol in CASES:
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
            assert abs(float(mean_loss) - float(ref)) <= tol * (1 + abs(float(ref))), backend
            # a rank alone does not see the whole loss: its local part differs from the global mean
            assert not torch.allclose(losses[0], losses[1])
            for name, got, want in (("z1", a.grad, a64.grad[rows]), ("z2", b.grad, b64.grad[rows])):
                err = float((got.double() / WORLD - want).abs().max())
                assert err <= tol * (1 + float(want.abs().max())), (backend, name, err)

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


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_gather_two_processes_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg_init"),), nprocs=WORLD, join=True)
