"""DPO, rDPO, From r to Q* (q_star, implicit token rewards) and RTO (token reward + credit estimator):
hand-computed numbers, loop references, and each paper's key property."""

import itertools
import math
import random

import pytest
import torch

from credo.batch import RolloutBatch
from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.rto import rto_advantages, rto_advantages_loop
from credo.objectives import OBJECTIVES, reduce_loss
from credo.objectives.base import needs_of
from credo.objectives.preference import (
    dpo_loss,
    dpo_loss_loop,
    implicit_token_rewards,
    preference_pairs,
    preference_pairs_loop,
    q_star_loss,
    rdpo_loss,
    rdpo_pair_loss,
    rto_token_rewards,
)

JUNK = 5.0  # value at masked positions: a leak would change the numbers


def make_batch(rows, refs, rewards, groups, *, pad=1, with_ref=True):
    """rows / refs: per-response lists of completion-token logprobs (position 0 is the prompt).

    Returns (logprobs [B, T] leaf with grad, batch). Masked positions hold JUNK.
    """
    B = len(rows)
    T = 1 + max([len(r) for r in rows] + [1]) + pad
    logp = torch.full((B, T), JUNK)
    ref = torch.full((B, T), -JUNK)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (r, q) in enumerate(zip(rows, refs)):
        n = len(r)
        mask[i, 1 : 1 + n] = True
        logp[i, 1 : 1 + n] = torch.tensor(r, dtype=torch.float32)
        ref[i, 1 : 1 + n] = torch.tensor(q, dtype=torch.float32)
    batch = RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=torch.where(mask, logp, torch.zeros_like(logp)),
        advantages=torch.zeros(B, T),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(groups, dtype=torch.long),
        ref_logprobs=ref if with_ref else None,
    )
    return logp.requires_grad_(True), batch


def loss_and_grad(fn, logp, batch, mode="token_mean", **kw):
    terms = fn(logp, batch, **kw)
    loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad, terms


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# Two rows of one group: row 0 is chosen (reward 1), row 1 rejected (reward 0).
ROWS = [[-1.0, -2.0], [-0.5, -0.5, -1.0]]
REFS = [[-1.5, -1.0], [-1.0, -1.0, -1.0]]
H_W = (-1.0 - 2.0) - (-1.5 - 1.0)  # -0.5
H_L = (-0.5 - 0.5 - 1.0) - (-3.0)  # 1.0


# -- DPO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_dpo_two_rows_hand_computed_value_and_gradient(mode):
    logp, batch = make_batch(ROWS, REFS, [1.0, 0.0], [7, 7])
    beta = 0.1
    loss, grad, terms = loss_and_grad(dpo_loss, logp, batch, mode, beta=beta)
    z = beta * (H_W - H_L)  # -0.15
    assert loss == pytest.approx(-math.log(sigmoid(z)), rel=1e-6)
    g = beta * sigmoid(-z)  # dL / dlogp of a chosen token is -g, of a rejected token +g
    assert torch.allclose(grad[0, 1:3], torch.full((2,), -g), atol=1e-7)
    assert torch.allclose(grad[1, 1:4], torch.full((3,), g), atol=1e-7)
    assert float(grad[~batch.loss_mask].abs().max()) == 0.0
    assert terms.metrics["pairs"].item() == 1.0
    assert terms.metrics["reward_margin"].item() == pytest.approx(z, rel=1e-5)
    assert terms.metrics["reward_accuracy"].item() == 0.0
    assert terms.metrics["chosen_reward"].item() == pytest.approx(beta * H_W, rel=1e-5)


def test_dpo_label_comes_from_the_reward_not_the_row_order():
    logp, batch = make_batch(ROWS[::-1], REFS[::-1], [0.0, 1.0], [3, 3])
    loss, _, _ = loss_and_grad(dpo_loss, logp, batch, beta=0.1)
    assert loss == pytest.approx(-math.log(sigmoid(0.1 * (H_W - H_L))), rel=1e-6)


