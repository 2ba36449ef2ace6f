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
from credo.train.logging import read_metrics

NEW_CREDIT = ["dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "lite_ppo"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_run(tmp_path, name, *extra):
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name,
            "--run.progress", "false", "--rl.steps", "2", "--run.eval_base", "false",
            "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1", *extra]
    assert main(args) == 0
    rl = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2
    for row in rl:
        assert math.isfinite(row["loss"]), row
    return rl


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_trains_end_to_end(tmp_path, name):
    tiny_run(tmp_path, name, "--rl.objective", name)


@pytest.mark.parametrize("name", NEW_CREDIT)
def test_credit_estimator_trains_end_to_end(tmp_path, name):
    assert name in CREDIT
    tiny_run(tmp_path, f"credit-{name}", "--rl.credit", name)
