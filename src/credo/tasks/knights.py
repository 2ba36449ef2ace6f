"""Knights and Knaves: logic puzzles with a unique solution, found by brute force.

The puzzle family of "Logic-RL: Unleashing LLM Reasoning with Rule-Based Reinforcement Learning"
(arXiv 2502.14768) and of "Warm Up Before You Train: Unlocking General Reasoning in
Resource-Constrained Settings" (arXiv 2505.13718), which uses it as the warm-up domain.

An island's inhabitants are knights (always tell the truth) or knaves (always lie). Each of N
inhabitants makes one statement; the model must say who is what:

    prompt:  ... You meet 2 inhabitants: Ann and Bob. Ann says: "Bob is a knave."
             Bob says: "Ann and I are the same kind." ...
    answer:  <answer>Ann: knight, Bob: knave</answer>

Statements are built from these forms (X, Y: other inhabitants; P, Q: any two distinct
inhabitants, the speaker written as "I"):
"X is a knight/knave", "X and Y are both knights/knaves", "X and I are the same kind",
"X and I are different kinds", and "<P is a k> and/or <Q is a k>", "If <P is a k>, then
<Q is a k>", "<P is a k> if and only if <Q is a k>".

Generation draws one random statement per inhabitant, checks all 2^N assignments and keeps the
puzzle only if exactly one assignment is consistent (every knight's statement true, every
knave's false).

Difficulty = N, the number of inhabitants, 2..6 (default 2). The inhabitants are always the first
N of Ann, Bob, Cal, Dee, Eve, Fay, so the canonical key (the rendered puzzle text) identifies the
puzzle's logical structure and renamings cannot leak test puzzles into the train split. At N=2 only
680 distinct puzzles exist, 147 of them in the test split.

The verifier is lenient about case, order, whitespace and separators ("ann is a knight; Bob:
knave" is fine) but every inhabitant must be named exactly once with exactly one of "knight" or
"knave"; any other word (such as "not") or an unknown name makes the answer wrong.
Reward: 1.0 when the completion is exactly one answer tag (`only_answer`) with the right roles.

`reasoning = true` makes the demonstrations reasoning traces: a `<think>` block that solves the puzzle
by case analysis, then the answer tag (`reasoning_trace`), and lets the model's completion carry one
such block before the answer (`answer_after_thought`). This is the warm-up data of "Warm Up Before You
Train" written by a rule-based solver instead of the paper's teacher (QwQ-32B): depth-first, each
inhabitant assumed a knight, then a knave; after each assumption every statement that has just become
decidable is checked against its speaker's role; a contradiction rejects the assumption, and when both
roles of an inhabitant fail the assumption before it is rejected. For example:

    <think>Suppose Ann is a knight. Suppose Bob is a knight. Ann says "Bob is a knave.": false, but a
    knight tells the truth. Contradiction, so Bob is not a knight. Suppose Bob is a knave. Ann says
    "Bob is a knave.": true, and a knight tells the truth. Bob says "Ann and I are the same kind.":
    false, and a knave lies. Every statement fits.</think>
    <answer>Ann: knight, Bob: knave</answer>
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from credo.errors import CredoError
from credo.rewards.answer_tags import tag_answer, tag_format
from credo.tasks.base import Example, Score, draw_examples

NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay")
LEVELS = range(2, len(NAMES) + 1)
_FILLER = {"is", "a", "an", "and", "the"}
_ROLES = {"knight": True, "knave": False}
_PLAIN_PROMPT = "Reply only with the answer as <answer>...</answer>."
_THINK_PROMPT = "Think step by step inside <think>...</think>, then reply with the answer as <answer>...</answer>."
_INTRO = (
    "A very special island is inhabited only by knights and knaves. Knights always tell the "
    "truth, and knaves always lie."
)

# A statement is a tuple: ("is", x, role), ("both", x, y, role), ("same", x), ("diff", x), or
# (connective, (p, role), (q, role)) with connective in and/or/if/iff. People are indices, roles
# are booleans (True = knight).
_CONNECTIVES = ("and", "or", "if", "iff")


def _holds(statement: tuple, speaker: int, roles: tuple[bool, ...]) -> bool:
    """Whether a statement is true under an assignment of roles."""
    form = statement[0]
    if form == "is":
        return roles[statement[1]] == statement[2]
    if form == "both":
        return roles[statement[1]] == statement[3] and roles[statement[2]] == statement[3]
    if form in ("same", "diff"):
        return (roles[statement[1]] == roles[speaker]) == (form == "same")
    p = roles[statement[1][0]] == statement[1][1]
    q = roles[statement[2][0]] == statement[2][1]
    return {"and": p and q, "or": p or q, "if": (not p) or q, "iff": p == q}[form]


def solutions(statements: list[tuple]) -> list[tuple[bool, ...]]:
    """Every role assignment under which each knight's statement is true and each knave's false."""
    n = len(statements)
    return [
        roles
        for roles in itertools.product((True, False), repeat=n)
        if all(_holds(s, i, roles) == roles[i] for i, s in enumerate(statements))
    ]


def _people(statement: tuple, speaker: int) -> set[int]:
    """The inhabitants whose roles decide whether the speaker's statement fits (the speaker included)."""
    form = statement[0]
    if form == "is":
        return {speaker, statement[1]}
    if form == "both":
        return {speaker, statement[1], statement[2]}
    if form in ("same", "diff"):
        return {speaker, statement[1]}
    return {speaker, statement[1][0], statement[2][0]}


