"""Dr.GRPO, DAPO and Lite PPO losses, DAPO's overlong penalty and dynamic-sampling rule."""

import math
import random

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.objectives import OBJECTIVES, reduce_loss
from credo.objectives.baselines import dr_grpo_loss, lite_ppo_loss
from credo.objectives.dapo import dapo_loss
from credo.objectives.grpo import grpo_loss
from credo.rewards.length import overlong_penalty
from credo.select import keep_mixed_groups, keep_mixed_groups_loop


def make_batch(old, adv, mask, ref=None):
    old, adv = torch.as_tensor(old, dtype=torch.float32), torch.as_tensor(adv, dtype=torch.float32)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    B, T = mask.shape
    return RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=old * mask,
        advantages=adv * mask,
        rewards=torch.zeros(B),
        group_ids=torch.zeros(B, dtype=torch.long),
        ref_logprobs=None if ref is None else torch.as_tensor(ref, dtype=torch.float32),
    )


def ppo_np(r, a, lo, hi):
    return np.maximum(-a * r, -a * np.clip(r, 1 - lo, 1 + hi))


def test_registered_names():
    for name in ("dr_grpo", "dapo", "lite_ppo", "gspo", "gspo_token", "cispo", "sapo"):
        assert name in OBJECTIVES


# -- Dr.GRPO -------------------------------------------------------------------------------------


def test_dr_grpo_loss_hand_computed_with_constant_normaliser():
    # row 0: 3 tokens, ratios 1.5, 1.0, 0.5, A = +1; row 1: 1 token, ratio 0.7, A = -2
    ratios = [[1.5, 1.0, 0.5], [0.7]]
    adv = [1.0, -2.0]
    old = torch.full((2, 5), -1.0)
    logp = old.clone()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    A = torch.zeros(2, 5)
    for i, (r, a) in enumerate(zip(ratios, adv)):
        mask[i, 1 : 1 + len(r)] = True
        logp[i, 1 : 1 + len(r)] += torch.log(torch.tensor(r))
        A[i, 1 : 1 + len(r)] = a
    batch = make_batch(old, A, mask)
    terms = dr_grpo_loss(logp, batch)
    per_row = [ppo_np(np.array(r), a, 0.2, 0.2) for r, a in zip(ratios, adv)]
    # per token: [-1.2, -1.0, -0.5] and [1.6]
    assert terms.per_token[0, 1:4].tolist() == pytest.approx(per_row[0].tolist(), rel=1e-5)
    assert terms.per_token[1, 1].item() == pytest.approx(per_row[1][0], rel=1e-5)
    # the Dr.GRPO reduction: token sum / (C * N), C = 16 a constant, N = 2 sequences; no 1/|y_i|
    loss = reduce_loss(terms.per_token, mask, "seq_mean_token_sum_norm", norm_constant=16)
    total = per_row[0].sum() + per_row[1].sum()  # -2.7 + 1.6 = -1.1
    assert loss.item() == pytest.approx(total / (16 * 2), rel=1e-5)
    # GRPO's paper reduction would average inside each row first: a different number
    grpo_paper = reduce_loss(terms.per_token, mask, "seq_mean_token_mean").item()
    assert grpo_paper == pytest.approx((per_row[0].mean() + per_row[1].mean()) / 2, rel=1e-5)


def test_dr_grpo_and_lite_ppo_per_token_equal_grpo_without_kl():
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    old = -torch.rand(2, 4, generator=g)
    batch = make_batch(old, torch.randn(2, 4, generator=g), mask)
    logp = old + 0.3 * torch.randn(2, 4, generator=g)
    ref = grpo_loss(logp, batch).per_token
    for fn in (dr_grpo_loss, lite_ppo_loss):
        assert torch.equal(fn(logp, batch).per_token, ref)


def verl_vanilla_per_token(r, a, clip=0.2, clip_ratio_c=3.0):
    """verl 0.9.1 `core_algos.compute_policy_loss_vanilla`, per token before agg_loss (re-implemented
    from reading): pg1 = -A r, pg2 = -A clip(r, 1-eps, 1+eps), l1 = max(pg1, pg2), pg3 = -A c,
    loss = min(pg3, l1) where A < 0, else l1 (dual clip always on, c = 3 by default)."""
    l1 = np.maximum(-a * r, -a * np.clip(r, 1 - clip, 1 + clip))
    return np.where(a < 0, np.minimum(-a * clip_ratio_c, l1), l1)


