"""Difficulty curricula over any task with levels (`rl.curriculum`): which level each RL step's prompts
come from.

    rl.curriculum = "linear"     rl.curriculum_params = {"levels": [1, 2, 3]}           easy to hard
    rl.curriculum = "linear"     rl.curriculum_params = {"levels": [3, 2, 1]}           hard first
    rl.curriculum = "adaptive"   rl.curriculum_params = {"levels": [1, 2, 3], "threshold": 0.8, "window": 4}

A task "has levels" when one of its constructor parameters picks the difficulty (`param`, default
"difficulty": arith, countdown, knights). The run's prompt list is the concatenation of each level's
training prompts (the task built with `param = level`, `per_level` prompts each: rl.prompt_pool if
set, else steps x prompts_per_step), so a prompt's persistent id (train/prompts.py) stays its index in
that list. Within the current level, prompts are visited in seeded epochs (`scheduled_prompt_ids` over
the level's block), so a level that lasts long repeats its prompts. The held-out set stays the run's
own task (task.params), so accuracy is measured on one fixed level throughout.

- "linear": level index floor(t * L / steps) at RL step t, L levels in the order given (a fixed
  schedule: a pure function of the step, so resume is exact with no state).
- "adaptive" (mastery-based): start at the first level; after each step, if the mean train accuracy
  of the last `window` steps at this level is >= `threshold`, move to the next level (the window
  restarts). State: the level index and the window's accuracies, saved in every RL checkpoint
  (state.json "curriculum") and restored by --resume. Defaults threshold 0.8, window 4 (a generic
  rule, no paper's constants).
"tarot" (TAROT's capability-adaptive curriculum over the code task's four-tier test suites: a schedule of
tier weights in the reward, easy-to-hard for weaker and hard-first for stronger starting policies) lives
in train/tarot.py; it keeps the run's usual prompts, and `make_curriculum` / `check_curriculum`
dispatch to it.
Every step logs `curriculum_level` (the level value) and `curriculum_index`.
"context_length" (QwenLong-L1's phases by prompt length, with difficulty-aware retrospective sampling)
lives in train/context_schedule.py; `make_curriculum` and `check_curriculum` dispatch to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from credo.entry import Entry
from credo.errors import CredoError
from credo.train.context_schedule import KIND as CONTEXT_KIND
from credo.train.context_schedule import ContextSchedule, check_context_schedule, make_context_schedule
from credo.train.prompts import scheduled_prompt_ids
from credo.train.tarot import KIND as TAROT_KIND
from credo.train.tarot import TarotCurriculum, check_tarot, make_tarot


@dataclass
class Curriculum:
    """The level schedule and the prompt blocks; `kind` "linear" or "adaptive" (see the module docstring)."""

    kind: str
    levels: list[Any]
    steps: int
    per_level: int
    param: str = "difficulty"
    threshold: float = 0.8
    window: int = 4
    index: int = 0  # adaptive: the current level's index
    recent: list[float] = field(default_factory=list)  # adaptive: train accuracies at this level

    def __post_init__(self):
        if self.kind not in ("linear", "adaptive"):
            raise CredoError(f"unknown rl.curriculum {self.kind!r}; valid: none, linear, adaptive, context_length, "
                             f"tarot")
        if not isinstance(self.levels, list) or len(self.levels) < 2:
            raise CredoError(f"rl.curriculum_params.levels: give at least two levels (a list), got {self.levels!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise CredoError(f"rl.curriculum_params.threshold must be in (0, 1], got {self.threshold}")
        if self.window < 1:
            raise CredoError(f"rl.curriculum_params.window must be at least 1, got {self.window}")

    def level_index(self, step: int) -> int:
        if self.kind == "linear":
            return min(len(self.levels) - 1, step * len(self.levels) // max(self.steps, 1))
        return self.index

    def training_prompts(self, make_task, cfg, task, tokenizer, size: int) -> list:
        """The run's prompt list: one block of `per_level` prompts per level (`level_prompts`)."""
        return level_prompts(make_task, cfg.task.name, cfg.task.params, self, cfg.run.seed)

    def prompt_ids(self, step: int, per_step: int, seed: int, pool: int = 0) -> list[int]:
        """The step's persistent prompt ids: an epoch-ordered slice of the current level's block (`pool`,
        the plain schedule's, is not used: levels always cycle through their block)."""
        k = self.level_index(step)
        return [k * self.per_level + i for i in scheduled_prompt_ids(step, per_step, self.per_level, seed + k)]

    def observe(self, step: int, accuracy: float | None) -> None:
        """After a step (adaptive): record its train accuracy, move up a level when the window is good enough."""
        if self.kind != "adaptive" or accuracy is None:
            return
        self.recent = (self.recent + [float(accuracy)])[-self.window:]
        if len(self.recent) == self.window and sum(self.recent) / self.window >= self.threshold \
                and self.index < len(self.levels) - 1:
            self.index += 1
            self.recent = []

    def metrics(self, step: int) -> dict[str, Any]:
        k = self.level_index(step)
        level = self.levels[k]
        return {"curriculum_index": k, **({"curriculum_level": level} if isinstance(level, (int, float)) else {})}

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "recent": list(self.recent)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.index, self.recent = int(state["index"]), [float(x) for x in state["recent"]]


