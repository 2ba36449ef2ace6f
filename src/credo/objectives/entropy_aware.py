"""Entropy- and token-aware objectives: GTPO, Lp-Reg, HAPO (heterogeneous), Light-IF's TEA-RL.

| objective  | token-level signal                           | what it changes in the GRPO/PPO loss                 |
|------------|----------------------------------------------|------------------------------------------------------|
| gtpo       | conflict tokens (shared by A>0 and A<0 rows) | negative update skipped, positive one amplified;     |
|            |                                              | high-entropy completions dropped                     |
| lp_reg     | bottom-1% logprob tokens of A<0 rows         | unclipped PG + KL to a min-p-filtered proxy          |
| hapo_token | normalised log-entropy h in [-1, 1]          | per-token clip range and advantage redistribution    |
| tea_rl     | cov(A, log pi) per token                     | entropy bonus with a token-wise coefficient          |

Entropies: `outputs.entropy` [B, T] is always present (credo.logprobs). GTPO and HAPO read it as a
detached statistic and declare no need, so the trainer does not keep its autograd graph; TEA-RL
differentiates it and declares @needs("entropy"). Lp-Reg reads `outputs.full_logprobs`.

Every objective sees one micro-batch (credo.train.rl.ppo_update). Statistics the papers take over the
rollout batch (GTPO's conflict sets per prompt group, Lp-Reg's bottom-k%, HAPO's entropy quantile,
TEA-RL's covariance means) are micro-batch statistics here. GTPO needs whole groups in one
micro-batch (rl.minibatches = 1 and rl.micro_batch_size >= the batch) to see every conflict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms, PolicyOutputs, masked_mean, needs
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.distribution import full_logprobs_at_mask
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3


def _row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: mean over each row's masked entries; 0 for an empty row."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum(-1)
    return total / mask.sum(-1).clamp(min=1).to(x.dtype)


# -- GTPO ------------------------------------------------------------------------------------------


def gtpo_conflict_deltas(
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    group_ids: torch.Tensor,
    row_advantages: torch.Tensor,
    *,
    w_raw: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GTPO's conflict masks: tokens [B, T], loss_mask [B, T], group_ids [B], row_advantages [B]
    -> (delta [B, T] float, conflict [B, T] bool, n_conflict [B] float, >= 1).

    Within a group, position j of a completion (counted from its first loss token) is conflicting
    when some A > 0 and some A < 0 completion both have that token at position j. Only the initial
    contiguous run of conflicting positions counts (forward pass); the same test on positions
    counted back from each completion's last loss token gives the backward run. Per pass,
    delta = w_raw on run positions of A > 0 rows, 0 on run positions of A < 0 rows, 1 elsewhere;
    delta = delta_fwd * delta_bwd (w_raw^2 where both runs cover a positive token, as the official
    code). n_conflict = |fwd run | bwd run| per row, clamped >= 1. Rows with A = 0 take no part.
    A masked position inside a completion (tool output, dropped token) ends a run.
    Reference: official `gtpo/gtpo_training.py::build_conflict_mask`.
    """
    B, T = tokens.shape
    mask = loss_mask.bool()
    device = tokens.device
    idx = torch.arange(T, device=device).expand(B, T)
    has = mask.any(-1)
    start = torch.where(has, mask.int().argmax(-1), torch.full((B,), T, device=device))
    end = torch.where(has, T - 1 - mask.int().flip(-1).argmax(-1), torch.full((B,), -1, device=device))
    pos, neg = row_advantages > 0, row_advantages < 0
    active = mask & (pos | neg)[:, None]
    span = (idx >= start[:, None]) & (idx <= end[:, None])
    dense = torch.unique(group_ids, return_inverse=True)[1].to(device)
    vocab = int(tokens.max()) + 1 if tokens.numel() else 1

    def initial_run(rel: torch.Tensor, from_start: bool) -> torch.Tensor:
        # one integer key per (group, relative position, token): equal keys = same token, same place
        key = (dense[:, None] * (T + 1) + rel.clamp(min=0)) * vocab + tokens
        raw = active & torch.isin(key, key[active & pos[:, None]]) & torch.isin(key, key[active & neg[:, None]])
        breaker = span & ~raw
        if from_start:
            first = torch.where(breaker.any(-1), breaker.int().argmax(-1), end + 1)
            return span & (idx < first[:, None])
        last = torch.where(breaker.any(-1), T - 1 - breaker.int().flip(-1).argmax(-1), start - 1)
        return span & (idx > last[:, None])

    fwd = initial_run(idx - start[:, None], True)
    bwd = initial_run(end[:, None] - idx, False)
    factor = torch.where(pos, w_raw, torch.where(neg, 0.0, 1.0)).to(torch.float32)[:, None]  # [B, 1]
    one = torch.ones((), dtype=torch.float32, device=device)
    delta = torch.where(fwd, factor, one) * torch.where(bwd, factor, one)
    conflict = fwd | bwd
    return delta, conflict, conflict.sum(-1).clamp(min=1).to(torch.float32)


