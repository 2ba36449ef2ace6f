"""DAPO's dynamic sampling: keep only the groups whose rewards are not all equal.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv 2503.14476).
Status: confirmed (verl `recipe/dapo/dapo_ray_trainer.py`: a group is kept when
`np.std(metric_vals) > 0`, metric = "acc" by default; the trainer keeps generating batches, at most
`max_num_gen_batches`, until enough groups are kept, then truncates to the train batch size).

A group whose samples all succeeded or all failed has zero advantage under any group-baseline
estimator, so it only dilutes the token count of the loss; DAPO drops it instead of zero-weighting
it.

    keep_mixed_groups    the rule: keep [B] bool, True where the sample's group has differing rewards
    refill_mixed_groups  the loop: keep mixed groups, generate more prompts' groups until the batch is
                         full or the extra rounds run out (then the step goes on with what it has)
    refill_prompt_ids    the further prompts of a refill round: a seeded function of (seed, step, round)
    DynamicSampling      the trainer's binding (rl.dynamic_sampling): called once per step by rl_step
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


def keep_mixed_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """rewards [B] float, group_ids [B] long -> keep [B] bool: True where the sample's group is mixed.

    keep_i = max_{group(i)} R > min_{group(i)} R   (the same as std > 0, without float round-off).
    A group of one sample has std 0 and is dropped, as in verl. Pass the correctness signal ("acc")
    to match the recipe: with the overlong penalty added, the total reward of an all-correct group
    can vary only through length, and that group would be kept.
    A NaN reward makes its group count as mixed only if other values differ; callers should not
    produce NaN rewards (verifiers return error_reward instead).
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"keep_mixed_groups: rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} "
            "must both be [B]"
        )
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    r = rewards.to(torch.float64)
    _, dense = torch.unique(group_ids, return_inverse=True)
    k = int(dense.max()) + 1
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amin")
    return (high > low)[dense]


def keep_mixed_groups_loop(rewards: list[float], group_ids: list[int]) -> list[bool]:
    """Readable reference for `keep_mixed_groups`."""
    out = []
    for g in group_ids:
        members = [r for r, gg in zip(rewards, group_ids) if gg == g]
        out.append(max(members) > min(members))
    return out


# -- the refill loop -----------------------------------------------------------------------------


@dataclass
class ScoredGroup:
    """One prompt's G completions and their verifier scores (anything with a `.reward`)."""

    example: Any
    prompt_id: int
    completions: list
    scores: list

    @property
    def rewards(self) -> list[float]:
        return [float(s.reward) for s in self.scores]


def refill_mixed_groups(
    first: Sequence[ScoredGroup],
    generate_and_score: Callable[[list[int], int], list[ScoredGroup]],
    more_prompts: Callable[[int, set[int]], list[int]],
    *,
    target: int,
    max_rounds: int,
) -> tuple[list[ScoredGroup], dict[str, float]]:
    """DAPO's dynamic sampling with refill: (kept groups, metrics).

    first: the step's scored groups. Round r = 1, 2, ... (at most max_rounds extra rounds) runs while
    fewer than `target` mixed groups are kept: more_prompts(r, used prompt ids) -> prompt ids,
    generate_and_score(ids, r) -> their scored groups. A group is kept when its rewards are not all
    equal (`keep_mixed_groups`); uniform groups are discarded. Kept groups beyond `target` are cut
    off in order (verl truncates the batch to the train batch size). When the rounds run out first,
    the step goes on with the groups it has (possibly none; verl raises instead).
    Metrics: sampling_rounds (generation rounds this step, the first included: 1 = no refill),
    groups_discarded (uniform groups over all rounds), groups_kept (in the returned batch).
    Paper: "DAPO" (arXiv 2503.14476); verl `recipe/dapo/dapo_ray_trainer.py` (max_num_gen_batches).
    """
    if target < 0 or max_rounds < 0:
        raise ValueError(f"refill_mixed_groups: target and max_rounds must be >= 0, got {target}, {max_rounds}")
    kept: list[ScoredGroup] = []
    used = {g.prompt_id for g in first}
    discarded, rounds, batch = 0, 0, list(first)
    while True:
        for group in batch:
            mixed = bool(group.rewards) and bool(keep_mixed_groups(
                torch.tensor(group.rewards), torch.zeros(len(group.rewards), dtype=torch.long))[0])
            if mixed:
                kept.append(group)
            else:
                discarded += 1
        if len(kept) >= target or rounds >= max_rounds:
            break
        rounds += 1
        ids = more_prompts(rounds, used)
        if not ids:  # no prompt left to draw
            break
        used |= set(ids)
        batch = generate_and_score(ids, rounds)
    kept = kept[:target]
    return kept, {"sampling_rounds": float(rounds + 1), "groups_discarded": float(discarded),
                  "groups_kept": float(len(kept))}


