"""The demos stage (stages/demos.py) and warmup.demonstrations (train/sft.py::read_demonstrations): a model
writes demonstrations, the task's verifier keeps the correct ones, a later sft stage trains on the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from credo.errors import CredoError
from credo.stages import STAGES, parse_params
from credo.stages.demos import DemosParams, first_correct, run_demos
from credo.tasks import TASKS
from credo.tasks.base import Example
from credo.train.sft import read_demonstrations

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask  # noqa: E402


@pytest.fixture(autouse=True)
def tasks(monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(out: Path, name: str, **extra):
    from credo.resolve import resolve_config

    fields = {"run.out_dir": str(out), "run.name": name, "run.progress": "false", "task.eval_size": "4",
              "model.threads": "1", "task.name": "parity", **extra}
    return resolve_config("tiny", None, list(fields.items()))


def test_first_correct_and_params():
    task, example = ParityTask(), Example("q", "1", "<answer>1</answer>")
    assert first_correct(task, example, ["ab", "abc", "a"]) == "abc"  # odd length is correct; the first wins
    assert first_correct(task, example, ["ab", "abcd", ""]) is None
    assert first_correct(task, example, [None, "a"]) == "a"  # hostile output scores 0, never raises
    kind = STAGES.get("demos")
    assert parse_params(kind, {"samples": 2}, "x") == DemosParams(prompts=64, samples=2, keep_unsolved=False)
    for table, field in (({"samples": 0}, "samples"), ({"prompts": 0}, "prompts"), ({"sample": 2}, "sample")):
        with pytest.raises(CredoError, match=field):
            parse_params(kind, table, "stage 'd' (demos)")


def test_demos_stage_keeps_only_verified_samples_and_is_deterministic(tmp_path):
    from credo.train.logging import read_metrics

    params = DemosParams(prompts=8, samples=1)
    summary = run_demos(_cfg(tmp_path, "d", **{"sampling.max_new_tokens": "7"}), params)
    run = tmp_path / "d"
    rows = [json.loads(line) for line in (run / "demonstrations.jsonl").read_text().splitlines()]
    task = ParityTask()
    prompts = [e.prompt for e in task.examples("train", 8, seed=0 + 10_000)]  # the warm-up's own draw
    assert 0 < len(rows) < 8, "a random tiny model should solve some, not all, parity problems in 1 sample"
    assert all(r["source"] == "teacher" and len(r["demonstration"]) % 2 == 1 for r in rows)
    assert [r["prompt"] for r in rows] == [p for p in prompts if p in {r["prompt"] for r in rows}]  # draw order
    (record,) = [r for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "demos"]
    assert record["problems"] == 8 and record["rows"] == len(rows)
    assert record["solved_fraction"] == len(rows) / 8
    assert summary["final"]["n"] == 4 and summary["demos"]["rows"] == len(rows)
    assert not (run / "checkpoints").exists()  # nothing is trained

    again = run_demos(_cfg(tmp_path, "e", **{"sampling.max_new_tokens": "7"}), params)
    assert (tmp_path / "e" / "demonstrations.jsonl").read_bytes() == (run / "demonstrations.jsonl").read_bytes()
    assert again["final"] == summary["final"]

    full = run_demos(_cfg(tmp_path, "f", **{"sampling.max_new_tokens": "7"}), DemosParams(8, 1, keep_unsolved=True))
    every = [json.loads(line) for line in (tmp_path / "f" / "demonstrations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in every] == prompts
    assert [r for r in every if r["source"] == "teacher"] == rows  # the same samples; the rest the task's own
    demos = {e.prompt: e.demonstration for e in task.examples("train", 8, seed=10_000)}
    assert all(r["demonstration"] == demos[r["prompt"]] for r in every if r["source"] == "task")
    assert full["demos"]["solved_fraction"] == record["solved_fraction"]


def test_the_warmup_trains_on_the_file(tmp_path, monkeypatch):
    import credo.train.run as run_module

    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1+2?", "answer": "3", "demonstration": "<answer>3</answer>",
                                "source": "teacher"}) + "\n" +
                    json.dumps({"prompt": "What is 2+2?", "demonstration": "<think>two and two</think><answer>4</answer>"})
                    + "\n")
    seen = {}

    def capture(model, tokenizer, task, examples, **kw):
        seen["examples"], seen["steps"] = list(examples), kw["steps"]

    monkeypatch.setattr(run_module, "run_warmup", capture)
    cfg = _cfg(tmp_path, "w", **{"warmup.demonstrations": str(path), "warmup.steps": "3", "rl.steps": "0",
                                 "run.eval_base": "false"})
    run_module.train(cfg)
    assert seen["steps"] == 3
    assert seen["examples"] == [Example("What is 1+2?", "3", "<answer>3</answer>", {"source": "teacher"}),
                                Example("What is 2+2?", "", "<think>two and two</think><answer>4</answer>", {})]


@pytest.mark.parametrize("text, expected", [
    ('{"prompt": "q", "demonstration": ""}\n', r"demos.jsonl:1.*'demonstration' must be a non-empty string"),
    ('{"prompt": "q", "demonstration": "a"}\n{"demonstration": "a"}\n', r"demos.jsonl:2.*'prompt'.*got null"),
    ('{"prompt": "q", "demonstration": "a", "answer": 3}\n', r"'answer' must be a non-empty string, got integer"),
    ("", "holds no rows"),
])
def test_bad_demonstration_files_name_the_row_and_field(tmp_path, text, expected):
    path = tmp_path / "demos.jsonl"
    path.write_text(text)
    with pytest.raises(CredoError, match=expected):
        read_demonstrations(path)


def test_pipeline_resolves_the_file_and_chains_past_the_demos_stage(tmp_path):
    from credo.stages.pipeline import read_pipeline, resolve_stages
    from credo.train.run import validate

    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\npreset = "tiny"\nfields = {"task.name" = "parity"}\n\n'
                    '[[stages]]\nname = "write"\nkind = "demos"\n"model.name" = "tiny"\nparams = {samples = 2}\n\n'
                    '[[stages]]\nname = "learn"\nkind = "sft"\n"warmup.demonstrations" = "@write"\n\n'
                    '[[stages]]\nname = "again"\nkind = "sft"\nfrom = "write"\n')
    header, specs = read_pipeline(path)
    write, learn, again = resolve_stages(header, specs, tmp_path / "out")
    assert learn.cfg.warmup.demonstrations == str(write.folder / "demonstrations.jsonl")
    assert learn.cfg.model.name == "tiny" and again.cfg.model.name == "tiny"  # a demos stage trains nothing
    assert again.cfg.warmup.demonstrations == ""

    for ref, where in (("@nowhere", "names no earlier demos stage"), ("@learn", "names no earlier demos stage")):
        bad = tmp_path / "bad.toml"
        bad.write_text(path.read_text().replace('"@write"\n\n[[stages]]\nname = "again"',
                                                f'"@write"\n\n[[stages]]\nname = "again"\n"warmup.demonstrations" = "{ref}"'))
        with pytest.raises(CredoError, match=rf"stage 'again': .*{where}"):
            resolve_stages(*read_pipeline(bad), tmp_path / "out2")
    cfg = _cfg(tmp_path, "x", **{"warmup.demonstrations": "@write"})
    with pytest.raises(CredoError, match="names a pipeline stage"):
        validate(cfg)
