"""DAPO's dynamic sampling: keep only the groups whose rewards are not all equal.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv 2503.14476).
Status: confirmed (verl `recipe/dapo/dapo_ray_trainer.py`: a group is kept when
`np.std(metric_vals) > 0`, metric = "acc" by default; the trainer keeps generating batches, at most
`max_num_gen_batches`, until enough groups are kept, then truncates to the train batch size).

A group whose samples all succeeded or all failed has zero advantage under any group-baseline
estimator, so it only dilutes the token count of the loss; DAPO drops it instead of zero-weighting
it. The refill loop belongs to the trainer; this module is only the rule.
"""

from __future__ import annotations

import torch


def keep_mixed_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """rewards [B] float, group_ids [B] long -> keep [B] bool: True where the sample's group is mixed.

    keep_i = max_{group(i)} R > min_{group(i)} R   (the same as std > 0, without float round-off).
    A group of one sample has std 0 and is dropped, as in verl. Pass the correctness signal ("acc")
    to match the recipe: with the overlong penalty added, the total reward of an all-correct group
    can vary only through length, and that group would be kept.
    A NaN reward makes its group count as mixed only if other values differ; callers should not
    produce NaN rewards (verifiers return error_reward instead).
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"keep_mixed_groups: rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} "
            "must both be [B]"
        )
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    r = rewards.to(torch.float64)
    _, dense = torch.unique(group_ids, return_inverse=True)
    k = int(dense.max()) + 1
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amin")
    return (high > low)[dense]


def keep_mixed_groups_loop(rewards: list[float], group_ids: list[int]) -> list[bool]:
    """Readable reference for `keep_mixed_groups`."""
    out = []
    for g in group_ids:
        members = [r for r, gg in zip(rewards, group_ids) if gg == g]
        out.append(max(members) > min(members))
    return out
