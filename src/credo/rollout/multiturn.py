"""Multi-turn rollouts: the policy acts, the task's environment answers, turn after turn.

`generate_multiturn` drives any task with the multi-turn protocol (`MultiTurnTask`; the built-in one
is `credo.tasks.keyvalue.KeyValueTask`). Each trajectory is ONE `Completion` whose `token_ids` are
the concatenated turns:

    prompt | action 0 (policy) | observation 0 (env) | action 1 (policy) | ... | last action

Action tokens keep the engine's trainable flags (True) and sampler logprobs; observation tokens are
trainable=False with logprob 0.0, so `build_batch` leaves them out of the loss mask. Observations
are tokenized on their own (`add_special_tokens=False`) and appended: the tokens the policy was
conditioned on are exactly the tokens trained on (no re-tokenization of the transcript).

Turn loop: every live trajectory gets its next action from ONE batched engine call whose prompts
are all tokens so far (turn 0: the prompts with `n` samples each, so the engine prefills each prompt
once; later turns: one sample per live trajectory). Each action ends at one of the task's
`turn_stop` strings (added to `sampling.stop`) or after `sampling.max_new_tokens` tokens. The task's
`step` then returns an observation (the episode goes on) or None (it ended).

An episode ends when (1) the task ends it (an answer, or a malformed action: garbage, no stop
string, a bad call — the task decides, and must not raise), (2) `max_turns` actions were taken, or
(3) the context budget `max_context_tokens` leaves no room for another action of
`max_new_tokens` tokens after the next observation; in (2) and (3) the last observation is not
appended (no action would follow it). A task `step` that raises anyway ends the episode with turn
reward 0 and truth 0, counted in `meta["env_errors"]`; a non-finite turn reward is stored as 0
and counted the same way.

`Completion.meta` of each trajectory:
    "turn_spans"   [(start, end)] token offsets of each policy action within token_ids (end exclusive)
    "turn_rewards" [float] the task's reward for each turn
    "turn_keys"    [tuple[str, ...]] the observation history before each turn (hashable; turn 0: ())
    "turn_truth"   [float] the task's true per-turn value (`task.turn_truth`), for synthetic judges
    "turn_texts"   [str] each action's decoded text (what a judge reads)
    "turns"        int, the number of policy turns
    "end"          "env" (the task ended it), "max_turns" or "context"
    "env_errors"   int
`finish_reason` is that of the last action when the task ended the episode, else "length";
`text` is the whole transcript (actions and observations), which `task.score` verifies.

Seeds: turn k's engine call uses `turn_seed(seed, k)`, so a run is deterministic given `seed`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence, runtime_checkable

import torch

from credo.rollout.base import Completion, RolloutEngine, SamplingParams
from credo.tasks.base import Example


@runtime_checkable
class MultiTurnTask(Protocol):
    """A task whose episodes alternate policy actions and environment observations."""

    name: str
    max_turns: int
    turn_stop: tuple[str, ...]

    def reset(self, example: Example) -> Any:
        """The initial state of the example's episode."""
        ...

    def step(self, state: Any, action_text: str) -> tuple[str | None, float, Any]:
        """(observation text, or None when the episode is over; turn reward; next state).
        Never raises on model output."""
        ...

    def turn_truth(self, state: Any) -> float:
        """The true value of the turn that produced `state` (e.g. 1 useful, 0 useless, -1 malformed)."""
        ...


def is_multiturn(task: object) -> bool:
    """True when the task speaks the multi-turn protocol (the trainer then uses the driver)."""
    return all(callable(getattr(task, name, None)) for name in ("reset", "step", "turn_truth")) \
        and hasattr(task, "turn_stop") and hasattr(task, "max_turns")


def turn_seed(seed: int, turn: int) -> int:
    """The engine seed of turn `turn`: distinct per turn, deterministic in `seed`."""
    return (int(seed) * 1_000_003 + 7_919 * (turn + 1)) % (2**63 - 1)


