"""F-GRPO (objective + credit estimator) and BN-GSPO (objective + credit estimator): hand-computed
numbers, loop references, and each method's key property."""

import math
import random

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.bn_gspo import bn_gspo_advantages, bn_gspo_advantages_loop
from credo.credit.factorized import f_grpo_advantages, f_grpo_advantages_loop
from credo.objectives import reduce_loss
from credo.objectives.bn_gspo import bn_gspo_loss
from credo.objectives.factorized import f_grpo_loss
from credo.objectives.ratio_variants import gspo_loss

JUNK = 5.0


def make_batch(rows, advantages, segments=None, *, old=None, rewards=None, groups=None):
    """rows: per-response completion-token logprobs; advantages / segments / old: same-shaped lists.

    Returns (logprobs [B, T] leaf with grad, batch). Masked positions hold JUNK; old defaults to rows.
    """
    B = len(rows)
    T = 2 + max([len(r) for r in rows] + [1])
    logp = torch.full((B, T), JUNK)
    old_t = torch.zeros(B, T)
    adv = torch.zeros(B, T)
    seg = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r)
        mask[i, 1 : 1 + n] = True
        logp[i, 1 : 1 + n] = torch.tensor(r, dtype=torch.float32)
        old_t[i, 1 : 1 + n] = torch.tensor((old or rows)[i], dtype=torch.float32)
        adv[i, 1 : 1 + n] = torch.tensor(advantages[i], dtype=torch.float32)
        if segments is not None:
            seg[i, 1 : 1 + n] = torch.tensor(segments[i], dtype=torch.long)
    batch = RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=old_t,
        advantages=adv,
        rewards=torch.tensor(rewards or [0.0] * B, dtype=torch.float32),
        group_ids=torch.tensor(groups or list(range(B)), dtype=torch.long),
        segment_ids=seg if segments is not None else None,
    )
    return logp.requires_grad_(True), batch


def loss_and_grad(fn, logp, batch, mode="seq_mean_token_mean", **kw):
    terms = fn(logp, batch, **kw)
    loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad, terms


# Row 0: 3 generation tokens (A = 1) then 2 ranking tokens (A = -0.5).
# Row 1: 2 generation tokens (A = -1), one token of no phase, 1 ranking token (A = 2).
ROWS = [[-1.0, -0.5, -2.0, -0.3, -0.7], [-1.2, -0.4, -0.9, -0.6]]
SEGS = [[0, 0, 0, 1, 1], [0, 0, -1, 1]]
ADVS = [[1.0, 1.0, 1.0, -0.5, -0.5], [-1.0, -1.0, 0.0, 2.0]]


# -- F-GRPO objective -----------------------------------------------------------------------------


def test_f_grpo_on_policy_value_and_gradient_hand_computed():
    logp, batch = make_batch(ROWS, ADVS, SEGS)
    loss, grad, terms = loss_and_grad(f_grpo_loss, logp, batch)
    # ratio 1: each (row, phase) term is -A; the rows' terms are summed, rows averaged
    assert loss == pytest.approx(((-1.0 + 0.5) + (1.0 - 2.0)) / 2, rel=1e-6)
    # d s / d logp_t = s / n_phase, and 1/N = 1/2 rows
    expected = [[-1 / 6, -1 / 6, -1 / 6, 0.125, 0.125], [0.25, 0.25, 0.0, -1.0]]
    assert grad[0, 1:6].tolist() == pytest.approx(expected[0], abs=1e-6)
    assert grad[1, 1:5].tolist() == pytest.approx(expected[1], abs=1e-6)
    assert float(grad[~batch.loss_mask].abs().max()) == 0.0
    assert terms.metrics["clip_fraction"].item() == 0.0
    weighted, _, _ = loss_and_grad(f_grpo_loss, logp, batch, phase_weights=(2.0, 0.5))
    assert weighted == pytest.approx((2 * -1.0 + 0.5 * 0.5 + 2 * 1.0 + 0.5 * -2.0) / 2, rel=1e-6)


