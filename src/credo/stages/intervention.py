"""The `int` stage: InT, Intervention Training, supervised fine-tuning on the policy's own failed
rollouts cut at their first error and redirected by a one-step intervention.

Paper: "InT: Self-Proposed Interventions Enable Credit Assignment in LLM Reasoning" (arXiv 2601.14209;
code github.com/intervention-training/int). Outcome RL blames every step of a failed trace; InT puts the
credit on one step instead: the model, shown the reference solution, finds the first critical error of
its attempt and writes a single step to replace it; SFT on (prefix before the error + intervention)
raises the likelihood of the correction exactly where the trace went wrong, before standard RL.

Per round (`rounds`):
1. Rollouts: `samples` completions of each of `prompts_per_round` training prompts (the stage's
   sampling settings, seed from (run.seed, round)), scored by the task's verifier; wrong ones go on
   (identical wrong attempts of a prompt once: the official de-duplication of (problem, attempt)).
2. Steps: an attempt is cut into steps at `step_separator` (default a line, credo's step unit and what
   the arith task's step_truth checks; the official code splits paragraphs, "\\n\\n"), whitespace-only
   steps dropped.
3. Locate and correct. `oracle = false`: the policy gets the proposal prompt (problem, reference
   solution = the task's demonstration, the attempt as numbered steps) and answers
   `<intervention>{"location": N, "content": "..."}</intervention>` (the official output format; N is
   the 1-based step the intervention replaces, N = steps + 1 appends after the last step).
   `oracle = true` (tasks with `step_truth`, e.g. arith's calculator check): the first error is the
   first step scored negative; with none, the step after the last verified one (scored positive), 0
   when none is: a wrong attempt without a false step failed by omission (no or junk answer), so it is
   cut where verified progress stopped. The correction is then the policy's (`correction = "model"`,
   the prompt names the step) or the reference's step at that position (its last step when it is
   shorter; `correction = "reference"`, oracle only), so that a tiny random model yields examples.
   `parse_intervention` never raises: junk, no tag, bad JSON, a location out of range or an empty
   content (the official "no critical error") give no example. With `drop_answer_leaks` a proposed
   content holding the reference answer is dropped (the official oracle-leakage filter).
4. Continuation (optional): with `continuation` or `require_success`, one continuation is sampled by
   the policy after prompt + prefix + intervention and the whole text scored; `require_success` keeps
   only interventions whose continuation is correct (the official optional step 3), `continuation`
   appends the continuation's sampled tokens (and EOS when it stopped) to the training target.
5. SFT: each example is rendered prompt + prefix + intervention (+ continuation); `loss_on =
   "intervention"` puts the loss on the intervention and continuation tokens only (the prefix is the
   policy's own text, context), `"response"` on prefix + intervention as the official LLaMA-Factory run
   does (its response column is the guided attempt). Without a continuation no EOS follows (the official
   "noeos" template: the model must not learn to stop after the intervention). `steps` AdamW steps per
   round over the round's examples in seeded epochs, `batch_size` each; loss = the token mean of -log p
   over the masked tokens. lr `lr` (default 1e-6, the official sft.sh) with linear warm-up over the
   first 10% of the stage's steps and cosine decay to 10% (cosine_with_min_lr 0.1).

Status: reconstructed. Confirmed from the official code: the step-numbered attempt, the
`<intervention>` JSON format, the prefix rule (steps before the location + the content), the leakage
filter, the de-duplication, the optional success filter and the SFT schedule. Assumed: the proposal
prompt is one short turn (the official one has the model first solve the problem guided by the
reference, then verify in a second turn with a long rubric and a self-check, sized for a 4B model);
the oracle locator and the reference correction are credo's (the paper has the model do both); the
default loss mask excludes the prefix (the brief's choice; `loss_on = "response"` is the official one).

Held-out evaluation after every round that trained (stage "round_<r>") and after the stage (stage
"int", also `summary["final"]`); checkpoints after such rounds and every `checkpoint_every` steps; a
resume is bitwise (the round's examples ride in the checkpoint; rollouts are seeded by (seed, round)).
A round with no example trains nothing and writes no checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, register_stage

CORRECTIONS = ("model", "reference")
LOSS_ON = ("intervention", "response")


@dataclass
class InTParams:
    rounds: int = 1
    prompts_per_round: int = 16
    samples: int = 4  # rollouts per prompt
    oracle: bool = False  # locate the first error with the task's step_truth instead of the model
    correction: str = "model"  # "model" (the policy writes it) or "reference" (oracle only)
    step_separator: str = "\n"  # the official code's steps are paragraphs: "\n\n"
    proposal_tokens: int = 256  # the budget of a proposal (the official one is 4096)
    drop_answer_leaks: bool = True
    continuation: bool = False  # append the policy's continuation after the intervention
    require_success: bool = False  # keep only interventions whose continuation is correct
    loss_on: str = "intervention"  # "intervention" (+ continuation) or "response" (prefix too, official)
    steps: int = 16  # optimizer steps per round
    batch_size: int = 8  # examples per step
    lr: float = 1e-6
    max_grad_norm: float = 1.0
    max_response_tokens: int = 256
    checkpoint_every: int = 0  # optimizer steps; 0 = after each round

    def check(self) -> None:
        for name in ("rounds", "prompts_per_round", "samples", "proposal_tokens", "steps", "batch_size",
                     "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, valid in (("correction", CORRECTIONS), ("loss_on", LOSS_ON)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} {getattr(self, name)!r} is unknown; valid: {', '.join(valid)}")
        if self.correction == "reference" and not self.oracle:
            raise ValueError("correction = \"reference\" needs oracle = true (the reference step at the "
                             "oracle's location)")
        if not self.step_separator:
            raise ValueError("step_separator must be a non-empty string (e.g. \"\\n\")")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class InTExample:
    """One SFT example (JSON-able: it rides in checkpoints). location: the 0-based index of the replaced
    step (prefix = the attempt's steps before it); continuation_ids: the policy's sampled tokens after
    the intervention ([] = none); eos: append the tokenizer's EOS after them."""

    prompt: str
    attempt: str
    prefix: str
    intervention: str
    location: int
    n_steps: int
    continuation_ids: list = field(default_factory=list)
    eos: bool = False


# ---- steps, the oracle and the parser (pure functions; never raise on model output) ----

def split_steps(text: str, separator: str = "\n") -> list[str]:
    """The attempt's steps: pieces between separators, whitespace-only ones dropped.

    >>> split_steps("23+45=68\\n\\n<answer>68</answer>\\n")
    ['23+45=68', '<answer>68</answer>']
    """
    return [s for s in str(text).split(separator) if s.strip()]


def prefix_text(steps: Sequence[str], index: int, separator: str = "\n") -> str:
    """The steps before `index` joined by the separator, ending with one ('' for index 0).

    >>> prefix_text(["a=1", "b=2", "c"], 2), prefix_text(["a=1"], 0)
    ('a=1\\nb=2\\n', '')
    """
    return separator.join(steps[:index]) + (separator if index > 0 else "")


def oracle_first_error(truth: Sequence[float]) -> int:
    """The 0-based step to replace from per-step truth (+1 right, -1 wrong, 0 neutral): the first negative
    step; with none, the step after the last positive one (0 when none is positive).

    >>> oracle_first_error([1, -1, -1]), oracle_first_error([0, 1, 0]), oracle_first_error([1]), oracle_first_error([])
    (1, 2, 1, 0)
    """
    for i, value in enumerate(truth):
        if value < 0:
            return i
    return max((i for i, value in enumerate(truth) if value > 0), default=-1) + 1


def safe_step_truth(task, example, steps: Sequence[str]) -> list[float] | None:
    """task.step_truth(example, steps) as floats, or None when it raises or returns anything but one finite
    number per step (model output never crashes a round)."""
    fn = getattr(task, "step_truth", None)
    if fn is None:
        return None
    try:
        out = list(fn(example, list(steps)))
    except Exception:  # noqa: BLE001 - a verifier that fails on junk locates nothing
        return None
    if len(out) != len(steps) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) for v in out):
        return None
    return [float(v) for v in out]


