"""VPR's state-group sampler (rollout/state_groups.py::VPRSampler) on the keyvalue task: the K candidates
of a state share exactly the committed history, only the candidate action is trainable, a max-oracle
candidate is committed and the environment's observation extends the episode, early ends fill the group
with untrainable copies, and in training the vpr estimator gets each candidate's oracle score, grouped
by state, with equal-score states masked."""

import sys
from pathlib import Path

import pytest

from credo.batch import build_batch
from credo.credit import CREDIT
from credo.credit.providers import CreditSources, StepContext
from credo.errors import CredoError
from credo.models import load_policy
from credo.rollout.base import SamplingParams
from credo.rollout.samplers import make_sampler
from credo.tasks import TASKS, make_task
from credo.tasks.base import Example
from credo.tasks.keyvalue import observation_text
from credo.train.credit_inputs import build_credit_inputs
from credo.train.evaluate import generate_groups

sys.path.insert(0, str(Path(__file__).parent))
from fixture_tasks import TalkativeParity, tiny_run  # noqa: E402
from scripted_engine import ScriptEngine  # noqa: E402

SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=16, stop=())
# chain a -> b -> 47 (depth 2); c is a distractor
EXAMPLE = Example("What is the value of the value of a?", "47", "",
                  {"table": {"a": "b", "b": "47", "c": "12"}, "chain": ["a", "b"], "depth": 2})


