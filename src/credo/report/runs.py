"""Reading run folders for reports: finished, failed or still running.

A run folder (`train/run.py`) holds `config.json`, `metrics.jsonl` (one JSON line per step, flushed) and,
once finished, `summary.json`. A report may be built at any time: a run still going has no summary and
perhaps a torn last metrics line (dropped, as `read_metrics` does); its held-out scores are the eval
rows written so far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credo.errors import CredoError
from credo.train.logging import read_metrics


@dataclass
class RunRecord:
    """One run as a report sees it.

    arm: the label it is compared under (a compare's arm name, else its recipe or objective + credit).
    rows: metrics.jsonl in order. summary: summary.json, None while the run is going (or if it failed).
    status: "finished", "running" (no summary yet) or "failed" (a compare saw the process fail).
    """

    folder: Path
    arm: str
    seed: int
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    status: str = "finished"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rl_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("phase") == "rl"]

    @property
    def steps_total(self) -> int:
        return int(self.config.get("rl", {}).get("steps", 0))


def default_label(config: dict[str, Any]) -> str:
    """A run's arm when nobody named it: its recipe, else objective/credit."""
    rl = config.get("rl", {})
    if rl.get("recipe"):
        return str(rl["recipe"])
    return f"{rl.get('objective', '?')}/{rl.get('credit', '?')}"


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CredoError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def load_run(folder: str | Path, arm: str | None = None, status: str | None = None) -> RunRecord:
    """Read one run folder. Raises CredoError naming the folder (or file and line) when it is not a run."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CredoError(f"{folder}: not a run folder (no config.json)")
    config = _json_file(folder / "config.json")
    if not isinstance(config, dict):
        raise CredoError(f"{folder / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    metrics = folder / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if metrics.is_file():
        try:
            rows = read_metrics(metrics)
        except json.JSONDecodeError as exc:
            raise CredoError(f"{metrics}: a broken line before the last one ({exc.msg}); the file is damaged") \
                from exc
    summary = _json_file(folder / "summary.json") if (folder / "summary.json").is_file() else None
    if status is None:
        status = "finished" if summary is not None else "running"
    seed = int(config.get("run", {}).get("seed", 0))
    return RunRecord(folder, arm or default_label(config), seed, config, rows, summary, status)


def held_out_points(run: RunRecord) -> list[tuple[int, float]]:
    """(RL step, held-out accuracy) of every evaluation the run has written so far: the one before RL
    (after warm-up, else the base model) at step 0, periodic ones (`task.eval_every`) at their step, the
    final one at rl.steps."""
    points: dict[int, float] = {}
    start = None
    for r in run.rows:
        if r.get("phase") != "eval" or r.get("accuracy") is None:
            continue
        stage = r.get("stage")
        if stage == "base" and start is None:
            points[0] = float(r["accuracy"])
        elif stage == "warmup":
            start = points[0] = float(r["accuracy"])
        elif stage == "rl_step" and "step" in r:
            points[int(r["step"])] = float(r["accuracy"])
        elif stage == "rl":
            points[run.steps_total] = float(r["accuracy"])
    return sorted(points.items())


def final_accuracy(run: RunRecord) -> float | None:
    """The held-out accuracy after RL; None until the run has written it."""
    for r in reversed(run.rows):
        if r.get("phase") == "eval" and r.get("stage") == "rl" and r.get("accuracy") is not None:
            return float(r["accuracy"])
    return None


def start_accuracy(run: RunRecord) -> float | None:
    """The held-out accuracy RL started from (after warm-up, else the base model's)."""
    by_stage = {r.get("stage"): r.get("accuracy") for r in run.rows if r.get("phase") == "eval"}
    value = by_stage.get("warmup", by_stage.get("base"))
    return None if value is None else float(value)
