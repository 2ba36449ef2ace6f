"""Discriminative and contrastive objectives: DisCO (and DisCO-b), DRPO, CoPG.

None of these is a clipped ratio surrogate on an advantage. They read the outcome rewards
(batch.rewards) and the group structure (batch.group_ids) directly and ignore batch.advantages:

| objective | per prompt                                                       | trust region                   |
|-----------|------------------------------------------------------------------|--------------------------------|
| disco_b   | mean score of correct answers - mean score of incorrect ones     | squared hinge on KL(old, new)  |
| disco     | mean_P [ s - tau log mean_N exp(s' / tau) ]  (DRO, log-sum-exp)  | squared hinge on KL(old, new)  |
| drpo      | DisCO with length-weighted positives normalised within positives | squared hinge on KL(old, new)  |
| copg      | least squares on pairwise differences of KL-regularised rewards  | beta ln(pi / pi_ref) in reward |

Scores are token means of the sampled tokens' log-probs ("logL") or of their ratios to the behaviour
policy ("Lratio"), so no response length biases the comparison, and nothing is clipped.

How the loss reaches the trainer: these losses are group-level scalars (one number for the whole
batch). `per_token` holds that scalar on every position, so ANY mean reduction -- `token_mean` (the
trainer's default) or `seq_mean_token_mean` -- returns exactly the paper's loss, with the paper's
gradient (each position carries weight 1 / count and the weights sum to 1). The sum reductions
(`seq_mean_token_sum`, `seq_mean_token_sum_norm`, `token_sum`) multiply it by a token or row count
and should not be used with these objectives.

Micro-batching: a group-level objective needs whole groups in the rows it sees; the official code
all-gathers a minibatch before grouping and assumes every prompt has the same number of responses
(ours does not assume that).
"""

from __future__ import annotations

from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms, masked_mean, needs
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.kl import kl_k3

SCORES = ("logL", "Lratio")
DEFAULT_TAU = {"logL": 10.0, "Lratio": 1.0}  # official defaults, per score function


# -- shared pieces ------------------------------------------------------------------------------


def _dense_groups(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Arbitrary group ids [B] -> dense indices 0..K-1 [B] and K."""
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


def _group_sum(x: torch.Tensor, dense: torch.Tensor, k: int) -> torch.Tensor:
    """[B] -> [K]: the sum of x over each group (differentiable)."""
    return torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, dense, x)


def _sequence_scores(
    logprobs: torch.Tensor, batch: RolloutBatch, score: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-response scores s [B], the token log-ratio [B, T] and the non-empty rows [B] bool.

    logL:   s_i = (1/|y_i|) sum_t log pi_theta(y_t)
    Lratio: s_i = (1/|y_i|) sum_t pi_theta(y_t) / pi_old(y_t)     (log-ratio clamped to [-20, 20])
    An empty row (no loss-mask token) has no score: s = 0 there and it is excluded from every group.
    """
    if score not in SCORES:
        raise ValueError(f"unknown DisCO score {score!r}; valid: {', '.join(SCORES)}")
    mask = batch.loss_mask
    log_ratio = token_log_ratio(logprobs, batch)
    per_token = logprobs if score == "logL" else torch.exp(log_ratio)
    lengths = mask.sum(-1)
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)
    return total / lengths.clamp(min=1).to(total.dtype), log_ratio, lengths > 0


def _pos_neg(batch: RolloutBatch, nonempty: torch.Tensor, threshold: float | None):
    """Positive / negative rows [B] bool. Default (threshold None): exactly R == 1 / R == 0, as the
    official code, so non-binary rewards (e.g. 0.5) are neither. With a threshold: R > threshold /
    R <= threshold. Empty rows are neither."""
    r = batch.rewards
    if threshold is None:
        pos, neg = r == 1.0, r == 0.0
    else:
        pos, neg = r > threshold, r <= threshold
    return pos & nonempty, neg & nonempty


