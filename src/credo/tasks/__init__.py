"""Built-in tasks and loaders, selectable by name (`task.name` in the config)."""

from __future__ import annotations

from typing import Any

from credo.registry import Registry
from credo.tasks.arithmetic import ArithmeticTask
from credo.tasks.base import Example, Score, Task, render_prompt, split_of
from credo.tasks.classify import ClassifyTask
from credo.tasks.code import CodeTask
from credo.tasks.countdown import CountdownTask
from credo.tasks.jsonl import JsonlTask
from credo.tasks.keyvalue import KeyValueTask
from credo.tasks.knights import KnightsKnavesTask

TASKS: Registry = Registry("task")
TASKS.register("arith")(ArithmeticTask)
TASKS.register("countdown")(CountdownTask)
TASKS.register("knights")(KnightsKnavesTask)
TASKS.register("jsonl")(JsonlTask)
TASKS.register("keyvalue")(KeyValueTask)
TASKS.register("code")(CodeTask)
TASKS.register("classify")(ClassifyTask)


def make_task(name: str, **params: Any) -> Task:
    """Build a registered task from its name and keyword parameters (from the config)."""
    factory = TASKS.get(name)
    try:
        return factory(**params)
    except TypeError as exc:
        from credo.errors import CredoError

        raise CredoError(f"task {name!r}: bad parameters {params}: {exc}") from exc


__all__ = [
    "CodeTask",
    "KeyValueTask",
    "TASKS",
    "ArithmeticTask",
    "ClassifyTask",
    "CountdownTask",
    "Example",
    "JsonlTask",
    "KnightsKnavesTask",
    "Score",
    "Task",
    "make_task",
    "render_prompt",
    "split_of",
]
