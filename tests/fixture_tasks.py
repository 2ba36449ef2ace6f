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


def tiny_run(tmp_path, name, *extra, task="parity"):
    """A 2-step tiny `credo train` run in-process; asserts exit 0, finite losses and real optimizer
    steps with mixed rewards, and returns the RL metric rows. The task must be registered (tests
    monkeypatch TASKS)."""
    import math

    from credo.cli import main
    from credo.train.logging import read_metrics

    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name,
            "--run.progress", "false", "--rl.steps", "2", "--run.eval_base", "false", "--task.name", task,
            "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1", *extra]
    assert main(args) == 0
    rl = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:
        assert math.isfinite(row["loss"]), row
        assert row["updates"] >= 1 and row["skipped_updates"] == 0, row
    assert any(0.0 < row["reward_mean"] < 1.0 for row in rl), "the parity task should give mixed rewards"
    return rl