def _neg_log_mean_exp(
    scores: torch.Tensor, neg: torch.Tensor, dense: torch.Tensor, k: int, tau: float
) -> torch.Tensor:
    """[K]: tau * log mean_{j in N_q} exp(s_j / tau) per group (0 for a group without negatives).

    Stable: the per-group max of s/tau is subtracted first (detached; the value is unchanged).
    The official code uses a surrogate with value 1 and the same gradient; log-mean and log-sum
    differ by the constant tau * log|N_q|. Log-mean makes tau -> inf recover DisCO-b's mean_N s.
    """
    z = scores.to(torch.float64) / tau  # float64: tau * log(...) amplifies rounding by tau
    masked = torch.where(neg, z, torch.full_like(z, -torch.inf))
    top = torch.full((k,), -torch.inf, dtype=z.dtype, device=z.device).scatter_reduce(
        0, dense, masked.detach(), "amax"
    )
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # groups without negatives
    expz = torch.where(neg, torch.exp(z - top[dense]), torch.zeros_like(z))
    count = _group_sum(neg.to(z.dtype), dense, k)
    mean_exp = _group_sum(expz, dense, k) / count.clamp(min=1.0)
    return (tau * (torch.log(mean_exp.clamp(min=torch.finfo(z.dtype).tiny)) + top)).to(scores.dtype)


def kl_squared_hinge(kl: torch.Tensor, *, delta: float, beta: float) -> torch.Tensor:
    """DisCO's constraint penalty on a scalar KL estimate: sg[beta * max(KL - delta, 0)] * KL.

    Its value is beta * [KL - delta]_+ * KL; its gradient is beta * [KL - delta]_+ * grad KL, which is
    the gradient of (beta / 2) * [KL - delta]_+^2 (the squared hinge): exactly zero inside the KL
    budget delta, growing linearly with the violation outside it.
    Paper: "DisCO" (arXiv 2505.12366). Status: confirmed (official code).
    """
    return (beta * torch.clamp(kl - delta, min=0.0)).detach() * kl