def _random_layout(rng, *, empty_rate=0.2):
    groups, rows, refs, rewards = [], [], [], []
    for g in range(rng.randint(1, 4)):
        for _ in range(rng.randint(1, 5)):
            n = 0 if rng.random() < empty_rate else rng.randint(1, 5)
            rows.append([rng.uniform(-3.0, -0.1) for _ in range(n)])
            refs.append([rng.uniform(-3.0, -0.1) for _ in range(n)])
            rewards.append(float(rng.choice([0.0, 0.5, 1.0, 1.0])))
            groups.append(g * 10 + 3)  # ids need not be dense
    order = list(range(len(rows)))
    rng.shuffle(order)  # groups interleaved in the batch
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return pick(rows), pick(refs), pick(rewards), pick(groups)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("pairing", ["best_worst", "all"])
def test_pairs_and_loss_match_the_loop_reference(seed, pairing):
    rng = random.Random(seed)
    rows, refs, rewards, groups = _random_layout(rng)
    nonempty = [len(r) > 0 for r in rows]
    chosen, rejected = preference_pairs(
        torch.tensor(rewards), torch.tensor(groups), torch.tensor(nonempty), pairing=pairing
    )
    got = sorted(zip(chosen.tolist(), rejected.tolist()))
    assert got == sorted(preference_pairs_loop(rewards, groups, nonempty, pairing=pairing))
    for eps in (0.0, 0.25):
        logp, batch = make_batch(rows, refs, rewards, groups)
        fn = dpo_loss if eps == 0.0 else rdpo_loss
        kw = {"pairing": pairing, "beta": 0.3} | ({"eps": eps} if eps else {})
        loss, grad, _ = loss_and_grad(fn, logp, batch, **kw)
        expected = dpo_loss_loop(
            [sum(r) for r in rows], [sum(q) for q in refs], rewards, groups, [len(r) for r in rows],
            beta=0.3, eps=eps, pairing=pairing,
        )
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert torch.isfinite(grad).all()
        assert float(grad[~batch.loss_mask].abs().max()) == 0.0


def test_best_worst_pairing_rule_ties_and_empty_rows():
    # group 0: two rows tie for best (rows 0 and 2) -> the first; an empty row with the top reward is skipped
    # group 1: all equal -> no pair; group 2: one row -> no pair; group 3: 0.5 vs 0.2
    rewards = [1.0, 0.0, 1.0, 0.0, 2.0, 0.3, 0.3, 0.9, 0.5, 0.2]
    groups = [0, 0, 0, 0, 0, 1, 1, 2, 3, 3]
    nonempty = [True, True, True, True, False, True, True, True, True, True]
    chosen, rejected = preference_pairs(torch.tensor(rewards), torch.tensor(groups), torch.tensor(nonempty))
    assert list(zip(chosen.tolist(), rejected.tolist())) == [(0, 1), (8, 9)]
    chosen, rejected = preference_pairs(
        torch.tensor(rewards), torch.tensor(groups), torch.tensor(nonempty), pairing="all"
    )
    assert sorted(zip(chosen.tolist(), rejected.tolist())) == [(0, 1), (0, 3), (2, 1), (2, 3), (8, 9)]


@pytest.mark.parametrize("fn", [dpo_loss, rdpo_loss, q_star_loss])
@pytest.mark.parametrize(
    "rows, rewards, groups",
    [
        ([[-1.0, -2.0], [-0.5]], [1.0, 1.0], [0, 0]),  # equal rewards: no pair
        ([[-1.0, -2.0]], [1.0], [0]),  # group of one
        ([[], []], [1.0, 0.0], [0, 0]),  # empty responses
        ([[-1.0], [], [-2.0]], [0.0, 1.0, 0.0], [0, 0, 1]),  # the only better row is empty
    ],
)
def test_degenerate_batches_give_zero_loss_and_zero_gradient(fn, rows, rewards, groups):
    logp, batch = make_batch(rows, rows, rewards, groups)
    for mode in ("token_mean", "seq_mean_token_mean", "token_sum"):
        loss, grad, terms = loss_and_grad(fn, logp, batch, mode)
        assert loss == 0.0
        assert float(grad.abs().max()) == 0.0
        assert terms.metrics["pairs"].item() == 0.0
        assert all(torch.isfinite(v).all() for v in terms.metrics.values())


