"""WSRL warm starts (rl.warm_start "wsrl" / "replay", train/warm_start.py): the MC value targets against the critic's
own return convention, the critic's offline regression loss and the policy's SFT step by hand on the tiny model, AWR
weights, offline rows from a file, validation, the warm-up rollouts moving the critic but not the policy, offline rows
counted in every PPO batch (replay) and in none (wsrl), tiny runs, SIGKILL + bitwise resume during and after it."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from credo.credit.base import CreditInputs
from credo.credit.gae import gae_critic_returns
from credo.critic import CriticSettings, ValueModel, critic_optimizer
from credo.errors import CredoError
from credo.train.warm_start import (OfflineRow, WarmStart, WarmStartParams, awr_weights, offline_rows,
                                    offline_value_loss, offline_value_targets)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask  # noqa: E402

TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# -- the math ------------------------------------------------------------------------------------

def test_value_targets_by_hand_and_equal_to_the_critics_returns():
    rewards = torch.tensor([1.0, 0.5, 2.0, 3.0])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    assert offline_value_targets(rewards, mask).tolist() == [[0, 1, 1, 1, 0], [0, 0, 0.5, 0, 0], [0] * 5,
                                                             [3, 0, 3, 0, 3]]
    got = offline_value_targets(rewards, mask, gamma=0.9)
    want = [[0, 0.81, 0.9, 1, 0], [0, 0, 0.5, 0, 0], [0] * 5, [3 * 0.81, 0, 3 * 0.9, 0, 3]]  # (a skipped tool token)
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    # the critic's own targets (gae's returns A + V) with lam = 1 are these MC returns, whatever the values
    values = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * mask
    for gamma in (1.0, 0.9):
        inputs = CreditInputs(rewards=rewards, group_ids=torch.arange(4), loss_mask=mask, values=values)
        ret = gae_critic_returns(inputs, gamma=gamma, lam=1.0).float()
        assert torch.allclose(ret, offline_value_targets(rewards, mask, gamma=gamma), atol=1e-6)


def test_awr_weights_by_hand():
    targets = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    values = torch.tensor([[0.0, 0.5, 1.0, -10.0]])
    mask = torch.tensor([[False, True, True, True]])
    w = awr_weights(targets, values, mask, temperature=2.0)
    assert w[0].tolist() == pytest.approx([0.0, math.e, 1.0, 100.0])  # exp(2 x 0.5), exp(0), exp(22) clipped at 100
    assert offline_value_loss(values, targets, mask).item() == pytest.approx(0.5 * (0.25 + 0 + 121) / 3)


# -- pre-training steps on the tiny model ------------------------------------------------------------

ROWS = [OfflineRow([5, 17, 300], [42, 7, 9], [True] * 3, 1.0, "a"),
        OfflineRow([11, 12], [13, 14], [True, True], 0.0, "b"),
        OfflineRow([8, 99, 1000, 3], [2, 1, 5, 6, 4], [True, False, True, True, True], 0.5, "c")]


def _ctx(policy, tokenizer, critic=None, **settings):
    base = dict(micro_batch_size=2, autocast_dtype=None, max_grad_norm=1e9, temperature=1.0)
    return SimpleNamespace(model=policy, critic=critic, tokenizer=tokenizer, settings=SimpleNamespace(**{**base, **settings}),
                           critic_optimizer=None if critic is None else critic_optimizer(critic, lr=0.1),
                           critic_settings=CriticSettings(lr=0.1, value_clip=0.5, epochs=3, minibatches=2,
                                                          micro_batch_size=2, max_grad_norm=1e9))


def _warm(rows=ROWS, **params):
    return WarmStart("wsrl", WarmStartParams(**params), rows, seed=3, gamma=1.0, critic_lr=0.1, policy_lr=1.0)


def _independent_values(policy, head, row):
    """V(s_t) of a row's response tokens from the model's own hidden states (no credo code): the value of the
    prefix before token t is the head on the hidden state at t - 1."""
    ids = torch.tensor([row.prompt_ids + row.response_ids])
    hidden = policy.base_model(input_ids=ids).last_hidden_state[0]
    v = (hidden @ head.weight[0] + head.bias[0]).detach()
    start = len(row.prompt_ids)
    return [float(v[start + j - 1]) for j in range(len(row.response_ids))]


def test_critic_offline_regression_loss_by_hand(tiny_policy):
    policy = tiny_policy.model
    before = copy.deepcopy(policy.state_dict())
    # a fresh (zero) critic: the loss is 0.5 x the token mean of R^2 over the trained response tokens
    critic = ValueModel(policy, kind="head")
    ctx = _ctx(policy, tiny_policy.tokenizer, critic)
    out = _warm(batch_rows=3).critic_step(ctx, 0)
    tokens = [3, 2, 4]  # trained tokens of each row (row c has an untrained token)
    assert out["value_loss"] == pytest.approx(0.5 * (3 * 1.0 + 2 * 0.0 + 4 * 0.25) / 9, rel=1e-6)
    assert out["target_mean"] == pytest.approx((3 * 1.0 + 4 * 0.5) / 9, rel=1e-6)
    assert float(critic.head.weight.detach().abs().sum()) > 0  # one AdamW step moved the head
    # a random head: the loss from an independent forward, V of the prefix before each trained token
    critic = ValueModel(policy, kind="head")
    torch.nn.init.normal_(critic.head.weight, std=0.05, generator=torch.Generator().manual_seed(1))
    torch.nn.init.constant_(critic.head.bias, 0.3)
    head = copy.deepcopy(critic.head)
    ctx = _ctx(policy, tiny_policy.tokenizer, critic)
    out = _warm(batch_rows=3).critic_step(ctx, 0)
    want = 0.0
    for row in ROWS:
        for v, trained in zip(_independent_values(policy, head, row), row.trainable):
            want += 0.5 * (v - row.reward) ** 2 if trained else 0.0
    assert out["value_loss"] == pytest.approx(want / sum(tokens), rel=1e-4)
    assert ctx.critic_optimizer.param_groups[0]["lr"] == 0.1 and not torch.equal(head.weight, critic.head.weight)
    for name, tensor in policy.state_dict().items():  # the head critic never moves the policy
        assert torch.equal(tensor, before[name]), name


def test_the_rows_of_a_unit_depend_on_its_seed_and_index_only():
    warm = _warm(rows=ROWS * 4, batch_rows=5)
    a = warm.draw(range(12), 5, warm.generator("critic", 2))
    assert a == warm.draw(range(12), 5, warm.generator("critic", 2)) and len(set(a)) == 5
    assert a != warm.draw(range(12), 5, warm.generator("critic", 3))
    assert a != warm.draw(range(12), 5, warm.generator("policy", 2))


def test_policy_sft_step_is_the_nll_of_the_rewarded_rows(tiny_policy):
    model = copy.deepcopy(tiny_policy.model)
    ctx = _ctx(model, tiny_policy.tokenizer, micro_batch_size=1)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    warm = _warm(batch_rows=2, policy_loss="sft", min_reward=0.5)
    assert warm.policy_candidates() == [0, 2]  # reward 0 is left out
    before = [p.detach().clone() for p in model.parameters()]
    out = warm.policy_step(ctx, 0)
    delta = [b - p.detach() for b, p in zip(before, model.parameters())]
    ref = copy.deepcopy(tiny_policy.model)
    terms = []
    for row in (ROWS[0], ROWS[2]):  # token mean of -log p over the trained response tokens, from raw logits
        ids = row.prompt_ids + row.response_ids
        logp = torch.log_softmax(ref(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        picked = logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[len(row.prompt_ids) - 1:]
        terms.append(picked[torch.tensor(row.trainable)])
    loss = -torch.cat(terms).sum() / 7
    assert out["policy_loss"] == pytest.approx(loss.item(), rel=1e-5) and out["weight_mean"] == 1.0
    grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
    for d, g in zip(delta, grads):
        g = torch.zeros_like(d) if g is None else g
        assert float((d - g).norm()) <= 1e-3 * max(float(g.norm()), 1e-12)
    with pytest.raises(CredoError, match=r"min_reward'\]: no offline row has a reward >= 2"):
        _warm(min_reward=2.0).policy_candidates()
    assert _warm(policy_loss="awr", min_reward=2.0).policy_candidates() == [0, 1, 2]  # AWR weighs every row


def test_offline_rows_from_a_file(tiny_policy, tmp_path):
    from credo.tasks.arithmetic import ArithmeticTask

    path = tmp_path / "offline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "What is 1+1?", "response": "<answer>2</answer>", "reward": 0.25},
        {"prompt": "What is 2+2?", "response": "<answer>4</answer>", "answer": "4"},   # scored: right
        {"prompt": "What is 2+3?", "response": "<answer>6</answer>", "answer": "5"}]))  # scored: wrong
    rows = offline_rows(WarmStartParams(source=str(path)), ArithmeticTask(), tiny_policy.tokenizer, seed=0)
    assert [r.reward for r in rows] == [0.25, 1.0, 0.0]
    assert rows[0].response_ids[-1] == tiny_policy.tokenizer.eos_token_id and all(all(r.trainable) for r in rows)
    text = tiny_policy.tokenizer.decode(rows[1].prompt_ids + rows[1].response_ids)
    assert "What is 2+2?" in text and text.rstrip().endswith("<answer>4</answer>" + tiny_policy.tokenizer.eos_token)
    csv = tmp_path / "offline.csv"
    csv.write_text("prompt,response,reward\nWhat is 1+1?,<answer>2</answer>,0.5\n")
    assert [r.reward for r in offline_rows(WarmStartParams(source=str(csv)), ArithmeticTask(),
                                           tiny_policy.tokenizer, seed=0)] == [0.5]
    task_rows = offline_rows(WarmStartParams(pool=5), ArithmeticTask(), tiny_policy.tokenizer, seed=0)
    assert len(task_rows) == 5 and {r.reward for r in task_rows} == {1.0}


# -- validation ------------------------------------------------------------------------------------

def test_bad_config_names_the_field(tmp_path):
    from credo.cli import resolve_config
    from credo.train.run import validate

    def cfg(mode="wsrl", params=None, *pairs):
        extra = [] if params is None else [("rl.warm_start_params", json.dumps(params))]
        return resolve_config("tiny", None, [("rl.objective", "ppo"), ("rl.credit", "gae"),
                                             ("rl.warm_start", mode), *extra, *pairs])

    validate(cfg("wsrl", {"critic_steps": 3, "policy_steps": 2, "policy_loss": "awr", "critic_lr": None}))
    validate(cfg("replay", {"replay_fraction": 0.25}))
    with pytest.raises(CredoError, match="rl.warm_start needs a critic estimator that reads values"):
        validate(cfg("wsrl", None, ("rl.objective", "grpo"), ("rl.credit", "grpo")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "reward": 1}\n{"prompt": "p", "response": "r"}\n'
                   '{"prompt": "p", "response": "r", "reward": "high"}\n')
    cases = [({"critic_step": 3}, r"unknown key\(s\) critic_step"),
             ({"critic_steps": -1}, r"\['critic_steps'\]: must be >= 0"),
             ({"critic_steps": 2.5}, r"\['critic_steps'\]: must be an integer"),
             ({"batch_rows": 0}, r"\['batch_rows'\]: must be >= 1"),
             ({"critic_lr": 0}, r"\['critic_lr'\]: must be > 0"),
             ({"policy_loss": "dpo"}, r"\['policy_loss'\]: must be one of sft, awr"),
             ({"replay_fraction": 0.5}, r"\['replay_fraction'\]: is for rl.warm_start \"replay\""),
             ({"source": str(tmp_path / "none.jsonl")}, r"\['source'\]: is neither"),
             ({"source": str(bad)}, r"bad.jsonl:2: no 'reward' and no 'answer'")]
    for params, message in cases:
        with pytest.raises(CredoError, match=message):
            validate(cfg("wsrl", params))
    bad.write_text('{"prompt": "p", "response": "r", "reward": "high"}\n')
    with pytest.raises(CredoError, match=r"bad.jsonl:1: field 'reward' must be a number"):
        validate(cfg("wsrl", {"source": str(bad)}))
    with pytest.raises(CredoError, match=r"\['replay_fraction'\]: must be in \(0, 1\)"):
        validate(cfg("replay", {"replay_fraction": 1.0}))
    with pytest.raises(CredoError, match="rl.warm_start_params is set"):
        validate(cfg("none", {"critic_steps": 3}))
    with pytest.raises(CredoError, match="rl.warm_start"):
        validate(cfg("offline"))
    with pytest.raises(CredoError, match="dist.strategy 'ddp' is not built yet"):
        validate(cfg("wsrl", None, ("dist.strategy", "ddp")))


# -- tiny runs -------------------------------------------------------------------------------------

def _train(tmp_path, name, mode, params, *extra):
    from credo.cli import main
    from credo.train.logging import read_metrics

    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name, "--run.progress", "false",
            "--run.eval_base", "false", "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1",
            "--task.name", "parity", "--rl.objective", "ppo", "--rl.credit", "gae", "--rl.warm_start", mode,
            "--rl.warm_start_params", json.dumps(params), *extra]
    assert main(args) == 0
    return read_metrics(tmp_path / name / "metrics.jsonl")


@pytest.fixture
def parity(monkeypatch):
    from credo.tasks import TASKS

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)


def test_warmup_rollouts_fit_the_critic_and_leave_the_policy(tmp_path, parity):
    """No RL step and no policy pre-training: after two warm-up rollouts the policy is the warm-up
    checkpoint's, bit for bit, and has no optimizer state; the critic moved away from its zero init."""
    rows = _train(tmp_path, "w", "wsrl", {"critic_steps": 0, "warmup_rollouts": 2, "pool": 4}, "--rl.steps", "0")
    warm = [r for r in rows if r["phase"] == "warm_start"]
    assert [(r["part"], r["step"]) for r in warm] == [("pool", 0), ("warmup_rollout", 0), ("warmup_rollout", 1)]
    assert all(r["value_loss"] > 0 and 0 < r["reward_mean"] < 1 for r in warm[1:])  # parity: mixed rewards
    folder = tmp_path / "w" / "checkpoints"
    policy = [load_file(str(folder / n / "model" / "model.safetensors")) for n in ("warmup", "final")]
    assert policy[0].keys() == policy[1].keys() and all(torch.equal(policy[0][k], policy[1][k]) for k in policy[0])
    assert load_file(str(folder / "final" / "optimizer.safetensors")) == {}
    critic = load_file(str(folder / "final" / "critic.safetensors"))
    assert float(critic["head.weight"].abs().sum()) > 0 and float(critic["head.bias"].abs()) > 0
    state = json.loads((folder / "final" / "state.json").read_text())
    assert state["warm_start"]["warmup_rollout"] == 2 and state["warm_start"]["done"]
    # the same with one policy pre-training step: now the policy moved
    _train(tmp_path, "p", "wsrl", {"critic_steps": 0, "policy_steps": 1, "warmup_rollouts": 0, "pool": 4},
           "--rl.steps", "0")
    folder = tmp_path / "p" / "checkpoints"
    policy = [load_file(str(folder / n / "model" / "model.safetensors")) for n in ("warmup", "final")]
    assert any(not torch.equal(policy[0][k], policy[1][k]) for k in policy[0])


