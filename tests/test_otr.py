"""The otr stage (stages/otr.py): the loss on a hand-made distribution (exact values and gradients), a fixed
generator's candidates, the K -> infinity limit against the expectation, the parameter checks, the stage end
to end on the tiny model, and a SIGKILL with a bitwise resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.errors import CredoError
from credo.stages.otr import (OTRParams, candidate_rewards, draw_candidates, otr_expected_loss, otr_loss)

P = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.05, 0.05, 0.1, 0.8]], dtype=torch.float64)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_loss_and_gradient_on_a_hand_made_distribution():
    logp = torch.log(P).requires_grad_(True)
    targets = torch.tensor([0, 2])
    candidates = torch.tensor([[0, 1, 0, 3], [3, 3, 2, 3]])
    assert candidate_rewards(candidates, targets, penalty=0.1).tolist() == \
        [[1.0, pytest.approx(-0.1), 1.0, pytest.approx(-0.1)], [pytest.approx(-0.1)] * 2 + [1.0, pytest.approx(-0.1)]]
    loss = otr_loss(logp, candidates, targets, penalty=0.1, gt_weight=0.25)
    ln = math.log
    row0 = -(ln(0.5) - 0.1 * ln(0.25) + ln(0.5) - 0.1 * ln(0.1)) / 4 - 0.25 * ln(0.5)
    row1 = -(-0.1 * ln(0.8) * 3 + ln(0.1)) / 4 - 0.25 * ln(0.1)
    assert loss.tolist() == pytest.approx([row0, row1], abs=1e-12)
    loss.sum().backward()
    # d L / d log pi(v) = -(1/K) sum_k r_k 1[a_k = v] - gt_weight 1[v = y*]
    want = [[-(2 / 4) - 0.25, 0.1 / 4, 0.0, 0.1 / 4], [0.0, 0.0, -(1 / 4) - 0.25, 0.3 / 4]]
    assert torch.allclose(logp.grad, torch.tensor(want, dtype=torch.float64), atol=1e-15)
    # no penalty and no ground-truth term: only the hits count
    plain = otr_loss(torch.log(P), candidates, targets, penalty=0.0, gt_weight=0.0)
    assert plain.tolist() == pytest.approx([-2 * ln(0.5) / 4, -ln(0.1) / 4])
    # with the ground truth the only candidate, K hits and gt_weight 1/K: exactly the SFT loss x (1 + 1/K)
    hits = otr_loss(torch.log(P), targets[:, None].repeat(1, 4), targets, penalty=0.1, gt_weight=0.25)
    assert hits.tolist() == pytest.approx([-1.25 * ln(0.5), -1.25 * ln(0.1)])


def test_candidates_of_a_fixed_generator_give_an_exact_loss():
    logp = torch.log(P)
    targets = torch.tensor([0, 3])
    got = draw_candidates(logp, samples=6, temperature=0.7, generator=torch.Generator().manual_seed(11))
    q = torch.softmax(logp.float() / 0.7, dim=-1)  # independent: softmax(z / T) = softmax(log p / T)
    want = torch.multinomial(q, 6, replacement=True, generator=torch.Generator().manual_seed(11))
    assert torch.equal(got, want) and got.shape == (2, 6)
    loss = otr_loss(logp, got, targets, penalty=0.2, gt_weight=0.5)
    by_hand = []
    for n in range(2):
        total = sum((1.0 if int(a) == int(targets[n]) else -0.2) * math.log(float(P[n, a])) for a in got[n])
        by_hand.append(-total / 6 - 0.5 * math.log(float(P[n, targets[n]])))
    assert loss.tolist() == pytest.approx(by_hand, abs=1e-12)
    # a point mass: every candidate is that token (at any temperature); a tiny temperature picks the argmax
    point = torch.log(torch.tensor([[0.0, 1.0, 0.0]]))
    drawn = draw_candidates(point, samples=5, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert drawn.tolist() == [[1] * 5]
    cold = draw_candidates(logp, samples=50, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    assert cold.tolist() == [[0] * 50, [3] * 50]
    assert draw_candidates(logp[:0], samples=3, temperature=1.0, generator=torch.Generator()).shape == (0, 3)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_many_candidates_approach_the_expectation(temperature):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64) * 1.5
    targets = torch.tensor([2, 0, 6])
    kw = dict(penalty=0.3, gt_weight=0.1)
    z_mc = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(z_mc, -1)
    cands = draw_candidates(logp, samples=200_000, temperature=temperature, generator=torch.Generator().manual_seed(5))
    mc = otr_loss(logp, cands, targets, **kw)
    mc.sum().backward()
    z_ex = logits.clone().requires_grad_(True)
    expected = otr_expected_loss(torch.log_softmax(z_ex, -1), targets, temperature=temperature, **kw)
    expected.sum().backward()
    # |r log p| <= 4.8 here (min p 0.0086), so the standard error is below 0.011
    # (and the expectations at T = 1 and T = 0.5 differ by 0.42 at two positions)
    assert mc.tolist() == pytest.approx(expected.tolist(), abs=0.03)
    assert torch.allclose(z_mc.grad, z_ex.grad, atol=0.02)
    if temperature == 1.0:  # at T = 1: sum_a pi(a) grad log pi(a) = 0, so the expected gradient is
        # -(1 + penalty) sg[pi(y*)] grad log pi(y*) - gt_weight grad log pi(y*)
        z = logits.clone().requires_grad_(True)
        lp = torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)
        (-(1 + 0.3) * lp.detach().exp() * lp - 0.1 * lp).sum().backward()
        assert torch.allclose(z.grad, z_ex.grad, atol=1e-12)


def test_params_are_checked_with_the_field_named():
    from credo.stages import STAGES, parse_params

    kind = STAGES.get("otr")
    for table, field in (({"samples": 0}, "samples"), ({"temperature": 0.0}, "temperature"),
                         ({"penalty": -1.0}, "penalty"), ({"gt_weight": -0.5}, "gt_weight"),
                         ({"lr": 0.0}, "lr"), ({"micro_batch": -1}, "micro_batch"), ({"data": " "}, "data"),
                         ({"kk": 1}, "kk"), ({"steps": "4"}, "steps")):
        with pytest.raises(CredoError, match=field):
            parse_params(kind, table, "stage 'o' (otr)")
    params = parse_params(kind, {"samples": 8, "gt_weight": None}, "x")
    assert params.ground_truth_weight == 1 / 8 and OTRParams(gt_weight=0.5).ground_truth_weight == 0.5


def _cfg(out: Path, name: str, **extra):
    from credo.resolve import resolve_config

    fields = {"run.out_dir": str(out), "run.name": name, "run.progress": "false", "task.eval_size": "4",
              "model.threads": "1", **extra}
    return resolve_config("tiny", None, list(fields.items()))


def test_otr_stage_end_to_end_lowers_the_nll(tmp_path):
    from credo.stages.otr import run_otr
    from credo.train.logging import read_metrics

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a}+1?", "solution": f"<answer>{a + 1}</answer>"}) + "\n"
                            for a in (2, 5)))
    summary = run_otr(_cfg(tmp_path, "o"), OTRParams(data=str(data), prompt_field="question", response_field="solution",
                                                     steps=6, batch_size=2, samples=8, lr=1e-3, micro_batch=1))
    run = tmp_path / "o"
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "otr"]
    assert [r["step"] for r in rows] == list(range(6))
    nll = [r["nll"] for r in rows]
    assert all(b < a for a, b in zip(nll, nll[1:])), nll  # the same two rows every step: the NLL falls each step
    assert rows[-1]["gt_prob"] > rows[0]["gt_prob"]
    for r in rows:
        assert math.isfinite(r["loss"]) and r["tokens"] > 0 and 0.0 <= r["hit_rate"] <= 1.0
    assert summary["rows"] == 2 and summary["final"]["n"] == 4
    assert (run / "checkpoints" / "final" / "model" / "model.safetensors").is_file()
    assert json.loads((run / "stage.json").read_text())["kind"] == "otr"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(CredoError, match=r"bad.jsonl:1: field 'solution'"):
        run_otr(_cfg(tmp_path, "b"), OTRParams(data=str(bad), prompt_field="question", response_field="solution"))


def _stage(config: Path, params: Path, *, resume=False, fault=None):
    env = dict(os.environ)
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    argv = [sys.executable, "-m", "credo", "stage", "otr", "--config", str(config), "--params", str(params)]
    return subprocess.run(argv + (["--resume"] if resume else []), env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_sigkill_then_resume_is_bitwise(tmp_path):
    """The task's demonstrations, micro-batches, checkpoints and evaluations every 2 steps, killed in step 3
    (between its backward and its update): the resume equals the uninterrupted run."""
    from credo.config import to_dict
    from credo.train.logging import read_metrics

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"steps": 5, "batch_size": 3, "samples": 4, "temperature": 1.5, "lr": 1e-3,
                                  "micro_batch": 2, "checkpoint_every": 2, "eval_every": 2}))
    runs = {}
    for name in ("ref", "crash"):
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(to_dict(_cfg(tmp_path, name))))
        runs[name] = (config, tmp_path / name)
    ref = _stage(runs["ref"][0], params)
    assert ref.returncode == 0, ref.stderr[-2000:]
    crashed = _stage(runs["crash"][0], params, fault="update:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (runs["crash"][1] / "summary.json").exists()
    resumed = _stage(runs["crash"][0], params, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "step_2" in resumed.stdout

    def comparable(run):
        return [{k: v for k, v in r.items() if k != "step_time"} for r in read_metrics(run / "metrics.jsonl")]

    want = comparable(runs["ref"][1])
    assert comparable(runs["crash"][1]) == want
    assert [r["stage"] for r in want if r["phase"] == "eval"] == ["base", "step_2", "step_4", "otr"]
    weights = [load_file(str(run / "checkpoints" / "final" / "model" / "model.safetensors"))
               for _, run in runs.values()]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
