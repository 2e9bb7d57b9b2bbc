"""The device probe of benches/gpu_check.sh: is there a CUDA device, and does it compute right?

    python benches/check_device.py                 # prints the card and, last, ARCH=<major>.<minor>
    python benches/check_device.py --device cpu    # the same checks on the CPU (tests)

Exit 1 with one line ``no CUDA device: <why>`` or ``... computed a wrong sum`` otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        why = "torch is a CPU-only build" if not torch.version.cuda else (
            f"torch.cuda.is_available() is False (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"device count {torch.cuda.device_count()})")
        print(f"no CUDA device: {why}")
        return 1
    n = 1 << 20
    x = torch.arange(n, device=args.device, dtype=torch.int64)
    if (x * 2).sum().item() != n * (n - 1):  # exact: the sum of 2i over i < n is n(n - 1)
        print(f"the {args.device} device computed a wrong sum")
        return 1
    if args.device == "cpu":
        print("cpu: the sum check passed")
        print("ARCH=none")
        return 0
    prop = torch.cuda.get_device_properties(0)
    l2_mib = getattr(prop, "L2_cache_size", 0) / 2**20
    print(f"{prop.name}, compute capability {prop.major}.{prop.minor}, {prop.multi_processor_count} SMs, "
          f"{prop.total_memory / 2**30:.0f} GiB, L2 {l2_mib:.0f} MiB; {torch.cuda.device_count()} device(s); "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"ARCH={prop.major}.{prop.minor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
