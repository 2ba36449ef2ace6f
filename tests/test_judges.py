"""Judges and reward models (credo/judges/): AUROC, calculator and Monte Carlo step labels, the PRM
(batched = one-by-one, save/load, truncation), the LLM judge (hand-computed yes/no probability, batched
= one-by-one, cache) and `rl.judge` in a tiny training run."""

import itertools
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from credo.errors import CredoError
from credo.judges import check_judge_spec, make_judge
from credo.judges.llm import TEMPLATES, LLMJudge
from credo.judges.prm import PRMJudge, ProcessRewardModel
from credo.judges.prm_data import arith_chain, arith_chains, mc_step_labels, split_steps
from credo.judges.train_prm import PRMTrainSettings, auroc, evaluate_prm, train_prm
from credo.models import load_policy
from credo.rollout.base import Completion, SamplingParams
from credo.tasks import TASKS, make_task

sys.path.insert(0, str(Path(__file__).parent))
from fixture_tasks import ParityTask, tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", seed=0)


# --- AUROC ---------------------------------------------------------------------------------------

def test_auroc_hand_computed():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 / 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [-1, -1, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [1, -1]) == 0.5  # a tie counts one half
    assert auroc([0.9, 0.1, 0.3], [1, -1, 0]) == 1.0  # label 0 is ignored
    assert auroc([0.2, 0.3], [1, 1]) != auroc([0.2, 0.3], [1, 1])  # one class only: NaN


def test_auroc_equals_the_pairwise_definition():
    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(60)]  # many ties
    labels = [rng.choice([-1, 1]) for _ in range(60)]
    pos = [s for s, y in zip(scores, labels) if y > 0]
    neg = [s for s, y in zip(scores, labels) if y < 0]
    pairwise = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


# --- step labels ---------------------------------------------------------------------------------

def test_arith_chain_correct_solution_and_labels():
    task = make_task("arith")
    ex = task.examples("train", 1, 0)[0]
    ex = type(ex)("What is 23+45?", "68", "<answer>68</answer>", {})
    rng = random.Random(0)
    steps = arith_chain(23, "+", 45, rng, slip=0.0, direct=0.0)
    assert steps == ["20+40=60", "3+5=8", "60+8=68", "<answer>68</answer>"]
    assert task.step_truth(ex, steps) == [1.0, 1.0, 1.0, 1.0]
    assert arith_chain(23, "-", 45, rng, slip=0.0, direct=0.0) == ["23-40=-17", "-17-5=-22", "<answer>-22</answer>"]
    assert arith_chain(23, "*", 4, rng, slip=0.0, direct=0.0) == ["20*4=80", "3*4=12", "80+12=92", "<answer>92</answer>"]


@pytest.mark.parametrize("difficulty", [2, 3, 5])
def test_arith_chain_slips_are_carried_forward(difficulty):
    task = make_task("arith", difficulty=difficulty)
    rows = arith_chains(task, task.examples("train", 300, 0), seed=1)
    slipped = 0
    for row in rows:
        eq = [y for s, y in zip(row.steps, row.labels) if "<answer>" not in s]
        assert row.labels[-1] in (1.0, -1.0) and "<answer>" in row.steps[-1]
        assert eq.count(-1.0) <= 1  # one slip at most, later equations hold on the carried value
        if -1.0 in eq:
            assert row.labels[-1] == -1.0  # a slip before the answer makes the answer wrong
        slipped += row.labels[-1] == -1.0
    assert 0.3 < slipped / len(rows) < 0.7  # about half the solutions carry a slip


class ScriptedEngine:
    """A rollout engine whose continuation text is a function of the prefix (for MC labels)."""

    def __init__(self, tokenizer, answer_for):
        self.tokenizer, self.answer_for, self.calls = tokenizer, answer_for, []

    def generate(self, prompts, n, sampling, seed):
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            self.calls.append(text)
            out.append([Completion(list(p), [], [], [], "stop", self.answer_for(text, j)) for j in range(n)])
        return out

    def load_weights(self, model, version=0):
        pass


class LastTagTask:
    """Correct when the last answer tag holds the answer (worked steps before it allowed)."""

    name = "last_tag"

    def score(self, completion, example):
        from credo.tasks.base import Score

        ok = completion.rstrip().endswith(f"<answer>{example.answer}</answer>")
        return Score(reward=float(ok), correct=ok, formatted=True)


