"""Shared by the update benchmarks (grad_checkpointing, lora_update): one process per configuration,
a fixed random teacher-forced batch, timed AdamW updates, and the process's peak resident memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_updates(model, opt, *, batch: int, length: int, updates: int, bf16: bool, warmup: int = 1) -> list[float]:
    """`warmup` untimed then `updates` timed AdamW steps of -mean token logprob on a fixed random
    [batch, length] batch (seed 0); bf16 autocast when `bf16`. Returns the timed seconds per update."""
    import torch

    from credo.logprobs import token_logprobs

    tokens = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    score = torch.ones_like(tokens, dtype=torch.bool)
    score[:, 0] = False  # the first token has no prediction
    times = []
    for _ in range(warmup + updates):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = -token_logprobs(model, tokens, mask, score).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[warmup:]


def run_worker(script: str, args: list[str]) -> dict:
    """Run `script --worker ...args` in a fresh interpreter (so its ru_maxrss is its own peak) with
    credo's src/ on the path; returns the JSON object it prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True,
                          cwd=ROOT, check=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def load_average() -> float:
    """The 1-minute load average: above ~1 on this 2-core machine, times are taken under contention."""
    return os.getloadavg()[0]
