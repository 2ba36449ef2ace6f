"""The RL loop: sample -> score -> credit -> batch -> update -> log.

One `rl_step` is the whole algorithm for one rollout batch; `ppo_update` does the optimizer steps on
it. The objective and the credit estimator are plain callables bound from the config once
(`bind_params`), so any registered pair composes without code changes here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from credo.batch import RolloutBatch, broadcast_advantages, build_batch
from credo.errors import CredoError
from credo.faults import maybe_die
from credo.logprobs import OUTPUT_NEEDS, policy_outputs, token_logprobs
from credo.objectives.base import needs_of, wants_outputs, wants_step
from credo.objectives.reduce import reduce_loss
from credo.rollout.base import Completion, RolloutEngine, SamplingParams
from credo.rollout.torch_engine import autocast_context
from credo.tasks.base import Example, Task
from credo.credit.base import CreditState, credit_needs_of, is_token_level
from credo.credit.normalisation import OBLRState, logit_grad_sq_norm, oblr_lr_update
from credo.critic import CriticSettings, ValueModel, compute_values, critic_update, critic_returns
from credo.train.credit_inputs import CreditSources, StepContext, build_credit_inputs
from credo.dist.shard import sample_groups
from credo.rewards.code import outcome_counts
from credo.rewards.terms import TermInputs
from credo.train.evaluate import encode_prompts, generate_groups, pad_token_id, safe_score, too_long
from credo.train.snr import GradSNR


def bind_params(fn: Callable, common: dict[str, Any], extra: dict[str, Any], what: str) -> Callable:
    """Bind keyword hyperparameters: the common config fields fn accepts, plus `extra` (all must fit)."""
    params = inspect.signature(fn).parameters
    accepted = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(extra) - accepted)
    if unknown:
        raise CredoError(
            f"{what} {getattr(fn, '__name__', fn)} has no parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    # an unset (None) common field leaves the function's own (paper) default in place
    bound = {k: v for k, v in common.items() if k in accepted and v is not None}
    bound.update(extra)
    return functools.partial(fn, **bound)


@dataclass
class UpdateSettings:
    """How a rollout batch is turned into optimizer steps (see RLConfig for each field)."""

    reduction: str
    minibatches: int
    epochs: int
    micro_batch_size: int
    max_grad_norm: float
    temperature: float
    norm_constant: float
    skip_zero_advantage: bool
    autocast_dtype: torch.dtype | None
    recompute_old_logprobs: bool = True
    shared_prefix: bool = True  # each group's prompt computed once in the trainer's forward (prefix_forward.py)
    chunked_head: bool = True  # the output head in chunks of positions (chunked_head.py)
    entropy_coef: float = 0.0  # entropy bonus added to any objective: loss - coef * reduce(entropy)
    correction: Callable | None = None  # rl.is_correction bound (objectives/is_correction.py); None = off


def split_rows(
    rows: torch.Tensor, group_ids: torch.Tensor, parts: int, generator: torch.Generator, whole_groups: bool
) -> list[torch.Tensor]:
    """Shuffle `rows` and cut them into `parts` minibatches; with whole_groups, whole groups move
    together (a group-level objective must see every sample of a group)."""
    if not whole_groups:
        order = rows[torch.randperm(len(rows), generator=generator)]
        return list(order.chunk(min(parts, len(order))))
    groups = torch.unique(group_ids[rows])
    groups = groups[torch.randperm(len(groups), generator=generator)]
    return [rows[torch.isin(group_ids[rows], chunk)] for chunk in groups.chunk(min(parts, len(groups)))]


def micro_batches(sub: RolloutBatch, size: int, whole_groups: bool) -> list[torch.Tensor]:
    """Row indices of `sub` in micro-batches of at most `size` rows; with whole_groups, groups are
    never split (a micro-batch holds at least one whole group)."""
    if not whole_groups:
        return list(torch.arange(len(sub)).split(size))
    out, current, count = [], [], 0
    for g in torch.unique(sub.group_ids).tolist():
        members = torch.nonzero(sub.group_ids == g).flatten().tolist()
        if current and count + len(members) > size:
            out.append(torch.tensor(current))
            current, count = [], 0
        current += members
        count += len(members)
    if current:
        out.append(torch.tensor(current))
    return out


def trainable_rows(batch: RolloutBatch, skip_zero_advantage: bool) -> torch.Tensor:
    """Rows with at least one loss token, and (optionally) a non-zero advantage somewhere."""
    has_tokens = batch.loss_mask.any(-1)
    if skip_zero_advantage:
        has_tokens &= ((batch.advantages != 0) & batch.loss_mask).any(-1)
    return torch.nonzero(has_tokens).flatten()


@torch.no_grad()
def recompute_old_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, rows: torch.Tensor, settings: UpdateSettings, dist: Any = None
) -> torch.Tensor:
    """Behaviour logprobs [B, T] of the given rows under the trainer's own forward pass (dist: several
    ranks, the reference forward).

    The sampler (KV-cache decoding, other batch shapes, bf16) and the trainer do not compute
    bit-identical logprobs; measured on SmolLM2 in bf16 the on-policy ratio spans 0.5-1.5 without
    this. Recomputing makes the first update's ratio exactly 1, so clipping reflects only the
    policy's own change (as verl's recomputed `old_log_prob`). Rows not listed stay 0 (unused).
    """
    device = next(model.parameters()).device
    old = torch.zeros_like(batch.sampler_logprobs)
    for micro in rows.split(settings.micro_batch_size):
        part = batch.select(micro)
        with autocast_context(settings.autocast_dtype, device):
            logprobs = policy_outputs(model, part.tokens, part.attention_mask, part.loss_mask,
                                      temperature=settings.temperature, group_ids=prefix_groups(part, settings, dist),
                                      chunked_head=fast_head(settings, dist)).logprobs
        old[micro, : part.tokens.shape[1]] = logprobs
    return old


def prefix_groups(batch: RolloutBatch, settings: UpdateSettings, dist: Any = None) -> torch.Tensor | None:
    """The rows' group ids when the shared-prompt forward is on (rl.shared_prefix, one process), else None."""
    return batch.group_ids if settings.shared_prefix and dist is None else None


