"""Rollout engines behind one protocol: the CPU torch engine here, vLLM as an optional extra."""

from credo.rollout.base import Completion, RolloutEngine, SamplingParams
from credo.rollout.torch_engine import TorchEngine

__all__ = ["Completion", "RolloutEngine", "SamplingParams", "TorchEngine"]
