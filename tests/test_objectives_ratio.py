"""GSPO, GSPO-token, CISPO and SAPO against hand-computed numbers, plus each paper's key property."""

import math

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.objectives import reduce_loss
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.ratio_variants import cispo_loss, gspo_loss, gspo_token_loss, sapo_loss


def make_batch(old, adv, mask, ref=None):
    """A RolloutBatch around given old logprobs / advantages / mask [B, T] (mask False at position 0)."""
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


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- GSPO ----------------------------------------------------------------------------------------

# Three sequences (mask on positions 1..): token ratios and one advantage each.
#   row 0: ratios 1.5, 0.5       A = +1 -> s = sqrt(0.75) = 0.8660, inside [0.8, 1.2]
#   row 1: ratios 2, 2, 2        A = -1 -> s = 2, outside but the unclipped branch is the max (2 > 1.2)
#   row 2: ratios 2, 2, 1        A = +1 -> s = 4^(1/3) = 1.5874, clipped at 1.2: no gradient at all
GSPO_RATIOS = [[1.5, 0.5], [2.0, 2.0, 2.0], [2.0, 2.0, 1.0]]
GSPO_ADV = [1.0, -1.0, 1.0]


def gspo_setup():
    B, T = 3, 4
    old = torch.full((B, T), -1.0)
    logp = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    adv = torch.zeros(B, T)
    for i, (ratios, a) in enumerate(zip(GSPO_RATIOS, GSPO_ADV)):
        n = len(ratios)
        mask[i, 1 : 1 + n] = True
        logp[i, 1 : 1 + n] = -1.0 + torch.log(torch.tensor(ratios))
        adv[i, 1 : 1 + n] = a
    return logp.requires_grad_(True), make_batch(old, adv, mask)


def test_gspo_hand_computed_values_and_gradient():
    logp, batch = gspo_setup()
    terms = gspo_loss(logp, batch, clip_low=0.2, clip_high=0.2)
    s = np.array([np.prod(r) ** (1 / len(r)) for r in GSPO_RATIOS])  # geometric means
    assert s == pytest.approx([math.sqrt(0.75), 2.0, 4 ** (1 / 3)])
    a = np.array(GSPO_ADV)
    seq_loss = np.maximum(-a * s, -a * np.clip(s, 0.8, 1.2))  # [-0.866, 2.0, -1.2]
    for i, n in enumerate(len(r) for r in GSPO_RATIOS):
        # every token of a row carries its sequence's loss
        assert terms.per_token[i, 1 : 1 + n].tolist() == pytest.approx([seq_loss[i]] * n, rel=1e-5)
    loss = reduce_loss(terms.per_token, batch.loss_mask, "seq_mean_token_mean")
    assert loss.item() == pytest.approx(seq_loss.mean(), rel=1e-5)  # the paper's (1/G) sum_i l_i
    loss.backward()
    # unclipped rows: d/dlogp_t of -A s = -A s / |y|, then / N by the sequence mean
    N = 3
    assert logp.grad[0, 1:3].tolist() == pytest.approx([-1.0 * s[0] / (2 * N)] * 2, rel=1e-5)
    assert logp.grad[1, 1:4].tolist() == pytest.approx([1.0 * s[1] / (3 * N)] * 3, rel=1e-5)
    # the clipped sequence loses the gradient of all its tokens
    assert logp.grad[2].abs().max().item() == 0.0
    assert terms.metrics["clip_fraction"].item() == pytest.approx(1 / 3)  # one of three sequences
    assert terms.metrics["ratio_min"].item() == pytest.approx(s.min(), rel=1e-5)
    assert terms.metrics["ratio_max"].item() == pytest.approx(s.max(), rel=1e-5)
    r = np.concatenate([np.array(x) for x in GSPO_RATIOS])
    assert terms.metrics["approx_kl"].item() == pytest.approx(np.mean(r - 1 - np.log(r)), rel=1e-5)


def test_gspo_sequence_ratio_is_geometric_mean_of_token_ratios():
    rng = np.random.default_rng(0)
    ratios = rng.uniform(0.5, 2.0, size=5)
    old = torch.full((1, 6), -2.0)
    logp = old.clone()
    logp[0, 1:] += torch.tensor(np.log(ratios), dtype=torch.float32)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    batch = make_batch(old, torch.ones(1, 6), mask)
    terms = gspo_loss(logp, batch, clip_low=10.0, clip_high=10.0)  # no clipping: loss = -s
    geo = float(np.prod(ratios) ** (1 / 5))
    assert terms.metrics["ratio_min"].item() == pytest.approx(geo, rel=1e-5)
    assert terms.per_token[0, 1].item() == pytest.approx(-geo, rel=1e-5)


