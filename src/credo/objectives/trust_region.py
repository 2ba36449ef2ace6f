"""Trust-region reformulations of the ratio objective: BPO / GBPO, FiberPO, and Tsallis J_Q (GARL, PAFT).

| objective | what replaces PPO's clip                                                                |
|-----------|-----------------------------------------------------------------------------------------|
| bpo       | regress each sampled token's ratio onto the box edge of the analytic optimum (1 +- eps) |
| gbpo      | bpo with a group-relative median advantage computed from the rewards                    |
| fiberpo   | a trajectory-level gate on the mean log-ratio times a token-level gate on its residual  |
| garl      | PPO clip kept; the advantage of prompt x is amplified by P_hat(x)^(-q) (Tsallis J_Q)    |
| paft      | no ratio: SFT on the group's importance-resampled correct samples, scaled P_hat^(1-q)   |

All five are from paper text with the exact loss reconstructed (no public code); every constant
and choice is a keyword argument and each docstring lists its assumptions.
Log-ratios are clamped to [-20, 20] before exp (as verl). Reductions: see each docstring.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.errors import CredoError
from credo.objectives.base import LOG_RATIO_CLAMP, OBJECTIVES, LossTerms, checks, masked_mean, needs
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3

DIVERGENCES = ("kl", "chi2")


# -- BPO / GBPO ----------------------------------------------------------------------------------


def bounded_ratio_per_token(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    divergence: str = "kl",
) -> torch.Tensor:
    """Advantage-weighted divergence of each token's ratio from the box optimum; all [B, T].

    target r* = 1 + clip_high where A > 0, 1 - clip_low where A < 0 (the analytic optimum of
    max E[A r] s.t. 1 - clip_low <= r <= 1 + clip_high, with A measured from the median).
    kl:   d(r) = r - r* - r* log(r / r*)     (generalised KL of the unnormalised measures, >= 0)
    chi2: d(r) = (r - r*)^2 / 2              (squared error on the ratio)
    L = |A| d(r) / eps_side,  eps_side = clip_high for A > 0, clip_low for A < 0.
    Both divergences have dd/dlog pi = r - r* (kl) or r (r - r*) (chi2): zero exactly at the target,
    pulling back beyond it, and at r = 1 equal to -eps_side sign(A), so dividing by eps_side makes
    the on-policy gradient exactly -A grad log pi (PPO's), and learning rates transfer from GRPO.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown BPO divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if not (0.0 < clip_low < 1.0) or clip_high <= 0.0:
        raise ValueError(f"BPO needs 0 < clip_low < 1 and clip_high > 0, got {clip_low} and {clip_high}")
    ratio = torch.exp(log_ratio)
    pos = advantages > 0
    target = torch.where(pos, advantages.new_tensor(1.0 + clip_high), advantages.new_tensor(1.0 - clip_low))
    eps_side = torch.where(pos, advantages.new_tensor(clip_high), advantages.new_tensor(clip_low))
    if divergence == "kl":
        d = ratio - target - target * (log_ratio - torch.log(target))
    else:
        d = 0.5 * (ratio - target) ** 2
    return advantages.abs() / eps_side * d


def _bpo_terms(log_ratio, advantages, mask, *, clip_low, clip_high, divergence) -> LossTerms:
    per_token = bounded_ratio_per_token(
        log_ratio, advantages, clip_low=clip_low, clip_high=clip_high, divergence=divergence
    )
    metrics = ratio_metrics(log_ratio, mask)
    with torch.no_grad():
        r = torch.exp(log_ratio.detach())
        outside = (r < 1.0 - clip_low) | (r > 1.0 + clip_high)
        # nothing is clipped: clip_fraction reports tokens outside the box (pulled back toward it)
        metrics["clip_fraction"] = masked_mean(outside.to(r.dtype), mask)
        metrics["zero_advantage_fraction"] = masked_mean((advantages == 0).to(r.dtype), mask)
    return LossTerms(per_token=per_token, metrics=metrics)


@OBJECTIVES.register("bpo")
def bpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    divergence: str = "kl",
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """BPO: fit the policy to the analytic optimum of a box-constrained ratio trust region.

    logprobs [B, T]; uses batch.advantages [B, T], batch.behaviour_logprobs, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    Problem: max E_{pi0}[A r] s.t. 1 - eps_l <= r <= 1 + eps_h. Optimum: r* = 1 + eps_h where the
    advantage (Q minus the MEDIAN of Q under pi0) is positive, 1 - eps_l otherwise.
    L_t = (|A_t| / eps_side) d(r_t; r*_t), d the generalised KL r - r* - r* log(r / r*) (divergence
    "kl", default) or (r - r*)^2 / 2 ("chi2"); see `bounded_ratio_per_token`.
    Unlike PPO, a token past its bound is not merely clipped (zero gradient): it is pulled back to
    the bound, and a token inside the box is pushed until it reaches it, then stops.
    The advantage comes from any credit estimator; the paper's median baseline is what `gbpo`
    computes, for other estimators the sign of A decides the target. A = 0 gives no loss.
    Assumptions (reconstructed): the divergence (generalised KL; the paper's is unconfirmed), the
    |A| / eps weighting (chosen so the on-policy gradient is -A grad log pi, as PPO's), per-token
    application of the sequence-level optimum. Defaults: clip 0.2 / 0.2 (asymmetric c_l, c_h via
    clip_low / clip_high), no KL. Recommended reduction: token_mean.
    Departs from GRPO: regression onto the trust-region optimum instead of a clipped surrogate.
    Paper: "Bounded Ratio Reinforcement Learning" (arXiv 2604.18578).
    Status: reconstructed (problem and analytic optimum from the paper text; loss form assumed).
    """
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    terms = _bpo_terms(log_ratio, batch.advantages, mask, clip_low=clip_low, clip_high=clip_high, divergence=divergence)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="bpo_loss")