def env_step(task: MultiTurnTask, state: Any, action_text: str) -> tuple[str | None, float, Any, float, int]:
    """(observation or None, turn reward, next state, turn truth, env errors 0/1) of one action.

    A `step` that raises, or a non-finite reward or truth, ends the episode with reward and truth 0
    and one env error; the state is then left as it was."""
    try:
        observation, reward, after = task.step(state, action_text)
        truth = float(task.turn_truth(after))
        reward = float(reward)
        if not (math.isfinite(reward) and math.isfinite(truth)):
            raise ValueError(f"non-finite turn reward {reward} or truth {truth}")
    except Exception:  # noqa: BLE001 - an environment bug ends one episode, not the run
        return None, 0.0, state, 0.0, 1
    return observation, reward, after, truth, 0


@dataclass
class _Trajectory:
    prompt_ids: list[int]
    state: Any
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    truth: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    finish: str = "length"
    end: str = "max_turns"
    env_errors: int = 0
    live: bool = True
    weight_version: int = 0  # the engine's weight version of the first action (set in act)

    def room(self, extra: int, budget: int | None, new_tokens: int) -> bool:
        """Whether one more action of `new_tokens` fits after `extra` more tokens."""
        return budget is None or len(self.prompt_ids) + len(self.tokens) + extra + new_tokens <= budget

    def act(self, task: MultiTurnTask, action: Completion) -> str | None:
        """Append the action and ask the environment; returns the observation (None: episode over)."""
        start = len(self.tokens)
        if not self.spans:
            self.weight_version = action.weight_version
        self.keys.append(tuple(self.observations))
        self.tokens += list(action.token_ids)
        self.logprobs += list(action.logprobs)
        self.trainable += list(action.trainable)
        self.spans.append((start, len(self.tokens)))
        self.parts.append(action.text)
        self.texts.append(action.text)
        observation, reward, state, truth, error = env_step(task, self.state, action.text)
        self.state = state
        self.env_errors += error
        self.rewards.append(reward)
        self.truth.append(truth)
        if observation is None:
            self.live, self.finish, self.end = False, action.finish_reason, "env"
        return observation

    def observe(self, text: str, ids: list[int]) -> None:
        self.tokens += ids
        self.logprobs += [0.0] * len(ids)
        self.trainable += [False] * len(ids)
        self.parts.append(text)
        self.observations.append(text.strip())

    def cut(self, why: str) -> None:
        self.live, self.finish, self.end = False, "length", why

    def completion(self) -> Completion:
        meta = {"turn_spans": self.spans, "turn_rewards": self.rewards, "turn_keys": self.keys,
                "turn_truth": self.truth, "turn_texts": self.texts, "turns": len(self.spans),
                "end": self.end, "env_errors": self.env_errors}
        return Completion(prompt_ids=list(self.prompt_ids), token_ids=self.tokens, logprobs=self.logprobs,
                          trainable=self.trainable, finish_reason=self.finish, text="".join(self.parts),
                          meta=meta, weight_version=self.weight_version)


def generate_multiturn(
    engine: RolloutEngine,
    tokenizer,
    task: MultiTurnTask,
    examples: Sequence[Example],
    prompts_ids: Sequence[Sequence[int]],
    n: int,
    sampling: SamplingParams,
    seed: int,
    max_turns: int | None = None,
    *,
    max_context_tokens: int | None = None,
) -> list[list[Completion]]:
    """`n` multi-turn trajectories per example: result[p][j] is trajectory j of prompt p.

    prompts_ids [P][L_p] are the encoded prompts of `examples` (as `encode_prompts` makes them).
    max_turns: at most this many policy actions (None: the task's own; never more than the task's,
    whose verifier rejects longer transcripts). max_context_tokens: the model's context length
    (None: unbounded). `sampling.max_new_tokens` is the budget of ONE action.
    """
    if len(examples) != len(prompts_ids):
        raise ValueError(f"generate_multiturn: {len(examples)} examples but {len(prompts_ids)} prompts")
    if n < 1 or sampling.max_new_tokens < 1:
        raise ValueError(f"generate_multiturn: need n >= 1 and max_new_tokens >= 1, got n={n}, "
                         f"max_new_tokens={sampling.max_new_tokens}")
    turns = task.max_turns if max_turns is None else min(int(max_turns), task.max_turns)
    stops = tuple(dict.fromkeys(tuple(sampling.stop) + tuple(task.turn_stop)))
    per_turn = dataclasses.replace(sampling, stop=stops)
    budget, new = max_context_tokens, sampling.max_new_tokens
    trajectories = [_Trajectory(list(prompt), task.reset(example))
                    for example, prompt in zip(examples, prompts_ids) for _ in range(n)]
    for t in trajectories:
        if not t.room(0, budget, new):
            t.cut("context")  # the prompt alone leaves no room for an action
    for turn in range(turns):
        live = [t for t in trajectories if t.live]
        if not live:
            break
        if turn == 0:  # every live trajectory is at its prompt: prefill each prompt once, n samples
            groups = [p for p in range(len(examples)) if trajectories[p * n].live]
            out = engine.generate([prompts_ids[p] for p in groups], n, per_turn, seed=turn_seed(seed, 0))
            actions = [c for group in out for c in group]
            live = [trajectories[p * n + j] for p in groups for j in range(n)]
        else:
            out = engine.generate([t.prompt_ids + t.tokens for t in live], 1, per_turn, seed=turn_seed(seed, turn))
            actions = [group[0] for group in out]
        for t, action in zip(live, actions):
            observation = t.act(task, action)
            if observation is None:
                continue
            if turn == turns - 1:
                t.cut("max_turns")
                continue
            ids = list(tokenizer(observation, add_special_tokens=False)["input_ids"])
            if not t.room(len(ids), budget, new):
                t.cut("context")
                continue
            t.observe(observation, ids)
    return [[trajectories[p * n + j].completion() for j in range(n)] for p in range(len(examples))]