def test_dpo_needs_ref_and_whole_groups_and_a_reference_model():
    assert needs_of(OBJECTIVES.get("dpo")) == {"whole_groups", "ref"}
    assert needs_of(OBJECTIVES.get("rdpo")) == {"whole_groups", "ref"}
    assert needs_of(OBJECTIVES.get("q_star")) == {"whole_groups", "ref"}
    logp, batch = make_batch(ROWS, REFS, [1.0, 0.0], [0, 0], with_ref=False)
    with pytest.raises(ValueError, match="ref_logprobs"):
        dpo_loss(logp, batch)
    logp, batch = make_batch(ROWS, REFS, [1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(logp, batch, beta=0.0)
    with pytest.raises(ValueError, match="pairing"):
        dpo_loss(logp, batch, pairing="random")


# -- rDPO -----------------------------------------------------------------------------------------


def test_rdpo_pair_loss_hand_computed():
    z, eps = 0.5, 0.2
    clean, flipped = math.log1p(math.exp(-z)), math.log1p(math.exp(z))
    expected = ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)
    assert rdpo_pair_loss(torch.tensor([z]), eps=eps).item() == pytest.approx(expected, rel=1e-6)


def test_rdpo_with_eps_zero_is_dpo():
    rng = random.Random(3)
    rows, refs, rewards, groups = _random_layout(rng, empty_rate=0.0)
    logp, batch = make_batch(rows, refs, rewards, groups)
    a, ga, _ = loss_and_grad(dpo_loss, logp, batch, beta=0.2)
    b, gb, _ = loss_and_grad(rdpo_loss, logp, batch, beta=0.2, eps=0.0)
    assert a == pytest.approx(b, rel=1e-6)
    assert torch.allclose(ga, gb, atol=1e-7)


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.45])
def test_rdpo_is_unbiased_under_random_label_flips(eps):
    """E over independent flips (each pair's label swapped w.p. eps) of the rDPO loss == clean DPO loss.
    The expectation is exact: all 2^P flip patterns, weighted by their probabilities."""
    rows = [[-1.0, -2.0], [-0.5], [-3.0, -0.2], [-1.0], [-0.7, -0.7, -0.1], [-2.0]]
    refs = [[-1.2, -1.0], [-1.5], [-1.0, -1.0], [-0.4], [-1.0, -1.0, -1.0], [-1.0]]
    groups = [0, 0, 1, 1, 2, 2]
    clean = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    logp, batch = make_batch(rows, refs, clean, groups)
    target, target_grad, _ = loss_and_grad(dpo_loss, logp, batch, beta=0.5)
    expected, expected_grad = 0.0, torch.zeros_like(logp)
    for flips in itertools.product([False, True], repeat=3):
        rewards = list(clean)
        for g, flip in enumerate(flips):
            if flip:
                rewards[2 * g], rewards[2 * g + 1] = rewards[2 * g + 1], rewards[2 * g]
        prob = math.prod(eps if f else 1 - eps for f in flips)
        _, noisy = make_batch(rows, refs, rewards, groups)
        loss, grad, _ = loss_and_grad(rdpo_loss, logp, noisy, beta=0.5, eps=eps)
        expected += prob * loss
        expected_grad += prob * grad
    assert expected == pytest.approx(target, rel=1e-5)
    assert torch.allclose(expected_grad, target_grad, atol=1e-6)
    # while plain DPO on the noisy labels is biased
    noisy_dpo = sum(
        math.prod(eps if f else 1 - eps for f in flips)
        * dpo_loss_loop([sum(r) for r in rows], [sum(q) for q in refs],
                        [clean[i] if not flips[i // 2] else clean[i ^ 1] for i in range(6)], groups, [1] * 6, beta=0.5)
        for flips in itertools.product([False, True], repeat=3)
    )
    assert abs(noisy_dpo - target) > 1e-3


@pytest.mark.parametrize("eps", [0.5, 0.6, 1.0, -0.1])
def test_rdpo_rejects_flip_rates_at_or_above_one_half(eps):
    logp, batch = make_batch(ROWS, REFS, [1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        rdpo_loss(logp, batch, eps=eps)


# -- From r to Q* ---------------------------------------------------------------------------------


def test_implicit_token_rewards_sum_to_the_sequence_implicit_reward():
    logp, batch = make_batch(ROWS, REFS, [1.0, 0.0], [0, 0])
    beta = 0.25
    r = implicit_token_rewards(logp, batch.ref_logprobs, batch.loss_mask, beta)
    assert r[0, 1:3].tolist() == pytest.approx([beta * 0.5, beta * -1.0])
    assert float(r.detach()[~batch.loss_mask].abs().max()) == 0.0  # JUNK never leaks
    assert r.sum(-1).tolist() == pytest.approx([beta * H_W, beta * H_L], rel=1e-6)
    (grad,) = torch.autograd.grad(r.sum(), logp)
    assert torch.equal(grad, beta * batch.loss_mask.float())


@pytest.mark.parametrize("seed", range(6))
def test_q_star_has_dpo_value_and_gradient_under_token_mean(seed):
    rows, refs, rewards, groups = _random_layout(random.Random(100 + seed))
    logp, batch = make_batch(rows, refs, rewards, groups)
    a, ga, _ = loss_and_grad(dpo_loss, logp, batch, beta=0.3)
    b, gb, terms = loss_and_grad(q_star_loss, logp, batch, beta=0.3)
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert torch.allclose(ga, gb, atol=1e-6)
    assert terms.metrics["dpo_loss"].item() == pytest.approx(a, rel=1e-5, abs=1e-6)


def test_q_star_per_token_is_the_token_credit_decomposition():
    # group 0: the 2-row pair above; group 1: a single row (unpaired -> all zeros)
    rows, refs = ROWS + [[-0.3, -0.9]], REFS + [[-1.0, -1.0]]
    logp, batch = make_batch(rows, refs, [1.0, 0.0, 1.0], [0, 0, 1])
    beta = 0.1
    terms = q_star_loss(logp, batch, beta=beta)
    per_token = terms.per_token.detach()
    n_tokens = 7.0
    z = beta * (H_W - H_L)
    w = sigmoid(-z)  # one pair: dL/dz = -sigma(-z)
    loss = math.log1p(math.exp(-z))
    r = implicit_token_rewards(logp, batch.ref_logprobs, batch.loss_mask, beta).detach()
    for row, coef, n in ((0, -w, 2), (1, w, 3)):
        tokens = per_token[row, 1 : 1 + n] / n_tokens
        # each token's entry: its implicit reward times the pair's weight, plus one offset per row ...
        offset = (loss / 2 - coef * float(r[row].sum())) / n
        assert tokens.tolist() == pytest.approx((coef * r[row, 1 : 1 + n] + offset).tolist(), rel=1e-5, abs=1e-7)
        # ... and each row's entries add up to half of the pair loss
        assert float(tokens.sum()) == pytest.approx(loss / 2, rel=1e-5)
    assert float(per_token[2].abs().max()) == 0.0
    assert terms.metrics["implicit_token_reward_mean"].item() == pytest.approx(float(r.sum()) / n_tokens, rel=1e-5)


# -- RTO ------------------------------------------------------------------------------------------


def test_rto_token_rewards_hand_computed():
    mask = torch.tensor([[False, True, True, True, False], [False, False, False, False, False]])
    dpo = torch.tensor([[9.0, -1.0, -2.0, -0.5, 9.0], [0.0] * 5])
    ref = torch.tensor([[9.0, -1.5, -1.0, -0.5, 9.0], [0.0] * 5])
    pol = torch.tensor([[9.0, -1.2, -1.1, -0.9, 9.0], [0.0] * 5])
    rm = torch.tensor([15.0, 3.0])
    out = rto_token_rewards(dpo, ref, pol, mask, rm, beta1=0.05, clip=0.05, kl_coef=0.01)
    # beta1 * (dpo - ref) = 0.025, -0.05, 0 (within the clip); KL = -0.2+... (pol - ref) = 0.3, -0.1, -0.4
    expected = [0.0, 0.025 - 0.01 * 0.3, -0.05 - 0.01 * -0.1, 0.0 - 0.01 * -0.4 + 10.0, 0.0]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert out[1].tolist() == [0.0] * 5  # no loss token: no reward at all
    clipped = rto_token_rewards(dpo, ref, pol, mask, rm, beta1=1.0, clip=0.05, kl_coef=0.0)
    assert clipped[0, 1:4].tolist() == pytest.approx([0.05, -0.05, 10.0])
    unclipped = rto_token_rewards(dpo, ref, pol, mask, rm, beta1=1.0, clip=0.0, kl_coef=0.0)
    assert unclipped[0, 1:4].tolist() == pytest.approx([0.5, -1.0, 10.0])


def _rto_inputs(mask, *, rewards, seed=0, values=False):
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    extras = {"dpo_logprobs": -torch.rand(B, T, generator=g) * 2}
    return CreditInputs(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.arange(B),
        loss_mask=mask,
        logprobs=-torch.rand(B, T, generator=g) * 2,
        ref_logprobs=-torch.rand(B, T, generator=g) * 2,
        values=torch.randn(B, T, generator=g) if values else None,
        extras=extras,
    )


def test_rto_advantages_hand_computed_return_to_go_and_gae():
    mask = torch.tensor([[False, True, True, False, True]])  # a gap at position 3 (an environment token)
    inputs = CreditInputs(
        rewards=torch.tensor([1.0]),
        group_ids=torch.tensor([0]),
        loss_mask=mask,
        logprobs=torch.zeros(1, 5),
        ref_logprobs=torch.zeros(1, 5),
        extras={"dpo_logprobs": torch.tensor([[0.0, 0.4, -0.2, 7.0, 0.0]])},
        values=torch.tensor([[0.0, 0.5, 0.2, 9.0, 0.1]]),
    )
    # rewards (kl 0 since logprobs == ref): 0.05*0.4 = 0.02, 0.05*-0.2 = -0.01, 0 + 1.0 (outcome) = 1.0
    no_critic = rto_advantages(CreditInputs(**{**inputs.__dict__, "values": None}), gamma=0.9)
    expected = [0.0, 0.02 + 0.9 * (-0.01 + 0.9 * 1.0), -0.01 + 0.9, 0.0, 1.0]
    assert no_critic[0].tolist() == pytest.approx(expected, abs=1e-6)
    gae = rto_advantages(inputs, gamma=0.9, lam=0.5)
    d4 = 1.0 + 0.0 - 0.1  # last loss token: no next value
    d2 = -0.01 + 0.9 * 0.1 - 0.2  # the next state of position 2 is position 4 (3 is skipped)
    d1 = 0.02 + 0.9 * 0.2 - 0.5
    a4, a2 = d4, d2 + 0.45 * d4
    assert gae[0].tolist() == pytest.approx([0.0, d1 + 0.45 * a2, a2, 0.0, a4], abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("values", [False, True])
def test_rto_advantages_match_the_loop_reference(seed, values):
    rng = random.Random(seed)
    B, T = rng.randint(1, 5), rng.randint(2, 9)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        if rng.random() < 0.2:
            continue  # empty response
        for t in range(1, T):
            mask[b, t] = rng.random() < 0.7  # gaps: environment tokens inside the completion
    inputs = _rto_inputs(mask, rewards=[rng.uniform(-12, 12) for _ in range(B)], seed=seed, values=values)
    kw = {"gamma": rng.choice([1.0, 0.9]), "lam": rng.choice([0.95, 0.5]), "clip": rng.choice([0.05, 0.0])}
    got = rto_advantages(inputs, **kw)
    assert got.tolist() == [pytest.approx(row, abs=1e-5) for row in rto_advantages_loop(inputs, **kw)]
    assert float(got[~mask].abs().max()) == 0.0 if (~mask).any() else True
    assert torch.isfinite(got).all()


def test_rto_is_a_registered_token_level_estimator_with_clear_errors():
    fn = CREDIT.get("rto")
    assert is_token_level(fn) and credit_needs_of(fn) == {"logprobs", "ref_logprobs", "values", "extras"}
    mask = torch.tensor([[False, True, True]])
    inputs = _rto_inputs(mask, rewards=[1.0])
    with pytest.raises(ValueError, match="dpo_logprobs"):
        rto_advantages(CreditInputs(**{**inputs.__dict__, "extras": {}}))
    with pytest.raises(ValueError, match="dpo_logprobs"):
        rto_advantages(CreditInputs(**{**inputs.__dict__, "extras": {"dpo_logprobs": torch.zeros(1, 2)}}))
    with pytest.raises(ValueError, match="ref_logprobs"):
        rto_advantages(CreditInputs(**{**inputs.__dict__, "ref_logprobs": None}))


@pytest.mark.parametrize("fn, kw", [(dpo_loss, {}), (rdpo_loss, {"eps": 0.2}), (q_star_loss, {"pairing": "all"})])
def test_gradients_match_finite_differences(fn, kw):
    rows, refs, rewards, groups = _random_layout(random.Random(11), empty_rate=0.1)
    _, batch = make_batch(rows, refs, rewards, groups)
    start = torch.where(batch.loss_mask, batch.sampler_logprobs, torch.full_like(batch.sampler_logprobs, JUNK))
    logp = start.double().requires_grad_(True)

    def value(x):
        return reduce_loss(fn(x, batch, beta=0.7, **kw).per_token, batch.loss_mask, "token_mean")

    assert torch.autograd.gradcheck(value, (logp,), eps=1e-6, atol=1e-6)
