"""CHORD (rl.sft_mix "chord", train/sft_mix.py): the mu schedule at hand-chosen steps against the spec formula,
the phi-weighted SFT loss by hand and on the tiny model against an independent forward, one optimizer step
whose gradient is exactly (1 - mu) grad L_rl + mu grad L_sft, validation, tiny runs, SIGKILL + bitwise resume."""

from __future__ import annotations

import copy
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
from credo.train.sft_mix import ChordMix, ChordParams, chord_mu, phi_weights, sft_per_token

TESTS = Path(__file__).parent
TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def spec_mu(t, warmup, decay, peak, valley):
    """objectives.md section 26, written out independently."""
    if t < warmup:
        return peak * t / warmup
    if t < warmup + decay:
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / decay))
    return valley


def test_mu_schedule_at_hand_chosen_steps():
    paper = dict(mu_warmup=200, mu_decay=400, mu_peak=0.5, mu_valley=0.02)  # the paper's example YAML
    hand = {0: 0.0, 50: 0.125, 199: 0.4975, 200: 0.5, 300: 0.02 + 0.24 * (1 + math.sqrt(0.5)), 400: 0.26,
            500: 0.02 + 0.24 * (1 - math.sqrt(0.5)), 599: 0.02 + 0.24 * (1 - math.cos(math.pi / 400)), 600: 0.02,
            10_000: 0.02}
    for t, want in hand.items():
        assert chord_mu(t, **paper) == pytest.approx(want, abs=1e-12), t
        assert chord_mu(t, **paper) == pytest.approx(spec_mu(t, 200, 400, 0.5, 0.02), abs=1e-12)
    # Trinity's defaults: a constant 0.1 from the first step (no warm-up, no decay: no division by zero)
    assert [chord_mu(t) for t in (0, 1, 7, 10_000)] == [0.1] * 4
    # CHORD-mu's schedule (0 / 200 / 0.9 / 0.05): the decay starts at its peak
    assert chord_mu(0, mu_warmup=0, mu_decay=200, mu_peak=0.9, mu_valley=0.05) == pytest.approx(0.9)
    assert chord_mu(100, mu_warmup=0, mu_decay=200, mu_peak=0.9, mu_valley=0.05) == pytest.approx(0.475)
    # warm-up with no decay: straight from the peak's ramp to the valley
    assert [chord_mu(t, mu_warmup=4, mu_decay=0, mu_peak=0.8, mu_valley=0.2) for t in (2, 3, 4)] == \
        pytest.approx([0.4, 0.6, 0.2])
    # RL step s (0-based) uses Trinity's 1-based global step s + 1
    mix = ChordMix(ChordParams(**paper), [([1, 2, 3], 1)], pad_id=0, seed=0)
    assert [mix.mu(s) for s in (0, 199, 399)] == pytest.approx([0.5 / 200, 0.5, 0.26])


def test_phi_weighted_loss_by_hand():
    logprobs = torch.log(torch.tensor([[0.5, 0.9, 0.1], [0.2, 0.99, 0.7]], dtype=torch.float64)).requires_grad_(True)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert torch.allclose(phi_weights(logprobs), torch.tensor([[0.25, 0.09, 0.09], [0.16, 0.0099, 0.21]],
                                                              dtype=torch.float64))
    per = sft_per_token(logprobs, mask, phi=True)
    want = [[-math.log(0.5) * 0.25, -math.log(0.9) * 0.09, 0.0], [0.0, -math.log(0.99) * 0.0099, -math.log(0.7) * 0.21]]
    assert torch.allclose(per, torch.tensor(want, dtype=torch.float64), atol=1e-15)
    per.sum().backward()  # phi is detached: d/dlogp = -phi on the mask, 0 off it
    want_grad = torch.tensor([[-0.25, -0.09, 0.0], [0.0, -0.0099, -0.21]], dtype=torch.float64)
    assert torch.allclose(logprobs.grad, want_grad)
    plain = sft_per_token(logprobs.detach(), mask, phi=False)
    assert torch.allclose(plain, torch.where(mask, -logprobs.detach(), torch.zeros_like(plain)))
    # phi -> 0 at both ends: a certain token and an impossible one carry no SFT signal
    assert phi_weights(torch.tensor([0.0, -80.0])).tolist() == [0.0, pytest.approx(0.0, abs=1e-30)]


