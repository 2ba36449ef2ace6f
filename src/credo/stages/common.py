"""What the stage kinds with their own loop (dpo, distill) share: the run folder, the model, the task and
its held-out set, evaluation, and checkpoints that resume bitwise.

`open_stage` validates the config, seeds, creates (or reopens with `resume`) the run folder exactly as
`credo train` does (`train/run.py::make_run_dir`), writes `config.json` and `stage.json` (the kind and
its parameters), loads the model named by `model.name` and builds the task, the held-out set and a
torch rollout engine. A stage's loop counts optimizer steps globally (`step`), writes one metrics row
per step, and saves `checkpoints/step_<k>` with `save`; `resume_from` loads the newest complete one
(weights, AdamW moments, the extra model such as DPO's reference, every RNG) and cuts metrics.jsonl
back to the rows before that step, so a run killed with SIGKILL and resumed writes the same rows and
ends with the same weights as one that was not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from credo.errors import CredoError


@dataclass
class StageRun:
    cfg: Any
    kind: str
    run_dir: Path
    model: torch.nn.Module
    tokenizer: Any
    task: Any
    test: list
    engine: Any
    sampling: Any
    dtype: torch.dtype | None
    writer: Any
    summary: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def evaluate(self, label: str, **extra) -> dict[str, Any]:
        """Greedy held-out accuracy now, as a metrics row (phase "eval", stage `label`) and summary[label]."""
        from credo.train.evaluate import evaluate
        from credo.train.run import max_prompt_tokens

        self.engine.load_weights(self.model, version=0)
        result = evaluate(self.engine, self.tokenizer, self.task, self.test, self.sampling,
                          batch_size=self.cfg.task.eval_batch_size,
                          max_prompt_tokens=max_prompt_tokens(self.model, self.sampling, self.engine))
        self.summary[label] = result
        self.writer.write({"phase": "eval", "stage": label, **extra, **result})
        print(f"credo: {self.kind} held-out accuracy {label}: {result['accuracy']:.1%} "
              f"(format {result['format_rate']:.1%}, n={result['n']})", flush=True)
        return result

    def update(self, optimizer, max_grad_norm: float, *, apply: bool = True) -> float:
        """After the step's backward: clip, then the optimizer step unless the norm is non-finite (or `apply`
        is False: nothing to train this step), then zero the gradients; returns the norm before clipping.
        The crash point `update` (credo/faults.py) sits between the backward and the weight change."""
        from credo.faults import maybe_die

        maybe_die("update")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm))
        if apply and math.isfinite(grad_norm):  # a non-finite gradient never reaches the AdamW moments
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def conclude(self, label: str, *, step: int, optimizer, state: dict[str, Any]) -> dict[str, Any]:
        """The end of a stage: the held-out evaluation `label` (unless a resume already holds it), a resumable
        checkpoint, `summary["final"]`, `checkpoints/final` and summary.json."""
        if label not in self.summary:
            self.evaluate(label, after_step=step)
        self.save(f"step_{step}", optimizer=optimizer, state={"step": step, **state})
        self.summary["final"] = dict(self.summary[label])
        self.save("final", state={"step": step, **state, "final": True})
        return self.finish()

    def save(self, name: str, *, optimizer=None, extra_model=None, state: dict[str, Any]) -> None:
        from credo.train.checkpoint import save_checkpoint

        save_checkpoint(self.run_dir / "checkpoints" / name, model=self.model, tokenizer=self.tokenizer,
                        optimizer=optimizer, ref_model=extra_model, state={"stage": self.kind, **state})

    def resume_from(self, *, optimizer=None, extra_model=None):
        """Load the newest complete checkpoint (None: nothing to resume, metrics emptied); returns it."""
        from credo.train.checkpoint import load_into, newest_complete
        from credo.train.logging import read_metrics, rewrite_metrics

        checkpoint, skipped = newest_complete(self.run_dir / "checkpoints")
        for reason in skipped:
            print(f"credo: passing over {reason}", flush=True)
        path = self.run_dir / "metrics.jsonl"
        if checkpoint is None or checkpoint.state.get("stage") != self.kind:
            rewrite_metrics(path, [])
            self.writer.reopen()
            return None
        print(f"credo: resuming from {checkpoint.folder}", flush=True)
        load_into(checkpoint, model=self.model, optimizer=optimizer, ref_model=extra_model)
        done = int(checkpoint.state["step"])
        kept = [r for r in read_metrics(path) if (r.get("after_step", 0) <= done if r["phase"] == "eval"
                                                  else r.get("step", 0) < done)]
        rewrite_metrics(path, kept)
        self.writer.reopen()
        for r in kept:
            if r["phase"] == "eval":
                self.summary[r["stage"]] = {k: v for k, v in r.items() if k not in ("phase", "stage", "after_step")}
        self.summary["resumed_from"] = checkpoint.folder.name
        return checkpoint

    def finish(self) -> dict[str, Any]:
        self.writer.close()
        self.summary["seconds"] = round(time.perf_counter() - self.started, 2)
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
        print(f"credo: run folder {self.run_dir} ({self.summary['seconds']:.0f} s)", flush=True)
        return self.summary


def open_stage(cfg, kind: str, params: Any, *, resume: bool) -> StageRun:
    from credo.config import to_dict
    from credo.gpu import resolve_device, resolve_rollout_defaults
    from credo.models import load_policy
    from credo.rollout.base import SamplingParams
    from credo.rollout.torch_engine import TorchEngine
    from credo.tasks import make_task
    from credo.train.logging import MetricsWriter
    from credo.train.run import PRECISIONS, make_run_dir, seed_everything

    for note in resolve_rollout_defaults(cfg):
        print(f"credo: {note}", flush=True)
    if cfg.rollout.engine != "torch":
        raise CredoError(f"the {kind} stage samples with the torch engine; set rollout.engine = \"torch\"")
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    seed_everything(cfg.run.seed)
    task = make_task(cfg.task.name, **cfg.task.params)
    test = task.examples("test", cfg.task.eval_size, seed=0)
    run_dir = make_run_dir(cfg, resume)
    if not resume:
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        (run_dir / "stage.json").write_text(json.dumps({"kind": kind, "params": dataclasses.asdict(params)},
                                                       indent=2))
    policy = load_policy(cfg.model.name, seed=cfg.run.seed)
    policy.model.to(resolve_device(cfg.model.device))
    dtype = PRECISIONS[cfg.model.precision]
    sc = cfg.sampling
    sampling = SamplingParams(sc.temperature, sc.top_p, sc.top_k, sc.max_new_tokens, tuple(sc.stop))
    summary = {"run_dir": str(run_dir), "stage": kind, "seed": cfg.run.seed, "model": policy.source,
               "task": cfg.task.name, "eval_size": len(test)}
    return StageRun(cfg, kind, run_dir, policy.model, policy.tokenizer, task, test,
                    TorchEngine(policy.model, policy.tokenizer, autocast_dtype=dtype), sampling, dtype,
                    MetricsWriter(run_dir / "metrics.jsonl"), summary)
