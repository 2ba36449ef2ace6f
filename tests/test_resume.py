"""Crash and resume: SIGKILL at several points, resume, and get the uninterrupted run bit for bit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.errors import CredoError
from credo.train.checkpoint import newest_complete, verify
from credo.train.logging import read_metrics

TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}
TESTS = Path(__file__).parent
ARGS = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "4", "--model.threads", "1",
        "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--rl.lr", "0.01",
        "--rl.kl_coef", "0.01", "--task.eval_size", "8"]


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _run(out, name, fault=None):
    return _credo(ARGS + ["--run.out_dir", str(out), "--run.name", name], fault)


def _comparable(run_dir):
    rows = read_metrics(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _final_weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "final" / "model" / "model.safetensors"))


def _assert_same_final_weights(reference, run_dir):
    ref_w, got_w = _final_weights(reference), _final_weights(run_dir)
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    return ref_w


def _kill_then_resume(args, fault, run_dir):
    """SIGKILL `credo train args` at `fault`, then `--resume run_dir`; returns the resume's stdout."""
    crashed = _credo(args, fault)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _credo(["--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    return resumed.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = _run(out, "ref")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "ref"


@pytest.mark.parametrize("fault", ["rollout:3", "update:4", "checkpoint_write:3"])
def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path, fault):
    crashed = _run(tmp_path, "crash", fault)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    run_dir = tmp_path / "crash"
    assert not (run_dir / "summary.json").exists()
    if fault.startswith("checkpoint_write"):
        # the half-written checkpoint is a hidden temporary folder and is never chosen
        assert list((run_dir / "checkpoints").glob(".step_2-*"))
        chosen, _ = newest_complete(run_dir / "checkpoints")
        assert chosen.folder.name == "step_1"
    resumed = _credo(["--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert _comparable(run_dir) == _comparable(reference)
    ref_w = _assert_same_final_weights(reference, run_dir)
    # the weights did move during RL, so equality is not vacuous
    warm = load_file(str(reference / "checkpoints" / "warmup" / "model" / "model.safetensors"))
    assert any(not torch.equal(warm[k], ref_w[k]) for k in warm)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rl"] == json.loads((reference / "summary.json").read_text())["rl"]


def test_corrupt_or_incomplete_checkpoints_are_refused(reference, tmp_path):
    import shutil

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    blob = ckpts / "step_4" / "optimizer.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CredoError, match="optimizer.safetensors is corrupt"):
        verify(ckpts / "step_4")
    (ckpts / "step_3" / "rng.safetensors").unlink()
    with pytest.raises(CredoError, match="missing rng.safetensors"):
        verify(ckpts / "step_3")
    (ckpts / "step_2" / "manifest.json").unlink()
    chosen, skipped = newest_complete(ckpts)
    assert chosen.folder.name == "step_1" and chosen.state["rl_step"] == 1
    assert len(skipped) == 3 and "incomplete" in skipped[2]


def test_resume_refuses_a_finished_run_and_a_non_run_folder(reference, tmp_path):
    done = _credo(["--resume", str(reference)])
    assert done.returncode == 2 and "already holds a finished run" in done.stderr
    nothing = _credo(["--resume", str(tmp_path)])
    assert nothing.returncode == 2 and "not a run folder" in nothing.stderr


def test_periodic_held_out_evaluations_survive_a_sigkill_exactly_once(tmp_path):
    """task.eval_every rows are taken before the step's checkpoint: a resume keeps those up to the
    checkpoint and redoes the rest, so the file equals the uninterrupted run's (timings aside)."""
    args = ARGS + ["--task.eval_every", "1"]
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_then_resume(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "rollout:3", tmp_path / "crash")
    got, want = _comparable(tmp_path / "crash"), _comparable(tmp_path / "ref")
    assert got == want
    periodic = [r["step"] for r in want if r.get("stage") == "rl_step"]
    assert periodic == [1, 2, 3]  # after every RL step but the last (the final evaluation is stage "rl")


def test_hapo_history_survives_a_sigkill_and_resumes_bitwise(tmp_path):
    """rl.reward_terms with HAPO's stateful length term: its per-problem history is in every RL checkpoint,
    so a run killed mid-way and resumed ends with the uninterrupted run's metrics, history and weights."""
    args = ARGS + ["--rl.reward_terms", '{"task": 1.0, "hapo_length": 1.0}', "--rl.prompt_pool", "4"]
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_then_resume(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "update:3", tmp_path / "crash")
    assert _comparable(tmp_path / "crash") == _comparable(tmp_path / "ref")
    states = [json.loads((tmp_path / n / "checkpoints" / "final" / "state.json").read_text()) for n in ("ref", "crash")]
    assert states[0]["reward_terms"] == states[1]["reward_terms"]
    history = states[0]["reward_terms"]["hapo_length"]["history"]
    assert history and set(history) <= {"0", "1", "2", "3"}  # the pool's persistent prompt ids
    rows = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if r["phase"] == "rl"]
    assert all("reward/hapo_length" in r and "reward/task" in r for r in rows)
    _assert_same_final_weights(tmp_path / "ref", tmp_path / "crash")


def test_adaptive_curriculum_survives_a_sigkill_and_resumes_bitwise(tmp_path):
    """rl.curriculum adaptive: the level and its accuracy window are in every RL checkpoint."""
    args = ARGS + ["--rl.curriculum", "adaptive", "--rl.curriculum_params",
                   '{"levels": [1, 2, 3], "threshold": 0.4, "window": 1}']
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_then_resume(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "update:3", tmp_path / "crash")
    assert _comparable(tmp_path / "crash") == _comparable(tmp_path / "ref")
    levels = [r["curriculum_index"] for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if r["phase"] == "rl"]
    assert levels[0] == 0 and levels[-1] > 0  # it did move up (parity accuracy is about 0.5 > 0.4)
    _assert_same_final_weights(tmp_path / "ref", tmp_path / "crash")
