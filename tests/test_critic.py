"""The value model of PPO's critic path: shift convention, no effect on the policy, learning, checkpoints."""

import copy

import pytest
import torch

from credo.batch import RolloutBatch
from credo.critic import (CriticSettings, ValueModel, compute_values, critic_optimizer, critic_update,
                          outcome_token_rewards)
from credo.train.checkpoint import load_into, save_checkpoint, verify


def small_batch(B=3, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 200, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.bool)
    attention[0, 7:] = False
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 4:] = True
    mask &= attention
    return RolloutBatch(tokens=tokens, attention_mask=attention, loss_mask=mask,
                        sampler_logprobs=torch.zeros(B, T), advantages=torch.zeros(B, T),
                        rewards=torch.tensor([1.0, 0.0, 1.0]), group_ids=torch.zeros(B, dtype=torch.long))


@pytest.mark.parametrize("kind", ["head", "model"])
def test_values_follow_the_shift_convention(tiny_policy, kind):
    critic = ValueModel(tiny_policy.model, kind=kind)
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    batch = small_batch()
    values = compute_values(critic, batch, micro_batch_size=2, autocast_dtype=None)
    assert values.shape == batch.tokens.shape and torch.all(values[:, 0] == 0)
    # V at t depends on tokens[:t] only: changing token t leaves values[:, :t + 1] unchanged
    changed = batch.tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 200
    other = compute_values(critic, RolloutBatch(**{**batch.__dict__, "tokens": changed}), 2, None)
    assert torch.allclose(values[:, :6], other[:, :6], atol=1e-5)
    assert not torch.allclose(values[1:, 6:], other[1:, 6:], atol=1e-6)
    assert torch.all(values[0, 7:] == 0)  # padding


def test_head_critic_never_moves_the_policy_and_learns(tiny_policy):
    policy = tiny_policy.model
    before = copy.deepcopy(policy.state_dict())
    critic = ValueModel(policy, kind="head")
    assert {n for n, _ in critic.named_parameters()} == {"head.weight", "head.bias"}
    opt = critic_optimizer(critic, lr=0.05)
    batch = small_batch()
    target = outcome_token_rewards(batch)  # returns with gamma = lam = 1 are R at every token: use R
    returns = batch.rewards[:, None].expand_as(target) * batch.loss_mask
    losses = []
    for step in range(30):
        batch.values = compute_values(critic, batch, 8, None)
        out = critic_update(critic, opt, batch, returns, CriticSettings(value_clip=None, micro_batch_size=2),
                            torch.Generator().manual_seed(step), None)
        losses.append(out["value_loss"])
    assert losses[-1] < 0.5 * losses[0]
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_outcome_token_rewards_on_last_loss_token():
    batch = small_batch()
    r = outcome_token_rewards(batch)
    assert r[0, 6] == 1.0 and r[1, 8] == 0.0 and r[2, 8] == 1.0 and float(r.abs().sum()) == 2.0


def test_critic_round_trips_through_a_checkpoint(tiny_policy, tmp_path):
    critic = ValueModel(tiny_policy.model, kind="head")
    opt = critic_optimizer(critic, lr=0.01)
    batch = small_batch()
    batch.values = compute_values(critic, batch, 8, None)
    critic_update(critic, opt, batch, torch.ones_like(batch.values), CriticSettings(), torch.Generator(), None)
    save_checkpoint(tmp_path / "ck", model=tiny_policy.model, tokenizer=tiny_policy.tokenizer,
                    critic=critic, critic_optimizer=opt, state={"stage": "rl"})
    fresh = ValueModel(tiny_policy.model, kind="head")
    fresh_opt = critic_optimizer(fresh, lr=0.01)
    load_into(verify(tmp_path / "ck"), model=tiny_policy.model, critic=fresh, critic_optimizer=fresh_opt)
    assert torch.equal(fresh.head.weight, critic.head.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
