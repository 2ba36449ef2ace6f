"""What the supervised mixes of an RL step share (`rl.sft_mix`: CHORD in train/sft_mix.py, RMT in
train/rmt.py): checked parameter dataclasses from rl.sft_mix_params and the optimizer steps of an RL
step that has no trainable rollout row (the supervised part alone). A module of its own so that
neither mix imports the other.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from credo.errors import CredoError


def typed_params(cls, table: dict[str, Any], method: str):
    """`cls` (a frozen dataclass of int / float / bool / str fields) from rl.sft_mix_params: unknown keys and
    wrong types are CredoErrors naming the key; ranges are the caller's to check (`param_error`)."""
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise CredoError(f"rl.sft_mix_params: unknown key(s) {', '.join(unknown)}; {method} takes: {', '.join(hints)}")
    for name, value in table.items():
        kind = hints[name]
        if kind == "bool" and not isinstance(value, bool):
            raise param_error(table, name, "must be true or false")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise param_error(table, name, "must be an integer")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value)):
            raise param_error(table, name, "must be a number")
        if kind == "str" and (not isinstance(value, str) or not value.strip()):
            raise param_error(table, name, "must be a non-empty string")
    return cls(**table)


def param_error(table: dict[str, Any], name: str, why: str) -> CredoError:
    return CredoError(f"rl.sft_mix_params[{name!r}]: {why}, got {table.get(name)!r}")


def supervised_only_update(part, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           settings) -> dict[str, float]:
    """minibatches x epochs optimizer steps on the supervised part alone (`part.backward`, `part.metrics`: a
    ChordStep or train/rmt.py's RMTStep), for an RL step without trainable rollout rows."""
    from credo.faults import maybe_die

    updates = skipped = 0
    norms = []
    model.train()
    for _ in range(settings.epochs * settings.minibatches):
        part.backward(model, settings)
        maybe_die("update")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
        if math.isfinite(grad_norm):
            optimizer.step()
            updates += 1
            norms.append(grad_norm)
        else:  # a non-finite gradient must not reach the optimizer state
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
    nan = float("nan")
    return {"updates": updates, "skipped_updates": skipped, "trained_sequences": 0,
            "grad_norm": sum(norms) / len(norms) if norms else nan,
            **{k: nan for k in ("loss", "entropy", "clip_fraction", "approx_kl", "ratio_min", "ratio_max")},
            **part.metrics()}
