"""The key-value multi-turn task and the multi-turn rollout driver.

Most tests use a character-level tokenizer (one token per character, so offsets are counted by
hand from the literal strings) and a scripted engine that plays fixed action lists. One test runs
the real tiny model. Expected values are written out by hand, never taken from the implementation.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from credo.batch import build_batch
from credo.credit.base import CreditInputs, num_steps
from credo.judges.synthetic import SyntheticJudge
from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.rollout.base import Completion, SamplingParams
from credo.rollout.multiturn import (
    generate_multiturn,
    is_multiturn,
    turn_judge_rewards,
    turn_seed,
    turn_step_ids,
    turn_step_keys,
    turn_step_rewards,
    turn_step_truth,
)
from credo.rollout.torch_engine import TorchEngine
from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Example
from credo.tasks.keyvalue import KeyValueTask

# ----------------------------------------------------------------------------------------------
# fixtures: a character tokenizer and a scripted engine


class CharTokenizer:
    """One token per character (id = code point): offsets in tokens are offsets in text."""

    pad_token_id = 0
    eos_token_id = 3

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


TOK = CharTokenizer()
OBS = re.compile(r"\n<obs>[^<>]*</obs>\n")


def char_logprob(ch: str) -> float:
    return -0.01 * (ord(ch) % 7 + 1)  # distinct, finite, known: checked against the batch


class ScriptedEngine:
    """Plays scripts[prompt][j] = the action texts of sample j, one per turn.

    A prefix is matched to the first sample j of its prompt (not yet served in this call) whose
    earlier actions equal the actions already in the prefix; the driver lists trajectories in
    (prompt, sample) order, so equal histories are served in sample order. Actions obey the stop
    strings (kept, finish "stop") and max_new_tokens (finish "length") like a real engine.
    """

    def __init__(self, scripts: dict[str, list[list[str]]]):
        self.scripts = scripts
        self.calls: list[tuple[int, int, int, tuple[str, ...]]] = []

    @staticmethod
    def emit(action: str, sampling: SamplingParams) -> tuple[str, str]:
        ends = [action.find(s) + len(s) for s in sampling.stop if s in action]
        cut = min(ends) if ends else len(action)
        if cut > sampling.max_new_tokens:
            return action[: sampling.max_new_tokens], "length"
        return action[:cut], "stop" if ends or cut < sampling.max_new_tokens else "length"

    def generate(self, prompts, n, sampling, seed):
        self.calls.append((len(prompts), n, seed, tuple(sampling.stop)))
        served, result = set(), []
        for ids in prompts:
            text = TOK.decode(ids)
            prompt = next(p for p in self.scripts if text.startswith(p))
            done = OBS.split(text[len(prompt):])[:-1]  # actions so far (the prefix ends with an obs)
            group = []
            for _ in range(n):
                j = next(j for j, s in enumerate(self.scripts[prompt]) if (prompt, j) not in served
                         and [self.emit(a, sampling)[0] for a in s[: len(done)]] == done)
                served.add((prompt, j))
                action, finish = self.emit(self.scripts[prompt][j][len(done)], sampling)
                group.append(Completion(list(ids), TOK(action)["input_ids"], [char_logprob(c) for c in action],
                                        [True] * len(action), finish, action))
            result.append(group)
        return result

    def load_weights(self, model):
        pass


E1 = Example("What is the value of the value of a?", "42", "",
             {"table": {"a": "c", "b": "17", "c": "42", "d": "a"}, "chain": ["a", "c"], "depth": 2})
E2 = Example("What is the value of b?", "55", "",
             {"table": {"a": "b", "b": "55", "c": "13"}, "chain": ["b"], "depth": 1})
SCRIPTS = {
    E1.prompt: [
        ["<call>a</call>", "<call>c</call>", "<answer>42</answer>"],
        ["<call>b</call>", "<call>a</call>", "<answer>17</answer>"],
        ["<call>a</call>", "<call>a</call>", "<call>zz</call>", "<answer>42</answer>"],
    ],
    E2.prompt: [
        ["<answer>55</answer>"],
        ["<call>b</call>", "<answer>55</answer>"],
        ["garbage that never stops and is long"],
    ],
}
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=20, stop=("</answer>",))


def run(scripts=SCRIPTS, examples=(E1, E2), n=3, task=None, **kw):
    task = task or KeyValueTask()
    engine = ScriptedEngine(scripts)
    prompts = [TOK(ex.prompt)["input_ids"] for ex in examples]
    groups = generate_multiturn(engine, TOK, task, list(examples), prompts, n, kw.pop("sampling", SAMPLING),
                                seed=kw.pop("seed", 5), **kw)
    return groups, engine


# ----------------------------------------------------------------------------------------------
# the driver on scripted actions


def test_transcripts_flags_and_spans():
    groups, _ = run()
    (a, b, c), (d, e, f) = groups
    assert a.text == "<call>a</call>\n<obs>c</obs>\n<call>c</call>\n<obs>42</obs>\n<answer>42</answer>"
    assert b.text == "<call>b</call>\n<obs>17</obs>\n<call>a</call>\n<obs>c</obs>\n<answer>17</answer>"
    assert c.text == ("<call>a</call>\n<obs>c</obs>\n<call>a</call>\n<obs>c</obs>\n<call>zz</call>"
                      "\n<obs>no such key</obs>\n<answer>42</answer>")
    assert d.text == "<answer>55</answer>"
    assert e.text == "<call>b</call>\n<obs>55</obs>\n<answer>55</answer>"
    assert f.text == "garbage that never s"  # 20 characters: truncated, no stop string
    # "<call>a</call>" 14 chars, "\n<obs>c</obs>\n" 14, "\n<obs>42</obs>\n" 15, "<answer>42</answer>" 19
    assert a.meta["turn_spans"] == [(0, 14), (28, 42), (57, 76)]
    assert c.meta["turn_spans"] == [(0, 14), (28, 42), (56, 71), (95, 114)]
    assert d.meta["turn_spans"] == [(0, 19)] and f.meta["turn_spans"] == [(0, 20)]
    for comp in (a, b, c, d, e, f):
        assert comp.prompt_ids == TOK(E1.prompt if comp in (a, b, c) else E2.prompt)["input_ids"]
        assert TOK.decode(comp.token_ids) == comp.text
        assert len(comp.token_ids) == len(comp.logprobs) == len(comp.trainable)
        in_span = [any(s <= i < t for s, t in comp.meta["turn_spans"]) for i in range(len(comp.token_ids))]
        assert comp.trainable == in_span  # observations (and only they) are not trainable
        for i, ch in enumerate(comp.text):
            assert comp.logprobs[i] == (char_logprob(ch) if in_span[i] else 0.0)
        assert [comp.text[s:t] for s, t in comp.meta["turn_spans"]] == comp.meta["turn_texts"]
        assert comp.meta["turns"] == len(comp.meta["turn_spans"])
    assert [x.finish_reason for x in (a, b, c, d, e, f)] == ["stop"] * 5 + ["length"]
    assert all(x.meta["end"] == "env" and x.meta["env_errors"] == 0 for x in (a, b, c, d, e, f))


def test_rewards_truth_and_keys():
    (a, b, c), (d, e, f) = run()[0]
    assert a.meta["turn_rewards"] == [0.1, 0.1, 1.0] and a.meta["turn_truth"] == [1.0, 1.0, 1.0]
    assert b.meta["turn_rewards"] == [0.0, 0.1, 0.0] and b.meta["turn_truth"] == [0.0, 1.0, 0.0]
    assert c.meta["turn_rewards"] == [0.1, 0.0, 0.0, 1.0] and c.meta["turn_truth"] == [1.0, 0.0, 0.0, 1.0]
    assert d.meta["turn_rewards"] == [1.0] and d.meta["turn_truth"] == [1.0]
    assert e.meta["turn_rewards"] == [0.1, 1.0]
    assert f.meta["turn_rewards"] == [-0.1] and f.meta["turn_truth"] == [-1.0]
    assert a.meta["turn_keys"] == [(), ("<obs>c</obs>",), ("<obs>c</obs>", "<obs>42</obs>")]
    assert c.meta["turn_keys"][:3] == [(), ("<obs>c</obs>",), ("<obs>c</obs>", "<obs>c</obs>")]
    # the same call gives the same observation: a and c share their state before turn 1 (an anchor)
    assert a.meta["turn_keys"][1] == c.meta["turn_keys"][1] != b.meta["turn_keys"][1]
    anchors: dict = {}
    for row, keys in enumerate(turn_step_keys([a, b, c])):
        for k, key in enumerate(keys):
            anchors.setdefault(key, []).append((row, k))
    assert anchors[()] == [(0, 0), (1, 0), (2, 0)]
    assert anchors[("<obs>c</obs>",)] == [(0, 1), (2, 1)]
    hash(tuple(tuple(k) for k in turn_step_keys([a, b, c, d, e, f])))  # all hashable


def test_score_replays_the_driver_transcripts():
    task = KeyValueTask()
    (a, b, c), (d, e, f) = run()[0]
    scores = [task.score(x.text, ex) for x, ex in zip((a, b, c, d, e, f), (E1,) * 3 + (E2,) * 3)]
    assert [(s.reward, s.correct, s.formatted) for s in scores] == [
        (1.0, True, True), (0.0, False, True), (1.0, True, True),
        (1.0, True, True), (1.0, True, True), (0.0, False, False)]
    # the answer-turn reward equals the verifier's reward on every transcript that ends in an answer
    assert [x.meta["turn_rewards"][-1] for x in (a, b, c, d, e)] == [s.reward for s in scores[:5]]


def test_one_engine_call_per_turn_with_derived_seeds_and_stops():
    _, engine = run(seed=5)
    # turn 0: both prompts, 3 samples each; then one row per live trajectory
    assert [(p, n) for p, n, _, _ in engine.calls] == [(2, 3), (4, 1), (3, 1), (1, 1)]
    assert [s for _, _, s, _ in engine.calls] == [turn_seed(5, k) for k in range(4)]
    assert len({s for _, _, s, _ in engine.calls}) == 4
    assert all(set(stop) == {"</answer>", "</call>"} and len(stop) == 2 for *_, stop in engine.calls)
    again, _ = run(seed=5)
    first, _ = run(seed=5)
    assert [[x.token_ids for x in g] for g in again] == [[x.token_ids for x in g] for g in first]


def test_step_ids_and_step_rewards_with_build_batch():
    groups, _ = run()
    comps = [x for g in groups for x in g]
    comps[0].logprobs[3] = -math.inf  # a token the batch drops from the loss gets no step either
    batch = build_batch(comps, [0.0] * 6, [0, 0, 0, 1, 1, 1], pad_id=0)
    step_ids = turn_step_ids(comps, batch)
    assert step_ids.dtype == torch.long and step_ids.shape == batch.tokens.shape
    P1, P2 = len(E1.prompt), len(E2.prompt)
    expected = torch.full_like(step_ids, -1)
    spans = {0: [(0, 14), (28, 42), (57, 76)], 3: [(0, 19)], 5: [(0, 20)]}  # counted by hand above
    for row, row_spans in spans.items():
        P = P1 if row < 3 else P2
        for k, (s, t) in enumerate(row_spans):
            expected[row, P + s : P + t] = k
    expected[0, P1 + 3] = -1
    for row in spans:
        assert torch.equal(step_ids[row], expected[row])
    assert torch.equal(step_ids >= 0, batch.loss_mask)
    assert num_steps(step_ids).tolist() == [3, 3, 4, 1, 2, 1]
    for row, comp in enumerate(comps):  # tokens of step k are exactly action k
        P = len(comp.prompt_ids)
        for k, text in enumerate(comp.meta["turn_texts"]):
            positions = torch.nonzero(step_ids[row] == k).flatten().tolist()
            if row == 0 and k == 0:
                positions.insert(3, P + 3)
            assert TOK.decode(batch.tokens[row, positions].tolist()) == text
    rewards = turn_step_rewards(comps)
    assert rewards.shape == (6, 4) and rewards.dtype == torch.float32
    expected_rewards = torch.tensor([[0.1, 0.1, 1.0, math.nan], [0.0, 0.1, 0.0, math.nan],
                                     [0.1, 0.0, 0.0, 1.0], [1.0] + [math.nan] * 3,
                                     [0.1, 1.0, math.nan, math.nan], [-0.1] + [math.nan] * 3])
    assert torch.allclose(rewards, expected_rewards, equal_nan=True)
    assert torch.equal(torch.isnan(turn_step_truth(comps)), torch.isnan(expected_rewards))
    # what the trainer builds from them: the batch's turn_ids and the credit inputs validate
    dataclasses.replace(batch, turn_ids=step_ids)
    inputs = CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                          step_ids=step_ids, step_rewards=rewards, step_keys=turn_step_keys(comps))
    assert inputs.step_keys[2][3] == ("<obs>c</obs>", "<obs>c</obs>", "<obs>no such key</obs>")


def test_single_turn_completions_and_empty_lists():
    plain = Completion([1, 2], [5, 6], [-0.1, -0.2], [True, True], "stop", "xy")
    batch = build_batch([plain], [1.0], [0], pad_id=0)
    assert turn_step_ids([plain], batch).tolist() == [[-1, -1, -1, -1]]
    assert turn_step_rewards([plain]).shape == (1, 0)
    assert turn_step_rewards([]).shape == (0, 0)
    assert turn_step_keys([plain]) == [[]]
    with pytest.raises(ValueError, match="2 completions for a batch of 1"):
        turn_step_ids([plain, plain], batch)


def test_judge_rewards_follow_the_truth():
    (a, b, c), (d, e, f) = run()[0]
    exact = turn_judge_rewards([a, b, f], SyntheticJudge(), ["p1", "p1", "p2"])
    expected = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [-1.0, math.nan, math.nan]])
    assert torch.allclose(exact, expected, equal_nan=True)
    noisy = turn_judge_rewards([a, b, f], SyntheticJudge(noise=0.3, seed=1), ["p1", "p1", "p2"])
    assert torch.equal(torch.isnan(noisy), torch.isnan(expected))
    assert not torch.equal(noisy.nan_to_num(), exact.nan_to_num())


# ----------------------------------------------------------------------------------------------
# garbage, cuts and budgets


@pytest.mark.parametrize("action", [
    "", "\x00\xff junk", "<call></call>", "<call>  </call>", "hello <call>a</call>", "<call>a</call",
    "<CALL>a</CALL>",
    "<call>a<b</call>", "<answer>42", "</call>",
])
def test_malformed_actions_end_the_episode(action):
    scripts = {E1.prompt: [[action, "<answer>42</answer>"]]}
    sampling = SamplingParams(max_new_tokens=40)
    (only,), = run(scripts, examples=(E1,), n=1, sampling=sampling)[0]
    assert only.meta["turns"] == 1 and only.meta["end"] == "env"
    assert only.meta["turn_rewards"] == [-0.1] and only.meta["turn_truth"] == [-1.0]
    assert only.trainable == [True] * len(only.token_ids)  # no observation was appended
    assert KeyValueTask().score(only.text, E1).reward == 0.0


def test_step_never_raises_and_ignores_finished_episodes():
    task = KeyValueTask()
    state = task.reset(E1)
    for junk in (None, 42, b"<call>a</call>", "<call>" * 10_000, "\ud800"):
        obs, reward, nxt = task.step(state, junk)
        assert obs is None and reward == -0.1 and nxt.done and task.turn_truth(nxt) == -1.0
    obs, reward, nxt = task.step(state, "  <call> a </call>\n")  # whitespace around the key is fine
    assert (obs, reward, task.turn_truth(nxt)) == ("\n<obs>c</obs>\n", 0.1, 1.0)
    done = task.step(nxt, "<answer>42</answer>")[2]
    assert task.step(done, "<call>a</call>") == (None, 0.0, done)
    assert state.queried == () and not state.done  # states are immutable


def test_environment_errors_end_one_episode():
    class Broken(KeyValueTask):
        def step(self, state, action_text):
            if action_text == "<call>b</call>":
                raise RuntimeError("env bug")
            if action_text == "<call>c</call>":
                return "\n<obs>x</obs>\n", math.nan, state
            return super().step(state, action_text)

    ((a, b, c),), _ = run(examples=(E1,), task=Broken())
    assert b.meta["env_errors"] == 1 and b.meta["turn_rewards"] == [0.0] and b.meta["end"] == "env"
    assert a.meta["env_errors"] == 1 and a.meta["turn_rewards"] == [0.1, 0.0] and a.meta["turns"] == 2
    assert c.meta["env_errors"] == 0 and c.meta["turns"] == 4


def test_max_turns_cut_drops_the_last_observation():
    ((a, b, c),), _ = run(examples=(E1,), max_turns=2)
    for x in (a, b, c):
        assert x.meta["turns"] == 2 and x.meta["end"] == "max_turns" and x.finish_reason == "length"
        assert x.text.endswith("</call>") and x.trainable[-1]
        assert KeyValueTask().score(x.text, E1).reward == 0.0
    assert a.text == "<call>a</call>\n<obs>c</obs>\n<call>c</call>"
    # the driver never goes past the task's own max_turns (its verifier rejects longer transcripts)
    scripts = {E1.prompt: [["<call>d</call>"] * 6]}
    (x,), = run(scripts, examples=(E1,), n=1, max_turns=10)[0]
    assert x.meta["turns"] == 4 and x.meta["end"] == "max_turns"


def test_context_budget():
    P = len(E1.prompt)  # 36
    ((a, b, c),), _ = run(examples=(E1,), max_context_tokens=P + 14 + 14 + 20)
    # after action 0 (14) and observation 0 (14) one more action of 20 fits, then nothing
    assert a.meta["turns"] == 2 and a.meta["end"] == "context" and a.finish_reason == "length"
    assert a.text == "<call>a</call>\n<obs>c</obs>\n<call>c</call>"
    assert len(a.prompt_ids) + len(a.token_ids) <= P + 48
    ((a, b, c),), _ = run(examples=(E1,), max_context_tokens=P + 19)  # the prompt leaves no room
    assert a.token_ids == [] and a.meta["turns"] == 0 and a.meta["end"] == "context"
    batch = build_batch([a, b, c], [0.0] * 3, [0] * 3, pad_id=0)
    assert not batch.loss_mask.any() and turn_step_rewards([a, b, c]).shape == (3, 0)
    assert (turn_step_ids([a, b, c], batch) == -1).all()


def test_driver_argument_errors():
    engine = ScriptedEngine(SCRIPTS)
    with pytest.raises(ValueError, match="2 examples but 1 prompts"):
        generate_multiturn(engine, TOK, KeyValueTask(), [E1, E2], [[1]], 2, SAMPLING, 0)
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        generate_multiturn(engine, TOK, KeyValueTask(), [E1], [[1]], 2, SamplingParams(max_new_tokens=0), 0)


# ----------------------------------------------------------------------------------------------
# the task


def test_examples_are_deterministic_solvable_and_split():
    task = KeyValueTask()
    train = task.examples("train", 60, seed=3)
    assert [ex.prompt for ex in train] == [ex.prompt for ex in task.examples("train", 60, seed=3)]
    test = task.examples("test", 30, seed=3)
    key = lambda ex: (ex.prompt, tuple(sorted(ex.meta["table"].items())))  # noqa: E731
    assert not {key(ex) for ex in train} & {key(ex) for ex in test}
    assert {ex.meta["depth"] for ex in train} == {1, 2, 3}
    for ex in train + test:
        table, chain, depth = ex.meta["table"], ex.meta["chain"], ex.meta["depth"]
        assert ex.prompt == "What is " + "the value of " * depth + f"{chain[0]}?"
        assert sorted(table) == list("abcdef") and len(chain) == depth == len(set(chain))
        value = chain[0]
        for _ in range(depth):  # follow the chain independently of the task
            assert value in table
            value = table[value]
        assert value == ex.answer and 10 <= int(ex.answer) <= 99
        # the demonstration is what an ideal multi-turn policy writes; it scores 1.0
        assert task.score(ex.demonstration, ex).reward == 1.0
        state, rewards = task.reset(ex), []
        for action in re.findall(r"<call>.</call>|<answer>\d+</answer>", ex.demonstration):
            obs, reward, state = task.step(state, action)
            rewards.append(reward)
        assert rewards == [0.1] * depth + [1.0] and obs is None


@pytest.mark.parametrize("params", [{"depths": [0]}, {"depths": []}, {"depths": [4]}, {"num_keys": 2},
                                    {"num_keys": 9}, {"max_turns": 3}, {"depths": [2], "max_turns": 2}])
def test_bad_parameters(params):
    with pytest.raises(CredoError, match="keyvalue"):
        KeyValueTask(**params)


@pytest.mark.parametrize("text, reward, correct, formatted", [
    ("<answer>42</answer>", 1.0, True, True),  # a lucky guess with no lookups
    ("<call>a</call>\n<obs>c</obs>\n<answer>42</answer>\n", 1.0, True, True),
    ("<call>a</call><obs>c</obs><answer>42</answer>", 1.0, True, True),
    ("<call>a</call>\n<obs>17</obs>\n<answer>42</answer>", 0.0, False, False),  # hallucinated observation
    ("<call>q</call>\n<obs>no such key</obs>\n<answer>42</answer>", 1.0, True, True),
    ("<call>a</call>\n<obs>c</obs>\n<answer>17</answer>", 0.0, False, True),
    ("<answer>42</answer> and more", 0.0, False, False),
    ("<answer>42</answer><answer>42</answer>", 0.0, False, False),
    ("Sure. <answer>42</answer>", 0.0, False, False),
    ("<call>a</call>\n<obs>c</obs>\n" * 4 + "<answer>42</answer>", 0.0, False, False),  # 4 calls + answer > 4 turns
    ("<call>a</call>\n<obs>c</obs>\n" * 3 + "<answer>42</answer>", 1.0, True, True),
    ("", 0.0, False, False), ("<answer></answer>", 0.0, False, True), ("x" * 10_000, 0.0, False, False),
])
def test_score(text, reward, correct, formatted):
    s = KeyValueTask().score(text, E1)
    assert (s.reward, s.correct, s.formatted) == (reward, correct, formatted)


def test_score_rejects_non_strings_and_protocol_detection():
    assert KeyValueTask().score(None, E1).reward == 0.0
    assert is_multiturn(KeyValueTask()) and not is_multiturn(ArithmeticTask())


# ----------------------------------------------------------------------------------------------
# the real tiny model


class Talkative(KeyValueTask):
    """Answers every action (even garbage) with an observation, so a random model plays all turns."""

    def step(self, state, action_text):
        obs, reward, nxt = super().step(state, action_text)
        if obs is None and nxt.turn < self.max_turns:
            return "\n<obs>none</obs>\n", reward, dataclasses.replace(nxt, done=False)
        return obs, reward, nxt


def test_real_tiny_model_two_prompts_two_samples(tiny_policy):
    tok, model = tiny_policy.tokenizer, tiny_policy.model
    engine = TorchEngine(model, tok)
    task = Talkative(depths=(1, 2), max_turns=3)
    from credo.train.evaluate import encode_prompts

    examples = task.examples("train", 2, seed=0)
    prompts = encode_prompts(tok, task, examples)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6)
    groups = generate_multiturn(engine, tok, task, examples, prompts, 2, sampling, seed=7)
    again = generate_multiturn(engine, tok, task, examples, prompts, 2, sampling, seed=7)
    assert [[c.token_ids for c in g] for g in groups] == [[c.token_ids for c in g] for g in again]
    comps = [c for g in groups for c in g]
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    for (g, group), ex in zip(enumerate(groups), examples):
        for c in group:
            assert c.prompt_ids == prompts[g]
            spans, turns = c.meta["turn_spans"], c.meta["turns"]
            assert turns == 3 and len(spans) == len(c.meta["turn_rewards"]) == len(c.meta["turn_keys"]) == turns
            assert c.meta["turn_keys"][0] == () and all(-1.0 <= t <= 1.0 for t in c.meta["turn_truth"])
            assert spans[0][0] == 0 and spans[-1][1] == len(c.token_ids)
            for (s, t), text in zip(spans, c.meta["turn_texts"]):
                assert 1 <= t - s <= 6 and all(c.trainable[s:t])
                assert tok.decode(c.token_ids[s:t], skip_special_tokens=True) == text
            for (_, t), (s2, _) in zip(spans, spans[1:]):  # between actions: one observation
                assert not any(c.trainable[t:s2]) and all(lp == 0.0 for lp in c.logprobs[t:s2])
                assert tok.decode(c.token_ids[t:s2]) == "\n<obs>none</obs>\n"
            assert isinstance(task.score(c.text, ex).reward, float)
    # the sampler's logprobs are those of the model conditioned on the observation tokens
    batch = build_batch(comps, [0.0] * 4, [0, 0, 1, 1], pad_id=tok.pad_token_id)
    with torch.no_grad():
        forced = token_logprobs(model, batch.tokens, batch.attention_mask, batch.loss_mask, temperature=1.0)
    assert (forced - batch.sampler_logprobs)[batch.loss_mask].abs().max().item() < 1e-4
    step_ids = turn_step_ids(comps, batch)
    assert num_steps(step_ids).tolist() == [c.meta["turns"] for c in comps]
    assert torch.equal(step_ids >= 0, batch.loss_mask)
