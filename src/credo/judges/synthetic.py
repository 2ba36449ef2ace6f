"""The synthetic step judge (tests, CreditBench) and the `StepJudge` interface every judge implements.

Credit methods that need a second model (PURE's PRM, CAPO's critique votes, TP-GRPO's GenPRM, SLATE's
judge, MAPO's turn judge, Sotopia-RL's attribution LLM, GroundedPRM's tool-verified labels, ...) take a
`StepJudge`. The estimator itself never calls it: the caller turns judge scores into
`CreditInputs.step_rewards` first, so the estimators stay pure functions and judge calls are counted
in one place (CreditBench charges them as compute).

Tests and CreditBench use `SyntheticJudge`: the task's true per-step score, plus a bias, Gaussian noise
and random label flips, all deterministic given (seed, prompt, step index, step text).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Protocol, Sequence


class StepJudge(Protocol):
    calls: int  # steps scored so far (the judge's compute, counted by benchmarks)

    def score(self, prompt: str, steps: Sequence[str], truth: Sequence[float] | None) -> list[float]:
        """One score per step. `truth` is the task's exact per-step score when it has one (synthetic
        tasks); a real judge ignores it."""
        ...


@dataclass
class SyntheticJudge:
    """A deterministic judge / PRM with controllable noise and bias around the true step score.

    score_k = clip(truth_k + bias + noise * N(0, 1), low, high), then with probability `flip` the
    score is mirrored inside [low, high] (a wrong verdict). Default range [-1, 1] (PURE's PRM range).
    The same (seed, prompt, k, step text) always gets the same score, so re-scoring is consistent.
    """

    noise: float = 0.0
    bias: float = 0.0
    flip: float = 0.0
    seed: int = 0
    low: float = -1.0
    high: float = 1.0
    calls: int = 0

    def __post_init__(self):
        if self.noise < 0 or not 0.0 <= self.flip <= 1.0 or self.low >= self.high:
            raise ValueError(f"SyntheticJudge: need noise >= 0, 0 <= flip <= 1, low < high; got "
                             f"noise={self.noise}, flip={self.flip}, low={self.low}, high={self.high}")

    def _rng(self, prompt: str, k: int, text: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}\x00{prompt}\x00{k}\x00{text}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def score(self, prompt: str, steps: Sequence[str], truth: Sequence[float] | None) -> list[float]:
        if truth is None:
            raise ValueError("SyntheticJudge needs the task's true step scores (truth); this task has none")
        if len(truth) != len(steps):
            raise ValueError(f"SyntheticJudge: {len(steps)} steps but {len(truth)} true scores")
        out = []
        for k, (text, t) in enumerate(zip(steps, truth)):
            rng = self._rng(prompt, k, text)
            s = min(self.high, max(self.low, float(t) + self.bias + self.noise * rng.gauss(0.0, 1.0)))
            if self.flip and rng.random() < self.flip:
                s = self.low + self.high - s
            out.append(s if math.isfinite(s) else 0.0)
        self.calls += len(steps)
        return out
