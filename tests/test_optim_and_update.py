"""Learning-rate schedule values, parameter binding, and the PPO update on the tiny model."""

import math

import pytest
import torch

from credo.batch import broadcast_advantages, build_batch
from credo.errors import CredoError
from credo.objectives.grpo import grpo_loss
from credo.rollout import SamplingParams, TorchEngine
from credo.train.optim import lr_at
from credo.train.rl import UpdateSettings, bind_params, ppo_update, trainable_rows


def test_lr_schedule_values():
    kw = dict(peak=1.0, warmup=2, min_ratio=0.1)
    assert [lr_at(s, 10, decay="constant", **kw) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    # cosine from step 2 (progress 0) to step 9 (progress 1)
    assert lr_at(2, 10, decay="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(9, 10, decay="cosine", **kw) == pytest.approx(0.1)
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3.5 / 7))
    assert lr_at(5.5, 10, decay="cosine", **kw) == pytest.approx(mid)
    assert lr_at(9, 10, decay="linear", **kw) == pytest.approx(0.1)
    with pytest.raises(CredoError, match="cosine"):
        lr_at(0, 10, decay="exp", **kw)


def test_bind_params_checks_names():
    fn = bind_params(grpo_loss, {"clip_high": 0.28, "unrelated": 1}, {"clip_low": 0.1}, "objective")
    assert fn.keywords == {"clip_high": 0.28, "clip_low": 0.1}
    with pytest.raises(CredoError, match="no parameter"):
        bind_params(grpo_loss, {}, {"clip_hihg": 0.3}, "objective")


def _rollout_batch(policy, rewards):
    engine = TorchEngine(policy.model, policy.tokenizer)
    groups = engine.generate([[1, 50, 60], [1, 70]], 2, SamplingParams(max_new_tokens=4), seed=1)
    completions = [c for g in groups for c in g]
    batch = build_batch(completions, rewards, [0, 0, 1, 1], pad_id=0)
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0])  # group 1 has zero advantage
    batch.advantages = broadcast_advantages(adv, batch.loss_mask)
    return batch


def _settings(**kw):
    base = dict(reduction="token_mean", minibatches=2, epochs=1, micro_batch_size=1, max_grad_norm=1.0,
                temperature=1.0, norm_constant=4.0, skip_zero_advantage=True, autocast_dtype=None)
    base.update(kw)
    return UpdateSettings(**base)


def test_trainable_rows_skip_zero_advantage(tiny_policy):
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 1.0])
    assert trainable_rows(batch, True).tolist() == [0, 1]
    assert trainable_rows(batch, False).tolist() == [0, 1, 2, 3]


def test_update_takes_minibatch_steps_and_changes_weights(tiny_policy):
    model = tiny_policy.model
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 1.0])
    out = ppo_update(model, optimizer, batch, grpo_loss, _settings(), torch.Generator().manual_seed(0))
    assert out["updates"] == 2 and out["skipped_updates"] == 0 and out["trained_sequences"] == 2
    assert math.isfinite(out["loss"]) and out["clip_fraction"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with torch.no_grad():  # restore the shared fixture
        for p, b in zip(model.parameters(), before):
            p.copy_(b)


def test_micro_batch_size_does_not_change_the_gradient(tiny_policy):
    """token_mean with the minibatch's global count: one micro-batch or four give the same step."""
    model = tiny_policy.model
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 0.0])
    batch.advantages = broadcast_advantages(torch.tensor([1.0, -1.0, 0.5, -0.5]), batch.loss_mask)
    grads = []
    for micro in (4, 1):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep weights, read the grads
        captured = {}

        def capture(opt, args, kwargs):
            captured["g"] = [p.grad.clone() for p in model.parameters() if p.grad is not None]

        handle = optimizer.register_step_pre_hook(capture)
        ppo_update(model, optimizer, batch, grpo_loss,
                   _settings(minibatches=1, micro_batch_size=micro, max_grad_norm=1e9, skip_zero_advantage=False),
                   torch.Generator().manual_seed(0))
        handle.remove()
        grads.append(captured["g"])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_non_finite_gradient_skips_the_optimizer(tiny_policy):
    model = tiny_policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 1.0])
    batch.advantages = batch.advantages * float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    out = ppo_update(model, optimizer, batch, grpo_loss, _settings(skip_zero_advantage=False),
                     torch.Generator().manual_seed(0))
    assert out["updates"] == 0 and out["skipped_updates"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not optimizer.state  # AdamW moments untouched


def test_entropy_bonus_composes_with_any_objective(tiny_policy):
    """With zero advantages GRPO gives no gradient; the entropy bonus alone still moves the weights."""
    model = tiny_policy.model
    batch = _rollout_batch(tiny_policy, [0.0, 0.0, 0.0, 0.0])
    batch.advantages = torch.zeros_like(batch.advantages)
    before = [p.detach().clone() for p in model.parameters()]
    for coef, should_move in ((0.0, False), (0.1, True)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        out = ppo_update(model, optimizer, batch, grpo_loss,
                         _settings(skip_zero_advantage=False, entropy_coef=coef), torch.Generator().manual_seed(0))
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert moved == should_move and out["updates"] == 2
        if coef:  # the logged loss is -coef * mean entropy (the surrogate is 0 at A = 0)
            assert out["loss"] < 0
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
