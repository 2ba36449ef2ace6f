"""The task protocol: data, prompt rendering with the model's chat template, and a verifier.

A task yields `Example`s for a split ("train" or "test"); each has the user message, the reference
answer and a demonstration completion used by the supervised warm-up. `Task.score` turns a completion
into a `Score` and must never raise on model output (empty, huge, malformed, binary junk):
anything it cannot parse is simply wrong.

Held-out splits are disjoint by construction: generators assign every problem to a split with a
stable hash of its canonical key (`split_of`), so "test" problems never appear in "train".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt: the user message (no chat markup).
    answer: the reference answer as a string, what the verifier compares against.
    demonstration: an ideal assistant completion (no chat markup) for supervised warm-up.
    meta: free-form details (difficulty level, source row, ...).
    """

    prompt: str
    answer: str
    demonstration: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """The verifier's verdict on one completion.

    reward: the scalar used for training.
    correct: the answer is right (what accuracy counts).
    formatted: the completion has the required format (e.g. exactly one answer tag).
    outcome: what happened when it was checked, for verifiers that execute code (the sandbox
    outcome of `rewards/code.py::CODE_OUTCOMES`, counted per step in the metrics); None otherwise.
    meta: details a reward may weight, or None (the code task with tiers: {"tiers": {tier: pass
    fraction}}, read by train/tarot.py).
    """

    reward: float
    correct: bool
    formatted: bool
    outcome: str | None = None
    meta: dict[str, Any] | None = None


@runtime_checkable
class Task(Protocol):
    name: str
    system_prompt: str | None

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """`n` examples of `split`, deterministic in `seed`. Raises CredoError if fewer exist."""
        ...

    def score(self, completion: str, example: Example) -> Score:
        """Verify a completion. Never raises on model output."""
        ...

    # Optional: `step_truth(example, steps: list[str]) -> list[float]`, the exact score of each step
    # of a completion (+1 right, -1 wrong, 0 neutral), for step-level credit: a synthetic judge / PRM
    # adds noise and bias to it (judges/synthetic.py). Tasks without it get an outcome-only judge.

    # Optional: `final_answer(completion, example) -> str | None`, the answer a completion commits to,
    # in a canonical form (equal answers give equal strings), or None when it commits to none; what
    # majority voting (maj@k) counts. Default (`final_answer` below): the first answer tag's content.


def final_answer(task: Task, completion: str, example: Example) -> str | None:
    """The final answer of a completion, for majority voting (maj@k, `train/sampled_eval.py`).

    The task's own `final_answer(completion, example)` when it has one; otherwise the stripped content
    of the answer tag of a completion that is exactly one answer tag (the strict format every built-in
    verifier requires: a completion the verifier rejects for its format casts no vote). An empty
    answer is no answer. Never raises on model output: a task method that raises, or returns
    something other than a string, gives None.

    >>> class Plain: pass
    >>> final_answer(Plain(), " <answer> 42 </answer>", Example("", "42", ""))
    '42'
    >>> final_answer(Plain(), "<answer>42</answer> and more", Example("", "42", "")) is None
    True
    """
    own = getattr(task, "final_answer", None)
    if own is None:
        from credo.rewards.answer_tags import extract_answer, only_answer

        answer = extract_answer(completion) if only_answer(completion) else None
    else:
        try:
            answer = own(completion, example)
        except Exception:  # noqa: BLE001 - model output never crashes an evaluation; no answer, no vote
            return None
    return answer if isinstance(answer, str) and answer else None


def stable_hash(key: str) -> int:
    """A hash that is the same in every process and Python version (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def split_of(key: str, test_fraction: float = 0.2) -> str:
    """Assign a problem, by its canonical key, to "train" or "test"."""
    return "test" if (stable_hash(key) % 10_000) < test_fraction * 10_000 else "train"


def render_prompt(tokenizer, task: Task, example: Example) -> str:
    """The chat-formatted prompt string ending with the assistant header.

    The task's system prompt replaces the model's default one (SmolLM2's default is 30 tokens of a
    50-token prompt; short prompts make every step cheaper). A task's `response_prefix` (e.g. AdaCtrl's
    forced budget tag "[Easy]", the JSONL task's `budget_tag`) pre-fills the assistant turn.
    """
    prefix = getattr(task, "response_prefix", None) or ""
    messages = []
    if task.system_prompt is not None:
        messages.append({"role": "system", "content": task.system_prompt})
    messages.append({"role": "user", "content": example.prompt})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
    # A tokenizer without a chat template: plain text, still deterministic.
    system = f"{task.system_prompt}\n\n" if task.system_prompt else ""
    return f"{system}{example.prompt}\n{prefix}"


def check_split(split: str) -> None:
    from credo.errors import CredoError

    if split not in SPLITS:
        raise CredoError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def take(examples: Sequence[Example], n: int, where: str) -> list[Example]:
    from credo.errors import CredoError

    if len(examples) < n:
        raise CredoError(f"{where}: asked for {n} examples but only {len(examples)} exist")
    return list(examples[:n])


def draw_examples(
    task_label: str,
    split: str,
    n: int,
    rng,
    draw: Callable[[Any], Any],
    key_of: Callable[[Any], str],
    make: Callable[[Any], Example],
    noun: str = "problems",
) -> list[Example]:
    """The sampling loop shared by the generators: draw problems until `n` of `split` exist.

    draw(rng) -> a problem or None (rejected); key_of(problem) -> its canonical key, which decides
    the split (`split_of`); make(problem) -> the Example. Test problems are distinct; train
    problems may repeat. CredoError naming `task_label` if fewer than `n` are found.
    """
    check_split(split)
    out: list[Example] = []
    seen: set[str] = set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        problem = draw(rng)
        if problem is None:
            continue
        key = key_of(problem)
        if split_of(key) != split or (split == "test" and key in seen):
            continue
        seen.add(key)
        out.append(make(problem))
    if len(out) < n:
        from credo.errors import CredoError

        raise CredoError(
            f"{task_label}: only {len(out)} distinct {split} {noun} were found, {n} were asked "
            f"for; lower the count or change the difficulty"
        )
    return out
