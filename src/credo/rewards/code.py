"""A code-execution verifier and `combine`, the one reward composition primitive.

Threat model. A completion is hostile input twice over: as text (huge, malformed, no code at all)
and as a program (it may loop, fork, allocate, print, touch host files or the network). The text
is only scanned up to MAX_SCAN_CHARS with non-backtracking patterns; the program only ever runs in
`credo.rewards.sandbox.run_sandboxed` (separate process, time/memory/process/output limits, no
network, private filesystem; see that module for what is enforced and how).

`score_program` runs the extracted program once per (stdin, expected stdout) case and returns the
Score and an outcome: "ok" (every case passed), "wrong" (some case printed something else, or no
code was found), or the sandbox's outcome ("timeout", "memory", "crash", "output_limit",
"sandbox_error"). A "sandbox_error" is the sandbox's failure, not the model's: it is returned as
such (with `error_reward`) so the caller counts it, never folded into "wrong".

`combine(weights, fns, error_reward)` makes a weighted sum of reward functions. Each function is
called under a per-function timeout in a worker thread; one that raises, returns something that is
not a finite number, or does not answer in time is counted and scored with `error_reward`.
What is NOT enforced: a Python thread cannot be killed, so a hung reward function keeps its thread
(a daemon) and whatever it holds until it returns by itself. After `max_hung` such threads of one
function are still alive, that function is no longer called (each call is counted as
"skipped_hung"). Reward code that may run long or untrusted belongs in the sandbox, not here.

>>> reward = combine([1.0, 0.5], [lambda text: 1.0, lambda text: 1 / 0], error_reward=-1.0)
>>> reward("anything")  # 1.0 * 1.0 + 0.5 * error_reward
0.5
>>> reward.counts["raised"]
1
>>> extract_code("Here:\\n```python\\nprint(1)\\n```")
'print(1)\\n'
>>> extract_code("<answer>print(2)</answer>")
'print(2)'
>>> extract_code("no code") is None
True
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from typing import Any, Callable, Sequence

from credo.errors import CredoError
from credo.rewards.sandbox import run_sandboxed
from credo.tasks.base import Score

CODE_OUTCOMES = ("ok", "wrong", "timeout", "memory", "crash", "output_limit", "sandbox_error")
MAX_SCAN_CHARS = 100_000  # a program longer than this is not looked at (it is "wrong")

# Lazy `.*?` between fixed delimiters: linear time, no catastrophic backtracking.
_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n`]*\r?\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_code(text: object) -> str | None:
    """The program in a completion, or None.

    Order: the last ```python (or ```py) fence; else the first <answer>...</answer> tag (a fence
    inside it is unwrapped); else the last unlabelled fence. Only the first MAX_SCAN_CHARS are read.
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_SCAN_CHARS]
    fenced = _PYTHON_FENCE.findall(text)
    if fenced:
        return fenced[-1]
    answer = _ANSWER.search(text)
    if answer is not None:
        inner = answer.group(1)
        fence = _ANY_FENCE.search(inner)
        code = fence.group(1) if fence else inner.strip()
        return code or None
    fenced = _ANY_FENCE.findall(text)
    return fenced[-1] if fenced else None


def outcome_counts(scores: Sequence[Any], prefix: str = "sandbox_") -> dict[str, float]:
    """Per-outcome counts of scores that carry one (`Score.outcome`, set by code-executing tasks):
    {"sandbox_ok": 3.0, "sandbox_wrong": 1.0, ...} over every CODE_OUTCOMES name; {} when no score
    carries an outcome (the other tasks), so their metrics stay as they were."""
    outcomes = [getattr(s, "outcome", None) for s in scores]
    if all(o is None for o in outcomes):
        return {}
    counts = Counter(o for o in outcomes if o is not None)
    return {f"{prefix}{name}": float(counts.get(name, 0)) for name in CODE_OUTCOMES}


