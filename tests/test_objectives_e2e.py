"""Every registered objective, and every outcome credit estimator, through a tiny `credo train` run.

A smoke test, the last line of defence: each run must exit 0 and log a finite loss on every RL step.
About 1.5 s per run on the tiny random model (the first run pays the imports). The runs use one
torch thread: on a shared 2-core machine two threads fighting another process for the cores make
a run ~10x slower; the fixture restores the thread count afterwards.
"""

import math

import pytest
import torch

from credo.cli import main
from credo.credit import CREDIT
from credo.objectives import OBJECTIVES
from credo.tasks import TASKS, Score
from credo.tasks.arithmetic import ArithmeticTask
from credo.train.logging import read_metrics

NEW_CREDIT = [name for name in CREDIT.names() if name != "grpo"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# The tiny model has 2 layers; BuPO's default internal layer (6) is for SmolLM2-sized models.
TINY_PARAMS = {"bupo": ["--rl.objective_params", '{"layer": 1}']}


class ParityTask(ArithmeticTask):
    """Rewards odd-length completions, so a random model gets mixed groups and real gradients."""

    def score(self, completion, example):
        odd = len(completion) % 2 == 1
        return Score(reward=float(odd), correct=odd, formatted=True)


@pytest.fixture(autouse=True)
def parity_task(monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)


def tiny_run(tmp_path, name, *extra):
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name,
            "--run.progress", "false", "--rl.steps", "2", "--run.eval_base", "false", "--task.name", "parity",
            "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1", *extra]
    assert main(args) == 0
    rl = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:
        assert math.isfinite(row["loss"]), row
        assert row["updates"] >= 1 and row["skipped_updates"] == 0, row
    assert any(0.0 < row["reward_mean"] < 1.0 for row in rl), "the parity task should give mixed rewards"
    return rl


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_trains_end_to_end(tmp_path, name):
    tiny_run(tmp_path, name, "--rl.objective", name, *TINY_PARAMS.get(name, []))


@pytest.mark.parametrize("name", NEW_CREDIT)
def test_credit_estimator_trains_end_to_end(tmp_path, name):
    assert name in CREDIT
    tiny_run(tmp_path, f"credit-{name}", "--rl.credit", name)
