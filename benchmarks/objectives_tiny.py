"""Every registered objective (or credit estimator) on the tiny preset: final reward and time per RL step.

    python benchmarks/objectives_tiny.py [--steps 6] [--out benchmarks/results/objectives_tiny.md]
    python benchmarks/objectives_tiny.py --credit [--out benchmarks/results/credit_tiny.md]

Credit estimators run with objective grpo (ppo for those with a critic); turn-level ones on the
multi-turn fixture task (`fixture_tasks.TalkativeParity`).

The tiny random model cannot learn arithmetic, so the task is the test suite's parity task (reward 1
for odd-length completions): rewards are mixed and every objective gets real gradients. This is a
smoke-level comparison (finite losses, relative cost per step), not a quality benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from credo.cli import main  # noqa: E402
from credo.credit import CREDIT  # noqa: E402
from credo.objectives import OBJECTIVES  # noqa: E402
from credo.train.logging import read_metrics  # noqa: E402

TINY_PARAMS = {"bupo": ["--rl.objective_params", '{"layer": 1}'],
               # F-GRPO's objective reads the phase ids its own estimator writes (batch.segment_ids)
               "f_grpo": ["--rl.credit", "f_grpo", "--rl.loss_reduction", "seq_mean_token_mean"],
               "bn_gspo": ["--rl.credit", "bn_gspo", "--rl.loss_reduction", "seq_mean_token_mean"],
               "ppo": ["--rl.credit", "gae"]}
CREDIT_PARAMS = {"gae": ["--rl.objective", "ppo"], "ma_rlhf": ["--rl.objective", "ppo"],
                 "poad": ["--rl.objective", "ppo"], "rto": ["--rl.objective", "ppo", "--rl.dpo_model", "tiny"],
                 "f_grpo": ["--rl.objective", "f_grpo", "--rl.loss_reduction", "seq_mean_token_mean"]}
MULTI_TURN_MODULES = ("credo.credit.turns", "credo.credit.turn_reward_credit")


def run(name: str, steps: int, out: Path, credit: bool = False) -> dict:
    task = ["--task.name", "fixture_tasks:ParityTask"]
    if credit:
        extra = ["--rl.credit", name, *CREDIT_PARAMS.get(name, [])]
        if getattr(CREDIT.get(name), "__module__", "") in MULTI_TURN_MODULES:
            task = ["--task.name", "fixture_tasks:TalkativeParity", "--task.params", "{}"]
    else:
        extra = ["--rl.objective", name, *TINY_PARAMS.get(name, [])]
    args = ["train", "--preset", "tiny", "--run.out_dir", str(out), "--run.name", name, "--run.progress", "false",
            "--rl.steps", str(steps), "--run.eval_base", "false", *task,
            "--task.eval_size", "4", "--warmup.steps", "0", "--model.threads", "1", *extra]
    code = main(args)
    rl = [r for r in read_metrics(out / name / "metrics.jsonl") if r["phase"] == "rl"] if code == 0 else []
    return {
        "name": name,
        "exit": code,
        "final_reward": sum(r["reward_mean"] for r in rl[-2:]) / max(1, len(rl[-2:])),
        "finite_losses": bool(rl) and all(math.isfinite(r.get("loss", float("nan"))) for r in rl if r["updates"]),
        "s_per_step": sum(r["step_time"] for r in rl[1:]) / max(1, len(rl) - 1),  # first step pays warm-up
        "extra_rollouts": sum(r.get("probe_rollouts", 0) for r in rl) / max(1, len(rl)),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--credit", action="store_true", help="credit estimators instead of objectives")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or f"benchmarks/results/{'credit' if args.credit else 'objectives'}_tiny.md"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (CREDIT.names() if args.credit else OBJECTIVES.names()):
            rows.append(run(name, args.steps, Path(tmp), credit=args.credit))
    what = "credit estimator" if args.credit else "objective"
    lines = [f"{len(rows)} {what}s x {args.steps} RL steps on the tiny preset (parity task; random 2-layer model; "
             "1 thread). Smoke-level: finite losses and relative cost per step, not quality.", "",
             f"| {what} | exit | finite losses | reward (last 2 steps) | s / step | probe rollouts / step |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['exit']} | {r['finite_losses']} | {r['final_reward']:.3f} | {r['s_per_step']:.2f} "
              f"| {r['extra_rollouts']:.0f} |" for r in rows]
    args.out = out
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"failed": [r["name"] for r in rows if r["exit"] or not r["finite_losses"]]}))


if __name__ == "__main__":
    main_cli()