def test_f_grpo_clips_each_phase_independently_where_gspo_drops_the_whole_sequence():
    # row 0's generation phase moved up by 0.01 per token (log s = 0.01 > log(1 + 4e-4)) with A > 0:
    # that phase is clipped; its ranking phase is on-policy and keeps its gradient
    old = [[r - (0.01 if s == 0 else 0.0) for r, s in zip(row, seg)] for row, seg in zip(ROWS, SEGS)]
    old[1] = ROWS[1]
    logp, batch = make_batch(ROWS, ADVS, SEGS, old=old)
    _, grad, terms = loss_and_grad(f_grpo_loss, logp, batch)
    assert float(grad[0, 1:4].abs().max()) == 0.0  # clipped generation phase
    assert grad[0, 4:6].tolist() == pytest.approx([0.125, 0.125], abs=1e-6)  # ranking phase still learns
    assert terms.metrics["phase0_clip_fraction"].item() == pytest.approx(0.5)
    assert terms.metrics["phase1_clip_fraction"].item() == 0.0
    assert terms.metrics["clip_fraction"].item() == pytest.approx(0.25)
    # GSPO on the same row: one ratio exp(0.03 / 5) and A = 0.4 > 0 -> the whole row is clipped
    _, gspo_grad, _ = loss_and_grad(gspo_loss, logp, batch)
    assert float(gspo_grad[0].abs().max()) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_f_grpo_with_a_single_phase_is_gspo(seed):
    rng = random.Random(seed)
    rows, old, advs, segs = [], [], [], []
    for _ in range(rng.randint(1, 5)):
        n = rng.choice([0, 1, 3, 6])
        rows.append([rng.uniform(-3, -0.1) for _ in range(n)])
        old.append([x + rng.uniform(-2e-3, 2e-3) for x in rows[-1]])
        a = rng.uniform(-2, 2)
        advs.append([a] * n)
        segs.append([0] * n)
    logp, batch = make_batch(rows, advs, segs, old=old)
    a, ga, _ = loss_and_grad(f_grpo_loss, logp, batch)
    b, gb, _ = loss_and_grad(gspo_loss, logp, batch)
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_f_grpo_degenerate_and_bad_inputs():
    # no phase anywhere / empty rows: loss 0, zero gradient, finite metrics
    logp, batch = make_batch([[-1.0, -2.0], []], [[1.0, 1.0], []], [[-1, -1], []])
    loss, grad, terms = loss_and_grad(f_grpo_loss, logp, batch)
    assert loss == 0.0 and float(grad.abs().max()) == 0.0
    assert all(torch.isfinite(v).all() for v in terms.metrics.values())
    logp, batch = make_batch(ROWS, ADVS)  # no segment_ids
    with pytest.raises(ValueError, match="segment_ids"):
        f_grpo_loss(logp, batch)
    logp, batch = make_batch(ROWS, ADVS, [[0, 0, 2, 1, 1], [0, 0, -1, 1]])
    with pytest.raises(ValueError, match="segment_ids"):
        f_grpo_loss(logp, batch)
    logp, batch = make_batch(ROWS, ADVS, SEGS)
    with pytest.raises(ValueError, match="phase_weights"):
        f_grpo_loss(logp, batch, phase_weights=(1.0,))


# -- F-GRPO credit --------------------------------------------------------------------------------


def _phase_inputs(step_rows, phase_rewards, groups, T=None):
    B = len(step_rows)
    T = T or 2 + max([len(s) for s in step_rows] + [1])
    step_ids = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(step_rows):
        mask[b, 1 : 1 + len(s)] = True
        step_ids[b, 1 : 1 + len(s)] = torch.tensor(s, dtype=torch.long)
    return CreditInputs(
        rewards=torch.zeros(B),
        group_ids=torch.tensor(groups),
        loss_mask=mask,
        step_ids=step_ids,
        extras={"phase_rewards": torch.tensor(phase_rewards, dtype=torch.float32)},
    )


def test_f_grpo_credit_hand_computed():
    steps = [[0, 0, 1, 1], [0, 1, 1], [0, -1, 1], [0, 0, 1]]
    rewards = [[1.0, 0.2], [0.0, 0.8], [0.5, 0.5], [0.7, 0.1]]
    inputs = _phase_inputs(steps, rewards, [5, 5, 5, 9])
    adv = f_grpo_advantages(inputs)
    # group 5, coverage: mean 0.5, unbiased std 0.5 -> 1, -1, 0; utility: mean 0.5, std 0.3 -> -1, 1, 0
    # group 9 has one row: raw rewards
    e = 1e-6
    g0, g1 = 0.5 / (0.5 + e), 0.3 / (0.3 + e)
    expected = [
        [0.0, g0, g0, -g1, -g1, 0.0],
        [0.0, -g0, g1, g1, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.7, 0.7, 0.1, 0.0, 0.0],
    ]
    assert adv.tolist() == [pytest.approx(r, abs=1e-6) for r in expected]
    assert adv.dtype == torch.float32


