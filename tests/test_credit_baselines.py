"""Dr.GRPO, RLOO, REINFORCE++ (+baseline) and Lite PPO advantages: hand values, properties, loop == vectorized."""

import math
import random

import numpy as np
import pytest
import torch

from credo.credit import CREDIT
from credo.credit.outcome import (
    dr_grpo_advantages,
    grpo_advantages,
    grpo_advantages_loop,
    lite_ppo_advantages,
    lite_ppo_advantages_loop,
    reinforce_pp_advantages,
    reinforce_pp_advantages_loop,
    reinforce_pp_baseline_advantages,
    reinforce_pp_baseline_advantages_loop,
    reinforce_pp_token_advantages,
    reinforce_pp_token_advantages_loop,
    rloo_advantages,
    rloo_advantages_loop,
)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_registered_names():
    for name in ("dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "lite_ppo"):
        assert name in CREDIT


# -- Dr.GRPO -------------------------------------------------------------------------------------


def test_dr_grpo_hand_computed_no_std_division():
    rewards = t([3.0, 1.0, 2.0, 0.1, 0.1, 0.7])
    groups = t([0, 0, 0, 4, 4, 8], torch.long)
    adv = dr_grpo_advantages(rewards, groups)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0, 0.7], abs=1e-6)
    assert adv[3].item() == 0.0 and adv[4].item() == 0.0  # zero-variance group: exactly 0
    # no std division: scaling the rewards scales the advantage (GRPO's would not change)
    assert dr_grpo_advantages(10 * rewards[:3], groups[:3]).tolist() == pytest.approx([10.0, -10.0, 0.0], abs=1e-5)
    assert grpo_advantages(10 * rewards[:3], groups[:3]).tolist() == pytest.approx(
        grpo_advantages(rewards[:3], groups[:3]).tolist(), rel=1e-5)


# -- RLOO ----------------------------------------------------------------------------------------


def test_rloo_hand_computed():
    # group 0: 1, 0, 0, 1 -> A_0 = 1 - (0 + 0 + 1)/3 = 2/3, A_1 = 0 - (1 + 0 + 1)/3 = -2/3
    # group 1: 3, 1, 2    -> 3 - 1.5 = 1.5, 1 - 2.5 = -1.5, 2 - 2 = 0
    # group 2: 0.1, 0.1   -> zero variance: 0 exactly
    # group 3: one sample -> no other sample, no baseline: A = R
    rewards = t([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 0.1, 0.1, 0.7])
    groups = t([0, 0, 0, 0, 1, 1, 1, 2, 2, 3], torch.long)
    adv = rloo_advantages(rewards, groups)
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.5, -1.5, 0.0, 0.0, 0.0, 0.7]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[7].item() == 0.0 and adv[8].item() == 0.0


def test_rloo_baseline_excludes_the_sample_itself():
    # A_i - R_i is minus the baseline of sample i: it must not depend on R_i
    groups = t([0, 0, 0, 0], torch.long)
    base = t([0.2, 0.9, 0.4, 0.6])
    baselines = []
    for r0 in (0.0, 0.5, 5.0):
        rewards = base.clone()
        rewards[0] = r0
        baselines.append((rewards - rloo_advantages(rewards, groups))[0].item())
    assert baselines == pytest.approx([(0.9 + 0.4 + 0.6) / 3] * 3, rel=1e-6)
    # and it equals G / (G - 1) times the mean-centred reward
    assert rloo_advantages(base, groups).tolist() == pytest.approx(
        (4 / 3 * (base - base.mean())).tolist(), rel=1e-5)


# -- REINFORCE++ ---------------------------------------------------------------------------------