def _behaviour_kl(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi_old || pi_theta), token mean over the mask: mean(r - 1 - log r)."""
    k3 = torch.exp(log_ratio) - 1.0 - log_ratio
    return masked_mean(torch.where(mask, k3, torch.zeros_like(k3)), mask)


def _discriminative_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    score: str,
    tau: float | None,
    delta: float,
    beta: float,
    positive_weights: torch.Tensor | None,
    normalize_by_valid: bool,
    threshold: float | None,
    who: str,
) -> LossTerms:
    """The DisCO family: -(1/N) sum_{valid q} J_q + KL squared hinge, as a broadcast scalar.

    tau None -> DisCO-b (mean over negatives); a number -> DisCO's log-mean-exp over negatives.
    positive_weights [B] (>= 0, no grad) -> DRPO's self-normalised weights within positives.
    """
    if tau is not None and tau <= 0:
        raise ValueError(f"{who}: tau must be > 0, got {tau}")
    mask = batch.loss_mask
    scores, log_ratio, nonempty = _sequence_scores(logprobs, batch, score)
    pos, neg = _pos_neg(batch, nonempty, threshold)
    dense, k = _dense_groups(batch.group_ids)
    n_pos = _group_sum(pos.to(scores.dtype), dense, k)
    n_neg = _group_sum(neg.to(scores.dtype), dense, k)
    valid = (n_pos > 0) & (n_neg > 0)  # groups with at least one correct and one incorrect answer

    w = pos.to(scores.dtype) if positive_weights is None else positive_weights * pos
    w_sum = _group_sum(w, dense, k)
    pos_term = _group_sum(torch.where(pos, w * scores, torch.zeros_like(scores)), dense, k) / w_sum.clamp(
        min=torch.finfo(scores.dtype).tiny
    )
    if tau is None:
        neg_term = _group_sum(torch.where(neg, scores, torch.zeros_like(scores)), dense, k) / n_neg.clamp(min=1.0)
    else:
        neg_term = _neg_log_mean_exp(scores, neg, dense, k, tau)
    j = torch.where(valid, pos_term - neg_term, torch.zeros_like(pos_term))  # [K]
    n_prompts = valid.sum() if normalize_by_valid else torch.tensor(k)
    objective = -j.sum() / n_prompts.clamp(min=1).to(j.dtype)

    kl = _behaviour_kl(log_ratio, mask)
    loss = objective + kl_squared_hinge(kl, delta=delta, beta=beta)
    # 0 * sum keeps the graph when no token is masked in (every term is then a constant)
    loss = loss + 0.0 * torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum()

    metrics = ratio_metrics(log_ratio, mask)
    with torch.no_grad():
        active = (kl.detach() > delta).to(kl.dtype)
        metrics.update(
            kl_constraint=kl.detach(),
            kl_constraint_active=active,
            # nothing is clipped; as the official code, clip_fraction reports whether the KL
            # constraint is active (1) or not (0) so dashboards keep a comparable key
            clip_fraction=active,
            valid_group_fraction=valid.to(kl.dtype).mean(),
            score_pos_mean=masked_mean(scores.detach(), pos),
            score_neg_mean=masked_mean(scores.detach(), neg),
        )
    return LossTerms(per_token=loss.expand_as(logprobs), metrics=metrics)


# -- DisCO ---------------------------------------------------------------------------------------


@OBJECTIVES.register("disco")
@needs("whole_groups")
def disco_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    score: str = "logL",
    tau: float | None = None,
    delta: float = 1e-4,
    beta: float = 1e3,
    normalize_by_valid: bool = False,
    threshold: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DisCO (DRO form): raise correct answers' scores above a soft maximum of incorrect ones.

    logprobs [B, T] (policy, with grad); uses batch.rewards [B], batch.group_ids [B],
    batch.behaviour_logprobs [B, T], batch.loss_mask [B, T] -> LossTerms(per_token [B, T]: the batch
    loss on every position; any mean reduction returns it exactly, see the module docstring).
    s_i = token mean of log pi (score "logL") or of pi / pi_old (score "Lratio")
    J_q = mean_{i in P_q} [ s_i - tau log mean_{j in N_q} exp(s_j / tau) ]
    KL  = token mean over the batch of (r - 1 - log r)      (k3 estimate of KL(pi_old || pi_theta))
    L   = -(1/N_prompts) sum_{valid q} J_q + sg[beta max(KL - delta, 0)] KL
    Positives P: R == 1, negatives N: R == 0 exactly (official); `threshold` t switches to R > t /
    R <= t. A group without both a positive and a negative is dropped (J = 0) but still counts in
    N_prompts, as in the official code (the scale shrinks when many groups are degenerate);
    normalize_by_valid=True divides by the valid groups instead. An empty response has no score and
    belongs to neither set. With no valid group only the KL hinge remains (all-zero rewards: loss 0
    on-policy). The log-mean-exp is a soft maximum over negatives: the hardest negatives get the
    largest push-down (data-imbalance aware); log-mean rather than the paper's log-sum changes the
    value by the constant tau log|N_q| only, and makes tau -> inf recover DisCO-b.
    Defaults (official): score logL, tau 10 for logL / 1 for Lratio (tau None picks it), delta 1e-4,
    beta 1e3, no clipping, no reference model (kl_coef 0 adds none). Recommended reduction: token_mean
    or seq_mean_token_mean (identical here).
    Departs from GRPO: no advantage and no std normalisation (no question-difficulty bias: every valid
    prompt weighs the same), no clipping, length-normalised scores, a KL constraint instead of a clip.
    Paper: "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization"
    (arXiv 2505.12366). Status: confirmed (official code `compute_policy_loss_disco_logL` / `_Lratio`).
    """
    terms = _discriminative_loss(
        logprobs, batch, score=score, tau=DEFAULT_TAU.get(score, 1.0) if tau is None else tau, delta=delta,
        beta=beta, positive_weights=None, normalize_by_valid=normalize_by_valid, threshold=threshold,
        who="disco_loss",
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="disco_loss")