@OBJECTIVES.register("gtpo")
@needs("whole_groups")
def gtpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    ent_threshold: float = 0.7,
    ent_scale: float = 0.1,
    w_raw: float = 2.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """GTPO: protect conflict tokens (never pushed down), amplify them in positive completions,
    and drop high-entropy completions.

    logprobs [B, T]; outputs.entropy [B, T] (read detached); uses batch.advantages, batch.tokens,
    batch.group_ids, batch.loss_mask -> LossTerms(per_token [B, T]).
    delta, n_conf = gtpo_conflict_deltas(...)          (signs from each row's mean advantage)
    H_i = mean_t H_{i,t};  A'_{i,t} = A_{i,t} - ent_scale H_i if H_i <= ent_threshold else 0
    r = exp(logp - sg[logp]) (value 1, carries the gradient);  L_{i,t} = -A'_{i,t} delta_{i,t} r_{i,t} / n_conf_i
    A conflict token of a negative completion has delta = 0: zero loss and zero gradient.
    Recommended reduction: seq_mean_token_mean, which gives (1/N) sum_i L_i with L_i the official
    per-completion token mean. The official code SUMS L_i over all completions (gradient scale grows
    with batch x group size); credo averages, so lr / max_grad_norm are not the official ones.
    Defaults (official config.yaml / constants): ent_threshold 0.7 nats, ent_scale 0.1, w_raw 2.0, no KL.
    As the official code, the entropy shaping applies to every low-entropy completion, including
    those with A = 0 (they get A' = -ent_scale H_i); with rl.skip_zero_advantage = true the trainer
    drops all-A=0 rows before the update, so keep it false to reproduce that term.
    No old logprobs (the ratio is 1): later minibatches are treated as on-policy.
    Metrics: conflict_fraction, filtered_fraction (completions over the entropy threshold),
    completion_entropy, clip_fraction (0: no clip), approx_kl / ratio_min / ratio_max of the
    behaviour ratio (diagnostic only).
    Departs from GRPO: no clipping, no reference model, token-level protection of shared tokens,
    entropy filter on completions.
    Paper: "GTPO: Trajectory-Based Policy Optimization in Large Language Models" (arXiv 2508.03772).
    Status: confirmed (official code winstonsmith1897/GTPO, gtpo/gtpo_training.py).
    """
    mask = batch.loss_mask
    with torch.no_grad():
        row_adv = _row_mean(batch.advantages, mask)
        delta, conflict, n_conf = gtpo_conflict_deltas(batch.tokens, mask, batch.group_ids, row_adv, w_raw=w_raw)
        ent = _row_mean(outputs.entropy.detach().to(batch.advantages.dtype), mask)  # [B]
        low = ent <= ent_threshold
        adv = torch.where(low[:, None], batch.advantages - ent_scale * ent[:, None], torch.zeros_like(batch.advantages))
        weight = adv * delta.to(adv.dtype) / n_conf.to(adv.dtype)[:, None]
    ratio = torch.exp(logprobs - logprobs.detach())
    per_token = -weight * ratio
    metrics = ratio_metrics(token_log_ratio(logprobs, batch), mask)
    with torch.no_grad():
        rows = mask.any(-1)
        metrics["clip_fraction"] = torch.tensor(0.0)
        metrics["conflict_fraction"] = masked_mean(conflict.to(ent.dtype), mask)
        metrics["filtered_fraction"] = (~low & rows).sum().to(ent.dtype) / rows.sum().clamp(min=1).to(ent.dtype)
        metrics["completion_entropy"] = (ent * rows).sum() / rows.sum().clamp(min=1)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="gtpo_loss")


