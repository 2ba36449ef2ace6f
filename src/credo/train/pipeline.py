"""Asynchronous rollouts with bounded staleness (`rollout.max_staleness = k`, engine "ray").

The RL loop calls `fill(step)` as each step starts: it sends the generations of steps step .. step + k
that are not in flight yet to the engine (`engine.submit`, which returns at once). `rl_step` then takes
its own step's groups with `collect`. Ray actor calls run in the order they were sent, and the weight
sync after each update is sent without waiting (`load_weights(..., wait=False)`), so the generation of
step t, sent at the start of step t - k after the sync of version t - k, samples the weights of update
t - k: a policy lag of exactly k (k = 0: each step's generation is sent and collected in the same step,
the synchronous loop). While the trainer computes credit and updates on step s, the workers generate
steps s + 1 .. s + k.

The lag is corrected where every other sampler/trainer mismatch is: the trainer recomputes the old
logprobs under its current weights, and `rl.is_correction` weighs them against the sampler's (the
resolved config turns on "tis" when k > 0 and the correction was left at "none", as for vLLM).

A group sampled more than k updates behind (after a resume the queue starts empty, so this cannot
happen from the queue itself; it guards late or failed weight syncs and future engines) is never
silently used or dropped: `rollout.stale_policy` "resample" regenerates it with the current weights,
"drop" leaves it out of the step, "keep" trains on it; `stale_groups` and `stale_resampled` /
`stale_dropped` / `stale_kept` count each case in the step's metrics.

Resume: in-flight generations are not checkpointed; a resumed run refills the queue from the
checkpoint's weights, so its first k steps sample with a smaller lag than the uninterrupted run did
(resume is exact only for k = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from credo.errors import CredoError

RESAMPLE_SALT = 7_777_777  # a resampled group's seed: (step seed, salt, its position), not the first draw's


@dataclass
class Pending:
    prompts: list[list[int]]
    handle: Any
    seed: int


class RolloutPipeline:
    """Generations sent ahead of training (see the module docstring).

    plan(step) -> (examples, prompts) of a future step: the same deterministic prompt schedule and
    prompt encoding / length filter the step itself applies (`rl_step`), so both name the same prompts.
    """

    def __init__(self, engine, *, max_staleness: int, stale_policy: str, group_size: int, sampling,
                 plan: Callable[[int], tuple[Sequence, list[list[int]]]], step_seed: Callable[[int], int],
                 last_step: int):
        if not callable(getattr(engine, "submit", None)):
            raise CredoError("rollout.max_staleness > 0 needs an engine that can send generations ahead "
                             "(rollout.engine \"ray\")")
        self.engine, self.k, self.policy = engine, max_staleness, stale_policy
        self.group_size, self.sampling, self.plan, self.step_seed = group_size, sampling, plan, step_seed
        self.last_step = last_step
        self.pending: dict[int, Pending] = {}

    def _send(self, step: int, prompts: list[list[int]]) -> None:
        seed = self.step_seed(step)
        handle = self.engine.submit(prompts, self.group_size, self.sampling, seed) if prompts else []
        self.pending[step] = Pending([list(p) for p in prompts], handle, seed)

    def fill(self, step: int) -> None:
        """Send the generations of steps step .. step + k not yet in flight."""
        for t in range(step, min(step + self.k, self.last_step - 1) + 1):
            if t not in self.pending:
                self._send(t, self.plan(t)[1])

    def collect(self, step: int, prompts: Sequence[Sequence[int]]) -> tuple[list[list], list[int], dict[str, float]]:
        """The groups of `step` for `prompts` (which must be the ones sent for it): (groups, kept
        indices into prompts, metrics). Stale groups are handled by rollout.stale_policy."""
        if step not in self.pending:  # the first step, a resumed run, or k = 0
            self._send(step, [list(p) for p in prompts])
        job = self.pending.pop(step)
        if job.prompts != [list(p) for p in prompts]:  # a bug, not bad input: the schedule must be deterministic
            raise CredoError(f"asynchronous rollouts: step {step}'s prompts differ from the ones sent ahead")
        groups = self.engine.collect(job.handle) if job.prompts else []
        stale = [i for i, g in enumerate(groups) if g and step - min(c.weight_version for c in g) > self.k]
        metrics = {"stale_groups": float(len(stale))}
        keep = list(range(len(groups)))
        if stale and self.policy == "resample":
            again = self.engine.generate([job.prompts[i] for i in stale], self.group_size, self.sampling,
                                         (job.seed * 31 + RESAMPLE_SALT) % (2**63))
            for i, group in zip(stale, again):
                groups[i] = group
            metrics["stale_resampled"] = float(len(stale))
        elif stale and self.policy == "drop":
            keep = [i for i in keep if i not in set(stale)]
            groups = [groups[i] for i in keep]
            metrics["stale_dropped"] = float(len(stale))
        elif stale:
            metrics["stale_kept"] = float(len(stale))
        return groups, keep, metrics
