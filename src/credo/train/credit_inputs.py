"""Build `CreditInputs` for a token-level credit estimator from a rollout batch, filling only what the
estimator declares (`credit.base.token_level(needs=...)`), so outcome-level runs pay for nothing.

Where each field comes from in training:
- logprobs: the trainer's recomputed behaviour logprobs (also reused by the update, not recomputed);
- ref_logprobs: the frozen reference model (loaded when the estimator needs it);
- entropy / hidden_states: one no-grad forward of the policy; hidden_states[b, t] is the final hidden
  state at t - 1, the one whose logits scored token t;
- steps: multi-turn tasks: the policy turns; single-turn: lines of the completion (a step ends at a
  token whose text contains a newline), as PURE splits at "\\n\\n";
- step_rewards: multi-turn tasks: the environment's per-turn rewards; single-turn: the configured
  judge (rl.judge: an LLM judge or a trained PRM, credo/judges/; or the default `SyntheticJudge` with
  rl.judge_noise / judge_bias / judge_flip on the task's true step scores
  (`task.step_truth(example, steps)`; a task without it gets the outcome as every step's truth:
  +1 for a correct answer, -1 otherwise, i.e. an outcome-only judge));
- step_keys: multi-turn: the observation before each turn; single-turn: the completion text before
  the step (identical prefixes are identical states);
- values: the critic (`credo.critic`);
- attention: the policy's last-layer attention averaged over heads (an eager forward);
- probe: Monte Carlo continuations with the rollout engine (rl.probe_samples per call, counted);
- extras, and steps or step signals of the estimator's own: the providers its module registered
  (`credit/providers.py`: `provides_extras`, `provides_steps`, `transforms_step_rewards`), looked
  up on the estimator itself, so this module names no method.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from credo.batch import RolloutBatch
from credo.credit.base import CreditInputs, credit_needs_of, steps_from_boundaries
from credo.credit.providers import (CreditSources, StepContext, extras_provider_of, mc_probe,  # noqa: F401
                                    nan_padded, step_reward_transform_of, step_rewards_provider_of, steps_provider_of,
                                    token_texts)
from credo.logprobs import policy_outputs
from credo.rollout.multiturn import turn_step_ids, turn_step_keys, turn_step_rewards
from credo.rollout.torch_engine import autocast_context


def line_steps(batch: RolloutBatch, tokenizer) -> torch.Tensor:
    """step_ids [B, T]: a step ends at a loss token whose text contains a newline."""
    cache: dict[int, str] = {}
    ends = torch.zeros_like(batch.loss_mask)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        texts = token_texts(tokenizer, batch.tokens[b, cols].tolist(), cache)
        for c, text in zip(cols, texts):
            ends[b, c] = "\n" in text
    return steps_from_boundaries(batch.loss_mask, ends)


def step_texts(batch: RolloutBatch, step_ids: torch.Tensor, tokenizer) -> list[list[str]]:
    """The decoded text of every step of every row."""
    out = []
    for b in range(len(batch)):
        k = int(step_ids[b].max()) + 1
        out.append([tokenizer.decode(batch.tokens[b][step_ids[b] == j].tolist()) for j in range(max(k, 0))])
    return out




def judged_step_rewards(ctx: StepContext, texts: list[list[str]]) -> torch.Tensor:
    """[B, K]: the judge's score of each step (rl.judge, credo/judges/). The synthetic judge reads the
    task's true step scores; a model judge (LLM, PRM) ignores them and scores all rows in one batched
    call (`score_many`). Steps scored and seconds spent go to the metrics (judge_calls, judge_seconds)."""
    import time

    src = ctx.sources
    start = time.perf_counter()
    # a sampler may hand the judge the steps that came before a row's trainable ones (SLATE's shared
    # prefix, meta["judge_context"]): judged in context, their own scores dropped
    before = [list(c.meta.get("judge_context", [])) for c in ctx.completions]
    texts = [ctx_steps + steps for ctx_steps, steps in zip(before, texts)]
    score_many = getattr(src.judge, "score_many", None)
    if score_many is not None:
        rows = score_many([(ctx.examples[b].prompt, steps) for b, steps in enumerate(texts)])
    else:
        truth_fn = getattr(src.task, "step_truth", None)
        rows = []
        for b, steps in enumerate(texts):
            example = ctx.examples[b]
            if truth_fn is not None:
                truth = truth_fn(example, steps)
            else:  # an outcome-only judge: every step inherits the verdict on the answer
                truth = [1.0 if float(ctx.batch.rewards[b]) > 0 else -1.0] * len(steps)
            rows.append(src.judge.score(example.prompt, steps, truth))
    rows = [list(r)[len(ctx_steps):] for r, ctx_steps in zip(rows, before)]
    src.counters["judge_calls"] += sum(len(steps) for steps in texts)
    src.counters["judge_seconds"] = src.counters.get("judge_seconds", 0.0) + time.perf_counter() - start
    return nan_padded(rows)


@torch.no_grad()
def _forward_extras(ctx: StepContext, want: set[str]) -> dict[str, torch.Tensor]:
    """entropy [B, T] and/or last-layer hidden states [B, T, H] of the policy, no grad."""
    src, batch = ctx.sources, ctx.batch
    out: dict[str, torch.Tensor] = {}
    needs = frozenset({"entropy"} | ({"hidden_states"} if "hidden_states" in want else set()))
    ent = torch.zeros(batch.tokens.shape, dtype=torch.float32)
    hid = None
    for rows in torch.arange(len(batch)).split(src.micro_batch_size):
        part = batch.select(rows)
        with autocast_context(src.autocast_dtype, part.tokens.device):
            po = policy_outputs(src.model, part.tokens, part.attention_mask, part.loss_mask,
                                temperature=src.temperature, needs=needs)
        width = part.tokens.shape[1]
        ent[rows, :width] = po.entropy.float()
        if "hidden_states" in want:
            h = po.hidden_states[-1].float()
            if hid is None:
                hid = torch.zeros(*batch.tokens.shape, h.shape[-1])
            hid[rows, 1:width] = h[:, : width - 1]  # the state that scored token t sits at t - 1
    if "entropy" in want:
        out["entropy"] = ent
    if "hidden_states" in want:
        out["hidden_states"] = hid
    return out


@torch.no_grad()
def last_layer_attention(ctx: StepContext) -> torch.Tensor:
    """attention [B, T, T]: the policy's last-layer attention averaged over heads (an eager-attention
    forward, since fused kernels do not return attention weights; the model's kernel is restored)."""
    src, batch = ctx.sources, ctx.batch
    model = src.model
    before = model.config._attn_implementation
    B, T = batch.tokens.shape
    out = torch.zeros(B, T, T, dtype=torch.float32)
    try:
        model.set_attn_implementation("eager")
        for rows in torch.arange(B).split(src.micro_batch_size):
            part = batch.select(rows)
            w = part.tokens.shape[1]
            with autocast_context(src.autocast_dtype, part.tokens.device):
                att = model(input_ids=part.tokens, attention_mask=part.attention_mask,
                            output_attentions=True).attentions[-1]
            out[rows, :w, :w] = att.float().mean(1)
    finally:
        model.set_attn_implementation(before)
    return out


