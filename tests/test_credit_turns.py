"""Turn-level credit estimators (credit/turns.py): hand-computed values, loop == vectorized over
random multi-turn layouts, degenerate cases and each method's key property."""

from __future__ import annotations

import math
import random

import pytest
import torch

from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.outcome import grpo_advantages
from credo.credit.turns import (
    a2tgpo_advantages, a2tgpo_advantages_loop, a2tgpo_clip_scale, gigpo_advantages, gigpo_advantages_loop,
    igpo_advantages, igpo_advantages_loop, mapo_advantages, mapo_advantages_loop, matchtir_advantages,
    matchtir_advantages_loop, slate_advantages, slate_advantages_loop, vpr_advantages, vpr_advantages_loop,
    vpr_train_mask,
)

NAN = float("nan")


def make_inputs(turn_lens, *, rewards=None, groups=None, step_rewards=None, keys=None, env_tokens=1, prompt=2,
                pad=1) -> CreditInputs:
    """CreditInputs for rows given as turn token counts, e.g. [[2, 1], [3]]: each row is `prompt`
    prompt tokens, then per turn its policy tokens followed by `env_tokens` observation tokens, then
    `pad` padding tokens. step_rewards: per-row lists (NaN-padded here)."""
    B = len(turn_lens)
    T = max(prompt + sum(n + env_tokens for n in row) for row in turn_lens) + pad
    mask = torch.zeros(B, T, dtype=torch.bool)
    ids = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(turn_lens):
        t = prompt
        for k, n in enumerate(row):
            mask[b, t:t + n] = True
            ids[b, t:t + n] = k
            t += n + env_tokens
    K = max([len(r) for r in step_rewards] + [0]) if step_rewards is not None else 0
    sr = torch.full((B, K), NAN)
    for b, row in enumerate(step_rewards or []):
        if row:
            sr[b, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return CreditInputs(
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * B, dtype=torch.float32),
        group_ids=torch.tensor(groups if groups is not None else [0] * B),
        loss_mask=mask, step_ids=ids, step_rewards=sr, step_keys=keys,
    )


def per_turn(adv: torch.Tensor, inputs: CreditInputs) -> list[list[float]]:
    """[B, T] advantages -> per row, the value of each turn (checking it is constant over the turn)."""
    out = []
    for b in range(adv.shape[0]):
        ids = inputs.step_ids[b]
        turns = []
        for k in range(int(ids.max()) + 1):
            vals = adv[b][(ids == k) & inputs.loss_mask[b]]
            if vals.numel():
                assert torch.allclose(vals, vals[0].expand_as(vals)), "advantage not constant over a turn"
                turns.append(float(vals[0]))
            else:
                turns.append(float("nan"))
        out.append(turns)
    return out


def random_inputs(seed: int, *, max_rows: int = 9, max_turns: int = 4) -> CreditInputs:
    """Random layout: group sizes 1..4 with arbitrary ids, 0..max_turns turns per row (turns of 0..3
    tokens, so empty turns and rows without any turn occur), 0..2 environment tokens between turns,
    rewards with ties and the odd NaN, step keys from a small vocabulary (lists and dicts included)
    so that states repeat across rows, turns and groups."""
    rnd = random.Random(seed)
    groups: list[int] = []
    while len(groups) < rnd.randint(1, max_rows):
        groups += [rnd.choice([3, 7, 11, 42, 100])] * rnd.randint(1, 4)
    rnd.shuffle(groups)
    B = len(groups)
    rows = [[rnd.randint(0, 3) for _ in range(rnd.randint(0, max_turns))] for _ in range(B)]
    T = max(2 + sum(n + 2 for n in row) for row in rows) + rnd.randint(0, 2)
    mask = torch.zeros(B, T, dtype=torch.bool)
    ids = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        t = rnd.randint(1, 2)
        for k, n in enumerate(row):
            mask[b, t:t + n] = True
            ids[b, t:t + n] = k
            t += n + rnd.randint(0, 2)
    K = max_turns + rnd.randint(0, 1)
    sr = torch.full((B, K), NAN)
    vocab = ["s0", "s1", ("s", 2), ["s", 3], {"room": 1}]
    keys = []
    for b, row in enumerate(rows):
        for k in range(len(row)):
            sr[b, k] = rnd.choice([0.0, 1.0, -1.0, 0.5, rnd.uniform(-2, 2), rnd.uniform(-2, 2)])
            if rnd.random() < 0.05:
                sr[b, k] = NAN  # non-finite inside a row's turns counts as 0
        keys.append([rnd.choice(vocab) for _ in range(K)])
    rewards = torch.tensor([rnd.choice([0.0, 1.0, 1.0, 0.5, rnd.uniform(0, 1)]) for _ in range(B)])
    return CreditInputs(rewards=rewards, group_ids=torch.tensor(groups), loss_mask=mask, step_ids=ids,
                        step_rewards=sr, step_keys=keys)


