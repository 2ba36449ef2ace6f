"""Reward terms and their weighted combination (`rl.reward_terms`), every term logged.

    rl.reward_terms = {"task" = 1.0, "format" = 0.1, "hapo_length" = 1.0}
    rl.reward_term_params = {"hapo_length" = {"floor" = -0.7}}

The training reward of a completion is R_i = sum_k w_k * term_k(i). Each term is a plain function of
the step's scored completions (`TermInputs`, rows in batch order, B = rows) returning B floats; none
raises on model output (an unparseable answer scores as wrong), and the combination guards each term
anyway: a term that raises scores 0.0 for the step and counts `reward/<name>_errors` (a bug in a term
must not stop a run). Every term's batch mean is logged as `reward/<name>`. Left empty (the default),
the reward is the task's own, as before. Terms:

- `task`: the task verifier's reward (`Score.reward`).
- `format`: 1.0 when the task's format check passed (`Score.formatted`), else 0.0.
- `math`: 1.0 when the answer in `<answer>` tags equals the reference answer under math-verify
  (`rewards/math_answers.py`; LaTeX and numeric equivalence), else 0.0; for tasks whose own check is
  exact, so that `\\frac{1}{2}` earns what `0.5` earns.
- `hapo_length`: HAPO's history-aware length reward ("HAPO: Training Language Models to Reason Concisely
  via History-Aware Policy Optimization", arXiv 2505.11225; HCY123902/HAPO, `utils.py::compute_len_reward`; confirmed against
  the official code, spec section 30). A per-problem history h_q = the shortest correct response (in
  tokens) seen so far for problem q:
      h_q unknown (no correct answer yet)  -> r_len = 0
      c = cos((L_i / h_q) * pi / 2) if L_i < 2 h_q else -1
      r_len = max(floor, c) if correct (floor -0.7: any correct answer beats any wrong one), min(0, c) if not
  after the step: h_q <- min(h_q, shortest correct L_i of q in the batch) ("min" mode). Defaults: weight
  w_lr = 1.0 (set it as the term's weight), floor -0.7; the paper's G = 2 and TRL trainer are not
  implied. The history is keyed by the persistent prompt id (train/prompts.py: a prompt's index in the
  run's prompt list), so it only helps when prompts repeat (`rl.prompt_pool > 0`, epochs over a pool);
  it goes into every RL checkpoint (state.json "reward_terms") and `--resume` restores it exactly.
- `otc`: OTC-PO's tool-efficiency reward ("Acting Less is Reasoning More! Teaching Model to Act
  Efficiently", arXiv 2504.14870; OTC-GRPO; confirmed against a third-party verl re-implementation,
  spec section 29), for multi-turn tasks with tool calls (the keyvalue task: `task.tool_calls`):
      m = the rollout's tool calls; n = the fewest calls of a correct rollout of the question (this
      group, and with history = true every earlier step's: per-problem state like HAPO's)
      f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise
      r_tool  = 1 if f = n = 0;  cos(m pi / (2m + c)) if n = 0;  sin(f pi / (2n)) otherwise
      term    = r_tool * correct          (OTC multiplies correctness: use it instead of "task")
  Defaults: c = 1, history true (the paper's "question's history"); alpha is the term's weight. No
  correct rollout yet: n is unknown and treated as 0.
- `likelihood`: PromptEcho's echo reward carried to text (rewards/likelihood.py): the mean log-prob of
  the reference answer under a frozen model reading prompt + completion + a guiding query.
- `autorule`: AutoRule's rule reward (rewards/autorule.py): the fraction of rules (from `credo
  extract-rules`) a yes/no judge says the completion follows.
- `adactrl`, `cogre`, `gencls`, `repetition` (rewards/adactrl.py, cogre.py, gencls.py, repetition.py):
  AdaCtrl's difficulty-aware budget tags, CogRE's keyword-grounded explanation reward, GenCLS++'s
  classification label match, HAPO's n-gram repetition penalty r_rep. A term that is a class takes
  its parameters from rl.reward_term_params (and is built once per run).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.registry import Registry
from credo.rewards.answer_tags import extract_answer
from credo.rewards.autorule import CATALOG as AUTORULE_CATALOG, AutoRuleReward
from credo.rewards.likelihood import CATALOG as LIKELIHOOD_CATALOG, PromptEchoLikelihood
from credo.rewards import adactrl, cogre, gencls, repetition  # (text terms: modules of their own)


@dataclass
class TermInputs:
    """One step's scored completions, row by row (B rows in batch order).

    texts[i]: completion text; lengths[i]: its token count; answers[i]: the example's reference answer;
    scores[i]: the task's Score (reward, correct, formatted); group_ids[i]: its group (prompt) in the
    step; prompt_keys[i]: the persistent id of its prompt (the same problem across steps)."""

    texts: Sequence[str]
    lengths: Sequence[int]
    answers: Sequence[str]
    scores: Sequence[Any]
    group_ids: Sequence[int]
    prompt_keys: Sequence[str]
    tool_calls: Sequence[int] | None = None  # calls per rollout, for tasks with tools (else None)
    metas: Sequence[dict] | None = None  # metas[i]: its example's Example.meta (CogRE's keywords, GenCLS++'s labels)
    token_ids: Sequence[Sequence[int]] | None = None  # token_ids[i]: its policy-sampled token ids (HAPO's r_rep)
    prompts: Sequence[str] | None = None  # prompts[i]: its example's user message (likelihood, autorule judges)

    @classmethod
    def of(cls, task: Any, completions: Sequence[Any], examples: Sequence[Any], scores: Sequence[Any],
           group_ids: Sequence[int], prompt_ids: Sequence[int]) -> "TermInputs":
        """The rows of one RL step (train/rl.py::rl_step): examples and prompt_ids are per group;
        tool calls are counted per turn with the task's `tool_calls` when it has one (OTC); token_ids
        keep the policy's own (trainable) tokens, not a multi-turn task's tool responses."""
        calls = None if not callable(getattr(task, "tool_calls", None)) else [
            sum(len(task.tool_calls(t)) for t in c.meta.get("turn_texts", [])) for c in completions]
        return cls([c.text for c in completions], [len(c.token_ids) for c in completions],
                   [examples[g].answer for g in group_ids], scores, list(group_ids),
                   [str(prompt_ids[g]) for g in group_ids], calls, [examples[g].meta for g in group_ids],
                   [[t for t, own in zip(c.token_ids, c.trainable) if own] for c in completions],
                   prompts=[examples[g].prompt for g in group_ids])


REWARD_TERMS: Registry[Callable[..., Any]] = Registry("reward term")


@REWARD_TERMS.register("task")
def task_term(inputs: TermInputs) -> list[float]:
    """The task verifier's reward."""
    return [float(s.reward) for s in inputs.scores]