def test_math_shepherd_mc_labels_hard_and_soft(tiny):
    from credo.tasks.base import Example

    task = LastTagTask()
    ex = Example("What is 23+45?", "68", "<answer>68</answer>", {})
    completion = "20+40=60\n3+5=9\n<answer>69</answer>"

    def answer_for(text, j):  # after the wrong "3+5=9" no continuation recovers; before, one in two does
        return "<answer>69</answer>" if "3+5=9" in text else ("<answer>68</answer>" if j == 0 else "<answer>1</answer>")

    engine = ScriptedEngine(tiny.tokenizer, answer_for)
    prompt_ids = tiny.tokenizer.encode("P:", add_special_tokens=False)
    sampling = SamplingParams(max_new_tokens=8)
    rows, sampled = mc_step_labels(engine, tiny.tokenizer, task, [ex], [completion], [prompt_ids], n=2,
                                   sampling=sampling)
    # step 1: one of two continuations correct -> hard +1; step 2: none -> -1; last step: its own verdict
    assert rows[0].steps == split_steps(completion)
    assert rows[0].labels == [1.0, -1.0, -1.0]
    assert sampled == 4 and len(engine.calls) == 2
    assert engine.calls[0].endswith("20+40=60\n")  # the prefix ends after the step and its newline
    soft, _ = mc_step_labels(engine, tiny.tokenizer, task, [ex], [completion], [prompt_ids], n=2,
                             sampling=sampling, soft=True)
    assert soft[0].labels == [0.0, -1.0, -1.0]  # 2 * (1/2) - 1, 2 * 0 - 1, the answer is wrong


# --- the process reward model --------------------------------------------------------------------

def _rows():
    task = make_task("arith", difficulty=3)
    return arith_chains(task, task.examples("train", 12, 0), seed=0)


def test_prm_batched_scores_equal_one_by_one(tiny):
    prm = ProcessRewardModel(tiny.model, tiny.tokenizer)
    judge = PRMJudge(prm, batch_size=8)
    rows = _rows()
    items = [(r.prompt, r.steps) for r in rows]
    batched = judge.score_many(items)
    single = [judge.score(p, s) for p, s in items]
    for b, s, r in zip(batched, single, rows):
        assert len(b) == len(r.steps)
        assert b == pytest.approx(s, abs=1e-5)
        assert all(-1.0 <= x <= 1.0 for x in b)
    assert judge.calls == 2 * sum(len(r.steps) for r in rows)


def test_prm_reads_the_hidden_state_at_each_step_separator(tiny):
    prm = ProcessRewardModel(tiny.model, tiny.tokenizer).eval()
    e = prm.encode("What is 1+2?", ["1+2=3", "<answer>3</answer>"])
    sep = tiny.tokenizer.encode("\n", add_special_tokens=False)
    for end in e.ends:
        assert e.ids[end - len(sep) + 1: end + 1] == sep
    with torch.no_grad():
        hidden = tiny.model.model(input_ids=torch.tensor([e.ids])).last_hidden_state[0]
        expected = torch.sigmoid(prm.head(hidden[e.ends]).squeeze(-1))
    got = PRMJudge(prm, low=0.0, high=1.0).score("What is 1+2?", ["1+2=3", "<answer>3</answer>"])
    assert got == pytest.approx(expected.tolist(), abs=1e-6)


def test_prm_steps_past_max_tokens_are_neutral(tiny):
    prm = ProcessRewardModel(tiny.model, tiny.tokenizer, max_tokens=20)
    scores = PRMJudge(prm).score("What is 1+2?", ["1+2=3"] * 10)
    assert len(scores) == 10 and scores[-1] == 0.0  # (low + high) / 2 on [-1, 1]


def test_prm_training_lowers_the_loss_and_save_load_round_trips(tiny, tmp_path):
    prm = ProcessRewardModel(load_policy("tiny", seed=1).model, tiny.tokenizer)
    rows = _rows() * 4
    metrics = train_prm(prm, rows, rows[:12], PRMTrainSettings(steps=30, batch_size=8, lr=1e-3, head_lr=1e-2,
                                                                bf16=False, eval_every=30), log=lambda s: None)
    assert sum(metrics["loss"][-5:]) / 5 < sum(metrics["loss"][:5]) / 5
    assert set(metrics["auroc"][-1][1]) == {"all", "answer", "equation"}
    prm.save(tmp_path / "prm", held_out_auroc=metrics["auroc"][-1][1])
    loaded = ProcessRewardModel.load(tmp_path / "prm")
    items = [(r.prompt, r.steps) for r in rows[:6]]
    assert PRMJudge(loaded).score_many(items) == PRMJudge(prm).score_many(items)  # bit-identical
    assert evaluate_prm(loaded, rows[:12]) == evaluate_prm(prm, rows[:12])


