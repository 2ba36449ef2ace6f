"""Training stages and pipelines: the DPO stage's loss against an independent computation, its pairs, a
SIGKILL inside a stage and at a stage boundary, and the pipeline's model chain and errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from credo.errors import CredoError
from credo.stages import STAGES, parse_params
from credo.stages.dpo import DPOParams, group_pairs, pair_loss, read_pair_file, step_pairs


def _cfg(out: Path, name: str, **extra):
    from credo.resolve import resolve_config

    fields = {"run.out_dir": str(out), "run.name": name, "run.progress": "false", "task.eval_size": "4",
              "model.threads": "1", **extra}
    return resolve_config("tiny", None, list(fields.items()))


@pytest.fixture(scope="module")
def tiny():
    from credo.models import load_policy

    return load_policy("tiny", seed=0)


PAIRS = [("What is 2+3?", "<answer>5</answer>", "<answer>6</answer>"),
         ("What is 7-4?", "<answer>3</answer>", "the answer is four")]


def _seq_logp(model, tokenizer, task, prompt, response):
    """sum of log p(response tokens + EOS | prompt), from the logits directly (independent of logprobs.py)."""
    from credo.tasks.base import Example, render_prompt

    head = tokenizer(render_prompt(tokenizer, task, Example(prompt, "", "")), add_special_tokens=False)["input_ids"]
    body = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([head + body])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[len(head) + i - 1, tok]) for i, tok in enumerate(body))


def test_dpo_loss_is_log2_at_the_reference_and_matches_the_formula_after_a_change(tiny):
    import copy

    from credo.objectives import OBJECTIVES
    from credo.tasks import make_task
    from credo.train.rl import bind_params

    task = make_task("arith")
    model, tok = tiny.model, tiny.tokenizer
    dpo = bind_params(OBJECTIVES.get("dpo"), {}, {"beta": 0.5}, "objective")
    loss, metrics = pair_loss(model, model, dpo, tok, task, PAIRS, max_response_tokens=64, autocast_dtype=None)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)  # h_w = h_l = 0 with the reference = the policy
    assert metrics["pairs"] == 2
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    loss, _ = pair_loss(policy, model, dpo, tok, task, PAIRS, max_response_tokens=64, autocast_dtype=None)
    expected = 0.0
    for prompt, chosen, rejected in PAIRS:  # -log sigma(beta ((S_w - S_w^ref) - (S_l - S_l^ref))), mean over pairs
        h_w = _seq_logp(policy, tok, task, prompt, chosen) - _seq_logp(model, tok, task, prompt, chosen)
        h_l = _seq_logp(policy, tok, task, prompt, rejected) - _seq_logp(model, tok, task, prompt, rejected)
        expected += math.log1p(math.exp(-0.5 * (h_w - h_l))) / len(PAIRS)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    loss.backward()  # the loss reaches the policy's weights
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in policy.parameters())


def test_group_pairs_and_step_pairs():
    assert group_pairs("q", [("a", 0.2, False), ("b", 0.9, True), ("c", 0.1, False)], None) == [("q", "b", "c")]
    assert group_pairs("q", [("a", 0.0, False), ("b", 0.0, False)], None) == []  # all equal, no demonstration
    assert group_pairs("q", [("a", 0.0, False), ("b", 0.0, False)], "demo") == [("q", "demo", "a")]
    assert group_pairs("q", [], "demo") == []
    pairs = [(str(i), "c", "r") for i in range(5)]
    seen = [p[0] for s in range(5) for p in step_pairs(pairs, s, 2, seed=3)]  # two epochs of five
    assert sorted(seen[:5]) == list("01234") and sorted(seen[5:10]) == list("01234")
    assert step_pairs(pairs, 1, 2, seed=3) == step_pairs(pairs, 1, 2, seed=3)
    assert step_pairs(pairs, 0, 5, seed=3) != step_pairs(pairs, 0, 5, seed=4)


def test_pair_files_and_params_are_checked(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) for p, c, r in PAIRS) + "\n")
    assert read_pair_file(str(good), DPOParams()) == PAIRS
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": 3}) + "\n")
    with pytest.raises(CredoError, match=r"bad.jsonl:1.*'rejected'"):
        read_pair_file(str(bad), DPOParams())
    kind = STAGES.get("dpo")
    with pytest.raises(CredoError, match=r"here: unknown parameter\(s\) bta"):
        parse_params(kind, {"bta": 0.1}, "here")
    with pytest.raises(CredoError, match=r"parameter 'steps' must be int"):
        parse_params(kind, {"steps": "3"}, "here")
    with pytest.raises(CredoError, match=r"not a pair objective"):
        parse_params(kind, {"objective": "grpo"}, "here")
    with pytest.raises(CredoError, match=r"levels gives 2 levels for 3 rounds"):
        parse_params(kind, {"levels": [1, 2], "rounds": 3}, "here")


def test_dpo_stage_on_file_pairs_raises_the_margin(tmp_path):
    from credo.train.logging import read_metrics

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) for p, c, r in PAIRS) + "\n")
    params = parse_params(STAGES.get("dpo"), {"pairs": str(pairs), "steps": 6, "batch_pairs": 2, "lr": 1e-3,
                                               "objective_params": {"beta": 0.5}}, "test")
    summary = STAGES.get("dpo").run(_cfg(tmp_path, "dpo", **{"run.eval_base": "false"}), params, resume=False)
    rows = [r for r in read_metrics(tmp_path / "dpo" / "metrics.jsonl") if r["phase"] == "dpo"]
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"] and rows[-1]["reward_accuracy"] == 1.0
    assert summary["final"]["n"] == 4 and (tmp_path / "dpo" / "checkpoints" / "final" / "model").is_dir()


def _child(argv, *, fault=None, timeout=600):
    env = dict(os.environ)
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


PIPELINE = """
[pipeline]
preset = "tiny"
seed = 0
fields = {{"task.eval_size" = 4, "model.threads" = 1, "run.progress" = false}}