# -- Lp-Reg ----------------------------------------------------------------------------------------

LP_REG_FILTERED_LOGIT = -1e4  # as the official apply_min_p: filtered tokens get this logit


def min_p_proxy_logprobs(
    full_logprobs: torch.Tensor, token_ids: torch.Tensor, *, min_p: float = 0.02, proxy_type: str = "minp"
) -> torch.Tensor:
    """log pi_proxy(y) [N] of the sampled ids [N] under the min-p proxy of full log-probs [N, V] (no grad).

    "minp": keep v iff p_v >= min_p * max_u p_u; "fixed": keep v iff p_v >= min_p; filtered logits
    are set to -1e4 and the distribution renormalised over the kept tokens. "minp_soft": the min-p
    rule, filtered logits set to the row minimum instead. A filtered sampled token gets ~ -1e4.
    """
    if proxy_type not in ("minp", "fixed", "minp_soft"):
        raise ValueError(f"lp_reg: proxy_type must be 'minp', 'fixed' or 'minp_soft', got {proxy_type!r}")
    with torch.no_grad():
        lp = full_logprobs.detach().float()
        if proxy_type == "fixed":
            keep = lp >= math.log(min_p)
        else:
            keep = lp >= math.log(min_p) + lp.max(-1, keepdim=True).values
        if proxy_type == "minp_soft":
            fill = lp.min(-1, keepdim=True).values.expand_as(lp)
        else:
            fill = torch.full_like(lp, LP_REG_FILTERED_LOGIT)
        z = torch.where(keep, lp, fill)
        return torch.log_softmax(z, dim=-1).gather(-1, token_ids[:, None]).squeeze(-1)


def _bottom_fraction(values: torch.Tensor, candidates: torch.Tensor, fraction: float, min_tokens: int) -> torch.Tensor:
    """The k = max(1, int(n * fraction)) lowest values among n candidates [B, T] -> bool [B, T];
    none when fraction <= 0, n = 0 or k < min_tokens."""
    chosen = torch.zeros_like(candidates)
    n = int(candidates.sum())
    if fraction <= 0 or n == 0:
        return chosen
    k = max(1, int(n * fraction))
    if k < min_tokens:
        return chosen
    flat = torch.where(candidates, values, torch.full_like(values, math.inf)).flatten()
    chosen.view(-1)[flat.topk(k, largest=False).indices] = True
    return chosen


