"""GRPO advantages and the clipped loss against hand-computed numbers, plus their properties."""

import math
import random

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.credit import grpo_advantages, grpo_advantages_loop
from credo.objectives import kl_k1, kl_k2, kl_k3, reduce_loss
from credo.objectives.grpo import grpo_loss, ppo_clip_per_token


def test_grpo_advantages_hand_computed():
    # group 0: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3) = 0.57735
    # group 1: rewards 0, 0 -> zero variance -> 0
    # group 2: single sample 0.7 -> mean 0, std 1 -> 0.7
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.7])
    groups = torch.tensor([0, 0, 0, 0, 5, 5, 9])
    adv = grpo_advantages(rewards, groups)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = [a, -a, -a, a, 0.0, 0.0, 0.7 / (1 + 1e-6)]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0  # exactly zero, not ~1e-10


def test_grpo_two_samples_unbiased_std():
    # spec: with the unbiased std, G = 2 and two different rewards give |A| = 0.707
    adv = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert adv.tolist() == pytest.approx([0.70710, -0.70710], abs=1e-4)


def test_dr_grpo_mean_only():
    adv = grpo_advantages(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 0]), scale_by_std=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0])


def test_zero_variance_group_of_non_representable_values_is_exactly_zero():
    adv = grpo_advantages(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([2, 2, 2]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", range(8))
def test_loop_reference_equals_vectorized(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    groups = [rng.randint(0, 4) for _ in range(n)]
    rewards = [rng.choice([0.0, 1.0, 0.5, rng.random()]) for _ in range(n)]
    for scale in (True, False):
        ref = grpo_advantages_loop(rewards, groups, scale_by_std=scale)
        vec = grpo_advantages(torch.tensor(rewards), torch.tensor(groups), scale_by_std=scale)
        assert vec.tolist() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_permuting_a_group_permutes_its_advantages():
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.4, 1.0])
    groups = torch.zeros(5, dtype=torch.long)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(grpo_advantages(rewards[perm], groups), grpo_advantages(rewards, groups)[perm])


def test_ppo_clip_hand_computed():
    # token ratios 1.5, 0.5, 1.1, 0.7 with advantages +1, +1, -2, -2 and eps 0.2
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, -2.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    terms = ppo_clip_per_token(new, old, adv, mask)
    # token 1 (A=+1, r=1.5): max(-1.5, -1.2) = -1.2, the clipped branch
    # token 2 (A=+1, r=0.5): max(-0.5, -0.8) = -0.5, unclipped
    # token 3 (A=-2, r=1.1): inside [0.8, 1.2], both branches 2.2
    # token 4 (A=-2, r=0.7): max(1.4, 2 * 0.8) = 1.6, the clipped branch
    expected = [-1.2, -0.5, 2.2, 1.6]
    assert terms.per_token[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert terms.metrics["clip_fraction"].item() == pytest.approx(2 / 4)
    assert terms.metrics["ratio_min"].item() == pytest.approx(0.5)
    assert terms.metrics["ratio_max"].item() == pytest.approx(1.5)
    # approx KL k3(old||new) = E[r - 1 - log r]
    r = np.array([1.5, 0.5, 1.1, 0.7])
    assert terms.metrics["approx_kl"].item() == pytest.approx(float(np.mean(r - 1 - np.log(r))), rel=1e-5)


def test_dual_clip_bounds_negative_advantage_loss():
    new = torch.log(torch.tensor([[5.0, 5.0]]))
    adv = torch.tensor([[-1.0, 1.0]])
    terms = ppo_clip_per_token(new, torch.zeros(1, 2), adv, torch.ones(1, 2, dtype=torch.bool), dual_clip=3.0)
    assert terms.per_token[0].tolist() == pytest.approx([3.0, -1.2])


def test_ratio_one_equals_plain_policy_gradient():
    """At ratio 1 the clipped surrogate's gradient is the REINFORCE gradient -A * grad(logp)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.5, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    terms = ppo_clip_per_token(logp, logp.detach(), adv, mask)
    reduce_loss(terms.per_token, mask, "token_sum").backward()
    assert logp.grad[0].tolist() == pytest.approx((-adv)[0].tolist())


def _batch(tokens_len=4, ref=None):
    B, T = 2, tokens_len
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    return RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=torch.full((B, T), -1.0) * mask,
        advantages=torch.tensor([[0, 1.0, 1.0, 0], [0, -1.0, -1.0, -1.0]]),
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        ref_logprobs=ref,
    )


def test_grpo_loss_with_k3_kl_hand_computed():
    ref = torch.full((2, 4), -1.5)
    batch = _batch(ref=ref)
    logprobs = torch.full((2, 4), -1.0)  # ratio 1 everywhere
    terms = grpo_loss(logprobs, batch, kl_coef=0.1)
    d = -1.5 - (-1.0)  # ref - logp
    k3 = math.exp(d) - d - 1
    expected_row0 = [-1.0 + 0.1 * k3, -1.0 + 0.1 * k3]
    expected_row1 = [1.0 + 0.1 * k3] * 3
    assert terms.per_token[0, 1:3].tolist() == pytest.approx(expected_row0, rel=1e-6)
    assert terms.per_token[1, 1:4].tolist() == pytest.approx(expected_row1, rel=1e-6)
    assert terms.metrics["kl_ref"].item() == pytest.approx(k3, rel=1e-6)


def test_grpo_kl_needs_reference():
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(torch.zeros(2, 4), _batch(), kl_coef=0.1)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_k1(logp, ref).item() == pytest.approx(1.0)
    assert kl_k2(logp, ref).item() == pytest.approx(0.5)
    assert kl_k3(logp, ref).item() == pytest.approx(math.exp(-1) + 1 - 1)
    # clamps: an extreme log-ratio stays finite
    assert torch.isfinite(kl_k3(torch.tensor([0.0]), torch.tensor([1e4]))).all()
