"""Optimizers (LARS, SGD, AdamW) and the warmup + cosine learning-rate schedule.

Learning rates follow the papers' scaling: ``--lr`` is the base rate for a global batch of 256 and the
rate used is ``lr * batch_size / 256`` (SimCLR: LARS 0.3 x B/256). Biases and normalization weights
get no weight decay and (LARS) no trust-ratio adaptation, as in SimCLR.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), SimCLR's optimizer.

    Per parameter p with gradient g (groups with ``lars=False`` skip the adaptation):
    g' = g + wd * p;  trust = eta * ||p|| / ||g'|| (1 if either norm is 0);
    v = momentum * v + lr * trust * g';  p -= v.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, adapted) and biases / norm parameters (neither)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0, lars=False)]


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for g in groups:
        g.pop("lars", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":  # a method may set ``adamw_betas`` (MAE: beta2 = 0.95)
        betas = tuple(getattr(model, "adamw_betas", (0.9, 0.999)))
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    return base_lr * batch_size / 256


def warmup_cosine(total_steps: int, warmup_steps: int, final_ratio: float = 0.0):
    """LR multiplier per step: linear warmup from 1/warmup to 1, then cosine down to final_ratio."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_scheduler(optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
