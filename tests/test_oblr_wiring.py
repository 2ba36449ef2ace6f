"""OBLR-PO in the trainer: gradient-norm baseline, SNR learning rate, checkpoints, exact resume."""

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import credo.train.rl as rl_module
from credo.credit.normalisation import OBLRState, logit_grad_sq_norm, oblr_advantages, oblr_lr_update, oblr_snr
from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.presets import tiny
from credo.train.checkpoint import save_checkpoint, verify
from credo.train.logging import read_metrics
from credo.train.optim import lr_at
from credo.train.rl import rl_step, wants_grad_norms
from credo.train.run import rl_context, setup, train, validate
from credo.train.snr import GradSNR, lr_state_from_json, lr_state_to_json, snr_from_sums

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import _assert_same_final_weights, _comparable, _credo, _kill_then_resume  # noqa: E402

# -- the SNR from running sums -------------------------------------------------------------------------


def _params(shapes):
    return [torch.nn.Parameter(torch.zeros(s)) for s in shapes]


def _record(stats, params, flat):
    """Set the parameters' .grad from one flat gradient and record it."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return stats.add(params)


def _numpy_snr(g):
    g = np.asarray(g, dtype=np.float64)
    mean = g.mean(0)
    noise = np.mean([np.sum((row - mean) ** 2) for row in g])
    return float(np.sum(mean ** 2) / noise)


@pytest.mark.parametrize("seed", range(6))
def test_running_sums_equal_oblr_snr_on_random_gradients(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 9, (1,), generator=gen))
    shapes = [(int(torch.randint(1, 5, (1,), generator=gen)), 3), (int(torch.randint(1, 7, (1,), generator=gen)),)]
    params = _params(shapes)
    size = sum(p.numel() for p in params)
    # a common direction plus noise, so the SNR is neither ~0 nor huge
    grads = torch.randn(size, generator=gen) * float(torch.rand(1, generator=gen) * 3) + torch.randn(n, size, generator=gen)
    stats = GradSNR()
    for g in grads:
        assert _record(stats, params, g.float())
    got = stats.snr()
    want = float(oblr_snr(grads.float()))
    assert stats.count == n
    assert got == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(_numpy_snr(grads.float().numpy()), rel=1e-9)


def test_snr_hand_values_and_degenerate_cases():
    # g = [1, 0], [3, 0]: mean [2, 0], signal 4, noise mean(1, 1) = 1 -> 4
    assert snr_from_sums(4.0 ** 2, 1.0 + 9.0, 2) == 4.0
    assert math.isnan(snr_from_sums(0.0, 0.0, 0))  # nothing recorded: no measurement
    assert snr_from_sums(4.0, 4.0, 1) == math.inf  # one gradient: no noise (as oblr_snr)
    params = _params([(2,)])
    same = GradSNR()
    for _ in range(3):
        _record(same, params, torch.tensor([0.1, 0.3]))
    assert same.snr() == math.inf == float(oblr_snr(torch.tensor([[0.1, 0.3]] * 3)))  # identical: no noise
    zero = GradSNR()
    for _ in range(2):
        _record(zero, params, torch.zeros(2))
    assert zero.snr() == 0.0 == float(oblr_snr(torch.zeros(2, 2)))
    # a non-finite gradient is not recorded; a parameter without a gradient counts as zero
    bad = GradSNR()
    assert not _record(bad, params, torch.tensor([math.inf, 1.0]))
    assert bad.count == 0 and bad.sum_sq == 0.0 and bad.sums == {}
    two = _params([(1,), (1,)])
    mixed = GradSNR()
    two[0].grad, two[1].grad = torch.tensor([1.0]), None
    mixed.add(two)
    two[0].grad, two[1].grad = torch.tensor([3.0]), torch.tensor([2.0])
    mixed.add(two)
    assert mixed.snr() == pytest.approx(float(oblr_snr(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))), rel=1e-12)


def test_lr_state_json_round_trip_through_a_checkpoint(tmp_path):
    class Saver:
        def save_pretrained(self, folder, **_):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "w.bin").write_bytes(b"w")

    fresh = OBLRState()  # NaN fields before the first step
    state, scale = oblr_lr_update(oblr_lr_update(fresh, 0.1 + 0.2, base_lr=1.0)[0], 1.0 / 3.0, base_lr=1.0)
    for st, sc in ((fresh, 1.0), (state, scale)):
        folder = save_checkpoint(tmp_path / f"s{int(st.steps)}", model=Saver(), tokenizer=Saver(),
                                 state={"stage": "rl", "snr_lr": lr_state_to_json(st, sc)})
        back, back_scale = lr_state_from_json(verify(folder).state["snr_lr"])
        assert back_scale == sc and int(back.steps) == int(st.steps)
        for name in ("snr_ema", "snr_ref"):
            a, b = getattr(back, name), getattr(st, name)
            assert (math.isnan(a) and math.isnan(b)) or float(a) == float(b)  # bit-exact floats


# -- configuration -------------------------------------------------------------------------------------


def test_validation_and_grad_norm_detection():
    cfg = tiny()
    cfg.rl.snr_lr = True
    cfg.rl.minibatches = 1
    with pytest.raises(CredoError, match="rl.minibatches >= 2"):
        validate(cfg)
    cfg.rl.minibatches = 2
    validate(cfg)
    assert tiny().rl.snr_lr is False  # off unless asked
    from credo.credit import CREDIT

    assert wants_grad_norms(CREDIT.get("oblr"))
    assert wants_grad_norms(functools.partial(CREDIT.get("oblr")))
    assert not wants_grad_norms(CREDIT.get("grpo")) and not wants_grad_norms(CREDIT.get("spo"))


# -- one real step: the norms reaching oblr, the SNR of the minibatch gradients ------------------------


def _cfg(tmp_path, name="t"):
    cfg = tiny()
    cfg.model.threads = 1
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(tmp_path), name, False
    cfg.task.name, cfg.task.eval_size = "fixture_tasks:ParityTask", 4
    cfg.rl.credit, cfg.rl.snr_lr, cfg.rl.lr = "oblr", True, 0.01
    return cfg


@pytest.mark.parametrize("recompute", [True, False])
def test_step_passes_logprob_norms_to_oblr_and_measures_minibatch_snr(tmp_path, monkeypatch, recompute):
    cfg = _cfg(tmp_path)
    cfg.rl.recompute_old_logprobs = recompute
    cfg.rl.max_grad_norm = 1e-4  # clipping would change every minibatch gradient: SNR must see them before
    run = setup(cfg)
    ctx = rl_context(run)
    assert ctx.snr_lr and ctx.lr_scale == 1.0 and int(ctx.lr_state.steps) == 0
    estimator, calls, seen, recorded = ctx.credit, [], {}, []

    def spy(rewards, group_ids, *, grad_sq_norms=None):
        calls.append((rewards.clone(), group_ids.clone(), grad_sq_norms))
        return estimator(rewards, group_ids, grad_sq_norms=grad_sq_norms)

    ctx.credit = functools.partial(spy)
    real_update = rl_module.ppo_update

    def update_spy(model, optimizer, batch, *args, **kwargs):
        seen["old_at_entry"] = batch.old_logprobs
        seen["batch"] = batch
        with torch.no_grad():  # the policy that sampled the batch, before any optimizer step
            seen["fresh"] = token_logprobs(model, batch.tokens, batch.attention_mask, batch.loss_mask,
                                           temperature=ctx.settings.temperature)
        return real_update(model, optimizer, batch, *args, **kwargs)

    class Recording(GradSNR):
        def add(self, parameters):
            recorded.append(torch.cat([p.grad.detach().flatten().double() for p in parameters if p.grad is not None]))
            return super().add(parameters)

    monkeypatch.setattr(rl_module, "ppo_update", update_spy)
    monkeypatch.setattr(rl_module, "GradSNR", Recording)
    prompts = run.task.examples("train", 4, seed=0)
    metrics = rl_step(ctx, 0, prompts, list(range(4)))

    (rewards, groups, norms), = calls
    batch = seen["batch"]
    if recompute:  # computed before credit for every row, reused by the update (not recomputed)
        assert seen["old_at_entry"] is batch.old_logprobs and batch.old_logprobs is not None
        behaviour = batch.old_logprobs
        assert torch.allclose(behaviour, seen["fresh"] * batch.loss_mask, atol=1e-5)
    else:
        assert seen["old_at_entry"] is None
        behaviour = batch.sampler_logprobs
    assert torch.equal(norms, logit_grad_sq_norm(behaviour, batch.loss_mask))
    # independent loop: sum over the row's loss tokens of (1 - p(y_t))^2
    for b in range(len(batch)):
        lp = behaviour[b][batch.loss_mask[b]].double()
        assert float(norms[b]) == pytest.approx(float(((1 - lp.exp()) ** 2).sum()), rel=1e-6, abs=1e-7)
    assert float(norms.sum()) > 0 and metrics["grad_sq_norm_mean"] == pytest.approx(float(norms.mean()))
    # the advantages are oblr's with those norms, broadcast over the loss tokens
    adv = oblr_advantages(rewards, groups, grad_sq_norms=norms)
    assert torch.equal(batch.advantages, torch.where(batch.loss_mask, adv[:, None].expand_as(batch.loss_mask),
                                                     torch.zeros_like(batch.advantages)))
    # the SNR is oblr_snr of the step's minibatch gradients, taken before clipping
    assert len(recorded) == cfg.rl.minibatches * cfg.rl.epochs == metrics["snr_samples"] == metrics["updates"]
    assert metrics["snr"] == pytest.approx(float(oblr_snr(torch.stack(recorded))), rel=1e-9)
    raw_norms = [float(g.norm()) for g in recorded]
    assert min(raw_norms) > cfg.rl.max_grad_norm * 10
    assert metrics["grad_norm"] == pytest.approx(sum(raw_norms) / len(raw_norms), rel=1e-4)
    # the first measured SNR becomes the reference: the next step's scale is 1 and the state moved
    assert float(ctx.lr_state.snr_ref) == metrics["snr"] and int(ctx.lr_state.steps) == 1
    assert ctx.lr_scale == 1.0


def test_lr_schedule_follows_oblr_lr_update_on_the_logged_snr(tmp_path):
    cfg = _cfg(tmp_path, "sched")
    cfg.rl.steps, cfg.warmup.steps, cfg.run.eval_base = 5, 1, False
    cfg.rl.lr_warmup_steps = 2  # the base schedule moves too
    train(cfg)
    rows = [r for r in read_metrics(tmp_path / "sched" / "metrics.jsonl") if r["phase"] == "rl"]
    assert [r["step"] for r in rows] == list(range(5))
    state, scale = OBLRState(), 1.0
    for r in rows:
        base = lr_at(r["step"], 5, peak=0.01, warmup=2, decay=cfg.rl.lr_decay, min_ratio=cfg.rl.min_lr_ratio)
        assert r["lr_base"] == base and r["lr_scale"] == scale and r["lr"] == base * scale  # bit for bit
        assert r["snr"] is not None and r["snr"] > 0
        state, scale = oblr_lr_update(state, r["snr"], base_lr=1.0)
    assert len({r["lr_scale"] for r in rows}) > 2  # the SNR did move the learning rate
    final = verify(tmp_path / "sched" / "checkpoints" / "final").state["snr_lr"]
    assert final == lr_state_to_json(state, scale)


# -- exact resume with rl.snr_lr -----------------------------------------------------------------------

OBLR_ARGS = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "4", "--model.threads", "1",
             "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--rl.lr", "0.01",
             "--task.eval_size", "4", "--rl.credit", "oblr", "--rl.snr_lr", "true", "--warmup.steps", "1",
             "--run.eval_base", "false"]


def test_oblr_sigkill_mid_update_then_resume_equals_uninterrupted(tmp_path):
    ref = _credo(OBLR_ARGS + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    # the 5th minibatch step is step 2's first: one minibatch gradient of that step is lost
    run_dir, reference = tmp_path / "crash", tmp_path / "ref"
    stdout = _kill_then_resume(OBLR_ARGS + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "update:5", run_dir)
    assert "step_2" in stdout
    rows = _comparable(run_dir)
    assert rows == _comparable(reference)
    rl_rows = [r for r in rows if r["phase"] == "rl"]
    assert len(rl_rows) == 4 and rl_rows[3]["lr_scale"] != 1.0  # the resumed steps used the restored scale
    _assert_same_final_weights(reference, run_dir)
    ref_state = json.loads((reference / "checkpoints" / "final" / "state.json").read_text())["snr_lr"]
    got_state = json.loads((run_dir / "checkpoints" / "final" / "state.json").read_text())["snr_lr"]
    assert ref_state == got_state and ref_state["steps"] == 4
