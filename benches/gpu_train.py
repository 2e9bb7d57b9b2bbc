"""GPU training throughput: short runs of registered methods on synthetic on-device data (no DALI).

For each target (``TARGETS``: SimCLR with ResNet-50 and MAE with ViT-B/16, both at 224 px) that is
registered in ``fastssl.methods``, the method is built exactly as ``python -m fastssl.train --method
NAME --arch ... --image-size 224 --batch-size B`` would build it (same flag parsing and defaults,
channels_last, the method's optimizer, bf16 autocast on CUDA as ``--precision auto``), then trained
for ``--warmup`` + ``--steps`` steps on random normal views that already sit on the device (no
decoding, no augmentation: this measures the model + loss + optimizer step alone). Reported per
method: median step time (CUDA events), images/s (source images, i.e. batch / step time; a SimCLR
image is 2 views), peak memory (torch.cuda.max_memory_allocated over the timed steps: weights,
optimizer state and activations). A target whose method is not registered in this tree prints
``OWED: ...`` and gets no row. Rows: ``harness.append_row(..., out=--out)``.

    python benches/gpu_train.py --out benches/results/x          # on a CUDA machine (~1 minute)
    python benches/gpu_train.py --device cpu --tiny --no-record    # smoke test of the logic on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import harness` when run as a script

# method name -> flags of `python -m fastssl.train` for its GPU row (and the views its recipe makes).
TARGETS = {
    "simclr": dict(arch="resnet50", width=64, image_size=224, batch_size=256),
    "mae": dict(arch="vit_base", image_size=224, batch_size=256),
}
# Smoke-test sizes (--tiny): same family of backbone, tiny.
TINY = {"resnet": dict(arch="resnet18", width=8, image_size=32, batch_size=4),
        "vit": dict(arch="vit_tiny", image_size=32, batch_size=4)}


def n_views(recipe: str) -> int:
    """Views per image of ``recipe`` (fastssl/data/recipes.py, which imports DALI only to build a graph:
    no fallback here, so a DALI import on this path fails the GPU check instead of guessing)."""
    from fastssl.data.recipes import RECIPES

    return RECIPES[recipe].n_views


def target_flags(name: str, tiny: bool, batch: int | None) -> dict:
    flags = dict(TARGETS[name])
    if tiny:
        flags = dict(TINY["vit" if flags["arch"].startswith("vit") else "resnet"])
    if batch:
        flags["batch_size"] = batch
    return flags


def build(name: str, flags: dict, device):
    """(method, optimizer, cfg) as fastssl.train builds them for these flags."""
    from train_setup import build_training

    argv = ["--method", name]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return build_training(argv, device, global_bn=True)


def measure(name: str, flags: dict, device, steps: int, warmup: int) -> dict:
    import harness
    import torch

    method, opt, cfg = build(name, flags, device)
    method.train()
    b, s, views = cfg["batch_size"], cfg["image_size"], n_views(method.recipe)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [([torch.randn(b, 3, s, s, device=device, generator=g).contiguous(memory_format=torch.channels_last)
                 for _ in range(views)], torch.randint(0, 1000, (b,), device=device, generator=g))
               for _ in range(2)]
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step(i: int) -> torch.Tensor:
        v, labels = batches[i % len(batches)]
        with autocast:
            loss, _ = method(v, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for i in range(warmup):
        step(i)
    times, losses = harness.time_steps(step, steps, device)
    last = torch.stack(losses).float()
    if not torch.isfinite(last).all():
        raise FloatingPointError(f"non-finite loss during the timed steps: {last.tolist()}")
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return dict(method=name, arch=cfg["arch"], batch=b, image_size=s, views=views, ms=ms, images_per_s=b / ms * 1e3,
                peak_mb=peak, loss=float(last[-1]), steps=steps, precision="bf16 autocast" if cuda else "fp32")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--methods", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN/Triton set-up)")
    p.add_argument("--batch", type=int, default=None, help="override each target's batch size")
    p.add_argument("--tiny", action="store_true", help="tiny backbones and images (CPU smoke test)")
    p.add_argument("--out", default=None, help="results folder (default: $FASTSSL_BENCH_OUT or benches/results)")
    p.add_argument("--no-record", action="store_true", help="print only, append no rows")
    args = p.parse_args(argv)

    import harness
    import torch

    from fastssl.methods import METHODS

    device = torch.device(args.device)
    if harness.no_cuda(device, "gpu_train.py", "; --device cpu --tiny is the smoke test"):
        return 1
    status, results = 0, []
    for name in args.methods:
        flags = target_flags(name, args.tiny, args.batch)
        if name not in METHODS:
            real = TARGETS[name]
            print(f"OWED: {name} training row ({real['arch']}, {real['image_size']} px): method {name!r} is not "
                  f"registered in fastssl.methods in this tree (registered: {', '.join(sorted(METHODS))})")
            continue
        try:
            r = measure(name, flags, device, args.steps, args.warmup)
        except (torch.OutOfMemoryError, FloatingPointError) as e:
            print(f"gpu_train.py: {name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0]}")
            status = 1
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(r)
        if not args.no_record:
            harness.append_row(dict(
                device=harness.device_name(device), op=f"train_{name}_{r['arch']}",
                shape=f"b{r['batch']}x{r['views']}view{'s' if r['views'] > 1 else ''}x{r['image_size']}px",
                impl="fastssl", dtype=r["precision"].split()[0], ms=f"{r['ms']:.3f}", peak_mb=f"{r['peak_mb']:.1f}",
                extra=(f"images_per_s={r['images_per_s']:.0f};median step of {r['steps']} after {args.warmup} "
                       f"warm-up;synthetic on-device data;{r['precision']};loss={r['loss']:.4f}")), out=args.out)
    if results:
        print(f"{'method':<8} {'arch':<10} {'batch':>5} {'views':>5} {'px':>4} {'step ms':>9} {'images/s':>9} "
              f"{'peak MB':>8}")
        for r in results:
            print(f"{r['method']:<8} {r['arch']:<10} {r['batch']:>5} {r['views']:>5} {r['image_size']:>4} "
                  f"{r['ms']:>9.1f} {r['images_per_s']:>9.0f} {r['peak_mb']:>8.0f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
