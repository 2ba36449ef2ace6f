"""What every policy objective returns, and the registry objectives are selected from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from credo.registry import Registry


@dataclass
class LossTerms:
    """per_token [B, T]: the loss at each token (the reduction applies the mask);
    metrics: name -> scalar tensor, already averaged over the mask (logged, never differentiated)."""

    per_token: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


OBJECTIVES: Registry = Registry("objective")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)
