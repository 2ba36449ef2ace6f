"""DCPO, NLPO and BuPO against hand-computed numbers (NumPy references) and each paper's key property."""

import math

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.logprobs import PolicyOutputs, policy_outputs
from credo.objectives import reduce_loss
from credo.objectives.base import needs_of, wants_outputs
from credo.objectives.distribution import (
    bupo_loss,
    dcpo_loss,
    full_logprobs_at_mask,
    internal_layer_logprobs,
    nlpo_loss,
    tempered_logprob_ratio,
    top_p_action_mask,
    wire_internal_policy,
)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def make_batch(mask, tokens, adv, old, rewards=None):
    mask = torch.as_tensor(mask, dtype=torch.bool)
    B, T = mask.shape
    adv = torch.as_tensor(adv, dtype=torch.float32)
    if adv.dim() == 1:
        adv = adv[:, None].expand(B, T)
    return RolloutBatch(
        tokens=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=torch.as_tensor(old, dtype=torch.float32) * mask,
        advantages=adv * mask,
        rewards=torch.zeros(B) if rewards is None else torch.as_tensor(rewards, dtype=torch.float32),
        group_ids=torch.zeros(B, dtype=torch.long),
    )


def dist_setup(seed=0, B=4, T=3, V=5):
    """Random logits at the scored positions 1..T-1 of B rows; sampled ids; on-policy logprobs."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T), bool)
    mask[:, 1:] = True
    z = rng.normal(size=(int(mask.sum()), V)) * 2.0
    ids = rng.integers(0, V, size=int(mask.sum()))
    tokens = np.zeros((B, T), np.int64)
    tokens[mask] = ids
    lp = np_log_softmax(z)
    logp = np.zeros((B, T))
    logp[mask] = lp[np.arange(len(ids)), ids]
    return mask, tokens, z, ids, logp


# -- DCPO ------------------------------------------------------------------------------------------


def test_tempered_ratio_matches_numpy():
    _, _, z, ids, _ = dist_setup()
    full = torch.tensor(np_log_softmax(z), dtype=torch.float32)
    for T in (0.8, 1.2):
        want = np.exp(np_log_softmax(z / T)[np.arange(len(ids)), ids] - np_log_softmax(z)[np.arange(len(ids)), ids])
        assert tempered_logprob_ratio(full, torch.tensor(ids), T).tolist() == pytest.approx(want.tolist(), rel=1e-5)


@pytest.mark.parametrize("h, temp, alpha", [(0.3, 1.2, 1 / 6), (0.55, 0.8, 1 / 11)])
def test_dcpo_mixed_advantage_hand_computed(h, temp, alpha):
    mask, tokens, z, ids, logp = dist_setup()
    batch = make_batch(mask, tokens, [1.0, -1.0, 1.0, -1.0], logp, rewards=[1.0, 0.0, 1.0, 0.0])
    full = torch.tensor(np_log_softmax(z), dtype=torch.float32)
    lp = torch.tensor(logp, dtype=torch.float32, requires_grad=True)
    terms = dcpo_loss(lp, batch, outputs=PolicyOutputs(lp, torch.zeros_like(lp), full), entropy_estimate=h)
    # p = 0.5; alpha0 = min(|0.5 - H|, 0.1) / p; alpha = alpha0 / (alpha0 + 1)
    rho = np.zeros(mask.shape)
    rho[mask] = np.exp(np_log_softmax(z / temp)[np.arange(len(ids)), ids] - np_log_softmax(z)[np.arange(len(ids)), ids])
    b = np.array([1.0, 0.0, 1.0, 0.0])[:, None]
    A = np.array([1.0, -1.0, 1.0, -1.0])[:, None] * mask
    want = -((1 - alpha) * A + alpha * b * rho)  # on-policy: ratio 1, inside the clip
    assert terms.per_token[torch.tensor(mask)].tolist() == pytest.approx(want[mask].tolist(), rel=1e-5)
    assert terms.metrics["dcpo_alpha"].item() == pytest.approx(alpha)
    assert terms.metrics["dcpo_temperature"].item() == pytest.approx(temp)
    # incorrect responses keep only (1 - alpha) A
    assert terms.per_token[1, 1:].tolist() == pytest.approx([(1 - alpha)] * 2)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert lp.grad[torch.tensor(mask)].tolist() == pytest.approx(want[mask].tolist(), rel=1e-5)
    assert lp.grad[:, 0].abs().max() == 0  # masked position


def test_dcpo_entropy_proxy_and_no_success_guard():
    mask, tokens, z, ids, logp = dist_setup()
    full = torch.tensor(np_log_softmax(z), dtype=torch.float32)
    lp = torch.tensor(logp, dtype=torch.float32)
    out = PolicyOutputs(lp, torch.zeros_like(lp), full)
    batch = make_batch(mask, tokens, [1.0, -1.0, 1.0, -1.0], logp, rewards=[1.0, 0.0, 0.0, 0.0])
    terms = dcpo_loss(lp, batch, outputs=out)
    nll = -logp[mask].mean()
    assert terms.metrics["dcpo_entropy_estimate"].item() == pytest.approx(nll, rel=1e-5)
    assert terms.metrics["dcpo_temperature"].item() == pytest.approx(1.2 if nll <= 0.5 else 0.8)
    a0 = min(abs(0.5 - nll), 0.1) / 0.25
    assert terms.metrics["dcpo_alpha"].item() == pytest.approx(a0 / (a0 + 1), rel=1e-5)
    # no success at all (official code: division by zero): alpha = 0, plain GRPO
    batch = make_batch(mask, tokens, [1.0, -1.0, 1.0, -1.0], logp, rewards=[0.0, 0.0, 0.0, 0.0])
    terms = dcpo_loss(lp, batch, outputs=out)
    assert terms.metrics["dcpo_alpha"].item() == 0.0
    assert terms.per_token[torch.tensor(mask)].tolist() == pytest.approx((-batch.advantages)[batch.loss_mask].tolist())
    # an all-correct zero-advantage batch still gets the REINFORCE term alpha * rho
    batch = make_batch(mask, tokens, [0.0] * 4, logp, rewards=[1.0] * 4)
    terms = dcpo_loss(lp, batch, outputs=out, entropy_estimate=0.3)
    assert (terms.per_token[batch.loss_mask] < 0).all()


def test_full_logprobs_checks():
    mask = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    lp = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="needs"):
        full_logprobs_at_mask(PolicyOutputs(lp, lp), mask, "x")
    with pytest.raises(ValueError, match=r"N = 2"):
        full_logprobs_at_mask(PolicyOutputs(lp, lp, torch.zeros(3, 4)), mask, "x")
    assert needs_of(dcpo_loss) == {"full_logprobs", "whole_groups"} and wants_outputs(dcpo_loss)


# -- NLPO ------------------------------------------------------------------------------------------


def rl4lms_top_p(logits, p, min_keep):
    """The RL4LMs learned_top_p rule, written out in NumPy (causal-LM variant)."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, -1)
    cum = np.cumsum(np.exp(np_log_softmax(sorted_logits)), -1)
    remove = cum > p
    if min_keep > 1:
        remove[..., : min_keep - 1] = False
    remove[..., 1:] = remove[..., :-1].copy()
    remove[..., 0] = False
    keep = np.zeros_like(remove)
    np.put_along_axis(keep, order, ~remove, -1)
    return keep


