"""The CPU rollout engine on the tiny random model (fp32): determinism, logprobs, finishing."""

import pytest
import torch

from credo.batch import build_batch
from credo.logprobs import token_logprobs
from credo.rollout import SamplingParams, TorchEngine

PROMPTS = [[1, 520, 33, 981, 7], [1, 44, 90], [1, 300, 301, 302, 303, 304, 305]]  # mixed lengths


@pytest.fixture()
def engine(tiny_policy):
    return TorchEngine(tiny_policy.model, tiny_policy.tokenizer)


def _flat(groups):
    return [c for g in groups for c in g]


def test_same_seed_same_tokens_and_different_seed_differs(engine):
    sp = SamplingParams(temperature=1.0, max_new_tokens=6)
    a = _flat(engine.generate(PROMPTS, 3, sp, seed=11))
    b = _flat(engine.generate(PROMPTS, 3, sp, seed=11))
    c = _flat(engine.generate(PROMPTS, 3, sp, seed=12))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_group_layout_and_flags(engine):
    groups = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=4), seed=0)
    assert len(groups) == 3 and all(len(g) == 2 for g in groups)
    for prompt, group in zip(PROMPTS, groups):
        for c in group:
            assert c.prompt_ids == prompt
            assert len(c.token_ids) == len(c.logprobs) == len(c.trainable) == 4
            assert all(c.trainable) and c.finish_reason == "length"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_teacher_forced_forward(engine, tiny_policy, temperature):
    # Make a third of the vocabulary count as EOS so rows finish at different steps and the
    # engine's row dropping (cache.batch_select_indices) is exercised.
    engine.eos_ids = set(range(0, 16000))
    sp = SamplingParams(temperature=temperature, max_new_tokens=8)
    completions = _flat(engine.generate(PROMPTS, 4, sp, seed=3))
    lengths = {len(c.token_ids) for c in completions}
    assert len(lengths) > 1, "rows should finish at different steps"
    assert any(c.finish_reason == "stop" for c in completions)
    batch = build_batch(completions, [0.0] * len(completions), [0] * len(completions), pad_id=0)
    with torch.no_grad():
        forced = token_logprobs(
            tiny_policy.model, batch.tokens, batch.attention_mask, batch.loss_mask, temperature=temperature
        )
    diff = (forced - batch.sampler_logprobs)[batch.loss_mask].abs().max().item()
    assert diff < 1e-4


def test_top_k_one_equals_greedy(engine):
    greedy = _flat(engine.generate(PROMPTS, 1, SamplingParams(temperature=0.0, max_new_tokens=5), seed=0))
    topk = _flat(engine.generate(PROMPTS, 1, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=5), seed=99))
    assert [c.token_ids for c in greedy] == [c.token_ids for c in topk]


def test_top_p_tiny_keeps_only_the_argmax(engine):
    greedy = _flat(engine.generate(PROMPTS, 1, SamplingParams(temperature=0.0, max_new_tokens=5), seed=0))
    nucleus = _flat(engine.generate(PROMPTS, 1, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=5), seed=5))
    assert [c.token_ids for c in greedy] == [c.token_ids for c in nucleus]


def test_stop_string_ends_the_completion(engine, tiny_policy):
    sp = SamplingParams(temperature=1.0, max_new_tokens=8)
    first = engine.generate([PROMPTS[0]], 1, sp, seed=4)[0][0]
    decode = tiny_policy.tokenizer.decode
    # the shortest visible prefix of the sampled text becomes the stop string
    k = next(k for k in range(1, 9) if decode(first.token_ids[:k], skip_special_tokens=True).strip())
    stop_text = decode(first.token_ids[:k], skip_special_tokens=True).strip()
    # same seed and batch: the same tokens are drawn until the stop string appears
    stopped = engine.generate([PROMPTS[0]], 1, SamplingParams(temperature=1.0, max_new_tokens=8, stop=(stop_text,)), seed=4)[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == first.token_ids[:k]
    assert stop_text in stopped.text


def test_generate_leaves_training_mode_alone(engine, tiny_policy):
    tiny_policy.model.train()
    engine.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=2), seed=0)
    assert tiny_policy.model.training
