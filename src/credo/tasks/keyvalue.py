"""Key-value lookups: a tiny deterministic tool-use world for multi-turn RL and turn-level credit.

The multi-turn testbed of credit.md §23 item 2 (anchor states as in "Group-in-Group Policy
Optimization for LLM Agent Training", GiGPO, arXiv 2505.10978). Every example hides a small table
of letter keys; a value is either another key or a two-digit number. The question follows a chain
of 1-3 lookups from a start key, and each turn the model does exactly one thing:

    prompt:   What is the value of the value of c?
    turn 0:   <call>c</call>            environment: \\n<obs>e</obs>\\n
    turn 1:   <call>e</call>            environment: \\n<obs>47</obs>\\n
    turn 2:   <answer>47</answer>       (ends the episode)

By construction the chain's intermediate values are keys and its last value is a number, so the
answer is unique; the other keys are distractors (random numbers or keys). The same call always
gets the same observation, so trajectories of one prompt revisit identical states (GiGPO anchors).

Multi-turn protocol (driven by `credo.rollout.multiturn.generate_multiturn`):
    reset(example) -> state;  step(state, action_text) -> (observation | None when done, turn reward, state);
    turn_truth(state) -> the true value of the turn that produced `state`;
    turn_stop = ("</call>", "</answer>") ends each action;  max_turns (default 4).
States are immutable (`KVState`); `step` never raises on model output.

An action is well formed when it is exactly one tag with only whitespace around it: `<call>KEY</call>`
(KEY non-empty after stripping) or `<answer>TEXT</answer>`. Everything else (garbage, a truncated
tag, text around the tag, two tags) is malformed and ENDS the episode: with at most 4 short turns,
an error observation would mostly buy another malformed turn.

Per-turn rewards (`turn reward`) and true per-turn signals (`turn_truth`, for CreditBench judges):

| action                                               | turn reward        | turn_truth | episode |
|------------------------------------------------------|--------------------|------------|---------|
| call of a chain key not queried before (useful)      | +useful_reward 0.1 | 1          | goes on |
| call of any other key (repeat, distractor, unknown)  | 0                  | 0          | goes on |
| answer, correct                                      | 1.0                | 1          | ends    |
| answer, wrong                                        | 0.0                | 0          | ends    |
| malformed                                            | -invalid_penalty 0.1 | -1         | ends    |

(0.1 is verl-agent's invalid-action penalty coefficient for GiGPO.)

"Useful" ignores order: calling the chain's second key before the first (a lucky guess) still
counts. An unknown key is observed as `<obs>no such key</obs>`.

The single-turn verifier `score(transcript, example)` replays a whole transcript (what the driver
writes as `Completion.text`): reward 1.0 when the transcript is a sequence of well-formed calls,
each followed by the observation the environment gives for it, of fewer than `max_turns` calls,
ending in exactly one answer tag with the right number (nothing but whitespace between parts).
An observation the model wrote itself that differs from the table's makes the transcript
unformatted, so single-turn sampling cannot earn reward by hallucinating lookups.

Difficulty: `depths` (default (1, 2, 3), drawn uniformly) and `num_keys` (table size, 3..8,
default 6; keys are the first `num_keys` letters of a..h). The table, the chain and the depth are
in `Example.meta` ("table", "chain", "depth").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from credo.entry import Entry
from credo.errors import CredoError
from credo.rewards.answer_tags import MAX_SCAN_CHARS
from credo.tasks.base import Example, Score, draw_examples

KEY_LETTERS = "abcdefgh"
NO_SUCH_KEY = "no such key"

# Tag contents never hold angle brackets, so "<call>a<call>b</call>" is malformed, not a key "a<call>b".
_CALL = re.compile(r"\s*<call>([^<>]*)</call>\s*")
_ANSWER = re.compile(r"\s*<answer>([^<>]*)</answer>\s*")
# one (call, observation) pair of a transcript, then the final answer
_PAIR = re.compile(r"\s*<call>([^<>]*)</call>\s*<obs>([^<>]*)</obs>")

CATALOG = [
    Entry(
        "keyvalue",
        "multi-turn key-value lookup chains (1-3 calls): per-turn rewards, exact-repeat observations, turn truth",
        "Group-in-Group Policy Optimization for LLM Agent Training (arXiv 2505.10978); "
        "testbed of credit.md §23.2",
        "reconstructed",
        "multi-turn driver (rollout/multiturn.py)",
    )
]


@dataclass(frozen=True)
class KVState:
    """One episode's state. table: key -> value; chain: the keys the question follows, in order;
    answer: the gold value; queried: keys called so far; turn: turns taken; done: episode over;
    truth: the true value of the last turn (turn_truth)."""

    table: tuple[tuple[str, str], ...]
    chain: tuple[str, ...]
    answer: str
    queried: tuple[str, ...] = ()
    turn: int = 0
    done: bool = False
    truth: float = 0.0

    def lookup(self, key: str) -> str:
        return dict(self.table).get(key, NO_SUCH_KEY)


def observation_text(value: str) -> str:
    """The environment's reply to a call, as inserted into the transcript."""
    return f"\n<obs>{value}</obs>\n"


