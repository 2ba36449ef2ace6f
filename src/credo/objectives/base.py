"""What every policy objective returns, and the registry objectives are selected from."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from credo.logprobs import OUTPUT_NEEDS, PolicyOutputs
from credo.registry import Registry

__all__ = ["BATCH_NEEDS", "LossTerms", "OBJECTIVES", "PolicyOutputs", "masked_mean", "needs", "needs_of", "wants_outputs"]


@dataclass
class LossTerms:
    """per_token [B, T]: the loss at each token (the reduction applies the mask);
    metrics: name -> scalar tensor, already averaged over the mask (logged, never differentiated)."""

    per_token: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


OBJECTIVES: Registry = Registry("objective")

LOG_RATIO_CLAMP = 20.0  # as verl: exp() of a larger log-ratio overflows or dominates the batch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


# Needs about the batch rather than the forward pass:
# "whole_groups": the objective compares samples of a group (DisCO, DRPO, CoPG, ...), so minibatches
#     and micro-batches hold whole groups, and no row is left out for a zero advantage;
# "ref": the objective reads batch.ref_logprobs, so a reference model is loaded even with kl_coef = 0.
BATCH_NEEDS = ("whole_groups", "ref")


def needs(*what: str) -> Callable:
    """Declare the extra policy outputs an objective reads from its `outputs` keyword, and its
    batch needs (BATCH_NEEDS).

        @OBJECTIVES.register("my_method")
        @needs("entropy")
        def my_loss(logprobs, batch, *, outputs: PolicyOutputs, coef: float = 0.1) -> LossTerms: ...

    Valid: "entropy" (differentiable), "full_logprobs" ([N, V]), "hidden_states", plus the batch
    needs "whole_groups" and "ref". The trainer computes outputs only for objectives that declare
    them, so the others do not pay for it.
    """
    unknown = set(what) - set(OUTPUT_NEEDS) - set(BATCH_NEEDS)
    if unknown:
        raise ValueError(f"unknown need(s) {sorted(unknown)}; valid: {', '.join(OUTPUT_NEEDS + BATCH_NEEDS)}")

    def mark(fn: Callable) -> Callable:
        fn.needs = frozenset(what)
        return fn

    return mark


def needs_of(fn: Callable) -> frozenset[str]:
    """The declared needs of an objective, also through functools.partial."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "needs", frozenset())


def wants_outputs(fn: Callable) -> bool:
    """True when the objective takes the `outputs: PolicyOutputs` keyword."""
    return "outputs" in inspect.signature(fn).parameters


def wants_step(fn: Callable) -> bool:
    """True when the objective takes the `rl_step` keyword: the trainer binds the index of the RL step
    being trained before each update (a schedule of the method's own, e.g. BuPO's two phases)."""
    return "rl_step" in inspect.signature(fn).parameters


def checks(check: Callable[[dict, object], None]) -> Callable:
    """Attach a hyperparameter check to an objective: check(params, cfg) raises CredoError for values
    the method cannot run with. params are the effective keyword hyperparameters (defaults updated by
    what the config binds); cfg is the TrainConfig. `train/run.py::validate` calls it, so a bad value
    fails at config validation, before any model is loaded."""

    def mark(fn: Callable) -> Callable:
        fn.check_params = check
        return fn

    return mark


def check_params_of(fn: Callable) -> Callable[[dict, object], None] | None:
    """The check attached by `checks` (through functools.partial), or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "check_params", None)


def effective_params(fn: Callable, common: dict, extra: dict) -> dict:
    """The keyword hyperparameters fn will run with: its defaults, then the common config fields it
    accepts (when set), then `extra` (rl.objective_params / rl.credit_params)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    params = {n: p.default for n, p in inspect.signature(fn).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    params.update({k: v for k, v in common.items() if k in params and v is not None})
    params.update({k: v for k, v in extra.items() if k in params})
    return params
