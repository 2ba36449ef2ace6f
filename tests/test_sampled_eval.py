"""Sampled evaluation (train/sampled_eval.py): pass@k against brute-force enumeration, maj@k / mean@k on
fixed completions computed by hand, final answers of every built-in task, and tiny-model runs of
`credo eval --samples` and of a training run with task.eval_samples."""

from __future__ import annotations

import itertools
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from credo.rollout.base import Completion, SamplingParams
from credo.tasks import ArithmeticTask, CountdownTask, KeyValueTask, KnightsKnavesTask, make_task
from credo.tasks.base import Example, final_answer
from credo.train.sampled_eval import (evaluate_sampled, maj_at_k, majority_vote, pass_at_k, report_ks,
                                      sampled_metrics)

sys.path.insert(0, str(Path(__file__).parent))
from fixture_tasks import ParityTask  # noqa: E402


# -- pass@k ------------------------------------------------------------------------------------------


def brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The fraction of the k-subsets of n samples (the first c correct) holding a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def test_pass_at_k_equals_enumeration_over_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_are_huge():
    # C(1000, 500) has ~300 digits: the product form must still give the exact ratio's value
    n, c, k = 1000, 3, 500
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 0, 500) == 0.0 and pass_at_k(1000, 501, 500) == 1.0


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (3, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_report_ks():
    assert report_ks(1) == [1] and report_ks(4) == [1, 2, 4] and report_ks(8) == [1, 2, 4, 8]
    assert report_ks(5) == [1, 2, 4, 5] and report_ks(16) == [1, 2, 4, 8, 16]


# -- majority vote -----------------------------------------------------------------------------------


def test_majority_vote_ties_go_to_the_earliest_answer_and_none_abstains():
    assert majority_vote(["3", "5", "5", "3"]) == 0  # 3 and 5 tie: 3 first appears at 0
    assert majority_vote(["5", "3", "3", "5"]) == 0
    assert majority_vote([None, "5", "3", "3"]) == 2  # 3 wins 2:1; its first sample is 2
    assert majority_vote([None, None, "9"]) == 2
    assert majority_vote([None, None]) is None and majority_vote([]) is None


def test_maj_at_k_by_hand():
    answers = ["2", "3", "3", "2", None, "2"]
    correct = [True, False, False, True, False, True]
    # k = 6: 2 has three votes -> right; k = 3: blocks [2,3,3] -> 3 (wrong), [2,None,2] -> 2 (right);
    # k = 2: [2,3] tie -> 2 right, [3,2] tie -> 3 wrong, [None,2] -> 2 right; k = 4: one block [2,3,3,2] tie -> 2
    assert maj_at_k(answers, correct, 6) == 1.0
    assert maj_at_k(answers, correct, 3) == 0.5
    assert maj_at_k(answers, correct, 2) == pytest.approx(2 / 3)
    assert maj_at_k(answers, correct, 4) == 1.0
    assert maj_at_k(answers, correct, 1) == pytest.approx(3 / 6)  # each sample votes alone: accuracy
    assert maj_at_k([None, None], [False, False], 2) == 0.0


# -- a mock engine with fixed completions ------------------------------------------------------------


class CharTokenizer:
    """Characters as token ids (no chat template: render_prompt's plain-text path)."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FixedEngine:
    """Returns fixed completion texts per prompt (keyed by the user message) and records each call."""

    def __init__(self, tokenizer, table: dict[str, list[str]]):
        self.tokenizer, self.table, self.calls = tokenizer, table, []

    def generate(self, prompts, n, sampling, seed):
        self.calls.append((len(prompts), n))
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)
            (key,) = [k for k in self.table if k in text]
            texts = self.table[key]
            assert len(texts) == n
            out.append([Completion(list(prompt), [1] * len(t), [0.0] * len(t), [True] * len(t), "stop", t)
                        for t in texts])
        return out


def test_evaluate_sampled_on_fixed_completions_by_hand():
    task = ArithmeticTask()
    a, b, c = Example("What is 1+1?", "2", ""), Example("What is 2+3?", "5", ""), Example("What is 3+4?", "7", "")
    long = Example("What is 4+4? " + "please " * 40, "8", "")  # longer than max_prompt_tokens: skipped
    table = {
        a.prompt: ["<answer>2</answer>", "<answer>3</answer>", "<answer>3</answer>", "<answer>02</answer>"],
        b.prompt: ["<answer>4</answer>", "no tags", "<answer>4</answer> extra", "<answer>5</answer>"],
        c.prompt: ["", "x", "<answer></answer>", "<answer>seven</answer>"],
    }
    tokenizer = CharTokenizer()
    engine = FixedEngine(tokenizer, table)
    result = evaluate_sampled(engine, tokenizer, task, [a, b, c, long], SamplingParams(1.0, 1.0, 0, 16),
                              samples=4, batch_size=8, max_prompt_tokens=200)
    # a: correct [T, F, F, T] ("02" is 2), answers [2, 3, 3, 2]; b: correct [F, F, F, T], answers
    # [4, -, -, 5] (no tag; text after the tag); c: nothing right, one vote ("seven"); long: wrong.
    # pass@1 = (2/4 + 1/4) / 4; pass@2 = (1 - C(2,2)/C(4,2) + 1 - C(3,2)/C(4,2)) / 4 = (5/6 + 1/2) / 4
    # pass@4 = (1 + 1) / 4; maj@4: a ties 2:2 -> "2" (first) right, b ties 1:1 -> "4" wrong -> 1/4
    # maj@2: a [2,3] -> 2 right, [3,2] -> 3 wrong; b [4,-] -> 4 wrong, [-,5] -> 5 right -> (1/2 + 1/2) / 4
    assert result["pass@1"] == pytest.approx(0.1875)
    assert result["pass@2"] == pytest.approx(1 / 3)
    assert result["pass@4"] == pytest.approx(0.5)
    assert result["maj@2"] == pytest.approx(0.25)
    assert result["maj@4"] == pytest.approx(0.25)
    assert result["mean@4"] == pytest.approx(0.1875)
    assert result["samples"] == 4 and "maj@1" not in result
    assert result["sampled_format_rate"] == pytest.approx(8 / 12)  # a: 4, b: 2, c: 2 lone tags (skipped: none)
    # batch_size 8 // 4 samples = 2 prompts per call, each prompt in exactly one call with n = 4
    assert engine.calls == [(2, 4), (1, 4)]


def test_sampled_metrics_counts_prompts_not_generated_as_wrong():
    out = sampled_metrics([["1", "1"]], [[True, True]], 2, total=4)
    assert out == {"pass@1": 0.25, "pass@2": 0.25, "maj@2": 0.25, "mean@2": 0.25}


# -- final answers of the built-in tasks -------------------------------------------------------------


def test_final_answers_are_canonical():
    arith = ArithmeticTask()
    ex = Example("What is 30+38?", "68", "")
    assert {final_answer(arith, t, ex) for t in ("<answer>68</answer>", " <answer>+068</answer>\n")} == {"68"}
    assert final_answer(arith, "<answer>sixty</answer>", ex) == "sixty"
    assert final_answer(arith, "<answer>68</answer> done", ex) is None  # the verifier rejects it: no vote
    assert final_answer(arith, "<answer> </answer>", ex) is None

    countdown = CountdownTask()
    (cex,) = countdown.examples("test", 1, seed=0)
    expr = cex.demonstration.removeprefix("<answer>").removesuffix("</answer>")
    assert final_answer(countdown, cex.demonstration, cex) == cex.answer
    assert final_answer(countdown, f"<answer>({expr})</answer>", cex) == cex.answer  # same value
    bogus = str(max(cex.meta["numbers"]) * 1000 + 7)  # not one of the given numbers: invalid
    assert final_answer(countdown, f"<answer>{bogus}</answer>", cex) == bogus

    knights = KnightsKnavesTask(difficulty=2)
    kex = Example("", "Ann: knight, Bob: knave", "")
    same = ["<answer>Ann: knight, Bob: knave</answer>", "<answer>bob is a KNAVE, ann is a knight</answer>"]
    assert {final_answer(knights, t, kex) for t in same} == {"ann=knight,bob=knave"}


@pytest.mark.parametrize("name", ["arith", "countdown", "knights", "keyvalue"])
def test_a_demonstration_votes_for_the_right_answer(name):
    task = make_task(name)
    answers = set()
    for ex in task.examples("test", 5, seed=0):
        assert task.score(ex.demonstration, ex).correct
        answer = final_answer(task, ex.demonstration, ex)
        assert answer is not None
        assert maj_at_k([answer, None, answer], [True, False, True], 3) == 1.0
        answers.add((ex.answer, answer))
    # equal reference answers give equal final answers, different ones different final answers
    assert len({a for a, _ in answers}) == len({f for _, f in answers}) == len(answers)


def test_keyvalue_transcript_final_answer():
    task = KeyValueTask()
    (ex,) = task.examples("test", 1, seed=0)
    assert final_answer(task, ex.demonstration, ex) == ex.answer
    assert final_answer(task, "<answer>" + ex.answer + "</answer> trailing", ex) is None


def test_a_raising_final_answer_gives_no_vote():
    class Broken(ArithmeticTask):
        def final_answer(self, completion, example):
            raise RuntimeError("bad parser")

    assert final_answer(Broken(), "<answer>1</answer>", Example("", "1", "")) is None


# -- the command line and a training run on the tiny model -------------------------------------------


def test_eval_rejects_bad_sample_arguments(capsys):
    from credo.cli import main

    for args, needle in ((["--samples", "0"], "--samples must be at least 1"),
                         (["--samples", "-3"], "--samples must be at least 1"),
                         (["--samples", "2", "--temperature", "0"], "--temperature must be"),
                         (["--temperature", "0.7"], "add --samples")):
        assert main(["eval", "--model", "tiny", "--n", "2", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err


class VoteParity(ParityTask):
    """The parity fixture (odd-length completions are right) with the parity as the final answer, so
    a random model gets mixed verdicts and a real vote."""

    def final_answer(self, completion, example):
        return "odd" if len(completion) % 2 else "even"


def test_credo_eval_samples_on_the_tiny_model(capsys, monkeypatch):
    """`credo eval --samples 4` prints greedy accuracy, pass@1, pass@4, maj@4; the numbers are those
    of the completions the engine sampled (recorded here), and each prompt is prefilled once."""
    from credo.cli import main
    from credo.rollout.torch_engine import TorchEngine
    from credo.tasks import TASKS

    monkeypatch.setitem(TASKS._items, "vote_parity", VoteParity)
    calls = []
    original = TorchEngine.generate

    def spy(self, prompts, n, sampling, seed):
        out = original(self, prompts, n, sampling, seed)
        calls.append((n, sampling.temperature, [[c.text for c in group] for group in out]))
        return out

    monkeypatch.setattr(TorchEngine, "generate", spy)
    assert main(["eval", "--model", "tiny", "--task", "vote_parity", "--n", "6", "--samples", "4",
                 "--task.eval_batch_size", "8", "--sampling.max_new_tokens", "6", "--model.threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "pass@1", "pass@2", "pass@4", "maj@2", "maj@4", "mean@4"):
        assert 0.0 <= result[key] <= 1.0
    greedy = [c for c in calls if c[1] == 0.0]
    sampled = [c for c in calls if c[1] > 0]
    assert all(n == 1 for n, _, _ in greedy)
    assert [(n, len(groups)) for n, _, groups in sampled] == [(4, 2), (4, 2), (4, 2)]  # 8 rows per call
    texts = [group for _, _, groups in sampled for group in groups]
    odd = [[len(t) % 2 == 1 for t in group] for group in texts]
    assert 0 < sum(map(sum, odd)) < 24, "the fixture should give mixed verdicts"
    expect_pass = {k: sum(float(brute_pass_at_k(4, sum(o), k)) for o in odd) / 6 for k in (1, 2, 4)}
    for k, value in expect_pass.items():
        assert result[f"pass@{k}"] == pytest.approx(value)
    # maj@4: the majority parity of the four samples (a 2:2 tie goes to the first sample's parity)
    maj4 = sum((sum(o) > 2) or (sum(o) == 2 and o[0]) for o in odd) / 6
    assert result["maj@4"] == pytest.approx(maj4)
    assert result["mean@4"] == pytest.approx(result["pass@1"])


def test_training_summary_reports_sampled_metrics(tmp_path, monkeypatch):
    from credo.tasks import TASKS
    from fixture_tasks import tiny_run

    monkeypatch.setitem(TASKS._items, "vote_parity", VoteParity)
    tiny_run(tmp_path, "sampled", "--task.eval_samples", "2", "--run.eval_base", "true", task="vote_parity")
    summary = json.loads((tmp_path / "sampled" / "summary.json").read_text())
    for stage in ("base", "warmup", "rl"):
        assert {"accuracy", "pass@1", "pass@2", "maj@2", "mean@2"} <= set(summary[stage]), stage
        assert summary[stage]["samples"] == 2
        assert summary[stage]["mean@2"] == pytest.approx(summary[stage]["pass@1"])
