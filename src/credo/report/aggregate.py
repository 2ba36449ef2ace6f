"""Aggregation across seeds: curves with bands, the final table, and the stated test.

Pure functions over plain numbers (the run folders are read in `report/runs.py`).

- `seed_stats(values) -> (mean, std, n)`: std is the sample standard deviation (ddof = 1; 0.0 for one
  seed), the spread the bands and the table show.
- `curve_by_step(series)`: series = one {step: value} per seed; at each step the stats over the seeds
  that have a finite value there (a seed still running, or a step that logged no value, leaves a gap
  rather than a made-up number).
- `curve_by_time(series, points)`: series = one [(seconds, value)] per seed; each seed is linearly
  interpolated onto a common grid from 0 to the earliest end time among the seeds (so every grid point
  is inside every seed's curve), then `seed_stats` per point.
- `welch(a, b)`: Welch's two-sided t-test (unequal variances; `scipy.stats.ttest_ind(equal_var=False)`).
  Degenerate cases: fewer than two values in either arm -> None (no spread to compare with); both arms
  without spread -> p = 1.0 for equal means, 0.0 otherwise.
- `final_table(arms)`: one row per arm of the finished runs' final numbers, and each arm's test
  against the arm with the best mean held-out accuracy ("exceeds the seed spread" = p < alpha).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from credo.report.runs import RunRecord, final_accuracy, start_accuracy

ALPHA = 0.05  # the test's level: a difference "exceeds the seed spread" when p < ALPHA
TAIL = 0.1  # train reward and response length in the table: the mean of the last 10% of RL steps


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def seed_stats(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; (nan, nan, 0) when there is none."""
    xs = _finite(values)
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = 0.0 if len(xs) == 1 else math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return mean, std, len(xs)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values, ignoring non-finite ones (all non-finite -> nan)."""
    if window <= 1:
        return [float(v) for v in values]
    out = []
    for i in range(len(values)):
        xs = _finite(values[max(0, i - window + 1): i + 1])
        out.append(sum(xs) / len(xs) if xs else math.nan)
    return out


def curve_by_step(series: Sequence[dict[int, float]]) -> dict[str, list]:
    """{"x": steps, "mean", "std", "n"} over the union of steps (see the module docstring)."""
    steps = sorted({s for one in series for s in one})
    out: dict[str, list] = {"x": [], "mean": [], "std": [], "n": []}
    for s in steps:
        mean, std, n = seed_stats([one.get(s) for one in series])
        if n:
            out["x"].append(s)
            out["mean"].append(mean)
            out["std"].append(std)
            out["n"].append(n)
    return out


def curve_by_time(series: Sequence[Sequence[tuple[float, float]]], points: int = 60) -> dict[str, list]:
    """{"x": seconds, "mean", "std", "n"} on a common grid (see the module docstring)."""
    cleaned = []
    for one in series:
        pairs = sorted((float(t), float(v)) for t, v in one if v is not None and math.isfinite(float(v)))
        if pairs:
            cleaned.append(pairs)
    if not cleaned:
        return {"x": [], "mean": [], "std": [], "n": []}
    end = min(p[-1][0] for p in cleaned)
    start = max(p[0][0] for p in cleaned)
    grid = [end] if end <= start else list(np.linspace(start, end, points))
    interpolated = [np.interp(grid, [t for t, _ in p], [v for _, v in p]) for p in cleaned]
    out: dict[str, list] = {"x": [float(g) for g in grid], "mean": [], "std": [], "n": []}
    for i in range(len(grid)):
        mean, std, n = seed_stats([float(curve[i]) for curve in interpolated])
        out["mean"].append(mean)
        out["std"].append(std)
        out["n"].append(n)
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float] | None:
    """Welch's two-sided t-test of mean(a) != mean(b): {"t", "df", "p"}, or None with < 2 values in an arm."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa, na), (mb, sb, nb) = seed_stats(a), seed_stats(b)
    va, vb = sa * sa / na, sb * sb / nb
    if va + vb == 0.0:  # no spread on either side: the difference is exact
        same = ma == mb
        return {"t": 0.0 if same else math.copysign(math.inf, ma - mb), "df": math.nan, "p": 1.0 if same else 0.0}
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))  # Welch-Satterthwaite
    return {"t": float(result.statistic), "df": float(df), "p": float(result.pvalue)}


def _tail_mean(run: RunRecord, key: str) -> float | None:
    values = _finite([r.get(key) for r in run.rl_rows])
    if not values:
        return None
    k = max(1, int(math.ceil(len(values) * TAIL)))
    return sum(values[-k:]) / k


def _mean_of(run: RunRecord, key: str) -> float | None:
    values = _finite([r.get(key) for r in run.rl_rows])
    return sum(values) / len(values) if values else None


def run_numbers(run: RunRecord) -> dict[str, float | None]:
    """The per-run numbers the table aggregates."""
    final, start = final_accuracy(run), start_accuracy(run)
    return {
        "heldout_accuracy": final,
        "gain": None if final is None or start is None else final - start,
        "train_reward": _tail_mean(run, "reward_mean"),
        "response_length": _tail_mean(run, "response_length"),
        "s_per_step": _mean_of(run, "step_time"),
        "rl_seconds": sum(_finite([r.get("step_time") for r in run.rl_rows])) or None,
    }


COLUMNS = [  # (key, heading, format of one number)
    ("heldout_accuracy", "held-out accuracy", "{:.3f}"),
    ("gain", "gain over start", "{:+.3f}"),
    ("train_reward", "train reward (last 10%)", "{:.3f}"),
    ("response_length", "response length (last 10%)", "{:.1f}"),
    ("s_per_step", "s / RL step", "{:.2f}"),
]


def final_table(arms: dict[str, list[RunRecord]], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """One row per arm, in the given order: for each column {"mean", "std", "n", "values"}, plus
    "seeds" (of finished runs), and "test" = Welch against the best arm's held-out accuracy (None for
    the best arm itself or when a side has < 2 seeds), with "exceeds" = p < alpha."""
    rows = []
    for arm, runs in arms.items():
        done = [r for r in runs if final_accuracy(r) is not None]
        numbers = [run_numbers(r) for r in done]
        row: dict[str, Any] = {"arm": arm, "seeds": [r.seed for r in done], "runs": len(runs)}
        for key, _, _ in COLUMNS:
            values = [n[key] for n in numbers]
            mean, std, n = seed_stats(values)
            row[key] = {"mean": mean, "std": std, "n": n, "values": values}
        rows.append(row)
    scored = [r for r in rows if r["heldout_accuracy"]["n"]]
    if scored:
        best = max(scored, key=lambda r: r["heldout_accuracy"]["mean"])
        for row in rows:
            row["best"] = row is best
            test = None if row is best else welch(row["heldout_accuracy"]["values"], best["heldout_accuracy"]["values"])
            if test is not None:
                test["exceeds"] = test["p"] < alpha
                test["against"] = best["arm"]
            row["test"] = test
    return rows