def test_grpo_equals_verl_vanilla_except_dual_clip_region():
    from credo.objectives.grpo import ppo_clip_per_token

    # position 0 holds no logprob (batch.py): it is off the mask and left out of the comparison
    ratios = np.array([[1.0, 0.5, 0.9, 1.1, 2.0, 2.9, 3.5, 6.0]] * 2)
    adv = np.array([[1.0] * 8, [-1.0] * 8])
    old = torch.zeros(2, 8)
    logp = torch.log(torch.tensor(ratios, dtype=torch.float32))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 0] = False
    batch = make_batch(old, torch.tensor(adv, dtype=torch.float32), mask)
    ratios, adv, on = ratios[:, 1:], adv[:, 1:], (slice(None), slice(1, None))
    ours = grpo_loss(logp, batch, kl_coef=0.0).per_token.double().numpy()[on]
    verl = verl_vanilla_per_token(ratios, adv)
    differs = (adv < 0) & (ratios > 3.0)
    assert np.allclose(ours[~differs], verl[~differs], atol=1e-6)  # A >= 0, or r <= 3
    # A = -1, r = 3.5 and 6: grpo's loss is |A| r; verl's is capped at 3 |A|
    assert np.allclose(ours[differs], ratios[differs]) and np.allclose(verl[differs], 3.0)
    dual = ppo_clip_per_token(logp, old, batch.advantages, mask, dual_clip=3.0).per_token.double().numpy()[on]
    assert np.allclose(dual, verl, atol=1e-6)  # with dual_clip = 3 they agree everywhere


# -- DAPO ----------------------------------------------------------------------------------------


def test_dapo_clip_higher_hand_computed():
    # positive advantages: ratios 1.25 (inside DAPO's 1.28, outside GRPO's 1.2) and 1.3 (outside both);
    # negative advantage: ratio 0.75 (below 1 - 0.2)
    ratios = np.array([1.25, 1.3, 0.75])
    adv = np.array([1.0, 1.0, -1.0])
    old = torch.full((1, 4), -1.0)
    logp = old.clone()
    logp[0, 1:] += torch.tensor(np.log(ratios), dtype=torch.float32)
    batch = make_batch(old, [[0.0, *adv]], [[0, 1, 1, 1]])
    grads = {}
    for name, fn in (("dapo", dapo_loss), ("grpo", grpo_loss)):
        lp = logp.clone().requires_grad_(True)
        terms = fn(lp, batch)
        reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
        grads[name] = lp.grad[0, 1:].tolist()
        if name == "dapo":
            assert terms.per_token[0, 1:].tolist() == pytest.approx(
                ppo_np(ratios, adv, 0.2, 0.28).tolist(), rel=1e-5)  # [-1.25, -1.28, 0.8]
            assert terms.metrics["clip_fraction"].item() == pytest.approx(2 / 3)
    # DAPO lets the positive-advantage token keep rising up to 1.28 (gradient -A r = -1.25) ...
    assert grads["dapo"][0] == pytest.approx(-1.25, rel=1e-5)
    # ... where GRPO's symmetric 0.2 clip has already cut it
    assert grads["grpo"][0] == 0.0
    # beyond 1.28 DAPO clips too; the lower side is unchanged (0.8)
    assert grads["dapo"][1] == 0.0 and grads["dapo"][2] == 0.0


def test_dapo_dual_clip_bounds_negative_advantage_loss():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 50.0, 50.0]]))
    batch = make_batch(old, [[0.0, -1.0, 1.0]], [[0, 1, 1]])
    terms = dapo_loss(logp, batch)  # dual clip c = 10
    assert terms.per_token[0, 1:].tolist() == pytest.approx([10.0, -1.28], rel=1e-6)
    assert dapo_loss(logp, batch, dual_clip=None).per_token[0, 1].item() == pytest.approx(50.0, rel=1e-5)


# -- shared properties of the three losses ------------------------------------------------------


