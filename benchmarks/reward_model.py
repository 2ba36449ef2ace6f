"""GRPO on a trained outcome reward model vs GRPO on the verifier, from the same warm-up, on the bundled model.

    python benchmarks/reward_model.py [--verifier-run runs/default_s0] [--steps N] [--seed 0] [--out FILE.md]

1. verifier: the default `credo train` run (warm-up + GRPO on the arith verifier's reward), or an
   existing run of it given by --verifier-run;
2. `credo train-rm --task arith --model <that run's warm-up model>`: preference pairs from the verifier
   on the warm-up policy's own samples, Bradley-Terry training, held-out pairwise accuracy;
3. reward model: GRPO from the same warm-up model (warmup.steps 0) with rl.reward_model rm:<folder>,
   same seed and steps: the reward is the model's logit, never the verifier's.
Finished runs and a trained reward model under --runs are reused.

Reports held-out greedy accuracy (the task's verifier, 500 problems) before and after RL, seconds per RL
step, the reward model's held-out pairwise accuracy and its seconds per step. Results:
benchmarks/results/reward_model.{md,json}.
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


def credo(args: list[str], what: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "credo", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summarise(folder: Path, before_stage: str) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rl = [r for r in rows if r.get("phase") == "rl"]
    mean = lambda key: sum(r.get(key, 0.0) for r in rl) / max(len(rl), 1)  # noqa: E731
    return {"run": str(folder), "before_rl": summary.get(before_stage, {}).get("accuracy"),
            "after_rl": summary.get("rl", {}).get("accuracy"), "rl_steps": len(rl), "s_per_step": mean("step_time"),
            "reward_model_s_per_step": mean("reward_model_seconds"), "reward_mean_last10":
            sum(r["reward_mean"] for r in rl[-10:]) / max(len(rl[-10:]), 1), "train_accuracy_last10":
            sum(r["accuracy"] for r in rl[-10:]) / max(len(rl[-10:]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifier-run", default=None, help="an existing default-preset run (else one is made)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rm-steps", type=int, default=200)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "reward_model"), help="where the runs go")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_model.md"))
    args = parser.parse_args()
    out_dir = Path(args.runs)
    steps = ["--rl.steps", str(args.steps)] if args.steps else []
    common = ["--run.out_dir", str(out_dir), "--run.seed", str(args.seed), "--run.progress", "false", *steps]
    if args.verifier_run:
        verifier = Path(args.verifier_run).resolve()
    else:
        verifier = out_dir / f"verifier_s{args.seed}"
        if not (verifier / "summary.json").is_file():
            credo(["train", *common, "--run.name", verifier.name, "--run.eval_base", "false"], "the verifier run")
    warm = verifier / "checkpoints" / "warmup" / "model"
    rm_dir = out_dir / f"rm_s{args.seed}"
    rm_wall = 0.0
    if not (rm_dir / "orm.json").is_file():
        rm_wall = credo(["train-rm", "--task", "arith", "--model", str(warm), "--out", str(rm_dir),
                         "--steps", str(args.rm_steps), "--seed", str(args.seed)], "train-rm")
    rm_info = json.loads((rm_dir / "orm.json").read_text())
    rm_metrics = json.loads((rm_dir / "metrics.json").read_text())
    rm_run = out_dir / f"rm_grpo_s{args.seed}"
    if not (rm_run / "summary.json").is_file():  # (a finished run is reused)
        credo(["train", *common, "--run.name", rm_run.name, "--model.name", str(warm), "--warmup.steps", "0",
               "--run.eval_base", "true", "--rl.reward_model", f"rm:{rm_dir}"], "the reward-model run")
    results = {"verifier": summarise(verifier, "warmup"), "reward_model": summarise(rm_run, "base"),
               "rm": {"held_out_pairwise_accuracy": rm_info["held_out_pairwise_accuracy"],
                      "accuracy_before": rm_metrics["accuracy_before"], "train_pairs": rm_info["train_pairs"],
                      "test_pairs": rm_info["test_pairs"], "train_seconds": rm_metrics["seconds"], "wall_s": rm_wall,
                      "pairs": rm_metrics.get("pairs", {})}}
    print(json.dumps(results), flush=True)
    v, m, rm = results["verifier"], results["reward_model"], results["rm"]
    lines = [f"Default preset (bundled SmolLM2-135M, arith difficulty 2), seed {args.seed}, {v['rl_steps']} RL steps each, "
             f"the same warm-up; held-out greedy accuracy on 500 problems (the task's verifier).",
             f"Command: `python benchmarks/reward_model.py" + (f" --verifier-run {args.verifier_run}" if args.verifier_run else "")
             + (f" --steps {args.steps}" if args.steps else "") + "`", "",
             f"Reward model: `credo train-rm --task arith` on the warm-up policy's samples, {rm['train_pairs']} training / "
             f"{rm['test_pairs']} held-out pairs, {args.rm_steps} steps ({rm['train_seconds']:.0f} s); held-out pairwise "
             f"accuracy {rm['accuracy_before']:.3f} before, {rm['held_out_pairwise_accuracy']:.3f} after.", "",
             "| RL reward | before RL | after RL | s / RL step | reward model s / step |", "|---|---|---|---|---|",
             f"| verifier (GRPO) | {v['before_rl']:.3f} | {v['after_rl']:.3f} | {v['s_per_step']:.2f} | - |",
             f"| reward model (GRPO) | {m['before_rl']:.3f} | {m['after_rl']:.3f} | {m['s_per_step']:.2f} | "
             f"{m['reward_model_s_per_step']:.2f} |"]
    write_results(args.out, lines, results)


if __name__ == "__main__":
    main()