def test_reinforce_pp_hand_computed_whitening_over_batch():
    # mean 0.6; unbiased var (3 * 0.16 + 2 * 0.36) / 4 = 0.3
    rewards = t([1.0, 0.0, 0.0, 1.0, 1.0])
    adv = reinforce_pp_advantages(rewards, t([0, 0, 1, 1, 2], torch.long))
    sd = math.sqrt(0.3 + 1e-8)
    assert adv.tolist() == pytest.approx([0.4 / sd, -0.6 / sd, -0.6 / sd, 0.4 / sd, 0.4 / sd], rel=1e-6)
    # whitened over the batch: mean 0, unbiased std 1; the group layout plays no part
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv.std().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.equal(adv, reinforce_pp_advantages(rewards, t([4, 4, 4, 4, 4], torch.long)))


def test_reinforce_pp_degenerate_batches():
    one = reinforce_pp_advantages(t([0.7]), t([0], torch.long))
    assert one.tolist() == [0.0]  # a batch of one: no variance to whiten by (verl raises)
    flat = reinforce_pp_advantages(t([0.1, 0.1, 0.1]), t([0, 1, 2], torch.long))
    assert flat.tolist() == [0.0, 0.0, 0.0]


def test_reinforce_pp_baseline_hand_computed():
    # groups: [1, 0] -> c = 0.5, -0.5; [1, 1] -> 0, 0; single [0.5] -> mean 0, c = 0.5
    # c = [0.5, -0.5, 0, 0, 0.5]: mean 0.1, unbiased var (0.16 + 0.36 + 0.01 + 0.01 + 0.16) / 4 = 0.175
    rewards = t([1.0, 0.0, 1.0, 1.0, 0.5])
    groups = t([0, 0, 1, 1, 2], torch.long)
    adv = reinforce_pp_baseline_advantages(rewards, groups)
    c = np.array([0.5, -0.5, 0.0, 0.0, 0.5])
    expected = (c - 0.1) / math.sqrt(0.175 + 1e-8)
    assert adv.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_reinforce_pp_baseline_degenerate():
    # every group zero-variance: all advantages exactly 0 (no ulp noise blown up by whitening)
    adv = reinforce_pp_baseline_advantages(t([0.1, 0.1, 0.3, 0.3]), t([0, 0, 1, 1], torch.long))
    assert adv.tolist() == [0.0] * 4
    assert reinforce_pp_baseline_advantages(t([2.0]), t([0], torch.long)).tolist() == [0.0]


def test_reinforce_pp_token_hand_computed():
    # row 0: prompt at 0, completion 1..3 with the outcome 1.0 on the last token, gamma 0.5
    #        returns 0.25, 0.5, 1.0 ; row 1: completion 1..2, outcome -1 -> returns -0.5, -1.0
    # row 1 has padding after its completion (masked) holding a stray reward that must not leak in
    rewards = t([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, -1.0, 7.0]])
    mask = t([[0, 1, 1, 1], [0, 1, 1, 0]], torch.bool)
    adv = reinforce_pp_token_advantages(rewards, mask, gamma=0.5)
    g = np.array([0.25, 0.5, 1.0, -0.5, -1.0])
    white = (g - g.mean()) / math.sqrt(g.var(ddof=1) + 1e-8)
    assert adv[0, 1:].tolist() == pytest.approx(white[:3].tolist(), rel=1e-6)
    assert adv[1, 1:3].tolist() == pytest.approx(white[3:].tolist(), rel=1e-6)
    assert adv[~mask].abs().max().item() == 0.0