def test_top_p_action_mask_hand_computed_and_reference():
    lp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_p_action_mask(lp, 0.7).tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    assert top_p_action_mask(lp, 0.85).tolist() == [[True, True, True, False]]
    assert top_p_action_mask(lp, 0.1).tolist() == [[True, False, False, False]]  # the top token always stays
    assert top_p_action_mask(lp, 0.1, min_tokens_to_keep=3).tolist() == [[True, True, True, False]]
    assert top_p_action_mask(lp, 0.1, keep_token_ids=[3]).tolist() == [[True, False, False, True]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        z = rng.normal(size=(3, 7)) * 2
        p, k = float(rng.uniform(0.05, 0.95)), int(rng.integers(1, 4))
        got = top_p_action_mask(torch.tensor(np_log_softmax(z)), p, min_tokens_to_keep=k).numpy()
        assert (got == rl4lms_top_p(z, p, k)).all()


def nlpo_setup(ids):
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0], [1.0, 2.0, 0.5, -1.0, -2.0]], requires_grad=True)
    full = torch.log_softmax(z, -1)
    mask = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    tokens = torch.tensor([[0] + ids])
    logp = torch.zeros(1, 3)
    logp[mask] = full.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
    batch = make_batch(mask, tokens, [[0.0, 1.0, -1.0]], logp.detach())
    return z, full, logp, batch


def test_nlpo_gradient_is_that_of_the_masked_policy():
    z, full, logp, batch = nlpo_setup([1, 0])
    terms = nlpo_loss(logp, batch, outputs=PolicyOutputs(logp, torch.zeros_like(logp), full),
                      top_p=0.7, min_tokens_to_keep=1)
    assert terms.per_token[0, 1:].tolist() == pytest.approx([-1.0, 1.0], rel=1e-6)  # ratio value 1
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    zn = z.detach().numpy()
    for row, (y, a) in enumerate([(1, 1.0), (0, -1.0)]):
        keep = rl4lms_top_p(zn[row : row + 1], 0.7, 1)[0]
        pm = np.where(keep, np.exp(zn[row]), 0.0)
        pm /= pm.sum()
        onehot = np.eye(5)[y]
        # loss -A r, r = exp(log pi_M(y) - const): d/dz = -A (onehot - pi_M) over the kept tokens, 0 outside
        assert z.grad[row].tolist() == pytest.approx((-a * (onehot - pm)).tolist(), abs=1e-6)
    assert terms.metrics["nlpo_outside_mask"].item() == 0.0


