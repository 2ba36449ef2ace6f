"""Adaptive sampling temperatures (rollout/temperature.py): the engine's per-row temperatures, HAPO's
schedule by hand, its checkpointed state, and the HAPO recipe in a tiny run with exact resume."""

import json
import math
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.cli import main, resolve_config
from credo.credit import CREDIT
from credo.credit.base import CreditInputs
from credo.errors import CredoError
from credo.rollout import SamplingParams
from credo.rollout.temperature import HAPOTemperature, make_schedule
from credo.rollout.torch_engine import choose_tokens
from credo.tasks import TASKS
from credo.train.logging import read_metrics
from credo.train.run import validate

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask  # noqa: E402

LOGITS = torch.randn(5, 11, generator=torch.Generator().manual_seed(0)) * 3


def test_a_constant_temperature_fn_is_bitwise_the_fixed_temperature():
    fixed = SamplingParams(temperature=0.7, top_p=0.9)
    adaptive = replace(fixed, temperature_fn=lambda logits: torch.full((logits.shape[0],), 0.7))
    a = choose_tokens(LOGITS, fixed, torch.Generator().manual_seed(3))
    b = choose_tokens(LOGITS, adaptive, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_per_row_temperatures_give_the_logprobs_of_the_distribution_sampled():
    temps = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.8])
    sampling = SamplingParams(temperature=1.0, temperature_fn=lambda logits: temps)
    tokens, logprobs = choose_tokens(LOGITS, sampling, torch.Generator().manual_seed(1))
    for a in range(5):
        want = torch.log_softmax(LOGITS[a] / temps[a], dim=-1)[tokens[a]]
        assert logprobs[a].item() == pytest.approx(want.item(), abs=1e-6)
    greedy = replace(sampling, temperature=0.0)  # greedy ignores the schedule
    assert torch.equal(choose_tokens(LOGITS, greedy, torch.Generator())[0], LOGITS.argmax(-1))


def _row_entropy(logits):
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def test_hapo_schedule_by_hand():
    schedule = HAPOTemperature(temperature=1.0, tau=0.05, pivot=0.8)
    assert torch.equal(schedule(LOGITS), torch.ones(5))  # no statistics yet: the fixed temperature
    # valid log-entropies 0..4 (and one masked-out position): pivot 0.8 -> median l = 3;
    # h = l - 3 in [-3, 1], std = sqrt(15 / 5) = sqrt(3); signed h_hat = (l - 3) for l > 3, (l - 3) / 3 below
    entropy = torch.tensor([[math.exp(v) for v in (0.0, 1.0, 2.0, 3.0, 4.0, 9.0)]])
    mask = torch.tensor([[True] * 5 + [False]])
    metrics = schedule.observe(entropy, mask)
    assert metrics["temp_entropy_median"] == pytest.approx(3.0, abs=1e-6)
    assert metrics["temp_entropy_std"] == pytest.approx(math.sqrt(3.0), abs=1e-6)
    ell = torch.log(_row_entropy(LOGITS))
    h_hat = torch.where(ell > 3, (ell - 3).clamp(max=1.0), ((ell - 3) / 3).clamp(min=-1.0))
    torch.testing.assert_close(schedule(LOGITS), 1.0 + 0.05 * h_hat, atol=1e-5, rtol=0)
    again = HAPOTemperature(temperature=1.0)
    again.load_state(json.loads(json.dumps(schedule.state())))
    assert torch.equal(again(LOGITS), schedule(LOGITS))


def test_schedule_errors_name_the_field():
    assert make_schedule("none", {}, 1.0) is None
    with pytest.raises(CredoError, match="temperature_params"):
        make_schedule("hapo", {"nope": 1}, 1.0)
    with pytest.raises(CredoError, match="pivot"):
        make_schedule("hapo", {"pivot": 2.0}, 1.0)
    cfg = resolve_config("tiny", None, [("rollout.temperature_schedule", "hapo"), ("rollout.engine", "vllm")])
    with pytest.raises(CredoError, match="torch engine"):
        validate(cfg)


def test_hapo_credit_is_the_length_weighted_group_advantage():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False],
                         [True, True, False, False], [True, True, True, True]])
    adv = CREDIT.get("hapo")(CreditInputs(rewards, torch.tensor([0, 0, 1, 1]), mask))
    # group 0: lengths 3, 1 -> mu = 3/4, sigma = sqrt(3/4 * 1/16 + 1/4 * 9/16) = sqrt(3)/4
    s0 = math.sqrt(3) / 4
    # group 1: lengths 2, 4 -> mu = 4/6, sigma = sqrt(2/6 * 4/9 + 4/6 * 1/9) = sqrt(2)/3
    s1 = math.sqrt(2) / 3
    want = torch.tensor([0.25 / s0, -0.75 / s0, -(2 / 3) / s1, (1 / 3) / s1])
    torch.testing.assert_close(adv[:, 0], want, atol=1e-5, rtol=0)
    assert torch.equal(adv == 0, ~mask)


def _final_weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "final" / "model" / "model.safetensors"))


def test_the_hapo_recipe_runs_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    args = ["train", "--preset", "tiny", "--recipe", "hapo", "--run.out_dir", str(tmp_path), "--run.progress",
            "false", "--rl.steps", "3", "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4",
            "--warmup.steps", "1", "--model.threads", "1", "--run.checkpoint_every", "1",
            "--rl.dynamic_sampling", "false"]
    assert main(args + ["--run.name", "ref"]) == 0
    ref = tmp_path / "ref"
    rl = [r for r in read_metrics(ref / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 3 and all(math.isfinite(r["temp_entropy_median"]) for r in rl)
    saved = json.loads((ref / "config.json").read_text())
    assert (saved["rollout"]["temperature_schedule"], saved["rl"]["credit"], saved["rl"]["objective"]) == \
        ("hapo", "hapo", "hapo_token")
    state = json.loads((ref / "checkpoints" / "final" / "state.json").read_text())
    assert set(state["temperature_schedule"]) == {"median", "std", "scale_pos", "scale_neg"}
    # resume from the step-2 checkpoint: the third rollout must use the restored statistics
    crash = tmp_path / "crash"
    shutil.copytree(ref, crash)
    for folder in (crash / "checkpoints").iterdir():
        if folder.name not in ("warmup", "step_2"):
            shutil.rmtree(folder)
    (crash / "summary.json").unlink()  # as if killed during step 3
    assert (crash / "checkpoints" / "step_2").is_dir()
    assert main(["train", "--resume", str(crash)]) == 0
    ref_w, got_w = _final_weights(ref), _final_weights(crash)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
