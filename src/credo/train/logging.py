"""Run-folder outputs: metrics.jsonl (one line per step, flushed), the learning-curve PNG."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value is honest
    return value


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most the current line."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def reopen(self) -> None:
        """Follow the path again after the file was replaced (resume rewrites it atomically)."""
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a metrics file. A torn last line (the process was killed while writing
    it) is dropped; a broken line anywhere else is corruption and raises."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
    return rows


def rewrite_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the metrics file atomically with `rows` (used when resuming from a checkpoint)."""
    tmp = Path(path).with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def plot_curves(metrics_path: Path, out_path: Path, evals: dict[str, float] | None = None) -> None:
    """A 2 x 3 PNG of the RL learning curves (reward, accuracy, length, KL, clip fraction, entropy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if r.get("phase") == "rl"]
    panels = [
        ("reward_mean", "reward (mean)"),
        ("accuracy", "train accuracy"),
        ("response_length", "response length (tokens)"),
        ("approx_kl", "approx KL (old vs new)"),
        ("clip_fraction", "clip fraction"),
        ("entropy", "entropy (nats/token)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.flat, panels):
        xs = [r["step"] for r in rows if r.get(key) is not None]
        ys = [r[key] for r in rows if r.get(key) is not None]
        ax.plot(xs, ys, marker=".", linewidth=0.8, alpha=0.45, label="per step")
        if len(ys) >= 5:  # a trailing moving average: single RL steps are noisy
            window = max(3, len(ys) // 10)
            smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                      for i in range(len(ys))]
            ax.plot(xs, smooth, linewidth=2, label=f"mean of last {window}")
            ax.legend(fontsize=7, loc="best")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    if evals:
        text = "held-out accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in evals.items())
        fig.suptitle(text)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


class LineProgress:
    """The progress report when stderr is not a terminal (a log file, CI, nohup): one plain line every
    `every` steps and at the end, instead of tqdm's carriage-return redraws, which a file keeps as one
    endless line. Same calls as the tqdm bar the trainer uses (update, set_postfix, close)."""

    def __init__(self, total: int, desc: str, *, every: int | None = None, stream=None):
        import sys

        self.total, self.desc, self.n = total, desc, 0
        self.every = every or max(1, total // 10)
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, str] = {}
        self.start = time.perf_counter()
        self._last = -1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}
        if self.n % self.every == 0 or self.n == self.total:
            self._line()

    def _line(self) -> None:
        if self.n == self._last:
            return
        self._last = self.n
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        elapsed = time.perf_counter() - self.start
        print(f"{self.desc} {self.n}/{self.total} ({elapsed:.0f} s){' ' + extra if extra else ''}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.n and self.n != self._last:
            self._line()


class JobClock:
    """The whole job's ETA across its stages, shown beside each stage's progress bar (`job_eta=`).

    units: what is left of each kind of work ({"warmup": steps, "rl": steps, "eval": evaluations}).
    remaining = sum over kinds of (units left x the mean seconds one unit of that kind took so far).
    A kind with units left that has not been timed yet (RL steps during the warm-up) makes the ETA
    unknown ("?" in `text`) rather than a guess; from the first RL step on every kind left is timed.
    """

    def __init__(self, units: dict[str, int]):
        self.left = {k: max(0, int(v)) for k, v in units.items()}
        self.spent = {k: 0.0 for k in units}
        self.count = {k: 0 for k in units}

    def done(self, kind: str, seconds: float) -> None:
        """One unit of `kind` finished in `seconds`."""
        self.left[kind] = max(0, self.left.get(kind, 0) - 1)
        self.spent[kind] = self.spent.get(kind, 0.0) + seconds
        self.count[kind] = self.count.get(kind, 0) + 1

    def eta(self) -> float | None:
        """Seconds left (None while a kind with units left is untimed)."""
        total = 0.0
        for kind, left in self.left.items():
            if left == 0:
                continue
            if not self.count.get(kind):
                return None
            total += left * self.spent[kind] / self.count[kind]
        return total

    def text(self) -> str:
        eta = self.eta()
        if eta is None:
            return "?"
        seconds = int(round(eta))
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