@OBJECTIVES.register("disco_b")
@needs("whole_groups")
def disco_b_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    score: str = "logL",
    delta: float = 1e-4,
    beta: float = 1e3,
    normalize_by_valid: bool = False,
    threshold: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DisCO-b (basic): mean score of correct answers minus mean score of incorrect ones.

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.behaviour_logprobs,
    batch.loss_mask -> LossTerms(per_token [B, T]: the batch loss on every position).
    J_q = mean_{i in P_q} s_i - mean_{j in N_q} s_j ;  L = -(1/N_prompts) sum_{valid q} J_q + KL hinge
    Everything else (scores, positives / negatives, valid groups, KL squared hinge, defaults
    delta 1e-4 / beta 1e3) as `disco_loss`. Each valid prompt contributes with weight 1 whatever its
    success rate, unlike GRPO's 1/std (which over-weights very easy and very hard prompts).
    Departs from GRPO: as DisCO; the negatives are averaged rather than soft-maxed.
    Paper: "DisCO" (arXiv 2505.12366). Status: confirmed (official code `compute_policy_loss_discob_*`).
    """
    terms = _discriminative_loss(
        logprobs, batch, score=score, tau=None, delta=delta, beta=beta, positive_weights=None,
        normalize_by_valid=normalize_by_valid, threshold=threshold, who="disco_b_loss",
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="disco_b_loss")


# -- DRPO ----------------------------------------------------------------------------------------


def drpo_positive_weights(
    loss_mask: torch.Tensor, positives: torch.Tensor, group_ids: torch.Tensor, *, lam: float, max_length: int | None
) -> torch.Tensor:
    """DRPO's weights of correct responses, normalised within each group's positives.

    loss_mask [B, T], positives [B] bool, group_ids [B] -> weights [B] (0 off the positives; the
    positives of each group sum to 1; no gradient).
    l_i = |y_i| / L_pad ;  w_i = exp((1 - l_i) / lam) / sum_{j in P_q} exp((1 - l_j) / lam)
    L_pad = max_length, else the longest response in the batch (the official code uses the padded
    response width, i.e. max_response_length). Computed as a per-group softmax (stable for small lam).
    Paper: "DRPO" (arXiv 2510.04474). Status: confirmed (official code `compute_policy_loss_drpo`).
    """
    if lam <= 0:
        raise ValueError(f"drpo: lam must be > 0, got {lam}")
    lengths = loss_mask.sum(-1).to(torch.float64)
    pad = float(max_length) if max_length is not None else float(lengths.max().clamp(min=1.0))
    logit = (1.0 - lengths / pad) / lam  # [B]
    dense, k = _dense_groups(group_ids)
    masked = torch.where(positives, logit, torch.full_like(logit, -torch.inf))
    top = torch.full((k,), -torch.inf, dtype=logit.dtype).scatter_reduce(0, dense, masked, "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.where(positives, torch.exp(logit - top[dense]), torch.zeros_like(logit))
    total = torch.zeros(k, dtype=e.dtype).index_add(0, dense, e)
    return (e / total[dense].clamp(min=torch.finfo(e.dtype).tiny)).to(torch.float32)


@OBJECTIVES.register("drpo")
@needs("whole_groups")
def drpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    lam: float = 0.1,
    tau: float = 10.0,
    delta: float = 1e-4,
    beta: float = 1e3,
    max_length: int | None = None,
    normalize_by_valid: bool = False,
    threshold: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DRPO: DisCO with a length-weighted positive distribution normalised within the positives.

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.behaviour_logprobs,
    batch.loss_mask -> LossTerms(per_token [B, T]: the batch loss on every position).
    s_i = (1/|y_i|) sum_t log pi(y_t)          (logL score)
    w_i = exp((1 - |y_i| / L_pad) / lam), normalised so that sum_{i in P_q} w_i = 1
    J_q = sum_{i in P_q} w_i [ s_i - tau log mean_{j in N_q} exp(s_j / tau) ]
    L   = -(1/N_prompts) sum_{valid q} J_q + sg[beta max(KL - delta, 0)] KL    (KL: k3 vs pi_old)
    Because the weights are normalised within the positives (never against the negatives), a
    long correct answer still gets a positive push, only a smaller one than a short correct answer:
    length never turns a correct answer's signal negative. lam -> inf gives uniform weights = DisCO.
    L_pad: `max_length` (set it to the sampling budget, e.g. max_new_tokens, to match the official
    padded width); by default the longest response of the batch the objective sees.
    Groups, thresholds, empty responses and N_prompts as `disco_loss`.
    Defaults (official run_drpo_1.5b_8k.sh): lam 0.1, tau 10, delta 1e-4, beta 1e3.
    Recommended reduction: token_mean or seq_mean_token_mean (identical here).
    Departs from GRPO: as DisCO, plus a closed-form preference for shorter correct answers.
    Paper: "DRPO: Efficient Reasoning via Decoupled Reward Policy Optimization" (arXiv 2510.04474).
    Status: confirmed (official code `compute_policy_loss_drpo`).
    """
    _, _, nonempty = _sequence_scores(logprobs.detach(), batch, "logL")
    pos, _ = _pos_neg(batch, nonempty, threshold)
    weights = drpo_positive_weights(batch.loss_mask, pos, batch.group_ids, lam=lam, max_length=max_length)
    terms = _discriminative_loss(
        logprobs, batch, score="logL", tau=tau, delta=delta, beta=beta, positive_weights=weights.to(logprobs.dtype),
        normalize_by_valid=normalize_by_valid, threshold=threshold, who="drpo_loss",
    )
    terms.metrics["positive_weight_max"] = weights.max() if bool(pos.any()) else weights.new_tensor(0.0)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="drpo_loss")