def test_prm_load_errors_name_the_file(tmp_path):
    with pytest.raises(CredoError, match="prm.json"):
        ProcessRewardModel.load(tmp_path)
    (tmp_path / "prm.json").write_text('{"format": "other"}')
    with pytest.raises(CredoError, match="'format'"):
        ProcessRewardModel.load(tmp_path)
    (tmp_path / "prm.json").write_text("{not json")
    with pytest.raises(CredoError, match="not valid JSON"):
        ProcessRewardModel.load(tmp_path)


# --- the LLM judge -------------------------------------------------------------------------------

def test_llm_judge_probability_matches_a_direct_forward(tiny):
    judge = LLMJudge(tiny.model, tiny.tokenizer, low=0.0, high=1.0)
    steps = ["20+40=60", "<answer>68</answer>"]
    got = judge.score("What is 23+45?", steps)
    yes = tiny.tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = tiny.tokenizer.encode("No", add_special_tokens=False)[0]
    for k, step in enumerate(steps):
        text = TEMPLATES["step"].format(prompt="What is 23+45?", context="\n".join(steps[:k]) or "(nothing yet)",
                                        step=step)
        ids = tiny.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        ids = tiny.tokenizer(ids, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        p = torch.softmax(logits, -1)
        assert got[k] == pytest.approx(float(p[yes] / (p[yes] + p[no])), abs=1e-5)


def test_llm_judge_batched_equals_one_by_one_and_caches(tiny):
    rows = _rows()[:6]
    items = [(r.prompt, r.steps) for r in rows]
    batched_judge = LLMJudge(tiny.model, tiny.tokenizer, batch_size=8)
    batched = batched_judge.score_many(items)
    single = [LLMJudge(tiny.model, tiny.tokenizer, batch_size=1).score(p, s) for p, s in items]
    for b, s in zip(batched, single):
        assert b == pytest.approx(s, abs=1e-5)
    n = sum(len(s) for _, s in items)
    assert batched_judge.forward_rows == n and batched_judge.cache_hits == 0
    again = batched_judge.score_many(items)  # the same steps again: all from the cache
    assert again == batched and batched_judge.cache_hits == n and batched_judge.forward_rows == n
    assert batched_judge.calls == 2 * n and batched_judge.seconds > 0


def test_llm_judge_templates_and_errors(tiny):
    assert set(TEMPLATES) >= {"step", "critique", "subgoal", "attribution", "rule", "wellposed"}
    judge = LLMJudge(tiny.model, tiny.tokenizer)
    q = judge.yes_probability("critique", [{"prompt": "What is 1+1?", "context": "<answer>2</answer>", "index": "1",
                                            "step": "<answer>2</answer>"}])
    assert 0.0 <= q[0] <= 1.0
    with pytest.raises(CredoError, match="unknown template"):
        LLMJudge(tiny.model, tiny.tokenizer, template="nope")


# --- rl.judge -------------------------------------------------------------------------------------

def test_judge_spec_is_checked():
    for ok in ("synthetic", "llm", "llm:/some/folder", "prm:/some/folder"):
        check_judge_spec(ok)
    for bad in ("", "prm", "prm:", "oracle", "llm :x"):
        with pytest.raises(CredoError, match="rl.judge"):
            check_judge_spec(bad)
    with pytest.raises(CredoError, match="prm.json"):
        make_judge("prm:/nonexistent/folder")


@pytest.fixture
def parity(monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)


def test_a_trained_prm_scores_steps_in_training(tmp_path, tiny, parity):
    prm = ProcessRewardModel(load_policy("tiny", seed=2).model, tiny.tokenizer)
    prm.save(tmp_path / "prm")
    rl = tiny_run(tmp_path, "pure_prm", "--rl.credit", "pure", "--rl.judge", f"prm:{tmp_path / 'prm'}")
    assert all(row["judge_calls"] > 0 and row["judge_seconds"] > 0 for row in rl)


def test_an_llm_judge_scores_steps_in_training(tmp_path, tiny, parity):
    tiny.model.save_pretrained(tmp_path / "judge")
    tiny.tokenizer.save_pretrained(tmp_path / "judge")
    rl = tiny_run(tmp_path, "pure_llm", "--rl.credit", "pure", "--rl.judge", f"llm:{tmp_path / 'judge'}")
    assert all(row["judge_calls"] > 0 for row in rl)


def test_a_model_judge_with_an_outcome_estimator_is_refused(tmp_path):
    from credo.cli import main

    code = main(["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--rl.judge", "llm"])
    assert code == 2


# --- turn-level signals in training: IGPO's information gain --------------------------------------

def test_information_gain_provider_matches_a_direct_computation(tiny):
    from credo.credit import CREDIT
    from credo.credit.providers import CreditSources, StepContext, step_rewards_provider_of
    from credo.tasks.base import Example

    tok = tiny.tokenizer
    prompt = tok.encode("Find k1.", add_special_tokens=False)
    a1 = tok.encode("<call>k1</call>", add_special_tokens=False)
    obs = tok.encode("\nk1 = 47\n", add_special_tokens=False)
    a2 = tok.encode("<answer>47</answer>", add_special_tokens=False)
    ids = a1 + obs + a2
    spans = [(0, len(a1)), (len(a1) + len(obs), len(ids))]
    comp = Completion(prompt, ids, [0.0] * len(ids), [True] * len(ids), "stop", "", {"turn_spans": spans})
    single = Completion(prompt, a2, [0.0] * len(a2), [True] * len(a2), "stop", "", {})
    sources = CreditSources(model=tiny.model, tokenizer=tok, engine=None, task=make_task("arith"),
                            sampling=SamplingParams(), judge=None, micro_batch_size=2)
    ex = Example("Find k1.", "47", "", {})
    ctx = StepContext(sources, batch=None, completions=[comp, single], examples=[ex, ex])
    provider = step_rewards_provider_of(CREDIT.get("igpo"))
    assert provider is step_rewards_provider_of(CREDIT.get("a2tgpo"))
    got = provider(ctx, None)

    head, answer = tok.encode("<answer>", add_special_tokens=False), tok.encode("47", add_special_tokens=False)

    def p_answer(context):  # exp(mean log p(answer | context + "<answer>")), one sequence at a time
        seq = torch.tensor([context + head + answer])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(input_ids=seq).logits[0].float(), -1)
        start = len(context) + len(head)
        return float(torch.exp(torch.stack([logp[start + j - 1, answer[j]] for j in range(len(answer))]).mean()))

    p0, p1, p2 = p_answer(prompt), p_answer(prompt + a1 + obs), p_answer(prompt + ids)
    assert got.shape == (2, 2)
    assert got[0].tolist() == pytest.approx([p1 - p0, p2 - p1], abs=1e-5)
    assert torch.isnan(got[1]).all()  # a row without turns has no turn rewards
    assert sources.counters["signal_forward_rows"] == 3


