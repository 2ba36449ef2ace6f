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
    with pytest.raises(CredoError, match="rl.reward_terms 'otc' counts tool calls, but task 'arith' has none"):
        validate(resolve_config("tiny", None, [("rl.reward_terms", '{"otc": 1.0}')]))


def test_the_catalog_lists_every_term():
    from credo.rewards.terms import CATALOG, REWARD_TERMS

    assert sorted(e.name for e in CATALOG) == sorted(REWARD_TERMS.names())


def test_otc_tool_reward_by_hand():
    from credo.rewards.terms import otc_tool_reward

    assert otc_tool_reward(0, 0) == 1.0 and otc_tool_reward(3, 3) == pytest.approx(1.0)
    assert otc_tool_reward(1, 0) == pytest.approx(math.cos(math.pi / 3))  # n unknown: cos(m pi / (2m + 1))
    assert otc_tool_reward(2, 0, c=2.0) == pytest.approx(math.cos(2 * math.pi / 6))
    assert otc_tool_reward(0, 2) == 0.0  # f = 0: no calls where calls were needed
    assert otc_tool_reward(2, 1) == pytest.approx(math.sin((4 / 3) * math.pi / 2))  # f = 2 * 1 * 2 / 3


def _tool_inputs(calls, correct, groups, keys):
    return TermInputs(["t"] * len(calls), [5] * len(calls), ["a"] * len(calls),
                      [Score(float(c), c, True) for c in correct], groups, keys, calls)


def test_otc_uses_the_group_and_the_problems_history():
    from credo.rewards.terms import OtcToolEfficiency

    term = OtcToolEfficiency()
    step1 = _tool_inputs([1, 2, 3], [True, True, False], [0, 0, 0], ["q", "q", "q"])
    assert term(step1) == pytest.approx([1.0, math.sin((4 / 3) * math.pi / 2), 0.0])  # n = 1; wrong -> 0
    term.commit(step1)
    assert term.best == {"q": 1}
    step2 = _tool_inputs([3, 2], [True, False], [0, 0], ["q", "q"])
    assert term(step2) == pytest.approx([math.sin(1.5 * math.pi / 2), 0.0])  # n = 1 from the history: f = 1.5
    no_history = OtcToolEfficiency(history=False)
    assert no_history(step2) == pytest.approx([1.0, 0.0])  # n = 3 from this group alone
    nobody = _tool_inputs([0, 2], [False, False], [0, 0], ["r", "r"])  # no correct rollout: all 0
    assert term(nobody) == [0.0, 0.0]
    mix = RewardMix({"otc": 1.0})
    rewards, metrics = mix(_inputs([("a", 4, 1.0, True, True, 0, "1")]))  # no tool counts: counted error
    assert rewards.tolist() == [0.0] and metrics["reward/otc_errors"] == 1.0


def test_otc_trains_on_keyvalue_and_keeps_its_history(tmp_path):
    import json

    from credo.cli import resolve_config
    from credo.train.run import train

    cfg = resolve_config("tiny", None, [("task.name", "keyvalue"), ("task.params", "{}"),
                                        ("rl.reward_terms", '{"otc": 1.0, "format": 0.1}'), ("rl.prompt_pool", "4"),
                                        ("rl.steps", "2"), ("run.out_dir", str(tmp_path)), ("run.name", "otc"),
                                        ("run.progress", "false")])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "otc" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["phase"] == "rl"]
    assert len(rl) == 2 and all("reward/otc" in r and "reward/format" in r for r in rl)
    state = json.loads((tmp_path / "otc" / "checkpoints" / "final" / "state.json").read_text())
    assert set(state["reward_terms"]) == {"otc"} and "best" in state["reward_terms"]["otc"]