ROWS = [([5, 17, 300, 42, 7, 9], 3), ([11, 12, 13, 14], 2), ([8, 99, 1000, 3, 2, 1, 5], 4)]  # (ids, first scored)


def reference_sft(model, rows, *, phi):
    """Token mean of -log p sg[phi] over the scored tokens, from the model's own logits (no credo code)."""
    terms = []
    for ids, start in rows:
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[start - 1:]
        p = logp.detach().exp()
        terms.append(-logp * (p * (1 - p) if phi else 1.0))
    return torch.cat(terms).sum() / sum(len(t) for t in terms)


def _settings(**extra):
    from credo.train.rl import UpdateSettings

    base = dict(reduction="token_mean", minibatches=1, epochs=1, micro_batch_size=2, max_grad_norm=1e9,
                temperature=1.0, norm_constant=8.0, skip_zero_advantage=False, autocast_dtype=None)
    return UpdateSettings(**{**base, **extra})


def close(a, b, rel=1e-4):
    """Equal up to float rounding, relative to the tensor's size (elementwise rtol fails near zero)."""
    return float((a - b).norm()) <= rel * max(float(b.norm()), 1e-12)


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("phi", [True, False])
def test_sft_backward_on_the_tiny_model_matches_an_independent_forward(tiny_policy, phi):
    model = copy.deepcopy(tiny_policy.model).train()
    mix = ChordMix(ChordParams(mu_peak=0.3, mu_valley=0.3, phi=phi, expert_batch=3), ROWS, pad_id=0, seed=4)
    step = mix.at_step(5)
    assert step.mu == pytest.approx(0.3) and step.rl_weight == pytest.approx(0.7)
    step.backward(model, _settings(micro_batch_size=2))  # two micro-batches, one global token count
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    want_loss = reference_sft(model, ROWS, phi=phi)
    (0.3 * want_loss).backward()
    for a, b in zip(got, _grads(model)):
        assert close(a, b)
    m = step.metrics()
    assert m["sft_loss"] == pytest.approx(want_loss.item(), rel=1e-5) and m["expert_tokens"] == 3 + 2 + 3
    nll = reference_sft(model, ROWS, phi=False)
    assert m["sft_nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert 0 < m["phi_mean"] < 0.25


def test_expert_rows_are_a_pure_function_of_seed_and_step():
    mix = ChordMix(ChordParams(expert_batch=3), [([1, 2], 1)] * 10, pad_id=0, seed=7)
    a, b = mix.at_step(3), mix.at_step(3)
    first = [a.draw() for _ in range(4)]
    assert first == [b.draw() for _ in range(4)]  # same (seed, step): same rows for every optimizer step
    assert all(len(set(r)) == 3 for r in first)  # no repeat inside an optimizer step
    assert first != [mix.at_step(4).draw() for _ in range(4)]
    big = ChordMix(ChordParams(expert_batch=5), [([1, 2], 1)] * 2, pad_id=0, seed=7).at_step(0).draw()
    assert len(big) == 5 and set(big) <= {0, 1}  # a pool smaller than the batch: drawn with repeats


def _rollout_batch(seed=0):
    from credo.batch import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    B, T = 4, 9
    tokens = torch.randint(0, 2000, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.bool)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 4:] = True
    mask[1, 7:] = False
    attention[1, 7:] = False
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])[:, None] * mask
    return RolloutBatch(tokens, attention, mask, torch.zeros(B, T), adv, torch.zeros(B),
                        torch.tensor([0, 0, 1, 1]))