# -- OPRL's implicit PRM trained online (judges/implicit.py) ------------------------------------------


def _pair_batch(policy):
    from credo.batch import build_batch
    from credo.rollout import SamplingParams, TorchEngine

    engine = TorchEngine(policy.model, policy.tokenizer)
    groups = engine.generate([[1, 50, 60], [1, 70]], 3, SamplingParams(max_new_tokens=5), seed=2)
    flat = [c for g in groups for c in g]
    return build_batch(flat, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0, 0, 0, 1, 1, 1], pad_id=0)


def test_the_implicit_prm_learns_the_step_preferences_and_round_trips():
    """Pairs: group 0 has (0 > 1), (0 > 2); group 1 is uniform (none). After a few updates pi_phi ranks
    the winner above the losers (its log ratio to pi_old), and export / restore gives the same model."""
    from credo.credit.turn_rewards import oprl_prm_loss
    from credo.judges.implicit import ImplicitPRM
    from credo.models import load_policy

    policy = load_policy("tiny", seed=0)
    batch = _pair_batch(policy)
    with torch.no_grad():
        old = token_logprobs_of(policy.model, batch)
    prm = ImplicitPRM(policy.model, beta=1.0, lr=1e-3, updates=5)
    # pi_phi starts as the policy: its log ratio is 0, the loss log 2 and no pair is ranked right yet
    metrics = prm.update(batch, old)
    assert metrics["prm_pairs"] == 2.0 and metrics["prm_accuracy"] == 0.0
    ratio = ((prm.token_logprobs(batch) - old) * batch.loss_mask).sum(-1)
    assert ratio[0] > ratio[1] and ratio[0] > ratio[2]
    seq = (prm.token_logprobs(batch) * batch.loss_mask).sum(-1)
    assert float(oprl_prm_loss(seq, (old * batch.loss_mask).sum(-1), [(0, 1), (0, 2)], beta=1.0)) < math.log(2)
    for p in policy.model.parameters():  # the policy itself is untouched
        assert p.grad is None
    meta, tensors = prm.export()
    again = ImplicitPRM(policy.model, beta=1.0, lr=1e-3, updates=5)
    again.restore(meta, tensors)
    assert torch.equal(again.token_logprobs(batch), prm.token_logprobs(batch)) and again.steps == 1
    assert prm.update(batch, old) == again.update(batch, old)  # same AdamW moments: the same next step


