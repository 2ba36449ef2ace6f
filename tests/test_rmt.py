"""RMT (rl.sft_mix "rmt", train/rmt.py): the token budget at hand-chosen steps against an independent formula,
the next-token-prediction loss by hand and on the tiny model against an independent forward, one optimizer
step whose gradient is exactly grad L_rl + lambda grad L_ntp, document rows by hand, validation, a tiny run
whose completions never exceed the logged budget, SIGKILL + bitwise resume."""

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
from credo.train.rmt import RMTMix, RMTParams, document_rows, ntp_per_token, read_documents, token_budget

TESTS = Path(__file__).parent
TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_budget_schedule_at_hand_chosen_steps():
    # B_t = max(B_min, floor(B_0 gamma^((t / T)^k))), by hand: 64 x 0.5^0.5 = 45.25, 64 x 0.5^0.9 = 34.30,
    # 64 x 0.5^0.25 = 53.82, 64 x 0.5^0.81 = 36.60
    hand = {(0, 1.0, 1): 64, (5, 1.0, 1): 45, (9, 1.0, 1): 34, (5, 2.0, 1): 53, (9, 2.0, 1): 36,
            (9, 1.0, 40): 40, (0, 1.0, 40): 64}
    for (t, k, floor_), want in hand.items():
        got = token_budget(t, steps=10, initial=64, minimum=floor_, decay=0.5, power=k)
        assert got == want, (t, k, floor_)
        assert got == max(floor_, int(64 * 0.5 ** ((t / 10) ** k)))  # the formula written out again
    # the tiny run's schedule (B_0 = 8, T = 4, gamma = 1/4, B_min = 3): 8, 8/sqrt(2) = 5.66, 4 exactly, 2.83 -> 3
    assert [token_budget(t, steps=4, initial=8, minimum=3, decay=0.25) for t in range(4)] == [8, 5, 4, 3]
    # an exact product is not floored to one less (8 x 0.5 = 4), and gamma = 1 is a fixed budget
    assert token_budget(2, steps=4, initial=8, decay=0.25) == 4
    assert {token_budget(t, steps=7, initial=16, decay=1.0) for t in range(7)} == {16}
    # it only falls, and never below the floor
    seq = [token_budget(t, steps=50, initial=100, minimum=7, decay=0.01, power=0.5) for t in range(50)]
    assert seq == sorted(seq, reverse=True) and min(seq) == 7 and seq[0] == 100
    mix = RMTMix(RMTParams(budget_min=3, budget_decay=0.25), [([1, 2], 1)], pad_id=0, seed=0, initial_budget=8, steps=4)
    assert [mix.token_budget(s) for s in range(4)] == [8, 5, 4, 3]


def test_ntp_loss_by_hand():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.8, 0.7]], dtype=torch.float64)).requires_grad_(True)
    mask = torch.tensor([[False, True, True], [False, True, False]])
    per = ntp_per_token(logprobs, mask)
    want = [[0.0, math.log(4), math.log(10)], [0.0, -math.log(0.8), 0.0]]
    assert torch.allclose(per, torch.tensor(want, dtype=torch.float64), atol=1e-15)
    loss = per.sum() / mask.sum()
    assert float(loss.detach()) == pytest.approx((math.log(4) + math.log(10) - math.log(0.8)) / 3)
    loss.backward()  # d/dlogp = -1 / (scored tokens) on the mask, 0 elsewhere
    assert torch.allclose(logprobs.grad, torch.where(mask, -1 / 3, 0.0).double())


