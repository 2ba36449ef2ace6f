"""A whole training run: set up the run folder, evaluate, warm up, RL, evaluate, summarise.

Run folder layout (`runs/<name>/`):
  config.json         the resolved configuration (pass it back with --config to repeat the run)
  metrics.jsonl       one JSON line per warm-up and RL step (flushed as it is written)
  summary.json        held-out accuracy before warm-up, after warm-up and after RL, timings
  curves.png          learning curves of the RL stage
  checkpoints/warmup  model after warm-up (Hugging Face folder, safetensors)
  checkpoints/final   model after RL
  checkpoints/step_N  periodic checkpoints when run.checkpoint_every > 0
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import random
import time
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.config import TrainConfig, check_ranges, to_dict
from credo.credit import CREDIT
from credo.credit.base import credit_needs_of, credit_state_of
from credo.judges import check_judge_spec, make_judge
from credo.credit.normalisation import OBLRState
from credo.dist.env import SINGLE, NullWriter, World
from credo.critic import CRITIC_KINDS, CriticSettings, ValueModel, critic_optimizer
from credo.errors import CredoError
from credo.gpu import attention_implementation, make_engine, place_policy, resolve_device, resolve_rollout_defaults
from credo.lora import lora_from_config
from credo.memory import apply_memory_options
from credo.models import load_policy
from credo.objectives import KL_ESTIMATORS, OBJECTIVES, REDUCTIONS
from credo.objectives.base import needs_of
from credo.objectives.entropy_control import make_entropy_control
from credo.objectives.is_correction import IS_CORRECTIONS
from credo.objectives.distribution import wire_internal_policy
from credo.rollout import RolloutEngine, SamplingParams
from credo.rollout.temperature import TEMPERATURE_SCHEDULES, make_schedule
from credo.tasks import make_task
from credo.train.checkpoint import (Checkpoint, load_credit_state, load_into, load_method_state, newest_complete,
                                    save_checkpoint)
from credo.train.evaluate import evaluate
from credo.train.sampled_eval import evaluate_sampled, format_sampled
from credo.train.logging import JobClock, LineProgress, MetricsWriter, plot_curves, read_metrics, rewrite_metrics
from credo.train.trackers import check_trackers, make_writer  # (run.trackers: TensorBoard, offline W&B)
from credo.train.optim import lr_at, make_optimizer, set_lr
from credo.train.credit_inputs import CreditSources
from credo.train.prompts import prioritized_prompt_ids, scheduled_prompt_ids
from credo.train.evaluate import encode_prompts, safe_score, too_long
from credo.train.pipeline import RolloutPipeline
from credo.train.rl import RLContext, UpdateSettings, bind_params, rl_step, rollout_groups, step_seed
from credo.rollout.multiturn import is_multiturn
from credo.rollout.samplers import make_sampler
from credo.rewards.length import overlong_shaping
from credo.rewards.terms import check_reward_terms, make_reward_mix
from credo.select import DynamicSampling
from credo.select.d3s import make_sample_selection
from credo.select.datamask import bind_data_selection, check_data_selection
from credo.train.curriculum import check_curriculum, make_curriculum
from credo.train.sft_mix import check_sft_mix, make_sft_mix
from credo.train.warm_start import check_warm_start, make_warm_start, row_was_done as warm_start_row_done
from credo.train.context_schedule import context_prompts, prompt_list_size
from credo.dist.checkpoint import is_dcp, load_dcp, save_dcp
from credo.dist.comm import broadcast_object, reduce_metrics
from credo.dist.env import init as init_world, teardown as teardown_world
from credo.dist.placement import place_for_rl
from credo.dist.shard import shard_bounds
from credo.train.snr import lr_state_from_json, lr_state_to_json
from credo.train.sft import read_demonstrations, run_warmup

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    name = cfg.run.name or f"{cfg.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.run.out_dir) / name
    if (folder / "summary.json").exists():
        raise CredoError(f"run folder {folder} already holds a finished run; pick another run.name")
    if not resume and (folder / "metrics.jsonl").exists():
        raise CredoError(f"run folder {folder} holds an unfinished run: continue it with "
                         f"`credo train --resume {folder}` or pick another run.name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".credo-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CredoError(f"run.out_dir {cfg.run.out_dir!r}: cannot create the run folder {folder} "
                         f"({exc.strerror or exc})") from exc
    return folder


def restore(run: "Run") -> Checkpoint | None:
    """Continue from the newest complete checkpoint of the run folder (None: start over).

    Weights, optimizer, reference model and RNGs come from the checkpoint; metrics.jsonl is cut back
    to what had happened at that checkpoint, and earlier evaluations are read back into the summary.
    """
    checkpoint, skipped = newest_complete(run.run_dir / "checkpoints")
    for reason in skipped:
        print(f"credo: passing over {reason}", flush=True)
    metrics_path = run.run_dir / "metrics.jsonl"
    if checkpoint is None:
        if not run.world.is_main:
            return None
        rewrite_metrics(metrics_path, [])  # nothing to continue from: the run starts over
        run.writer.reopen()
        return None
    print(f"credo: resuming from {checkpoint.folder}", flush=True)
    if checkpoint.state.get("stage") == "warmup":  # RL checkpoints are loaded with the optimizer
        load_into(checkpoint, model=run.model, lora=run.lora)
    if not run.world.is_main:  # (every rank loads the checkpoint; rank 0 rewrites the metrics)
        return checkpoint
    done = checkpoint.state.get("rl_step", 0)
    kept = [r for r in read_metrics(metrics_path)
            if r["phase"] in ("warmup", "eval") and r.get("stage") not in ("rl", "rl_step")
            or (r["phase"] == "rl" and r["step"] < done)
            or (r.get("stage") == "rl_step" and r["step"] <= done)  # (periodic evals: taken before the save)
            or (r["phase"] == "data_selection" and checkpoint.state.get("stage") == "rl")  # (not recomputed)
            or (r["phase"] == "warm_start" and warm_start_row_done(r, checkpoint.state))]  # (train/warm_start.py)
    rewrite_metrics(metrics_path, kept)
    run.writer.reopen()
    for r in kept:
        if r["phase"] == "eval" and r.get("stage") != "rl_step":
            run.summary[r["stage"]] = {k: v for k, v in r.items() if k not in ("phase", "stage")}
    run.summary["resumed_from"] = checkpoint.folder.name
    return checkpoint


def check_method_params(cfg: TrainConfig) -> None:
    """Run the hyperparameter checks the objective and credit estimator attach (`objectives.base.checks`)."""
    from credo.objectives.base import check_params_of, effective_params

    common = {"clip_low": cfg.rl.clip_low, "clip_high": cfg.rl.clip_high, "kl_coef": cfg.rl.kl_coef}
    for fn, extra in ((OBJECTIVES.get(cfg.rl.objective), cfg.rl.objective_params),
                      (CREDIT.get(cfg.rl.credit), cfg.rl.credit_params)):
        check = check_params_of(fn)
        if check is not None:
            check(effective_params(fn, common if fn is OBJECTIVES.get(cfg.rl.objective) else {}, extra or {}), cfg)


def check_scale_out(cfg: TrainConfig) -> None:
    """The Ray engine, verifier workers and asynchronous rollouts: the combinations not built yet."""
    ro = cfg.rollout
    if ro.engine == "ray" and cfg.dist.strategy != "none":
        raise CredoError(f"rollout.engine \"ray\" with dist.strategy {cfg.dist.strategy!r} is not built yet (one "
                         f"worker pool per rank); use dist.strategy none or rollout.engine \"torch\"")
    if ro.max_staleness > 0:
        if ro.engine != "ray":
            raise CredoError(f"rollout.max_staleness {ro.max_staleness} (asynchronous rollouts) needs rollout.engine "
                             f"\"ray\" (workers holding their own weights); rollout.engine is {ro.engine!r}")
        from credo.tasks import TASKS

        task = TASKS._items.get(cfg.task.name)  # (an unknown name is reported where the task is built)
        if task is not None and is_multiturn(task):
            raise CredoError(f"rollout.max_staleness {ro.max_staleness} with the multi-turn task {cfg.task.name!r} is "
                             f"not built yet (turns are generated one engine call at a time); use max_staleness 0")
        for field, on in (("rl.dynamic_sampling", cfg.rl.dynamic_sampling), ("rl.spo_prioritized", cfg.rl.spo_prioritized)):
            if on:  # refill rounds / prompt choice depend on the current step's results
                raise CredoError(f"rollout.max_staleness {ro.max_staleness} with {field} = true is not built yet "
                                 f"(the prompts of a step sent ahead must be known in advance); set one of them off")


def validate(cfg: TrainConfig) -> None:
    """Resolve every name early, so a typo fails before minutes of loading and evaluation."""
    check_ranges(cfg)  # every field's marker (config.py): ranges, choices, non-empty names
    OBJECTIVES.get(cfg.rl.objective)
    CREDIT.get(cfg.rl.credit)
    check_method_params(cfg)
    KL_ESTIMATORS.get(cfg.rl.kl_estimator)
    check_judge_spec(cfg.rl.judge)
    if cfg.rl.judge != "synthetic" and "step_rewards" not in credit_needs_of(CREDIT.get(cfg.rl.credit)):
        raise CredoError(f"rl.judge {cfg.rl.judge!r} scores steps, but rl.credit {cfg.rl.credit!r} reads no step "
                         f"rewards; choose a step-level estimator (`credo list credit`)")
    if cfg.rl.is_correction != "none":
        IS_CORRECTIONS.get(cfg.rl.is_correction)
        if not cfg.rl.recompute_old_logprobs:
            raise CredoError(f"rl.is_correction {cfg.rl.is_correction!r} weighs trainer against sampler "
                             f"logprobs: it needs rl.recompute_old_logprobs = true")
    if cfg.rollout.engine == "vllm" and cfg.dist.strategy != "none":
        raise CredoError("rollout.engine \"vllm\" with dist.strategy ranks is not built yet (each rank would need "
                         "its own engine and weight sync); use dist.strategy none or rollout.engine \"torch\"")
    if cfg.warmup.demonstrations.startswith("@"):
        raise CredoError(f"warmup.demonstrations = {cfg.warmup.demonstrations!r} names a pipeline stage; only "
                         f"`credo pipeline` resolves \"@<stage>\" (give a file here)")
    check_scale_out(cfg)
    check_trackers(cfg.run.trackers)  # (a missing tensorboard / wandb package, before the run folder exists)
    from credo.tasks import TASKS

    check_reward_terms(cfg.rl.reward_terms, cfg.rl.reward_term_params, TASKS._items.get(cfg.task.name), cfg.task.name)
    make_sample_selection(cfg.rl.sample_selection, cfg.rl.sample_selection_params, cfg.rl.steps)
    check_data_selection(cfg)  # rl.data_selection: the pool's method, parameters, rl.prompt_pool > 0
    check_curriculum(cfg)
    check_sft_mix(cfg)  # rl.sft_mix: CHORD's parameters, its expert file (train/sft_mix.py)
    check_warm_start(cfg)  # rl.warm_start: a critic estimator, the params, the offline rows (train/warm_start.py)
    if cfg.rl.reward_model and cfg.rollout.ray_verifiers > 0:
        raise CredoError("rl.reward_model with rollout.ray_verifiers > 0 is not built yet (the reward model runs in "
                         "the trainer's process); set rollout.ray_verifiers 0")
    if cfg.rl.reward_model:
        from pathlib import Path

        folder = Path(cfg.rl.reward_model[len("rm:"):]).expanduser()
        if not (folder / "orm.json").is_file():
            raise CredoError(f"rl.reward_model: {folder} has no orm.json (train one with `credo train-rm`)")
    sampler = make_sampler(cfg.rollout.sampler, cfg.rollout.sampler_params)  # (rollout/samplers.py)
    if sampler is not None:
        sampler.check(cfg.rl.group_size, cfg.sampling.max_new_tokens)
        from credo.tasks import TASKS

        task = TASKS._items.get(cfg.task.name)  # (an unknown name is reported where the task is built)
        branches_turns = getattr(sampler, "multiturn", False)  # VPR's state groups (rollout/state_groups.py)
        if task is not None and is_multiturn(task) and not branches_turns:
            raise CredoError(f"rollout.sampler {cfg.rollout.sampler!r} with the multi-turn task {cfg.task.name!r} is not "
                             f"built yet (turns are drawn by the turn-by-turn driver); use rollout.sampler independent")
        if task is not None and not is_multiturn(task) and branches_turns:
            raise CredoError(f"rollout.sampler {cfg.rollout.sampler!r} branches the states of multi-turn episodes, but "
                             f"task {cfg.task.name!r} is single-turn; use a multi-turn task (keyvalue)")
        if getattr(sampler, "needs_guide", False) and cfg.rollout.engine != "torch":
            raise CredoError(f"rollout.sampler {cfg.rollout.sampler!r} masks every decoding step: it needs "
                             f"rollout.engine \"torch\" (rollout.engine is {cfg.rollout.engine!r})")
        if cfg.rollout.max_staleness > 0:
            raise CredoError(f"rollout.sampler {cfg.rollout.sampler!r} with rollout.max_staleness > 0 is not built yet "
                             f"(the pipeline sends plain generations ahead); use max_staleness 0")
    if "masking_policy" in inspect.signature(OBJECTIVES.get(cfg.rl.objective)).parameters \
            and not callable(getattr(sampler, "action_mask", None)):
        from credo.recipes import RECIPES
        from credo.rollout.samplers import SAMPLERS

        masking = [n for n in SAMPLERS.names() if callable(getattr(SAMPLERS.get(n), "action_mask", None))]
        recipe = f"; --recipe {cfg.rl.objective} sets both" if cfg.rl.objective in RECIPES else ""
        raise CredoError(f"rl.objective {cfg.rl.objective} masks its loss with the policy that masked the rollouts: "
                         f"it needs rollout.sampler {' or '.join(repr(n) for n in masking)} (rollout.sampler is "
                         f"{cfg.rollout.sampler!r}){recipe}")
    if cfg.rollout.temperature_schedule != "none":
        TEMPERATURE_SCHEDULES.get(cfg.rollout.temperature_schedule)
        if cfg.rollout.engine != "torch":
            raise CredoError(f"rollout.temperature_schedule {cfg.rollout.temperature_schedule!r} needs the torch "
                             f"engine (per-row temperatures at each decoding step); rollout.engine is "
                             f"{cfg.rollout.engine!r}")
    make_entropy_control(cfg.rl.entropy_control, cfg.rl.entropy_control_params, cfg.rl.entropy_coef)  # (checks)
    if cfg.model.lora_rank > 0 and cfg.dist.strategy != "none":
        raise CredoError(f"model.lora_rank > 0 with dist.strategy {cfg.dist.strategy!r} is not built yet (DDP / FSDP2 "
                         f"of a peft model and adapter-only DCP checkpoints); use one process or model.lora_rank = 0")
    if cfg.rl.dynamic_sampling and cfg.dist.strategy != "none":
        # refill rounds differ per rank (different prompts keep different groups), so ranks would
        # disagree on the step's batch size and early exits: not built yet
        raise CredoError(f"rl.dynamic_sampling is not supported with dist.strategy {cfg.dist.strategy!r} yet; "
                         f"use one process or rl.dynamic_sampling = false")
    if cfg.rl.loss_reduction not in REDUCTIONS:
        raise CredoError(f"unknown rl.loss_reduction {cfg.rl.loss_reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if cfg.rl.critic_kind not in CRITIC_KINDS:
        raise CredoError(f"unknown rl.critic_kind {cfg.rl.critic_kind!r}; valid: {', '.join(CRITIC_KINDS)}")
    if cfg.model.precision not in PRECISIONS and cfg.model.precision != "auto":  # (auto: resolved in setup)
        raise CredoError(f"unknown model.precision {cfg.model.precision!r}; valid: {', '.join(PRECISIONS)}")
    if cfg.rl.spo_prioritized:
        protocol = credit_state_of(CREDIT.get(cfg.rl.credit))
        if protocol is None or protocol.sampling_weights is None:
            able = [n for n in CREDIT.names() if getattr(credit_state_of(CREDIT.get(n)), "sampling_weights", None)]
            raise CredoError(f"rl.spo_prioritized needs a stateful estimator with sampling weights "
                             f"(rl.credit = one of {', '.join(able)}), not {cfg.rl.credit!r}")
        if cfg.rl.prompt_pool <= 0:
            raise CredoError("rl.spo_prioritized draws from a prompt pool: set rl.prompt_pool > 0")
    if cfg.rl.overlong_buffer > cfg.sampling.max_new_tokens:
        raise CredoError(f"rl.overlong_buffer ({cfg.rl.overlong_buffer}) must not exceed sampling.max_new_tokens "
                         f"({cfg.sampling.max_new_tokens}): the buffer is the last tokens before the limit")
    if cfg.rl.snr_lr and cfg.rl.minibatches < 2:
        raise CredoError(f"rl.snr_lr measures the gradient SNR across a step's minibatch gradients: "
                         f"set rl.minibatches >= 2 (got {cfg.rl.minibatches})")


def max_prompt_tokens(model, sampling: SamplingParams, engine=None) -> int | None:
    """The longest prompt that leaves room for max_new_tokens in the model's context (or in the
    engine's, when it is shorter: vLLM's rollout.max_model_len)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(engine, "max_model_len", None)]
    limits = [c for c in limits if c]
    return None if not limits else min(limits) - sampling.max_new_tokens


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal; plain lines every few steps when stderr is a file or pipe."""
    import sys

    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc)
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


@dataclass
class Run:
    """The state one training job carries between its stages."""

    cfg: TrainConfig
    run_dir: Path
    task: Any
    test: list
    model: torch.nn.Module
    tokenizer: Any
    engine: RolloutEngine  # rollout.engine: TorchEngine or VLLMEngine (credo/gpu.py::make_engine)
    sampling: SamplingParams
    dtype: torch.dtype | None
    writer: MetricsWriter
    summary: dict[str, Any]
    timings: dict[str, float]
    resumed: Checkpoint | None = None
    world: World = SINGLE  # torch.distributed: this rank (credo/dist/); rank 0 writes the run folder
    placement: Any = None  # several ranks: the wrapped policy and reference (credo/dist/wrap.py)
    lora: Any = None  # model.lora_rank > 0: credo.lora.LoRAPolicy (adapters injected into `model`)
    verifier: Any = None  # rollout.ray_verifiers > 0: rewards/verifier_pool.py::VerifierPool (set by rl_context)
    clock: JobClock = dataclasses.field(default_factory=lambda: JobClock({}))  # the whole job's ETA (train())
    data_selection: dict | None = None  # rl.data_selection: the selected pool (select/datamask.py), checkpointed

    def saved(self) -> dict[str, Any]:
        """What a checkpoint saves as its model: peft's adapters only with LoRA, else the model."""
        return {"model": self.model} if self.lora is None else {"model": self.lora.peft_model}

    def held_out(self, label: str, step: int | None = None) -> None:
        """Greedy accuracy on the fixed held-out set, recorded under `label` (rank 0 only). With `step`
        (task.eval_every): a periodic evaluation after that many RL steps, stage "rl_step" in
        metrics.jsonl only (the summary keeps base / warmup / rl)."""
        if not self.world.is_main:
            return
        t = time.perf_counter()
        result = evaluate(self.engine, self.tokenizer, self.task, self.test, self.sampling,
                          batch_size=self.cfg.task.eval_batch_size,
                          max_prompt_tokens=max_prompt_tokens(self.model, self.sampling, self.engine))
        if self.cfg.task.eval_samples > 0:  # pass@k, maj@k, mean@k from K samples per prompt
            result.update(evaluate_sampled(self.engine, self.tokenizer, self.task, self.test, self.sampling,
                                           samples=self.cfg.task.eval_samples,
                                           batch_size=self.cfg.task.eval_batch_size, seed=self.cfg.run.seed,
                                           max_prompt_tokens=max_prompt_tokens(self.model, self.sampling,
                                                                               self.engine)))
        seconds = time.perf_counter() - t
        self.clock.done("eval", seconds)
        if step is not None:
            self.timings["eval_rl_steps"] = self.timings.get("eval_rl_steps", 0.0) + seconds
            self.writer.write({"phase": "eval", "stage": "rl_step", "step": step, **result})
            print(f"credo: held-out accuracy after RL step {step}: {result['accuracy']:.1%}", flush=True)
            return
        self.timings[f"eval_{label}"] = seconds
        self.summary[label] = result
        self.writer.write({"phase": "eval", "stage": label, **result})
        print(f"credo: held-out accuracy {label}: {result['accuracy']:.1%} "
              f"(format {result['format_rate']:.1%}, n={result['n']}){format_sampled(result)}", flush=True)


