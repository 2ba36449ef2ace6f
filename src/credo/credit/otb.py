"""verl's optimal token baseline (OTB): a per-position baseline weighted by cumulative path variance.

Peer: verl-project/verl commit 1dda039b9c6311889a9c9a26040677e1254814f9, `verl/trainer/ppo/core_algos.py`
`compute_optimal_token_baseline_advantage` (registered "optimal_token_baseline"), documented in verl's
docs/algo/otb.md, which cites the paper as arXiv 2602.07078 ("Optimal Token Baseline"; title as verl's
docs give it). The formula is the variance-minimising baseline of the policy gradient, B* = E[G W] / E[W],
with W the squared score-function norm of the logits ("realized energy"), accumulated per token.
"""

from __future__ import annotations

import torch

from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, provides_extras
from credo.entry import Entry


@CREDIT.register("optimal_token_baseline")
@token_level(needs=("logprobs", "extras"))
def optimal_token_baseline(inputs: CreditInputs, *, handle_zero_tail: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """inputs.rewards [B], group_ids [B], loss_mask [B, T], logprobs [B, T] (behaviour),
    extras["sum_pi_squared"] [B, T] (sum over the vocabulary of pi^2 at each position) -> advantages [B, T].

    G_t  = R (the outcome reward sits on the last token, so the reward-to-go is R at every loss token)
    w_t  = 1 - 2 pi_t + sum_v pi_v^2           (||grad log pi_t||^2 of the logits, pi_t = exp(logprob))
    W_t  = sum_{j <= t, masked} w_j           (cumulative path variance)
    B_t  = sum_{i in group} G_{i,t} W_{i,t} M_{i,t} / (sum_{i in group} W_{i,t} M_{i,t} + eps)   per position t
    A_t  = (G_t - B_t) M_t; a group of one row has B = 0.
    handle_zero_tail: when one row of a group is strictly the longest, its baseline is 0 past the
    second-longest row's length (only it has tokens there, so B_t = G_t would zero its advantage).
    Defaults: handle_zero_tail True, eps 1e-8 (verl). verl's optional rollout IS weights (W scaled by
    rho^2) are not ported. Positions are aligned as in verl only for left-aligned responses: credo's rows
    put the prompt first, so position t here is the response's t-th token shifted by the prompt length;
    the baseline is pooled over rows at the same absolute position. (verl pools at the same response
    index; with equal prompt lengths in a group, as for one prompt's group, the two agree.)
    Paper: Optimal Token Baseline (arXiv 2602.07078, as verl docs/algo/otb.md cites it).
    Status: confirmed (verl 1dda039), without rollout IS weights.
    """
    inputs.require("logprobs", "extras.sum_pi_squared", method="optimal_token_baseline")
    mask = inputs.loss_mask
    m = mask.to(torch.float64)
    G = inputs.rewards.to(torch.float64)[:, None] * m
    pi = torch.exp(inputs.logprobs.to(torch.float64))
    w = 1.0 - 2.0 * pi + inputs.extras["sum_pi_squared"].to(torch.float64)
    W = (w * m).cumsum(-1)
    baselines = torch.zeros_like(G)
    for g in torch.unique(inputs.group_ids):
        rows = (inputs.group_ids == g).nonzero(as_tuple=True)[0]
        if rows.numel() == 1:
            continue
        num = (G[rows] * W[rows] * m[rows]).sum(0)
        den = (W[rows] * m[rows]).sum(0) + eps
        baselines[rows] = (num / den)[None, :].expand(rows.numel(), -1)
        if handle_zero_tail:
            # verl indexes the response by length; credo's rows carry the prompt first, so the cut is at
            # the position of the longest row's (second-longest length)-th loss token
            lengths = m[rows].sum(-1)
            ordered = torch.sort(lengths).values
            longest, second = ordered[-1], ordered[-2]
            at = (lengths == longest).nonzero(as_tuple=True)[0]
            if at.numel() == 1 and longest > second:
                row = rows[int(at[0])]
                positions = mask[row].nonzero(as_tuple=True)[0]
                baselines[row, int(positions[int(second)]):] = 0.0
    return ((G - baselines) * m).to(torch.float32)


@provides_extras(optimal_token_baseline)
@torch.no_grad()
def sum_pi_squared(ctx: StepContext) -> dict:
    """sum_pi_squared [B, T]: sum_v pi(v | prefix)^2 of the policy at each loss token (0 elsewhere),
    from one no-grad forward with the full log-softmax (at the sampling temperature)."""
    from credo.logprobs import policy_outputs
    from credo.rollout.torch_engine import autocast_context

    src, batch = ctx.sources, ctx.batch
    out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
    for rows in torch.arange(len(batch)).split(src.micro_batch_size):
        part = batch.select(rows)
        with autocast_context(src.autocast_dtype, part.tokens.device):
            po = policy_outputs(src.model, part.tokens, part.attention_mask, part.loss_mask,
                                temperature=src.temperature, needs=frozenset({"full_logprobs"}))
        s = torch.exp(2.0 * po.full_logprobs.float()).sum(-1)  # [N] at the scored positions
        block = torch.zeros(part.tokens.shape, dtype=torch.float32)
        block[part.loss_mask.bool()] = s.cpu()
        out[rows, : part.tokens.shape[1]] = block
    return {"sum_pi_squared": out}


CATALOG = [
    Entry("optimal_token_baseline", "per-position group baseline weighted by cumulative path variance "
          "1 - 2 pi + sum pi^2 (verl OTB; rollout IS weights not ported)", "OTB (arXiv 2602.07078)",
          "confirmed", "groups; logprobs; full-vocabulary probabilities"),
]
