"""SLATE's truncated step-level sampler (rollout/samplers.py::SlateSampler): siblings share exactly their
prefix tokens, only the candidate step is trainable, the continuing candidate extends the prefix, early
ends fill the group with untrainable copies, and in training the judge scores each candidate in its
prefix's context and the slate estimator takes the score minus the siblings' mean."""

import sys
from pathlib import Path

import pytest

from credo.batch import build_batch
from credo.credit import CREDIT
from credo.credit.providers import CreditSources, StepContext
from credo.errors import CredoError
from credo.judges.synthetic import SyntheticJudge
from credo.models import load_policy
from credo.rollout.base import SamplingParams
from credo.rollout.samplers import make_sampler
from credo.tasks import make_task
from credo.tasks.base import Example
from credo.train.credit_inputs import build_credit_inputs

sys.path.insert(0, str(Path(__file__).parent))
from scripted_engine import ScriptEngine  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return load_policy("tiny", seed=0).tokenizer


SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=40, stop=("</answer>",))


def test_siblings_share_their_prefix_and_only_the_candidate_is_trained(tok):
    engine = ScriptEngine(tok, [["20+40=60\n", "20+40=61\n", "<answer>68</answer>"], ["3+5=8\n", "3+5=9\n", "3+5=7\n"]])
    sampler = make_sampler("slate", {"siblings": 3, "depth": 2})
    prompt = tok.encode("What is 23+45?", add_special_tokens=False)
    (group,) = sampler.generate(engine, tok, [prompt], 6, SAMPLING, seed=0)
    assert len(group) == 6 and [c.meta["slate_depth"] for c in group] == [0, 0, 0, 1, 1, 1]
    assert "\n" in engine.calls[0][2].stop and "</answer>" in engine.calls[0][2].stop
    first = [tok.encode(t, add_special_tokens=False) for t in ("20+40=60\n", "20+40=61\n")]
    prefix = engine.calls[1][0][0][len(prompt):]  # what depth 1 was sampled from
    assert prefix in first  # an unfinished candidate continued (the answer had ended)
    for c in group[:3]:
        assert all(c.trainable) and c.meta["judge_context"] == []
    for c in group[3:]:
        assert c.token_ids[:len(prefix)] == prefix  # siblings share their prefix exactly
        assert c.trainable == [False] * len(prefix) + [True] * (len(c.token_ids) - len(prefix))
        assert c.meta["judge_context"] == [tok.decode(prefix)]
    keys = [c.meta["step_keys"][0] for c in group]
    assert len(set(keys[:3])) == 1 and len(set(keys[3:])) == 1 and keys[0] != keys[3]


def test_a_trajectory_that_ends_early_fills_its_group_with_untrainable_copies(tok):
    engine = ScriptEngine(tok, [["<answer>1</answer>", "<answer>2</answer>"]])
    (group,) = make_sampler("slate", {"siblings": 2, "depth": 3}).generate(
        engine, tok, [tok.encode("q", add_special_tokens=False)], 6, SAMPLING, seed=0)
    assert len(engine.calls) == 1 and len(group) == 6
    assert [any(c.trainable) for c in group] == [True, True, False, False, False, False]
    assert all(c.meta.get("slate_duplicate") for c in group[2:])


def test_group_size_must_match(tok):
    with pytest.raises(CredoError, match=r"siblings x depth = 8 rows per prompt, but rl.group_size is 6"):
        make_sampler("slate", {}).check(6, 40)
    with pytest.raises(CredoError, match="slate siblings must be an integer >= 1"):
        make_sampler("slate", {"siblings": 0})


def test_in_training_each_candidate_is_judged_in_context_against_its_siblings(tok):
    # depth 0: one right and one wrong first step; depth 1 from the chosen prefix: right, wrong
    engine = ScriptEngine(tok, [["20+40=60\n", "20+40=61\n"], ["3+5=8\n", "3+5=9\n"]])
    prompt = tok.encode("What is 23+45?", add_special_tokens=False)
    (group,) = make_sampler("slate", {"siblings": 2, "depth": 2}).generate(engine, tok, [prompt], 4, SAMPLING, seed=0)
    batch = build_batch(group, [0.0] * 4, [0] * 4, pad_id=0)
    task = make_task("arith")
    sources = CreditSources(model=None, tokenizer=tok, engine=None, task=task, sampling=SAMPLING,
                            judge=SyntheticJudge())
    ex = Example("What is 23+45?", "68", "", {})
    ctx = StepContext(sources, batch, group, [ex] * 4)
    credit = CREDIT.get("slate")
    inputs = build_credit_inputs(ctx, credit, "slate")
    # each row has exactly one trainable step; the judge (calculator truth, no noise) scored it in context
    assert inputs.step_rewards[:, 0].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert sources.counters["judge_calls"] == 2 + 2 * 2  # depth-1 rows also judged their context step
    adv = credit(inputs)
    per_row = [float(adv[b][batch.loss_mask[b]].unique()) for b in range(4)]
    assert per_row == [1.0, -1.0, 1.0, -1.0]  # score - mean of its two siblings (0)
    assert not batch.loss_mask[2, :len(prompt) + len(engine.calls[1][0][0]) - len(prompt)].any()


def test_a_tiny_run_with_the_slate_sampler(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from credo.tasks import TASKS

    sys.path.insert(0, str(Path(__file__).parent))
    from fixture_tasks import ParityTask, tiny_run

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    rl = tiny_run(tmp_path, "slate", "--rl.credit", "slate", "--rollout.sampler", "slate",
                  "--rollout.sampler_params", '{"siblings": 2, "depth": 2}', "--rl.group_size", "4")
    assert all(row.get("credit_nonfinite", 0.0) == 0.0 for row in rl)
