"""QwenLong-L1's progressive context scaling (`rl.curriculum = "context_length"`): curriculum-guided
phased RL by prompt length, with difficulty-aware retrospective sampling.

Paper: "QwenLong-L1: Towards Long-Context Large Reasoning Models with Reinforcement Learning"
(Wan et al., arXiv 2505.17667). The official repository (github:Tongyi-Zhiwen/QwenLong-L1) holds the
verl fork, the DAPO launch script and the evaluation code, but no curriculum or retrospective-sampling
code, so both rules below are reconstructed from the paper's description.

    rl.curriculum = "context_length"
    rl.curriculum_params = {"levels": [128, 256, 512]}                      phases by prompt tokens
    rl.curriculum_params = {"levels": [128, 256], "retrospective": true, "retro_ratio": 0.25}

Phases. `levels` = K increasing prompt-token limits L_0 < ... < L_{K-1}. The run's one prompt list
(the task's training prompts, rl.prompt_pool if set, else steps x prompts_per_step; a prompt's
persistent id is its index there, train/prompts.py) is measured once with the tokenizer exactly as
`rl_step` encodes it (`encode_prompts`: the rendered chat prompt, no added BOS). RL step t is in
phase k = floor(t K / steps) (an equal share of the steps each, as "linear"), and phase k draws only
prompts with

    L_{k-1} < |x| <= L_k          (L_{-1} = 0; the paper's phase-k input-length band, the default)
    |x| <= L_k                    (curriculum_params.include_shorter = true: every prompt that fits)

Prompts longer than L_{K-1} are never drawn. Within a phase its prompts are visited in seeded epochs
(`scheduled_prompt_ids` over the phase's members, seed + k), so a phase that lasts long repeats them.
A phase with no prompt is a CredoError naming the level, raised in setup before the warm-up.

Retrospective sampling (curriculum_params.retrospective = true). Every scored completion updates its
prompt's counts (samples n_i, correct c_i; state.json "curriculum" in every RL checkpoint, so
--resume is exact). From phase 1 on, R = floor(retro_ratio x prompts_per_step + 1/2) of each step's
prompts are drawn from the earlier phases' prompts (first eligible phase < k) that have been sampled,
with probability proportional to their difficulty

    d_i = 1 - c_i / n_i           (1 - mean train accuracy; a prompt never sampled has none)

(without replacement when at least R of them have d_i > 0, else with replacement; all-zero
difficulties draw uniformly), from a generator seeded from (seed, step); the other P - R come from
the current phase. Reconstructed, with what was assumed:
- the band rule L_{k-1} < |x| <= L_k is the paper's phase definition as we read it; it could not be
  checked against code (none is released), so `include_shorter` offers the cumulative reading;
- the paper scores difficulty by the inverse mean reward of the sampled outputs; 1 - mean accuracy is
  used instead: the same ranking for binary rewards, and finite for prompts never solved (the inverse
  is infinite there), so weights stay proportional;
- the paper gives no count for the retained examples; a fixed fraction of each step (retro_ratio,
  default 0.25, not a paper constant) drawn proportionally is our rule.
Every step logs curriculum_index, context_limit (L_k), retro_prompts (R actually drawn) and
retro_pool (how many earlier-phase prompts have a difficulty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.train.prompts import scheduled_prompt_ids

KIND = "context_length"
_RETRO_SALT = 1_000_039  # (another prime than train/prompts.py's: retrospective draws are their own stream)


def phase_index(step: int, steps: int, phases: int) -> int:
    """Phase of RL step `step`: floor(step x phases / steps), capped at the last (as "linear")."""
    return min(phases - 1, step * phases // max(steps, 1))


def first_phase(length: int, limits: Sequence[int]) -> int | None:
    """The first phase whose limit admits a prompt of `length` tokens (None: longer than every limit)."""
    return next((k for k, limit in enumerate(limits) if length <= limit), None)


def phase_members(lengths: Sequence[int], limits: Sequence[int], k: int, include_shorter: bool = False) -> list[int]:
    """Ids (indices into lengths [N]) phase k draws from: L_{k-1} < |x| <= L_k, or |x| <= L_k."""
    if include_shorter:
        return [i for i, n in enumerate(lengths) if n <= limits[k]]
    return [i for i, n in enumerate(lengths) if first_phase(n, limits) == k]


def difficulty(samples: float, correct: float) -> float | None:
    """1 - mean accuracy of a prompt's scored completions; None when it was never sampled."""
    return None if samples <= 0 else 1.0 - correct / samples