def setup(cfg: TrainConfig, resume: bool = False, world: World = SINGLE) -> Run:
    """Validate, seed, build the task and held-out set, create the run folder, load the model.

    Several ranks: every rank loads the same model (same seed); only rank 0 creates the folder."""
    for note in resolve_rollout_defaults(cfg):  # before config.json: it records the resolved values
        if world.is_main:
            print(f"credo: {note}", flush=True)
    validate(cfg)
    started = time.perf_counter()
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    seed_everything(cfg.run.seed)
    task = make_task(cfg.task.name, **cfg.task.params)
    if getattr(task, "has_reference_answers", True) is False:  # (the JSONL task without answers)
        if not cfg.rl.reward_model:
            raise CredoError(f"task {cfg.task.name!r} has no reference answers: its completions need a reward model; "
                             f"set rl.reward_model rm:<folder> (`credo train-rm`)")
        if cfg.warmup.steps > 0 and not getattr(task, "demonstration_field", None):
            raise CredoError(f"task {cfg.task.name!r} has no reference answers, so no demonstrations for the warm-up: "
                             f"set warmup.steps 0 or the task's demonstration_field")
    test = task.examples("test", cfg.task.eval_size, seed=0)  # fixed across seeds: comparable runs
    if not world.is_main:
        cfg.run.progress = False
    run_dir = Path(broadcast_object(world, str(make_run_dir(cfg, resume)) if world.is_main else None))
    if not resume and world.is_main:
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    policy = load_policy(cfg.model.name, seed=cfg.run.seed)
    if cfg.rl.curriculum == "context_length":  # a phase without prompts fails here, before the warm-up
        context_prompts(cfg, task, policy.tokenizer, prompt_list_size(cfg.rl))
    device = resolve_device(cfg.model.device)  # before any copy: ref model and critic follow it
    place_policy(policy.model, device, attention_implementation(device, cfg.model.attn_implementation))
    apply_memory_options(policy.model, fp32_lm_head=cfg.model.fp32_lm_head,
                         gradient_checkpointing=cfg.model.gradient_checkpointing)
    lora = lora_from_config(cfg.model, policy.model, cfg.run.seed)  # adapters injected in place (credo/lora.py)
    dtype = PRECISIONS[cfg.model.precision]
    sc = cfg.sampling
    summary = {"run_dir": str(run_dir), "preset": cfg.preset, "seed": cfg.run.seed,
               "model": policy.source, "task": cfg.task.name, "eval_size": len(test)}
    return Run(cfg, run_dir, task, test, policy.model, policy.tokenizer,
               make_engine(cfg, policy.model, policy.tokenizer, policy.source, dtype, run_dir),
               SamplingParams(sc.temperature, sc.top_p, sc.top_k, sc.max_new_tokens, tuple(sc.stop)),
               dtype, make_writer(MetricsWriter(run_dir / "metrics.jsonl"), cfg.run.trackers, run_dir,
                                  config=to_dict(cfg), run_name=run_dir.name) if world.is_main else NullWriter(),
               summary,
               {"load": time.perf_counter() - started}, world=world, lora=lora)