def reference_step(reference: str, index: int, separator: str = "\n") -> str | None:
    """The reference solution's step at `index`, its last step when it is shorter, None when it has none."""
    steps = split_steps(reference, separator)
    return steps[min(index, len(steps) - 1)].strip() if steps else None


@dataclass(frozen=True)
class Proposal:
    location: int  # 1-based: the step the intervention replaces (n_steps + 1: after the last step)
    content: str


MAX_PROPOSAL_CHARS = 20_000  # a proposal is short; hostile output is only scanned this far (from the end)
_BLOCK = re.compile(r"<intervention>(.*?)</intervention>", re.DOTALL)
_OPEN = re.compile(r"<intervention>(.*)\Z", re.DOTALL)
_LOCATION = re.compile(r"""["']?location["']?\s*[:=]\s*["']?\s*(?:[A-Za-z_]+\s*)?(-?\d+)""", re.IGNORECASE)
_CONTENT = re.compile(r"""["']content["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", re.DOTALL)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (m := re.search(r"-?\d+", value)):
        return int(m.group(0))
    return None


def _fields(body: str) -> tuple[Any, Any]:
    """(content, location) from the tag's body: JSON first, then the official code's lenient regexes."""
    text = body.strip().strip("`").strip()
    if text[:4].lower() == "json":
        text = text[4:].strip()
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(text[start: end + 1])
            if isinstance(data, dict):
                return data.get("content"), data.get("location")
        except ValueError:
            pass
    content = None
    if (m := _CONTENT.search(text)) is not None:
        raw = m.group(1) if m.group(1) is not None else m.group(2)
        try:
            content = json.loads(f'"{raw}"')
        except ValueError:
            content = raw
    where = _LOCATION.search(text)
    return content, (int(where.group(1)) if where else None)


def parse_intervention(text, n_steps: int, location: int | None = None) -> Proposal | None:
    """The last `<intervention>{"location": N, "content": "..."}</intervention>` of a proposal, or None.

    An unclosed last tag is read to the end. `location` (1-based) overrides the parsed one (the oracle
    gave it). None when there is no tag, the content is missing, empty or not text, or the location is
    not an integer in 1..n_steps + 1. Never raises.

    >>> parse_intervention('ok <intervention>{"content": "12+30=42", "location": "Substep 2"}</intervention>', 3)
    Proposal(location=2, content='12+30=42')
    >>> parse_intervention("no idea", 3)
    >>> parse_intervention('<intervention>{"content": "x", "location": 9}</intervention>', 3)
    """
    try:
        if not isinstance(text, str):
            return None
        text = text[-MAX_PROPOSAL_CHARS:]
        blocks = _BLOCK.findall(text)
        if blocks:
            body = blocks[-1]
        elif (m := _OPEN.search(text)) is not None:
            body = m.group(1)
        else:
            return None
        content, where = _fields(body)
        where = location if location is not None else _as_int(where)
        if isinstance(content, (int, float)) and not isinstance(content, bool):
            content = str(content)
        if not isinstance(content, str) or not content.strip() or where is None or not 1 <= where <= n_steps + 1:
            return None
        return Proposal(int(where), content.strip())
    except Exception:  # noqa: BLE001 - model output never crashes a round
        return None


PROPOSE = (
    "A student answered the problem below and got it wrong. Check the attempt step by step against the "
    "reference solution.\n\n# Problem\n{problem}\n\n# Reference solution\n{reference}\n\n# Student attempt\n"
    "{attempt}\n\nFind the FIRST critical error: a wrong fact or calculation, or an invalid deduction, that no "
    "later step corrects (if the attempt stops before a right answer, the missing step, numbered one past the "
    "last). Write ONE step, in the student's own voice, to replace it so that the student can go on to the "
    "right solution; do not state the final answer. Reply with\n"
    "<intervention>{{\"location\": STEP_NUMBER, \"content\": \"THE NEW STEP\"}}</intervention>")
CORRECT = (
    "A student answered the problem below and got it wrong.\n\n# Problem\n{problem}\n\n# Reference solution\n"
    "{reference}\n\n# Student attempt\n{attempt}\n\nStep {location} is the first step that goes wrong (a step "
    "one past the last means the attempt stopped too early). Write ONE step, in the student's own voice, to "
    "replace it so that the student can go on to the right solution; do not state the final answer. Reply with\n"
    "<intervention>{{\"location\": {location}, \"content\": \"THE NEW STEP\"}}</intervention>")


def proposal_message(problem: str, reference: str, steps: Sequence[str], location: int | None = None) -> str:
    """The user message asking for an intervention; `location` (1-based) given: the oracle located the error."""
    attempt = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps)) or "(empty)"
    if location is None:
        return PROPOSE.format(problem=problem, reference=reference, attempt=attempt)
    return CORRECT.format(problem=problem, reference=reference, attempt=attempt, location=location)


# ---- training rows ----

def context_ids(tokenizer, task, ex: InTExample) -> tuple[list[int], list[int], list[int]]:
    """(rendered prompt, prefix, intervention) token ids, each segment tokenized on its own so the masks
    fall exactly on segment boundaries; a continuation is sampled after their concatenation."""
    from credo.tasks.base import Example, render_prompt

    encode = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []  # noqa: E731
    head = encode(render_prompt(tokenizer, task, Example(ex.prompt, "", "")))
    return head, encode(ex.prefix), encode(ex.intervention)


def intervention_row(tokenizer, task, ex: InTExample, *, loss_on: str = "intervention",
                     max_response_tokens: int = 256) -> tuple[list[int], list[bool]]:
    """(ids [L], loss mask [L]) of prompt + prefix + intervention + continuation (+ EOS); the response is cut
    at max_response_tokens. The mask covers the intervention and continuation (and EOS), plus the prefix with
    loss_on = "response"; never the prompt."""
    head, pre, iv = context_ids(tokenizer, task, ex)
    tail = list(ex.continuation_ids) + ([tokenizer.eos_token_id] if ex.eos else [])
    body = pre + iv + tail
    train = [loss_on == "response"] * len(pre) + [True] * (len(iv) + len(tail))
    ids, mask = head + body[:max_response_tokens], [False] * len(head) + train[:max_response_tokens]
    if mask:
        mask[0] = False  # position 0 is never scored (the shift convention)
    return ids, mask


def int_batch(tokenizer, task, examples: Sequence[InTExample], *, loss_on: str, max_response_tokens: int):
    """tokens [B, T], attention [B, T], loss_mask [B, T] (right padding)."""
    rows = [intervention_row(tokenizer, task, e, loss_on=loss_on, max_response_tokens=max_response_tokens)
            for e in examples]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.bool)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, mask) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = True
        loss_mask[i, : len(mask)] = torch.tensor(mask)
    return tokens, attention, loss_mask


def int_loss(model, tokenizer, task, examples, params: InTParams, dtype) -> tuple[torch.Tensor, dict[str, float]]:
    """The token mean of -log p over the masked tokens (with grad) and the step's metrics."""
    from credo.logprobs import token_logprobs
    from credo.rollout.torch_engine import autocast_context

    tokens, attention, mask = int_batch(tokenizer, task, examples, loss_on=params.loss_on,
                                        max_response_tokens=params.max_response_tokens)
    device = next(model.parameters()).device
    tokens, attention, mask = tokens.to(device), attention.to(device), mask.to(device)
    with autocast_context(dtype, device):
        logprobs = token_logprobs(model, tokens, attention, mask).float()
    n = int(mask.sum())
    loss = -(logprobs * mask).sum() / max(n, 1)
    return loss, {"tokens": float(n)}


# ---- one round's examples ----

def _chat(tokenizer, message: str) -> list[int]:
    """A user turn without the task's system prompt (the proposal is a different job than the task's)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = f"{message}\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def wrong_attempts(st, params: InTParams, r: int, stats: dict) -> list[tuple[Any, str]]:
    """(example, attempt text) of the round's wrong rollouts, each distinct attempt of a prompt once."""
    from credo.train.evaluate import encode_prompts, safe_score, too_long
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    examples = st.task.examples("train", params.prompts_per_round, seed=st.cfg.run.seed + 7919 * (r + 1) + 17)
    prompts = encode_prompts(st.tokenizer, st.task, examples)
    drop = set(too_long(prompts, max_prompt_tokens(st.model, st.sampling, st.engine)))
    examples = [e for i, e in enumerate(examples) if i not in drop]
    groups = st.engine.generate([p for i, p in enumerate(prompts) if i not in drop], params.samples, st.sampling,
                                seed=step_seed(st.cfg.run.seed, 600_000 + r))
    out, correct = [], 0
    for ex, group in zip(examples, groups):
        seen = set()
        for c in group:
            ok = bool(safe_score(st.task, c.text, ex)[0].correct)
            correct += ok
            if not ok and c.text not in seen:
                seen.add(c.text)
                out.append((ex, c.text))
    n = sum(len(g) for g in groups)
    stats.update(prompts=float(len(examples)), skipped_prompts=float(len(drop)), rollouts=float(n),
                 sample_accuracy=correct / max(n, 1), wrong_attempts=float(len(out)))
    return out


def locate_and_correct(st, params: InTParams, attempts, r: int, stats: dict) -> list[tuple[Any, InTExample]]:
    """(example, InTExample) for every attempt whose error was located and corrected (see the module docstring)."""
    from credo.rollout.base import SamplingParams
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    sep, items, texts = params.step_separator, [], {}
    counts = dict(oracle_failures=0, unparsed=0, answer_leaks=0, proposal_too_long=0)
    for ex, text in attempts:
        steps = split_steps(text, sep)
        index = None
        if params.oracle:
            truth = safe_step_truth(st.task, ex, steps)
            if truth is None:
                counts["oracle_failures"] += 1
                continue
            index = oracle_first_error(truth)
        items.append((ex, text, steps, index))
    sampling = SamplingParams(st.sampling.temperature, st.sampling.top_p, st.sampling.top_k, params.proposal_tokens,
                              ("</intervention>",))
    if params.correction == "model" and items:  # one batched call: every proposal of the round
        limit = max_prompt_tokens(st.model, sampling, st.engine)
        asks = [_chat(st.tokenizer, proposal_message(ex.prompt, ex.demonstration, steps,
                                                     None if index is None else index + 1))
                for ex, _, steps, index in items]
        fits = [i for i, a in enumerate(asks) if limit is None or len(a) <= limit]
        counts["proposal_too_long"] = len(asks) - len(fits)
        answers = st.engine.generate([asks[i] for i in fits], 1, sampling, seed=step_seed(st.cfg.run.seed, 650_000 + r))
        texts = dict(zip(fits, (g[0].text for g in answers)))
    out = []
    for i, (ex, text, steps, index) in enumerate(items):
        if params.correction == "reference":
            content = reference_step(ex.demonstration, index, sep)
            proposal = None if content is None else Proposal(index + 1, content)
        else:
            proposal = parse_intervention(texts.get(i), len(steps), None if index is None else index + 1)
            if proposal is None and i in texts:
                counts["unparsed"] += 1
        if proposal is None:
            continue
        answer = str(ex.answer).strip()
        if params.correction == "model" and params.drop_answer_leaks and answer and answer in proposal.content:
            counts["answer_leaks"] += 1
            continue
        where = proposal.location - 1
        out.append((ex, InTExample(ex.prompt, text, prefix_text(steps, where, sep), proposal.content, where,
                                   len(steps))))
    stats.update({k: float(v) for k, v in counts.items()}, proposals=float(len(texts)))
    stats["mean_location"] = sum(e.location / max(e.n_steps, 1) for _, e in out) / len(out) if out else 0.0
    return out


def continue_examples(st, params: InTParams, located, r: int, stats: dict) -> list[tuple[Any, InTExample]]:
    """Sample one continuation after each prompt + prefix + intervention; keep / extend per the params."""
    from credo.train.evaluate import safe_score
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    limit = max_prompt_tokens(st.model, st.sampling, st.engine)
    contexts = [sum(context_ids(st.tokenizer, st.task, e), []) for _, e in located]
    fits = [i for i, c in enumerate(contexts) if limit is None or len(c) <= limit]
    groups = st.engine.generate([contexts[i] for i in fits], 1, st.sampling,
                                seed=step_seed(st.cfg.run.seed, 700_000 + r))
    eos_ids = getattr(st.engine, "eos_ids", {st.tokenizer.eos_token_id})
    out, success = [], 0
    for i, group in zip(fits, groups):
        ex, e = located[i]
        c = group[0]
        ok = bool(safe_score(st.task, e.prefix + e.intervention + c.text, ex)[0].correct)
        success += ok
        if params.require_success and not ok:
            continue
        if params.continuation:
            e = dataclasses.replace(e, continuation_ids=list(c.token_ids),
                                    eos=c.finish_reason == "stop" and not (c.token_ids and c.token_ids[-1] in eos_ids))
        out.append((ex, e))
    stats.update(guided_success=success / max(len(fits), 1), continuation_too_long=float(len(located) - len(fits)))
    return out


def collect_round(st, params: InTParams, r: int) -> tuple[list[InTExample], dict[str, float]]:
    """A round's SFT examples from the current policy, and the round's counts."""
    st.model.eval()
    st.engine.load_weights(st.model, version=r)
    stats: dict[str, float] = {}
    located = locate_and_correct(st, params, wrong_attempts(st, params, r, stats), r, stats)
    stats["located"] = float(len(located))
    if params.continuation or params.require_success:
        located = continue_examples(st, params, located, r, stats)
    stats["examples"] = float(len(located))
    return [e for _, e in located], stats


def train_round(st, params: InTParams, optimizer, examples: Sequence[InTExample], r: int, *, step: int,
                first: int) -> int:
    """Round r's SFT steps `first`.. on its examples (checkpoints every `checkpoint_every` steps, the
    examples inside); returns the global step count after them."""
    from credo.stages.dpo import step_pairs
    from credo.train.optim import lr_at, set_lr

    total = params.rounds * params.steps
    st.model.train()
    for s in range(first, params.steps):
        started = time.perf_counter()
        lr = lr_at(step, total, peak=params.lr, warmup=max(1, total // 10), decay="cosine", min_ratio=0.1)
        set_lr(optimizer, lr)
        batch = step_pairs(examples, s, params.batch_size, st.cfg.run.seed * 31 + r)
        loss, metrics = int_loss(st.model, st.tokenizer, st.task, batch, params, st.dtype)
        loss.backward()
        grad_norm = st.update(optimizer, params.max_grad_norm, apply=metrics["tokens"] > 0)
        step += 1
        st.writer.write({"phase": "int", "step": step - 1, "round": r, "lr": lr, "loss": float(loss.detach()),
                         "grad_norm": grad_norm, **metrics, "step_time": time.perf_counter() - started})
        if params.checkpoint_every and step % params.checkpoint_every == 0 and s + 1 < params.steps:
            st.save(f"step_{step}", optimizer=optimizer, state={
                "step": step, "round": r, "in_round": s + 1, "examples": [dataclasses.asdict(e) for e in examples]})
    return step


def run_int(cfg, params: InTParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.faults import maybe_die
    from credo.stages.common import open_stage
    from credo.tasks import make_task
    from credo.train.optim import make_optimizer

    if params.oracle and getattr(make_task(cfg.task.name, **cfg.task.params), "step_truth", None) is None:
        raise CredoError(f"the int stage's oracle = true needs a task with step_truth (e.g. arith); task "
                         f"{cfg.task.name!r} has none")
    st = open_stage(cfg, "int", params, resume=resume)
    optimizer = make_optimizer(st.model, params.lr, weight_decay=0.0)
    step, first_round, first_in_round, examples = 0, 0, 0, None
    checkpoint = st.resume_from(optimizer=optimizer) if resume else None
    if checkpoint is not None:
        step, first_round = int(checkpoint.state["step"]), int(checkpoint.state["round"])
        first_in_round = int(checkpoint.state["in_round"])
        examples = [InTExample(**e) for e in checkpoint.state["examples"]] if checkpoint.state.get("examples") else None
    elif cfg.run.eval_base:
        st.evaluate("base", after_step=0)
    for r in range(first_round, params.rounds):
        if first_in_round == 0 or examples is None:
            started = time.perf_counter()
            examples, stats = collect_round(st, params, r)
            maybe_die("rollout")
            st.writer.write({"phase": "interventions", "step": step, "round": r, **stats,
                             "gen_time": time.perf_counter() - started})
            if not examples:  # (no checkpoint either: a resume redoes this round's seeded rollouts exactly)
                print(f"credo: int round {r}: no intervention (no wrong rollout, or none located and parsed); "
                      f"the round trains nothing", flush=True)
                continue
        step = train_round(st, params, optimizer, examples, r, step=step, first=first_in_round)
        first_in_round = 0
        st.evaluate(f"round_{r}", after_step=step)
        st.save(f"step_{step}", optimizer=optimizer,
                state={"step": step, "round": r + 1, "in_round": 0, "examples": None})
    if "int" not in st.summary:  # (a resume after the last evaluation already holds it)
        st.evaluate("int", after_step=step)
    st.summary["final"] = dict(st.summary["int"])
    st.save("final", state={"step": step, "round": params.rounds, "in_round": 0, "examples": None, "final": True})
    return st.finish()


register_stage(StageKind("int", InTParams, run_int,
                         "InT intervention training: SFT on the policy's failed rollouts cut at their first error + "
                         "a one-step correction (self-proposed, or located by the task's step_truth)"))

CATALOG = [
    Entry("int", "intervention training: the policy, shown the reference, locates the first error of its wrong "
          "rollouts and writes a one-step correction; SFT on prefix + intervention (loss on the intervention)",
          "InT: Self-Proposed Interventions Enable Credit Assignment in LLM Reasoning (arXiv 2601.14209)",
          "reconstructed", "reference solutions (the task's demonstrations)",
          training="works (one-turn proposal prompt instead of the official two-turn rubric; a 135M model rarely "
                   "writes a parseable proposal)"),
    Entry("int (oracle = true)", "InT with the first error located by the task's step_truth (calculator-checked "
          "steps); the correction from the policy or the reference's step (correction = reference)",
          "InT: Self-Proposed Interventions Enable Credit Assignment in LLM Reasoning (arXiv 2601.14209)",
          "reconstructed", "a task with step_truth (arith)",
          training="works (the oracle and the reference correction stand in for the model's self-verification)"),
]