def _offline_sequences(run_dir, params, task):
    """The token rows of the run's offline pool, as prompt + response id tuples."""
    from credo.models import load_policy

    tokenizer = load_policy("tiny", seed=0).tokenizer
    rows = offline_rows(WarmStartParams(**params), task, tokenizer, seed=0)
    state = json.loads((run_dir / "checkpoints" / "final" / "state.json").read_text())
    rows += [OfflineRow(**r) for r in state["warm_start"]["self_rows"]]
    return {tuple(r.prompt_ids + r.response_ids) for r in rows}


@pytest.mark.parametrize("mode", ["wsrl", "replay"])
def test_tiny_run_and_offline_rows_in_the_ppo_batches(tmp_path, parity, monkeypatch, mode):
    """Both modes end to end; every RL batch that reaches ppo_update is counted: wsrl never holds an offline
    row, replay holds round(16 x f / (1 - f)) = 5 of them at f = 0.25 (each a real pool row)."""
    import credo.train.rl as rl

    seen = []
    original = rl.ppo_update

    def spy(model, optimizer, batch, *args, **kwargs):
        seen.append([tuple(row[m].tolist()) for row, m in zip(batch.tokens, batch.attention_mask)])
        return original(model, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(rl, "ppo_update", spy)
    params = {"critic_steps": 2, "policy_steps": 1, "pool": 6, "batch_rows": 4, "self_samples": 1}
    if mode == "replay":
        params["replay_fraction"] = 0.25
    rows = _train(tmp_path, mode, mode, params, "--rl.steps", "2", "--rl.critic_lr", "0.002")
    parts = [(r["part"], r["step"]) for r in rows if r["phase"] == "warm_start"]
    warmup = [("warmup_rollout", 0), ("warmup_rollout", 1)] if mode == "wsrl" else []  # (replay: none by default)
    assert parts == [("pool", 0), ("critic", 0), ("critic", 1), ("policy", 0), *warmup]
    pool = [r for r in rows if r.get("part") == "pool"][0]
    assert pool["rows"] == 6 + 4 and pool["self_rows"] == 4  # one prompt x rl.group_size self samples
    rl_rows = [r for r in rows if r["phase"] == "rl"]
    assert len(rl_rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["value_loss"]) for r in rl_rows)
    offline = _offline_sequences(tmp_path / mode, {"pool": 6}, ParityTask(difficulty=2))  # (the tiny preset's task)
    counted = [sum(row in offline for row in batch) for batch in seen]
    if mode == "wsrl":
        assert counted == [0, 0] and all("replay_rows" not in r for r in rl_rows)
    else:
        assert counted == [5, 5] and [len(b) for b in seen] == [21, 21]
        assert all(r["replay_rows"] == 5 and r["replay_fraction"] == pytest.approx(5 / 21)
                   and r["trained_sequences"] == 21 for r in rl_rows)
    state = json.loads((tmp_path / mode / "checkpoints" / "final" / "state.json").read_text())
    assert state["critic_optimizer_param_groups"][0]["lr"] == 0.002  # RL's critic lr is back after the warm start


