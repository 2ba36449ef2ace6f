"""Turn-signal producers (credit/turn_rewards.py), the estimators that consume them
(credit/turn_reward_credit.py: siop, calm, lare, oprl, sotopia_rl) and DRPO's weighting (credit/drpo.py)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from credo.batch import RolloutBatch
from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.drpo import drpo_advantages, drpo_advantages_loop
from credo.credit.outcome import grpo_advantages
from credo.credit.turn_reward_credit import (
    calm_advantages, calm_advantages_loop, lare_advantages, lare_advantages_loop, oprl_advantages,
    oprl_advantages_loop, siop_advantages, siop_advantages_loop, sotopia_rl_advantages, sotopia_rl_advantages_loop,
)
from credo.credit.turn_rewards import (
    answer_f1, calm_subgoal_rewards, greedy_call_matching, information_gain, key_overlap, lare_decode,
    lare_fit_decoder, matchtir_call_rewards, matchtir_turn_rewards, oprl_preference_pairs, oprl_prm_loss,
    oprl_step_rewards, pad_turn_rewards, siop_cluster_weights, siop_turn_rewards, sinkhorn_plan,
    sotopia_combine_dimensions, sotopia_utterance_rewards, tool_call_similarity,
)
from credo.objectives.discriminative import drpo_loss
from credo.objectives.grpo import grpo_loss
from credo.objectives.reduce import reduce_loss

NAN = float("nan")


def make_inputs(turn_lens, *, rewards=None, groups=None, step_rewards=None, logprobs=None) -> CreditInputs:
    """Rows as turn token counts: 1 prompt token, then per turn its policy tokens and 1 observation
    token, then 1 padding token. step_rewards: per-row lists (NaN-padded here)."""
    B = len(turn_lens)
    T = max(1 + sum(n + 1 for n in row) for row in turn_lens) + 1
    mask = torch.zeros(B, T, dtype=torch.bool)
    ids = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(turn_lens):
        t = 1
        for k, n in enumerate(row):
            mask[b, t:t + n] = True
            ids[b, t:t + n] = k
            t += n + 1
    sr = pad_turn_rewards(step_rewards) if step_rewards is not None else torch.zeros(B, 0)
    return CreditInputs(rewards=torch.tensor(rewards if rewards is not None else [0.0] * B, dtype=torch.float32),
                        group_ids=torch.tensor(groups if groups is not None else [0] * B), loss_mask=mask,
                        step_ids=ids, step_rewards=sr, logprobs=logprobs)


def per_turn(adv: torch.Tensor, inputs: CreditInputs) -> list[list[float]]:
    out = []
    for b in range(adv.shape[0]):
        ids = inputs.step_ids[b]
        row = []
        for k in range(int(ids.max()) + 1):
            vals = adv[b][(ids == k) & inputs.loss_mask[b]]
            assert torch.allclose(vals, vals[0].expand_as(vals))
            row.append(float(vals[0]))
        out.append(row)
    return out


def random_inputs(seed: int) -> CreditInputs:
    """Random groups (sizes 1..4, arbitrary ids), 0..4 turns of 0..3 tokens, 0..2 observation tokens,
    turn rewards with ties and the odd NaN, binary-ish outcomes, random behaviour logprobs."""
    rnd = random.Random(seed)
    groups: list[int] = []
    while len(groups) < rnd.randint(1, 9):
        groups += [rnd.choice([2, 5, 13, 40])] * rnd.randint(1, 4)
    rnd.shuffle(groups)
    B = len(groups)
    rows = [[rnd.randint(0, 3) for _ in range(rnd.randint(0, 4))] for _ in range(B)]
    T = max(2 + sum(n + 2 for n in row) for row in rows) + rnd.randint(0, 2)
    mask = torch.zeros(B, T, dtype=torch.bool)
    ids = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        t = rnd.randint(1, 2)
        for k, n in enumerate(row):
            mask[b, t:t + n] = True
            ids[b, t:t + n] = k
            t += n + rnd.randint(0, 2)
    sr = torch.full((B, 5), NAN)
    for b, row in enumerate(rows):
        for k in range(len(row)):
            sr[b, k] = NAN if rnd.random() < 0.05 else rnd.choice([0.0, 1.0, 0.5, rnd.uniform(-1, 1)])
    rewards = torch.tensor([rnd.choice([0.0, 1.0, 1.0, rnd.uniform(0, 1)]) for _ in range(B)])
    logprobs = torch.where(mask, -torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) * 3, 0.0)
    return CreditInputs(rewards=rewards, group_ids=torch.tensor(groups), loss_mask=mask, step_ids=ids,
                        step_rewards=sr, logprobs=logprobs)


# -- producers: information gain, MatchTIR -----------------------------------------------------------


def test_pad_turn_rewards():
    out = pad_turn_rewards([[1.0, 2.0], [], [3.0]])
    assert out.shape == (3, 2)
    assert out[0].tolist() == [1.0, 2.0] and out[1].isnan().all() and out[2, 0] == 3.0 and out[2, 1].isnan()


def test_information_gain_hand():
    lp = [math.log(0.1), math.log(0.3), math.log(0.2)]
    assert information_gain(lp) == pytest.approx([0.2, -0.1])
    assert information_gain(lp, log_space=True) == pytest.approx([math.log(3), math.log(2 / 3)])
    assert information_gain([math.log(0.1), NAN, math.log(0.5)]) == [0.0, 0.0]
    assert information_gain([math.log(0.5)]) == []


def test_tool_call_similarity_hand():
    gt = {"name": "search", "parameters": {"q": "paris", "n": 3}}
    # same keys (list equality: overlap 1), one value right: (1 + 1 + 1) / (2 + 2)
    assert tool_call_similarity({"name": "Search", "arguments": json.dumps({"q": "paris", "n": 5})}, gt) == 0.75
    # keys {q, lang} vs {q, n}: overlap 1 / 3; value q right: (1 + 1/3 + 1) / 4
    extra_key = {"name": "search", "arguments": {"q": "paris", "lang": "fr"}}
    assert tool_call_similarity(extra_key, gt) == pytest.approx(7 / 12)
    assert tool_call_similarity({"name": "lookup", "arguments": {"q": "paris", "n": 3}}, gt) == 0.0
    # malformed model output never raises: unparsable arguments count as {} -> (1 + 0 + 0) / 4
    assert tool_call_similarity({"name": "search", "arguments": "{not json"}, gt) == 0.25
    assert tool_call_similarity({"name": "search", "arguments": [1, 2]}, gt) == 0.25
    assert tool_call_similarity(None, gt) == 0.0
    assert tool_call_similarity({"name": "now", "arguments": "{}"}, {"name": "now", "parameters": {}}) == 1.0


def test_key_overlap_is_a_multiset_jaccard():
    assert key_overlap(["a", "a", "b"], ["a", "b", "b"]) == 0.5  # |{a, b}| / (3 + 3 - 2)
    assert key_overlap([], []) == 1.0 and key_overlap(["a"], []) == 0.0


def test_greedy_matching_is_greedy_not_optimal():
    # greedy takes (0, 0) = 0.9 first; the optimal assignment (0, 1) + (1, 0) = 1.65 would beat it
    assert greedy_call_matching([[0.9, 0.8], [0.85, 0.0]]) == [0, None]
    assert greedy_call_matching([[0.5, 0.5], [0.5, 0.5]]) == [0, 1]  # ties: earlier pred, earlier gt
    assert greedy_call_matching([[0.0]]) == [None]  # a zero score is never a match
    assert greedy_call_matching([]) == []


def test_matchtir_turn_rewards_hand():
    gt = [{"name": "search", "parameters": {"q": "paris"}}, {"name": "weather", "parameters": {"city": "paris"}}]
    turns = [
        [{"name": "search", "arguments": '{"q": "paris"}'}],                       # sim 1 with gt 0
        [{"name": "weather", "arguments": '{"city": "london"}'},                    # sim (1 + 1 + 0) / 3 with gt 1
         {"name": "search", "arguments": '{"q": "paris"}'}],                       # duplicate: gt 0 taken -> unmatched
        [],                                                                        # the answer turn
    ]
    f1 = answer_f1("The Eiffel Tower!", "eiffel tower")  # words {the, eiffel, tower} vs {eiffel, tower}: 0.8
    assert f1 == pytest.approx(0.8)
    got = matchtir_turn_rewards(turns, gt, answer_scores=[None, None, f1])
    assert got == pytest.approx([1.0, (2 / 3 + 0.0) / 2, 0.8])
    penalised = matchtir_turn_rewards(turns, gt, answer_scores=[None, None, f1], unmatched_penalty=-0.5)
    assert penalised == pytest.approx([1.0, (2 / 3 - 0.5) / 2, 0.8])
    assert matchtir_call_rewards([], gt) == []
    assert matchtir_call_rewards(turns[0], []) == [0.0]  # no ground truth: unmatched, penalty 0
    assert answer_f1(None, "x") == 0.0 and answer_f1("nothing here", "x") == 0.0


def test_sinkhorn_plan_matches_an_independent_loop_and_the_ot_rewards():
    s = torch.tensor([[1.0, 0.2, 0.0], [0.1, 0.9, 0.3]], dtype=torch.float64)
    plan = sinkhorn_plan(s, reg=0.1)
    torch.testing.assert_close(plan.sum(1), torch.full((2,), 0.5, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-8, rtol=0)
    # independent Sinkhorn-Knopp in plain Python
    K = [[math.exp(v / 0.1) for v in row] for row in s.tolist()]
    u, v = [0.5, 0.5], [1 / 3] * 3
    for _ in range(2000):
        v = [(1 / 3) / sum(K[i][j] * u[i] for i in range(2)) for j in range(3)]
        u = [0.5 / sum(K[i][j] * v[j] for j in range(3)) for i in range(2)]
    ref = [[u[i] * K[i][j] * v[j] for j in range(3)] for i in range(2)]
    torch.testing.assert_close(plan, torch.tensor(ref, dtype=torch.float64), atol=1e-7, rtol=1e-6)
    preds = [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]
    gts = [{"name": "a", "parameters": {}}, {"name": "b", "parameters": {}}]
    ot = matchtir_call_rewards(preds, gts, matching="ot")
    # S = identity: the plan puts 1/2 * e^10 / (e^10 + 1) on the diagonal; reward_i = sum_j T_ij S_ij
    diag = 0.5 * math.exp(10) / (math.exp(10) + 1)
    assert ot == pytest.approx([diag, diag], abs=1e-9)


# -- producers: SIOP, Sotopia-RL, CALM, LaRe, OPRL ------------------------------------------------------


def test_siop_cluster_weights_hand():
    ids = ["A", "A", "B", None, "Z"]
    groups = [0, 0, 0, 0, 1]
    assert siop_cluster_weights(ids, groups) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0, 1.0])
    # calibration: r(A) = mean of available evidence 0.9, r(B) = 0.1; single-cluster group 1 unchanged
    q = siop_cluster_weights(ids, groups, evidence=[0.9, None, 0.1, None, 0.5], eta=1.0)
    la, lb = math.log(2 / 3 + 1e-12) + 0.9, math.log(1 / 3 + 1e-12) + 0.1
    qa = math.exp(la) / (math.exp(la) + math.exp(lb))
    assert q == pytest.approx([qa, qa, 1 - qa, 0.0, 1.0])
    assert siop_cluster_weights(ids, groups, evidence=[0.9, None, 0.1, None, 0.5], eta=0.0) == pytest.approx(
        [2 / 3, 2 / 3, 1 / 3, 0.0, 1.0])


def test_siop_turn_rewards_hand():
    eps = 1e-8
    ll = [[math.log(0.1)], [math.log(0.2)], [math.log(0.4)]]
    got = siop_turn_rewards(0.5, ll, num_turns=2)
    step = 0.5 * (math.log(0.2 + eps) - math.log(0.1 + eps))
    step2 = 0.5 * (math.log(0.4 + eps) - math.log(0.2 + eps))
    assert got == pytest.approx([step, step2 + 0.5 * 0.5])
    # two references, uniform alpha: p^ = (0.1 + 0.3) / 2 = 0.2 at the prompt, (0.3 + 0.5) / 2 = 0.4 after
    two = siop_turn_rewards(1.0, [[math.log(0.1), math.log(0.3)], [math.log(0.3), math.log(0.5)],
                                  [math.log(0.3), math.log(0.5)]], num_turns=2, lam=1.0)
    assert two == pytest.approx([math.log(0.4 + eps) - math.log(0.2 + eps), 0.0])
    assert siop_turn_rewards(0.8, [], num_turns=1) == [pytest.approx(0.4)]  # single turn: (1 - lam) q
    assert siop_turn_rewards(0.0, ll, num_turns=2) == [0.0, 0.0]  # no answer
    assert siop_turn_rewards(0.5, [[NAN], [math.log(0.2)], [math.log(0.4)]], num_turns=2) == pytest.approx(
        [0.0, step2 + 0.25])  # undefined potential -> 0
    with pytest.raises(ValueError, match="3 contexts"):
        siop_turn_rewards(0.5, ll[:2], num_turns=2)


def test_sotopia_rewards_hand():
    assert sotopia_utterance_rewards([3, 0, 1, -1], 6.0) == pytest.approx([6.0, 0.0, 2.0, -1.0])
    per_dimension = {"goal": [1.0, 2.0], "knowledge": [4.0, 0.0]}
    combined = sotopia_combine_dimensions(per_dimension, {"goal": 1.0, "knowledge": 0.5})
    assert combined == pytest.approx([3.0, 2.0])
    with pytest.raises(ValueError, match="utterance counts"):
        sotopia_combine_dimensions({"goal": [1.0], "knowledge": [1.0, 2.0]}, {"goal": 1.0, "knowledge": 1.0})


def test_calm_subgoal_rewards_hand():
    achieved = [["key"], [], ["key", "door"], ["door"], ["key", "key"]]
    assert calm_subgoal_rewards(achieved) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert calm_subgoal_rewards(achieved, bonus=0.5, first_only=False) == [0.5, 0.0, 1.0, 0.5, 0.5]


def test_lare_decoder_recovers_a_realisable_decomposition():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 4, 3, generator=gen, dtype=torch.float64)
    valid = torch.arange(4)[None, :] < torch.tensor([4, 3, 2, 4, 1, 4, 3, 4, 2, 4, 4, 3])[:, None]
    feats[~valid] = NAN  # invalid steps are ignored even when non-finite
    w_true = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    returns = (torch.nan_to_num(feats) @ w_true * valid).sum(1)
    w = lare_fit_decoder(feats, valid, returns, ridge=1e-10)
    torch.testing.assert_close(w, w_true, atol=1e-6, rtol=1e-6)
    r_hat = lare_decode(feats, valid, w)
    assert r_hat[~valid].isnan().all()
    torch.testing.assert_close(torch.nan_to_num(r_hat.double()).sum(1), returns, atol=1e-4, rtol=1e-4)


def test_lare_decoder_is_the_least_squares_solution():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(10, 3, 2, generator=gen, dtype=torch.float64)
    valid = torch.ones(10, 3, dtype=torch.bool)
    returns = torch.randn(10, generator=gen, dtype=torch.float64)
    w = lare_fit_decoder(feats, valid, returns, ridge=0.0, bias=True)
    x = torch.cat([feats.sum(1), torch.full((10, 1), 3.0, dtype=torch.float64)], dim=1)  # bias counted per step
    residual = x @ w - returns
    torch.testing.assert_close(x.T @ residual, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    assert lare_decode(feats, valid, w).shape == (10, 3)


def test_oprl_step_rewards_hand():
    mask = torch.tensor([[False, True, True, False, True], [False, True, False, False, False]])
    ids = torch.tensor([[-1, 0, 0, -1, 1], [-1, 0, -1, -1, -1]])
    prm = torch.tensor([[0.0, -1.0, -2.0, 5.0, -0.5], [0.0, -1.0, 0.0, 0.0, 0.0]])
    old = torch.tensor([[0.0, -1.5, -1.0, 0.0, -1.0], [0.0, -2.0, 0.0, 0.0, 0.0]])
    out = oprl_step_rewards(prm, old, ids, mask, beta=0.5)
    # row 0: step 0 = 0.5 (0.5 - 1.0) = -0.25, step 1 = 0.5 * 0.5 = 0.25 (the env token's 5.0 is ignored)
    assert out[0].tolist() == pytest.approx([-0.25, 0.25])
    assert out[1, 0] == pytest.approx(0.5) and out[1, 1].isnan()


def test_oprl_prm_loss_and_pairs():
    assert oprl_preference_pairs([1.0, 0.0, 1.0, 0.5], [0, 0, 0, 1]) == [(0, 1), (2, 1)]
    assert oprl_preference_pairs([1.0, 1.0], [0, 0]) == []
    prm = torch.tensor([-3.0, -5.0], requires_grad=True)
    old = torch.tensor([-4.0, -4.0])
    loss = oprl_prm_loss(prm, old, [(0, 1)], beta=0.5)
    # margin 0.5 ((-3 + 4) - (-5 + 4)) = 1 -> -log sigmoid(1)
    assert float(loss.detach()) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    loss.backward()
    assert prm.grad[0] < 0 < prm.grad[1]  # descending raises the winner, lowers the loser
    empty = oprl_prm_loss(prm, old, [])
    assert float(empty.detach()) == 0.0 and empty.requires_grad


# -- estimators over produced signals ----------------------------------------------------------------


CASES = [
    (siop_advantages, siop_advantages_loop, {}),
    (siop_advantages, siop_advantages_loop, {"gamma": 0.8}),
    (calm_advantages, calm_advantages_loop, {}),
    (calm_advantages, calm_advantages_loop, {"aux_coef": 0.3, "gamma": 0.9}),
    (lare_advantages, lare_advantages_loop, {}),
    (oprl_advantages, oprl_advantages_loop, {}),
    (oprl_advantages, oprl_advantages_loop, {"alpha": 0.5, "step_return": True, "gamma": 0.9}),
    (sotopia_rl_advantages, sotopia_rl_advantages_loop, {}),
    (sotopia_rl_advantages, sotopia_rl_advantages_loop, {"scale_by_std": False}),
    (drpo_advantages, drpo_advantages_loop, {}),
    (drpo_advantages, drpo_advantages_loop, {"tau": None, "threshold": 0.5, "normalize_by_valid": True}),
    (drpo_advantages, drpo_advantages_loop, {"lam": 0.5, "max_length": 40}),
]


@pytest.mark.parametrize("fn, loop, hp", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("seed", range(8))
def test_loop_equals_vectorized(fn, loop, hp, seed):
    inputs = random_inputs(seed)
    fast = fn(inputs, **hp)
    assert fast.dtype == torch.float32 and fast.shape == inputs.loss_mask.shape
    assert torch.isfinite(fast).all() and (fast[~inputs.loss_mask] == 0).all()
    torch.testing.assert_close(fast, loop(inputs, **hp), rtol=1e-5, atol=1e-5)


def test_registered_and_declared_needs():
    for name in ("siop", "calm", "lare", "sotopia_rl"):
        fn = CREDIT.get(name)
        assert is_token_level(fn) and credit_needs_of(fn) == {"steps", "step_rewards"}, name
    # OPRL's implicit PRM compares against the recomputed behaviour logprobs (pi_old)
    assert credit_needs_of(CREDIT.get("oprl")) == {"steps", "step_rewards", "logprobs"}
    assert credit_needs_of(CREDIT.get("drpo")) == {"logprobs"}


def test_siop_hand_pooled_normalisation_and_accumulation():
    # prompt 0: a [0.2, 0.6], b [-0.2]; prompt 1: c [1.0] (one pair -> 0)
    inputs = make_inputs([[1, 1], [2], [1]], groups=[0, 0, 1], step_rewards=[[0.2, 0.6], [-0.2], [1.0]])
    got = per_turn(siop_advantages(inputs), inputs)
    # pool (0.2, 0.6, -0.2): mean 0.2, unbiased std 0.4
    e = 1e-6
    z = [0.0, 0.4 / (0.4 + e), -0.4 / (0.4 + e)]
    assert got == [pytest.approx([z[0] + z[1], z[1]]), pytest.approx([z[2]]), [0.0]]


def test_siop_tiny_std_counts_as_one_and_single_turn_equals_grpo():
    """std < eps -> 1 (official); key property: with single-turn rollouts (the 'broadcast' ablation's
    layout) SIOP's pooled normalisation is GRPO on the turn reward."""
    tiny = make_inputs([[1], [1]], groups=[0, 0], step_rewards=[[1e-8], [0.0]])
    half = 5e-9 / (1 + 1e-6)  # (1e-8 - 5e-9) / (1 + eps): the tiny std was replaced by 1
    assert per_turn(siop_advantages(tiny), tiny) == [pytest.approx([half]), pytest.approx([-half])]
    r = [0.3, 0.9, 0.1, 0.5, 0.5, 0.2]
    inputs = make_inputs([[2]] * 6, groups=[0, 0, 0, 1, 1, 1], step_rewards=[[v] for v in r])
    grpo = grpo_advantages(torch.tensor(r), inputs.group_ids)
    torch.testing.assert_close(siop_advantages(inputs), torch.where(inputs.loss_mask, grpo[:, None], 0.0))