def fast_head(settings: UpdateSettings, dist: Any = None) -> bool:
    """The chunked output head (rl.chunked_head), one process only (not verified under FSDP2)."""
    return settings.chunked_head and dist is None


def single_on_policy_pass(batch: RolloutBatch, settings: UpdateSettings, dist: Any) -> bool:
    """One optimizer step on fresh samples with nothing that reads the behaviour logprobs before it:
    the update's own forward then gives the recomputed logprobs (detached), so the no-grad recompute
    forward is skipped. (Same values: the same micro-batches through the same model and weights.)"""
    return (settings.recompute_old_logprobs and batch.old_logprobs is None and settings.epochs == 1
            and settings.minibatches == 1 and settings.correction is None and dist is None)


def apply_correction(batch: RolloutBatch, rows: torch.Tensor, correction: Callable
                     ) -> tuple[RolloutBatch, dict[str, float]]:
    """The batch with the IS correction's weights [B, T] and its reduced loss mask (dropped tokens leave
    the numerator and the global token count), and the correction's diagnostics over `rows`."""
    mask = torch.zeros_like(batch.loss_mask)
    mask[rows] = batch.loss_mask[rows]
    result = correction(batch.behaviour_logprobs, batch.sampler_logprobs, mask)
    keep = torch.where(mask, result.keep, batch.loss_mask)  # rows outside `rows` are not trained anyway
    return replace(batch, loss_mask=keep, is_weights=result.weights.float().detach()), result.metrics


