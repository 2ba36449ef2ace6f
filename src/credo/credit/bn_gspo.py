"""BN-GSPO credit: GRPO's group-normalised advantage, then a z-score over the whole batch.

Group normalisation alone leaves each prompt's advantages on its own scale (a group with a tiny
reward spread is blown up to unit std, a group of one keeps its raw reward); the second, batch-level
normalisation puts every sequence of the batch on one scale (zero mean, unit std over rows), which
the paper credits for training stability across easy and hard multi-tool trajectories.
"""

from __future__ import annotations

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT
from credo.credit.outcome import grpo_advantages

BATCH_EPS = 1e-9  # official code: "population std and epsilon=1e-9 to match GEM ReBN"


@CREDIT.register("bn_gspo")
def bn_gspo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    eps: float = 1e-6,
    batch_eps: float = BATCH_EPS,
) -> torch.Tensor:
    """BN-GSPO advantage: group z-score (GRPO), then batch z-score over all rows.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    a_i = (R_i - mean_g R) / (std_g R + eps)         (GRPO, unbiased std; `grpo_advantages`)
    A_i = (a_i - mean_B a) / (std_B a + batch_eps)   (population std over all B rows of the batch)
    The group step keeps GRPO's conventions: a group of one has mean 0 and std 1 (a_i = R_i), a
    zero-variance group gets a = 0. If every a_i is equal (e.g. every group has equal rewards, or
    B = 1) the batch step has no spread and A = 0 exactly. Every row counts, also empty responses
    (the estimator does not see lengths), as in the official code.
    Key property: over the rows of the batch, mean A = 0 and (population) std A = 1 (up to batch_eps)
    whenever the a_i are not all equal.
    Defaults (official code): eps 1e-6, batch_eps 1e-9. Pair with objective `bn_gspo` (GSPO loss).
    Paper: "SenseNova-MARS: Empowering Multimodal Agentic Reasoning and Search via Reinforcement
    Learning" (arXiv 2512.24330), BN-GSPO. Status: confirmed (official code OpenSenseNova/SenseNova-MARS,
    verl/trainer/ppo/core_algos.py `compute_grpo_outcome_advantage` with `algorithm.apply_batch_norm`).
    """
    a = grpo_advantages(rewards, group_ids, eps=eps).to(torch.float64)
    if a.numel() == 0 or bool(a.max() == a.min()):
        return torch.zeros_like(a, dtype=torch.float32)
    centred = a - a.mean()
    return (centred / (a.std(unbiased=False) + batch_eps)).to(torch.float32)


def bn_gspo_advantages_loop(
    rewards: list[float], group_ids: list[int], *, eps: float = 1e-6, batch_eps: float = BATCH_EPS
) -> list[float]:
    """Readable reference for `bn_gspo_advantages` (plain Python)."""
    a = []
    for r, g in zip(rewards, group_ids):
        members = [rr for rr, gg in zip(rewards, group_ids) if gg == g]
        if len(members) == 1:
            a.append(r)  # mean 0, std 1
        elif max(members) == min(members):
            a.append(0.0)
        else:
            mean = sum(members) / len(members)
            std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
            a.append((r - mean) / (std + eps))
    if not a or max(a) == min(a):
        return [0.0] * len(a)
    mean = sum(a) / len(a)
    std = (sum((x - mean) ** 2 for x in a) / len(a)) ** 0.5
    return [(x - mean) / (std + batch_eps) for x in a]


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("bn_gspo", "GRPO group z-score followed by a batch z-score over all rows (population std); "
          "loss: objective bn_gspo",
          "SenseNova-MARS, BN-GSPO (arXiv 2512.24330)", "confirmed", "groups; a batch of prompts"),
]
