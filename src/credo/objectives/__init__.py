"""Policy objectives: pure functions fn(logprobs, batch, *, hparams) -> LossTerms, by name."""

import importlib as _importlib
import pkgutil as _pkgutil

# Every module of the package registers its objectives on import; importing them all here means a
# new module needs no edit to this file.
for _info in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_info.name}")

from credo.objectives.base import OBJECTIVES, LossTerms, masked_mean
from credo.objectives.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3
from credo.objectives.reduce import REDUCTIONS, reduce_loss

__all__ = [
    "KL_ESTIMATORS",
    "OBJECTIVES",
    "REDUCTIONS",
    "LossTerms",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "reduce_loss",
]
