"""GPU benchmark of the vLLM rollout engine (one CUDA GPU; needs `pip install -e ".[gpu,gpu-bench]"`).

    python benchmarks/gpu_vllm.py [--model smollm2|PATH] [--prompts 64] [--group 8] [--max-new-tokens 128]
                                  [--steps 3] [--skip-trl] [--out benchmarks/results/gpu_vllm]

Measures, on the same prompts (the arithmetic task, difficulty 2, seeded):
1. generation throughput (completion tokens / s) of the vLLM engine vs credo's torch engine, the
   same sampling settings (temperature 1, top_k 0, top_p 1), after one warm-up call each;
2. sampler/trainer mismatch: mean and max |vLLM logprob - trainer teacher-forced logprob| over all
   completion tokens (trainer in fp32 and in bf16 autocast, temperature 1);
3. time per RL step: credo (rollout.engine = "vllm", colocated, sleep mode) vs TRL's GRPOTrainer with
   use_vllm=True, vllm_mode="colocate", on identical work (same prompts per step, group size,
   completion budget, one optimizer step per batch, same lr, same reward function);
4. GPU memory: peak allocated by torch and device memory in use (torch.cuda.mem_get_info) per phase.
Writes <out>.json and <out>.md. Without CUDA or vLLM it exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "runs" / "gpu_bench"  # run folders and vLLM work files (runs/ is git-ignored)


def require_gpu() -> None:
    """Exit 2 with one clear line unless CUDA and vLLM are both here."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"no CUDA GPU visible to torch {torch.__version__}")
    if importlib.util.find_spec("vllm") is None:
        missing.append('vLLM is not installed (pip install -e ".[gpu]")')
    if missing:
        print(f"gpu_vllm: this benchmark needs one CUDA GPU and vLLM: {'; '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)


def gpu_memory() -> dict[str, float]:
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"torch_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "device_used_gib": (total - free) / 2**30, "device_total_gib": total / 2**30}


def workload(tokenizer, n_prompts: int, seed: int = 0):
    from credo.tasks import make_task
    from credo.train.evaluate import encode_prompts

    task = make_task("arith", difficulty=2)
    examples = task.examples("train", n_prompts, seed=seed)
    return task, examples, encode_prompts(tokenizer, task, examples)


def time_generation(engine, prompts, n, sampling, seed=0):
    import torch

    engine.generate(prompts[:2], n, sampling, seed=seed + 1)  # warm-up: kernels, graphs, caches
    torch.cuda.synchronize()
    t = time.perf_counter()
    groups = engine.generate(prompts, n, sampling, seed=seed)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return groups, {"seconds": elapsed, "completion_tokens": tokens, "tokens_per_s": tokens / elapsed}


def logprob_gap(model, completions, autocast_dtype=None) -> dict[str, float]:
    import torch

    from credo.batch import build_batch
    from credo.logprobs import token_logprobs
    from credo.rollout.torch_engine import autocast_context

    gaps = []
    device = next(model.parameters()).device
    for start in range(0, len(completions), 32):
        part = completions[start : start + 32]
        batch = build_batch(part, [0.0] * len(part), list(range(len(part))), pad_id=0)
        tokens, attention, mask = (t.to(device) for t in (batch.tokens, batch.attention_mask, batch.loss_mask))
        with torch.no_grad(), autocast_context(autocast_dtype, device):
            trainer = token_logprobs(model, tokens, attention, mask, temperature=1.0)
        gaps.append((batch.sampler_logprobs.to(device)[mask] - trainer[mask]).abs().float())
    gap = torch.cat(gaps)
    return {"mean_abs": float(gap.mean()), "max_abs": float(gap.max()), "tokens": int(gap.numel())}


def credo_rl_steps(args, model_name: str) -> dict:
    """Seconds per RL step of credo's own loop with the vLLM engine (colocated, sleep mode)."""
    import torch

    from credo.presets import PRESETS
    from credo.train.run import rl_context, setup

    cfg = PRESETS.get("default")()
    cfg.model.name, cfg.model.precision = model_name, "bf16"
    cfg.rollout.engine = "vllm"
    cfg.rl.steps, cfg.rl.prompts_per_step, cfg.rl.group_size = args.steps, args.prompts // args.group or 1, args.group
    cfg.rl.minibatches = 1
    cfg.sampling.max_new_tokens = args.max_new_tokens
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(SCRATCH), f"credo-{int(time.time())}", False
    run = setup(cfg)
    from credo.train.rl import rl_step

    ctx = rl_context(run)
    prompts = run.task.examples("train", cfg.rl.steps * cfg.rl.prompts_per_step, seed=0)
    times = []
    for step in range(cfg.rl.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        metrics = rl_step(ctx, step, prompts[step * cfg.rl.prompts_per_step : (step + 1) * cfg.rl.prompts_per_step])
        torch.cuda.synchronize()
        times.append({"seconds": time.perf_counter() - t, "gen_time": metrics["gen_time"],
                      "weight_sync_time": metrics["weight_sync_time"]})
    return {"steps": times, "seconds_per_step_after_first": _after_first(times), "memory": gpu_memory()}


def _after_first(times):
    rest = times[1:] or times
    return sum(t["seconds"] for t in rest) / len(rest)


def trl_rl_steps(args, model_dir: str) -> dict:
    """Seconds per step of TRL's GRPOTrainer (use_vllm, colocate) on the same work."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from credo.tasks.base import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task, examples, _ = workload(tokenizer, args.steps * max(1, args.prompts // args.group))
    # the same rendered prompts credo samples from (chat template applied once, here)
    rows = [{"prompt": render_prompt(tokenizer, task, ex), "idx": i} for i, ex in enumerate(examples)]

    def reward(completions, idx, **kwargs):  # TRL passes dataset columns as aligned lists
        return [float(task.score(c, examples[i]).reward) for c, i in zip(completions, idx)]

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append({"seconds": time.perf_counter() - self.t})

    per_step = max(1, args.prompts // args.group) * args.group
    config = GRPOConfig(output_dir=str(SCRATCH / "trl"), per_device_train_batch_size=per_step,
                        num_generations=args.group, max_completion_length=args.max_new_tokens,
                        max_steps=args.steps, learning_rate=1.5e-5, bf16=True, use_vllm=True,
                        vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_enable_sleep_mode=True, logging_steps=1,
                        report_to=[], save_strategy="no", temperature=1.0)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=config,
                          train_dataset=Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    return {"steps": times, "seconds_per_step_after_first": _after_first(times), "memory": gpu_memory()}


PARTS = ("generation", "credo_rl", "trl_rl")  # each in its own process: one vLLM engine per process


def part_generation(args) -> dict:
    """Torch engine vs vLLM engine tokens/s, the logprob gap, memory."""
    import torch

    from credo.gpu import attention_implementation, place_policy
    from credo.models import load_policy
    from credo.rollout.base import SamplingParams
    from credo.rollout.torch_engine import TorchEngine
    from credo.rollout.vllm_engine import VLLMEngine, VLLMSettings

    policy = load_policy(args.model)
    device = torch.device("cuda")
    place_policy(policy.model, device, attention_implementation(device))
    _, _, prompts = workload(policy.tokenizer, args.prompts)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, stop=("</answer>",))
    result = {"device": torch.cuda.get_device_name(0), "model": policy.source}
    torch_engine = TorchEngine(policy.model, policy.tokenizer, autocast_dtype=torch.bfloat16)
    _, result["torch_engine"] = time_generation(torch_engine, prompts, args.group, sampling)
    result["memory_torch_engine"] = gpu_memory()
    engine = VLLMEngine(policy.model, policy.tokenizer, VLLMSettings(sleep_mode=False, gpu_memory_utilization=0.4),
                        source=policy.source, work_dir=str(SCRATCH))
    groups, result["vllm_engine"] = time_generation(engine, prompts, args.group, sampling)
    result["memory_vllm_engine"] = gpu_memory()
    completions = [c for g in groups for c in g]
    result["logprob_gap_fp32"] = logprob_gap(policy.model, completions)
    result["logprob_gap_bf16_autocast"] = logprob_gap(policy.model, completions, torch.bfloat16)
    return result


def run_part(part: str, args) -> dict:
    if part == "generation":
        return part_generation(args)
    if part == "credo_rl":
        return {"credo_rl": credo_rl_steps(args, args.model)}
    from credo.models import load_policy

    return {"trl_rl": trl_rl_steps(args, load_policy(args.model).source)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--part", choices=PARTS, help="run one part here and print its JSON (internal)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_vllm"))
    args = parser.parse_args(argv)
    require_gpu()
    if args.part:
        print("GPU_VLLM_JSON " + json.dumps(run_part(args.part, args)), flush=True)
        return 0
    import subprocess

    result = {"args": vars(args)}
    for part in PARTS:
        if part == "trl_rl" and args.skip_trl:
            continue
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--skip-trl"]
        done = subprocess.run([sys.executable, __file__, *forwarded, "--part", part],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_VLLM_JSON ")]
        if done.returncode != 0 or not lines:
            result[f"{part}_error"] = (done.stderr or done.stdout)[-4000:]
            print(f"gpu_vllm: part {part} failed (rc {done.returncode}); its log is in the JSON", file=sys.stderr)
            continue
        result.update(json.loads(lines[-1][len("GPU_VLLM_JSON "):]))
    write(result, Path(args.out))
    return 0


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))

    def get(*keys, fmt="{:.2f}"):
        node = result
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return "failed (see JSON)"
            node = node[k]
        return fmt.format(node)

    lines = [f"# vLLM engine on {result.get('device', '?')} ({result.get('model', '?')})", "",
             "| measure | value |", "|---|---|",
             f"| torch engine tokens/s | {get('torch_engine', 'tokens_per_s', fmt='{:.0f}')} |",
             f"| vLLM engine tokens/s | {get('vllm_engine', 'tokens_per_s', fmt='{:.0f}')} |",
             f"| mean / max abs logprob gap (trainer fp32) | {get('logprob_gap_fp32', 'mean_abs', fmt='{:.4f}')} / "
             f"{get('logprob_gap_fp32', 'max_abs', fmt='{:.4f}')} |",
             f"| mean / max abs logprob gap (trainer bf16) | {get('logprob_gap_bf16_autocast', 'mean_abs', fmt='{:.4f}')}"
             f" / {get('logprob_gap_bf16_autocast', 'max_abs', fmt='{:.4f}')} |",
             f"| credo s/RL step (vLLM, colocated) | {get('credo_rl', 'seconds_per_step_after_first')} |",
             f"| TRL GRPOTrainer s/step (use_vllm, colocate) | {get('trl_rl', 'seconds_per_step_after_first')} |",
             f"| GPU memory in use, torch engine (GiB) | {get('memory_torch_engine', 'device_used_gib', fmt='{:.1f}')} |",
             f"| GPU memory in use, vLLM engine (GiB) | {get('memory_vllm_engine', 'device_used_gib', fmt='{:.1f}')} |",
             f"| GPU memory in use, credo RL (GiB) | {get('credo_rl', 'memory', 'device_used_gib', fmt='{:.1f}')} |",
             f"| GPU memory in use, TRL (GiB) | {get('trl_rl', 'memory', 'device_used_gib', fmt='{:.1f}')} |"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
