"""Named presets: Python functions returning a full TrainConfig (no YAML trees).

- `default`: the bundled SmolLM2-135M-Instruct on 2-digit sums: a short supervised warm-up that
  teaches the answer format, then GRPO; sized to finish in under 20 minutes on a 2-core CPU.
- `code`: the bundled model on the `code` task (write `solve(...)`, hidden unit tests run in the
  sandbox): warm-up on reference solutions, then GRPO; sandbox outcomes counted per step.
- `tiny`: a random 2-layer model, a handful of steps; for tests and smoke runs (well under a minute).
"""

from __future__ import annotations

from typing import Callable

from credo.config import TrainConfig
from credo.registry import Registry

PRESETS: Registry[Callable[[], TrainConfig]] = Registry("preset")


@PRESETS.register("default")
def default() -> TrainConfig:
    cfg = TrainConfig(preset="default")
    cfg.task.params = {"difficulty": 2}
    return cfg


@PRESETS.register("code")
def code() -> TrainConfig:
    cfg = TrainConfig(preset="code")
    cfg.task.name = "code"
    cfg.task.params = {}
    cfg.task.eval_size = 64  # the whole held-out split (tasks/code.py)
    cfg.task.eval_batch_size = 32
    cfg.sampling.max_new_tokens = 96  # the longest reference solution is about 50 tokens
    cfg.sampling.stop = ["\n```"]  # the closing fence (completions open with "```python")
    cfg.rl.steps = 30
    cfg.rl.prompts_per_step = 8
    return cfg


@PRESETS.register("tiny")
def tiny() -> TrainConfig:
    cfg = TrainConfig(preset="tiny")
    cfg.model.name = "tiny"
    cfg.model.precision = "fp32"
    cfg.task.params = {"difficulty": 2}
    cfg.task.eval_size = 16
    cfg.task.eval_batch_size = 16
    cfg.sampling.max_new_tokens = 8
    cfg.warmup.steps = 2
    cfg.warmup.batch_size = 4
    cfg.warmup.lr = 1e-3
    cfg.rl.steps = 3
    cfg.rl.prompts_per_step = 4
    cfg.rl.group_size = 4
    cfg.rl.lr = 1e-3
    cfg.rl.skip_zero_advantage = False  # a random model rarely gets rewards: exercise the update anyway
    return cfg