@pytest.mark.parametrize("fn", [dr_grpo_loss, dapo_loss, lite_ppo_loss], ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_masked_positions_and_empty_rows_get_zero_gradient(fn, mode):
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)  # row 1: empty response
    batch = make_batch([[0.0, -1.0, -2.0, 0.0], [0.0] * 4], [[0.0, 1.0, -1.0, 0.0], [0.0] * 4], mask)
    logp = torch.tensor([[9.0, -0.9, -2.1, -40.0], [15.0, -3.0, 2.0, 0.5]], requires_grad=True)
    terms = fn(logp, batch)
    loss = reduce_loss(terms.per_token, mask, mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert logp.grad[~mask].abs().max().item() == 0.0
    assert logp.grad[0, 1:3].abs().min().item() > 0.0


@pytest.mark.parametrize("fn", [dr_grpo_loss, dapo_loss, lite_ppo_loss], ids=lambda f: f.__name__)
def test_kl_penalty_term(fn):
    ref = torch.full((1, 3), -2.0)
    batch = make_batch([[0.0, -1.0, -1.0]], [[0.0, 1.0, 1.0]], [[0, 1, 1]], ref=ref)
    logp = torch.full((1, 3), -1.0)
    d = -1.0
    k3 = math.exp(d) - d - 1
    diff = fn(logp, batch, kl_coef=0.5).per_token - fn(logp, batch).per_token
    assert diff[0, 1:].tolist() == pytest.approx([0.5 * k3] * 2, rel=1e-5)
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(logp, make_batch([[0.0, -1.0, -1.0]], [[0.0, 1.0, 1.0]], [[0, 1, 1]]), kl_coef=0.5)


# -- DAPO overlong penalty -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, expected",
    [(0, 0.0), (12, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (20, -1.0), (22, -1.5)],
)
def test_overlong_penalty_hand_computed(length, expected):
    # L_max = 20, L_cache = 4: free up to 16 tokens, then linear to -1 at 20
    assert overlong_penalty(length, max_length=20, cache_length=4) == pytest.approx(expected)


def test_overlong_penalty_tensor_and_factor():
    lengths = torch.tensor([5, 17, 20])
    out = overlong_penalty(lengths, max_length=20, cache_length=4, penalty_factor=2.0)
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([0.0, -0.5, -2.0])
    # defaults: L_max 20480, L_cache 4096
    assert overlong_penalty(20480 - 4096) == 0.0
    assert overlong_penalty(20480) == pytest.approx(-1.0)


def test_truncated_correct_answer_is_still_penalised():
    correct = 1.0
    assert correct + overlong_penalty(16, max_length=16, cache_length=4) == pytest.approx(0.0)


@pytest.mark.parametrize("cache, max_len", [(0, 20), (-1, 20), (21, 20)])
def test_overlong_penalty_rejects_bad_config(cache, max_len):
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(10, max_length=max_len, cache_length=cache)


# -- DAPO dynamic sampling -----------------------------------------------------------------------


def test_keep_mixed_groups_hand_computed():
    # group 7: all correct; group 3: all wrong; group 5: mixed; group 9: one sample (std 0: dropped);
    # group ids are arbitrary and interleaved
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.5])
    groups = torch.tensor([7, 3, 7, 5, 5, 3, 9])
    keep = keep_mixed_groups(rewards, groups)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, False, True, True, False, False]


def test_keep_mixed_groups_edge_cases():
    assert keep_mixed_groups(torch.zeros(0), torch.zeros(0, dtype=torch.long)).tolist() == []
    # an all-equal non-representable value is still zero variance
    assert keep_mixed_groups(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([0, 0, 0])).tolist() == [False] * 3
    with pytest.raises(ValueError, match="group_ids"):
        keep_mixed_groups(torch.zeros(3), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("seed", range(8))
def test_keep_mixed_groups_loop_equals_vectorized(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 24)
    groups = [rng.randint(0, 5) for _ in range(n)]
    rewards = [rng.choice([0.0, 1.0, 1.0, rng.random()]) for _ in range(n)]
    assert keep_mixed_groups(torch.tensor(rewards), torch.tensor(groups)).tolist() == keep_mixed_groups_loop(
        rewards, groups
    )


def test_catalog_has_an_entry_per_new_method():
    import credo.credit
    import credo.objectives
    from credo.catalog import entries

    objectives = {e.name for e in entries(credo.objectives)}
    credit = {e.name for e in entries(credo.credit)}
    assert {"dr_grpo", "dapo", "gspo", "gspo_token", "cispo", "sapo", "lite_ppo"} <= objectives
    assert {"dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "lite_ppo"} <= credit