@REWARD_TERMS.register("format")
def format_term(inputs: TermInputs) -> list[float]:
    """1.0 when the task's format check passed."""
    return [1.0 if s.formatted else 0.0 for s in inputs.scores]


@REWARD_TERMS.register("math")
def math_term(inputs: TermInputs) -> list[float]:
    """1.0 when the tagged answer is mathematically equal to the reference (math-verify)."""
    from credo.rewards.math_answers import math_equal

    return [1.0 if answer and math_equal(extract_answer(text), answer) else 0.0
            for text, answer in zip(inputs.texts, inputs.answers)]


def hapo_length_reward(length: int, correct: bool, history: float | None, *, floor: float = -0.7) -> float:
    """HAPO's r_len of one response (see the module docstring). history None -> 0.0.

    >>> hapo_length_reward(10, True, 10)   # L = h: cos(pi / 2) = 0
    0.0
    >>> hapo_length_reward(0, True, 10)
    1.0
    >>> hapo_length_reward(25, True, 10), hapo_length_reward(25, False, 10)   # L >= 2h: c = -1
    (-0.7, -1.0)
    """
    if history is None or history <= 0:
        return 0.0
    c = math.cos(length / history * math.pi / 2) if length < 2 * history else -1.0
    c = 0.0 if abs(c) < 1e-12 else c  # (cos(pi / 2) is 6e-17 in floating point)
    return max(floor, c) if correct else min(0.0, c)


