"""PPO's clipped surrogate on token ratios, and GRPO built on it.

Papers: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); "DeepSeekMath: Pushing the Limits
of Mathematical Reasoning in Open Language Models" (arXiv 2402.03300), which introduced GRPO.
Status: confirmed (reference implementation in verl: `compute_policy_loss_vanilla`, `kl_penalty`).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.objectives.base import LOG_RATIO_CLAMP, OBJECTIVES, LossTerms, masked_mean
from credo.objectives.common import add_kl_penalty
from credo.objectives.kl import kl_k3
from credo.entry import Entry



def ppo_clip_per_token(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> LossTerms:
    """Clipped surrogate, all tensors [B, T].

    r = exp(logprobs - old_logprobs)   (log-ratio clamped to [-20, 20])
    L = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high));  with dual_clip c, where A < 0:
    L = min(L, -A c).  Defaults: clip_low = clip_high = 0.2, no dual clip (verl uses c = 3).
    Metrics: clip fraction (tokens where the clipped branch is taken), approx KL
    (k3 of old vs new: E[r - 1 - log r]), ratio min / max.
    """
    log_ratio = torch.clamp(logprobs - old_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    with torch.no_grad():
        r = ratio.detach()
        valid = mask.bool()
        big = torch.finfo(r.dtype).max
        metrics = {
            "clip_fraction": masked_mean((clipped > unclipped).to(r.dtype), valid),
            "approx_kl": masked_mean(r - 1.0 - log_ratio.detach(), valid),
            "ratio_min": torch.where(valid, r, torch.full_like(r, big)).min() if valid.any() else r.new_tensor(1.0),
            "ratio_max": torch.where(valid, r, torch.full_like(r, -big)).max() if valid.any() else r.new_tensor(1.0),
        }
    return LossTerms(per_token=loss, metrics=metrics)


@OBJECTIVES.register("grpo")
def grpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GRPO: the PPO clipped surrogate on group-normalised advantages plus an optional KL penalty.

    Paper: "DeepSeekMath" (arXiv 2402.03300). Status: confirmed (verl reference implementation).

    logprobs [B, T] (policy, with grad); uses batch.advantages, batch.behaviour_logprobs,
    batch.loss_mask and, when kl_coef > 0, batch.ref_logprobs.
    L_t = max(-A r_t, -A clip(r_t, 1-clip_low, 1+clip_high)) + kl_coef * k3(pi_theta || pi_ref)_t
    Defaults: clip 0.2 / 0.2; kl_coef 0 (the paper uses 0.04, verl 0.001; with 0 no reference model
    is loaded, which halves the memory and saves a forward pass per step on CPU).
    The advantage estimator (group mean / std) is a separate, composable part: `credo.credit`.
    """
    terms = ppo_clip_per_token(
        logprobs,
        batch.behaviour_logprobs,
        batch.advantages,
        batch.loss_mask,
        clip_low=clip_low,
        clip_high=clip_high,
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="grpo_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("grpo", "PPO clipped surrogate on group-normalised advantages, optional k3 KL to a reference",
          "DeepSeekMath (arXiv 2402.03300)", "confirmed", "groups; reference model if kl_coef > 0"),
]