def test_siop_end_to_end_from_producers():
    # two rollouts of one prompt, answers in clusters A (2/3) and B (1/3) with a third rollout in A
    q = siop_cluster_weights(["A", "B", "A"], [0, 0, 0])
    lls = [[[math.log(0.1)], [math.log(0.5)], [math.log(0.6)]],  # rollout 0: turn 0 raises support a lot
           [[math.log(0.1)], [math.log(0.1)], [math.log(0.2)]],
           [[math.log(0.1)], [math.log(0.1)], [math.log(0.6)]]]
    rewards = [siop_turn_rewards(q[i], lls[i], num_turns=2) for i in range(3)]
    inputs = make_inputs([[1, 1]] * 3, groups=[0, 0, 0], step_rewards=rewards)
    adv = per_turn(siop_advantages(inputs), inputs)
    assert adv[0][0] > adv[2][0]  # same cluster and end point, but rollout 0 got there at turn 0
    assert all(math.isfinite(v) for row in adv for v in row)


def test_calm_without_bonus_credits_every_turn_with_the_outcome():
    """Key property: aux_coef 0 leaves only the outcome on the last turn; with gamma 1 the accumulation
    carries it back, so every turn of a rollout gets the same advantage."""
    inputs = make_inputs([[1, 1, 1], [1, 1]], rewards=[1.0, 0.0], groups=[0, 0],
                         step_rewards=[[1.0, 0.0, 0.0], [0.0, 1.0]])
    got = per_turn(calm_advantages(inputs, aux_coef=0.0), inputs)
    # pool (0, 0, 1, 0, 0): mean 0.2, unbiased std sqrt(0.2): the last turn's z propagates back
    e = 1e-6
    z1, z0 = 0.8 / (math.sqrt(0.2) + e), -0.2 / (math.sqrt(0.2) + e)
    assert got[0] == pytest.approx([z0 + z0 + z1, z0 + z1, z1])
    assert got[1] == pytest.approx([z0 + z0, z0])
    with_bonus = per_turn(calm_advantages(inputs), inputs)  # u = bonus + outcome: a (1, 0, 1), b (0, 1)
    assert with_bonus[0][0] > with_bonus[1][0]


