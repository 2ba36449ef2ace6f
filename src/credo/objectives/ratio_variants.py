"""Ratio, clipping and trust-region variants of the PPO surrogate: GSPO, GSPO-token, CISPO, SAPO.

All four keep GRPO's critic-free group advantage (batch.advantages) and change what is done with
the importance ratio r_t = pi_theta / pi_old of each sampled token:

| objective  | ratio                                | trust region                                   |
|------------|--------------------------------------|------------------------------------------------|
| gspo       | sequence: s_i = exp(mean_t log r_t)  | hard clip of s_i: a clipped sequence gets no gradient at all |
| gspo_token | s_i on every token, token gradient   | same clip, token-level advantages allowed      |
| cispo      | token r_t                            | clip the stop-gradient IS weight: every token keeps a gradient |
| sapo       | token r_t                            | smooth sigmoid gate instead of a hard clip     |

Log-ratios are clamped to [-20, 20] before exp (as verl); sequence log-ratios also to <= 10.
The loss reduction is the trainer's (`rl.loss_reduction`); each docstring names the recommended one.
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.objectives.base import OBJECTIVES, LossTerms, masked_mean
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3
from credo.entry import Entry

SEQ_LOG_RATIO_MAX = 10.0  # as verl's GSPO: exp(10) ~ 2.2e4 is already far outside any clip range
SAPO_DIAGNOSTIC_BAND = 0.2  # SAPO has no clip; clip_fraction reports |r - 1| > 0.2 to compare with PPO


def _sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: mean over each row's masked tokens; 0 for an empty row (length clamped to 1)."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum(-1)
    return total / mask.sum(-1).clamp(min=1).to(x.dtype)


@OBJECTIVES.register("gspo")
def gspo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GSPO: PPO's clipped surrogate on the length-normalised sequence ratio, one term per sequence.

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs, batch.advantages, batch.loss_mask
    -> LossTerms(per_token [B, T]: row i holds its sequence loss l_i on every position).
    s_i = exp((1/|y_i|) sum_t (logp - old_logp))    (the geometric mean of the token ratios)
    l_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high)),  A_i = mean_t A_{i,t}
    L   = (1/N) sum_i l_i
    Why per_token repeats l_i: with the recommended reduction `seq_mean_token_mean`,
    (1/N) sum_i (1/|y_i|) sum_t l_i = (1/N) sum_i l_i, exactly the paper's loss and gradient (each
    token's gradient is -A_i s_i / (N |y_i|) inside the clip range, 0 outside it). Under `token_mean`
    sequence i would be weighted by |y_i| instead, which the paper does not do.
    Because the clip acts on s_i, a sequence whose ratio leaves [1 - clip_low, 1 + clip_high] (on the
    side the advantage pushes) loses the gradient of all its tokens.
    Defaults: clip 3e-4 / 4e-4 (paper Sec. 5.1, as the verl example and TRL), no KL.
    Metrics: clip_fraction = fraction of non-empty sequences clipped; ratio_min / ratio_max of s_i;
    approx_kl over tokens. An empty response has s = 1, A = 0 and is excluded by the reduction.
    Departs from GRPO: sequence-level instead of token-level ratio and clipping; far smaller clip range.
    Paper: "Group Sequence Policy Optimization" (arXiv 2507.18071).
    Status: confirmed (verl `compute_policy_loss_gspo`, which uses the GSPO-token form; see `gspo_token_loss`).
    """
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)  # [B, T]
    seq_log_ratio = torch.clamp(_sequence_mean(log_ratio, mask), max=SEQ_LOG_RATIO_MAX)  # [B], with grad
    seq_adv = _sequence_mean(batch.advantages, mask)  # [B]
    seq = ppo_clip_per_token(
        seq_log_ratio[:, None], torch.zeros_like(seq_log_ratio)[:, None], seq_adv[:, None],
        mask.any(-1, keepdim=True), clip_low=clip_low, clip_high=clip_high,
    )  # [B, 1]
    metrics = {**seq.metrics, "approx_kl": ratio_metrics(log_ratio, mask)["approx_kl"]}
    terms = LossTerms(per_token=seq.per_token.expand_as(logprobs), metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="gspo_loss")


