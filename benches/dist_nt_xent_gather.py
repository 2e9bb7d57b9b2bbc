"""nt_xent(gather=True) on 2 CPU processes (gloo): the one-pass backward (all-gathered lse) against
the reduce-scatter path (the keys' gradient through all_gather_with_grad's backward), same inputs.

Per local batch n (2n rows per rank, 2nW global), D=128, fp32, blockwise path, one thread per rank:
the bytes each rank hands to collectives in the forward and in the backward (payload: the tensors
passed in; gloo has no reduce-scatter, so the old backward is an all-reduce of [2nW, D]), the median
fwd+bwd step time (slowest rank), and the largest gradient difference between the two paths
relative to the gradient's scale. Plain script (no pytest):

    python benches/dist_nt_xent_gather.py [--sizes 256 1024 2048] [--rounds 5]

Times on a shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, D, TAU = 2, 128, 0.1
COLLECTIVES = ("all_gather", "all_reduce", "reduce_scatter_tensor")


def _counting(counter: dict, phase: list):
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            t = args[1] if name in ("all_gather", "reduce_scatter_tensor") else args[0]
            key = (phase[0], name)
            counter[key] = counter.get(key, 0) + t.numel() * t.element_size()
            return fn(*args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    return originals


def _worker(rank: int, init_file: str, sizes, rounds: int, out_file: str) -> None:
    torch.set_num_threads(1)
    os.environ["FASTSSL_BACKEND"] = "native"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from fastssl.ops import nt_xent

    ntx = importlib.import_module("fastssl.ops.nt_xent")
    results = []
    for n in sizes:
        g = torch.Generator().manual_seed(n + rank)
        z1, z2 = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
        row = dict(n=n)
        grads = {}
        for mode in ("reduce_scatter", "one_pass"):
            ntx.GATHER_BACKWARD = mode
            times = []
            for i in range(rounds + 1):
                a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                counter, phase = {}, ["fwd"]
                originals = _counting(counter, phase) if i == 0 else None
                dist.barrier()
                t0 = time.perf_counter()
                loss = nt_xent(a, b, TAU, gather=True)
                phase[0] = "bwd"
                loss.backward()
                dt = time.perf_counter() - t0
                if originals:
                    for name, fn in originals.items():
                        setattr(dist, name, fn)
                    row[f"{mode}_fwd_bytes"] = sum(v for (p, _), v in counter.items() if p == "fwd")
                    row[f"{mode}_bwd_bytes"] = sum(v for (p, _), v in counter.items() if p == "bwd")
                    grads[mode] = torch.cat([a.grad, b.grad])
                else:
                    times.append(dt)
            slowest = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            row[f"{mode}_ms"] = 1e3 * statistics.median(slowest.tolist())
        scale = float(grads["reduce_scatter"].abs().max())
        row["rel_diff"] = float((grads["one_pass"] - grads["reduce_scatter"]).abs().max()) / scale
        results.append(row)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048], help="local batch n per rank")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.spawn(_worker, args=(os.path.join(tmp, "pg"), args.sizes, args.rounds, out), nprocs=WORLD, join=True)
        rows = torch.load(out)
    print(f"nt_xent(gather=True), W={WORLD} gloo CPU processes, D={D}, fp32, blockwise path, 1 thread per rank")
    print(f"{'n/rank':>7} {'2nW':>6} | {'bytes fwd old':>13} {'bwd old':>10} | {'fwd new':>10} {'bwd new':>8} | "
          f"{'ms old':>8} {'ms new':>8} {'old/new':>7} | grad rel diff")
    for r in rows:
        print(f"{r['n']:>7} {2 * r['n'] * WORLD:>6} | {r['reduce_scatter_fwd_bytes']:>13} "
              f"{r['reduce_scatter_bwd_bytes']:>10} | {r['one_pass_fwd_bytes']:>10} {r['one_pass_bwd_bytes']:>8} | "
              f"{r['reduce_scatter_ms']:>8.1f} {r['one_pass_ms']:>8.1f} "
              f"{r['reduce_scatter_ms'] / r['one_pass_ms']:>7.2f} | {r['rel_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