def _is_number(value: object) -> bool:
    """A finite int or float (a bool is not a reward)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _normalise(output: str) -> str:
    """Outputs compare equal up to trailing spaces on each line and trailing blank lines."""
    return "\n".join(line.rstrip() for line in output.strip("\n").splitlines()).rstrip()


def score_program(
    completion_text: object,
    tests: Sequence[tuple[str, str]],
    *,
    error_reward: float = 0.0,
    **sandbox_limits: Any,
) -> tuple[Score, str]:
    """Run the completion's program on every (stdin, expected stdout) case; (Score, outcome).

    Reward 1.0 and outcome "ok" when every case prints the expected output (compared by
    `_normalise`); otherwise reward 0.0 and the first failing case's outcome ("wrong" or the
    sandbox's), except "sandbox_error", which gets `error_reward` so the caller can count it
    apart. `formatted` is whether any code was found. Cases stop at the first failure.
    `sandbox_limits` go to `run_sandboxed` (wall_time_s, cpu_time_s, memory_mb, ...).
    Never raises on the completion; raises CredoError for an empty or malformed `tests`.
    """
    is_case = (lambda t: isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t))
    if not tests or not all(is_case(t) for t in tests):
        raise CredoError("score_program: tests must be a non-empty list of (stdin, expected stdout) string pairs")
    code = extract_code(completion_text)
    if code is None:
        return Score(0.0, False, False), "wrong"
    for stdin, expected in tests:
        result = run_sandboxed(code, stdin=stdin, **sandbox_limits)
        if result.outcome == "sandbox_error":
            return Score(error_reward, False, True), "sandbox_error"
        if result.outcome != "ok":
            return Score(0.0, False, True), result.outcome
        if _normalise(result.stdout) != _normalise(expected):
            return Score(0.0, False, True), "wrong"
    return Score(1.0, True, True), "ok"


class CombinedReward:
    """sum_i weights[i] * fns[i](*args, **kwargs), each call under `timeout_s`; see the module doc.

    counts: failures so far, by kind ("raised", "timeout", "invalid", "skipped_hung") and by
    "<kind>/<function name>". Thread-safe; may be called from several threads at once.
    """

    def __init__(self, weights, fns, error_reward: float = 0.0, *, timeout_s: float = 5.0, max_hung: int = 4):
        weights, fns = list(weights), list(fns)
        if len(weights) != len(fns) or not fns:
            raise CredoError(
                f"combine: need as many weights as functions (at least one), got {len(weights)} and {len(fns)}")
        bad = [w for w in [*weights, error_reward] if not _is_number(w)]
        if bad:
            raise CredoError(f"combine: weights and error_reward must be finite numbers, got {bad}")
        if not all(callable(fn) for fn in fns):
            raise CredoError("combine: every reward function must be callable")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0) or max_hung < 1:
            raise CredoError(f"combine: need timeout_s > 0 and max_hung >= 1, got {timeout_s!r}, {max_hung!r}")
        self.weights, self.fns = [float(w) for w in weights], fns
        self.error_reward, self.timeout_s, self.max_hung = float(error_reward), float(timeout_s), max_hung
        self.names = [getattr(fn, "__name__", type(fn).__name__) for fn in fns]
        self.counts: Counter[str] = Counter()
        self._hung: list[list[threading.Thread]] = [[] for _ in fns]
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs) -> float:
        return sum(w * self._call_one(i, args, kwargs) for i, w in enumerate(self.weights))

    @property
    def hung_threads(self) -> int:
        """Abandoned worker threads still running (each holds a hung reward function)."""
        with self._lock:
            return sum(t.is_alive() for threads in self._hung for t in threads)

    def _fail(self, kind: str, i: int) -> float:
        with self._lock:
            self.counts[kind] += 1
            self.counts[f"{kind}/{self.names[i]}"] += 1
        return self.error_reward

    def _call_one(self, i: int, args, kwargs) -> float:
        with self._lock:
            self._hung[i] = [t for t in self._hung[i] if t.is_alive()]
            skip = len(self._hung[i]) >= self.max_hung
        if skip:
            return self._fail("skipped_hung", i)
        box: dict[str, Any] = {}
        done = threading.Event()

        def target():
            try:
                box["value"] = self.fns[i](*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - counted and scored with error_reward
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=target, name=f"credo-reward-{self.names[i]}", daemon=True)
        worker.start()
        if not done.wait(self.timeout_s):
            with self._lock:
                self._hung[i].append(worker)
            return self._fail("timeout", i)
        if "error" in box:
            return self._fail("raised", i)
        value = box.get("value")
        if not _is_number(value):
            return self._fail("invalid", i)
        return float(value)


def combine(
    weights: Sequence[float],
    fns: Sequence[Callable[..., float]],
    error_reward: float = 0.0,
    *,
    timeout_s: float = 5.0,
    max_hung: int = 4,
) -> CombinedReward:
    """The weighted sum of reward functions as one reward function (see `CombinedReward`).

    Each function gets the combined reward's arguments unchanged. One that raises, hangs past
    `timeout_s`, or returns a non-finite or non-numeric value contributes weight * error_reward
    and is counted in `.counts`. Raises CredoError for a malformed configuration.
    """
    return CombinedReward(weights, fns, error_reward, timeout_s=timeout_s, max_hung=max_hung)
