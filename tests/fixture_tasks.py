"""Tasks used by subprocess tests through the `module:Class` task path (PYTHONPATH=tests)."""

from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Score


class ParityTask(ArithmeticTask):
    """Rewards odd-length completions: a non-constant reward even a random model earns, so RL
    updates really move the weights."""

    def score(self, completion, example):
        odd = len(completion) % 2 == 1
        return Score(reward=float(odd), correct=odd, formatted=True)
