"""Step-labelled data for training a process reward model: calculator labels and Monte Carlo labels.

A row is `StepRow(prompt, steps, labels)`: labels[k] in {+1, -1} (step k correct / wrong) or 0 (no
verdict: excluded from the loss and from AUROC).

- `arith_chains`: worked solutions of `arith` problems written by the project (offline): a direct
  answer, or a decomposition into place-value steps ("40+50=90", "3+5=8", "90+8=98", then the answer
  tag). Half of them carry one arithmetic slip (the result of one step off by 1, 2, 9, 10 or 11) that
  later steps carry forward, as a real solver's slip would. Labels come from the task's calculator
  (`ArithmeticTask.step_truth`): an equation is right when it holds, the answer when it is the true
  answer. So a carried-forward slip gives a locally right equation (+1) and a wrong answer (-1).
- `mc_step_labels`: Math-Shepherd's automatic labels (Wang et al., "Math-Shepherd: Verify and Reinforce
  LLMs Step-by-step without Human Annotations", arXiv 2312.08935) for ANY task with a verifier: for each
  step prefix of the policy's own completion, sample `n` continuations with the rollout engine; hard
  estimation (the paper's default) labels the step +1 if at least one continuation reaches a correct
  answer, else -1; soft estimation uses the fraction correct, mapped to [-1, 1].
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from credo.errors import CredoError
from credo.rollout.base import RolloutEngine, SamplingParams
from credo.tasks.base import Example, Task

_PROBLEM = re.compile(r"What is (-?\d+)([+\-*])(-?\d+)\?")
_SLIPS = (1, 2, 9, 10, 11)


@dataclass
class StepRow:
    prompt: str
    steps: list[str]
    labels: list[float]


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _decompose(a: int, op: str, b: int) -> list[tuple[int, str, int]]:
    """Place-value steps (x, op, y) whose results feed the next step (None = the previous result)."""
    if op == "+":
        return [(a - a % 10, "+", b - b % 10), (a % 10, "+", b % 10), (None, "+", None)]
    if op == "-":
        return [(a, "-", b - b % 10), (None, "-", b % 10)]
    return [(a - a % 10, "*", b), (a % 10, "*", b), (None, "+", None)]


def arith_chain(a: int, op: str, b: int, rng: random.Random, *, slip: float = 0.5,
                direct: float = 0.3) -> list[str]:
    """One worked solution (see the module docstring) as a list of step texts."""
    if rng.random() < direct:
        value = _apply(a, op, b)
        if rng.random() < slip:
            value += rng.choice(_SLIPS) * rng.choice((-1, 1))
        return [f"<answer>{value}</answer>"]
    plan = _decompose(a, op, b)
    slip_at = rng.randrange(len(plan) + 1) if rng.random() < slip else -1
    results: list[int] = []
    steps = []
    for k, (x, o, y) in enumerate(plan):
        if op in "+*" and k == 2:
            x, y = results[0], results[1]
        elif op == "-" and k == 1:
            x = results[0]
        c = _apply(x, o, y)
        if k == slip_at:
            c += rng.choice(_SLIPS) * rng.choice((-1, 1))
        results.append(c)
        steps.append(f"{x}{o}{y}={c}")
    answer = results[-1]
    if slip_at == len(plan):
        answer += rng.choice(_SLIPS) * rng.choice((-1, 1))
    steps.append(f"<answer>{answer}</answer>")
    return steps


def arith_chains(task, examples: Sequence[Example], seed: int, *, per_example: int = 1,
                 slip: float = 0.5, direct: float = 0.3) -> list[StepRow]:
    """Calculator-labelled worked solutions of `arith` examples (labels from `task.step_truth`)."""
    if not hasattr(task, "step_truth"):
        raise CredoError(f"task {getattr(task, 'name', task)!r} has no calculator step labels "
                         f"(step_truth); use Monte Carlo labels (--labels mc)")
    rng = random.Random(f"arith-chains:{seed}")
    rows = []
    for ex in examples:
        m = _PROBLEM.search(ex.prompt)
        if m is None:
            raise CredoError(f"arith chains: cannot parse the problem in prompt {ex.prompt!r}")
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        for _ in range(per_example):
            steps = arith_chain(a, op, b, rng, slip=slip, direct=direct)
            rows.append(StepRow(ex.prompt, steps, [float(x) for x in task.step_truth(ex, steps)]))
    return rows


def split_steps(text: str) -> list[str]:
    """A completion's steps: its non-empty lines (the trainer's single-turn step rule)."""
    return [line for line in text.split("\n") if line.strip()]


def mc_step_labels(engine: RolloutEngine, tokenizer, task: Task, examples: Sequence[Example],
                   completions: Sequence[str], prompt_ids: Sequence[Sequence[int]], *, n: int = 4,
                   sampling: SamplingParams, seed: int = 0, soft: bool = False) -> tuple[list[StepRow], int]:
    """Math-Shepherd labels of every step of each completion; returns (rows, continuations sampled).

    prompt_ids[i]: the chat-formatted prompt of examples[i] as the engine takes it. The prefix for step
    k is prompt + the completion's first k + 1 steps (joined by newlines, a newline after); the last
    step's label is the completion's own verdict (nothing left to continue)."""
    if n < 1:
        raise CredoError(f"Monte Carlo step labels need n >= 1 continuations (got {n})")
    rows, sampled = [], 0
    for i, (ex, text) in enumerate(zip(examples, completions)):
        steps = split_steps(text)
        labels = []
        for k in range(len(steps)):
            head = "\n".join(steps[: k + 1])
            if k == len(steps) - 1:
                outcomes = [_correct(task, text, ex)]
            else:
                head += "\n"
                prefix = list(prompt_ids[i]) + tokenizer.encode(head, add_special_tokens=False)
                conts = engine.generate([prefix], n, sampling, seed=seed * 1_000_003 + i * 1_009 + k)[0]
                sampled += len(conts)
                outcomes = [_correct(task, head + c.text, ex) for c in conts]
            frac = sum(outcomes) / len(outcomes)
            labels.append(2.0 * frac - 1.0 if soft else (1.0 if frac > 0 else -1.0))
        rows.append(StepRow(ex.prompt, steps, labels))
    return rows, sampled


def _correct(task: Task, text: str, example: Example) -> bool:
    try:
        return bool(task.score(text, example).correct)
    except Exception:  # a verifier must not crash labelling; count it as not correct
        return False
