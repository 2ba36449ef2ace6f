"""GAE with a critic: hand values, masked-token skipping, KL reward, whitening, loop == vectorized,
degenerate rows, and the key property (gamma = lam = 1: A_t = R - V_t)."""

import math
import random

import pytest
import torch

from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.gae import gae, gae_loop, gae_returns, gae_returns_loop, masked_whiten, outcome_token_rewards


def random_inputs(seed: int) -> CreditInputs:
    """Random groups (sizes 1-4, interleaved, non-dense ids), prompts, holes (tool tokens), padding and
    empty responses; a critic's values and behaviour / reference logprobs."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    group_ids = [10 * g + 7 for g in range(rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
    rng.shuffle(group_ids)
    B, T = len(group_ids), rng.randint(1, 10)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        prompt = rng.randint(0, min(2, T))
        length = rng.choice([0, rng.randint(0, T - prompt)])
        mask[b, prompt:prompt + length] = True
        if length > 2 and rng.random() < 0.4:
            mask[b, prompt + rng.randint(1, length - 2)] = False  # an environment token inside the response
    logprobs = torch.log(torch.rand(B, T, generator=gen).clamp(min=0.05))
    return CreditInputs(
        rewards=torch.tensor([rng.choice([0.0, 1.0, 0.5, -0.3]) for _ in range(B)]),
        group_ids=torch.tensor(group_ids),
        loss_mask=mask,
        tokens=torch.randint(0, 5, (B, T), generator=gen),
        logprobs=torch.where(mask, logprobs, torch.zeros_like(logprobs)),
        ref_logprobs=logprobs + 0.3 * torch.randn(B, T, generator=gen),
        values=torch.randn(B, T, generator=gen),
    )


def row(values, mask=None, rewards=(1.0,), **kw):
    values = torch.tensor([values], dtype=torch.float32)
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else torch.tensor([mask])
    return CreditInputs(rewards=torch.tensor(rewards), group_ids=torch.tensor([0]), loss_mask=mask, values=values, **kw)


def test_registered_token_level_with_needs():
    assert CREDIT.get("gae") is gae
    assert is_token_level(gae) and credit_needs_of(gae) == frozenset({"values"})  # kl_coef 0 by default


def test_hand_computed_gamma_lambda():
    # loss tokens at 1..3 with V = 0.5, 0.2, 0.8; R = 1 on the last; gamma 0.9, lam 0.5
    # d3 = 1 - 0.8 = 0.2                A3 = 0.2
    # d2 = 0.9 * 0.8 - 0.2 = 0.52       A2 = 0.52 + 0.45 * 0.2 = 0.61
    # d1 = 0.9 * 0.2 - 0.5 = -0.32      A1 = -0.32 + 0.45 * 0.61 = -0.0455
    inputs = row([9.0, 0.5, 0.2, 0.8], mask=[False, True, True, True])
    adv = gae(inputs, gamma=0.9, lam=0.5, whiten=False)
    assert adv.tolist()[0] == pytest.approx([0.0, -0.0455, 0.61, 0.2], abs=1e-6)
    r = outcome_token_rewards(inputs.rewards, inputs.loss_mask)
    a, ret = gae_returns(r, inputs.values, inputs.loss_mask, 0.9, 0.5)
    assert ret.tolist()[0] == pytest.approx([0.0, 0.4545, 0.81, 1.0], abs=1e-6)


def test_unmasked_positions_are_skipped_not_steps():
    # loss tokens 0 and 2, a tool token (V = 99, never used) at 1; gamma 0.5, lam 0.5
    # d2 = 1 - 0.3 = 0.7; A2 = 0.7;  d0 = 0.5 * 0.3 - 0.5 = -0.35; A0 = -0.35 + 0.25 * 0.7 = -0.175
    adv = gae(row([0.5, 99.0, 0.3], mask=[True, False, True]), gamma=0.5, lam=0.5, whiten=False)
    assert adv.tolist()[0] == pytest.approx([-0.175, 0.0, 0.7], abs=1e-6)


def test_kl_reward_hand_computed():
    # kl_coef 0.1, logp - ref = 0.2, -0.1 -> r = -0.02, 1 + 0.01; V = 0, gamma = lam = 1
    inputs = row([0.0, 0.0], logprobs=torch.tensor([[-1.0, -2.0]]), ref_logprobs=torch.tensor([[-1.2, -1.9]]))
    assert gae(inputs, kl_coef=0.1, whiten=False).tolist()[0] == pytest.approx([0.99, 1.01], abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        gae(row([0.0, 0.0]), kl_coef=0.1)


def test_whitening_hand_computed():
    # V = 0, gamma = lam = 1 -> A = R on every token: 1, 2 (row 0: one token), 3 (row 1: one token)
    inputs = CreditInputs(rewards=torch.tensor([2.0, 3.0, 1.0]), group_ids=torch.tensor([0, 0, 0]),
                          loss_mask=torch.tensor([[True], [True], [True]]), values=torch.zeros(3, 1))
    adv = gae(inputs)  # mean 2, unbiased var 1
    expected = [(x - 2.0) / math.sqrt(1.0 + 1e-8) for x in (2.0, 3.0, 1.0)]
    assert adv.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_key_property_lam_one_gamma_one_gives_return_minus_value():
    for seed in range(20):
        inputs = random_inputs(seed)
        adv = gae(inputs, gamma=1.0, lam=1.0, whiten=False)
        expected = torch.where(inputs.loss_mask, inputs.rewards[:, None] - inputs.values, torch.zeros_like(adv))
        assert torch.allclose(adv, expected, atol=1e-5), seed


def test_loop_equals_vectorized_over_random_layouts():
    for seed in range(40):
        inputs = random_inputs(seed)
        rng = random.Random(seed)
        kw = dict(gamma=rng.choice([1.0, 0.9]), lam=rng.choice([1.0, 0.95, 0.5]),
                  kl_coef=rng.choice([0.0, 0.05]), whiten=rng.random() < 0.5)
        assert torch.allclose(gae(inputs, **kw), gae_loop(inputs, **kw), atol=1e-5), (seed, kw)
        r = outcome_token_rewards(inputs.rewards, inputs.loss_mask, logprobs=inputs.logprobs,
                                  ref_logprobs=inputs.ref_logprobs, kl_coef=kw["kl_coef"])
        a, ret = gae_returns(r, inputs.values, inputs.loss_mask, kw["gamma"], kw["lam"])
        a_loop, ret_loop = gae_returns_loop(r.tolist(), inputs.values.double().tolist(),
                                            inputs.loss_mask.tolist(), kw["gamma"], kw["lam"])
        assert torch.allclose(a, torch.tensor(a_loop, dtype=torch.float64).reshape(a.shape), atol=1e-9)
        assert torch.allclose(ret, torch.tensor(ret_loop, dtype=torch.float64).reshape(a.shape), atol=1e-9)


def test_returns_are_advantages_plus_values_on_the_mask_only():
    inputs = random_inputs(3)
    r = outcome_token_rewards(inputs.rewards, inputs.loss_mask)
    a, ret = gae_returns(r, inputs.values, inputs.loss_mask, 1.0, 0.95)
    m = inputs.loss_mask
    assert torch.allclose(ret[m], (a + inputs.values.double())[m])
    assert (ret[~m] == 0).all() and (a[~m] == 0).all()


def test_degenerate_inputs():
    empty = CreditInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]),
                         loss_mask=torch.zeros(2, 3, dtype=torch.bool), values=torch.ones(2, 3))
    assert (gae(empty) == 0).all() and (gae(empty, whiten=False) == 0).all()
    one_token = row([0.3], rewards=(1.0,))
    assert gae(one_token).tolist() == [[0.0]]  # a single token cannot be whitened
    assert gae(one_token, whiten=False).tolist()[0] == pytest.approx([0.7])
    zero_values = row([0.0, 0.0, 0.0], rewards=(0.5,))
    assert gae(zero_values, whiten=False).tolist()[0] == pytest.approx([0.5, 0.5, 0.5])
    assert gae(zero_values).tolist()[0] == [0.0, 0.0, 0.0]  # all equal: nothing to whiten
    with pytest.raises(ValueError, match="values"):
        gae(CreditInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                        loss_mask=torch.ones(1, 2, dtype=torch.bool)))
    for seed in range(10):
        assert torch.isfinite(gae(random_inputs(seed))).all()


def test_masked_whiten_matches_numpy_style_reference():
    x = torch.tensor([[1.0, 5.0, 2.0], [7.0, 3.0, 0.0]])
    m = torch.tensor([[True, False, True], [True, True, False]])
    vals = [1.0, 2.0, 7.0, 3.0]
    mean = sum(vals) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3 + 1e-8)
    out = masked_whiten(x, m)
    assert out[m].tolist() == pytest.approx([(v - mean) / std for v in vals], abs=1e-9)
    assert (out[~m] == 0).all()


# -- KL in the reward, against verl ----------------------------------------------------------------
# verl 0.9.1 (PyPI wheel), re-implemented here from reading, not copied:
#   verl/trainer/ppo/ray_trainer.py::apply_kl_penalty: kld = kl_penalty(old_log_probs, ref_log_prob, "kl")
#       (= old - ref), kld = kld * response_mask, token_level_rewards = token_level_scores - beta * kld;
#       token_level_scores hold the outcome score on the last valid response token.
#   verl/trainer/ppo/core_algos.py::compute_gae_advantage_return: backwards over t,
#       delta = r_t + gamma nextvalues - V_t, lastgaelam_ = delta + gamma lam lastgaelam, both
#       carried unchanged over mask-0 positions; returns = advantages + values (before whitening);
#       advantages = masked_whiten(advantages, mask) (unbiased var, eps 1e-8).

def verl_kl_rewards(scores_at_last, mask, old_logp, ref_logp, beta):
    B, T = len(mask), len(mask[0])
    scores = [[0.0] * T for _ in range(B)]
    for b in range(B):
        valid = [t for t in range(T) if mask[b][t]]
        if valid:
            scores[b][valid[-1]] = scores_at_last[b]
    return [[scores[b][t] - beta * (old_logp[b][t] - ref_logp[b][t]) * mask[b][t] for t in range(T)]
            for b in range(B)]


def verl_gae(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        nextvalues, lastgaelam = 0.0, 0.0
        for t in reversed(range(T)):
            m = float(mask[b][t])
            delta = rewards[b][t] + gamma * nextvalues - values[b][t]
            candidate = delta + gamma * lam * lastgaelam
            nextvalues = values[b][t] * m + (1 - m) * nextvalues
            lastgaelam = candidate * m + (1 - m) * lastgaelam
            adv[b][t] = lastgaelam
    returns = [[adv[b][t] + values[b][t] for t in range(T)] for b in range(B)]
    flat = [adv[b][t] for b in range(B) for t in range(T) if mask[b][t]]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / len(flat) * len(flat) / (len(flat) - 1)
    white = [[(adv[b][t] - mean) / math.sqrt(var + 1e-8) for t in range(T)] for b in range(B)]
    return white, returns


def test_kl_in_reward_matches_verl_advantages_and_returns():
    from credo.credit.gae import gae_critic_returns

    checked = 0
    for seed in range(30):
        inputs = random_inputs(seed)
        m = inputs.loss_mask
        if int(m.sum()) < 2:  # verl's masked_var raises on fewer than two tokens
            continue
        gamma, lam = random.Random(seed).choice([(1.0, 1.0), (0.99, 0.95), (0.9, 0.5)])
        beta = 0.05
        mask = m.tolist()
        r = verl_kl_rewards(inputs.rewards.tolist(), mask, inputs.logprobs.double().tolist(),
                            inputs.ref_logprobs.double().tolist(), beta)
        white, returns = verl_gae(r, inputs.values.double().tolist(), mask, gamma, lam)
        adv = gae(inputs, gamma=gamma, lam=lam, kl_coef=beta)
        ret = gae_critic_returns(inputs, gamma=gamma, lam=lam, kl_coef=beta)
        want_adv = torch.tensor(white, dtype=torch.float64)
        want_ret = torch.tensor(returns, dtype=torch.float64)
        assert torch.allclose(adv.double()[m], want_adv[m], atol=1e-5), seed
        assert torch.allclose(ret[m], want_ret[m], atol=1e-9), seed
        # the critic's target is the KL-penalised return, not the outcome-only one
        outcome_only = gae_critic_returns(inputs, gamma=gamma, lam=lam, kl_coef=0.0)
        assert not torch.allclose(ret[m], outcome_only[m]), seed
        checked += 1
    assert checked >= 15


def test_needs_follow_the_bound_kl_coef():
    import functools

    assert credit_needs_of(functools.partial(gae, kl_coef=0.05)) == {"values", "logprobs", "ref_logprobs"}
    assert credit_needs_of(functools.partial(gae, kl_coef=0.0)) == {"values"}
    assert credit_needs_of(functools.partial(functools.partial(gae, kl_coef=0.05), kl_coef=0.0)) == {"values"}


def test_critic_returns_in_the_trainer_use_the_kl_penalised_rewards():
    """critic.critic_returns (what rl_step regresses the critic on) == verl's returns for the bound gae."""
    import functools

    from credo.batch import RolloutBatch
    from credo.critic import critic_returns

    raw = random_inputs(5)
    pad = lambda x: torch.nn.functional.pad(x, (1, 0))  # position 0 holds no logprob (batch.py)
    inputs = CreditInputs(rewards=raw.rewards, group_ids=raw.group_ids, loss_mask=pad(raw.loss_mask),
                          tokens=pad(raw.tokens), logprobs=pad(raw.logprobs), ref_logprobs=pad(raw.ref_logprobs),
                          values=pad(raw.values))
    B, T = inputs.loss_mask.shape
    batch = RolloutBatch(tokens=inputs.tokens, attention_mask=torch.ones(B, T, dtype=torch.bool),
                         loss_mask=inputs.loss_mask, sampler_logprobs=inputs.logprobs.float(),
                         advantages=torch.zeros(B, T),
                         rewards=inputs.rewards, group_ids=inputs.group_ids,
                         ref_logprobs=inputs.ref_logprobs.float(), values=inputs.values.float())
    bound = functools.partial(gae, gamma=0.99, lam=0.95, kl_coef=0.05)
    mask = inputs.loss_mask.tolist()
    r = verl_kl_rewards(inputs.rewards.tolist(), mask, batch.sampler_logprobs.double().tolist(),
                        batch.ref_logprobs.double().tolist(), 0.05)
    _, returns = verl_gae(r, batch.values.double().tolist(), mask, 0.99, 0.95)
    m = inputs.loss_mask
    got = critic_returns(batch, bound)
    assert torch.allclose(got[m].double(), torch.tensor(returns, dtype=torch.float64)[m], atol=1e-5)
    assert (got[~m] == 0).all()


def test_gae_with_kl_in_reward_trains_end_to_end(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from credo.tasks import TASKS

    sys.path.insert(0, str(Path(__file__).parent))
    from fixture_tasks import ParityTask, tiny_run

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    threads = torch.get_num_threads()
    try:
        rl = tiny_run(tmp_path, "gae_kl", "--rl.credit", "gae", "--rl.objective", "ppo",
                      "--rl.credit_params", '{"kl_coef": 0.05}')
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(row["value_loss"]) for row in rl)
    # KL in the reward needs the frozen reference: the run loaded one and checkpointed it
    assert (tmp_path / "gae_kl" / "checkpoints" / "final" / "ref_model.safetensors").exists()
