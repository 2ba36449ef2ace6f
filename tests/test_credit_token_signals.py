"""Token-signal credit estimators (credo.credit.token_signals): hand-computed values, the papers' key
properties, degenerate inputs, loop == vectorized over random layouts."""

import math

import numpy as np
import pytest
import torch

from credo.credit import CREDIT, CreditInputs
from credo.credit.base import credit_needs_of
from credo.credit import token_signals as ts
from credo.objectives.entropy_aware import gtpo_conflict_deltas

A_PAIR = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of a {1, 0} pair
NAMES = ["hicra", "hicra_gram", "gtpo_credit", "aem", "delta", "attention_anchor", "t_reg", "d3s_token",
         "forking_tokens"]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def close(x, ref, tol=1e-5):
    return torch.allclose(x.float(), torch.as_tensor(ref, dtype=torch.float32), atol=tol, rtol=tol)


def inputs(mask_rows, rewards, groups, **fields):
    """mask_rows: per row a list of 0/1 for positions 0..T-1."""
    return CreditInputs(rewards=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(groups),
                        loss_mask=torch.tensor(mask_rows, dtype=torch.bool), **fields)


def random_inputs(seed):
    """Random group sizes / ids / order, prompt prefixes, response lengths (empty ones included), a
    masked hole inside some responses, and every signal the estimators read."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=rng.integers(1, 4))
    groups = np.repeat(rng.choice(50, size=len(sizes), replace=False), sizes)
    B = int(sizes.sum())
    groups = groups[rng.permutation(B)]
    prompt = int(rng.integers(1, 3))
    lengths = rng.integers(0, 8, size=B)
    lengths[rng.random(B) < 0.15] = 0
    T = prompt + int(lengths.max()) + int(rng.integers(0, 3))
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, prompt:prompt + lengths[b]] = True
        if lengths[b] > 3 and rng.random() < 0.3:  # a tool-output hole inside the response
            mask[b, prompt + 1] = False
    H = 3
    att = torch.tensor(rng.random((B, T, T))).tril() + 1e-3 * torch.eye(T)
    return CreditInputs(
        rewards=torch.tensor(rng.integers(0, 2, size=B), dtype=torch.float32), group_ids=torch.tensor(groups),
        loss_mask=mask, tokens=torch.tensor(rng.integers(0, 3, (B, T))),
        logprobs=torch.where(mask, -torch.tensor(rng.exponential(1.0, (B, T)), dtype=torch.float32), 0.0),
        entropy=torch.tensor(rng.uniform(0, 1.2, (B, T)), dtype=torch.float32),
        hidden_states=torch.tensor(rng.normal(size=(B, T, H)), dtype=torch.float32),
        attention=(att / att.sum(-1, keepdim=True)).float(),
        extras={"planning_mask": torch.tensor(rng.random((B, T)) < 0.3),
                "contrastive_logprobs_pos": torch.tensor(rng.normal(size=(B, T)), dtype=torch.float32),
                "contrastive_logprobs_neg": torch.tensor(rng.normal(size=(B, T)), dtype=torch.float32)})


def test_registered_with_exact_needs():
    expected = {"hicra": {"entropy"}, "hicra_gram": {"extras"}, "gtpo_credit": {"entropy"}, "aem": {"logprobs"},
                "delta": {"hidden_states"}, "attention_anchor": {"attention"}, "t_reg": {"extras"},
                "d3s_token": {"entropy"}, "forking_tokens": {"entropy"}}
    for name, needs in expected.items():
        assert credit_needs_of(CREDIT.get(name)) == needs
    bare = inputs([[0, 1]], [1.0], [0])
    for name, missing in [("hicra", "entropy"), ("aem", "logprobs"), ("delta", "hidden_states"),
                          ("attention_anchor", "attention"), ("t_reg", "extras.contrastive_logprobs_pos"),
                          ("hicra_gram", "extras.planning_mask"), ("gtpo_credit", "tokens")]:
        with pytest.raises(ValueError, match=f"{name} needs .*{missing}"):
            CREDIT.get(name)(bare)


# -- HICRA ----------------------------------------------------------------------------------------


def test_hicra_hand_computed_and_reduced_blame():
    ent = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.3], [0.0, 0.8, 0.2, 0.7, 0.1]])
    inp = inputs([[0, 1, 1, 1, 1]] * 2, [1.0, 0.0], [0, 0], entropy=ent)
    out = ts.hicra(inp, top_q=0.5)  # ceil(0.5 * 4) = 2 planning tokens per row
    a = A_PAIR
    assert close(out[0], [0, a, a * 1.2, a * 1.2, a])
    # A < 0: the additive form cuts the blame on planning tokens to (1 - alpha) |A|
    assert close(out[1], [0, -a * 0.8, -a, -a * 0.8, -a])
    assert (out[1, 1:].abs() <= a + 1e-6).all() and out[1, 1].abs() < out[1, 2].abs()


def test_hicra_verl_variant_and_gram_mask():
    ent = torch.tensor([[0.0, 0.9, 0.1, 0.1], [0.0, 0.9, 0.1, 0.0], [0.0, 0.9, 0.0, 0.0]])
    # group: rows 0 (correct, 3 tokens), 1 (correct, 2 tokens), 2 (wrong, 1 token); mean length 2
    inp = inputs([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0]], [1.0, 1.0, 0.0], [0, 0, 0], entropy=ent)
    a_pos, a_neg = 1 / 3 / (math.sqrt(1 / 3) + 1e-6), -2 / 3 / (math.sqrt(1 / 3) + 1e-6)
    out = ts.hicra(inp, top_q=0.3, verl_variant=True)  # one planning token per row
    assert close(out[0], [0, a_pos * 1.2, a_pos, a_pos])  # correct and longer than average: amplified
    assert close(out[1], [0, a_pos, a_pos, 0])  # correct but not longer than average
    assert close(out[2], [0, a_neg, 0, 0])  # wrong responses are never touched
    plan = torch.tensor([[False, False, True, True], [True, True, False, False], [False, True, False, False]])
    inp.extras = {"planning_mask": plan}
    gram = ts.hicra_gram(inp)
    assert close(gram[0], [0, a_pos, a_pos * 1.2, a_pos * 1.2])
    assert close(gram[1], [0, a_pos * 1.2, a_pos, 0])  # the flag on position 0 is off the mask: ignored
    assert close(gram[2], [0, a_neg * 0.8, 0, 0])
    inp.extras = {"planning_mask": plan[:, :2]}
    with pytest.raises(ValueError, match="planning_mask"):
        ts.hicra_gram(inp)


# -- GTPO -----------------------------------------------------------------------------------------


def test_gtpo_credit_hand_computed():
    # positive row 5 6 7 8, negative row 5 6 9 8: forward run {5, 6}, backward run {8}
    tokens = torch.tensor([[1, 5, 6, 7, 8], [1, 5, 6, 9, 8]])
    ent = torch.full((2, 5), 0.2)
    inp = inputs([[0, 1, 1, 1, 1]] * 2, [1.0, 0.0], [0, 0], tokens=tokens, entropy=ent)
    a = A_PAIR
    plain = ts.gtpo_credit(inp, use_entropy=False)
    assert close(plain[0], [0, 2 * a / 3, 2 * a / 3, a / 3, 2 * a / 3])  # x w_raw on conflicts, / n_conf = 3
    assert close(plain[1], [0, 0, 0, -a / 3, 0])  # conflict tokens of the negative row: not pushed down
    shaped = ts.gtpo_credit(inp)  # A - 0.1 * mean entropy (0.2 <= 0.7)
    assert close(shaped[0, 3], (a - 0.02) / 3) and close(shaped[1, 3], (-a - 0.02) / 3)
    hot = ts.gtpo_credit(inputs([[0, 1, 1, 1, 1]] * 2, [1.0, 0.0], [0, 0], tokens=tokens,
                                entropy=torch.full((2, 5), 0.9)))
    assert (hot == 0).all()  # completions above the entropy threshold are dropped


def test_gtpo_credit_never_pushes_a_conflict_token_down():
    # a small positive advantage that the entropy shift turns negative (Dr.GRPO scale)
    tokens = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 9]])
    inp = inputs([[0, 1, 1, 1]] * 2, [0.05, 0.0], [0, 0], tokens=tokens, entropy=torch.full((2, 4), 0.5))
    guarded = ts.gtpo_credit(inp, scale_by_std=False)
    unguarded = ts.gtpo_credit(inp, scale_by_std=False, protect_conflicts=False)
    assert (unguarded[0, 1:3] < 0).all()  # why the guard exists
    assert (guarded[0, 1:3] == 0).all() and guarded[0, 3] == pytest.approx((0.025 - 0.05) / 2)
    seen = 0
    for seed in range(10):
        inp = random_inputs(seed)
        a = torch.tensor(ts._adv_loop(inp, True), dtype=torch.float64)
        _, conflict, _ = gtpo_conflict_deltas(inp.tokens, inp.loss_mask, inp.group_ids, a)
        seen += int(conflict.sum())
        for kw in ({}, {"ent_threshold": 2.0, "ent_scale": 1.0}, {"use_entropy": False}):
            out = ts.gtpo_credit(inp, **kw)
            assert (out[conflict] >= 0).all()
    assert seen > 20  # the random layouts do contain conflict tokens


# -- AEM ------------------------------------------------------------------------------------------


def test_aem_hand_computed():
    lp = torch.tensor([[0.0, -0.2, -0.2], [0.0, -0.6, -0.6]])
    inp = inputs([[0, 1, 1]] * 2, [1.0, 0.0], [0, 0], logprobs=lp)
    # surprisal 0.2 and 0.6, group mean 0.4: g = 0.5 and 1.5
    assert close(ts.aem(inp), [[0, A_PAIR * 0.5, A_PAIR * 0.5], [0, -A_PAIR * 1.5, -A_PAIR * 1.5]])
    assert close(ts.aem(inp, max_scale=1.2)[:, 1], [A_PAIR / 1.2, -A_PAIR * 1.2])
    diff = ts.aem(inp, relative="difference")
    assert close(diff[:, 1], [A_PAIR * math.exp(-0.2), -A_PAIR * math.exp(0.2)])
    with pytest.raises(ValueError, match="max_scale"):
        ts.aem(inp, max_scale=0.5)


@pytest.mark.parametrize("seed", range(8))
def test_aem_keeps_the_sign_of_the_advantage(seed):
    inp = random_inputs(seed)
    base = ts.hicra(inp, alpha=0.0)  # plain GRPO broadcast
    for kw in ({}, {"strength": 3.0, "max_scale": 10.0}, {"relative": "difference"}):
        out = ts.aem(inp, **kw)
        assert torch.equal(torch.sign(out), torch.sign(base))


# -- DelTA ----------------------------------------------------------------------------------------


def test_delta_hand_computed_downweights_shared_directions():
    h = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]]])
    inp = inputs([[0, 1, 1]] * 2, [1.0, 0.0], [0, 0], hidden_states=h)
    # mu+ = (0.5, 0.5), mu- = (0.5, -0.5): token (1, 0) is equally close to both (shared): c = 1;
    # (0, 1) and (0, -1) align with their own side only: c = 2 sigmoid(sqrt(2) / 0.1)
    c_spec = 2 * sigmoid(math.sqrt(2) / 0.1)
    scale = 4 / (2 + 2 * c_spec)
    out = ts.delta(inp)
    assert close(out, [[0, A_PAIR * scale, A_PAIR * c_spec * scale], [0, -A_PAIR * scale, -A_PAIR * c_spec * scale]])
    assert out[0, 1].abs() < out[0, 2].abs() and out[1, 1].abs() < out[1, 2].abs()
    # the self-normalised surrogate: token_mean(A') keeps the GRPO scale sum c A / sum c
    assert out[inp.loss_mask].abs().sum().item() == pytest.approx(4 * A_PAIR, rel=1e-5)


def test_delta_without_both_sides_is_grpo():
    h = torch.randn(3, 3, 2)
    inp = inputs([[0, 1, 1], [0, 1, 0], [0, 1, 1]], [1.0, 1.0, 0.0], [0, 0, 1], hidden_states=h)
    # group 0 is all correct (A = 0), group 1 is a single wrong row (A = R = 0): everything 0
    assert (ts.delta(inp) == 0).all()
    single = inputs([[0, 1, 1]], [1.0], [0], hidden_states=torch.randn(1, 3, 2))
    assert close(ts.delta(single), [[0, 1, 1]])  # group of one: A = R = 1, c = 1


# -- attention preplan / anchor -------------------------------------------------------------------


def test_attention_metrics_hand_computed():
    att = torch.tensor([[[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.8, 0.1, 0], [0.7, 0.1, 0.1, 0.1]]])
    waad, fai = ts.attention_metrics(att, torch.tensor([[False, True, True, True]]), window=2)
    assert close(waad[0], [0.0, 0.5, 0.1 * 2 + 0.8, 0.7 * 2 + 0.1 * 2 + 0.1])
    assert close(fai[0, 1:], [(0.8 + 0.1) / 2, 0.1, 0.0])  # only later response tokens count


@pytest.mark.parametrize("target, chosen", [("anchor", {2}), ("preplan", {1}), ("both", {1, 2}), ("coupled", {1, 2})])
def test_attention_anchor_targets(target, chosen):
    # WAAD (W=2): 1, 0.2, 0.6 -> preplan = position 1;  FAI: 0.1, 0.6, 0 -> anchor = position 2
    att = torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0.2, 0.8, 0], [0, 0, 0.6, 0.4]]])
    inp = inputs([[0, 1, 1, 1]], [1.0], [0], attention=att)  # a group of one: A = R = 1
    out = ts.attention_anchor(inp, window=2, top_q=1 / 3, gamma=0.5, target=target)
    assert close(out[0], [0.0] + [1.5 if t in chosen else 1.0 for t in (1, 2, 3)])


def test_attention_anchor_coupling_needs_a_preplan_before_the_anchor():
    att = torch.tensor([[[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.8, 0.1, 0], [0.7, 0.1, 0.1, 0.1]]])
    inp = inputs([[0, 1, 1, 1]], [2.0], [0], attention=att)  # a group of one: A = R = 2
    # anchor = 1 (FAI 0.45), preplan = 3 (WAAD 1.7) comes after it: nothing is coupled
    assert close(ts.attention_anchor(inp, window=2, top_q=1 / 3, gamma=0.5), [[0, 3.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match="target"):
        ts.attention_anchor(inp, target="everything")


# -- T-REG ----------------------------------------------------------------------------------------


def test_t_reg_hand_computed():
    pos = torch.tensor([[0.0, -1.0, 0.5], [0.0, -1.0, 0.5]])
    neg = torch.tensor([[0.0, -1.0, -1.5], [0.0, -1.0, -1.5]])
    inp = inputs([[0, 1, 1]] * 2, [1.0, 0.0], [0, 0],
                 extras={"contrastive_logprobs_pos": pos, "contrastive_logprobs_neg": neg})
    r = [0.5, sigmoid(2.0)]
    up = [x / (sum(r) / 2) for x in r]  # A > 0: credit follows r
    down = [(1 - x) / ((2 - sum(r)) / 2) for x in r]  # A < 0: blame follows 1 - r
    out = ts.t_reg(inp)
    assert close(out, [[0, A_PAIR * up[0], A_PAIR * up[1]], [0, -A_PAIR * down[0], -A_PAIR * down[1]]])
    # the row total is the GRPO one, and the sign never flips
    assert out[0].sum().item() == pytest.approx(2 * A_PAIR, rel=1e-5)
    assert out[1].sum().item() == pytest.approx(-2 * A_PAIR, rel=1e-5)
    inp.extras["contrastive_logprobs_neg"] = neg[:, :2]
    with pytest.raises(ValueError, match="contrastive_logprobs_neg"):
        ts.t_reg(inp)


# -- D3S tokens -----------------------------------------------------------------------------------


def test_d3s_token_hand_computed():
    ent = torch.tensor([[0.0, 0.9, 0.1, 0.5], [0.0, 0.2, 0.8, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # rows 0 / 1: A = +-a; rows 2 / 3 form a zero-variance group (A = 0): never kept
    inp = inputs([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]], [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1],
                 entropy=ent)
    a = A_PAIR
    out = ts.d3s_token(inp, keep_ratio=3 / 8)  # keep 3 of 8 tokens: |A| H = a 0.9, a 0.8, a 0.5
    assert close(out, [[0, a, 0, a], [0, 0, -a, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert (ts.d3s_token(inp, keep_ratio=1.0) != 0).sum() == 5


# -- forking tokens (80/20) -----------------------------------------------------------------------


def test_forking_tokens_hand_computed():
    # 8 loss tokens with entropies 0.9 0.1 0.5 | 0.2 0.8 | 0.3 0.7 | 0.4 -> sorted 0.1 0.2 0.3 0.4 0.5 0.7 0.8 0.9
    ent = torch.tensor([[0.0, 0.9, 0.1, 0.5], [0.0, 0.2, 0.8, 0.0], [0.0, 0.3, 0.7, 0.0], [0.0, 0.4, 0.0, 0.0]])
    inp = inputs([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]], [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1],
                 entropy=ent)
    a = A_PAIR
    # top 20%: tau = the 0.8 quantile = 0.7 + (0.8 - 0.7) * 0.6 (position 5.6 of 0..7) = 0.76 -> keeps 0.9, 0.8
    out = ts.forking_tokens(inp)
    assert close(out, [[0, a, 0, 0], [0, 0, -a, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    # top half: tau = 0.45 (position 3.5) -> keeps 0.9, 0.5, 0.8, 0.7
    out = ts.forking_tokens(inp, top_quantile=0.5)
    assert close(out, [[0, a, 0, a], [0, 0, -a, 0], [0, 0, a, 0], [0, 0, 0, 0]])
    every = ts.forking_tokens(inp, top_quantile=1.0)  # every token: GRPO's advantage broadcast
    assert (every != 0).sum() == 8
    with pytest.raises(ValueError, match="top_quantile"):
        ts.forking_tokens(inp, top_quantile=0.0)


# -- shared ---------------------------------------------------------------------------------------

LOOPS = {
    "hicra": [(ts.hicra, ts.hicra_loop, {}), (ts.hicra, ts.hicra_loop, {"verl_variant": True, "top_q": 0.5})],
    "hicra_gram": [(ts.hicra_gram, lambda i, **k: ts.hicra_loop(i, planning="mask", **k), {}),
                   (ts.hicra_gram, lambda i, **k: ts.hicra_loop(i, planning="mask", **k), {"verl_variant": True})],
    "gtpo_credit": [(ts.gtpo_credit, ts.gtpo_credit_loop, {}),
                    (ts.gtpo_credit, ts.gtpo_credit_loop, {"use_entropy": False, "w_raw": 3.0}),
                    (ts.gtpo_credit, ts.gtpo_credit_loop, {"ent_threshold": 2.0, "ent_scale": 1.0,
                                                           "scale_by_std": False})],
    "aem": [(ts.aem, ts.aem_loop, {}), (ts.aem, ts.aem_loop, {"relative": "difference", "strength": 2.0})],
    "delta": [(ts.delta, ts.delta_loop, {}), (ts.delta, ts.delta_loop, {"temperature": 1.0})],
    "attention_anchor": [(ts.attention_anchor, ts.attention_anchor_loop, {"target": t, "top_q": 0.3, "window": 3})
                         for t in ("anchor", "preplan", "both", "coupled")],
    "t_reg": [(ts.t_reg, ts.t_reg_loop, {}), (ts.t_reg, ts.t_reg_loop, {"temperature": 0.5})],
    "d3s_token": [(ts.d3s_token, ts.d3s_token_loop, {}), (ts.d3s_token, ts.d3s_token_loop, {"keep_ratio": 0.2})],
    "forking_tokens": [(ts.forking_tokens, ts.forking_tokens_loop, {}),
                       (ts.forking_tokens, ts.forking_tokens_loop, {"top_quantile": 0.5, "scale_by_std": False})],
}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("name", NAMES)
def test_matches_loop_over_random_layouts(name, seed):
    inp = random_inputs(seed)
    for fn, loop, kw in LOOPS[name]:
        out = fn(inp, **kw)
        assert close(out, loop(inp, **kw)), (name, kw)
        assert torch.isfinite(out).all() and (out[~inp.loss_mask] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs(name):
    fn = CREDIT.get(name)
    rng = np.random.default_rng(0)

    def full(mask_rows, rewards, groups):
        B, T = len(mask_rows), len(mask_rows[0])
        return inputs(mask_rows, rewards, groups, tokens=torch.zeros(B, T, dtype=torch.long),
                      logprobs=torch.zeros(B, T), entropy=torch.zeros(B, T), hidden_states=torch.zeros(B, T, 2),
                      attention=torch.eye(T).expand(B, T, T).clone(),
                      extras={"planning_mask": torch.ones(B, T, dtype=torch.bool),
                              "contrastive_logprobs_pos": torch.zeros(B, T),
                              "contrastive_logprobs_neg": torch.zeros(B, T)})

    empty = full([[0, 0, 0]] * 2, [1.0, 0.0], [0, 0])  # all responses empty
    assert (fn(empty) == 0).all()
    flat = full([[0, 1, 1]] * 3, [1.0, 1.0, 1.0], [0, 0, 0])  # zero-variance group: A = 0
    assert (fn(flat) == 0).all()  # (GTPO: entropy 0, so no shift either)
    single = full([[0, 1, 1]], [1.0], [0])  # a group of one: A = R = 1, zero signals
    out = fn(single)
    assert torch.isfinite(out).all() and (out[0, 0] == 0)
    mixed = full([[0, 1, 1], [0, 0, 0], [0, 1, 0]], list(map(float, rng.integers(0, 2, 3))), [0, 0, 0])
    assert torch.isfinite(fn(mixed)).all()
