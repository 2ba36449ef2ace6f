"""DPPO: a trust region on the divergence of the sampled token's probability, not on the ratio.

Paper: "DPPO" as verl cites it (https://arxiv.org/pdf/2602.04879). Peer: verl-project/verl commit
1dda039b9c6311889a9c9a26040677e1254814f9, `verl/trainer/ppo/core_algos.py`
(`compute_policy_loss_dppo_tv`, `compute_policy_loss_dppo_kl`, registered "dppo_tv" / "dppo_kl").

Both variants are verl's "Binary" forms: the divergence is between the two-outcome distributions
(sampled token, everything else) of the old and new policy, computed from the sampled token's
probabilities p = pi_theta(y_t), q = pi_old(y_t) alone. The paper's top-K variants (the divergence over
the K most likely tokens of the vocabulary) are not ported: verl does not implement them either.

For every token (r = exp(clamp(logp - old_logp, -20, 20))):
    valid_t = 1 where the divergence stays inside the threshold on the side the advantage pushes, else 0
    L_t     = -A_t * sg[min(r_t, c)] * logp_t * valid_t       (truncated IS weight c, default 20)
so an out-of-region token loses its whole gradient, and the IS weight is truncated (TIS), not dual-clipped.
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


def _check(name: str) -> Callable[[dict, object], None]:
    def check(params: dict, cfg) -> None:
        for key in ("clip_low", "clip_high", "is_truncation"):
            value = params[key]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CredoError(f"rl.objective {name}: {key} (the divergence threshold / IS truncation) "
                                 f"must be a finite number > 0, got {value!r}")
    return check


def _dppo_loss(logprobs: torch.Tensor, batch: RolloutBatch,
               region: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, is_truncation: float,
               kl_coef: float, kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               who: str) -> LossTerms:
    """The part both variants share: valid = region(p, q) [B, T] bool from p = exp(logp), q = exp(old_logp),
    then L_t = -A_t sg[min(r_t, c)] logp_t valid_t, the metrics, and the optional KL penalty."""
    mask = batch.loss_mask
    valid = region(torch.exp(logprobs), torch.exp(batch.behaviour_logprobs)).detach().to(logprobs.dtype)
    log_ratio = token_log_ratio(logprobs, batch)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, max=is_truncation).detach()
    per_token = -batch.advantages * weight * logprobs * valid
    with torch.no_grad():
        metrics = {**ratio_metrics(log_ratio, mask),
                   "clip_fraction": masked_mean(1.0 - valid, mask),
                   "truncated_fraction": masked_mean((ratio > is_truncation).to(valid.dtype) * valid, mask)}
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who=who)


@OBJECTIVES.register("dppo_tv")
@checks(_check("dppo_tv"))
def dppo_tv_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    is_truncation: float = 20.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DPPO-Binary-TV: keep a token's gradient while p - q stays within the TV threshold.

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs (q = exp), batch.advantages,
    batch.loss_mask -> LossTerms(per_token [B, T]).
    p = exp(logp), q = exp(old_logp);  valid = (p - q <= clip_high) where A > 0, (p - q >= -clip_low) where A <= 0
    L_t = -A_t sg[min(r_t, is_truncation)] logp_t valid_t
    clip_low / clip_high are probability differences here (verl reuses clip_ratio_low / _high for them);
    defaults 0.2 / 0.2 as verl's clip_ratio default, is_truncation 20 (verl's clip_ratio_c default for DPPO),
    no KL. Recommended reduction: `token_mean` (verl's default loss_agg_mode).
    Metrics: clip_fraction = tokens outside the region, truncated_fraction = valid tokens with r > c.
    The top-K divergence of the paper is not ported (verl has only the binary form).
    Paper: DPPO (arXiv 2602.04879). Status: confirmed (verl 1dda039 `compute_policy_loss_dppo_tv`).
    """
    def region(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.where(batch.advantages > 0, (p - q) <= clip_high, (p - q) >= -clip_low)

    return _dppo_loss(logprobs, batch, region, is_truncation=is_truncation, kl_coef=kl_coef,
                      kl_estimator=kl_estimator, who="dppo_tv_loss")


BINARY_KL_EPS = 1e-8  # verl's guard inside log((1 - q) / (1 - p))


def binary_kl(p: torch.Tensor, q: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(q) || Bern(p)) = q (log q - log p) + (1 - q) log((1 - q + 1e-8) / (1 - p + 1e-8)), as verl."""
    return q * (log_q - log_p) + (1 - q) * torch.log((1.0 - q + BINARY_KL_EPS) / (1.0 - p + BINARY_KL_EPS))


@OBJECTIVES.register("dppo_kl")
@checks(_check("dppo_kl"))
def dppo_kl_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    is_truncation: float = 20.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DPPO-Binary-KL: keep a token's gradient while the binary KL of old to new stays within the threshold.

    logprobs [B, T]; uses batch.behaviour_logprobs, batch.advantages, batch.loss_mask -> LossTerms(per_token [B, T]).
    D_t = binary_kl(p, q) = KL(Bern(q) || Bern(p)) of the sampled token (see `binary_kl`)
    valid = (D <= clip_high or p <= q) where A > 0;  (D <= clip_low or p >= q) where A <= 0
    (a move against the advantage's push is never masked), L_t = -A_t sg[min(r_t, c)] logp_t valid_t.
    Defaults: thresholds 0.2 / 0.2 (verl's clip_ratio default; the paper's recommended KL threshold may
    differ, not checked), is_truncation 20, no KL. Recommended reduction: `token_mean`.
    The top-K divergence of the paper is not ported (verl has only the binary form).
    Paper: DPPO (arXiv 2602.04879). Status: confirmed (verl 1dda039 `compute_policy_loss_dppo_kl`).
    """
    def region(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        d = binary_kl(p, q, logprobs, batch.behaviour_logprobs)
        return torch.where(batch.advantages > 0, (d <= clip_high) | (p <= q), (d <= clip_low) | (p >= q))

    return _dppo_loss(logprobs, batch, region, is_truncation=is_truncation, kl_coef=kl_coef,
                      kl_estimator=kl_estimator, who="dppo_kl_loss")


CATALOG = [
    Entry("dppo_tv", "REINFORCE with truncated IS (c 20), token masked once p - q leaves the TV threshold "
          "(binary form; the paper's top-K not ported)", "DPPO (arXiv 2602.04879)", "confirmed", "groups"),
    Entry("dppo_kl", "REINFORCE with truncated IS (c 20), token masked once the binary KL leaves the threshold "
          "(binary form; the paper's top-K not ported)", "DPPO (arXiv 2602.04879)", "confirmed", "groups"),
]