def question(start: str, depth: int) -> str:
    return "What is " + "the value of " * depth + f"{start}?"


@dataclass
class KeyValueTask:
    depths: Sequence[int] = (1, 2, 3)
    num_keys: int = 6
    max_turns: int = 4
    useful_reward: float = 0.1
    invalid_penalty: float = 0.1
    system_prompt: str | None = (
        "Look up keys with <call>key</call>. Reply with <answer>value</answer> when you know it."
    )
    name: str = "keyvalue"
    turn_stop: tuple[str, ...] = field(default=("</call>", "</answer>"))

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        if not self.depths or any(d < 1 or d > 3 for d in self.depths):
            raise CredoError(f"keyvalue: depths must be a non-empty list of 1..3, got {list(self.depths)}")
        if not 3 <= self.num_keys <= len(KEY_LETTERS):
            raise CredoError(f"keyvalue: num_keys must be 3..{len(KEY_LETTERS)}, got {self.num_keys}")
        if self.num_keys < max(self.depths):
            raise CredoError(f"keyvalue: num_keys {self.num_keys} is smaller than depth {max(self.depths)}")
        if self.max_turns < max(self.depths) + 1:
            raise CredoError(
                f"keyvalue: max_turns {self.max_turns} leaves no turn to answer after "
                f"{max(self.depths)} lookups; use max_turns >= {max(self.depths) + 1}"
            )

    # -- data ------------------------------------------------------------------------------------

    def _draw(self, rng: random.Random) -> tuple[int, tuple[str, ...], tuple[tuple[str, str], ...]]:
        keys = KEY_LETTERS[: self.num_keys]
        depth = rng.choice(self.depths)
        chain = tuple(rng.sample(keys, depth))
        table = {k: chain[i + 1] for i, k in enumerate(chain[:-1])}
        table[chain[-1]] = str(rng.randint(10, 99))
        for k in keys:  # distractors: a number or any key (a value that is a key is never an answer)
            if k not in table:
                table[k] = str(rng.randint(10, 99)) if rng.random() < 0.5 else rng.choice(keys)
        return depth, chain, tuple(sorted(table.items()))

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        def make(problem) -> Example:
            depth, chain, table = problem
            answer = dict(table)[chain[-1]]
            demo = "".join(f"<call>{k}</call>{observation_text(dict(table)[k])}" for k in chain)
            return Example(question(chain[0], depth), answer, demo + f"<answer>{answer}</answer>",
                           {"table": dict(table), "chain": list(chain), "depth": depth})

        def key_of(problem) -> str:
            depth, chain, table = problem
            return f"{depth}:{chain[0]}:" + ",".join(f"{k}={v}" for k, v in table)

        rng = random.Random(f"{self.name}:{self.depths}:{self.num_keys}:{split}:{seed}")
        return draw_examples(f"keyvalue depths {list(self.depths)}", split, n, rng, self._draw, key_of, make)

    # -- multi-turn protocol ---------------------------------------------------------------------

    def reset(self, example: Example) -> KVState:
        table = tuple(sorted((str(k), str(v)) for k, v in example.meta["table"].items()))
        return KVState(table=table, chain=tuple(example.meta["chain"]), answer=example.answer)

    def step(self, state: KVState, action_text: str) -> tuple[str | None, float, KVState]:
        """(observation or None when the episode ended, turn reward, next state); see the table in
        the module docstring. A step on a finished episode changes nothing: (None, 0.0, state)."""
        if state.done:
            return None, 0.0, state
        text = action_text[:MAX_SCAN_CHARS] if isinstance(action_text, str) else ""
        call, answer = _CALL.fullmatch(text), _ANSWER.fullmatch(text)
        turn = state.turn + 1
        if answer is not None:
            correct = answer.group(1).strip() == state.answer
            return None, 1.0 if correct else 0.0, replace(state, turn=turn, done=True, truth=float(correct))
        key = call.group(1).strip() if call is not None else ""
        if not key:
            return None, -self.invalid_penalty, replace(state, turn=turn, done=True, truth=-1.0)
        useful = key in state.chain and key not in state.queried
        nxt = replace(state, turn=turn, queried=state.queried + (key,), truth=float(useful))
        return observation_text(state.lookup(key)), self.useful_reward if useful else 0.0, nxt

    def turn_truth(self, state: KVState) -> float:
        """1 useful call or correct answer, 0 useless call or wrong answer, -1 malformed action."""
        return state.truth

    # -- what turn-level credit reads in training (MatchTIR, SIOP, LaRe: credo/credit/) ---------------

    def tool_calls(self, action_text: str) -> list[dict]:
        """The tool calls of one action in MatchTIR's format: a well-formed `<call>KEY</call>` is
        [{"name": "lookup", "arguments": {"key": KEY}}]; an answer or a malformed action has none."""
        call = _CALL.fullmatch(action_text[:MAX_SCAN_CHARS]) if isinstance(action_text, str) else None
        key = call.group(1).strip() if call is not None else ""
        return [{"name": "lookup", "arguments": {"key": key}}] if key else []

    def gold_calls(self, example: Example) -> list[dict]:
        """The ground-truth call chain of `example` (MatchTIR's gt format): one lookup per chain key."""
        return [{"name": "lookup", "parameters": {"key": str(k)}} for k in example.meta["chain"]]

    def answer_of(self, action_text: str) -> str | None:
        """The stripped answer of an `<answer>...</answer>` action; None for any other action."""
        answer = _ANSWER.fullmatch(action_text[:MAX_SCAN_CHARS]) if isinstance(action_text, str) else None
        return None if answer is None else answer.group(1).strip()

    LATENT_FEATURES = ("call_follows", "call_other", "call_repeat", "answer_observed", "answer_other", "malformed")

    def latent_features(self, example: Example, actions: Sequence[str], observations: Sequence[str]) -> list[float]:
        """LaRe's latent reward vector phi(s_k, a_k) of the LAST action in `actions`, given the earlier
        actions and the observations before it (`observations`, stripped `<obs>v</obs>` texts) ->
        [len(LATENT_FEATURES)] of 0/1:
            call_follows     a call of the key the context points to (the last observed value; at the first
                             turn the question's start key)
            call_other       any other well-formed call
            call_repeat      a call of a key called before (also counted in call_follows / call_other)
            answer_observed  an answer equal to the last observed value
            answer_other     any other answer
            malformed        neither a call nor an answer
        The encoder reads only what the policy saw (question, actions, observations), never the chain:
        it is the task author's stand-in for LaRe's LLM-written encoder (`credit/turn_reward_credit.py::lare_latent_step_rewards`)."""
        action = actions[-1]
        calls, answer = self.tool_calls(action), self.answer_of(action)
        last = observations[-1] if observations else ""
        seen = last[len("<obs>"):-len("</obs>")].strip() if last.startswith("<obs>") and last.endswith("</obs>") else None
        points_to = seen if observations else str(example.meta["chain"][0])
        out = [0.0] * len(self.LATENT_FEATURES)
        if calls:
            key = calls[0]["arguments"]["key"]
            out[0 if key == points_to else 1] = 1.0
            earlier = [c["arguments"]["key"] for a in actions[:-1] for c in self.tool_calls(a)]
            out[2] = float(key in earlier)
        elif answer is not None:
            out[3 if seen is not None and answer == seen else 4] = 1.0
        else:
            out[5] = 1.0
        return out

    # -- single-turn verifier on the whole transcript --------------------------------------------

    def _transcript(self, completion: str, example: Example) -> tuple[bool, str | None]:
        """(well-formed transcript, the final answer's stripped text or None)."""
        if not isinstance(completion, str) or len(completion) > MAX_SCAN_CHARS:
            return False, None
        state = self.reset(example)
        pos, calls, formatted = 0, 0, True
        while (pair := _PAIR.match(completion, pos)) is not None:
            key = pair.group(1).strip()
            calls += 1
            # each observation must be the environment's reply to its call
            if not key or pair.group(2).strip() != state.lookup(key):
                formatted = False
            pos = pair.end()
        final = _ANSWER.fullmatch(completion, pos)
        formatted = formatted and final is not None and calls < self.max_turns
        return formatted, None if final is None else final.group(1).strip()

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The final answer of a well-formed transcript, for majority voting; None otherwise."""
        formatted, answer = self._transcript(completion, example)
        return answer if formatted else None

    def score(self, completion: str, example: Example) -> Score:
        formatted, answer = self._transcript(completion, example)
        # as in the other tasks, an answer only counts inside a well-formed transcript
        correct = formatted and answer == example.answer
        return Score(reward=1.0 if correct and formatted else 0.0, correct=correct, formatted=formatted)