def test_lare_pipeline_credits_the_turn_that_carries_the_return():
    # the return is earned by feature 0, present only on turn 0 of rollouts 0 and 2
    feats = torch.zeros(4, 2, 2, dtype=torch.float64)
    feats[[0, 2], 0, 0] = 1.0
    feats[:, :, 1] = 0.3  # an irrelevant constant feature
    valid = torch.ones(4, 2, dtype=torch.bool)
    returns = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    r_hat = lare_decode(feats, valid, lare_fit_decoder(feats, valid, returns))
    assert r_hat[0, 0] == pytest.approx(1.0, abs=1e-4) and r_hat[0, 1] == pytest.approx(0.0, abs=1e-4)
    inputs = make_inputs([[1, 1]] * 4, groups=[0] * 4, step_rewards=r_hat.tolist())
    adv = per_turn(lare_advantages(inputs), inputs)
    assert adv[0][0] > 0 > adv[1][0]
    assert adv[0][1] == pytest.approx(adv[1][1], abs=1e-3)  # turn 1 carries no return: no preference


def test_oprl_hand_and_reduces_to_grpo_when_prm_equals_old_policy():
    inputs = make_inputs([[1, 1], [1]], rewards=[1.0, 0.0], groups=[0, 0], step_rewards=[[0.3, 0.1], [-0.1]])
    got = per_turn(oprl_advantages(inputs, alpha=0.5), inputs)
    # A^E: +-0.5 / sqrt(0.5); A^S pool (0.3, 0.1, -0.1): mean 0.1, std 0.2
    e = 1e-6
    ae = 0.5 / (math.sqrt(0.5) + e)
    assert got == [pytest.approx([ae + 0.5 * 0.2 / (0.2 + e), ae]), pytest.approx([-ae - 0.5 * 0.2 / (0.2 + e)])]
    # key property: pi_phi = pi_old -> r_phi = 0 -> OPRL is GRPO
    zero = make_inputs([[1, 1], [1]], rewards=[1.0, 0.0], groups=[0, 0], step_rewards=[[0.0, 0.0], [0.0]])
    grpo = grpo_advantages(zero.rewards, zero.group_ids)
    torch.testing.assert_close(oprl_advantages(zero), torch.where(zero.loss_mask, grpo[:, None], 0.0))