def test_one_update_is_the_mixed_loss_gradient(tiny_policy):
    """ppo_update with CHORD, one minibatch, SGD lr 1: the weight change is -[(1 - mu) grad L_rl + mu grad L_sft]."""
    from credo.logprobs import token_logprobs
    from credo.objectives import OBJECTIVES, reduce_loss
    from credo.train.rl import ppo_update

    model = copy.deepcopy(tiny_policy.model)
    before = [p.detach().clone() for p in model.parameters()]
    batch = _rollout_batch()
    # phi off: on a random model p ~ 1e-5, so phi-weighted gradients would be too small to tell the parts apart
    mix = ChordMix(ChordParams(mu_peak=0.4, mu_valley=0.4, expert_batch=2, phi=False), ROWS, pad_id=0, seed=1)
    step = mix.at_step(2)
    expert = [ROWS[i] for i in mix.at_step(2).draw()]  # the rows the update will draw (same generator)
    grpo = OBJECTIVES.get("grpo")
    out = ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, grpo, _settings(micro_batch_size=3),
                     torch.Generator().manual_seed(0), sft_mix=step)
    assert out["updates"] == 1 and out["mu"] == pytest.approx(0.4)
    delta = [b - p.detach() for b, p in zip(before, model.parameters())]

    ref = copy.deepcopy(tiny_policy.model).train()
    with torch.no_grad():
        old = token_logprobs(ref, batch.tokens, batch.attention_mask, batch.loss_mask)
    batch.old_logprobs = old
    logp = token_logprobs(ref, batch.tokens, batch.attention_mask, batch.loss_mask)
    l_rl = reduce_loss(grpo(logp, batch).per_token, batch.loss_mask, "token_mean")
    l_sft = reference_sft(ref, expert, phi=False)
    params = list(ref.parameters())
    g_rl = torch.autograd.grad(l_rl, params, allow_unused=True, retain_graph=True)
    g_sft = torch.autograd.grad(l_sft, params, allow_unused=True)
    zero = [torch.zeros_like(p) for p in params]
    g_rl = [z if g is None else g for g, z in zip(g_rl, zero)]
    g_sft = [z if g is None else g for g, z in zip(g_sft, zero)]
    for d, a, b in zip(delta, g_rl, g_sft):
        assert close(d, (1 - 0.4) * a + 0.4 * b, rel=1e-3)
    assert out["sft_loss"] == pytest.approx(l_sft.item(), rel=1e-5)
    assert out["loss"] == pytest.approx(l_rl.item(), rel=1e-4)  # the logged RL loss is the unweighted one
    # both parts are really there: neither gradient is negligible next to the step
    norm = lambda gs: math.sqrt(sum(float((g ** 2).sum()) for g in gs))  # noqa: E731
    assert norm(g_sft) * 0.4 > 1e-3 * norm(delta) and norm(g_rl) * 0.6 > 1e-3 * norm(delta)


def test_a_step_without_trainable_rows_still_trains_the_expert_part(tiny_policy):
    from credo.objectives import OBJECTIVES
    from credo.train.rl import ppo_update

    model = copy.deepcopy(tiny_policy.model)
    batch = _rollout_batch()
    batch.advantages = torch.zeros_like(batch.advantages)  # every group uniform
    step = ChordMix(ChordParams(expert_batch=2), ROWS, pad_id=0, seed=1).at_step(0)
    before = [p.detach().clone() for p in model.parameters()]
    out = ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, OBJECTIVES.get("grpo"),
                     _settings(skip_zero_advantage=True, minibatches=2, epochs=2), torch.Generator().manual_seed(0),
                     sft_mix=step)
    assert out["updates"] == 4 and out["trained_sequences"] == 0 and step.steps == 4
    assert out["mu"] == pytest.approx(0.1) and out["sft_loss"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # without CHORD the same batch makes no optimizer step at all
    plain = ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, OBJECTIVES.get("grpo"),
                       _settings(skip_zero_advantage=True), torch.Generator().manual_seed(0))
    assert plain["updates"] == 0


def test_bad_config_names_the_field(tmp_path):
    from credo.cli import resolve_config
    from credo.train.run import validate

    def cfg(*pairs):
        return resolve_config("tiny", None, [("rl.sft_mix", "chord"), *pairs])

    validate(cfg(("rl.sft_mix_params", '{"mu_warmup": 3, "mu_decay": 5, "phi": false}')))
    cases = [('{"mu_peak": 1.5}', r"\['mu_peak'\]: must be in \[0, 1\]"),
             ('{"phi": "yes"}', r"\['phi'\]: must be true or false"),
             ('{"mu_decay": -1}', r"\['mu_decay'\]: must be >= 0"),
             ('{"expert_batch": 0}', r"\['expert_batch'\]: must be >= 1"),
             ('{"mu_warmup": 2.5}', r"\['mu_warmup'\]: must be an integer"),
             ('{"muu_peak": 0.2}', r"unknown key\(s\) muu_peak"),
             (json.dumps({"source": str(tmp_path / "missing.jsonl")}), r"\['source'\]: is neither")]
    for params, message in cases:
        with pytest.raises(CredoError, match=message):
            validate(cfg(("rl.sft_mix_params", params)))
    with pytest.raises(CredoError, match="rl.sft_mix_params is set"):
        validate(resolve_config("tiny", None, [("rl.sft_mix_params", '{"mu_peak": 0.2}')]))
    with pytest.raises(CredoError, match="dist.strategy 'ddp' is not built yet"):
        validate(cfg(("dist.strategy", "ddp")))


