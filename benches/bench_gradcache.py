"""Gradient-cached SimCLR step (``--chunk-size``, fastssl.engine.gradcache) against the unchunked step on the
CPU: SimCLR ResNet-18 at the demo size (width 16, 64 px, 2 views, projector 2048 -> 128, LARS), global
batch B = 256, 1024, 4096, chunks of C = 128 images. Rows go to benches/results/<cpu>.csv.

Each configuration runs in its own child process (``python benches/bench_gradcache.py --child B C
ROUNDS``, C = 0: unchunked) on synthetic views: a warm-up, then the peak memory of the first timed step =
VmHWM - VmRSS around it (VmHWM reset through /proc/self/clear_refs after malloc_trim; the views, weights,
optimizer state are allocated before), and the median wall time of ROUNDS steps (the first included).
The warm-up is a step of the same shapes: the whole batch unchunked, one chunk chunked. A step is what
Trainer._step does in one process: forward (or GradCache passes a, b), backward (pass c), LARS step.
The unchunked step at a batch whose predicted peak (linear in B from the B=1024 run) exceeds
``--max-unchunked-gb`` is not run; its row says so.

    nice -n 10 python -m pytest benches/bench_gradcache.py --benchmark-only -s   # the pytest-benchmark way
    nice -n 10 python benches/bench_gradcache.py                                  # the same table, as a script

The CUDA rows (ResNet-50 at 224 px, B = 4096 and 65536) come from benches/gpu_gradcache.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

CHUNK = 128
BATCHES = (256, 1024, 4096)
ROUNDS = {256: 1, 1024: 1, 4096: 1}  # the machine is shared (our processes run at nice 19): one round
MAX_UNCHUNKED_GB = 6.0
nan = float("nan")  # this machine has 23 GB shared by several sessions


def build(batch: int, chunk: int, device="cpu", flags=(), views_dtype=torch.float32):
    """(step function, warm-up function, cfg): the demo SimCLR (or ``flags``) as fastssl.train builds it,
    on synthetic views. The warm-up runs a step of the same shapes (chunked: one chunk) so that the
    backend's per-shape set-up (oneDNN primitives, cuDNN algorithms) is not timed."""
    from train_setup import build_training

    from fastssl.engine.gradcache import Embedder, GradCache

    argv = ["--method", "simclr", "--batch-size", str(batch), *flags]
    if chunk:
        argv += ["--chunk-size", str(chunk)]
    device = torch.device(device)
    method, opt, cfg = build_training(argv, device, seed=0)
    g = torch.Generator(device=device).manual_seed(0)
    s = cfg["image_size"]
    views = [torch.randn(batch, 3, s, s, device=device, generator=g, dtype=views_dtype)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    model = Embedder(method)

    def step(n: int = batch) -> float:
        v = views if n == batch else [x[:n] for x in views]
        if chunk:
            gcache = GradCache(method, chunk, n, 1, device)
            loss, _ = gcache.forward(model, v, None, amp)
        else:
            with amp:
                loss, _ = method(v, None)
        opt.zero_grad(set_to_none=True)
        if chunk:
            gcache.backward(model, loss, amp)
        else:
            loss.backward()
        opt.step()
        return loss.item()

    return step, (lambda: step(chunk)) if chunk else step, cfg


def child(batch: int, chunk: int, rounds: int) -> dict:
    """Runs in a fresh process: warm-up, then ROUNDS timed steps; the first one's peak memory."""
    step, warmup, _ = build(batch, chunk)
    warmup()
    times, cpu_times, peak_mb, loss = [], [], float("nan"), float("nan")
    for i in range(rounds):
        harness.trim_heap()  # give freed heap back, so RSS-before is what is live
        if i == 0:
            before = harness.reset_peak_rss()  # VmHWM := VmRSS
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
        if i == 0:
            peak_mb = harness.peak_rss_mb(before)
    times.sort()
    cpu_times.sort()
    return dict(batch=batch, chunk=chunk, ms=times[len(times) // 2], cpu_ms=cpu_times[len(times) // 2],
                peak_mb=peak_mb, loss=loss,
                threads=torch.get_num_threads())


def measure(batch: int, chunk: int, rounds: int) -> dict:
    """``child`` in a separate process; {'ms': nan, 'error': ...} when it cannot run."""
    return harness.run_child(__file__, (batch, chunk, rounds), batch=batch, chunk=chunk)


def compare(batch: int, unchunked_peak_per_image_mb: float | None, max_unchunked_gb: float = MAX_UNCHUNKED_GB):
    """(chunked result, unchunked result) for one batch; appends the row."""
    ours = measure(batch, CHUNK, ROUNDS.get(batch, 1))
    predicted = None if unchunked_peak_per_image_mb is None else unchunked_peak_per_image_mb * batch
    if predicted is not None and predicted > max_unchunked_gb * 1024:
        base = dict(batch=batch, chunk=0, ms=float("nan"), peak_mb=float("nan"),
                    error=f"not run: predicted peak {predicted / 1024:.1f} GB > {max_unchunked_gb} GB allowed here")
    else:
        base = measure(batch, 0, ROUNDS.get(batch, 1))
    ratio = ours["ms"] / base["ms"] if base["ms"] == base["ms"] else float("nan")  # > 1: chunked is slower
    harness.append_row(dict(
        device=harness.device_name("cpu"), op="simclr_step_gradcache", shape=f"B={batch},C={CHUNK},resnet18w16,64px",
        impl="fastssl_chunked", ms=f"{ours['ms']:.1f}", baseline="unchunked", baseline_ms=f"{base['ms']:.1f}",
        ratio=f"{1 / ratio:.3f}", peak_mb=f"{ours['peak_mb']:.1f}", baseline_peak_mb=f"{base['peak_mb']:.1f}",
        dtype="fp32", extra=(f"chunked/unchunked wall time={ratio:.3f} (ratio column: the harness's speed-up);"
                             f"cpu_s={ours.get('cpu_ms', nan) / 1e3:.1f} vs "
                             f"{base.get('cpu_ms', nan) / 1e3:.1f} (process CPU time);measured under load from "
                             "parallel sessions;" + base.get("error", "") + ours.get("error", ""))))
    return ours, base


def _line(ours, base):
    ratio = ours["ms"] / base["ms"] if base["ms"] == base["ms"] else float("nan")
    return (f"B={ours['batch']:>5} C={CHUNK}: chunked {ours['ms'] / 1e3:7.2f} s, peak {ours['peak_mb']:7.0f} MB | "
            f"unchunked {base['ms'] / 1e3:7.2f} s, peak {base['peak_mb']:7.0f} MB | time ratio {ratio:.2f} (CPU time "
            f"{ours.get('cpu_ms', nan) / 1e3:.1f} s vs {base.get('cpu_ms', nan) / 1e3:.1f} s) "
            f"{base.get('error', '')}{ours.get('error', '')}")


_per_image: dict = {}


def _bench(benchmark, batch):
    res = {}
    benchmark.pedantic(lambda: res.update(zip(("ours", "base"), compare(batch, _per_image.get("mb")))),
                       rounds=1, warmup_rounds=0, iterations=1)
    ours, base = res["ours"], res["base"]
    if base["peak_mb"] == base["peak_mb"]:
        _per_image["mb"] = base["peak_mb"] / batch
    benchmark.extra_info.update(chunked_ms=round(ours["ms"], 1), chunked_peak_mb=round(ours["peak_mb"], 1),
                                unchunked_ms=round(base["ms"], 1), unchunked_peak_mb=round(base["peak_mb"], 1))
    print("\n" + _line(ours, base))


def test_gradcache_step_b256(benchmark):
    _bench(benchmark, 256)


def test_gradcache_step_b1024(benchmark):
    _bench(benchmark, 1024)


def test_gradcache_step_b4096(benchmark):
    _bench(benchmark, 4096)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=3, type=int, metavar=("B", "C", "ROUNDS"), help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--max-unchunked-gb", type=float, default=MAX_UNCHUNKED_GB)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    per_image = None
    for b in args.batches:
        ours, base = compare(b, per_image, args.max_unchunked_gb)
        if base["peak_mb"] == base["peak_mb"]:
            per_image = base["peak_mb"] / b
        print(_line(ours, base), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
