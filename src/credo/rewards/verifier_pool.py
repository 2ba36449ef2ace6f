"""Verifier workers as Ray actors (`rollout.ray_verifiers = N > 0`): the task's scoring, sandboxed code
tests included, runs in N processes beside the trainer.

Each `VerifierWorker` holds a copy of the run's task (pickled from the driver) and scores
(completion text, example) pairs with the trainer's own guard (`train/evaluate.py::safe_score`, passed
in as `score`): a verifier that raises, hangs or returns a non-finite reward gives the error reward and
is counted, exactly as in-process. `VerifierPool.score` cuts the pairs into contiguous shards, one per
worker, scores them in parallel and returns them in input order, so N workers give the same scores as
one, and as the in-process loop (tests/test_ray.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from credo.dist.shard import shard_bounds
from credo.rollout.ray_engine import init_ray


class VerifierWorker:
    """One verifier actor (wrapped with ray.remote by VerifierPool)."""

    def __init__(self, task: Any, score: Callable, error_reward: float):
        self.task, self.score_fn, self.error_reward = task, score, error_reward

    def score(self, pairs: Sequence[tuple[str, Any]]) -> list[tuple[Any, bool]]:
        return [self.score_fn(self.task, text, example, self.error_reward) for text, example in pairs]


class VerifierPool:
    """`workers` verifier actors for one task; `score(pairs)` -> [(Score, failed)] in input order."""

    def __init__(self, task: Any, score: Callable, *, workers: int, error_reward: float = 0.0, address: str = ""):
        self.ray = init_ray(address)
        actor = self.ray.remote(num_cpus=0)(VerifierWorker)
        self.workers = [actor.remote(task, score, error_reward) for _ in range(workers)]

    def score(self, pairs: Sequence[tuple[str, Any]]) -> list[tuple[Any, bool]]:
        futures = []
        for rank, worker in enumerate(self.workers):
            lo, hi = shard_bounds(len(pairs), rank, len(self.workers))
            if hi > lo:
                futures.append(worker.score.remote(list(pairs[lo:hi])))
        return [result for part in self.ray.get(futures) for result in part]

    def shutdown(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