def group_median_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GBPO's group-relative median advantage: rewards [B], group_ids [B] -> [B] float32.

    A_i = (R_i - median_q R) / (std_q R + eps)   (std unbiased, as GRPO; scale_by_std=False drops it)
    The median of an even-sized group is the mean of its two middle values (numpy's median).
    A group of one: median 0, std 1 (A = R, the convention of credo's GRPO); a zero-variance group:
    A = 0 exactly. With binary rewards the median is the majority outcome, so only the minority
    outcome gets a non-zero advantage (ties at the median carry no signal).
    """
    r = rewards.to(torch.float64)
    unique, dense = torch.unique(group_ids, return_inverse=True)
    k = unique.numel()
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(r))
    # sort by (group, value): stable sort by value, then stable sort by group
    by_value = torch.argsort(r, stable=True)
    order = by_value[torch.argsort(dense[by_value], stable=True)]
    start = torch.cumsum(count, 0) - count  # [K] first sorted position of each group
    n = count.long()
    lo = (start.long() + (n - 1) // 2)
    hi = (start.long() + n // 2)
    median = 0.5 * (r[order][lo] + r[order][hi])  # [K]
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, r) / count
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, (r - mean[dense]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))
    single = count[dense] == 1
    base = torch.where(single, torch.zeros_like(r), median[dense])
    scale = torch.where(single, torch.ones_like(r), std[dense] + eps) if scale_by_std else torch.ones_like(r)
    adv = (r - base) / scale
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amin")
    flat = (high[dense] == low[dense]) & ~single
    return torch.where(flat, torch.zeros_like(adv), adv).to(torch.float32)


@OBJECTIVES.register("gbpo")
@needs("whole_groups")
def gbpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    divergence: str = "kl",
    scale_by_std: bool = True,
    eps: float = 1e-6,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GBPO: BPO with a group-relative median advantage, for LLMs (critic-free, like GRPO).

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.behaviour_logprobs,
    batch.loss_mask (batch.advantages is ignored) -> LossTerms(per_token [B, T]).
    A_i = (R_i - median_q R) / (std_q R + eps), broadcast over the tokens of response i
    L_t = (|A_i| / eps_side) d(r_t; r*_t) as `bpo_loss` (r* = 1 + clip_high if A > 0, 1 - clip_low if A < 0)
    The median is the paper's baseline (mu(s) = median of Q under pi0 gives the analytic optimum);
    the group std scale is the GRPO-style part (scale_by_std=False keeps the raw median gap).
    All-correct / all-wrong groups and ties at the median get A = 0 (no loss): with binary rewards
    only the minority outcome of each group is moved (all-zero rewards: loss 0).
    Assumptions (reconstructed): the exact group-relative form (median baseline, optional std scale),
    the divergence and weighting as `bpo_loss`. Defaults: clip 0.2 / 0.2, divergence kl, no KL.
    Recommended reduction: token_mean.
    Departs from GRPO: median instead of mean baseline; regression onto the box optimum instead of clip.
    Paper: "Bounded Ratio Reinforcement Learning" (arXiv 2604.18578).
    Status: reconstructed (GBPO's exact form is unconfirmed).
    """
    mask = batch.loss_mask
    seq_adv = group_median_advantages(batch.rewards, batch.group_ids, scale_by_std=scale_by_std, eps=eps)
    adv = seq_adv.to(logprobs.dtype)[:, None] * mask.to(logprobs.dtype)
    log_ratio = token_log_ratio(logprobs, batch)
    terms = _bpo_terms(log_ratio, adv, mask, clip_low=clip_low, clip_high=clip_high, divergence=divergence)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="gbpo_loss")


# -- FiberPO -------------------------------------------------------------------------------------


def fiber_coordinates(
    log_ratio: torch.Tensor, mask: torch.Tensor, *, aggregate: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Base point and fiber coordinates of the token log-ratios.

    log_ratio [B, T], mask [B, T] -> (rho_bar [B], e [B, T]).
    rho_bar_i = mean_t log r_{i,t} (aggregate "mean") or sum_t log r_{i,t} ("sum"); e_{i,t} =
    log r_{i,t} - mean_t log r_{i,t} (always relative to the mean, so each fiber sums to zero).
    Empty rows: rho_bar = 0, e = 0.
    """
    if aggregate not in ("mean", "sum"):
        raise ValueError(f"fiberpo: aggregate must be 'mean' or 'sum', got {aggregate!r}")
    lr = torch.where(mask, log_ratio, torch.zeros_like(log_ratio))
    total = lr.sum(-1)
    mean = total / mask.sum(-1).clamp(min=1).to(lr.dtype)
    base = mean if aggregate == "mean" else total
    fiber = torch.where(mask, log_ratio - mean[:, None], torch.zeros_like(log_ratio))
    return base, fiber


@OBJECTIVES.register("fiberpo")
def fiberpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    budget_traj: float = 0.05,
    budget_token: float = 0.2,
    aggregate: str = "mean",
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """FiberPO: a trajectory-level gate on the aggregated log-ratio times a token-level gate on residuals.

    logprobs [B, T]; uses batch.advantages [B, T], batch.behaviour_logprobs, batch.loss_mask
    -> LossTerms(per_token [B, T]).
    rho_bar_i = mean_t log r_{i,t} (base point) ;  e_{i,t} = log r_{i,t} - rho_bar_i (fiber coordinate)
    g_base = 0 if the advantage pushes rho_bar further past +-budget_traj (A > 0 and rho_bar >
    budget_traj, or A < 0 and rho_bar < -budget_traj), else 1; g_fiber likewise for e and budget_token
    L_t = -A_t [ g r_t + (1 - g) sg(r_t) ],   g = g_base(rho_bar_i) g_fiber(e_{i,t})   (gates detached)
    The value is always the importance-weighted surrogate -A r; only the gradient is gated. At
    on-policy both gates are 1, so the gradient is exactly -A grad log pi (the Jacobian of the gated
    ratio is the identity there) and it is block-diagonal over trajectories (row i's gate reads row i
    only). A closed base gate removes the whole trajectory's gradient (as GSPO); a closed fiber gate
    removes one token that drifted from its trajectory's mean, like PPO's clip but relative to the
    trajectory's own drift, so a uniformly drifting trajectory is judged once, at the base.
    Assumptions (reconstructed): hard pessimistic (PPO-style, direction-aware) indicator gates; mean
    aggregation ("sum" available); budgets in log-ratio space (|log r| ~ |r - 1| = 2 TV per token for
    small budgets) with assumed defaults budget_traj 0.05, budget_token 0.2; the four-level
    FiberPO-Domain variant (domain, prompt group, trajectory, token) is not implemented.
    Recommended reduction: token_mean. Metrics: clip_fraction (tokens with a closed gate),
    base_gate_closed (fraction of non-empty trajectories whose base gate is closed).
    Departs from GRPO: a two-level, trajectory-relative trust region instead of a per-token clip.
    Paper: "Fibration Policy Optimization" (arXiv 2603.08239).
    Status: reconstructed (structure from the abstract; gates, aggregation and budgets assumed).
    """
    if budget_traj <= 0 or budget_token <= 0:
        raise ValueError(f"fiberpo: budgets must be > 0, got {budget_traj} and {budget_token}")
    mask = batch.loss_mask
    adv = batch.advantages
    log_ratio = token_log_ratio(logprobs, batch)
    with torch.no_grad():
        base, fiber = fiber_coordinates(log_ratio.detach(), mask, aggregate=aggregate)
        base_t = base[:, None].expand_as(adv)
        base_closed = ((adv > 0) & (base_t > budget_traj)) | ((adv < 0) & (base_t < -budget_traj))
        fiber_closed = ((adv > 0) & (fiber > budget_token)) | ((adv < 0) & (fiber < -budget_token))
        gate = (~(base_closed | fiber_closed)).to(logprobs.dtype)
    ratio = torch.exp(log_ratio)
    per_token = -adv * (gate * ratio + (1.0 - gate) * ratio.detach())
    metrics = ratio_metrics(log_ratio, mask)
    with torch.no_grad():
        metrics["clip_fraction"] = masked_mean(1.0 - gate, mask)
        rows = mask.any(-1)
        metrics["base_gate_closed"] = masked_mean((base_closed & mask).any(-1).to(gate.dtype), rows)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="fiberpo_loss")


# -- Tsallis J_Q / GARL --------------------------------------------------------------------------


def garl_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    q: float = 0.75,
    threshold: float = 0.5,
    baseline: str = "mean",
    p_floor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GARL's amplified advantages: rewards [B], group_ids [B] -> (advantages [B], P_hat [B]) float32.

    c_i = 1[R_i > threshold] ;  P_hat_q = mean_{i in q} c_i  (M_q = group size)
    A_i = P_hat_q^(-q) (c_i - b_q),  b_q = P_hat_q ("mean") or 0 ("none")
    P_hat = 0 has no defined amplification: it is floored at p_floor (default 1 / M_q, the smallest
    non-zero estimate the group could give). Such a group's RLVR gradient is zero anyway (c = b = 0).
    """
    if q < 0:
        raise ValueError(f"garl: q must be >= 0, got {q}")
    if baseline not in ("mean", "none"):
        raise ValueError(f"garl: baseline must be 'mean' or 'none', got {baseline!r}")
    c = (rewards > threshold).to(torch.float64)
    unique, dense = torch.unique(group_ids, return_inverse=True)
    k = unique.numel()
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(c))
    p_hat = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, c) / count
    floor = 1.0 / count if p_floor is None else torch.full_like(count, float(p_floor))
    amplify = torch.clamp(p_hat, min=floor) ** (-q)
    centred = c - p_hat[dense] if baseline == "mean" else c
    return (amplify[dense] * centred).to(torch.float32), p_hat[dense].to(torch.float32)