def test_sotopia_rl_is_grpo_over_utterances():
    """Key property: one utterance per row (the paper's single-turn GRPO) gives exactly GRPO."""
    r = [6.0, 2.0, -1.0, 0.0, 4.0]
    inputs = make_inputs([[3]] * 5, groups=[1, 1, 1, 2, 2], step_rewards=[[v] for v in r])
    grpo = grpo_advantages(torch.tensor(r), inputs.group_ids)
    torch.testing.assert_close(sotopia_rl_advantages(inputs), torch.where(inputs.loss_mask, grpo[:, None], 0.0))
    lone = make_inputs([[1]], groups=[0], step_rewards=[[2.0]])
    assert per_turn(sotopia_rl_advantages(lone), lone) == [pytest.approx([2.0 / (1 + 1e-6)])]


@pytest.mark.parametrize("fn", [siop_advantages, calm_advantages, lare_advantages, oprl_advantages,
                                sotopia_rl_advantages])
def test_no_turns_and_single_pair_degenerate(fn):
    empty = make_inputs([[], []], rewards=[1.0, 0.0], groups=[0, 0], step_rewards=[[], []])
    assert (fn(empty) == 0).all()
    flat = make_inputs([[1, 2], [2]], rewards=[1.0, 1.0], groups=[0, 0], step_rewards=[[0.5, 0.5], [0.5]])
    out = fn(flat)
    assert torch.isfinite(out).all()
    if fn is not calm_advantages:  # calm adds the outcome on the last turn, which breaks the tie
        assert (out == 0).all()