def test_nlpo_token_outside_the_mask_gets_no_loss_and_top_p_one_is_grpo():
    z, full, logp, batch = nlpo_setup([1, 4])  # token 4 of row 2 has p ~ 0.01: outside top-p 0.7
    terms = nlpo_loss(logp, batch, outputs=PolicyOutputs(logp, torch.zeros_like(logp), full),
                      top_p=0.7, min_tokens_to_keep=1)
    assert terms.per_token[0, 2].item() == 0.0
    assert terms.metrics["nlpo_outside_mask"].item() == pytest.approx(0.5)
    reduce_loss(terms.per_token, batch.loss_mask, "token_sum").backward()
    assert z.grad[1].abs().max().item() == 0.0 and z.grad[0].abs().max().item() > 0
    # top_p = 1: nothing masked, log Z = 0: the GRPO clipped loss (off-policy ratio 1.5 clipped at 1.2)
    z, full, logp, batch = nlpo_setup([1, 0])
    shifted = logp.detach().clone()
    shifted[0, 1] += math.log(1.5)
    terms = nlpo_loss(shifted, batch, outputs=PolicyOutputs(shifted, torch.zeros_like(shifted), full.detach()),
                      top_p=1.0)
    assert terms.per_token[0, 1:].tolist() == pytest.approx([-1.2, 1.0], rel=1e-5)


# -- BuPO ------------------------------------------------------------------------------------------


def test_internal_layer_logprobs_matches_numpy():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, 8, generator=g)
    head = torch.nn.Linear(8, 11, bias=False)
    norm = torch.nn.LayerNorm(8)
    tokens = torch.randint(0, 11, (2, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    lp, ent = internal_layer_logprobs(hidden, tokens, mask, lm_head=head, norm=norm, temperature=0.7)
    W = head.weight.detach().numpy()
    for b, t in mask.nonzero().tolist():
        h = hidden[b, t - 1].numpy()
        hn = (h - h.mean()) / np.sqrt(h.var() + 1e-5)  # LayerNorm, unit weight, zero bias
        row = np_log_softmax(W @ hn / 0.7)
        assert lp[b, t].item() == pytest.approx(row[tokens[b, t]], abs=1e-5)
        assert ent[b, t].item() == pytest.approx(-(np.exp(row) * row).sum(), abs=1e-5)
    assert lp[~mask].abs().max() == 0 and ent[~mask].abs().max() == 0
    # without a norm the head reads the raw residual stream
    lp2, _ = internal_layer_logprobs(hidden, tokens, mask, lm_head=head)
    row = np_log_softmax(W @ hidden[0, 0].numpy())
    assert lp2[0, 1].item() == pytest.approx(row[tokens[0, 1]], abs=1e-5)


TOKENS = torch.tensor([[1, 50, 60, 70, 0], [1, 80, 90, 0, 0]])
ATTN = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
MASK = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)


def tiny_batch(model):
    out = policy_outputs(model, TOKENS, ATTN, MASK, needs=frozenset({"hidden_states"}))
    batch = RolloutBatch(
        tokens=TOKENS, attention_mask=ATTN, loss_mask=MASK, sampler_logprobs=out.logprobs.detach(),
        advantages=torch.tensor([[1.0] * 5, [-1.0] * 5]) * MASK, rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
    )
    return out, batch


def test_bupo_updates_only_the_layers_up_to_l(tiny_policy):
    model = tiny_policy.model
    model.zero_grad(set_to_none=True)
    out, batch = tiny_batch(model)
    objective = wire_internal_policy(bupo_loss, model)
    assert needs_of(objective) == {"hidden_states"} and wants_outputs(objective)
    terms = objective(out.logprobs, batch, outputs=out, layer=1)
    assert terms.metrics["bupo_internal"].item() == 1.0
    reduce_loss(terms.per_token, batch.loss_mask, "token_mean").backward()
    layers = model.base_model.layers
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[0].parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in layers[1].parameters())
    assert model.base_model.norm.weight.grad is not None  # the final norm is applied to h_1
    model.zero_grad(set_to_none=True)
    # the released form (no final norm) leaves the final norm out of the graph
    out, batch = tiny_batch(model)
    terms = wire_internal_policy(bupo_loss, model, final_norm=False)(out.logprobs, batch, outputs=out, layer=1)
    reduce_loss(terms.per_token, batch.loss_mask, "token_mean").backward()
    assert model.base_model.norm.weight.grad is None
    model.zero_grad(set_to_none=True)