def test_file_rows_are_checked_by_row_and_field(tiny_policy, tmp_path):
    from credo.tasks.arithmetic import ArithmeticTask
    from credo.train.sft import supervised_pairs

    path = tmp_path / "expert.jsonl"
    path.write_text('{"prompt": "What is 1+1?", "response": "<answer>2</answer>"}\n{"prompt": "x", "answer": "y"}\n')
    with pytest.raises(CredoError, match=r"expert.jsonl:2: field 'response' must be a non-empty string"):
        supervised_pairs(str(path), ArithmeticTask(), n=4, seed=0, where="rl.sft_mix_params['source']")


def _train(tmp_path, name, *extra):
    from credo.cli import main
    from credo.train.logging import read_metrics

    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name, "--run.progress", "false",
            "--run.eval_base", "false", "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1",
            "--rl.sft_mix", "chord", *extra]
    assert main(args) == 0
    return [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]


def test_tiny_run_logs_the_schedule_and_the_expert_loss(tmp_path):
    params = {"mu_warmup": 2, "mu_decay": 2, "mu_peak": 0.6, "mu_valley": 0.1, "expert_batch": 3, "pool": 16}
    rows = _train(tmp_path, "task", "--rl.steps", "4", "--rl.sft_mix_params", json.dumps(params))
    assert [r["mu"] for r in rows] == pytest.approx([chord_mu(s + 1, **{k: params[k] for k in (
        "mu_warmup", "mu_decay", "mu_peak", "mu_valley")}) for s in range(4)])
    assert [r["mu"] for r in rows] == pytest.approx([0.3, 0.6, 0.35, 0.1])
    for r in rows:
        assert r["updates"] == 2 and math.isfinite(r["loss"]) and r["sft_loss"] > 0
        assert 0 < r["phi_mean"] <= 0.25 and r["expert_tokens"] > 0 and r["sft_nll"] > r["sft_loss"]


def test_pure_sft_on_a_file_lowers_the_expert_nll(tmp_path):
    """mu = 1: the RL part has weight 0 and every optimizer step is SFT on the file's rows (plain NLL)."""
    path = tmp_path / "expert.jsonl"
    path.write_text("".join(json.dumps({"q": f"What is {a}+{a}?", "a": f"<answer>{2 * a}</answer>"}) + "\n"
                            for a in (3, 4)))
    params = {"mu_peak": 1.0, "mu_valley": 1.0, "phi": False, "expert_batch": 2, "source": str(path),
              "prompt_field": "q", "response_field": "a"}
    rows = _train(tmp_path, "file", "--rl.steps", "3", "--rl.sft_mix_params", json.dumps(params))
    nll = [r["sft_nll"] for r in rows]
    assert all(r["mu"] == 1.0 and r["sft_loss"] == pytest.approx(r["sft_nll"]) for r in rows)
    assert nll[0] > nll[1] > nll[2], nll  # lr 1e-3 on two rows: the NLL falls every step


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_sigkill_then_resume_is_bitwise(tmp_path):
    """Killed between the optimizer steps of RL step 1 (checkpoints every step): the resume's metrics and
    final weights equal the uninterrupted run's."""
    from credo.train.logging import read_metrics

    params = {"mu_warmup": 1, "mu_decay": 2, "mu_peak": 0.5, "mu_valley": 0.05, "expert_batch": 2, "pool": 8}
    base = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "3", "--model.threads", "1",
            "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--task.eval_size", "4",
            "--run.eval_base", "false", "--rl.sft_mix", "chord", "--rl.sft_mix_params", json.dumps(params),
            "--run.out_dir", str(tmp_path)]
    ref = _credo(base + ["--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    crashed = _credo(base + ["--run.name", "crash"], fault="update:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _credo(["--resume", str(tmp_path / "crash")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "step_1" in resumed.stdout

    def comparable(name):
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert comparable("crash") == comparable("ref")
    mus = [r["mu"] for r in comparable("ref") if r["phase"] == "rl"]
    assert mus == pytest.approx([0.5, 0.275, 0.05])  # the schedule moved, so its step mattered
    weights = [load_file(str(tmp_path / n / "checkpoints" / "final" / "model" / "model.safetensors"))
               for n in ("ref", "crash")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
