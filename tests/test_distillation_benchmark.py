"""benchmarks/distillation.py --smoke end to end on tiny models (a tiny teacher run, a 1-layer student
dropped from it, the four arms for 2 steps), then a rerun that keeps every finished part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(ROOT / "benchmarks" / "distillation.py"), "--smoke", "--threads", "1",
            "--out", str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)


def _step0(out: Path, arm: str) -> dict:
    rows = [json.loads(line) for line in (out / "arms" / arm / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("phase") == "distill" and r["step"] == 0)


def test_distillation_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "distillation.json").read_text())
    assert payload["smoke"] and payload["layers"] == 1
    student = json.loads((Path(payload["student"]) / "student.json").read_text())
    assert student["source_layers"] == 2 and student["kept_layers"] == [0]  # dropped from the tiny teacher
    assert payload["teacher_eval"]["n"] == 8 and payload["student_eval"]["n"] == 8
    rows = {r["arm"]: r for r in payload["results"]}
    assert list(rows) == ["all", "tip", "entropy", "adakd"]
    for r in rows.values():
        assert r["steps"] == 2 and r["n"] == 8 and r["seconds"] > 0 and 0.0 <= r["accuracy"] <= 1.0
    assert rows["all"]["kept_fraction"] == 1.0
    assert rows["tip"]["params"] == {"steps": 2, "prompts_per_step": 2, "samples": 2, "lr": 1e-3,
                                     "token_selection": "tip", "keep_fraction": 0.5}
    # step 0: the same student, seed and teacher in every arm -> the same samples and divergence; the
    # selections then differ exactly as the rules say
    first = {arm: _step0(out, arm) for arm in rows}
    tokens = first["all"]["tokens"]
    assert tokens > 0 and all(f["tokens"] == tokens for f in first.values())
    assert all(f["divergence"] == pytest.approx(first["all"]["divergence"], rel=1e-6) for f in first.values())
    assert first["entropy"]["kept_fraction"] == (int(tokens) // 2) / tokens  # floor(N / 2) tokens
    assert first["entropy"]["kept_fraction"] <= first["tip"]["kept_fraction"] < 1.0  # TIP adds quadrant 3
    assert first["adakd"]["kept_fraction"] == 1.0 and first["adakd"]["latf_ratio"] == 1.0  # LATF starts at r = 1
    assert first["adakd"]["temperature_min"] < 1.0 < first["adakd"]["temperature_max"]  # IDTS around tau = 1
    assert first["all"]["temperature_min"] == first["all"]["temperature_max"] == 1.0
    md = (out / "distillation.md").read_text()
    assert "| teacher |" in md and "| student before distillation |" in md and "| distill adakd |" in md

    again = _run(out)  # a rerun keeps the teacher, the student and every finished arm
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished; kept") == 4 and "training the teacher" not in again.stdout
    assert json.loads((out / "distillation.json").read_text())["results"] == payload["results"]
