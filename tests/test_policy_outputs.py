"""Extra policy outputs are computed only for objectives that declare them, and are correct."""

import numpy as np
import pytest
import torch

from credo.batch import broadcast_advantages, build_batch
from credo.logprobs import policy_outputs
from credo.objectives.base import LossTerms, needs, needs_of, wants_outputs
from credo.objectives.grpo import grpo_loss
from credo.rollout import SamplingParams, TorchEngine
from credo.train.rl import UpdateSettings, bind_params, ppo_update

TOKENS = torch.tensor([[1, 50, 60, 70, 0], [1, 80, 90, 0, 0]])
ATTN = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
MASK = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)


def test_full_logprobs_entropy_and_hidden_states(tiny_policy):
    model = tiny_policy.model
    out = policy_outputs(model, TOKENS, ATTN, MASK, temperature=0.8,
                         needs=frozenset({"entropy", "full_logprobs", "hidden_states"}))
    # independent reference: the model's own forward, logits at t-1 score token t
    with torch.no_grad():
        logits = model(input_ids=TOKENS, attention_mask=ATTN.long()).logits.double().numpy() / 0.8
    for n, (b, t) in enumerate(MASK.nonzero().tolist()):
        row = logits[b, t - 1]
        logp = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert out.logprobs[b, t].item() == pytest.approx(logp[TOKENS[b, t]], abs=1e-4)
        assert out.full_logprobs[n].detach().double().numpy() == pytest.approx(logp, abs=1e-4)
        assert out.entropy[b, t].item() == pytest.approx(-(np.exp(logp) * logp).sum(), abs=1e-4)
    assert torch.all(out.logprobs[~MASK] == 0) and torch.all(out.entropy[~MASK] == 0)
    assert out.entropy.requires_grad and out.full_logprobs.requires_grad
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (2, 5, model.config.hidden_size)


def test_undeclared_outputs_are_not_computed(tiny_policy):
    out = policy_outputs(tiny_policy.model, TOKENS, ATTN, MASK)
    assert out.full_logprobs is None and out.hidden_states is None
    assert not out.entropy.requires_grad  # only a detached metric
    with pytest.raises(ValueError, match="unknown policy output"):
        policy_outputs(tiny_policy.model, TOKENS, ATTN, MASK, needs=frozenset({"values"}))


def test_needs_declaration_survives_binding():
    @needs("entropy")
    def entropy_bonus(logprobs, batch, *, outputs, coef: float = 0.1):
        return LossTerms(per_token=-coef * outputs.entropy)

    bound = bind_params(entropy_bonus, {"clip_high": 0.3}, {"coef": 0.5}, "objective")
    assert needs_of(bound) == frozenset({"entropy"}) and wants_outputs(bound)
    assert needs_of(bind_params(grpo_loss, {}, {}, "objective")) == frozenset()
    assert not wants_outputs(grpo_loss)
    with pytest.raises(ValueError, match="unknown need"):
        needs("logits")


def test_trainer_passes_declared_outputs_with_gradient(tiny_policy):
    seen = {}

    @needs("entropy", "full_logprobs")
    def spy(logprobs, batch, *, outputs):
        seen["full"] = outputs.full_logprobs.shape
        seen["grad"] = outputs.entropy.requires_grad
        return LossTerms(per_token=-outputs.entropy)  # maximise entropy: a differentiable need

    engine = TorchEngine(tiny_policy.model, tiny_policy.tokenizer)
    groups = engine.generate([[1, 50, 60]], 2, SamplingParams(max_new_tokens=3), seed=0)
    batch = build_batch([c for g in groups for c in g], [1.0, 0.0], [0, 0], pad_id=0)
    batch.advantages = broadcast_advantages(torch.tensor([1.0, -1.0]), batch.loss_mask)
    settings = UpdateSettings("token_mean", 1, 1, 8, 1.0, 1.0, 3.0, False, None)
    before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    optimizer = torch.optim.SGD(tiny_policy.model.parameters(), lr=1e-2)
    out = ppo_update(tiny_policy.model, optimizer, batch, spy, settings, torch.Generator().manual_seed(0))
    assert out["updates"] == 1
    assert seen["full"] == (int(batch.loss_mask.sum()), len(tiny_policy.tokenizer)) and seen["grad"]
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_policy.model.parameters()))
    with torch.no_grad():
        for p, b in zip(tiny_policy.model.parameters(), before):
            p.copy_(b)


def test_whole_groups_split_keeps_groups_together():
    from credo.train.rl import split_rows

    group_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    rows = torch.arange(12)
    parts = split_rows(rows, group_ids, 2, torch.Generator().manual_seed(0), whole_groups=True)
    assert sorted(torch.cat(parts).tolist()) == list(range(12))
    for part in parts:
        for g in torch.unique(group_ids[part]):
            assert int((group_ids[part] == g).sum()) == 3  # no group is cut in two
    loose = split_rows(rows, group_ids, 2, torch.Generator().manual_seed(0), whole_groups=False)
    assert [len(p) for p in loose] == [6, 6]


def test_micro_batches_never_split_a_group(tiny_policy):
    from credo.train.rl import micro_batches

    engine = TorchEngine(tiny_policy.model, tiny_policy.tokenizer)
    groups = engine.generate([[1, 5], [1, 6], [1, 7]], 3, SamplingParams(max_new_tokens=2), seed=0)
    batch = build_batch([c for g in groups for c in g], [0.0] * 9, [0, 0, 0, 1, 1, 1, 2, 2, 2], pad_id=0)
    assert [m.tolist() for m in micro_batches(batch, 4, True)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [m.tolist() for m in micro_batches(batch, 7, True)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8]]
    assert [m.tolist() for m in micro_batches(batch, 4, False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_ref_need_loads_a_reference_model(tmp_path):
    from credo.cli import main
    from credo.train.logging import read_metrics

    code = main(["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", "copg",
                 "--run.progress", "false", "--rl.objective", "copg", "--rl.steps", "1", "--model.threads", "1",
                 "--run.eval_base", "false", "--task.eval_size", "4", "--warmup.steps", "0"])
    assert code == 0
    rl = [r for r in read_metrics(tmp_path / "copg" / "metrics.jsonl") if r["phase"] == "rl"]
    assert rl[0].get("reference_is_behaviour", 0.0) == 0.0  # the real reference was used
