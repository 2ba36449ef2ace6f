"""Policy objectives: pure functions fn(logprobs, batch, *, hparams) -> LossTerms, by name."""

from credo.objectives import grpo  # noqa: F401  (registers "grpo")
from credo.objectives.base import OBJECTIVES, LossTerms, masked_mean
from credo.objectives.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3
from credo.objectives.reduce import REDUCTIONS, reduce_loss

__all__ = [
    "KL_ESTIMATORS",
    "OBJECTIVES",
    "REDUCTIONS",
    "LossTerms",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "reduce_loss",
]