@OBJECTIVES.register("lp_reg")
@needs("full_logprobs")
def lp_reg_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    min_p: float = 0.02,
    proxy_type: str = "minp",
    neg_fraction: float = 0.01,
    pos_fraction: float = 0.0,
    reg_coef: float = 1.0,
    min_selected: int = 1,
    clip_low: float = 1.0,
    clip_high: float = 9.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """Lp-Reg: protect low-probability tokens of negative samples with a KL pull to a min-p proxy.

    logprobs [B, T]; outputs.full_logprobs [N, V]; uses batch.advantages, batch.behaviour_logprobs,
    batch.tokens, batch.loss_mask -> LossTerms(per_token [B, T]).
    default:  L_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    S = the bottom neg_fraction of A<0 tokens by log pi (and pos_fraction of A>0 tokens), restricted
        to tokens with log pi(y) < log pi_proxy(y)
    for t in S:  L_t = -A r + reg_coef * k3(pi || pi_proxy)_t
                 k3 = exp(lp_proxy - lp) - (lp_proxy - lp) - 1   (clamped to +-10)
    Tokens the min-p filter removes (p < min_p * max p: presumed noise) have lp_proxy ~ -1e4, are
    never in S and keep the default loss; so do tokens outside the bottom fraction and, by default,
    every positive-advantage token.
    Defaults (official recipe/lp_reg scripts): min_p 0.02, 1% of negative tokens, 0% of positive,
    reg_coef (ppo_kl_coef) 1, clip_low 1.0 (no floor), clip_high 9.0, token_mean, no reference KL.
    Deviations (documented): (1) the proxy is built from the detached CURRENT full distribution, not
    pi_old's logits (minp_old_log_prob=True): identical on the first minibatch with
    rl.recompute_old_logprobs, an approximation on later ones. (2) The official code computes
    k = max(1, int(n * pct)) but regularises only when k > 1, so batches with fewer than 200 negative
    tokens get no regularisation; here min_selected = 1 regularises k >= 1 tokens (min_selected = 2
    reproduces the official rule). k is counted over this micro-batch's tokens, as in verl's actor.
    The recipes' clip_ratio_c = 10 is not used by the official Lp-Reg loss (no dual clip), nor here.
    Metrics: lp_reg_fraction (tokens in S), proxy_filtered_fraction (sampled tokens the min-p filter
    removes), clip_fraction, approx_kl, ratio_min / ratio_max.
    Departs from GRPO: selected low-probability negative tokens lose the clip and gain a KL pull.
    Paper: "Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable
    Reward" (arXiv 2510.03222). Status: confirmed (official code CarlanLark/Lp-Reg(-dev)
    `compute_policy_loss_lp_reg`, `apply_min_p`).
    """
    mask = batch.loss_mask
    adv = batch.advantages
    full = full_logprobs_at_mask(outputs, mask, "lp_reg_loss")
    log_ratio = token_log_ratio(logprobs, batch)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    default = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        proxy = torch.zeros_like(logprobs)
        proxy[mask] = min_p_proxy_logprobs(full, batch.tokens[mask], min_p=min_p, proxy_type=proxy_type).to(proxy.dtype)
        proxy = torch.where(mask, proxy, torch.full_like(proxy, LP_REG_FILTERED_LOGIT))
        lp = logprobs.detach()
        chosen = _bottom_fraction(lp, mask & (adv < 0), neg_fraction, min_selected)
        chosen |= _bottom_fraction(lp, mask & (adv > 0), pos_fraction, min_selected)
        selected = chosen & (lp < proxy)
    regularised = unclipped + reg_coef * kl_k3(logprobs, proxy)
    per_token = torch.where(selected, regularised, default)
    metrics = ratio_metrics(log_ratio, mask)
    with torch.no_grad():
        metrics["clip_fraction"] = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        metrics["lp_reg_fraction"] = masked_mean(selected.to(ratio.dtype), mask)
        metrics["proxy_filtered_fraction"] = masked_mean((proxy < LP_REG_FILTERED_LOGIT / 2).to(ratio.dtype), mask)
    terms = LossTerms(per_token=per_token, metrics=metrics)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="lp_reg_loss")


# -- HAPO (heterogeneous) --------------------------------------------------------------------------


@dataclass(frozen=True)
class EntropyStats:
    """HAPO's batch entropy statistics, shared between trainer and sampler (scalar tensors)."""

    median: torch.Tensor
    std: torch.Tensor
    scale_pos: torch.Tensor
    scale_neg: torch.Tensor  # negative: 1 / (most negative h)


def _h_hat(h: torch.Tensor, scale_pos: torch.Tensor, scale_neg: torch.Tensor, signed: bool) -> torch.Tensor:
    # signed: low-entropy tokens map to h / |min h| in [-1, 0] (the paper's intent); the released
    # code multiplies by the negative scale_neg, which maps them to |h| / |min h| >= 0.
    low = h * (-scale_neg) if signed else h * scale_neg
    return torch.where(h > 0, h * scale_pos, low)


def hapo_entropy_signal(
    entropy: torch.Tensor, mask: torch.Tensor, *, pivot: float = 0.8, signed: bool = True, eps: float = 1e-8
) -> tuple[torch.Tensor, EntropyStats]:
    """HAPO's normalised entropy signal h_hat [B, T] (0 off the mask) and its statistics.

    entropy [B, T] (full-vocabulary, current policy), mask [B, T].
    l = log(max(H, eps)); m = the pivot-quantile of l over valid tokens ("nearest": index
    round(pivot * (n - 1)), Python rounding, as the official torch_quantile); h = (l - m) / s with
    s = sqrt(mean_valid (l - m)^2); h_hat = h / max(h) for h > 0, h / |min h| for h <= 0 (signed=True).
    Reference: official `compute_entropy_h`.
    """
    valid = mask.bool()
    ell = torch.log(entropy.detach().float().clamp(min=eps))
    values = ell[valid]
    if values.numel() == 0:
        one = torch.ones((), device=entropy.device)
        return torch.zeros_like(ell), EntropyStats(one * 0, one, one, -one)
    k = round(pivot * (values.numel() - 1))
    median = values.kthvalue(k + 1).values
    h = ell - median
    var = (torch.where(valid, h, torch.zeros_like(h)) ** 2).sum() / valid.sum()
    std = var.clamp(min=eps).sqrt()
    h = h / std
    pos_max = torch.where(valid & (h > 0), h, torch.zeros_like(h)).max().clamp(min=eps)
    neg_min = torch.where(valid & (h < 0), h, torch.zeros_like(h)).min().clamp(max=-eps)
    scale_pos, scale_neg = 1.0 / pos_max, 1.0 / neg_min
    h_hat = torch.where(valid, _h_hat(h, scale_pos, scale_neg, signed), torch.zeros_like(h))
    return h_hat, EntropyStats(median, std, scale_pos, scale_neg)


