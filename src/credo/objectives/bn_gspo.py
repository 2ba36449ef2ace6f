"""BN-GSPO's policy loss: GSPO's sequence-level clipped surrogate on batch-normalised advantages.

BN-GSPO changes GSPO only in the advantage (credit estimator `bn_gspo`: group z-score, then batch
z-score); the loss is GSPO's. It is registered under its own name so that a run names the method
it reproduces, and so that its diagnostics show whether the advantages it received are normalised.
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms
from credo.objectives.kl import kl_k3
from credo.objectives.ratio_variants import gspo_loss


@OBJECTIVES.register("bn_gspo")
def bn_gspo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """BN-GSPO: the GSPO loss, meant for advantages from credit estimator `bn_gspo`.

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs, batch.advantages [B, T]
    (sequence advantages broadcast), batch.loss_mask -> LossTerms(per_token [B, T]: row i holds its
    sequence loss l_i on every position, as `gspo_loss`).
    s_i = exp((1/|y_i|) sum_t (logp - old_logp));  A_i = mean_t A_{i,t}  (batch-normalised upstream)
    l_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high));  L = (1/N) sum_i l_i
    Recommended reduction: seq_mean_token_mean (then L is exact, as GSPO). Empty responses, clipping
    and gradients exactly as `gspo_loss`.
    Metrics: GSPO's (clip_fraction, ratio_min / ratio_max of s_i, approx_kl) plus seq_advantage_mean /
    seq_advantage_std (population) over non-empty rows: about 0 / 1 when the batch normalisation
    ran over the same rows (a minibatch of a larger batch shows its own sample of them).
    Defaults: clip 3e-4 / 4e-4 (the GSPO paper's; BN-GSPO's own clip range is not stated in the
    material available: the released run script passes clip_ratio 0.2 / 0.28 without showing a GSPO
    loss mode), no KL.
    Departs from GSPO: nothing in the loss; the advantage is batch-normalised after the group step.
    Paper: "SenseNova-MARS: Empowering Multimodal Agentic Reasoning and Search via Reinforcement
    Learning" (arXiv 2512.24330); GSPO: "Group Sequence Policy Optimization" (arXiv 2507.18071).
    Status: reconstructed (GSPO loss + the official code's batch-normalised advantage; the loss
    hyperparameters of the paper's runs are unconfirmed).
    """
    terms = gspo_loss(
        logprobs, batch, clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef, kl_estimator=kl_estimator
    )
    with torch.no_grad():
        mask = batch.loss_mask
        lengths = mask.sum(-1)
        adv = torch.where(mask, batch.advantages.to(torch.float64), torch.zeros((), dtype=torch.float64))
        seq_adv = (adv.sum(-1) / lengths.clamp(min=1))[lengths > 0]  # [N non-empty rows]
        zero = torch.tensor(0.0)
        terms.metrics["seq_advantage_mean"] = seq_adv.mean().float() if seq_adv.numel() else zero
        terms.metrics["seq_advantage_std"] = seq_adv.std(unbiased=False).float() if seq_adv.numel() else zero
    return terms


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("bn_gspo", "GSPO's sequence-level clipped surrogate for batch-normalised advantages "
          "(credit bn_gspo; clip 3e-4 / 4e-4)",
          "SenseNova-MARS, BN-GSPO (arXiv 2512.24330)", "reconstructed",
          "groups; advantages from credit bn_gspo; reduction seq_mean_token_mean"),
]
