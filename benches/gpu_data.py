"""GPU check for the data pipeline: images/s of the mixed (nvJPEG + GPU operators) SimCLR two-view
pipeline on a folder of ~500x375 JPEGs, against the CPU pipeline in the same run; appends a row to
benches/results/<gpu>.csv through harness.append_row. Needs CUDA; importing it does nothing.

    python benches/gpu_data.py [--images 1024] [--batch 128] [--size 224] [--threads 4] [--epochs 3] [--out DIR]

Needs nvidia.dali: benches/gpu_check.sh lists this bench as OWED on a machine without it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import harness` when run as a script


def make_jpegs(root: Path, n: int, w: int = 500, h: int = 375, classes: int = 8) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.JPEG", quality=90)


def images_per_s(src, device: str, args) -> float:
    import torch

    from fastssl.data import make_loader

    best = 0.0
    for epoch in range(args.epochs + 1):  # epoch 0 warms up (nvJPEG/allocator init)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 0
        for views, labels in make_loader(src, "simclr", batch_size=args.batch, epoch=epoch, device=device,
                                         image_size=args.size, num_threads=args.threads):
            assert views[0].device.type == device and len(views) == 2
            n += labels.numel()
        torch.cuda.synchronize()
        if epoch > 0:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=None, help="results folder (default: $FASTSSL_BENCH_OUT or benches/results)")
    args = p.parse_args(argv)

    import harness
    import torch

    from fastssl.data import ImageFolderSource

    if not torch.cuda.is_available():
        print("gpu_data.py: no CUDA device, nothing to measure", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fastssl_gpu_data_") as tmp:
        make_jpegs(Path(tmp), args.images)
        src = ImageFolderSource(tmp)
        gpu = images_per_s(src, "cuda", args)
        cpu = images_per_s(src, "cpu", args)
    shape = f"{args.images}x500x375->2x{args.size} b{args.batch}"
    ms, cpu_ms = 1e3 * args.batch / gpu, 1e3 * args.batch / cpu
    harness.append_row(dict(device=harness.device_name("cuda"), op="data_simclr_2view_mixed", shape=shape,
                            impl="fastssl", ms=f"{ms:.3f}", baseline=f"dali_cpu_{args.threads}t",
                            baseline_ms=f"{cpu_ms:.3f}", ratio=f"{gpu / cpu:.3f}",
                            extra=f"ms per batch; images/s gpu={gpu:.0f} cpu={cpu:.0f}"), out=args.out)
    print(f"data simclr 2-view {shape}: mixed {gpu:.0f} images/s | cpu ({args.threads} threads) {cpu:.0f} "
          f"images/s | {gpu / cpu:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