CASES = [
    (gigpo_advantages, gigpo_advantages_loop, {}),
    (gigpo_advantages, gigpo_advantages_loop, {"mode": "mean_std_norm", "gamma": 0.7}),
    (gigpo_advantages, gigpo_advantages_loop, {"mean_std_cross_steps": False, "step_advantage_w": 0.5}),
    (mapo_advantages, mapo_advantages_loop, {}),
    (mapo_advantages, mapo_advantages_loop, {"alpha": 0.2, "gamma": 0.9}),
    (a2tgpo_advantages, a2tgpo_advantages_loop, {}),
    (a2tgpo_advantages, a2tgpo_advantages_loop, {"gamma": 0.8, "outcome_on_last_turn": False}),
    (igpo_advantages, igpo_advantages_loop, {}),
    (igpo_advantages, igpo_advantages_loop, {"norm_mode": "joint", "gamma": 0.9}),
    (igpo_advantages, igpo_advantages_loop, {"outcome_on_last_turn": False}),
    (matchtir_advantages, matchtir_advantages_loop, {}),
    (matchtir_advantages, matchtir_advantages_loop, {"scale_by_std": False, "gamma": 1.0}),
    (slate_advantages, slate_advantages_loop, {}),
    (slate_advantages, slate_advantages_loop, {"scale_by_std": True}),
    (vpr_advantages, vpr_advantages_loop, {}),
    (vpr_advantages, vpr_advantages_loop, {"mode": "group_whiten"}),
    (vpr_advantages, vpr_advantages_loop, {"outcome_reward_scale": 1.0}),
]


@pytest.mark.parametrize("fn, loop, hp", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("seed", range(8))
def test_loop_equals_vectorized(fn, loop, hp, seed):
    inputs = random_inputs(seed)
    fast = fn(inputs, **hp)
    assert fast.dtype == torch.float32 and fast.shape == inputs.loss_mask.shape
    assert torch.isfinite(fast).all()
    assert (fast[~inputs.loss_mask] == 0).all()
    torch.testing.assert_close(fast, loop(inputs, **hp), rtol=1e-5, atol=1e-5)


def test_registered_and_declared_needs():
    expected = {
        "gigpo": {"steps", "step_rewards", "step_keys"}, "mapo": {"steps", "step_rewards"},
        "a2tgpo": {"steps", "step_rewards"}, "igpo": {"steps", "step_rewards"},
        "matchtir": {"steps", "step_rewards"}, "slate": {"steps", "step_rewards", "step_keys"},
        "vpr": {"steps", "step_rewards", "step_keys"},
    }
    for name, needs in expected.items():
        fn = CREDIT.get(name)
        assert is_token_level(fn) and credit_needs_of(fn) == needs, name


# -- GiGPO -----------------------------------------------------------------------------------------


def gigpo_case():
    # group 3: rows a (2 turns), b (2 turns); group 9: row c (1 turn, a group of one)
    return make_inputs([[2, 1], [1, 2], [2]], rewards=[1.0, 0.0, 1.0], groups=[3, 3, 9],
                       step_rewards=[[0.0, 1.0], [0.0, 0.0], [1.0]],
                       keys=[["s0", "s1"], ["s0", "s2"], ["s0"]])


def test_gigpo_hand_mean_norm():
    # returns (gamma 0.5): a [0 + 0.5 * 1, 1] = [0.5, 1], b [0, 0], c [1]
    # episode (cross steps: a, b counted twice): mean(1, 1, 0, 0) = 0.5 -> A^E a 0.5, b -0.5; c alone: 1
    # anchors: (3, s0) = {a0: 0.5, b0: 0} mean 0.25; (3, s1), (3, s2), (9, s0) are groups of one -> 0
    inputs = gigpo_case()
    got = per_turn(gigpo_advantages(inputs, gamma=0.5), inputs)
    expected = [[0.75, 0.5], [-0.75, -0.5], [1.0]]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-6)


