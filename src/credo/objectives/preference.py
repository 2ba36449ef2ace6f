"""Preference objectives on the RL batch: DPO, robust DPO (rDPO), From r to Q* (token-level DPO), and
RTO's dense token reward.

There is no separate preference-pair batch type: pairs are drawn from the groups of a RolloutBatch
(rows sharing a group id answer the same prompt), labelled by the outcome rewards.

Pairing rule (`pairing=`):
- "best_worst" (default): in each group, the highest-reward non-empty row is chosen and the
  lowest-reward non-empty row is rejected. Ties inside the best (or worst) reward go to the lowest
  row index, so the pair is deterministic. A group whose non-empty rows all have the same reward
  (including a group of one) gives no pair.
- "all": every ordered (higher-reward, lower-reward) pair of non-empty rows of a group; equal rewards
  give no pair.
An empty response (no loss-mask token) has no sequence log-prob to compare and is never paired.
The reward gap only decides the label; its size does not weight the pair (Bradley-Terry labels).

| objective | pair loss, z = beta (h_w - h_l), h = sum_t (log pi - log pi_ref)      |
|-----------|--------------------------------------------------------------------------|
| dpo       | -log sigma(z)                                                            |
| rdpo      | [(1 - eps)(-log sigma(z)) - eps(-log sigma(-z))] / (1 - 2 eps)           |
| q_star    | -log sigma(z), per_token = the token-level decomposition (credit per token) |

How the loss reaches the trainer: the batch loss is the mean over all pairs the objective sees.
`dpo` and `rdpo` follow DisCO (objectives/discriminative.py): `per_token` holds that scalar on every
position, so any MEAN reduction (`token_mean`, the trainer's default, or `seq_mean_token_mean`)
returns exactly the loss with exactly its gradient; the sum reductions multiply it by a count and
must not be used. `q_star` spreads the loss onto the paired rows' tokens (see its docstring) so that
`token_mean` returns the loss exactly, and each token's entry shows its share of the credit.
With micro-batches (whole groups, as `needs("whole_groups")` asks) each micro-batch averages its own
pairs and the trainer's global token count weights them by their token counts: exact when the
minibatch is one micro-batch, as for every group-level objective here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms, masked_mean, needs

PAIRINGS = ("best_worst", "all")
RM_SCORE_CLAMP = 10.0  # OpenRLHF `compute_reward` clamps the reward-model score to [-10, 10]


# -- pairs from groups --------------------------------------------------------------------------


def preference_pairs(
    rewards: torch.Tensor, group_ids: torch.Tensor, nonempty: torch.Tensor, *, pairing: str = "best_worst"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [P], rejected [P]) row indices of the preference pairs of a batch (long tensors).

    rewards [B], group_ids [B], nonempty [B] bool (rows with at least one loss token).
    best_worst: per group, the first row with the highest reward vs the first row with the lowest
    (only when highest > lowest). all: every (i, j) of a group with R_i > R_j. Pairs are sorted by
    (chosen, rejected) for "all" and by group id for "best_worst".
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; valid: {', '.join(PAIRINGS)}")
    r = rewards.to(torch.float64)
    if pairing == "all":
        same = group_ids[:, None] == group_ids[None, :]
        ok = nonempty[:, None] & nonempty[None, :]
        chosen, rejected = torch.nonzero(same & ok & (r[:, None] > r[None, :]), as_tuple=True)
        return chosen, rejected
    unique, dense = torch.unique(group_ids, return_inverse=True)
    k = unique.numel()
    B = r.numel()
    rows = torch.arange(B)
    top = torch.full((k,), -torch.inf, dtype=r.dtype).scatter_reduce(
        0, dense, torch.where(nonempty, r, torch.full_like(r, -torch.inf)), "amax"
    )
    low = torch.full((k,), torch.inf, dtype=r.dtype).scatter_reduce(
        0, dense, torch.where(nonempty, r, torch.full_like(r, torch.inf)), "amin"
    )

    def first(candidate: torch.Tensor) -> torch.Tensor:  # [K]: lowest row index among candidates (B if none)
        idx = torch.where(candidate, rows, torch.full_like(rows, B))
        return torch.full((k,), B, dtype=torch.long).scatter_reduce(0, dense, idx, "amin")

    best = first(nonempty & (r == top[dense]))
    worst = first(nonempty & (r == low[dense]))
    valid = torch.isfinite(top) & (top > low)  # at least two non-empty rows with different rewards
    return best[valid], worst[valid]


def preference_pairs_loop(
    rewards: list[float], group_ids: list[int], nonempty: list[bool], *, pairing: str = "best_worst"
) -> list[tuple[int, int]]:
    """Readable reference for `preference_pairs`: a list of (chosen, rejected) row indices."""
    pairs = []
    for g in sorted(set(group_ids)):
        members = [i for i in range(len(rewards)) if group_ids[i] == g and nonempty[i]]
        if pairing == "all":
            pairs += [(i, j) for i in members for j in members if rewards[i] > rewards[j]]
            continue
        if not members:
            continue
        best = max(members, key=lambda i: (rewards[i], -i))  # highest reward, then lowest index
        worst = min(members, key=lambda i: (rewards[i], i))  # lowest reward, then lowest index
        if rewards[best] > rewards[worst]:
            pairs.append((best, worst))
    if pairing == "all":
        pairs.sort()
    return pairs


def _sequence_log_ratio(logprobs: torch.Tensor, batch: RolloutBatch, who: str) -> torch.Tensor:
    """h [B] = sum over the loss mask of (log pi_theta - log pi_ref); 0 for an empty row."""
    if batch.ref_logprobs is None:
        raise ValueError(
            f"{who} needs batch.ref_logprobs (a frozen reference model): it declares needs('ref'), "
            "so the trainer loads one; build the batch with ref_logprobs when calling it directly"
        )
    diff = logprobs - batch.ref_logprobs.to(logprobs.dtype)
    return torch.where(batch.loss_mask, diff, torch.zeros_like(diff)).sum(-1)


def _check_beta(beta: float, who: str) -> None:
    if beta <= 0:
        raise ValueError(f"{who}: beta must be > 0, got {beta}")


def _pair_margins(logprobs, batch, *, beta, pairing, who):
    """Sequence log-ratios h [B], pairs (chosen [P], rejected [P]) and margins z [P] = beta (h_w - h_l)."""
    _check_beta(beta, who)
    h = _sequence_log_ratio(logprobs, batch, who)
    chosen, rejected = preference_pairs(batch.rewards, batch.group_ids, batch.loss_mask.any(-1), pairing=pairing)
    return h, chosen, rejected, beta * (h[chosen] - h[rejected])


def _keep_graph(loss: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0 * sum keeps the autograd graph when there is no pair (the loss is then a constant 0)."""
    return loss + 0.0 * torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum()