def test_reinforce_pp_token_carries_the_return_over_masked_positions():
    # a masked (tool) token in the middle is skipped, not a step: the return flows past it
    rewards = t([[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    mask = t([[0, 1, 0, 1, 1], [0, 1, 1, 1, 1]], torch.bool)
    adv = reinforce_pp_token_advantages(rewards, mask)
    g = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0])  # row 0: token 1 gets the return past token 2
    white = (g - g.mean()) / math.sqrt(g.var(ddof=1) + 1e-8)
    assert adv[mask].tolist() == pytest.approx(white.tolist(), rel=1e-6)


def verl_reinforce_pp(token_level_rewards, response_mask, gamma):
    """verl 0.9.1 `core_algos.compute_reinforce_plus_plus_outcome_advantage`, re-implemented from
    reading (not copied): backwards over t, new = r_t + gamma running; returns_t = new * m_t;
    running = new * m_t + running * (1 - m_t); advantages = masked_whiten(returns, mask) * mask
    (masked_whiten: mean and unbiased var over the mask, eps 1e-8)."""
    B, T = len(token_level_rewards), len(token_level_rewards[0])
    returns = [[0.0] * T for _ in range(B)]
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            m = float(response_mask[b][t])
            new = token_level_rewards[b][t] + gamma * running
            returns[b][t] = new * m
            running = new * m + running * (1 - m)
    flat = [returns[b][t] for b in range(B) for t in range(T) if response_mask[b][t]]
    n = len(flat)
    mean = sum(flat) / n
    var = sum((x - mean) ** 2 for x in flat) / n * n / (n - 1)
    return [[(returns[b][t] - mean) / math.sqrt(var + 1e-8) * response_mask[b][t] for t in range(T)]
            for b in range(B)]


@pytest.mark.parametrize("seed", range(8))
def test_reinforce_pp_token_matches_verl(seed):
    # multi-turn layouts: holes (tool tokens) in the response, rewards on every token (a KL reward)
    g = torch.Generator().manual_seed(100 + seed)
    B, T = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(4, 10, (1,), generator=g))
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = False
    mask[0, 1:3] = True  # at least two loss tokens (verl's masked_var raises below that)
    rewards = torch.randn(B, T, generator=g)  # also off the mask: verl drops those rewards
    gamma = [1.0, 0.99, 0.5][seed % 3]
    want = verl_reinforce_pp(rewards.double().tolist(), mask.tolist(), gamma)
    got = reinforce_pp_token_advantages(rewards, mask, gamma=gamma)
    assert got.double().tolist() == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in want]


def test_reinforce_pp_outcome_equals_token_form_for_equal_lengths():
    # gamma = 1 with the reward on the last token: G_t = R on every token; equal lengths make
    # token weighting and sequence weighting the same, so the two forms agree up to the Bessel
    # correction: the token form's N - 1 counts tokens (12 - 1), the outcome form's sequences (4 - 1)
    R = [1.0, 0.0, 0.5, 0.0]
    rewards = torch.zeros(4, 4)
    rewards[:, 3] = t(R)
    mask = t([[0, 1, 1, 1]] * 4, torch.bool)
    token = reinforce_pp_token_advantages(rewards, mask)
    outcome = reinforce_pp_advantages(t(R), t([0, 0, 1, 1], torch.long))
    assert torch.allclose(token[:, 1], outcome * math.sqrt((12 - 1) / 12 * 4 / (4 - 1)), rtol=1e-5)
    assert torch.equal(token[:, 1], token[:, 3])


# -- Lite PPO ------------------------------------------------------------------------------------


def test_lite_ppo_hand_computed_group_mean_batch_std():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5]
    groups = t([0, 0, 0, 0, 1, 1, 2], torch.long)
    adv = lite_ppo_advantages(t(rewards), groups)
    std = float(np.std(rewards, ddof=1))  # over the whole batch, not the group
    expected = [0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6),
                0.0, 0.0,  # all-correct group: 0 through mean removal
                0.0]  # group of one: its own mean (ROLL), so 0
    assert adv.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert adv[4].item() == 0.0 and adv[6].item() == 0.0


def test_lite_ppo_degenerate():
    assert lite_ppo_advantages(t([1.0]), t([0], torch.long)).tolist() == [0.0]
    assert lite_ppo_advantages(t([0.3, 0.3, 0.3]), t([0, 0, 1], torch.long)).tolist() == [0.0] * 3


# -- properties shared by the group estimators -----------------------------------------------------

GROUP_ESTIMATORS = [dr_grpo_advantages, rloo_advantages, reinforce_pp_baseline_advantages, lite_ppo_advantages]