def test_gspo_default_clip_range_is_tiny():
    # paper defaults 3e-4 / 4e-4: a sequence ratio of 1.001 with A > 0 is already clipped
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.0, math.log(1.001), math.log(1.001)]], requires_grad=True)
    batch = make_batch(old, torch.ones(1, 3), [[0, 1, 1]])
    terms = gspo_loss(logp, batch)
    assert terms.per_token[0, 1].item() == pytest.approx(-(1 + 4e-4), rel=1e-6)
    reduce_loss(terms.per_token, batch.loss_mask, "seq_mean_token_mean").backward()
    assert logp.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_gspo_token_equals_gspo_with_sequence_advantages(seed):
    """GSPO-token with A_{i,t} = A_i reproduces GSPO's value, clipping and gradient (paper Sec. 4.3)."""
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 7
    lengths = torch.randint(0, T, (B,), generator=g)  # 0 = an empty response
    mask = torch.arange(T)[None, :].ge(1) & torch.arange(T)[None, :].le(lengths[:, None])
    old = -torch.rand(B, T, generator=g) * 3 * mask
    base = (old + 0.02 * torch.randn(B, T, generator=g)) * mask
    adv = torch.randn(B, 1, generator=g).expand(B, T)
    batch = make_batch(old, adv, mask)
    grads, losses = [], []
    for fn in (gspo_loss, gspo_token_loss):
        logp = base.clone().requires_grad_(True)
        terms = fn(logp, batch, clip_low=0.01, clip_high=0.01)
        loss = reduce_loss(terms.per_token, mask, "seq_mean_token_mean")
        loss.backward()
        losses.append(loss.item())
        grads.append(logp.grad.clone())
        assert torch.isfinite(loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_gspo_token_uses_token_level_advantages():
    # one sequence, token ratios 1.5 and 0.5 (s = 0.866), advantages +1 and -2 on its two tokens
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5]])).requires_grad_(True)
    batch = make_batch(old, [[0.0, 1.0, -2.0]], [[0, 1, 1]])
    terms = gspo_token_loss(logp, batch, clip_low=0.2, clip_high=0.2)
    s = math.sqrt(0.75)
    assert terms.per_token[0, 1:].tolist() == pytest.approx([-1.0 * s, 2.0 * s], rel=1e-5)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    # each token's gradient is its own -A_t * s (value s, gradient of its own logprob)
    assert logp.grad[0, 1:].tolist() == pytest.approx([-1.0 * s, 2.0 * s], rel=1e-5)
    assert logp.grad[0, 0].item() == 0.0


# -- CISPO ---------------------------------------------------------------------------------------


def test_cispo_hand_computed():
    ratios = np.array([1.5, 0.5, 1.1, 0.05])
    adv = np.array([1.0, 1.0, -2.0, -1.0])
    old = np.array([-1.0, -2.0, -0.5, -3.0])
    logp_np = old + np.log(ratios)
    logp = torch.tensor([[0.0, *logp_np]], dtype=torch.float32, requires_grad=True)
    batch = make_batch([[0.0, *old]], [[0.0, *adv]], [[0, 1, 1, 1, 1]])
    terms = cispo_loss(logp, batch)  # defaults: clip_low 10 (no floor), clip_high 0.2
    w = np.clip(ratios, 1 - 10.0, 1.2)  # [1.2, 0.5, 1.1, 0.05]
    assert terms.per_token[0, 1:].tolist() == pytest.approx((-w * adv * logp_np).tolist(), rel=1e-5)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    # stop-gradient weight: d/dlogp (-sg[w] A logp) = -w A, the weight itself is not differentiated
    assert logp.grad[0, 1:].tolist() == pytest.approx((-w * adv).tolist(), rel=1e-5)
    assert terms.metrics["clip_fraction"].item() == pytest.approx(1 / 4)  # only 1.5 exceeds 1.2
    assert terms.metrics["ratio_min"].item() == pytest.approx(0.05, rel=1e-5)


