"""HAPO's token-level group-average advantage as a credit estimator (`rl.credit = "hapo"`).

The math is `objectives/entropy_aware.py::hapo_token_group_advantages` (next to HAPO's loss); this
module registers it: each row's length is its number of loss tokens, and the per-row advantage is
broadcast over them. With `rl.objective = "hapo_token"` and `rollout.temperature_schedule = "hapo"`
the three parts of HAPO (adaptive sampling temperature, token-level group advantage, entropy-adaptive
clipping and redistribution) run together (`credo train --recipe hapo`).
"""

from __future__ import annotations

import torch

from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.entry import Entry
from credo.objectives.entropy_aware import hapo_token_group_advantages


@CREDIT.register("hapo")
@token_level()
def hapo_credit(inputs: CreditInputs, *, eps: float = 1e-6, max_abs: float = 5.0) -> torch.Tensor:
    """inputs.rewards [B], group_ids [B], loss_mask [B, T] -> advantages [B, T].

    mu_q, sigma_q = length-weighted mean and population std of R over the group's valid tokens;
    A_i = (R_i - mu_q) / (sigma_q + eps), broadcast over row i's loss tokens; a group where some
    |A_i| >= max_abs falls back to GRPO's advantage. Defaults eps 1e-6, max_abs 5 (official code).
    Paper: "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature"
    (arXiv 2509.16591); official `compute_hapo_outcome_advantage` (see hapo_token_group_advantages for
    the one deviation at padding positions).
    """
    lengths = inputs.loss_mask.sum(-1)
    per_row = hapo_token_group_advantages(inputs.rewards, inputs.group_ids, lengths, eps=eps, max_abs=max_abs)
    return per_row[:, None] * inputs.loss_mask.float()


CATALOG = [
    Entry("hapo", "HAPO's token-level group-average advantage: length-weighted group mean / population std, "
          "GRPO fallback when |A| >= 5", "From Uniform to Heterogeneous (arXiv 2509.16591)", "confirmed",
          "groups, loss-token counts"),
]