# -- from trajectories to the credit inputs ----------------------------------------------------------


def turn_step_ids(completions: Sequence[Completion], batch) -> torch.Tensor:
    """step_ids [B, T] long: the turn index k of every policy token, -1 elsewhere.

    Row b's completion starts at position len(prompt_ids) of `batch` (built by `build_batch` from
    the same completions in the same order), so action k's token at offset o sits at
    len(prompt_ids) + o. Positions off `batch.loss_mask` (prompt, observations, padding, tokens with
    a non-finite sampler logprob) are -1. Completions without turn spans (single-turn) give all -1.
    """
    B, T = batch.loss_mask.shape
    if len(completions) != B:
        raise ValueError(f"turn_step_ids: {len(completions)} completions for a batch of {B} rows")
    step_ids = torch.full((B, T), -1, dtype=torch.long)
    for row, c in enumerate(completions):
        offset = len(c.prompt_ids)
        for k, (start, end) in enumerate(c.meta.get("turn_spans", [])):
            step_ids[row, offset + start : offset + end] = k
    return torch.where(batch.loss_mask, step_ids, torch.full_like(step_ids, -1))


def _nan_padded(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    K = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), K), math.nan, dtype=torch.float32)
    for b, values in enumerate(rows):
        if len(values):
            out[b, : len(values)] = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return out


def turn_values(completions: Sequence[Completion], key: str) -> torch.Tensor:
    """[B, K] float32 of the per-turn list `meta[key]`, K = most turns of any row, NaN past a row's
    last turn (K = 0 when no row has a turn)."""
    return _nan_padded([c.meta.get(key, []) for c in completions])


def turn_step_rewards(completions: Sequence[Completion]) -> torch.Tensor:
    """step_rewards [B, K]: the environment's reward of each turn, NaN-padded (see `turn_values`)."""
    return turn_values(completions, "turn_rewards")


def turn_step_truth(completions: Sequence[Completion]) -> torch.Tensor:
    """[B, K]: the task's true per-turn values (`turn_truth`), NaN-padded."""
    return turn_values(completions, "turn_truth")


def turn_step_keys(completions: Sequence[Completion]) -> list[list[Hashable]]:
    """step_keys: step_keys[b][k] is the observation history before turn k of row b."""
    return [list(c.meta.get("turn_keys", [])) for c in completions]


def turn_judge_rewards(completions: Sequence[Completion], judge, prompts: Sequence[str]) -> torch.Tensor:
    """step_rewards [B, K] from a `StepJudge` (e.g. `SyntheticJudge`) scoring each row's actions
    (`turn_texts`) against the task's `turn_truth`; prompts[b] is row b's prompt text. NaN-padded."""
    if len(prompts) != len(completions):
        raise ValueError(f"turn_judge_rewards: {len(completions)} completions but {len(prompts)} prompts")
    return _nan_padded([judge.score(prompt, c.meta.get("turn_texts", []), c.meta.get("turn_truth", []))
                        for c, prompt in zip(completions, prompts)])