def warmup_stage(run: Run) -> None:
    """Supervised warm-up on demonstrations, then evaluation and a checkpoint."""
    wc = run.cfg.warmup
    if wc.steps <= 0:
        return
    t = time.perf_counter()
    if wc.demonstrations:  # a file (a demos stage's): cycled in the seeded order run_warmup shuffles
        demos = read_demonstrations(wc.demonstrations)
    else:
        demos = run.task.examples("train", wc.steps * wc.batch_size, seed=run.cfg.run.seed + 10_000)
    bar = _progress(wc.steps, "warm-up", run.cfg.run.progress)
    last = [time.perf_counter()]

    def on_step(record: dict) -> None:
        run.writer.write(record)
        now = time.perf_counter()
        run.clock.done("warmup", now - last[0])
        last[0] = now
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", job_eta=run.clock.text())

    run_warmup(run.model, run.tokenizer, run.task, demos, steps=wc.steps, batch_size=wc.batch_size,
               lr=wc.lr, seed=run.cfg.run.seed, autocast_dtype=run.dtype, on_step=on_step)
    bar.close()
    run.engine.load_weights(run.model, version=0)  # a separate engine (vLLM) samples the warmed-up policy
    run.timings["warmup"] = time.perf_counter() - t
    run.held_out("warmup")
    if run.world.is_main:  # (the warm-up is replicated: every rank ran the same steps on the same demos)
        save_checkpoint(run.run_dir / "checkpoints" / "warmup", **run.saved(), tokenizer=run.tokenizer,
                        state={"stage": "warmup", "rl_step": 0, **lora_state(run)})