def ppo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    objective: Callable,
    settings: UpdateSettings,
    generator: torch.Generator,
    grad_stats: GradSNR | None = None,
    dist: Any = None,
    entropy_control: Any = None,
    sft_mix: Any = None,
) -> dict[str, float]:
    """`epochs` x `minibatches` optimizer steps on one rollout batch; returns averaged metrics.

    grad_stats (rl.snr_lr): records each minibatch's gradient after its backward passes and before
    clipping (OBLR-PO's gradient SNR, train/snr.py).
    dist (credo.dist.hooks.DistHooks, several ranks): minibatches cut from the global rows, global
    token / row counts, matched forward/backward passes per rank (see that module).
    entropy_control (rl.entropy_control, objectives/entropy_control.py): gives each optimizer step's
    entropy coefficient in place of settings.entropy_coef, and observes the step's mean token entropy
    (global over ranks) after it.
    sft_mix (rl.sft_mix, train/sft_mix.py::ChordStep): CHORD; every RL backward is scaled by 1 - mu and each
    optimizer step adds mu x the SFT loss on its expert rows (also when no rollout row is trainable); RMT's
    train/rmt.py::RMTStep the same way with weight 1 and lambda x next-token prediction on text rows."""
    declared, pass_outputs = needs_of(objective), wants_outputs(objective)
    whole_groups = "whole_groups" in declared
    forward_needs = declared & frozenset(OUTPUT_NEEDS)
    entropy_bonus = bool(settings.entropy_coef) or entropy_control is not None
    if entropy_bonus:
        forward_needs |= {"entropy"}  # the bonus needs a differentiable entropy
    rows = trainable_rows(batch, settings.skip_zero_advantage and not whole_groups)
    layout = dist.layout(batch.group_ids, rows) if dist is not None else None
    split_from, split_groups = (rows, batch.group_ids) if layout is None else (layout.rows, layout.group_ids)
    sums: dict[str, float] = {}
    extremes: dict[str, float] = {}  # metrics named *_min / *_max: true extremes, not averages
    weight = 0.0
    updates = skipped = 0
    grad_norms = []
    applied: list[float] = []  # the entropy coefficient each optimizer step applied (entropy_control)
    if len(split_from) == 0 and sft_mix is not None:  # CHORD: the expert rows still train
        return sft_mix.sft_only_update(model, optimizer, settings)
    if len(split_from) == 0:  # e.g. every group all-correct or all-wrong: nothing to learn from
        nan = float("nan")
        return {"updates": 0, "skipped_updates": 0, "trained_sequences": 0, "grad_norm": nan,
                **{k: nan for k in ("loss", "entropy", "clip_fraction", "approx_kl", "ratio_min", "ratio_max")}}
    device = next(model.parameters()).device
    model.train()
    fused_old = single_on_policy_pass(batch, settings, dist)  # then each micro-batch's forward is its recompute
    if not fused_old and settings.recompute_old_logprobs and batch.old_logprobs is None:  # (a credit estimator may have done it)
        scorer = model if dist is None else dist.scoring_model  # (no collectives in no-grad scoring)
        batch = replace(batch, old_logprobs=recompute_old_logprobs(scorer, batch, rows, settings, dist))
    correction_metrics: dict[str, float] = {}
    if settings.correction is not None:  # sampler/trainer mismatch and policy lag (rl.is_correction)
        batch, correction_metrics = apply_correction(batch, rows, settings.correction)
    rl_weight = 1.0 if sft_mix is None else sft_mix.rl_weight  # CHORD: (1 - mu) L_rl + mu L_sft
    for _ in range(settings.epochs):
        for minibatch in split_rows(split_from, split_groups, settings.minibatches, generator, whole_groups):
            sub = batch.select(minibatch if layout is None else layout.local(minibatch))
            num_tokens = float(sub.loss_mask.sum())
            num_seqs = float(sub.loss_mask.any(-1).sum())
            micros = micro_batches(sub, settings.micro_batch_size, whole_groups)
            coef = settings.entropy_coef if entropy_control is None else entropy_control.coef_for_step()
            entropy_sum = entropy_tokens = 0.0  # this optimizer step's, for the controller
            passes, scale = len(micros), 1.0
            if dist is not None:  # global counts; every rank makes the same number of passes
                num_tokens, num_seqs = dist.global_counts(num_tokens, num_seqs)
                passes, scale = dist.passes(len(micros)), dist.loss_scale
            for index in range(passes):
                real = index < len(micros)  # else a filler pass with zero gradient (dist only)
                part = sub.select(micros[index]) if real else batch.select(torch.arange(1))
                with autocast_context(settings.autocast_dtype, device), \
                        (dist.sync_context(model, index, passes) if dist is not None else contextlib.nullcontext()):
                    outputs = policy_outputs(model, part.tokens, part.attention_mask, part.loss_mask,
                                             temperature=settings.temperature,
                                             needs=forward_needs, group_ids=prefix_groups(part, settings, dist),
                                             chunked_head=fast_head(settings, dist))
                if not real:  # (zero gradient; the wrapper's collectives still run)
                    (outputs.logprobs.sum() * 0.0).backward()
                    continue
                if fused_old:  # the recomputed behaviour logprobs: this forward's, detached (ratio 1)
                    part = replace(part, old_logprobs=outputs.logprobs.detach())
                entropy = outputs.entropy.detach()
                if pass_outputs:
                    terms = objective(outputs.logprobs, part, outputs=outputs)
                else:
                    terms = objective(outputs.logprobs, part)
                per_token = terms.per_token
                if part.is_weights is not None:  # detached IS weights; dropped tokens are off the mask
                    per_token = per_token * part.is_weights
                if entropy_bonus:
                    per_token = per_token - coef * outputs.entropy
                loss = reduce_loss(
                    per_token, part.loss_mask, settings.reduction,
                    num_tokens=num_tokens, num_seqs=num_seqs, norm_constant=settings.norm_constant,
                )
                (loss * (scale * rl_weight)).backward()  # scale: DDP / FSDP2 average gradients over ranks
                w = float(part.loss_mask.sum())
                weight += w
                m = part.loss_mask
                entropy_sum += float((entropy * m).sum())
                entropy_tokens += float(m.sum())
                extra = {"loss": loss.item() * num_tokens / max(w, 1.0),
                         "entropy": float((entropy * m).sum() / m.sum().clamp(min=1))}
                for key, value in {**{k: float(v) for k, v in terms.metrics.items()}, **extra}.items():
                    if key.endswith("_min"):
                        extremes[key] = min(extremes.get(key, math.inf), value)
                    elif key.endswith("_max"):
                        extremes[key] = max(extremes.get(key, -math.inf), value)
                    else:  # token-weighted mean over the micro-batches
                        sums[key] = sums.get(key, 0.0) + value * w
            if sft_mix is not None:  # + mu x the SFT loss on this optimizer step's expert rows
                sft_mix.backward(model, settings)
            maybe_die("update")
            if grad_stats is not None:  # the raw minibatch gradient: before clipping rescales it
                grad_stats.add(list(model.parameters()))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
            if math.isfinite(grad_norm):
                optimizer.step()
                updates += 1
                grad_norms.append(grad_norm)
            else:  # a non-finite gradient must not reach the optimizer state
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if entropy_control is not None:  # (the step's mean token entropy over all ranks' micro-batches)
                if dist is not None:
                    entropy_sum, entropy_tokens = dist.global_counts(entropy_sum, entropy_tokens)
                entropy_control.observe(entropy_sum / entropy_tokens if entropy_tokens else float("nan"))
                applied.append(coef)
    out = {k: v / max(weight, 1.0) for k, v in sums.items()}
    out.update(extremes)
    out.update(correction_metrics)
    if sft_mix is not None:
        out.update(sft_mix.metrics())
    if entropy_control is not None:
        out.update(entropy_coef=entropy_control.coef, entropy_coef_applied=sum(applied) / max(len(applied), 1))
    out.update(updates=updates, skipped_updates=skipped,
               grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
               trained_sequences=len(rows))
    return out