def token_logprobs_of(model, batch):
    from credo.logprobs import token_logprobs

    return token_logprobs(model, batch.tokens, batch.attention_mask, batch.loss_mask)


def test_oprl_trains_its_implicit_prm_in_a_run_and_resumes_exactly(tmp_path, monkeypatch):
    import json
    import shutil
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from credo.cli import main
    from credo.tasks import TASKS
    from credo.train.logging import read_metrics

    sys.path.insert(0, str(Path(__file__).parent))
    from fixture_tasks import ParityTask

    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.progress", "false", "--rl.steps", "3",
            "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4", "--warmup.steps", "1",
            "--model.threads", "1", "--run.checkpoint_every", "1", "--rl.credit", "oprl",
            "--rl.credit_params", '{"prm_lr": 1e-3, "beta": 0.5}']
    assert main(args + ["--run.name", "ref"]) == 0
    ref = tmp_path / "ref"
    rl = [r for r in read_metrics(ref / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 3 and all("prm_pairs" in r for r in rl) and any(r["prm_pairs"] > 0 for r in rl)
    state = json.loads((ref / "checkpoints" / "final" / "state.json").read_text())
    assert state["method_state"]["oprl_prm"]["steps"] == 3
    crash = tmp_path / "crash"
    shutil.copytree(ref, crash)
    for folder in (crash / "checkpoints").iterdir():
        if folder.name not in ("warmup", "step_2"):
            shutil.rmtree(folder)
    (crash / "summary.json").unlink()
    assert main(["train", "--resume", str(crash)]) == 0
    for name in ("model/model.safetensors", "method_oprl_prm.safetensors"):
        a, b = load_file(str(ref / "checkpoints" / "final" / name)), load_file(str(crash / "checkpoints" / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# --- the LLM judge's templates in the methods that ask them: CAPO, CALM, Sotopia-RL ---------------


class AskedJudge:
    """A model judge (has yes_probability) that records its questions and answers q from a list."""

    low, high = -1.0, 1.0

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def yes_probability(self, template, fields):
        self.asked += [(template, dict(f)) for f in fields]
        return [self.answers.pop(0) for _ in fields]


def _ctx(tiny, judge, completions, rewards, prompts):
    from credo.batch import build_batch
    from credo.credit.providers import CreditSources, StepContext
    from credo.tasks.base import Example

    batch = build_batch(completions, rewards, list(range(len(completions))), pad_id=0)
    sources = CreditSources(model=tiny.model, tokenizer=tiny.tokenizer, engine=None, task=None,
                            sampling=SamplingParams(), judge=judge)
    return StepContext(sources, batch, completions, [Example(prompt=p, answer="", demonstration="") for p in prompts]), batch


def test_capo_asks_a_hindsight_critique_of_every_step(tiny):
    from credo.credit import CREDIT
    from credo.credit.process import capo_votes
    from credo.credit.providers import step_rewards_provider_of
    from credo.judges.synthetic import SyntheticJudge

    tok = tiny.tokenizer
    ids = tok.encode("a = 1\nb = 2\n<answer>3</answer>", add_special_tokens=False)
    comp = Completion([1], ids, [0.0] * len(ids), [True] * len(ids), "stop", "")
    judge = AskedJudge([0.9, 0.2, 0.6])
    ctx, batch = _ctx(tiny, judge, [comp], [1.0], ["What is 1 + 2?"])
    from credo.train.credit_inputs import line_steps

    step_ids = line_steps(batch, tok)
    provider = step_rewards_provider_of(CREDIT.get("capo"))
    scores = provider(ctx, step_ids)
    assert [t for t, _ in judge.asked] == ["critique"] * 3
    solution = tok.decode(ids, skip_special_tokens=True)
    assert all(f["context"] == solution and f["prompt"] == "What is 1 + 2?" for _, f in judge.asked)
    assert [f["index"] for _, f in judge.asked] == ["1", "2", "3"] and judge.asked[1][1]["step"] == "b = 2"
    assert scores[0].tolist() == pytest.approx([0.8, -0.6, 0.2])  # -1 + 2 q
    assert capo_votes(scores)[0].tolist() == [0.0, 1.0, 0.0]  # one critique: q < 1/2 flags the step
    ctx.sources.judge = SyntheticJudge()
    assert provider(ctx, step_ids) is None  # the default source: the judge's own step scores


def _turns(tok, parts):
    """A multi-turn completion: [(action, observation)], actions trainable."""
    ids, spans = [], []
    for action, obs in parts:
        a = tok.encode(action, add_special_tokens=False)
        spans.append((len(ids), len(ids) + len(a)))
        ids += a + tok.encode(obs, add_special_tokens=False)
    return Completion([1], ids, [0.0] * len(ids), [True] * len(ids), "stop", "", {"turn_spans": spans})


def test_calm_and_sotopia_ask_their_templates_per_turn(tiny):
    from credo.credit import CREDIT
    from credo.credit.providers import step_rewards_provider_of
    from credo.judges.synthetic import SyntheticJudge

    tok = tiny.tokenizer
    comp = _turns(tok, [("<call>k1</call>", "\nk1 = 47\n"), ("<answer>47</answer>", "")])
    judge = AskedJudge([0.9, 0.2])
    ctx, _ = _ctx(tiny, judge, [comp], [1.0], ["Find k1."])
    calm = step_rewards_provider_of(CREDIT.get("calm"))(ctx, None)
    assert calm[0].tolist() == [1.0, 0.0]
    (t0, f0), (_, f1) = judge.asked
    assert t0 == "subgoal" and f0 == {"prompt": "Find k1.", "context": "(nothing yet)", "step": "<call>k1</call>"}
    assert f1["context"] == tok.decode(comp.token_ids[:comp.meta["turn_spans"][1][0]], skip_special_tokens=True)
    judge = AskedJudge([1.0, 0.4])
    ctx, _ = _ctx(tiny, judge, [comp], [0.5], ["Find k1."])
    sotopia = step_rewards_provider_of(CREDIT.get("sotopia_rl"))(ctx, None)
    # attribution round(3 q) = 3, 1; goal score 10 R = 5: r = a / 3 * 5
    assert sotopia[0].tolist() == pytest.approx([5.0, 5.0 / 3]) and judge.asked[0][0] == "attribution"
    ctx.sources.judge = SyntheticJudge()
    assert step_rewards_provider_of(CREDIT.get("calm"))(ctx, None) is None


def test_mapo_asks_the_step_template_per_turn(tiny):
    from credo.credit import CREDIT
    from credo.credit.providers import step_rewards_provider_of
    from credo.judges.synthetic import SyntheticJudge

    tok = tiny.tokenizer
    comp = _turns(tok, [("<call>k1</call>", "\nk1 = 47\n"), ("<answer>47</answer>", "")])
    judge = AskedJudge([0.7, 0.1])
    ctx, _ = _ctx(tiny, judge, [comp], [1.0], ["Find k1."])
    got = step_rewards_provider_of(CREDIT.get("mapo"))(ctx, None)
    assert got[0].tolist() == pytest.approx([0.7, 0.1])  # s_k = q_k
    assert [t for t, _ in judge.asked] == ["step", "step"] and judge.asked[1][1]["step"] == "<answer>47</answer>"
    ctx.sources.judge = SyntheticJudge()
    assert step_rewards_provider_of(CREDIT.get("mapo"))(ctx, None) is None


def test_capo_with_the_llm_judge_trains(tmp_path, tiny, parity):
    tiny.model.save_pretrained(tmp_path / "judge")
    tiny.tokenizer.save_pretrained(tmp_path / "judge")
    rl = tiny_run(tmp_path, "capo_llm", "--rl.credit", "capo", "--rl.judge", f"llm:{tmp_path / 'judge'}")
    assert all(row["judge_calls"] > 0 for row in rl)
