"""LoRA through peft (credo/lora.py): the reference is the base exactly, only adapters train, adapter-only
checkpoints resume exactly and are tied to their base weights, `credo export` round-trips, bad targets
are refused. Real peft (0.21.2, in the test extra) on the tiny preset; the runs are in-process."""

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.cli import main, resolve_config
from credo.config import TrainConfig
from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.lora import ADAPTER_WEIGHTS, attach_lora, base_fingerprint, load_adapters
from credo.models import load_policy
from credo.train.checkpoint import verify
from credo.train.logging import read_metrics
from credo.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))

TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARGS = ["--preset", "tiny", "--run.progress", "false", "--rl.steps", "3", "--run.eval_base", "false",
        "--task.name", "fixture_tasks:ParityTask", "--task.eval_size", "4", "--warmup.steps", "1",
        "--model.threads", "1", "--run.checkpoint_every", "1", "--rl.lr", "0.01", "--rl.kl_coef", "0.05",
        "--model.lora_rank", "4", "--model.lora_alpha", "8"]


def _attach(model, targets=TARGETS, rank=4, alpha=8.0):
    return attach_lora(model, rank=rank, alpha=alpha, dropout=0.0, targets=list(targets), base="tiny", seed=0)


def _score_inputs(seed=1, shape=(3, 12)):
    tokens = torch.randint(0, 1000, shape, generator=torch.Generator().manual_seed(seed))
    score = torch.ones_like(tokens, dtype=torch.bool)
    score[:, 0] = False
    return tokens, torch.ones_like(tokens), score