@OBJECTIVES.register("garl")
@needs("whole_groups")
def garl_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    q: float = 0.75,
    threshold: float = 0.5,
    baseline: str = "mean",
    p_floor: float | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GARL: the Tsallis J_Q objective, i.e. the RLVR gradient of each prompt amplified by P_hat^(-q).

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.behaviour_logprobs,
    batch.loss_mask (batch.advantages is ignored) -> LossTerms(per_token [B, T]).
    J_Q = E_x[ ln_q P(x) ],  ln_q(u) = (u^(1-q) - 1) / (1 - q);  grad J_Q = E_x[ P^(-q) grad P ]
    q = 0: the RLVR objective P (grad P); q = 1: the log marginal likelihood log P (grad P / P).
    Estimator: M samples per prompt (the group), c_i = 1[R_i > threshold], P_hat = mean c,
    A_i = P_hat^(-q) (c_i - P_hat)  (baseline "mean"; "none": A_i = P_hat^(-q) c_i)
    L_t = PPO clipped surrogate of r_t with A_i (clip_low / clip_high), so on-policy its gradient is
    -A_i grad log pi(y_t). With the reduction `seq_mean_token_sum` and equal group sizes the batch
    gradient is -(1/K) sum_q P_hat_q^(-q) (1/M) sum_i (c_i - b_q) grad log pi(y_i) (sequence log-prob),
    the plain estimator of grad J_Q; token_mean / seq_mean_token_mean give its length-normalised form.
    With q = 1 and baseline "none" that is -(1/K) sum_q mean over correct i of grad log pi(y_i): SFT on
    the correct samples (the log-likelihood gradient, PAFT's direction). Every q gives the same
    direction per prompt (a positive rescaling); q only reweights prompts, hard ones (small P_hat) up.
    P_hat = 0 is floored at p_floor (default 1/M); it carries no gradient anyway (all-zero rewards: 0).
    Assumptions (reconstructed): the PPO clip and the group-mean baseline (the paper states only the
    amplified REINFORCE gradient), the 1/M floor, binary correctness by threshold 0.5.
    Defaults: q 0.75 (highlighted in the paper), clip 0.2 / 0.2, no KL.
    Departs from GRPO: binary success, no std division, prompts reweighted by P_hat^(-q).
    Paper: "How Fast Should a Model Commit to Supervision? Training Reasoning Models on the Tsallis
    Loss Continuum" (arXiv 2604.25907), which introduces GARL and PAFT.
    Status: reconstructed (principle and gradient from the paper text; estimator details assumed).
    """
    mask = batch.loss_mask
    seq_adv, p_hat = garl_advantages(
        batch.rewards, batch.group_ids, q=q, threshold=threshold, baseline=baseline, p_floor=p_floor
    )
    adv = seq_adv.to(logprobs.dtype)[:, None] * mask.to(logprobs.dtype)
    terms = ppo_clip_per_token(
        logprobs, batch.behaviour_logprobs, adv, mask, clip_low=clip_low, clip_high=clip_high
    )
    with torch.no_grad():
        rows = mask.any(-1)
        terms.metrics["success_rate"] = masked_mean(p_hat, rows)
        terms.metrics["amplification_mean"] = masked_mean(
            torch.clamp(p_hat, min=1e-12) ** (-q) if q else torch.ones_like(p_hat), rows & (p_hat > 0)
        )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="garl_loss")


# -- Tsallis J_Q / PAFT --------------------------------------------------------------------------


def paft_weights(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    seq_log_ratio: torch.Tensor,
    *,
    q: float = 0.75,
    threshold: float = 0.5,
    resample: int = 0,
    importance: str = "ratio",
    p_floor: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PAFT's SFT weight of each sample: rewards [B], group_ids [B], seq_log_ratio [B] -> (weights [B], metrics).

    Per group (M samples, c_i = 1[R_i > threshold], P_hat = mean c):
      posterior draw: S = resample (0: M) indices from Categorical(w), w_i proportional to c_i r_i with the
        sequence ratio r_i = exp(seq_log_ratio_i) ("ratio": sampling-importance-resampling of the posterior
        pi(y) c(y) / P from samples of the behaviour policy) or to c_i ("uniform"); with replacement, a
        generator seeded by (seed, group id);
      weight_i = max(P_hat, p_floor)^(1 - q) x M n_i / S   (n_i: times sample i was drawn)
    so sum_i weight_i x (-log pi(y_i)) / M = P_hat^(1-q) x the SFT loss on the S resampled sequences.
    On-policy (r = 1) the posterior draw is uniform over the correct samples. A group without a correct
    sample has no posterior sample: weights 0 (the gradient of J_Q is zero there anyway). p_floor (default
    1/M) bounds P_hat below; any group with a correct sample has P_hat >= 1/M, so the default never binds
    and a larger floor only limits the spread of the attenuation.
    """
    if q < 0:
        raise ValueError(f"paft: q must be >= 0, got {q}")
    if importance not in ("ratio", "uniform"):
        raise ValueError(f"paft: importance must be 'ratio' or 'uniform', got {importance!r}")
    if resample < 0:
        raise ValueError(f"paft: resample must be >= 0 (0 = the group size), got {resample}")
    weights = torch.zeros(rewards.shape, dtype=torch.float64)
    atten, distinct, p_rows = [], [], torch.zeros(rewards.shape, dtype=torch.float64)
    groups = torch.unique(group_ids)
    for g in groups.tolist():
        rows = torch.nonzero(group_ids == g).flatten()
        correct = rows[rewards[rows] > threshold]
        m = len(rows)
        p_hat = len(correct) / m
        p_rows[rows] = p_hat
        if len(correct) == 0:
            continue
        logw = seq_log_ratio[correct].detach().double().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        probs = torch.softmax(logw if importance == "ratio" else torch.zeros_like(logw), dim=0)
        draws = resample or m
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(g))
        picked = torch.multinomial(probs, draws, replacement=True, generator=generator)
        counts = torch.bincount(picked, minlength=len(correct)).double()
        floor = 1.0 / m if p_floor is None else float(p_floor)
        amp = max(p_hat, floor) ** (1.0 - q)
        weights[correct] = amp * m * counts / draws
        atten.append(amp)
        distinct.append(float((counts > 0).sum()) / len(correct))
    # (0, not NaN, when no group has a correct sample: the trainer averages metrics over micro-batches)
    metrics = {
        "success_rate": p_rows.float().mean() if len(p_rows) else torch.tensor(0.0),
        "attenuation_mean": torch.tensor(sum(atten) / len(atten) if atten else 0.0),
        "resampled_distinct": torch.tensor(sum(distinct) / len(distinct) if distinct else 0.0),
        "skipped_groups": torch.tensor((len(groups) - len(atten)) / max(len(groups), 1)),
    }
    return weights.to(torch.float32), metrics