def test_cispo_keeps_gradient_of_clipped_tokens_unlike_ppo():
    # A > 0 and ratio 1.5 > 1 + 0.2: PPO cuts the gradient, CISPO keeps it with weight 1.2
    old = torch.tensor([[0.0, -1.0]])
    batch = make_batch(old, [[0.0, 1.0]], [[0, 1]])
    logp = torch.tensor([[0.0, -1.0 + math.log(1.5)]], requires_grad=True)
    ppo = ppo_clip_per_token(logp, old, batch.advantages, batch.loss_mask, clip_low=0.2, clip_high=0.2)
    (g_ppo,) = torch.autograd.grad(reduce_loss(ppo.per_token, batch.loss_mask, "token_sum"), logp)
    cispo = cispo_loss(logp, batch, clip_low=0.2, clip_high=0.2)
    (g_cispo,) = torch.autograd.grad(reduce_loss(cispo.per_token, batch.loss_mask, "token_sum"), logp)
    assert g_ppo[0, 1].item() == 0.0
    assert g_cispo[0, 1].item() == pytest.approx(-1.2, rel=1e-6)


def test_cispo_on_policy_is_plain_policy_gradient():
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.3]], requires_grad=True)
    batch = make_batch(logp.detach(), [[0.0, 0.5, -1.5, 2.0]], [[0, 1, 1, 1]])
    terms = cispo_loss(logp, batch)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5, 1.5, -2.0])


# -- SAPO ----------------------------------------------------------------------------------------


def test_sapo_hand_computed():
    ratios = np.array([1.0, 1.3, 0.6, 2.0, 1.1])
    adv = np.array([1.0, 1.0, -1.0, -0.5, 0.0])
    old = np.full(5, -1.0)
    logp_np = old + np.log(ratios)
    logp = torch.tensor([[0.0, *logp_np]], dtype=torch.float32, requires_grad=True)
    batch = make_batch([[0.0, *old]], [[0.0, *adv]], [[0, 1, 1, 1, 1, 1]])
    terms = sapo_loss(logp, batch)  # tau_pos 1.0, tau_neg 1.05
    tau = np.where(adv > 0, 1.0, 1.05)
    s = sigmoid(tau * (ratios - 1))
    assert terms.per_token[0, 1:].tolist() == pytest.approx((-(4 / tau) * s * adv).tolist(), rel=1e-5, abs=1e-7)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    # dL/dlogp = -A * 4 s (1 - s) * r   (chain rule through r = exp(logp - old))
    expected_grad = -adv * 4 * s * (1 - s) * ratios
    assert logp.grad[0, 1:].tolist() == pytest.approx(expected_grad.tolist(), rel=1e-5, abs=1e-7)
    assert terms.metrics["soft_gate_mean"].item() == pytest.approx(np.mean(4 * s * (1 - s)), rel=1e-5)
    assert terms.metrics["clip_fraction"].item() == pytest.approx(3 / 5)  # 1.3, 0.6, 2.0 outside 1 +- 0.2


def test_sapo_is_plain_policy_gradient_at_ratio_one():
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5]], requires_grad=True)
    adv = [[0.0, 0.5, -1.5, 2.0]]
    batch = make_batch(logp.detach(), adv, [[0, 1, 1, 1]])
    terms = sapo_loss(logp, batch)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert logp.grad[0, 1:].tolist() == pytest.approx([-0.5, 1.5, -2.0], rel=1e-6)


@pytest.mark.parametrize("a", [1.0, -1.0])
def test_sapo_only_attenuates_off_policy_tokens(a):
    """Relative to the unclipped IS-weighted gradient -A r, SAPO's factor 4 s (1 - s) is 1 at r = 1
    and strictly between 0 and 1 elsewhere: attenuated, never zeroed (unlike a hard clip)."""
    ratios = torch.tensor([0.3, 0.7, 0.95, 1.0, 1.05, 1.5, 3.0])
    old = torch.zeros(1, len(ratios) + 1)
    logp = torch.cat([torch.zeros(1), torch.log(ratios)])[None].requires_grad_(True)
    mask = torch.ones_like(old, dtype=torch.bool)
    mask[0, 0] = False
    batch = make_batch(old, torch.full_like(old, a), mask)
    terms = sapo_loss(logp, batch)
    reduce_loss(terms.per_token, mask, "token_sum").backward()
    factor = (logp.grad[0, 1:] / (-a * ratios)).tolist()
    assert factor[3] == pytest.approx(1.0)
    for i, f in enumerate(factor):
        if i != 3:
            assert 0.0 < f < 1.0


def test_sapo_gate_is_sharper_for_negative_advantages():
    ratios = torch.tensor([0.5, 0.8, 1.25, 2.0])
    factors = {}
    for a in (1.0, -1.0):
        old = torch.zeros(1, 5)
        logp = torch.cat([torch.zeros(1), torch.log(ratios)])[None].requires_grad_(True)
        batch = make_batch(old, torch.full((1, 5), a), [[0, 1, 1, 1, 1]])
        reduce_loss(sapo_loss(logp, batch).per_token, batch.loss_mask, "token_sum").backward()
        factors[a] = logp.grad[0, 1:].abs()
    assert bool((factors[-1.0] < factors[1.0]).all())