@torch.no_grad()
def _pair_metrics(h, chosen, rejected, z, batch, beta) -> dict[str, torch.Tensor]:
    groups = torch.unique(batch.group_ids).numel()
    zero = h.new_tensor(0.0)
    has = z.numel() > 0
    return {
        "pairs": h.new_tensor(float(z.numel())),
        "paired_group_fraction": h.new_tensor(torch.unique(batch.group_ids[chosen]).numel() / max(groups, 1)),
        "reward_margin": z.detach().mean() if has else zero,
        "reward_accuracy": (z.detach() > 0).to(h.dtype).mean() if has else zero,
        "chosen_reward": (beta * h.detach()[chosen]).mean() if has else zero,
        "rejected_reward": (beta * h.detach()[rejected]).mean() if has else zero,
    }


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ValueError(
            f"rdpo: the label-flip rate eps must be in [0, 0.5), got {eps}; at eps = 1/2 the labels carry no "
            "information and the correction 1 / (1 - 2 eps) diverges"
        )


def rdpo_pair_loss(z: torch.Tensor, *, eps: float) -> torch.Tensor:
    """rDPO's de-biased logistic loss of margins z [P] (eps = 0 gives DPO's -log sigma(z)).

    [(1 - eps) softplus(-z) - eps softplus(z)] / (1 - 2 eps)   (softplus(-z) = -log sigma(z), stable)
    Unbiased: (1 - eps) l(z) + eps l(-z) = softplus(-z), the clean DPO loss, for any z.
    Paper: "Provably Robust DPO: Aligning Language Models with Noisy Feedback" (arXiv 2403.00409).
    """
    _check_eps(eps)
    return ((1.0 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1.0 - 2.0 * eps)


def dpo_loss_loop(
    seq_logp: list[float], seq_ref: list[float], rewards: list[float], group_ids: list[int], lengths: list[int],
    *, beta: float = 0.1, eps: float = 0.0, pairing: str = "best_worst",
) -> float:
    """Readable reference for the DPO / rDPO batch loss from per-row sequence log-prob sums."""
    pairs = preference_pairs_loop(rewards, group_ids, [n > 0 for n in lengths], pairing=pairing)
    if not pairs:
        return 0.0
    total = 0.0
    for w, l in pairs:
        z = beta * ((seq_logp[w] - seq_ref[w]) - (seq_logp[l] - seq_ref[l]))
        clean = math.log1p(math.exp(-z)) if z > -30 else -z  # -log sigma(z)
        flipped = math.log1p(math.exp(z)) if z < 30 else z  # -log sigma(-z)
        total += ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)
    return total / len(pairs)


