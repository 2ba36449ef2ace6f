"""GRPO alone vs + DAPO dynamic sampling, + D3S, + the 80/20 entropy mask, + HAPO's length reward, at equal
RL wall time on the bundled model and the default task, with `credo compare`.

    python benchmarks/selection_shaping.py [--budget 100] [--seeds 0,1] [--eval-size 200] [--out DIR]

1. Calibration: each arm trains 3 RL steps (seed 0, no warm-up: only the step time matters) and its mean
   `step_time` over steps 1-2 (step 0 pays one-off costs) is measured, in this same invocation.
2. Each arm then gets steps = round(budget / its seconds per step) (at least 3), so every arm spends
   about the same RL wall time, and `credo compare --allow-unequal-budget` trains arms x seeds from
   one shared warm-up per seed (the default preset's), with a held-out evaluation every quarter of
   the run. The arms:

   grpo        the default preset's GRPO (verl's defaults: token-mean, no KL)
   dapo_ds     + rl.dynamic_sampling (DAPO's mixed-group refill)
   d3s         + rl.sample_selection d3s (max-Var(A) rollouts, keep ratio 0.5 -> 1)
   forking     rl.credit forking_tokens (the 80/20 rule: top-20% entropy tokens)
   hapo_len    + rl.reward_terms {task 1, hapo_length 1} over a pool of 256 prompts (repeats, so the
               history matters; the other arms see fresh prompts)

Results: DIR (the compare report) and benchmarks/results/selection_shaping.{md,json}: held-out accuracy
after RL (mean +- std over seeds), response length, seconds per step, steps, RL seconds. Timings are
only comparable within one invocation on one machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results  # benchmarks/_results.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "grpo": [],
    "dapo_ds": ["rl.dynamic_sampling=true"],
    "d3s": ["rl.sample_selection=d3s"],
    "forking": ["rl.credit=forking_tokens"],
    "hapo_len": ['rl.reward_terms={"task": 1.0, "hapo_length": 1.0}', "rl.prompt_pool=256"],
}


def credo(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "credo", *args], cwd=ROOT)
    if proc.returncode not in (0,):
        raise SystemExit(f"credo {' '.join(args[:2])} failed with exit {proc.returncode}")


def calibrate(out: Path, eval_size: int) -> dict[str, float]:
    """Seconds per RL step of each arm (mean step_time of steps 1-2 of a 3-step run)."""
    per_step = {}
    for arm, fields in ARMS.items():
        name = f"calibrate_{arm}"
        overrides = []
        for field in fields:
            key, value = field.split("=", 1)
            overrides += [f"--{key}", value]
        credo("train", "--rl.steps", "3", "--warmup.steps", "0", "--run.eval_base", "false",
              "--task.eval_size", str(min(eval_size, 16)), "--run.progress", "false",
              "--run.out_dir", str(out), "--run.name", name, *overrides)
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        times = [r["step_time"] for r in rows if r.get("phase") == "rl" and r["step"] >= 1]
        per_step[arm] = sum(times) / len(times)
        print(f"calibration: {arm} {per_step[arm]:.2f} s / step", flush=True)
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=100.0, help="RL seconds per run (default 100)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_selection_shaping"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "selection_shaping.md"))
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    per_step = calibrate(out / "calibration", args.eval_size)
    steps = {arm: max(3, round(args.budget / s)) for arm, s in per_step.items()}
    arm_args = []
    for arm, fields in ARMS.items():
        arm_args += ["--arm", arm, f"rl.steps={steps[arm]}",
                     f"task.eval_every={max(1, steps[arm] // 4)}", *fields]
    credo("compare", *arm_args, "--seeds", args.seeds, "--out", str(out / "compare"), "--allow-unequal-budget",
          "--task.eval_size", str(args.eval_size))
    payload = json.loads((out / "compare" / "metrics.json").read_text())
    rows = []
    for row in payload["table"]:
        acc = row["heldout_accuracy"]
        rows.append({"arm": row["arm"], "steps": steps[row["arm"]], "calibrated_s_per_step": per_step[row["arm"]],
                     "heldout_mean": acc["mean"], "heldout_std": acc["std"], "seeds": row["seeds"],
                     "gain_mean": row["gain"]["mean"], "response_length": row["response_length"]["mean"],
                     "s_per_step": row["s_per_step"]["mean"], "test": row.get("test")})
    lines = [f"# GRPO vs selection and shaping at equal RL wall time (~{args.budget:.0f} s of RL per run)", "",
             f"`python benchmarks/selection_shaping.py --budget {args.budget:g} --seeds {args.seeds} "
             f"--eval-size {args.eval_size}`; bundled SmolLM2-135M, default task, one shared warm-up per seed; "
             f"{(time.perf_counter() - started) / 60:.0f} min in all.", "",
             "| arm | RL steps | s / step (calibrated) | held-out accuracy after RL | gain over warm-up | "
             "response length | s / step (runs) | beyond seed spread vs best? |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        test = r["test"]
        verdict = "best" if test is None and r["heldout_mean"] == max(x["heldout_mean"] for x in rows) else \
            "n/a" if test is None else f"{'yes' if test['exceeds'] else 'no'} (p = {test['p']:.3g})"
        lines.append(f"| {r['arm']} | {r['steps']} | {r['calibrated_s_per_step']:.2f} | {r['heldout_mean']:.3f} ± "
                     f"{r['heldout_std']:.3f} | {r['gain_mean']:+.3f} | {r['response_length']:.1f} | "
                     f"{r['s_per_step']:.2f} | {verdict} |")
    report = out / 'compare' / 'report.html'
    lines += ["", f"Report with curves: {report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}."]
    write_results(args.results, lines, rows, {"command": sys.argv, "budget_s": args.budget, "per_step": per_step})


if __name__ == "__main__":
    main()
