"""Critic-free baselines whose loss is the plain PPO clipped surrogate: Dr.GRPO and Lite PPO.

Both differ from GRPO in the advantage (a separate part: `credo.credit`, names "dr_grpo" and
"lite_ppo") and in the loss reduction, not in the per-token loss. They are registered as objectives
so a run names the method it reproduces and the docstring / catalog records the reduction the paper
prescribes. The trainer applies the reduction (`rl.loss_reduction`); these functions do not.

RLOO, REINFORCE++ and REINFORCE++-baseline use the same PPO clipped surrogate as verl's "vanilla"
loss: pair their credit estimators with the "grpo" objective. With kl_coef = 0 the per-token loss
equals verl's `compute_policy_loss_vanilla` wherever A >= 0 or r <= clip_ratio_c = 3, but not where
A < 0 and r > 3: verl always dual-clips there (loss min(max(-A r, -A clip(r)), -3 A) = 3 |A|), and
`grpo` does not (loss |A| r, unbounded). For verl's loss everywhere, use an objective with
`dual_clip=3` (`ppo_clip_per_token(..., dual_clip=3.0)`; tests/test_objectives_baselines.py shows
both cases).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.objectives.base import OBJECTIVES, LossTerms
from credo.objectives.common import add_kl_penalty
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3
from credo.entry import Entry


@OBJECTIVES.register("dr_grpo")
def dr_grpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """Dr.GRPO ("GRPO done right"): the PPO clipped surrogate, to be summed over tokens / a constant.

    logprobs [B, T] (policy, with grad); uses batch.advantages [B, T], batch.behaviour_logprobs,
    batch.loss_mask -> LossTerms(per_token [B, T]).
    L = (1/(N C)) sum_i sum_t max(-A_i r_t, -A_i clip(r_t, 1-clip_low, 1+clip_high)),  A_i = R_i - mean_g R
    Recommended reduction: `seq_mean_token_sum_norm` (C = rl's max_new_tokens, a constant; credo also
    divides by the sequence count N, the paper's 1/G). Pair with credit "dr_grpo" (no std division).
    Defaults: clip 0.2 / 0.2, kl_coef 0 (the verl recipe uses no KL, so no reference model is loaded).
    Departs from GRPO: no 1/|y_i| per-response length normalisation and no std in the advantage; the
    per-token loss itself is GRPO's.
    Paper: "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv 2503.20783).
    Status: confirmed (verl `recipe/drgrpo`: norm_adv_by_std_in_grpo=False,
    loss_agg_mode=seq-mean-token-sum-norm, use_kl_loss=False).
    """
    terms = ppo_clip_per_token(
        logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
        clip_low=clip_low, clip_high=clip_high,
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="dr_grpo_loss")


@OBJECTIVES.register("lite_ppo")
def lite_ppo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """Lite PPO: plain critic-free PPO-clip with token-level aggregation.

    logprobs [B, T]; uses batch.advantages, batch.behaviour_logprobs, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    L = sum_{i,t} M max(-A r, -A clip(r, 1-clip_low, 1+clip_high)) / sum_{i,t} M,
    A_i = (R_i - mean_group R) / (std_batch R + eps)   (credit "lite_ppo")
    Recommended reduction: `token_mean` (the paper finds it helps base models; aligned models
    prefer `seq_mean_token_mean`). Defaults: clip 0.2 / 0.2, no KL.
    Departs from GRPO: only the advantage (batch std instead of group std) and the reduction.
    Paper: "Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (arXiv 2508.08221).
    Status: confirmed (ROLL: norm_mean_type=group, norm_std_type=batch, token_level_loss=true).
    """
    terms = ppo_clip_per_token(
        logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
        clip_low=clip_low, clip_high=clip_high,
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="lite_ppo_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("dr_grpo", "PPO clip summed over tokens / a constant; pair with credit dr_grpo; "
          "reduction seq_mean_token_sum_norm",
          "Understanding R1-Zero-Like Training (arXiv 2503.20783)", "confirmed", "groups"),
    Entry("lite_ppo", "plain PPO clip; pair with credit lite_ppo; reduction token_mean",
          "Tricks or Traps? A Deep Dive into RL for LLM Reasoning (arXiv 2508.08221)", "confirmed", "groups"),
]
