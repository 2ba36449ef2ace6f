"""Gradient checkpointing: time per update and peak memory, with and without, side by side.

    python benchmarks/grad_checkpointing.py [--models tiny,smollm2] [--updates 3] [--batch 16] [--length 64]

Each configuration runs in a fresh subprocess (so ru_maxrss is its own peak): load the model, then
`--updates` AdamW steps of a teacher-forced token-logprob loss on a fixed random batch [batch, length]
(bf16 autocast for smollm2 as the default preset, fp32 for tiny). Reported: seconds per update (median),
peak resident memory, and the increase of peak memory over the loaded model (the activations + grads +
AdamW part, where checkpointing acts). Results: benchmarks/results/grad_checkpointing.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results  # benchmarks/_results.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def worker(model_name: str, checkpointing: bool, updates: int, batch: int, length: int) -> dict:
    import torch

    from credo.logprobs import token_logprobs
    from credo.memory import enable_gradient_checkpointing
    from credo.models import load_policy

    torch.manual_seed(0)
    model = load_policy(model_name).model.train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    score = torch.ones_like(tokens, dtype=torch.bool)
    score[:, 0] = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    dtype = torch.bfloat16 if model_name != "tiny" else None
    times = []
    for _ in range(updates):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = -token_logprobs(model, tokens, mask, score).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "checkpointing": checkpointing, "s_per_update": statistics.median(times),
            "peak_rss_mb": peak, "rss_after_load_mb": base_rss, "update_rss_mb": peak - base_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CHECKPOINTING"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad_checkpointing.md"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "1", args.updates, args.batch, args.length)))
        return
    results = []
    for model in args.models.split(","):
        for ckpt in (False, True):
            proc = subprocess.run([sys.executable, __file__, "--worker", model, str(int(ckpt)), "--updates",
                                   str(args.updates), "--batch", str(args.batch), "--length", str(args.length)],
                                  capture_output=True, text=True, cwd=ROOT, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    lines = [f"Gradient checkpointing on this CPU: {args.updates} AdamW updates of a [{args.batch}, {args.length}] "
             f"token batch per configuration, each in its own process.",
             f"Command: `python benchmarks/grad_checkpointing.py --models {args.models} --updates {args.updates} "
             f"--batch {args.batch} --length {args.length}`", "",
             "| model | checkpointing | s / update | time ratio | peak RSS (MB) | RSS added by the updates (MB) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        off = next(o for o in results if o["model"] == r["model"] and not o["checkpointing"])
        lines.append(f"| {r['model']} | {'on' if r['checkpointing'] else 'off'} | {r['s_per_update']:.3f} | "
                     f"{r['s_per_update'] / off['s_per_update']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['update_rss_mb']:.0f} | {r['update_rss_mb'] / max(off['update_rss_mb'], 1e-9):.2f} |")
    write_results(args.out, lines, results)


if __name__ == "__main__":
    main()