def test_gigpo_hand_mean_std_norm():
    # episode std of (1, 1, 0, 0), unbiased: sqrt(1/3); anchor (3, s0) std of (0.5, 0): sqrt(0.125)
    inputs = gigpo_case()
    got = per_turn(gigpo_advantages(inputs, gamma=0.5, mode="mean_std_norm"), inputs)
    a_e = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    a_s = 0.25 / (math.sqrt(0.125) + 1e-6)
    expected = [[a_e + a_s, a_e], [-a_e - a_s, -a_e], [1.0 / (1 + 1e-6)]]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-5)


def test_gigpo_cross_steps_weights_long_episodes():
    # a: 2 turns, R 1; b: 1 turn, R 0; no shared states (A^S = 0)
    inputs = make_inputs([[1, 1], [1]], rewards=[1.0, 0.0], groups=[0, 0], step_rewards=[[0.0, 0.0], [0.0]],
                         keys=[["x", "y"], ["z"]])
    cross = per_turn(gigpo_advantages(inputs), inputs)  # mean(1, 1, 0) = 2/3
    assert cross == [pytest.approx([1 / 3, 1 / 3]), pytest.approx([-2 / 3])]
    per_traj = per_turn(gigpo_advantages(inputs, mean_std_cross_steps=False), inputs)  # mean 0.5
    assert per_traj == [pytest.approx([0.5, 0.5]), pytest.approx([-0.5])]


def test_gigpo_anchor_group_of_one_gives_zero_step_advantage():
    inputs = make_inputs([[1, 1]], rewards=[1.0], groups=[0], step_rewards=[[3.0, -2.0]], keys=[["u", "v"]])
    # both anchors are groups of one -> A^S = 0. Episode: counted per trajectory the group has one
    # entry (mean 0, std 1) -> A^E = R = 1; counted per step (verl-agent's default) the trajectory's
    # two step rows share the score -> A^E = 0
    assert per_turn(gigpo_advantages(inputs, mean_std_cross_steps=False), inputs) == [pytest.approx([1.0, 1.0])]
    assert per_turn(gigpo_advantages(inputs), inputs) == [[0.0, 0.0]]


def test_gigpo_repeated_state_inside_one_trajectory_is_an_anchor():
    # the same observation twice in one trajectory: both visits form one anchor group
    inputs = make_inputs([[1, 1]], rewards=[0.0], groups=[0], step_rewards=[[0.0, 2.0]], keys=[["loop", "loop"]])
    # returns (gamma 1): [2, 2] -> equal -> A^S = 0; with gamma 0.5: [1, 2] mean 1.5 -> [-0.5, 0.5]
    assert per_turn(gigpo_advantages(inputs, gamma=0.5), inputs) == [pytest.approx([-0.5, 0.5])]


@pytest.mark.parametrize("mode, scale", [("mean_norm", False), ("mean_std_norm", True)])
@pytest.mark.parametrize("seed", range(5))
def test_gigpo_without_repeated_states_is_episode_grpo(mode, scale, seed):
    """Key property: every anchor group of one -> A^S = 0 -> GiGPO = episode-level GRPO (Dr.GRPO for
    mean_norm), counting each trajectory once."""
    rnd = random.Random(seed)
    B = rnd.randint(2, 8)
    groups = [rnd.randint(0, 2) for _ in range(B)]
    turns = [[rnd.randint(1, 3) for _ in range(rnd.randint(1, 3))] for _ in range(B)]
    inputs = make_inputs(turns, rewards=[rnd.choice([0.0, 1.0, 0.3]) for _ in range(B)], groups=groups,
                         step_rewards=[[rnd.uniform(-1, 1) for _ in row] for row in turns],
                         keys=[[f"row{b}-turn{k}" for k in range(len(row))] for b, row in enumerate(turns)])
    got = gigpo_advantages(inputs, mode=mode, mean_std_cross_steps=False)
    episode = grpo_advantages(inputs.rewards, inputs.group_ids, scale_by_std=scale)
    torch.testing.assert_close(got, torch.where(inputs.loss_mask, episode[:, None], 0.0), rtol=1e-5, atol=1e-6)


