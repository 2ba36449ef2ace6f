"""Integer arithmetic answered in tags: "What is 23+45?" -> "<answer>68</answer>".

Difficulty levels (graded, so curricula and held-out evaluations can pick a level):

| level | problems                              | distinct problems |
|-------|---------------------------------------|-------------------|
| 1     | a+b, a,b in 0..9                      | 100               |
| 2     | a+b, a,b in 10..99 (the default)      | 8,100             |
| 3     | a+b or a-b, a,b in 10..99             | 16,200            |
| 4     | a+b or a-b, a,b in 100..999           | 1.6 million       |
| 5     | a*b, a in 10..99, b in 2..9           | 720               |

Reward: 1.0 when the completion is exactly one answer tag holding the right integer, else 0.0
(text after the closing tag is not accepted: small models learn to append chatter under RL).

`think = true` lets the model reason first: one optional `<think>...</think>` block may come before the
answer tag (rewards/answer_tags.py::answer_after_thought), and the default system prompt says so. The
target task of a reasoning warm-up (configs/pipelines/warmup_before_train.toml) uses it, because the
warm-up teaches the model to think before it answers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from credo.errors import CredoError
from credo.rewards.answer_tags import extract_answer, parse_int, tag_answer, tag_format
from credo.tasks.base import Example, Score, draw_examples

_PLAIN_PROMPT = "Reply only with the answer as <answer>N</answer>."
_THINK_PROMPT = "Think step by step inside <think>...</think>, then reply with the answer as <answer>N</answer>."
_EQUATION = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)")

_LEVELS = {
    1: (("+",), 0, 9, 0, 9),
    2: (("+",), 10, 99, 10, 99),
    3: (("+", "-"), 10, 99, 10, 99),
    4: (("+", "-"), 100, 999, 100, 999),
    5: (("*",), 10, 99, 2, 9),
}


def _evaluate(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@dataclass
class ArithmeticTask:
    difficulty: int = 2
    system_prompt: str | None = _PLAIN_PROMPT
    name: str = "arith"
    think: bool = False

    def __post_init__(self):
        if self.difficulty not in _LEVELS:
            raise CredoError(
                f"arith: unknown difficulty {self.difficulty}; valid levels: {sorted(_LEVELS)}"
            )
        if not isinstance(self.think, bool):
            raise CredoError(f"arith: think must be true or false, got {self.think!r}")
        if self.think and self.system_prompt == _PLAIN_PROMPT:
            self.system_prompt = _THINK_PROMPT

    def _draw(self, rng: random.Random) -> tuple[int, str, int]:
        ops, lo_a, hi_a, lo_b, hi_b = _LEVELS[self.difficulty]
        return rng.randint(lo_a, hi_a), rng.choice(ops), rng.randint(lo_b, hi_b)

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        def make(problem: tuple[int, str, int]) -> Example:
            a, op, b = problem
            answer = str(_evaluate(a, op, b))
            return Example(f"What is {a}{op}{b}?", answer, f"<answer>{answer}</answer>", {"level": self.difficulty})

        rng = random.Random(f"{self.name}:{self.difficulty}:{split}:{seed}")
        return draw_examples(f"arith difficulty {self.difficulty}", split, n, rng, self._draw,
                             lambda p: f"{p[0]}{p[1]}{p[2]}", make)

    def score(self, completion: str, example: Example) -> Score:
        formatted = tag_format(completion, thought=self.think)
        value = parse_int(tag_answer(completion, thought=self.think))
        correct = formatted and value is not None and str(value) == example.answer
        return Score(reward=1.0 if correct else 0.0, correct=correct, formatted=formatted)

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The integer in the answer tag, written canonically ("+068" -> "68"), for majority voting;
        a tag holding no integer votes for its raw text; no vote without the strict format."""
        if not tag_format(completion, thought=self.think):
            return None
        raw = tag_answer(completion, thought=self.think)
        value = parse_int(raw)
        return raw if value is None else str(value)

    def step_truth(self, example: Example, steps: list[str]) -> list[float]:
        """Exact per-step scores, checked by a calculator (tool-verified step labels): a step with an
        answer tag scores +1 if the answer is right, else -1; a step with an equation "a op b = c"
        scores +1 if it holds, else -1; any other step 0. Never raises on model output."""
        out = []
        for step in steps:
            if "<answer>" in step:
                value = parse_int(extract_answer(step))
                out.append(1.0 if value is not None and str(value) == example.answer else -1.0)
            elif (m := _EQUATION.search(step)) is not None:
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                out.append(1.0 if _evaluate(a, op, b) == c else -1.0)
            else:
                out.append(0.0)
        return out
