"""F-GRPO's two-phase sequence-level objective: one GSPO-style clipped term per phase of a rollout.

One autoregressive rollout holds two phases: candidate generation (segment 0) then ranking
(segment 1). Each phase gets its own advantage (credit estimator `f_grpo`, broadcast onto that
phase's tokens) and its own length-normalised importance ratio, clipped as GSPO clips a sequence:
a phase whose ratio leaves the trust region loses the gradient of its own tokens only.

Name collision: "F-GRPO: Don't Let Your Policy Learn the Obvious and Forget the Rare" (arXiv
2602.06717) is a different method (a difficulty-aware scaling of group advantages).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3
from credo.objectives.ratio_variants import SEQ_LOG_RATIO_MAX

PHASES = 2  # 0: candidate generation, 1: ranking


def _phase_masks(batch: RolloutBatch, who: str) -> torch.Tensor:
    """[2, B, T] bool: loss tokens of each phase, from batch.segment_ids (values < 0: no phase)."""
    if batch.segment_ids is None:
        raise ValueError(
            f"{who} needs batch.segment_ids [B, T]: the phase of each completion token "
            "(0 candidate generation, 1 ranking, -1 none)"
        )
    seg = batch.segment_ids
    if bool((seg[batch.loss_mask] >= PHASES).any()):
        raise ValueError(
            f"{who}: segment_ids must be 0 (generation), 1 (ranking) or negative (no phase) on loss tokens"
        )
    return torch.stack([batch.loss_mask & (seg == k) for k in range(PHASES)])


@OBJECTIVES.register("f_grpo")
def f_grpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    phase_weights: tuple[float, float] = (1.0, 1.0),
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """F-GRPO: a clipped sequence-level surrogate per phase (generation, ranking), summed per rollout.

    logprobs [B, T] (policy, with grad); uses batch.segment_ids [B, T] (phase of each token: 0
    generation, 1 ranking, < 0 none), batch.advantages [B, T] (phase advantages broadcast token-wise,
    e.g. by credit estimator `f_grpo`), batch.behaviour_logprobs, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    For row i and phase k with tokens Y_ik (n_ik of them):
      s_ik = exp((1/n_ik) sum_{t in Y_ik} (logp - old_logp))        (clamped to <= exp(10))
      A_ik = mean_{t in Y_ik} A_t
      l_ik = max(-A_ik s_ik, -A_ik clip(s_ik, 1 - clip_low, 1 + clip_high))
    L = (1/N) sum_i sum_{k present} w_k l_ik                          (N non-empty rows, w = phase_weights)
    per_token[i, t] = w_k l_ik * n_i / n_ik on the tokens of phase k (n_i = loss tokens of row i), so
    the reduction `seq_mean_token_mean` returns exactly L: each phase is one sequence-level term,
    whatever its length (use it; `token_mean` would weight rows by length). Tokens of no phase get 0.
    Key property: the two phases are clipped independently, so a phase that left the trust region
    loses its own tokens' gradient while the other phase keeps learning.
    A row without tokens of a phase has no term for it; an empty row contributes nothing.
    Defaults: clip 3e-4 / 4e-4 (GSPO's, since the ratio is length-normalised per phase), equal phase
    weights, no KL. Metrics: clip_fraction over present (row, phase) terms and per phase, ratio_min /
    ratio_max of s_ik, approx_kl over tokens.
    Departs from GSPO: one ratio, advantage and clip per phase instead of per sequence.
    Paper: "F-GRPO: Factorized Group-Relative Policy Optimization for Unified Candidate Generation and
    Ranking" (arXiv 2605.12995). Status: reconstructed (the abstract states "separate group-relative
    advantages for generation and ranking within a two-phase sequence-level objective"; the GSPO-form
    ratio per phase, the clip range and the equal-weight sum are assumptions).
    """
    if len(phase_weights) != PHASES:
        raise ValueError(f"f_grpo_loss: phase_weights needs {PHASES} values, got {phase_weights}")
    masks = _phase_masks(batch, "f_grpo_loss")  # [2, B, T]
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    zeros = torch.zeros_like(log_ratio)
    n_row = mask.sum(-1).to(logprobs.dtype)  # [B]
    per_token = zeros
    clipped, present, ratios = [], [], []
    metrics: dict[str, torch.Tensor] = {}
    for k in range(PHASES):
        m = masks[k]
        n = m.sum(-1).to(logprobs.dtype)  # [B]
        seq_log_ratio = torch.where(m, log_ratio, zeros).sum(-1) / n.clamp(min=1.0)
        seq_log_ratio = torch.clamp(seq_log_ratio, max=SEQ_LOG_RATIO_MAX)
        adv = torch.where(m, batch.advantages.to(logprobs.dtype), zeros).sum(-1) / n.clamp(min=1.0)
        has = n > 0
        term = ppo_clip_per_token(
            seq_log_ratio[:, None], torch.zeros_like(seq_log_ratio)[:, None], adv[:, None], has[:, None],
            clip_low=clip_low, clip_high=clip_high,
        )
        l = term.per_token[:, 0]  # [B]
        scale = phase_weights[k] * n_row / n.clamp(min=1.0)
        per_token = per_token + torch.where(m, (scale * l)[:, None], zeros)
        with torch.no_grad():
            s = torch.exp(seq_log_ratio.detach())
            unclipped = -adv * s
            was_clipped = (-adv * s.clamp(1.0 - clip_low, 1.0 + clip_high)) > unclipped
            clipped.append(was_clipped & has)
            present.append(has)
            ratios.append(s[has])
            metrics[f"phase{k}_clip_fraction"] = (was_clipped & has).sum().to(s.dtype) / has.sum().clamp(min=1)
            metrics[f"phase{k}_advantage_mean"] = adv.detach()[has].mean() if bool(has.any()) else s.new_tensor(0.0)
    with torch.no_grad():
        n_terms = torch.stack(present).sum().clamp(min=1)
        every_ratio = torch.cat(ratios)
        one = log_ratio.new_tensor(1.0)
        metrics.update(
            clip_fraction=torch.stack(clipped).sum().to(log_ratio.dtype) / n_terms,
            ratio_min=every_ratio.min() if every_ratio.numel() else one,
            ratio_max=every_ratio.max() if every_ratio.numel() else one,
            approx_kl=ratio_metrics(log_ratio, mask)["approx_kl"],
        )
    # keeps the autograd graph when no token has a phase (every term is then a constant 0)
    per_token = per_token + 0.0 * torch.where(mask, logprobs, zeros)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="f_grpo_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("f_grpo", "two-phase sequence-level objective: a GSPO-style clipped, length-normalised ratio and "
          "advantage per phase (candidate generation, ranking), summed per rollout (clip 3e-4 / 4e-4)",
          "F-GRPO: Factorized Group-Relative Policy Optimization (arXiv 2605.12995)", "reconstructed",
          "segment_ids (0 gen / 1 rank); phase advantages (credit f_grpo); reduction seq_mean_token_mean"),
]
