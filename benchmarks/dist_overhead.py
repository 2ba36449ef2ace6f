"""What torch.distributed costs per RL step: 1 process vs 2 torchrun ranks (DDP, FSDP2), on this CPU.

    python benchmarks/dist_overhead.py [--models tiny,smollm2] [--steps 3] [--seed-per-prompt] [--out FILE.md]

Each configuration is a real `torchrun -m credo train`-equivalent job (this file relaunches itself
under `torch.distributed.run` as the worker), one thread per process, gloo. Per step it reports the
trainer's own timings from metrics.jsonl (rank 0 logs the slowest rank's time: `gen_time`
= sampling, `update_time` = scoring + credit + optimizer steps), and per rank the wall time spent
inside collectives (`comm`: every torch.distributed call made from Python, each waited for at
once, plus DDP's gradient all-reduce through a timing comm hook; FSDP2's all-gathers and
reduce-scatters are Python calls too, all_gather_single / reduce_scatter_single in torch 2.13;
timed this way they lose their overlap with compute), and the peak resident memory (ru_maxrss).

On a 2-core machine 2 ranks give no speed-up: the figures show the mechanism's overhead (the
collectives, the FSDP2 sampling copy refresh, the per-prompt seeding when `--seed-per-prompt`).
With 2 ranks each rank generates and trains on half the prompts, so per-step time should halve on
2 free cores; `comm` is the part that does not.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL_ARGS = {
    "tiny": ["--preset", "tiny", "--rl.prompts_per_step", "8", "--rl.group_size", "4"],
    # the bundled SmolLM2-135M-Instruct in bf16, kept small: this is an overhead measurement
    "smollm2": ["--preset", "default", "--rl.prompts_per_step", "4", "--rl.group_size", "4",
                "--rl.micro_batch_size", "8"],
}
COMMON = ["--run.progress", "false", "--run.eval_base", "false", "--warmup.steps", "0",
          "--task.eval_size", "4", "--task.eval_batch_size", "4", "--model.threads", "1",
          "--rl.skip_zero_advantage", "false", "--rl.kl_coef", "0.05"]
CONFIGS = [("none", 1), ("ddp", 2), ("fsdp2", 2)]


# ----------------------------------------------------------------------------- worker (one rank)

class CommClock:
    """Wall time inside torch.distributed collectives called from Python (waited for at once)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "reduce_scatter_tensor",
             "all_gather_single", "reduce_scatter_single",  # FSDP2 (torch 2.13)
             "broadcast", "broadcast_object_list", "barrier", "all_to_all_single")

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def install(self) -> None:
        import torch.distributed as dist

        for name in self.NAMES:
            if hasattr(dist, name):
                setattr(dist, name, self._timed(getattr(dist, name)))
        from torch.nn.parallel import DistributedDataParallel

        original_init = DistributedDataParallel.__init__
        clock = self

        @functools.wraps(original_init)
        def init(module, *args, **kwargs):
            original_init(module, *args, **kwargs)
            module.register_comm_hook(None, clock._ddp_hook)

        DistributedDataParallel.__init__ = init

    def _timed(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if kwargs.get("async_op") and out is not None:
                out.wait()
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out
        return wrapper

    def _ddp_hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        t = time.perf_counter()
        future = allreduce_hook(None, bucket)
        future.wait()
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return future


def worker(args: list[str], report: Path) -> None:
    clock = CommClock()
    clock.install()
    from credo.cli import main

    t = time.perf_counter()
    code = main(["train", *args])
    rank = int(os.environ.get("RANK", "0"))
    report.with_name(f"{report.stem}.rank{rank}.json").write_text(json.dumps({
        "rank": rank, "exit": code, "wall_s": time.perf_counter() - t, "comm_s": clock.seconds,
        "comm_calls": clock.calls, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# ----------------------------------------------------------------------------- driver

def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(model: str, strategy: str, ranks: int, steps: int, out: Path, seed_per_prompt: bool) -> dict:
    name = f"{model}-{strategy}-{ranks}"
    report = out / f"{name}.json"
    args = [*MODEL_ARGS[model], *COMMON, "--rl.steps", str(steps), "--dist.strategy", strategy,
            "--dist.seed_per_prompt", str(seed_per_prompt).lower(), "--run.out_dir", str(out), "--run.name", name]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                 "--master_addr", "127.0.0.1", "--master_port", str(_port())] if strategy != "none"
                else [sys.executable])
    t = time.perf_counter()
    done = subprocess.run([*launcher, __file__, "--worker", str(report), "--", *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("phase") == "rl"]
    per_rank = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(ranks)]

    def mean(key):
        return sum(r[key] for r in rl) / len(rl)

    return {"model": model, "strategy": strategy, "ranks": ranks, "steps": len(rl),
            "step_s": mean("step_time"), "gen_s": mean("gen_time"), "update_s": mean("update_time"),
            "comm_s_per_step": [round(p["comm_s"] / len(rl), 3) for p in per_rank],
            "comm_calls": [p["comm_calls"] for p in per_rank],
            "peak_rss_mb": [round(p["peak_rss_mb"]) for p in per_rank],
            "job_wall_s": time.perf_counter() - t}


def table(results: list[dict]) -> str:
    lines = ["| model | strategy | ranks | s / step | generation | update | comm / step (per rank) | peak RSS MB (per rank) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['strategy']} | {r['ranks']} | {r['step_s']:.2f} | {r['gen_s']:.2f} | "
                     f"{r['update_s']:.2f} | {', '.join(f'{c:.3f}' for c in r['comm_s_per_step'])} | "
                     f"{', '.join(str(m) for m in r['peak_rss_mb'])} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[4:], Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed-per-prompt", action="store_true", help="dist.seed_per_prompt in every run")
    parser.add_argument("--out", default="", help="default: benchmarks/results/dist_overhead_<models>.md")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="credo-dist-bench-") as tmp:
        for model in args.models.split(","):
            for strategy, ranks in CONFIGS:
                result = run_config(model, strategy, ranks, args.steps, Path(tmp), args.seed_per_prompt)
                print(json.dumps(result), flush=True)
                results.append(result)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"dist_overhead_{args.models.replace(',', '_')}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# torch.distributed overhead (benchmarks/dist_overhead.py)\n\n"
              f"`python benchmarks/dist_overhead.py --models {args.models} --steps {args.steps}"
              f"{' --seed-per-prompt' if args.seed_per_prompt else ''}`; {os.cpu_count()} CPU cores, "
              f"one thread per process, gloo; times are means over the RL steps (rank 0's log holds the "
              f"slowest rank's); comm = wall time inside collectives, per rank, including the wait "
              f"for the slower rank at each one.\n\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.write_text(header + table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
