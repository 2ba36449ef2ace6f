"""PPO actor loss with dual clip, and the critic's clipped value loss: hand-computed values."""

import pytest
import torch

from credo.batch import RolloutBatch
from credo.objectives import OBJECTIVES
from credo.objectives.ppo import clipped_value_loss


def batch_of(adv, old):
    B, T = adv.shape
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    return RolloutBatch(tokens=torch.zeros(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.bool),
                        loss_mask=mask, sampler_logprobs=old, advantages=adv, rewards=torch.zeros(B),
                        group_ids=torch.arange(B))


def test_ppo_dual_clip_hand_values():
    # ratio 5 on every scored token (log 5 over old = 0)
    adv = torch.tensor([[0.0, -1.0, 1.0, -2.0, 0.5]])
    old = torch.zeros(1, 5)
    logp = torch.full((1, 5), float(torch.log(torch.tensor(5.0))))
    out = OBJECTIVES.get("ppo")(logp, batch_of(adv, old)).per_token
    # A=-1: max(5, 1.2) = 5, dual clip min(5, 3*1) = 3;  A=+1: max(-5, -1.2) = -1.2
    # A=-2: max(10, 2.4) = 10 -> min(10, 6) = 6;  A=0.5: max(-2.5, -0.6) = -0.6
    assert out[0, 1:].tolist() == pytest.approx([3.0, -1.2, 6.0, -0.6], abs=1e-5)
    off = OBJECTIVES.get("ppo")(logp, batch_of(adv, old), dual_clip=None).per_token
    assert off[0, 1:].tolist() == pytest.approx([5.0, -1.2, 10.0, -0.6], abs=1e-5)


def test_ppo_at_ratio_one_is_policy_gradient():
    adv = torch.randn(3, 6)
    logp = torch.randn(3, 6, requires_grad=True)
    out = OBJECTIVES.get("ppo")(logp, batch_of(adv, logp.detach().clone())).per_token
    out.sum().backward()
    assert torch.allclose(logp.grad, -adv, atol=1e-6)  # d(-A r)/d logp = -A r = -A at r = 1


def test_ppo_rejects_dual_clip_at_most_one():
    with pytest.raises(ValueError, match="dual_clip"):
        OBJECTIVES.get("ppo")(torch.zeros(1, 3), batch_of(torch.zeros(1, 3), torch.zeros(1, 3)), dual_clip=1.0)


def test_clipped_value_loss_hand_values():
    values = torch.tensor([[1.0, 0.2, -1.0, 3.0]])
    old = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    returns = torch.tensor([[0.0, 1.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    out = clipped_value_loss(values, old, returns, mask, value_clip=0.5)
    # (1-0)^2=1 vs clip->0.5: 0.25 -> 0.5*1;  0.64 both -> 0.32;  4 vs clip->-0.5: 2.25 -> 0.5*4;  masked -> 0
    assert out[0].tolist() == pytest.approx([0.5, 0.32, 2.0, 0.0])
    plain = clipped_value_loss(values, old, returns, mask, value_clip=None)
    assert plain[0].tolist() == pytest.approx([0.5, 0.32, 2.0, 0.0])
    # clipping binds when the new value moves away from the return past eps: V 1.0 -> clip 0.5, Ret -1
    tight = clipped_value_loss(torch.tensor([[-0.2]]), torch.tensor([[1.0]]), torch.tensor([[-1.0]]),
                               torch.tensor([[True]]), value_clip=0.5)
    # unclipped (0.8)^2 = 0.64; clipped V = 0.5 -> (1.5)^2 = 2.25; max -> 0.5 * 2.25
    assert tight.item() == pytest.approx(1.125)
