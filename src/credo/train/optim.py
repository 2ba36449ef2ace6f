"""AdamW and the learning-rate schedule (a pure function of the step, set by the loop)."""

from __future__ import annotations

import math

import torch

from credo.errors import CredoError

DECAYS = ("cosine", "linear", "constant")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))


def lr_at(
    step: int, total: int, *, peak: float, warmup: int, decay: str, min_ratio: float
) -> float:
    """Learning rate at 0-based `step` of `total`: linear warm-up, then decay to min_ratio * peak."""
    if decay not in DECAYS:
        raise CredoError(f"unknown lr decay {decay!r}; valid: {', '.join(DECAYS)}")
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if decay == "constant" or total <= warmup + 1:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return peak * (min_ratio + (1 - min_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
