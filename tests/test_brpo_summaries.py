"""BRPO's forced summaries in training (credit/macro.py::budget_probes): absolute budgets over
max_new_tokens, the summary forced after the kept thinking (the tokens handed to the engine), the
summary alone scored by the verifier, finished traces scored by their own reward, and the bound
hyperparameters reaching the provider."""

import functools

import pytest
import torch

from credo.credit import CREDIT
from credo.credit.providers import CreditSources, StepContext, extras_provider_of
from credo.models import load_policy
from credo.rollout.base import Completion, SamplingParams
from credo.tasks import make_task
from credo.tasks.base import Example
from credo.train.credit_inputs import provider_params


class ScriptedEngine:
    """Returns fixed summary texts and records every prompt and its sampling parameters."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def generate(self, prompts, n, params, seed=0):
        self.calls.append((list(prompts[0]), n, params))
        return [[Completion(list(prompts[0]), [1], [0.0], [True], "stop", t) for t in self.texts[:n]]]


class _Batch:
    def __init__(self, tokens, rewards):
        self.tokens, self.rewards = tokens, torch.tensor(rewards, dtype=torch.float32)

    def __len__(self):
        return self.tokens.shape[0]


@pytest.fixture(scope="module")
def tok():
    return load_policy("tiny", seed=0).tokenizer


def _ctx(tok, engine, lengths, rewards, max_new_tokens=8):
    prompt = [5, 6]
    comps = [Completion(prompt, list(range(10, 10 + n)), [0.0] * n, [True] * n, "stop", "") for n in lengths]
    width = len(prompt) + max(lengths)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, c in enumerate(comps):
        tokens[b, :len(prompt) + len(c.token_ids)] = torch.tensor(prompt + c.token_ids)
    sources = CreditSources(model=None, tokenizer=tok, engine=engine, task=make_task("arith"),
                            sampling=SamplingParams(max_new_tokens=max_new_tokens), judge=None, probe_samples=2)
    ex = Example("What is 23+45?", "68", "", {})
    return StepContext(sources, _Batch(tokens, rewards), comps, [ex] * len(lengths))


def test_summaries_are_forced_at_absolute_budgets_and_scored_alone(tok):
    engine = ScriptedEngine(["68</answer>", "7</answer>"])  # one right, one wrong summary: score 1/2
    ctx = _ctx(tok, engine, lengths=[8, 3], rewards=[0.0, 1.0])
    got = extras_provider_of(CREDIT.get("brpo"))(ctx, budgets=4, summary_tokens=5)
    # budgets 2, 4, 6, 8 of max_new_tokens 8; row 0 (8 tokens) is cut at 2, 4, 6 and ends at 8
    assert got["budget_positions"].tolist() == [[4, 6, 8, 10], [4, 5, 5, 5]]
    assert got["budget_scores"].tolist() == [[0.5, 0.5, 0.5, 0.0], [0.5, 1.0, 1.0, 1.0]]
    forced = tok.encode("\n<answer>", add_special_tokens=False)
    row0 = ctx.batch.tokens[0].tolist()
    assert [c[0] for c in engine.calls] == [row0[:4] + forced, row0[:6] + forced, row0[:8] + forced,
                                           ctx.batch.tokens[1, :4].tolist() + forced]
    assert all(n == 2 and p.max_new_tokens == 5 for _, n, p in engine.calls)
    assert ctx.sources.counters["probe_rollouts"] == 8


def test_a_verifier_that_raises_scores_zero(tok):
    class Exploding:
        def score(self, completion, example):
            raise RuntimeError("boom")

    ctx = _ctx(tok, ScriptedEngine(["x", "y"]), lengths=[8], rewards=[1.0])
    ctx.sources.task = Exploding()
    got = extras_provider_of(CREDIT.get("brpo"))(ctx, budgets=2, summary_tokens=4)
    assert got["budget_scores"].tolist() == [[0.0, 1.0]]  # the cut at 4 scores 0; the trace ends at 8


def test_bound_budgets_reach_the_provider():
    credit = functools.partial(CREDIT.get("brpo"), budgets=3, summary_tokens=7)
    provider = extras_provider_of(credit)
    assert provider_params(provider, credit) == {"budgets": 3, "summary_tokens": 7}
    assert provider_params(provider, CREDIT.get("brpo")) == {"budgets": 4, "summary_tokens": 32}