def test_estimators_name_the_missing_input():
    inputs = CreditInputs(rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long),
                          loss_mask=torch.ones(1, 2, dtype=torch.bool))
    for fn, missing in [(siop_advantages, "step_ids"), (drpo_advantages, "logprobs")]:
        with pytest.raises(ValueError, match=missing):
            fn(inputs)


# -- DRPO ----------------------------------------------------------------------------------------------


def drpo_case():
    # group 0: two positives (lengths 2 and 4) and two negatives; group 1: only positives (dropped)
    lens = [2, 4, 3, 1, 2]
    T = 6
    mask = torch.zeros(5, T, dtype=torch.bool)
    for b, n in enumerate(lens):
        mask[b, 1:1 + n] = True
    logp = torch.where(mask, torch.tensor([[0.0, -1.0, -1.0, -1.0, -1.0, 0.0]] * 5) * torch.tensor(
        [[1.0], [0.5], [2.0], [1.0], [1.0]]), 0.0)
    return CreditInputs(rewards=torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]), group_ids=torch.tensor([0, 0, 0, 0, 1]),
                        loss_mask=mask, logprobs=logp)


def test_drpo_hand():
    inputs = drpo_case()
    adv = drpo_advantages(inputs, lam=0.5, tau=1.0)
    # L_pad = 4: w ~ exp((1 - 2/4) / 0.5) = e, exp(0) = 1 -> (e, 1) / (e + 1)
    w0, w1 = math.e / (math.e + 1), 1 / (math.e + 1)
    # negative scores: s = -2 (row 2), -1 (row 3); softmax(s / 1) over negatives
    n2, n3 = math.exp(-2) / (math.exp(-2) + math.exp(-1)), math.exp(-1) / (math.exp(-2) + math.exp(-1))
    scale = 5 / 2  # 5 non-empty responses, 2 prompts (group 1 has no negative: dropped, still counted)
    rows = [float(adv[b][inputs.loss_mask[b]][0]) for b in range(5)]
    assert rows == pytest.approx([scale * w0, scale * w1, -scale * n2, -scale * n3, 0.0])
    assert sum(rows[:2]) + sum(rows[2:4]) == pytest.approx(0.0)  # positives and negatives balance


