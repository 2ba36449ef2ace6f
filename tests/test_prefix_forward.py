"""The fast paths of the trainer's forward give the reference values (fp32, tiny model):
shared-prompt forward (credo/prefix_forward.py), chunked output head (credo/chunked_head.py), the fused
old-logprob pass of a single on-policy update (train/rl.py), and the inverse-CDF sampler."""

import numpy as np
import pytest
import torch

from credo.batch import build_batch
from credo.chunked_head import chunked_logprobs
from credo.logprobs import policy_outputs
from credo.objectives.grpo import grpo_loss
from credo.prefix_forward import shared_prefix_hidden
from credo.rollout import SamplingParams, TorchEngine
from credo.rollout.base import Completion
from credo.rollout.torch_engine import inverse_cdf_sample
from credo.train.rl import UpdateSettings, ppo_update, single_on_policy_pass


def rollout_batch(policy, lengths=(7, 9, 7), n=3, max_new=6, seed=0):
    """Groups of n sampled completions of prompts of the given lengths (random ids), plus one row whose
    prompt differs from its group's in the middle and one with a non-trainable hole in its completion."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 2000, (k,), generator=gen).tolist() for k in lengths]
    engine = TorchEngine(policy.model, policy.tokenizer)
    groups = engine.generate(prompts, n, SamplingParams(temperature=1.0, max_new_tokens=max_new, stop=()), seed=seed)
    comps = [c for g in groups for c in g]
    ids = [i for i, g in enumerate(groups) for _ in g]
    odd = list(prompts[0])
    odd[3] = odd[3] + 1
    comps.append(Completion(prompt_ids=odd, token_ids=[11, 12, 13], logprobs=[-1.0] * 3, trainable=[True] * 3,
                            finish_reason="stop", text=""))
    ids.append(0)  # claims group 0 but its prompt differs: must be its own group
    comps.append(Completion(prompt_ids=prompts[1], token_ids=[21, 22, 23, 24], logprobs=[-1.0] * 4,
                            trainable=[True, False, True, True], finish_reason="stop", text=""))
    ids.append(1)
    return build_batch(comps, [float(i % 2) for i in range(len(comps))], ids, pad_id=0)


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("needs", [frozenset(), frozenset({"entropy"}), frozenset({"entropy", "full_logprobs"})])
def test_shared_prefix_and_chunked_head_equal_reference(tiny_policy, needs):
    model, batch = tiny_policy.model, rollout_batch(tiny_policy)
    args = (model, batch.tokens, batch.attention_mask, batch.loss_mask)

    def loss(out):
        total = out.logprobs.sum() + 0.3 * out.entropy.sum()
        return total + (0.01 * out.full_logprobs[:, :40].sum() if out.full_logprobs is not None else 0.0)

    ref = {}
    grad_ref = grads_of(model, lambda: loss(ref.setdefault("o", policy_outputs(
        *args, temperature=0.8, needs=needs, chunked_head=False))))
    fast = {}
    grad_fast = grads_of(model, lambda: loss(fast.setdefault("o", policy_outputs(
        *args, temperature=0.8, needs=needs, group_ids=batch.group_ids, chunked_head=True))))
    a, b = ref["o"], fast["o"]
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    assert torch.allclose(a.entropy, b.entropy, atol=1e-5, rtol=0)
    assert torch.all(b.logprobs[~batch.loss_mask] == 0)
    if "full_logprobs" in needs:
        assert torch.allclose(a.full_logprobs, b.full_logprobs, atol=1e-5, rtol=0)
    assert b.entropy.requires_grad == ("entropy" in needs)
    assert torch.allclose(grad_ref, grad_fast, atol=1e-5, rtol=1e-5)
    assert grad_ref.abs().max() > 1e-3  # (a real gradient was compared)


def test_prefix_plan_shares_the_prompt_once_per_group(tiny_policy):
    batch = rollout_batch(tiny_policy)
    model = tiny_policy.model
    calls = []
    hook = model.base_model.register_forward_hook(lambda m, a, k, out: calls.append(k["input_ids"].shape),
                                                  with_kwargs=True)
    try:
        hidden, targets = shared_prefix_hidden(model, batch.tokens, batch.attention_mask, batch.loss_mask, batch.group_ids)
    finally:
        hook.remove()
    # 3 groups + the odd row = 4 prefixes (longest prompt 9), then every row's completion part
    assert calls[0] == (4, 9) and calls[1][0] == len(batch)
    assert calls[1][1] == int((batch.attention_mask.sum(-1) - torch.tensor([7, 7, 7, 9, 9, 9, 7, 7, 7, 7, 9])).max())
    assert hidden.shape == (int(batch.loss_mask.sum()), model.config.hidden_size)
    assert torch.equal(targets, batch.tokens[:, 1:][batch.loss_mask[:, 1:]])


def test_non_contiguous_mask_falls_back(tiny_policy):
    batch = rollout_batch(tiny_policy)
    mask = batch.attention_mask.clone()
    mask[0, 2] = False
    assert shared_prefix_hidden(tiny_policy.model, batch.tokens, mask, batch.loss_mask, batch.group_ids) is None


@pytest.mark.parametrize("temperature,chunk", [(1.0, 4), (0.7, 3), (1.3, 1000)])
def test_chunked_head_against_float64_formula(temperature, chunk):
    torch.manual_seed(0)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(8, 50, bias=False)
            self.config = type("Config", (), {})()

        def get_output_embeddings(self):
            return self.lm_head

    model = Head()
    with torch.no_grad():
        model.lm_head.weight.mul_(6)
    hidden = torch.randn(10, 8, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    g_p, g_h = torch.randn(10), torch.randn(10)
    logprobs, entropy = chunked_logprobs(model, hidden, targets, temperature=temperature, chunk=chunk)
    (logprobs * g_p + entropy * g_h).sum().backward()
    h64 = hidden.detach().double().requires_grad_()
    w64 = model.lm_head.weight.detach().double().requires_grad_()
    logp = torch.log_softmax(h64 @ w64.t() / temperature, -1)
    lp64, ent64 = logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    (lp64 * g_p.double() + ent64 * g_h.double()).sum().backward()
    assert np.allclose(logprobs.detach().numpy(), lp64.detach().numpy(), atol=1e-5)
    assert np.allclose(entropy.detach().numpy(), ent64.detach().numpy(), atol=1e-5)
    assert np.allclose(hidden.grad.numpy(), h64.grad.numpy(), atol=1e-5)
    assert np.allclose(model.lm_head.weight.grad.numpy(), w64.grad.numpy(), atol=1e-5)


def settings(**kw):
    base = dict(reduction="token_mean", minibatches=1, epochs=1, micro_batch_size=64, max_grad_norm=1e9,
                temperature=1.0, norm_constant=8.0, skip_zero_advantage=False, autocast_dtype=None)
    return UpdateSettings(**{**base, **kw})


def test_single_on_policy_update_skips_the_recompute_and_matches_it(tiny_policy):
    import copy

    batch = rollout_batch(tiny_policy)
    batch.advantages = torch.where(batch.loss_mask, torch.linspace(-1, 1, len(batch))[:, None], 0.0)
    assert single_on_policy_pass(batch, settings(), None)
    assert not single_on_policy_pass(batch, settings(minibatches=2), None)
    assert not single_on_policy_pass(batch, settings(epochs=2), None)
    results = []
    for fused in (True, False):
        model = copy.deepcopy(tiny_policy.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        b = copy.copy(batch)
        if not fused:  # the reference: the recompute forward, as with several minibatches
            from credo.train.rl import recompute_old_logprobs

            b.old_logprobs = recompute_old_logprobs(model, b, torch.arange(len(b)), settings(shared_prefix=False))
        calls = []
        hook = model.base_model.register_forward_hook(lambda *a: calls.append(1))
        metrics = ppo_update(model, optimizer, b, grpo_loss, settings(shared_prefix=fused),
                             torch.Generator().manual_seed(0))
        hook.remove()
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]), metrics, len(calls)))
    (fast, m_fast, calls_fast), (ref, m_ref, calls_ref) = results
    before = torch.cat([p.detach().flatten() for p in tiny_policy.model.parameters()])
    assert (ref - before).abs().max() > 1e-4  # the step moved the weights
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    assert m_fast["clip_fraction"] == m_ref["clip_fraction"] == 0.0
    assert calls_fast == 2 and calls_ref == 1  # prefix + suffix forwards, no recompute forward


def test_inverse_cdf_sample_matches_numpy_and_the_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    tokens = inverse_cdf_sample(probs, torch.Generator().manual_seed(5))
    u = torch.rand((3, 1), generator=torch.Generator().manual_seed(5)).numpy()[:, 0]
    cdf = np.cumsum(probs.numpy(), -1)
    expected = [int(np.searchsorted(cdf[i], u[i] * cdf[i, -1], side="right")) for i in range(3)]
    assert tokens.tolist() == expected
    many = inverse_cdf_sample(probs[:1].expand(20000, 4), torch.Generator().manual_seed(1))
    freq = torch.bincount(many, minlength=4).float() / 20000
    assert freq[1] == 0 and torch.allclose(freq, probs[0], atol=0.015)


def test_engine_same_seed_same_tokens(tiny_policy):
    engine = TorchEngine(tiny_policy.model, tiny_policy.tokenizer)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, stop=())
    a = engine.generate([[5, 6, 7], [8, 9]], 4, sampling, seed=3)
    b = engine.generate([[5, 6, 7], [8, 9]], 4, sampling, seed=3)
    assert [c.token_ids for g in a for c in g] == [c.token_ids for g in b for c in g]
    assert len({tuple(c.token_ids) for g in a for c in g}) > 1