# -- DPO / rDPO ---------------------------------------------------------------------------------


@OBJECTIVES.register("dpo")
@needs("whole_groups", "ref")
def dpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    beta: float = 0.1,
    pairing: str = "best_worst",
) -> LossTerms:
    """DPO on pairs drawn from the groups of the RL batch.

    logprobs [B, T] (policy, with grad); uses batch.ref_logprobs [B, T], batch.rewards [B],
    batch.group_ids [B], batch.loss_mask [B, T] -> LossTerms(per_token [B, T]: the batch loss on every
    position; any mean reduction returns it exactly, see the module docstring).
    h_i = sum_t (log pi_theta(y_i,t) - log pi_ref(y_i,t))
    z_p = beta (h_w - h_l);  l_p = -log sigma(z_p);  L = (1/P) sum_p l_p      (P pairs, see `pairing`)
    grad of L wrt each chosen token log-prob: -beta sigma(-z_p) / P; rejected: +beta sigma(-z_p) / P.
    No pair in the batch (every group has equal rewards, groups of one, empty responses): L = 0 and
    a zero gradient. Nothing reads the behaviour log-probs: DPO is off-policy by construction.
    Defaults: beta 0.1 (the paper's common value), pairing best_worst. Recommended reduction:
    token_mean or seq_mean_token_mean (identical here).
    Metrics: pairs, paired_group_fraction, reward_margin (mean z), reward_accuracy (z > 0),
    chosen_reward / rejected_reward (mean beta h).
    Departs from GRPO: no advantage and no ratio to pi_old; a Bradley-Terry loss on reference-relative
    sequence log-ratios of pairs labelled by the outcome rewards.
    Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    (arXiv 2305.18290). Status: confirmed (the standard formula; TRL `loss_type="sigmoid"`); the pairing
    of RL group samples is this library's choice.
    """
    h, chosen, rejected, z = _pair_margins(logprobs, batch, beta=beta, pairing=pairing, who="dpo_loss")
    loss = F.softplus(-z).mean() if z.numel() else h.new_tensor(0.0)
    loss = _keep_graph(loss, logprobs, batch.loss_mask)
    return LossTerms(per_token=loss.expand_as(logprobs), metrics=_pair_metrics(h, chosen, rejected, z, batch, beta))


@OBJECTIVES.register("rdpo")
@needs("whole_groups", "ref")
def rdpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
    pairing: str = "best_worst",
) -> LossTerms:
    """rDPO: DPO de-biased for preference labels flipped at a known rate eps.

    logprobs [B, T]; uses batch.ref_logprobs [B, T], batch.rewards [B], batch.group_ids [B],
    batch.loss_mask -> LossTerms(per_token [B, T]: the batch loss on every position).
    z_p = beta (h_w - h_l) as `dpo_loss`;
    l_p = [(1 - eps)(-log sigma(z_p)) - eps(-log sigma(-z_p))] / (1 - 2 eps);  L = (1/P) sum_p l_p
    Key property: if each observed label is flipped with probability eps, the expected rDPO loss
    equals the clean DPO loss (so its gradient is unbiased); eps = 0 is DPO exactly. The loss can be
    negative for pairs with large margins (it is a de-biased estimate, not a likelihood).
    eps must be in [0, 1/2): at 1/2 the labels carry no information (ValueError). Pairs, empty rows,
    degenerate groups and reductions as `dpo_loss`.
    Defaults: beta 0.1; eps 0.1 (an assumed flip rate: the paper studies several; TRL calls it
    `label_smoothing` with `loss_type="robust"`, default 0). Recommended reduction: token_mean.
    Departs from DPO: the (1 - 2 eps)-normalised combination of the loss under both labels.
    Paper: "Provably Robust DPO: Aligning Language Models with Noisy Feedback" (arXiv 2403.00409).
    Status: confirmed (paper formula; TRL `loss_type="robust"`).
    """
    _check_eps(eps)
    h, chosen, rejected, z = _pair_margins(logprobs, batch, beta=beta, pairing=pairing, who="rdpo_loss")
    loss = rdpo_pair_loss(z, eps=eps).mean() if z.numel() else h.new_tensor(0.0)
    loss = _keep_graph(loss, logprobs, batch.loss_mask)
    metrics = _pair_metrics(h, chosen, rejected, z, batch, beta)
    metrics["flip_rate"] = h.new_tensor(eps)
    return LossTerms(per_token=loss.expand_as(logprobs), metrics=metrics)


