"""PAFT (objective "paft", objectives/trust_region.py): posterior resampling and attenuation by hand, the loss and
its gradient under seq_mean_token_sum as the plain estimator, the many-draws limit equal to GARL's baseline-free
advantage, importance weights, the floor, seeding, and the hyperparameter checks."""

from __future__ import annotations

import math

import pytest
import torch

from credo.batch import RolloutBatch
from credo.errors import CredoError
from credo.objectives import OBJECTIVES, reduce_loss
from credo.objectives.trust_region import garl_advantages, paft_loss, paft_weights

REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])  # P_hat: 0.5, 0 (skipped), 0.25
ON_POLICY = torch.zeros(12)


def counts_of(probs, draws, seed):
    """The draw counts an independent multinomial call gives for the same generator seed."""
    picked = torch.multinomial(torch.tensor(probs, dtype=torch.float64), draws, replacement=True,
                               generator=torch.Generator().manual_seed(seed))
    return torch.bincount(picked, minlength=len(probs)).tolist()


def test_weights_by_hand_on_policy():
    w, m = paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.75, seed=3)
    n0, n2 = counts_of([0.5, 0.5], 4, 3 * 1_000_003 + 0)  # group 0: uniform over its two correct samples
    amp0 = 0.5 ** 0.25
    want = [amp0 * 4 * n0 / 4, 0, amp0 * 4 * n2 / 4, 0, 0, 0, 0, 0, 0, 0.25 ** 0.25 * 4, 0, 0]
    assert w.tolist() == pytest.approx(want, abs=1e-6) and n0 + n2 == 4
    # group 2's single correct sample takes every draw: weight P_hat^(1-q) x M = 0.25^0.25 x 4 = 2 sqrt 2
    assert float(w[9]) == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    assert float(m["success_rate"]) == pytest.approx(0.25)  # (0.5 x 4 + 0 + 0.25 x 4) / 12
    assert float(m["attenuation_mean"]) == pytest.approx((amp0 + 0.25 ** 0.25) / 2)
    assert float(m["skipped_groups"]) == pytest.approx(1 / 3)
    assert float(m["resampled_distinct"]) == pytest.approx(((n0 > 0) + (n2 > 0)) / 2 / 2 + 0.5)


def test_q_one_is_sft_on_correct_samples_and_q_zero_scales_by_the_success_rate():
    one, _ = paft_weights(REWARDS, GROUPS, ON_POLICY, q=1.0, seed=0)
    zero, _ = paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.0, seed=0)
    assert float(one[9]) == pytest.approx(4.0) and float(zero[9]) == pytest.approx(1.0)  # 4 x 1, 4 x 0.25
    assert torch.allclose(zero[:4], 0.5 * one[:4])  # same draws (same seed), attenuation P_hat = 0.5
    floored, _ = paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.0, p_floor=0.5, seed=0)
    assert float(floored[9]) == pytest.approx(2.0)  # max(0.25, 0.5)^1 x 4
    # nothing correct anywhere: all zero, every group skipped, no NaN
    none, m = paft_weights(torch.zeros(8), GROUPS[:8], torch.zeros(8), seed=0)
    assert none.tolist() == [0.0] * 8 and float(m["skipped_groups"]) == 1.0 and float(m["attenuation_mean"]) == 0.0


def test_many_draws_give_garls_baseline_free_advantage():
    """E[w_i] = P_hat^(1-q) M / (M P_hat) c_i = P_hat^(-q) c_i: GARL's advantage with baseline "none"."""
    w, _ = paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.75, resample=200_000, seed=1)
    garl, _ = garl_advantages(REWARDS, GROUPS, q=0.75, baseline="none")
    garl = torch.where(REWARDS > 0.5, garl, torch.zeros_like(garl))  # (P_hat = 0: GARL floors, PAFT skips)
    assert torch.allclose(w, garl, rtol=0.01, atol=1e-6)


