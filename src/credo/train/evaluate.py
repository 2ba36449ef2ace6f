"""Held-out evaluation: greedy decoding on a task's test split, scored by its verifier."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Sequence

from credo.rewards.code import outcome_counts
from credo.rollout.base import RolloutEngine, SamplingParams
from credo.tasks.base import Example, Score, Task, render_prompt


def encode_prompts(tokenizer, task: Task, examples: Sequence[Example]) -> list[list[int]]:
    # The chat template already writes every special token; don't let the tokenizer add a BOS.
    return [
        tokenizer(render_prompt(tokenizer, task, ex), add_special_tokens=False)["input_ids"]
        for ex in examples
    ]


def pad_token_id(tokenizer) -> int:
    """The id used for right padding (only ever masked out; it may equal EOS)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def call_with_timeout(fn, timeout_s: float):
    """fn() on a daemon thread; TimeoutError if it has not returned after timeout_s seconds.

    A Python thread cannot be killed: a hung call keeps its (daemon) thread, which never blocks the
    process from exiting. Code that may truly hang belongs in the sandbox (`credo.rewards.sandbox`),
    which kills whole process trees.
    """
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="credo-score")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"verifier did not return within {timeout_s} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def safe_score(
    task: Task, text: str, example: Example, error_reward: float = 0.0, timeout_s: float | None = 30.0
) -> tuple[Score, bool]:
    """The verifier's score, or (error_reward, wrong) if it fails: model output never stops a run.

    A verifier fails when it raises, runs longer than `timeout_s` seconds, or returns a reward that
    is not a finite real number (a bool, a string, None, NaN or inf would otherwise poison the whole
    group's advantages). Returns (score, failed); failures are counted in `verifier_errors`.
    """
    try:
        if timeout_s is None:
            score = task.score(text, example)
        else:
            score = call_with_timeout(lambda: task.score(text, example), timeout_s)
        reward = score.reward
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            return Score(error_reward, False, False), True
        outcome, meta = getattr(score, "outcome", None), getattr(score, "meta", None)
        return Score(float(reward), bool(score.correct), bool(score.formatted),
                     outcome if isinstance(outcome, str) else None, meta if isinstance(meta, dict) else None), False
    except Exception:  # noqa: BLE001 - a verifier bug must not kill a long run; it is counted
        return Score(error_reward, False, False), True


def too_long(prompts: Sequence[Sequence[int]], max_prompt_tokens: int | None) -> list[int]:
    """Indices of prompts that leave no room for the completion in the model's context."""
    if max_prompt_tokens is None:
        return []
    return [i for i, p in enumerate(prompts) if len(p) > max_prompt_tokens]


def generate_groups(engine: RolloutEngine, tokenizer, task: Task, examples: Sequence[Example],
                    prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int,
                    max_prompt_tokens: int | None = None, sampler: Any = None) -> list[list]:
    """n completions per prompt: one engine call for single-turn tasks (or the group sampler's calls,
    rollout.sampler, rollout/samplers.py); the turn-by-turn driver (rollout/multiturn.py) for tasks with
    an environment (reset / step), whose completions hold the whole transcript with environment tokens
    marked untrainable."""
    from credo.rollout.multiturn import generate_multiturn, is_multiturn

    if not is_multiturn(task):
        if sampler is not None:
            return sampler.generate(engine, tokenizer, prompts, n, sampling, seed)
        return engine.generate(prompts, n, sampling, seed=seed)
    context = None if max_prompt_tokens is None else max_prompt_tokens + sampling.max_new_tokens
    if sampler is not None and getattr(sampler, "multiturn", False):  # e.g. VPR's state groups
        return sampler.generate_multiturn(engine, tokenizer, task, examples, prompts, n, sampling, seed,
                                          max_context_tokens=context)
    return generate_multiturn(engine, tokenizer, task, examples, prompts, n, sampling, seed,
                              max_context_tokens=context)


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    sampling: SamplingParams,
    *,
    batch_size: int = 100,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> dict[str, float]:
    """Greedy accuracy, format rate and mean length on `examples`.

    Prompts longer than `max_prompt_tokens` are not generated for; they count as wrong and in
    `skipped_prompts`, so accuracy keeps the full set as its denominator.
    """
    greedy = dataclasses.replace(sampling, temperature=0.0)
    correct = formatted = tokens = skipped = 0
    scores = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = encode_prompts(tokenizer, task, chunk)
        drop = set(too_long(prompts, max_prompt_tokens))
        skipped += len(drop)
        chunk = [ex for i, ex in enumerate(chunk) if i not in drop]
        groups = generate_groups(engine, tokenizer, task, chunk, [p for i, p in enumerate(prompts) if i not in drop],
                                 1, greedy, seed, max_prompt_tokens)
        for ex, (completion,) in zip(chunk, groups):
            score, _ = safe_score(task, completion.text, ex)
            scores.append(score)
            correct += score.correct
            formatted += score.formatted
            tokens += len(completion.token_ids)
    n = max(1, len(examples))
    return {
        "accuracy": correct / n,
        "format_rate": formatted / n,
        "response_length": tokens / max(1, len(examples) - skipped),
        "n": len(examples),
        "skipped_prompts": skipped,
        **outcome_counts(scores),  # code tasks: sandbox outcomes of the greedy completions
    }