def test_drpo_long_correct_answer_stays_positive_and_lam_to_inf_is_uniform():
    inputs = drpo_case()
    adv = drpo_advantages(inputs, lam=0.01)
    assert adv[1][inputs.loss_mask[1]].min() >= 0.0  # length never flips a correct answer's sign
    wide = drpo_advantages(inputs, lam=1e6, tau=None)
    first = [float(wide[b][inputs.loss_mask[b]][0]) for b in range(4)]
    assert first == pytest.approx([2.5 * 0.5, 2.5 * 0.5, -2.5 * 0.5, -2.5 * 0.5], rel=1e-4)  # DisCO-b weights


def test_drpo_advantage_with_grpo_objective_reproduces_drpo_objective_gradient():
    """Key property: the grpo objective (ratio 1, no KL) with reduction seq_mean_token_mean on these
    advantages has exactly the gradient of DRPO's objective (its KL hinge off: beta 0)."""
    gen = torch.Generator().manual_seed(0)
    B, T = 7, 8
    lens = [3, 5, 2, 6, 4, 0, 5]
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lens):
        mask[b, 1:1 + n] = True
    old = torch.where(mask, -torch.rand(B, T, generator=gen) * 2, 0.0)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    inputs = CreditInputs(rewards=rewards, group_ids=groups, loss_mask=mask, logprobs=old)
    adv = drpo_advantages(inputs)
    batch = RolloutBatch(tokens=torch.zeros(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.bool),
                         loss_mask=mask, sampler_logprobs=old, advantages=adv, rewards=rewards, group_ids=groups)
    lp1 = old.clone().requires_grad_(True)
    reduce_loss(grpo_loss(lp1, batch).per_token, mask, "seq_mean_token_mean").backward()
    lp2 = old.clone().requires_grad_(True)
    reduce_loss(drpo_loss(lp2, batch, beta=0.0).per_token, mask, "token_mean").backward()
    assert lp2.grad.abs().sum() > 0
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-5, atol=1e-7)


def test_drpo_degenerate_groups_and_empty_responses():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1:3] = True
    logp = torch.where(mask, -1.0, 0.0)
    # group 0: a positive and an EMPTY negative -> no valid group; all-equal rewards group -> 0
    inputs = CreditInputs(rewards=torch.tensor([1.0, 0.0, 1.0]), group_ids=torch.tensor([0, 0, 1]), loss_mask=mask,
                          logprobs=logp)
    out = drpo_advantages(inputs)
    assert (out == 0).all() and torch.isfinite(out).all()
