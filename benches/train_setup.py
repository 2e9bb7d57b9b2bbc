"""The model and optimizer of a training bench, built as ``python -m fastssl.train ARGV`` builds them."""

from __future__ import annotations

import torch


def build_training(argv: list[str], device: torch.device | str, seed: int | None = None,
                   global_bn: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    """(method, optimizer, cfg) for the flags ``argv`` (``--method`` included): the same flag parsing and
    defaults (``fastssl.train.parse_config``), weights drawn after ``torch.manual_seed(seed)`` (default:
    the config's ``--seed``), global BatchNorm (``global_bn``, a no-op in one process), moved to ``device``
    in channels_last, the method's optimizer at the batch-scaled learning rate."""
    from fastssl.cli.train import parse_config
    from fastssl.engine.optim import build_optimizer, scaled_lr
    from fastssl.engine.parallel import convert_global_bn
    from fastssl.methods import build_method
    from fastssl.models import to_channels_last

    cfg = parse_config(argv)
    device = torch.device(device)
    torch.manual_seed(cfg["seed"] if seed is None else seed)
    method = build_method(cfg["method"], cfg)
    if global_bn:
        method = convert_global_bn(method, device)
    method = to_channels_last(method.to(device))
    opt = build_optimizer(cfg["optimizer"], method, scaled_lr(cfg["lr"], cfg["batch_size"]), cfg["weight_decay"],
                          cfg["momentum"])
    return method, opt, cfg
