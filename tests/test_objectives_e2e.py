"""Every registered objective, and every outcome credit estimator, through a tiny `credo train` run.

A smoke test, the last line of defence: each run must exit 0 and log a finite loss on every RL step.
About 1.5 s per run on the tiny random model (the first run pays the imports). The runs use one
torch thread: on a shared 2-core machine two threads fighting another process for the cores make
a run ~10x slower; the fixture restores the thread count afterwards.
"""

import sys
from pathlib import Path

import pytest
import torch

from credo.cli import main
from credo.credit import CREDIT, is_token_level
from credo.objectives import OBJECTIVES
from credo.tasks import TASKS

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask, TalkativeParity, tiny_run  # noqa: E402

# outcome-level estimators here; token-, step- and turn-level ones in test_credit_e2e.py
NEW_CREDIT = [name for name in CREDIT.names() if name != "grpo" and not is_token_level(CREDIT.get(name))]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# The tiny model has 2 layers; BuPO's default internal layer (6) is for SmolLM2-sized models.
TINY_PARAMS = {"bupo": ["--rl.objective_params", '{"layer": 1}'],
               # F-GRPO's objective reads the phase ids its own estimator writes (batch.segment_ids)
               "f_grpo": ["--rl.credit", "f_grpo", "--rl.loss_reduction", "seq_mean_token_mean"],
               "bn_gspo": ["--rl.credit", "bn_gspo", "--rl.loss_reduction", "seq_mean_token_mean"],
               "ppo": ["--rl.credit", "gae"]}


# objectives over turns run on the multi-turn fixture task (its pairing sets their estimator)
MULTI_TURN = {"a2tgpo"}


@pytest.fixture(autouse=True)
def parity_task(monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    monkeypatch.setitem(TASKS._items, "mt_parity", TalkativeParity)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_trains_end_to_end(tmp_path, name):
    if name in MULTI_TURN:
        tiny_run(tmp_path, name, "--rl.objective", name, "--task.params", "{}", task="mt_parity")
    else:
        tiny_run(tmp_path, name, "--rl.objective", name, *TINY_PARAMS.get(name, []))


@pytest.mark.parametrize("name", NEW_CREDIT)
def test_credit_estimator_trains_end_to_end(tmp_path, name):
    assert name in CREDIT
    tiny_run(tmp_path, f"credit-{name}", "--rl.credit", name)