def test_gigpo_similarity_mode_clusters_near_identical_text():
    long = "You are in the kitchen. There is a fridge, a table and a knife on the counter. Step "
    keys = [[long + "1"], [long + "2"], ["You are in the garden."]]
    inputs = make_inputs([[1], [1], [1]], rewards=[0.0, 0.0, 0.0], groups=[0, 0, 0],
                         step_rewards=[[1.0], [0.0], [5.0]], keys=keys)
    exact = per_turn(gigpo_advantages(inputs), inputs)
    assert exact == [[0.0], [0.0], [0.0]]  # the step counter breaks exact matching: all groups of one
    similar = per_turn(gigpo_advantages(inputs, similarity_threshold=0.95), inputs)
    assert similar == [pytest.approx([0.5]), pytest.approx([-0.5]), pytest.approx([0.0])]
    with pytest.raises(ValueError, match="text observations"):
        gigpo_advantages(make_inputs([[1], [1]], step_rewards=[[0.0], [1.0]], keys=[[("a",)], [("b",)]]),
                         similarity_threshold=0.9)


def test_gigpo_errors_name_the_missing_input():
    inputs = make_inputs([[1]], step_rewards=[[1.0]])
    with pytest.raises(ValueError, match="gigpo needs step_keys"):
        gigpo_advantages(inputs)
    with pytest.raises(ValueError, match="mode"):
        gigpo_advantages(make_inputs([[1]], step_rewards=[[1.0]], keys=[["a"]]), mode="std")
    short = make_inputs([[1, 1]], step_rewards=[[1.0]], keys=[["a", "b"]])
    with pytest.raises(ValueError, match="step_rewards has 1 columns"):
        gigpo_advantages(short)


# -- MAPO ------------------------------------------------------------------------------------------


def test_mapo_hand():
    # returns (gamma 1): row0 [1, 0], row1 [0], row2 [4, 2]
    inputs = make_inputs([[1, 1], [1], [1, 1]], step_rewards=[[1.0, 0.0], [0.0], [2.0, 2.0]])
    got = per_turn(mapo_advantages(inputs), inputs)
    # turn 0: (1, 0, 4) mean 5/3, unbiased std sqrt(39/9); turn 1: (0, 2) mean 1, std sqrt(2)
    # batch: (1, 0, 0, 4, 2) mean 1.4, unbiased std sqrt(11.2 / 4)
    s0, s1, sb = math.sqrt(39 / 9), math.sqrt(2), math.sqrt(11.2 / 4)

    def mix(g, mean_k, sd_k):
        return 0.5 * (g - mean_k) / (sd_k + 1e-6) + 0.5 * (g - 1.4) / (sb + 1e-6)

    expected = [[mix(1, 5 / 3, s0), mix(0, 1, s1)], [mix(0, 5 / 3, s0)], [mix(4, 5 / 3, s0), mix(2, 1, s1)]]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-5)


def test_mapo_turn_index_reached_by_one_dialogue_keeps_only_the_batch_term():
    inputs = make_inputs([[1, 1, 1], [1]], step_rewards=[[0.0, 0.0, 3.0], [1.0]])
    # returns: row0 [3, 3, 3], row1 [1]; turns 1 and 2 reached by row0 only -> A^turn = 0 there
    # batch (3, 3, 3, 1): mean 2.5, unbiased std sqrt(3 / 3) = 1
    got = per_turn(mapo_advantages(inputs, alpha=0.5), inputs)
    b3 = 0.5 / (1 + 1e-6)
    t0 = 1.0 / (math.sqrt(2) + 1e-6)  # turn 0: (3, 1) mean 2, std sqrt(2)
    assert got[0] == pytest.approx([0.5 * t0 + 0.5 * b3, 0.5 * b3, 0.5 * b3], abs=1e-6)
    assert got[1] == pytest.approx([0.5 * -t0 + 0.5 * (-1.5 / (1 + 1e-6))], abs=1e-6)