@pytest.mark.parametrize("fn", GROUP_ESTIMATORS + [reinforce_pp_advantages], ids=lambda f: f.__name__)
def test_permuting_the_batch_permutes_the_advantages(fn):
    rewards = t([0.2, 0.9, 0.4, 0.4, 1.0, 0.0, 0.3])
    groups = t([0, 0, 0, 1, 1, 1, 2], torch.long)
    perm = t([3, 0, 6, 4, 1, 5, 2], torch.long)
    assert torch.allclose(fn(rewards[perm], groups[perm]), fn(rewards, groups)[perm], atol=1e-6)


@pytest.mark.parametrize("fn", GROUP_ESTIMATORS, ids=lambda f: f.__name__)
def test_relabelling_groups_changes_nothing(fn):
    rewards = t([0.2, 0.9, 0.4, 1.0, 0.0])
    a = fn(rewards, t([0, 0, 0, 1, 1], torch.long))
    b = fn(rewards, t([42, 42, 42, -3, -3], torch.long))
    assert torch.equal(a, b)


@pytest.mark.parametrize("fn", GROUP_ESTIMATORS + [reinforce_pp_advantages], ids=lambda f: f.__name__)
def test_output_dtype_and_finiteness(fn):
    adv = fn(t([0.0, 0.0, 1.0, 1.0]), t([0, 0, 1, 1], torch.long))
    assert adv.dtype == torch.float32 and adv.shape == (4,) and torch.isfinite(adv).all()


# -- loop reference == vectorized ----------------------------------------------------------------

PAIRS = [
    (dr_grpo_advantages, lambda r, g: grpo_advantages_loop(r, g, scale_by_std=False)),
    (rloo_advantages, rloo_advantages_loop),
    (reinforce_pp_advantages, reinforce_pp_advantages_loop),
    (reinforce_pp_baseline_advantages, reinforce_pp_baseline_advantages_loop),
    (lite_ppo_advantages, lite_ppo_advantages_loop),
]


def random_layout(seed):
    rng = random.Random(seed)
    layout = rng.choice(["contiguous", "interleaved", "singles", "one_group"])
    n = rng.randint(1, 20)
    if layout == "contiguous":
        g = rng.randint(1, 5)
        groups = [i // g for i in range(n)]
    elif layout == "interleaved":
        groups = [rng.randint(0, 4) * 7 - 3 for _ in range(n)]
    elif layout == "singles":
        groups = list(range(n))
    else:
        groups = [5] * n
    rewards = [rng.choice([0.0, 1.0, 0.5, 0.1, rng.random(), -rng.random()]) for _ in range(n)]
    return rewards, groups


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("vec, loop", PAIRS, ids=lambda p: getattr(p, "__name__", "loop"))
def test_loop_reference_equals_vectorized(seed, vec, loop):
    rewards, groups = random_layout(seed)
    ref = loop(rewards, groups)
    got = vec(torch.tensor(rewards), torch.tensor(groups)).tolist()
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_reinforce_pp_token_loop_equals_vectorized(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(2, 8, (1,), generator=g))
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = False
    rewards = torch.randn(B, T, generator=g) * (torch.rand(B, T, generator=g) > 0.6)
    gamma = float(torch.rand(1, generator=g))
    ref = reinforce_pp_token_advantages_loop(rewards.tolist(), mask.tolist(), gamma=gamma)
    got = reinforce_pp_token_advantages(rewards, mask, gamma=gamma)
    assert got.flatten().tolist() == pytest.approx([x for row in ref for x in row], rel=1e-5, abs=1e-6)


def test_reinforce_pp_token_degenerate_masks():
    rewards = t([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    # one loss token in the whole batch: nothing to whiten against -> 0
    one = reinforce_pp_token_advantages(rewards, t([[0, 1, 0], [0, 0, 0]], torch.bool))
    assert one.abs().max().item() == 0.0
    # no loss token at all (empty responses) -> all 0, no NaN
    none = reinforce_pp_token_advantages(rewards, torch.zeros(2, 3, dtype=torch.bool))
    assert none.abs().max().item() == 0.0
