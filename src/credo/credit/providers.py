"""Signal providers: the method-specific inputs of a token-level credit estimator, computed from a
rollout batch before the estimator runs.

An estimator stays a pure function of `CreditInputs`; what only it needs (F-GRPO's phases, RTO's DPO
logprobs, BRPO's budget probes, HICRA's planning tokens, T-REG's contrastive logprobs, ASPO's first
tool call, CAPO's critique votes) is produced by a provider that the method's own module registers
next to the estimator with one of three decorators:

    @provides_extras(my_estimator)          fn(StepContext) -> dict   -> CreditInputs.extras
    @provides_steps(my_estimator)           fn(StepContext) -> step_ids [B, T] (steps that are not
                                            lines or turns)
    @transforms_step_rewards(my_estimator)  fn(step_rewards [B, K]) -> [B, K] (a signal derived from
                                            the judge's scores)
    @provides_step_rewards(my_estimator)    fn(StepContext, step_ids [B, T]) -> step_rewards [B, K]
                                            (a signal of the method's own instead of the judge's or
                                            the environment's, e.g. IGPO's information gain); it may
                                            return None for "the default source" (e.g. when rl.judge
                                            is the synthetic judge), and its keyword-only parameters
                                            named like the estimator's get their bound values

Two companions hand the objective more than advantages, computed from the same CreditInputs after
the estimator: `@provides_clip_scale(est)` fn(inputs) -> batch.clip_scale [B, T] (a per-token
multiplier of the clip range: A2TGPO) and `@restricts_loss_mask(est)` fn(inputs) -> bool [B, T] ANDed
into batch.loss_mask (VPR drops states whose candidates all score alike).

Every provider's keyword-only parameters named like the estimator's get their bound values
(rl.credit_params, else the estimator's defaults; `train/credit_inputs.py::provider_params`): a
producer's knobs (BRPO's budgets, MatchTIR's matching, SIOP's lam) sit in the estimator's signature.

The registration is a mark on the estimator function itself (like `token_level`), so it survives
`functools.partial` binding and a user's estimator loaded by dotted path can carry its own provider.
The trainer (`train/credit_inputs.py`) never names a method: it asks `extras_provider_of(credit)`,
`steps_provider_of(credit)` and `step_reward_transform_of(credit)` and calls what it gets.

`CreditSources` (what the runner binds once: model, tokenizer, engine, task, judge, ...) and
`StepContext` (one rollout batch) are what a provider reads; `token_texts`, `mc_probe`,
`mean_continuation_score` and `score_tokens` are the shared tools providers build on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from credo.batch import RolloutBatch
from credo.credit.base import _unwrap
from credo.judges.synthetic import StepJudge
from credo.rollout.base import Completion, SamplingParams
from credo.tasks.base import Example


@dataclass
class CreditSources:
    """What the runner binds once for building credit inputs."""

    model: torch.nn.Module
    tokenizer: Any
    engine: Any
    task: Any
    sampling: SamplingParams
    judge: StepJudge | None  # rl.judge (credo/judges/); None when the estimator reads no step rewards
    probe_samples: int = 4
    temperature: float = 1.0
    autocast_dtype: torch.dtype | None = None
    micro_batch_size: int = 32
    critic: Any = None
    phase_marker: str = "<answer>"
    dpo_model: str = ""
    cache: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"probe_rollouts": 0, "judge_calls": 0})
    step_metrics: dict[str, float] = field(default_factory=dict)  # a provider's values for this step (not summed)


@dataclass
class StepContext:
    """The raw material of one rollout batch, handed to providers."""

    sources: CreditSources
    batch: RolloutBatch
    completions: Sequence[Completion]
    examples: Sequence[Example]  # examples[b]: the example of row b


ExtrasProvider = Callable[[StepContext], dict[str, Any]]
StepsProvider = Callable[[StepContext], torch.Tensor]
StepRewardTransform = Callable[[torch.Tensor], torch.Tensor]


def _marker(attribute: str, what: str):
    def decorator_for(estimator: Callable) -> Callable:
        target = _unwrap(estimator)

        def register(fn: Callable) -> Callable:
            if getattr(target, attribute, None) is not None:
                raise ValueError(f"credit estimator {target.__name__} already has a {what}")
            setattr(target, attribute, fn)
            return fn

        return register

    return decorator_for


provides_extras = _marker("credit_extras_provider", "extras provider")
provides_steps = _marker("credit_steps_provider", "steps provider")
transforms_step_rewards = _marker("credit_step_reward_transform", "step-reward transform")
provides_step_rewards = _marker("credit_step_rewards_provider", "step-rewards provider")
# companions: what an estimator hands the objective beside its advantages, from the same CreditInputs
provides_clip_scale = _marker("credit_clip_scale", "clip-scale companion")      # -> batch.clip_scale [B, T]
restricts_loss_mask = _marker("credit_loss_mask", "loss-mask companion")        # -> batch.loss_mask &= [B, T]


def clip_scale_of(credit: Callable) -> Callable | None:
    """fn(CreditInputs, **params) -> clip scale [B, T] (A2TGPO's adaptive clipping); None if none."""
    return getattr(_unwrap(credit), "credit_clip_scale", None)


def loss_mask_of(credit: Callable) -> Callable | None:
    """fn(CreditInputs, **params) -> bool [B, T], the tokens the loss keeps (VPR's equal-reward states
    masked); None if none."""
    return getattr(_unwrap(credit), "credit_loss_mask", None)


def extras_provider_of(credit: Callable) -> ExtrasProvider | None:
    """The provider of the estimator's `extras` (also through functools.partial); None if none."""
    return getattr(_unwrap(credit), "credit_extras_provider", None)


def steps_provider_of(credit: Callable) -> StepsProvider | None:
    """The estimator's own step segmentation; None: lines of the completion, or turns."""
    return getattr(_unwrap(credit), "credit_steps_provider", None)


def step_rewards_provider_of(credit: Callable) -> Callable[[StepContext, torch.Tensor], torch.Tensor] | None:
    """The estimator's own step-reward signal; None: the judge's scores (single turn) or the
    environment's turn rewards (multi-turn)."""
    return getattr(_unwrap(credit), "credit_step_rewards_provider", None)


def step_reward_transform_of(credit: Callable) -> StepRewardTransform | None:
    """The map from the judge's step scores to the estimator's step signal; None: the scores."""
    return getattr(_unwrap(credit), "credit_step_reward_transform", None)


# -- tools providers share ---------------------------------------------------------------------------


def token_texts(tokenizer, ids: Sequence[int], cache: dict[int, str]) -> list[str]:
    """The decoded text of each token id (memoised in `cache`)."""
    out = []
    for i in ids:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        out.append(cache[i])
    return out


def mean_continuation_score(ctx: StepContext, b: int, prefix: Sequence[int], params: SamplingParams, seed: int,
                            head: str) -> float:
    """The mean verifier reward of `probe_samples` continuations of token ids `prefix`, each scored as
    `head` + its text against row b's example (one engine call; counted as `probe_rollouts`). A
    verifier that raises scores 0: model output never crashes training."""
    src = ctx.sources
    conts = src.engine.generate([list(prefix)], src.probe_samples, params, seed=seed)[0]
    rewards = []
    for cont in conts:
        try:
            rewards.append(float(src.task.score(head + cont.text, ctx.examples[b]).reward))
        except Exception:  # a verifier must not crash training; score it as a failure
            rewards.append(0.0)
    src.counters["probe_rollouts"] += len(conts)
    return sum(rewards) / len(rewards)


def mc_probe(ctx: StepContext) -> Callable[[int, int], float]:
    """probe(b, t): mean reward of `probe_samples` continuations of row b's prefix tokens[b, :t]."""
    src, batch = ctx.sources, ctx.batch
    cache: dict[tuple[int, int], float] = {}

    def probe(b: int, t: int) -> float:
        if (b, t) in cache:
            return cache[(b, t)]
        completion = ctx.completions[b]
        p = len(completion.prompt_ids)
        prefix = batch.tokens[b, :t].tolist()
        done = completion.token_ids[: max(t - p, 0)]
        budget = src.sampling.max_new_tokens - len(done)
        if budget <= 0:  # nothing left to sample: the prefix is the whole response
            value = float(batch.rewards[b])
        else:
            params = SamplingParams(src.sampling.temperature, src.sampling.top_p, src.sampling.top_k,
                                    budget, src.sampling.stop)
            seed = hash((b, t, int(batch.tokens[b].sum()))) % (2**31)
            head = src.tokenizer.decode(done, skip_special_tokens=True)
            value = mean_continuation_score(ctx, b, prefix, params, seed, head)
        cache[(b, t)] = value
        return value

    return probe


@torch.no_grad()
def score_tokens(ctx: StepContext, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """[B, T] logprobs of `batch`'s tokens under `model` (teacher-forced, no grad, in micro-batches
    with the run's autocast and temperature); 0 off the loss mask."""
    from credo.logprobs import token_logprobs
    from credo.rollout.torch_engine import autocast_context

    src = ctx.sources
    out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
    for rows in torch.arange(len(batch)).split(src.micro_batch_size):
        part = batch.select(rows)
        with autocast_context(src.autocast_dtype, part.tokens.device):
            lp = token_logprobs(model, part.tokens, part.attention_mask, part.loss_mask,
                                temperature=src.temperature)
        out[rows, : part.tokens.shape[1]] = lp.float()
    return out


@torch.no_grad()
def continuation_mean_logprobs(ctx: StepContext, prefixes: Sequence[Sequence[int]],
                               targets: Sequence[Sequence[int]]) -> list[float]:
    """mean_j log p(target[j] | prefix, target[:j]) under the policy (temperature 1: the model's own
    probabilities), for each (prefix, target) pair; teacher-forced in right-padded micro-batches with the
    run's autocast; an empty target gives NaN. Counted as `signal_forward_rows`."""
    from credo.logprobs import _final_logits
    from credo.rollout.torch_engine import autocast_context

    src = ctx.sources
    model = src.model
    device = next(model.parameters()).device
    pad = src.tokenizer.pad_token_id if src.tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    pairs = list(zip(prefixes, targets))
    for at in range(0, len(pairs), src.micro_batch_size):
        chunk = pairs[at:at + src.micro_batch_size]
        width = max(len(p) + len(t) for p, t in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, t) in enumerate(chunk):
            seq = list(p) + list(t)
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        with autocast_context(src.autocast_dtype, device):
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            # only the answer positions go through the [V]-wide head (logits at j - 1 score token j)
            rows = [(i, torch.arange(len(p) - 1, len(p) + len(t) - 1)) for i, (p, t) in enumerate(chunk) if t]
            picked = torch.cat([hidden[i, pos.to(device)] for i, pos in rows]) if rows else hidden[:0, 0]
            logp = torch.log_softmax(_final_logits(model, picked), dim=-1) if rows else None
        at = 0
        for i, (p, t) in enumerate(chunk):
            if not t:
                out.append(float("nan"))
                continue
            tgt = torch.tensor(list(t), dtype=torch.long, device=device)
            out.append(float(logp[at:at + len(t)].gather(1, tgt[:, None]).mean()))
            at += len(t)
        src.counters["signal_forward_rows"] = src.counters.get("signal_forward_rows", 0) + len(chunk)
    return out


def model_judge(ctx: StepContext):
    """The run's judge when it is a model that answers templated questions (`judges/llm.py::LLMJudge`:
    `yes_probability(template, fields)`), else None (synthetic judge, PRM, no judge)."""
    judge = ctx.sources.judge
    return judge if callable(getattr(judge, "yes_probability", None)) else None


def turn_texts(ctx: StepContext) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per row of a multi-turn batch: (the example's prompt, [(transcript before turn k, action text of turn k)]),
    from each completion's `turn_spans` (token spans of the policy's actions); rows without turns: []."""
    tok = ctx.sources.tokenizer
    out = []
    for c, example in zip(ctx.completions, ctx.examples):
        prompt = example.prompt
        turns = [(tok.decode(list(c.token_ids[:start]), skip_special_tokens=True),
                  tok.decode(list(c.token_ids[start:end]), skip_special_tokens=True))
                 for start, end in c.meta.get("turn_spans", [])]
        out.append((prompt, turns))
    return out


def judged_turn_probabilities(ctx: StepContext, template: str) -> list[list[float]]:
    """q in [0, 1] per turn of every row: the model judge asked `template` (fields prompt, context =
    the transcript before the turn, step = the turn's action) in one batched call; counted."""
    judge = model_judge(ctx)
    rows = turn_texts(ctx)
    fields = [{"prompt": prompt, "context": before or "(nothing yet)", "step": action}
              for prompt, turns in rows for before, action in turns]
    ctx.sources.counters["judge_calls"] += len(fields)
    flat = judge.yes_probability(template, fields) if fields else []
    out, at = [], 0
    for _, turns in rows:
        out.append(flat[at:at + len(turns)])
        at += len(turns)
    return out


def nan_padded(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """[B, K] float32 from ragged rows, NaN past each row's end."""
    k = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), k), float("nan"), dtype=torch.float32)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.tensor([float(x) for x in r], dtype=torch.float32)
    return out