# -- A2TGPO and IGPO -------------------------------------------------------------------------------


def ig_case():
    # one prompt, three rollouts; IG on the non-final turns, outcome R on the final (answer) turn
    return make_inputs([[1, 1, 1], [1, 1], [2, 1, 1]], rewards=[1.0, 0.0, 1.0], groups=[5, 5, 5],
                       step_rewards=[[0.2, 0.4, 9.0], [0.0, 9.0], [0.1, -0.3, 9.0]])


def test_a2tgpo_hand_turn_groups_and_sqrt_rescaling():
    inputs = ig_case()
    got = per_turn(a2tgpo_advantages(inputs), inputs)
    # IG groups by turn index: k=0 {0.2, 0.0, 0.1} mean 0.1 std 0.1; k=1 {0.4, -0.3} mean 0.05 std 0.35 sqrt 2
    # (row 1's turn 1 is its answer turn). outcome: (1, 0, 1) mean 2/3, std sqrt(1/3)
    e = 1e-6
    i00, i10, i20 = 0.1 / (0.1 + e), -0.1 / (0.1 + e), 0.0
    sd1 = 0.35 * math.sqrt(2)
    i01, i21 = 0.35 / (sd1 + e), -0.35 / (sd1 + e)
    o_pos, o_neg = (1 / 3) / (math.sqrt(1 / 3) + e), (-2 / 3) / (math.sqrt(1 / 3) + e)
    expected = [
        [(i00 + i01 + o_pos) / math.sqrt(3), (i01 + o_pos) / math.sqrt(2), o_pos],
        [(i10 + o_neg) / math.sqrt(2), o_neg],
        [(i20 + i21 + o_pos) / math.sqrt(3), (i21 + o_pos) / math.sqrt(2), o_pos],
    ]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-5)


def test_igpo_hand_pooled_separate_normalisation_no_sqrt():
    inputs = ig_case()
    got = per_turn(igpo_advantages(inputs), inputs)
    # IG pool (0.2, 0.4, 0.0, 0.1, -0.3): mean 0.08, population var 0.0536; outcome pool (1, 0, 1)
    mean, sd = 0.08, math.sqrt(0.0536 + 1e-8)
    sd_o = math.sqrt(2 / 9 + 1e-8)
    e = 1e-6

    def z(v):
        return (v - mean) / (sd + e)

    o_pos, o_neg = (1 / 3) / (sd_o + e), (-2 / 3) / (sd_o + e)
    expected = [[z(0.2) + z(0.4) + o_pos, z(0.4) + o_pos, o_pos], [z(0.0) + o_neg, o_neg],
                [z(0.1) + z(-0.3) + o_pos, z(-0.3) + o_pos, o_pos]]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-5)


