"""Sequence-weighted policy losses from TRL's GRPOTrainer: LUSPO and VESPO.

| objective | ratio                                  | weight on the sequence                                  |
|-----------|----------------------------------------|---------------------------------------------------------|
| luspo     | s_i = exp(mean_t log r_t) (as GSPO)    | GSPO's clipped surrogate, times the length |y_i|         |
| vespo     | w_i = exp(sum_t log r_t) (a product)   | smooth Gamma weight phi(w_i), stop-gradient, on -A logp |

Peer: huggingface/trl commit f2cd57710ae345ea6428ae95363267fcf38a3dc8, `trl/trainer/grpo_trainer.py`
(`_compute_loss`, loss_type "luspo" / "vespo"; `get_gamma_weights`) and `grpo_config.py` (defaults).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.errors import CredoError
from credo.objectives.base import OBJECTIVES, LossTerms, checks, masked_mean
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.kl import kl_k3
from credo.objectives.ratio_variants import _sequence_mean, gspo_loss

VESPO_LOG_W_MIN = math.log(1e-8)  # TRL's lower clamp of log w (about -18.42)
VESPO_LOG_W_MAX = 20.0


def _check_luspo(params: dict, cfg) -> None:
    for name in ("clip_low", "clip_high"):
        if not params[name] > 0:
            raise CredoError(f"rl.objective luspo: {name} must be > 0, got {params[name]}")
    if cfg is not None and cfg.rl.loss_reduction == "seq_mean_token_mean":
        # per row the loss is GSPO's l_i; the length weighting is in the reduction, and this one removes it
        raise CredoError("rl.objective luspo with rl.loss_reduction seq_mean_token_mean is GSPO itself (each "
                         "sequence weighs 1, the length bias LUSPO removes); use rl.loss_reduction "
                         "seq_mean_token_sum (LUSPO's (1/N) sum_i |y_i| l_i) or token_mean (the same up to the "
                         "batch's N / sum |y_i|)")


@OBJECTIVES.register("luspo")
@checks(_check_luspo)
def luspo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """LUSPO: GSPO's sequence-ratio clipped surrogate, each sequence's loss scaled by its length.

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs, batch.advantages [B, T],
    batch.loss_mask -> LossTerms(per_token [B, T]: row i holds its sequence loss l_i on every position).
    s_i = exp((1/|y_i|) sum_t log r_{i,t})   (clamped to <= 10, as credo's gspo)
    l_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high)),  A_i = mean_t A_{i,t}
    L   = (1/N) sum_i |y_i| l_i
    With the recommended reduction `seq_mean_token_sum`, sum_t of the repeated l_i is |y_i| l_i and the
    row mean gives exactly L (TRL: `(per_token_loss * mask.sum(1, keepdim=True)).mean()` on the [B, 1]
    sequence loss). TRL's mean runs over all B rows, credo's over the non-empty ones (an empty row adds 0
    to both; the divisor differs only when a response is empty).
    GSPO's `seq_mean_token_mean` would give (1/N) sum_i l_i: GSPO itself, which LUSPO says is length-biased,
    so that reduction is refused at config validation. `token_mean` (credo's default) gives
    sum_i |y_i| l_i / sum_i |y_i|: LUSPO's direction, scaled by the batch's N / sum_i |y_i|. (So credo's
    gspo under token_mean is already length-weighted; GSPO's own setting is seq_mean_token_mean.)
    Defaults: clip 3e-4 / 4e-4 (GSPO's, as credo's gspo; TRL leaves epsilon at its 0.2 default, so set
    rl.clip_low / rl.clip_high to 0.2 to match a TRL run with defaults), no KL.
    Metrics: clip_fraction over sequences, ratio_min / ratio_max of s_i, approx_kl over tokens.
    Paper: "LUSPO: Length-Unbiased Sequence Policy Optimization" (arXiv 2602.05261; title as TRL cites it).
    Status: confirmed against TRL f2cd577 (`loss_type="luspo"`, importance_sampling_level "sequence").
    """
    # per row LUSPO's loss is GSPO's l_i; the length weighting is the reduction's (see above)
    return gspo_loss(logprobs, batch, clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef,
                     kl_estimator=kl_estimator)


@torch.no_grad()
def vespo_gamma_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, seq_adv: torch.Tensor, *,
    k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float,
) -> torch.Tensor:
    """phi [B]: VESPO's Gamma weight of each sequence, no grad.

    log w_i = clamp(sum_t log r_{i,t}, log 1e-8, 20)   (token log-ratios first clamped to [-20, 20])
    (k, lambda) = (k_pos, lambda_pos) where A_i >= 0, else (k_neg, lambda_neg); lambda clamped to >= 1e-4
    phi_i = exp(lambda + k log w_i - lambda w_i) = e^lambda w^k e^(-lambda w)   (phi(1) = 1 when k = lambda)
    NaN / inf results are set to 0 (as TRL).
    """
    seq_log_ratio = torch.where(mask, log_ratio, torch.zeros_like(log_ratio)).sum(-1)
    log_w = torch.clamp(seq_log_ratio, VESPO_LOG_W_MIN, VESPO_LOG_W_MAX)
    w = torch.exp(log_w)
    nonneg = seq_adv >= 0
    k = torch.where(nonneg, torch.full_like(w, k_pos), torch.full_like(w, k_neg))
    lam = torch.where(nonneg, torch.full_like(w, lambda_pos), torch.full_like(w, lambda_neg)).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * w).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _check_vespo(params: dict, cfg) -> None:
    for name in ("k_pos", "k_neg", "lambda_pos", "lambda_neg"):
        value = params[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CredoError(f"rl.objective vespo: {name} must be a finite number > 0, got {value!r}")
    if cfg is not None and getattr(cfg.rl, "is_correction", "none") != "none":
        raise CredoError(f"rl.objective vespo folds the off-policy correction into its own sequence weight; "
                         f"set rl.is_correction = \"none\" (got {cfg.rl.is_correction!r})")


@OBJECTIVES.register("vespo")
@checks(_check_vespo)
def vespo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """VESPO: REINFORCE on each token, scaled by a smooth Gamma weight of the sequence's IS ratio.

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs, batch.advantages [B, T],
    batch.loss_mask -> LossTerms(per_token [B, T]).
    w_i   = prod_t r_{i,t} (the product, not GSPO's geometric mean), phi_i = vespo_gamma_weights(...)
    L_t   = -sg[phi_i] * A_t * logp_t,   grad = -phi_i A_t grad(logp_t)
    phi rises as w^k for w < 1 and decays as e^(-lambda w) for w > 1: stale or off-policy sequences
    are down-weighted smoothly instead of hard-clipped. As with CISPO, only the gradient is meaningful
    (the loss value is -phi A logp).
    Recommended reduction: `token_mean` over the minibatch (TRL divides by the global token count).
    Defaults (TRL GRPOConfig): k_pos 2, lambda_pos 3, k_neg 3, lambda_neg 2, no KL.
    is_correction: needs rl.is_correction = "none" (checked at config validation). TRL does not multiply
    VESPO's loss by the sampler/trainer IS ratio; it adds the (truncated) ratio's log into log w instead.
    credo's is_correction multiplies the per-token loss, which would apply the correction outside phi;
    with is_correction off, w here is the trainer's ratio to batch.behaviour_logprobs only.
    Metrics: phi_mean (over non-empty sequences), approx_kl, ratio_min / ratio_max of the token ratios.
    Paper: "VESPO: Variational Sequence-Level Soft Policy Optimization" (arXiv 2602.10693; title as TRL
    cites it). Status: confirmed against TRL f2cd577 (`get_gamma_weights`, loss_type "vespo"), without
    TRL's in-weight sampler correction.
    """
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    seq_adv = _sequence_mean(batch.advantages, mask)
    phi = vespo_gamma_weights(log_ratio, mask, seq_adv, k_pos=k_pos, lambda_pos=lambda_pos,
                              k_neg=k_neg, lambda_neg=lambda_neg)
    per_token = -phi[:, None] * batch.advantages * logprobs
    nonempty = mask.any(-1)
    metrics = {**ratio_metrics(log_ratio, mask), "phi_mean": masked_mean(phi, nonempty)}
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="vespo_loss")


CATALOG = [
    Entry("luspo", "GSPO's sequence-ratio clip with each sequence's loss times its length; "
          "reduction seq_mean_token_sum", "LUSPO (arXiv 2602.05261)", "confirmed", "groups; response lengths"),
    Entry("vespo", "REINFORCE scaled by a stop-gradient Gamma weight of the sequence IS ratio "
          "(k/lambda 2/3 for A>=0, 3/2 for A<0); needs rl.is_correction none", "VESPO (arXiv 2602.10693)",
          "confirmed", "groups"),
]
