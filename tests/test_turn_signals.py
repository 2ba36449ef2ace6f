"""Turn-level signals as training computes them (MatchTIR, SIOP, LaRe on the keyvalue task): the task's
parse of calls, answers and latent features by hand, and each provider equal to a direct, hand-checked
computation on hand-built rollouts."""

import math

import pytest
import torch

from credo.credit import CREDIT
from credo.credit.providers import CreditSources, StepContext, step_rewards_provider_of
from credo.credit.turn_rewards import lare_fit_decoder
from credo.errors import CredoError
from credo.models import load_policy
from credo.rollout.base import Completion, SamplingParams
from credo.tasks import make_task
from credo.tasks.base import Example
from credo.tasks.keyvalue import observation_text


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", seed=0)


TABLE = {"a": "17", "b": "c", "c": "e", "d": "31", "e": "47", "f": "b"}
EXAMPLE = Example("What is the value of the value of c?", "47", "", {"table": TABLE, "chain": ["c", "e"], "depth": 2})


def test_keyvalue_parses_calls_answers_and_gold_chain():
    task = make_task("keyvalue")
    assert task.tool_calls("<call> c </call>") == [{"name": "lookup", "arguments": {"key": "c"}}]
    assert task.tool_calls("<answer>47</answer>") == task.tool_calls("junk <call>c</call>") == []
    assert task.tool_calls("<call>  </call>") == []  # an empty key is malformed
    assert task.answer_of(" <answer> 47 </answer>") == "47" and task.answer_of("<call>c</call>") is None
    assert task.gold_calls(EXAMPLE) == [{"name": "lookup", "parameters": {"key": "c"}},
                                        {"name": "lookup", "parameters": {"key": "e"}}]


def test_keyvalue_latent_features_by_hand():
    task = make_task("keyvalue")
    names = task.LATENT_FEATURES
    one = lambda *on: [1.0 if n in on else 0.0 for n in names]  # noqa: E731
    obs_e, obs_47 = observation_text("e").strip(), observation_text("47").strip()
    assert task.latent_features(EXAMPLE, ["<call>c</call>"], []) == one("call_follows")  # the question's key
    assert task.latent_features(EXAMPLE, ["<call>a</call>"], []) == one("call_other")
    assert task.latent_features(EXAMPLE, ["<call>c</call>", "<call>e</call>"], [obs_e]) == one("call_follows")
    assert task.latent_features(EXAMPLE, ["<call>c</call>", "<call>c</call>"], [obs_e]) == one("call_other", "call_repeat")
    acts = ["<call>c</call>", "<call>e</call>", "<answer>47</answer>"]
    assert task.latent_features(EXAMPLE, acts, [obs_e, obs_47]) == one("answer_observed")
    assert task.latent_features(EXAMPLE, ["<answer>47</answer>"], []) == one("answer_other")  # nothing observed yet
    assert task.latent_features(EXAMPLE, ["what?"], []) == one("malformed")


def _rollout(tok, actions, observations):
    """One multi-turn Completion: actions interleaved with observations (one fewer than actions)."""
    prompt = tok.encode(EXAMPLE.prompt, add_special_tokens=False)
    ids, spans, texts, keys, seen = [], [], [], [], []
    for k, action in enumerate(actions):
        a = tok.encode(action, add_special_tokens=False)
        keys.append(tuple(seen))
        spans.append((len(ids), len(ids) + len(a)))
        texts.append(action)
        ids += a
        if k < len(observations):
            ids += tok.encode(observation_text(observations[k]), add_special_tokens=False)
            seen.append(observation_text(observations[k]).strip())
    text = "".join(a + (observation_text(o) if k < len(observations) else "")
                   for k, (a, o) in enumerate(zip(actions, observations + [""])))
    meta = {"turn_spans": spans, "turn_texts": texts, "turn_keys": keys, "turns": len(actions)}
    return Completion(prompt, ids, [0.0] * len(ids), [True] * len(ids), "stop", text, meta)


class _Batch:
    def __init__(self, rewards, group_ids):
        self.rewards = torch.tensor(rewards, dtype=torch.float32)
        self.group_ids = torch.tensor(group_ids)


def _ctx(policy, completions, rewards, groups, task="keyvalue"):
    sources = CreditSources(model=policy.model, tokenizer=policy.tokenizer, engine=None, task=make_task(task),
                            sampling=SamplingParams(), judge=None, micro_batch_size=3)
    return StepContext(sources, batch=_Batch(rewards, groups), completions=completions,
                       examples=[EXAMPLE] * len(completions))


def test_matchtir_provider_hand_computed(tiny):
    tok = tiny.tokenizer
    # calls c (gold c: sim (1 + 1 + 1) / 3 = 1) and x (vs the remaining gold e: (1 + 1 + 0) / 3), then the answer (F1 1)
    good = _rollout(tok, ["<call>c</call>", "<call>x</call>", "<answer>47</answer>"], ["e", "no such key"])
    wrong = _rollout(tok, ["<answer>12</answer>"], [])  # no calls, answer F1 0
    garbage = _rollout(tok, ["hello"], [])
    got = step_rewards_provider_of(CREDIT.get("matchtir"))(_ctx(tiny, [good, wrong, garbage], [1, 0, 0], [0, 0, 0]), None)
    assert got.shape == (3, 3)
    assert got[0].tolist() == pytest.approx([1.0, 2.0 / 3.0, 1.0], abs=1e-6)
    assert got[1, 0].item() == 0.0 and got[2, 0].item() == 0.0 and torch.isnan(got[1:, 1:]).all()


