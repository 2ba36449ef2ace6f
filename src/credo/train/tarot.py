"""TAROT's tier-weighted reward and capability-adaptive curriculum (`rl.curriculum = "tarot"`).

Paper: "TAROT: Test-driven and Capability-adaptive Curriculum Reinforcement Fine-tuning for Code
Generation with Large Language Models" (Park, Jiang, Wang et al., arXiv 2602.15449; code
github:deep-diver/TAROT, `custom_rewards/*.py`, `*/var_asce_*.yaml`).

    task.name = "code"   task.params = {tiers = true}                 the four-tier suites (tasks/code.py)
    rl.curriculum = "tarot"
    rl.curriculum_params = {policy = "auto", threshold = 0.5}          (every parameter has a default)

Every problem of the code task carries a graded suite (basic, intermediate, complex, edge) and its
Score carries the per-tier pass fractions p_tier (one sandbox run for all tiers). The training reward
of a completion at RL step t of T is

    r = sum_tier w_tier(t) * p_tier,    w_tier(t) = weights[tier] if tier is active in stage(t) else 0
    stage(t) = #{b in boundaries : t / T >= b}                   (boundaries 0.2, 0.4, 0.6: 4 stages)

with the active tiers of each stage set by the policy:

    stage                 0            1                   2                               3
    easy_to_hard          basic        basic, intermediate basic, intermediate, complex    all four
    hard_first            complex      complex, edge       intermediate, complex, edge     all four

It replaces the task's reward (`Score.reward`; `correct` stays all-tests-pass, so train accuracy and the
held-out metric are unchanged) before rl.reward_terms, so {"task" = 1, "format" = 1} adds the paper's
`code_format` term on top. A score without tiers (a sandbox error, not the program's fault) keeps its
reward (the task's error_reward).

Capability-adaptive choice (policy "auto", the default): before the first RL step the starting
policy's pass rate c is measured and hard_first is chosen when c >= threshold, easy_to_hard below it
(the paper's finding: less capable models gain more from easy-to-hard, more competent ones from
hard-first). c is the held-out accuracy of the policy RL starts from (`capability = "held_out"`: the
evaluation after the warm-up, else the base evaluation) and, when the run made neither, or with
`capability = "train"`, the greedy all-tests-pass rate on `probe_size` training problems. `policy =
"easy_to_hard" | "hard_first"` fixes the order. The chosen policy and c go into every RL checkpoint
(state.json "curriculum"), so --resume never measures again. Every step logs curriculum_stage,
curriculum_hard_first (1.0 / 0.0), curriculum_w_<tier> (the weights of the step), curriculum_capability
(with "auto") and reward/tier_<tier> (the step's mean pass fraction per tier).

Status: reconstructed. Confirmed against the official code: the four tiers (its labels basic, medium,
high, edge), the reward as the plain weighted sum of the active tiers' passes (`passed_weight`, not
renormalised over the active tiers: early stages give smaller rewards), the stage boundaries 0.2 / 0.4
/ 0.6 of training progress (the trainer's fractional epoch; `*_3e` runs use 0.6 / 1.2 / 1.8 of 3
epochs, the same fractions) and both orders (`var_asce_normal.py`, `var_asce_rev.py`), and the default
weights 0.15 / 0.15 / 0.35 / 0.35 (the weights those two scripts share; the portfolio also has uniform
0.25 `uni.py` and 0.35 / 0.35 / 0.15 / 0.15 `var.py`: pass `weights`). Assumed: (1) with several
cases per tier p_tier is the tier's pass fraction (the released suites hold one case per tier, where
both agree); (2) the capability measure and the threshold 0.5 are ours: the repository selects the
policy by hand per model, and the paper states the finding, not a number; (3) progress is t / T at the
step's start (TRL's `state.epoch` before the step's update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

from credo.entry import Entry
from credo.errors import CredoError
from credo.tasks.code import TIERS

KIND = "tarot"
POLICIES = ("auto", "easy_to_hard", "hard_first")
ACTIVE = {  # the tiers whose passes count in each of the four stages (official custom_rewards/*.py)
    "easy_to_hard": (("basic",), ("basic", "intermediate"), ("basic", "intermediate", "complex"), TIERS),
    "hard_first": (("complex",), ("complex", "edge"), ("intermediate", "complex", "edge"), TIERS),
}
DEFAULT_WEIGHTS = {"basic": 0.15, "intermediate": 0.15, "complex": 0.35, "edge": 0.35}
DEFAULT_BOUNDARIES = (0.2, 0.4, 0.6)
PROBE_SEED = 20_000  # the train probe's problems: seed + this (the warm-up's demonstrations use + 10_000)


def stage_of(step: int, steps: int, boundaries: Sequence[float] = DEFAULT_BOUNDARIES) -> int:
    """The curriculum stage of RL step `step` of `steps`: how many boundaries the progress step / steps
    has reached (0 .. len(boundaries))."""
    progress = step / max(steps, 1)
    return sum(progress >= b for b in boundaries)


def tier_weights(step: int, *, steps: int, policy: str, weights: dict[str, float] | None = None,
                 boundaries: Sequence[float] = DEFAULT_BOUNDARIES) -> dict[str, float]:
    """w_tier(t) for every tier: the policy's weight where the tier is active at this stage, else 0.

    >>> tier_weights(0, steps=10, policy="hard_first")
    {'basic': 0.0, 'intermediate': 0.0, 'complex': 0.35, 'edge': 0.0}
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    active = ACTIVE[policy][stage_of(step, steps, boundaries)]
    return {tier: float(weights[tier]) if tier in active else 0.0 for tier in TIERS}


