"""Credit assignment: advantage estimators as pure functions, selected by name."""

from credo.credit.base import CREDIT
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop
from credo.credit.shaping import aspo_shape_advantages  # noqa: F401  (ASPO advantage shaping; not a registered estimator)
from credo.credit import normalisation  # noqa: F401  (registers "bnpo", "spo", "oblr")

__all__ = ["CREDIT", "grpo_advantages", "grpo_advantages_loop"]
