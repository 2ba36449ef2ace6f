"""Advantage shaping: functions that adjust already computed advantages with a behavioural signal.

ASPO shapes the advantage, not the reward, so the shaping cannot be washed out (or amplified) by the
group normalisation and can be bounded relative to the correctness advantage. `aspo_shape_advantages`
is the pure shaping of any [B] advantages; the registered estimator `aspo` applies it to GRPO's
advantages, reading the first-call positions from `CreditInputs.extras` (in training: the position of
the first tool call, `<call>`, in each completion; see `first_call_positions` below).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, provides_extras
from credo.credit.outcome import grpo_advantages


def aspo_shape_advantages(
    advantages: torch.Tensor,
    correct: torch.Tensor,
    first_call_positions: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    delta: float = 1.0,
    clip_k: float = 0.5,
    eps: float = 1e-6,
) -> torch.Tensor:
    """ASPO: move the advantage of correct responses toward early code calls, bounded by the advantage.

    advantages [B] (e.g. GRPO's), correct [B] bool, first_call_positions [B] float (position of the
    first code call, e.g. token index / length; NaN = no call), group_ids [B] -> advantages [B] float32.
    P_g = correct responses of group g that made a call;  z_i = (p_i - mean_P p) / std_P p (population std)
    A_i <- A_i + clip(-delta z_i, -clip_k |A_i|, clip_k |A_i|)     for i in P_g
    Earlier-than-average calls (z < 0) raise the advantage. With clip_k < 1 the shaping never flips
    the sign of A_i nor exceeds clip_k of its size; a correct response in an all-correct group
    (A = 0) is not shaped. Responses outside P_g are unchanged; a group with fewer than two such
    responses, or all at the same position (std < eps), is unchanged.
    Defaults: delta 1.0, clip_k 0.5: the paper's values are unconfirmed (reconstruction).
    Departs from GRPO: a clipped, advantage-level bonus for early tool use among correct responses.
    Paper: "Understanding Tool-Integrated Reasoning" (Lin & Xu 2025, arXiv 2508.19201), ASPO =
    Advantage Shaping Policy Optimization; not Asymmetric Importance Sampling PO.
    Status: reconstructed (only "ASPO modifies the advantage directly" is confirmed; the form
    above is the spec's hypothesis). Loop reference: `aspo_shape_advantages_loop`.
    """
    if not 0.0 <= clip_k < 1.0:
        raise ValueError(f"aspo_shape_advantages: clip_k must be in [0, 1) so the sign never flips, got {clip_k}")
    a = advantages.to(torch.float64)
    pos = first_call_positions.to(torch.float64)
    shaped = correct.bool() & torch.isfinite(pos)
    dense = torch.unique(group_ids, return_inverse=True)[1]
    k = int(dense.max()) + 1 if dense.numel() else 0
    zeros = torch.zeros(k, dtype=torch.float64)
    n = zeros.index_add(0, dense, shaped.to(torch.float64))
    p = torch.where(shaped, pos, torch.zeros_like(pos))
    mean = zeros.index_add(0, dense, p) / n.clamp(min=1.0)
    sq = zeros.index_add(0, dense, torch.where(shaped, (pos - mean[dense]) ** 2, torch.zeros_like(pos)))
    std = (sq / n.clamp(min=1.0)).sqrt()
    ok = shaped & (n[dense] >= 2) & (std[dense] >= eps)
    z = torch.where(ok, (pos - mean[dense]) / std[dense].clamp(min=eps), torch.zeros_like(pos))
    bound = clip_k * a.abs()
    bonus = torch.maximum(torch.minimum(-delta * z, bound), -bound)
    return torch.where(ok, a + bonus, a).to(torch.float32)


def aspo_shape_advantages_loop(
    advantages: Sequence[float],
    correct: Sequence[bool],
    first_call_positions: Sequence[float],
    group_ids: Sequence[int],
    *,
    delta: float = 1.0,
    clip_k: float = 0.5,
    eps: float = 1e-6,
) -> list[float]:
    """Readable reference for `aspo_shape_advantages`."""
    out = list(map(float, advantages))
    for g in set(group_ids):
        members = [i for i, gg in enumerate(group_ids) if gg == g
                   and correct[i] and math.isfinite(first_call_positions[i])]
        if len(members) < 2:
            continue
        ps = [first_call_positions[i] for i in members]
        mean = sum(ps) / len(ps)
        std = (sum((p - mean) ** 2 for p in ps) / len(ps)) ** 0.5
        if std < eps:
            continue
        for i in members:
            z = (first_call_positions[i] - mean) / std
            bound = clip_k * abs(out[i])
            out[i] = out[i] + max(-bound, min(bound, -delta * z))
    return out


@CREDIT.register("aspo")
@token_level(needs=("extras",))
def aspo_advantages(inputs: CreditInputs, *, delta: float = 1.0, clip_k: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """ASPO: GRPO advantages of correct responses shifted toward early tool calls, clipped by |A|.

    inputs: rewards [B] (correct = reward > 0), group_ids [B], loss_mask [B, T],
    extras["first_call_positions"] [B] float (relative position of the first tool call in [0, 1];
    NaN = no call) -> advantages [B, T] float32, each row's shaped advantage on its loss tokens.
    A = grpo(R);  A_i <- A_i + clip(-delta z_i, -clip_k |A_i|, clip_k |A_i|) over the correct callers of a
    group (z: standardised call position), as `aspo_shape_advantages`. Defaults delta 1.0, clip_k 0.5.
    Paper: "Understanding Tool-Integrated Reasoning" (Lin & Xu 2025, arXiv 2508.19201).
    Status: reconstructed (only "ASPO modifies the advantage directly" is confirmed). Loop reference:
    `aspo_shape_advantages_loop` over `grpo_advantages_loop`.
    """
    inputs.require("extras.first_call_positions", method="aspo")
    pos = torch.as_tensor(inputs.extras["first_call_positions"], dtype=torch.float64)
    if tuple(pos.shape) != tuple(inputs.rewards.shape):
        raise ValueError(f"aspo: extras['first_call_positions'] has shape {tuple(pos.shape)}, expected [B] = "
                         f"{tuple(inputs.rewards.shape)}")
    base = grpo_advantages(inputs.rewards, inputs.group_ids)
    shaped = aspo_shape_advantages(base, inputs.rewards > 0, pos, inputs.group_ids, delta=delta, clip_k=clip_k, eps=eps)
    return shaped[:, None].to(torch.float32) * inputs.loss_mask.to(torch.float32)


# -- what training hands this estimator (credit/providers.py) ----------------------------------------

TOOL_CALL_MARKER = "<call>"


@provides_extras(aspo_advantages)
def first_call_positions(ctx: StepContext) -> dict:
    """first_call_positions [B]: where the first tool call (TOOL_CALL_MARKER) starts in each completion,
    as a fraction of the completion's text length; NaN when it makes no call."""
    out = []
    for c in ctx.completions:
        at = c.text.find(TOOL_CALL_MARKER)
        out.append(at / max(len(c.text), 1) if at >= 0 else float("nan"))
    return {"first_call_positions": torch.tensor(out, dtype=torch.float64)}


CATALOG = [
    Entry("aspo", "GRPO advantages of correct responses shifted toward early tool calls, bounded by clip_k |A|",
          "Understanding Tool-Integrated Reasoning (arXiv 2508.19201)", "reconstructed",
          "groups; first tool-call positions (extras; training: '<call>' in the completion)"),
]
