"""Which prompts of a step each rank generates, and with which seeds.

A step's P prompts are cut into contiguous shards, one per rank (the first P mod N ranks take one
more), so every group of G completions is generated, scored and credited on one rank: group
statistics (GRPO's mean / std, whole-group objectives) need no communication, and the
concatenation of the shards in rank order is the one-process batch order.

Seeds: the torch engine draws a whole call's samples from one generator, so a batch sampled in one
call differs from the same prompts sampled in two halves. With `dist.seed_per_prompt` each prompt's
group is sampled in its own engine call with a seed derived from (step seed, the prompt's position
in the step), which makes the rollout batch independent of the number of ranks (N ranks give
exactly the one-process batch; the tests rely on it) at the cost of batching only G rows per call.
Without it each rank samples its shard in one call with seed (step seed + rank offset): rank 0 (and
a one-process run) keep the one-process seed, other ranks draw other streams.
"""

from __future__ import annotations

from typing import Sequence

_RANK_SALT = 1_000_039
_PROMPT_SALT = 1_000_081


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous share of `count` items."""
    base, extra = divmod(count, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def prompt_seed(step_seed: int, slot: int) -> int:
    """The seed of the group of the prompt at position `slot` of the step (seed_per_prompt)."""
    return (step_seed * _PROMPT_SALT + slot + 1) % (2**63)


def rank_seed(step_seed: int, rank: int) -> int:
    """A rank's seed for its whole shard (without seed_per_prompt); rank 0 keeps the step seed."""
    return (step_seed + _RANK_SALT * rank) % (2**63)


def sample_groups(ctx, examples: Sequence, prompts: Sequence[Sequence[int]], slots: Sequence[int],
                  step_seed: int) -> list[list]:
    """G completions for each of this rank's prompts (see the module docstring for the seeds)."""
    from credo.train.evaluate import generate_groups

    dist = ctx.dist
    common = (ctx.engine, ctx.tokenizer, ctx.task)
    sampler = getattr(ctx, "sampler", None)  # rollout.sampler (rollout/samplers.py); None = independent
    if ctx.seed_per_prompt:
        groups = []
        for example, prompt, slot in zip(examples, prompts, slots):
            groups += generate_groups(*common, [example], [prompt], ctx.group_size, ctx.sampling,
                                      prompt_seed(step_seed, slot), ctx.max_prompt_tokens, sampler=sampler)
        return groups
    seed = step_seed if dist is None else rank_seed(step_seed, dist.world.rank)
    return generate_groups(*common, examples, prompts, ctx.group_size, ctx.sampling, seed, ctx.max_prompt_tokens,
                           sampler=sampler)