@dataclass
class RLContext:
    """Everything an RL step needs, bound once by the runner."""

    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    tokenizer: Any
    engine: RolloutEngine
    optimizer: torch.optim.Optimizer
    task: Task
    objective: Callable
    credit: Callable
    sampling: SamplingParams
    group_size: int
    settings: UpdateSettings
    seed: int
    error_reward: float = 0.0
    max_prompt_tokens: int | None = None  # context length minus the completion budget
    credit_name: str = ""
    credit_sources: CreditSources | None = None  # token-level credit: judge, probes, forward passes
    critic: ValueModel | None = None  # the value model, when the credit estimator reads values
    critic_optimizer: torch.optim.Optimizer | None = None
    critic_settings: CriticSettings | None = None
    credit_protocol: CreditState | None = None  # a `stateful` estimator: how its state advances
    credit_state: Any = None  # that state, carried across steps and checkpointed (SPO's tracker)
    snr_lr: bool = False  # rl.snr_lr: OBLR-PO's learning rate from the gradient SNR (train/snr.py)
    lr_state: OBLRState | None = None  # its state after the steps done so far (checkpointed)
    lr_scale: float = 1.0  # the next step's lr = lr_at(step) * lr_scale (checkpointed)
    dynamic_sampling: Callable | None = None  # rl.dynamic_sampling (select/dynamic_sampling.py::DynamicSampling)
    overlong: Callable | None = None  # rl.overlong_buffer > 0: (rewards, lengths) -> (shaped, metrics)
    reward_mix: Any = None  # rl.reward_terms: rewards/terms.py::RewardMix (weighted terms, HAPO's history)
    sample_selection: Callable | None = None  # rl.sample_selection: select/d3s.py::D3SSelection (rows kept)
    curriculum: Any = None  # rl.curriculum: train/curriculum.py::Curriculum (checkpointed by run.py)
    dist: Any = None  # credo.dist.hooks.DistHooks when several ranks train (torch.distributed)
    seed_per_prompt: bool = False  # dist.seed_per_prompt: one engine call per group (credo/dist/shard.py)
    temperature_schedule: Any = None  # rollout.temperature_schedule (rollout/temperature.py); in `sampling` too
    sampler: Any = None  # rollout.sampler (rollout/samplers.py): how a prompt's group is drawn; None = independent
    verifier: Any = None  # rollout.ray_verifiers > 0: rewards/verifier_pool.py::VerifierPool
    rollouts: Any = None  # rollout.max_staleness with the ray engine (train/pipeline.py::RolloutPipeline)
    entropy_control: Any = None  # rl.entropy_control (objectives/entropy_control.py): the moving entropy coefficient
    sft_mix: Any = None  # rl.sft_mix (train/sft_mix.py::ChordMix): CHORD's mu x SFT loss on expert rows per optimizer step
    warm_start: Any = None  # rl.warm_start (train/warm_start.py::WarmStart): WSRL's pre-training; "replay" adds offline rows
    token_budget: Callable[[int], int] | None = None  # RL step -> its rollouts' max_new_tokens (RMT, train/rmt.py)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of RL step `step` of a run seeded `seed`."""
    return seed * 1_000_003 + step


def scoring_model(ctx: RLContext) -> torch.nn.Module:
    """The model for no-grad scoring (behaviour logprobs, rescoring): the policy, or under
    torch.distributed a plain module with its current weights, so these calls are no collectives."""
    return ctx.model if ctx.dist is None else ctx.dist.scoring_model


def score_groups(task: Task, groups, examples: Sequence[Example], error_reward: float, verifier: Any = None):
    """Flatten groups of completions and score them; returns (completions, scores, group_ids, errors).
    verifier (rollout.ray_verifiers, rewards/verifier_pool.py): score in its worker processes instead."""
    completions = [c for group in groups for c in group]
    group_ids = [g for g, group in enumerate(groups) for _ in group]
    pairs = [(c.text, examples[g]) for c, g in zip(completions, group_ids)]
    if verifier is not None:
        results = verifier.score(pairs)
    else:
        results = [safe_score(task, text, example, error_reward) for text, example in pairs]
    return completions, [score for score, _ in results], group_ids, sum(raised for _, raised in results)


def rollout_groups(ctx: RLContext, examples: Sequence[Example], prompt_ids: Sequence[int], seed: int):
    """Encode, generate G completions per prompt (sampling seed `seed`) and score: the
    generate-and-score step of a dynamic-sampling refill round. Prompts that do not fit the context
    are left out. Returns (examples, prompt_ids, completions, scores, group_ids, verifier errors)."""
    prompts = encode_prompts(ctx.tokenizer, ctx.task, examples)
    drop = set(too_long(prompts, ctx.max_prompt_tokens))
    keep = [i for i in range(len(examples)) if i not in drop]
    examples, prompts, prompt_ids = [examples[i] for i in keep], [prompts[i] for i in keep], [prompt_ids[i] for i in keep]
    if not examples:
        return [], [], [], [], [], 0
    groups = generate_groups(ctx.engine, ctx.tokenizer, ctx.task, examples, prompts, ctx.group_size, ctx.sampling,
                             seed, ctx.max_prompt_tokens, sampler=ctx.sampler)
    return (examples, list(prompt_ids), *score_groups(ctx.task, groups, examples, ctx.error_reward, ctx.verifier))


