"""Which training prompts each RL step uses: a pure function of (seed, step) and checkpointed state.

Prompts are identified by their index in the run's prompt list; that index is the PERSISTENT prompt
id stateful credit estimators (SPO's tracker) key their state by.

- rl.prompt_pool = 0: step s takes indices [s P, (s + 1) P) of a list of steps x P fresh prompts
  (P = prompts_per_step); no prompt repeats.
- rl.prompt_pool = N > 0: the list holds N prompts, visited in epochs; epoch e is a permutation of
  0..N-1 seeded from (seed, e), and global position s P + i of the schedule is element
  (s P + i) mod N of epoch (s P + i) div N. Every prompt appears once per epoch; prompts repeat.
- prioritised (rl.spo_prioritized): P ids drawn from 0..N-1 with probability proportional to the
  estimator's sampling weights, from a generator seeded from (seed, step).
"""

from __future__ import annotations

import torch

_EPOCH_SALT = 1_000_033
_PRIORITY_SALT = 1_000_037


def epoch_order(epoch: int, pool: int, seed: int) -> list[int]:
    """The permutation of 0..pool-1 that epoch `epoch` visits, seeded from (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * _EPOCH_SALT + epoch)
    return torch.randperm(pool, generator=generator).tolist()


def scheduled_prompt_ids(step: int, per_step: int, pool: int, seed: int) -> list[int]:
    """Prompt indices of RL step `step` (see the module docstring); pool 0 = fresh prompts."""
    positions = range(step * per_step, (step + 1) * per_step)
    if pool <= 0:
        return list(positions)
    orders: dict[int, list[int]] = {}
    out = []
    for position in positions:
        epoch, index = divmod(position, pool)
        if epoch not in orders:
            orders[epoch] = epoch_order(epoch, pool, seed)
        out.append(orders[epoch][index])
    return out


def prioritized_prompt_ids(step: int, per_step: int, weights: torch.Tensor, seed: int) -> list[int]:
    """Indices drawn with probability proportional to weights [N] (>= 0), seeded from (seed, step).

    Without replacement when per_step <= N (the verl recipe's rule), else with replacement; all-zero
    (or non-finite) weights fall back to uniform.
    """
    w = weights.to(torch.float64).clamp(min=0.0)
    if not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0.0:
        w = torch.ones_like(w)
    generator = torch.Generator().manual_seed(seed * _PRIORITY_SALT + step)
    replace = per_step > len(w)
    return torch.multinomial(w / w.sum(), per_step, replacement=replace, generator=generator).tolist()
