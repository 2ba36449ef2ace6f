"""Length shaping terms added to a task's reward.

DAPO's soft overlong punishment: no penalty while a response leaves a buffer of `cache_length`
tokens before the generation limit, then a penalty falling linearly to -penalty_factor at the limit.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv 2503.14476).
Status: confirmed (verl `DAPORewardManager`, overlong_buffer: len, penalty_factor).

>>> overlong_penalty(100, max_length=20, cache_length=4)   # far past the limit: linear, not clipped
-21.0
>>> overlong_penalty(16, max_length=20, cache_length=4)    # at the start of the buffer
0.0
>>> overlong_penalty(18, max_length=20, cache_length=4)
-0.5
>>> overlong_penalty(20, max_length=20, cache_length=4)    # at the limit (a truncated response)
-1.0
>>> overlong_penalty(torch.tensor([10, 17, 20]), max_length=20, cache_length=4)
tensor([ 0.0000, -0.2500, -1.0000])

In training: `rl.overlong_buffer` = cache_length (0 = off), max_length = sampling.max_new_tokens,
`rl.overlong_penalty_factor`; `overlong_shaping` adds the penalty to the task reward before credit.
"""

from __future__ import annotations

import torch


def overlong_penalty(
    length: int | float | torch.Tensor,
    *,
    max_length: int = 20480,
    cache_length: int = 4096,
    penalty_factor: float = 1.0,
) -> float | torch.Tensor:
    """Soft overlong penalty of a response of `length` tokens (a number, or a tensor [B] -> [B] float32).

    expected = max_length - cache_length;  R_len = min(-(length - expected) / cache_length * penalty_factor, 0)
    0 while length <= max_length - cache_length; -penalty_factor at length = max_length; beyond the
    limit it keeps falling linearly (verl does not clip it). It is added to the correctness reward,
    so a truncated response is penalised even when its answer is correct (as in the paper).
    Defaults (paper / verl recipe): max_length 20480 (the generation budget), cache_length 4096,
    penalty_factor 1.0. Set max_length to the run's own max_new_tokens.
    Raises ValueError for a configuration without a buffer (cache_length <= 0 would divide by zero)
    or a buffer longer than the limit; a length itself is never rejected.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"overlong_penalty: need 0 < cache_length <= max_length, got cache_length={cache_length}, "
            f"max_length={max_length}"
        )
    expected = max_length - cache_length
    if isinstance(length, torch.Tensor):
        exceed = length.to(torch.float32) - expected
        return torch.clamp(-exceed / cache_length * penalty_factor, max=0.0) + 0.0  # + 0.0: no -0.0
    penalty = -(float(length) - expected) / cache_length * penalty_factor
    return penalty if penalty < 0 else 0.0


def overlong_shaping(
    rewards: torch.Tensor, lengths: torch.Tensor, *, max_length: int, cache_length: int, penalty_factor: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The task rewards [B] plus DAPO's soft overlong penalty of each response's length [B] (tokens):
    (shaped rewards [B] float32, metrics). Metrics: overlong_penalty_mean (mean penalty, <= 0),
    overlong_fraction (share of responses inside the buffer or past it, penalty < 0).
    Added to the reward as DAPO's reward manager does (reward = score + overlong_reward), so the
    group baseline sees it; dynamic sampling filters on the task reward before it (verl's "acc").
    """
    penalty = overlong_penalty(lengths, max_length=max_length, cache_length=cache_length,
                               penalty_factor=penalty_factor)
    n = max(len(penalty), 1)
    return rewards.to(torch.float32) + penalty, {
        "overlong_penalty_mean": float(penalty.sum()) / n,
        "overlong_fraction": float((penalty < 0).sum()) / n,
    }