def test_igpo_accumulates_without_sqrt_while_a2tgpo_divides_by_sqrt_terms():
    """Key property: IGPO's turn-k advantage is the plain discounted sum of its normalised turn
    rewards; A2TGPO divides the same kind of sum by sqrt(#terms) = sqrt(K - k)."""
    inputs = make_inputs([[1, 1, 1], [1, 1, 1]], rewards=[1.0, 0.0], groups=[0, 0],
                         step_rewards=[[0.3, 0.1, 0.0], [-0.3, -0.1, 0.0]])
    e = 1e-6
    # A2TGPO, groups per turn index: (0.3, -0.3) std sqrt(0.18); (0.1, -0.1) std sqrt(0.02); (0, 0) -> 0
    z0, z1 = 0.3 / (math.sqrt(0.18) + e), 0.1 / (math.sqrt(0.02) + e)
    a2 = per_turn(a2tgpo_advantages(inputs, outcome_on_last_turn=False), inputs)
    assert a2[0] == pytest.approx([(z0 + z1) / math.sqrt(3), z1 / math.sqrt(2), 0.0], abs=1e-6)
    assert a2[1] == pytest.approx([-(z0 + z1) / math.sqrt(3), -z1 / math.sqrt(2), 0.0], abs=1e-6)
    # IGPO, one pool (0.3, 0.1, 0, -0.3, -0.1, 0): mean 0, population var 0.2 / 6
    sd = math.sqrt(0.2 / 6 + 1e-8)
    y0, y1 = 0.3 / (sd + e), 0.1 / (sd + e)
    ig = per_turn(igpo_advantages(inputs, outcome_on_last_turn=False), inputs)
    assert ig[0] == pytest.approx([y0 + y1, y1, 0.0], abs=1e-6)
    assert ig[1] == pytest.approx([-(y0 + y1), -y1, 0.0], abs=1e-6)


def test_turn_index_reached_by_one_rollout_is_degenerate_zero():
    inputs = make_inputs([[1, 1, 1], [1]], rewards=[1.0, 1.0], groups=[0, 0], step_rewards=[[0.5, 0.7, 0.0], [0.1]])
    got = per_turn(a2tgpo_advantages(inputs, outcome_on_last_turn=False), inputs)
    # turn 0 group (0.5, 0.1): +-1; turns 1, 2 reached by row 0 only -> 0
    z = 0.2 / (math.sqrt(0.08) + 1e-6)
    assert got == [pytest.approx([z / math.sqrt(3), 0.0, 0.0]), pytest.approx([-z])]


def test_a2tgpo_clip_scale_bounded_monotone_and_one_off_turns():
    inputs = ig_case()
    scale = a2tgpo_clip_scale(inputs, spread=0.5)
    assert (scale[~inputs.loss_mask] == 1.0).all()
    assert ((scale > 0.5) & (scale < 1.5)).all()
    turns = per_turn(scale, inputs)
    # turn 0 scores: row0 +1, row1 -1, row2 0 -> 1 + 0.5 tanh(z)
    assert turns[0][0] == pytest.approx(1 + 0.5 * math.tanh(0.1 / (0.1 + 1e-6)), abs=1e-6)
    assert turns[2][0] == pytest.approx(1.0)
    assert turns[1][0] < turns[2][0] < turns[0][0]  # increasing in the normalised IG
    with pytest.raises(ValueError, match="spread"):
        a2tgpo_clip_scale(inputs, spread=1.5)


# -- MatchTIR ------------------------------------------------------------------------------------------


def test_matchtir_hand():
    # prompt 0: rows a [1, 0.5], b [0, 1]; prompt 1: row c [2] (group of one)
    inputs = make_inputs([[1, 1], [1, 1], [1]], groups=[0, 0, 1], step_rewards=[[1.0, 0.5], [0.0, 1.0], [2.0]])
    got = per_turn(matchtir_advantages(inputs), inputs)
    e = 1e-6
    # A^traj: totals a 1.5, b 1.0 -> +-0.25 / std(1.5, 1.0) = +-0.25 / sqrt(0.125); c alone: 2 / (1 + e)
    t = 0.25 / (math.sqrt(0.125) + e)
    # D (gamma 0.9): a [1 + 0.45, 0.5] = [1.45, 0.5]; b [0.9, 1]; c [2]
    # turn 0 (1.45, 0.9): +-0.275 / sqrt(0.15125); turn 1 (0.5, 1): -+0.25 / sqrt(0.125); c turn alone: 2 / (1 + e)
    u0 = 0.275 / (math.sqrt(0.15125) + e)
    u1 = 0.25 / (math.sqrt(0.125) + e)
    expected = [[(t + u0) / 2, (t - u1) / 2], [(-t - u0) / 2, (-t + u1) / 2], [(2 / (1 + e) + 2 / (1 + e)) / 2]]
    for row, exp in zip(got, expected):
        assert row == pytest.approx(exp, abs=1e-5)


# -- SLATE and VPR -------------------------------------------------------------------------------------