def test_sapo_rejects_non_positive_temperature():
    batch = make_batch(torch.zeros(1, 2), [[0.0, 1.0]], [[0, 1]])
    with pytest.raises(ValueError, match="tau"):
        sapo_loss(torch.zeros(1, 2), batch, tau_neg=0.0)


# -- shared properties ---------------------------------------------------------------------------

OBJECTIVES = [gspo_loss, gspo_token_loss, cispo_loss, sapo_loss]


def degenerate_batch():
    """Row 0: normal; row 1: an empty response (no mask tokens); garbage logprobs off the mask."""
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    old = torch.tensor([[0.0, -1.0, -2.0, 0.0, 0.0], [0.0] * 5])
    adv = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0] * 5])
    batch = make_batch(old, adv, mask)
    logp = torch.tensor([[30.0, -0.9, -2.2, -50.0, 40.0], [-30.0, 25.0, -60.0, 0.0, 1.0]], requires_grad=True)
    return logp, batch


@pytest.mark.parametrize("fn", OBJECTIVES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_masked_positions_and_empty_rows_get_zero_gradient(fn, mode):
    logp, batch = degenerate_batch()
    terms = fn(logp, batch)
    assert terms.per_token.shape == logp.shape
    loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[~batch.loss_mask].abs().max().item() == 0.0
    assert logp.grad[0, 1:3].abs().sum().item() > 0.0
    for key in ("clip_fraction", "approx_kl", "ratio_min", "ratio_max"):
        assert torch.isfinite(terms.metrics[key]), key


@pytest.mark.parametrize("fn", OBJECTIVES, ids=lambda f: f.__name__)
def test_all_empty_batch_is_finite(fn):
    mask = torch.zeros(2, 3, dtype=torch.bool)
    batch = make_batch(torch.zeros(2, 3), torch.zeros(2, 3), mask)
    logp = torch.zeros(2, 3, requires_grad=True)
    terms = fn(logp, batch)
    loss = reduce_loss(terms.per_token, mask, "seq_mean_token_mean")
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().max().item() == 0.0
    assert all(torch.isfinite(v) for v in terms.metrics.values())


@pytest.mark.parametrize("fn", OBJECTIVES, ids=lambda f: f.__name__)
def test_zero_advantage_gives_zero_gradient(fn):
    # a zero-variance group: every advantage is 0, so no token moves
    logp = torch.tensor([[0.0, -0.5, -1.5]], requires_grad=True)
    batch = make_batch([[0.0, -1.0, -1.0]], torch.zeros(1, 3), [[0, 1, 1]])
    reduce_loss(fn(logp, batch).per_token, batch.loss_mask, "token_mean").backward()
    assert logp.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("fn", OBJECTIVES, ids=lambda f: f.__name__)
def test_kl_penalty_term(fn):
    ref = torch.full((1, 3), -1.5)
    batch = make_batch([[0.0, -1.0, -1.0]], [[0.0, 1.0, 1.0]], [[0, 1, 1]], ref=ref)
    logp = torch.full((1, 3), -1.0)
    plain = fn(logp, batch).per_token
    with_kl = fn(logp, batch, kl_coef=0.1)
    d = -0.5  # ref - logp
    k3 = math.exp(d) - d - 1
    assert (with_kl.per_token - plain)[0, 1:].tolist() == pytest.approx([0.1 * k3] * 2, rel=1e-5)
    assert with_kl.metrics["kl_ref"].item() == pytest.approx(k3, rel=1e-5)
    no_ref = make_batch([[0.0, -1.0, -1.0]], [[0.0, 1.0, 1.0]], [[0, 1, 1]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(logp, no_ref, kl_coef=0.1)


@pytest.mark.parametrize("fn", OBJECTIVES, ids=lambda f: f.__name__)
def test_extreme_log_ratios_stay_finite(fn):
    # log-ratios of +-100 on loss tokens: clamped before exp, so loss and gradient stay finite
    logp = torch.tensor([[0.0, 100.0, -100.0, 0.5]], requires_grad=True)
    batch = make_batch(torch.zeros(1, 4), [[0.0, 1.0, -1.0, 1.0]], [[0, 1, 1, 1]])
    terms = fn(logp, batch)
    for mode in ("token_mean", "seq_mean_token_mean"):
        loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
        assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in terms.metrics.values())
