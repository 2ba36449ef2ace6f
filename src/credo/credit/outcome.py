"""Outcome-level advantage estimators: rewards [B] + group ids [B] -> advantages [B].

Each vectorized estimator has a readable loop reference beside it (tests check they agree).
"""

from __future__ import annotations

import torch

from credo.credit.base import CREDIT
from credo.entry import Entry


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids [B] to dense indices 0..K-1 [B]."""
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


@CREDIT.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """Group-normalised outcome advantage (GRPO).

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased (N - 1) as in verl;
    scale_by_std=False gives Dr.GRPO's A_i = R_i - mean_g R.
    A group of one sample gets mean 0 and std 1 (its advantage is its raw reward, as verl).
    A zero-variance group gets A = 0 exactly.
    Paper: "DeepSeekMath" (arXiv 2402.03300); Dr.GRPO: "Understanding R1-Zero-Like Training: A
    Critical Perspective" (arXiv 2503.20783). Status: confirmed (verl `compute_grpo_outcome_advantage`).
    """
    rewards = rewards.to(torch.float64)
    dense, k = _group_index(group_ids)
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, rewards)
    mean = total / count
    centred = rewards - mean[dense]
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, centred**2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))
    single = count[dense] == 1
    mean_b = torch.where(single, torch.zeros_like(rewards), mean[dense])
    std_b = torch.where(single, torch.ones_like(rewards), std[dense])
    adv = rewards - mean_b
    if scale_by_std:
        adv = adv / (std_b + eps)
    # A zero-variance group gets exactly 0 (a float mean of equal values can be off by an ulp,
    # which the std division would blow up to ~1e-10 instead of 0).
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amin")
    flat = (high[dense] == low[dense]) & ~single
    return torch.where(flat, torch.zeros_like(adv), adv).to(torch.float32)


def grpo_advantages_loop(
    rewards: list[float], group_ids: list[int], *, eps: float = 1e-6, scale_by_std: bool = True
) -> list[float]:
    """Readable reference for `grpo_advantages` (same semantics, plain Python)."""
    out = []
    for r, g in zip(rewards, group_ids):
        members = [rr for rr, gg in zip(rewards, group_ids) if gg == g]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / len(members)
            std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
        a = r - mean
        out.append(a / (std + eps) if scale_by_std else a)
    return out


# -- shared pieces of the estimators below ------------------------------------------------------


def _group_centred(rewards: torch.Tensor, group_ids: torch.Tensor, *, single_mean: str) -> torch.Tensor:
    """R_i - mean_{group(i)} R in float64 [B]; exactly 0 in a zero-variance group of two or more.

    single_mean: what a group of one sample subtracts: "zero" (verl's convention: A = R) or
    "self" (ROLL's reshape-based group mean: A = 0).
    """
    dense, k = _group_index(group_ids)
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(rewards))
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, rewards) / count
    single = count[dense] == 1
    base = mean[dense]
    if single_mean == "zero":
        base = torch.where(single, torch.zeros_like(rewards), base)
    centred = rewards - base
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, rewards, "amin")
    flat = (high[dense] == low[dense]) & ~single  # a float mean of equal values can be off by an ulp
    return torch.where(flat, torch.zeros_like(centred), centred)


def _whiten(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps), var unbiased (N - 1) as verl's `masked_whiten`; float64 [N].

    Fewer than two values, or all values equal, give exactly 0 (verl raises on a single value).
    """
    if x.numel() < 2 or bool(x.max() == x.min()):
        return torch.zeros_like(x)
    mean = x.mean()
    var = ((x - mean) ** 2).sum() / (x.numel() - 1)
    return (x - mean) / torch.sqrt(var + eps)


def _whiten_loop(values: list[float], eps: float) -> list[float]:
    if len(values) < 2 or max(values) == min(values):
        return [0.0] * len(values)
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [(v - mean) / (var + eps) ** 0.5 for v in values]


def _members(rewards: list[float], group_ids: list[int], g: int) -> list[float]:
    return [r for r, gg in zip(rewards, group_ids) if gg == g]


# -- Dr.GRPO -------------------------------------------------------------------------------------


@CREDIT.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO advantage: the group mean removed, no std division.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    A_i = R_i - mean_g R  (a group of one: A = R; a zero-variance group: A = 0 exactly, no eps needed).
    Same as `grpo_advantages(..., scale_by_std=False)`, registered under the method's name.
    Departs from GRPO: no division by the group std (which up-weights too-easy / too-hard prompts).
    Paper: "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv 2503.20783).
    Status: confirmed (verl `norm_adv_by_std_in_grpo: False`). Loop reference:
    `grpo_advantages_loop(..., scale_by_std=False)`.
    """
    return grpo_advantages(rewards, group_ids, scale_by_std=False)


# -- RLOO ----------------------------------------------------------------------------------------


@CREDIT.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: the leave-one-out mean of the other samples of the group is the baseline.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    A_i = R_i - (1/(G-1)) sum_{j != i} R_j = G/(G-1) (R_i - mean_g R).
    A group of one has no other sample: A = R (no baseline). A zero-variance group: A = 0 exactly.
    The baseline excludes the sample itself, so it is independent of R_i (unbiased gradient).
    Departs from GRPO: leave-one-out mean instead of mean / std; the loss is the same PPO surrogate
    (use the "grpo" objective: verl's "vanilla" loss).
    Paper: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback
    in LLMs" (arXiv 2402.14740). Status: confirmed (verl `compute_rloo_outcome_advantage`).
    """
    r = rewards.to(torch.float64)
    dense, k = _group_index(group_ids)
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones_like(r))[dense]
    centred = _group_centred(r, group_ids, single_mean="zero")  # R - mean (R itself for a single)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1.0), torch.ones_like(count))
    return (scale * centred).to(torch.float32)


def rloo_advantages_loop(rewards: list[float], group_ids: list[int]) -> list[float]:
    """Readable reference for `rloo_advantages`."""
    out = []
    for i, (r, g) in enumerate(zip(rewards, group_ids)):
        others = [rr for j, (rr, gg) in enumerate(zip(rewards, group_ids)) if gg == g and j != i]
        out.append(r - sum(others) / len(others) if others else r)
    return out


# -- REINFORCE++ and REINFORCE++-baseline ---------------------------------------------------------


@CREDIT.register("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ (outcome reward, gamma = 1): the reward whitened over the whole batch, no groups.

    rewards [B] float, group_ids [B] long (unused: kept for the common signature) -> advantages [B] float32.
    A_i = (R_i - mean_batch R) / sqrt(var_batch R + eps),  var unbiased (N - 1);  eps = 1e-8 (verl).
    With the outcome reward on the last token and gamma = 1 every token's return is R_i, so this is
    verl's estimator except that each sequence counts once in the batch mean / variance; verl whitens
    over tokens, weighting sequence i by its length |y_i| and using N - 1 = (token count - 1) in the
    unbiased variance (the [B] -> [B] signature has no lengths).
    The token-level form (gamma < 1, KL in the reward) is `reinforce_pp_token_advantages`.
    A batch of one, or all-equal rewards: A = 0.
    Departs from GRPO: batch-level whitening instead of a per-group baseline; no group needed.
    Paper: "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (arXiv 2501.03262). Status: confirmed (verl `compute_reinforce_plus_plus_outcome_advantage`).
    """
    return _whiten(rewards.to(torch.float64), eps).to(torch.float32)


def reinforce_pp_advantages_loop(rewards: list[float], group_ids: list[int], *, eps: float = 1e-8) -> list[float]:
    """Readable reference for `reinforce_pp_advantages`."""
    return _whiten_loop(list(rewards), eps)


@CREDIT.register("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the whole batch.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    c_i = R_i - mean_g R  (a group of one: mean 0, as verl);  A = (c - mean_batch c) / sqrt(var_batch c + eps)
    Each sequence counts once in the batch statistics (verl weights by response length; see
    `reinforce_pp_advantages`). A zero-variance group gives c = 0, which whitening maps to
    -mean_batch(c) / std: 0 when no group of one shifts the batch mean. All c equal: A = 0.
    Departs from GRPO: the group std is replaced by the batch std (robust to zero-variance groups).
    Paper: "REINFORCE++" (arXiv 2501.03262).
    Status: confirmed (verl `compute_reinforce_plus_plus_baseline_outcome_advantage`).
    """
    centred = _group_centred(rewards.to(torch.float64), group_ids, single_mean="zero")
    return _whiten(centred, eps).to(torch.float32)


def reinforce_pp_baseline_advantages_loop(
    rewards: list[float], group_ids: list[int], *, eps: float = 1e-8
) -> list[float]:
    """Readable reference for `reinforce_pp_baseline_advantages`."""
    centred = []
    for r, g in zip(rewards, group_ids):
        members = _members(rewards, group_ids, g)
        if len(members) == 1:
            centred.append(r)
        elif max(members) == min(members):
            centred.append(0.0)
        else:
            centred.append(r - sum(members) / len(members))
    return _whiten_loop(centred, eps)


def reinforce_pp_token_advantages(
    token_rewards: torch.Tensor, loss_mask: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++ in its general token-level form (not registered: the trainer's credit is [B] -> [B]).

    token_rewards [B, T] float (outcome reward on the last completion token, optionally minus
    beta * KL_t on every token), loss_mask [B, T] bool -> advantages [B, T] float32, 0 off the mask.
    Over the loss tokens only: G_t = r_t + gamma G_next, G_next = G at the next loss token (0 after
    the last); a masked position (prompt, padding, a tool / environment token between turns) is
    skipped, not a step: the running return is carried over it unchanged and its reward is dropped,
    so the outcome reaches the tokens before a tool response. A = (G - mean) / sqrt(var + eps) over
    all masked tokens of the batch (unbiased var). Fewer than two masked tokens, or all returns
    equal: A = 0.
    Status: confirmed (verl 0.9.1 `compute_reinforce_plus_plus_outcome_advantage`: "for observation
    tokens (mask=0): skip - carry running_return through unchanged"; `masked_whiten`. verl up to
    0.8.0.dev reset the return at every masked position instead).
    """
    rewards = token_rewards.to(torch.float64)
    mask = loss_mask.bool()
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=torch.float64)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = torch.where(m, rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(m, running, torch.zeros_like(running))
    adv = torch.zeros_like(returns)
    adv[mask] = _whiten(returns[mask], eps)
    return adv.to(torch.float32)


def reinforce_pp_token_advantages_loop(
    token_rewards: list[list[float]], loss_mask: list[list[bool]], *, gamma: float = 1.0, eps: float = 1e-8
) -> list[list[float]]:
    """Readable reference for `reinforce_pp_token_advantages`: each row's loss tokens taken out,
    the discounted return over them, put back."""
    returns = []
    for row_r, row_m in zip(token_rewards, loss_mask):
        running, row = 0.0, [0.0] * len(row_r)
        for t in reversed([t for t, m in enumerate(row_m) if m]):
            running = row_r[t] + gamma * running
            row[t] = running
        returns.append(row)
    flat = [g for row, m in zip(returns, loss_mask) for g, mm in zip(row, m) if mm]
    white = iter(_whiten_loop(flat, eps))
    return [[next(white) if mm else 0.0 for mm in m] for m in loss_mask]


# -- Lite PPO --------------------------------------------------------------------------------------


@CREDIT.register("lite_ppo")
def lite_ppo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Lite PPO advantage: group-mean baseline, batch-std scale.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    A_i = (R_i - mean_{group(i)} R) / (std_batch R + eps),  std unbiased over all B rewards (torch.std).
    A group of one subtracts its own reward (ROLL reshapes to [-1, G] and takes the row mean), so it
    gets A = 0, unlike the verl-style estimators here. A zero-variance group: A = 0 exactly; a batch
    of one: std := 0. The batch std is rarely 0, so no group is blown up by a tiny group std.
    Departs from GRPO: the std is over the batch, not the group.
    Paper: "Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (arXiv 2508.08221).
    Status: confirmed (ROLL `reward_norm`: norm_mean_type=group, norm_std_type=batch, eps 1e-6).
    """
    r = rewards.to(torch.float64)
    centred = _group_centred(r, group_ids, single_mean="self")
    std = r.std() if r.numel() > 1 else r.new_tensor(0.0)
    return (centred / (std + eps)).to(torch.float32)


def lite_ppo_advantages_loop(rewards: list[float], group_ids: list[int], *, eps: float = 1e-6) -> list[float]:
    """Readable reference for `lite_ppo_advantages`."""
    n = len(rewards)
    mean_all = sum(rewards) / n
    std = (sum((r - mean_all) ** 2 for r in rewards) / (n - 1)) ** 0.5 if n > 1 else 0.0
    out = []
    for r, g in zip(rewards, group_ids):
        members = _members(rewards, group_ids, g)
        centred = 0.0 if max(members) == min(members) else r - sum(members) / len(members)
        out.append(centred / (std + eps))
    return out


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("grpo", "group mean / std normalised outcome reward (scale_by_std=False: Dr.GRPO)",
          "DeepSeekMath (arXiv 2402.03300)", "confirmed", "groups"),
    Entry("dr_grpo", "group mean removed, no std division",
          "Understanding R1-Zero-Like Training (arXiv 2503.20783)", "confirmed", "groups"),
    Entry("rloo", "leave-one-out group mean baseline (group of one: A = R); loss: objective grpo",
          "Back to Basics: Revisiting REINFORCE Style Optimization (arXiv 2402.14740)", "confirmed", "groups"),
    Entry("reinforce_pp", "outcome reward whitened over the batch (gamma = 1, sequences weighted equally); "
          "loss: objective grpo",
          "REINFORCE++ (arXiv 2501.03262)", "confirmed", "nothing"),
    Entry("reinforce_pp_baseline", "group mean removed, then whitened over the batch; loss: objective grpo",
          "REINFORCE++ (arXiv 2501.03262)", "confirmed", "groups"),
    Entry("lite_ppo", "group mean removed, divided by the batch std (group of one: A = 0)",
          "Tricks or Traps? A Deep Dive into RL for LLM Reasoning (arXiv 2508.08221)", "confirmed", "groups"),
]