def reasoning_trace(statements: list[tuple]) -> str:
    """A case-analysis solution of a puzzle, as a `<think>...</think>` block (module docstring).

    Depth-first over inhabitants in order, knight before knave; after assuming inhabitant k's role,
    each statement whose deciding inhabitants (`_people`) are now all assumed and include k is
    checked. Raises CredoError when no assignment fits (the task only draws puzzles with one)."""
    n = len(statements)
    ready: list[list[int]] = [[] for _ in range(n)]  # statements decidable once inhabitant k is assumed
    for i, statement in enumerate(statements):
        ready[max(_people(statement, i))].append(i)
    lines: list[str] = []

    def kind(role: bool) -> str:
        return "knight" if role else "knave"

    def search(roles: tuple[bool, ...]) -> bool:
        k = len(roles)
        if k == n:
            return True
        for role in (True, False):
            lines.append(f"Suppose {NAMES[k]} is a {kind(role)}.")
            assumed, fits = roles + (role,), True
            for i in ready[k]:
                truth = _holds(statements[i], i, assumed + (False,) * (n - k - 1))
                fits = truth == assumed[i]
                rule = "a knight tells the truth" if assumed[i] else "a knave lies"
                lines.append(f'{NAMES[i]} says "{render_statement(statements[i], i)}": '
                             f'{"true" if truth else "false"}, {"and" if fits else "but"} {rule}.')
                if not fits:
                    lines.append(f"Contradiction, so {NAMES[k]} is not a {kind(role)}.")
                    break
            if fits and search(assumed):
                return True
            if fits:  # the deeper inhabitants had no consistent role under this assumption
                lines.append(f"No role fits {NAMES[k + 1]}, so {NAMES[k]} is not a {kind(role)}.")
        return False

    if not search(()):
        raise CredoError("knights: the puzzle has no consistent assignment")
    lines.append("Every statement fits.")
    return "<think>" + " ".join(lines) + "</think>"


def _random_statement(rng: random.Random, speaker: int, n: int) -> tuple:
    others = [i for i in range(n) if i != speaker]
    forms = ["is", "same", "diff", *_CONNECTIVES] + (["both"] if len(others) >= 2 else [])
    form = rng.choice(forms)
    role = rng.random() < 0.5
    if form == "is":
        return ("is", rng.choice(others), role)
    if form == "both":
        x, y = sorted(rng.sample(others, 2))
        return ("both", x, y, role)
    if form in ("same", "diff"):
        return (form, rng.choice(others))
    p, q = rng.sample(range(n), 2)
    return (form, (p, role), (q, rng.random() < 0.5))


def _clause(person: int, role: bool, speaker: int) -> str:
    kind = "knight" if role else "knave"
    return f"I am a {kind}" if person == speaker else f"{NAMES[person]} is a {kind}"


def render_statement(statement: tuple, speaker: int) -> str:
    """The statement as the speaker says it, e.g. "If Bob is a knight, then I am a knave."."""
    form = statement[0]
    if form == "is":
        text = _clause(statement[1], statement[2], speaker)
    elif form == "both":
        kinds = "knights" if statement[3] else "knaves"
        text = f"{NAMES[statement[1]]} and {NAMES[statement[2]]} are both {kinds}"
    elif form in ("same", "diff"):
        kind = "the same kind" if form == "same" else "different kinds"
        text = f"{NAMES[statement[1]]} and I are {kind}"
    else:
        p, q = _clause(*statement[1], speaker), _clause(*statement[2], speaker)
        template = {"and": "{} and {}", "or": "{} or {}", "if": "if {}, then {}",
                    "iff": "{} if and only if {}"}[form]  # fmt: skip
        text = template.format(p, q)
    return text[0].upper() + text[1:] + "."