def wants_grad_norms(credit: Callable) -> bool:
    """An outcome-level estimator that reads per-row gradient norms (OBLR-PO's optimal baseline):
    it has a `grad_sq_norms` keyword (inspected through functools.partial)."""
    return not is_token_level(credit) and "grad_sq_norms" in inspect.signature(credit).parameters


def behaviour_logprobs(ctx: RLContext, batch: RolloutBatch) -> torch.Tensor:
    """Behaviour logprobs [B, T] of every row before the update: the trainer's recomputed ones
    (rl.recompute_old_logprobs; computed here once and stored, so the update reuses them), else the
    sampler's."""
    if ctx.settings.recompute_old_logprobs and batch.old_logprobs is None:
        batch.old_logprobs = recompute_old_logprobs(scoring_model(ctx), batch, torch.arange(len(batch)), ctx.settings, ctx.dist)
    return batch.old_logprobs if batch.old_logprobs is not None else batch.sampler_logprobs


def assign_credit(ctx: RLContext, batch: RolloutBatch, completions, row_examples,
                  prompt_ids: torch.Tensor | None = None) -> dict[str, float]:
    """Fill batch.advantages [B, T] (and batch.values with a critic) from the credit estimator.

    Outcome-level estimators give [B], broadcast over each row's loss tokens; token-level ones get
    the CreditInputs they declare (train/credit_inputs.py) and return [B, T]. A `stateful` estimator
    gets the persistent prompt ids [B] as its group ids and the carried state. Returns the credit
    compute spent this step (probe rollouts, judge calls) as metrics.

    An estimator with a `grad_sq_norms` keyword (OBLR-PO) gets per-row squared gradient norms [B] from
    `logit_grad_sq_norm(behaviour logprobs, loss_mask)`: the lower-bound proxy sum_t (1 - p(y_t))^2,
    from the sampled tokens' probabilities only (no full-vocabulary pass).
    """
    if ctx.critic is not None:
        batch.values = compute_values(ctx.critic, batch, ctx.settings.micro_batch_size, ctx.settings.autocast_dtype)
    if not is_token_level(ctx.credit):
        kwargs, metrics = {}, {}
        if wants_grad_norms(ctx.credit):
            norms = logit_grad_sq_norm(behaviour_logprobs(ctx, batch), batch.loss_mask)
            kwargs["grad_sq_norms"] = norms
            metrics["grad_sq_norm_mean"] = float(norms.mean()) if len(norms) else 0.0
        ids = batch.group_ids
        if ctx.credit_protocol is not None:
            ids = batch.group_ids if prompt_ids is None else prompt_ids
            kwargs["state"] = ctx.credit_state
        batch.advantages = broadcast_advantages(ctx.credit(batch.rewards, ids, **kwargs), batch.loss_mask)
        return metrics
    if "logprobs" in credit_needs_of(ctx.credit) and ctx.settings.recompute_old_logprobs:
        rows = torch.arange(len(batch))
        batch.old_logprobs = recompute_old_logprobs(scoring_model(ctx), batch, rows, ctx.settings, ctx.dist)
    sources = ctx.credit_sources
    before = dict(sources.counters)
    sources.step_metrics.clear()  # (what a provider reports for this step alone)
    inputs = build_credit_inputs(StepContext(sources, batch, completions, row_examples), ctx.credit, ctx.credit_name)
    advantages = ctx.credit(inputs)
    if inputs.step_ids is not None:  # segment objectives (F-GRPO's phases) read the same segmentation
        batch.segment_ids = inputs.step_ids
    if tuple(advantages.shape) != tuple(batch.loss_mask.shape):
        raise ValueError(f"credit estimator {ctx.credit_name} returned shape {tuple(advantages.shape)}, "
                         f"expected [B, T] = {tuple(batch.loss_mask.shape)}")
    # a non-finite advantage would poison the update; it is a bug in the estimator's guards, so count it
    bad = ~torch.isfinite(advantages) & batch.loss_mask
    advantages = torch.where(batch.loss_mask & ~bad, advantages.float(), torch.zeros_like(advantages, dtype=torch.float32))
    batch.advantages = advantages
    companions = credit_companions(ctx.credit, inputs, batch)  # (A2TGPO's clip scale, VPR's loss mask)
    return {"credit_nonfinite": float(bad.sum()), **companions,
            **{k: float(v - before.get(k, 0)) for k, v in sources.counters.items()}, **sources.step_metrics}


def credit_companions(credit: Callable, inputs, batch: RolloutBatch) -> dict[str, float]:
    """What the estimator hands the objective beside its advantages (credit/providers.py companions):
    batch.clip_scale [B, T] and a narrower batch.loss_mask; their metrics."""
    from credo.credit.providers import clip_scale_of, loss_mask_of
    from credo.train.credit_inputs import provider_params

    out: dict[str, float] = {}
    scale_fn = clip_scale_of(credit)
    if scale_fn is not None:
        scale = scale_fn(inputs, **provider_params(scale_fn, credit)).float()
        batch.clip_scale = scale
        on = batch.loss_mask
        out["clip_scale_mean"] = float(scale[on].mean()) if bool(on.any()) else 1.0
    mask_fn = loss_mask_of(credit)
    if mask_fn is not None:
        keep = mask_fn(inputs, **provider_params(mask_fn, credit)).bool()
        out["credit_masked_tokens"] = narrow_loss_mask(batch, keep)
    return out