def rl_context(run: Run) -> RLContext:
    """Bind the objective, credit estimator and update settings from the config, once."""
    rl = run.cfg.rl
    common = {"clip_low": rl.clip_low, "clip_high": rl.clip_high, "kl_coef": rl.kl_coef,
              "kl_estimator": KL_ESTIMATORS.get(rl.kl_estimator)}
    objective = bind_params(OBJECTIVES.get(rl.objective), common, rl.objective_params, "objective")
    if "lm_head" in inspect.signature(objective).parameters:  # internal-layer policies (BuPO)
        temperature = run.sampling.temperature if run.sampling.temperature > 0 else 1.0
        objective = wire_internal_policy(objective, run.model, temperature=temperature)
    sampler = make_sampler(run.cfg.rollout.sampler, run.cfg.rollout.sampler_params)  # (rollout/samplers.py)
    if "masking_policy" in inspect.signature(objective).parameters:  # NLPO: the sampler's delayed copy masks the loss
        objective = functools.partial(objective, masking_policy=sampler)  # (validate: it has action_mask)
    credit = bind_params(CREDIT.get(rl.credit), {}, rl.credit_params, "credit estimator")
    credit_needs = credit_needs_of(credit)
    # the reference is the policy as RL starts (after warm-up), frozen
    wants_ref = (rl.kl_coef or 0.0) > 0 or "ref" in needs_of(objective) or "ref_logprobs" in credit_needs
    # LoRA: the same weights with the adapters disabled (credo/lora.py::AdaptersOff), no second copy
    ref_model = None if not wants_ref else run.lora.reference() if run.lora is not None else \
        copy.deepcopy(run.model).eval().requires_grad_(False)
    saved_ref = None if run.lora is not None else ref_model  # (nothing of its own to checkpoint)
    model, hooks = run.model, None
    if run.world.distributed:  # DDP / FSDP2: the policy and the reference wrapped (credo/dist/wrap.py)
        model, ref_model, hooks = place_for_rl(run, ref_model)
    plain = run.model if run.placement is None else run.placement.rollout_model  # no collectives in its calls
    settings = UpdateSettings(
        reduction=rl.loss_reduction, minibatches=rl.minibatches, epochs=rl.epochs,
        micro_batch_size=rl.micro_batch_size, max_grad_norm=rl.max_grad_norm,
        temperature=run.sampling.temperature if run.sampling.temperature > 0 else 1.0,
        norm_constant=float(run.sampling.max_new_tokens), skip_zero_advantage=rl.skip_zero_advantage,
        autocast_dtype=run.dtype, recompute_old_logprobs=rl.recompute_old_logprobs, shared_prefix=rl.shared_prefix,
        chunked_head=rl.chunked_head,
        entropy_coef=rl.entropy_coef,
        correction=None if rl.is_correction == "none" else bind_params(
            IS_CORRECTIONS.get(rl.is_correction), {}, rl.is_params, "importance-sampling correction"),
    )
    optimizer = make_optimizer(model, rl.lr, rl.weight_decay)
    critic = critic_opt = None
    if "values" in credit_needs:  # PPO's critic path: a value model trained beside the policy
        critic = ValueModel(plain, kind=rl.critic_kind).to(next(plain.parameters()).device)
        critic_opt = critic_optimizer(critic, rl.critic_lr)
    resumed_rl = run.resumed is not None and run.resumed.state.get("stage") == "rl"
    if resumed_rl and is_dcp(run.resumed):  # sharded (torch.distributed.checkpoint): any world size
        load_dcp(run.resumed, model=model, optimizer=optimizer, ref_model=ref_model, critic=critic,
                 critic_optimizer=critic_opt)
    elif resumed_rl:
        load_into(run.resumed, model=run.model, optimizer=optimizer, ref_model=saved_ref,
                  critic=critic, critic_optimizer=critic_opt, lora=run.lora)
    protocol = credit_state_of(credit)  # SPO's tracker: carried across steps, in every RL checkpoint
    credit_state = None
    if protocol is not None:
        saved = load_credit_state(run.resumed) if resumed_rl else None
        if resumed_rl and saved is None:
            raise CredoError(f"checkpoint {run.resumed.folder} has no state for credit estimator {rl.credit}")
        credit_state = protocol.load(*saved) if saved is not None else protocol.init()
    lr_state, lr_scale = None, 1.0
    if rl.snr_lr:  # OBLR-PO's SNR learning rate: (OBLRState, next lr scale), in every RL checkpoint
        if resumed_rl and "snr_lr" not in run.resumed.state:
            raise CredoError(f"checkpoint {run.resumed.folder} has no SNR learning-rate state (rl.snr_lr)")
        lr_state, lr_scale = lr_state_from_json(run.resumed.state["snr_lr"]) if resumed_rl else (OBLRState(), 1.0)
    schedule = make_schedule(run.cfg.rollout.temperature_schedule, run.cfg.rollout.temperature_params,
                             run.sampling.temperature)  # an adaptive sampling temperature (rollout/temperature.py)
    if schedule is not None and resumed_rl:
        if "temperature_schedule" not in run.resumed.state:
            raise CredoError(f"checkpoint {run.resumed.folder} has no state for rollout.temperature_schedule")
        schedule.load_state(run.resumed.state["temperature_schedule"])
    entropy_control = make_entropy_control(rl.entropy_control, rl.entropy_control_params, rl.entropy_coef)
    if entropy_control is not None and resumed_rl:  # (objectives/entropy_control.py; exact resume)
        if "entropy_control" not in run.resumed.state:
            raise CredoError(f"checkpoint {run.resumed.folder} has no state for rl.entropy_control")
        entropy_control.load_state(run.resumed.state["entropy_control"])
    resumed_state = load_method_state(run.resumed) if resumed_rl else {}
    sources = CreditSources(
        model=plain, tokenizer=run.tokenizer, engine=run.engine, task=run.task, sampling=run.sampling,
        judge=(make_judge(rl.judge, seed=run.cfg.run.seed, noise=rl.judge_noise, bias=rl.judge_bias,
                          flip=rl.judge_flip, device=next(plain.parameters()).device)
               if rl.judge == "synthetic" or "step_rewards" in credit_needs else None),
        probe_samples=rl.probe_samples, temperature=settings.temperature, autocast_dtype=run.dtype,
        micro_batch_size=rl.micro_batch_size, critic=critic, phase_marker=rl.phase_marker,
        dpo_model=rl.dpo_model)
    if resumed_state:  # a provider's model or state (OPRL's implicit PRM) picks its part up when it first runs
        sources.cache["resumed_method_state"] = resumed_state
    if SAMPLER_STATE in resumed_state:  # (NLPO's delayed masking policy)
        sampler.resume(*resumed_state[SAMPLER_STATE])
    elif resumed_rl and callable(getattr(sampler, "export", None)):
        raise CredoError(f"checkpoint {run.resumed.folder} has no state for rollout.sampler {run.cfg.rollout.sampler!r}")
    critic_settings = CriticSettings(lr=rl.critic_lr, value_clip=rl.value_clip, epochs=rl.epochs,
                                     minibatches=rl.minibatches, micro_batch_size=rl.micro_batch_size,
                                     max_grad_norm=rl.max_grad_norm)
    sampling = run.sampling if schedule is None else dataclasses.replace(run.sampling, temperature_fn=schedule)
    if rl.reward_model and run.verifier is None:  # an outcome reward model scores every completion (judges/orm.py)
        from credo.judges.orm import OutcomeRewardModel, RewardModelScorer

        rm = OutcomeRewardModel.load(rl.reward_model[len("rm:"):], device=next(plain.parameters()).device)
        run.verifier = RewardModelScorer(rm, run.task, error_reward=RLContext.error_reward,
                                         batch_size=rl.micro_batch_size)
    if run.cfg.rollout.ray_verifiers > 0 and run.verifier is None:  # scoring in Ray worker processes
        from credo.rewards.verifier_pool import VerifierPool

        run.verifier = VerifierPool(run.task, safe_score, workers=run.cfg.rollout.ray_verifiers,
                                    error_reward=RLContext.error_reward, address=run.cfg.rollout.ray_address)
    mix = make_sft_mix(run.cfg, run.task, run.tokenizer)  # CHORD's or RMT's (train/sft_mix.py, train/rmt.py)
    return RLContext(model, ref_model, run.tokenizer, run.engine, optimizer, run.task, objective,
                     credit, sampling, rl.group_size, settings, run.cfg.run.seed,
                     max_prompt_tokens=max_prompt_tokens(run.model, run.sampling, run.engine), credit_name=rl.credit,
                     credit_sources=sources, critic=critic, critic_optimizer=critic_opt,
                     critic_settings=critic_settings, credit_protocol=protocol, credit_state=credit_state,
                     snr_lr=rl.snr_lr, lr_state=lr_state, lr_scale=lr_scale, dist=hooks,
                     seed_per_prompt=run.cfg.dist.seed_per_prompt, temperature_schedule=schedule,
                     entropy_control=entropy_control, verifier=run.verifier,
                     sampler=sampler, sft_mix=mix, token_budget=getattr(mix, "token_budget", None),
                     warm_start=make_warm_start(run.cfg, run.task, run.tokenizer, credit,
                                                run.resumed.state if resumed_rl else None))


