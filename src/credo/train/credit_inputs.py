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
  judge (`SyntheticJudge` with rl.judge_noise / judge_bias / judge_flip) on the task's true step scores
  (`task.step_truth(example, steps)`; a task without it gets the outcome as every step's truth:
  +1 for a correct answer, -1 otherwise, i.e. an outcome-only judge);
- step_keys: multi-turn: the observation before each turn; single-turn: the completion text before
  the step (identical prefixes are identical states);
- values: the critic (`credo.critic`);
- attention: the policy's last-layer attention averaged over heads (an eager forward);
- probe: Monte Carlo continuations with the rollout engine (rl.probe_samples per call, counted);
- extras: per-estimator providers in `EXTRAS_PROVIDERS` (name -> fn(ProbeContext) -> dict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from credo.batch import RolloutBatch
from credo.credit.base import CreditInputs, credit_needs_of, steps_from_boundaries
from credo.credit.judges import SyntheticJudge
from credo.logprobs import policy_outputs, token_logprobs
from credo.rollout.base import Completion, SamplingParams
from credo.rollout.multiturn import turn_step_ids, turn_step_keys, turn_step_rewards
from credo.rollout.torch_engine import autocast_context
from credo.tasks.base import Example


@dataclass
class CreditSources:
    """What the runner binds once for building credit inputs."""

    model: torch.nn.Module
    tokenizer: Any
    engine: Any
    task: Any
    sampling: SamplingParams
    judge: SyntheticJudge
    probe_samples: int = 4
    temperature: float = 1.0
    autocast_dtype: torch.dtype | None = None
    micro_batch_size: int = 32
    critic: Any = None
    phase_marker: str = "<answer>"
    dpo_model: str = ""
    cache: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"probe_rollouts": 0, "judge_calls": 0})


@dataclass
class StepContext:
    """The raw material of one rollout batch, handed to extras providers."""

    sources: CreditSources
    batch: RolloutBatch
    completions: Sequence[Completion]
    examples: Sequence[Example]  # examples[b]: the example of row b


# name of a credit estimator -> fn(StepContext) -> extras dict (filled as estimators need them)
EXTRAS_PROVIDERS: dict[str, Callable[[StepContext], dict[str, Any]]] = {}
# name of a credit estimator -> fn(StepContext) -> step_ids [B, T], for estimators whose "steps" are
# not lines or turns (F-GRPO's phases)
STEP_PROVIDERS: dict[str, Callable[[StepContext], torch.Tensor]] = {}


def _provides(table: dict, name: str):
    def register(fn):
        table[name] = fn
        return fn
    return register


def _token_texts(tokenizer, ids: Sequence[int], cache: dict[int, str]) -> list[str]:
    out = []
    for i in ids:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        out.append(cache[i])
    return out


def line_steps(batch: RolloutBatch, tokenizer) -> torch.Tensor:
    """step_ids [B, T]: a step ends at a loss token whose text contains a newline."""
    cache: dict[int, str] = {}
    ends = torch.zeros_like(batch.loss_mask)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        texts = _token_texts(tokenizer, batch.tokens[b, cols].tolist(), cache)
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


def _nan_padded(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    k = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), k), float("nan"), dtype=torch.float32)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.tensor([float(x) for x in r], dtype=torch.float32)
    return out


def judged_step_rewards(ctx: StepContext, texts: list[list[str]]) -> torch.Tensor:
    """[B, K]: the judge's score of each step against the task's true step scores."""
    src = ctx.sources
    truth_fn = getattr(src.task, "step_truth", None)
    rows = []
    for b, steps in enumerate(texts):
        example = ctx.examples[b]
        if truth_fn is not None:
            truth = truth_fn(example, steps)
        else:  # an outcome-only judge: every step inherits the verdict on the answer
            truth = [1.0 if float(ctx.batch.rewards[b]) > 0 else -1.0] * len(steps)
        rows.append(src.judge.score(example.prompt, steps, truth))
        src.counters["judge_calls"] += len(steps)
    return _nan_padded(rows)


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
            conts = src.engine.generate([prefix], src.probe_samples, params, seed=seed)[0]
            head = src.tokenizer.decode(done, skip_special_tokens=True)
            rewards = []
            for cont in conts:
                try:
                    rewards.append(float(src.task.score(head + cont.text, ctx.examples[b]).reward))
                except Exception:  # a verifier must not crash training; score it as a failure
                    rewards.append(0.0)
            src.counters["probe_rollouts"] += len(conts)
            value = sum(rewards) / len(rewards)
        cache[(b, t)] = value
        return value

    return probe


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
        if name in STEP_PROVIDERS:
            step_ids = STEP_PROVIDERS[name](ctx)
        elif multi_turn:
            step_ids = turn_step_ids(ctx.completions, batch)
        else:
            step_ids = line_steps(batch, ctx.sources.tokenizer)
        fields["step_ids"] = step_ids
        if "step_rewards" in needs:
            if multi_turn:
                fields["step_rewards"] = turn_step_rewards(ctx.completions)
            else:
                fields["step_rewards"] = judged_step_rewards(ctx, step_texts(batch, step_ids, ctx.sources.tokenizer))
            if name in STEP_REWARD_TRANSFORMS:
                fields["step_rewards"] = STEP_REWARD_TRANSFORMS[name](fields["step_rewards"])
        if "step_keys" in needs:
            if multi_turn:
                fields["step_keys"] = turn_step_keys(ctx.completions)
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
        provider = EXTRAS_PROVIDERS.get(name)
        if provider is None:
            raise ValueError(f"credit estimator {name} needs method-specific extras, and training has no "
                             f"provider for them yet (credo.train.credit_inputs.EXTRAS_PROVIDERS)")
        fields["extras"] = provider(ctx)
    return CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                        tokens=batch.tokens, **fields)


