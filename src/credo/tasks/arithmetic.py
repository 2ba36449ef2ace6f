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
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from credo.errors import CredoError
from credo.rewards.answer_tags import extract_answer, only_answer, parse_int
from credo.tasks.base import Example, Score, draw_examples

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
    system_prompt: str | None = "Reply only with the answer as <answer>N</answer>."
    name: str = "arith"

    def __post_init__(self):
        if self.difficulty not in _LEVELS:
            raise CredoError(
                f"arith: unknown difficulty {self.difficulty}; valid levels: {sorted(_LEVELS)}"
            )

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
        formatted = only_answer(completion)
        value = parse_int(extract_answer(completion))
        correct = formatted and value is not None and str(value) == example.answer
        return Score(reward=1.0 if correct else 0.0, correct=correct, formatted=formatted)

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The integer in the answer tag, written canonically ("+068" -> "68"), for majority voting;
        a tag holding no integer votes for its raw text; no vote without the strict format."""
        if not only_answer(completion):
            return None
        raw = extract_answer(completion)
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
