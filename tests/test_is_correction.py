"""Importance-sampling corrections: hand-computed weights and masks, and their effect in the update."""

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from credo.batch import broadcast_advantages, build_batch
from credo.objectives.grpo import grpo_loss
from credo.objectives.is_correction import IS_CORRECTIONS, geo_mask, icepop, seq_mis, seq_tis, tis, token_mask
from credo.rollout import SamplingParams, TorchEngine
from credo.tasks import TASKS
from credo.train.rl import UpdateSettings, ppo_update
sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask, tiny_run  # noqa: E402

# two rows, three loss tokens each (position 0 is never in the mask); log k = old - sampler
LOG_K = torch.tensor([[0.0, math.log(3.0), math.log(0.25), 0.0],
                      [0.0, math.log(1.5), math.log(1.2), math.log(6.0)]])
MASK = torch.tensor([[False, True, True, True], [False, True, True, True]])
SAMPLER = torch.full((2, 4), -1.0)
OLD = SAMPLER + LOG_K


def test_tis_truncates_each_token_at_the_cap():
    c = tis(OLD, SAMPLER, MASK, cap=2.0)
    expected = torch.tensor([[1.0, 2.0, 0.25, 1.0], [1.0, 1.5, 1.2, 2.0]])
    torch.testing.assert_close(c.weights, expected)
    assert torch.equal(c.keep, MASK)
    assert c.metrics["is_truncated_frac"] == pytest.approx(2 / 6)
    assert c.metrics["is_ratio_max"] == pytest.approx(6.0) and c.metrics["is_ratio_min"] == pytest.approx(0.25)
    assert c.metrics["is_ratio_mean"] == pytest.approx((3 + 0.25 + 1 + 1.5 + 1.2 + 6) / 6)


def test_seq_tis_uses_the_truncated_product_per_row():
    c = seq_tis(OLD, SAMPLER, MASK, cap=2.0)
    # row 0: 3 * 0.25 * 1 = 0.75; row 1: 1.5 * 1.2 * 6 = 10.8 -> 2
    torch.testing.assert_close(c.weights[0, 1:], torch.full((3,), 0.75))
    torch.testing.assert_close(c.weights[1, 1:], torch.full((3,), 2.0))
    assert c.metrics["is_truncated_frac"] == pytest.approx(0.5)


def test_icepop_drops_tokens_outside_the_band_and_weights_the_rest_by_k():
    c = icepop(OLD, SAMPLER, MASK, low=0.5, high=5.0)
    # dropped: 0.25 (row 0) and 6.0 (row 1)
    assert c.keep.tolist() == [[False, True, False, True], [False, True, True, False]]
    torch.testing.assert_close(c.weights[c.keep], torch.tensor([3.0, 1.0, 1.5, 1.2]))
    assert c.metrics["is_masked_frac"] == pytest.approx(2 / 6)


def test_seq_mis_drops_rows_whose_product_exceeds_the_cap():
    c = seq_mis(OLD, SAMPLER, MASK, cap=2.0)
    assert c.keep.tolist() == [[False, True, True, True], [False, False, False, False]]
    torch.testing.assert_close(c.weights[0, 1:], torch.full((3,), 0.75))


def test_geo_mask_and_token_mask_reject_without_reweighting():
    g = geo_mask(OLD, SAMPLER, MASK, low=0.5, high=2.0)
    # geometric means: row 0 0.75^(1/3) = 0.909 (kept); row 1 10.8^(1/3) = 2.21 (dropped)
    assert g.keep[0].tolist() == [False, True, True, True] and not g.keep[1].any()
    assert torch.equal(g.weights, torch.ones(2, 4))
    t = token_mask(OLD, SAMPLER, MASK, low=0.5, high=2.0)
    assert t.keep.tolist() == [[False, False, False, True], [False, True, True, False]]
    assert torch.equal(t.weights, torch.ones(2, 4))