# -- SIGKILL + resume ------------------------------------------------------------------------------

PARAMS = {"critic_steps": 3, "policy_steps": 1, "warmup_rollouts": 1, "pool": 8, "batch_rows": 4, "self_samples": 1}
BASE = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "2", "--model.threads", "1",
        "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--task.eval_size", "4",
        "--run.eval_base", "false", "--warmup.steps", "1", "--rl.objective", "ppo", "--rl.credit", "gae",
        "--rl.warm_start", "wsrl", "--rl.warm_start_params", json.dumps(PARAMS)]


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm_resume")
    ref = _credo(BASE + ["--run.out_dir", str(out), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    return out


def _comparable(folder):
    from credo.train.logging import read_metrics

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(folder / "metrics.jsonl")]


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
@pytest.mark.parametrize("fault, progress", [
    ("warm_start:2", {"critic": 1, "policy": 0, "warmup_rollout": 0, "done": False}),  # in the critic pre-training
    ("warm_start:5", {"critic": 3, "policy": 1, "warmup_rollout": 0, "done": False}),  # after it, in the warm-up
    ("update:2", {"critic": 3, "policy": 1, "warmup_rollout": 1, "done": True}),  # in RL step 0, the warm start done
], ids=["critic", "warmup", "rl"])
def test_sigkill_then_resume_is_bitwise(reference, fault, progress):
    name = "crash_" + fault.replace(":", "_")
    crashed = _credo(BASE + ["--run.out_dir", str(reference), "--run.name", name], fault=fault)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    state = json.loads((reference / name / "checkpoints" / "step_0" / "state.json").read_text())
    assert {k: state["warm_start"][k] for k in progress} == progress and state["rl_step"] == 0
    resumed = _credo(["--resume", str(reference / name)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "step_0" in resumed.stdout
    assert _comparable(reference / name) == _comparable(reference / "ref")
    for file in ("model/model.safetensors", "critic.safetensors", "optimizer.safetensors"):
        a, b = (load_file(str(reference / n / "checkpoints" / "final" / file)) for n in ("ref", name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