[[stages]]
name = "warm"
kind = "sft"
"warmup.steps" = 2

[[stages]]
name = "specs"
kind = "dpo"
params = {{steps = 4, batch_pairs = 2, prompts_per_round = 4, group_size = 2, lr = 1e-3, rounds = 2, levels = [1, 2], checkpoint_every = 1{extra}}}
"""


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_pipeline_resumes_inside_a_stage_and_at_a_boundary_bitwise(tmp_path):
    """A 2-stage pipeline (sft, then 2 rounds of self-paired DPO at levels 1 and 2) killed inside its DPO
    stage, and once more right after a DPO round's checkpoint, then rerun: the DPO metrics and the final
    weights equal those of an uninterrupted pipeline, and the finished sft stage is not run again."""
    config = tmp_path / "p.toml"
    config.write_text(PIPELINE.format(extra=""))
    ref = _child(["pipeline", "--config", str(config), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    crash = tmp_path / "crash"
    first = _child(["pipeline", "--config", str(config), "--out", str(crash)], fault="update:3")  # inside round 0
    assert first.returncode == 1 and "failed" in first.stderr
    manifest = json.loads((crash / "pipeline.json").read_text())
    assert [r["status"] for r in manifest["stages"]] == ["finished", "failed"]
    sft_mtime = (crash / "stages" / "00-warm" / "summary.json").stat().st_mtime
    second = _child(["pipeline", "--config", str(config), "--out", str(crash)], fault="update:3")  # inside round 1
    assert second.returncode == 1 and "resuming from" in second.stdout
    third = _child(["pipeline", "--config", str(config), "--out", str(crash)])
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "stage 1/2 'warm' already finished" in third.stdout
    assert (crash / "stages" / "00-warm" / "summary.json").stat().st_mtime == sft_mtime

    def rows(out):
        from credo.train.logging import read_metrics

        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in read_metrics(out / "stages" / "01-specs" / "metrics.jsonl")]

    assert rows(crash) == rows(tmp_path / "ref")
    for stage in ("00-warm", "01-specs"):
        a = _weights(tmp_path / "ref" / "stages" / stage / "checkpoints" / "final")
        b = _weights(crash / "stages" / stage / "checkpoints" / "final")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    table = (crash / "pipeline.md").read_text()
    assert "| 0 | warm | sft |" in table and "| 1 | specs | dpo |" in table
    stages = json.loads((crash / "pipeline.json").read_text())["stages"]
    assert stages[1]["model"].endswith("00-warm/checkpoints/final")  # the chain: DPO starts from the sft model
    assert all(s["heldout"]["n"] == 4 for s in stages)


def test_pipeline_errors_name_the_stage(tmp_path):
    from credo.stages.pipeline import read_pipeline, resolve_stages

    def check(text, match):
        path = tmp_path / "p.toml"
        path.write_text(text)
        with pytest.raises(CredoError, match=match):
            header, specs = read_pipeline(path)
            resolve_stages(header, specs, tmp_path / "out")

    head = '[pipeline]\npreset = "tiny"\n'
    check(head, r"expected \[\[stages\]\]")
    check(head + '[[stages]]\nkind = "sft"\n', r"stage 1 needs a name")
    check(head + '[[stages]]\nname = "a"\nkind = "sfft"\n', r"stage 'a': unknown stage 'sfft'")
    check(head + '[[stages]]\nname = "a"\nkind = "sft"\n[[stages]]\nname = "a"\nkind = "rl"\n', r"used twice")
    check(head + '[[stages]]\nname = "a"\nkind = "rl"\nfrom = "b"\n', r"from = 'b' names no earlier stage")
    check(head + '[[stages]]\nname = "a"\nkind = "rl"\n"rl.stepz" = 3\n', r"stage 'a': unknown config field 'rl.stepz'")
    check(head + '[[stages]]\nname = "a"\nkind = "dpo"\nparams = {beta = 1}\n', r"stage 'a' \(dpo\): unknown parameter")


def test_the_chain_and_from(tmp_path):
    from credo.stages.pipeline import read_pipeline, resolve_stages

    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\npreset = "tiny"\nseed = 3\n'
                    '[[stages]]\nname = "a"\nkind = "sft"\n'
                    '[[stages]]\nname = "b"\nkind = "rl"\n'
                    '[[stages]]\nname = "c"\nkind = "rl"\nfrom = "a"\n'
                    '[[stages]]\nname = "d"\nkind = "rl"\n"model.name" = "tiny"\n')
    header, specs = read_pipeline(path)
    stages = resolve_stages(header, specs, tmp_path / "out")
    models = [s.cfg.model.name for s in stages]
    final = lambda name: str((tmp_path / "out" / "stages" / name / "checkpoints" / "final").resolve())  # noqa: E731
    assert models == ["tiny", final("00-a"), final("00-a"), "tiny"]
    assert [s.cfg.run.seed for s in stages] == [3, 3, 3, 3]
    assert [s.cfg.run.eval_base for s in stages] == [True, False, False, False]
    assert json.loads(stages[1].config_file.read_text())["model"]["name"] == final("00-a")


def test_every_stage_is_listed(capsys):
    from credo.catalog import stage_entries
    from credo.cli import main

    names = {e.name.split(" ")[0] for e in stage_entries()}
    assert set(STAGES.names()) <= names
    assert main(["list", "stages"]) == 0
    out = capsys.readouterr().out
    for name in STAGES.names():
        assert f"\n{name} " in out
