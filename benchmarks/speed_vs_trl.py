"""credo's RL step vs TRL's GRPOTrainer on a CPU: identical work, one invocation, alternating.

    python benchmarks/speed_vs_trl.py [--workloads smollm2,tiny] [--precisions fp32,bf16] [--rounds 3]
                                      [--steps 3] [--threads 2] [--out benchmarks/results/speed_vs_trl]

TRL is a benchmark-only dependency: the script installs `trl==1.16.0` without its dependencies into
runs/bench_trl (git-ignored) on first use and imports it with credo's own torch / transformers /
accelerate / datasets; `--trl-path DIR` points at another copy.

The work, the same for both trainers (each step in its own fresh process per trainer and round, so
each process's peak resident memory is its own):
- model: the bundled SmolLM2-135M-Instruct ("smollm2"), or a random 2-layer Llama with SmolLM2's
  vocabulary ("tiny", hidden 64, saved once to a folder both load; it rarely emits EOS, so nearly every
  row runs the full budget: framework overhead);
- 4 prompts of the arithmetic task (difficulty 2, seed 0, a new 4 per step) x 8 completions x at most
  64 new tokens, temperature 1, no top-k / top-p, stopping at EOS only (TRL's rule);
- one optimizer step per rollout batch (one minibatch, one epoch), every row updated, no KL term (TRL's
  default beta = 0), learning rate 1e-6 (TRL's default), `--threads` torch threads;
- fp32, or bf16 autocast over fp32 weights (credo's model.precision "bf16"; TRL's bf16=True).
TRL otherwise runs at its GRPOConfig defaults (gradient checkpointing on, loss "dapo").

Each (workload, precision) runs `--rounds` rounds of [credo, TRL] (order alternating per round), each
`--steps` timed RL steps after one untimed warm-up step. Reported per trainer: median / min / max
seconds per step, generated tokens per step, seconds per generated token, peak RSS; the ratios TRL /
credo per step and per generated token; and credo's arithmetic rate in sampling and training as a
fraction of the peak fp32 / bf16 rate of a large matrix multiply measured in the same invocation.
FLOPs counted are the useful ones: 2 x (matmul parameters) per token, the output head only where a
logit is needed, causal attention 4 x d_model x context per layer, the prompt once per group, no
padding; training = 3 x forward (forward + backward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "runs" / "speed_vs_trl"
TRL_DIR = ROOT / "runs" / "bench_trl"
TRL_VERSION = "1.16.0"
PROMPTS, GROUP, MAX_NEW, LR = 4, 8, 64, 1e-6


# ------------------------------------------------------------------------------------------- workers
def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def model_dir(workload: str) -> str:
    """The folder both trainers load for a workload."""
    from credo.models import bundled_model_dir, bundled_tokenizer, tiny_model

    if workload == "smollm2":
        return str(bundled_model_dir())
    target = SCRATCH / "tiny_model"
    if not (target / "model.safetensors").is_file():
        tokenizer = bundled_tokenizer()
        model = tiny_model(tokenizer, seed=0)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


def step_examples(task, steps: int):
    return task.examples("train", steps * PROMPTS, seed=0)


def flop_shape(model) -> dict:
    """Per-token matmul parameters of the decoder body and the head, d_model and layers."""
    cfg = model.config
    head = model.get_output_embeddings().weight.numel()
    embed = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2) - embed
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        body -= head
    return {"body": body, "head": head, "d_model": cfg.hidden_size, "layers": cfg.num_hidden_layers}


def useful_flops(shape: dict, prompt_lens: list[int], completion_lens: list[list[int]]) -> dict:
    """Sampling and training FLOPs of one step (see the module docstring)."""
    body, head, d, layers = shape["body"], shape["head"], shape["d_model"], shape["layers"]

    def attention(start: int, stop: int) -> float:  # queries at positions start..stop-1, causal
        return 4.0 * d * layers * sum(range(start + 1, stop + 1))

    sample = train_fwd = 0.0
    for p, lens in zip(prompt_lens, completion_lens):
        sample += 2 * body * p + 2 * head + attention(0, p)  # prefill once per prompt, one logit row
        train_fwd += 2 * body * p + attention(0, p)  # the shared prompt, once per group
        for c in lens:
            decoded = max(c - 1, 0)  # the last sampled token is never fed back
            sample += decoded * (2 * body + 2 * head) + attention(p, p + decoded)
            train_fwd += c * 2 * body + c * 2 * head + attention(p, p + c)
    return {"sampling": sample, "training": 3.0 * train_fwd}


def worker_credo(args) -> dict:
    from credo.presets import PRESETS
    from credo.train.rl import rl_step
    from credo.train.run import rl_context, setup

    cfg = PRESETS.get("default")()
    cfg.model.name, cfg.model.precision, cfg.model.threads = args.model_dir, args.precision, args.threads
    cfg.rl.steps, cfg.rl.prompts_per_step, cfg.rl.group_size = args.steps + 1, PROMPTS, GROUP
    cfg.rl.minibatches, cfg.rl.epochs, cfg.rl.micro_batch_size = 1, 1, PROMPTS * GROUP
    cfg.rl.skip_zero_advantage, cfg.rl.kl_coef, cfg.rl.lr = False, 0.0, LR
    cfg.rl.lr_warmup_steps, cfg.rl.lr_decay = 0, "constant"
    cfg.sampling.max_new_tokens, cfg.sampling.stop = MAX_NEW, []
    cfg.sampling.temperature, cfg.sampling.top_k, cfg.sampling.top_p = 1.0, 0, 1.0
    cfg.warmup.steps = 0
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(SCRATCH / "runs"), f"credo-{os.getpid()}", False
    run = setup(cfg)
    set_threads(args.threads)
    ctx = rl_context(run)
    shape = flop_shape(run.model)
    examples = step_examples(run.task, args.steps + 1)
    sampled: list = []  # each step's groups, for the FLOP count
    generate = ctx.engine.generate

    def recording(*a, **k):
        groups = generate(*a, **k)
        sampled.extend(groups)
        return groups

    ctx.engine.generate = recording

    steps = []
    for step in range(args.steps + 1):
        part = examples[step * PROMPTS : (step + 1) * PROMPTS]
        sampled.clear()
        t = time.perf_counter()
        metrics = rl_step(ctx, step, part)
        seconds = time.perf_counter() - t
        lens = [[len(c.token_ids) for c in g] for g in sampled]
        steps.append({"seconds": seconds, "gen_time": metrics["gen_time"], "update_time": metrics["update_time"],
                      "generated_tokens": sum(map(sum, lens)), "prompt_lens": [len(g[0].prompt_ids) for g in sampled],
                      "completion_lens": lens, "trained_sequences": metrics.get("trained_sequences")})
    return {"steps": steps[1:], "warmup_step": steps[0], "flop_shape": shape}


def worker_trl(args) -> dict:
    sys.path.insert(0, args.trl_path)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from credo.tasks import make_task
    from credo.tasks.base import render_prompt

    set_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    task = make_task("arith", difficulty=2)
    examples = step_examples(task, args.steps + 1)
    rows = [{"prompt": render_prompt(tokenizer, task, ex), "idx": i} for i, ex in enumerate(examples)]
    lengths: list[int] = []

    def reward(completions, idx, completion_ids=None, **kwargs):  # TRL passes dataset columns as lists
        lengths.append(sum(len(c) for c in completion_ids))
        return [float(task.score(c, examples[i]).reward) for c, i in zip(completions, idx)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    config = GRPOConfig(output_dir=str(SCRATCH / f"trl-{os.getpid()}"), per_device_train_batch_size=PROMPTS * GROUP,
                        num_generations=GROUP, max_completion_length=MAX_NEW, max_steps=args.steps + 1,
                        learning_rate=LR, bf16=args.precision == "bf16", use_cpu=True, report_to=[],
                        save_strategy="no", temperature=1.0, top_p=1.0, top_k=0, logging_steps=1,
                        shuffle_dataset=False, seed=0, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)  # fp32 master weights
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    steps = [{"seconds": s, "generated_tokens": n} for s, n in zip(times, lengths)]
    return {"steps": steps[1:], "warmup_step": steps[0],
            "gradient_checkpointing": bool(config.gradient_checkpointing), "loss_type": config.loss_type}


def worker_peak(args) -> dict:
    """The best FLOP/s of square matmuls (n = 1024, 2048, 4096; 4 timed repeats each), fp32 and bf16."""
    import torch

    set_threads(args.threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            c = a @ b  # warm-up (and the output buffer)
            for _ in range(4):
                t = time.perf_counter()
                torch.matmul(a, b, out=c)
                best = max(best, 2 * n**3 / (time.perf_counter() - t))
        out[name] = best
    return out


# --------------------------------------------------------------------------------------------- driver
def ensure_trl(path: Path) -> None:
    if (path / "trl" / "__init__.py").is_file():
        return
    print(f"installing trl=={TRL_VERSION} (no dependencies) into {path}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(path), f"trl=={TRL_VERSION}",
                    "--no-deps"], check=True)


def run_worker(kind: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(args.threads), "--steps", str(args.steps),
           "--trl-path", str(args.trl_path)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SPEED_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("SPEED_JSON "):])
    result["process_seconds"] = time.perf_counter() - t
    return result


def summarise(steps: list[dict]) -> dict:
    secs = [s["seconds"] for s in steps]
    toks = [s["generated_tokens"] for s in steps]
    per_tok = [s / max(n, 1) for s, n in zip(secs, toks)]
    return {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "n_steps": len(secs),
            "tokens_per_step": statistics.mean(toks), "median_s_per_token": statistics.median(per_tok),
            "s_per_token_total": sum(secs) / max(sum(toks), 1)}


def credo_rates(steps: list[dict], shape: dict, peak: float) -> dict:
    sample = train = gen_t = upd_t = 0.0
    for s in steps:
        flops = useful_flops(shape, s["prompt_lens"], s["completion_lens"])
        sample, train = sample + flops["sampling"], train + flops["training"]
        gen_t, upd_t = gen_t + s["gen_time"], upd_t + s["update_time"]
    return {"sampling_gflops": sample / gen_t / 1e9, "training_gflops": train / upd_t / 1e9,
            "sampling_fraction_of_peak": sample / gen_t / peak, "training_fraction_of_peak": train / upd_t / peak,
            "gen_time_median": statistics.median(s["gen_time"] for s in steps),
            "update_time_median": statistics.median(s["update_time"] for s in steps)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="smollm2,tiny")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trainers", default="credo,trl")
    parser.add_argument("--trl-path", default=str(TRL_DIR))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_vs_trl"))
    parser.add_argument("--worker", choices=("credo", "trl", "peak"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import resource

        result = {"credo": worker_credo, "trl": worker_trl, "peak": worker_peak}[args.worker](args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("SPEED_JSON " + json.dumps(result), flush=True)
        return 0
    trainers = args.trainers.split(",")
    if "trl" in trainers:
        ensure_trl(Path(args.trl_path))
    sys.path.insert(0, str(ROOT / "src"))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    def shown(v):  # paths inside the repository are recorded relative to it (results are committed)
        return os.path.relpath(v, ROOT) if isinstance(v, str) and v.startswith(str(ROOT)) else v

    result: dict = {"args": {**{k: shown(v) for k, v in vars(args).items() if k not in ("worker", "model_dir", "precision")},
                             "argv": list(sys.argv[1:] if argv is None else argv)},
                    "cpu": cpu_name(), "load_average_start": os.getloadavg()[0], "cells": {}}
    result["peak_flops"] = run_worker("peak", args)
    print(f"matmul peak: fp32 {result['peak_flops']['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {result['peak_flops']['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    for workload in args.workloads.split(","):
        folder = model_dir(workload)
        for precision in args.precisions.split(","):
            cell = {t: {"rounds": []} for t in trainers}
            for r in range(args.rounds):
                order = trainers if r % 2 == 0 else trainers[::-1]
                for trainer in order:
                    out = run_worker(trainer, args, model_dir=folder, precision=precision)
                    cell[trainer]["rounds"].append(out)
                    s = summarise(out["steps"])
                    print(f"{workload} {precision} round {r} {trainer}: median {s['median_s']:.2f} s/step, "
                          f"{s['tokens_per_step']:.0f} tok/step, peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
            for trainer in trainers:
                steps = [s for o in cell[trainer]["rounds"] for s in o["steps"]]
                cell[trainer]["summary"] = summarise(steps)
                cell[trainer]["peak_rss_mb"] = max(o["peak_rss_mb"] for o in cell[trainer]["rounds"])
                if trainer == "credo":
                    cell[trainer]["rates"] = credo_rates(steps, cell[trainer]["rounds"][0]["flop_shape"],
                                                         result["peak_flops"][precision])
            if "credo" in cell and "trl" in cell:
                c, t = cell["credo"]["summary"], cell["trl"]["summary"]
                cell["ratio_per_step"] = t["median_s"] / c["median_s"]
                cell["ratio_per_token"] = t["s_per_token_total"] / c["s_per_token_total"]
                cell["memory_ratio"] = cell["credo"]["peak_rss_mb"] / cell["trl"]["peak_rss_mb"]
            result["cells"][f"{workload}/{precision}"] = cell
            write(result, Path(args.out))
    result["peak_flops_end"] = run_worker("peak", args)
    for name in ("fp32", "bf16"):  # the higher of the two measurements: fractions are conservative
        result["peak_flops"][name] = max(result["peak_flops"][name], result["peak_flops_end"][name])
    for name, cell in result["cells"].items():
        if "credo" in cell:
            steps = [s for o in cell["credo"]["rounds"] for s in o["steps"]]
            cell["credo"]["rates"] = credo_rates(steps, cell["credo"]["rounds"][0]["flop_shape"],
                                                 result["peak_flops"][name.split("/")[1]])
    result["load_average_end"] = os.getloadavg()[0]
    write(result, Path(args.out))
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    peak = result["peak_flops"]
    lines = [f"# credo vs TRL {TRL_VERSION} GRPOTrainer, one RL step on {result['cpu']} ({result['args']['threads']} threads)",
             "", f"Command: `python benchmarks/speed_vs_trl.py {' '.join(result['args'].get('argv', []))}`", "",
             f"matmul peak measured in the same run (the higher of its start and end): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s. {PROMPTS} prompts x {GROUP} completions x <= {MAX_NEW} new "
             f"tokens, {result['args']['rounds']} alternating rounds x {result['args']['steps']} timed steps per trainer.",
             "", "| workload | precision | trainer | median s/step (min-max) | gen. tokens/step | s per gen. token "
             "| peak RSS MB | TRL/credo per step | TRL/credo per token | credo/TRL memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, cell in result["cells"].items():
        workload, precision = name.split("/")
        for trainer in ("credo", "trl"):
            if trainer not in cell or "summary" not in cell[trainer]:
                continue
            s = cell[trainer]["summary"]
            ratios = ("", "", "")
            if trainer == "credo" and "ratio_per_step" in cell:
                ratios = (f"{cell['ratio_per_step']:.2f}x", f"{cell['ratio_per_token']:.2f}x", f"{cell['memory_ratio']:.2f}")
            lines.append(f"| {workload} | {precision} | {trainer} | {s['median_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) "
                         f"| {s['tokens_per_step']:.0f} | {s['s_per_token_total']:.4f} | {cell[trainer]['peak_rss_mb']:.0f} "
                         f"| {' | '.join(ratios)} |")
    lines += ["", "credo's arithmetic rate (useful FLOPs, see the script's docstring):", "",
              "| workload | precision | gen s (median) | update s (median) | sampling GFLOP/s | of peak | training GFLOP/s | of peak |",
              "|---|---|---|---|---|---|---|---|"]
    for name, cell in result["cells"].items():
        if "credo" in cell and "rates" in cell["credo"]:
            r = cell["credo"]["rates"]
            workload, precision = name.split("/")
            lines.append(f"| {workload} | {precision} | {r['gen_time_median']:.2f} | {r['update_time_median']:.2f} "
                         f"| {r['sampling_gflops']:.1f} | {r['sampling_fraction_of_peak']:.0%} "
                         f"| {r['training_gflops']:.1f} | {r['training_fraction_of_peak']:.0%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