def bind_selection(ctx: RLContext, rl, prompts: list, seed: int, max_new_tokens: int,
                   resumed: Checkpoint | None = None) -> None:
    """DAPO's dynamic sampling (refill prompts from `prompts`) and soft overlong punishment; the weighted
    reward terms (rl.reward_terms), their state restored from an RL checkpoint."""
    ctx.reward_mix = make_reward_mix(rl.reward_terms, rl.reward_term_params)
    ctx.sample_selection = make_sample_selection(rl.sample_selection, rl.sample_selection_params, rl.steps)
    if ctx.reward_mix is not None and ctx.reward_mix.stateful and resumed is not None \
            and resumed.state.get("stage") == "rl":
        if "reward_terms" not in resumed.state:
            raise CredoError(f"checkpoint {resumed.folder} has no state for rl.reward_terms")
        ctx.reward_mix.load_state(resumed.state["reward_terms"])
    if rl.dynamic_sampling:
        ctx.dynamic_sampling = DynamicSampling(prompts, seed, rl.max_sampling_rounds, rollout_groups)
    if rl.overlong_buffer > 0:
        ctx.overlong = functools.partial(overlong_shaping, max_length=max_new_tokens,
                                         cache_length=rl.overlong_buffer, penalty_factor=rl.overlong_penalty_factor)