def retro_count(per_step: int, ratio: float) -> int:
    """R = floor(ratio x per_step + 1/2): the retrospective share of a step's prompts (halves round up)."""
    return int(math.floor(ratio * per_step + 0.5))


def retrospective_draw(step: int, n: int, pool: Sequence[int], difficulties: Sequence[float], seed: int) -> list[int]:
    """n ids from pool [M] with probability proportional to difficulties [M] (>= 0), seeded from (seed, step).

    Without replacement when at least n ids have positive difficulty, else with replacement; all-zero
    difficulties (every pooled prompt always solved) draw uniformly. Empty pool or n = 0: [].
    """
    if n <= 0 or not pool:
        return []
    w = torch.tensor(list(difficulties), dtype=torch.float64).clamp(min=0.0)
    if float(w.sum()) <= 0.0:
        w = torch.ones_like(w)
    generator = torch.Generator().manual_seed(seed * _RETRO_SALT + step)
    replace = n > int((w > 0).sum())
    picks = torch.multinomial(w / w.sum(), n, replacement=replace, generator=generator).tolist()
    return [pool[j] for j in picks]


@dataclass
class ContextSchedule:
    """Phases by prompt length and the retrospective draws (see the module docstring).

    levels: increasing prompt-token limits; lengths [N]: each prompt's encoded length (`bind`);
    stats: persistent prompt id -> [samples, correct], the retrospective state (checkpointed).
    """

    levels: list[int]
    steps: int
    include_shorter: bool = False
    retrospective: bool = False
    retro_ratio: float = 0.25
    lengths: list[int] = field(default_factory=list)
    stats: dict[int, list[float]] = field(default_factory=dict)
    drawn: dict[int, int] = field(default_factory=dict)  # step -> R drawn (for that step's metrics only)
    kind: str = KIND

    def __post_init__(self):
        lv = self.levels
        if not isinstance(lv, list) or not lv or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                          for x in lv) or any(a >= b for a, b in zip(lv, lv[1:])):
            raise CredoError(f"rl.curriculum_params.levels: give increasing prompt-token limits (positive integers, "
                             f"e.g. [128, 256, 512]) for rl.curriculum \"context_length\", got {lv!r}")
        if not 0.0 < self.retro_ratio < 1.0:
            raise CredoError(f"rl.curriculum_params.retro_ratio must be in (0, 1), got {self.retro_ratio}")

    def bind(self, lengths: Sequence[int], task_name: str = "") -> None:
        """Measure once (lengths [N] of the run's prompt list); every phase must hold a prompt."""
        self.lengths = [int(n) for n in lengths]
        span = f"{min(self.lengths)}..{max(self.lengths)}" if self.lengths else "none"
        for k, limit in enumerate(self.levels):
            if not phase_members(self.lengths, self.levels, k, self.include_shorter):
                low = 0 if self.include_shorter or k == 0 else self.levels[k - 1]
                raise CredoError(f"rl.curriculum_params.levels[{k}] = {limit}: no training prompt of task "
                                 f"{task_name!r} has {low} < length <= {limit} tokens (the {len(self.lengths)} "
                                 f"prompts have {span} tokens); change the levels")

    def level_index(self, step: int) -> int:
        return phase_index(step, self.steps, len(self.levels))

    def pool(self, k: int) -> tuple[list[int], list[float]]:
        """Phase k's retrospective pool: earlier-phase prompts with a difficulty, and those difficulties."""
        ids, scores = [], []
        for i in sorted(self.stats):
            first = first_phase(self.lengths[i], self.levels)
            d = difficulty(*self.stats[i])
            if first is not None and first < k and d is not None:
                ids.append(i)
                scores.append(d)
        return ids, scores

    def training_prompts(self, make_task, cfg, task, tokenizer, size: int) -> list:
        """The run's prompt list (`size` training prompts of the task), this schedule bound to their lengths."""
        from credo.train.evaluate import encode_prompts

        prompts = task.examples("train", size, seed=cfg.run.seed)
        self.bind([len(p) for p in encode_prompts(tokenizer, task, prompts)], cfg.task.name)
        return prompts

    def prompt_ids(self, step: int, per_step: int, seed: int, pool: int = 0) -> list[int]:
        """The step's persistent prompt ids: P - R from the current phase (the first P - R of its epoch-ordered
        slice, so R never shifts the epochs), then R retrospective ids. A pure function of (state, step)."""
        k = self.level_index(step)
        members = phase_members(self.lengths, self.levels, k, self.include_shorter)
        pool, scores = self.pool(k) if self.retrospective and k > 0 else ([], [])
        r = min(retro_count(per_step, self.retro_ratio), per_step - 1) if pool else 0
        current = [members[j] for j in scheduled_prompt_ids(step, per_step, len(members), seed + k)[:per_step - r]]
        self.drawn[step] = r
        return current + retrospective_draw(step, r, pool, scores, seed)

    def observe_rows(self, prompt_ids: Sequence[int], correct: Sequence[float]) -> None:
        """After scoring (train/rl.py::rl_step): one persistent id and correctness per completion row [B]."""
        if not self.retrospective:
            return
        for i, c in zip(prompt_ids, correct):
            n, s = self.stats.get(int(i), [0.0, 0.0])
            self.stats[int(i)] = [n + 1.0, s + float(c)]

    def observe(self, step: int, accuracy: float | None) -> None:
        """The step-level hook the level curricula use; the per-prompt counts come from `observe_rows`."""
        self.drawn = {t: r for t, r in self.drawn.items() if t >= step}

    def metrics(self, step: int) -> dict[str, Any]:
        k = self.level_index(step)
        return {"curriculum_index": k, "context_limit": self.levels[k], "retro_prompts": self.drawn.get(step, 0),
                "retro_pool": len(self.pool(k)[0]) if self.retrospective and k > 0 else 0}

    def state(self) -> dict[str, Any]:
        return {"stats": {str(i): list(v) for i, v in sorted(self.stats.items())}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.stats = {int(i): [float(v[0]), float(v[1])] for i, v in state["stats"].items()}


_FIELDS = ("levels", "include_shorter", "retrospective", "retro_ratio")


def make_context_schedule(params: dict[str, Any], *, steps: int) -> ContextSchedule:
    unknown = sorted(set(params) - set(_FIELDS))
    if unknown:
        raise CredoError(f"rl.curriculum_params: unknown field(s) {', '.join(map(repr, unknown))} for rl.curriculum "
                         f"\"context_length\"; valid: {', '.join(_FIELDS)}")
    for name in ("include_shorter", "retrospective"):
        if name in params and not isinstance(params[name], bool):
            raise CredoError(f"rl.curriculum_params.{name} must be true or false, got {params[name]!r}")
    return ContextSchedule(steps=steps, **params)


def check_context_schedule(cfg) -> None:
    """Before anything loads (called by train/curriculum.py::check_curriculum for this kind)."""
    rl = cfg.rl
    schedule = make_context_schedule(rl.curriculum_params, steps=rl.steps)
    if not schedule.retrospective:
        return
    r = retro_count(rl.prompts_per_step, schedule.retro_ratio)
    if not 1 <= r < rl.prompts_per_step:
        raise CredoError(f"rl.curriculum_params.retro_ratio {schedule.retro_ratio} x rl.prompts_per_step "
                         f"{rl.prompts_per_step} gives {r} retrospective prompts a step; it must leave between 1 and "
                         f"{rl.prompts_per_step - 1} (change retro_ratio or prompts_per_step)")
    if cfg.dist.strategy != "none":  # each rank would count only its own rows, so the draws would disagree
        raise CredoError(f"rl.curriculum_params.retrospective with dist.strategy {cfg.dist.strategy!r} is not built "
                         f"yet (the per-prompt counts are kept per rank); use one process or retrospective = false")


def context_prompts(cfg, task, tokenizer, size: int) -> tuple[list, ContextSchedule]:
    """The run's prompt list (`size` training prompts of the task) and the schedule bound to their lengths."""
    schedule = make_context_schedule(cfg.rl.curriculum_params, steps=cfg.rl.steps)
    return schedule.training_prompts(None, cfg, task, tokenizer, size), schedule


def prompt_list_size(rl) -> int:
    """How many prompts the run's list holds: rl.prompt_pool, else one per prompt slot of the run."""
    return rl.prompt_pool if rl.prompt_pool > 0 else max(1, rl.steps * rl.prompts_per_step)


CATALOG = [
    Entry("context_length", "QwenLong-L1's curriculum-guided phased RL: RL steps in equal phases, phase k draws "
          "prompts with L_{k-1} < prompt tokens <= L_k (or <= L_k with include_shorter)",
          "QwenLong-L1 (arXiv 2505.17667)", "reconstructed", "any task (prompt lengths measured with the tokenizer)"),
    Entry("context_length/retrospective", "difficulty-aware retrospective sampling: from phase 1 on, retro_ratio of "
          "each step's prompts drawn from earlier phases' sampled prompts, proportional to 1 - mean accuracy",
          "QwenLong-L1 (arXiv 2505.17667)", "reconstructed", "rl.curriculum context_length; one process"),
]
