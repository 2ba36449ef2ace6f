"""BPO / GBPO, FiberPO and Tsallis J_Q (GARL) against hand-computed numbers and each paper's key property."""

import math
import random

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.objectives import OBJECTIVES, reduce_loss
from credo.objectives.trust_region import (
    bpo_loss,
    fiber_coordinates,
    fiberpo_loss,
    garl_advantages,
    garl_loss,
    gbpo_loss,
    group_median_advantages,
)


def make_batch(log_ratios, adv=None, *, rewards=None, groups=None, base=-1.0, ref=None, pad=1):
    """rows of token log-ratios (log pi - log pi_old) -> (logprobs [B, T] leaf, batch).

    old logprobs = base, logprobs = base + log-ratio; adv: one advantage per row (broadcast).
    Masked positions hold the junk value 5.0.
    """
    B = len(log_ratios)
    T = 1 + max([len(r) for r in log_ratios] + [1]) + pad
    logp = torch.full((B, T), 5.0)
    old = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    a = torch.zeros(B, T)
    for i, r in enumerate(log_ratios):
        n = len(r)
        mask[i, 1 : 1 + n] = True
        old[i, 1 : 1 + n] = base
        logp[i, 1 : 1 + n] = base + torch.tensor(r, dtype=torch.float32)
        if adv is not None:
            a[i, 1 : 1 + n] = adv[i]
    batch = RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=old,
        advantages=a,
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * B, dtype=torch.float32),
        group_ids=torch.tensor(groups if groups is not None else [0] * B, dtype=torch.long),
        ref_logprobs=None if ref is None else torch.full((B, T), ref),
    )
    return logp.requires_grad_(True), batch


def per_token_grad(fn, logp, batch, **kw):
    """The gradient of sum(per_token * mask): each token's own loss gradient, no reduction weights."""
    terms = fn(logp, batch, **kw)
    loss = reduce_loss(terms.per_token, batch.loss_mask, "token_sum")
    (grad,) = torch.autograd.grad(loss, logp)
    return terms, grad


# -- BPO -----------------------------------------------------------------------------------------


def test_bpo_hand_computed_kl_and_chi2():
    lr = [math.log(1.1), math.log(0.7)]
    logp, batch = make_batch([[lr[0]], [lr[1]]], adv=[2.0, -1.0])
    terms, grad = per_token_grad(bpo_loss, logp, batch)
    # A = +2: target 1.2, weight 2 / 0.2 ; A = -1: target 0.8, weight 1 / 0.2
    d0 = 1.1 - 1.2 - 1.2 * (math.log(1.1) - math.log(1.2))
    d1 = 0.7 - 0.8 - 0.8 * (math.log(0.7) - math.log(0.8))
    assert terms.per_token[0, 1].item() == pytest.approx(10.0 * d0, rel=1e-5)
    assert terms.per_token[1, 1].item() == pytest.approx(5.0 * d1, rel=1e-5)
    assert grad[0, 1].item() == pytest.approx(10.0 * (1.1 - 1.2), rel=1e-5)  # push up toward 1.2
    assert grad[1, 1].item() == pytest.approx(5.0 * (0.7 - 0.8), rel=1e-5)  # below the box: pulled back up
    assert terms.metrics["clip_fraction"].item() == pytest.approx(0.5)  # 0.7 is outside [0.8, 1.2]
    terms, grad = per_token_grad(bpo_loss, logp, batch, divergence="chi2")
    assert terms.per_token[0, 1].item() == pytest.approx(10.0 * 0.5 * (1.1 - 1.2) ** 2, rel=1e-5)
    assert grad[0, 1].item() == pytest.approx(10.0 * 1.1 * (1.1 - 1.2), rel=1e-5)


@pytest.mark.parametrize("divergence", ["kl", "chi2"])
@pytest.mark.parametrize("clips", [(0.2, 0.2), (0.1, 0.3)])
def test_bpo_on_policy_gradient_is_the_policy_gradient(divergence, clips):
    adv = [1.5, -0.5, 0.0, 2.0]
    logp, batch = make_batch([[0.0, 0.0], [0.0], [0.0], [0.0, 0.0, 0.0]], adv=adv)
    _, grad = per_token_grad(bpo_loss, logp, batch, divergence=divergence, clip_low=clips[0], clip_high=clips[1])
    expected = -batch.advantages
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("divergence", ["kl", "chi2"])
def test_bpo_stops_at_the_box_edge_and_pulls_back_beyond_it(divergence):
    eps = 0.2
    ratios = [1.0 + eps, 1.0 + eps + 0.1, 1.0 - eps, 1.0 - eps - 0.1]
    adv = [1.0, 1.0, -1.0, -1.0]
    logp, batch = make_batch([[math.log(r)] for r in ratios], adv=adv)
    _, grad = per_token_grad(bpo_loss, logp, batch, divergence=divergence)
    g = grad[:, 1]
    assert g[0].item() == pytest.approx(0.0, abs=1e-6) and g[2].item() == pytest.approx(0.0, abs=1e-6)
    assert g[1].item() > 0  # above 1 + eps with A > 0: descent lowers the ratio back (PPO: zero gradient)
    assert g[3].item() < 0  # below 1 - eps with A < 0: raised back


