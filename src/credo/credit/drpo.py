"""DRPO's decoupled positive weighting as a credit estimator (outcome level, per response).

DRPO (objective `drpo` in `objectives/discriminative.py`) re-weights correct responses toward shorter
ones with weights normalised within the positives, so length never turns a correct answer's signal
negative. This module exposes the same weighting as an advantage, for any PPO-style objective: each
response's advantage is the gradient weight DRPO's objective puts on its length-normalised score.
It needs response lengths (the loss mask) and behaviour log-probs, which the outcome signature
rewards [B] -> [B] lacks, so it is token-level in form but constant over each response.
"""

from __future__ import annotations

import math

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.objectives.discriminative import drpo_positive_weights

F64 = torch.float64


@CREDIT.register("drpo")
@token_level(needs=("logprobs",))
def drpo_advantages(
    inputs: CreditInputs,
    *,
    lam: float = 0.1,
    tau: float | None = 10.0,
    max_length: int | None = None,
    threshold: float | None = None,
    normalize_by_valid: bool = False,
) -> torch.Tensor:
    """DRPO advantage: length-weighted positives (normalised within positives) vs soft-max negatives.

    Reads rewards [B] (binary), group_ids [B], loss_mask [B, T], logprobs [B, T] (behaviour) ->
    advantages [B, T] float32, constant over each response's loss-mask tokens.
    s_i   = (1/|y_i|) sum_t log pi_old(y_{i,t})                                   (logL score)
    w_i   = exp((1 - |y_i|/L_pad)/lam) / sum_{j in P_q} exp((1 - |y_j|/L_pad)/lam)   i in P_q
    J_q   = sum_{i in P_q} w_i s_i - tau log mean_{j in N_q} exp(s_j / tau)      (DRPO's objective)
    A_i   = (B_ne / N_prompts) dJ_q/ds_i:  w_i on positives, -softmax_{N_q}(s_j / tau) on negatives
            (tau None: -1/|N_q|, DisCO-b's mean, the tau -> inf limit)
    B_ne = responses with at least one token, N_prompts = groups in the batch (normalize_by_valid:
    groups with a positive and a negative). With the `grpo` objective (kl_coef 0) and reduction
    `seq_mean_token_mean`, the first (on-policy, ratio 1) gradient equals DRPO's main-term gradient
    exactly; DRPO's KL squared-hinge trust region is not part of an advantage (use objective `drpo`
    for the full method). Positives: R == 1, negatives: R == 0 (threshold t: R > t / R <= t); empty
    responses are neither; a group without both gets A = 0. L_pad = max_length, else the longest
    response of the batch.
    Defaults (official run_drpo_1.5b_8k.sh): lam 0.1, tau 10.
    Departs from GRPO: no std normalisation; among correct answers the shorter get more weight, and the
    hardest negatives (highest score) the largest push-down.
    Paper: "DRPO: Efficient Reasoning via Decoupled Reward Policy Optimization" (arXiv 2510.04474).
    Status: confirmed for the weights (official `compute_policy_loss_drpo`); the advantage form (the
    objective's score gradient) is our derivation. Loop reference: `drpo_advantages_loop`.
    """
    inputs.require("logprobs", method="drpo")
    mask, r = inputs.loss_mask, inputs.rewards
    lengths = mask.sum(-1)
    nonempty = lengths > 0
    pos, neg = (r == 1.0, r == 0.0) if threshold is None else (r > threshold, r <= threshold)
    pos, neg = pos & nonempty, neg & nonempty
    unique, dense = torch.unique(inputs.group_ids, return_inverse=True)
    k = unique.numel()
    zeros = torch.zeros(k, dtype=F64)
    n_pos, n_neg = zeros.index_add(0, dense, pos.to(F64)), zeros.index_add(0, dense, neg.to(F64))
    valid = ((n_pos > 0) & (n_neg > 0))[dense]
    w = drpo_positive_weights(mask, pos, inputs.group_ids, lam=lam, max_length=max_length).to(F64)
    logp = torch.where(mask, inputs.logprobs.to(F64), torch.zeros_like(inputs.logprobs, dtype=F64))
    s = logp.sum(-1) / lengths.clamp(min=1).to(F64)
    if tau is None:
        neg_w = 1.0 / n_neg[dense].clamp(min=1.0)
    else:
        z = torch.where(neg, s / tau, torch.full_like(s, -torch.inf))
        top = torch.full((k,), -torch.inf, dtype=F64).scatter_reduce(0, dense, z, "amax")
        e = torch.where(neg, torch.exp(z - torch.where(torch.isfinite(top), top, 0.0)[dense]), torch.zeros_like(s))
        neg_w = e / zeros.index_add(0, dense, e)[dense].clamp(min=torch.finfo(F64).tiny)
    grad = torch.where(pos, w, torch.where(neg, -neg_w, torch.zeros_like(s)))
    grad = torch.where(valid, grad, torch.zeros_like(grad))
    n_prompts = float(((n_pos > 0) & (n_neg > 0)).sum()) if normalize_by_valid else float(k)
    a = grad * float(nonempty.sum()) / max(n_prompts, 1.0)
    return torch.where(mask, a[:, None], torch.zeros_like(logp)).to(torch.float32)


def drpo_advantages_loop(inputs: CreditInputs, *, lam: float = 0.1, tau: float | None = 10.0,
                         max_length: int | None = None, threshold: float | None = None,
                         normalize_by_valid: bool = False) -> torch.Tensor:
    """Readable reference for `drpo_advantages`."""
    B, T = inputs.loss_mask.shape
    lengths = [int(inputs.loss_mask[b].sum()) for b in range(B)]
    scores = [sum(float(inputs.logprobs[b, t]) for t in range(T) if inputs.loss_mask[b, t]) / max(lengths[b], 1)
              for b in range(B)]
    rewards, groups = [float(v) for v in inputs.rewards], [int(g) for g in inputs.group_ids]
    is_pos = [n > 0 and (r == 1.0 if threshold is None else r > threshold) for n, r in zip(lengths, rewards)]
    is_neg = [n > 0 and (r == 0.0 if threshold is None else r <= threshold) for n, r in zip(lengths, rewards)]
    pad = max_length if max_length is not None else max(max(lengths), 1)
    grads, n_valid = [0.0] * B, 0
    for g in dict.fromkeys(groups):
        P = [b for b in range(B) if groups[b] == g and is_pos[b]]
        N = [b for b in range(B) if groups[b] == g and is_neg[b]]
        if not P or not N:
            continue
        n_valid += 1
        raw = {b: math.exp((1 - lengths[b] / pad) / lam) for b in P}
        for b in P:
            grads[b] = raw[b] / sum(raw.values())
        for b in N:
            grads[b] = -(1.0 / len(N) if tau is None else
                         math.exp(scores[b] / tau) / sum(math.exp(scores[j] / tau) for j in N))
    n_prompts = n_valid if normalize_by_valid else len(set(groups))
    scale = sum(1 for n in lengths if n > 0) / max(n_prompts, 1)
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            if inputs.loss_mask[b, t]:
                out[b, t] = grads[b] * scale
    return out


# The catalog row of this module's method (`credo list`).
CATALOG = [
    Entry("drpo", "DRPO's length-weighted positives (normalised within positives) vs soft-max negatives, "
          "as a per-response advantage; pair with seq_mean_token_mean",
          "DRPO: Decoupled Reward Policy Optimization (arXiv 2510.04474)", "confirmed",
          "groups, binary rewards, logprobs (behaviour), response lengths"),
]