def tier_reward(fractions: dict[str, float], weights: dict[str, float]) -> float:
    """sum_tier weights[tier] * fractions[tier] (a tier missing from `fractions` passed nothing)."""
    return float(sum(w * float(fractions.get(tier, 0.0)) for tier, w in weights.items()))


def choose_policy(capability: float, *, threshold: float = 0.5) -> str:
    """TAROT's capability-conditioned order: hard_first at or above `threshold`, easy_to_hard below."""
    return "hard_first" if capability >= threshold else "easy_to_hard"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TarotCurriculum:
    """The tier-weight schedule and its chosen policy (see the module docstring). `kind` "tarot";
    prompts are the run's usual ones (it weighs test tiers, not prompts)."""

    steps: int
    policy: str = "auto"
    threshold: float = 0.5
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    boundaries: list[float] = field(default_factory=lambda: list(DEFAULT_BOUNDARIES))
    capability: str = "held_out"  # where "auto" reads the starting pass rate: "held_out" or "train"
    probe_size: int = 16  # training problems of the greedy probe
    kind: ClassVar[str] = KIND
    chosen: str | None = None  # the policy in force ("easy_to_hard" / "hard_first"); checkpointed
    measured: float | None = None  # "auto": the starting pass rate it was chosen from; checkpointed

    def __post_init__(self):
        p = "rl.curriculum_params"
        if self.policy not in POLICIES:
            raise CredoError(f"{p}.policy: unknown {self.policy!r}; valid: {', '.join(POLICIES)}")
        if not _number(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise CredoError(f"{p}.threshold must be a number in [0, 1] (a pass rate), got {self.threshold!r}")
        if not isinstance(self.weights, dict) or set(self.weights) != set(TIERS) \
                or not all(_number(w) and w >= 0 for w in self.weights.values()) or not sum(self.weights.values()) > 0:
            raise CredoError(f"{p}.weights: give a non-negative number for each of {', '.join(TIERS)} (not all 0), "
                             f"got {self.weights!r}")
        bounds = self.boundaries
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 3 or not all(_number(b) for b in bounds) \
                or not 0 < bounds[0] < bounds[1] < bounds[2] <= 1:
            raise CredoError(f"{p}.boundaries: give three increasing fractions of the RL steps in (0, 1] (the "
                             f"starts of stages 1-3), got {bounds!r}")
        if self.capability not in ("held_out", "train"):
            raise CredoError(f"{p}.capability: unknown {self.capability!r}; valid: held_out, train")
        if isinstance(self.probe_size, bool) or not isinstance(self.probe_size, int) or self.probe_size < 1:
            raise CredoError(f"{p}.probe_size must be a positive integer, got {self.probe_size!r}")
        self.weights = {tier: float(self.weights[tier]) for tier in TIERS}
        self.boundaries = [float(b) for b in bounds]
        if self.policy != "auto":
            self.chosen = self.policy

    # -- the prompts: the run's usual ones ---------------------------------------------------------
    def training_prompts(self, make_task, cfg, task, tokenizer, size: int) -> list:
        return task.examples("train", size, seed=cfg.run.seed)

    def prompt_ids(self, step: int, per_step: int, seed: int, pool: int = 0) -> list[int]:
        """The plain schedule's ids (train/prompts.py; pool 0 = fresh prompts): TAROT weighs tiers, not prompts."""
        from credo.train.prompts import scheduled_prompt_ids

        return scheduled_prompt_ids(step, per_step, pool, seed)

    # -- before RL -------------------------------------------------------------------------------
    def choose(self, capability: float) -> str:
        """Fix the policy from the starting pass rate (policy "auto"; a fixed policy ignores it)."""
        if self.policy == "auto":
            self.measured = float(capability)
            self.chosen = choose_policy(self.measured, threshold=self.threshold)
        return self.chosen

    def begin(self, run: Any, max_prompt_tokens: int | None) -> None:
        """At the start of a fresh RL stage (train/run.py::rl_stage): measure and choose ("auto")."""
        if self.policy != "auto":
            return
        value, origin = starting_capability(run, self.capability, self.probe_size, max_prompt_tokens)
        chosen = self.choose(value)
        print(f"credo: TAROT starting pass rate {value:.1%} ({origin}) {'>=' if chosen == 'hard_first' else '<'} "
              f"threshold {self.threshold:.1%}: {chosen}", flush=True)

    # -- every step ------------------------------------------------------------------------------
    def weights_at(self, step: int) -> dict[str, float]:
        if self.chosen is None:
            raise CredoError("rl.curriculum tarot: no policy chosen yet (begin() runs before the first RL step)")
        return tier_weights(step, steps=self.steps, policy=self.chosen, weights=self.weights,
                            boundaries=self.boundaries)

    def tier_rewards(self, step: int, scores: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        """The step's scores with reward = sum_tier w_tier(step) * p_tier (train/rl.py::rl_step, before
        the reward terms), and reward/tier_<tier>: the mean pass fraction over the rows that carry tiers."""
        weights = self.weights_at(step)
        out, sums, rows = [], dict.fromkeys(TIERS, 0.0), 0
        for score in scores:
            fractions = (getattr(score, "meta", None) or {}).get("tiers")
            if not isinstance(fractions, dict):  # a sandbox error: keep the task's error_reward
                out.append(score)
                continue
            rows += 1
            for tier in TIERS:
                sums[tier] += float(fractions.get(tier, 0.0))
            out.append(replace(score, reward=tier_reward(fractions, weights)))
        metrics = {f"reward/tier_{tier}": sums[tier] / rows for tier in TIERS} if rows else {}
        return out, metrics

    def metrics(self, step: int) -> dict[str, float]:
        out = {"curriculum_stage": float(stage_of(step, self.steps, self.boundaries)),
               "curriculum_hard_first": float(self.chosen == "hard_first")}
        out.update({f"curriculum_w_{tier}": w for tier, w in self.weights_at(step).items()})
        if self.measured is not None:
            out["curriculum_capability"] = self.measured
        return out

    def observe(self, step: int, accuracy: float | None) -> None:
        """(Nothing: the schedule is a pure function of the step once the policy is chosen.)"""

    def state(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "measured": self.measured}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("chosen") not in ACTIVE:
            raise CredoError(f"rl.curriculum tarot: the checkpoint's curriculum state has no chosen policy ({state!r})")
        self.chosen = state["chosen"]
        self.measured = None if state.get("measured") is None else float(state["measured"])


def make_tarot(params: dict[str, Any], *, steps: int) -> TarotCurriculum:
    try:
        return TarotCurriculum(steps=steps, **params)
    except TypeError as exc:
        raise CredoError(f"rl.curriculum_params: {exc}") from None


def starting_capability(run: Any, source: str, probe_size: int,
                        max_prompt_tokens: int | None) -> tuple[float, str]:
    """(pass rate, where it came from) of the policy RL starts from, the same on every rank (rank 0
    measures: only it holds the evaluations in `run.summary`)."""
    from credo.dist.comm import broadcast_object
    from credo.train.evaluate import evaluate

    found = None
    if run.world.is_main:
        if source == "held_out":
            for label, origin in (("warmup", "held-out after warm-up"), ("base", "held-out base")):
                if label in run.summary:
                    found = (float(run.summary[label]["accuracy"]), origin)
                    break
        if found is None:
            examples = run.task.examples("train", probe_size, seed=run.cfg.run.seed + PROBE_SEED)
            result = evaluate(run.engine, run.tokenizer, run.task, examples, run.sampling,
                              batch_size=run.cfg.task.eval_batch_size, max_prompt_tokens=max_prompt_tokens)
            found = (float(result["accuracy"]), f"greedy on {probe_size} train problems")
    return broadcast_object(run.world, found)


def check_tarot(cfg) -> None:
    """Before anything loads: the parameters, the task it needs, and the combinations not built yet."""
    rl = cfg.rl
    make_tarot(rl.curriculum_params, steps=rl.steps)
    if cfg.task.name != "code" or cfg.task.params.get("tiers") is not True:
        raise CredoError(f"rl.curriculum \"tarot\" weighs the code task's test tiers: it needs task.name \"code\" with "
                         f"task.params.tiers = true (task.name is {cfg.task.name!r}, task.params {cfg.task.params!r})")
    for field_name, on, why in (
            ("rl.dynamic_sampling", rl.dynamic_sampling, "refill rounds keep groups by the task's reward, before the "
                                                         "tier weights"),
            ("rl.spo_prioritized", rl.spo_prioritized, "untested together"),
            ("rollout.max_staleness > 0", cfg.rollout.max_staleness > 0, "untested together")):
        if on:
            raise CredoError(f"rl.curriculum \"tarot\" with {field_name} is not built yet ({why}); use one of them")


CATALOG = [
    Entry("tarot", "reward = sum of per-tier test pass fractions (basic, intermediate, complex, edge) weighted "
          "by a 4-stage schedule, easy-to-hard or hard-first, chosen from the starting pass rate (>= threshold: "
          "hard-first)", "TAROT: Test-driven and Capability-adaptive Curriculum Reinforcement Fine-tuning for "
          "Code Generation with Large Language Models (arXiv 2602.15449)", "reconstructed",
          "the code task with task.params.tiers = true"),
]
