"""SPO's persistent tracker in the trainer: prompt pool schedule, tracker updates, checkpoints, resume."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.credit import CREDIT
from credo.credit.base import credit_state_of
from credo.credit.normalisation import SPOState, spo_load, spo_save
from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.presets import tiny
from credo.train.checkpoint import load_credit_state, save_checkpoint, verify
from credo.train.prompts import epoch_order, prioritized_prompt_ids, scheduled_prompt_ids
from credo.train.rl import rl_step
from credo.train.run import rl_context, setup, validate

# the tests folder holds fixture_tasks (in-process runs) and test_resume's subprocess helpers
sys.path.insert(0, str(Path(__file__).parent))
from test_resume import _assert_same_final_weights, _comparable, _credo, _kill_then_resume  # noqa: E402

# -- the prompt schedule ----------------------------------------------------------------------------


def test_pool_zero_is_todays_fresh_slices():
    assert scheduled_prompt_ids(0, 4, 0, seed=3) == [0, 1, 2, 3]
    assert scheduled_prompt_ids(5, 4, 0, seed=3) == [20, 21, 22, 23]


@pytest.mark.parametrize("pool,per_step", [(7, 3), (4, 4), (5, 2), (3, 5)])
def test_pool_covers_each_prompt_once_per_epoch_and_repeats(pool, per_step):
    steps = pool * 3  # 3 * per_step whole epochs
    flat = [k for s in range(steps) for k in scheduled_prompt_ids(s, per_step, pool, seed=11)]
    assert len(flat) == steps * per_step
    epochs = [flat[i:i + pool] for i in range(0, len(flat), pool)]
    for e, chunk in enumerate(epochs):
        assert sorted(chunk) == list(range(pool))  # every prompt exactly once per epoch
        assert chunk == epoch_order(e, pool, seed=11)
    assert all(flat.count(k) == 3 * per_step for k in range(pool))  # prompts repeat


def test_pool_schedule_is_deterministic_and_seeded():
    a = [scheduled_prompt_ids(s, 3, 10, seed=1) for s in range(8)]
    assert a == [scheduled_prompt_ids(s, 3, 10, seed=1) for s in range(8)]
    # a step's ids do not depend on which steps ran before (exact resume)
    assert scheduled_prompt_ids(6, 3, 10, seed=1) == a[6]
    b = [scheduled_prompt_ids(s, 3, 10, seed=2) for s in range(8)]
    assert a != b
    # epochs are shuffled differently (not one permutation repeated)
    assert epoch_order(0, 10, seed=1) != epoch_order(1, 10, seed=1)


def test_prioritized_sampling_is_seeded_and_follows_weights():
    w = torch.tensor([0.05, 0.55, 0.05, 0.0, 0.30])
    a = prioritized_prompt_ids(4, 3, w, seed=0)
    assert a == prioritized_prompt_ids(4, 3, w, seed=0)
    assert len(set(a)) == 3 and 3 not in a  # without replacement; a zero weight is never drawn
    counts = torch.zeros(5)
    for step in range(400):
        for k in prioritized_prompt_ids(step, 1, w, seed=0):
            counts[k] += 1
    assert counts[3] == 0
    assert counts[1] > counts[4] > counts[0]  # frequency follows the weights (0.55 > 0.30 > 0.05)
    many = prioritized_prompt_ids(0, 12, w, seed=0)  # more than the pool: with replacement
    assert len(many) == 12 and 3 not in many
    assert len(set(prioritized_prompt_ids(0, 5, torch.zeros(5), seed=0))) == 5  # all zero: uniform


def test_validation_of_the_new_fields():
    cfg = tiny()
    cfg.rl.spo_prioritized = True
    with pytest.raises(CredoError, match="stateful estimator"):
        validate(cfg)  # credit grpo has no tracker
    cfg.rl.credit = "spo"
    with pytest.raises(CredoError, match="prompt_pool"):
        validate(cfg)
    cfg.rl.prompt_pool = 8
    validate(cfg)
    cfg.rl.prompt_pool = -1
    with pytest.raises(CredoError, match="prompt_pool"):
        validate(cfg)


# -- the tracker across two real steps ---------------------------------------------------------------


def _rho(d):
    return min(max(2.0 ** (-d / 0.06), 0.875), 0.96)


def test_tracker_after_two_steps_equals_hand_computed_updates(tmp_path):
    cfg = tiny()
    cfg.model.threads = 1
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(tmp_path), "t", False
    cfg.task.name, cfg.task.eval_size = "fixture_tasks:ParityTask", 4
    cfg.rl.credit, cfg.rl.group_size, cfg.rl.prompts_per_step, cfg.rl.prompt_pool = "spo", 1, 4, 4
    cfg.rl.lr = 0.01
    run = setup(cfg)
    ctx = rl_context(run)
    assert isinstance(ctx.credit_state, SPOState) and ctx.credit_state.alpha == {}
    prompts = run.task.examples("train", 4, seed=0)
    calls = []
    estimator = ctx.credit

    def spy(rewards, group_ids, *, state):
        calls.append((rewards.clone(), group_ids.clone(), state))
        return estimator(rewards, group_ids, state=state)

    ctx.credit = spy
    ids0 = scheduled_prompt_ids(0, 4, 4, seed=0)
    rl_step(ctx, 0, [prompts[k] for k in ids0], ids0)
    r0, g0, st0 = calls[0]
    assert g0.tolist() == ids0  # persistent prompt ids, not per-step group indices
    assert st0.alpha == {}  # the estimator saw the tracker before the step's update
    s0 = ctx.credit_state
    for k, r in zip(ids0, r0.tolist()):
        assert s0.alpha[k] == pytest.approx(0.96 * 0.5 + r, abs=1e-12)  # first visit: D = 0, rho = 0.96
        assert s0.beta[k] == pytest.approx(0.96 * 0.5 + 1.0 - r, abs=1e-12)
        tokens, scored = s0.last_response[k]
        assert s0.last_logprobs[k].shape == (int(scored.sum()),) and scored.shape == tokens.shape
    assert 0.0 < float(r0.mean()) < 1.0  # mixed rewards, so the advantages are not all zero

    # independently: the stored responses under the current policy (after step 0's update), one by one
    current = {}
    for k in ids0:
        tokens, scored = s0.last_response[k]
        with torch.no_grad():
            lp = token_logprobs(ctx.model, tokens[None], torch.ones_like(tokens[None], dtype=torch.bool),
                                scored[None], temperature=ctx.settings.temperature)[0]
        current[k] = lp[scored]
    ds = {k: float((s0.last_logprobs[k].double() - current[k].double()).abs().mean()) for k in ids0}
    assert max(ds.values()) > 0  # the policy moved, so forgetting is adaptive

    ids1 = scheduled_prompt_ids(1, 4, 4, seed=0)
    assert sorted(ids1) == [0, 1, 2, 3]  # the second epoch revisits every prompt
    metrics = rl_step(ctx, 1, [prompts[k] for k in ids1], ids1)
    r1, g1, st1 = calls[1]
    assert g1.tolist() == ids1 and st1 is s0
    s1 = ctx.credit_state
    for k, r in zip(ids1, r1.tolist()):
        rho = _rho(ds[k])
        assert s1.alpha[k] == pytest.approx(rho * s0.alpha[k] + r, rel=1e-5)
        assert s1.beta[k] == pytest.approx(rho * s0.beta[k] + 1.0 - r, rel=1e-5)
    assert metrics["spo_revisited"] == 1.0
    assert metrics["spo_D"] == pytest.approx(sum(ds.values()) / 4, rel=1e-4, abs=1e-7)
    assert metrics["spo_rho"] == pytest.approx(sum(_rho(d) for d in ds.values()) / 4, rel=1e-5)


# -- checkpoints --------------------------------------------------------------------------------------


class _Saver:
    def save_pretrained(self, folder, **_):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "weights.bin").write_bytes(b"w")


def _state():
    return SPOState(
        alpha={0: 0.1 + 0.2, 7: 2.295, 12: 1e-300}, beta={0: 1.0 / 3.0, 7: 0.42, 12: 5.0},
        last_logprobs={0: torch.tensor([-0.5, -1.25, -3.0e-8]), 7: torch.empty(0)},
        last_response={0: (torch.tensor([5, 6, 7, 8]), torch.tensor([False, True, True, True])),
                       7: (torch.tensor([9, 3]), torch.tensor([False, False]))},
    )


def test_tracker_checkpoint_round_trip(tmp_path):
    state = _state()
    folder = save_checkpoint(tmp_path / "step_1", model=_Saver(), tokenizer=_Saver(),
                             state={"stage": "rl", "rl_step": 1}, credit_state=spo_save(state))
    checkpoint = verify(folder)
    assert "credit_state.safetensors" in json.loads((folder / "manifest.json").read_text())
    back = spo_load(*load_credit_state(checkpoint))
    assert back.alpha == state.alpha and back.beta == state.beta  # floats round-trip exactly
    assert back.last_logprobs.keys() == state.last_logprobs.keys()
    for k in state.last_logprobs:
        assert torch.equal(back.last_logprobs[k], state.last_logprobs[k])
    for k, (tokens, scored) in state.last_response.items():
        assert torch.equal(back.last_response[k][0], tokens) and torch.equal(back.last_response[k][1], scored)
        assert back.last_response[k][1].dtype == torch.bool
    assert (back.prior_alpha, back.prior_beta) == (0.5, 0.5)
    # the protocol registered on "spo" is the one used here
    assert credit_state_of(CREDIT.get("spo")).save is spo_save
    # a checkpoint without credit state gives None; a corrupt tensor file is refused
    plain = verify(save_checkpoint(tmp_path / "step_2", model=_Saver(), tokenizer=_Saver(), state={"stage": "rl"}))
    assert load_credit_state(plain) is None
    blob = folder / "credit_state.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CredoError, match="credit_state.safetensors is corrupt"):
        verify(folder)


# -- exact resume of an SPO run with a prompt pool ---------------------------------------------------

SPO_ARGS = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "4", "--model.threads", "1",
            "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--rl.lr", "0.01",
            "--task.eval_size", "4", "--rl.credit", "spo", "--rl.group_size", "1",
            "--rl.prompts_per_step", "4", "--rl.prompt_pool", "6", "--warmup.steps", "1"]
VARIANTS = {"pool": [], "prioritized": ["--rl.spo_prioritized", "true"]}


@pytest.fixture(scope="module")
def spo_references(tmp_path_factory):
    out, refs = tmp_path_factory.mktemp("spo_ref"), {}

    def get(variant):
        if variant not in refs:
            proc = _credo(SPO_ARGS + VARIANTS[variant] + ["--run.out_dir", str(out), "--run.name", variant])
            assert proc.returncode == 0, proc.stderr[-2000:]
            refs[variant] = out / variant
        return refs[variant]

    return get


@pytest.mark.parametrize("variant,fault", [("pool", "rollout:3"), ("prioritized", "update:5")])
def test_spo_sigkill_then_resume_equals_uninterrupted(spo_references, tmp_path, variant, fault):
    reference = spo_references(variant)
    args = SPO_ARGS + VARIANTS[variant] + ["--run.out_dir", str(tmp_path), "--run.name", "crash"]
    run_dir = tmp_path / "crash"
    assert "step_2" in _kill_then_resume(args, fault, run_dir)
    rows = _comparable(run_dir)
    assert rows == _comparable(reference)
    rl_rows = [r for r in rows if r["phase"] == "rl"]
    assert len(rl_rows) == 4 and max(r["spo_revisited"] for r in rl_rows) > 0  # the tracker was used
    _assert_same_final_weights(reference, run_dir)
    # the tracker in the final checkpoints is the same, bit for bit
    ref_ck, got_ck = verify(reference / "checkpoints" / "final"), verify(run_dir / "checkpoints" / "final")
    assert ref_ck.state["credit_state"] == got_ck.state["credit_state"]
    ref_t = load_file(str(reference / "checkpoints" / "final" / "credit_state.safetensors"))
    got_t = load_file(str(run_dir / "checkpoints" / "final" / "credit_state.safetensors"))
    assert ref_t.keys() == got_t.keys() and all(torch.equal(ref_t[k], got_t[k]) for k in ref_t)
    assert len(ref_ck.state["credit_state"]["alpha"]) > 1
