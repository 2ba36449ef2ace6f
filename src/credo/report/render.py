"""Writing a comparison report: HTML (self-contained), markdown, the figures, raw metrics as CSV and JSON.

    out/
      report.html     figures embedded as base64 PNGs, the final table, the test, the runs
      report.md       the same table and notes; figures linked from plots/
      plots/by_step.png, plots/by_time.png, plots/final.png
      metrics.csv     every metrics row of every run (arm, seed, run, then the union of the row fields)
      metrics.json    {"runs": [...with rows and summary], "table": [...]}

Rebuilt from the run folders every time (`credo report`), so it can be refreshed while runs are going.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from credo.report.aggregate import ALPHA, COLUMNS, final_table
from credo.report.plots import auto_window, plot_curves, plot_final
from credo.report.runs import RunRecord

TEST_NOTE = (f"Test: Welch's two-sided t-test (unequal variances) of each arm's final held-out accuracy over "
             f"seeds against the arm with the best mean; a difference exceeds the seed spread when p < {ALPHA}. "
             f"With 3 seeds per arm it detects only large differences: a 'no' is not evidence of equality.")


def _cell(stats: dict, fmt: str) -> str:
    if not stats["n"]:
        return "-"
    text = fmt.format(stats["mean"])
    return text if stats["n"] == 1 else f"{text} ± {fmt.format(stats['std']).lstrip('+')}"


def _verdict(row: dict) -> str:
    if row.get("best"):
        return "best mean"
    test = row.get("test")
    if test is None:
        return "n/a (needs 2+ seeds each)"
    word = "yes" if test["exceeds"] else "no"
    return f"{word} (p = {test['p']:.3g})"


def table_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The final table as heading + text rows (shared by HTML and markdown)."""
    heading = ["arm", "seeds"] + [h for _, h, _ in COLUMNS] + ["differs from best beyond seed spread?"]
    rows = []
    for row in table:
        seeds = f"{len(row['seeds'])}/{row['runs']}"
        rows.append([row["arm"], seeds] + [_cell(row[k], f) for k, _, f in COLUMNS] + [_verdict(row)])
    return heading, rows


def markdown_table(table: list[dict]) -> str:
    heading, rows = table_rows(table)
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _status(run: RunRecord) -> str:
    if run.status == "running":
        return f"running ({len(run.rl_rows)}/{run.steps_total} RL steps)"
    return run.status


def write_raw(out: Path, arms: dict[str, list[RunRecord]], table: list[dict]) -> None:
    runs = [r for rs in arms.values() for r in rs]
    fields: list[str] = []
    for run in runs:
        for row in run.rows:
            fields += [k for k in row if k not in fields]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "seed", "run"] + fields, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            for row in run.rows:
                writer.writerow({"arm": run.arm, "seed": run.seed, "run": run.folder.name, **row})

    def clean(value: Any) -> Any:  # JSON has no NaN / inf
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    payload = {"runs": [{"arm": r.arm, "seed": r.seed, "folder": str(r.folder), "status": r.status,
                         "summary": r.summary, "rows": r.rows} for r in runs],
               "table": table}
    (out / "metrics.json").write_text(json.dumps(clean(payload), indent=1))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def write_report(out: str | Path, arms: dict[str, list[RunRecord]], *, title: str = "credo compare",
                 notes: list[str] | None = None, window: int | None = None) -> dict[str, Path]:
    """Write every output of the report into `out` (created); returns their paths by name."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    window = auto_window(arms) if window is None else window
    table = final_table(arms)
    plots = {"by_step": plot_curves(arms, out / "plots" / "by_step.png", axis="step", window=window),
             "by_time": plot_curves(arms, out / "plots" / "by_time.png", axis="time", window=window),
             "final": plot_final(table, out / "plots" / "final.png")}
    write_raw(out, arms, table)
    notes = list(notes or [])
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    runs = [r for rs in arms.values() for r in rs]
    going = sum(r.status == "running" for r in runs)
    state = f"{len(runs)} runs, {going} still running" if going else f"{len(runs)} runs"

    md = [f"# {title}", "", f"Built {stamp} from {state}.", "", markdown_table(table), "", TEST_NOTE, ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += ["## Learning curves", "", "![against RL step](plots/by_step.png)", "",
           "![against wall time](plots/by_time.png)", "", "![final held-out accuracy](plots/final.png)", "",
           "## Runs", "", "| arm | seed | status | folder |", "|---|---|---|---|"]
    md += [f"| {r.arm} | {r.seed} | {_status(r)} | {os.path.relpath(r.folder, out)} |" for r in runs]
    md += ["", "Raw metrics: `metrics.csv`, `metrics.json`.", ""]
    (out / "report.md").write_text("\n".join(md))

    heading, rows = table_rows(table)
    esc = html.escape
    table_html = ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in heading) + "</tr></thead><tbody>"
                  + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                  + "</tbody></table>")
    runs_html = ("<table><thead><tr><th>arm</th><th>seed</th><th>status</th><th>folder</th></tr></thead><tbody>"
                 + "".join(f"<tr><td>{esc(r.arm)}</td><td>{r.seed}</td><td>{esc(_status(r))}</td>"
                           f"<td>{esc(str(r.folder))}</td></tr>" for r in runs) + "</tbody></table>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img.plot {{ max-width: 100%; border: 1px solid #eee; }}
.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p class="note">Built {stamp} from {esc(state)}.</p>
<h2>Final table</h2>
{table_html}
<p class="note">{esc(TEST_NOTE)}</p>
{''.join(f'<p class="note">{esc(n)}</p>' for n in notes)}
<h2>Learning curves against RL step</h2>
{_img(plots["by_step"], "learning curves against RL step")}
<h2>Learning curves against wall time</h2>
{_img(plots["by_time"], "learning curves against wall time")}
<h2>Final held-out accuracy</h2>
{_img(plots["final"], "final held-out accuracy per arm")}
<h2>Runs</h2>
{runs_html}
<p class="note">Raw metrics: metrics.csv, metrics.json.</p>
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"html": out / "report.html", "markdown": out / "report.md", "csv": out / "metrics.csv",
            "json": out / "metrics.json", **plots}