def _randomise_b(model, seed=2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("autocast", [False, True])
def test_reference_logprobs_with_adapters_disabled_equal_the_base_exactly(tiny_policy, autocast):
    base = copy.deepcopy(tiny_policy.model).eval()
    model = copy.deepcopy(tiny_policy.model).eval()
    lora = _attach(model)
    _randomise_b(model)  # B = 0 at init would make the adapters a no-op and the test vacuous
    tokens, mask, score = _score_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = token_logprobs(base, tokens, mask, score)
        ref = token_logprobs(lora.reference(), tokens, mask, score)
        policy = token_logprobs(model, tokens, mask, score)
        again = token_logprobs(lora.reference(), tokens, mask, score)
    assert torch.equal(ref, expected) and torch.equal(again, expected)
    assert (policy - expected)[score].abs().max() > 1e-3  # the adapters are on outside the context
    # no second copy: the reference's parameters are the policy's own tensors
    assert {p.data_ptr() for p in lora.reference().parameters()} == {p.data_ptr() for p in model.parameters()}


def test_the_optimizer_sees_only_the_adapters(tiny_policy):
    model = copy.deepcopy(tiny_policy.model)
    lora = _attach(model, rank=2)
    optimizer = make_optimizer(model, 1e-3, 0.0)
    seen = [p for group in optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in seen) == sorted(lora.adapter_names())
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert len(seen) == 2 * len(TARGETS) * layers  # one A and one B per adapted linear
    # r * (in + out) per adapted linear, r = 2: q, o (64 x 64), k, v (64 -> 32: 2 kv heads of 16),
    # gate, up, down (64 <-> 128): 2 * (2 * 128 + 2 * 96 + 3 * 192) = 2048 per layer
    per_layer = 2 * (2 * (hidden + hidden) + 2 * (hidden + 32) + 3 * (hidden + 2 * hidden))
    assert per_layer == 2048
    assert sum(p.numel() for p in seen) == layers * per_layer


def test_bad_target_modules_are_refused_with_the_available_names(tiny_policy):
    model = copy.deepcopy(tiny_policy.model)
    with pytest.raises(CredoError, match=r"'qkv_proj' not found in the model; its linear layers are: "
                                         r"down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        _attach(model, targets=["q_proj", "qkv_proj"])
    with pytest.raises(CredoError, match="lora_target_modules is empty"):
        _attach(model, targets=[])
    assert not hasattr(model, "peft_config")  # nothing was attached by the refused calls


def test_lora_with_several_ranks_is_refused():
    from credo.train.run import validate

    cfg = resolve_config("tiny", None, [("model.lora_rank", "4"), ("dist.strategy", "ddp")])
    with pytest.raises(CredoError, match="model.lora_rank > 0 with dist.strategy 'ddp' is not built"):
        validate(cfg)


# -- a LoRA run (warm-up + 3 RL steps with a KL term), its resume and its export -------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The run folder and the trained Run object (its in-memory policy) of an uninterrupted LoRA run."""
    import credo.train.run as run_mod

    out = tmp_path_factory.mktemp("lora")
    captured = {}
    original = run_mod.rl_stage

    def keep(run):
        captured["run"] = run
        return original(run)

    run_mod.rl_stage = keep
    try:
        assert main(["train", *ARGS, "--run.out_dir", str(out), "--run.name", "ref"]) == 0
    finally:
        run_mod.rl_stage = original
    return out / "ref", captured["run"]


def test_only_adapters_change_in_a_lora_run(lora_run, tiny_policy):
    run_dir, run = lora_run
    fresh = load_policy("tiny", seed=0).model  # the base the run started from
    init = copy.deepcopy(fresh)
    _attach(init)  # the adapters as attached at setup (same seed): A random, B = 0
    init_params = dict(init.named_parameters())
    base_params = dict(fresh.named_parameters())
    changed = 0
    for name, p in run.model.named_parameters():
        if "lora_" in name:
            changed += not torch.equal(p.detach(), init_params[name].detach())
        else:
            assert torch.equal(p.detach(), base_params[name.replace(".base_layer", "")].detach()), name
    assert changed == 2 * len(TARGETS) * fresh.config.num_hidden_layers  # every A and every B moved
    rl = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 3 and all(r["updates"] >= 1 for r in rl)
    # the KL term compares the policy with the adapter-disabled base: non-zero once the adapters moved
    assert all(r["kl_ref"] > 0 for r in rl)
    # the checkpoint holds the adapters only, and the base's fingerprint
    final = verify(run_dir / "checkpoints" / "final")
    saved = load_file(str(final.folder / "model" / ADAPTER_WEIGHTS))
    assert saved and all("lora_" in k for k in saved)
    assert not (final.folder / "ref_model.safetensors").exists()
    assert final.state["lora"]["base_fingerprint"] == base_fingerprint(fresh)
    assert final.state["lora"]["base"] == "tiny" and final.state["lora"]["rank"] == 4


def _resume_in_process(source: Path, dest: Path, keep_step: int, *overrides):
    """Copy a finished run, cut it back to its step_<keep_step> checkpoint (as if it had been killed
    right after writing it), and `credo train --resume` it in this process."""
    shutil.copytree(source, dest)
    for ckpt in (dest / "checkpoints").iterdir():
        if ckpt.name not in (f"step_{keep_step}", "warmup"):
            shutil.rmtree(ckpt)
    (dest / "summary.json").unlink()
    return main(["train", "--resume", str(dest), *overrides])


def test_a_lora_run_resumes_exactly(lora_run, tmp_path):
    run_dir, _ = lora_run
    assert _resume_in_process(run_dir, tmp_path / "resumed", 1) == 0
    got, ref = tmp_path / "resumed", run_dir

    def comparable(folder):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(folder / "metrics.jsonl")]

    assert comparable(got) == comparable(ref)
    for part in ("model/" + ADAPTER_WEIGHTS, "optimizer.safetensors"):
        a = load_file(str(ref / "checkpoints" / "final" / part))
        b = load_file(str(got / "checkpoints" / "final" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert json.loads((got / "summary.json").read_text())["resumed_from"] == "step_1"


def test_resume_onto_other_base_weights_is_refused(lora_run, tmp_path, capsys):
    run_dir, _ = lora_run
    # run.seed 1 makes a different random tiny base: the adapters' fingerprint no longer matches
    assert _resume_in_process(run_dir, tmp_path / "other", 2, "--run.seed", "1") == 2
    assert "were trained on base weights with SHA-256" in capsys.readouterr().err
    assert _resume_in_process(run_dir, tmp_path / "plain", 2, "--model.lora_rank", "0") == 2
    assert "holds LoRA adapters, but this run has model.lora_rank = 0" in capsys.readouterr().err


def test_export_round_trip(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir, _ = lora_run
    out = tmp_path / "exported"
    assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not hasattr(plain, "peft_config") and "quantization_config" not in json.loads((out / "config.json").read_text())
    assert sorted(plain.state_dict()) == sorted(load_policy("tiny", seed=0).model.state_dict())
    # the merged policy: the base + the final adapters through the trainer's own load path, unmerged
    model = load_policy("tiny", seed=0).model
    lora = _attach(model)
    final = verify(run_dir / "checkpoints" / "final")
    load_adapters(lora, final.folder / "model", final.state["lora"])
    model.eval()
    tokens, mask, _ = _score_inputs(seed=5, shape=(2, 16))
    with torch.no_grad():
        want = model(input_ids=tokens, attention_mask=mask).logits
        got = plain(input_ids=tokens, attention_mask=mask).logits
        base = load_policy("tiny", seed=0).model.eval()(input_ids=tokens, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the adapters are in the export
    # credo's own loader reads it too, and a second export into a non-empty folder is refused
    assert load_policy(str(out)).model.config.num_hidden_layers == plain.config.num_hidden_layers
    with pytest.raises(CredoError, match="exists and is not empty"):
        from credo.lora import export

        export(run_dir, out)
    with pytest.raises(CredoError, match="holds LoRA adapters only"):
        load_policy(str(run_dir / "checkpoints" / "final"))
