"""Batch construction: alignment (shift convention), masks from trainable flags, validation."""

import math

import pytest
import torch

from credo.batch import RolloutBatch, broadcast_advantages, build_batch
from credo.rollout.base import Completion

PAD = 2  # as SmolLM2: pad == eos


def _c(prompt, tokens, logprobs, trainable=None, finish="stop"):
    return Completion(prompt, tokens, logprobs, trainable or [True] * len(tokens), finish, "")


def test_alignment_and_masks():
    # completion 0 ends with EOS (= PAD id 2), which must stay trainable
    c0 = _c([10, 11], [5, PAD], [-0.1, -0.2])
    c1 = _c([12], [7, 8, 9], [-0.3, -0.4, -0.5], trainable=[True, False, True])
    b = build_batch([c0, c1], [1.0, 0.0], [0, 0], pad_id=PAD)
    assert b.tokens.tolist() == [[10, 11, 5, PAD], [12, 7, 8, 9]]
    assert b.attention_mask.tolist() == [[True] * 4, [True] * 4]
    assert b.loss_mask.tolist() == [[False, False, True, True], [False, True, False, True]]
    # logprob of token t sits at position t
    expected = torch.tensor([[0, 0, -0.1, -0.2], [0, -0.3, 0, -0.5]])
    assert torch.allclose(b.sampler_logprobs, expected)
    assert b.rewards.tolist() == [1.0, 0.0]


def test_padding_is_never_in_the_loss_even_when_pad_equals_eos():
    b = build_batch([_c([1, 2, 3], [PAD], [-0.5]), _c([1], [4, 5, 6, 7], [-1.0] * 4)], [0, 1], [0, 0], pad_id=PAD)
    assert b.tokens[0].tolist() == [1, 2, 3, PAD, PAD]
    assert b.loss_mask[0].tolist() == [False, False, False, True, False]
    assert b.attention_mask[0].tolist() == [True, True, True, True, False]


def test_non_finite_sampler_logprob_is_masked():
    b = build_batch([_c([1], [4, 5], [-math.inf, float("nan")]), _c([1], [4, 5], [-1.0, -1.0])], [0, 1], [0, 0], pad_id=0)
    assert b.loss_mask[0].tolist() == [False, False, False]
    assert b.sampler_logprobs[0].tolist() == [0.0, 0.0, 0.0]


def test_empty_completion_has_no_loss_tokens():
    b = build_batch([_c([1, 2], [], []), _c([1], [4], [-1.0])], [0, 1], [0, 0], pad_id=0)
    assert not b.loss_mask[0].any()


def test_broadcast_advantages():
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert broadcast_advantages(torch.tensor([2.0, -1.0]), mask).tolist() == [[0, 2, 2], [0, 0, -1]]


def test_validation_names_the_field_and_shapes():
    b = build_batch([_c([1], [4, 5], [-1.0, -1.0])], [1.0], [0], pad_id=0)
    with pytest.raises(ValueError, match=r"advantages has shape \(1, 2\), expected \(1, 3\)"):
        RolloutBatch(b.tokens, b.attention_mask, b.loss_mask, b.sampler_logprobs, torch.zeros(1, 2), b.rewards, b.group_ids)
    with pytest.raises(ValueError, match="group_ids must be torch.int64"):
        RolloutBatch(b.tokens, b.attention_mask, b.loss_mask, b.sampler_logprobs, b.advantages, b.rewards, b.group_ids.float())
    bad_mask = b.loss_mask.clone()
    bad_mask[0, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        RolloutBatch(b.tokens, b.attention_mask, bad_mask, b.sampler_logprobs, b.advantages, b.rewards, b.group_ids)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 tokens, 1 logprobs"):
        build_batch([_c([1], [4, 5], [-1.0], trainable=[True, True])], [1.0], [0], pad_id=0)
    with pytest.raises(ValueError, match="1 completions, 2 rewards"):
        build_batch([_c([1], [4], [-1.0])], [1.0, 0.0], [0], pad_id=0)


def test_select_trims_to_longest_row_and_keeps_alignment():
    b = build_batch([_c([1], [4], [-1.0]), _c([1, 2, 3], [4, 5], [-1.0, -2.0])], [0, 1], [3, 3], pad_id=0)
    sub = b.select([0])
    assert sub.tokens.tolist() == [[1, 4]]
    assert sub.loss_mask.tolist() == [[False, True]]
    assert sub.group_ids.tolist() == [3]
    assert b.behaviour_logprobs is b.sampler_logprobs