def _random_phase_layout(rng):
    steps, rewards, groups = [], [], []
    for g in range(rng.randint(1, 4)):
        for _ in range(rng.randint(1, 5)):
            n = 0 if rng.random() < 0.2 else rng.randint(1, 7)
            cut = rng.randint(0, n)
            row = [0] * cut + [1] * (n - cut)
            row = [-1 if rng.random() < 0.1 else s for s in row]  # tokens of no phase
            steps.append(row)
            rewards.append([rng.choice([0.0, 0.5, 1.0]), rng.uniform(0, 1)])
            groups.append(3 * g + 1)
    return steps, rewards, groups


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_f_grpo_credit_matches_the_loop_reference(seed, scale_by_std):
    steps, rewards, groups = _random_phase_layout(random.Random(seed))
    inputs = _phase_inputs(steps, rewards, groups)
    got = f_grpo_advantages(inputs, scale_by_std=scale_by_std)
    ref = f_grpo_advantages_loop(inputs, scale_by_std=scale_by_std)
    assert got.tolist() == [pytest.approx(r, abs=1e-5) for r in ref]
    assert float(got[~inputs.loss_mask].abs().max()) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_f_grpo_phases_get_independent_advantages(seed):
    rng = random.Random(seed)
    steps, rewards, groups = _random_phase_layout(rng)
    inputs = _phase_inputs(steps, rewards, groups)
    base = f_grpo_advantages(inputs)
    changed = [[r[0], rng.uniform(-5, 5)] for r in rewards]  # new utility rewards only
    other = f_grpo_advantages(_phase_inputs(steps, changed, groups))
    gen = inputs.step_ids == 0
    assert torch.equal(base[gen], other[gen])  # generation-phase advantages untouched
    rank = inputs.step_ids == 1
    if bool(rank.any()):
        assert not torch.equal(base[rank], other[rank])


def test_f_grpo_credit_degenerate_and_bad_inputs():
    # equal phase rewards in a group -> 0 for that phase; the other phase still gets its advantage
    inputs = _phase_inputs([[0, 1], [0, 1]], [[1.0, 0.0], [1.0, 1.0]], [0, 0])
    adv = f_grpo_advantages(inputs)
    assert adv[:, 1].tolist() == [0.0, 0.0]
    assert adv[:, 2].tolist() == pytest.approx([-0.707106, 0.707106], abs=1e-5)
    fn = CREDIT.get("f_grpo")
    assert is_token_level(fn) and credit_needs_of(fn) == {"steps", "extras"}
    with pytest.raises(ValueError, match="phase_rewards"):
        f_grpo_advantages(_phase_inputs([[0, 1]], [[1.0, 0.0, 2.0]], [0]))
    with pytest.raises(ValueError, match="finite"):
        f_grpo_advantages(_phase_inputs([[0, 1]], [[float("nan"), 0.0]], [0]))
    with pytest.raises(ValueError, match="phase ids"):
        f_grpo_advantages(_phase_inputs([[0, 2]], [[1.0, 0.0]], [0]))
    missing = _phase_inputs([[0, 1]], [[1.0, 0.0]], [0])
    missing.extras = {}
    with pytest.raises(ValueError, match="phase_rewards"):
        f_grpo_advantages(missing)


def test_f_grpo_credit_feeds_the_f_grpo_objective():
    steps = [[0, 0, 1, 1], [0, 1, 1], [0, 0, 1]]
    rewards = [[1.0, 0.2], [0.0, 0.8], [0.5, 0.5]]
    inputs = _phase_inputs(steps, rewards, [0, 0, 0])
    adv = f_grpo_advantages(inputs)
    rows = [[-1.0] * len(s) for s in steps]
    logp, batch = make_batch(rows, [[0.0] * len(s) for s in steps], steps)
    batch.advantages = adv[:, : batch.advantages.shape[1]]
    loss, _, _ = loss_and_grad(f_grpo_loss, logp, batch)
    per_phase = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]) * [0.5 / (0.5 + 1e-6), 0.3 / (0.3 + 1e-6)]
    assert loss == pytest.approx(-per_phase.sum() / 3, abs=1e-6)


# -- BN-GSPO credit -------------------------------------------------------------------------------


