"""The outcome reward model (judges/orm.py, `credo train-rm`): the Bradley-Terry loss by hand and equal
to TRL's formula, batched rewards = one-by-one, save / load, the pairs file's errors, training that
learns a separable preference, the reward-model scorer, and `rl.reward_model` on a JSONL task without
reference answers in a tiny run."""

import json
import math

import pytest
import torch

from credo.cli import main
from credo.errors import CredoError
from credo.judges.orm import OutcomeRewardModel, RewardModelScorer, bradley_terry_loss
from credo.judges.train_orm import PreferencePair, RMTrainSettings, pairwise_accuracy, read_pairs, train_rm
from credo.models import load_policy
from credo.tasks import make_task
from credo.tasks.base import Example
from credo.train.logging import read_metrics


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", seed=0)


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])
    softplus = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)  # noqa: E731
    expected = (softplus(1.0) + softplus(0.0) + softplus(-1.0)) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, abs=1e-6)
    margin = torch.tensor([0.5, 0.0, 1.0])
    with_margin = (softplus(0.5) + softplus(0.0) + softplus(-2.0)) / 3
    assert float(bradley_terry_loss(chosen, rejected, margin=margin)) == pytest.approx(with_margin, abs=1e-6)
    centred = with_margin + 0.01 * (1.0 + 0.0 + 25.0) / 3  # + c mean((r_c + r_r)^2), TRL's centring term
    assert float(bradley_terry_loss(chosen, rejected, margin=margin, center_coef=0.01)) == pytest.approx(centred, abs=1e-6)


def test_batched_rewards_equal_one_by_one_and_survive_save_load(tiny, tmp_path):
    rm = OutcomeRewardModel(tiny.model, tiny.tokenizer).eval()
    pairs = [("What is 2+3?", "<answer>5</answer>"), ("What is 12*12?", "a much longer response " * 5), ("x", "")]
    with torch.no_grad():
        batched = rm.rewards(pairs, batch_size=3)
        single = torch.cat([rm.rewards([p]) for p in pairs])
    assert torch.allclose(batched, single, atol=1e-5)
    with torch.no_grad():
        rm.head.bias.fill_(0.25)  # a non-default head must come back
        before = rm.rewards(pairs)
    rm.save(tmp_path / "rm", note="test")
    loaded = OutcomeRewardModel.load(tmp_path / "rm")
    with torch.no_grad():
        assert torch.allclose(loaded.rewards(pairs), before, atol=1e-5)
    assert loaded.meta["note"] == "test"
    assert loaded.encode("p", "r" * 5000)[-1] == tiny.tokenizer.eos_token_id  # cut to max_tokens, EOS kept
    assert len(loaded.encode("p", "r " * 5000)) == loaded.max_tokens


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(CredoError, match="has no orm.json"):
        OutcomeRewardModel.load(tmp_path)
    (tmp_path / "orm.json").write_text('{"format": "other"}')
    with pytest.raises(CredoError, match="field 'format' must be 'credo-orm-1'"):
        OutcomeRewardModel.load(tmp_path)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "a"}', r"pairs.jsonl:2: field 'rejected' must be a non-empty string"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "1"}', r"pairs.jsonl:2: field 'margin' must be a finite number"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "split": "dev"}', r"pairs.jsonl:2: field 'split' must be 'train' or 'test'"),
    ("[1, 2]", r"pairs.jsonl:2: expected a JSON object"),
    ("{oops", r"pairs.jsonl:2: invalid JSON"),
])
def test_pairs_file_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "split": "train"}\n' + line + "\n")
    with pytest.raises(CredoError, match=message):
        read_pairs(path)


def _separable(n, seed):
    """Pairs where the chosen response says 'good' and the rejected one 'bad'."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        out.append(PreferencePair(f"What is {a}+{b}?", f"good {a + b}", f"bad {a + b + rng.randint(1, 3)}"))
    return out


def test_training_learns_a_separable_preference(tiny):
    rm = OutcomeRewardModel(load_policy("tiny", seed=1).model, tiny.tokenizer)
    test = _separable(32, seed=1)
    before = pairwise_accuracy(rm, test)
    metrics = train_rm(rm, _separable(128, seed=0), test,
                       RMTrainSettings(steps=40, batch_size=16, lr=1e-3, head_lr=1e-2, bf16=False, eval_every=40),
                       log=lambda s: None)
    after = metrics["accuracy"][-1][1]
    assert after == 1.0 and after > before, (before, after)
    assert metrics["loss"][-1] < metrics["loss"][0]


def test_scorer_gives_the_models_reward_and_the_tasks_verdict(tiny):
    rm = OutcomeRewardModel(tiny.model, tiny.tokenizer).eval().requires_grad_(False)
    task = make_task("arith")
    ex = Example("What is 2+3?", "5", "<answer>5</answer>", {})
    scorer = RewardModelScorer(rm, task)
    texts = ["<answer>5</answer>", "<answer>6</answer>", "no tag"]
    got = scorer.score([(t, ex) for t in texts])
    with torch.no_grad():
        expected = rm.rewards([(ex.prompt, t) for t in texts]).tolist()
    assert [s.reward for s, _ in got] == pytest.approx(expected, abs=1e-5)
    assert [(s.correct, s.formatted) for s, _ in got] == [(True, True), (False, True), (False, False)]
    assert scorer.metrics() == {"reward_model_calls": 3.0, "reward_model_seconds": pytest.approx(scorer.seconds, abs=10)}
    assert scorer.metrics()["reward_model_calls"] == 0.0  # reset after reading


def _no_answer_jsonl(path):
    rows = [{"prompt": f"Say a number bigger than {i}.", "split": "train" if i % 4 else "test"} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _run_args(tmp_path, data, *extra):
    return ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.progress", "false", "--rl.steps", "2",
            "--run.eval_base", "false", "--task.name", "jsonl", "--task.params",
            json.dumps({"path": str(data), "answer_field": None}), "--task.eval_size", "4", "--model.threads", "1", *extra]


def test_a_jsonl_task_without_answers_trains_on_the_reward_model(tiny, tmp_path):
    rm = OutcomeRewardModel(tiny.model, tiny.tokenizer)
    with torch.no_grad():
        rm.head.weight.normal_(0, 1.0)  # a head that spreads the rewards (the run's groups are not flat)
    rm.save(tmp_path / "rm")
    data = _no_answer_jsonl(tmp_path / "rows.jsonl")
    assert main(_run_args(tmp_path, data, "--warmup.steps", "0", "--rl.reward_model", f"rm:{tmp_path / 'rm'}",
                          "--run.name", "run")) == 0
    rl = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:
        assert row["reward_model_calls"] == 16.0 and row["accuracy"] == 0.0  # (the task cannot verify)
        assert row["reward_std"] > 0.0 and row["updates"] >= 1


def test_a_jsonl_task_without_answers_needs_a_reward_model_and_no_warmup(tmp_path, capsys):
    data = _no_answer_jsonl(tmp_path / "rows.jsonl")
    assert main(_run_args(tmp_path, data, "--warmup.steps", "0")) == 2
    assert "has no reference answers: its completions need a reward model; set rl.reward_model" in capsys.readouterr().err
    assert main(_run_args(tmp_path, data, "--rl.reward_model", f"rm:{tmp_path}")) == 2
    assert f"rl.reward_model: {tmp_path} has no orm.json" in capsys.readouterr().err
