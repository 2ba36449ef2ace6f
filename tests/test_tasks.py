"""Tests of the built-in tasks and the answer-tag helpers.

Expected values are written out by hand or recomputed here independently (own parsers, own brute
force), never taken from the implementation's helpers.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from fractions import Fraction

import pytest

from credo.errors import CredoError
from credo.rewards.answer_tags import after_thought, answer_after_thought, extract_answer, only_answer, parse_int
from credo.tasks import TASKS, make_task
from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Example
from credo.tasks.countdown import CountdownTask, evaluate
from credo.tasks.jsonl import JsonlTask
from credo.tasks.knights import KnightsKnavesTask, parse_roles, reasoning_trace, render_statement, solutions

# --------------------------------------------------------------------------------------------
# answer tags


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", None),
        ("no tags at all", None),
        ("<answer>", None),
        ("</answer>", None),
        ("<answer></answer>", ""),
        ("<answer>  42 \n</answer>", "42"),
        ("reasoning... <answer>7</answer>", "7"),
        ("<answer>1</answer><answer>2</answer>", "1"),
        ("<answer><answer>1</answer></answer>", "<answer>1"),
        ("<answer>a\nb</answer>", "a\nb"),
        ("<ANSWER>5</ANSWER>", None),
        ("x" * 5000 + "<answer>5</answer>", None),  # beyond the scanned prefix
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("value", [None, 42, b"<answer>1</answer>", ["<answer>1</answer>"]])
def test_tag_helpers_reject_non_strings(value):
    assert extract_answer(value) is None
    assert only_answer(value) is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>5</answer>", True),
        ("  \n<answer>5</answer>\n ", True),
        ("<answer></answer>", True),
        ("", False),
        ("5", False),
        ("<answer>5</answer> because 2+3=5", False),
        ("<answer>5</answer>.", False),
        ("The answer: <answer>5</answer>", False),
        ("<answer>5</answer><answer>5</answer>", False),
        ("<answer>5</answer>\n<answer>6</answer>", False),
        ("<answer><answer>5</answer></answer>", False),
        ("<answer>5", False),
        ("<answer>" + "9" * 5000 + "</answer>", False),  # longer than the scanned prefix
    ],
)
def test_only_answer(text, expected):
    assert only_answer(text) is expected


def test_tag_helpers_are_fast_on_huge_input():
    huge = "<answer>" + "a" * 10_000_000
    many_tags = "<answer>" * 1_000_000
    start = time.perf_counter()
    assert extract_answer(huge) is None
    assert only_answer(huge) is False
    assert extract_answer("<answer>3</answer>" + huge) == "3"
    assert only_answer("<answer>3</answer>" + huge) is False
    assert extract_answer(many_tags) is None
    assert only_answer(many_tags) is False
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42),
        (" -17 ", -17),
        ("+5", 5),
        ("1,000", 1000),
        ("-0", 0),
        ("9" * 64, int("9" * 64)),
        ("9" * 65, None),
        ("4.0", None),
        ("1e3", None),
        ("0x10", None),
        ("", None),
        ("forty-two", None),
        (None, None),
    ],
)
def test_parse_int(text, expected):
    assert parse_int(text) == expected


# --------------------------------------------------------------------------------------------
# arithmetic


def _arith_example(prompt, answer):
    return Example(prompt=prompt, answer=answer, demonstration=f"<answer>{answer}</answer>")


def test_arithmetic_known_scores():
    task = ArithmeticTask()
    example = _arith_example("What is 23+45?", "68")
    assert task.score("<answer>68</answer>", example).reward == 1.0
    assert task.score(" <answer> 68 </answer>\n", example).correct
    wrong = task.score("<answer>67</answer>", example)
    assert (wrong.reward, wrong.correct, wrong.formatted) == (0.0, False, True)
    chatter = task.score("<answer>68</answer> I added them.", example)
    assert (chatter.reward, chatter.correct, chatter.formatted) == (0.0, False, False)
    assert not task.score("68", example).formatted
    assert not task.score("<answer>68.0</answer>", example).correct
    assert not task.score(None, example).correct
    negative = _arith_example("What is 12-40?", "-28")
    assert task.score("<answer>-28</answer>", negative).correct


@pytest.mark.parametrize("level, ops, lo, hi", [(1, "+", 0, 9), (3, "+-", 10, 99), (5, "*", 2, 99)])
def test_arithmetic_examples_are_right(level, ops, lo, hi):
    task = ArithmeticTask(difficulty=level)
    for example in task.examples("train", 200, seed=1):
        a, op, b = re.fullmatch(r"What is (\d+)([-+*])(\d+)\?", example.prompt).groups()
        assert op in ops and lo <= int(a) <= hi and lo <= int(b) <= hi
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert example.answer == str(value)
        assert task.score(example.demonstration, example).correct


def test_arithmetic_splits_and_limits():
    task = ArithmeticTask(difficulty=2)
    assert task.examples("test", 50, seed=3) == task.examples("test", 50, seed=3)
    train = {e.prompt for e in task.examples("train", 500, seed=0)}
    test = [e.prompt for e in task.examples("test", 300, seed=0)]
    assert len(set(test)) == 300 and not train & set(test)
    with pytest.raises(CredoError, match="only .* distinct test problems"):
        ArithmeticTask(difficulty=1).examples("test", 500, seed=0)  # 100 problems in all
    with pytest.raises(CredoError, match="unknown difficulty 9"):
        ArithmeticTask(difficulty=9)
    with pytest.raises(CredoError, match="unknown split 'valid'"):
        task.examples("valid", 1, seed=0)


# --------------------------------------------------------------------------------------------
# countdown

_NUMBERS_PROMPT = re.compile(
    r"Using the numbers \[([\d, ]+)\], make (\d+)\. Use \+ - \* / and each number at most once\."
)


def _countdown_example(numbers, target):
    prompt = f"Using the numbers {list(numbers)}, make {target}."
    meta = {"numbers": tuple(numbers), "target": target}
    return Example(prompt=prompt, answer=str(target), demonstration="", meta=meta)


@pytest.mark.parametrize(
    "expression, numbers, expected",
    [
        ("(3+5)*2", [3, 5, 2], Fraction(16)),
        ("3+5*2", [3, 5, 2], Fraction(13)),
        (" 2 * ( 5 + 3 ) ", [3, 5, 2], Fraction(16)),
        ("8/3", [8, 3], Fraction(8, 3)),
        ("(8/3)*3", [8, 3, 3], Fraction(8)),
        ("-3+5", [3, 5], Fraction(2)),
        ("100-75", [75, 100, 4], Fraction(25)),  # a subset of the numbers is allowed
        ("6*6", [6, 6, 1], Fraction(36)),  # a repeated number may be used as often as listed
    ],
)
def test_countdown_evaluate_valid(expression, numbers, expected):
    assert evaluate(expression, numbers) == expected


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('true')",
    "2**999999",
    "9**9**9",
    "(" * 10000,
    "(" * 100 + "3" + ")" * 100,  # over the length limit
    "-" * 150 + "3",  # nesting deeper than the limit
    "x+1",
    "abs(3)",
    "lambda: 3",
    "(lambda: 3)()",
    "[3][0]",
    "3 if 5 else 2",
    "3 // 1",
    "3 % 2",
    "3;5",
    "0x10",
    "3_0",
    "3.0+5",
    "1e1",
    "True+2",
    "1" * 1_000_000,
    "3+5\ufffd*2",
    "\ufffd\ufffd",
    "",
    "   ",
    "(3+5)*2=16",
    "(3+5)*2+0",  # 0 is not in the list
    "(3+3)*2",  # 3 used twice
    "(3+5)*2*2",  # 2 used twice
    "7/(2-2)",  # division by zero
    "(5-5)/(3-3)",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_countdown_evaluate_rejects_hostile(expression):
    numbers = [3, 5, 2, 7, 1]
    assert evaluate(expression, numbers) is None
    example = _countdown_example(numbers, 16)
    score = CountdownTask().score(f"<answer>{expression}</answer>", example)
    assert (score.reward, score.correct) == (0.0, False)


@pytest.mark.parametrize("value", [None, 16, b"(3+5)*2", ["(3+5)*2"], Fraction(16)])
def test_countdown_rejects_non_strings(value):
    assert evaluate(value, [3, 5, 2]) is None
    assert not CountdownTask().score(value, _countdown_example([3, 5, 2], 16)).correct


def test_countdown_hostile_is_fast():
    start = time.perf_counter()
    for expression in HOSTILE * 20:
        evaluate(expression, [3, 5, 2])
    assert time.perf_counter() - start < 2.0


def test_countdown_known_scores():
    task = CountdownTask()
    example = _countdown_example([3, 5, 2], 16)
    rights = ["<answer>(3+5)*2</answer>", "<answer>2*(5+3)</answer>", " <answer>(5+3)*2 </answer>"]
    for right in rights:
        assert task.score(right, example).reward == 1.0
    for wrong in ["<answer>3+5+2</answer>", "<answer>3*5+2</answer>", "<answer>16</answer>"]:
        score = task.score(wrong, example)
        assert (score.reward, score.correct, score.formatted) == (0.0, False, True)
    chatter = task.score("<answer>(3+5)*2</answer> that's it", example)
    assert (chatter.reward, chatter.formatted) == (0.0, False)
    assert not task.score("(3+5)*2", example).formatted
    assert task.score("<answer>3+5</answer>", _countdown_example([3, 5, 2], 8)).correct
    fraction_path = _countdown_example([1, 3, 4, 6], 24)
    assert task.score("<answer>6/(1-3/4)</answer>", fraction_path).correct


def _check_countdown_example(example, level):
    levels = {1: (3, 20, 1, 100), 2: (4, 20, 1, 200), 3: (4, 100, 100, 999)}
    count, top, lo_target, hi_target = levels[level]
    listed, target = _NUMBERS_PROMPT.fullmatch(example.prompt).groups()
    numbers = [int(x) for x in listed.split(", ")]
    assert len(numbers) == count and all(1 <= x <= top for x in numbers)
    assert lo_target <= int(target) <= hi_target and int(target) not in numbers
    assert example.answer == target and list(example.meta["numbers"]) == numbers
    expression = re.fullmatch(r"<answer>([\d+\-*/()]+)</answer>", example.demonstration).group(1)
    assert sorted(int(x) for x in re.findall(r"\d+", expression)) == sorted(numbers)
    assert abs(eval(expression) - int(target)) < 1e-9  # our own generated text: digits and ops only


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("split", ["train", "test"])
def test_countdown_generated_problems_are_solved_by_demonstrations(level, split):
    task = CountdownTask(difficulty=level)
    for example in task.examples(split, 200, seed=7):
        _check_countdown_example(example, level)
        assert task.score(example.demonstration, example).reward == 1.0


def test_countdown_determinism_and_disjoint_splits():
    task = CountdownTask(difficulty=2)
    assert task.examples("train", 100, seed=5) == task.examples("train", 100, seed=5)
    assert task.examples("train", 100, seed=5) != task.examples("train", 100, seed=6)

    def key(example):
        return (tuple(sorted(example.meta["numbers"])), example.answer)

    train = {key(e) for e in task.examples("train", 1000, seed=0)}
    test = [key(e) for e in task.examples("test", 500, seed=0)]
    assert len(set(test)) == 500 and not train & set(test)


def test_countdown_bad_parameters():
    with pytest.raises(CredoError, match="unknown difficulty 4"):
        CountdownTask(difficulty=4)
    with pytest.raises(CredoError, match="unknown split"):
        CountdownTask().examples("dev", 1, seed=0)


# --------------------------------------------------------------------------------------------
# knights and knaves


def _clause_truth(clause, speaker):
    """A function of the assignment for "Bob is a knight" / "I am a knave"."""
    match = re.fullmatch(r"(?:(\w+) is|I am) a (knight|knave)", clause, re.IGNORECASE)
    person = match.group(1) or speaker
    person = person[0].upper() + person[1:]
    knight = match.group(2) == "knight"
    return lambda roles: roles[person] == knight


def _statement_truth(text, speaker):
    """Independent reading of one rendered statement into a function of the assignment."""
    text = text.rstrip(".")
    if m := re.fullmatch(r"(\w+) and (\w+) are both (knights|knaves)", text):
        x, y, knight = m.group(1), m.group(2), m.group(3) == "knights"
        return lambda r: r[x] == knight and r[y] == knight
    if m := re.fullmatch(r"(\w+) and I are (the same kind|different kinds)", text):
        x, same = m.group(1), m.group(2) == "the same kind"
        return lambda r: (r[x] == r[speaker]) == same
    if m := re.fullmatch(r"If (.+), then (.+)", text):
        p, q = _clause_truth(m.group(1), speaker), _clause_truth(m.group(2), speaker)
        return lambda r: (not p(r)) or q(r)
    for word, combine in [
        (" if and only if ", lambda a, b: a == b),
        (" and ", lambda a, b: a and b),
        (" or ", lambda a, b: a or b),
    ]:
        if word in text:
            left, right = text.split(word)
            p, q = _clause_truth(left, speaker), _clause_truth(right, speaker)
            return lambda r, p=p, q=q, combine=combine: combine(p(r), q(r))
    return _clause_truth(text, speaker)


def _brute_force(prompt):
    names = re.search(r"You meet \d inhabitants: ([\w, ]+?)\.", prompt).group(1)
    people = re.split(r", | and ", names)
    said = dict(re.findall(r'(\w+) says: "([^"]+)"', prompt))
    assert sorted(said) == sorted(people)
    truths = {person: _statement_truth(said[person], person) for person in people}
    found = []
    for values in itertools.product([True, False], repeat=len(people)):
        roles = dict(zip(people, values))
        if all(truths[p](roles) == roles[p] for p in people):
            found.append(roles)
    return people, found


def test_knights_hand_solved_puzzles():
    # Ann: "Bob is a knave."  Bob: "Ann and I are the same kind."
    # Ann a knave -> Bob a knight -> they are the same kind -> contradiction. So Ann is a knight,
    # Bob a knave, and Bob's claim (same kind) is indeed false.
    statements = [("is", 1, False), ("same", 0)]
    assert render_statement(statements[0], 0) == "Bob is a knave."
    assert render_statement(statements[1], 1) == "Ann and I are the same kind."
    assert solutions(statements) == [(True, False)]
    # Ann: "Bob is a knight."  Bob: "Ann is a knight."  Both knights or both knaves.
    assert sorted(solutions([("is", 1, True), ("is", 0, True)])) == [(False, False), (True, True)]
    # Ann: "If Bob is a knight, then I am a knave." Bob: "Ann and Cal are both knaves."
    # Cal: "Ann is a knave or Bob is a knight."
    puzzle = [("if", (1, True), (0, False)), ("both", 0, 2, False), ("or", (0, False), (1, True))]
    assert render_statement(puzzle[0], 0) == "If Bob is a knight, then I am a knave."
    assert render_statement(puzzle[1], 1) == "Ann and Cal are both knaves."
    assert render_statement(puzzle[2], 2) == "Ann is a knave or Bob is a knight."
    # Ann knight -> Bob knave (else Ann a knave) -> Cal's claim false -> Cal knave -> Bob's claim
    # "Ann and Cal both knaves" false, consistent. Ann knave -> her claim is false -> Bob is a
    # knight and Ann not a knave: contradiction. Unique: knight, knave, knave.
    assert solutions(puzzle) == [(True, False, False)]


def _knights_example(answer="Ann: knight, Bob: knave"):
    return Example(prompt="(puzzle)", answer=answer, demonstration=f"<answer>{answer}</answer>")


@pytest.mark.parametrize(
    "content",
    [
        "Ann: knight, Bob: knave",
        "Bob: knave, Ann: knight",
        "ann: KNIGHT; bob: Knave",
        "Ann is a knight and Bob is a knave",
        "Ann:knight\nBob:knave",
        "  Ann - knight | Bob - knave.  ",
        "Ann: knight, Bob: \ufffdknave\ufffd",  # replacement characters are mere separators
    ],
)
def test_knights_accepts_lenient_correct_answers(content):
    score = KnightsKnavesTask().score(f"<answer>{content}</answer>", _knights_example())
    assert (score.reward, score.correct, score.formatted) == (1.0, True, True)


@pytest.mark.parametrize(
    "content",
    [
        "Ann: knave, Bob: knight",
        "Ann: knight",
        "Ann: knight, Bob: knave, Cal: knight",
        "Ann: knight, Ann: knight, Bob: knave",
        "Ann: knight, Bob: knave, Bob: knave",
        "Ann: knight, Bob: knight, Bob: knave",
        "Ann: knight knave, Bob: knave",
        "Ann: not a knave, Bob: knave",
        "Ann Bob: knight knave",
        "knight, knave",
        "Ann: knights, Bob: knaves",
        "Ann: knight, Zed: knave",
        "Ann: 1, Bob: 0",
        "Ann: kn\ufffdight, Bob: knave",
        "",
    ],
)
def test_knights_rejects_wrong_answers(content):
    score = KnightsKnavesTask().score(f"<answer>{content}</answer>", _knights_example())
    assert (score.reward, score.correct, score.formatted) == (0.0, False, True)


def test_knights_format_and_junk():
    task, example = KnightsKnavesTask(), _knights_example()
    chatter = task.score("<answer>Ann: knight, Bob: knave</answer> Easy.", example)
    assert (chatter.reward, chatter.formatted) == (0.0, False)
    for junk in [None, 3, "", "Ann: knight, Bob: knave", "<answer>" * 100_000, "x" * 1_000_000]:
        assert task.score(junk, example).reward == 0.0
    assert parse_roles("Ann: knight, bob is a KNAVE") == {"ann": True, "bob": False}
    assert parse_roles("Ann: not a knight") is None


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6])
def test_knights_generated_puzzles_are_unique_and_demonstrations_correct(level):
    task = KnightsKnavesTask(difficulty=level)
    for example in task.examples("train", 200, seed=11) + task.examples("test", 20, seed=11):
        people, found = _brute_force(example.prompt)
        assert people == ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay"][:level]
        assert len(found) == 1, example.prompt
        expected = ", ".join(f"{p}: {'knight' if found[0][p] else 'knave'}" for p in people)
        assert example.answer == expected
        assert example.demonstration == f"<answer>{expected}</answer>"
        assert task.score(example.demonstration, example).reward == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>7</answer>", True),  # the thought is optional
        ("<think>3+4=7</think><answer>7</answer>", True),
        ("  <think>\nline one\nline two\n</think>\n<answer>7</answer>\n", True),
        ("<think></think><answer>7</answer>", True),
        ("<think>a</think><think>b</think><answer>7</answer>", False),  # one thought at most
        ("<think>say <answer>5</answer></think><answer>7</answer>", False),  # no tag inside the thought
        ("<think>unclosed <answer>7</answer>", False),
        ("<answer>7</answer><think>after</think>", False),
        ("<think>a</think><answer>7</answer> more", False),
        ("<think>a</think>", False),
        ("text <think>a</think><answer>7</answer>", False),
        ("<think>" + "x" * 5000 + "</think><answer>7</answer>", True),  # a thought has its own, longer bound
        ("<think>" + "x" * 40_000 + "</think><answer>7</answer>", False),  # over MAX_THOUGHT_CHARS
        (None, False),
    ],
)
def test_answer_after_thought(text, expected):
    assert answer_after_thought(text) is expected
    if expected:
        assert extract_answer(after_thought(text)) == "7"


def test_after_thought():
    assert after_thought("<think>a</think> <answer>1</answer>") == " <answer>1</answer>"
    assert after_thought("<answer>1</answer>") == "<answer>1</answer>"  # no thought: unchanged
    assert after_thought("<think>unclosed") is None and after_thought(7) is None
    long = "<think>" + "x" * 40_000
    started = time.perf_counter()
    assert after_thought(long + "</think>") is None and answer_after_thought(long * 30) is False
    assert time.perf_counter() - started < 1.0  # bounded: hostile output never stalls a verifier


def test_knights_reasoning_trace_by_hand():
    # Ann: "Bob is a knave."  Bob: "Ann and I are the same kind."  (solved by hand above: knight, knave)
    assert reasoning_trace([("is", 1, False), ("same", 0)]) == (
        '<think>Suppose Ann is a knight. Suppose Bob is a knight. Ann says "Bob is a knave.": false, but a '
        'knight tells the truth. Contradiction, so Bob is not a knight. Suppose Bob is a knave. Ann says '
        '"Bob is a knave.": true, and a knight tells the truth. Bob says "Ann and I are the same kind.": '
        'false, and a knave lies. Every statement fits.</think>')
    # Ann: "I am a knave." can hold for no one: neither role fits Ann
    with pytest.raises(CredoError, match="no consistent assignment"):
        reasoning_trace([("is", 0, False), ("is", 0, True)])
    # a backtrack over two levels: Ann a knight leaves Bob no role
    # Ann: "Bob is a knave or I am a knight." Bob: "I am a knave or Ann is a knave." -> knave, knight
    trace = reasoning_trace([("or", (1, False), (0, True)), ("or", (1, False), (0, False))])
    assert "Contradiction, so Bob is not a knave. No role fits Bob, so Ann is not a knight. Suppose Ann is a knave." \
        in trace


def _replay_trace(trace, people):
    """Checks every claim of a reasoning trace with the independent statement reader above; returns the
    assumptions standing at the end."""
    assumed = {}
    for sentence in re.findall(r'Suppose \w+ is a \w+\.|\w+ says "[^"]+": \w+, \w+ a \w+ [\w ]+\.', trace):
        if m := re.fullmatch(r"Suppose (\w+) is a (knight|knave)\.", sentence):
            person = m.group(1)
            for later in people[people.index(person):]:  # a new assumption drops the deeper ones
                assumed.pop(later, None)
            assumed[person] = m.group(2) == "knight"
            continue
        m = re.fullmatch(r'(\w+) says "([^"]+)": (true|false), (and|but) a (knight|knave) [\w ]+\.', sentence)
        speaker, text, value, verdict, kind = m.groups()
        assert assumed[speaker] == (kind == "knight")
        truth = _statement_truth(text, speaker)(assumed)  # KeyError: a statement checked too early
        assert (value == "true") == truth, sentence
        assert (verdict == "and") == (truth == assumed[speaker]), sentence
    return assumed


@pytest.mark.parametrize("level", [2, 3, 4])
def test_knights_reasoning_demonstrations_are_sound_and_score(level):
    task = KnightsKnavesTask(difficulty=level, reasoning=True)
    assert task.system_prompt.startswith("Think step by step inside <think>")
    plain = KnightsKnavesTask(difficulty=level).examples("train", 60, seed=5)
    examples = task.examples("train", 60, seed=5)
    assert [e.prompt for e in examples] == [e.prompt for e in plain]  # the same puzzles, other demonstrations
    for example, bare in zip(examples, plain):
        thought, answer = example.demonstration.split("\n")
        assert answer == bare.demonstration and thought.endswith("Every statement fits.</think>")
        people, found = _brute_force(example.prompt)
        assert _replay_trace(thought, people) == found[0]  # the standing assumptions are the solution
        assert task.score(example.demonstration, example).reward == 1.0
        assert task.final_answer(example.demonstration, example) == task.final_answer(answer, example)
        # the plain task rejects the thought (its format is the answer alone)
        assert KnightsKnavesTask(difficulty=level).score(example.demonstration, example).formatted is False
    with pytest.raises(CredoError, match="reasoning must be true or false"):
        KnightsKnavesTask(reasoning="yes")


def test_arithmetic_think_format():
    plain, think = ArithmeticTask(), ArithmeticTask(think=True)
    example = plain.examples("test", 1, seed=0)[0]
    good = f"<think>add the tens, then the ones</think> <answer>{example.answer}</answer>"
    assert think.score(good, example).reward == 1.0 and think.final_answer(good, example) == example.answer
    assert plain.score(good, example).formatted is False and plain.final_answer(good, example) is None
    assert think.score(f"<answer>{example.answer}</answer>", example).reward == 1.0  # thinking is optional
    assert think.system_prompt.startswith("Think step by step") and plain.system_prompt.startswith("Reply only")
    assert ArithmeticTask(think=True, system_prompt="mine").system_prompt == "mine"  # an explicit prompt wins
    assert think.examples("test", 5, seed=0) == plain.examples("test", 5, seed=0)
    with pytest.raises(CredoError, match="think must be true or false"):
        ArithmeticTask(think=1)


def test_knights_determinism_disjointness_and_limits():
    task = KnightsKnavesTask(difficulty=3)
    assert task.examples("train", 50, seed=2) == task.examples("train", 50, seed=2)
    assert task.examples("train", 50, seed=2) != task.examples("train", 50, seed=3)
    train = {e.prompt for e in task.examples("train", 1000, seed=0)}
    test = [e.prompt for e in task.examples("test", 100, seed=0)]
    assert len(set(test)) == 100 and not train & set(test)
    with pytest.raises(CredoError, match="only .* distinct test puzzles"):
        KnightsKnavesTask(difficulty=2).examples("test", 500, seed=0)  # 147 exist
    for bad in (1, 7):
        with pytest.raises(CredoError, match=f"unknown difficulty {bad}"):
            KnightsKnavesTask(difficulty=bad)


# --------------------------------------------------------------------------------------------
# jsonl


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _rows(count, **extra):
    rows = [{"prompt": f"question {i}?", "answer": f"a{i}", **extra} for i in range(count)]
    return [json.dumps(row) for row in rows]


def _error(path, split="train", n=1, **params):
    with pytest.raises(CredoError) as info:
        JsonlTask(path=path, **params).examples(split, n, seed=0)
    return str(info.value)


def _split_size(task, split):
    """The number of rows in a split, read from the too-few-rows error."""
    with pytest.raises(CredoError) as info:
        task.examples(split, 10_000, seed=0)
    return int(re.search(r"the file has (\d+) ", str(info.value)).group(1))


def test_jsonl_loads_and_splits(tmp_path):
    path = _write(tmp_path, _rows(100))
    task = JsonlTask(path=path)
    sizes = {split: _split_size(task, split) for split in ("train", "test")}
    assert sizes["train"] + sizes["test"] == 100 and 0 < sizes["test"] < sizes["train"]
    train = task.examples("train", sizes["train"], seed=0)
    test = task.examples("test", sizes["test"], seed=0)
    prompts = {e.prompt for e in train} | {e.prompt for e in test}
    assert prompts == {f"question {i}?" for i in range(100)}
    for example in train + test:
        assert example.prompt == f"question {example.answer[1:]}?"
        assert example.demonstration == f"<answer>{example.answer}</answer>"
        assert task.score(example.demonstration, example).reward == 1.0
    assert task.examples("train", 10, seed=4) == task.examples("train", 10, seed=4)
    assert task.examples("train", 10, seed=4) != task.examples("train", 10, seed=5)
    assert task.examples("train", 0, seed=4) == []


def test_jsonl_reads_once_and_lazily(tmp_path):
    missing = str(tmp_path / "later.jsonl")
    JsonlTask(path=missing)  # nothing is read yet: no error
    assert f"jsonl: file not found: {missing}" in _error(missing)
    path = _write(tmp_path, _rows(30, split="train"))
    task = JsonlTask(path=path, split_field="split")
    first = task.examples("train", 30, seed=0)
    (tmp_path / "data.jsonl").unlink()
    assert task.examples("train", 30, seed=0) == first
    assert sorted(e.meta["line"] for e in first) == list(range(1, 31))


def test_jsonl_split_field_and_demonstrations(tmp_path):
    rows = [
        {"q": "one", "a": 1, "s": "train", "d": "<answer>1</answer>"},
        {"q": "two", "a": 2, "s": "test", "d": "<answer>2</answer>"},
        {"q": "three", "a": 3, "s": "train", "d": "<answer>3</answer>"},
    ]
    path = _write(tmp_path, [json.dumps(r) for r in rows])
    params = dict(prompt_field="q", answer_field="a", split_field="s", demonstration_field="d")
    task = JsonlTask(path=path, match="int", **params)
    assert sorted(e.prompt for e in task.examples("train", 2, seed=0)) == ["one", "three"]
    (test,) = task.examples("test", 1, seed=0)
    assert (test.prompt, test.answer, test.demonstration) == ("two", "2", "<answer>2</answer>")
    message = _error(path, split="test", n=2, match="int", **params)
    assert path in message and "2 test" in message and "1 test rows" in message


def test_jsonl_skips_blank_lines_and_counts_them(tmp_path):
    lines = [_rows(1)[0], "", "   ", '{"prompt": "p", "answer": [1]}']
    path = _write(tmp_path, lines)
    assert _error(path) == f"{path}:4: field 'answer' must be a string or number, got list"


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"prompt": "p", "answer": ', "invalid JSON"),
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got string"),
        ('{"answer": "a"}', "missing field 'prompt'"),
        ('{"prompt": "p"}', "missing field 'answer'"),
        ('{"prompt": 5, "answer": "a"}', "field 'prompt' must be a string, got integer"),
        ('{"prompt": "  ", "answer": "a"}', "field 'prompt' is empty"),
        ('{"prompt": "p", "answer": [1]}', "field 'answer' must be a string or number, got list"),
        ('{"prompt": "p", "answer": {}}', "field 'answer' must be a string or number, got object"),
        ('{"prompt": "p", "answer": null}', "field 'answer' must be a string or number, got null"),
        ('{"prompt": "p", "answer": true}', "field 'answer' must be a string or number, got bool"),
        ('{"prompt": "p", "answer": ""}', "field 'answer' is empty"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
    ],
)
def test_jsonl_row_errors_name_file_line_and_field(tmp_path, line, expected):
    path = _write(tmp_path, [_rows(1)[0], line])
    message = _error(path)
    assert message.startswith(f"{path}:2: ") and expected in message


@pytest.mark.parametrize(
    "row, params, expected",
    [
        ({"prompt": "p", "answer": "a"}, {"split_field": "split"}, "missing field 'split'"),
        ({"prompt": "p", "answer": "a", "split": "dev"}, {"split_field": "split"},
         "field 'split' must be 'train' or 'test', got 'dev'"),
        ({"prompt": "p", "answer": "a", "split": 1}, {"split_field": "split"},
         "field 'split' must be a string, got integer"),
        ({"prompt": "p", "answer": "a"}, {"demonstration_field": "demo"}, "missing field 'demo'"),
        ({"prompt": "p", "answer": "3.5"}, {"match": "int"}, "field 'answer' is not an integer"),
        ({"prompt": "p", "answer": 3.0}, {"match": "int"}, "field 'answer' is not an integer"),
        ({"prompt": "p", "answer": "pi"}, {"match": "float"}, "field 'answer' is not a number"),
        ({"prompt": "p", "answer": "x"}, {"answer_field": "label"}, "missing field 'label'"),
    ],
)  # fmt: skip
def test_jsonl_field_errors(tmp_path, row, params, expected):
    path = _write(tmp_path, [json.dumps(row)])
    message = _error(path, **params)
    assert message.startswith(f"{path}:1: ") and expected in message


def test_jsonl_file_errors(tmp_path):
    empty = _write(tmp_path, [], name="empty.jsonl")
    assert _error(empty) == f"{empty}: no rows (the file is empty or has only blank lines)"
    blank = _write(tmp_path, ["", "  ", "\t"], name="blank.jsonl")
    assert blank in _error(blank) and "no rows" in _error(blank)
    only_train = _write(tmp_path, _rows(3, split="train"), name="train.jsonl")
    message = _error(only_train, split="test", split_field="split")
    assert message == f"{only_train}: no rows in split 'test' (3 rows in all)"
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(_rows(1)[0].encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    assert _error(str(binary)).startswith(f"{binary}:2: not valid UTF-8")
    assert "cannot read" in _error(str(tmp_path)) and str(tmp_path) in _error(str(tmp_path))
    with pytest.raises(CredoError, match="unknown match 'fuzzy'"):
        JsonlTask(path=empty, match="fuzzy")
    with pytest.raises(CredoError, match="unknown split"):
        JsonlTask(path=only_train).examples("validation", 1, seed=0)


def test_jsonl_too_few_rows(tmp_path):
    path = _write(tmp_path, _rows(5, split="train"))
    message = _error(path, n=6, split_field="split")
    expected = "asked for 6 train examples but the file has 5 train rows (5 rows in all)"
    assert message == f"{path}: {expected}"


def _score(match, answer, completion):
    example = Example(prompt="p", answer=answer, demonstration=f"<answer>{answer}</answer>")
    task = JsonlTask(path="unused.jsonl", match=match)
    assert task.score(example.demonstration, example).correct
    return task.score(completion, example).correct


@pytest.mark.parametrize(
    "match, answer, completion, expected",
    [
        ("exact", "Paris", "<answer>Paris</answer>", True),
        ("exact", "Paris", "<answer>  Paris \n</answer>", True),
        ("exact", "Paris", "<answer>paris</answer>", False),
        ("exact", "Paris", "<answer>Paris</answer> (France)", False),
        ("exact", "Paris", "Paris", False),
        ("exact", "New York", "<answer>New  York</answer>", False),
        ("int", "1000", "<answer>1,000</answer>", True),
        ("int", "-7", "<answer> -7 </answer>", True),
        ("int", "1000", "<answer>1000.0</answer>", False),
        ("int", "1000", "<answer>1001</answer>", False),
        ("int", "5", "<answer>five</answer>", False),
        ("float", "3.14159", "<answer>3.1415926</answer>", True),  # relative error 8.3e-7
        ("float", "3.14159", "<answer>3.1416</answer>", False),  # relative error 3.2e-6
        ("float", "2.5", "<answer>2.50</answer>", True),
        ("float", "1e-07", "<answer>0.0000001</answer>", True),
        ("float", "0", "<answer>0.0</answer>", True),
        ("float", "1234.5", "<answer>1,234.5</answer>", True),
        ("float", "1", "<answer>nan</answer>", False),
        ("float", "1", "<answer>inf</answer>", False),
        ("float", "1", "<answer>1e999</answer>", False),
        ("float", "1", "<answer>1_0</answer>", False),
    ],
)
def test_jsonl_matching(match, answer, completion, expected):
    assert _score(match, answer, completion) is expected


@pytest.mark.parametrize("match", ["exact", "int", "float"])
def test_jsonl_score_never_raises(match):
    task = JsonlTask(path="unused.jsonl", match=match)
    example = Example(prompt="p", answer="1", demonstration="<answer>1</answer>")
    for junk in [None, 1, b"<answer>1</answer>", "", "\ufffd", "<answer>\ufffd</answer>",
                 "<answer>" + "9" * 100 + "</answer>", "<answer>1" * 500_000]:  # fmt: skip
        assert task.score(junk, example).reward == 0.0


# --------------------------------------------------------------------------------------------
# registry


def test_tasks_are_registered(tmp_path):
    assert {"arith", "countdown", "knights", "jsonl"} <= set(TASKS.names())
    assert isinstance(make_task("countdown", difficulty=3), CountdownTask)
    assert make_task("knights", difficulty=4).difficulty == 4
    path = _write(tmp_path, _rows(3))
    assert make_task("jsonl", path=path, match="exact").path == path
    with pytest.raises(CredoError, match="bad parameters"):
        make_task("knights", level=3)
