"""TAROT (train/tarot.py) and the code task's graded suites (tasks/code.py, tiers = true): the tiers, the
per-tier pass fractions in the sandbox, the weight schedules by hand, the capability-adaptive choice,
configuration errors, a tiny training run with hand-computed rewards, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from credo.dist.env import SINGLE
from credo.errors import CredoError
from credo.rewards.code import extract_code
from credo.tasks.base import Score
from credo.tasks.code import FAMILIES, TIERS, CodeTask, _example, _key, tier_fractions
from credo.train.logging import read_metrics
from credo.train.tarot import (TarotCurriculum, choose_policy, make_tarot, stage_of, tier_reward, tier_weights)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from tarot_engine import ScriptedCodeEngine, patch  # noqa: E402


def _family(name):
    return next(f for f in FAMILIES if f.name == name)


def _by_tier(example):
    out = {t: [] for t in TIERS}
    for (args, _), tier in zip(example.meta["cases"], example.meta["tiers"]):
        out[tier].append(args)
    return out


def _size(args):
    return sum(len(a) if isinstance(a, (list, str)) else abs(a) for a in args)


# -- the graded suites -----------------------------------------------------------------------------

def test_edge_cases_are_the_boundary_values_and_typical_tiers_hold_none():
    for family in FAMILIES:
        for params in family.params:
            tiers = _by_tier(_example(family, params, cases=5, tiers=True))
            edges = tiers["edge"]
            first = [a[0] for a in edges]
            if family.signature == "xs":  # the empty list, or a one-element one where the list must be non-empty
                assert ([] in first) != (family.name == "max_plus"), family.name
                assert any(len(x) == 1 for x in first), family.name
            elif family.signature == "s":
                assert "" in first and any(len(x) == 1 for x in first), family.name
            else:  # scalars: zero (a positive n: 1)
                assert (0 if family.name != "count_steps" else 1) in first, family.name
            for tier in TIERS[:3]:
                assert len(tiers[tier]) == 5
                for args in tiers[tier]:
                    assert args not in edges, (family.name, params, tier, args)
                    value = args[0]
                    if isinstance(value, (list, str)):
                        assert len(value) >= 2, (family.name, tier, args)
    # the parameters' own boundaries: x = k for mod, the two clip bounds and their neighbours
    assert {(3,), (2,)} <= {tuple(a) for a in _by_tier(_example(_family("mod"), {"k": 3}, 5, tiers=True))["edge"]}
    clip = _by_tier(_example(_family("clip"), {"a": -2, "b": 10}, 5, tiers=True))["edge"]
    assert [a[0] for a in clip] == [-2, 10, -3, 11, 0]


def test_tiers_grow_in_size_and_are_seeded_by_the_problem():
    for family in FAMILIES:
        params = family.params[0]
        tiers = _by_tier(_example(family, params, cases=5, tiers=True))
        means = [sum(map(_size, tiers[t])) / len(tiers[t]) for t in TIERS[:3]]
        assert means[0] < means[1] < means[2], (family.name, means)
    task = CodeTask(tiers=True)
    a = task.examples("train", 30, seed=0)
    b = task.examples("train", 30, seed=7)
    by_prompt = {e.prompt: e for e in b}
    assert a == task.examples("train", 30, seed=0)
    for e in a:  # the sampling seed orders the problems; a problem's suite is a function of its key alone
        if e.prompt in by_prompt:
            assert e.meta == by_prompt[e.prompt].meta
    # each random tier is its own generator seeded by (problem key, tier): independent of `cases`
    family, params = _family("sum_over"), {"k": 3}
    rng = random.Random(f"{_key(family, params)}:complex")
    want = [list(family.sized(rng, 3)) for _ in range(5)]
    assert _by_tier(_example(family, params, cases=5, tiers=True))["complex"] == want
    assert _by_tier(_example(family, params, cases=2, tiers=True))["complex"] == want[:2]


def test_the_flat_cases_are_unchanged_without_tiers():
    family, params = _family("add"), {"k": 3}
    example = _example(family, params, cases=4)
    rng = random.Random(_key(family, params))
    args = [list(family.inputs(rng)) for _ in range(4)]
    assert example.meta["cases"] == [[a, a[0] + 3] for a in args] and "tiers" not in example.meta
    assert CodeTask().score(example.demonstration, example) == Score(1.0, True, True, "ok")  # meta None


def test_every_reference_solution_passes_its_graded_suite():
    for family in FAMILIES:
        for params in family.params:
            example = _example(family, params, cases=5, tiers=True)
            space: dict = {}
            exec(extract_code(example.demonstration), space)
            for args, want in example.meta["cases"]:
                assert json.dumps(space["solve"](*args)) == json.dumps(want), (family.name, params, args)


# -- per-tier pass fractions in the sandbox ---------------------------------------------------------

FIB = ("a, b = 0, 1\n    for _ in range(n):\n        a, b = b, (a + b) % 7\n    return a % 7")


@pytest.mark.parametrize("guard, fractions", [
    ("n < 3", {"basic": 1.0, "intermediate": 1.0, "complex": 1.0, "edge": 0.0}),   # fails the edge cases only
    ("n > 60", {"basic": 1.0, "intermediate": 1.0, "complex": 0.0, "edge": 1.0}),  # fails the complex tier only
    ("n > 10", {"basic": 1.0, "intermediate": 0.0, "complex": 0.0, "edge": 1.0}),
    ("False", {"basic": 1.0, "intermediate": 1.0, "complex": 1.0, "edge": 1.0}),
])
def test_per_tier_pass_fractions_of_hand_written_programs(guard, fractions):
    # fib_mod's tiers by hand: basic n in 3..10, intermediate 11..60, complex 61..400, edge n = 0, 1, 2
    example = _example(_family("fib_mod"), {"k": 7}, cases=5, tiers=True)
    program = f"```python\ndef solve(n):\n    if {guard}:\n        return -1\n    {FIB}\n```"
    score = CodeTask(tiers=True).score(program, example)
    assert score.meta == {"tiers": fractions}
    assert score.correct == (guard == "False") and score.reward == float(guard == "False")
    assert score.outcome == ("ok" if guard == "False" else "wrong")
    partial = CodeTask(tiers=True, partial_credit=True).score(program, example)
    n_cases = {"basic": 5, "intermediate": 5, "complex": 5, "edge": 3}
    assert partial.reward == pytest.approx(sum(fractions[t] * n_cases[t] for t in TIERS) / 18)


def test_failures_of_the_whole_run_fail_every_tier():
    example = _example(_family("fib_mod"), {"k": 7}, cases=2, tiers=True)
    zero = {"tiers": dict.fromkeys(TIERS, 0.0)}
    task = CodeTask(tiers=True, wall_time_s=1.0)
    assert task.score("no program here", example) == Score(0.0, False, False, "wrong", zero)
    for program, outcome in (("while True:\n    pass", "timeout"), ("raise ValueError('x')", "crash"),
                             ("print('x 9 9 111111111')\ndef solve(n):\n    return -1", "wrong"),  # forged, no nonce
                             ("import sys\nsys.exit(0)", "wrong")):
        score = task.score(f"```python\n{program}\n```", example)
        assert (score.outcome, score.meta, score.reward) == (outcome, zero, 0.0), program
    assert tier_fractions("", []) == dict.fromkeys(TIERS, 0.0)
    assert tier_fractions("1011", ["basic", "basic", "complex", "edge"]) == \
        {"basic": 0.5, "intermediate": 0.0, "complex": 1.0, "edge": 1.0}


# -- the schedules and the choice ----------------------------------------------------------------

def test_weight_schedules_by_hand():
    w = {"basic": 0.15, "intermediate": 0.15, "complex": 0.35, "edge": 0.35}
    # 10 steps, boundaries 0.2 / 0.4 / 0.6: stages 0 0 1 1 2 2 3 3 3 3
    assert [stage_of(t, 10) for t in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    easy = [tier_weights(t, steps=10, policy="easy_to_hard") for t in (0, 2, 5, 6, 9)]
    assert easy == [{"basic": 0.15, "intermediate": 0.0, "complex": 0.0, "edge": 0.0},
                    {"basic": 0.15, "intermediate": 0.15, "complex": 0.0, "edge": 0.0},
                    {"basic": 0.15, "intermediate": 0.15, "complex": 0.35, "edge": 0.0}, w, w]
    hard = [tier_weights(t, steps=10, policy="hard_first") for t in (1, 3, 4, 7)]
    assert hard == [{"basic": 0.0, "intermediate": 0.0, "complex": 0.35, "edge": 0.0},
                    {"basic": 0.0, "intermediate": 0.0, "complex": 0.35, "edge": 0.35},
                    {"basic": 0.0, "intermediate": 0.15, "complex": 0.35, "edge": 0.35}, w]
    # custom boundaries and uniform weights (the repository's uni.py): 4 steps reach stage 2 only
    uni = dict.fromkeys(TIERS, 0.25)
    cur = make_tarot({"policy": "hard_first", "weights": uni, "boundaries": [0.5, 0.75, 1.0]}, steps=4)
    assert [cur.metrics(t)["curriculum_stage"] for t in range(4)] == [0.0, 0.0, 1.0, 2.0]
    assert cur.weights_at(3) == {"basic": 0.0, "intermediate": 0.25, "complex": 0.25, "edge": 0.25}
    # r = sum_tier w_tier p_tier, not renormalised over the active tiers
    p = {"basic": 1.0, "intermediate": 0.5, "complex": 0.2, "edge": 0.0}
    assert tier_reward(p, tier_weights(4, steps=10, policy="easy_to_hard")) == pytest.approx(0.15 + 0.075 + 0.07)
    assert tier_reward(p, tier_weights(0, steps=10, policy="hard_first")) == pytest.approx(0.07)


def test_tier_rewards_replace_the_task_reward_and_log_the_tier_pass_rates():
    cur = make_tarot({"policy": "easy_to_hard"}, steps=10)
    scores = [Score(1.0, True, True, "ok", {"tiers": dict.fromkeys(TIERS, 1.0)}),
              Score(0.0, False, True, "wrong", {"tiers": {"basic": 1.0, "intermediate": 0.4, "complex": 0.0,
                                                          "edge": 0.0}}),
              Score(-0.5, False, True, "sandbox_error", None)]  # not the program's fault: keeps error_reward
    out, metrics = cur.tier_rewards(2, scores)  # stage 1: basic 0.15, intermediate 0.15
    assert [s.reward for s in out] == pytest.approx([0.3, 0.15 + 0.06, -0.5])
    assert [(s.correct, s.outcome) for s in out] == [(True, "ok"), (False, "wrong"), (False, "sandbox_error")]
    assert metrics == pytest.approx({"reward/tier_basic": 1.0, "reward/tier_intermediate": 0.7,
                                     "reward/tier_complex": 0.5, "reward/tier_edge": 0.5})
    assert cur.tier_rewards(2, scores[2:]) == (scores[2:], {})


def _fake_run(summary, **extra):
    cfg = SimpleNamespace(run=SimpleNamespace(seed=0), task=SimpleNamespace(eval_batch_size=16))
    return SimpleNamespace(world=SINGLE, summary=summary, cfg=cfg, **extra)


def test_the_auto_choice_on_both_sides_of_the_threshold(capsys):
    assert choose_policy(0.49) == "easy_to_hard" and choose_policy(0.5) == "hard_first"
    assert choose_policy(0.2, threshold=0.1) == "hard_first" and choose_policy(0.0, threshold=0.0) == "hard_first"
    low, high = make_tarot({}, steps=4), make_tarot({"threshold": 0.3}, steps=4)
    low.begin(_fake_run({"base": {"accuracy": 0.9}, "warmup": {"accuracy": 0.25}}), None)  # the policy RL starts from
    high.begin(_fake_run({"base": {"accuracy": 0.4}}), None)  # no warm-up: the base evaluation
    assert (low.chosen, low.measured, high.chosen, high.measured) == ("easy_to_hard", 0.25, "hard_first", 0.4)
    assert low.metrics(0)["curriculum_hard_first"] == 0.0 and high.metrics(0)["curriculum_hard_first"] == 1.0
    assert "25.0% (held-out after warm-up) < threshold 50.0%: easy_to_hard" in capsys.readouterr().out
    fixed = make_tarot({"policy": "hard_first"}, steps=4)
    fixed.begin(None, None)  # a fixed policy measures nothing
    assert (fixed.chosen, fixed.measured, fixed.state()) == ("hard_first", None, {"chosen": "hard_first",
                                                                                  "measured": None})
    restored = make_tarot({}, steps=4)
    restored.load_state(json.loads(json.dumps(low.state())))
    assert (restored.chosen, restored.measured) == ("easy_to_hard", 0.25)
    with pytest.raises(CredoError, match="no policy chosen yet"):
        make_tarot({}, steps=4).weights_at(0)


def test_the_train_probe_measures_greedy_pass_rates():
    from credo.models import load_policy
    from credo.rollout.base import SamplingParams

    tok = load_policy("tiny", seed=0).tokenizer
    task = CodeTask(tiers=True)
    run = _fake_run({"warmup": {"accuracy": 0.0}}, task=task, tokenizer=tok, engine=ScriptedCodeEngine(tok),
                    sampling=SamplingParams(max_new_tokens=8))
    cur = make_tarot({"capability": "train", "probe_size": 3}, steps=4)
    cur.begin(run, None)  # greedy = the engine's first program, the reference: every probe problem passes
    assert (cur.chosen, cur.measured) == ("hard_first", 1.0)


def test_configuration_errors():
    from credo.cli import resolve_config
    from credo.train.run import validate

    base = [("task.name", "code"), ("task.params", '{"tiers": true}'), ("rl.curriculum", "tarot")]
    validate(resolve_config("tiny", None, base))
    for overrides, message in (
            ([("task.params", "{}")], "needs task.name \"code\" with task.params.tiers = true"),
            ([("task.name", "arith"), ("task.params", "{}")], "needs task.name \"code\""),
            ([("rl.curriculum_params", '{"policy": "hardest"}')], "policy: unknown 'hardest'"),
            ([("rl.curriculum_params", '{"threshold": 1.5}')], "threshold must be a number in"),
            ([("rl.curriculum_params", '{"weights": {"basic": 1.0}}')], "weights: give a non-negative number"),
            ([("rl.curriculum_params", '{"boundaries": [0.5, 0.2, 0.6]}')], "boundaries: give three increasing"),
            ([("rl.curriculum_params", '{"capability": "oracle"}')], "capability: unknown 'oracle'"),
            ([("rl.curriculum_params", '{"levels": [1, 2]}')], "unexpected keyword argument 'levels'"),
            ([("rl.dynamic_sampling", "true")], "tarot\" with rl.dynamic_sampling is not built yet"),
            ([("task.params", '{"tiers": "yes"}')], "needs task.name"),
    ):
        with pytest.raises(CredoError, match=message):
            validate(resolve_config("tiny", None, base + overrides))
    with pytest.raises(CredoError, match="tiers must be true or false"):
        CodeTask(tiers=1)
    from credo.catalog import curriculum_entries

    assert [e.status for e in curriculum_entries() if e.name == "tarot"] == ["reconstructed"]


# -- training on the tiny preset -----------------------------------------------------------------

RUN = [("task.name", "code"), ("task.params", '{"tiers": true}'), ("rl.curriculum", "tarot"), ("rl.steps", "4"),
       ("warmup.steps", "1"), ("task.eval_size", "4"), ("run.eval_base", "false"), ("model.threads", "1"),
       ("run.progress", "false")]
# hard_first (the scripted engine's greedy answer is the reference: warm-up held-out accuracy 1.0 >= 0.5);
# 4 steps: stages 0 1 2 3. Each group: reference, fails edge, fails complex, no program.
HAND_REWARDS = [(0.35 + 0.35) / 4, (0.7 + 0.35 + 0.35) / 4, (0.85 + 0.5 + 0.5) / 4, (1.0 + 0.65 + 0.65) / 4]
HAND_WEIGHTS = [(0.0, 0.0, 0.35, 0.0), (0.0, 0.0, 0.35, 0.35), (0.0, 0.15, 0.35, 0.35), (0.15, 0.15, 0.35, 0.35)]


def test_a_tiny_code_run_trains_on_the_tier_weighted_rewards(tmp_path, monkeypatch):
    from credo.cli import resolve_config
    from credo.train.run import train

    patch(monkeypatch)
    summary = train(resolve_config("tiny", None, RUN + [("run.out_dir", str(tmp_path)), ("run.name", "t")]))
    assert summary["warmup"]["accuracy"] == 1.0 and summary["rl"]["accuracy"] == 1.0
    rl = [r for r in read_metrics(tmp_path / "t" / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 4
    assert [r["reward_mean"] for r in rl] == pytest.approx(HAND_REWARDS)
    assert [tuple(r[f"curriculum_w_{t}"] for t in TIERS) for r in rl] == HAND_WEIGHTS
    assert [r["curriculum_stage"] for r in rl] == [0.0, 1.0, 2.0, 3.0]
    for r in rl:
        assert (r["curriculum_hard_first"], r["curriculum_capability"], r["accuracy"]) == (1.0, 1.0, 0.25)
        assert [r[f"reward/tier_{t}"] for t in TIERS] == pytest.approx([0.75, 0.75, 0.5, 0.5])
        assert r["updates"] >= 1 and r["sandbox_ok"] == 4 and r["sandbox_wrong"] == 12
    state = json.loads((tmp_path / "t" / "checkpoints" / "final" / "state.json").read_text())
    assert state["curriculum"] == {"chosen": "hard_first", "measured": 1.0}


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    code = "import sys, tarot_engine; sys.exit(tarot_engine.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "train", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_tarot_survives_a_sigkill_and_resumes_bitwise(tmp_path):
    """The chosen policy and its pass rate are in every RL checkpoint: the resumed run does not measure
    again and ends with the uninterrupted run's metrics and weights."""
    args = [a for k, v in RUN for a in (f"--{k}", v)] + ["--run.checkpoint_every", "1", "--rl.lr", "0.01",
                                                         "--rl.prompts_per_step", "2"]  # (half the sandbox runs)
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "TAROT starting pass rate 100.0% (held-out after warm-up) >= threshold 50.0%: hard_first" in ref.stdout
    crashed = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "update:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _credo(["--resume", str(tmp_path / "crash")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "TAROT starting pass rate" not in resumed.stdout
    timing = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / n / "metrics.jsonl")]
            for n in ("ref", "crash")]
    assert rows[0] == rows[1]
    assert [r["reward_mean"] for r in rows[0] if r["phase"] == "rl"] == pytest.approx(HAND_REWARDS)
    states = [json.loads((tmp_path / n / "checkpoints" / "final" / "state.json").read_text()) for n in ("ref", "crash")]
    assert states[0]["curriculum"] == states[1]["curriculum"] == {"chosen": "hard_first", "measured": 1.0}
    weights = [load_file(str(tmp_path / n / "checkpoints" / "final" / "model" / "model.safetensors"))
               for n in ("ref", "crash")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    warm = load_file(str(tmp_path / "ref" / "checkpoints" / "warmup" / "model" / "model.safetensors"))
    assert any(not torch.equal(warm[k], weights[0][k]) for k in warm)  # RL did move the weights
