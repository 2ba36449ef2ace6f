"""D3S's sample-level down-sampling (`rl.sample_selection = "d3s"`): in each group, train on the subset of
rollouts whose advantages have the largest variance, with a keep ratio that grows over training.

Paper: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
Optimization" (D3S, arXiv 2509.22115). Its token-level half is the estimator `d3s_token`
(credit/token_signals.py); the two compose (`rl.credit d3s_token` with `rl.sample_selection d3s`).
Status: reconstructed (spec: objectives.md section 25; the paper's code is supplementary material
only). What is assumed, and why:

- Advantages are the step's (the estimator's, computed on the whole group); the selection only decides
  which rollouts the update trains on (their loss mask), so a kept rollout's advantage is the same as
  without selection. A row's advantage is its mean over its loss tokens (= A_i for outcome estimators).
- Subset size m = max(2, ceil(keep_ratio(t) * n)) of a group's n trainable rollouts (2: a variance
  needs two values); a group with n <= m keeps everything.
- The max-variance subset of size m of real numbers is found exactly: sorted, an optimal subset is
  always the k smallest plus the m - k largest values for some k (moving any inner value outwards
  does not lower the variance), so `max_variance_subset` tries every k (ties: the smaller k). With
  binary rewards this takes equal numbers of positives and negatives when it can, as the spec says.
- Schedule ("starts aggressive, relaxes"): keep_ratio(t) = start + (end - start) * min(1, t / (ramp *
  steps)), linear from `start` 0.5 to `end` 1.0 over the first `ramp` 0.5 of the RL steps (the
  ratios are not in the abstract; these defaults are the reconstruction's).
- A zero-variance group has nothing informative: it keeps its rollouts (their advantage is 0 and
  they carry no policy gradient anyway), so the selection never invents signal.

Pure functions (`keep_ratio_at`, `max_variance_subset`, `d3s_keep`) with loop references; the trainer
calls `D3SSelection.__call__` after credit (train/rl.py) and narrows `batch.loss_mask` by the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError


def keep_ratio_at(step: int, steps: int, *, start: float = 0.5, end: float = 1.0, ramp: float = 0.5) -> float:
    """The schedule: linear from start to end over the first ramp * steps RL steps, then end.

    >>> keep_ratio_at(0, 100), keep_ratio_at(25, 100), keep_ratio_at(50, 100), keep_ratio_at(99, 100)
    (0.5, 0.75, 1.0, 1.0)
    """
    span = ramp * max(steps, 1)
    progress = 1.0 if span <= 0 else min(1.0, step / span)
    return start + (end - start) * progress


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def max_variance_subset(values: Sequence[float], m: int) -> list[int]:
    """Indices (ascending) of a size-m subset of `values` with the largest population variance.

    >>> max_variance_subset([0.0, 1.0, 0.2, 0.9, 0.5], 2)
    [0, 1]
    >>> max_variance_subset([0.0, 1.0, 0.2, 0.9, 0.5], 4)
    [0, 1, 2, 3]
    """
    n = len(values)
    if m >= n:
        return list(range(n))
    order = sorted(range(n), key=lambda i: (values[i], i))
    best, best_var = None, -1.0
    for k in range(m + 1):  # k smallest + (m - k) largest
        chosen = order[:k] + order[n - (m - k):] if m - k > 0 else order[:k]
        var = _variance([values[i] for i in chosen])
        if var > best_var + 1e-12:
            best, best_var = chosen, var
    return sorted(best)


def max_variance_loop(values: Sequence[float], m: int) -> float:
    """The largest variance of any size-m subset, by brute force (reference for the tests; small n only).
    Subsets of equal variance are equally good, so the tests compare variances, not indices."""
    from itertools import combinations

    m = min(m, len(values))
    return max(_variance([values[i] for i in c]) for c in combinations(range(len(values)), m))


def d3s_keep(row_advantages: torch.Tensor, group_ids: torch.Tensor, trainable: torch.Tensor,
             keep_ratio: float) -> torch.Tensor:
    """keep [B] bool: per group, the max-variance subset of its trainable rows (module docstring).

    row_advantages [B] float, group_ids [B], trainable [B] bool (rows with loss tokens)."""
    keep = torch.ones(len(row_advantages), dtype=torch.bool)
    for g in torch.unique(group_ids).tolist():
        rows = [i for i in torch.nonzero(group_ids == g).flatten().tolist() if bool(trainable[i])]
        values = [float(row_advantages[i]) for i in rows]
        if len(rows) < 3 or max(values) - min(values) == 0.0:
            continue  # nothing to choose (m >= n) or nothing informative (zero variance)
        m = max(2, math.ceil(keep_ratio * len(rows) - 1e-9))
        chosen = set(max_variance_subset(values, m))
        for j, i in enumerate(rows):
            keep[i] = j in chosen
    return keep


@dataclass
class D3SSelection:
    """rl.sample_selection "d3s": the schedule bound to the run's step count."""

    steps: int
    start: float = 0.5
    end: float = 1.0
    ramp: float = 0.5

    def __post_init__(self):
        if not (0.0 < self.start <= 1.0 and 0.0 < self.end <= 1.0):
            raise CredoError(f"rl.sample_selection_params: start and end must be in (0, 1], got {self.start}, {self.end}")
        if not 0.0 <= self.ramp <= 1.0:
            raise CredoError(f"rl.sample_selection_params: ramp must be in [0, 1], got {self.ramp}")

    def __call__(self, step: int, advantages: torch.Tensor, loss_mask: torch.Tensor,
                 group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """advantages [B, T], loss_mask [B, T] bool, group_ids [B] -> (keep [B] bool, metrics)."""
        counts = loss_mask.sum(1)
        rows = torch.where(counts > 0, (advantages * loss_mask).sum(1) / counts.clamp(min=1), torch.zeros(len(counts)))
        ratio = keep_ratio_at(step, self.steps, start=self.start, end=self.end, ramp=self.ramp)
        keep = d3s_keep(rows, group_ids, counts > 0, ratio)
        return keep, {"d3s_keep_ratio": ratio, "d3s_dropped_rows": float((~keep & (counts > 0)).sum())}


SELECTIONS = {"d3s": D3SSelection}


def make_sample_selection(name: str, params: dict, steps: int):
    """None for "none"; else the rule bound to its parameters (unknown names and parameters are errors)."""
    if name == "none":
        if params:
            raise CredoError("rl.sample_selection_params is set but rl.sample_selection is \"none\"")
        return None
    if name not in SELECTIONS:
        raise CredoError(f"unknown rl.sample_selection {name!r}; valid: none, {', '.join(SELECTIONS)}")
    try:
        return SELECTIONS[name](steps=steps, **params)
    except TypeError as exc:
        raise CredoError(f"rl.sample_selection_params for {name!r}: {exc}") from None


CATALOG = [
    Entry("d3s", "per group, train on the max-Var(A) subset of rollouts; keep ratio 0.5 -> 1.0 over training",
          "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy "
          "Optimization (arXiv 2509.22115)", "reconstructed", "groups, advantages"),
]
