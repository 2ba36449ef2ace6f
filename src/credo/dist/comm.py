"""Collectives over plain Python numbers: counts for the reductions, step metrics.

Each call is one collective; every rank must make the same calls in the same order.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from credo.dist.env import World, comm_device


def all_reduce(world: World, values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise sum / max / min of `values` over ranks (float64, one collective)."""
    import torch.distributed as dist

    if not world.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device(world))
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.cpu().tolist()


def all_gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's `obj` (small, picklable), in rank order."""
    import torch.distributed as dist

    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# how each step metric combines over ranks (anything else: a mean weighted by the rank's rows)
_SUMMED = ("verifier_errors", "skipped_prompts", "trained_sequences", "probe_rollouts", "judge_calls",
           "credit_nonfinite", "env_errors", "tokens_per_s", "gen_tokens_per_s")
_SAME = ("updates", "skipped_updates", "grad_norm", "snr", "snr_samples", "lr", "lr_scale", "lr_base")
_SLOWEST = ("gen_time", "update_time", "step_time")


def reduce_metrics(world: World, metrics: dict[str, float], rows: float) -> dict[str, float]:
    """One step's metrics over all ranks.

    Counts and throughputs are summed; *_min / *_max are true extremes; times are the slowest
    rank's (the step waits for it); the optimizer-step counters and the gradient norm are already
    global (gradients are synchronised), so rank 0's value is kept; every other metric is each
    rank's mean weighted by its rollout rows (reward_std is thus a row-weighted mean of per-rank
    standard deviations, not the pooled one). NaN (a rank with nothing to report) is left out.
    """
    if not world.distributed:
        return metrics
    keys = sorted(metrics)  # the same order on every rank
    gathered = all_gather_objects(world, {k: float(metrics[k]) for k in keys} | {"__rows": float(rows)})
    out = {}
    for key in sorted(set().union(*gathered) - {"__rows"}):
        pairs = [(g[key], g["__rows"]) for g in gathered if key in g and math.isfinite(g[key])]
        if not pairs:
            out[key] = float("nan")
        elif key in _SAME:
            out[key] = gathered[0].get(key, pairs[0][0])
        elif key in _SUMMED or key.startswith("sandbox_"):  # (sandbox outcome counts, rewards/code.py)
            out[key] = sum(v for v, _ in pairs)
        elif key.endswith("_min"):
            out[key] = min(v for v, _ in pairs)
        elif key.endswith("_max") or key in _SLOWEST:
            out[key] = max(v for v, _ in pairs)
        else:
            weight = sum(w for _, w in pairs)
            out[key] = sum(v * w for v, w in pairs) / weight if weight > 0 else sum(v for v, _ in pairs) / len(pairs)
    return out
