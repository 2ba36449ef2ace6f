"""Training stages: a registry of named stage kinds that share one run-folder layout.

A stage kind is a function `run(cfg: TrainConfig, params, *, resume: bool) -> summary dict` plus a
dataclass of its own parameters (`StageKind.params`). Every stage trains the model that
`cfg.model.name` names (the bundled model, a Hugging Face folder or the previous stage's checkpoint)
in the run folder `cfg.run.out_dir / cfg.run.name`, which holds what a `credo train` folder holds:
`config.json`, `metrics.jsonl`, `checkpoints/<name>/` (with `checkpoints/final` at the end),
`summary.json`. The summary names the held-out evaluation taken after the stage under
`summary["final"]` (accuracy, format rate, length, n), so a pipeline reads every stage the same way.

`resume=True` continues the folder's newest complete checkpoint (bitwise on one machine, as `credo
train --resume`). Pipelines of stages: `stages/pipeline.py`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

from credo.errors import CredoError
from credo.registry import Registry


@dataclass(frozen=True)
class StageKind:
    """name: the kind's registered name; params: its parameter dataclass (every field with a default and a
    docstring-style comment); run: (cfg, params, resume=) -> summary; summary: one line for `credo list`."""

    name: str
    params: type
    run: Callable[..., dict[str, Any]]
    summary: str


STAGES: Registry[StageKind] = Registry("stage")


def register_stage(kind: StageKind) -> StageKind:
    return STAGES.register(kind.name)(kind)


def _matches(value: Any, kind: Any) -> bool:
    """Whether a TOML / JSON value fits a parameter annotation (int, float, str, bool, list, dict, unions)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, kind)


def parse_params(kind: StageKind, table: dict[str, Any] | None, where: str) -> Any:
    """kind.params(**table), every key and type checked; errors name `where` (e.g. "stage 'cold' dpo")."""
    table = dict(table or {})
    hints = typing.get_type_hints(kind.params)
    names = [f.name for f in dataclasses.fields(kind.params)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise CredoError(f"{where}: unknown parameter(s) {', '.join(unknown)}; the {kind.name} stage takes: "
                         f"{', '.join(names) or 'none'}")
    for name, value in table.items():
        if not _matches(value, hints[name]):
            raise CredoError(f"{where}: parameter {name!r} must be {getattr(hints[name], '__name__', hints[name])}, "
                             f"got {value!r}")
    params = kind.params(**table)
    check = getattr(params, "check", None)
    if callable(check):
        try:
            check()
        except (ValueError, CredoError) as exc:
            raise CredoError(f"{where}: {exc}") from None
    return params


def held_out_of(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation after a stage: "final" (every stage kind writes it), else a train run's rl / warmup."""
    for key in ("final", "rl", "warmup"):
        if isinstance(summary.get(key), dict):
            return summary[key]
    return None