def narrow_loss_mask(batch: RolloutBatch, keep: torch.Tensor) -> float:
    """Train on `keep` ([B, T] or [B, 1] bool) of the loss tokens only: loss mask and advantages narrowed
    together (VPR's flat states, D3S's dropped rollouts). Returns how many loss tokens were dropped."""
    before = batch.loss_mask
    batch.loss_mask = before & keep
    batch.advantages = torch.where(batch.loss_mask, batch.advantages, torch.zeros_like(batch.advantages))
    return float((before & ~batch.loss_mask).sum())


@torch.no_grad()
def rescore_responses(ctx: RLContext, tokens: list[torch.Tensor], scored: list[torch.Tensor]) -> list[torch.Tensor]:
    """Current-policy logprobs [L_i] of the scored tokens of stored responses (tokens [S_i] long,
    scored [S_i] bool), right-padded into micro-batches like the rollout batch."""
    if not tokens:
        return []
    width = max(len(t) for t in tokens)
    pad = pad_token_id(ctx.tokenizer)
    ids = torch.full((len(tokens), width), pad, dtype=torch.long)
    attention = torch.zeros((len(tokens), width), dtype=torch.bool)
    mask = torch.zeros((len(tokens), width), dtype=torch.bool)
    for i, (t, m) in enumerate(zip(tokens, scored)):
        ids[i, : len(t)] = t
        attention[i, : len(t)] = True
        mask[i, : len(t)] = m
    device = next(ctx.model.parameters()).device
    out = []
    for micro in torch.arange(len(tokens)).split(ctx.settings.micro_batch_size):
        with autocast_context(ctx.settings.autocast_dtype, device):
            logprobs = token_logprobs(scoring_model(ctx), ids[micro], attention[micro], mask[micro],
                                      temperature=ctx.settings.temperature)
        out += [logprobs[j][mask[i]].float() for j, i in enumerate(micro.tolist())]
    return out


def advance_credit_state(ctx: RLContext, batch: RolloutBatch, prompt_ids: torch.Tensor) -> tuple[Any, dict[str, float]]:
    """The stateful estimator's next state from this step (called before the policy update, so the
    stored responses are rescored by the policy that sampled this batch; committed after it).

    Each row hands over its tokens, its loss mask and the behaviour logprobs of its loss tokens: the
    trainer's recomputed ones (rl.recompute_old_logprobs, computed here for every row and reused by
    the update), else the sampler's.
    """
    behaviour = behaviour_logprobs(ctx, batch)
    rows = []
    for b in range(len(batch)):
        real = batch.attention_mask[b]
        rows.append((batch.tokens[b][real], batch.loss_mask[b][real], behaviour[b][batch.loss_mask[b]].float()))
    return ctx.credit_protocol.update(ctx.credit_state, prompt_ids, batch.rewards, rows,
                                      lambda tokens, scored: rescore_responses(ctx, tokens, scored))


@torch.no_grad()
def observe_sampling_entropy(ctx: RLContext, batch: RolloutBatch) -> dict[str, float]:
    """Hand an adaptive temperature schedule that reads the training batch (`needs_entropy`) this
    step's per-token entropies [B, T] under the pre-update policy; one no-grad forward per micro-batch.
    The schedule's next rollout uses them; returns its metrics."""
    model = scoring_model(ctx)
    entropy = torch.zeros_like(batch.sampler_logprobs)
    for micro in torch.arange(batch.tokens.shape[0]).split(ctx.settings.micro_batch_size):
        part = batch.select(micro)
        with autocast_context(ctx.settings.autocast_dtype, part.tokens.device):
            out = policy_outputs(model, part.tokens, part.attention_mask, part.loss_mask,
                                 temperature=ctx.settings.temperature, needs=frozenset({"entropy"}))
        entropy[micro, : part.tokens.shape[1]] = out.entropy.float()
    return ctx.temperature_schedule.observe(entropy, batch.loss_mask)


def advance_lr_scale(ctx: RLContext, grad_stats: GradSNR) -> dict[str, float]:
    """OBLR-PO's SNR learning rate after a step: `oblr_lr_update(state, snr, base_lr=1.0)` gives the
    state and the lr scale of the NEXT step (the first measured SNR is the reference, so the scale
    stays 1 until the SNR moves). Fewer than two recorded minibatch gradients (no trainable rows,
    non-finite gradients, a whole-group objective with one group) measure no noise: state and scale
    are left as they are. Returns this step's `snr` (nan when not measured)."""
    snr = grad_stats.snr()
    if grad_stats.count >= 2:
        ctx.lr_state, ctx.lr_scale = oblr_lr_update(ctx.lr_state or OBLRState(), snr, base_lr=1.0)
    return {"snr": snr, "snr_samples": float(grad_stats.count)}


def turn_metrics(completions) -> dict[str, float]:
    """Multi-turn rollouts only: mean policy turns per episode and environment errors."""
    if not any("turns" in c.meta for c in completions):
        return {}
    return {"turns_mean": sum(c.meta.get("turns", 0) for c in completions) / len(completions),
            "env_errors": float(sum(c.meta.get("env_errors", 0) for c in completions))}