def sibling_case(shift=0.0):
    # prompt 0: three siblings from prefix "p1" (scores 1, 0, -1), two from "p2" that tie (judge tie)
    # prompt 1: one step from "p1" -- a different prompt, so not a sibling of prompt 0's "p1"
    scores = [[1.0], [0.0], [-1.0], [1.0], [1.0], [4.0]]
    return make_inputs([[1]] * 6, rewards=[0, 0, 0, 0, 0, 1], groups=[0, 0, 0, 0, 0, 1],
                       step_rewards=[[s[0] + shift] for s in scores],
                       keys=[["p1"], ["p1"], ["p1"], ["p2"], ["p2"], ["p1"]])


def test_slate_hand_ties_and_lone_steps_masked():
    inputs = sibling_case()
    assert per_turn(slate_advantages(inputs), inputs) == [[1.0], [0.0], [-1.0], [0.0], [0.0], [0.0]]
    scaled = per_turn(slate_advantages(inputs, scale_by_std=True), inputs)
    assert scaled[0] == pytest.approx([1 / (1 + 1e-6)])


def test_slate_sibling_relative_advantage_ignores_the_prefix_value():
    """Key property: adding the same constant to every sibling (the prefix's value) changes nothing."""
    torch.testing.assert_close(slate_advantages(sibling_case()), slate_advantages(sibling_case(shift=7.5)))


def test_vpr_hand_and_equal_reward_states_masked():
    inputs = sibling_case()
    # kept: state (0, p1) with rewards (1, 0, -1): centred (1, 0, -1); batch whitening over the kept:
    # mean 0, population std sqrt(2/3)
    got = per_turn(vpr_advantages(inputs), inputs)
    sd = math.sqrt(2 / 3)
    assert got == [pytest.approx([1 / (sd + 1e-8)]), [0.0], pytest.approx([-1 / (sd + 1e-8)]), [0.0], [0.0], [0.0]]
    mask = vpr_train_mask(inputs)
    assert mask[:3].any(dim=1).tolist() == [True, True, True]
    assert not mask[3:].any()
    assert (mask <= inputs.loss_mask).all()


@pytest.mark.parametrize("seed", range(3))
def test_vpr_output_is_whitened_over_kept_candidates(seed):
    """Key property of mean_then_batch_whiten: kept candidates have mean 0 and population std 1."""
    rnd = random.Random(seed)
    states = [rnd.choice(["s0", "s1", "s2"]) for _ in range(10)]
    inputs = make_inputs([[1]] * 10, groups=[0] * 10, step_rewards=[[float(rnd.randint(0, 3))] for _ in range(10)],
                         keys=[[s] for s in states])
    adv = vpr_advantages(inputs)
    keep = vpr_train_mask(inputs).any(dim=1)
    vals = adv.sum(dim=1)[keep]  # one token per row
    assert vals.numel() >= 4
    assert float(vals.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(vals.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert (adv.sum(dim=1)[~keep] == 0).all()


# -- degenerate layouts for every estimator ---------------------------------------------------------


ALL = {"gigpo": gigpo_advantages, "mapo": mapo_advantages, "a2tgpo": a2tgpo_advantages, "igpo": igpo_advantages,
       "matchtir": matchtir_advantages, "slate": slate_advantages, "vpr": vpr_advantages}


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_turns_gives_zeros(name):
    inputs = make_inputs([[], []], rewards=[1.0, 0.0], groups=[0, 0], step_rewards=[[], []], keys=[[], []])
    out = ALL[name](inputs)
    assert out.shape == inputs.loss_mask.shape and (out == 0).all()


@pytest.mark.parametrize("name", sorted(ALL))
def test_equal_outcomes_and_zero_turn_signals_give_zero(name):
    inputs = make_inputs([[1, 2], [2, 1]], rewards=[1.0, 1.0], groups=[0, 0], step_rewards=[[0.0, 0.0], [0.0, 0.0]],
                         keys=[["a", "b"], ["a", "b"]])
    out = ALL[name](inputs)
    assert torch.isfinite(out).all()
    assert (out == 0).all(), name  # equal outcomes and equal turn signals: nothing to prefer
