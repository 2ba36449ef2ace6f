"""The int stage (stages/intervention.py, InT): steps, prefixes and the oracle locator against the arith task's
step_truth, the proposal parser on junk, the training rows' token masks on canned texts (checked by hand against
SmolLM2's tokenizer), the loss against a computation from the logits, a round's examples through the model path
(scripted proposals), the stage end to end on the tiny model, and a SIGKILL with a bitwise resume (mid-round
and between rounds)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.errors import CredoError
from credo.stages.intervention import (InTExample, InTParams, Proposal, collect_round, int_batch, int_loss,
                                       intervention_row, oracle_first_error, parse_intervention, prefix_text,
                                       proposal_message, reference_step, safe_step_truth, split_steps)
from credo.tasks.base import Example

TIMING_KEYS = {"step_time", "gen_time"}


def _ex(a: int, b: int) -> Example:
    return Example(f"What is {a}+{b}?", str(a + b), f"<answer>{a + b}</answer>")


# ---- steps and the oracle ----

@pytest.mark.parametrize("attempt, truth, index, prefix", [
    ("23+45=68\n68+10=79\n<answer>79</answer>", [1, -1, -1], 1, "23+45=68\n"),  # a false equation
    ("I add them.\n23+45=68\nso it is", [0, 1, 0], 2, "I add them.\n23+45=68\n"),  # stopped after a right step
    ("23+45=68", [1], 1, "23+45=68\n"),  # never wrote the answer: the intervention goes after the last step
    ("<answer>67</answer>", [-1], 0, ""),  # a wrong answer straight away
    ("blah blah\n\n   \nmore", [0, 0], 0, ""),  # junk (the whitespace-only line is no step)
    ("", [], 0, ""),
])
def test_oracle_locator_against_the_arith_step_truth(attempt, truth, index, prefix):
    from credo.tasks import make_task

    task, ex = make_task("arith"), _ex(23, 45)
    steps = split_steps(attempt)
    assert task.score(attempt, ex).correct is False
    assert safe_step_truth(task, ex, steps) == truth  # the calculator-checked steps
    assert oracle_first_error(truth) == index and prefix_text(steps, index) == prefix


def test_oracle_rule_on_random_truth_vectors():
    rng = random.Random(0)
    for _ in range(2000):
        truth = [rng.choice([-1.0, 0.0, 1.0]) for _ in range(rng.randint(0, 6))]
        i = oracle_first_error(truth)
        assert 0 <= i <= len(truth)
        if -1.0 in truth:  # the first false step, everything before it non-negative
            assert truth[i] == -1.0 and all(v >= 0 for v in truth[:i])
        else:  # no false step: only neutral steps from i on, and the step before i verified
            assert all(v == 0 for v in truth[i:]) and (i == 0 or truth[i - 1] == 1.0)


def test_step_truth_failures_locate_nothing_and_reference_steps():
    class Raises:
        def step_truth(self, example, steps):
            raise RuntimeError("boom")

    class Short:
        def step_truth(self, example, steps):
            return [1.0]

    class Nan:
        def step_truth(self, example, steps):
            return [float("nan")] * len(steps)

    class Bools:
        def step_truth(self, example, steps):
            return [True] * len(steps)

    for task in (Raises(), Short(), Nan(), Bools(), object()):
        assert safe_step_truth(task, _ex(1, 2), ["a", "b"]) is None
    assert reference_step("12+30=42\n<answer>42</answer>", 0) == "12+30=42"
    assert reference_step("12+30=42\n<answer>42</answer>", 5) == "<answer>42</answer>"  # shorter: its last step
    assert reference_step(" \n ", 0) is None
    assert split_steps("a\n\nb\n\nc", "\n\n") == ["a", "b", "c"]


# ---- the parser ----

def test_parser_reads_the_official_format_and_its_variants():
    ok = lambda loc, content: Proposal(loc, content)  # noqa: E731
    assert parse_intervention('<intervention>{"content": "x=1", "location": 2}</intervention>', 3) == ok(2, "x=1")
    assert parse_intervention('<intervention>\n```json\n{"location": 3.0, "content": "a\\nb \\"c\\""}\n```\n'
                              '</intervention>', 3) == ok(3, 'a\nb "c"')
    assert parse_intervention("<intervention>{'content': 'single quotes', 'location': 'Substep 1'}</intervention>",
                              2) == ok(1, "single quotes")  # not JSON: the lenient regexes
    assert parse_intervention('<intervention>{"content": "first", "location": 1}</intervention> then '
                              '<intervention>{"content": "second", "location": 2}</intervention>', 2) == ok(2, "second")
    assert parse_intervention('I think <intervention>{"content": "cut off", "location": 1', 1) == ok(1, "cut off")
    assert parse_intervention('<intervention>{"content": 42, "location": 4}</intervention>', 3) == ok(4, "42")
    # the oracle's location overrides (and stands in for) the proposal's
    assert parse_intervention('<intervention>{"content": "y"}</intervention>', 3, location=2) == ok(2, "y")
    assert parse_intervention('<intervention>{"content": "y", "location": 1}</intervention>', 3, location=3) == ok(3, "y")


@pytest.mark.parametrize("junk", [
    None, 17, b"<intervention>", "", "no tag at all", "<intervention>", "<intervention></intervention>",
    '<intervention>{"content": "", "location": 1}</intervention>',  # empty: the official "no critical error"
    '<intervention>{"content": "   ", "location": 1}</intervention>',
    '<intervention>{"content": ["a"], "location": 1}</intervention>',
    '<intervention>{"content": {"a": 1}, "location": 1}</intervention>',
    '<intervention>{"content": "x", "location": 0}</intervention>',
    '<intervention>{"content": "x", "location": -2}</intervention>',
    '<intervention>{"content": "x", "location": 5}</intervention>',  # past steps + 1
    '<intervention>{"content": "x", "location": "two"}</intervention>',
    '<intervention>{"content": "x", "location": true}</intervention>',
    '<intervention>{"content": "x"}</intervention>',  # no location and no oracle
    '<intervention>{"location": 1}</intervention>',
    '<intervention>{{{{"content": "x", "location": 1</intervention>'.replace('"content": "x", ', ""),
    "\x00\xff\ufffd<intervention>\x00{\"content\": \x00}</intervention>",
    "<intervention>" + "{" * 5000 + "</intervention>",
    "a" * 1_000_000,
])
def test_parser_never_raises_on_junk(junk):
    assert parse_intervention(junk, 3) is None


# ---- training rows on canned texts ----

def test_rows_and_masks_on_canned_texts(tiny_policy):
    """'23+45=68\\n' is 9 tokens (2 3 + 4 5 = 6 8 \\n), '68+10=78' 8 (6 8 + 1 0 = 7 8), the continuation
    '\\n<answer>78</answer>' 9 (\\n < answer > 7 8 </ answer >): SmolLM2 splits digits."""
    from credo.tasks import make_task
    from credo.tasks.base import render_prompt

    tok, task = tiny_policy.tokenizer, make_task("arith")
    head = tok(render_prompt(tok, task, Example("What is 23+45?", "", "")), add_special_tokens=False)["input_ids"]
    cont = [198, 44, 11247, 46, 39, 40, 9617, 11247, 46]
    ex = InTExample("What is 23+45?", "23+45=68\n68+10=79", "23+45=68\n", "68+10=78", 1, 2, cont, True)
    ids, mask = intervention_row(tok, task, ex)
    H = len(head)
    assert ids[:H] == head and ids[H:] == [34, 35, 27, 36, 37, 45, 38, 40, 198] + [38, 40, 27, 33, 32, 45, 39, 40] + cont + [2]
    assert mask == [False] * (H + 9) + [True] * (8 + 9 + 1)
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "68+10=78\n<answer>78</answer><|im_end|>"
    ids_r, mask_r = intervention_row(tok, task, ex, loss_on="response")  # the official target: prefix too
    assert ids_r == ids and mask_r == [False] * H + [True] * (9 + 8 + 9 + 1)
    # no continuation: no EOS (the model must not learn to stop after the intervention)
    bare = InTExample("What is 23+45?", "23+45=68\n68+10=79", "23+45=68\n", "68+10=78", 1, 2)
    ids, mask = intervention_row(tok, task, bare)
    assert len(ids) == H + 17 and mask == [False] * (H + 9) + [True] * 8
    # the error at step 0: no prefix, the whole response is the intervention; cut at max_response_tokens
    first = InTExample("What is 23+45?", "<answer>67</answer>", "", "23+45=68", 0, 1, cont, False)
    ids, mask = intervention_row(tok, task, first, max_response_tokens=10)
    assert ids[H:] == [34, 35, 27, 36, 37, 45, 38, 40] + cont[:2] and mask == [False] * H + [True] * 10
    tokens, attention, loss_mask = int_batch(tok, task, [ex, bare], loss_on="intervention", max_response_tokens=256)
    assert tokens.shape == (2, H + 27) and attention[1].sum() == H + 17 and loss_mask.sum() == 18 + 8
    assert not loss_mask[1, H + 17:].any() and not loss_mask[:, 0].any()  # padding (pad == EOS) is never a target


def test_loss_is_the_token_mean_over_the_intervention(tiny_policy):
    from credo.tasks import make_task

    tok, task, model = tiny_policy.tokenizer, make_task("arith"), tiny_policy.model
    rows = [InTExample("What is 23+45?", "a", "23+45=68\n", "68+10=78", 1, 2),
            InTExample("What is 12+30?", "b", "", "<answer>42</answer>", 0, 1, [198, 44], True)]
    tokens, attention, mask = int_batch(tok, task, rows, loss_on="intervention", max_response_tokens=256)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=tokens, attention_mask=attention.long()).logits.double(), -1)
    picked = [float(logp[b, t - 1, tokens[b, t]]) for b, t in mask.nonzero().tolist()]
    loss, m = int_loss(model, tok, task, rows, InTParams(), None)
    assert m["tokens"] == len(picked) == 8 + 8 + 3
    assert float(loss.detach()) == pytest.approx(-sum(picked) / len(picked), rel=1e-5)


def test_proposal_prompts_and_params():
    from credo.stages import STAGES, parse_params

    msg = proposal_message("What is 23+45?", "<answer>68</answer>", ["23+45=69", "<answer>69</answer>"])
    assert "Step 1: 23+45=69\nStep 2: <answer>69</answer>" in msg and "<answer>68</answer>" in msg
    assert '<intervention>{"location": STEP_NUMBER' in msg
    located = proposal_message("What is 23+45?", "<answer>68</answer>", ["23+45=69"], location=1)
    assert "Step 1 is the first step that goes wrong" in located and '{"location": 1,' in located
    kind = STAGES.get("int")
    for table, name in (({"correction": "reference"}, "oracle"), ({"correction": "teacher"}, "correction"),
                        ({"loss_on": "all"}, "loss_on"), ({"step_separator": ""}, "step_separator"),
                        ({"samples": 0}, "samples"), ({"lr": 0.0}, "lr"), ({"checkpoint_every": -1}, "checkpoint_every")):
        with pytest.raises(CredoError, match=name):
            parse_params(kind, table, "stage 'i' (int)")


# ---- rounds and the stage ----

def _cfg(out: Path, name: str, **extra):
    from credo.resolve import resolve_config

    fields = {"run.out_dir": str(out), "run.name": name, "run.progress": "false", "task.eval_size": "4",
              "model.threads": "1", **extra}
    return resolve_config("tiny", None, list(fields.items()))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _scripted_proposals(monkeypatch, seen: list):
    """Proposals (the calls that stop at </intervention>) come from a script, cycling through: a valid one,
    junk, one that gives the answer away and one with its location out of range; rollouts stay the model's."""
    from credo.rollout.base import Completion
    from credo.rollout.torch_engine import TorchEngine

    real = TorchEngine.generate

    def generate(self, prompts, n, sampling, seed):
        if "</intervention>" not in sampling.stop:
            return real(self, prompts, n, sampling, seed)
        out = []
        for i, p in enumerate(prompts):
            text = self.tokenizer.decode(p)
            seen.append(text)
            a, b = map(int, re.search(r"What is (\d+)\+(\d+)\?", text).groups())
            reply = ['<intervention>{"location": 1, "content": "I add the tens first."}</intervention>', "junk junk",
                     f'<intervention>{{"location": 1, "content": "It is {a + b}."}}</intervention>',
                     '<intervention>{"location": 99, "content": "x"}</intervention>'][i % 4]
            out.append([Completion(list(p), [1], [0.0], [True], "stop", reply)])
        return out

    monkeypatch.setattr(TorchEngine, "generate", generate)


