"""Outcome-level advantage estimators: rewards [B] + group ids [B] -> advantages [B].

Each vectorized estimator has a readable loop reference beside it (tests check they agree).
"""

from __future__ import annotations

import torch

from credo.credit.base import CREDIT


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids [B] to dense indices 0..K-1 [B]."""
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


@CREDIT.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """Group-normalised outcome advantage (GRPO).

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased (N - 1) as in verl;
    scale_by_std=False gives Dr.GRPO's A_i = R_i - mean_g R.
    A group of one sample gets mean 0 and std 1 (its advantage is its raw reward, as verl).
    A zero-variance group gets A = 0 exactly.
    Paper: "DeepSeekMath" (arXiv 2402.03300); Dr.GRPO: "Understanding R1-Zero-Like Training: A
    Critical Perspective" (arXiv 2503.20783). Status: confirmed (verl `compute_grpo_outcome_advantage`).
    """
    rewards = rewards.to(torch.float64)
    dense, k = _group_index(group_ids)
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, rewards)
    mean = total / count
    centred = rewards - mean[dense]
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, centred**2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))
    single = count[dense] == 1
    mean_b = torch.where(single, torch.zeros_like(rewards), mean[dense])
    std_b = torch.where(single, torch.ones_like(rewards), std[dense])
    adv = rewards - mean_b
    if scale_by_std:
        adv = adv / (std_b + eps)
    # A zero-variance group gets exactly 0 (a float mean of equal values can be off by an ulp,
    # which the std division would blow up to ~1e-10 instead of 0).
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amin")
    flat = (high[dense] == low[dense]) & ~single
    return torch.where(flat, torch.zeros_like(adv), adv).to(torch.float32)


def grpo_advantages_loop(
    rewards: list[float], group_ids: list[int], *, eps: float = 1e-6, scale_by_std: bool = True
) -> list[float]:
    """Readable reference for `grpo_advantages` (same semantics, plain Python)."""
    out = []
    for r, g in zip(rewards, group_ids):
        members = [rr for rr, gg in zip(rewards, group_ids) if gg == g]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / len(members)
            std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
        a = r - mean
        out.append(a / (std + eps) if scale_by_std else a)
    return out