def test_importance_resampling_follows_the_ratio():
    log_ratio = torch.zeros(12)
    log_ratio[0], log_ratio[2] = 30.0, -30.0  # sample 0 became far more likely under pi_theta than pi_old
    w, m = paft_weights(REWARDS, GROUPS, log_ratio, q=0.75, seed=2)
    assert float(w[0]) == pytest.approx(0.5 ** 0.25 * 4) and float(w[2]) == 0.0  # every draw (clamped at +-20)
    u, _ = paft_weights(REWARDS, GROUPS, log_ratio, q=0.75, importance="uniform", seed=2)
    assert torch.equal(u, paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.75, seed=2)[0])
    mid = torch.zeros(12)
    mid[0] = math.log(3.0)  # w proportional to 3 : 1, so draws follow an independent multinomial on (0.75, 0.25)
    n0, n2 = counts_of([0.75, 0.25], 4, 5 * 1_000_003)
    w, _ = paft_weights(REWARDS, GROUPS, mid, q=0.75, seed=5)
    assert [float(w[0]), float(w[2])] == pytest.approx([0.5 ** 0.25 * n0, 0.5 ** 0.25 * n2], rel=1e-5)


def _batch(rewards, groups, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(rewards)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, 1: 2 + b % (T - 1)] = True  # 1..4 tokens
    old = -torch.rand(B, T, generator=g) * mask
    return RolloutBatch(torch.zeros(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.bool), mask, old,
                        torch.zeros(B, T), rewards, groups, old_logprobs=old)


def test_loss_and_gradient_are_the_plain_estimator():
    batch = _batch(REWARDS, GROUPS)
    logp = batch.old_logprobs.clone().requires_grad_(True)  # on-policy: ratio 1, uniform posterior draws
    terms = paft_loss(logp, batch, q=0.75, seed=4, rl_step=9)
    loss = reduce_loss(terms.per_token, batch.loss_mask, "seq_mean_token_sum")
    loss.backward()
    w, _ = paft_weights(REWARDS, GROUPS, ON_POLICY, q=0.75, seed=4 * 100_003 + 9)
    seq_logp = (batch.old_logprobs * batch.loss_mask).sum(-1)
    # -(1/K) sum_groups P_hat^(1-q) (1/S) sum_draws log pi(y_s) with K = 3 groups of M = S = 4
    n0, n2 = counts_of([0.5, 0.5], 4, (4 * 100_003 + 9) * 1_000_003 + 0)
    by_hand = -(0.5 ** 0.25 * (n0 * seq_logp[0] + n2 * seq_logp[2]) / 4 + 0.25 ** 0.25 * 4 * seq_logp[9] / 4) / 3
    assert loss.item() == pytest.approx(float(by_hand), rel=1e-6)
    assert torch.allclose(logp.grad, -(w / 12)[:, None] * batch.loss_mask, atol=1e-7)
    assert float(terms.metrics["clip_fraction"]) == 0.0 and float(terms.metrics["ratio_max"]) == 1.0
    # another step resamples differently (seeded by rl_step), the same step identically
    again = paft_loss(batch.old_logprobs, batch, q=0.75, seed=4, rl_step=9).per_token
    assert torch.equal(again, terms.per_token.detach())
    draws = {tuple(paft_weights(REWARDS, GROUPS, ON_POLICY, seed=4 * 100_003 + s)[0][:4].tolist()) for s in range(8)}
    assert len(draws) > 1


def test_registered_with_whole_groups_and_checked():
    from credo.cli import resolve_config
    from credo.objectives.base import needs_of
    from credo.train.run import validate

    assert OBJECTIVES.get("paft") is paft_loss and "whole_groups" in needs_of(paft_loss)
    validate(resolve_config("tiny", None, [("rl.objective", "paft"), ("rl.objective_params", '{"q": 1.0}')]))
    for params, field in (('{"q": -1}', "q"), ('{"importance": "sir"}', "importance"),
                          ('{"resample": -2}', "resample"), ('{"p_floor": 0}', "p_floor")):
        cfg = resolve_config("tiny", None, [("rl.objective", "paft"), ("rl.objective_params", params)])
        with pytest.raises(CredoError, match=rf"paft: rl.objective_params\['{field}'\]"):
            validate(cfg)
