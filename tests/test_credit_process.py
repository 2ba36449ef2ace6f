"""Step-reward credit estimators (credo.credit.process): hand-computed values, the papers' key
properties (PURE min-form vs sum-form), degenerate inputs, loop == vectorized over random layouts."""

import math

import numpy as np
import pytest
import torch

from credo.credit import CREDIT, CreditInputs
from credo.credit.base import credit_needs_of, steps_from_boundaries
from credo.judges.synthetic import SyntheticJudge
from credo.credit.process import (capo, capo_loop, grounded_prm, grounded_prm_loop, judge_wrong_fraction, pure,
                                  pure_loop, pure_sum, tp_grpo, tp_grpo_loop)

NAN = float("nan")
A_PAIR = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of a {1, 0} pair (unbiased std sqrt(0.5))


def layout(rows, *, prompt=1):
    """rows: per row a list of step lengths -> (loss_mask, step_ids) with a `prompt`-token prefix."""
    T = prompt + max([sum(r) for r in rows] + [0]) + 1
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    step_ids = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, lengths in enumerate(rows):
        t = prompt
        for k, n in enumerate(lengths):
            mask[b, t:t + n] = True
            step_ids[b, t:t + n] = k
            t += n
    return mask, step_ids


def make(rows, scores, rewards, groups, **kw):
    mask, step_ids = layout(rows)
    K = max([len(s) for s in scores] + [1])
    sr = torch.full((len(rows), K), NAN)
    for b, s in enumerate(scores):
        sr[b, :len(s)] = torch.tensor(s, dtype=torch.float32)
    return CreditInputs(rewards=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(groups),
                        loss_mask=mask, step_ids=step_ids, step_rewards=sr, **kw)