# -- CoPG ----------------------------------------------------------------------------------------


@OBJECTIVES.register("copg")
@needs("whole_groups", "ref")
def copg_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    beta: float = 0.1,
    reference: str = "auto",
) -> LossTerms:
    """CoPG: least squares on pairwise differences of KL-regularised sequence rewards (no IS, no clip).

    logprobs [B, T]; uses batch.rewards [B], batch.group_ids [B], batch.loss_mask and the reference
    log-probs [B, T] -> LossTerms(per_token [B, T]: the batch loss on every position; any mean
    reduction returns it exactly).
    x_i = R_i - beta (S_i - S_i^ref),   S_i = sum_t log pi(y_{i,t}),  S^ref likewise under pi_ref
    pair loss  l(y, y') = (1 / (4 beta)) (x - x')^2 ;  grad = -(1/2)(x - x')(grad S - grad S')
    Every unordered pair of (non-empty) responses of a group is used; the mean over the n(n-1)/2
    pairs equals (1 / (2 beta (n - 1))) sum_i (x_i - mean_q x)^2, which is what is computed. The
    loss is the mean over groups with at least two non-empty responses (others have no pair).
    With n = 2 this is the paper's pairwise loss; with R - R' = +-1/2 (preference labels) it is IPO.
    Equal regularised rewards give zero gradient; equal rewards alone do not (the KL part still pulls
    toward pi_ref). Sequence log-probs are sums over tokens (CoPG is a sequence-level method), so a
    long response's log-ratio weighs more.
    reference: "ref" needs batch.ref_logprobs; "behaviour" uses the sampling policy (pi_old) as the
    anchor; "auto" (default) uses ref_logprobs when present, else the behaviour logprobs (the trainer
    loads a reference model only when rl.kl_coef > 0; the metric `reference_is_behaviour` says which).
    Defaults: beta 0.1 (per experiment in the paper; unconfirmed). Recommended reduction: token_mean.
    Departs from GRPO: no importance ratio and no clip (off-policy by construction), a pairwise
    contrastive baseline instead of the group mean / std, the KL inside the reward.
    Paper: "Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly
    fashion" (arXiv 2406.19185). Status: reconstructed (principle from the paper text; the least-squares
    form with constant 1 / (4 beta) and the all-pairs extension to groups of n > 2 are assumptions).
    """
    if beta <= 0:
        raise ValueError(f"copg_loss: beta must be > 0, got {beta}")
    if reference not in ("auto", "ref", "behaviour"):
        raise ValueError(f"copg_loss: reference must be 'auto', 'ref' or 'behaviour', got {reference!r}")
    if reference == "ref" and batch.ref_logprobs is None:
        raise ValueError("copg_loss: reference='ref' needs batch.ref_logprobs (copg declares needs('ref'), so the trainer loads a reference model)")
    use_ref = batch.ref_logprobs is not None and reference != "behaviour"
    anchor = batch.ref_logprobs if use_ref else batch.behaviour_logprobs
    mask = batch.loss_mask
    zeros = torch.zeros_like(logprobs)
    seq = torch.where(mask, logprobs, zeros).sum(-1)  # [B]
    seq_ref = torch.where(mask, anchor.to(logprobs.dtype), zeros).sum(-1)
    x = batch.rewards.to(logprobs.dtype) - beta * (seq - seq_ref)
    nonempty = mask.any(-1)
    dense, k = _dense_groups(batch.group_ids)
    n = _group_sum(nonempty.to(x.dtype), dense, k)
    mean = _group_sum(torch.where(nonempty, x, torch.zeros_like(x)), dense, k) / n.clamp(min=1.0)
    sq = torch.where(nonempty, (x - mean[dense]) ** 2, torch.zeros_like(x))
    valid = n >= 2
    group_loss = _group_sum(sq, dense, k) / (2.0 * beta * (n - 1.0).clamp(min=1.0))
    loss = torch.where(valid, group_loss, torch.zeros_like(group_loss)).sum() / valid.sum().clamp(min=1).to(x.dtype)
    loss = loss + 0.0 * torch.where(mask, logprobs, zeros).sum()  # keep the graph in degenerate batches
    metrics = {}
    with torch.no_grad():
        metrics["regularised_reward_mean"] = masked_mean(x.detach(), nonempty)
        metrics["seq_log_ratio_ref_mean"] = masked_mean((seq - seq_ref).detach(), nonempty)
        metrics["valid_group_fraction"] = valid.to(x.dtype).mean()
        metrics["reference_is_behaviour"] = torch.tensor(0.0 if use_ref else 1.0)
    return LossTerms(per_token=loss.expand_as(logprobs), metrics=metrics)


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("disco", "discriminative: correct-answer scores above a log-sum-exp of incorrect ones (score logL / "
          "Lratio, tau 10 / 1), squared-hinge KL constraint (delta 1e-4, beta 1e3), no clipping",
          "DisCO (arXiv 2505.12366)", "confirmed", "groups with binary rewards (R == 1 / 0)"),
    Entry("disco_b", "discriminative: mean score of correct minus mean score of incorrect answers, "
          "squared-hinge KL constraint, no clipping",
          "DisCO (arXiv 2505.12366)", "confirmed", "groups with binary rewards (R == 1 / 0)"),
    Entry("drpo", "DisCO with length-weighted positives normalised within positives (lam 0.1, tau 10)",
          "DRPO: Decoupled Reward Policy Optimization (arXiv 2510.04474)", "confirmed",
          "groups with binary rewards; response lengths"),
    Entry("copg", "least squares on pairwise differences of KL-regularised sequence rewards; no IS, no clip "
          "(beta 0.1)",
          "Contrastive Policy Gradient (arXiv 2406.19185)", "reconstructed",
          "groups of >= 2; reference model (else the behaviour policy is the anchor)"),
]
