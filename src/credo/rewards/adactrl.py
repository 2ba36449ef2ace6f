"""AdaCtrl's difficulty-aware budget reward, the reward term `adactrl`, and its user budget control.

    rl.reward_terms = {"task" = 1.0, "adactrl" = 1.0}
    rl.reward_term_params = {"adactrl" = {"threshold" = 0.625}}

Paper: "AdaCtrl: Towards Adaptive and Controllable Reasoning via Difficulty-Aware Budgeting"
(arXiv 2505.18822). Status: confirmed against the official code (JoeYing1019/AdaCtrl:
`verl/trainer/ppo/ray_trainer.py` labels the groups, `verl/workers/reward_manager/naive.py`
`compute_diff_format` / `compute_diff_len` score them, `qwen-7b.sh` sets the constants).

A response opens with a budget tag, "[Easy]" or "[Hard]" (its first six characters, case-insensitive).
Per group (the G rollouts of one prompt), acc = the share of correct rollouts labels the problem:
easy when acc > threshold, else hard. Per rollout, with L its length in tokens and L_max the longest
rollout of its group:

    r_format = 1 if the tag names the group's label, 0 if it names the other one, -1 without a tag
    r_len    = (1 + cos(pi L / L_max)) / 2 if tagged [Easy] and correct, else 0   (no penalty for [Hard])
    term     = format_weight * r_format + length_weight * r_len

so R = r_acc + term with the `task` term at weight 1 is the paper's reward
(acc + diff_format_weight * r_format + diff_len_weight * r_len). Defaults (`qwen-7b.sh`): threshold
0.625, format_weight 0.5, length_weight 0.5 (the yaml defaults are 1.0). Departure: the official
format check reads characters 2-6 and the closing bracket only (any first character passes); here the
tag must start with "[". L_max <= 0 (every rollout empty) gives r_len = 1, the L = 0 value.

User control: AdaCtrl forces a budget by pre-filling the assistant turn with the tag (`force_token`
"E" / "H" in its `rl_dataset.py`). `budget_prefix("easy")` is that tag, and a task with a
`response_prefix` (the JSONL task's `budget_tag` parameter) gets it appended after the chat template's
assistant header by `tasks/base.py::render_prompt`, in training, evaluation and `credo generate`. With
a forced tag the completion no longer contains it, so do not combine `budget_tag` with this term.

The tags are learned, not prompted: AdaCtrl first fine-tunes on tagged trajectories (short [Easy]
solutions, long [Hard] ones) before RL. Without that cold start a small model (the bundled SmolLM2)
rarely opens with a tag and scores -1 * format_weight on nearly every rollout; give the warm-up tagged
demonstrations (the JSONL task's `demonstration_field`) first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from credo.entry import Entry
from credo.errors import CredoError

BUDGETS = ("easy", "hard")
_TAG_CHARS = 6  # len("[Easy]") == len("[Hard]"): the official check reads exactly this prefix


def budget_tag(text: object) -> str | None:
    """The budget a text opens with: "easy" / "hard" for "[Easy]" / "[Hard]" (any case), else None.

    Only the first six characters count, as in the official check (no leading space allowed).

    >>> budget_tag("[Easy] 2+2=4"), budget_tag("[HARD]..."), budget_tag(" [Easy]"), budget_tag(None)
    ('easy', 'hard', None, None)
    """
    if not isinstance(text, str) or len(text) < _TAG_CHARS:
        return None
    head = text[:_TAG_CHARS]
    word = head[1:-1].lower()
    return word if head[0] == "[" and head[-1] == "]" and word in BUDGETS else None


def budget_prefix(budget: str) -> str:
    """The tag that forces a budget, "[Easy]" or "[Hard]" (AdaCtrl's user control)."""
    if budget not in BUDGETS:
        raise CredoError(f"budget_tag: must be one of {', '.join(BUDGETS)}, got {budget!r}")
    return f"[{budget.capitalize()}]"


def adactrl_reward(tag: str | None, correct: bool, length: int, max_length: int, group_accuracy: float, *,
                   threshold: float = 0.625, format_weight: float = 0.5, length_weight: float = 0.5) -> float:
    """format_weight * r_format + length_weight * r_len of one rollout (see the module docstring).

    >>> adactrl_reward("easy", True, 0, 10, 1.0)      # right tag, shortest possible: 0.5 * 1 + 0.5 * 1
    1.0
    >>> adactrl_reward("easy", True, 10, 10, 1.0)     # right tag, as long as the longest: cos(pi) = -1
    0.5
    >>> adactrl_reward("hard", True, 3, 10, 1.0), adactrl_reward(None, True, 3, 10, 1.0)
    (0.0, -0.5)
    """
    label = "easy" if group_accuracy > threshold else "hard"
    r_format = -1.0 if tag is None else (1.0 if tag == label else 0.0)
    r_len = 0.0
    if tag == "easy" and correct:
        r_len = 1.0 if max_length <= 0 else (1.0 + math.cos(math.pi * length / max_length)) / 2.0
    return format_weight * r_format + length_weight * r_len


@dataclass
class AdaCtrlBudget:
    """The `adactrl` term: the group's accuracy labels the problem; tags and [Easy] lengths are scored."""

    threshold: float = 0.625
    format_weight: float = 0.5
    length_weight: float = 0.5

    def __post_init__(self):
        where = "rl.reward_term_params['adactrl']"
        for name in ("threshold", "format_weight", "length_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CredoError(f"{where}[{name!r}]: must be a finite number, got {value!r}")
        if not 0.0 <= self.threshold < 1.0:  # (acc > 1 never holds: every problem would be hard)
            raise CredoError(f"{where}['threshold']: must be in [0, 1), got {self.threshold!r}")

    def __call__(self, inputs) -> list[float]:
        correct: dict[int, list[bool]] = {}
        longest: dict[int, int] = {}
        for g, s, n in zip(inputs.group_ids, inputs.scores, inputs.lengths):
            correct.setdefault(g, []).append(bool(s.correct))
            longest[g] = max(longest.get(g, 0), int(n))
        accuracy = {g: sum(c) / len(c) for g, c in correct.items()}
        return [adactrl_reward(budget_tag(text), bool(s.correct), int(n), longest[g], accuracy[g],
                               threshold=self.threshold, format_weight=self.format_weight,
                               length_weight=self.length_weight)
                for text, s, n, g in zip(inputs.texts, inputs.scores, inputs.lengths, inputs.group_ids)]


CATALOG = [
    Entry("adactrl", "[Easy]/[Hard] tag matching the group-accuracy label, cosine length reward on correct [Easy]",
          "AdaCtrl: Towards Adaptive and Controllable Reasoning via Difficulty-Aware Budgeting (arXiv 2505.18822)",
          "confirmed", "groups; tagged demonstrations for the warm-up",
          training="works (budget_tag forces a budget); without AdaCtrl's tagged cold-start SFT a small model "
                   "rarely emits tags, so the term is mostly its -format_weight penalty"),
]