def test_bupo_last_layer_is_the_model_policy_and_checks(tiny_policy):
    model = tiny_policy.model
    out, batch = tiny_batch(model)
    objective = wire_internal_policy(bupo_loss, model)
    with torch.no_grad():
        # hidden_states[-1] is already normed by Hugging Face: layer L reproduces the model's own policy
        terms = objective(out.logprobs, batch, outputs=out, layer=2)
        assert abs(terms.metrics["internal_minus_final_logprob"].item()) < 1e-5
        terms = objective(out.logprobs, batch, outputs=out, layer=-1)
        assert abs(terms.metrics["internal_minus_final_logprob"].item()) < 1e-5
        with pytest.raises(ValueError, match="out of range"):
            objective(out.logprobs, batch, outputs=out, layer=3)
        with pytest.raises(ValueError, match="old_logprobs"):
            objective(out.logprobs, batch, outputs=out, old_logprobs="sampler")
        # old_logprobs="batch": the batch's behaviour logprobs are the denominator
        terms = objective(out.logprobs, batch, outputs=out, layer=1, old_logprobs="batch")
        assert terms.metrics["ratio_max"].item() != pytest.approx(1.0)


def test_bupo_unwired_warns_and_trains_the_final_policy_with_grpo():
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    old = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]])
    r = torch.tensor([[1.0, 1.5, 0.5], [1.0, 20.0, 1.0]])
    logp = old + torch.log(r)
    batch = make_batch(mask, torch.zeros(2, 3), [1.0, -1.0], old)
    with pytest.warns(RuntimeWarning, match="no lm_head"):
        terms = bupo_loss(logp, batch, outputs=PolicyOutputs(logp, torch.zeros_like(logp)))
    # A = +1: max(-r, -clip(r, 0.8, 1.2)); A = -1, r = 20: min(max(20, 1.2), 10) = 10 (dual clip)
    assert terms.per_token[0, 1:].tolist() == pytest.approx([-1.2, -0.5], rel=1e-5)
    assert terms.per_token[1, 1].item() == pytest.approx(10.0, rel=1e-5)
    assert terms.metrics["bupo_internal"].item() == 0.0


def test_bupo_switches_to_the_final_policy_after_iterative_steps(tiny_policy):
    """Phase 1 (internal layer) before step iterative_steps, phase 2 (final-policy GRPO, equal to
    ppo_clip_per_token on the final logprobs) from it on; the trainer binds rl_step (wants_step)."""
    from credo.objectives.base import wants_step
    from credo.objectives.grpo import grpo_loss, ppo_clip_per_token

    model = tiny_policy.model
    out, batch = tiny_batch(model)
    objective = wire_internal_policy(bupo_loss, model)
    assert wants_step(objective) and not wants_step(grpo_loss)
    with torch.no_grad():
        early = objective(out.logprobs, batch, outputs=out, layer=1, iterative_steps=2, rl_step=1)
        late = objective(out.logprobs, batch, outputs=out, layer=1, iterative_steps=2, rl_step=2)
        always = objective(out.logprobs, batch, outputs=out, layer=1, iterative_steps=None, rl_step=99)
    assert early.metrics["bupo_internal"].item() == 1.0 and always.metrics["bupo_internal"].item() == 1.0
    assert late.metrics["bupo_internal"].item() == 0.0
    plain = ppo_clip_per_token(out.logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
                               clip_low=0.2, clip_high=0.2, dual_clip=10.0)
    assert torch.equal(late.per_token, plain.per_token)
    # phase 1 moves only the layers up to l = 1; phase 2 moves the last layer too
    for step, last_layer_moves in ((1, False), (2, True)):
        model.zero_grad(set_to_none=True)
        out, batch = tiny_batch(model)
        terms = objective(out.logprobs, batch, outputs=out, layer=1, iterative_steps=2, rl_step=step)
        reduce_loss(terms.per_token, batch.loss_mask, "token_mean").backward()
        moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base_model.layers[1].parameters())
        assert moved == last_layer_moves
    model.zero_grad(set_to_none=True)


def test_the_trainer_runs_both_bupo_phases_in_one_run(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from credo.tasks import TASKS

    sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
    from fixture_tasks import ParityTask, tiny_run as run

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    rl = run(tmp_path, "bupo", "--rl.objective", "bupo", "--rl.objective_params",
             '{"iterative_steps": 1, "layer": 1}')
    assert [r["bupo_internal"] for r in rl] == [1.0, 0.0]
