"""DAPO's dynamic sampling with refill (select/dynamic_sampling.py) and the soft overlong
punishment as a config choice (rewards/length.py::overlong_shaping): hand-built scoring, seeded
refill prompts, and a tiny-preset run with both on."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from credo.rewards.length import overlong_shaping
from credo.select.dynamic_sampling import (DynamicSampling, ScoredGroup, refill_mixed_groups, refill_prompt_ids,
                                           regroup)


def group(pid, rewards):
    return ScoredGroup(example=f"ex{pid}", prompt_id=pid, completions=[f"c{pid}.{i}" for i in range(len(rewards))],
                       scores=[SimpleNamespace(reward=r) for r in rewards])


# hand-built scoring: prompt id -> its group's rewards (uniform: all equal)
REWARDS = {0: [1, 1, 1], 1: [0, 1, 0], 2: [0, 0, 0], 3: [1, 1, 1],  # the step's own prompts: one mixed
           10: [0, 0, 0], 11: [1, 0, 1],                            # round 1: one more mixed
           20: [0.5, 0.5, 0.5], 21: [0, 1, 1], 22: [1, 0, 0]}       # round 2: two more (one surplus)
ROUNDS = {1: [10, 11], 2: [20, 21, 22], 3: [30]}


def run(target, max_rounds):
    asked = []

    def more(round_, used):
        asked.append((round_, set(used)))
        return ROUNDS[round_]

    def generate_and_score(ids, round_):
        return [group(i, REWARDS.get(i, [0, 0, 0])) for i in ids]

    first = [group(i, REWARDS[i]) for i in range(4)]
    kept, metrics = refill_mixed_groups(first, generate_and_score, more, target=target, max_rounds=max_rounds)
    return kept, metrics, asked


def test_refill_until_the_batch_is_full_keeps_only_mixed_groups():
    kept, metrics, asked = run(target=3, max_rounds=5)
    assert [g.prompt_id for g in kept] == [1, 11, 21]  # in order; 22 is surplus, cut off
    assert all(len(set(g.rewards)) > 1 for g in kept)
    assert metrics == {"sampling_rounds": 3.0, "groups_discarded": 5.0, "groups_kept": 3.0}  # 0,2,3,10,20
    assert asked == [(1, {0, 1, 2, 3}), (2, {0, 1, 2, 3, 10, 11})]  # used prompts are passed on


def test_the_step_goes_on_with_what_it_has_when_the_rounds_run_out():
    kept, metrics, _ = run(target=4, max_rounds=1)
    assert [g.prompt_id for g in kept] == [1, 11]
    assert metrics == {"sampling_rounds": 2.0, "groups_discarded": 4.0, "groups_kept": 2.0}
    kept, metrics, asked = run(target=4, max_rounds=0)  # refill off: just the filter
    assert [g.prompt_id for g in kept] == [1] and metrics["sampling_rounds"] == 1.0 and asked == []


def test_no_refill_when_the_first_round_is_enough():
    kept, metrics, asked = run(target=1, max_rounds=5)
    assert [g.prompt_id for g in kept] == [1] and asked == [] and metrics["groups_discarded"] == 3.0


def test_refill_prompts_are_a_seeded_function_of_seed_step_round():
    a = refill_prompt_ids(0, 7, 1, 50, 4, {0, 1, 2, 3})
    assert a == refill_prompt_ids(0, 7, 1, 50, 4, {0, 1, 2, 3})  # resume draws the same prompts
    assert len(set(a)) == 4 and not set(a) & {0, 1, 2, 3}
    assert a != refill_prompt_ids(0, 7, 2, 50, 4, {0, 1, 2, 3}) or a != refill_prompt_ids(1, 7, 1, 50, 4, {0, 1, 2, 3})
    assert sorted(refill_prompt_ids(3, 0, 1, 5, 9, set(range(5)))) == [0, 1, 2, 3, 4]  # all used: any


def test_trainer_binding_regroups_refills_and_counts_errors():
    """DynamicSampling as rl_step calls it, with a fake rollout (no model): flat rows in, kept flat rows out."""
    prompts = [f"p{i}" for i in range(40)]
    calls = []

    def rollout(ctx, examples, ids, seed):
        calls.append((list(ids), seed))
        rows = [(g, r) for g, i in enumerate(ids) for r in ([0, 1] if i % 2 else [1, 1])]  # odd ids mixed
        return (examples, list(ids), [f"c{ids[g]}" for g, _ in rows], [SimpleNamespace(reward=r) for _, r in rows],
                [g for g, _ in rows], 1)

    ds = DynamicSampling(prompts, seed=0, max_rounds=4, rollout=rollout)
    ids = [0, 2, 4, 5]  # one mixed group (5)
    flat = rollout(None, [prompts[i] for i in ids], ids, 0)
    calls.clear()
    out = ds(None, 3, *flat)
    examples, prompt_ids, completions, scores, group_ids, errors = out.pop("batch")
    assert len(examples) == 4 and all(i % 2 == 1 for i in prompt_ids)  # only mixed groups, batch refilled
    assert [examples[g] for g in group_ids] == [prompts[prompt_ids[g]] for g in group_ids]
    assert group_ids == [g for g in range(4) for _ in range(2)]
    assert errors == 1 + len(calls)  # every round's verifier errors are counted
    assert out["groups_kept"] == 4 and out["sampling_rounds"] == 1 + len(calls)
    assert not {5} & set(sum((c[0] for c in calls), []))  # refill prompts exclude the step's own
    first_calls = list(calls)
    calls.clear()
    DynamicSampling(prompts, seed=0, max_rounds=4, rollout=rollout)(None, 3, *flat)
    assert calls == first_calls  # same (seed, step): same refill prompts and sampling seeds
    calls.clear()
    DynamicSampling(prompts, seed=0, max_rounds=4, rollout=rollout)(None, 4, *flat)
    assert calls != first_calls  # another step draws other prompts


def test_regroup_keeps_order_and_members():
    groups = regroup(["a", "b"], [7, 9], ["x", "y", "z"], [1, 2, 3], [1, 0, 1])
    assert [(g.prompt_id, g.completions) for g in groups] == [(7, ["y"]), (9, ["x", "z"])]


def test_overlong_shaping_hand_computed():
    # max 20, buffer 4: lengths 10 (no penalty), 18 (-0.5 * 2), 20 (-1 * 2)
    shaped, metrics = overlong_shaping(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([10, 18, 20]),
                                       max_length=20, cache_length=4, penalty_factor=2.0)
    assert shaped.tolist() == pytest.approx([1.0, 0.0, -2.0])
    assert metrics == pytest.approx({"overlong_penalty_mean": -1.0, "overlong_fraction": 2 / 3})


def test_tiny_run_with_dynamic_sampling_and_overlong_penalty(tmp_path, monkeypatch):
    from credo.cli import main
    from credo.tasks import TASKS
    from credo.train.logging import read_metrics

    sys.path.insert(0, str(Path(__file__).parent))
    from fixture_tasks import ParityTask

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    threads = torch.get_num_threads()
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", "dapo", "--run.progress",
            "false", "--rl.steps", "2", "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4",
            "--warmup.steps", "1", "--model.threads", "1", "--rl.dynamic_sampling", "true",
            "--rl.max_sampling_rounds", "2", "--rl.overlong_buffer", "4", "--rl.overlong_penalty_factor", "0.5"]
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    rl = [r for r in read_metrics(tmp_path / "dapo" / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:
        assert 1 <= row["sampling_rounds"] <= 3 and row["groups_kept"] <= 4
        assert row["groups_kept"] == 4 or row["sampling_rounds"] == 3  # full, or the rounds ran out
        # a random tiny model always runs to the limit, so every response gets the same penalty and the
        # kept (mixed) groups stay mixed after it
        assert row["truncation_rate"] == 1.0 and row["overlong_fraction"] == 1.0
        assert row["overlong_penalty_mean"] == pytest.approx(-0.5)
        if row["groups_kept"]:
            assert row["zero_variance_groups"] == 0.0  # only mixed groups were kept
            assert row["updates"] >= 1 and math.isfinite(row["loss"])
        # the penalty is added to the task reward (parity: reward = correct)
        assert -0.5 <= row["overlong_penalty_mean"] <= 0.0 and 0.0 <= row["overlong_fraction"] <= 1.0
        assert row["reward_mean"] == pytest.approx(row["accuracy"] + row["overlong_penalty_mean"], abs=1e-6)
        assert math.isfinite(row["refill_time"])


def test_overlong_buffer_longer_than_the_budget_is_a_config_error(tmp_path):
    from credo.cli import main

    assert main(["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--rl.overlong_buffer", "99"]) == 2


@pytest.mark.slow
def test_dynamic_sampling_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Refill prompts and sampling seeds are functions of (seed, step, round): a run killed mid-step
    and resumed gives the uninterrupted run's metrics and final weights bit for bit."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_resume import ARGS, _assert_same_final_weights, _comparable, _credo, _kill_then_resume

    args = ARGS + ["--rl.dynamic_sampling", "true", "--rl.max_sampling_rounds", "2", "--rl.overlong_buffer", "4"]
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_then_resume(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "rollout:3", tmp_path / "crash")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "refill_time"} for r in rows]  # noqa: E731
    reference = strip(_comparable(tmp_path / "ref"))
    assert strip(_comparable(tmp_path / "crash")) == reference
    assert any(r.get("sampling_rounds", 1) > 1 for r in reference)  # refill rounds really ran
    _assert_same_final_weights(tmp_path / "ref", tmp_path / "crash")
