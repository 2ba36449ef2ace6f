"""MA-RLHF, POAD / BAD and BRPO: hand values, loop == vectorized over random layouts, degenerate
cases and each paper's key property."""

import random

import pytest
import torch

from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.gae import gae
from credo.credit.macro import brpo, brpo_loop, ma_rlhf, ma_rlhf_advantages_returns, ma_rlhf_loop
from credo.credit.macro import macro_action_spans, poad, poad_advantages_returns, poad_loop


def random_inputs(seed: int) -> CreditInputs:
    """Random groups (sizes 1-4, interleaved), prompts, holes, padding, empty responses; values,
    logprobs, steps (with a few loss tokens left without a step), step rewards with NaN tails, and
    budget scores / cut positions."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    group_ids = [10 * g + 7 for g in range(rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
    rng.shuffle(group_ids)
    B, T = len(group_ids), rng.randint(1, 12)
    mask = torch.zeros(B, T, dtype=torch.bool)
    step_ids = torch.full((B, T), -1, dtype=torch.long)
    for b in range(B):
        prompt = rng.randint(0, min(2, T))
        length = rng.choice([0, T - prompt, rng.randint(0, T - prompt)])
        mask[b, prompt:prompt + length] = True
        if length > 2 and rng.random() < 0.3:
            mask[b, prompt + rng.randint(1, length - 2)] = False
        k = 0
        for i, t in enumerate(mask[b].nonzero().flatten().tolist()):
            k += int(i > 0 and rng.random() < 0.4)
            step_ids[b, t] = k
        if rng.random() < 0.1:
            step_ids[b] = -1  # a row without steps
    K = int(step_ids.max()) + 1 if B else 0
    step_rewards = torch.rand(B, max(K, 1), generator=gen)
    for b in range(B):
        step_rewards[b, int(step_ids[b].max()) + 1:] = float("nan")
    S = rng.randint(1, 4)
    positions = torch.sort(torch.randint(0, T + 1, (B, S), generator=gen), dim=1).values
    logprobs = torch.log(torch.rand(B, T, generator=gen).clamp(min=0.05))
    return CreditInputs(
        rewards=torch.tensor([rng.choice([0.0, 1.0, 0.5, -0.4]) for _ in range(B)]),
        group_ids=torch.tensor(group_ids),
        loss_mask=mask,
        tokens=torch.randint(0, 5, (B, T), generator=gen),
        logprobs=torch.where(mask, logprobs, torch.zeros_like(logprobs)),
        ref_logprobs=logprobs + 0.5 * torch.randn(B, T, generator=gen),
        values=torch.randn(B, T, generator=gen),
        step_ids=step_ids,
        step_rewards=step_rewards,
        extras={"budget_scores": torch.rand(B, S, generator=gen).round(decimals=1), "budget_positions": positions},
    )


def one_row(values, *, reward=1.0, prompt=1, **kw):
    T = prompt + len(values)
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, prompt:] = True
    v = torch.zeros(1, T)
    v[0, prompt:] = torch.tensor(values)
    return CreditInputs(rewards=torch.tensor([reward]), group_ids=torch.tensor([0]), loss_mask=mask, values=v, **kw)


def test_registered_token_level_with_needs():
    assert credit_needs_of(CREDIT.get("ma_rlhf")) == frozenset({"values", "logprobs", "ref_logprobs"})
    assert credit_needs_of(CREDIT.get("poad")) == frozenset({"values", "steps"})
    assert credit_needs_of(CREDIT.get("brpo")) == frozenset({"extras"})
    for name in ("ma_rlhf", "poad", "brpo"):
        assert is_token_level(CREDIT.get(name))


# -- MA-RLHF ---------------------------------------------------------------------------------------


def test_macro_action_spans_rules():
    # fixed: counting stops before the last token, which is always its own span; empty spans dropped
    assert macro_action_spans(6, ngram=2) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert macro_action_spans(5, ngram=2) == [(0, 2), (2, 4), (4, 5)]
    assert macro_action_spans(1, ngram=5) == [(0, 1)] and macro_action_spans(0) == []
    assert macro_action_spans(4, ngram=1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # ppl: a span starts at i where the reference perplexity rises at i + 1 (logprob falls)
    ref = [-1.0, -2.0, -1.5, -3.0, -0.5]  # falls after 0 and after 2
    assert macro_action_spans(5, termination="ppl", ref_logprobs=ref) == [(0, 2), (2, 4), (4, 5)]
    # randomized: lengths are a shuffled {1,2,3,5,10}; after the multiset the rest is one span
    spans = macro_action_spans(40, termination="randomized", repeat_times=1, rng=random.Random(3))
    order = [1, 2, 3, 5, 10]
    random.Random(3).shuffle(order)
    assert [e - s for s, e in spans] == order + [39 - 21, 1]
    short = macro_action_spans(8, termination="randomized", repeat_times=2, rng=random.Random(1))
    assert short[0][0] == 0 and short[-1] == (7, 8) and all(e > s for s, e in short)
    with pytest.raises(ValueError, match="parsing"):
        macro_action_spans(3, termination="parsing")


def test_ma_rlhf_hand_computed():
    # L = 5, ngram 2 -> spans {0,1}, {2,3}, {4}; V = .2 .4 | .6 .2 | .5; R = 1; gamma 1, lam 0.5
    values = [0.2, 0.4, 0.6, 0.2, 0.5]
    inputs = one_row(values)
    # equal: V_span = .3, .4, .5; r_span = 0, 0, 1
    # A2 = 1 - .5 = .5;  A1 = .5 - .4 + .5 * .5 = .35;  A0 = .4 - .3 + .5 * .35 = .275
    adv = ma_rlhf(inputs, ngram=2, lam=0.5, kl_coef=0.0)
    assert adv.tolist()[0] == pytest.approx([0, 0.275, 0.275, 0.35, 0.35, 0.5], abs=1e-6)
    # with a KL reward: kl_coef 0.1, logp - ref = 1, -1, 2, 0, 0.5 -> r_span = 0, -0.1, 0.95
    # A2 = .95 - .5 = .45;  A1 = -.1 + .5 - .4 + .5 * .45 = .225;  A0 = .1 + .5 * .225 = .2125
    logp = torch.tensor([[0.0, -1.0, -2.0, -1.0, -2.0, -1.0]])
    ref = torch.tensor([[0.0, -2.0, -1.0, -3.0, -2.0, -1.5]])
    kl_inputs = one_row(values, logprobs=logp, ref_logprobs=ref)
    assert ma_rlhf(kl_inputs, ngram=2, lam=0.5, kl_coef=0.1).tolist()[0] == pytest.approx(
        [0, 0.2125, 0.2125, 0.225, 0.225, 0.45], abs=1e-6)
    # unit aggregation (last token of each span), gamma = lam = 1: A_k = R - V_k(last) = .6, .8, .5
    assert ma_rlhf(inputs, ngram=2, lam=1.0, kl_coef=0.0, value_function="unit").tolist()[0] == pytest.approx(
        [0, 0.6, 0.6, 0.8, 0.8, 0.5], abs=1e-6)
    # position aggregation: sigma = (2/3, 1/3) on two-token spans: V_span = 4/15, 7/15, .5
    adv = ma_rlhf(inputs, ngram=2, lam=1.0, kl_coef=0.0, value_function="position")
    assert adv.tolist()[0] == pytest.approx([0, 1 - 4 / 15, 1 - 4 / 15, 1 - 7 / 15, 1 - 7 / 15, 0.5], abs=1e-6)
    _, returns = ma_rlhf_advantages_returns(inputs, ngram=2, lam=0.5, kl_coef=0.0)
    assert returns.tolist()[0] == pytest.approx([0, 0.575, 0.575, 0.75, 0.75, 1.0], abs=1e-6)  # A + V_span


def test_ma_rlhf_key_property_ngram_one_is_token_level_ppo():
    for seed in range(20):
        inputs = random_inputs(seed)
        for kl_coef in (0.0, 0.05):
            a = ma_rlhf(inputs, ngram=1, kl_coef=kl_coef, gamma=0.97, lam=0.9)
            b = gae(inputs, gamma=0.97, lam=0.9, kl_coef=kl_coef, whiten=False)
            assert torch.allclose(a, b, atol=1e-5), (seed, kl_coef)


def test_ma_rlhf_reward_clip_and_degenerate():
    assert ma_rlhf(one_row([0.0], reward=5.0), kl_coef=0.0).tolist()[0] == pytest.approx([0.0, 2.5])
    assert ma_rlhf(one_row([0.0], reward=5.0), kl_coef=0.0, clip_reward=None).tolist()[0] == pytest.approx([0.0, 5.0])
    empty = CreditInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                         loss_mask=torch.zeros(1, 3, dtype=torch.bool), values=torch.ones(1, 3),
                         logprobs=torch.zeros(1, 3), ref_logprobs=torch.zeros(1, 3))
    assert (ma_rlhf(empty) == 0).all()
    # zero values, gamma = 1: A = the span rewards ahead discounted by lam per span: R lam^(spans after)
    adv = ma_rlhf(one_row([0.0] * 5), ngram=2, kl_coef=0.0, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0, 0.25, 0.25, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="ref_logprobs"):
        ma_rlhf(one_row([0.1, 0.2]))  # the default KL reward needs the reference
    with pytest.raises(ValueError, match="ref_logprobs"):
        ma_rlhf(one_row([0.1, 0.2]), kl_coef=0.0, termination="ppl")
    with pytest.raises(ValueError, match="value_function"):
        ma_rlhf(one_row([0.1]), kl_coef=0.0, value_function="mean")


def test_ma_rlhf_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed)
        for kw in (dict(), dict(ngram=2, value_function="position"), dict(termination="ppl", value_function="unit"),
                   dict(termination="randomized", repeat_times=1, seed=seed), dict(kl_coef=0.0, gamma=0.9)):
            a, b = ma_rlhf(inputs, **kw), ma_rlhf_loop(inputs, **kw)
            assert torch.allclose(a, b, atol=1e-5), (seed, kw)
            assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()


# -- POAD ------------------------------------------------------------------------------------------


def two_actions(values=(0.1, 0.3, 0.5, 0.2), **kw):
    return one_row(list(values), step_ids=torch.tensor([[-1, 0, 0, 1, 1]]), **kw)


def test_poad_hand_computed():
    # actions {0,1}, {2,3}; V = .1 .3 .5 .2; R = 1; gamma 0.9, lam 0.8
    # t3 (end, terminal): 1 - .2 = .8;  t2 (inside): (.2 - .5) + .8 * .8 = .34
    # t1 (end): .9 * .5 - .3 + .9 * .8 * .34 = .3948;  t0 (inside): (.3 - .1) + .8 * .3948 = .51584
    adv = poad(two_actions(), gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0, 0.51584, 0.3948, 0.34, 0.8], abs=1e-6)
    # NTPO: gamma inside the actions too
    # t2: .9 * .2 - .5 + .72 * .8 = .256;  t1: .15 + .72 * .256 = .33432;  t0: .17 + .72 * .33432
    ntpo = poad(two_actions(), gamma=0.9, lam=0.8, ntpo=True)
    assert ntpo.tolist()[0] == pytest.approx([0, 0.17 + 0.72 * 0.33432, 0.33432, 0.256, 0.8], abs=1e-6)
    _, returns = poad_advantages_returns(two_actions(), gamma=0.9, lam=0.8)
    assert returns.tolist()[0] == pytest.approx([0, 0.61584, 0.6948, 0.84, 1.0], abs=1e-6)


def test_poad_step_rewards():
    # per-action rewards .5 and 1, V = 0, gamma = lam = 1: t3 = 1, t2 = 1, t1 = .5 + 1 = 1.5, t0 = 1.5
    inputs = two_actions((0.0, 0.0, 0.0, 0.0), step_rewards=torch.tensor([[0.5, 1.0]]))
    assert poad(inputs, gamma=1.0, lam=1.0, reward="step").tolist()[0] == pytest.approx([0, 1.5, 1.5, 1.0, 1.0])
    nan_tail = two_actions((0.0,) * 4, step_rewards=torch.tensor([[0.5, float("nan")]]))
    assert poad(nan_tail, gamma=1.0, lam=1.0, reward="step").tolist()[0] == pytest.approx([0, 0.5, 0.5, 0, 0])
    with pytest.raises(ValueError, match="step_rewards"):
        poad(two_actions(), reward="step")


def test_poad_key_property_one_token_actions_equal_token_level_gae():
    for seed in range(20):
        inputs = random_inputs(seed)
        per_token = torch.where(inputs.loss_mask, torch.cumsum(inputs.loss_mask.long(), 1), -1)
        inputs.step_ids = per_token
        a = poad(inputs, gamma=0.9, lam=0.8)
        assert torch.allclose(a, gae(inputs, gamma=0.9, lam=0.8, whiten=False), atol=1e-5), seed


def test_poad_ntpo_is_token_level_gae_whatever_the_actions():
    for seed in range(20):
        inputs = random_inputs(seed)
        has_step = inputs.loss_mask & (inputs.step_ids >= 0)
        inputs.loss_mask = has_step  # GAE over the same tokens POAD backs up over
        a = poad(inputs, gamma=0.9, lam=0.8, ntpo=True)
        assert torch.allclose(a, gae(inputs, gamma=0.9, lam=0.8, whiten=False), atol=1e-5), seed


def test_poad_degenerate():
    no_steps = one_row([0.3, 0.4], step_ids=torch.tensor([[-1, -1, -1]]))
    assert (poad(no_steps) == 0).all()
    one_action = one_row([0.3, 0.4, 0.2], step_ids=torch.tensor([[-1, 0, 0, 0]]))
    # a single action: undiscounted lam-return inside; gamma only at the (terminal) end
    # t2 = 1 - .2 = .8;  t1 = (.2 - .4) + .95 * .8 = .56;  t0 = (.4 - .3) + .95 * .56 = .632
    assert poad(one_action).tolist()[0] == pytest.approx([0, 0.632, 0.56, 0.8], abs=1e-6)
    zero_v = two_actions((0.0,) * 4)
    assert poad(zero_v, gamma=0.5, lam=1.0).tolist()[0] == pytest.approx([0, 0.5, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="step_ids"):
        poad(one_row([0.1]))


def test_poad_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed)
        for kw in (dict(), dict(ntpo=True), dict(reward="step", gamma=0.8, lam=1.0)):
            a, b = poad(inputs, **kw), poad_loop(inputs, **kw)
            assert torch.allclose(a, b, atol=1e-5), (seed, kw)
            assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()


# -- BRPO ------------------------------------------------------------------------------------------


def brpo_pair(**kw):
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 1:8] = True
    extras = {"budget_scores": torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
              "budget_positions": torch.tensor([[3, 6], [2, 5]])}
    return CreditInputs(rewards=torch.zeros(2), group_ids=torch.tensor([4, 4]), loss_mask=mask, extras=extras, **kw)


def test_brpo_hand_computed():
    # uniform p = (.5, .5): R_0 = (.5, .5), R_1 = (1, .5);  V2 = (.75, .5)
    # V1 at s = 1: own score at budget 0 times p_1: row 0 -> 0, row 1 -> .5
    # baseline s = 0: (0 + 2 * .75) / 2 = .75;  s = 1: (V1 + .5) / 2 = .25 (row 0), .5 (row 1)
    # A: row 0 (-.25, .25), row 1 (.25, 0); tokens [0, 3) | [3, 6) (row 0), [0, 2) | [2, 5) (row 1)
    adv = brpo(brpo_pair(), budget_probs="uniform")
    assert adv.tolist()[0] == pytest.approx([0, -0.25, -0.25, 0.25, 0.25, 0.25, 0, 0])
    assert adv.tolist()[1] == pytest.approx([0, 0.25, 0, 0, 0, 0, 0, 0])
    # variants: "none" -> A = R; "v2only" -> R - V2; "v1only" -> R - V1
    assert brpo(brpo_pair(), budget_probs="uniform", variance_reduction="none")[1, 1:6].tolist() == pytest.approx(
        [1.0, 0.5, 0.5, 0.5, 0])
    assert brpo(brpo_pair(), budget_probs=[1, 1], variance_reduction="v2only")[0, 1:6].tolist() == pytest.approx(
        [-0.25, -0.25, 0, 0, 0])
    assert brpo(brpo_pair(), budget_probs="uniform", variance_reduction="v1only")[1, 1:6].tolist() == pytest.approx(
        [1.0, 0.0, 0.0, 0.0, 0])
    # "base": all mass on the last budget: R = r_last = 1 for both rows, V2 = 1, V1(row 0) = 0, V1(row 1) = 1
    base = brpo(brpo_pair())
    assert base[0, 1:6].tolist() == pytest.approx([0, 0, 0.5, 0.5, 0.5])  # s = 1: 1 - (0 + 1) / 2
    assert (base[1] == 0).all()


def test_brpo_discount_weights_earlier_budgets():
    # three budgets, own scores (1, 0, x): V1 at s = 2 = (1 * 1 + 2 * 0) / 3 times p_2 (= 1 under "base")
    mask = torch.ones(1, 6, dtype=torch.bool)
    inputs = CreditInputs(rewards=torch.zeros(1), group_ids=torch.tensor([0]), loss_mask=mask,
                          extras={"budget_scores": torch.tensor([[1.0, 0.0, 1.0]]),
                                  "budget_positions": torch.tensor([[2, 4, 6]])})
    adv = brpo(inputs, variance_reduction="v1only")
    assert adv.tolist()[0] == pytest.approx([1.0, 1.0, 0.0, 0.0, 1 - 1 / 3, 1 - 1 / 3])


def test_brpo_key_property_single_budget_is_group_mean_centred():
    # S = 1: A = r - mean_group(r) (V1 = 0 at s = 0; a group of one: V2 = 0, A = r)
    for seed in range(15):
        inputs = random_inputs(seed)
        B, T = inputs.loss_mask.shape
        scores = inputs.extras["budget_scores"][:, :1]
        inputs.extras = {"budget_scores": scores, "budget_positions": torch.full((B, 1), T)}
        adv = brpo(inputs)
        groups = inputs.group_ids.tolist()
        for b in range(B):
            members = [float(scores[i, 0]) for i in range(B) if groups[i] == groups[b]]
            expected = float(scores[b, 0]) - (sum(members) / len(members) if len(members) > 1 else 0.0)
            m = inputs.loss_mask[b]
            assert adv[b][m].tolist() == pytest.approx([expected] * int(m.sum()), abs=1e-6)
            assert (adv[b][~m] == 0).all()


def test_brpo_degenerate_and_invalid():
    equal = brpo_pair()
    equal.extras["budget_scores"] = torch.full((2, 2), 0.5)
    assert (brpo(equal, budget_probs="uniform") == 0).all()  # nothing to prefer anywhere
    alone = CreditInputs(rewards=torch.zeros(1), group_ids=torch.tensor([0]), loss_mask=torch.ones(1, 4, dtype=torch.bool),
                         extras={"budget_scores": torch.tensor([[0.0, 1.0]]), "budget_positions": torch.tensor([[2, 4]])})
    # group of one: V2 = 0; R = (.5, .5); V1 = (0, 0 * .5): A = R on both budget intervals
    assert brpo(alone, budget_probs="uniform").tolist()[0] == pytest.approx([0.5] * 4)
    empty = brpo_pair()
    empty.loss_mask = torch.zeros(2, 8, dtype=torch.bool)
    assert (brpo(empty) == 0).all()
    for scores, positions, msg in [
        (torch.tensor([[0.0, float("nan")]] * 2), torch.tensor([[1, 2]] * 2), "non-finite"),
        (torch.zeros(2, 2), torch.tensor([[3, 2]] * 2), "non-decreasing"),
        (torch.zeros(2, 2), torch.tensor([[1, 9]] * 2), "non-decreasing"),
        (torch.zeros(2, 3), torch.tensor([[1, 2]] * 2), "both be"),
    ]:
        bad = brpo_pair()
        bad.extras = {"budget_scores": scores, "budget_positions": positions}
        with pytest.raises(ValueError, match=msg):
            brpo(bad)
    with pytest.raises(ValueError, match="budget_probs"):
        brpo(brpo_pair(), budget_probs=[1.0])
    with pytest.raises(ValueError, match="budget_probs"):
        brpo(brpo_pair(), budget_probs="linear")
    with pytest.raises(ValueError, match="variance_reduction"):
        brpo(brpo_pair(), variance_reduction="max")
    with pytest.raises(ValueError, match="budget_scores"):
        brpo(CreditInputs(rewards=torch.zeros(1), group_ids=torch.tensor([0]),
                         loss_mask=torch.ones(1, 2, dtype=torch.bool)))


def test_brpo_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed)
        S = inputs.extras["budget_scores"].shape[1]
        for kw in (dict(), dict(budget_probs="uniform"), dict(budget_probs=[float(s + 1) for s in range(S)]),
                   dict(budget_probs="uniform", variance_reduction="v1only"),
                   dict(budget_probs="uniform", variance_reduction="v2only"), dict(variance_reduction="none")):
            a, b = brpo(inputs, **kw), brpo_loop(inputs, **kw)
            assert torch.allclose(a, b, atol=1e-5), (seed, kw)
            assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()


def test_ma_rlhf_critic_regresses_on_its_span_returns_in_the_trainer():
    """critic.critic_returns (the trainer's critic targets) = ma_rlhf_advantages_returns(...)[1], on the
    same KL-penalised, clipped rewards as the advantages (not the outcome-only token GAE return)."""
    import functools

    from credo.batch import RolloutBatch
    from credo.critic import critic_returns
    from credo.credit.gae import gae_returns, outcome_token_rewards

    raw = random_inputs(4)
    pad = lambda x: torch.nn.functional.pad(x, (1, 0))  # noqa: E731  (position 0 holds no logprob)
    inputs = CreditInputs(rewards=raw.rewards, group_ids=raw.group_ids, loss_mask=pad(raw.loss_mask),
                          tokens=pad(raw.tokens), logprobs=pad(raw.logprobs), ref_logprobs=pad(raw.ref_logprobs),
                          values=pad(raw.values))
    B, T = inputs.loss_mask.shape
    batch = RolloutBatch(tokens=inputs.tokens, attention_mask=torch.ones(B, T, dtype=torch.bool),
                         loss_mask=inputs.loss_mask, sampler_logprobs=inputs.logprobs, advantages=torch.zeros(B, T),
                         rewards=inputs.rewards, group_ids=inputs.group_ids, ref_logprobs=inputs.ref_logprobs,
                         values=inputs.values)
    bound = functools.partial(ma_rlhf, ngram=2, lam=0.9)
    want = ma_rlhf_advantages_returns(inputs, ngram=2, lam=0.9)[1]
    got = critic_returns(batch, bound)
    assert torch.allclose(got.double(), want, atol=1e-5)
    m = inputs.loss_mask
    outcome_only = gae_returns(outcome_token_rewards(inputs.rewards, m), inputs.values, m, 1.0, 0.9)[1]
    assert not torch.allclose(got.double()[m], outcome_only[m])
