"""D3S sample-level selection (select/d3s.py): the schedule, the max-variance subset against brute force,
the degenerate groups, and the trainer wiring on the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from credo.errors import CredoError
from credo.select.d3s import (D3SSelection, _variance, d3s_keep, keep_ratio_at, make_sample_selection,
                              max_variance_loop, max_variance_subset)

TESTS = Path(__file__).parent


def test_schedule_by_hand():
    assert [keep_ratio_at(t, 10) for t in (0, 1, 2, 5, 9)] == pytest.approx([0.5, 0.6, 0.7, 1.0, 1.0])
    assert keep_ratio_at(3, 10, start=0.25, end=0.75, ramp=1.0) == pytest.approx(0.4)
    assert keep_ratio_at(0, 10, start=0.3, ramp=0.0) == 1.0  # no ramp: the end ratio from the start


@pytest.mark.parametrize("seed", range(20))
def test_max_variance_subset_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    values = list(rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0], size=n)) if seed % 2 else list(rng.normal(size=n))
    for m in range(1, n + 1):
        chosen = max_variance_subset(values, m)
        assert len(chosen) == m and len(set(chosen)) == m
        assert _variance([values[i] for i in chosen]) == pytest.approx(max_variance_loop(values, m), abs=1e-12)


def test_binary_advantages_take_equal_numbers_of_each_side():
    values = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    chosen = max_variance_subset(values, 4)
    assert sorted(values[i] for i in chosen) == [-1.0, -1.0, 1.0, 1.0]


def test_d3s_keep_by_hand_and_degenerate_groups():
    adv = torch.tensor([1.0, 0.8, -0.2, -1.6, 0.5, 0.5, 0.5, 2.0, -2.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    trainable = torch.tensor([True] * 9 + [False])
    keep = d3s_keep(adv, groups, trainable, keep_ratio=0.5)
    # group 0: m = 2 of 4 -> the extremes 1.0 and -1.6; group 1: zero variance, kept whole;
    # group 2: 2 trainable rows (m >= n), kept; the untrainable row is left as it is (it has no loss tokens)
    assert keep.tolist() == [True, False, False, True, True, True, True, True, True, True]
    assert d3s_keep(adv, groups, trainable, keep_ratio=1.0).all()
    assert d3s_keep(adv[:0], groups[:0], trainable[:0], keep_ratio=0.5).shape == (0,)  # an empty step


def test_rows_are_their_mean_advantage_over_loss_tokens():
    advantages = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 1.0], [0.0, -1.0, -3.0], [0.0, 0.5, 0.5]])
    mask = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    keep, metrics = D3SSelection(steps=10)(0, advantages, mask, torch.tensor([0, 0, 0, 0]))
    # row means 2, 1, -2, 0.5; m = 2 of 4 -> {2, -2}
    assert keep.tolist() == [True, False, True, False]
    assert metrics == {"d3s_keep_ratio": 0.5, "d3s_dropped_rows": 2.0}


def test_configuration_errors():
    assert make_sample_selection("none", {}, 10) is None
    with pytest.raises(CredoError, match="unknown rl.sample_selection 'd4s'"):
        make_sample_selection("d4s", {}, 10)
    with pytest.raises(CredoError, match="rl.sample_selection_params for 'd3s'"):
        make_sample_selection("d3s", {"strat": 0.5}, 10)
    with pytest.raises(CredoError, match="start and end must be in"):
        make_sample_selection("d3s", {"start": 0.0}, 10)
    with pytest.raises(CredoError, match="is set but rl.sample_selection is"):
        make_sample_selection("none", {"start": 0.5}, 10)


def _train(tmp_path, name, extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    args = ["--preset", "tiny", "--task.name", "fixture_tasks:ParityTask", "--rl.group_size", "6", "--rl.steps", "3",
            "--run.progress", "false", "--model.threads", "1", "--run.out_dir", str(tmp_path), "--run.name", name]
    proc = subprocess.run([sys.executable, "-m", "credo.cli", "train", *args, *extra], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


TIMING = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}


@pytest.mark.slow  # the longest training run of the file (minutes in CI): run with -m slow
def test_d3s_in_training(tmp_path):
    plain = _train(tmp_path, "plain", [])
    everything = _train(tmp_path, "all", ["--rl.sample_selection", "d3s",
                                          "--rl.sample_selection_params", '{"start": 1.0}'])
    drop = TIMING | {"d3s_keep_ratio", "d3s_dropped_rows"}
    # keeping every rollout is exactly the run without selection
    assert [{k: v for k, v in r.items() if k not in drop} for r in everything] == \
        [{k: v for k, v in r.items() if k not in drop} for r in plain]
    d3s = [r for r in _train(tmp_path, "d3s", ["--rl.sample_selection", "d3s"]) if r["phase"] == "rl"]
    assert [r["d3s_keep_ratio"] for r in d3s] == pytest.approx([0.5, 0.5 + 0.5 / 1.5, 1.0])
    first = d3s[0]
    assert first["d3s_dropped_rows"] > 0 and first["trained_sequences"] == 24 - first["d3s_dropped_rows"]
