"""What Ray rollout workers and asynchronous rollouts cost per RL step, against the in-process engine, on this CPU.

    python benchmarks/ray_overhead.py [--models tiny,smollm2] [--steps 4] [--out-dir benchmarks/results]

Each configuration is a real `credo train` job in its own process (warm-up 0, a few RL steps, a small
held-out set): the in-process torch engine, then `rollout.engine = "ray"` with 1 and 2 rollout workers
(1 torch thread each), then 2 workers with 2 verifier workers and asynchronous rollouts (max_staleness 1).
Per step it reports the trainer's timings from metrics.jsonl (medians over the steps after the first,
which pays for starting the actors): `gen_time` (sampling, for Ray: sending the prompts and waiting for
the workers' groups), `update_time` (scoring, credit, optimizer steps, weight sync), `weight_sync_time`
(the trainer's weights into the object store and, synchronous, loaded by every worker) and the whole
step; the trainer's peak resident memory and the largest rollout worker's (`rollout_worker_rss_mb`);
the Ray start-up (run load time minus the in-process run's).

On a 2-core machine 2 workers give no speed-up and asynchronous rollouts have no free core to overlap
with: the figures show the mechanism's overhead (actor calls, per-prompt engine calls, weight
serialisation), not its benefit on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import write_results  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = {
    "tiny": ["--preset", "tiny", "--rl.prompts_per_step", "8", "--rl.group_size", "4"],
    "smollm2": ["--preset", "default", "--rl.prompts_per_step", "4", "--rl.group_size", "4",
                "--rl.micro_batch_size", "8"],
}
COMMON = ["--run.progress", "false", "--run.eval_base", "false", "--warmup.steps", "0", "--task.eval_size", "4",
          "--task.eval_batch_size", "4", "--model.threads", "1", "--rl.skip_zero_advantage", "false"]
CONFIGS = [
    ("torch engine (in process)", ["--rollout.engine", "torch"]),
    ("ray, 1 worker", ["--rollout.engine", "ray", "--rollout.ray_workers", "1"]),
    ("ray, 2 workers", ["--rollout.engine", "ray", "--rollout.ray_workers", "2"]),
    ("ray, 2 workers + 2 verifiers, async k=1", ["--rollout.engine", "ray", "--rollout.ray_workers", "2",
                                                 "--rollout.ray_verifiers", "2", "--rollout.max_staleness", "1"]),
]
RUNNER = ("import json, resource, sys\nfrom credo.cli import main\nrc = main(sys.argv[1:])\n"
          "print('RSS', json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))\nsys.exit(rc)\n")


def run_one(model: str, extra: list[str], steps: int, out_dir: Path, name: str) -> dict:
    args = ["train", *MODEL_ARGS[model], *COMMON, "--rl.steps", str(steps), "--run.out_dir", str(out_dir),
            "--run.name", name, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{model} {name} failed:\n{proc.stderr[-3000:]}")
    rss = float(next(line for line in proc.stdout.splitlines() if line.startswith("RSS ")).split()[1])
    rows = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("phase") == "rl"][1:]  # the first step starts the actors
    summary = json.loads((out_dir / name / "summary.json").read_text())
    med = {k: statistics.median(r[k] for r in rl) for k in ("gen_time", "update_time", "weight_sync_time", "step_time")}
    return {"model": model, "config": name, **med, "trainer_rss_mb": rss,
            "worker_rss_mb": max((r.get("rollout_worker_rss_mb", 0.0) for r in rl), default=0.0),
            "load_s": summary["timings_s"]["load"] if "load" in summary["timings_s"] else None,
            "policy_lag_max": max(r["policy_lag_max"] for r in rl), "steps_timed": len(rl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for i, (label, extra) in enumerate(CONFIGS):
                row = run_one(model, extra, args.steps, Path(tmp), f"{model}_{i}")
                row["config"] = label
                results.append(row)
                print(json.dumps(row), flush=True)
    command = f"python benchmarks/ray_overhead.py --models {args.models} --steps {args.steps}"
    lines = [f"Ray rollout workers vs the in-process torch engine on this CPU: {args.steps} RL steps per "
             f"configuration (medians over steps 2..{args.steps}), each a `credo train` job in its own process.",
             f"Command: `{command}`",
             f"1-minute load average before: {load_before:.2f} (2 cores; run nothing else beside it).", "",
             "| model | configuration | step (s) | x in-process | generation (s) | update (s) | weight sync (s) | "
             "trainer peak RSS (MB) | largest worker peak RSS (MB) | policy lag |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = next(o for o in results if o["model"] == r["model"])
        lines.append(f"| {r['model']} | {r['config']} | {r['step_time']:.2f} | {r['step_time'] / base['step_time']:.2f} | "
                     f"{r['gen_time']:.2f} | {r['update_time']:.2f} | {r['weight_sync_time']:.3f} | "
                     f"{r['trainer_rss_mb']:.0f} | {r['worker_rss_mb']:.0f} | {r['policy_lag_max']:.0f} |")
    write_results(Path(args.out_dir) / "ray_overhead.md", lines, results, meta={"command": command, "load_average": load_before})


if __name__ == "__main__":
    main()
