"""A tiny end-to-end run through the CLI: the run folder's files and their contents."""

import json
import math

import pytest

from credo.cli import main
from credo.tasks import TASKS, Score
from credo.tasks.arithmetic import ArithmeticTask
from credo.train.logging import read_metrics

REQUIRED_RL_KEYS = {
    "reward_mean", "reward_std", "accuracy", "approx_kl", "clip_fraction", "entropy",
    "response_length", "truncation_rate", "tokens_per_s", "step_time", "zero_variance_groups",
    "ratio_min", "ratio_max", "lr", "grad_norm",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = main(["train", "--preset", "tiny", "--run.out_dir", str(out), "--run.name", "t",
                 "--run.progress", "false", "--rl.steps=3"])
    assert code == 0
    return out / "t"


def test_run_folder_files(tiny_run):
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png",
                 "checkpoints/warmup/model/model.safetensors", "checkpoints/final/model/model.safetensors",
                 "checkpoints/final/model/tokenizer.json", "checkpoints/final/model/config.json",
                 "checkpoints/final/optimizer.safetensors", "checkpoints/final/manifest.json"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tiny_run.glob("checkpoints/.*")), "no temporary checkpoint folders left behind"


def test_resolved_config_records_overrides(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["model"]["name"] == "tiny" and cfg["rl"]["steps"] == 3


def test_metrics_lines(tiny_run):
    rows = read_metrics(tiny_run / "metrics.jsonl")
    rl = [r for r in rows if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [0, 1, 2]
    assert len([r for r in rows if r["phase"] == "warmup"]) == 2
    assert [r["stage"] for r in rows if r["phase"] == "eval"] == ["base", "warmup", "rl"]
    for r in rl:
        assert REQUIRED_RL_KEYS <= set(r), REQUIRED_RL_KEYS - set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["truncation_rate"] <= 1.0
        assert math.isfinite(r["loss"]) and r["step_time"] > 0


def test_summary(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    for stage in ("base", "warmup", "rl"):
        assert summary[stage]["n"] == 16
        assert 0.0 <= summary[stage]["accuracy"] <= 1.0
    assert summary["rl_gain_over_warmup"] == pytest.approx(summary["rl"]["accuracy"] - summary["warmup"]["accuracy"])
    assert set(summary["timings_s"]) >= {"load", "warmup", "rl", "total"}


def test_eval_command_loads_the_checkpoint(tiny_run, capsys):
    assert main(["eval", "--model", str(tiny_run / "checkpoints/final"), "--n", "4",
                 "--model.precision", "fp32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and result["task"] == "arith"


def test_generate_command(tiny_run, capsys):
    assert main(["generate", "--model", str(tiny_run / "checkpoints/final"), "What is 2+3?",
                 "--n", "2", "--temperature", "1.0", "--sampling.max_new_tokens", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("[") for line in lines)


def test_finished_run_folder_is_not_overwritten(tiny_run, capsys):
    code = main(["train", "--preset", "tiny", "--run.out_dir", str(tiny_run.parent), "--run.name", "t"])
    assert code == 2
    assert "already holds a finished run" in capsys.readouterr().err


class ParityTask(ArithmeticTask):
    """Rewards odd-length completions: a non-constant reward a random model can earn."""

    def score(self, completion, example):
        return Score(reward=float(len(completion) % 2), correct=len(completion) % 2 == 1, formatted=True)


def test_kl_to_reference_model_path(tmp_path, monkeypatch):
    """kl_coef > 0 loads a frozen reference copy: KL is 0 before the first update, then grows."""
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    code = main(["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", "kl",
                 "--run.progress", "false", "--rl.steps", "3", "--rl.kl_coef", "0.04", "--rl.minibatches", "1",
                 "--task.name", "parity", "--rl.lr", "0.01",
                 "--run.eval_base", "false", "--task.eval_size", "4", "--warmup.steps", "0"])
    assert code == 0
    rl = [r for r in read_metrics(tmp_path / "kl" / "metrics.jsonl") if r["phase"] == "rl"]
    assert rl[0]["kl_ref"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before any update
    assert rl[2]["kl_ref"] > 1e-6
