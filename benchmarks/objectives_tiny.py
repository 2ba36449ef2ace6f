"""Every registered objective on the tiny preset: final reward and time per RL step, side by side.

    python benchmarks/objectives_tiny.py [--steps 6] [--out benchmarks/results/objectives_tiny.md]

The tiny random model cannot learn arithmetic, so the task is the test suite's parity task (reward 1
for odd-length completions): rewards are mixed and every objective gets real gradients. This is a
smoke-level comparison (finite losses, relative cost per step), not a quality benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from credo.cli import main  # noqa: E402
from credo.objectives import OBJECTIVES  # noqa: E402
from credo.train.logging import read_metrics  # noqa: E402

TINY_PARAMS = {"bupo": ["--rl.objective_params", '{"layer": 1}']}


def run(name: str, steps: int, out: Path) -> dict:
    args = ["train", "--preset", "tiny", "--run.out_dir", str(out), "--run.name", name, "--run.progress", "false",
            "--rl.steps", str(steps), "--run.eval_base", "false", "--task.name", "fixture_tasks:ParityTask",
            "--task.eval_size", "4", "--warmup.steps", "0", "--model.threads", "1", "--rl.objective", name,
            *TINY_PARAMS.get(name, [])]
    code = main(args)
    rl = [r for r in read_metrics(out / name / "metrics.jsonl") if r["phase"] == "rl"] if code == 0 else []
    return {
        "objective": name,
        "exit": code,
        "final_reward": sum(r["reward_mean"] for r in rl[-2:]) / max(1, len(rl[-2:])),
        "finite_losses": all(r.get("loss") is not None for r in rl),
        "s_per_step": sum(r["step_time"] for r in rl[1:]) / max(1, len(rl) - 1),  # first step pays warm-up
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/objectives_tiny.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in OBJECTIVES.names():
            rows.append(run(name, args.steps, Path(tmp)))
    lines = ["| objective | exit | finite losses | reward (last 2 steps) | s / step |", "|---|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['exit']} | {r['finite_losses']} | {r['final_reward']:.3f} | {r['s_per_step']:.2f} |"
              for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"failed": [r["objective"] for r in rows if r["exit"] or not r["finite_losses"]]}))


if __name__ == "__main__":
    main_cli()
