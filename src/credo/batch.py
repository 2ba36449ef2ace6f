"""The one typed batch every objective and estimator reads.

Shift convention (the only place it is defined): every [B, T] tensor is aligned with `tokens`.
`logprobs[b, t]` is log p(tokens[b, t] | tokens[b, :t]), computed from the logits at position t - 1.
Position 0 therefore has no logprob and is never in the loss mask.

Rows are right-padded: prompt tokens, then completion tokens, then padding. The loss mask is True
exactly on policy-sampled completion tokens (the engine's trainable flags) whose sampler logprob is
finite; it is never derived from the pad token (for SmolLM2 pad == EOS, and EOS is a sampled token
that must be trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from credo.rollout.base import Completion


@dataclass
class RolloutBatch:
    """tokens [B, T] long; attention_mask [B, T] bool (True on real tokens);
    loss_mask [B, T] bool; sampler_logprobs [B, T] float (0 off the mask);
    advantages [B, T] float (token-level; sequence-level advantages are broadcast once);
    rewards [B] float; group_ids [B] long (samples of the same prompt share an id);
    ref_logprobs [B, T] | None; old_logprobs [B, T] | None (behaviour-policy logprobs recomputed by
    the trainer; when None the sampler's are used); values [B, T] | None;
    turn_ids / segment_ids [B, T] long | None (multi-turn and segment credit);
    is_weights [B, T] float | None (importance-sampling correction weights, detached, multiplied
    into the per-token loss; objectives/is_correction.py);
    clip_scale [B, T] float | None (a per-token multiplier of the clip range that the credit estimator
    made, A2TGPO's adaptive turn-level clipping; objectives/turn_clip.py)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    sampler_logprobs: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    ref_logprobs: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    turn_ids: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None
    clip_scale: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"RolloutBatch.tokens must be [B, T], got shape {tuple(self.tokens.shape)}")
        B, T = self.tokens.shape
        expected = {
            "attention_mask": ((B, T), torch.bool),
            "loss_mask": ((B, T), torch.bool),
            "sampler_logprobs": ((B, T), None),
            "advantages": ((B, T), None),
            "rewards": ((B,), None),
            "group_ids": ((B,), torch.long),
            "ref_logprobs": ((B, T), None),
            "old_logprobs": ((B, T), None),
            "values": ((B, T), None),
            "turn_ids": ((B, T), torch.long),
            "segment_ids": ((B, T), torch.long),
            "is_weights": ((B, T), None),
            "clip_scale": ((B, T), None),
        }
        if self.tokens.dtype != torch.long:
            raise ValueError(f"RolloutBatch.tokens must be torch.long, got {self.tokens.dtype}")
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if value is None:
                continue
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"RolloutBatch.{name} has shape {tuple(value.shape)}, expected {shape} "
                    f"(tokens are {tuple(self.tokens.shape)})"
                )
            if dtype is not None and value.dtype != dtype:
                raise ValueError(f"RolloutBatch.{name} must be {dtype}, got {value.dtype}")
            if dtype is None and not value.is_floating_point():
                raise ValueError(f"RolloutBatch.{name} must be a float tensor, got {value.dtype}")
        if bool(self.loss_mask[:, 0].any()):
            raise ValueError("RolloutBatch.loss_mask is True at position 0, which has no logprob")
        if bool((self.loss_mask & ~self.attention_mask).any()):
            raise ValueError("RolloutBatch.loss_mask is True on a padding position")

    @property
    def behaviour_logprobs(self) -> torch.Tensor:
        """The logprobs the importance ratio divides by: recomputed old ones, else the sampler's."""
        return self.old_logprobs if self.old_logprobs is not None else self.sampler_logprobs

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, rows: torch.Tensor | Sequence[int]) -> "RolloutBatch":
        """The sub-batch of the given rows (a minibatch), trimmed to its longest row."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[rows].sum(-1).max()) if len(rows) else 1
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                picked[f.name] = None
            elif value.dim() == 2:
                picked[f.name] = value[rows, :width]
            else:
                picked[f.name] = value[rows]
        return replace(self, **picked)


def build_batch(
    completions: Sequence[Completion],
    rewards: Sequence[float],
    group_ids: Sequence[int],
    *,
    pad_id: int,
) -> RolloutBatch:
    """Pack completions into a right-padded RolloutBatch with zero advantages.

    Advantages are filled in afterwards by a credit estimator (`with_advantages`).
    """
    B = len(completions)
    if not (B == len(rewards) == len(group_ids)):
        raise ValueError(
            f"build_batch: {B} completions, {len(rewards)} rewards, {len(group_ids)} group ids"
        )
    T = max(len(c.prompt_ids) + len(c.token_ids) for c in completions)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    sampler = torch.zeros((B, T), dtype=torch.float32)
    for row, c in enumerate(completions):
        p, k = len(c.prompt_ids), len(c.token_ids)
        if p == 0:
            raise ValueError(f"build_batch: completion {row} has an empty prompt")
        if not (len(c.logprobs) == len(c.trainable) == k):
            raise ValueError(
                f"build_batch: completion {row} has {k} tokens, {len(c.logprobs)} logprobs and "
                f"{len(c.trainable)} trainable flags"
            )
        tokens[row, : p + k] = torch.tensor(c.prompt_ids + c.token_ids, dtype=torch.long)
        attention[row, : p + k] = True
        for j, (lp, flag) in enumerate(zip(c.logprobs, c.trainable)):
            # a non-finite sampler logprob cannot give a ratio: drop the token from the loss
            if flag and math.isfinite(lp):
                loss_mask[row, p + j] = True
                sampler[row, p + j] = lp
    return RolloutBatch(
        tokens=tokens,
        attention_mask=attention,
        loss_mask=loss_mask,
        sampler_logprobs=sampler,
        advantages=torch.zeros((B, T), dtype=torch.float32),
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        group_ids=torch.tensor(list(group_ids), dtype=torch.long),
    )


def broadcast_advantages(sequence_advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[B] sequence-level advantages -> [B, T], zero off the loss mask."""
    return sequence_advantages[:, None].to(torch.float32) * loss_mask.to(torch.float32)
