"""Small pieces the ratio-based objectives share: ratio diagnostics and the optional KL-to-reference term.

`ppo_clip_per_token` (grpo.py) computes the same diagnostics inline for the clipped surrogate; the
objectives that do not go through it (GSPO, CISPO, SAPO) use `ratio_metrics`, so every objective logs
the same keys: clip_fraction, approx_kl, ratio_min, ratio_max (plus its own).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.objectives.base import LOG_RATIO_CLAMP, LossTerms, masked_mean


def token_log_ratio(logprobs: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """log r [B, T] = logprobs - behaviour logprobs, clamped to [-20, 20] (as verl) before any exp."""
    return torch.clamp(logprobs - batch.behaviour_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@torch.no_grad()
def ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """approx_kl (k3 of old vs new, E[r - 1 - log r]) and ratio_min / ratio_max over the mask.

    log_ratio [B, T] (or [B, 1] for sequence ratios), mask of the same shape. With an empty mask the
    ratio extremes are reported as 1 (no evidence of any policy change).
    """
    log_ratio = log_ratio.detach()
    r = torch.exp(log_ratio)
    valid = mask.bool()
    if valid.any():
        ratio_min, ratio_max = r[valid].min(), r[valid].max()
    else:
        ratio_min = ratio_max = r.new_tensor(1.0)
    return {
        "approx_kl": masked_mean(r - 1.0 - log_ratio, valid),
        "ratio_min": ratio_min,
        "ratio_max": ratio_max,
    }


def add_kl_penalty(
    terms: LossTerms,
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    kl_coef: float,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    who: str,
) -> LossTerms:
    """per_token += kl_coef * KL(pi_theta || pi_ref) per token, and log `kl_ref`; no-op when kl_coef == 0.

    The KL loss term is separate from the policy loss in verl, so every objective can carry it; the
    methods in this package all default to kl_coef = 0 (no reference model is loaded then).
    """
    if not kl_coef:
        return terms
    if batch.ref_logprobs is None:
        raise ValueError(f"{who}: kl_coef > 0 needs batch.ref_logprobs (a reference model)")
    kl = kl_estimator(logprobs, batch.ref_logprobs)
    terms.per_token = terms.per_token + kl_coef * kl
    terms.metrics["kl_ref"] = masked_mean(kl.detach(), batch.loss_mask)
    return terms
