"""Credit assignment: advantage estimators as pure functions, selected by name."""

from credo.credit.base import CREDIT
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop

__all__ = ["CREDIT", "grpo_advantages", "grpo_advantages_loop"]