@pytest.mark.parametrize("oracle", [False, True])
def test_a_round_through_the_model_path(tmp_path, monkeypatch, threads, oracle):
    from credo.stages.common import open_stage

    seen: list[str] = []
    _scripted_proposals(monkeypatch, seen)
    params = InTParams(prompts_per_round=4, samples=2, oracle=oracle, proposal_tokens=32)
    st = open_stage(_cfg(tmp_path, "r"), "int", params, resume=False)
    examples, stats = collect_round(st, params, 0)
    n = int(stats["wrong_attempts"])
    assert stats["rollouts"] == 8 and stats["sample_accuracy"] == 0.0 and 4 <= n <= 8  # a random model fails
    assert stats["proposals"] == n and len(seen) == n and stats["oracle_failures"] == 0
    count = lambda k: len(range(k, n, 4))  # noqa: E731  (proposals k, k + 4, ... got script line k)
    # the out-of-range location is junk for the model path; with the oracle its location is not read at all
    assert stats["unparsed"] == count(1) + (0 if oracle else count(3)) and stats["answer_leaks"] == count(2)
    assert stats["examples"] == len(examples) == count(0) + (count(3) if oracle else 0)
    for text in seen:
        assert "# Reference solution\n<answer>" in text and "# Student attempt\n" in text
        assert ("is the first step that goes wrong" in text) == oracle
    for e in examples:
        assert e.intervention in ("I add the tens first.", "x" if oracle else None) and e.attempt
        if not oracle:  # the model said step 1: no prefix
            assert e.location == 0 and e.prefix == ""
        else:  # the oracle's location on junk: where verified progress stopped (the start)
            assert e.location == oracle_first_error([0.0] * e.n_steps) == 0


