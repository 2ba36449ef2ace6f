"""model.fp32_lm_head and model.gradient_checkpointing (credo/memory.py)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.memory import enable_gradient_checkpointing, keep_head_fp32
from credo.models import load_policy

sys.path.insert(0, str(Path(__file__).parent))
from fixture_tasks import ParityTask, tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", seed=0)


def test_the_fp32_head_gives_fp32_logits_under_bf16_autocast(tiny):
    model = copy.deepcopy(tiny.model)
    head = model.get_output_embeddings()
    hidden = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = head(hidden)
    assert plain.dtype == torch.bfloat16  # the default: the head runs in bf16 under autocast
    keys = sorted(model.state_dict())
    keep_head_fp32(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden)
    reference = torch.nn.functional.linear(hidden, head.weight)  # fp32, no autocast
    assert out.dtype == torch.float32 and torch.equal(out, reference)
    assert sorted(model.state_dict()) == keys  # checkpoints and weight tying unchanged
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    twin = copy.deepcopy(model)  # the reference model is a deep copy: it keeps the fp32 head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert twin.get_output_embeddings()(hidden).dtype == torch.float32


def test_the_fp32_head_changes_logprobs_only_by_bf16_rounding(tiny):
    model = copy.deepcopy(tiny.model).eval()
    tokens = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    score = torch.ones_like(tokens, dtype=torch.bool)
    score[:, 0] = False
    with torch.no_grad():
        exact = token_logprobs(model, tokens, mask, score)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logprobs(model, tokens, mask, score)
            keep_head_fp32(model)
            mixed = token_logprobs(model, tokens, mask, score)
    assert (mixed - exact).abs().max() <= (bf16 - exact).abs().max()


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    tokens = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(tokens)
    score = torch.ones_like(tokens, dtype=torch.bool)
    score[:, 0] = False
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny.model).train()
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert model.is_gradient_checkpointing
        token_logprobs(model, tokens, mask, score).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)


def test_an_unsupported_model_is_refused():
    with pytest.raises(CredoError, match="gradient_checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
    with pytest.raises(CredoError, match="fp32_lm_head"):
        keep_head_fp32(type("M", (), {"get_output_embeddings": lambda self: torch.nn.Identity()})())


def test_a_tiny_run_with_both_options(tmp_path, monkeypatch):
    from credo.tasks import TASKS

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    tiny_run(tmp_path, "mem", "--model.fp32_lm_head", "true", "--model.gradient_checkpointing", "true",
             "--model.precision", "bf16")
