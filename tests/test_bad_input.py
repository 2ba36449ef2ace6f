"""Bad input has a defined policy: a clear error, or skip-and-count. Property-based where it pays."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credo.credit import grpo_advantages
from credo.errors import CredoError
from credo.rollout import SamplingParams, TorchEngine
from credo.tasks import make_task
from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Example, Score
from credo.train.evaluate import evaluate, safe_score, too_long

EXAMPLE = Example("What is 1+2?", "3", "<answer>3</answer>")


class FixedReward(ArithmeticTask):
    def __init__(self, reward):
        super().__init__()
        self.fixed = reward

    def score(self, completion, example):
        return Score(self.fixed, True, True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "1.0", None, True, [1.0], {"r": 1}])
def test_non_finite_or_wrong_typed_rewards_are_counted_errors(bad):
    score, failed = safe_score(FixedReward(bad), "x", EXAMPLE, error_reward=-0.5)
    assert failed and score == Score(-0.5, False, False)


def test_finite_numeric_rewards_pass_through():
    for good, expected in ((1, 1.0), (0.25, 0.25), (-3.0, -3.0)):
        score, failed = safe_score(FixedReward(good), "x", EXAMPLE)
        assert not failed and score.reward == expected


class Raises(ArithmeticTask):
    def score(self, completion, example):
        raise RuntimeError("verifier bug")


def test_a_raising_verifier_is_counted_not_fatal():
    score, failed = safe_score(Raises(), "x", EXAMPLE)
    assert failed and score.reward == 0.0


hostile_text = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace")),
    st.builds(lambda a, b: f"<answer>{a}</answer>{b}", st.text(max_size=40), st.text(max_size=40)),
    st.just("<answer>" * 5000), st.just("9" * 100_000), st.just(""), st.just("\x00\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text, task_name=st.sampled_from(["arith", "countdown", "knights"]))
def test_verifiers_never_raise_on_model_output(text, task_name):
    task = make_task(task_name)
    example = task.examples("test", 1, seed=0)[0]
    score, failed = safe_score(task, text, example)
    assert not failed, "the built-in verifiers must not raise"
    assert math.isfinite(score.reward) and isinstance(score.correct, bool)


@settings(max_examples=200, deadline=None)
@given(rewards=st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)),
                        min_size=1, max_size=12),
       data=st.data())
def test_advantages_are_finite_for_any_finite_rewards(rewards, data):
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(rewards), max_size=len(rewards)))
    adv = grpo_advantages(torch.tensor(rewards), torch.tensor(groups))
    assert torch.isfinite(adv).all()


row_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                       st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(st.dictionaries(st.sampled_from(["prompt", "answer", "x"]), row_values, max_size=3),
                               row_values, st.just("{not json")), min_size=0, max_size=5))
def test_jsonl_loader_malformed_rows_give_a_located_error_or_load(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) and r.startswith("{not") else json.dumps(r) for r in rows) + "\n")
    try:
        task = make_task("jsonl", path=str(path))
        examples = task.examples("train", 0, seed=0) + task.examples("test", 0, seed=0)
        assert examples == []
    except CredoError as exc:
        assert str(path) in str(exc)  # the message names the file (and line and field where it applies)


def test_prompt_longer_than_the_context_is_skipped_and_counted(tiny_policy):
    assert too_long([[1] * 5, [1] * 12, [1] * 10], 10) == [1]
    assert too_long([[1] * 500], None) == []
    engine = TorchEngine(tiny_policy.model, tiny_policy.tokenizer)
    task = make_task("arith")
    examples = task.examples("test", 3, seed=0)
    result = evaluate(engine, tiny_policy.tokenizer, task, examples, SamplingParams(max_new_tokens=2),
                      max_prompt_tokens=0)  # nothing fits
    assert result["skipped_prompts"] == 3 and result["accuracy"] == 0.0 and result["n"] == 3


def test_empty_dataset_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CredoError, match="empty.jsonl"):
        make_task("jsonl", path=str(empty)).examples("train", 1, seed=0)


class Hangs(ArithmeticTask):
    def score(self, completion, example):
        import time

        time.sleep(30)
        return Score(1.0, True, True)


def test_a_hanging_verifier_times_out_and_scoring_goes_on():
    import time

    start = time.perf_counter()
    score, failed = safe_score(Hangs(), "x", EXAMPLE, error_reward=-1.0, timeout_s=0.5)
    assert failed and score.reward == -1.0
    assert time.perf_counter() - start < 3.0
    # the next call gets a fresh worker and works normally
    score, failed = safe_score(FixedReward(0.5), "x", EXAMPLE, timeout_s=0.5)
    assert not failed and score.reward == 0.5
