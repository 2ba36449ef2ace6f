"""Functions that once only CreditBench or nobody called, now run in training: BNPO's decomposed
advantage (registered, fed by GDPO's components provider), A2TGPO's adaptive clip (the estimator's
clip-scale companion -> batch.clip_scale -> objective a2tgpo) and VPR's loss mask (the estimator's
loss-mask companion narrows batch.loss_mask)."""

import functools
import sys
from pathlib import Path

import pytest
import torch

from credo.batch import RolloutBatch
from credo.credit import CREDIT
from credo.credit.normalisation import bnpo_advantages
from credo.credit.providers import clip_scale_of, extras_provider_of, loss_mask_of
from credo.credit.turns import a2tgpo_clip_scale, vpr_train_mask
from credo.objectives import OBJECTIVES
from credo.train.rl import credit_companions

sys.path.insert(0, str(Path(__file__).parent))
from test_credit_turns import make_inputs, sibling_case  # noqa: E402


def test_bnpo_decomposed_is_the_mean_of_per_component_bnpo():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    correct = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    formatted = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    mask = torch.tensor([[True, True, False]] * 6)
    from credo.credit.base import CreditInputs

    inputs = CreditInputs(rewards=correct, group_ids=groups, loss_mask=mask,
                          extras={"reward_components": torch.stack([correct, formatted], 1)})
    got = CREDIT.get("bnpo_decomposed")(inputs)
    expected = (bnpo_advantages(correct, groups) + bnpo_advantages(formatted, groups)) / 2
    assert torch.allclose(got[:, 0], expected) and torch.allclose(got[:, 1], expected)
    assert (got[:, 2] == 0).all()
    # its components are GDPO's (the task's correct, formatted)
    from credo.credit.normalisation import bnpo_reward_components

    assert extras_provider_of(CREDIT.get("bnpo_decomposed")) is bnpo_reward_components


def _batch(inputs):
    B, T = inputs.loss_mask.shape
    z = torch.zeros(B, T)
    return RolloutBatch(tokens=torch.zeros(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.bool),
                        loss_mask=inputs.loss_mask.clone(), sampler_logprobs=z, advantages=torch.ones(B, T) * inputs.loss_mask,
                        rewards=inputs.rewards, group_ids=inputs.group_ids)


def test_a2tgpo_companion_fills_the_clip_scale_with_the_bound_parameters():
    inputs = make_inputs([[2, 1], [1, 2], [2]], groups=[0, 0, 0], rewards=[1.0, 0.0, 1.0],
                         step_rewards=[[0.3, 0.1], [0.0, 0.4], [0.9]])
    credit = functools.partial(CREDIT.get("a2tgpo"), spread=0.3, temperature=2.0)
    assert clip_scale_of(credit) is a2tgpo_clip_scale
    batch = _batch(inputs)
    metrics = credit_companions(credit, inputs, batch)
    expected = a2tgpo_clip_scale(inputs, spread=0.3, temperature=2.0)
    assert torch.equal(batch.clip_scale, expected)
    on = inputs.loss_mask
    assert metrics["clip_scale_mean"] == pytest.approx(float(expected[on].mean()))
    assert float(expected[on].min()) < 1.0 < float(expected[on].max()) and float(expected[on].max()) < 1.3


def test_a2tgpo_objective_clips_each_token_at_its_own_range():
    B, T = 1, 4  # position 0 is the prompt (no logprob)
    adv = torch.tensor([[0.0, 1.0, 1.0, -1.0]])
    logp = torch.log(torch.tensor([[1.0, 1.5, 1.5, 0.5]]))  # ratios 1.5, 1.5, 0.5 against old logprobs 0
    batch = RolloutBatch(tokens=torch.zeros(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.bool),
                         loss_mask=torch.tensor([[False, True, True, True]]), sampler_logprobs=torch.zeros(B, T),
                         advantages=adv, rewards=torch.ones(B), group_ids=torch.zeros(B, dtype=torch.long),
                         clip_scale=torch.tensor([[1.0, 1.0, 2.0, 1.5]]))
    terms = OBJECTIVES.get("a2tgpo")(logp, batch, clip_low=0.2, clip_high=0.2)
    # token 1: clip at 1.2 -> -1.2; token 2: range 0.4 -> clip at 1.4 -> -1.4; token 3 (A < 0): max(0.5, clip 0.7) -> 0.7
    assert terms.per_token[0, 1:].tolist() == pytest.approx([-1.2, -1.4, 0.7], abs=1e-6)
    batch.clip_scale = torch.ones(B, T)
    same = OBJECTIVES.get("grpo")(logp, batch)
    assert torch.allclose(OBJECTIVES.get("a2tgpo")(logp, batch).per_token, same.per_token)
    batch.clip_scale = None
    with pytest.raises(ValueError, match="needs rl.credit a2tgpo"):
        OBJECTIVES.get("a2tgpo")(logp, batch)


def test_vpr_companion_narrows_the_loss_mask_to_informative_states():
    inputs = sibling_case()
    assert loss_mask_of(CREDIT.get("vpr")) is vpr_train_mask
    batch = _batch(inputs)
    metrics = credit_companions(CREDIT.get("vpr"), inputs, batch)
    keep = vpr_train_mask(inputs)
    assert torch.equal(batch.loss_mask, inputs.loss_mask & keep)
    assert (batch.advantages[~batch.loss_mask] == 0).all()
    assert metrics["credit_masked_tokens"] == float((inputs.loss_mask & ~keep).sum()) > 0


def test_recipe_and_pairing_give_a2tgpo_its_estimator():
    from credo.recipes import pairing_for, recipe_overrides

    assert pairing_for("a2tgpo") == {"rl.credit": "a2tgpo", "rl.loss_reduction": "token_mean"}
    assert recipe_overrides("a2tgpo")["rl.objective"] == "a2tgpo"
