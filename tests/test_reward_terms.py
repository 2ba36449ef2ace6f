"""rl.reward_terms (rewards/terms.py): HAPO's history-aware length reward by hand, the weighted combination
with every term logged, degenerate inputs, bad configuration, and a tiny training run."""

from __future__ import annotations

import math

import pytest
import torch

from credo.errors import CredoError
from credo.rewards.terms import HapoLength, RewardMix, TermInputs, hapo_length_reward, make_reward_mix
from credo.tasks.base import Score

C = math.cos(math.pi / 4)  # cos((5 / 10) pi / 2)


@pytest.mark.parametrize("length, correct, history, expected", [
    (5, True, 10, C), (5, False, 10, 0.0),  # shorter than h: positive only when correct
    (10, True, 10, 0.0), (0, True, 10, 1.0),
    (15, True, 10, -0.7), (15, False, 10, -C),  # cos(3 pi / 4) = -0.707: floored at -0.7 when correct
    (20, True, 10, -0.7), (20, False, 10, -1.0), (35, False, 10, -1.0),  # L >= 2h: c = -1
    (5, True, None, 0.0), (5, False, None, 0.0),  # no correct answer yet: no length shaping
])
def test_hapo_length_reward_by_hand(length, correct, history, expected):
    assert hapo_length_reward(length, correct, history) == pytest.approx(expected)


def _inputs(rows, answers=None):
    """rows: (text, length, reward, correct, formatted, group, prompt key)."""
    return TermInputs([r[0] for r in rows], [r[1] for r in rows], answers or ["2"] * len(rows),
                      [Score(r[2], r[3], r[4]) for r in rows], [r[5] for r in rows], [r[6] for r in rows])


def test_hapo_history_is_the_shortest_correct_length_per_problem():
    term = HapoLength()
    step1 = _inputs([("a", 12, 1.0, True, True, 0, "7"), ("b", 8, 1.0, True, True, 0, "7"),
                     ("c", 3, 0.0, False, True, 0, "7"), ("d", 9, 0.0, False, True, 1, "9")])
    assert term(step1) == [0.0, 0.0, 0.0, 0.0]  # nothing known before the first step
    term.commit(step1)
    assert term.history == {"7": 8}  # the wrong 3-token answer does not count; problem 9 has no correct one
    step2 = _inputs([("e", 4, 1.0, True, True, 0, "7"), ("f", 20, 0.0, False, True, 0, "7"),
                     ("g", 5, 1.0, True, True, 1, "9")])
    assert term(step2) == pytest.approx([math.cos(4 / 8 * math.pi / 2), -1.0, 0.0])
    term.commit(step2)
    assert term.history == {"7": 4, "9": 5}
    restored = HapoLength()
    restored.load_state(term.state())
    assert restored.history == term.history


def test_the_mix_is_the_weighted_sum_and_logs_every_term():
    mix = RewardMix({"task": 1.0, "format": 0.5, "hapo_length": 2.0})
    mix.terms["hapo_length"].history = {"7": 10}
    batch = _inputs([("x", 5, 1.0, True, True, 0, "7"), ("y", 15, 0.0, False, False, 0, "7")])
    rewards, metrics = mix(batch)
    assert rewards.tolist() == pytest.approx([1.0 + 0.5 + 2 * C, 0.0 + 0.0 + 2 * -C])
    assert metrics == pytest.approx({"reward/task": 0.5, "reward/format": 0.5, "reward/hapo_length": 0.0})
    assert rewards.dtype == torch.float32


def test_math_term_uses_math_verify():
    mix = RewardMix({"math": 1.0})
    batch = _inputs([("<answer>\\frac{1}{2}</answer>", 5, 0.0, False, True, 0, "0"),
                     ("<answer>{{oops</answer>", 5, 0.0, False, True, 0, "0"),
                     ("no tags at all", 3, 0.0, False, False, 0, "0")], answers=["0.5"] * 3)
    rewards, metrics = mix(batch)
    assert rewards.tolist() == [1.0, 0.0, 0.0] and metrics["reward/math"] == pytest.approx(1 / 3)


def test_degenerate_inputs():
    mix = RewardMix({"task": 1.0, "hapo_length": 1.0})
    rewards, metrics = mix(_inputs([]))  # an empty step (every prompt skipped)
    assert rewards.shape == (0,) and metrics == {"reward/task": 0.0, "reward/hapo_length": 0.0}
    same = _inputs([("a", 4, 1.0, True, True, 0, "1")] * 3)  # all-equal rewards
    assert mix(same)[0].tolist() == [1.0, 1.0, 1.0]


def test_a_raising_term_scores_zero_and_is_counted(monkeypatch, capsys):
    mix = RewardMix({"task": 1.0, "format": 1.0})
    calls = []

    def broken(inputs):
        calls.append(1)
        raise RuntimeError("bug")

    mix.terms["format"] = broken
    batch = _inputs([("a", 4, 1.0, True, True, 0, "1")])
    for _ in range(2):
        rewards, metrics = mix(batch)
        assert rewards.tolist() == [1.0] and metrics["reward/format_errors"] == 1.0
    assert capsys.readouterr().err.count("reward term 'format' raised RuntimeError: bug") == 1
    mix.terms["format"] = lambda inputs: [float("nan")]
    assert mix(batch)[0].tolist() == [1.0]  # a non-finite value counts as 0


def test_configuration_errors():
    assert make_reward_mix({}, {}) is None
    with pytest.raises(CredoError, match="unknown reward term 'lenght'"):
        make_reward_mix({"lenght": 1.0}, {})
    with pytest.raises(CredoError, match=r"rl.reward_terms\['task'\]: the weight must be a finite number"):
        make_reward_mix({"task": float("inf")}, {})
    with pytest.raises(CredoError, match="takes no parameters"):
        make_reward_mix({"task": 1.0}, {"task": {"x": 1}})
    with pytest.raises(CredoError, match="which rl.reward_terms does not use"):
        make_reward_mix({"task": 1.0}, {"hapo_length": {"floor": -0.5}})
    with pytest.raises(CredoError, match=r"rl.reward_term_params\['hapo_length'\]"):
        make_reward_mix({"hapo_length": 1.0}, {"hapo_length": {"flor": -0.5}})
    with pytest.raises(CredoError, match="rl.reward_term_params is set but rl.reward_terms is empty"):
        make_reward_mix({}, {"hapo_length": {}})
    assert make_reward_mix({"hapo_length": 1.0}, {"hapo_length": {"floor": -0.5}}).terms["hapo_length"].floor == -0.5


def test_validate_refuses_a_bad_term_before_any_model_loads():
    from credo.cli import resolve_config
    from credo.train.run import validate

    with pytest.raises(CredoError, match="unknown reward term"):
        validate(resolve_config("tiny", None, [("rl.reward_terms", '{"nope": 1.0}')]))


def test_the_catalog_lists_every_term():
    from credo.rewards.terms import CATALOG, REWARD_TERMS

    assert sorted(e.name for e in CATALOG) == sorted(REWARD_TERMS.names())
