"""GPU rows of the gradient-cached SimCLR step (``--chunk-size``, fastssl.engine.gradcache): ResNet-50 at 224 px.

Rows (called by benches/gpu_check.sh; plain script, no pytest), SimCLR ResNet-50 (width 64, projector
2048 -> 128, LARS) at 224 px, 2 views, bf16 autocast, channels_last, as ``python -m fastssl.train
--method simclr --arch resnet50 --width 64 --image-size 224 --batch-size B [--chunk-size C]`` builds it:

- B=256 unchunked and B=256 in chunks of C=128: the time ratio where both fit (target <= 1.4; one extra
  forward is 4/3);
- B=4096, C=128 and B=65536, C=128: images/s and peak memory (torch.cuda.max_memory_allocated over the
  timed steps: weights, optimizer state, the batch of views, one chunk's activations, the O(B*D)
  embeddings and their gradient).

The views are synthetic and already on the device, stored in bf16 (the first convolution casts them to
bf16 under autocast anyway, so the step computes the same; fp32 views of B=65536 would take 79 GB).
Their size is reported apart (``views_mb``): it is the part of the peak that grows with B besides the
embeddings. A step is one process's Trainer._step: passes (a), (b), (c), then the LARS update. Timing:
CUDA events, median over the timed steps after a warm-up of the same shapes (chunked: one chunk).

The whole script must stay under ``--budget-s`` (gpu_check.sh kills a bench after 120 s): a row whose
time, extrapolated linearly in B from the previous chunked row, does not fit in what is left prints
``OWED: ...`` with the estimate and how to run it alone (``--only 65536 --budget-s 600``).

    python benches/gpu_gradcache.py --out benches/results/x            # on a CUDA machine
    python benches/gpu_gradcache.py --device cpu --tiny --no-record    # smoke test of the logic on a CPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import harness` when run as a script

FLAGS = ["--arch", "resnet50", "--width", "64", "--image-size", "224"]
# (global batch, chunk size or 0 = unchunked, warm-up steps (chunked: at most one, of one chunk), timed steps)
ROWS = [(256, 0, 3, 10), (256, 128, 3, 10), (4096, 128, 1, 2), (65536, 128, 1, 1)]
TINY_FLAGS = ["--arch", "resnet18", "--width", "8", "--image-size", "32", "--proj-hidden", "64", "--proj-dim", "32"]
TINY_ROWS = [(16, 0, 1, 2), (16, 8, 1, 2), (32, 8, 1, 1), (64, 8, 1, 1)]


def measure(batch: int, chunk: int, warmup: int, steps: int, flags, device) -> dict:
    import harness
    import torch
    from bench_gradcache import build

    cuda = device.type == "cuda"
    step, warm, cfg = build(batch, chunk, device, flags, views_dtype=torch.bfloat16 if cuda else torch.float32)
    for _ in range(warmup if not chunk else min(warmup, 1)):
        warm()
    times, losses = harness.time_steps(lambda _i: step(), steps, device)
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"non-finite loss during the timed steps: {losses}")
    s = cfg["image_size"]
    ms = statistics.median(times)
    return dict(batch=batch, chunk=chunk, ms=ms, images_per_s=batch / ms * 1e3,
                peak_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan"),
                views_mb=2 * batch * 3 * s * s * (2 if cuda else 4) / 2**20, loss=losses[-1], steps=steps,
                arch=cfg["arch"], image_size=s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="ResNet-18 width 8 at 32 px, small batches (CPU smoke test)")
    p.add_argument("--only", type=int, nargs="+", default=None, help="run only these global batches")
    p.add_argument("--budget-s", type=float, default=105.0, help="wall-clock budget of the whole script")
    p.add_argument("--out", default=None, help="results folder (default: $FASTSSL_BENCH_OUT or benches/results)")
    p.add_argument("--no-record", action="store_true", help="print only, append no rows")
    args = p.parse_args(argv)

    import harness
    import torch

    t0 = time.perf_counter()
    device = torch.device(args.device)
    if harness.no_cuda(device, "gpu_gradcache.py", "; --device cpu --tiny is the smoke test"):
        return 1
    flags, rows = (TINY_FLAGS, TINY_ROWS) if args.tiny else (FLAGS, ROWS)
    if args.only:
        rows = [r for r in rows if r[0] in args.only]
    status, results, per_image_ms = 0, [], None
    for batch, chunk, warmup, steps in rows:
        label = f"B={batch} C={chunk or 'none'}"
        left = args.budget_s - (time.perf_counter() - t0)
        if per_image_ms is not None and chunk:
            need_s = per_image_ms * batch * (steps + 0.5) / 1e3  # + set-up (views, model); warm-up: one chunk
            if need_s > left:
                print(f"OWED: gradcache {label} ({flags[1]}, {flags[5]} px): estimated {need_s:.0f} s "
                      f"(linear in B from the previous row) > the {left:.0f} s left of --budget-s {args.budget_s:.0f}; "
                      f"run alone: python benches/gpu_gradcache.py --only {batch} --budget-s {need_s * 1.5 + 60:.0f}")
                continue
        try:
            r = measure(batch, chunk, warmup, steps, flags, device)
        except (torch.OutOfMemoryError, FloatingPointError) as e:
            print(f"gpu_gradcache.py: {label}: FAILED: {type(e).__name__}: {str(e).splitlines()[0]}")
            status = 1
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if chunk:
            per_image_ms = r["ms"] / batch
        base = next((x for x in results if x["batch"] == batch and not x["chunk"]), None) if chunk else None
        r["ratio"] = r["ms"] / base["ms"] if base else float("nan")
        results.append(r)
        if not args.no_record:
            harness.append_row(dict(
                device=harness.device_name(device), op=f"train_simclr_gradcache_{r['arch']}",
                shape=f"b{batch}x2viewsx{r['image_size']}px,C={chunk or 'none'}",
                impl="fastssl_chunked" if chunk else "fastssl", dtype="bf16" if device.type == "cuda" else "fp32",
                ms=f"{r['ms']:.3f}", peak_mb=f"{r['peak_mb']:.1f}",
                baseline="unchunked" if base else "", baseline_ms=f"{base['ms']:.3f}" if base else "",
                ratio=f"{1 / r['ratio']:.3f}" if base else "",  # the harness's speed-up: baseline / ours
                baseline_peak_mb=f"{base['peak_mb']:.1f}" if base else "",
                extra=(f"images_per_s={r['images_per_s']:.0f};views_mb={r['views_mb']:.0f};median step of "
                       f"{r['steps']};chunked/unchunked time={r['ratio']:.3f};synthetic on-device views;"
                       f"loss={r['loss']:.4f}")),
                out=args.out)
    if results:
        print(f"{'batch':>6} {'chunk':>5} {'step ms':>10} {'images/s':>9} {'peak MB':>9} {'views MB':>9} "
              f"{'chunked/unchunked':>17}")
        for r in results:
            print(f"{r['batch']:>6} {r['chunk'] or '-':>5} {r['ms']:>10.1f} {r['images_per_s']:>9.0f} "
                  f"{r['peak_mb']:>9.0f} {r['views_mb']:>9.0f} {r['ratio']:>17.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
