"""Tasks used by subprocess tests through the `module:Class` task path (PYTHONPATH=tests)."""

from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Score


class ParityTask(ArithmeticTask):
    """Rewards odd-length completions: a non-constant reward even a random model earns, so RL
    updates really move the weights."""

    def score(self, completion, example):
        odd = len(completion) % 2 == 1
        return Score(reward=float(odd), correct=odd, formatted=True)


import dataclasses

from credo.tasks.keyvalue import KeyValueTask


class TalkativeParity(KeyValueTask):
    """A multi-turn task a random model plays for every turn with mixed rewards: every action gets an
    observation until max_turns; a turn's reward is 1 for an odd-length action, the outcome is the
    parity of the whole transcript's length. For smoke runs of turn-level credit."""

    def step(self, state, action_text):
        obs, _, nxt = super().step(state, action_text)
        reward = float(len(action_text) % 2)
        if obs is None and nxt.turn < self.max_turns:
            return "\n<obs>none</obs>\n", reward, dataclasses.replace(nxt, done=False)
        return obs, reward, nxt

    def score(self, completion, example):
        odd = len(completion) % 2 == 1
        return Score(reward=float(odd), correct=odd, formatted=True)