def _check_paft(params: dict, cfg) -> None:
    def bad(name: str, why: str) -> CredoError:
        return CredoError(f"rl.objective paft: rl.objective_params[{name!r}] {why}, got {params[name]!r}")

    if not (isinstance(params["q"], (int, float)) and math.isfinite(params["q"]) and params["q"] >= 0):
        raise bad("q", "must be a finite number >= 0 (q = 1: SFT on correct samples; 0.75 the paper's)")
    if params["importance"] not in ("ratio", "uniform"):
        raise bad("importance", "must be 'ratio' or 'uniform'")
    if isinstance(params["resample"], bool) or not isinstance(params["resample"], int) or params["resample"] < 0:
        raise bad("resample", "must be an integer >= 0 (0 = the group size)")
    floor = params["p_floor"]
    if floor is not None and not (isinstance(floor, (int, float)) and 0 < floor <= 1):
        raise bad("p_floor", "must be null (1 / M) or in (0, 1]")


@OBJECTIVES.register("paft")
@needs("whole_groups")
@checks(_check_paft)
def paft_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    q: float = 0.75,
    threshold: float = 0.5,
    resample: int = 0,
    importance: str = "ratio",
    p_floor: float | None = None,
    seed: int = 0,
    rl_step: int = 0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """PAFT: supervised fine-tuning on each group's importance-resampled correct samples, attenuated by P_hat^(1-q).

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.behaviour_logprobs, batch.loss_mask
    (batch.advantages is ignored) -> LossTerms(per_token [B, T]).
    grad J_Q = P^(-q) grad P = P^(1-q) grad log P,  grad log P = E_{y ~ posterior pi(y) c(y) / P}[grad log pi(y)]
    Estimator: P_hat = the group's success rate; y_1..y_S resampled from the posterior (see `paft_weights`);
      L_{i,t} = -w_i log pi(y_{i,t}),  w_i = P_hat^(1-q) M n_i / S   (weights detached; no ratio, no clip)
    With the reduction `seq_mean_token_sum` and equal group sizes the batch loss is
    -(1/K) sum_q P_hat_q^(1-q) (1/S) sum_s log pi(y_s): the plain PAFT estimator of J_Q (sequence
    log-likelihoods); token_mean / seq_mean_token_mean give its length-normalised form. In expectation it
    has GARL's direction with baseline "none" (both estimate grad J_Q); PAFT's gradient is the SFT
    gradient of whole correct samples (the paper: "semantically coherent", more stable), GARL's the
    amplified RLVR one (lower variance).
    The resampling generator is seeded by (seed, rl_step, group id): the same draws on a resume. Groups
    with no correct sample give no loss (counted in `skipped_groups`).
    Assumptions (reconstructed): SIR with sequence-level ratios pi_theta / pi_behaviour as the
    importance resampling (on-policy: uniform over the correct samples), S = M draws with replacement,
    binary correctness by threshold 0.5, the floor 1/M on P_hat. Defaults: q 0.75 (the paper's PAFT
    setting), no KL.
    Departs from GRPO: no advantage and no ratio; an SFT loss on resampled correct samples, weighted
    per prompt by its success rate to the power 1 - q (q = 1: plain SFT on correct samples; q = 0:
    P_hat-weighted SFT, the RLVR gradient's scale).
    Paper: "How Fast Should a Model Commit to Supervision? Training Reasoning Models on the Tsallis
    Loss Continuum" (arXiv 2604.25907), which introduces GARL and PAFT.
    Status: reconstructed (the estimator's structure from the paper text; resampling details assumed).
    """
    mask = batch.loss_mask
    with torch.no_grad():
        seq_log_ratio = (token_log_ratio(logprobs.detach(), batch) * mask).sum(-1)
    weights, metrics = paft_weights(
        batch.rewards, batch.group_ids, seq_log_ratio, q=q, threshold=threshold, resample=resample,
        importance=importance, p_floor=p_floor, seed=seed * 100_003 + rl_step,
    )
    per_token = torch.where(mask, -weights.to(logprobs.dtype)[:, None] * logprobs, torch.zeros_like(logprobs))
    metrics.update(ratio_metrics(token_log_ratio(logprobs, batch), mask), clip_fraction=torch.tensor(0.0))  # (no clip)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="paft_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("bpo", "regress each token's ratio onto the box-constrained optimum 1 +- eps (sign of A), "
          "advantage-weighted generalised KL; reduction token_mean",
          "Bounded Ratio Reinforcement Learning (arXiv 2604.18578)", "reconstructed", "groups (via the credit)"),
    Entry("gbpo", "BPO with a group median advantage (/ group std) from the rewards; reduction token_mean",
          "Bounded Ratio Reinforcement Learning (arXiv 2604.18578)", "reconstructed", "groups"),
    Entry("fiberpo", "trajectory gate on the mean log-ratio x token gate on its residual (budgets 0.05 / 0.2); "
          "reduction token_mean",
          "Fibration Policy Optimization (arXiv 2603.08239)", "reconstructed", "nothing beyond GRPO's"),
    Entry("garl", "Tsallis J_Q: RLVR advantage of each prompt amplified by P_hat^-q (q 0.75), PPO clip; "
          "reduction seq_mean_token_sum",
          "Training Reasoning Models on the Tsallis Loss Continuum (GARL; arXiv 2604.25907)", "reconstructed",
          "groups of M samples"),
    Entry("paft", "Tsallis J_Q by SFT: each group's correct samples importance-resampled (pi / pi_old), SFT on them "
          "scaled by P_hat^(1-q) (q 0.75); no ratio, no clip; reduction seq_mean_token_sum",
          "Training Reasoning Models on the Tsallis Loss Continuum (PAFT; arXiv 2604.25907)", "reconstructed",
          "groups of M samples (binary rewards)"),
]
