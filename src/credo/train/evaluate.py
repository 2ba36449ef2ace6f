"""Held-out evaluation: greedy decoding on a task's test split, scored by its verifier."""

from __future__ import annotations

import dataclasses
from typing import Sequence

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


def safe_score(task: Task, text: str, example: Example, error_reward: float = 0.0) -> tuple[Score, bool]:
    """The verifier's score, or (error_reward, wrong) if it raises: model output never stops a run.

    Returns (score, raised).
    """
    try:
        score = task.score(text, example)
        return Score(float(score.reward), bool(score.correct), bool(score.formatted)), False
    except Exception:  # noqa: BLE001 - a verifier bug must not kill a long run; it is counted
        return Score(error_reward, False, False), True


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    sampling: SamplingParams,
    *,
    batch_size: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy accuracy, format rate and mean length on `examples`."""
    greedy = dataclasses.replace(sampling, temperature=0.0)
    correct = formatted = tokens = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        groups = engine.generate(encode_prompts(tokenizer, task, chunk), 1, greedy, seed)
        for ex, (completion,) in zip(chunk, groups):
            score, _ = safe_score(task, completion.text, ex)
            correct += score.correct
            formatted += score.formatted
            tokens += len(completion.token_ids)
    n = max(1, len(examples))
    return {
        "accuracy": correct / n,
        "format_rate": formatted / n,
        "response_length": tokens / n,
        "n": len(examples),
    }