def render_puzzle(statements: list[tuple]) -> str:
    names = list(NAMES[: len(statements)])
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    said = " ".join(
        f'{NAMES[i]} says: "{render_statement(s, i)}"' for i, s in enumerate(statements)
    )
    example = ", ".join(f"{name}: ..." for name in names)
    return (
        f"{_INTRO} You meet {len(names)} inhabitants: {listed}. {said} "
        f"Who is a knight and who is a knave? Answer as <answer>{example}</answer> with each "
        "... replaced by knight or knave."
    )


def render_answer(roles: tuple[bool, ...]) -> str:
    return ", ".join(f"{NAMES[i]}: {'knight' if r else 'knave'}" for i, r in enumerate(roles))


def parse_roles(text: object) -> dict[str, bool] | None:
    """Name -> is-knight from an answer such as "Ann: knight, bob is a KNAVE", or None.

    None when a word is neither a name, a role nor a filler word, when a role has no name before
    it, when a name has no role or several, or when a name appears twice.

    >>> parse_roles("Ann: knight, bob is a KNAVE")
    {'ann': True, 'bob': False}
    >>> parse_roles("Ann: not a knight") is None
    True
    """
    if not isinstance(text, str):
        return None
    names = {name.lower() for name in NAMES}
    roles: dict[str, bool] = {}
    current: str | None = None
    for word in re.findall(r"[^\W\d_]+|\d+", text.lower()):
        if word in names:
            if word in roles or current is not None:
                return None
            current = word
        elif word in _ROLES:
            if current is None:
                return None
            roles[current], current = _ROLES[word], None
        elif word not in _FILLER:
            return None
    return roles if current is None and roles else None


@dataclass
class KnightsKnavesTask:
    difficulty: int = 2
    system_prompt: str | None = _PLAIN_PROMPT
    name: str = "knights"
    reasoning: bool = False

    def __post_init__(self):
        if self.difficulty not in LEVELS:
            raise CredoError(
                f"knights: unknown difficulty {self.difficulty}; valid levels (number of "
                f"inhabitants): {list(LEVELS)}"
            )
        if not isinstance(self.reasoning, bool):
            raise CredoError(f"knights: reasoning must be true or false, got {self.reasoning!r}")
        if self.reasoning and self.system_prompt == _PLAIN_PROMPT:
            self.system_prompt = _THINK_PROMPT

    def _draw(self, rng: random.Random) -> tuple[list[tuple], tuple[bool, ...]] | None:
        n = self.difficulty
        statements = [_random_statement(rng, i, n) for i in range(n)]
        found = solutions(statements)
        return (statements, found[0]) if len(found) == 1 else None

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        def make(problem) -> Example:
            answer = render_answer(problem[1])
            thought = reasoning_trace(problem[0]) + "\n" if self.reasoning else ""
            return Example(render_puzzle(problem[0]), answer, f"{thought}<answer>{answer}</answer>",
                           {"level": self.difficulty})

        rng = random.Random(f"{self.name}:{self.difficulty}:{split}:{seed}")
        return draw_examples(f"knights difficulty {self.difficulty}", split, n, rng, self._draw,
                             lambda p: render_puzzle(p[0]), make, noun="puzzles")

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The roles as a canonical "name=knight|knave" list sorted by name (any wording or order of
        the same roles gives the same answer), else the raw answer text, for majority voting; no vote
        without the strict format."""
        if not tag_format(completion, thought=self.reasoning):
            return None
        raw = tag_answer(completion, thought=self.reasoning)
        roles = parse_roles(raw)
        if roles is None:
            return raw
        return ",".join(f"{name}={'knight' if r else 'knave'}" for name, r in sorted(roles.items()))

    def score(self, completion: str, example: Example) -> Score:
        formatted = tag_format(completion, thought=self.reasoning)
        correct = False
        if formatted:
            given = parse_roles(tag_answer(completion, thought=self.reasoning))
            correct = given is not None and given == parse_roles(example.answer)
        return Score(reward=1.0 if correct else 0.0, correct=correct, formatted=formatted)