# -- method-specific inputs -------------------------------------------------------------------------


@_provides(STEP_PROVIDERS, "f_grpo")
def phase_steps(ctx: StepContext) -> torch.Tensor:
    """F-GRPO's two phases: 0 (candidate generation) before the first token at which the completion's
    text contains `phase_marker` (default "<answer>": the reasoning, then the answer), 1 from there on."""
    marker = ctx.sources.phase_marker
    cache: dict[int, str] = {}
    batch = ctx.batch
    step_ids = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        text, phase = "", 0
        for c, piece in zip(cols, _token_texts(ctx.sources.tokenizer, batch.tokens[b, cols].tolist(), cache)):
            text += piece
            if phase == 0 and marker in text:
                phase = 1
            step_ids[b, c] = phase
    return step_ids


@_provides(EXTRAS_PROVIDERS, "f_grpo")
def phase_rewards(ctx: StepContext) -> dict[str, Any]:
    """phase_rewards [B, 2]: the task's `phase_scores(example, completion) -> (coverage, utility)` when
    it has one; otherwise (format reward, outcome reward): the first phase is judged on producing a
    well-formed answer, the second on the answer itself."""
    task = ctx.sources.task
    rows = []
    for b, completion in enumerate(ctx.completions):
        example = ctx.examples[b]
        try:
            if hasattr(task, "phase_scores"):
                rows.append([float(x) for x in task.phase_scores(example, completion.text)])
            else:
                score = task.score(completion.text, example)
                rows.append([float(score.formatted), float(score.reward)])
        except Exception:  # model output must never crash training: a failed verifier scores 0
            rows.append([0.0, 0.0])
    return {"phase_rewards": torch.tensor(rows, dtype=torch.float32).nan_to_num(0.0)}


@_provides(EXTRAS_PROVIDERS, "rto")
def dpo_logprobs(ctx: StepContext) -> dict[str, Any]:
    """dpo_logprobs [B, T]: the sampled tokens scored by RTO's frozen DPO model (`rl.dpo_model`: a
    model folder, a credo checkpoint or a preset name), loaded once."""
    src = ctx.sources
    if not src.dpo_model:
        raise ValueError("credit estimator rto needs a DPO-trained model: set rl.dpo_model to its folder "
                         "(a Hugging Face folder or a credo checkpoint)")
    if "dpo_model" not in src.cache:
        from credo.models import load_policy

        src.cache["dpo_model"] = load_policy(src.dpo_model).model.eval().requires_grad_(False)
    model, batch = src.cache["dpo_model"], ctx.batch
    out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
    with torch.no_grad():
        for rows in torch.arange(len(batch)).split(src.micro_batch_size):
            part = batch.select(rows)
            with autocast_context(src.autocast_dtype, part.tokens.device):
                lp = token_logprobs(model, part.tokens, part.attention_mask, part.loss_mask,
                                    temperature=src.temperature)
            out[rows, : part.tokens.shape[1]] = lp.float()
    return {"dpo_logprobs": out}


@_provides(EXTRAS_PROVIDERS, "spo_tree")
def spo_tree_from_tokens(ctx: StepContext) -> dict[str, Any]:
    """No sampled tree: the estimator builds it from the group's shared token prefixes (fixed segment
    length), so the trainer passes nothing extra."""
    return {}


BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@_provides(EXTRAS_PROVIDERS, "brpo")
def budget_probes(ctx: StepContext) -> dict[str, Any]:
    """BRPO's budgets: the response is cut at BUDGET_FRACTIONS of its length; each cut is scored by
    Monte Carlo continuations from the cut (the forced answer; counted as probe rollouts), the full
    response by its own reward. budget_scores [B, S], budget_positions [B, S] (tokens[b, :pos] kept)."""
    batch, probe = ctx.batch, mc_probe(ctx)
    B, S = len(batch), len(BUDGET_FRACTIONS)
    scores = torch.zeros(B, S, dtype=torch.float32)
    positions = torch.zeros(B, S, dtype=torch.long)
    for b, completion in enumerate(ctx.completions):
        start, length = len(completion.prompt_ids), len(completion.token_ids)
        for s, frac in enumerate(BUDGET_FRACTIONS):
            cut = start + int(round(frac * length))
            positions[b, s] = cut
            scores[b, s] = float(batch.rewards[b]) if cut >= start + length else probe(b, cut)
    return {"budget_scores": scores, "budget_positions": positions}


# step-reward transforms: estimators whose step signal is not the judge's score itself
STEP_REWARD_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def _capo_votes(scores: torch.Tensor) -> torch.Tensor:
    from credo.credit.process import judge_wrong_fraction

    return judge_wrong_fraction(scores)  # CAPO reads the fraction of critiques calling a step wrong


STEP_REWARD_TRANSFORMS["capo"] = _capo_votes

# A small built-in stand-in for HICRA's Strategic-Gram lexicon (the paper mines n-grams offline with
# a sentence embedder): words that open a plan, a check or a change of course.
PLANNING_WORDS = frozenset({"first", "then", "next", "so", "therefore", "let", "wait", "check", "verify",
                            "instead", "because", "step", "plan", "try", "recall", "finally", "but"})


@_provides(EXTRAS_PROVIDERS, "hicra_gram")
def planning_mask(ctx: StepContext) -> dict[str, Any]:
    """planning_mask [B, T] bool: loss tokens whose text is a planning word (PLANNING_WORDS)."""
    batch, cache = ctx.batch, {}
    mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        for c, text in zip(cols, _token_texts(ctx.sources.tokenizer, batch.tokens[b, cols].tolist(), cache)):
            mask[b, c] = text.strip().lower() in PLANNING_WORDS
    return {"planning_mask": mask}


CONTRAST_SUFFIX = {"pos": " Write the best possible response.", "neg": " Write a wrong response."}


@_provides(EXTRAS_PROVIDERS, "t_reg")
def contrastive_logprobs(ctx: StepContext) -> dict[str, Any]:
    """T-REG's self-generated token rewards: the sampled completion tokens scored by the policy under
    the prompt plus CONTRAST_SUFFIX["pos"] and plus ["neg"] (two extra teacher-forced passes)."""
    from dataclasses import replace as _replace

    from credo.batch import build_batch
    from credo.train.evaluate import encode_prompts, pad_token_id

    src, batch = ctx.sources, ctx.batch
    out = {}
    for side, suffix in CONTRAST_SUFFIX.items():
        examples = [_replace(ex, prompt=ex.prompt + suffix) for ex in ctx.examples]
        prompts = encode_prompts(src.tokenizer, src.task, examples)
        moved = [Completion(p, c.token_ids, c.logprobs, c.trainable, c.finish_reason, c.text)
                 for p, c in zip(prompts, ctx.completions)]
        shifted = build_batch(moved, batch.rewards.tolist(), batch.group_ids.tolist(),
                              pad_id=pad_token_id(src.tokenizer))
        lp = torch.zeros(shifted.tokens.shape, dtype=torch.float32)
        with torch.no_grad():
            for rows in torch.arange(len(shifted)).split(src.micro_batch_size):
                part = shifted.select(rows)
                with autocast_context(src.autocast_dtype, part.tokens.device):
                    lp[rows, : part.tokens.shape[1]] = token_logprobs(
                        src.model, part.tokens, part.attention_mask, part.loss_mask,
                        temperature=src.temperature).float()
        aligned = torch.zeros(batch.tokens.shape, dtype=torch.float32)
        for b, (c, p) in enumerate(zip(ctx.completions, prompts)):  # back to the batch's positions
            k = len(c.token_ids)
            aligned[b, len(c.prompt_ids): len(c.prompt_ids) + k] = lp[b, len(p): len(p) + k]
        out[f"contrastive_logprobs_{side}"] = torch.where(batch.loss_mask, aligned, torch.zeros_like(aligned))
    return out


TOOL_CALL_MARKER = "<call>"


@_provides(EXTRAS_PROVIDERS, "aspo")
def first_call_positions(ctx: StepContext) -> dict[str, Any]:
    """first_call_positions [B]: where the first tool call (TOOL_CALL_MARKER) starts in each completion,
    as a fraction of the completion's text length; NaN when it makes no call."""
    out = []
    for c in ctx.completions:
        at = c.text.find(TOOL_CALL_MARKER)
        out.append(at / max(len(c.text), 1) if at >= 0 else float("nan"))
    return {"first_call_positions": torch.tensor(out, dtype=torch.float64)}
