"""GTPO, Lp-Reg, HAPO (heterogeneous) and TEA-RL against hand-computed numbers and each paper's key property."""

import math

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.logprobs import PolicyOutputs
from credo.objectives import reduce_loss
from credo.objectives.entropy_aware import (
    gtpo_conflict_deltas,
    gtpo_loss,
    hapo_entropy_signal,
    hapo_sampling_temperature,
    hapo_token_group_advantages,
    hapo_token_loss,
    lp_reg_loss,
    min_p_proxy_logprobs,
    tea_entropy_coefficients,
    tea_rl_loss,
)


def make_batch(mask, adv=None, old=None, tokens=None, rewards=None, group_ids=None):
    """A RolloutBatch around given [B, T] mask / advantages / old logprobs / tokens (mask False at position 0)."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    B, T = mask.shape
    adv = torch.zeros(B, T) if adv is None else torch.as_tensor(adv, dtype=torch.float32)
    old = torch.zeros(B, T) if old is None else torch.as_tensor(old, dtype=torch.float32)
    return RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long) if tokens is None else torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=old * mask,
        advantages=adv * mask,
        rewards=torch.zeros(B) if rewards is None else torch.as_tensor(rewards, dtype=torch.float32),
        group_ids=torch.zeros(B, dtype=torch.long) if group_ids is None else torch.as_tensor(group_ids),
    )


def outputs_for(logprobs, entropy=None, full=None):
    entropy = torch.zeros_like(logprobs) if entropy is None else torch.as_tensor(entropy, dtype=torch.float32)
    return PolicyOutputs(logprobs=logprobs, entropy=entropy, full_logprobs=full)


# -- GTPO ------------------------------------------------------------------------------------------

# One group, completions after a 1-token prompt (position 0). Worked by hand below.
#   r0 (A>0): 5 6 7 8      r1 (A>0): 5 6 9 8      r2 (A<0): 5 6 7 3 8      r3 (A<0): 4 6 7 8
# forward (same position from the start):  r0 runs 0-3, r1 runs 0-1, r2 runs 0-2, r3 has no run (4 is not in a positive)
# backward (same distance from the end):   r0 runs over its last 3, r1 and r2 over their last 1, r3 over its last 3
# delta (w = 2): r0 [2, 4, 4, 4]  r1 [2, 2, 1, 2]  r2 [0, 0, 0, 1, 0]  r3 [1, 0, 0, 0];  n_conf 4, 3, 4, 3
GTPO_COMPLETIONS = [[5, 6, 7, 8], [5, 6, 9, 8], [5, 6, 7, 3, 8], [4, 6, 7, 8]]
GTPO_ADV = [1.0, 1.0, -1.0, -1.0]
GTPO_DELTA = [[2, 4, 4, 4], [2, 2, 1, 2], [0, 0, 0, 1, 0], [1, 0, 0, 0]]
GTPO_NCONF = [4, 3, 4, 3]


def gtpo_setup(extra_rows=()):
    rows = list(GTPO_COMPLETIONS) + [c for c, _, _ in extra_rows]
    adv = list(GTPO_ADV) + [a for _, a, _ in extra_rows]
    groups = [0] * len(GTPO_COMPLETIONS) + [g for _, _, g in extra_rows]
    T = 1 + max(len(r) for r in rows) + 1  # one padding column
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    A = torch.zeros(len(rows), T)
    for i, (r, a) in enumerate(zip(rows, adv)):
        tokens[i, 1 : 1 + len(r)] = torch.tensor(r)
        mask[i, 1 : 1 + len(r)] = True
        A[i] = a
    return make_batch(mask, A, tokens=tokens, group_ids=groups)


def test_gtpo_conflict_masks_hand_computed():
    batch = gtpo_setup()
    delta, conflict, n_conf = gtpo_conflict_deltas(
        batch.tokens, batch.loss_mask, batch.group_ids, torch.tensor(GTPO_ADV), w_raw=2.0
    )
    for i, d in enumerate(GTPO_DELTA):
        assert delta[i, 1 : 1 + len(d)].tolist() == d
    assert n_conf.tolist() == GTPO_NCONF
    assert conflict[0, 1:5].all() and not conflict[3, 1]


def test_gtpo_groups_do_not_mix_and_zero_advantage_rows_are_neutral():
    # the same tokens in another group, and an A = 0 row in the first group, change nothing
    batch = gtpo_setup(extra_rows=[([4, 6, 7, 8], 1.0, 7), ([5, 6, 7, 8], 0.0, 0)])
    row_adv = torch.tensor(GTPO_ADV + [1.0, 0.0])
    delta, _, n_conf = gtpo_conflict_deltas(batch.tokens, batch.loss_mask, batch.group_ids, row_adv)
    for i, d in enumerate(GTPO_DELTA):
        assert delta[i, 1 : 1 + len(d)].tolist() == d
    assert delta[4].tolist() == [1.0] * delta.shape[1] and delta[5].tolist() == [1.0] * delta.shape[1]
    assert n_conf[4:].tolist() == [1.0, 1.0]


def _gtpo_reference(completions, adv, groups, w):
    """Independent loop over lists, following the official build_conflict_mask."""
    deltas, counts = [], []
    for i, (c, a, g) in enumerate(zip(completions, adv, groups)):
        others = [(cc, aa) for cc, aa, gg in zip(completions, adv, groups) if gg == g]

        def run(seq_of):
            out = []
            for j in range(len(c)):
                tok = seq_of(c)[j]
                in_pos = any(aa > 0 and j < len(cc) and seq_of(cc)[j] == tok for cc, aa in others)
                in_neg = any(aa < 0 and j < len(cc) and seq_of(cc)[j] == tok for cc, aa in others)
                if a != 0 and in_pos and in_neg:
                    out.append(j)
                else:
                    break
            return out

        fwd = run(lambda s: s)
        bwd = [len(c) - 1 - j for j in run(lambda s: s[::-1])]
        f = w if a > 0 else (0.0 if a < 0 else 1.0)
        deltas.append([(f if j in fwd else 1.0) * (f if j in bwd else 1.0) for j in range(len(c))])
        counts.append(max(1, len(set(fwd) | set(bwd))))
    return deltas, counts


@pytest.mark.parametrize("seed", range(5))
def test_gtpo_conflict_masks_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    completions, adv, groups = [], [], []
    for g in range(3):
        for _ in range(4):
            n = int(rng.integers(1, 7))
            completions.append([int(x) for x in rng.integers(1, 4, size=n)])  # small vocab: many conflicts
            adv.append(float(rng.choice([-1.0, 0.0, 1.0])))
            groups.append(g)
    T = 2 + max(map(len, completions))
    tokens = torch.zeros(len(completions), T, dtype=torch.long)
    mask = torch.zeros(len(completions), T, dtype=torch.bool)
    for i, c in enumerate(completions):
        tokens[i, 1 : 1 + len(c)] = torch.tensor(c)
        mask[i, 1 : 1 + len(c)] = True
    delta, _, n_conf = gtpo_conflict_deltas(tokens, mask, torch.tensor(groups), torch.tensor(adv), w_raw=3.0)
    want_delta, want_counts = _gtpo_reference(completions, adv, groups, 3.0)
    for i, c in enumerate(completions):
        assert delta[i, 1 : 1 + len(c)].tolist() == want_delta[i]
    assert n_conf.tolist() == want_counts


def test_gtpo_never_pushes_a_conflict_token_down_and_amplifies_positive_ones():
    batch = gtpo_setup()
    logp = torch.full(batch.tokens.shape, -1.0, requires_grad=True)
    terms = gtpo_loss(logp, batch, outputs=outputs_for(logp.detach()))  # entropy 0: no shaping
    loss = reduce_loss(terms.per_token, batch.loss_mask, "token_sum")
    loss.backward()
    for i, (d, a, n) in enumerate(zip(GTPO_DELTA, GTPO_ADV, GTPO_NCONF)):
        # d loss / d logp = -A delta / n_conf (ratio exp(lp - sg lp) = 1, gradient 1)
        assert logp.grad[i, 1 : 1 + len(d)].tolist() == pytest.approx([-a * dd / n for dd in d])
        assert terms.per_token[i, 1 : 1 + len(d)].tolist() == pytest.approx([-a * dd / n for dd in d])
    # every conflict token of a negative completion: zero gradient (never pushed down)
    assert logp.grad[2, 1:4].abs().max() == 0 and logp.grad[3, 2:5].abs().max() == 0
    assert logp.grad[~batch.loss_mask].abs().max() == 0  # masked positions
    assert terms.metrics["clip_fraction"].item() == 0.0


def test_gtpo_entropy_filter_and_shaping():
    # two unrelated completions (no shared tokens): delta = 1, n_conf = 1
    tokens = [[0, 1, 2, 0], [0, 3, 4, 5]]
    mask = [[0, 1, 1, 0], [0, 1, 1, 1]]
    batch = make_batch(mask, [[1.0] * 4, [-1.0] * 4], tokens=tokens)
    ent = torch.tensor([[9.0, 0.4, 0.6, 9.0], [0.0, 1.0, 1.0, 1.0]])  # means 0.5 (kept) and 1.0 (> 0.7, dropped)
    logp = torch.zeros(2, 4, requires_grad=True)
    terms = gtpo_loss(logp, batch, outputs=outputs_for(logp.detach(), ent))
    assert terms.per_token[0, 1:3].tolist() == pytest.approx([-(1.0 - 0.1 * 0.5)] * 2)
    assert terms.per_token[1].abs().max().item() == 0.0  # high-entropy completion filtered out
    assert terms.metrics["filtered_fraction"].item() == pytest.approx(0.5)
    assert terms.metrics["completion_entropy"].item() == pytest.approx(0.75)


def test_gtpo_all_zero_advantage_group():
    tokens = [[0, 1, 2], [0, 1, 2]]
    batch = make_batch([[0, 1, 1], [0, 1, 1]], torch.zeros(2, 3), tokens=tokens)
    logp = torch.zeros(2, 3, requires_grad=True)
    ent = torch.full((2, 3), 0.5)
    # no active completion: no conflicts; with the shaping off the loss is exactly 0
    terms = gtpo_loss(logp, batch, outputs=outputs_for(logp.detach(), ent), ent_scale=0.0)
    assert terms.per_token.abs().max().item() == 0.0 and terms.metrics["conflict_fraction"].item() == 0.0
    # the official shaping still gives low-entropy A = 0 completions A' = -0.1 * H
    terms = gtpo_loss(logp, batch, outputs=outputs_for(logp.detach(), ent))
    assert terms.per_token[:, 1:].flatten().tolist() == pytest.approx([0.05] * 4)


def test_gtpo_empty_response_is_finite():
    batch = make_batch([[0, 1, 1], [0, 0, 0]], [[1.0] * 3, [-1.0] * 3], tokens=[[0, 1, 2], [0, 1, 2]])
    logp = torch.zeros(2, 3, requires_grad=True)
    terms = gtpo_loss(logp, batch, outputs=outputs_for(logp.detach()))
    loss = reduce_loss(terms.per_token, batch.loss_mask, "seq_mean_token_mean")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in terms.metrics.values())


# -- Lp-Reg ----------------------------------------------------------------------------------------


def test_min_p_proxy_hand_computed():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
    lp = p.log()
    ids = torch.tensor([1])
    # minp 0.1: keep p >= 0.05 -> {0, 1, 2}, renormalised by 0.95
    assert min_p_proxy_logprobs(lp, ids, min_p=0.1).item() == pytest.approx(math.log(0.3 / 0.95), abs=1e-5)
    assert min_p_proxy_logprobs(lp, torch.tensor([3]), min_p=0.1).item() < -9000  # filtered: ~ -1e4
    # fixed 0.2: keep p >= 0.2 -> {0, 1}
    fixed = min_p_proxy_logprobs(lp, ids, min_p=0.2, proxy_type="fixed").item()
    assert fixed == pytest.approx(math.log(0.3 / 0.8), abs=1e-5)
    # minp_soft: filtered logits set to the row minimum (log 0.01): p ~ [.5, .3, .15, .01, .01] / 0.97
    soft = min_p_proxy_logprobs(lp, torch.tensor([3]), min_p=0.1, proxy_type="minp_soft").item()
    assert soft == pytest.approx(math.log(0.01 / 0.97), abs=1e-5)
    with pytest.raises(ValueError, match="proxy_type"):
        min_p_proxy_logprobs(lp, ids, proxy_type="top_p")


def lp_reg_setup():
    """Row 0 (A = -1) samples tokens with p = 0.6, 0.2, 0.1; row 1 (A = +1) samples p = 0.05 and 0.6.
    A vocabulary of 4 at every scored position; the sampled token is id 0."""
    probs = [[0.6, 0.2, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.1, 0.6, 0.25, 0.05],
             [0.05, 0.8, 0.13, 0.02], [0.6, 0.2, 0.1, 0.1]]
    full = torch.tensor(probs).log()
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    logp = torch.zeros(2, 4)
    logp[mask] = full[:, 0]
    batch = make_batch(mask, [[-1.0] * 4, [1.0] * 4], old=logp.clone(), tokens=torch.zeros(2, 4))
    return logp.requires_grad_(True), batch, full


def test_lp_reg_regularises_only_the_selected_low_probability_negative_token():
    logp, batch, full = lp_reg_setup()
    out = outputs_for(logp.detach(), full=full)
    # 3 negative tokens, fraction 0.34 -> k = 1: the lowest, p = 0.1 at (0, 3). min_p 0.1 keeps
    # p >= 0.06 there ({0.1, 0.6, 0.25}), so the proxy renormalises by 0.95 and lp < lp_proxy
    terms = lp_reg_loss(logp, batch, outputs=out, neg_fraction=0.34, min_p=0.1)
    lp, lp_proxy = math.log(0.1), math.log(0.1 / 0.95)
    k3 = math.exp(lp_proxy - lp) - (lp_proxy - lp) - 1
    assert terms.metrics["lp_reg_fraction"].item() == pytest.approx(1 / 5)
    assert terms.per_token[0, 3].item() == pytest.approx(1.0 + k3, rel=1e-5)  # -A r + beta k3, r = 1
    assert terms.per_token[0, 1:3].tolist() == pytest.approx([1.0, 1.0])  # not in the bottom 34%: default
    assert terms.per_token[1, 1:3].tolist() == pytest.approx([-1.0, -1.0])  # positive tokens untouched
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    # d/dlp [-A r + k3] = -A r + 1 - exp(lp_proxy - lp)
    assert logp.grad[0, 3].item() == pytest.approx(1.0 + 1 - math.exp(lp_proxy - lp), rel=1e-5)
    assert logp.grad[0, 1:3].tolist() == pytest.approx([1.0, 1.0])
    assert logp.grad[~batch.loss_mask].abs().max() == 0


def test_lp_reg_leaves_tokens_below_the_min_p_threshold_alone():
    logp, batch, full = lp_reg_setup()
    # min_p 0.2 keeps p >= 0.12 at (0, 3): the sampled 0.1 is filtered as noise (proxy ~ -1e4)
    terms = lp_reg_loss(logp, batch, outputs=outputs_for(logp.detach(), full=full), neg_fraction=0.34, min_p=0.2)
    assert terms.metrics["lp_reg_fraction"].item() == 0.0
    assert terms.metrics["proxy_filtered_fraction"].item() == pytest.approx(2 / 5)  # (0, 3) and (1, 1)
    assert terms.per_token[0, 1:4].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_lp_reg_official_k_rule_and_positive_fraction():
    logp, batch, full = lp_reg_setup()
    out = outputs_for(logp.detach(), full=full)
    # the official code needs k > 1: with 3 negative tokens and 1% nothing is regularised
    terms = lp_reg_loss(logp, batch, outputs=out, min_p=0.1, min_selected=2)
    assert terms.metrics["lp_reg_fraction"].item() == 0.0
    # default 1% with min_selected 1: k = max(1, int(0.03)) = 1 -> the same single token
    terms = lp_reg_loss(logp, batch, outputs=out, min_p=0.1)
    assert terms.metrics["lp_reg_fraction"].item() == pytest.approx(1 / 5)
    # positive side: at (1, 1) min_p 0.05 keeps p >= 0.04 ({0.05, 0.8, 0.13}): proxy 0.05 / 0.98
    terms = lp_reg_loss(logp, batch, outputs=out, min_p=0.05, neg_fraction=0.0, pos_fraction=0.5)
    assert terms.metrics["lp_reg_fraction"].item() == pytest.approx(1 / 5)
    lp, lp_proxy = math.log(0.05), math.log(0.05 / 0.98)
    k3 = math.exp(lp_proxy - lp) - (lp_proxy - lp) - 1
    assert terms.per_token[1, 1].item() == pytest.approx(-1.0 + k3, rel=1e-5)


def test_lp_reg_clip_defaults_and_degenerate_cases():
    logp, batch, full = lp_reg_setup()
    # off-policy ratio 12 on a positive token: capped at 1 + 9 = 10 by default
    shifted = logp.detach().clone()
    shifted[1, 2] += math.log(12.0)
    terms = lp_reg_loss(shifted, batch, outputs=outputs_for(shifted, full=full))
    assert terms.per_token[1, 2].item() == pytest.approx(-10.0, rel=1e-5)
    # ratio 0.01 on a negative token: no floor (clip_low 1.0), loss -A r = 0.01
    shifted = logp.detach().clone()
    shifted[0, 1] += math.log(0.01)
    terms = lp_reg_loss(shifted, batch, outputs=outputs_for(shifted, full=full), neg_fraction=0.0)
    assert terms.per_token[0, 1].item() == pytest.approx(0.01, rel=1e-4)
    # no valid tokens: the plain loss, finite
    empty = make_batch(torch.zeros(2, 4), tokens=torch.zeros(2, 4))
    lp0 = torch.zeros(2, 4, requires_grad=True)
    terms = lp_reg_loss(lp0, empty, outputs=outputs_for(lp0.detach(), full=torch.zeros(0, 4)))
    assert torch.isfinite(reduce_loss(terms.per_token, empty.loss_mask, "token_mean"))
    with pytest.raises(ValueError, match="full_logprobs"):
        lp_reg_loss(logp, batch, outputs=outputs_for(logp.detach(), full=full[:3]))


# -- HAPO ------------------------------------------------------------------------------------------


def numpy_h_hat(ent, pivot, signed=True):
    ell = np.log(np.maximum(ent, 1e-8))
    m = np.sort(ell)[round(pivot * (len(ell) - 1))]
    h = ell - m
    h = h / np.sqrt(np.mean(h**2))
    pos_max, neg_min = h[h > 0].max(), h[h < 0].min()
    low = h / abs(neg_min) if signed else h / neg_min
    return np.where(h > 0, h / pos_max, low)


def test_hapo_entropy_signal_matches_numpy():
    ent = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 0.05])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    e = torch.zeros(1, 8)
    e[mask] = torch.tensor(ent, dtype=torch.float32)
    for pivot, signed in [(0.5, True), (0.8, True), (0.8, False)]:
        h_hat, stats = hapo_entropy_signal(e, mask, pivot=pivot, signed=signed)
        assert h_hat[mask].tolist() == pytest.approx(numpy_h_hat(ent, pivot, signed).tolist(), abs=1e-5)
        assert h_hat[~mask].abs().max() == 0
    h_hat, _ = hapo_entropy_signal(e, mask, pivot=0.8)
    assert h_hat[mask].max().item() == pytest.approx(1.0) and h_hat[mask].min().item() == pytest.approx(-1.0)
    # the released sign: low-entropy tokens are mapped to >= 0 as well
    h_code, _ = hapo_entropy_signal(e, mask, pivot=0.8, signed=False)
    assert (h_code[mask] >= 0).all()


def hapo_two_token_batch(ratios, adv, ent=(0.1, 10.0)):
    """One row, scored tokens (low-entropy, median, high-entropy) with entropies (0.1, 1, 10): with
    pivot 0.5 the log-entropies (-2.3, 0, 2.3) give h_hat = (-1, 0, +1). The median token has A = 0."""
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    old = torch.tensor([[0.0, -1.0, -1.0, -1.0]])
    logp = old.clone()
    logp[0, [1, 3]] += torch.log(torch.tensor(ratios))
    batch = make_batch(mask, [[0.0, adv[0], 0.0, adv[1]]], old=old)
    return logp.requires_grad_(True), batch, outputs_for(logp.detach(), [[0.0, ent[0], 1.0, ent[1]]])


def test_hapo_asymmetric_clip():
    # negative advantages, ratio 0.7: GRPO's floor 0.8 clips both; HAPO lowers the LOW-entropy floor to 0.6
    logp, batch, out = hapo_two_token_batch([0.7, 0.7], [-1.0, -1.0])
    terms = hapo_token_loss(logp, batch, outputs=out, entropy_pivot=0.5, adaptive_advantage=False)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert logp.grad[0, 1].item() == pytest.approx(0.7)  # d(-A r)/dlogp = r: still pushed down
    assert logp.grad[0, 3].item() == 0.0  # high entropy keeps the 0.8 floor: clipped
    assert terms.per_token[0, 3].item() == pytest.approx(0.8)
    # positive advantages, ratio 1.3: GRPO's cap 1.2 clips both; HAPO raises the HIGH-entropy cap to 1.4
    logp, batch, out = hapo_two_token_batch([1.3, 1.3], [1.0, 1.0])
    terms = hapo_token_loss(logp, batch, outputs=out, entropy_pivot=0.5, adaptive_advantage=False)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert logp.grad[0, 1].item() == 0.0
    assert terms.per_token[0, 1].item() == pytest.approx(-1.2)
    assert logp.grad[0, 3].item() == pytest.approx(-1.3)
    # beyond the widened ranges both are clipped again: floor 0.6, cap 1.4
    logp, batch, out = hapo_two_token_batch([0.5, 1.5], [-1.0, 1.0])
    terms = hapo_token_loss(logp, batch, outputs=out, entropy_pivot=0.5, adaptive_advantage=False)
    assert terms.per_token[0, [1, 3]].tolist() == pytest.approx([0.6, -1.4])


def test_hapo_advantage_redistribution_band():
    # h_hat -1 (low) and +1 (high); bands (1 - eps_low/2, 1 + eps_high/2) with the fixed 0.2 ranges: (0.9, 1.1)
    # inside the band: low-entropy A -> A (1 + h_hat) = 0, high-entropy A unchanged
    logp, batch, out = hapo_two_token_batch([1.0, 1.0], [1.0, 1.0])
    terms = hapo_token_loss(logp, batch, outputs=out, entropy_pivot=0.5, adaptive_clip=False)
    assert terms.per_token[0, [1, 3]].tolist() == pytest.approx([0.0, -1.0])
    # outside the band (ratio 1.15 > 1.1): low keeps A, high gets A (1 + 1) = 2A (1.15 is inside the clip)
    logp, batch, out = hapo_two_token_batch([1.15, 1.15], [1.0, 1.0])
    terms = hapo_token_loss(logp, batch, outputs=out, entropy_pivot=0.5, adaptive_clip=False)
    assert terms.per_token[0, [1, 3]].tolist() == pytest.approx([-1.15, -2.0 * 1.15])
    assert terms.metrics["redistributed_fraction"].item() == pytest.approx(1 / 3)


def test_hapo_uniform_entropy_reduces_to_dual_clip_ppo():
    # all entropies equal: h_hat = 0, every range 0.2 and every advantage unchanged
    mask = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.bool)
    old = torch.zeros(1, 5)
    r = np.array([1.0, 1.5, 0.5, 20.0])
    a = np.array([1.0, 1.0, -1.0, -1.0])
    logp = torch.zeros(1, 5)
    logp[0, 1:] = torch.tensor(np.log(r), dtype=torch.float32)
    batch = make_batch(mask, [[0.0] + a.tolist()], old=old)
    terms = hapo_token_loss(logp, batch, outputs=outputs_for(logp, torch.full((1, 5), 0.7)))
    want = np.maximum(-a * r, -a * np.clip(r, 0.8, 1.2))
    want = np.where(a < 0, np.minimum(want, -a * 10.0), want)  # dual clip 10
    assert terms.per_token[0, 1:].tolist() == pytest.approx(want.tolist(), rel=1e-5)


def test_hapo_token_group_advantages():
    # rewards [1, 0], lengths [3, 1]: mu = 0.75, sigma = sqrt(0.1875) (length-weighted, population)
    a = hapo_token_group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([3, 1]))
    s = math.sqrt(0.1875)
    assert a.tolist() == pytest.approx([0.25 / (s + 1e-6), -0.75 / (s + 1e-6)], rel=1e-5)
    # one short correct answer among long wrong ones: |A| >= 5 -> the group falls back to GRPO
    a = hapo_token_group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([1, 100]))
    assert a.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6)], rel=1e-5)
    # zero-variance group and an all-empty group: A = 0
    a = hapo_token_group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]),
                                    torch.tensor([2, 5, 0, 0]))
    assert a.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_hapo_sampling_temperature():
    stats_ent = torch.tensor([[0.0, 0.5, 1.0, 2.0]])
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    _, stats = hapo_entropy_signal(stats_ent, mask, pivot=0.5)  # median log 1 = 0, std = log 2 * sqrt(2/3)
    # a uniform row over V = 4 has entropy log 4 -> h = log(log 4) / std > 0; a one-hot row: eps -> clamped -1
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    temps = hapo_sampling_temperature(logits, stats, temperature=1.0, tau=0.05)
    std = math.log(2) * math.sqrt(2 / 3)
    h = math.log(math.log(4)) / (std + 1e-6)
    h_hat = min(1.0, h * stats.scale_pos.item())
    assert temps.tolist() == pytest.approx([1 + 0.05 * h_hat, 1 - 0.05], rel=1e-4)


# -- TEA-RL ----------------------------------------------------------------------------------------


def test_tea_coefficients_hand_computed():
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    c = tea_entropy_coefficients(logp, adv, mask, cov_alpha=10.0, coef_max=5.0)
    a_mean, lp_mean = (1 + 1 - 1) / 3, (-1 - 2 - 0.5) / 3
    cov0 = np.array([(1 - a_mean) * (-1 - lp_mean), (1 - a_mean) * (-2 - lp_mean)])
    w0 = np.exp(cov0) / np.exp(cov0).sum()
    assert c[0, 1:3].tolist() == pytest.approx(np.minimum(10 * w0, 5).tolist(), rel=1e-5)
    assert c[1, 1].item() == pytest.approx(5.0)  # a single token: softmax 1, 10 clamped to 5
    assert c[~mask].abs().max() == 0
    # an empty row gets zeros, not NaN
    c = tea_entropy_coefficients(logp, adv, torch.zeros_like(mask))
    assert torch.isfinite(c).all() and c.abs().max() == 0


def test_tea_rl_entropy_bonus_gradient_equals_coefficient():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4])
    old = torch.tensor([[0.0, -1.0, -0.5, -2.0], [0.0, -0.3, -1.2, 0.0]])
    batch = make_batch(mask, adv, old=old)
    logp = old.clone().requires_grad_(True)
    ent = torch.tensor([[0.0, 1.0, 2.0, 0.5], [0.0, 0.1, 0.2, 0.0]], requires_grad=True)
    terms = tea_rl_loss(logp, batch, outputs=PolicyOutputs(logprobs=logp, entropy=ent))
    coef = tea_entropy_coefficients(old, batch.advantages, mask)
    # on-policy: ppo part -A r = -A; minus c H
    want = -batch.advantages - coef * ent.detach()
    assert terms.per_token[mask].tolist() == pytest.approx(want[mask].tolist(), rel=1e-5)
    reduce_loss(terms.per_token, mask, "token_sum").backward()
    assert ent.grad[mask].tolist() == pytest.approx((-coef)[mask].tolist(), rel=1e-5)
    assert logp.grad[mask].tolist() == pytest.approx((-batch.advantages)[mask].tolist(), rel=1e-5)  # detached coef
    assert ent.grad[~mask].abs().max() == 0 and logp.grad[~mask].abs().max() == 0
    # the released (undetached) coefficient also moves logp through the softmax
    logp2 = old.clone().requires_grad_(True)
    terms = tea_rl_loss(logp2, batch, outputs=PolicyOutputs(logprobs=logp2, entropy=ent.detach()), detach_coef=False)
    reduce_loss(terms.per_token, mask, "token_sum").backward()
    assert not torch.allclose(logp2.grad[mask], (-batch.advantages)[mask])
