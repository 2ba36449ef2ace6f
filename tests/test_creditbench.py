"""CreditBench: exact DP by hand, ground-truth properties, metrics on hand cases, the runner's robustness."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch

import credo.credit  # noqa: F401  (registers the estimators)
from credo.credit.base import CREDIT, token_level
from credo.creditbench.env import ChainConfig, ChainTask, KeyValueConfig, KeyValueTask
from credo.creditbench.inputs import InputBuilder, InputKnobs
from credo.creditbench.metrics import credit_metrics, rankdata, spearman, unit_values
from credo.creditbench.policy import TabularPolicy
from credo.creditbench.run import QUICK, QUICK_SUITE, Knob, Settings, advantages, run_suite, write_outputs


def hand_chain(recoverable: bool = False):
    """3 slots: slot 0 decisive (factors 1.0 / 0.2, pi = 1/2, 1/2), slot 1 filler, slot 2 decisive
    (factors 0.5 / 1.0, pi = 1/4, 3/4). Recoverable: slot 1 becomes a repair slot for slot 0
    (q = 0 keep / 1 repair, pi = 1/2, 1/2)."""
    task = ChainTask(ChainConfig(n_slots=3, n_decisive=2, position="spread", n_prompts=1, recoverable=recoverable), 0)
    assert task.decisive_slots == [0, 2]
    task.n_opt[:] = 2
    valid = np.zeros((3, 4), dtype=bool)
    valid[:, :2] = True
    task._valid = valid
    task.factor[0] = 0.0
    task.factor[0, 0, :2] = [1.0, 0.2]
    task.factor[0, 2, :2] = [0.5, 1.0]
    if recoverable:
        assert task.units[0] == (0, 1) and task.kind_of[1] == 2
        task.factor[0, 1, :2] = [0.0, 1.0]
    else:
        task.factor[0, 1] = 1.0
    logits = np.zeros((3, 4))
    logits[2, :2] = [0.0, math.log(3.0)]
    task._init_logits = logits
    return task


def build(task, choices):
    policy = task.initial_policy()
    choices = np.array(choices)
    return task.build(policy, np.zeros(len(choices), dtype=np.int64), choices, np.random.default_rng(0))


def test_chain_dp_by_hand():
    task = hand_chain()
    # V(s0) = E[f0] E[f2] = (0.5 * 1 + 0.5 * 0.2) * (0.25 * 0.5 + 0.75 * 1) = 0.6 * 0.875
    assert task.expected_success(task.initial_policy()) == pytest.approx(0.525)
    s = build(task, [[1, 0, 0], [0, 1, 1]])
    # row 0: mistake at slot 0 (V 0.525 -> 0.2 * 0.875 = 0.175), filler, then option 0 (-> 0.2 * 0.5 = 0.1)
    np.testing.assert_allclose(s.step_adv[0], [0.175 - 0.525, 0.0, 0.1 - 0.175])
    np.testing.assert_allclose(s.step_adv[1], [0.875 - 0.525, 0.0, 1.0 - 0.875])
    np.testing.assert_allclose(s.true_value[0, :4], [0.525, 0.525, 0.175, 0.175])
    np.testing.assert_allclose(s.expected_reward, [0.1, 1.0])
    np.testing.assert_array_equal(s.step_truth, [[-1, 0, -1], [1, 0, 1]])
    np.testing.assert_array_equal(s.step_decisive, [[True, False, True]] * 2)
    # Q of both options at slot 2 of row 0: 0.2 * 0.5 and 0.2 * 1.0
    np.testing.assert_allclose(s.q_options[0, 3, :2], [0.1, 0.2])
    # token layout: prompt token, then one token per slot (option j -> 10 + j)
    np.testing.assert_array_equal(s.tokens[0], [100, 11, 10, 10])
    np.testing.assert_array_equal(s.loss_mask[0], [False, True, True, True])
    np.testing.assert_array_equal(s.step_ids[0], [-1, 0, 1, 2])


def test_recoverable_chain_dp_by_hand():
    task = hand_chain(recoverable=True)
    # pair factor max(f0(a0), q1(a1)): E = 1/4 (1 + 1 + 0.2 + 1) = 0.8; times E[f2] = 0.875
    assert task.expected_success(task.initial_policy()) == pytest.approx(0.8 * 0.875)
    s = build(task, [[1, 1, 1], [1, 0, 1], [0, 0, 1]])
    # mistake at slot 0: pair E = 0.5 (0.2) + 0.5 (1) = 0.6
    assert s.step_adv[0, 0] == pytest.approx(0.6 * 0.875 - 0.7)
    # the repair after a mistake: 0.6 -> 1.0 (A* > 0, truth +1); keeping it: 0.6 -> 0.2 (truth -1)
    assert s.step_adv[0, 1] == pytest.approx((1.0 - 0.6) * 0.875)
    assert s.step_adv[1, 1] == pytest.approx((0.2 - 0.6) * 0.875)
    np.testing.assert_array_equal(s.step_truth[:, 1], [1, -1, 0])
    # without a mistake the repair slot does not matter: filler in that trajectory
    assert s.step_adv[2, 1] == 0.0 and not s.step_decisive[2, 1]


def test_true_advantage_is_zero_on_filler_and_telescopes():
    for cfg in (ChainConfig(), ChainConfig(n_slots=30, position="late", checkpoint=True), ChainConfig(recoverable=True)):
        task = ChainTask(cfg, 3)
        s = task.sample(task.initial_policy(), 8, np.random.default_rng(1))
        filler = task.kind_of == 0
        assert np.all(s.step_adv[:, filler] == 0.0) and not s.step_decisive[:, filler].any()
        assert s.step_decisive[:, task.kind_of == 1].all()
        np.testing.assert_allclose(s.true_adv.sum(1), s.expected_reward - s.true_value[:, 0], atol=1e-12)
        assert np.all(s.true_adv[~s.loss_mask] == 0.0)


def kv_brute_force(task, policy, p):
    """Exact success by enumerating every action sequence (independent of the task's DP)."""
    c = task.config
    pi = policy.probs()

    def value(mask, turn):
        if turn == c.max_turns:
            return 0.0
        pv = pi[task.ctx(p, mask, 0)]
        total = 0.0
        for x in range(c.n_keys):
            total += pv[1] * pi[task.ctx(p, mask, 2)][x] * float(x == task.gold[p])
            total += pv[0] * pi[task.ctx(p, mask, 1)][x] * value(mask | (1 << x), turn + 1)
        return total

    return value(0, 0)


def test_keyvalue_dp_matches_enumeration_and_mc():
    task = KeyValueTask(KeyValueConfig(n_keys=3, depth=2, max_turns=3, n_prompts=2), 5)
    policy = task.initial_policy()
    V = task.dp(policy)[0]
    for p in range(2):
        assert V[p, 0, 0] == pytest.approx(kv_brute_force(task, policy, p), abs=1e-12)
    big = task.sample(policy, 4000, np.random.default_rng(0))
    mc = big.rewards.reshape(2, -1).mean(1)
    np.testing.assert_allclose(mc, V[:, 0, 0], atol=0.03)
    np.testing.assert_allclose(big.true_adv.sum(1), big.rewards - big.true_value[:, 0], atol=1e-12)


def test_keyvalue_anchors_repeat_and_counters_break_them():
    plain = KeyValueTask(KeyValueConfig(), 0)
    s = plain.sample(plain.initial_policy(), 8, np.random.default_rng(0))
    keys = [k for row in s.step_keys for k in row]
    assert len(set(keys)) < len(keys)  # identical states across trajectories / turns
    assert s.step_keys[0][0] == s.step_keys[1][0] == (0, 0)
    counted = KeyValueTask(KeyValueConfig(counters=True), 0)
    s2 = counted.sample(counted.initial_policy(), 8, np.random.default_rng(0))
    by_key = {}
    for row in s2.step_keys:
        for k, key in enumerate(row):
            by_key.setdefault(key, set()).add(k)
    assert all(len(turns) == 1 for turns in by_key.values())  # a key never matches across turn indices
    # environment tokens are out of the loss and have no step
    env = (s.tokens == 30) | ((s.tokens >= 40) & (s.tokens < 60))
    assert env.any() and not s.loss_mask[env].any() and np.all(s.step_ids[env] == -1)


def test_information_gain_definition():
    task = KeyValueTask(KeyValueConfig(), 1)
    policy = task.initial_policy()
    s = task.sample(policy, 8, np.random.default_rng(2))
    pi = policy.probs()
    b = int(np.flatnonzero(s.n_steps >= 2)[0])
    p, gold = s.prompt_ids[b], task.gold[s.prompt_ids[b]]
    m0, m1 = s.state["masks_before"][b, 0], s.state["masks_before"][b, 1]
    assert s.state["verbs"][b, 0] == 0  # a query turn (the episode went on)
    expected = pi[task.ctx(p, m1, 2), gold] - pi[task.ctx(p, m0, 2), gold]
    assert s.step_info_gain[b, 0] == pytest.approx(expected)


def test_probe_estimates_the_true_value():
    task = ChainTask(ChainConfig(), 0)
    policy = task.initial_policy()
    s = task.sample(policy, 2, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for t in (1, 5, 9):
        assert task.probe(policy, s, 0, t, 20000, rng) == pytest.approx(s.true_value[0, t], abs=0.015)


def test_spearman_hand_cases():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    np.testing.assert_allclose(rankdata(np.array([5.0, 1.0, 5.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # ranks x = (1.5, 1.5, 3, 4), y = (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0])) == 0.0  # constant side: defined as 0
    assert spearman(np.array([1.0]), np.array([1.0])) == 0.0


def test_grpo_puts_equal_credit_on_filler_and_decisive_units():
    task = ChainTask(ChainConfig(), 0)  # 12 slots, 3 decisive
    policy = task.initial_policy()
    s = task.sample(policy, 8, np.random.default_rng(4))
    assert 0 < s.rewards.sum() < len(s.rewards)
    builder = InputBuilder(task, InputKnobs(), 0)
    fn = CREDIT.get("grpo")
    inputs, cost = builder.build("grpo", fn, s, policy, policy, np.random.default_rng(0))
    adv = advantages(fn, inputs)
    est, _, decisive = unit_values(adv, s)
    rows = np.repeat(np.arange(s.size), 12)
    for b in range(s.size):  # one value per row
        assert np.all(est[rows == b] == est[rows == b][0])
    m = credit_metrics(adv, s)
    assert m["decisive_mass"] == pytest.approx(3 / 12, abs=1e-12)
    assert cost == {"rollouts": 32.0, "probe_rollouts": 0.0, "judge_calls": 0.0, "extra_calls": 0.0}


def test_metrics_of_the_exact_advantage_and_of_zero_credit():
    task = ChainTask(ChainConfig(), 1)
    s = task.sample(task.initial_policy(), 8, np.random.default_rng(0))
    exact = credit_metrics(s.true_adv, s)
    assert exact["decisive_mass"] == pytest.approx(1.0) and exact["spearman"] == pytest.approx(1.0)
    assert exact["sign_error"] == 0.0 and exact["filler_credit"] == 0.0
    zero = credit_metrics(np.zeros_like(s.true_adv), s)
    assert math.isnan(zero["decisive_mass"]) and zero["spearman"] == 0.0 and zero["sign_error"] == 1.0


def test_inputs_follow_declared_needs():
    task = ChainTask(ChainConfig(), 0)
    policy = task.initial_policy()
    s = task.sample(policy, 4, np.random.default_rng(0))
    builder = InputBuilder(task, InputKnobs(n_probe=3), 0)
    inputs, cost = builder.build("gae", CREDIT.get("gae"), s, policy, policy, np.random.default_rng(0))
    np.testing.assert_allclose(inputs.values.numpy(), s.true_value, atol=1e-6)  # oracle critic, no noise
    assert inputs.step_rewards is None and inputs.probe is None
    inputs, cost = builder.build("spo_chain", CREDIT.get("spo_chain"), s, policy, policy, np.random.default_rng(0))
    inputs.probe(0, 5)
    inputs.probe(1, 2)
    assert cost["probe_rollouts"] == 6.0
    lp = policy.log_probs()[s.ctx[0, 1], s.opt[0, 1]]
    assert inputs.logprobs[0, 1].item() == pytest.approx(lp, abs=1e-6)
    # the judge on the true step scores: exact without noise, one call per response
    inputs, cost = builder.build("pure", CREDIT.get("pure"), s, policy, policy, np.random.default_rng(0))
    np.testing.assert_allclose(inputs.step_rewards.numpy(), s.step_truth)
    assert cost["judge_calls"] == s.size


def test_recoverable_variant_separates_min_form_from_sum_form():
    """A repair after a mistake: sum-form credits it (+1 step score), PURE's min-form gives the steps
    after the worst one ~0, so it misses recoveries; on the repair units sum-form has the right sign."""
    task = ChainTask(ChainConfig(recoverable=True, n_prompts=8), 0)
    policy = task.initial_policy()
    s = task.sample(policy, 16, np.random.default_rng(0))
    r = int(np.flatnonzero(task.kind_of == 2)[0])
    recovered = (s.step_truth[:, r] == 1.0)  # a mistake at the paired slot, then the repair
    assert recovered.sum() >= 5
    builder = InputBuilder(task, InputKnobs(), 0)
    credit_at_repair = {}
    for name in ("pure", "pure_sum"):
        fn = CREDIT.get(name)
        inputs, _ = builder.build(name, fn, s, policy, policy, np.random.default_rng(0))
        adv = advantages(fn, inputs, {"mask_step_end": False, "verifiable_reward_coef": 0.0})
        credit_at_repair[name] = adv[:, task.pos[r]][recovered]
    assert np.all(credit_at_repair["pure_sum"] > 0.5)  # +1 (repair) + 0 (filler after it)
    assert np.all(np.abs(credit_at_repair["pure"]) < 0.05)  # after the argmin step: ~0
    assert np.all(s.step_adv[recovered, r] > 0)  # the truth: repairing is good


def test_pg_update_matches_the_analytic_gradient():
    policy = TabularPolicy(np.zeros((2, 3)), np.array([[True, True, True], [True, True, False]]))
    policy.pg_update(np.array([0, 0, 1]), np.array([2, 2, 0]), np.array([1.0, 0.5, -2.0]), lr=1.0, n_rows=2, max_norm=1e9)
    # context 0: 1.5 (onehot(2) - 1/3) / 2; context 1: -2 (onehot(0) - (1/2, 1/2, 0)) / 2, invalid stays 0
    np.testing.assert_allclose(policy.logits, [[-0.25, -0.25, 0.5], [-0.5, 0.5, 0.0]])
    norm_before = policy.pg_update(np.array([0]), np.array([0]), np.array([1e6]), lr=1.0, n_rows=1, max_norm=2.0)
    assert norm_before > 2.0 and np.isfinite(policy.logits).all()


@token_level(needs=("extras",))
def _needs_unknown_extras(inputs):
    """[B, T] stand-in estimator that needs an extras key nobody provides (arXiv none)."""
    return torch.zeros(inputs.loss_mask.shape)


def _raises(rewards, group_ids):
    raise RuntimeError("boom")


def _returns_nan(rewards, group_ids):
    return torch.full_like(rewards, float("nan"))


def test_runner_records_errors_and_writes_three_files(tmp_path):
    estimators = {"grpo": CREDIT.get("grpo"), "pure": CREDIT.get("pure"), "boom": _raises, "nan": _returns_nan,
                  "needs_x": _needs_unknown_extras}
    result = run_suite(suite=QUICK_SUITE[:1], settings=Settings(seeds=(0,), group_size=4, metric_batches=1, train_iters=3),
                       log=None, estimators=estimators)
    res = result["results"]
    assert res["grpo"]["middle"]["status"] == "ok" and res["pure"]["middle"]["status"] == "ok"
    assert res["boom"]["middle"]["status"].startswith("error: RuntimeError: boom")
    assert "non-finite" in res["nan"]["middle"]["status"]
    assert res["needs_x"]["middle"]["status"].startswith("n/a (needs extras")
    paths = write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["creditbench.md", "creditbench.json", "creditbench.png"]
    md = paths[0].read_text()
    assert "| `boom` |" in md and "## Errors" in md and "n/a (needs extras" in md
    assert json.loads(paths[1].read_text())["results"]["grpo"]["middle"]["seeds"] == 1
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_quick_run(tmp_path, capsys):
    from credo.creditbench.cli import add_parser, main

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["creditbench", "--quick", "--only", "grpo,gae,gigpo", "--out", str(tmp_path)])
    assert args.func(args, []) == 0
    out = capsys.readouterr().out
    assert "3 estimators x 3 knobs" in out
    assert (tmp_path / "creditbench.png").is_file()
    result = json.loads((tmp_path / "creditbench.json").read_text())
    assert result["results"]["gae"]["kv_anchors"]["status"] == "ok"
    from credo.errors import CredoError

    with pytest.raises(CredoError):
        main(args, ["--bogus"])


def test_quick_suite_runs_every_registered_estimator_without_crashing():
    result = run_suite(suite=QUICK_SUITE[:1], settings=Settings(seeds=(0,), group_size=4, metric_batches=1, train_iters=1),
                       log=None)
    assert set(result["results"]) == set(CREDIT.names())
    for name, per in result["results"].items():
        status = per["middle"]["status"]
        assert status == "ok" or status.startswith("n/a (needs"), (name, status)
