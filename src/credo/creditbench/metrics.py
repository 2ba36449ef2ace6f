"""Credit metrics: how an estimator's advantages [B, T] compare with the exact ones.

Units are steps (chain slots, or multi-turn turns): unit (b, k) for every k < n_steps[b].
    Â_u  = mean of the estimator's advantage over the loss tokens of the unit (a step-level estimator
           broadcast over its tokens gives back its step value)
    A*_u = Q(s, a) - V(s) of the unit (the sum of its exact token advantages)
A unit is decisive when its choice matters (max_a Q - min_a Q > 1e-9), filler otherwise (A* = 0).

- decisive_mass = sum_decisive |Â_u| / sum_all |Â_u|     (NaN when every Â_u is 0, or no filler exists)
- spearman = Spearman rank correlation of Â_u and A*_u over all units (average ranks for ties;
             0 when either side is constant)
- sign_error = share of units with A*_u != 0 where sign(Â_u) != sign(A*_u); Â_u = 0 counts as an error
               (no credit is not the right credit). NaN when no unit has A* != 0.
- filler_credit = share of filler units with non-negligible credit: |Â_u| > 0.1 * mean_decisive |Â_u|
                  (> 1e-6 when the decisive mean is 0). NaN when there is no filler unit.
- scale = mean |Â_u| (with a fixed learning rate it sets the step size of training: read sample
          efficiency together with it).
A GRPO-style outcome estimator puts the same value on every unit of a row, so its decisive_mass is
exactly (decisive units) / (units) per row with nonzero advantage.
"""

from __future__ import annotations

import math

import numpy as np

from credo.creditbench.env import Sample


def unit_values(adv: np.ndarray, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Â_u, A*_u, decisive_u), each [N] over all units (b, k) with k < n_steps[b]."""
    B, K = sample.step_adv.shape
    ok = sample.loss_mask & (sample.step_ids >= 0)
    rows = np.broadcast_to(np.arange(B)[:, None], ok.shape)[ok]
    steps = sample.step_ids[ok]
    total = np.zeros((B, K))
    count = np.zeros((B, K))
    np.add.at(total, (rows, steps), np.asarray(adv, dtype=np.float64)[ok])
    np.add.at(count, (rows, steps), 1.0)
    units = np.arange(K)[None, :] < sample.n_steps[:, None]
    est = np.where(count > 0, total / np.maximum(count, 1.0), 0.0)
    return est[units], sample.step_adv[units], sample.step_decisive[units]


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (as scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the average ranks; 0 when either input is constant or has < 2 values."""
    if len(x) < 2:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(np.sum(rx**2)) * float(np.sum(ry**2)))
    return float(np.sum(rx * ry) / den) if den > 0 else 0.0


def credit_metrics(adv: np.ndarray, sample: Sample, *, tol: float = 1e-9) -> dict[str, float]:
    est, true, decisive = unit_values(adv, sample)
    mag = np.abs(est)
    total = mag.sum()
    has_filler = bool((~decisive).any())
    nan = float("nan")
    mass = float(mag[decisive].sum() / total) if total > 0 and has_filler else nan
    signed = np.abs(true) > tol
    sign_error = float(np.mean(np.sign(est[signed]) != np.sign(true[signed]))) if signed.any() else nan
    if has_filler:
        ref = float(mag[decisive].mean()) if decisive.any() else 0.0
        thresh = 0.1 * ref if ref > 0 else 1e-6
        filler = float(np.mean(mag[~decisive] > thresh))
    else:
        filler = nan
    return {"decisive_mass": mass, "spearman": spearman(est, true), "sign_error": sign_error,
            "filler_credit": filler, "scale": float(mag.mean()) if len(mag) else 0.0}