def sampled_summary(completions: Sequence[Completion], scores: Sequence[Any]) -> dict[str, float]:
    """Reward, accuracy, format rate and length of a set of scored completions (a step whose refill rounds
    kept no group reports its first round's with these)."""
    n = max(len(scores), 1)
    return {"reward_mean": sum(s.reward for s in scores) / n, "accuracy": sum(s.correct for s in scores) / n,
            "format_rate": sum(s.formatted for s in scores) / n,
            "response_length": sum(len(c.token_ids) for c in completions) / max(len(completions), 1)}


def apply_token_budget(ctx: RLContext, step: int) -> dict[str, float]:
    """A dynamic token budget (ctx.token_budget, RMT's B_t, train/rmt.py): this step's rollouts sample at most
    B_t new tokens. B_t is a pure function of the step (never of the previous budget), so a resumed run
    samples exactly as the uninterrupted one. Returns {"token_budget": B_t} ({} without a budget)."""
    if ctx.token_budget is None:
        return {}
    ctx.sampling = replace(ctx.sampling, max_new_tokens=int(ctx.token_budget(step)))
    return {"token_budget": float(ctx.sampling.max_new_tokens)}


def rl_step(ctx: RLContext, step: int, examples: Sequence[Example],
            prompt_ids: Sequence[int] | None = None, slots: Sequence[int] | None = None) -> dict[str, float]:
    """One rollout batch: sample, score, credit, update. Returns the step's metrics.

    prompt_ids: the persistent id of each example (its index in the run's prompt list; default: its
    position in this step), read by stateful credit estimators.
    slots: each example's position among the step's prompts over all ranks (default: its position
    here); with dist.seed_per_prompt it seeds the example's group (credo/dist/shard.py).
    """
    t0 = time.perf_counter()
    budget = apply_token_budget(ctx, step)
    if ctx.dist is not None:
        ctx.dist.before_rollout()  # FSDP2: refresh the sampling copy from the shards
    prompt_ids = list(range(len(examples))) if prompt_ids is None else list(prompt_ids)
    slots = list(range(len(examples))) if slots is None else list(slots)
    prompts = encode_prompts(ctx.tokenizer, ctx.task, examples)
    drop = set(too_long(prompts, ctx.max_prompt_tokens))
    if drop:  # skip and count: the step goes on with the prompts that fit
        examples = [ex for i, ex in enumerate(examples) if i not in drop]
        prompts = [p for i, p in enumerate(prompts) if i not in drop]
        prompt_ids = [k for i, k in enumerate(prompt_ids) if i not in drop]
        slots = [k for i, k in enumerate(slots) if i not in drop]
        if not examples:
            return {"skipped_prompts": len(drop), "updates": 0, "skipped_updates": 0}
    stale: dict[str, float] = {}
    if ctx.rollouts is not None:  # sent ahead (rollout.max_staleness, train/pipeline.py)
        groups, keep, stale = ctx.rollouts.collect(step, prompts)
        if len(keep) < len(examples):  # rollout.stale_policy "drop"
            examples, prompts = [examples[i] for i in keep], [prompts[i] for i in keep]
            prompt_ids, slots = [prompt_ids[i] for i in keep], [slots[i] for i in keep]
            if not examples:
                return {"skipped_prompts": len(drop), "updates": 0, "skipped_updates": 0, **stale}
    else:
        groups = sample_groups(ctx, examples, prompts, slots, step_seed(ctx.seed, step))
    t_gen = time.perf_counter()
    maybe_die("rollout")
    completions, scores, group_ids, errors = score_groups(ctx.task, groups, examples, ctx.error_reward, ctx.verifier)
    selection = {} if ctx.dynamic_sampling is None else ctx.dynamic_sampling(  # DAPO: mixed groups only, refilled
        ctx, step, examples, prompt_ids, completions, scores, group_ids, errors)
    if selection:
        first_round = sampled_summary(completions, scores)
        examples, prompt_ids, completions, scores, group_ids, errors = selection.pop("batch")
        if not examples:  # every round gave uniform groups: nothing to learn from this step
            # the first round's rewards and the step's time still go into the curves (no gaps in a report)
            return {"skipped_prompts": len(drop), "updates": 0, "skipped_updates": 0, **first_round, **selection,
                    **budget, "gen_time": t_gen - t0, "step_time": time.perf_counter() - t0}
    if callable(getattr(ctx.curriculum, "observe_rows", None)):  # per-prompt accuracy (train/context_schedule.py)
        ctx.curriculum.observe_rows([prompt_ids[g] for g in group_ids], [float(s.correct) for s in scores])
    if callable(getattr(ctx.curriculum, "tier_rewards", None)):  # TAROT: tier-weighted rewards (train/tarot.py)
        scores, tier_metrics = ctx.curriculum.tier_rewards(step, scores)
        selection.update(tier_metrics)
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    if ctx.reward_mix is not None:  # rl.reward_terms: sum_k w_k term_k, each logged (rewards/terms.py)
        terms = TermInputs.of(ctx.task, completions, examples, scores, group_ids, prompt_ids)
        rewards, term_metrics = ctx.reward_mix(terms)
        ctx.reward_mix.commit(terms)  # (HAPO's history sees this step; checkpointed after it)
        selection.update(term_metrics)
    if ctx.overlong is not None:  # DAPO's soft overlong punishment, added to the task reward
        rewards, length_metrics = ctx.overlong(rewards, torch.tensor([len(c.token_ids) for c in completions]))
        selection.update(length_metrics)
    rows = (completions, rewards.tolist(), group_ids, [examples[g] for g in group_ids])
    if ctx.warm_start is not None:  # rl.warm_start "replay": offline rows appended to the batch (train/warm_start.py)
        *rows, replay_metrics = ctx.warm_start.replay_rows(ctx, step, *rows)
        selection.update(replay_metrics)
    batch = build_batch(*rows[:3], pad_id=pad_token_id(ctx.tokenizer))
    if ctx.ref_model is not None:
        with torch.no_grad(), autocast_context(ctx.settings.autocast_dtype, batch.tokens.device):
            batch.ref_logprobs = policy_outputs(
                ctx.ref_model, batch.tokens, batch.attention_mask, batch.loss_mask,
                temperature=ctx.settings.temperature, group_ids=prefix_groups(batch, ctx.settings, ctx.dist),
                chunked_head=fast_head(ctx.settings, ctx.dist),
            ).logprobs
    row_prompt_ids = torch.tensor([prompt_ids[g] for g in group_ids], dtype=torch.long)
    credit_metrics = assign_credit(ctx, batch, rows[0], rows[3], row_prompt_ids)
    if ctx.sample_selection is not None:  # D3S: train on the max-Var(A) rollouts of each group only
        keep, selection_metrics = ctx.sample_selection(step, batch.advantages, batch.loss_mask, batch.group_ids)
        narrow_loss_mask(batch, keep[:, None])
        credit_metrics.update(selection_metrics)
    if ctx.credit_protocol is not None:
        next_state, state_metrics = advance_credit_state(ctx, batch, row_prompt_ids)
        credit_metrics.update(state_metrics)
    if ctx.temperature_schedule is not None and getattr(ctx.temperature_schedule, "needs_entropy", False):
        credit_metrics.update(observe_sampling_entropy(ctx, batch))  # (for the next step's rollout)
    generator = torch.Generator().manual_seed(ctx.seed * 7919 + step)
    grad_stats = GradSNR() if ctx.snr_lr else None
    several = {} if ctx.dist is None else {"dist": ctx.dist}  # (torch.distributed ranks)
    if callable(getattr(ctx.engine, "offload", None)):  # colocated vLLM frees its GPU memory
        ctx.engine.offload()
    objective = functools.partial(ctx.objective, rl_step=step) if wants_step(ctx.objective) else ctx.objective
    update = ppo_update(ctx.model, ctx.optimizer, batch, objective, ctx.settings, generator, grad_stats,
                        entropy_control=ctx.entropy_control,
                        sft_mix=None if ctx.sft_mix is None else ctx.sft_mix.at_step(step), **several)
    if ctx.credit_protocol is not None:
        ctx.credit_state = next_state  # after the step: the next step's baseline sees this one's rewards
    if grad_stats is not None:
        update.update(advance_lr_scale(ctx, grad_stats))
    if ctx.critic is not None:
        returns = critic_returns(batch, ctx.credit)
        if ctx.dist is not None:  # FSDP2: the critic's features come from the refreshed sampling copy
            ctx.dist.before_rollout()
        update.update(critic_update(ctx.critic, ctx.critic_optimizer, batch, returns, ctx.critic_settings,
                                    generator, ctx.settings.autocast_dtype, **several))
    t_sync = time.perf_counter()
    # weight sync: the next rollout samples these (sent ahead: without waiting for generations in flight)
    ctx.engine.load_weights(scoring_model(ctx), version=step + 1, **({} if ctx.rollouts is None else {"wait": False}))
    t_end = time.perf_counter()
    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    gen_tokens = float(lengths.sum())
    grouped = rewards.view(len(examples), ctx.group_size)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": sum(s.correct for s in scores) / len(scores),
        "format_rate": sum(s.formatted for s in scores) / len(scores),
        "zero_variance_groups": float((grouped.max(1).values == grouped.min(1).values).float().mean()),
        "response_length": float(lengths.mean()),
        **({} if not budget else {**budget, "response_length_max": float(lengths.max())}),
        "truncation_rate": sum(c.finish_reason == "length" for c in completions) / len(completions),
        # updates between the weights a completion was sampled with and this step's (0: on-policy engine)
        "policy_lag_max": float(step - min(c.weight_version for c in completions)),
        "verifier_errors": errors,
        **(ctx.verifier.metrics() if callable(getattr(ctx.verifier, "metrics", None)) else {}),  # (reward model)
        "skipped_prompts": len(drop),
        **update,
        **credit_metrics,
        **turn_metrics(completions),
        **outcome_counts(scores),  # code tasks: sandbox outcomes of this step's completions
        **selection,
        **stale,
        **({"rollout_worker_rss_mb": ctx.engine.worker_rss_mb} if hasattr(ctx.engine, "worker_rss_mb") else {}),
        "gen_time": t_gen - t0,
        "update_time": t_end - t_gen,
        "step_time": t_end - t0,
        "weight_sync_time": t_end - t_sync,
        # prompt + completion tokens of the rollout batch per second of the whole step
        "tokens_per_s": float(batch.attention_mask.sum()) / max(t_end - t0, 1e-9),
        "gen_tokens_per_s": gen_tokens / max(t_gen - t0, 1e-9),
    }