def test_masked_positions_never_count():
    wild = OLD.clone()
    wild[:, 0] = 1e6  # off the mask: must not reach the statistics or the weights
    c = tis(wild, SAMPLER, MASK)
    assert c.metrics["is_ratio_max"] == pytest.approx(6.0)
    assert c.weights[:, 0].tolist() == [1.0, 1.0]


def _batch(policy):
    engine = TorchEngine(policy.model, policy.tokenizer)
    groups = engine.generate([[1, 50, 60], [1, 70]], 2, SamplingParams(max_new_tokens=4), seed=1)
    completions = [c for g in groups for c in g]
    batch = build_batch(completions, [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1], pad_id=0)
    batch.advantages = broadcast_advantages(torch.tensor([1.0, -1.0, 0.5, -0.5]), batch.loss_mask)
    return batch


def _settings(correction=None):
    return UpdateSettings(reduction="token_mean", minibatches=1, epochs=1, micro_batch_size=4,
                          max_grad_norm=1e9, temperature=1.0, norm_constant=4.0, skip_zero_advantage=False,
                          autocast_dtype=None, correction=correction)


def _grad_after(model, batch, settings):
    model = copy.deepcopy(model)
    grads = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: read the gradient, leave the weights
    original = opt.step

    def capture():
        for name, p in model.named_parameters():
            grads[name] = p.grad.clone()
        original()

    opt.step = capture
    out = ppo_update(model, opt, batch, grpo_loss, settings, torch.Generator().manual_seed(0))
    return grads, out


def test_unit_ratio_correction_leaves_the_update_bitwise_unchanged(tiny_policy):
    batch = _batch(tiny_policy)
    plain, _ = _grad_after(tiny_policy.model, batch, _settings())
    corrected, out = _grad_after(tiny_policy.model, batch, _settings(tis))
    # the trainer recomputes old logprobs; the sampler's differ a little, so force equality first
    assert out["is_ratio_mean"] > 0
    from credo.train.rl import recompute_old_logprobs, trainable_rows

    same = copy.copy(batch)
    same.sampler_logprobs = recompute_old_logprobs(tiny_policy.model, batch, trainable_rows(batch, False), _settings())
    a, _ = _grad_after(tiny_policy.model, same, _settings())
    b, out = _grad_after(tiny_policy.model, same, _settings(tis))
    assert out["is_ratio_min"] == 1.0 and out["is_ratio_max"] == 1.0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert plain.keys() == corrected.keys()


def test_dropped_tokens_leave_the_token_count(tiny_policy):
    """icepop dropping tokens == the plain loss on a batch whose mask lacks them, times k on the rest."""
    batch = _batch(tiny_policy)
    from credo.train.rl import recompute_old_logprobs, trainable_rows

    old = recompute_old_logprobs(tiny_policy.model, batch, trainable_rows(batch, False), _settings())
    # sampler logprobs: equal to the trainer's except one token made 10x less likely (k = 10: dropped)
    rows, cols = torch.nonzero(batch.loss_mask, as_tuple=True)
    shifted = copy.copy(batch)
    shifted.sampler_logprobs = old.clone()
    shifted.sampler_logprobs[rows[0], cols[0]] -= math.log(10.0)
    b, out = _grad_after(tiny_policy.model, shifted, _settings(icepop))
    assert out["is_masked_frac"] == pytest.approx(1 / int(batch.loss_mask.sum()))
    reference = copy.copy(batch)
    reference.loss_mask = batch.loss_mask.clone()
    reference.loss_mask[rows[0], cols[0]] = False
    reference.sampler_logprobs = old
    a, _ = _grad_after(tiny_policy.model, reference, _settings())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_registry_names_and_tiny_run(tmp_path, monkeypatch):
    assert {"tis", "seq_tis", "icepop", "seq_mis", "geo_mask", "token_mask"} <= set(IS_CORRECTIONS.names())
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    rl = tiny_run(tmp_path, "icepop", "--rl.is_correction", "icepop", "--rl.is_params", '{"low": 0.8, "high": 1.25}')
    assert all("is_ratio_mean" in r and 0 <= r["is_masked_frac"] <= 1 for r in rl)