def hapo_sampling_temperature(
    logits: torch.Tensor, stats: EntropyStats, *, temperature: float = 1.0, tau: float = 0.05,
    signed: bool = True, eps: float = 1e-6,
) -> torch.Tensor:
    """HAPO's adaptive sampling temperature for one decoding step: logits [N, V] -> temperatures [N].

    One row per sequence being decoded: T_n = temperature * (1 + clamp(h_hat_n, -1, 1) * tau), with
    h_hat from the row's entropy and the training batch's `stats` (hapo_entropy_signal). Rollout
    side: applied by the torch engine through `rollout.temperature_schedule = "hapo"` (rollout/temperature.py; the official code patches vLLM). Defaults: tau 0.05,
    base temperature 1.0. Reference: official `compute_entropy_based_temperature`.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    h = (torch.log(ent.clamp(min=eps)) - stats.median) / (stats.std + eps)
    h_hat = _h_hat(h, stats.scale_pos, stats.scale_neg, signed).clamp(-1.0, 1.0)
    return temperature * (1.0 + h_hat * tau)


def hapo_token_group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor, *, eps: float = 1e-6, max_abs: float = 5.0
) -> torch.Tensor:
    """HAPO's token-level group-average advantage: rewards [B], group_ids [B], lengths [B] -> [B] float32.

    mu_q, sigma_q = length-weighted mean and population std of R over all valid tokens of the group;
    A_i = (R_i - mu_q) / (sigma_q + eps); if any |A_i| >= max_abs among the group's non-empty rows,
    the group falls back to the GRPO advantage (unbiased std). Not registered as a credit estimator
    (the credit signature has no lengths): a trainer hook would call it with loss_mask.sum(-1).
    Deviation: the official code also tests |A| >= 5 at padding positions (reward 0 there), which
    triggers the fallback for rewards far from 0; here only valid rows count.
    Reference: official `compute_hapo_outcome_advantage` (its `entropys` argument is unused).
    """
    from credo.credit.outcome import grpo_advantages

    r = rewards.to(torch.float64)
    w = lengths.to(torch.float64)
    grpo = grpo_advantages(rewards, group_ids, eps=eps).to(torch.float64)
    out = torch.zeros_like(r)
    for g in torch.unique(group_ids):
        rows = group_ids == g
        total = w[rows].sum()
        if total <= 0:
            continue
        mu = (w[rows] * r[rows]).sum() / total
        sigma = ((w[rows] * (r[rows] - mu) ** 2).sum() / total).sqrt()
        a = (r[rows] - mu) / (sigma + eps)
        out[rows] = grpo[rows] if bool((a[w[rows] > 0].abs() >= max_abs).any()) else a
    return out.to(torch.float32)


@OBJECTIVES.register("hapo_token")
@needs("whole_groups")
def hapo_token_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    entropy_pivot: float = 0.8,
    clip_alpha: float = 1.0,
    adv_beta: float = 1.0,
    adaptive_clip: bool = True,
    adaptive_advantage: bool = True,
    signed_entropy: bool = True,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 10.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """HAPO (heterogeneous): asymmetric entropy-adaptive clipping and advantage redistribution.

    logprobs [B, T]; outputs.entropy [B, T] (read detached); uses batch.advantages,
    batch.behaviour_logprobs, batch.loss_mask -> LossTerms(per_token [B, T]).
    h_hat = hapo_entropy_signal(entropy, pivot)  in [-1, 1]   (low entropy < 0 < high entropy)
    eps_low_t  = clip_low  (1 - clip_alpha h_hat)  if h_hat <= 0 else clip_low    (low entropy: lower floor)
    eps_high_t = clip_high (1 + clip_alpha h_hat)  if h_hat > 0  else clip_high   (high entropy: higher cap)
    band = (1 - eps_low_t / 2, 1 + eps_high_t / 2) on the ratio;  A_ent = A (1 + adv_beta h_hat)
    high entropy: A inside the band, A_ent outside;  low entropy: A_ent inside, A outside
    L = dual-clip PPO with the per-token ranges (dual clip c where A' < 0)
    So a noisy low-entropy token may be pushed down further and a high-entropy token up further.
    Defaults (official recipes): pivot 0.8, clip_alpha 1, adv_beta 1, clip 0.2 / 0.2, dual clip 10,
    token_mean, no KL. signed_entropy=False reproduces the released code, whose h_hat is >= 0 for
    low-entropy tokens too (see the spec's "entropy sign" note), so its low-entropy branches fire only at h_hat = 0.
    The token-level group-average advantage is `hapo_token_group_advantages` (credit side, not wired:
    this objective uses batch.advantages); the adaptive sampling temperature is
    `hapo_sampling_temperature` (rollout side: `rollout.temperature_schedule = "hapo"`, rollout/temperature.py).
    h_hat's statistics are over this micro-batch, as in the official code (verl's actor calls the loss
    per micro-batch).
    Metrics: clip_fraction, approx_kl, ratio_min / ratio_max, h_hat_mean, redistributed_fraction.
    Departs from GRPO: per-token clip ranges and advantages driven by token entropy (DAPO-style base).
    Paper: "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature"
    (arXiv 2509.16591). Status: confirmed (official code starriver030515/HAPO core_algos.py).
    Not the history-aware HAPO (length rewards).
    """
    mask = batch.loss_mask
    adv = batch.advantages
    h_hat, _ = hapo_entropy_signal(outputs.entropy, mask, pivot=entropy_pivot, signed=signed_entropy)
    h_hat = h_hat.to(adv.dtype)
    with torch.no_grad():
        eps_low = torch.full_like(h_hat, clip_low)
        eps_high = torch.full_like(h_hat, clip_high)
        if adaptive_clip:
            eps_low = torch.where(h_hat <= 0, clip_low * (1.0 - clip_alpha * h_hat), eps_low)
            eps_high = torch.where(h_hat > 0, clip_high * (1.0 + clip_alpha * h_hat), eps_high)
        new_adv = adv
        if adaptive_advantage:
            r = torch.exp(token_log_ratio(logprobs, batch)).detach()
            inside = (r > 1.0 - eps_low / 2) & (r < 1.0 + eps_high / 2)
            adv_ent = adv * (1.0 + adv_beta * h_hat)
            new_adv = torch.where(h_hat > 0, torch.where(inside, adv, adv_ent), torch.where(inside, adv_ent, adv))
    terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, new_adv, mask,
                               clip_low=eps_low, clip_high=eps_high, dual_clip=dual_clip)
    with torch.no_grad():
        terms.metrics["h_hat_mean"] = masked_mean(h_hat, mask)
        terms.metrics["redistributed_fraction"] = masked_mean((new_adv != adv).to(adv.dtype), mask)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="hapo_token_loss")


# -- Light-IF TEA-RL -------------------------------------------------------------------------------


def tea_entropy_coefficients(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
    cov_alpha: float = 10.0, coef_max: float = 5.0,
) -> torch.Tensor:
    """TEA-RL's token-wise entropy coefficients c [B, T] (0 off the mask; gradient through logprobs).

    cov_t = (A_t - mean_valid A) (logp_t - mean_valid sg[logp]);  w = softmax over each row's valid
    tokens of cov;  c_t = clamp(cov_alpha w_t, 0, coef_max). A row with no valid token gets c = 0.
    Reference: Light-IF `compute_entropy_with_cov` (rl/verl/verl/trainer/ppo/core_algos.py).
    """
    valid = mask.bool()
    cov = (advantages - masked_mean(advantages, valid)) * (logprobs - masked_mean(logprobs.detach(), valid))
    rows = valid.any(-1, keepdim=True)
    cov = torch.where(valid, cov, torch.full_like(cov, -math.inf))
    cov = torch.where(rows, cov, torch.zeros_like(cov))  # an empty row would give softmax(-inf...) = NaN
    w = torch.where(valid, torch.softmax(cov, dim=-1), torch.zeros_like(cov))
    return torch.clamp(cov_alpha * w, 0.0, coef_max)


@OBJECTIVES.register("tea_rl")
@needs("entropy")
def tea_rl_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    cov_alpha: float = 10.0,
    coef_max: float = 5.0,
    detach_coef: bool = True,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """Light-IF TEA-RL: PPO clip plus an entropy bonus whose coefficient adapts per token.

    logprobs [B, T]; outputs.entropy [B, T] (differentiable: declared need); uses batch.advantages,
    batch.behaviour_logprobs, batch.loss_mask -> LossTerms(per_token [B, T]).
    c = tea_entropy_coefficients(logp, A): clamp(cov_alpha softmax_row((A - mean A)(logp - mean logp)), 0, coef_max)
    L_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) [dual clip c where A < 0]  -  c_t H_t
    Tokens whose advantage and log-probability co-vary most within their response (the ones whose
    update collapses entropy fastest) get the largest entropy bonus.
    Assumption (reconstructed): the paper's exact TEA-RL formula was not available. The form above
    is Light-IF's released `compute_entropy_with_cov` (cov_alpha 10, clip_cov_ub 5), the only
    token-wise entropy-adaptive term in the released code; its call site in dp_actor.py is
    unreachable as released (it reads an undefined `entropy_mode`), and the README describes TEA-RL
    as an "entropy-regularized policy gradient". It is NOT a weighting of the PG term by a function
    of entropy. The released coefficient is not detached (gradient also flows through the softmax
    of logp); detach_coef=True treats it as a weight, detach_coef=False reproduces that.
    Defaults: cov_alpha 10, coef_max 5, clip 0.2 / 0.2, dual clip 3 (verl's clip_ratio_c default in
    the released actor), no KL. Reduction: token_mean. The dense instruction-following rewards of
    the paper are a task-side component.
    Metrics: clip_fraction, approx_kl, ratio_min / ratio_max, entropy_coef_mean, entropy_bonus.
    Departs from GRPO: a token-adaptive entropy bonus (GRPO has none).
    Paper: "Light-IF: Endowing LLMs with Generalizable Reasoning via Preview and Self-Checking for
    Complex Instruction Following" (arXiv 2508.03178). Status: reconstructed.
    """
    mask = batch.loss_mask
    coef = tea_entropy_coefficients(logprobs, batch.advantages, mask, cov_alpha=cov_alpha, coef_max=coef_max)
    if detach_coef:
        coef = coef.detach()
    terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, batch.advantages, mask,
                               clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
    bonus = coef * outputs.entropy.to(coef.dtype)
    terms.per_token = terms.per_token - bonus
    with torch.no_grad():
        terms.metrics["entropy_coef_mean"] = masked_mean(coef.detach(), mask)
        terms.metrics["entropy_bonus"] = masked_mean(bonus.detach(), mask)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="tea_rl_loss")


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("gtpo", "conflict tokens shared by A>0/A<0 completions never pushed down (x2 when positive); "
          "completions with mean entropy > 0.7 dropped; ratio 1; reduction seq_mean_token_mean",
          "GTPO: Trajectory-Based Policy Optimization (arXiv 2508.03772)", "confirmed",
          "groups (whole, per micro-batch); entropy; token ids"),
    Entry("lp_reg", "bottom-1% negative tokens: unclipped PG + k3 KL to a min-p proxy (0.02); proxy from the "
          "detached current distribution (pi_old on the first minibatch); reduction token_mean",
          "Low-probability Tokens Sustain Exploration (arXiv 2510.03222)", "confirmed", "groups; full_logprobs"),
    Entry("hapo_token", "entropy-adaptive asymmetric clip and advantage redistribution, dual clip 10; "
          "reduction token_mean (the sampler temperature: rollout.temperature_schedule hapo; token-level "
          "advantage: credit hapo; --recipe hapo sets all)",
          "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature (arXiv 2509.16591)",
          "confirmed", "groups; entropy"),
    Entry("tea_rl", "PPO clip + entropy bonus with token-wise coefficient clamp(10 softmax_row(cov(A, logp)), 0, 5); "
          "reduction token_mean",
          "Light-IF (arXiv 2508.03178)", "reconstructed", "groups; entropy (differentiable)"),
]