# -- From r to Q* --------------------------------------------------------------------------------


def implicit_token_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """DPO's implicit per-token reward r_t = beta (log pi(y_t | s_t) - log pi_ref(y_t | s_t)).

    logprobs [B, T], ref_logprobs [B, T], mask [B, T] bool -> rewards [B, T] (0 off the mask;
    differentiable through logprobs).
    Summed over a response's tokens it is the sequence implicit reward beta log pi(y|x) / pi_ref(y|x);
    the paper shows it equals Q*(s_t, a_t) - V*(s_t) of the token-level soft-Q problem, so the sum
    telescopes to r(x, y) - V*(s_0) (the start value beta log Z(x) cancels within a pair).
    Paper: "From r to Q*: Your Language Model is Secretly a Q-Function" (arXiv 2404.12358).
    Status: reconstructed (the standard result, as objectives spec Sec. 34).
    """
    diff = beta * (logprobs - ref_logprobs.to(logprobs.dtype))
    return torch.where(mask.bool(), diff, torch.zeros_like(diff))


@OBJECTIVES.register("q_star")
@needs("whole_groups", "ref")
def q_star_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    beta: float = 0.1,
    pairing: str = "best_worst",
) -> LossTerms:
    """Token-level DPO (From r to Q*): the DPO loss written over per-token implicit rewards.

    logprobs [B, T]; uses batch.ref_logprobs [B, T], batch.rewards [B], batch.group_ids [B],
    batch.loss_mask [B, T] -> LossTerms(per_token [B, T]: the token-level decomposition below).
    r_{i,t} = beta (log pi - log pi_ref)_{i,t}   (`implicit_token_rewards`);  z_p = sum_t r_w,t - sum_t r_l,t
    L = (1/P) sum_p -log sigma(z_p)              (the same value and gradient as `dpo_loss`)
    What a trainable "From r to Q*" is: the paper proposes no new loss; it proves that DPO already
    fits the token-level soft-Q problem, with r_t = Q*(s_t, a_t) - V*(s_t) the credit of token t.
    This objective is that reading made explicit: per_token is the decomposition
      per_token[i, t] = N * ( c_i r_{i,t} + sg[(share_i - c_i sum_t r_{i,t}) / |y_i|] )
      c_i = sg[dL / d(beta h_i)] (= -sigma(-z_p)/P for a chosen row, +sigma(-z_p)/P for a rejected one),
      share_i = sg[sum of the pair losses of row i] / (2P),   N = number of loss tokens of the batch,
    so with the reduction `token_mean` the value is exactly L and the gradient exactly DPO's, and each
    token's term is its implicit reward weighted by how wrong its pair currently is. Unpaired rows
    get 0. Use `token_mean` (seq_mean_token_mean would re-weight rows by length).
    Metrics: those of `dpo_loss`, plus implicit_token_reward_mean / _abs_max over the loss tokens and
    chosen_token_reward / rejected_token_reward (mean r_t over paired rows' tokens).
    Degenerate cases as `dpo_loss` (no pair: per_token 0, zero gradient).
    Defaults: beta 0.1, pairing best_worst.
    Departs from DPO: only in what per_token shows (token-level credit instead of a broadcast scalar).
    Paper: "From r to Q*: Your Language Model is Secretly a Q-Function" (arXiv 2404.12358).
    Status: reconstructed (the loss is DPO's; the per-token decomposition is this library's reading).
    """
    h, chosen, rejected, z = _pair_margins(logprobs, batch, beta=beta, pairing=pairing, who="q_star_loss")
    mask = batch.loss_mask
    r = implicit_token_rewards(logprobs, batch.ref_logprobs, mask, beta)  # [B, T], with grad
    P = max(z.numel(), 1)
    with torch.no_grad():
        zd = z.detach()
        pair_loss = F.softplus(-zd)
        weight = torch.sigmoid(-zd) / P  # dL / dz_p
        coef = torch.zeros_like(h).index_add(0, chosen, -weight).index_add(0, rejected, weight)
        half = pair_loss / (2 * P)  # each row of a pair carries half of its loss
        share = torch.zeros_like(h).index_add(0, chosen, half).index_add(0, rejected, half)
        lengths = mask.sum(-1).clamp(min=1).to(h.dtype)
        offset = (share - coef * r.detach().sum(-1)) / lengths  # [B]
        n_tokens = mask.sum().clamp(min=1).to(h.dtype)
    per_token = n_tokens * (coef[:, None] * r + offset[:, None])
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    metrics = _pair_metrics(h, chosen, rejected, z, batch, beta)
    with torch.no_grad():
        rd = r.detach()
        paired = torch.zeros_like(mask[:, 0])
        metrics.update(
            implicit_token_reward_mean=masked_mean(rd, mask),
            implicit_token_reward_abs_max=rd.abs().max() if bool(mask.any()) else rd.new_tensor(0.0),
            chosen_token_reward=masked_mean(rd, mask & paired.index_fill(0, chosen, True)[:, None]),
            rejected_token_reward=masked_mean(rd, mask & paired.index_fill(0, rejected, True)[:, None]),
            dpo_loss=pair_loss.mean() if z.numel() else rd.new_tensor(0.0),
        )
    return LossTerms(per_token=per_token, metrics=metrics)


