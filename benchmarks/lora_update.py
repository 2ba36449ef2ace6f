"""Full fine-tuning vs LoRA (peft): time per update, trainable parameters and peak memory, side by side.

    python benchmarks/lora_update.py [--models tiny,smollm2] [--updates 3] [--batch 8] [--length 48] [--rank 8]

Each configuration runs in a fresh subprocess (so ru_maxrss is its own peak), the configurations of a
model one after the other in the same invocation: load the model, optionally attach LoRA with
credo's own `credo.lora.attach_lora` (rank --rank, alpha 2 x rank, the default target modules: every
attention and MLP projection), then `--updates` AdamW steps (credo's `make_optimizer`, so the
optimizer sees exactly what the trainer's would) of a teacher-forced token-logprob loss on a fixed
random batch [batch, length], bf16 autocast for smollm2 as in its default preset, fp32 for tiny. The
first update is a warm-up and is not timed. Reported: seconds per update (median of the timed ones),
trainable / total parameters, peak resident memory and the part added by the updates (gradients, AdamW
moments, activations). Results: benchmarks/results/lora_update.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _measure import ROOT, load_average, peak_rss_mb, run_worker, timed_updates  # benchmarks/ is on sys.path
from _results import write_results

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def worker(model_name: str, rank: int, updates: int, batch: int, length: int) -> dict:
    import torch

    from credo.lora import attach_lora, base_fingerprint
    from credo.models import load_policy
    from credo.train.optim import make_optimizer

    torch.manual_seed(0)
    model = load_policy(model_name).model.train()
    if rank > 0:  # (attach_lora hashes the base weights, which pages in a lazily mapped file) ...
        attach_lora(model, rank=rank, alpha=2.0 * rank, dropout=0.0, targets=TARGETS, base=model_name, seed=0)
    else:  # ... so full fine-tuning reads them too: the RSS after loading is then the same in both modes
        base_fingerprint(model)
    base_rss = peak_rss_mb()
    opt = make_optimizer(model, 1e-5, 0.0)
    trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    times = timed_updates(model, opt, batch=batch, length=length, updates=updates, bf16=model_name != "tiny")
    peak = peak_rss_mb()
    return {"model": model_name, "mode": f"lora r={rank}" if rank else "full", "rank": rank,
            "s_per_update": statistics.median(times), "update_times_s": times,
            "trainable_params": trainable, "total_params": total, "peak_rss_mb": peak,
            "rss_after_load_mb": base_rss, "update_rss_mb": peak - base_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "RANK"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_update.md"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.updates, args.batch, args.length)))
        return
    sizes = ["--updates", str(args.updates), "--batch", str(args.batch), "--length", str(args.length)]
    load_before = load_average()
    results = [run_worker(__file__, [model, str(rank), *sizes])
               for model in args.models.split(",") for rank in (0, args.rank)]
    load_after = load_average()
    command = (f"python benchmarks/lora_update.py --models {args.models} --updates {args.updates} "
               f"--batch {args.batch} --length {args.length} --rank {args.rank}")
    lines = [f"Full fine-tuning vs LoRA (peft, rank {args.rank}, alpha {2 * args.rank}, all attention + MLP "
             f"projections) on this CPU: {args.updates} timed AdamW updates (after one untimed) of a "
             f"[{args.batch}, {args.length}] token batch per configuration, each in its own process.",
             f"Command: `{command}`",
             f"1-minute load average before / after: {load_before:.2f} / {load_after:.2f} (2 cores; it trails "
             f"by about a minute and the benchmark's own 2 threads raise it; run nothing else beside it).", "",
             "| model | mode | s / update | time ratio | trainable params | trainable % | peak RSS (MB) | "
             "RSS added by the updates (MB) | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        full = next(o for o in results if o["model"] == r["model"] and o["rank"] == 0)
        lines.append(f"| {r['model']} | {r['mode']} | {r['s_per_update']:.3f} | "
                     f"{r['s_per_update'] / full['s_per_update']:.2f} | {r['trainable_params']:,} | "
                     f"{100 * r['trainable_params'] / r['total_params']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['update_rss_mb']:.0f} | {r['update_rss_mb'] / max(full['update_rss_mb'], 1e-9):.2f} |")
    write_results(args.out, lines, results, meta={"command": command, "load_average": [load_before, load_after]})


if __name__ == "__main__":
    main()
