"""GRPO vs PURE with a trained PRM vs PURE with the synthetic judge, on the bundled model and the default task.

    python benchmarks/pure_judges.py --prm runs/prm_arith [--steps N] [--seed 0] [--out FILE.md]

Three `credo train` runs of the default preset with the same seed and steps (the same warm-up, so the
same starting policy), differing only in credit assignment:

- grpo:            rl.credit grpo (outcome reward only);
- pure+prm:        rl.credit pure, rl.judge prm:<folder> (a PRM trained by `credo train-prm`);
- pure+synthetic:  rl.credit pure, rl.judge synthetic (the task's calculator step labels, no noise).

It reports held-out greedy accuracy after warm-up and after RL, seconds per RL step (mean of the
trainer's step_time), judge calls and judge seconds per step. Results: benchmarks/results/pure_judges.{md,json}.
On `arith` a completion is one line (one step), so PURE's min-form credit reduces to the judge's score
of the answer step; this measures the judge as the RL signal.
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


def run(name: str, out_dir: Path, extra: list[str], seed: int, steps: int | None) -> dict:
    args = [sys.executable, "-m", "credo", "train", "--run.out_dir", str(out_dir), "--run.name", name,
            "--run.seed", str(seed), "--run.progress", "false", "--run.eval_base", "false", *extra]
    if steps:
        args += ["--rl.steps", str(steps)]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    folder = out_dir / name
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rl = [r for r in rows if r.get("phase") == "rl"]
    mean = lambda key: sum(r.get(key, 0.0) for r in rl) / max(len(rl), 1)  # noqa: E731
    return {"name": name, "args": extra, "warmup_accuracy": summary.get("warmup", {}).get("accuracy"),
            "final_accuracy": summary.get("rl", {}).get("accuracy"), "rl_steps": len(rl),
            "s_per_step": mean("step_time"), "judge_calls_per_step": mean("judge_calls"),
            "judge_s_per_step": mean("judge_seconds"), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prm", required=True, help="a PRM folder written by `credo train-prm`")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "pure_judges"), help="where the runs go")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pure_judges.md"))
    args = parser.parse_args()
    out_dir = Path(args.runs)
    configs = [("grpo", ["--rl.credit", "grpo"]),
               ("pure_prm", ["--rl.credit", "pure", "--rl.judge", f"prm:{Path(args.prm).resolve()}"]),
               ("pure_synthetic", ["--rl.credit", "pure", "--rl.judge", "synthetic"])]
    results = []
    for name, extra in configs:
        results.append(run(f"{name}_s{args.seed}", out_dir, extra, args.seed, args.steps))
        print(json.dumps(results[-1]), flush=True)
    lines = [f"Default preset (bundled SmolLM2-135M, arith difficulty 2), seed {args.seed}, "
             f"{results[0]['rl_steps']} RL steps each; held-out greedy accuracy.",
             f"Command: `python benchmarks/pure_judges.py --prm {args.prm}"
             + (f" --steps {args.steps}" if args.steps else "") + "`", "",
             "| run | after warm-up | after RL | s / RL step | judge calls / step | judge s / step |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['warmup_accuracy']:.3f} | {r['final_accuracy']:.3f} | {r['s_per_step']:.2f} | "
                     f"{r['judge_calls_per_step']:.0f} | {r['judge_s_per_step']:.2f} |")
    write_results(args.out, lines, results)


if __name__ == "__main__":
    main()
