"""Shared pieces of the turn-level credit estimators (`turns.py`, `turn_reward_credit.py`).

Vectorized helpers (float64 group statistics over (row, turn) pairs, discounted accumulation over
turns, state-group ids from step keys) and the plain-Python helpers their loop references use.
"""

from __future__ import annotations

import math
from difflib import SequenceMatcher
from typing import Any, Hashable

import torch

from credo.credit.base import CreditInputs, broadcast_steps, num_steps

F64 = torch.float64

# -- shared pieces ---------------------------------------------------------------------------------


def turn_table(inputs: CreditInputs, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rewards [B, K] float64 (0 where non-finite or past a row's turns), valid [B, K] bool, K_b [B].

    K = the most turns of any row (from step_ids); step_rewards must have at least K columns.
    """
    inputs.require("step_ids", "step_rewards", method=method)
    k_b = num_steps(inputs.step_ids)
    k = int(k_b.max()) if k_b.numel() else 0
    have = inputs.step_rewards.shape[1]
    if have < k:
        raise ValueError(f"{method}: step_rewards has {have} columns but step_ids has rows with {k} turns")
    r = inputs.step_rewards[:, :k].to(F64)
    valid = torch.arange(k)[None, :] < k_b[:, None]
    return torch.where(valid & torch.isfinite(r), r, torch.zeros_like(r)), valid, k_b


def dense_ids(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Arbitrary ids [N] -> dense 0..n-1 [N] and n."""
    unique, dense = torch.unique(ids, return_inverse=True)
    return dense, unique.numel()


def group_moments(x: torch.Tensor, seg: torch.Tensor, n: int):
    """Per group of `seg`: count [n], mean [n], sum of squared deviations [n], flat [n] (all equal)."""
    zeros = torch.zeros(n, dtype=x.dtype)
    count = zeros.index_add(0, seg, torch.ones_like(x))
    mean = zeros.index_add(0, seg, x) / count.clamp(min=1.0)
    ss = zeros.index_add(0, seg, (x - mean[seg]) ** 2)
    high = torch.full((n,), -torch.inf, dtype=x.dtype).scatter_reduce(0, seg, x, "amax")
    low = torch.full((n,), torch.inf, dtype=x.dtype).scatter_reduce(0, seg, x, "amin")
    return count, mean, ss, high == low


def znorm(x: torch.Tensor, seg: torch.Tensor, n: int, *, eps: float, scale: bool = True,
          single: str = "zero", std: str = "unbiased", var_floor: float = 0.0) -> torch.Tensor:
    """(x - mean_g) / (std_g + eps) within the groups `seg` [N] of the values x [N] (float64).

    scale=False: x - mean_g only. std "unbiased" (N - 1) or "population" (N), sqrt(var + var_floor).
    single: a group of one gives "zero" (its mean is itself) or "raw" (mean 0, std 1: verl's GRPO
    convention, x / (1 + eps) when scaled). A zero-variance group of two or more gives exactly 0.
    """
    if x.numel() == 0:
        return x
    count, mean, ss, flat = group_moments(x, seg, n)
    denom = (count - 1.0) if std == "unbiased" else count
    sd = torch.sqrt(ss / denom.clamp(min=1.0) + var_floor)
    out = x - mean[seg]
    if scale:
        out = out / (sd[seg] + eps)
    out = torch.where(flat[seg], torch.zeros_like(out), out)  # a group of one is flat too
    if single == "raw":
        out = torch.where(count[seg] == 1, x / (1.0 + eps) if scale else x, out)
    return out


def discounted(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """out[:, k] = x[:, k] + gamma * out[:, k + 1] over the turn axis of x [B, K] (0 past a row's turns)."""
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=x.dtype)
    for k in reversed(range(x.shape[1])):
        running = x[:, k] + gamma * running
        out[:, k] = running
    return out


def to_hashable(x: Any) -> Hashable:
    """Observation -> hashable key (verl-agent `to_hashable`): lists / arrays / tensors -> tuples, dicts
    -> sorted item tuples, sets -> frozensets; strings and numbers unchanged."""
    if isinstance(x, (str, bytes, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return tuple(sorted((k, to_hashable(v)) for k, v in x.items()))
    if isinstance(x, (set, frozenset)):
        return frozenset(to_hashable(v) for v in x)
    if hasattr(x, "tolist"):  # torch / numpy arrays and numpy scalars
        return to_hashable(x.tolist())
    if isinstance(x, (list, tuple)):
        return tuple(to_hashable(v) for v in x)
    try:
        hash(x)
    except TypeError as exc:
        raise TypeError(f"step key of type {type(x).__name__} cannot be made hashable") from exc
    return x


def _similar(a: Any, b: Any, threshold: float) -> bool:
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError("similarity-based anchor grouping supports text observations only (str step keys)")
    return SequenceMatcher(None, a, b).ratio() >= threshold


def state_group_ids(inputs: CreditInputs, valid: torch.Tensor, method: str,
                    similarity_threshold: float | None = None) -> torch.Tensor:
    """Dense state-group id [N] of every valid (row, turn) pair, row-major: pairs of the same prompt
    group whose step keys are equal (or, with a threshold, text-similar: each key joins the first
    cluster, in row-major order, whose first key has difflib ratio >= threshold)."""
    inputs.require("step_keys", method=method)
    if similarity_threshold is not None and not 0.0 < similarity_threshold < 1.0:
        raise ValueError(f"{method}: similarity_threshold must be in (0, 1), got {similarity_threshold}")
    clusters: dict[Any, list[tuple[Any, int]]] = {}  # group id -> [(representative key, id)]
    exact: dict[tuple[Any, Hashable], int] = {}
    out: list[int] = []
    for b, k in valid.nonzero().tolist():
        keys = inputs.step_keys[b] if b < len(inputs.step_keys) else []
        if k >= len(keys):
            raise ValueError(f"{method}: step_keys[{b}] has {len(keys)} keys but row {b} has a turn {k}")
        g = int(inputs.group_ids[b])
        if similarity_threshold is None:
            out.append(exact.setdefault((g, to_hashable(keys[k])), len(exact)))
            continue
        found = next((cid for rep, cid in clusters.get(g, []) if _similar(keys[k], rep, similarity_threshold)), None)
        if found is None:
            found = sum(len(c) for c in clusters.values())  # the next fresh cluster id
            clusters.setdefault(g, []).append((keys[k], found))
        out.append(found)
    return torch.tensor(out, dtype=torch.long)


def place(per_pair: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Values of the valid pairs [N] (row-major) -> [B, K], 0 elsewhere."""
    out = torch.zeros(valid.shape, dtype=F64)
    out[valid] = per_pair.to(F64)
    return out


def finish(per_turn: torch.Tensor, inputs: CreditInputs) -> torch.Tensor:
    return broadcast_steps(per_turn, inputs.step_ids, inputs.loss_mask)


# -- loop-reference helpers (plain Python) -----------------------------------------------------------


def rows_of(inputs: CreditInputs) -> list[dict]:
    """Plain-Python view of each row: group, K_b, turn rewards (non-finite -> 0), outcome reward."""
    rows = []
    for b in range(inputs.loss_mask.shape[0]):
        ids = [int(s) for s in inputs.step_ids[b].tolist()]
        k_b = max(ids + [-1]) + 1
        raw = inputs.step_rewards[b].tolist()[:k_b]
        rows.append({"g": int(inputs.group_ids[b]), "K": k_b, "R": float(inputs.rewards[b]),
                     "r": [v if math.isfinite(v) else 0.0 for v in raw]})
    return rows


def broadcast_loop(per_turn: list[list[float]], inputs: CreditInputs) -> torch.Tensor:
    """Token loop: token t of row b gets per_turn[b][step_ids[b, t]] on the loss mask, else 0."""
    B, T = inputs.loss_mask.shape
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            k = int(inputs.step_ids[b, t])
            if bool(inputs.loss_mask[b, t]) and k >= 0:
                out[b, t] = per_turn[b][k]
    return out


def mean_std_loop(values: list[float], unbiased: bool = True) -> tuple[float, float]:
    mean = sum(values) / len(values)
    denom = max(len(values) - 1, 1) if unbiased else len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / denom) ** 0.5


def znorm_loop(value: float, members: list[float], *, eps: float, scale: bool = True, single: str = "zero",
               unbiased: bool = True, var_floor: float = 0.0) -> float:
    """Readable `znorm` for one value given its group's members (itself included)."""
    if len(members) == 1:
        return (value / (1.0 + eps) if scale else value) if single == "raw" else 0.0
    if max(members) == min(members):
        return 0.0
    mean, sd = mean_std_loop(members, unbiased)
    sd = (sd**2 + var_floor) ** 0.5
    return (value - mean) / (sd + eps) if scale else value - mean


def returns_loop(rewards: list[float], gamma: float) -> list[float]:
    out, running = [0.0] * len(rewards), 0.0
    for k in reversed(range(len(rewards))):
        running = rewards[k] + gamma * running
        out[k] = running
    return out


def state_keys_loop(inputs: CreditInputs, rows: list[dict]) -> list[list[tuple]]:
    """(group, hashable key) of every turn, for loop references (exact matching)."""
    return [[(row["g"], to_hashable(inputs.step_keys[b][k])) for k in range(row["K"])] for b, row in enumerate(rows)]
