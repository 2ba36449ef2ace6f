"""GDPO: group reward-decoupled normalisation for several rewards, then a batch whitening.

Paper: "GDPO: Group reward-Decoupled Normalization Policy Optimization" (arXiv 2601.05242, as verl cites it).
Peer: verl-project/verl commit 1dda039b9c6311889a9c9a26040677e1254814f9, `verl/trainer/ppo/core_algos.py`
`compute_gdpo_outcome_advantage` (with `compute_grpo_outcome_advantage` per reward and
`verl/utils/torch_functional.py::masked_whiten`).
"""

from __future__ import annotations

import torch

from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.gae import masked_whiten  # verl's masked_whiten (unbiased var, eps 1e-8)
from credo.credit.outcome import grpo_advantages
from credo.credit.providers import StepContext, provides_extras
from credo.entry import Entry

@CREDIT.register("gdpo")
@token_level(needs=("extras",))
def gdpo_advantages(inputs: CreditInputs, *, weights: list[float] | None = None, eps: float = 1e-6,
                    scale_by_std: bool = True) -> torch.Tensor:
    """inputs.rewards [B], group_ids [B], loss_mask [B, T], extras["reward_components"] [B, K] (optional)
    -> advantages [B, T] float32.

    A_k,i  = (r_k,i - mean_g r_k) / (std_g r_k + eps)     (GRPO per reward k: std unbiased, eps 1e-6;
                                                           scale_by_std=False drops the division)
    S_i    = sum_k w_k A_k,i                              (weights default all 1)
    A_i,t  = whiten(S broadcast over tokens, loss_mask)   (mean and unbiased var over all loss tokens,
                                                           so long responses weigh more, as verl)
    Reward components: the trainer's provider (`reward_components` below) gives K = 2 columns per row,
    the task's `correct` and `formatted` verdicts as 0 / 1 (the accuracy and format rewards of the paper's
    setting). Without extras (a direct call), the scalar reward is the only component (verl's fallback:
    GRPO followed by the batch whitening). verl places each component on the last response token and its
    GRPO sums over tokens, so a row's component value is the same as here.
    Paper: GDPO (arXiv 2601.05242). Status: confirmed (verl 1dda039 `compute_gdpo_outcome_advantage`).
    """
    comps = inputs.extras.get("reward_components")
    if comps is None:
        comps = inputs.rewards[:, None]
    comps = torch.as_tensor(comps, dtype=torch.float64)
    if comps.dim() != 2 or comps.shape[0] != inputs.rewards.shape[0]:
        raise ValueError(f"gdpo: extras['reward_components'] must be [B, K], got {tuple(comps.shape)}")
    k = comps.shape[1]
    w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (k,):
        raise ValueError(f"gdpo: weights has {w.numel()} entries for {k} reward components")
    total = torch.zeros(comps.shape[0], dtype=torch.float64)
    for j in range(k):
        total = total + w[j] * grpo_advantages(comps[:, j], inputs.group_ids, eps=eps,
                                               scale_by_std=scale_by_std).to(torch.float64)
    mask = inputs.loss_mask
    token = total[:, None].expand(mask.shape)
    return (masked_whiten(token, mask) * mask).to(torch.float32)


@provides_extras(gdpo_advantages)
def reward_components(ctx: StepContext) -> dict:
    """reward_components [B, 2]: (correct, formatted) of each completion, re-scored by the task."""
    rows = []
    for c, ex in zip(ctx.completions, ctx.examples):
        s = ctx.sources.task.score(c.text, ex)
        rows.append([float(s.correct), float(s.formatted)])
    return {"reward_components": torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)}


CATALOG = [
    Entry("gdpo", "GRPO normalisation per reward (correct, formatted), weighted sum, then whitened over "
          "the batch's tokens", "GDPO (arXiv 2601.05242)", "confirmed", "groups; task correct/formatted"),
]