@pytest.fixture(scope="module")
def tok():
    return load_policy("tiny", seed=0).tokenizer


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_candidates_share_the_committed_history_and_the_best_one_advances(tok):
    task = make_task("keyvalue")
    script = [["<call>c</call>", "<call>a</call>", "oops"],            # truth 0, 1, -1: commit a
              ["<call>b</call>", "<call>b</call>", "<call>a</call>"],  # 1, 1, 0 (a repeated): commit one b
              ["<answer>47</answer>", "<answer>12</answer>", "<answer>47</answer>"]]
    engine = ScriptEngine(tok, script)
    prompt = _ids(tok, EXAMPLE.prompt)
    (group,) = make_sampler("vpr", {"candidates": 3, "turns": 3}).generate_multiturn(
        engine, tok, task, [EXAMPLE], [prompt], 9, SAMPLING, seed=0)
    assert len(group) == 9 and [c.meta["vpr_state"] for c in group] == [0] * 3 + [1] * 3 + [2] * 3
    assert [c.meta["turn_rewards"][0] for c in group] == [0.0, 1.0, -1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert [c.meta["turn_env_rewards"][0] for c in group] == [0.0, 0.1, -0.1, 0.1, 0.1, 0.0, 1.0, 0.0, 1.0]
    assert "</call>" in engine.calls[0][2].stop and "</answer>" in engine.calls[0][2].stop
    # depth 1 was sampled from: the committed "<call>a</call>" and the table's observation of a
    history1 = _ids(tok, "<call>a</call>") + _ids(tok, observation_text("b"))
    assert engine.calls[1][0] == [prompt + history1]
    assert group[1].meta["vpr_committed"] and sum(c.meta["vpr_committed"] for c in group[:3]) == 1
    committed1 = [j for j in range(3) if group[3 + j].meta["vpr_committed"]]
    assert committed1 in ([0], [1])  # one of the two max-score candidates
    history2 = history1 + _ids(tok, "<call>b</call>") + _ids(tok, observation_text("47"))
    assert engine.calls[2][0] == [prompt + history2]
    for d, history in enumerate([[], history1, history2]):
        keys = {c.meta["turn_keys"][0] for c in group[3 * d: 3 * d + 3]}
        assert len(keys) == 1 and len(next(iter(keys))) == d  # siblings share the state's observation history
        for c in group[3 * d: 3 * d + 3]:
            assert c.token_ids[:len(history)] == history  # exactly the committed tokens
            n_new = len(c.token_ids) - len(history)
            assert c.trainable == [False] * len(history) + [True] * n_new
            assert c.meta["turn_spans"] == [(len(history), len(history) + n_new)]
    # the transcript of the committed answer row is one the single-turn verifier accepts
    assert task.score(group[6].text, EXAMPLE).reward == 1.0 and task.score(group[7].text, EXAMPLE).reward == 0.0


def test_the_tie_break_is_seeded(tok):
    task = make_task("keyvalue")
    script = [["<call>a</call>"] * 4, ["<answer>47</answer>"] * 4]
    picks = set()
    for seed in range(8):
        engine = ScriptEngine(tok, script)
        (group,) = make_sampler("vpr", {"candidates": 4, "turns": 2}).generate_multiturn(
            engine, tok, task, [EXAMPLE], [_ids(tok, EXAMPLE.prompt)], 8, SAMPLING, seed=seed)
        pick = [j for j in range(4) if group[j].meta["vpr_committed"]]
        again = make_sampler("vpr", {"candidates": 4, "turns": 2}).generate_multiturn(
            ScriptEngine(tok, script), tok, task, [EXAMPLE], [_ids(tok, EXAMPLE.prompt)], 8, SAMPLING, seed=seed)[0]
        assert pick == [j for j in range(4) if again[j].meta["vpr_committed"]]
        picks.add(pick[0])
    assert len(picks) > 1  # uniform among the tied, not always the first


def test_an_episode_that_ends_early_fills_its_group_with_untrainable_copies(tok):
    task = make_task("keyvalue")
    engine = ScriptEngine(tok, [["<answer>47</answer>", "<answer>1</answer>"]])
    (group,) = make_sampler("vpr", {"candidates": 2, "turns": 3}).generate_multiturn(
        engine, tok, task, [EXAMPLE], [_ids(tok, EXAMPLE.prompt)], 6, SAMPLING, seed=0)
    assert len(engine.calls) == 1 and len(group) == 6
    assert [any(c.trainable) for c in group] == [True, True, False, False, False, False]
    assert all(c.meta.get("vpr_duplicate") for c in group[2:])


def test_in_training_the_vpr_estimator_reads_the_oracle_scores_per_state(tok):
    task = make_task("keyvalue")
    script = [["<call>c</call>", "<call>a</call>"],   # truth 0, 1 -> commit a
              ["<call>b</call>", "<call>b</call>"]]   # 1, 1 -> a flat state, masked
    engine = ScriptEngine(tok, script)
    (group,) = generate_groups(engine, tok, task, [EXAMPLE], [_ids(tok, EXAMPLE.prompt)], 4, SAMPLING, 0,
                               sampler=make_sampler("vpr", {"candidates": 2, "turns": 2}))
    batch = build_batch(group, [0.0] * 4, [0] * 4, pad_id=0)
    sources = CreditSources(model=None, tokenizer=tok, engine=None, task=task, sampling=SAMPLING, judge=None)
    ctx = StepContext(sources, batch, group, [EXAMPLE] * 4)
    credit = CREDIT.get("vpr")
    inputs = build_credit_inputs(ctx, credit, "vpr")
    assert inputs.step_rewards[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert inputs.step_keys[0] == inputs.step_keys[1] != inputs.step_keys[2] == inputs.step_keys[3]
    adv = credit(inputs)
    # state 0: r - mean = -0.5, +0.5; whitened over the batch's valid candidates (mean 0 of
    # [-0.5, 0.5, 0, 0], population std 0.5): -1, +1 (the official mean_then_batch_whiten)
    per_row = [adv[b][batch.loss_mask[b]].unique().tolist() for b in range(4)]
    assert per_row[0] == pytest.approx([-1.0], abs=1e-5) and per_row[1] == pytest.approx([1.0], abs=1e-5)
    from credo.credit.providers import loss_mask_of

    keep = loss_mask_of(credit)(inputs)
    assert keep[0].any() and keep[1].any() and not keep[2].any() and not keep[3].any()  # flat state masked


def test_validation_refuses_a_single_turn_task_and_wrong_group_size(tmp_path, capsys):
    from credo.cli import main

    base = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--rollout.sampler", "vpr", "--run.progress", "false"]
    with pytest.raises(CredoError, match="candidates x turns = 16 rows per prompt, but rl.group_size is 6"):
        make_sampler("vpr", {}).check(6, 16)
    with pytest.raises(CredoError, match="vpr oracle must be one of"):
        make_sampler("vpr", {"oracle": "judge"})
    assert main(base + ["--task.name", "arith", "--rl.group_size", "16"]) == 2
    assert "branches the states of multi-turn episodes, but task 'arith' is single-turn" in capsys.readouterr().err
    with pytest.raises(CredoError, match="needs a multi-turn task"):
        make_sampler("vpr", {}).generate(None, None, [], 16, SAMPLING, 0)


def test_a_tiny_run_with_the_vpr_sampler(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, "mt_parity", TalkativeParity)
    rl = tiny_run(tmp_path, "vpr", "--rl.credit", "vpr", "--rollout.sampler", "vpr",
                  "--rollout.sampler_params", '{"candidates": 2, "turns": 2, "oracle": "reward"}',
                  "--rl.group_size", "4", "--task.params", "{}", task="mt_parity")
    assert all(row.get("credit_nonfinite", 0.0) == 0.0 for row in rl)
    assert all(row["turns_mean"] == 1.0 for row in rl)  # every row is one candidate action (a normal rollout: > 1)