def lora_state(run: Run) -> dict[str, Any]:
    """state.json's "lora": the base model and its fingerprint, checked when adapters are loaded."""
    return {} if run.lora is None else {"lora": run.lora.meta}


SAMPLER_STATE = "rollout_sampler"  # the sampler's part of the method state (method_rollout_sampler.safetensors)


def method_state(ctx: RLContext) -> dict[str, tuple[dict, dict]]:
    """What a credit provider keeps across steps in its cache and can export (OPRL's implicit PRM), and the
    group sampler's own model (NLPO's delayed masking policy): name -> (JSON part, tensors), written into
    every RL checkpoint and handed back on resume."""
    out = {} if ctx.credit_sources is None else \
        {k: v.export() for k, v in ctx.credit_sources.cache.items() if callable(getattr(v, "export", None))}
    if callable(getattr(ctx.sampler, "export", None)) and getattr(ctx.sampler, "policy", None) is not None:
        out[SAMPLER_STATE] = ctx.sampler.export()  # a sampler's own model (NLPO's delayed masking policy)
    return out


def save_rl_checkpoint(run: Run, ctx: RLContext, name: str, steps_done: int) -> None:
    state = {"stage": "rl", "rl_step": steps_done}
    if ctx.snr_lr:  # the lr of the next step is lr_at(step) * this lr_scale (exact resume)
        state["snr_lr"] = lr_state_to_json(ctx.lr_state, ctx.lr_scale)
    if ctx.temperature_schedule is not None:  # the next rollout's temperatures depend on it (exact resume)
        state["temperature_schedule"] = ctx.temperature_schedule.state()
    if ctx.entropy_control is not None:  # the next step's entropy coefficient depends on it (exact resume)
        state["entropy_control"] = ctx.entropy_control.state()
    if ctx.reward_mix is not None and ctx.reward_mix.stateful:  # HAPO's per-problem history (exact resume)
        state["reward_terms"] = ctx.reward_mix.state()
    if ctx.curriculum is not None:  # the adaptive level and its window (exact resume)
        state["curriculum"] = ctx.curriculum.state()
    if run.data_selection is not None:  # the selected prompt pool: --resume trains on it without recomputing
        state["data_selection"] = run.data_selection
    if ctx.warm_start is not None:  # how far the warm start got (resume continues it exactly)
        state["warm_start"] = ctx.warm_start.state()
    if run.world.distributed:  # sharded: every rank writes its part (credo/dist/checkpoint.py)
        save_dcp(run.world, run.run_dir / "checkpoints" / name, model=ctx.model, optimizer=ctx.optimizer,
                 ref_model=ctx.ref_model, critic=ctx.critic, critic_optimizer=ctx.critic_optimizer,
                 tokenizer=run.tokenizer, export_model=run.placement.rollout_model,
                 state=state)
        return
    state.update(lora_state(run))
    save_checkpoint(run.run_dir / "checkpoints" / name, **run.saved(), tokenizer=run.tokenizer,
                    optimizer=ctx.optimizer, ref_model=None if run.lora is not None else ctx.ref_model,
                    critic=ctx.critic, critic_optimizer=ctx.critic_optimizer,
                    state=state,
                    credit_state=None if ctx.credit_protocol is None else ctx.credit_protocol.save(ctx.credit_state),
                    method_state=method_state(ctx))


