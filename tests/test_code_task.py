"""The code task: the problem set, hidden tests in the sandbox, hostile programs, outcome counts in training."""

import json

import pytest

from credo.cli import main
from credo.errors import CredoError
from credo.rewards.code import CODE_OUTCOMES, extract_code, outcome_counts
from credo.tasks import TASKS, make_task
from credo.tasks.base import Example, Score, split_of
from credo.tasks.code import FAMILIES, CodeTask, _example, _key
from credo.train.logging import read_metrics


def test_the_problem_set_has_over_200_graded_problems_split_by_key():
    task = CodeTask()
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == sum(len(f.params) for f in FAMILIES) == 269
    assert (len(train), len(test)) == (205, 64)
    keys = {_key(f, p) for f, p in train}
    assert keys.isdisjoint({_key(f, p) for f, p in test})
    assert all(split_of(_key(f, p)) == "test" for f, p in test)
    assert {f.level for f in FAMILIES} == {1, 2, 3}
    by_level = [len(CodeTask(difficulty=lvl).problems("test")) for lvl in (1, 2, 3)]
    assert sum(by_level) == 64 and all(n > 0 for n in by_level)
    assert TASKS.get("code") is CodeTask


def test_examples_are_deterministic_and_the_test_split_does_not_repeat():
    task = CodeTask()
    a, b = task.examples("test", 64, seed=0), task.examples("test", 64, seed=0)
    assert a == b and len({e.prompt for e in a}) == 64
    assert task.examples("train", 300, seed=1)[:5] != task.examples("train", 300, seed=2)[:5]
    with pytest.raises(CredoError, match="only 64 test problems"):
        task.examples("test", 65, seed=0)
    for bad in ({"difficulty": 4}, {"cases": 0}, {"wall_time_s": 0}):
        with pytest.raises(CredoError):
            make_task("code", **bad)


def test_every_reference_solution_passes_its_hidden_tests():
    # In-process (the demonstrations are this module's own code): the body template and the
    # reference function agree on every case of all 269 problems.
    for family in FAMILIES:
        for params in family.params:
            example = _example(family, params, cases=5)
            space: dict = {}
            exec(extract_code(example.demonstration), space)
            for args, want in example.meta["cases"]:
                assert json.dumps(space["solve"](*args)) == json.dumps(want), (family.name, params, args)


def test_one_reference_per_family_passes_in_the_sandbox():
    task = CodeTask()
    for family in FAMILIES:
        example = _example(family, family.params[0], cases=5)
        assert task.score(example.demonstration, example) == Score(1.0, True, True, "ok"), family.name


def _fib_example():
    family = next(f for f in FAMILIES if f.name == "add")
    return _example(family, {"k": 3}, cases=4)


@pytest.mark.parametrize("program, outcome", [
    ("print('0 4 4')\ndef solve(x):\n    return 0", "wrong"),              # a forged verdict without the nonce
    ("import sys\nprint('x')\nsys.exit(0)", "wrong"),                        # ends before the harness speaks
    ("class A:\n    def __eq__(self, o):\n        return True\ndef solve(x):\n    return A()", "wrong"),
    ("def solve(x):\n    return x + 2", "wrong"),                            # off by one
    ("while True:\n    pass", "timeout"),
    ("raise ValueError('top level')", "crash"),
    ("x = bytearray(2 * 1024 ** 3)", "memory"),
    ("def solve(x):\n    return x + 3", "ok"),
])
def test_hostile_and_wrong_programs_get_their_outcome(program, outcome):
    example = _fib_example()
    score = CodeTask(wall_time_s=1.0).score(f"```python\n{program}\n```", example)
    assert score.outcome == outcome
    assert score.correct == (outcome == "ok") and score.reward == (1.0 if outcome == "ok" else 0.0)
    assert score.formatted


def test_no_program_is_wrong_and_unformatted_and_partial_credit_counts_cases():
    example = _fib_example()
    assert CodeTask().score("I would add three.", example) == Score(0.0, False, False, "wrong")
    # x + 3 only for positive x: the fraction of the 4 cases with x > 0
    program = "```python\ndef solve(x):\n    return x + 3 if x > 0 else 0\n```"
    cases = example.meta["cases"]
    want = sum(args[0] > 0 or args[0] + 3 == 0 for args, _ in cases) / len(cases)
    score = CodeTask(partial_credit=True).score(program, example)
    assert score.reward == pytest.approx(want)
    assert score.correct == (want == 1.0)


def test_final_answer_votes_for_the_program_text():
    task = CodeTask()
    example = _fib_example()
    a = task.final_answer("```python\ndef solve(x):\n    return x + 3   \n\n```", example)
    b = task.final_answer("```python\ndef solve(x):\n    return x + 3\n```", example)
    assert a == b == "def solve(x):\n    return x + 3"
    assert task.final_answer("no code", example) is None


def test_outcome_counts_by_hand():
    scores = [Score(1.0, True, True, "ok"), Score(0.0, False, True, "timeout"), Score(0.0, False, False, "wrong"),
              Score(0.0, False, True, "ok")]
    counts = outcome_counts(scores)
    assert set(counts) == {f"sandbox_{o}" for o in CODE_OUTCOMES}
    assert (counts["sandbox_ok"], counts["sandbox_timeout"], counts["sandbox_wrong"], counts["sandbox_crash"]) == \
        (2.0, 1.0, 1.0, 0.0)
    assert outcome_counts([Score(1.0, True, True)]) == {}  # tasks that run no code: no new metrics


def test_a_tiny_run_on_the_code_task_counts_sandbox_outcomes(tmp_path):
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", "code", "--run.progress",
            "false", "--rl.steps", "2", "--run.eval_base", "false", "--task.name", "code", "--task.params", "{}",
            "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1"]
    assert main(args) == 0
    rows = read_metrics(tmp_path / "code" / "metrics.jsonl")
    rl = [r for r in rows if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:  # every completion of the step has exactly one outcome
        assert sum(row[f"sandbox_{o}"] for o in CODE_OUTCOMES) == 4 * 4
    evals = [r for r in rows if r["phase"] == "eval"]
    assert evals and all(sum(r[f"sandbox_{o}"] for o in CODE_OUTCOMES) == 4 for r in evals)


def test_the_code_preset_resolves_and_validates():
    from credo.cli import resolve_config
    from credo.train.run import validate

    cfg = resolve_config("code", None, [])
    validate(cfg)
    assert (cfg.task.name, cfg.task.eval_size, cfg.sampling.stop) == ("code", 64, ["\n```"])
    assert len(make_task(cfg.task.name, **cfg.task.params).examples("test", cfg.task.eval_size, 0)) == 64