def test_matchtir_provider_names_a_task_without_tool_calls(tiny):
    tok = tiny.tokenizer
    with pytest.raises(CredoError, match=r"matchtir: task 'arith' has no tool_calls, gold_calls, answer_of"):
        step_rewards_provider_of(CREDIT.get("matchtir"))(
            _ctx(tiny, [_rollout(tok, ["hello"], [])], [0], [0], task="arith"), None)


def test_siop_provider_equals_the_potential_difference(tiny):
    tok = tiny.tokenizer
    # group 0: two rollouts answer 47 (a well-formed transcript each), one answers 12: q = 2/3, 2/3, 1/3
    r0 = _rollout(tok, ["<call>c</call>", "<call>e</call>", "<answer>47</answer>"], ["e", "47"])
    r1 = _rollout(tok, ["<call>c</call>", "<call>e</call>", "<answer>47</answer>"], ["e", "47"])
    r2 = _rollout(tok, ["<call>c</call>", "<answer>12</answer>"], ["e"])
    r3 = _rollout(tok, ["<call>c</call>", "hello"], ["e"])  # group 1: no answer, q = 0
    ctx = _ctx(tiny, [r0, r1, r2, r3], [1, 1, 0, 0], [0, 0, 0, 1])
    got = step_rewards_provider_of(CREDIT.get("siop"))(ctx, None)

    head = tok.encode("<answer>", add_special_tokens=False)

    def loglik(context, answer):  # mean log p(answer | context + "<answer>"), one sequence at a time
        target = tok.encode(answer, add_special_tokens=False)
        seq = torch.tensor([context + head + target])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(input_ids=seq).logits[0].float(), -1)
        start = len(context) + len(head)
        return sum(float(logp[start + j - 1, target[j]]) for j in range(len(target))) / len(target)

    def expected(c, q, answer, lam=0.5):
        cuts = [s for s, _ in c.meta["turn_spans"]] + [len(c.token_ids)]
        p = [math.exp(loglik(list(c.prompt_ids) + list(c.token_ids[:cut]), answer)) for cut in cuts]
        r = [q * (math.log(b + 1e-8) - math.log(a + 1e-8)) for a, b in zip(p[:-1], p[1:])]
        r[-1] += (1 - lam) * q
        return r

    assert got.shape == (4, 3)
    assert got[0].tolist() == pytest.approx(expected(r0, 2 / 3, "47"), abs=1e-4)
    assert got[1].tolist() == pytest.approx(got[0].tolist(), abs=1e-6)  # same rollout, same rewards
    assert got[2, :2].tolist() == pytest.approx(expected(r2, 1 / 3, "12"), abs=1e-4)
    assert got[3, :2].tolist() == [0.0, 0.0]  # no answer: q = 0
    assert torch.isnan(got[2:, 2]).all()
    assert ctx.sources.counters["signal_forward_rows"] == 4 + 4 + 3  # rows with a cluster: K_b + 1 contexts each


def test_lare_provider_fits_the_returns_through_the_task_features(tiny):
    tok = tiny.tokenizer
    task = make_task("keyvalue")
    rollouts = [
        _rollout(tok, ["<call>c</call>", "<call>e</call>", "<answer>47</answer>"], ["e", "47"]),  # R 1
        _rollout(tok, ["<call>a</call>", "<answer>17</answer>"], ["17"]),                         # R 0
        _rollout(tok, ["<call>c</call>", "<call>c</call>", "<answer>e</answer>"], ["e", "e"]),    # R 0
        _rollout(tok, ["nonsense"], []),                                                          # R 0
    ]
    rewards = [1.0, 0.0, 0.0, 0.0]
    ctx = _ctx(tiny, rollouts, rewards, [0, 0, 0, 0])
    got = step_rewards_provider_of(CREDIT.get("lare"))(ctx, None)

    feats = torch.zeros(4, 3, len(task.LATENT_FEATURES), dtype=torch.float64)
    valid = torch.zeros(4, 3, dtype=torch.bool)
    for b, c in enumerate(rollouts):
        for k, text in enumerate(c.meta["turn_texts"]):
            feats[b, k] = torch.tensor(task.latent_features(EXAMPLE, c.meta["turn_texts"][:k + 1], list(c.meta["turn_keys"][k])))
            valid[b, k] = True
    w = lare_fit_decoder(feats, valid, torch.tensor(rewards, dtype=torch.float64), ridge=1e-2)
    expected = torch.where(valid, (feats @ w).float(), torch.tensor(float("nan")))
    assert torch.allclose(got, expected, equal_nan=True, atol=1e-6)
    # the features separate these returns: every row's decoded turn rewards sum close to its return
    assert got.nan_to_num(0.0).sum(1).tolist() == pytest.approx(rewards, abs=0.05)
    assert ctx.sources.step_metrics["lare/w_answer_observed"] == pytest.approx(float(w[3]), abs=1e-9)