def random_inputs(seed, *, fractions=False):
    """A random batch: random group sizes and ids, empty responses, random step boundaries, NaN padding
    (and the odd NaN inside a row), step_rewards narrower or wider than the steps."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=rng.integers(1, 4))
    groups = np.repeat(rng.choice(50, size=len(sizes), replace=False), sizes)
    B = int(sizes.sum())
    order = rng.permutation(B)
    groups = groups[order]
    prompt = int(rng.integers(1, 4))
    lengths = rng.integers(0, 10, size=B)
    lengths[rng.random(B) < 0.15] = 0
    T = prompt + int(lengths.max()) + int(rng.integers(0, 3))
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, prompt:prompt + lengths[b]] = True
    ends = torch.tensor(rng.random((B, T)) < 0.35) & mask
    step_ids = steps_from_boundaries(mask, ends)
    K = int(step_ids.max()) + 1
    width = max(K + int(rng.integers(-1, 2)), 0)
    if fractions:  # CAPO: the wrong-vote fraction of three judges
        sr = judge_wrong_fraction(torch.tensor(rng.uniform(-1, 1, (3, B, width)), dtype=torch.float32))
    else:
        sr = torch.tensor(rng.uniform(-1, 1, (B, width)), dtype=torch.float32)
    for b in range(B):
        sr[b, int(step_ids[b].max()) + 1:] = NAN
    sr[torch.tensor(rng.random((B, width)) < 0.05)] = NAN
    rewards = torch.tensor(rng.integers(0, 2, size=B), dtype=torch.float32)
    return CreditInputs(rewards=rewards, group_ids=torch.tensor(groups), loss_mask=mask, step_ids=step_ids,
                        step_rewards=sr)


def close(x, ref, tol=1e-5):
    return torch.allclose(x, torch.as_tensor(ref, dtype=torch.float32), atol=tol, rtol=tol)


def test_registered_with_exact_needs():
    for name in ("pure", "pure_sum", "capo", "tp_grpo", "grounded_prm"):
        assert credit_needs_of(CREDIT.get(name)) == {"steps", "step_rewards"}
    inp = make([[2]], [[0.5]], [1.0], [0])
    inp.step_rewards = None
    with pytest.raises(ValueError, match="pure needs step_rewards"):
        pure(inp)


# -- PURE -----------------------------------------------------------------------------------------


def test_pure_hand_computed_with_baseline_and_verifier():
    # row 0: two steps of two tokens, scores (0.5, -0.5), solved; row 1: one step of three tokens, 0.2, not solved
    inp = make([[2, 2], [3]], [[0.5, -0.5], [0.2]], [1.0, 0.0], [7, 7])
    out = pure(inp)  # T = 0.1, coef 1, step-end tokens masked
    w0 = 1 / (1 + math.exp(10))  # softmax(-r / T) = softmax(-5, 5)
    w1 = 1 - w0
    out0, out1 = 0.5 * w0 - 0.5 * w1, 0.2  # sum_k w_k r_k of each row
    rho0, rho1 = out1 / 3, out0 / 4  # the other row's reward per token
    step0 = 0.5 * w0 - rho0 * 1  # n_k - 1 = 1 token (the step-end token is not counted)
    step1 = -0.5 * w1 - rho0 * 1 + (1.0 - 0.0)  # + verifier: R - mean of the others
    g_row1 = 0.2 - rho1 * 2 + (0.0 - 1.0)
    expected = torch.zeros_like(out)
    expected[0, 1], expected[0, 3] = step0 + step1, step1  # positions 2 and 4 end a step: 0
    expected[1, 1] = expected[1, 2] = g_row1
    assert close(out, expected)
    # without masking the step-end tokens they carry their step's return too
    full = pure(inp, mask_step_end=False)
    assert close(full[0, 1:5], [step0 + step1] * 2 + [step1] * 2)
    assert close(full[1, 1:4], [g_row1] * 3)


def test_pure_min_form_picks_the_worst_step_as_temperature_goes_to_zero():
    # a group of one: no baseline; no verifier; every token keeps its return
    scores = [0.8, 0.3, -0.4, 0.6, 0.9]
    inp = make([[2, 1, 3, 2, 2]], [scores], [1.0], [0])
    out = pure(inp, temperature=1e-3, verifiable_reward_coef=0.0, mask_step_end=False)[0]
    step_of = inp.step_ids[0]
    for t in range(out.numel()):
        k = int(step_of[t])
        if k >= 0:
            assert out[t].item() == pytest.approx(-0.4 if k <= 2 else 0.0, abs=1e-6)
    # the strict reading: every step gets the min over its own future
    strict = pure(inp, temperature=1e-3, verifiable_reward_coef=0.0, mask_step_end=False, future_only=True)[0]
    for t in range(out.numel()):
        k = int(step_of[t])
        if k >= 0:
            assert strict[t].item() == pytest.approx(min(scores[k:]), abs=1e-6)


def test_farming_small_positive_steps_raises_sum_form_not_min_form():
    honest = [0.5, -0.2]
    farmed = [0.1] * 8 + [0.5, -0.2]
    inp = make([[2, 2], [1] * 8 + [2, 2]], [honest, farmed], [0.0, 0.0], [0, 1])  # separate groups
    kw = dict(verifiable_reward_coef=0.0, mask_step_end=False)
    first = lambda adv: (adv[0, 1].item(), adv[1, 1].item())  # noqa: E731  (return of the first token)
    h_min, f_min = first(pure(inp, temperature=0.01, **kw))
    assert h_min == pytest.approx(-0.2, abs=1e-3) and f_min == pytest.approx(-0.2, abs=1e-3)
    h_sum, f_sum = first(pure_sum(inp, **kw))
    assert h_sum == pytest.approx(0.3, abs=1e-6) and f_sum == pytest.approx(1.1, abs=1e-6)
    # at the default temperature the min-form return stays inside the step-score range however much is
    # farmed, while the sum-form one grows with the number of farmed steps
    many = make([[1] * 50 + [1, 1]], [[0.1] * 50 + [0.5, -0.2]], [0.0], [0])
    assert abs(pure(many, **kw)[0, 1].item()) <= 0.5
    assert pure_sum(many, **kw)[0, 1].item() == pytest.approx(5.3, abs=1e-4)


def test_pure_sum_uniform_is_the_official_disable_weighted_reward_flag():
    # CJReinforce/PURE (commit 41f9363) openrlhf/utils/utils.py::turn_process_reward_logits_to_reward
    # with disable_weighted_reward: weight = softmax(ones masked to -inf off the valid steps) = 1 / K,
    # process_reward = weight * score; the rest (token-count RLOO baseline, verifier term on the last
    # step, returns) is the min-form pipeline. Same layout as the `pure` hand computation above.
    inp = make([[2, 2], [3]], [[0.5, -0.5], [0.2]], [1.0, 0.0], [7, 7])
    out = pure_sum(inp, step_weight="uniform")
    w = [[0.5, 0.5], [1.0]]  # 1 / K_b
    out0, out1 = 0.5 * w[0][0] - 0.5 * w[0][1], 0.2 * w[1][0]  # each row's sum_k w_k r_k
    rho0, rho1 = out1 / 3, out0 / 4
    step0 = 0.5 * w[0][0] - rho0 * 1
    step1 = -0.5 * w[0][1] - rho0 * 1 + (1.0 - 0.0)
    g_row1 = 0.2 - rho1 * 2 + (0.0 - 1.0)
    expected = torch.zeros_like(out)
    expected[0, 1], expected[0, 3] = step0 + step1, step1
    expected[1, 1] = expected[1, 2] = g_row1
    assert close(out, expected)
    # the default (the paper's plain sum-form) differs from the flag once a row has two or more steps
    assert not close(pure_sum(inp), out)
    # and the flag's first-token return is the row's mean step score, so farming steps does not pay
    farmed = make([[1] * 50 + [1, 1]], [[0.1] * 50 + [0.5, -0.2]], [0.0], [0])
    kw = dict(verifiable_reward_coef=0.0, mask_step_end=False)
    assert pure_sum(farmed, step_weight="uniform", **kw)[0, 1].item() == pytest.approx(5.3 / 52, abs=1e-5)
    with pytest.raises(ValueError, match="step_weight"):
        pure_sum(inp, step_weight="softmin")


def test_pure_sum_discount_hand_computed():
    inp = make([[1, 1, 1]], [[1.0, -1.0, 0.5]], [1.0], [0])
    out = pure_sum(inp, gamma=0.5, verifiable_reward_coef=0.0, mask_step_end=False)[0, 1:4]
    assert close(out, [1 - 0.5 + 0.125, -1 + 0.25, 0.5])


def test_pure_degenerate_cases():
    # empty response, a row whose tokens have no step (-1), equal step scores, NaN inside a row,
    # a group of one
    inp = make([[], [2, 2], [3], [1, 1]], [[], [0.3, 0.3], [NAN], [0.4, 0.4]], [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 2])
    inp.step_ids[2] = -1  # row 2's tokens belong to no step
    out = pure(inp, mask_step_end=False, verifiable_reward_coef=0.0)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] == 0).all()
    assert (out[~inp.loss_mask] == 0).all()
    # all-equal scores: uniform softmin weights, w_k r_k = r / K, the row total is r
    # (row 0, its only group mate, is empty: no baseline)
    assert close(out[1, 1:5], [0.3, 0.3, 0.15, 0.15])
    # a group of one: no baseline; the verifier term is coef (R - 1) = 0 for a solved row
    assert close(pure(inp, mask_step_end=False)[3, 1:3], [0.4, 0.2])
    # step_rewards narrower than the steps: the missing score counts as 0
    narrow = make([[1, 1]], [[0.5]], [0.0], [0])
    narrow.step_rewards = narrow.step_rewards[:, :1]
    w = 1 / (1 + math.exp(-5))  # softmax(-0.5 / 0.1, 0): the 0-score step dominates
    assert close(pure(narrow, mask_step_end=False, verifiable_reward_coef=0.0)[0, 1:3], [(1 - w) * 0.5, 0.0])


def test_pure_permuting_a_group_permutes_its_rows():
    inp = random_inputs(3)
    perm = torch.randperm(inp.rewards.numel(), generator=torch.Generator().manual_seed(0))
    shuffled = CreditInputs(rewards=inp.rewards[perm], group_ids=inp.group_ids[perm], loss_mask=inp.loss_mask[perm],
                            step_ids=inp.step_ids[perm], step_rewards=inp.step_rewards[perm])
    assert close(pure(shuffled), pure(inp)[perm])


@pytest.mark.parametrize("seed", range(8))
def test_pure_matches_loop(seed):
    inp = random_inputs(seed)
    assert close(pure(inp), pure_loop(inp))
    assert close(pure(inp, future_only=True, temperature=0.3), pure_loop(inp, form="future", temperature=0.3))
    assert close(pure(inp, mask_step_end=False, verifiable_reward_coef=0.3),
                 pure_loop(inp, mask_step_end=False, verifiable_reward_coef=0.3))
    assert close(pure_sum(inp, gamma=0.9), pure_loop(inp, form="sum", gamma=0.9))
    assert close(pure_sum(inp, gamma=0.9, step_weight="uniform"),
                 pure_loop(inp, form="sum", gamma=0.9, step_weight="uniform"))
    for out in (pure(inp), pure_sum(inp)):
        assert torch.isfinite(out).all() and (out[~inp.loss_mask] == 0).all()


# -- CAPO -----------------------------------------------------------------------------------------


def test_judge_wrong_fraction_from_synthetic_judge_scores():
    judges = [SyntheticJudge(noise=0.0, bias=b) for b in (0.0, -0.6, 0.3)]
    truth = [0.5, -0.5, 0.2]
    scores = torch.tensor([j.score("p", ["a", "b", "c"], truth) for j in judges])[:, None, :]  # [V, B=1, K]
    # scores: (0.5, -0.5, 0.2), (-0.1, -1.0, -0.4), (0.8, -0.2, 0.5) -> flagged wrong 1/3, 3/3, 1/3
    assert close(judge_wrong_fraction(scores)[0], [1 / 3, 1.0, 1 / 3])
    padded = torch.tensor([[0.3, NAN]])
    out = judge_wrong_fraction(padded)
    assert out[0, 0] == 0 and math.isnan(out[0, 1])


@pytest.mark.parametrize("vote, flags", [("majority", [0, 1, 0]), ("intersection", [0, 1, 0]),
                                         ("union", [0, 1, 1]), ("average", [0, 1, 0.4])])
def test_capo_hand_computed(vote, flags):
    inp = make([[2, 1, 1], [2]], [[0.0, 1.0, 0.4], [1.0]], [1.0, 0.0], [0, 0])
    out = capo(inp, vote=vote)  # penalty 1.0 in wrong answers, 0.5 in correct ones
    assert close(out[0, 1:5], [A_PAIR - 0.5 * flags[0]] * 2 + [A_PAIR - 0.5 * flags[1], A_PAIR - 0.5 * flags[2]])
    assert close(out[1, 1:3], [-A_PAIR - 1.0] * 2)
    with pytest.raises(ValueError, match="vote"):
        capo(inp, vote="plurality")


def test_capo_penalises_wrong_steps_even_in_zero_variance_groups():
    inp = make([[1, 1], [1, 1], []], [[0.0, 1.0], [0.0, 0.0], []], [1.0, 1.0, 1.0], [0, 0, 0])
    out = capo(inp)
    assert out[0, 1] == 0 and out[0, 2] == pytest.approx(-0.5)  # the flawed step of a correct answer
    assert (out[1] == 0).all() and (out[2] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_capo_matches_loop(seed):
    inp = random_inputs(seed, fractions=True)
    for vote in ("majority", "intersection", "union", "average"):
        assert close(capo(inp, vote=vote), capo_loop(inp, vote=vote))
    assert close(capo(inp, penalty=2.0, penalty_correct=0.1, scale_by_std=False),
                 capo_loop(inp, penalty=2.0, penalty_correct=0.1, scale_by_std=False))


# -- TP-GRPO --------------------------------------------------------------------------------------


def test_tp_grpo_hand_computed():
    # group accuracy 3/4: correct thoughts +(1 - 0.75), wrong ones -0.75; GRPO A = 0.5 / -1.5
    inp = make([[1, 1, 1, 1], [1], [1], [2]], [[0.5, 0.2, -0.3, 0.4], [0.1], [0.1], [-0.9]],
               [1.0, 1.0, 1.0, 0.0], [0, 0, 0, 0])
    a_pos = 0.25 / (0.5 + 1e-6)
    a_neg = -0.75 / (0.5 + 1e-6)
    out = tp_grpo(inp)
    assert close(out[0, 1:5], [a_pos + 0.25, a_pos + 0.25, a_pos - 0.75, a_pos + 0.25])
    assert close(out[3, 1:3], [a_neg - 0.75] * 2)
    # accumulated (units: [0, 1] +, [2] -, [3] +): each token sees its thought and the later ones
    acc = tp_grpo(inp, accumulate=True)
    assert close(acc[0, 1:5], [a_pos - 0.25, a_pos - 0.25, a_pos - 0.5, a_pos + 0.25])


def test_tp_grpo_merges_equally_judged_steps_into_one_thought():
    # three correct steps form one thought: the accumulated reward counts it once, not three times
    inp = make([[1, 1, 1], [1, 1, 1]], [[0.2, 0.3, 0.9], [0.2, -0.3, 0.9]], [1.0, 0.0], [0, 0])
    acc = tp_grpo(inp, accumulate=True, scale_by_std=False)
    assert close(acc[0, 1:4], [0.5 + 0.5] * 3)  # A = 0.5, one thought worth +(1 - 0.5)
    assert close(acc[1, 1:4], [-0.5 + 0.5 - 0.5 + 0.5, -0.5 - 0.5 + 0.5, -0.5 + 0.5])


@pytest.mark.parametrize("seed", range(6))
def test_tp_grpo_matches_loop(seed):
    inp = random_inputs(seed)
    assert close(tp_grpo(inp), tp_grpo_loop(inp))
    assert close(tp_grpo(inp, accumulate=True, thought_reward=0.3, correct_above=0.2),
                 tp_grpo_loop(inp, accumulate=True, thought_reward=0.3, correct_above=0.2))


# -- GroundedPRM ----------------------------------------------------------------------------------


def test_grounded_prm_hand_computed():
    # v = (+1, -1, +1, +1), F = +1; official hybrid value of the rest after step k:
    # k=0: N=2, v1 * 2/4 + v2 * 1/4 + F/2 = 0.25;  k=1: N=1, v2 + F = 2;  k=2, k=3: N=0, F = 1
    inp = make([[1, 1, 1, 1]], [[0.5, -0.2, 0.3, 0.9]], [1.0], [0])  # a group of one: no baseline
    assert close(grounded_prm(inp)[0, 1:5], [0.5 + 0.125, -0.5 + 1.0, 1.0, 1.0])
    assert close(grounded_prm(inp, verify_weight=1.0)[0, 1:5], [1, -1, 1, 1])  # pure tool labels
    # a second row centres the group: baseline = mean of the rows' mean fused values
    two = make([[1, 1, 1, 1], [2]], [[0.5, -0.2, 0.3, 0.9], [0.4]], [1.0, 0.0], [0, 0])
    row1 = 0.5 * 1 + 0.5 * -1  # v = +1, F = -1, N = 0
    base = ((0.625 + 0.5 + 1 + 1) / 4 + row1) / 2
    out = grounded_prm(two)
    assert close(out[0, 1:5], [0.625 - base, 0.5 - base, 1 - base, 1 - base])
    assert close(out[1, 1:3], [row1 - base] * 2)
    with pytest.raises(ValueError, match="verify_weight"):
        grounded_prm(inp, verify_weight=1.5)


def test_grounded_prm_degenerate_cases():
    inp = make([[], [2], [1, 1]], [[], [NAN], [0.0, 0.0]], [1.0, 1.0, 1.0], [0, 1, 1])
    out = grounded_prm(inp)
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    # NaN and 0 scores are not verified (-1); every row correct (F = +1): fused = 0.5 * -1 + 0.5 * 1 = 0
    assert (out[1] == 0).all() and (out[2] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_grounded_prm_matches_loop(seed):
    inp = random_inputs(seed)
    assert close(grounded_prm(inp), grounded_prm_loop(inp))
    assert close(grounded_prm(inp, verify_weight=0.2), grounded_prm_loop(inp, verify_weight=0.2))


@pytest.mark.parametrize("name", ["pure", "pure_sum", "capo", "tp_grpo", "grounded_prm"])
def test_no_steps_at_all_and_all_empty(name):
    fn = CREDIT.get(name)
    empty = make([[], []], [[], []], [1.0, 0.0], [0, 0])
    out = fn(empty)
    assert out.shape == empty.loss_mask.shape and (out == 0).all()
    single = make([[3]], [[0.7]], [1.0], [0])  # a group of one
    assert torch.isfinite(fn(single)).all()