# -- RTO: the DPO model's token log-ratio as a dense PPO reward ---------------------------------


def rto_token_rewards(
    dpo_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    policy_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rm_score: torch.Tensor,
    *,
    beta1: float = 0.05,
    clip: float = 0.05,
    kl_coef: float = 0.01,
) -> torch.Tensor:
    """RTO's dense per-token reward for PPO.

    dpo_logprobs [B, T] (sampled tokens under the DPO-trained model), ref_logprobs [B, T],
    policy_logprobs [B, T] (the sampling policy), mask [B, T] bool, rm_score [B] -> rewards [B, T]
    float32, 0 off the mask; no gradient (rewards are data).
    r_t^dpo  = clip(beta1 (log pi_dpo - log pi_ref)_t, -clip, clip)          (scale, then clip)
    reward_t = r_t^dpo - kl_coef (log pi - log pi_ref)_t + 1[t = last loss token] clamp(rm_score, -10, 10)
    The KL term is the k1 estimate, as OpenRLHF's `compute_reward`. clip <= 0 disables the clip
    (as the official flag). A row without loss tokens gets no reward (its RM score has no token).
    Defaults (official `train_rto_llama_8b.sh`): beta1 (dpo_reward_scale) 0.05, clip
    (dpo_reward_clip) 0.05, kl_coef (init_kl_coef) 0.01.
    Paper: "DPO Meets PPO: Reinforced Token Optimization for RLHF" (arXiv 2404.18922).
    Status: confirmed (official code zkshan2002/RTO: experience_maker `_compute_dpo_rewards`,
    models/utils `compute_reward`; credit spec Sec. 17b).
    """
    with torch.no_grad():
        m = mask.bool()
        dpo = beta1 * (dpo_logprobs.float() - ref_logprobs.float())
        if clip > 0:
            dpo = dpo.clamp(-clip, clip)
        kl = policy_logprobs.float() - ref_logprobs.float()
        reward = dpo - kl_coef * kl
        T = m.shape[1]
        positions = torch.arange(T).expand_as(m)
        last = torch.where(m, positions, torch.full_like(positions, -1)).max(-1).values  # [B], -1 if empty
        at_last = (positions == last[:, None]) & m
        reward = reward + at_last.float() * rm_score.float().clamp(-RM_SCORE_CLAMP, RM_SCORE_CLAMP)[:, None]
        return torch.where(m, reward, torch.zeros_like(reward))


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("dpo", "DPO logistic loss on beta-scaled reference log-ratio margins of (best, worst) pairs drawn "
          "from each group by outcome reward (beta 0.1)",
          "Direct Preference Optimization (arXiv 2305.18290)", "confirmed",
          "groups of >= 2 with different rewards; reference model"),
    Entry("rdpo", "DPO de-biased for a known label-flip rate eps (TRL robust; beta 0.1, eps 0.1)",
          "Provably Robust DPO (arXiv 2403.00409)", "confirmed",
          "groups of >= 2 with different rewards; reference model"),
    Entry("q_star", "DPO as token-level soft-Q learning: per_token holds each token's implicit reward "
          "beta log pi/pi_ref weighted by its pair's error (same loss and gradient as dpo)",
          "From r to Q*: Your Language Model is Secretly a Q-Function (arXiv 2404.12358)", "reconstructed",
          "groups of >= 2 with different rewards; reference model"),
]