def test_stage_end_to_end_with_the_oracle(tmp_path, threads):
    from credo.stages import STAGES, parse_params
    from credo.train.logging import read_metrics

    params = parse_params(STAGES.get("int"), {"rounds": 2, "prompts_per_round": 4, "samples": 2, "oracle": True,
                                              "correction": "reference", "steps": 4, "batch_size": 4, "lr": 3e-3},
                          "test")
    summary = STAGES.get("int").run(_cfg(tmp_path, "i"), params, resume=False)
    rows = read_metrics(tmp_path / "i" / "metrics.jsonl")
    rounds = [r for r in rows if r["phase"] == "interventions"]
    assert [(r["round"], r["step"]) for r in rounds] == [(0, 0), (1, 4)]
    for r in rounds:  # every wrong attempt is located by the calculator and corrected by the reference
        assert r["wrong_attempts"] >= 4 and r["examples"] == r["located"] == r["wrong_attempts"]
        assert r["proposals"] == 0 and r["oracle_failures"] == 0
    steps = [r for r in rows if r["phase"] == "int"]
    assert [r["step"] for r in steps] == list(range(8)) and all(r["tokens"] > 0 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5, [r["loss"] for r in steps]  # the interventions are learnt
    assert [r["stage"] for r in rows if r["phase"] == "eval"] == ["base", "round_0", "round_1", "int"]
    assert summary["final"]["n"] == 4 and (tmp_path / "i" / "checkpoints" / "final" / "model").is_dir()


def test_continuations_and_the_success_filter(tmp_path, threads):
    from credo.stages.common import open_stage

    params = InTParams(prompts_per_round=4, samples=2, oracle=True, correction="reference", continuation=True)
    st = open_stage(_cfg(tmp_path, "c"), "int", params, resume=False)
    examples, stats = collect_round(st, params, 0)
    assert examples and stats["examples"] == len(examples) and 0.0 <= stats["guided_success"] <= 1.0
    for e in examples:  # the policy's sampled tokens after prefix + intervention ride in the example
        assert 1 <= len(e.continuation_ids) <= st.sampling.max_new_tokens
        a, b = map(int, re.search(r"(\d+)\+(\d+)", e.prompt).groups())
        assert e.intervention == f"<answer>{a + b}</answer>"  # the reference's (only) step
        ids, mask = intervention_row(st.tokenizer, st.task, e)
        n, eos = len(e.continuation_ids), int(e.eos)
        assert ids[len(ids) - n - eos: len(ids) - eos] == e.continuation_ids and all(mask[len(ids) - n - eos:])
    assert stats["guided_success"] == 0.0  # a random model's continuations after the answer tag are junk


def test_the_success_filter_keeps_interventions_whose_continuation_is_right(tmp_path, monkeypatch, threads):
    """Continuations after "<answer>N</answer>" are scripted: every other one stops at once (right: the tag
    alone), the others add text after the tag (wrong: the arith verifier refuses trailing text)."""
    from credo.rollout.base import Completion
    from credo.rollout.torch_engine import TorchEngine
    from credo.stages.common import open_stage

    real = TorchEngine.generate

    def generate(self, prompts, n, sampling, seed):
        if not self.tokenizer.decode(prompts[0]).endswith("</answer>"):
            return real(self, prompts, n, sampling, seed)
        eos = self.tokenizer.eos_token_id
        return [[Completion(list(p), [eos], [0.0], [True], "stop", "") if i % 2 == 0 else
                 Completion(list(p), [198, 57], [0.0, 0.0], [True, True], "length", "\nI")] for i, p in enumerate(prompts)]

    monkeypatch.setattr(TorchEngine, "generate", generate)
    params = InTParams(prompts_per_round=4, samples=2, oracle=True, correction="reference", require_success=True)
    st = open_stage(_cfg(tmp_path, "s"), "int", params, resume=False)
    kept, stats = collect_round(st, params, 0)
    assert stats["located"] == 8 and stats["guided_success"] == 0.5 and len(kept) == 4
    assert all(e.continuation_ids == [] and not e.eos for e in kept)  # filtered, not extended
    both = InTParams(prompts_per_round=4, samples=2, oracle=True, correction="reference", require_success=True,
                     continuation=True)
    kept, _ = collect_round(st, both, 0)
    eos = st.tokenizer.eos_token_id
    assert len(kept) == 4 and all(e.continuation_ids == [eos] and not e.eos for e in kept)  # EOS sampled: not doubled
    ids, mask = intervention_row(st.tokenizer, st.task, kept[0])
    assert ids[-1] == eos and ids[-2] != eos and mask[-1]


def test_rounds_without_an_example_train_nothing(tmp_path, threads):
    """The model path on a random model: no proposal parses, so no round trains; the stage still finishes."""
    from credo.stages.intervention import run_int
    from credo.train.logging import read_metrics

    summary = run_int(_cfg(tmp_path, "n"), InTParams(rounds=2, prompts_per_round=2, samples=1, proposal_tokens=16))
    rows = read_metrics(tmp_path / "n" / "metrics.jsonl")
    assert [(r["round"], r["examples"], r["proposals"]) for r in rows if r["phase"] == "interventions"] == \
        [(0, 0.0, 2.0), (1, 0.0, 2.0)]
    assert not [r for r in rows if r["phase"] == "int"]
    assert [r["stage"] for r in rows if r["phase"] == "eval"] == ["base", "int"] and summary["final"]["n"] == 4
    assert sorted(p.name for p in (tmp_path / "n" / "checkpoints").iterdir()) == ["final"]


def test_oracle_needs_step_truth(tmp_path):
    from credo.stages.intervention import run_int

    cfg = _cfg(tmp_path, "k")
    cfg.task.name, cfg.task.params = "knights", {}
    with pytest.raises(CredoError, match="step_truth"):
        run_int(cfg, InTParams(oracle=True))
    assert not (tmp_path / "k").exists()  # refused before the run folder or any model


def _stage(config: Path, params: Path, *, resume=False, fault=None):
    env = dict(os.environ)
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    argv = [sys.executable, "-m", "credo", "stage", "int", "--config", str(config), "--params", str(params)]
    return subprocess.run(argv + (["--resume"] if resume else []), env=env, capture_output=True, text=True, timeout=300)


PARAMS = {"rounds": 2, "prompts_per_round": 3, "samples": 2, "oracle": True, "correction": "reference",
          "continuation": True, "steps": 3, "batch_size": 2, "lr": 3e-3, "checkpoint_every": 2}


def _comparable(run):
    from credo.train.logging import read_metrics

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    from credo.config import to_dict

    root = tmp_path_factory.mktemp("int_ref")
    params = root / "params.json"
    params.write_text(json.dumps(PARAMS))
    config = root / "ref.json"
    config.write_text(json.dumps(to_dict(_cfg(root, "ref"))))
    done = _stage(config, params)
    assert done.returncode == 0, done.stderr[-2000:]
    return params, root / "ref"


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
@pytest.mark.parametrize("fault, resumed_from", [("update:6", "step_4"),  # mid-round: the examples from the checkpoint
                                                 ("rollout:2", "step_3")])  # after round 1's rollouts: redone
def test_sigkill_then_resume_is_bitwise(reference_run, tmp_path, fault, resumed_from):
    """Round 0: steps 0-2 (checkpoint step_2 mid-round, step_3 after it); round 1: steps 3-5 (step_4 mid-round).
    Killed at the 6th update (inside step 5) or right after round 1's rollouts; the resume equals the reference."""
    from credo.config import to_dict

    params, ref = reference_run
    config = tmp_path / "crash.json"
    config.write_text(json.dumps(to_dict(_cfg(tmp_path, "crash"))))
    crashed = _stage(config, params, fault=fault)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (tmp_path / "crash" / "summary.json").exists()
    resumed = _stage(config, params, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and resumed_from in resumed.stdout
    want = _comparable(ref)
    assert _comparable(tmp_path / "crash") == want
    assert [r["stage"] for r in want if r["phase"] == "eval"] == ["base", "round_0", "round_1", "int"]
    assert [r["round"] for r in want if r["phase"] == "interventions"] == [0, 1]
    weights = [load_file(str(run / "checkpoints" / "final" / "model" / "model.safetensors")) for run in (ref, tmp_path / "crash")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