def provider_params(provider: Callable, credit: Callable) -> dict[str, Any]:
    """The estimator's hyperparameters its provider also takes (keyword-only parameters of the provider
    with the same name): the bound value (rl.credit_params), else the estimator's default."""
    import functools
    import inspect

    bound = dict(credit.keywords) if isinstance(credit, functools.partial) else {}
    own = inspect.signature(credit.func if isinstance(credit, functools.partial) else credit).parameters
    out = {}
    for name, p in inspect.signature(provider).parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name in own:
            out[name] = bound.get(name, own[name].default)
    return out


def build_credit_inputs(ctx: StepContext, credit: Callable, name: str) -> CreditInputs:
    """CreditInputs with every field the estimator declares, and nothing else."""
    needs = set(credit_needs_of(credit))
    batch = ctx.batch
    multi_turn = any("turn_spans" in c.meta for c in ctx.completions)
    fields: dict[str, Any] = {}
    if "logprobs" in needs:
        fields["logprobs"] = batch.behaviour_logprobs
    if "ref_logprobs" in needs:
        fields["ref_logprobs"] = batch.ref_logprobs
    if needs & {"entropy", "hidden_states"}:
        fields.update(_forward_extras(ctx, needs))
    if needs & {"steps", "step_rewards", "step_keys"}:
        own_steps = steps_provider_of(credit)
        if own_steps is not None:
            step_ids = own_steps(ctx)
        elif multi_turn:
            step_ids = turn_step_ids(ctx.completions, batch)
        else:
            step_ids = line_steps(batch, ctx.sources.tokenizer)
        fields["step_ids"] = step_ids
        if "step_rewards" in needs:
            own_rewards = step_rewards_provider_of(credit)
            got = None if own_rewards is None else own_rewards(ctx, step_ids, **provider_params(own_rewards, credit))
            if got is not None:  # (a provider returns None for "the default source")
                fields["step_rewards"] = got
            elif multi_turn:
                fields["step_rewards"] = turn_step_rewards(ctx.completions)
            else:
                fields["step_rewards"] = judged_step_rewards(ctx, step_texts(batch, step_ids, ctx.sources.tokenizer))
            transform = step_reward_transform_of(credit)
            if transform is not None:
                fields["step_rewards"] = transform(fields["step_rewards"])
        if "step_keys" in needs:
            if multi_turn:
                fields["step_keys"] = turn_step_keys(ctx.completions)
            elif all("step_keys" in c.meta for c in ctx.completions):  # a sampler's own keys (SLATE's prefix ids)
                counts = (step_ids.max(dim=1).values + 1).clamp(min=0).tolist()
                # (a candidate split into more steps than its keys, e.g. a token holding two newlines: the last
                # key covers the rest)
                fields["step_keys"] = [list(c.meta["step_keys"]) + [c.meta["step_keys"][-1]] * max(n - len(c.meta["step_keys"]), 0)
                                       for c, n in zip(ctx.completions, counts)]
            else:
                texts = step_texts(batch, step_ids, ctx.sources.tokenizer)
                fields["step_keys"] = [["".join(steps[:k]) for k in range(len(steps))] for steps in texts]
    if "values" in needs:
        fields["values"] = batch.values
    if "attention" in needs:
        fields["attention"] = last_layer_attention(ctx)
    if "probe" in needs:
        fields["probe"] = mc_probe(ctx)
    if "extras" in needs:
        provider = extras_provider_of(credit)
        if provider is None:
            raise ValueError(f"credit estimator {name} needs method-specific extras, and it has no provider "
                             f"for them (register one with credo.credit.providers.provides_extras)")
        fields["extras"] = provider(ctx, **provider_params(provider, credit))
    return CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                        tokens=batch.tokens, **fields)
