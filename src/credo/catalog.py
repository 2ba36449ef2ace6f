"""The method catalog printed by `credo list`: name, one line, paper, status, needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    paper: str
    status: str  # "confirmed" or "reconstructed"
    needs: str


OBJECTIVE_ENTRIES = [
    Entry("grpo", "PPO clipped surrogate on group-normalised advantages, optional k3 KL to a reference",
          "DeepSeekMath (arXiv 2402.03300)", "confirmed", "groups; reference model if kl_coef > 0"),
]
CREDIT_ENTRIES = [
    Entry("grpo", "group mean / std normalised outcome reward (scale_by_std=False: Dr.GRPO)",
          "DeepSeekMath (arXiv 2402.03300)", "confirmed", "groups"),
]


def _table(entries: list[Entry]) -> str:
    head = f"{'name':<12} {'status':<14} {'needs':<40} summary / paper"
    lines = [head, "-" * len(head)]
    for e in entries:
        lines.append(f"{e.name:<12} {e.status:<14} {e.needs:<40} {e.summary} [{e.paper}]")
    return "\n".join(lines)


def print_catalog(what: str = "all") -> None:
    from credo.presets import PRESETS
    from credo.tasks import TASKS

    if what in ("all", "presets"):
        print("presets: " + ", ".join(PRESETS.names()))
    if what in ("all", "tasks"):
        print("tasks: " + ", ".join(TASKS.names()))
    if what in ("all", "objectives"):
        print("\nobjectives:\n" + _table(OBJECTIVE_ENTRIES))
    if what in ("all", "credit"):
        print("\ncredit estimators:\n" + _table(CREDIT_ENTRIES))
