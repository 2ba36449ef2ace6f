"""Adaptive entropy control (Skywork-OR1, as TRL implements it): the controller by hand, its wiring
into the PPO update (the coefficient each optimizer step applies, the entropy it observes), errors
that name the field, and a tiny run that checkpoints the state and resumes exactly."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.cli import main, resolve_config
from credo.errors import CredoError
from credo.logprobs import policy_outputs
from credo.objectives.entropy_control import AdaptiveEntropyControl, make_entropy_control
from credo.objectives.grpo import grpo_loss
from credo.tasks import TASKS
from credo.train.logging import read_metrics
from credo.train.rl import ppo_update
from credo.train.run import validate

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures modules (import mode is importlib)
from fixture_tasks import ParityTask  # noqa: E402
from test_optim_and_update import _rollout_batch, _settings  # noqa: E402


def test_adaptive_control_by_hand():
    """target 0.5, delta 0.1, [0, 0.2], c0 0.05: entropies 0.6, 0.4, 0.4, 0.4, 0.7, 0.5."""
    c = AdaptiveEntropyControl(coef=0.05, target=0.5, delta=0.1, coef_min=0.0, coef_max=0.2)
    applied, coefs = [], []
    for h in (0.6, 0.4, 0.4, 0.4, 0.7, 0.5):
        applied.append(c.coef_for_step())
        c.observe(h)
        coefs.append(c.coef)
    # step 1 applies nothing (no measurement yet); 0.6 > target lowers c to max(0.05 - 0.1, 0) = 0
    assert coefs == pytest.approx([0.0, 0.1, 0.2, 0.2, 0.1, 0.2])  # clamped at 0.2; 0.5 <= target raises
    # applied: c only after a step whose entropy was <= target (0.6 and 0.7 were above)
    assert applied == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.2, 0.0])
    assert c.last_entropy == 0.5 and c.coef_for_step() == pytest.approx(0.2)


def test_a_step_without_tokens_leaves_the_state_and_the_state_round_trips():
    c = AdaptiveEntropyControl(coef=0.3)
    c.observe(float("nan"))
    assert (c.coef, c.last_entropy) == (0.3, math.inf)
    assert json.loads(json.dumps(c.state())) == {"coef": 0.3, "last_entropy": None}
    c.observe(0.1)  # <= the default target 0.2: up by the default delta 0.005
    again = AdaptiveEntropyControl(coef=0.0)
    again.load_state(json.loads(json.dumps(c.state())))
    assert (again.coef, again.last_entropy) == (pytest.approx(0.305), 0.1)


@pytest.mark.parametrize("params, match", [
    ({"target": -1}, "target"), ({"delta": float("nan")}, "delta"), ({"coef_min": 2.0}, "coef_min"),
    ({"target": "high"}, "target"), ({"tau": 1}, "no parameter"),
])
def test_bad_params_name_the_field(params, match):
    with pytest.raises(CredoError, match=match):
        make_entropy_control("adaptive", params, 0.0)


def test_validate_refuses_bad_entropy_control():
    cfg = resolve_config("tiny", None, [("rl.entropy_control", "adaptive"), ("rl.entropy_control_params", '{"delta": -1}')])
    with pytest.raises(CredoError, match="rl.entropy_control_params: adaptive delta"):
        validate(cfg)
    with pytest.raises(CredoError, match="rl.entropy_control"):
        validate(resolve_config("tiny", None, [("rl.entropy_control", "sometimes")]))
    assert make_entropy_control("none", {}, 0.1) is None


def _mean_entropy(model, batch, rows) -> float:
    part = batch.select(rows)
    with torch.no_grad():
        out = policy_outputs(model, part.tokens, part.attention_mask, part.loss_mask, temperature=1.0,
                             needs=frozenset({"entropy"}))
    m = part.loss_mask
    return float((out.entropy * m).sum() / m.sum())


class Spy(AdaptiveEntropyControl):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[float] = []

    def observe(self, entropy: float) -> None:
        self.seen.append(entropy)
        super().observe(entropy)


def test_the_update_applies_the_step_coefficient_and_observes_the_step_entropy(tiny_policy):
    """One optimizer step (minibatches 1): the controller sees the masked mean entropy of the whole
    batch under the pre-step model; the step applied 0 (no measurement yet), so the weights equal a
    fixed entropy_coef 0 update bitwise, and the coefficient moved by delta."""
    model = tiny_policy.model
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 1.0])
    rows = torch.tensor([0, 1])  # the non-zero-advantage group (skip_zero_advantage)
    expected_h = _mean_entropy(model, batch, rows)
    start = [p.detach().clone() for p in model.parameters()]

    def run(settings, control):
        with torch.no_grad():
            for p, s in zip(model.parameters(), start):
                p.copy_(s)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        out = ppo_update(model, opt, batch, grpo_loss, settings, torch.Generator().manual_seed(0),
                         entropy_control=control)
        return out, [p.detach().clone() for p in model.parameters()]

    spy = Spy(coef=0.1, target=1e9, delta=0.05)
    out, adaptive = run(_settings(minibatches=1), spy)
    assert spy.seen == [pytest.approx(expected_h, rel=1e-5)]
    assert (out["entropy_coef"], out["entropy_coef_applied"]) == (pytest.approx(0.15), 0.0)
    _, fixed_zero = run(_settings(minibatches=1, entropy_coef=0.0), None)
    assert all(torch.equal(a, b) for a, b in zip(adaptive, fixed_zero))
    # a controller whose last entropy was at the target applies its coefficient: equal to the fixed bonus
    armed = AdaptiveEntropyControl(coef=0.3, target=1e9, delta=0.05)
    armed.last_entropy = 1.0
    out, adaptive = run(_settings(minibatches=1), armed)
    _, fixed = run(_settings(minibatches=1, entropy_coef=0.3), None)
    assert out["entropy_coef_applied"] == pytest.approx(0.3)
    assert all(torch.equal(a, b) for a, b in zip(adaptive, fixed))
    assert not all(torch.equal(a, b) for a, b in zip(fixed, fixed_zero))  # the bonus did act


def test_two_minibatches_make_two_controller_steps(tiny_policy):
    batch = _rollout_batch(tiny_policy, [1.0, 0.0, 1.0, 1.0])
    spy = Spy(coef=0.1, target=1e9, delta=0.05)
    opt = torch.optim.SGD(tiny_policy.model.parameters(), lr=0.0)  # lr 0: both steps see the same model
    out = ppo_update(tiny_policy.model, opt, batch, grpo_loss, _settings(minibatches=2), torch.Generator().manual_seed(0),
                     entropy_control=spy)
    assert out["updates"] == 2 and len(spy.seen) == 2
    h0, h1 = _mean_entropy(tiny_policy.model, batch, torch.tensor([0])), _mean_entropy(tiny_policy.model, batch, torch.tensor([1]))
    assert sorted(spy.seen) == pytest.approx(sorted([h0, h1]), rel=1e-5)  # one row per minibatch, in shuffled order
    assert out["entropy_coef"] == pytest.approx(0.2) and out["entropy_coef_applied"] == pytest.approx(0.075)


def _final_weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "final" / "model" / "model.safetensors"))


def test_adaptive_entropy_runs_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.progress", "false",
            "--rl.steps", "3", "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4",
            "--warmup.steps", "1", "--model.threads", "1", "--run.checkpoint_every", "1",
            "--rl.entropy_coef", "0.01", "--rl.entropy_control", "adaptive",
            "--rl.entropy_control_params", '{"target": 100.0, "delta": 0.02}']
    assert main(args + ["--run.name", "ref"]) == 0
    ref = tmp_path / "ref"
    rl = [r for r in read_metrics(ref / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 3
    # target 100 nats: every step's entropy is below it, so c rises by 0.02 per optimizer step
    steps = [r["updates"] + r["skipped_updates"] for r in rl]
    expected = 0.01 + 0.02 * torch.tensor(steps).cumsum(0)
    assert [r["entropy_coef"] for r in rl] == pytest.approx(expected.tolist())
    state = json.loads((ref / "checkpoints" / "final" / "state.json").read_text())
    assert state["entropy_control"]["coef"] == pytest.approx(rl[-1]["entropy_coef"])
    crash = tmp_path / "crash"
    shutil.copytree(ref, crash)
    for folder in (crash / "checkpoints").iterdir():
        if folder.name not in ("warmup", "step_2"):
            shutil.rmtree(folder)
    (crash / "summary.json").unlink()  # as if killed during step 3
    assert main(["train", "--resume", str(crash)]) == 0
    ref_w, got_w = _final_weights(ref), _final_weights(crash)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    resumed = [r for r in read_metrics(crash / "metrics.jsonl") if r["phase"] == "rl"]
    assert resumed[-1]["entropy_coef"] == pytest.approx(rl[-1]["entropy_coef"])