def uses_pipeline(run: Run) -> bool:
    """An engine that can send generations ahead (Ray) always goes through the pipeline, k = 0 included,
    unless the step's prompts cannot be known in advance (prioritised or refilled prompts at k = 0)."""
    cfg = run.cfg
    if not callable(getattr(run.engine, "submit", None)) or is_multiturn(run.task) or cfg.rollout.sampler != "independent":
        return cfg.rollout.max_staleness > 0  # (> 0: rollout_pipeline refuses it with a clear error)
    return cfg.rollout.max_staleness > 0 or not (cfg.rl.spo_prioritized or cfg.rl.dynamic_sampling)


def rollout_pipeline(run: Run, ctx: RLContext, examples_of) -> RolloutPipeline:
    """Asynchronous rollouts (train/pipeline.py): the future steps' prompts, encoded and length-filtered
    exactly as `rl_step` does it."""
    if is_multiturn(run.task):
        raise CredoError(f"rollout.max_staleness > 0 with the multi-turn task {run.cfg.task.name!r} is not built yet "
                         f"(turns are generated one engine call at a time); use rollout.max_staleness 0")

    def plan(step: int):
        examples = examples_of(step)
        encoded = encode_prompts(run.tokenizer, run.task, examples)
        drop = set(too_long(encoded, ctx.max_prompt_tokens))
        return ([e for i, e in enumerate(examples) if i not in drop],
                [p for i, p in enumerate(encoded) if i not in drop])

    return RolloutPipeline(run.engine, max_staleness=run.cfg.rollout.max_staleness,
                           stale_policy=run.cfg.rollout.stale_policy, group_size=ctx.group_size,
                           sampling=ctx.sampling, plan=plan, step_seed=lambda t: step_seed(ctx.seed, t),
                           last_step=run.cfg.rl.steps)


def warm_start_stage(run: Run, ctx: RLContext) -> None:
    """rl.warm_start before the first RL step, from where a resumed checkpoint left it; its checkpoints
    are `step_0` (stage "rl", RL step 0, progress in state.json["warm_start"]) every run.checkpoint_every
    units and at its end. Warm-up rollouts draw their own training prompts (seeded), not RL's."""
    rl, t = run.cfg.rl, time.perf_counter()
    per = rl.prompts_per_step
    warm = ctx.warm_start
    total = warm.params.warmup_rollouts * per
    pool = run.task.examples("train", total, seed=run.cfg.run.seed + 60_000) if total else []
    save = (lambda: save_rl_checkpoint(run, ctx, "step_0", 0)) if run.cfg.run.checkpoint_every else None
    warm.run(ctx, write=run.writer.write, save=save, warmup_examples=lambda i: pool[i * per:(i + 1) * per],
             refresh_reference=run.lora is None)
    run.timings["warm_start"] = time.perf_counter() - t