class CharTokenizer:
    """One token per character (ord), EOS 0: rows can be written out by hand."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_document_rows_by_hand(tmp_path):
    tok = CharTokenizer()
    a, b, c, d, x = (ord(ch) for ch in "abcdx")
    assert document_rows(tok, ["abcd", "x"], 3) == [([a, b, c], 1), ([d, 0], 1), ([x, 0], 1)]
    # a window of one token has nothing to predict and is left out
    assert document_rows(tok, ["abcd"], 4) == [([a, b, c, d], 1)]
    text = tmp_path / "docs.txt"
    text.write_text("first doc\nline two\n\n\n  second  \n\n")
    assert read_documents(str(text), "text", "src") == ["first doc\nline two", "second"]
    rows = tmp_path / "docs.jsonl"
    rows.write_text('{"body": "one"}\n{"body": ""}\n')
    with pytest.raises(CredoError, match=r"src: .*docs.jsonl:2: field 'body' must be a non-empty string"):
        read_documents(str(rows), "body", "src")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CredoError, match="holds no documents"):
        read_documents(str(empty), "text", "src")


ROWS = [([5, 17, 300, 42, 7, 9], 1), ([11, 12, 13, 14], 1), ([8, 99, 1000, 3, 2, 1, 5], 1)]  # all tokens after the 1st


def reference_ntp(model, rows):
    """Token mean of -log p(x_i | x_<i) over every token after each row's first, from the model's own logits."""
    terms = []
    for ids, _ in rows:
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        terms.append(-torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1))
    return torch.cat(terms).sum() / sum(len(t) for t in terms)


def _settings(**extra):
    from credo.train.rl import UpdateSettings

    # temperature 0.5: the RL part's; the NTP part must ignore it (plain next-token prediction)
    base = dict(reduction="token_mean", minibatches=1, epochs=1, micro_batch_size=2, max_grad_norm=1e9,
                temperature=0.5, norm_constant=8.0, skip_zero_advantage=False, autocast_dtype=None)
    return UpdateSettings(**{**base, **extra})


def close(a, b, rel=1e-4):
    return float((a - b).norm()) <= rel * max(float(b.norm()), 1e-12)


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _mix(**params):
    return RMTMix(RMTParams(**params), ROWS, pad_id=0, seed=4, initial_budget=8, steps=4)


def test_ntp_backward_on_the_tiny_model_matches_an_independent_forward(tiny_policy):
    model = copy.deepcopy(tiny_policy.model).train()
    step = _mix(ntp_weight=0.7, ntp_batch=3).at_step(5)
    assert step.rl_weight == 1.0
    step.backward(model, _settings(micro_batch_size=2))  # two micro-batches, one global token count
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    want = reference_ntp(model, ROWS)
    (0.7 * want).backward()
    for a, b in zip(got, _grads(model)):
        assert close(a, b)
    m = step.metrics()
    assert m["ntp_loss"] == pytest.approx(want.item(), rel=1e-5) and m["ntp_tokens"] == 5 + 3 + 6
    assert m["ntp_weight"] == 0.7
    assert m["ntp_loss"] == pytest.approx(math.log(tiny_policy.model.config.vocab_size), rel=0.05)  # a random model


def test_text_rows_are_a_pure_function_of_seed_and_step():
    mix = RMTMix(RMTParams(ntp_batch=3), [([1, 2], 1)] * 10, pad_id=0, seed=7, initial_budget=8, steps=4)
    a, b = mix.at_step(3), mix.at_step(3)
    first = [a.draw() for _ in range(4)]
    assert first == [b.draw() for _ in range(4)]  # same (seed, step): the same rows for every optimizer step
    assert all(len(set(r)) == 3 for r in first)  # no repeat inside an optimizer step
    assert first != [mix.at_step(4).draw() for _ in range(4)]
    big = RMTMix(RMTParams(ntp_batch=5), [([1, 2], 1)] * 2, pad_id=0, seed=7, initial_budget=8, steps=4)
    assert set(big.at_step(0).draw()) <= {0, 1} and len(big.at_step(0).draw()) == 5  # fewer rows: repeats


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
    return RolloutBatch(tokens, attention, mask, torch.zeros(B, T), adv, torch.zeros(B), torch.tensor([0, 0, 1, 1]))


def test_one_update_is_the_mixed_loss_gradient(tiny_policy):
    """ppo_update with RMT, one minibatch, SGD lr 1: the weight change is -[grad L_rl + lambda grad L_ntp]."""
    from credo.logprobs import token_logprobs
    from credo.objectives import OBJECTIVES, reduce_loss
    from credo.train.rl import ppo_update

    model = copy.deepcopy(tiny_policy.model)
    before = [p.detach().clone() for p in model.parameters()]
    batch = _rollout_batch()
    mix = _mix(ntp_weight=0.4, ntp_batch=2)
    text = [ROWS[i] for i in mix.at_step(2).draw()]  # the rows the update will draw (same generator)
    grpo = OBJECTIVES.get("grpo")
    settings = _settings(micro_batch_size=3)
    out = ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, grpo, settings,
                     torch.Generator().manual_seed(0), sft_mix=mix.at_step(2))
    assert out["updates"] == 1 and out["ntp_weight"] == pytest.approx(0.4)
    delta = [b - p.detach() for b, p in zip(before, model.parameters())]

    ref = copy.deepcopy(tiny_policy.model).train()
    with torch.no_grad():
        old = token_logprobs(ref, batch.tokens, batch.attention_mask, batch.loss_mask, temperature=0.5)
    batch.old_logprobs = old
    logp = token_logprobs(ref, batch.tokens, batch.attention_mask, batch.loss_mask, temperature=0.5)
    l_rl = reduce_loss(grpo(logp, batch).per_token, batch.loss_mask, "token_mean")
    l_ntp = reference_ntp(ref, text)
    params = list(ref.parameters())
    zero = [torch.zeros_like(p) for p in params]
    g_rl = [z if g is None else g for g, z in zip(torch.autograd.grad(l_rl, params, allow_unused=True), zero)]
    g_ntp = [z if g is None else g for g, z in zip(torch.autograd.grad(l_ntp, params, allow_unused=True), zero)]
    for d, a, b in zip(delta, g_rl, g_ntp):
        assert close(d, a + 0.4 * b, rel=1e-3)
    assert out["ntp_loss"] == pytest.approx(l_ntp.item(), rel=1e-5)
    assert out["loss"] == pytest.approx(l_rl.item(), rel=1e-4)
    norm = lambda gs: math.sqrt(sum(float((g ** 2).sum()) for g in gs))  # noqa: E731
    assert norm(g_ntp) * 0.4 > 1e-2 * norm(delta) and norm(g_rl) > 1e-2 * norm(delta)  # both parts are there


def test_a_step_without_trainable_rows_still_trains_the_ntp_part(tiny_policy):
    from credo.objectives import OBJECTIVES
    from credo.train.rl import ppo_update

    model = copy.deepcopy(tiny_policy.model)
    batch = _rollout_batch()
    batch.advantages = torch.zeros_like(batch.advantages)  # every group uniform
    step = _mix(ntp_batch=2).at_step(0)
    before = [p.detach().clone() for p in model.parameters()]
    out = ppo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, OBJECTIVES.get("grpo"),
                     _settings(skip_zero_advantage=True, minibatches=2, epochs=2), torch.Generator().manual_seed(0),
                     sft_mix=step)
    assert out["updates"] == 4 and out["trained_sequences"] == 0 and step.steps == 4
    assert out["ntp_weight"] == 1.0 and out["ntp_loss"] > 0 and math.isnan(out["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bad_config_names_the_field(tmp_path):
    from credo.cli import resolve_config
    from credo.train.run import validate

    def cfg(params, *pairs):
        return resolve_config("tiny", None, [("rl.sft_mix", "rmt"), ("rl.sft_mix_params", params), *pairs])

    validate(cfg('{"budget_min": 3, "budget_decay": 0.25, "budget_power": 2.0, "ntp_weight": 0.0}'))
    cases = [('{"budget_decay": 0.0}', r"\['budget_decay'\]: must be in \(0, 1\]"),
             ('{"budget_decay": 1.5}', r"\['budget_decay'\]: must be in \(0, 1\]"),
             ('{"budget_power": 0}', r"\['budget_power'\]: must be > 0"),
             ('{"ntp_weight": -1}', r"\['ntp_weight'\]: must be >= 0"),
             ('{"max_tokens": 1}', r"\['max_tokens'\]: must be >= 2"),
             ('{"budget_min": 0}', r"\['budget_min'\]: must be >= 1"),
             ('{"budget_min": 9}', r"\['budget_min'\]: 9 is above sampling.max_new_tokens 8"),
             ('{"ntp_batch": 2.5}', r"\['ntp_batch'\]: must be an integer"),
             ('{"mu_peak": 0.2}', r"unknown key\(s\) mu_peak; rmt takes"),
             (json.dumps({"source": str(tmp_path / "missing.txt")}), r"\['source'\]: is neither")]
    for params, message in cases:
        with pytest.raises(CredoError, match=message):
            validate(cfg(params))
    for pair in (("rl.overlong_buffer", "2"), ("rollout.sampler", "tree")):
        with pytest.raises(CredoError, match=r"decaying budget .* is not built yet"):
            validate(cfg("{}", pair))
    validate(cfg('{"budget_decay": 1.0}', ("rl.overlong_buffer", "2")))  # a fixed budget combines
    with pytest.raises(CredoError, match="dist.strategy 'ddp' is not built yet"):
        validate(cfg("{}", ("dist.strategy", "ddp")))


def _train(tmp_path, name, *extra):
    from credo.cli import main
    from credo.train.logging import read_metrics

    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name, "--run.progress", "false",
            "--run.eval_base", "false", "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1",
            "--rl.sft_mix", "rmt", *extra]
    assert main(args) == 0
    return [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]


def test_tiny_run_applies_and_logs_the_budget(tmp_path):
    """B_0 = 8 (tiny's max_new_tokens), T = 4, gamma 1/4, B_min 3: budgets 8, 5, 4, 3; no completion is longer
    than its step's budget, and the random tiny model runs into it (the limit is really applied)."""
    params = {"budget_min": 3, "budget_decay": 0.25, "ntp_batch": 3, "pool": 16, "ntp_weight": 0.5}
    rows = _train(tmp_path, "task", "--rl.steps", "4", "--rl.sft_mix_params", json.dumps(params))
    assert [r["token_budget"] for r in rows] == [8, 5, 4, 3]
    for r in rows:
        assert 1 <= r["response_length_max"] <= r["token_budget"] and r["response_length"] <= r["token_budget"]
        assert r["updates"] == 2 and math.isfinite(r["loss"]) and r["ntp_loss"] > 0 and r["ntp_tokens"] > 0
        assert r["ntp_weight"] == 0.5
    assert rows[-1]["response_length_max"] == 3 < 8 and rows[-1]["truncation_rate"] > 0  # the budget bound


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_sigkill_then_resume_is_bitwise(tmp_path):
    """A .txt document source; killed between the optimizer steps of RL step 1 (checkpoints every step): the
    resume's metrics (budgets included) and final weights equal the uninterrupted run's."""
    from credo.train.logging import read_metrics

    docs = tmp_path / "docs.txt"
    docs.write_text("The sum of two and two is four.\n\nParity counts ones; an even count gives zero.\n\n"
                    "Short.\n")
    params = {"budget_min": 2, "budget_decay": 0.25, "ntp_batch": 2, "source": str(docs), "max_tokens": 8}
    base = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "3", "--model.threads", "1",
            "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--task.eval_size", "4",
            "--run.eval_base", "false", "--rl.sft_mix", "rmt", "--rl.sft_mix_params", json.dumps(params),
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
    rl = [r for r in comparable("ref") if r["phase"] == "rl"]
    # 8, 8 x 0.25^(1/3) = 5.04, 8 x 0.25^(2/3) = 3.17: the budget moved, so its step mattered
    assert [r["token_budget"] for r in rl] == [8, 5, 3]
    assert all(r["response_length_max"] <= r["token_budget"] and r["ntp_tokens"] > 0 for r in rl)
    weights = [load_file(str(tmp_path / n / "checkpoints" / "final" / "model" / "model.safetensors"))
               for n in ("ref", "crash")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