def refill_prompt_ids(seed: int, step: int, round_: int, pool: int, count: int, exclude: set[int]) -> list[int]:
    """`count` prompt indices of 0..pool-1 for refill round `round_` of RL step `step`: a uniform draw
    without replacement from the indices not in `exclude` (all of them when fewer remain), from a
    generator seeded from (seed, step, round_); so a resumed run draws the same prompts."""
    generator = torch.Generator().manual_seed(derived_seed("refill-prompts", seed, step, round_))
    free = [i for i in range(pool) if i not in exclude] or list(range(pool))
    order = torch.randperm(len(free), generator=generator)[:count].tolist()
    return [free[i] for i in order]


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from the parts (SHA-256 of their text: stable across runs and platforms)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


Flat = tuple[list, list[int], list, list, list[int], int]  # examples, prompt_ids, completions, scores, group_ids, errors


@dataclass
class DynamicSampling:
    """rl.dynamic_sampling: the trainer's refill binding, called by `rl_step` after the first scoring.

    prompts: the run's prompt list (a prompt's index is its persistent id; refill prompts are drawn
    from it, so stateful credit keys stay valid; in fresh-prompt mode a refill may reuse a prompt of
    another step). rollout(ctx, examples, prompt_ids, seed) -> Flat: encode, generate and score
    (`train/rl.py::rollout_groups`); a refill round's sampling seed is derived from (seed, step, round).
    max_rounds: rl.max_sampling_rounds. The step's target is its own prompt count.
    Metrics (refill_mixed_groups') plus refill_time: seconds spent in refill rounds.
    """

    prompts: Sequence[Any]
    seed: int
    max_rounds: int
    rollout: Callable[..., Flat]

    def __call__(self, ctx, step: int, examples, prompt_ids, completions, scores, group_ids, errors) -> dict:
        """Returns {"batch": Flat of the kept groups, **metrics}; errors counts every round's verifier errors."""
        started = time.perf_counter()
        first = regroup(examples, prompt_ids, completions, scores, group_ids)
        extra_errors = [0]

        def more(round_: int, used: set[int]) -> list[int]:
            return refill_prompt_ids(self.seed, step, round_, len(self.prompts), len(examples), used)

        def generate_and_score(ids: list[int], round_: int) -> list[ScoredGroup]:
            seed = derived_seed("refill-sampling", self.seed, step, round_) % (2**31)
            flat = self.rollout(ctx, [self.prompts[i] for i in ids], ids, seed)
            extra_errors[0] += flat[5]
            return regroup(*flat[:5])

        kept, metrics = refill_mixed_groups(first, generate_and_score, more, target=len(examples),
                                            max_rounds=self.max_rounds)
        return {"batch": flatten(kept, errors + extra_errors[0]), **metrics,
                "refill_time": time.perf_counter() - started}  # refill rounds' generation and scoring


def regroup(examples, prompt_ids, completions, scores, group_ids) -> list[ScoredGroup]:
    """Flat rows (group_ids[i] = index into examples) -> one ScoredGroup per example, in order."""
    groups = [ScoredGroup(ex, int(pid), [], []) for ex, pid in zip(examples, prompt_ids)]
    for completion, score, g in zip(completions, scores, group_ids):
        groups[g].completions.append(completion)
        groups[g].scores.append(score)
    return groups


def flatten(groups: Sequence[ScoredGroup], errors: int) -> Flat:
    """ScoredGroups -> the flat rows rl_step works on (group ids renumbered 0..len(groups)-1)."""
    completions, scores, group_ids = [], [], []
    for g, group in enumerate(groups):
        completions += group.completions
        scores += group.scores
        group_ids += [g] * len(group.completions)
    return [g.example for g in groups], [g.prompt_id for g in groups], completions, scores, group_ids, errors
