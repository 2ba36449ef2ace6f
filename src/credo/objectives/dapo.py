"""DAPO's policy loss: the PPO clipped surrogate with a decoupled, higher upper clip ("clip-higher").

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv 2503.14476).
Status: confirmed (verl DAPO recipe: `compute_policy_loss_vanilla` with clip_ratio_low = 0.2,
clip_ratio_high = 0.28, clip_ratio_c = 10, loss_agg_mode = token-mean, no KL).

DAPO's four parts live where they compose:
- clip-higher: `dapo_loss` here;
- token-level loss: the trainer's `token_mean` reduction (the recommended `rl.loss_reduction`);
- dynamic sampling (drop all-correct / all-wrong groups): `credo.select.dynamic_sampling.keep_mixed_groups`;
- soft overlong punishment: `credo.rewards.length.overlong_penalty`, added to the correctness reward.
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


@OBJECTIVES.register("dapo")
def dapo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DAPO policy loss with decoupled clip ranges (DAPO, arXiv 2503.14476; confirmed, verl recipe).

    logprobs [B, T] (policy, with grad); uses batch.advantages [B, T] (GRPO group-normalised),
    batch.behaviour_logprobs, batch.loss_mask -> LossTerms(per_token [B, T]).
    L_t = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high)); where A < 0 also L_t = min(L_t, -A c)
    Defaults: clip_low 0.2, clip_high 0.28 (a positive-advantage token's ratio may rise to 1.28
    before its gradient is cut, so unlikely "exploration" tokens can grow), dual clip c = 10, no KL.
    Recommended reduction: `token_mean` over the whole minibatch (long responses are not down-weighted).
    Departs from GRPO: asymmetric clip (clip_high > clip_low), dual clip, no KL, token-mean loss, and
    (elsewhere) zero-variance groups dropped and an overlong reward penalty.
    The config's `rl.clip_low` / `rl.clip_high` override these only when set.
    """
    terms = ppo_clip_per_token(
        logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="dapo_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("dapo", "clip-higher PPO (clip 0.2 / 0.28), dual clip 10, no KL; "
          "reduction token_mean; with select.keep_mixed_groups and rewards.overlong_penalty",
          "DAPO (arXiv 2503.14476)", "confirmed", "groups; response lengths"),
]
