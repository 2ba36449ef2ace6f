"""Every token-, step- and turn-level credit estimator through a tiny `credo train` run.

Single-turn estimators run on the parity task (steps = lines, judged by a SyntheticJudge on the
arithmetic step checker; probes are real continuations). Turn-level estimators run on a multi-turn
fixture task (`fixture_tasks.TalkativeParity`: the keyvalue world, with an observation after every
action so a random model plays all turns, and parity rewards per turn and per episode). Each run must
exit 0, log finite losses, take real optimizer steps and report no non-finite advantage.
"""

import sys
from pathlib import Path

import pytest
import torch

from credo.credit import CREDIT, is_token_level
from credo.tasks import TASKS

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask, TalkativeParity, tiny_run  # noqa: E402

TOKEN_LEVEL = [n for n in CREDIT.names() if is_token_level(CREDIT.get(n))]
# estimators over turns of a multi-turn episode
MULTI_TURN_MODULES = ("credo.credit.turns", "credo.credit.turn_reward_credit")
MULTI_TURN = [n for n in TOKEN_LEVEL if getattr(CREDIT.get(n), "__module__", "") in MULTI_TURN_MODULES]
EXTRA = {
    "gae": ["--rl.objective", "ppo"],
    "ma_rlhf": ["--rl.objective", "ppo"],
    "poad": ["--rl.objective", "ppo"],
    "rto": ["--rl.objective", "ppo", "--rl.dpo_model", "tiny"],
    "f_grpo": ["--rl.objective", "f_grpo", "--rl.loss_reduction", "seq_mean_token_mean"],
    "spo_chain": ["--rl.probe_samples", "2"],
    "brpo": ["--rl.probe_samples", "2"],
}


@pytest.fixture(autouse=True)
def tasks(monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    monkeypatch.setitem(TASKS._items, "mt_parity", TalkativeParity)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_there_are_token_level_estimators_of_every_kind():
    assert {"gae", "spo_chain", "tempo", "pure", "hicra"} <= set(TOKEN_LEVEL)
    assert MULTI_TURN, "no turn-level estimator found"


SLOW = {"bnpo_decomposed", "brpo"}  # minutes each in CI (probe rollouts): run with -m slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TOKEN_LEVEL])
def test_token_level_estimator_trains_end_to_end(tmp_path, name):
    if name in MULTI_TURN:
        rl = tiny_run(tmp_path, name, "--rl.credit", name, "--task.params", "{}", *EXTRA.get(name, []),
                      task="mt_parity")
        assert all(row["turns_mean"] > 1 for row in rl)
    else:
        rl = tiny_run(tmp_path, name, "--rl.credit", name, *EXTRA.get(name, []))
    for row in rl:
        assert row.get("credit_nonfinite", 0.0) == 0.0, row