def make_curriculum(kind: str, params: dict[str, Any], *, steps: int,
                    per_level: int) -> Curriculum | ContextSchedule | TarotCurriculum | None:
    if kind == "none":
        if params:
            raise CredoError("rl.curriculum_params is set but rl.curriculum is \"none\"")
        return None
    params = dict(params)
    if kind == CONTEXT_KIND:  # phases by prompt length, not by task level (train/context_schedule.py)
        if "levels" not in params:
            raise CredoError(f"rl.curriculum {kind!r} needs rl.curriculum_params.levels (prompt-token limits, e.g. "
                             f"[128, 256, 512])")
        return make_context_schedule(params, steps=steps)
    if kind == TAROT_KIND:  # tier weights in the reward, not prompt levels (train/tarot.py)
        return make_tarot(params, steps=steps)
    if "levels" not in params:
        raise CredoError(f"rl.curriculum {kind!r} needs rl.curriculum_params.levels (e.g. [1, 2, 3])")
    try:
        return Curriculum(kind, steps=steps, per_level=per_level, **params)
    except TypeError as exc:
        raise CredoError(f"rl.curriculum_params: {exc}") from None


def check_curriculum(cfg) -> None:
    """Before anything loads (train/run.py::validate): the parameters, and the combinations not built yet
    (refills, prioritised draws and steps sent ahead would draw prompts outside the current level)."""
    rl = cfg.rl
    make_curriculum(rl.curriculum, rl.curriculum_params, steps=rl.steps, per_level=1)
    if rl.curriculum == "none":
        return
    if rl.curriculum == TAROT_KIND:  # its task, and its own combinations not built yet
        return check_tarot(cfg)
    if rl.curriculum == CONTEXT_KIND:  # its retrospective share and single-process counts
        check_context_schedule(cfg)
    for field_name, on in (("rl.dynamic_sampling", rl.dynamic_sampling), ("rl.spo_prioritized", rl.spo_prioritized),
                           ("rollout.max_staleness > 0", cfg.rollout.max_staleness > 0)):
        if on:
            raise CredoError(f"rl.curriculum with {field_name} is not built yet (it would draw prompts outside the "
                             f"current level); use one of them")


def level_prompts(make_task, name: str, params: dict[str, Any], curriculum: Curriculum, seed: int) -> list:
    """The run's prompt list: per level (in order) `per_level` training prompts of the task at that level."""
    prompts = []
    for level in curriculum.levels:
        try:
            task = make_task(name, **{**params, curriculum.param: level})
        except CredoError as exc:
            raise CredoError(f"rl.curriculum level {level!r} ({curriculum.param} of task {name!r}): {exc}") from None
        prompts += task.examples("train", curriculum.per_level, seed=seed)
    return prompts


CATALOG = [
    Entry("linear", "prompts from each difficulty level in turn, an equal share of the RL steps each "
          "(levels in the order given: easy-to-hard or hard-first)", "generic difficulty schedule", "confirmed",
          "a task with a level parameter"),
    Entry("adaptive", "move to the next level when the last `window` steps' train accuracy reaches `threshold`",
          "generic mastery-based schedule (TAROT's tier-weight curriculum is `tarot`)", "confirmed",
          "a task with a level parameter"),
]
