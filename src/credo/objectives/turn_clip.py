"""A2TGPO's objective: the PPO clipped surrogate with a per-token clip range from the credit estimator.

    eps_low_t = clip_low * s_t,  eps_high_t = clip_high * s_t,   s_t = batch.clip_scale[b, t]
    L_t = max(-A r_t, -A clip(r_t, 1 - eps_low_t, 1 + eps_high_t))   (+ optional KL, as GRPO)

s is made by the `a2tgpo` credit estimator's clip-scale companion (`credit/turns.py::a2tgpo_clip_scale`:
1 + spread tanh(I~ / temperature) of the turn's normalised information gain), so informative turns may
move further than uninformative ones. With s = 1 everywhere this is GRPO's loss exactly.
Paper: "A2TGPO: Agentic Turn-Group Policy Optimization with Adaptive Turn-level Clipping"
(arXiv 2605.06200). Status: reconstructed (the paper's f is unpublished; see a2tgpo_clip_scale).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.common import add_kl_penalty
from credo.objectives.kl import kl_k3


@OBJECTIVES.register("a2tgpo")
def a2tgpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """A2TGPO: PPO clip with clip ranges scaled per token by batch.clip_scale (see the module docstring).

    logprobs [B, T] (with grad); uses batch.advantages, batch.behaviour_logprobs, batch.loss_mask,
    batch.clip_scale [B, T] (required: the credit estimator `a2tgpo` makes it) -> LossTerms(per_token [B, T]).
    Defaults: clip 0.2 / 0.2 (the base range), no KL. Reduction: the run's (token_mean in the recipe).
    Paper: "A2TGPO: Agentic Turn-Group Policy Optimization with Adaptive Turn-level Clipping"
    (arXiv 2605.06200). Status: reconstructed.
    """
    if batch.clip_scale is None:
        raise ValueError("a2tgpo_loss: batch.clip_scale is None; the objective needs rl.credit a2tgpo (its clip-scale "
                         "companion makes the per-token clip range); --recipe a2tgpo sets both")
    scale = batch.clip_scale.to(logprobs.dtype)
    terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
                               clip_low=clip_low * scale, clip_high=clip_high * scale)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="a2tgpo_loss")


CATALOG = [
    Entry("a2tgpo", "PPO clip whose range is scaled per token by the a2tgpo estimator's IG-adaptive clip scale",
          "A2TGPO: Agentic Turn-Group Policy Optimization with Adaptive Turn-level Clipping (arXiv 2605.06200)",
          "reconstructed", "credit a2tgpo (batch.clip_scale); multi-turn task",
          training="works with rl.credit a2tgpo on multi-turn tasks"),
]
