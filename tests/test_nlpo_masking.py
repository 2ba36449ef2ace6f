"""NLPO's delayed masking policy (rollout/masking.py): masked sampling checked against a teacher-forced
forward of the copy, the copy's delayed sync, the loss masked by the same copy in a run (no sampled
token outside the mask), the recipe / pairing, clear config errors, and an exact resume."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from credo.cli import main
from credo.models import load_policy
from credo.objectives.distribution import top_p_action_mask
from credo.rollout import SamplingParams, TorchEngine
from credo.rollout.masking import DelayedPolicy, NLPOSampler
from credo.tasks import TASKS
from credo.train.logging import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from fixture_tasks import ParityTask  # noqa: E402


@pytest.fixture(scope="module")
def policy():
    return load_policy("tiny", seed=0)


def _full_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_every_sampled_token_is_in_the_copys_top_p_set_and_scored_renormalised(policy):
    engine = TorchEngine(policy.model, policy.tokenizer)
    masker = NLPOSampler(update_every=5, top_p=0.3, min_tokens_to_keep=2)
    prompts = [policy.tokenizer.encode("1 + 2 =", add_special_tokens=False),
               policy.tokenizer.encode("The sky is", add_special_tokens=False)]
    groups = masker.generate(engine, policy.tokenizer, prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=6), seed=3)
    copy = masker.policy.model
    assert copy is not policy.model and masker.policy.synced_version == 0
    checked = 0
    for prompt, group in zip(prompts, groups):
        for c in group:
            ids = list(prompt) + list(c.token_ids)
            mask_lp, pol_lp = _full_logprobs(copy, ids), _full_logprobs(policy.model, ids)
            keep = top_p_action_mask(mask_lp, 0.3, min_tokens_to_keep=2, keep_token_ids=masker.keep_token_ids)
            for j, token in enumerate(c.token_ids):
                at = len(prompt) + j - 1  # the logits at t - 1 choose token t
                assert keep[at, token], (j, token)
                renorm = pol_lp[at, token] - torch.logsumexp(pol_lp[at].masked_fill(~keep[at], -float("inf")), -1)
                assert c.logprobs[j] == pytest.approx(float(renorm), abs=1e-4)
                checked += 1
    assert checked >= 6


def test_unmasked_sampling_is_unchanged_by_the_hook(policy):
    engine = TorchEngine(policy.model, policy.tokenizer)
    prompts = [policy.tokenizer.encode("1 + 2 =", add_special_tokens=False)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6)
    a = engine.generate(prompts, 2, sampling, seed=1)
    full = NLPOSampler(update_every=5, top_p=1.0, min_tokens_to_keep=1)  # the top-p set of mass 1 is everything
    b = full.generate(engine, policy.tokenizer, prompts, 2, sampling, seed=1)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]


def test_the_copy_syncs_only_every_update_every_versions():
    model = torch.nn.Linear(3, 2)
    delayed = DelayedPolicy(model, update_every=3, version=0)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not delayed.sync(model, 2) and torch.equal(delayed.model.weight, start)
    assert delayed.sync(model, 3) and torch.equal(delayed.model.weight, model.weight)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not delayed.sync(model, 5) and delayed.sync(model, 6) and delayed.syncs == 2
    meta, tensors = delayed.export()
    other = DelayedPolicy(torch.nn.Linear(3, 2), update_every=3)
    other.restore(meta, tensors)
    assert torch.equal(other.model.weight, model.weight) and other.synced_version == 6


def _args(tmp_path, *extra):
    return ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.progress", "false",
            "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4", "--warmup.steps", "1",
            "--model.threads", "1", *extra]


def test_a_run_masks_the_loss_with_the_copy_that_masked_the_rollouts_and_resumes_exactly(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    args = _args(tmp_path, "--recipe", "nlpo", "--rl.steps", "3", "--run.checkpoint_every", "1",
                 "--rollout.sampler_params", '{"update_every": 2, "top_p": 0.5, "min_tokens_to_keep": 1}')
    assert main(args + ["--run.name", "ref"]) == 0
    ref = tmp_path / "ref"
    rl = [r for r in read_metrics(ref / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 3
    # the loss's mask is the sampler's: no sampled token falls outside it; the set is a real restriction
    assert all(r["nlpo_outside_mask"] == 0.0 for r in rl), [r["nlpo_outside_mask"] for r in rl]
    assert all(r["nlpo_kept_tokens"] < 0.75 * 49152 for r in rl), [r["nlpo_kept_tokens"] for r in rl]  # (random tiny model: flat)
    state = json.loads((ref / "checkpoints" / "final" / "state.json").read_text())
    assert state["method_state"]["rollout_sampler"]["synced_version"] == 2  # synced at version 2 (step 3's rollout)
    crash = tmp_path / "crash"
    shutil.copytree(ref, crash)
    for folder in (crash / "checkpoints").iterdir():
        if folder.name not in ("warmup", "step_1"):
            shutil.rmtree(folder)
    (crash / "summary.json").unlink()
    assert main(["train", "--resume", str(crash)]) == 0
    for name in ("model/model.safetensors", "method_rollout_sampler.safetensors"):
        a, b = load_file(str(ref / "checkpoints" / "final" / name)), load_file(str(crash / "checkpoints" / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_config_errors_name_the_missing_pairing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    assert main(_args(tmp_path, "--rl.objective", "nlpo", "--rollout.sampler", "independent")) == 2
    assert "rl.objective nlpo masks its loss with the policy that masked the rollouts: it needs rollout.sampler 'nlpo'" \
        in capsys.readouterr().err
    assert main(_args(tmp_path, "--recipe", "nlpo", "--rollout.engine", "vllm")) == 2
    assert 'rollout.sampler \'nlpo\' masks every decoding step: it needs rollout.engine "torch"' in capsys.readouterr().err


def test_a_group_sampler_on_a_multi_turn_task_is_refused(tmp_path, capsys):
    assert main(_args(tmp_path, "--task.name", "keyvalue", "--recipe", "nlpo")) == 2
    assert "rollout.sampler 'nlpo' with the multi-turn task 'keyvalue' is not built yet" in capsys.readouterr().err
