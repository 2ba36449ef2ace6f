"""The report's figures (matplotlib, Agg): learning curves against RL step and against wall time with
bands over seeds, and the final held-out accuracy per arm.

Every panel draws, per arm, the mean over seeds and a band of +- one sample standard deviation
(`report/aggregate.py`). Per-step training metrics are smoothed per seed with a trailing mean first
(`window`; RL steps are noisy). Wall time is the cumulative `step_time` of the RL steps (evaluations
and the warm-up are not in it), so arms whose steps cost differently (DAPO's refill rounds) line up
by the compute they used.
"""

from __future__ import annotations

import math
from pathlib import Path

from credo.report.aggregate import curve_by_step, curve_by_time, smooth
from credo.report.runs import RunRecord, held_out_points

PANELS = [  # (metrics key or "heldout", title)
    ("reward_mean", "train reward (mean)"),
    ("heldout", "held-out accuracy"),
    ("entropy", "entropy (nats / token)"),
    ("response_length", "response length (tokens)"),
    ("approx_kl", "approx KL (old vs new)"),
    ("clip_fraction", "clip fraction"),
]


def step_series(run: RunRecord, key: str, window: int) -> dict[int, float]:
    """{step: smoothed value} of one run; the held-out panel takes the evaluation points unsmoothed."""
    if key == "heldout":
        return dict(held_out_points(run))
    rows = [r for r in run.rl_rows if "step" in r]
    values = smooth([math.nan if r.get(key) is None else float(r[key]) for r in rows], window)
    return {int(r["step"]): v for r, v in zip(rows, values) if math.isfinite(v)}


def step_clock(run: RunRecord) -> dict[int, float]:
    """{step: seconds of RL after that many steps} (0 -> 0.0): the wall-time axis."""
    clock, total = {0: 0.0}, 0.0
    for r in run.rl_rows:
        total += float(r.get("step_time") or 0.0)
        clock[int(r["step"]) + 1] = total
    return clock


def time_series(run: RunRecord, key: str, window: int) -> list[tuple[float, float]]:
    """[(seconds, value)]: a step's training metrics at the end of that step, held-out points at the
    time of the step count they were taken after."""
    clock = step_clock(run)
    if key == "heldout":
        return [(clock[s], v) for s, v in held_out_points(run) if s in clock]
    return [(clock[s + 1], v) for s, v in step_series(run, key, window).items() if s + 1 in clock]


def auto_window(arms: dict[str, list[RunRecord]]) -> int:
    """A tenth of the longest run's RL steps (at least 1)."""
    longest = max((len(r.rl_rows) for runs in arms.values() for r in runs), default=0)
    return max(1, longest // 10)


def _band(ax, curve: dict, color, label: str) -> None:
    if not curve["x"]:
        return
    lo = [m - s for m, s in zip(curve["mean"], curve["std"])]
    hi = [m + s for m, s in zip(curve["mean"], curve["std"])]
    marker = "o" if len(curve["x"]) <= 12 else None
    ax.plot(curve["x"], curve["mean"], color=color, label=label, linewidth=1.6, marker=marker, markersize=3)
    ax.fill_between(curve["x"], lo, hi, color=color, alpha=0.18, linewidth=0)


def plot_curves(arms: dict[str, list[RunRecord]], path: Path, *, axis: str, window: int) -> Path:
    """A 2 x 3 figure of PANELS against `axis` ("step" or "time"), one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for i, (arm, runs) in enumerate(arms.items()):
            if axis == "step":
                curve = curve_by_step([step_series(r, key, window) for r in runs])
            else:
                curve = curve_by_time([time_series(r, key, window) for r in runs])
            _band(ax, curve, colors(i % 10), f"{arm} (n={len(runs)})")
        ax.set_title(title)
        ax.ticklabel_format(axis="y", useOffset=False)  # (an offset like "1e-5+10.79" hides the values)
        ax.set_xlabel("RL step" if axis == "step" else "RL wall time (s)")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:  # (the reward panel may be empty while every run is still warming up)
        handles, labels = axes.flat[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9)
    smoothing = f"; training metrics: trailing mean of {window} steps" if window > 1 else ""
    fig.suptitle(f"mean over seeds, band = +- 1 sample std{smoothing}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_final(table: list[dict], path: Path) -> Path:
    """Final held-out accuracy per arm: mean +- std as a bar, every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(table) + 2), 4))
    for i, row in enumerate(table):
        stats = row["heldout_accuracy"]
        if not stats["n"]:
            continue
        ax.bar(i, stats["mean"], yerr=stats["std"], color=colors(i % 10), alpha=0.6, capsize=4)
        values = [v for v in stats["values"] if v is not None]
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(table)), [r["arm"] for r in table], rotation=20, ha="right")
    ax.set_ylabel("held-out accuracy after RL")
    ax.set_title("held-out accuracy after RL\n(bar: mean +- std over seeds; dots: seeds)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
