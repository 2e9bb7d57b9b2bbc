"""GPU check for sample_tiles (called by benches/gpu_check.sh; plain script, no pytest).

Jigsaw tiles at B=256, 255 px crops, 64 px tiles (Noroozi & Favaro's sizes), per-tile normalization and
grayscale on, float32 and uint8 input: ms and GB/s counting the bytes the op must move (the tiles' input
pixels read once + the tiles written), against the copy bandwidth measured on the same card
(``dst.copy_(src)`` of a 1 GiB tensor; target >= 70% of it). Prints a short table and appends rows to
benches/results/<device>.csv through harness.append_row.

    python benches/gpu_tiles.py                                   # on a CUDA machine
    python benches/gpu_tiles.py --device cpu --batch 8 --no-record   # logic smoke test on CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

from fastssl.ops import jigsaw_permutations, sample_tiles  # noqa: E402

TARGET_FRACTION = 0.7


def copy_gbps(device, nbytes: int, rounds: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = harness.time_ms(lambda: dst.copy_(src), device, rounds, warmup=3)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--side", type=int, default=255)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--no-record", action="store_true", help="do not append to benches/results")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    perms = jigsaw_permutations(100).to(device)
    ceiling = copy_gbps(device, 2**30 if device.type == "cuda" else 2**24, a.rounds)
    rows = []
    for dtype in (torch.float32, torch.uint8):
        x = torch.rand(a.batch, 3, a.side, a.side, device=device)
        x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x
        x = x.contiguous(memory_format=torch.channels_last)  # what the trainer hands a method
        fn = lambda x=x: sample_tiles(x, "jigsaw", tile=a.tile, perms=perms, normalize=True, gray_p=0.3)  # noqa: E731
        out = fn().tiles
        ms = harness.time_ms(fn, device, a.rounds, warmup=3)
        moved = out.numel() * (x.element_size() + out.element_size())
        gbps = moved / (ms * 1e-3) / 1e9
        rows.append((dtype, ms, gbps))
        if not a.no_record:
            harness.append_row(dict(device=harness.device_name(device), op="sample_tiles",
                                    shape=f"jigsaw,B={a.batch},{a.side}px,t={a.tile},{str(dtype)[6:]},norm",
                                    impl="fastssl", ms=f"{ms:.3f}", baseline="copy_bandwidth",
                                    ratio=f"{gbps / ceiling:.3f}",
                                    extra=f"{gbps:.0f} GB/s of {ceiling:.0f} GB/s copy"))
    print(f"sample_tiles on {harness.device_name(device)} (B={a.batch}, {a.side} px, tile {a.tile}, jigsaw, "
          f"normalize + gray): copy bandwidth {ceiling:.0f} GB/s, target {TARGET_FRACTION:.0%}")
    for dtype, ms, gbps in rows:
        print(f"  {str(dtype)[6:]:8s} {ms:8.3f} ms  {gbps:7.1f} GB/s  {gbps / ceiling:6.1%} of copy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