@OBJECTIVES.register("gspo_token")
def gspo_token_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GSPO-token: the sequence ratio's value with each token's own gradient, for token-level advantages.

    logprobs [B, T]; uses batch.behaviour_logprobs, batch.advantages [B, T], batch.loss_mask
    -> LossTerms(per_token [B, T]).
    log s_{i,t} = sg[log s_i] + logp_{i,t} - sg[logp_{i,t}]   (clamped to <= 10; value s_i, grad of token t)
    L_{i,t} = max(-A_{i,t} s_{i,t}, -A_{i,t} clip(s_{i,t}, 1 - clip_low, 1 + clip_high))
    When A_{i,t} = A_i on every token this equals `gspo_loss` in value, clipping and gradient (under
    the same reduction); it differs only when a credit estimator gives token-level advantages.
    Recommended reduction: `seq_mean_token_mean` (verl forces it for GSPO).
    Defaults: clip 3e-4 / 4e-4, no KL. Metrics: clip_fraction over tokens; ratio_min / max of s_{i,t}.
    Departs from GRPO: the token ratio is replaced by the (detached) sequence ratio.
    Paper: "Group Sequence Policy Optimization" (arXiv 2507.18071), Sec. 4.3.
    Status: confirmed (verl `compute_policy_loss_gspo`).
    """
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    seq_log_ratio = _sequence_mean(log_ratio, mask).detach()  # [B]
    # verl's order (volcengine/verl#2775): logp - sg[logp] first, so the value is exactly sg[log s_i]
    log_s = torch.clamp(logprobs - logprobs.detach() + seq_log_ratio[:, None], max=SEQ_LOG_RATIO_MAX)
    terms = ppo_clip_per_token(
        log_s, torch.zeros_like(log_s), batch.advantages, mask, clip_low=clip_low, clip_high=clip_high
    )
    terms.metrics["approx_kl"] = ratio_metrics(log_ratio, mask)["approx_kl"]
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="gspo_token_loss")


@OBJECTIVES.register("cispo")
def cispo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 10.0,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """CISPO: REINFORCE weighted by a clipped, stop-gradient importance-sampling weight.

    logprobs [B, T]; uses batch.behaviour_logprobs, batch.advantages, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    L_t = -sg[clip(r_t, 1 - clip_low, 1 + clip_high)] * A_t * logp_t,   grad = -w_t A_t grad(logp_t)
    Unlike PPO, a token whose ratio is outside the range keeps its gradient (with the clipped weight);
    only the weight is bounded. The loss value is verl's form (-w A logp), so it is not comparable
    with the ratio-surrogate objectives' values; only its gradient is meaningful.
    Defaults (verl example): clip_low 10 (1 - 10 < 0: no lower bound, as the paper), clip_high 0.2.
    Recommended reduction: `token_mean` (verl's default; the paper is believed to normalise over all
    tokens of the group, unconfirmed). Metrics: clip_fraction = tokens whose weight was clipped.
    Departs from GRPO: no min/max of surrogates; the IS weight is clipped and detached, not the update.
    Paper: "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention" (arXiv 2506.13585).
    Status: confirmed (verl `compute_policy_loss_cispo`; Trinity-RFT); paper's clip_high unconfirmed.
    """
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    ratio = torch.exp(log_ratio).detach()
    low, high = 1.0 - clip_low, 1.0 + clip_high
    weight = torch.clamp(ratio, low, high)
    per_token = -weight * batch.advantages * logprobs
    metrics = ratio_metrics(log_ratio, mask)
    metrics["clip_fraction"] = masked_mean(((ratio < low) | (ratio > high)).to(ratio.dtype), mask)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="cispo_loss")


@OBJECTIVES.register("sapo")
def sapo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """SAPO: a sigmoid soft gate on the token ratio replaces PPO's hard clip.

    logprobs [B, T]; uses batch.behaviour_logprobs, batch.advantages, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    tau_t = tau_pos if A_t > 0 else tau_neg;  f(r; tau) = (4 / tau) sigmoid(tau (r - 1));  L_t = -f(r_t; tau_t) A_t
    df/dr = 4 s (1 - s), s = sigmoid(tau (r - 1)): 1 at r = 1, so on-policy SAPO is exactly the plain
    policy gradient; off-policy tokens' gradients are attenuated smoothly (never zeroed), faster for
    larger tau, so negative-advantage tokens (tau_neg > tau_pos) are damped more sharply.
    Defaults: tau_pos 1.0, tau_neg 1.05 (verl, SkyRL, Trinity-RFT); no clip, no KL.
    Recommended reduction: `seq_mean_token_mean` (forced in verl).
    Metrics: soft_gate_mean = mean of 4 s (1 - s) (the factor on the IS-weighted gradient, 1 on-policy);
    clip_fraction = tokens with |r - 1| > 0.2, a diagnostic band only (nothing is clipped).
    Departs from GRPO: no hard clipping; sign-dependent temperature.
    Paper: "Soft Adaptive Policy Optimization" (arXiv 2511.20347).
    Status: confirmed (verl `compute_policy_loss_sapo`).
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sapo_loss: tau_pos and tau_neg must be > 0, got {tau_pos} and {tau_neg}")
    mask = batch.loss_mask
    adv = batch.advantages
    log_ratio = token_log_ratio(logprobs, batch)
    ratio = torch.exp(log_ratio)
    tau = torch.where(adv > 0, adv.new_tensor(tau_pos), adv.new_tensor(tau_neg))  # A = 0 uses tau_neg
    s = torch.sigmoid(tau * (ratio - 1.0))
    per_token = -(4.0 / tau) * s * adv
    metrics = ratio_metrics(log_ratio, mask)
    with torch.no_grad():
        r = ratio.detach()
        metrics["clip_fraction"] = masked_mean(((r - 1.0).abs() > SAPO_DIAGNOSTIC_BAND).to(r.dtype), mask)
        metrics["soft_gate_mean"] = masked_mean(4.0 * s.detach() * (1.0 - s.detach()), mask)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="sapo_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("gspo", "PPO clip on the length-normalised sequence ratio (clip 3e-4 / 4e-4); reduction seq_mean_token_mean",
          "Group Sequence Policy Optimization (arXiv 2507.18071)", "confirmed", "groups"),
    Entry("gspo_token", "GSPO with per-token gradients: sequence-ratio value, token-level advantages "
          "(clip 3e-4 / 4e-4); reduction seq_mean_token_mean",
          "Group Sequence Policy Optimization (arXiv 2507.18071)", "confirmed", "groups"),
    Entry("cispo", "REINFORCE weighted by a clipped stop-gradient IS weight (no lower bound; clip_high 0.2); reduction token_mean",
          "MiniMax-M1 (arXiv 2506.13585)", "confirmed", "groups"),
    Entry("sapo", "sigmoid soft gate on the token ratio instead of a clip (tau 1.0 / 1.05 for A>0 / A<=0); "
          "reduction seq_mean_token_mean",
          "Soft Adaptive Policy Optimization (arXiv 2511.20347)", "confirmed", "groups"),
]
