"""The stages `credo train` already is: "train" (warm-up then RL), "sft" (the warm-up alone) and "rl" (RL
from the stage's model, no warm-up). They run `train/run.py::train` on the stage's TrainConfig, so every
preset, recipe and field works; `credo train --resume` semantics inside the stage.

- "sft": supervised fine-tuning on the task's demonstrations ("Warm Up Before You Train", arXiv
  2505.13718, uses it on Knights-and-Knaves demonstrations before RLVR on another task): warmup.*
  fields, rl.steps forced to 0 (warmup.steps must be > 0).
- "rl": warmup.steps forced to 0; rl.steps must be > 0.
- "train": both, as configured.
- "eval": neither: the stage's model scored on the stage's task (held-out, greedy), e.g. a warm-up's
  transfer to another task before any RL; warmup.steps and rl.steps forced to 0 and run.eval_base to
  false (one evaluation). Its checkpoints/final is the model unchanged, so later stages may chain on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, held_out_of, register_stage


@dataclass
class NoParams:
    """These stages take no parameters of their own: they read the TrainConfig fields."""


def _train(cfg, *, resume: bool) -> dict[str, Any]:
    from credo.train.run import train

    summary = train(cfg, resume=resume)
    final = held_out_of(summary)
    if final is not None:  # the common key every stage writes (stages/base.py)
        summary["final"] = final
        path = Path(cfg.run.out_dir) / cfg.run.name / "summary.json"
        if path.is_file():
            path.write_text(json.dumps(summary, indent=2))
    return summary


def run_train(cfg, params: NoParams, *, resume: bool = False) -> dict[str, Any]:
    return _train(cfg, resume=resume)


def run_sft(cfg, params: NoParams, *, resume: bool = False) -> dict[str, Any]:
    if cfg.warmup.steps <= 0:
        raise CredoError("the sft stage needs warmup.steps > 0 (its supervised steps)")
    cfg.rl.steps = 0
    return _train(cfg, resume=resume)


def run_rl(cfg, params: NoParams, *, resume: bool = False) -> dict[str, Any]:
    if cfg.rl.steps <= 0:
        raise CredoError("the rl stage needs rl.steps > 0")
    cfg.warmup.steps = 0
    return _train(cfg, resume=resume)


def run_eval(cfg, params: NoParams, *, resume: bool = False) -> dict[str, Any]:
    cfg.warmup.steps, cfg.rl.steps, cfg.run.eval_base = 0, 0, False
    return _train(cfg, resume=resume)


register_stage(StageKind("train", NoParams, run_train, "warm-up then RL, exactly `credo train` (any preset / recipe)"))
register_stage(StageKind("sft", NoParams, run_sft, "supervised fine-tuning on the task's demonstrations (warmup.*)"))
register_stage(StageKind("rl", NoParams, run_rl, "RL from the stage's model, no warm-up (rl.*, any recipe)"))
register_stage(StageKind("eval", NoParams, run_eval, "held-out accuracy of the stage's model on its task, no training"))

CATALOG = [
    Entry("train", "warm-up then RL, as `credo train` (any preset, recipe and field)", "-", "confirmed",
          "a task"),
    Entry("sft", "supervised fine-tuning on demonstrations (cold start)",
          "Warm Up Before You Train: Unlocking General Reasoning in Resource-Constrained Settings (arXiv 2505.13718)",
          "confirmed", "a task with demonstrations, or warmup.demonstrations (a file, a demos stage's)",
          "works (knights reasoning = true: rule-based case-analysis traces stand in for the paper's QwQ-32B traces; "
          "a demos stage distils from a teacher folder)"),
    Entry("rl", "RL from the stage's model without a warm-up (any recipe)", "-", "confirmed", "a task"),
    Entry("eval", "held-out accuracy of the stage's model on the stage's task (no training)", "-", "confirmed",
          "a task"),
]