@dataclass
class HapoLength:
    """The stateful `hapo_length` term: {prompt key: shortest correct length so far}."""

    floor: float = -0.7
    history: dict[str, int] = field(default_factory=dict)

    def __call__(self, inputs: TermInputs) -> list[float]:
        return [hapo_length_reward(n, bool(s.correct), self.history.get(k), floor=self.floor)
                for n, s, k in zip(inputs.lengths, inputs.scores, inputs.prompt_keys)]

    def commit(self, inputs: TermInputs) -> None:
        """After the step's rewards: h_q <- min(h_q, shortest correct length of q in this batch)."""
        for n, s, k in zip(inputs.lengths, inputs.scores, inputs.prompt_keys):
            if s.correct:
                self.history[k] = min(self.history.get(k, n), int(n))

    def state(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = {str(k): int(v) for k, v in state["history"].items()}


REWARD_TERMS.register("hapo_length")(HapoLength)


def otc_tool_reward(m: int, n: int, *, c: float = 1.0) -> float:
    """OTC-GRPO's r_tool(m, n) (see the module docstring).

    >>> otc_tool_reward(0, 0), otc_tool_reward(2, 2), otc_tool_reward(0, 3)
    (1.0, 1.0, 0.0)
    >>> round(otc_tool_reward(1, 0), 6), round(otc_tool_reward(4, 2), 6)   # cos(pi / 3), sin(2 pi / 3)
    (0.5, 0.866025)
    """
    if n == 0:
        return 1.0 if m == 0 else math.cos(m * math.pi / (2 * m + c))
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


@dataclass
class OtcToolEfficiency:
    """The `otc` term: r_tool(m, n) x correct, n from the group and (history) the problem's past."""

    c: float = 1.0
    history: bool = True
    best: dict[str, int] = field(default_factory=dict)  # problem -> fewest calls of a correct rollout

    def _optimal(self, inputs: TermInputs) -> dict[int, int]:
        """n per group: the fewest calls among its correct rollouts, and the problem's past (history)."""
        n: dict[int, int] = {}
        for g, k, s, m in zip(inputs.group_ids, inputs.prompt_keys, inputs.scores, inputs.tool_calls):
            if self.history and k in self.best:
                n[g] = min(n.get(g, self.best[k]), self.best[k])
            if s.correct:
                n[g] = min(n.get(g, int(m)), int(m))
        return n

    def __call__(self, inputs: TermInputs) -> list[float]:
        if inputs.tool_calls is None:
            raise ValueError("the otc term needs tool-call counts (a multi-turn task with tool_calls)")
        n = self._optimal(inputs)
        return [otc_tool_reward(int(m), n.get(g, 0), c=self.c) if s.correct else 0.0
                for m, g, s in zip(inputs.tool_calls, inputs.group_ids, inputs.scores)]

    def commit(self, inputs: TermInputs) -> None:
        if not self.history or inputs.tool_calls is None:
            return
        for k, s, m in zip(inputs.prompt_keys, inputs.scores, inputs.tool_calls):
            if s.correct:
                self.best[k] = min(self.best.get(k, int(m)), int(m))

    def state(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best = {str(k): int(v) for k, v in state["best"].items()}


REWARD_TERMS.register("otc")(OtcToolEfficiency)
# model-judged terms (modules of their own; their state is the verdict cache, checkpointed for exact resume)
REWARD_TERMS.register("likelihood")(PromptEchoLikelihood)
REWARD_TERMS.register("autorule")(AutoRuleReward)
# text terms with parameters (classes, built per run; stateless: nothing goes into the checkpoint)
REWARD_TERMS.register("adactrl")(adactrl.AdaCtrlBudget)
REWARD_TERMS.register("cogre")(cogre.CogReKeywords)
REWARD_TERMS.register("gencls")(gencls.GenClsLabel)
REWARD_TERMS.register("repetition")(repetition.RepetitionPenalty)
NEEDS_TOOL_CALLS = {"otc"}  # terms that read TermInputs.tool_calls (validated against the task)
STATEFUL = {"hapo_length", "otc", "likelihood", "autorule"}  # classes with state: built with their params, one per run


class RewardMix:
    """R_i = sum_k w_k term_k(i) over `weights` (name -> weight), logged per term; see the module docstring."""

    def __init__(self, weights: dict[str, float], params: dict[str, dict[str, Any]] | None = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(weights))
        if unknown:
            raise CredoError(f"rl.reward_term_params names {', '.join(unknown)}, which rl.reward_terms does not use")
        self.weights: dict[str, float] = {}
        self.terms: dict[str, Callable[[TermInputs], list[float]]] = {}
        for name, weight in weights.items():
            term = REWARD_TERMS.get(name)  # (an unknown name lists the valid ones)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise CredoError(f"rl.reward_terms[{name!r}]: the weight must be a finite number, got {weight!r}")
            kwargs = params.get(name, {})
            if name in STATEFUL or isinstance(term, type):  # (a class: a term with parameters, built per run)
                try:
                    term = term(**kwargs)
                except TypeError as exc:
                    raise CredoError(f"rl.reward_term_params[{name!r}]: {exc}") from None
            elif kwargs:
                raise CredoError(f"rl.reward_term_params[{name!r}]: the {name} term takes no parameters")
            self.weights[name], self.terms[name] = float(weight), term
        if "math" in self.terms:
            from credo.rewards.math_answers import check_math_verify

            check_math_verify()
        self._warned: set[str] = set()

    def __call__(self, inputs: TermInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """rewards [B] float32 and {"reward/<name>": batch mean, "reward/<name>_errors": 1 if it raised}."""
        total = [0.0] * len(inputs.texts)
        metrics: dict[str, float] = {}
        for name, term in self.terms.items():
            try:
                values = [float(v) for v in term(inputs)]
                if len(values) != len(total):
                    raise ValueError(f"returned {len(values)} values for {len(total)} completions")
                values = [v if math.isfinite(v) else 0.0 for v in values]
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                values = [0.0] * len(total)
                metrics[f"reward/{name}_errors"] = 1.0
                if name not in self._warned:
                    self._warned.add(name)
                    print(f"credo: reward term {name!r} raised {type(exc).__name__}: {exc}; it scores 0.0 for "
                          f"this step", file=sys.stderr, flush=True)
            metrics[f"reward/{name}"] = sum(values) / max(len(values), 1)
            total = [t + self.weights[name] * v for t, v in zip(total, values)]
        return torch.tensor(total, dtype=torch.float32), metrics

    def commit(self, inputs: TermInputs) -> None:
        """Let stateful terms see the step (HAPO's history), after its rewards were computed."""
        for term in self.terms.values():
            if callable(getattr(term, "commit", None)):
                term.commit(inputs)

    def state(self) -> dict[str, Any]:
        return {name: term.state() for name, term in self.terms.items() if callable(getattr(term, "state", None))}

    def load_state(self, state: dict[str, Any]) -> None:
        for name, term in self.terms.items():
            if callable(getattr(term, "load_state", None)):
                if name not in state:
                    raise CredoError(f"the checkpoint has no state for reward term {name!r}")
                term.load_state(state[name])

    @property
    def stateful(self) -> bool:
        return any(callable(getattr(t, "state", None)) for t in self.terms.values())


def make_reward_mix(weights: dict[str, float], params: dict[str, dict[str, Any]] | None) -> RewardMix | None:
    """None when no term is configured (the task's own reward)."""
    if not weights:
        if params:
            raise CredoError("rl.reward_term_params is set but rl.reward_terms is empty")
        return None
    return RewardMix(weights, params)


def check_reward_terms(weights: dict[str, float], params: dict[str, dict[str, Any]] | None, task_class: Any,
                       task_name: str) -> None:
    """Before anything loads (train/run.py::validate): names, weights and parameters, and that a term
    counting tool calls has a task with tools (task_class None: the task's name is checked elsewhere)."""
    make_reward_mix(weights, params)
    for name in sorted(NEEDS_TOOL_CALLS & set(weights)):
        if task_class is not None and not callable(getattr(task_class, "tool_calls", None)):
            raise CredoError(f"rl.reward_terms {name!r} counts tool calls, but task {task_name!r} has none "
                             f"(no tool_calls); use a multi-turn task with tools (keyvalue)")


CATALOG = [
    Entry("task", "the task verifier's reward", "-", "confirmed", "task"),
    Entry("format", "1 when the task's format check passed", "-", "confirmed", "task"),
    Entry("math", "1 when the tagged answer equals the reference under math-verify (LaTeX / numeric)",
          "math-verify (Hugging Face)", "confirmed", "reference answers"),
    Entry("hapo_length", "history-aware cosine length reward against the shortest correct length per problem",
          "HAPO: Training Language Models to Reason Concisely via History-Aware Policy Optimization (arXiv 2505.11225)",
          "confirmed", "repeated prompts (rl.prompt_pool)",
          training="works (needs rl.prompt_pool > 0 for its history to matter; HAPO's r_rep is the `repetition` term)"),
    Entry("otc", "tool-efficiency reward peaking at the fewest calls of a correct rollout, times correctness",
          "Acting Less is Reasoning More! Teaching Model to Act Efficiently (OTC-PO, arXiv 2504.14870)",
          "confirmed", "a multi-turn task with tool_calls (keyvalue)",
          training="works on keyvalue (the only tool task so far; its tools are table lookups)"),
] + LIKELIHOOD_CATALOG + AUTORULE_CATALOG + adactrl.CATALOG + cogre.CATALOG + gencls.CATALOG + repetition.CATALOG