def test_bpo_rejects_bad_clip_and_divergence():
    logp, batch = make_batch([[0.0]], adv=[1.0])
    with pytest.raises(ValueError, match="clip_low"):
        bpo_loss(logp, batch, clip_low=1.0)
    with pytest.raises(ValueError, match="divergence"):
        bpo_loss(logp, batch, divergence="tv")


# -- GBPO ----------------------------------------------------------------------------------------


def test_group_median_advantages_hand_computed():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.3, 0.3, 0.7, 0.2, 0.9, 0.4])
    groups = torch.tensor([0, 0, 0, 0, 5, 5, 2, 2, 9, 3, 3, 3])
    adv = group_median_advantages(rewards, groups)
    std0 = np.std([1, 1, 1, 0], ddof=1)
    # majority correct: the median is 1, so only the wrong answer moves
    assert adv[:4].tolist() == pytest.approx([0, 0, 0, -1 / (std0 + 1e-6)], abs=1e-6)
    std1 = np.std([1, 0], ddof=1)
    assert adv[4:6].tolist() == pytest.approx([0.5 / (std1 + 1e-6), -0.5 / (std1 + 1e-6)], rel=1e-5)
    assert adv[6:8].tolist() == [0.0, 0.0]  # zero variance
    assert adv[8].item() == pytest.approx(0.7)  # a group of one: median 0, std 1 (GRPO's convention)
    std3 = np.std([0.2, 0.9, 0.4], ddof=1)
    assert adv[9:].tolist() == pytest.approx([(x - 0.4) / (std3 + 1e-6) for x in (0.2, 0.9, 0.4)], rel=1e-5)
    raw = group_median_advantages(rewards, groups, scale_by_std=False)
    assert raw[9:].tolist() == pytest.approx([-0.2, 0.5, 0.0], abs=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_group_median_matches_numpy(seed):
    rng = random.Random(seed)
    rewards, groups = [], []
    for g in rng.sample(range(50), rng.randint(1, 5)):
        for _ in range(rng.randint(1, 6)):
            rewards.append(rng.choice([0.0, 1.0, round(rng.random(), 2)]))
            groups.append(g)
    perm = list(range(len(rewards)))
    rng.shuffle(perm)
    rewards = [rewards[i] for i in perm]
    groups = [groups[i] for i in perm]
    adv = group_median_advantages(torch.tensor(rewards), torch.tensor(groups), scale_by_std=False)
    for i, (r, g) in enumerate(zip(rewards, groups)):
        members = [rr for rr, gg in zip(rewards, groups) if gg == g]
        expected = r if len(members) == 1 else r - float(np.median(members))
        if len(members) > 1 and max(members) == min(members):
            expected = 0.0
        assert adv[i].item() == pytest.approx(expected, abs=1e-6)


def test_gbpo_uses_median_advantage_from_rewards_and_ignores_batch_advantages():
    rewards = [1.0, 0.0, 0.0, 0.0]
    logp, batch = make_batch([[0.0, 0.0], [0.0], [0.0], [0.0]], adv=[9.0, 9.0, 9.0, 9.0], rewards=rewards)
    _, grad = per_token_grad(gbpo_loss, logp, batch, scale_by_std=False)
    # median 0: only the correct answer moves, with A = 1; on-policy gradient = -A per token
    assert grad[0, 1:3].tolist() == pytest.approx([-1.0, -1.0], abs=1e-6)
    assert grad[1:].abs().max().item() == 0.0
    # all-zero rewards (a tiny random model): no loss, no gradient
    logp, batch = make_batch([[0.1], [0.2]], adv=[1.0, 1.0], rewards=[0.0, 0.0])
    terms, grad = per_token_grad(gbpo_loss, logp, batch)
    assert terms.per_token.abs().max().item() == 0.0 and grad.abs().max().item() == 0.0


# -- FiberPO -------------------------------------------------------------------------------------


def test_fiber_coordinates_hand_computed():
    log_ratio = torch.tensor([[0.0, 0.1, 0.3, 9.0], [0.0, 0.2, 9.0, 9.0], [0.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[False, True, True, False], [False, True, False, False], [False] * 4])
    base, fiber = fiber_coordinates(log_ratio, mask)
    assert base.tolist() == pytest.approx([0.2, 0.2, 0.0])
    assert fiber[0].tolist() == pytest.approx([0.0, -0.1, 0.1, 0.0], abs=1e-6)
    assert fiber[1:].abs().max().item() == pytest.approx(0.0, abs=1e-6)
    base_sum, fiber_sum = fiber_coordinates(log_ratio, mask, aggregate="sum")
    assert base_sum.tolist() == pytest.approx([0.4, 0.2, 0.0])
    assert torch.allclose(fiber_sum, fiber)


def test_fiberpo_on_policy_is_the_policy_gradient():
    logp, batch = make_batch([[0.0, 0.0], [0.0], [0.0, 0.0, 0.0]], adv=[1.0, -2.0, 0.5])
    terms, grad = per_token_grad(fiberpo_loss, logp, batch)
    assert torch.allclose(grad, -batch.advantages, atol=1e-6)
    assert terms.metrics["clip_fraction"].item() == 0.0


def test_fiberpo_base_gate_closes_a_whole_trajectory_in_the_pushed_direction_only():
    drift = [0.1, 0.1, 0.1]  # every token 0.1 up: base 0.1 > 0.05, fibers 0
    logp, batch = make_batch([drift, drift], adv=[1.0, -1.0])
    terms, grad = per_token_grad(fiberpo_loss, logp, batch)
    r = math.exp(0.1)
    assert grad[0].abs().max().item() == 0.0  # A > 0 would push it further: closed
    assert grad[1, 1:4].tolist() == pytest.approx([r] * 3, rel=1e-5)  # A < 0 pulls it back: open
    # the value is always the importance-weighted surrogate -A r
    assert terms.per_token[0, 1:4].tolist() == pytest.approx([-r] * 3, rel=1e-5)
    assert terms.metrics["base_gate_closed"].item() == pytest.approx(0.5)


def test_fiberpo_fiber_gate_closes_tokens_that_drift_from_their_trajectory():
    lr = [0.0, 0.5, -0.1]  # mean 0.1333: e = -0.133, 0.367, -0.233
    logp, batch = make_batch([lr, lr], adv=[1.0, -1.0])
    _, grad = per_token_grad(fiberpo_loss, logp, batch, budget_traj=1.0, budget_token=0.2)
    r = [math.exp(x) for x in lr]
    assert grad[0, 1:4].tolist() == pytest.approx([-r[0], 0.0, -r[2]], rel=1e-5)  # e = 0.367 > 0.2 closed
    assert grad[1, 1:4].tolist() == pytest.approx([r[0], r[1], 0.0], rel=1e-5)  # e = -0.233 < -0.2 closed


def test_fiberpo_gradient_is_block_diagonal_over_trajectories():
    logp, batch = make_batch([[0.02, -0.3, 0.1], [0.0, 0.4]], adv=[1.0, -1.0])
    _, g1 = per_token_grad(fiberpo_loss, logp, batch)
    logp2, batch2 = make_batch([[0.02, -0.3, 0.1], [0.3, -0.6]], adv=[1.0, -1.0])  # row 1 changed
    _, g2 = per_token_grad(fiberpo_loss, logp2, batch2)
    assert torch.equal(g1[0], g2[0])


# -- GARL (Tsallis J_Q) --------------------------------------------------------------------------


def test_garl_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    adv, p_hat = garl_advantages(rewards, groups, q=0.75)
    amp = 0.25 ** -0.75
    assert adv[:4].tolist() == pytest.approx([amp * 0.75, -amp * 0.25, -amp * 0.25, -amp * 0.25], rel=1e-6)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # P_hat = 0 (floored, finite) and P_hat = 1
    assert p_hat.tolist() == pytest.approx([0.25] * 4 + [0.0] * 2 + [1.0] * 2)
    none, _ = garl_advantages(rewards, groups, q=1.0, baseline="none")
    assert none.tolist() == pytest.approx([4.0, 0, 0, 0, 0, 0, 1.0, 1.0])
    # threshold 0.5: 0.4 is a failure, 0.6 a success
    adv_t, p_t = garl_advantages(torch.tensor([0.4, 0.6]), torch.tensor([0, 0]), q=0.0)
    assert p_t.tolist() == pytest.approx([0.5, 0.5]) and adv_t.tolist() == pytest.approx([-0.5, 0.5])


def garl_setup():
    rows = [[0.0, 0.0], [0.0], [0.0, 0.0, 0.0], [0.0], [0.0, 0.0], [0.0], [0.0], [0.0, 0.0]]
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    return make_batch(rows, rewards=rewards, groups=groups)


def seq_logprob_objective_grad(logp, batch, weights):
    """grad of -(1/K) sum_q sum_i weights_i S_i, S_i = sum_t log pi(y_i,t): an independent formula."""
    p = logp.detach().clone().requires_grad_(True)
    seq = (p * batch.loss_mask).sum(-1)
    (g,) = torch.autograd.grad(-(torch.tensor(weights) * seq).sum() / 2.0, p)
    return g


def test_garl_q0_is_the_rlvr_gradient_and_q1_the_log_likelihood_gradient():
    logp, batch = garl_setup()
    M = 4
    c = batch.rewards.tolist()

    def grad_of(q):
        terms = garl_loss(logp, batch, q=q, baseline="none")
        loss = reduce_loss(terms.per_token, batch.loss_mask, "seq_mean_token_sum")
        return torch.autograd.grad(loss, logp)[0]

    # q = 0: grad of -(1/K) sum_q (1/M) sum_i c_i S_i  (REINFORCE of the success probability)
    assert torch.allclose(grad_of(0.0), seq_logprob_objective_grad(logp, batch, [ci / M for ci in c]), atol=1e-6)
    # q = 1: grad of -(1/K) sum_q mean_{correct i} S_i  (SFT on correct samples: grad log P)
    p = [2 / 4] * 4 + [1 / 4] * 4
    w1 = [ci / (M * pi) for ci, pi in zip(c, p)]
    assert w1 == pytest.approx([0.5, 0, 0.5, 0, 0, 0, 1.0, 0])
    assert torch.allclose(grad_of(1.0), seq_logprob_objective_grad(logp, batch, w1), atol=1e-6)


def test_garl_every_q_shares_the_direction_per_prompt():
    logp, batch = garl_setup()
    keep = batch.group_ids == 0
    sub = batch.select(torch.nonzero(keep).flatten())
    lp = logp.detach()[keep][:, : sub.tokens.shape[1]].clone().requires_grad_(True)
    grads = []
    for q in (0.0, 0.5, 0.75, 1.0):
        terms = garl_loss(lp, sub, q=q)
        loss = reduce_loss(terms.per_token, sub.loss_mask, "token_mean")
        grads.append(torch.autograd.grad(loss, lp)[0].flatten())
    for q, g in zip((0.5, 0.75, 1.0), grads[1:]):
        assert torch.allclose(g, grads[0] * 0.5 ** -q, atol=1e-6)  # P_hat = 1/2: amplified by 2^q


def test_garl_all_zero_rewards_give_zero_gradient():
    logp, batch = make_batch([[0.1], [0.0, -0.2]], rewards=[0.0, 0.0], groups=[0, 0])
    for baseline in ("mean", "none"):
        terms, grad = per_token_grad(garl_loss, logp, batch, baseline=baseline)
        assert grad.abs().max().item() == 0.0 and torch.isfinite(terms.per_token).all()


def test_garl_rejects_bad_arguments():
    logp, batch = garl_setup()
    with pytest.raises(ValueError, match="q"):
        garl_loss(logp, batch, q=-0.1)
    with pytest.raises(ValueError, match="baseline"):
        garl_loss(logp, batch, baseline="median")


# -- shared properties ---------------------------------------------------------------------------

ALL = [bpo_loss, gbpo_loss, fiberpo_loss, garl_loss]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_masked_positions_and_empty_rows_get_zero_gradient(fn, mode):
    logp, batch = make_batch(
        [[0.1, -0.2], [], [0.05, 0.3, -0.4]], adv=[1.0, 1.0, -1.0], rewards=[1.0, 1.0, 0.0], groups=[0, 0, 0]
    )
    terms = fn(logp, batch)
    loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[~batch.loss_mask].abs().max().item() == 0.0
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", ALL)
def test_all_empty_batch_is_finite(fn):
    logp, batch = make_batch([[], []], adv=[1.0, -1.0], rewards=[1.0, 0.0])
    terms = fn(logp, batch)
    loss = reduce_loss(terms.per_token, batch.loss_mask, "token_mean")
    assert loss.item() == 0.0
    assert all(math.isfinite(float(v)) for v in terms.metrics.values())


@pytest.mark.parametrize("fn", ALL)
def test_extreme_log_ratios_stay_finite(fn):
    logp, batch = make_batch([[60.0, -60.0], [30.0]], adv=[1.0, -1.0], rewards=[1.0, 0.0])
    terms, grad = per_token_grad(fn, logp, batch)
    assert torch.isfinite(terms.per_token[batch.loss_mask]).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", ALL)
def test_kl_penalty_term(fn):
    logp, batch = make_batch([[0.0, 0.0]], adv=[1.0], rewards=[1.0], base=-1.0, ref=-1.5)
    base = fn(logp, batch).per_token
    with_kl = fn(logp, batch, kl_coef=0.1)
    d = -0.5  # ref - logp
    assert (with_kl.per_token - base)[batch.loss_mask].tolist() == pytest.approx(
        [0.1 * (math.exp(d) - d - 1)] * 2, rel=1e-5
    )


def test_registered():
    for name in ("bpo", "gbpo", "fiberpo", "garl"):
        assert name in OBJECTIVES