def rl_stage(run: Run) -> None:
    """The RL loop over steps, then evaluation and the final checkpoint."""
    rl = run.cfg.rl
    ctx = rl_context(run)
    # the persistent id of a prompt is its index in this list (see train/prompts.py)
    size = prompt_list_size(rl)
    curriculum = make_curriculum(rl.curriculum, rl.curriculum_params, steps=rl.steps, per_level=size)
    if curriculum is not None:  # each curriculum builds its own list (level blocks, measured lengths, ...)
        prompts = curriculum.training_prompts(make_task, run.cfg, run.task, run.tokenizer, size)
    elif rl.data_selection != "none":  # DATAMASK: the pool chosen from more candidates (select/datamask.py)
        prompts = bind_data_selection(run, ctx, run.model if run.placement is None else run.placement.rollout_model)
    else:
        prompts = run.task.examples("train", size, seed=run.cfg.run.seed)
    if curriculum is not None:  # its state (exact resume), or its start-of-RL hook (TAROT measures the policy)
        if run.resumed is not None and run.resumed.state.get("stage") == "rl":
            if "curriculum" not in run.resumed.state:
                raise CredoError(f"checkpoint {run.resumed.folder} has no state for rl.curriculum")
            curriculum.load_state(run.resumed.state["curriculum"])
        elif callable(getattr(curriculum, "begin", None)):
            curriculum.begin(run, max_prompt_tokens(run.model, run.sampling, run.engine))
    ctx.curriculum = curriculum
    bind_selection(ctx, rl, prompts, run.cfg.run.seed, run.sampling.max_new_tokens, run.resumed)
    first = run.resumed.state.get("rl_step", 0) if run.resumed is not None else 0

    def schedule(step: int) -> list[int]:  # the prompt ids of a step (deterministic: no tracker weights)
        pool = len(prompts) if rl.prompt_pool > 0 else 0  # (a task may hold fewer prompts)
        if curriculum is not None:
            return curriculum.prompt_ids(step, rl.prompts_per_step, run.cfg.run.seed, pool=pool)
        return scheduled_prompt_ids(step, rl.prompts_per_step, pool, run.cfg.run.seed)

    if uses_pipeline(run):  # generations sent ahead (k = rollout.max_staleness; k = 0 sends each in its step)
        ctx.rollouts = rollout_pipeline(run, ctx, lambda t: [prompts[k] for k in schedule(t)])
    sampled = run.model if run.placement is None else run.placement.rollout_model  # (dist: the plain copy)
    run.engine.load_weights(sampled, version=first)  # the weights RL starts from (warm-up or resume)
    if ctx.warm_start is not None:  # WSRL: critic (and policy) pre-training, warm-up rollouts (train/warm_start.py)
        warm_start_stage(run, ctx)
    t = time.perf_counter()
    bar = _progress(rl.steps, "RL", run.cfg.run.progress)
    bar.update(first)
    bad_steps = 0  # consecutive steps whose every optimizer step had a non-finite gradient
    for step in range(first, rl.steps):
        step_started = time.perf_counter()
        lr = lr_at(step, rl.steps, peak=rl.lr, warmup=rl.lr_warmup_steps, decay=rl.lr_decay,
                   min_ratio=rl.min_lr_ratio)
        scaled = {}
        if ctx.snr_lr:  # OBLR-PO: the scale from the SNRs of the steps before this one (train/snr.py)
            scaled = {"lr_base": lr, "lr_scale": ctx.lr_scale}
            lr = lr * ctx.lr_scale
        set_lr(ctx.optimizer, lr)
        if rl.spo_prioritized:  # weights from the tracker as this step starts (checkpointed)
            weights = ctx.credit_protocol.sampling_weights(ctx.credit_state, torch.arange(len(prompts)))
            ids = prioritized_prompt_ids(step, rl.prompts_per_step, weights, run.cfg.run.seed)
        else:
            ids = schedule(step)
        if ctx.rollouts is not None:  # asynchronous rollouts: send steps step .. step + k ahead
            ctx.rollouts.fill(step)
        lo, hi = shard_bounds(len(ids), run.world.rank, run.world.world_size)  # whole groups per rank
        metrics = rl_step(ctx, step, [prompts[k] for k in ids[lo:hi]], ids[lo:hi], range(lo, hi))
        metrics = reduce_metrics(run.world, metrics, rows=(hi - lo) * rl.group_size)
        if curriculum is not None:  # the level this step drew from; then the adaptive rule sees its accuracy
            metrics.update(curriculum.metrics(step))
            curriculum.observe(step, metrics.get("accuracy"))
        run.writer.write({"phase": "rl", "step": step, "lr": lr, **scaled, **metrics})
        bar.update(1)
        run.clock.done("rl", time.perf_counter() - step_started)
        nan = float("nan")
        bar.set_postfix(reward=f"{metrics.get('reward_mean', nan):.2f}", acc=f"{metrics.get('accuracy', nan):.2f}",
                        s_step=f"{metrics.get('step_time', nan):.1f}", job_eta=run.clock.text())
        bad_steps = bad_steps + 1 if metrics["skipped_updates"] and not metrics["updates"] else 0
        if bad_steps >= rl.max_nonfinite_steps:
            raise CredoError(
                f"stopping: {bad_steps} RL steps in a row had only non-finite losses or gradients "
                f"(last at step {step}); metrics are in {run.run_dir / 'metrics.jsonl'}, the last "
                f"good checkpoint in {run.run_dir / 'checkpoints'}; lower rl.lr or check the rewards"
            )
        every = run.cfg.task.eval_every
        if every and (step + 1) % every == 0 and step + 1 < rl.steps:  # (the last one is the final evaluation)
            if ctx.dist is not None:
                ctx.dist.before_rollout()  # FSDP2: the evaluated copy gets the current weights (every rank)
            run.held_out("rl_step", step=step + 1)  # before the checkpoint: a resume keeps it (restore)
        if run.cfg.run.checkpoint_every and (step + 1) % run.cfg.run.checkpoint_every == 0:
            save_rl_checkpoint(run, ctx, f"step_{step + 1}", step + 1)
    bar.close()
    run.timings["rl"] = time.perf_counter() - t
    if ctx.dist is not None:
        ctx.dist.before_rollout()  # FSDP2: the evaluated copy gets the final weights
    moved = ctx.warm_start is not None and ctx.warm_start.params.policy_steps > 0  # (WSRL's policy pre-training)
    if rl.steps == 0 and "warmup" in run.summary and run.world.is_main and not moved:
        # no RL step changed the warmed-up weights: the (greedy) evaluation would repeat the warm-up's
        run.summary["rl"] = dict(run.summary["warmup"])
        run.writer.write({"phase": "eval", "stage": "rl", **run.summary["rl"]})
    else:
        run.held_out("rl")
    save_rl_checkpoint(run, ctx, "final", rl.steps)


def job_clock(cfg: TrainConfig, resumed: Checkpoint | None) -> JobClock:
    """What is left of the job, counted in units: warm-up steps, RL steps, held-out evaluations."""
    done = 0 if resumed is None else resumed.state.get("rl_step", 0)
    fresh = resumed is None
    every = cfg.task.eval_every
    periodic = 0 if not every else len([s for s in range(done + 1, cfg.rl.steps) if s % every == 0])
    evals = periodic + 1 + (fresh and cfg.run.eval_base) + (fresh and cfg.warmup.steps > 0)
    return JobClock({"warmup": cfg.warmup.steps if fresh else 0, "rl": cfg.rl.steps - done, "eval": int(evals)})


def finish(run: Run, started: float) -> dict[str, Any]:
    """Write summary.json and curves.png (rank 0)."""
    run.writer.close()
    if not run.world.is_main:
        return run.summary
    run.timings["total"] = time.perf_counter() - started
    summary = run.summary
    summary["timings_s"] = {k: round(v, 2) for k, v in run.timings.items()}
    if "warmup" in summary:
        summary["rl_gain_over_warmup"] = summary["rl"]["accuracy"] - summary["warmup"]["accuracy"]
    evals = {k: summary[k]["accuracy"] for k in ("base", "warmup", "rl") if k in summary}
    plot_curves(run.run_dir / "metrics.jsonl", run.run_dir / "curves.png", evals)
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"credo: run folder {run.run_dir} ({run.timings['total']:.0f} s)", flush=True)
    return summary


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run the configured job end to end; returns the summary (also written to summary.json).

    resume=True continues the run folder's newest complete checkpoint (see `restore`)."""
    started = time.perf_counter()
    world = init_world(cfg.dist.strategy, cfg.dist.backend)  # torchrun's ranks, else one process
    try:
        run = setup(cfg, resume, world)
        if resume:
            run.resumed = restore(run)
        run.clock = job_clock(cfg, run.resumed)
        if run.resumed is None:
            if cfg.run.eval_base:
                run.held_out("base")
            warmup_stage(run)
        rl_stage(run)
        return finish(run, started)
    finally:
        if "run" in locals() and callable(getattr(run.engine, "shutdown", None)):
            run.engine.shutdown()  # Ray actors (rollout/ray_engine.py) do not outlive the run
        if "run" in locals() and run.verifier is not None:
            run.verifier.shutdown()
        teardown_world(world)
