"""Countdown: combine the given numbers with + - * / and parentheses to reach a target.

The arithmetic game used by TinyZero and by "Cognitive Behaviors that Enable Self-Improving
Reasoners, or, Four Habits of Highly Effective STaRs" (Gandhi et al., arXiv 2503.01307):

    prompt:  Using the numbers [3, 5, 2], make 16. Use + - * / and each number at most once.
    answer:  <answer>(3+5)*2</answer>

Rule: each given number may be used AT MOST once (the TinyZero rule); a number that appears twice
in the list may be used twice. Intermediate results may be fractions (division is exact, with
`fractions.Fraction`); unary minus is allowed. The tag must hold only the expression (no "= 16").

Difficulty levels (every generated problem is solvable: the target is the value of a random
expression over all the numbers, built with integer intermediate results, and that expression is
the demonstration):

| level | numbers      | operations in the solution | target      |
|-------|--------------|----------------------------|-------------|
| 1     | 3 in 1..20   | 2                          | 1..100      |
| 2     | 4 in 1..20   | 3                          | 1..200      |
| 3     | 4 in 1..100  | 3                          | 100..999    |

Targets equal to one of the given numbers are never generated (they would be trivial).

The verifier never calls `eval`: the expression must consist only of digits, spaces, + - * / and
parentheses, is at most 200 characters long, is parsed with `ast.parse(mode="eval")`, and only
BinOp(+ - * /), UnaryOp(-) and int constants are walked (depth-limited). The multiset of constants
must be contained in the given numbers; then the value is computed exactly. Division by zero or
anything else unusual makes the completion wrong, never an exception.

Reward: 1.0 when the completion is exactly one answer tag (`only_answer`) holding a valid
expression equal to the target, else 0.0. `Example.answer` is the target; the numbers are in
`Example.meta["numbers"]`.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from credo.errors import CredoError
from credo.rewards.answer_tags import extract_answer, only_answer
from credo.tasks.base import Example, Score, draw_examples

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 32
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() \t]+")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)

# level -> (count of numbers, smallest number, largest number, smallest target, largest target)
_LEVELS = {
    1: (3, 1, 20, 1, 100),
    2: (4, 1, 20, 1, 200),
    3: (4, 1, 100, 100, 999),
}

# Operator precedence for rendering with the fewest parentheses; atoms bind tightest.
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, None: 3}


def _constants(node: ast.AST, depth: int = 0) -> list[int] | None:
    """The int constants of an allowed expression tree, or None if anything else is in it."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(node, ast.Constant):
        return [node.value] if type(node.value) is int else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _constants(node.operand, depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        left = _constants(node.left, depth + 1)
        right = _constants(node.right, depth + 1)
        return None if left is None or right is None else left + right
    return None


def _value(node: ast.AST) -> Fraction | None:
    """The exact value of a tree already checked by `_constants`; None on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        inner = _value(node.operand)
        return None if inner is None else -inner
    left, right = _value(node.left), _value(node.right)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    return None if right == 0 else left / right


def evaluate(expression: object, numbers: list[int] | tuple[int, ...]) -> Fraction | None:
    """The exact value of `expression` if it is a valid Countdown answer over `numbers`, else None.

    >>> evaluate("(3+5)*2", [3, 5, 2])
    Fraction(16, 1)
    >>> evaluate("7/(2-2)", [7, 2, 2]) is None  # division by zero
    True
    >>> evaluate("3*3", [3, 5]) is None  # 3 used twice
    True
    >>> evaluate("__import__('os')", [1]) is None
    True
    """
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    if not _ALLOWED_CHARS.fullmatch(expression):
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    used = _constants(tree.body)
    if used is None or Counter(used) - Counter(numbers):
        return None
    return _value(tree.body)


def _combine(rng: random.Random, a: tuple, b: tuple) -> tuple | None:
    """Join two (value, text, top operator) items with a random valid operator.

    Differences are taken larger-minus-smaller and must be positive; divisions must be exact
    with a divisor above 1. Returns None when no operator is valid (never happens for + and *).
    """
    if a[0] < b[0]:
        a, b = b, a
    choices = ["+", "*"]
    if a[0] > b[0]:
        choices.append("-")
    if b[0] > 1 and a[0] % b[0] == 0:
        choices.append("/")
    op = rng.choice(choices)
    value = {"+": a[0] + b[0], "-": a[0] - b[0], "*": a[0] * b[0], "/": a[0] // max(b[0], 1)}[op]
    return value, f"{_wrap(a, op, False)}{op}{_wrap(b, op, True)}", op


def _wrap(item: tuple, op: str, right: bool) -> str:
    """Parenthesize an operand when precedence (or the right side of - and /) requires it."""
    child, parent = _PRECEDENCE[item[2]], _PRECEDENCE[op]
    needs = child < parent or (right and child == parent and op in "-/")
    return f"({item[1]})" if needs else item[1]


def _random_solution(rng: random.Random, numbers: list[int]) -> tuple[int, str]:
    """A random expression using every number once, and its (positive integer) value."""
    pool = [(n, str(n), None) for n in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        joined = _combine(rng, pool[i], pool[j])
        pool = [item for k, item in enumerate(pool) if k not in (i, j)] + [joined]
    return pool[0][0], pool[0][1]


def problem_key(numbers: list[int] | tuple[int, ...], target: int) -> str:
    """The canonical key of a problem: the sorted numbers and the target."""
    return f"{sorted(numbers)}->{target}"


@dataclass
class CountdownTask:
    difficulty: int = 1
    system_prompt: str | None = "Reply only with the expression as <answer>...</answer>."
    name: str = "countdown"

    def __post_init__(self):
        if self.difficulty not in _LEVELS:
            raise CredoError(
                f"countdown: unknown difficulty {self.difficulty}; valid levels: {sorted(_LEVELS)}"
            )

    def _draw(self, rng: random.Random) -> tuple[list[int], int, str] | None:
        count, lo, hi, lo_target, hi_target = _LEVELS[self.difficulty]
        numbers = [rng.randint(lo, hi) for _ in range(count)]
        target, solution = _random_solution(rng, numbers)
        if not lo_target <= target <= hi_target or target in numbers:
            return None
        return numbers, target, solution

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{self.difficulty}:{split}:{seed}")
        return draw_examples(f"countdown difficulty {self.difficulty}", split, n, rng, self._draw,
                             lambda p: problem_key(p[0], p[1]), lambda p: self._example(*p))

    def _example(self, numbers: list[int], target: int, solution: str) -> Example:
        prompt = (
            f"Using the numbers {numbers}, make {target}. "
            "Use + - * / and each number at most once."
        )
        return Example(
            prompt=prompt,
            answer=str(target),
            demonstration=f"<answer>{solution}</answer>",
            meta={"level": self.difficulty, "numbers": tuple(numbers), "target": target},
        )

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The exact value of a valid expression (two expressions reaching the same number give the
        same answer), else the expression's raw text, for majority voting; no vote without the strict
        format."""
        if not only_answer(completion):
            return None
        raw = extract_answer(completion)
        value = evaluate(raw, example.meta.get("numbers", ()))
        return raw if value is None else str(value)

    def score(self, completion: str, example: Example) -> Score:
        formatted = only_answer(completion)
        correct = False
        if formatted:
            numbers = example.meta.get("numbers", ())
            value = evaluate(extract_answer(completion), numbers)
            correct = value is not None and str(value) == example.answer
        return Score(reward=1.0 if correct else 0.0, correct=correct, formatted=formatted)