def test_bn_gspo_advantages_hand_computed():
    adv = bn_gspo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    # group step: +-0.5 / (sqrt(0.5) + 1e-6), 0, 0; batch step: mean 0, population std = a / 2
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    expected = a / (a / math.sqrt(2) + 1e-9)
    assert adv.tolist() == pytest.approx([expected, -expected, 0.0, 0.0], rel=1e-6)


def _numpy_bn_gspo(rewards, groups, eps=1e-6, batch_eps=1e-9):
    """Independent NumPy version of the official formula (verl ReBN branch)."""
    r, g = np.asarray(rewards, dtype=np.float64), np.asarray(groups)
    a = np.empty_like(r)
    for gid in np.unique(g):
        sel = g == gid
        if sel.sum() == 1:
            a[sel] = r[sel]
        else:
            a[sel] = (r[sel] - r[sel].mean()) / (r[sel].std(ddof=1) + eps)
    return (a - a.mean()) / (a.std(ddof=0) + batch_eps)


@pytest.mark.parametrize("seed", range(10))
def test_bn_gspo_advantages_zero_mean_unit_std_and_references(seed):
    rng = random.Random(seed)
    rewards, groups = [], []
    for g in range(rng.randint(1, 6)):
        for _ in range(rng.randint(1, 6)):
            rewards.append(rng.choice([0.0, 1.0, rng.uniform(-2, 3)]))
            groups.append(g * 7)
    adv = bn_gspo_advantages(torch.tensor(rewards), torch.tensor(groups)).double()
    loop = bn_gspo_advantages_loop(rewards, groups)
    assert adv.tolist() == pytest.approx(loop, abs=1e-5)
    if max(loop) != min(loop):
        assert adv.mean().item() == pytest.approx(0.0, abs=1e-6)
        assert adv.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
        assert adv.tolist() == pytest.approx(_numpy_bn_gspo(rewards, groups).tolist(), abs=1e-5)


def test_bn_gspo_advantages_degenerate_cases():
    zeros = bn_gspo_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    assert zeros.tolist() == [0.0] * 4  # every group flat -> no spread in the batch either
    assert bn_gspo_advantages(torch.tensor([3.0]), torch.tensor([0])).tolist() == [0.0]  # B = 1
    assert bn_gspo_advantages(torch.tensor([]), torch.tensor([], dtype=torch.long)).numel() == 0
    # groups of one keep their raw reward in the group step, then the batch z-scores them
    singles = bn_gspo_advantages(torch.tensor([2.0, 0.0]), torch.tensor([0, 1]))
    assert singles.tolist() == pytest.approx([1.0, -1.0], rel=1e-6)
    assert not is_token_level(CREDIT.get("bn_gspo"))


# -- BN-GSPO objective ----------------------------------------------------------------------------


def test_bn_gspo_loss_is_gspo_with_advantage_diagnostics():
    rows = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0], []]
    old = [[-1.0001, -2.0], [-0.4995], [-3.0, -1.0, -2.0002], []]
    seq_adv = [1.2, -0.3, -0.9, 0.0]
    advs = [[a] * len(r) for a, r in zip(seq_adv, rows)]
    logp, batch = make_batch(rows, advs, old=old)
    a, ga, terms = loss_and_grad(bn_gspo_loss, logp, batch)
    b, gb, _ = loss_and_grad(gspo_loss, logp, batch)
    assert a == pytest.approx(b, rel=1e-6) and torch.allclose(ga, gb)
    nonempty = np.array(seq_adv[:3])
    assert terms.metrics["seq_advantage_mean"].item() == pytest.approx(nonempty.mean(), abs=1e-6)
    assert terms.metrics["seq_advantage_std"].item() == pytest.approx(nonempty.std(), abs=1e-6)


def test_f_grpo_gradient_matches_finite_differences_inside_the_trust_region():
    old = [[x - 1e-4 for x in row] for row in ROWS]  # s = exp(1e-4): inside [1 - 3e-4, 1 + 4e-4]
    _, batch = make_batch(ROWS, ADVS, SEGS, old=old)
    start = torch.where(batch.loss_mask, batch.sampler_logprobs + 1e-4, torch.full_like(batch.sampler_logprobs, JUNK))
    logp = start.double().requires_grad_(True)

    def value(x):
        return reduce_loss(f_grpo_loss(x, batch, phase_weights=(1.5, 0.5)).per_token, batch.loss_mask,
                           "seq_mean_token_mean")

    assert torch.autograd.gradcheck(value, (logp,), eps=1e-7, atol=1e-5)
