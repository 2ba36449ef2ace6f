"""PPO's actor loss (clipped surrogate with dual clip) and the critic's clipped value loss.

The critic path of PPO is three parts, each small and separate:
- the value model (`credo.critic.ValueModel`): V(s_t) for every token position;
- GAE (`credo.credit.gae`): advantages and returns from token rewards and values, a credit estimator;
- `clipped_value_loss` (here): the critic's regression loss, applied by `credo.critic.critic_update`.
Selecting `rl.credit = "gae"` turns the critic on; `rl.objective = "ppo"` is the actor loss.

Papers: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); "High-Dimensional Continuous
Control Using Generalized Advantage Estimation" (arXiv 1506.02438); dual clip: "Mastering Complex
Control in MOBA Games with Deep Reinforcement Learning" (arXiv 1912.09729).
Status: confirmed (verl `compute_policy_loss_vanilla`, `compute_value_loss`).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms
from credo.objectives.common import add_kl_penalty
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3


@OBJECTIVES.register("ppo")
def ppo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """PPO actor loss with dual clip, on token-level advantages (e.g. from GAE with a critic).

    logprobs [B, T] (policy, with grad); reads batch.advantages [B, T], batch.behaviour_logprobs
    [B, T], batch.loss_mask [B, T] (and batch.ref_logprobs when kl_coef > 0) -> per_token [B, T].
    r_t = exp(logprobs_t - old_t);  L_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
    dual clip (only where A_t < 0): L_t = min(L_t, -A_t c), so a huge ratio on a bad token cannot give
    an unbounded loss.  Defaults (verl): clip 0.2 / 0.2, c = 3.0 (None turns it off), kl_coef 0.
    Paper: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); dual clip arXiv 1912.09729.
    Status: confirmed (verl `compute_policy_loss_vanilla`). Pair with credit `gae` for the critic path.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_loss: dual_clip must be > 1 (verl asserts it), got {dual_clip}")
    terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
                               clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="ppo_loss")


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    value_clip: float | None = 0.5,
) -> torch.Tensor:
    """The critic's clipped regression loss, per token.

    values [B, T] (critic, with grad), old_values [B, T] (the critic's values when the batch was
    collected), returns [B, T] (GAE returns A + V_old), mask [B, T] -> per_token [B, T] (0 off the mask).
    L_t = 0.5 * max((V_t - Ret_t)^2, (clip(V_t, V_old_t - eps, V_old_t + eps) - Ret_t)^2)
    value_clip = eps (verl default 0.5); None gives the plain 0.5 (V - Ret)^2.
    Paper: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347). Status: confirmed (verl
    `compute_value_loss`, which then aggregates with the actor's loss_agg_mode).
    """
    unclipped = (values - returns) ** 2
    if value_clip is None:
        loss = 0.5 * unclipped
    else:
        clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        loss = 0.5 * torch.maximum(unclipped, (clipped - returns) ** 2)
    return torch.where(mask.bool(), loss, torch.zeros_like(loss))


CATALOG = [
    Entry("ppo", "PPO clipped surrogate with dual clip (c = 3) on token advantages; critic path: credit gae + "
          "value model + clipped value loss", "Proximal Policy Optimization Algorithms (arXiv 1707.06347)",
          "confirmed", "token advantages (credit gae: value model); reference model if kl_coef > 0"),
]
