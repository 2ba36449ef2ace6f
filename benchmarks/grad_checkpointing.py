"""Gradient checkpointing: time per update and peak memory, with and without, side by side.

    python benchmarks/grad_checkpointing.py [--models tiny,smollm2] [--updates 3] [--batch 16] [--length 64]

Each configuration runs in a fresh subprocess (so ru_maxrss is its own peak): load the model, then
`--updates` AdamW steps of a teacher-forced token-logprob loss on a fixed random batch [batch, length]
(bf16 autocast for smollm2 as the default preset, fp32 for tiny). One untimed warm-up update, then the timed ones. Reported: seconds per update (median),
peak resident memory, and the increase of peak memory over the loaded model (the activations + grads +
AdamW part, where checkpointing acts). Results: benchmarks/results/grad_checkpointing.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _measure import ROOT, load_average, peak_rss_mb, run_worker, timed_updates  # benchmarks/ is on sys.path
from _results import write_results


def worker(model_name: str, checkpointing: bool, updates: int, batch: int, length: int) -> dict:
    import torch

    from credo.memory import enable_gradient_checkpointing
    from credo.models import load_policy

    torch.manual_seed(0)
    model = load_policy(model_name).model.train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    base_rss = peak_rss_mb()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = timed_updates(model, opt, batch=batch, length=length, updates=updates, bf16=model_name != "tiny")
    peak = peak_rss_mb()
    return {"model": model_name, "checkpointing": checkpointing, "s_per_update": statistics.median(times),
            "update_times_s": times, "peak_rss_mb": peak, "rss_after_load_mb": base_rss,
            "update_rss_mb": peak - base_rss}


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
    sizes = ["--updates", str(args.updates), "--batch", str(args.batch), "--length", str(args.length)]
    load_before = load_average()
    results = [run_worker(__file__, [model, str(int(ckpt)), *sizes])
               for model in args.models.split(",") for ckpt in (False, True)]
    load_after = load_average()
    command = (f"python benchmarks/grad_checkpointing.py --models {args.models} --updates {args.updates} "
               f"--batch {args.batch} --length {args.length}")
    lines = [f"Gradient checkpointing on this CPU: {args.updates} timed AdamW updates (after one untimed) of a "
             f"[{args.batch}, {args.length}] token batch per configuration, each in its own process.",
             f"Command: `{command}`",
             f"1-minute load average before / after: {load_before:.2f} / {load_after:.2f} (2 cores; it trails "
             f"by about a minute and the benchmark's own 2 threads raise it; run nothing else beside it).", "",
             "| model | checkpointing | s / update | time ratio | peak RSS (MB) | RSS added by the updates (MB) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        off = next(o for o in results if o["model"] == r["model"] and not o["checkpointing"])
        lines.append(f"| {r['model']} | {'on' if r['checkpointing'] else 'off'} | {r['s_per_update']:.3f} | "
                     f"{r['s_per_update'] / off['s_per_update']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['update_rss_mb']:.0f} | {r['update_rss_mb'] / max(off['update_rss_mb'], 1e-9):.2f} |")
    write_results(args.out, lines, results, meta={"command": command, "load_average": [load_before, load_after]})


if __name__ == "__main__":
    main()
