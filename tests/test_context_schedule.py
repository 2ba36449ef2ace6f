"""QwenLong-L1's context-length phases and retrospective sampling (train/context_schedule.py): phases and
eligibility by hand, degenerate cases, the retrospective draw (deterministic, proportional), configuration
errors, training on the tiny preset, and a SIGKILL + resume that ends bit for bit like the uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.errors import CredoError
from credo.tasks.base import Score
from credo.tasks.knights import KnightsKnavesTask
from credo.train.context_schedule import (ContextSchedule, difficulty, first_phase, make_context_schedule,
                                          phase_index, phase_members, retro_count, retrospective_draw)
from credo.train.curriculum import make_curriculum

TESTS = Path(__file__).parent
LENGTHS = [5, 12, 8, 20, 3, 15, 30, 40]  # prompt tokens of ids 0..7; 40 is longer than every limit below
LEVELS = [8, 16, 32]


class KnightsParity(KnightsKnavesTask):
    """Knights puzzles (prompt lengths vary with the statements: 119-133 tokens at difficulty 2 with the
    SmolLM2 tokenizer) rewarded for odd-length completions, so even a random model gets mixed rewards and
    the per-prompt difficulties differ."""

    def score(self, completion, example):
        odd = len(completion) % 2 == 1
        return Score(reward=float(odd), correct=odd, formatted=True)


def test_phases_and_eligibility_by_hand():
    assert [phase_index(t, 7, 3) for t in range(7)] == [0, 0, 0, 1, 1, 2, 2]  # t * 3 // 7
    assert [first_phase(n, LEVELS) for n in LENGTHS] == [0, 1, 0, 2, 0, 1, 2, None]
    # the paper's bands L_{k-1} < |x| <= L_k: 5, 8, 3 | 12, 15 | 20, 30; 40 is never drawn
    assert [phase_members(LENGTHS, LEVELS, k) for k in range(3)] == [[0, 2, 4], [1, 5], [3, 6]]
    assert [phase_members(LENGTHS, LEVELS, k, include_shorter=True) for k in range(3)] == \
        [[0, 2, 4], [0, 1, 2, 4, 5], [0, 1, 2, 3, 4, 5, 6]]
    assert phase_members([8, 9], [8, 16], 0) == [0] and phase_members([8, 9], [8, 16], 1) == [1]  # 8 <= 8: phase 0
    sched = make_curriculum("context_length", {"levels": LEVELS}, steps=6, per_level=8)
    sched.bind(LENGTHS, "t")
    seen = {k: Counter() for k in range(3)}
    for step in range(6):
        ids = sched.prompt_ids(step, per_step=3, seed=0)
        k = sched.level_index(step)
        assert len(ids) == 3 and set(ids) <= set(phase_members(LENGTHS, LEVELS, k))
        assert sched.metrics(step) == {"curriculum_index": k, "context_limit": LEVELS[k], "retro_prompts": 0,
                                       "retro_pool": 0}
        seen[k].update(ids)
    assert seen[0] == Counter({0: 2, 2: 2, 4: 2})  # two steps of 3 = two epochs over the phase's 3 prompts
    assert sorted(seen[1].values()) == [3, 3] and sorted(seen[2].values()) == [3, 3]
    assert sched.prompt_ids(4, 3, seed=0) == sched.prompt_ids(4, 3, seed=0)  # a pure function of (state, step)


def test_degenerate_phases_and_errors():
    one = make_context_schedule({"levels": [32]}, steps=5)  # one phase: a plain length filter
    one.bind(LENGTHS, "t")
    assert {one.level_index(t) for t in range(5)} == {0}
    assert set(one.prompt_ids(3, 4, seed=1)) <= {0, 1, 2, 3, 4, 5, 6}
    too_short = make_context_schedule({"levels": [2]}, steps=5)
    with pytest.raises(CredoError, match=r"rl.curriculum_params.levels\[0\] = 2: no training prompt of task 'kk' "
                                         r"has 0 < length <= 2 tokens \(the 8 prompts have 3..40 tokens\)"):
        too_short.bind(LENGTHS, "kk")
    gap = make_context_schedule({"levels": [8, 10, 32]}, steps=5)  # nothing has 8 < length <= 10
    with pytest.raises(CredoError, match=r"levels\[1\] = 10: .* has 8 < length <= 10 tokens"):
        gap.bind(LENGTHS, "kk")
    make_context_schedule({"levels": [8, 10, 32], "include_shorter": True}, steps=5).bind(LENGTHS, "kk")  # fine
    for bad in ([16, 8], [8, 8], [0, 4], [4.5], [], "128", [True]):
        with pytest.raises(CredoError, match="rl.curriculum_params.levels: give increasing prompt-token limits"):
            make_context_schedule({"levels": bad}, steps=4)
    with pytest.raises(CredoError, match="needs rl.curriculum_params.levels"):
        make_curriculum("context_length", {}, steps=4, per_level=2)
    with pytest.raises(CredoError, match="unknown field\\(s\\) 'retro_rate'.*valid: levels, include_shorter"):
        make_context_schedule({"levels": [8], "retro_rate": 0.5}, steps=4)
    with pytest.raises(CredoError, match=r"retro_ratio must be in \(0, 1\), got 1.5"):
        make_context_schedule({"levels": [8], "retro_ratio": 1.5}, steps=4)
    with pytest.raises(CredoError, match="rl.curriculum_params.retrospective must be true or false"):
        make_context_schedule({"levels": [8], "retrospective": "yes"}, steps=4)


def test_difficulty_and_the_retrospective_pool():
    assert difficulty(0, 0) is None  # never sampled: no difficulty
    assert difficulty(4, 1) == 0.75 and difficulty(4, 4) == 0.0 and difficulty(3, 0) == 1.0
    assert [retro_count(4, r) for r in (0.1, 0.125, 0.25, 0.5, 0.9)] == [0, 1, 1, 2, 4]  # floor(r P + 1/2)
    sched = make_context_schedule({"levels": LEVELS, "retrospective": True, "retro_ratio": 0.5}, steps=6)
    sched.bind(LENGTHS, "t")
    # phase-0 prompt 0 solved 1 of 4 times, prompt 2 always; prompt 4 never sampled; phase-1 prompt 1 once
    sched.observe_rows([0, 0, 0, 0, 2, 2, 2, 2, 1], [1, 0, 0, 0, 1, 1, 1, 1, 0])
    assert sched.stats == {0: [4.0, 1.0], 2: [4.0, 4.0], 1: [1.0, 0.0]}
    assert sched.pool(0) == ([], []) and sched.pool(1) == ([0, 2], [0.75, 0.0])
    assert sched.pool(2) == ([0, 1, 2], [0.75, 1.0, 0.0])  # earlier phases: 0 and 1
    ids = sched.prompt_ids(2, per_step=4, seed=0)  # phase 1: 4 - 2 current, then 2 retrospective
    assert set(ids[:2]) <= {1, 5} and ids[2:] == [0, 0]  # only prompt 0 has weight: with replacement
    assert sched.metrics(2) == {"curriculum_index": 1, "context_limit": 16, "retro_prompts": 2, "retro_pool": 2}
    assert len(sched.prompt_ids(0, per_step=4, seed=0)) == 4 and sched.metrics(0)["retro_prompts"] == 0
    restored = make_context_schedule({"levels": LEVELS, "retrospective": True, "retro_ratio": 0.5}, steps=6)
    restored.bind(LENGTHS, "t")
    restored.load_state(json.loads(json.dumps(sched.state())))
    assert restored.stats == sched.stats
    assert [restored.prompt_ids(t, 4, seed=3) for t in range(6)] == [sched.prompt_ids(t, 4, seed=3) for t in range(6)]
    plain = make_context_schedule({"levels": LEVELS}, steps=6)  # retrospective off: nothing is counted
    plain.observe_rows([0, 1], [1, 0])
    assert plain.stats == {} and plain.state() == {"stats": {}}


def _frequencies(pool, weights, draws, seed=0):
    counts = Counter(i for step in range(draws) for i in retrospective_draw(step, 1, pool, weights, seed))
    return [counts[i] for i in pool]


def _assert_proportional(counts, probs, draws):
    for c, p in zip(counts, probs):  # each count is Binomial(draws, p): within 4.5 standard deviations
        assert abs(c - draws * p) <= 4.5 * math.sqrt(draws * p * (1 - p)) + 1e-9, (counts, probs)


def test_retrospective_draws_are_deterministic_and_proportional():
    pool, weights = [10, 11, 12, 13], [0.1, 0.2, 0.3, 0.4]
    assert retrospective_draw(7, 2, pool, weights, seed=5) == retrospective_draw(7, 2, pool, weights, seed=5)
    runs = {tuple(retrospective_draw(t, 2, pool, weights, seed=s)) for s in (0, 1) for t in range(10)}
    assert len(runs) > 3  # (seed, step) changes the draw
    draw = retrospective_draw(3, 3, pool, weights, seed=0)
    assert len(set(draw)) == 3 and set(draw) <= set(pool)  # enough positive weights: without replacement
    draws = 4000
    _assert_proportional(_frequencies(pool, weights, draws), [0.1, 0.2, 0.3, 0.4], draws)
    _assert_proportional(_frequencies(pool, [0.5] * 4, draws), [0.25] * 4, draws)  # all-equal: uniform
    _assert_proportional(_frequencies(pool, [0.0] * 4, draws), [0.25] * 4, draws)  # all solved: uniform
    counts = _frequencies(pool, [0.0, 0.0, 1.0, 3.0], draws)
    assert counts[:2] == [0, 0]  # a prompt always solved is never drawn while others are harder
    _assert_proportional(counts[2:], [0.25, 0.75], draws)
    assert retrospective_draw(0, 2, [], [], seed=0) == [] and retrospective_draw(0, 0, pool, weights, seed=0) == []


def test_validate_refuses_what_is_not_built():
    from credo.cli import resolve_config
    from credo.train.run import validate

    def cfg(params, *extra):
        return resolve_config("tiny", None, [("rl.curriculum", "context_length"),
                                             ("rl.curriculum_params", json.dumps(params)), *extra])

    validate(cfg({"levels": [124, 140], "retrospective": True}))
    with pytest.raises(CredoError, match="retro_ratio 0.1 x rl.prompts_per_step 4 gives 0 retrospective prompts"):
        validate(cfg({"levels": [124, 140], "retrospective": True, "retro_ratio": 0.1}))
    with pytest.raises(CredoError, match="retrospective with dist.strategy 'ddp' is not built"):
        validate(cfg({"levels": [124, 140], "retrospective": True}, ("dist.strategy", "ddp")))
    with pytest.raises(CredoError, match="rl.curriculum with rl.dynamic_sampling is not built yet"):
        validate(cfg({"levels": [124, 140]}, ("rl.dynamic_sampling", "true")))
    with pytest.raises(CredoError, match="rl.curriculum_params.levels: give increasing"):
        validate(cfg({"levels": [140, 124]}))


def test_a_context_length_curriculum_trains_on_the_tiny_preset(tmp_path, tiny_policy):
    from credo.cli import resolve_config
    from credo.tasks import make_task
    from credo.train.evaluate import encode_prompts
    from credo.train.run import train

    params = {"levels": [124, 140], "retrospective": True, "retro_ratio": 0.25}
    cfg = resolve_config("tiny", None, [("rl.curriculum", "context_length"),
                                        ("rl.curriculum_params", json.dumps(params)),
                                        ("task.name", "knights"), ("rl.steps", "4"), ("run.out_dir", str(tmp_path)),
                                        ("run.name", "c"), ("run.progress", "false"), ("run.eval_base", "false"),
                                        ("task.eval_size", "4"), ("warmup.steps", "1")])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["phase"] == "rl"]
    assert [r["context_limit"] for r in rl] == [124, 124, 140, 140]
    assert [r["curriculum_index"] for r in rl] == [0, 0, 1, 1]
    assert [r["retro_prompts"] for r in rl] == [0, 0, 1, 1]  # floor(0.25 x 4 + 1/2) = 1 from phase 1 on
    assert rl[2]["retro_pool"] > 0
    state = json.loads((tmp_path / "c" / "checkpoints" / "final" / "state.json").read_text())["curriculum"]
    task = make_task("knights", difficulty=2)
    prompts = task.examples("train", 4 * 4, seed=0)  # the run's list: rl.steps x prompts_per_step
    lengths = [len(p) for p in encode_prompts(tiny_policy.tokenizer, task, prompts)]
    assert sum(n for n, _ in state["stats"].values()) == 4 * 4 * 4  # every row of 4 steps x 4 prompts x G = 4
    # steps 0-1 drew only phase-0 prompts (<= 124 tokens): 8 prompts x 4 rows of them at least
    assert sum(n for i, (n, _) in state["stats"].items() if lengths[int(i)] <= 124) >= 8 * 4
    assert all(lengths[int(i)] <= 140 for i in state["stats"])


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _comparable(run_dir):
    from credo.train.logging import read_metrics

    timing = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_retrospective_counts_survive_a_sigkill_and_resume_bitwise(tmp_path):
    """The per-prompt counts are in every RL checkpoint (state.json "curriculum"), so a run killed in step 3's
    update and resumed draws the same retrospective prompts and ends with the same metrics and weights."""
    args = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "4", "--model.threads", "1",
            "--run.progress", "false", "--task.name", "test_context_schedule:KnightsParity", "--rl.lr", "0.01",
            "--task.eval_size", "4", "--run.eval_base", "false", "--warmup.steps", "0",
            "--rl.curriculum", "context_length", "--rl.curriculum_params",
            '{"levels": [124, 140], "retrospective": true, "retro_ratio": 0.25}', "--run.out_dir", str(tmp_path)]
    ref = _credo(args + ["--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    crashed = _credo(args + ["--run.name", "crash"], "update:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _credo(["--resume", str(tmp_path / "crash")])
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    assert _comparable(tmp_path / "crash") == _comparable(tmp_path / "ref")
    rl = [r for r in _comparable(tmp_path / "ref") if r["phase"] == "rl"]
    assert [r["retro_prompts"] for r in rl] == [0, 0, 1, 1]
    states = [json.loads((tmp_path / n / "checkpoints" / "final" / "state.json").read_text())["curriculum"]
              for n in ("ref", "crash")]
    assert states[0] == states[1]
    scores = [difficulty(n, c) for n, c in states[0]["stats"].values()]
    assert any(0.0 < d < 1.0 for d in scores)  # parity rewards: the difficulties really differ
    ref_w, got_w = (load_file(str(tmp_path / n / "checkpoints" / "final" / "model" / "model.safetensors"))
                    for n in ("ref", "crash"))
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
