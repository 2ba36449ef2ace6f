"""Credit assignment: advantage estimators as pure functions, selected by name.

Outcome-level estimators map rewards [B] + group ids [B] to advantages [B]; token-level ones
(`credit.base.token_level`) map `CreditInputs` to advantages [B, T]. Every module of the package is
imported here, which registers its estimators.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from credo.credit.base import CREDIT, CreditInputs, is_token_level, token_level
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop
from credo.credit.shaping import aspo_shape_advantages  # noqa: F401  (ASPO advantage shaping)

for _info in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["CREDIT", "CreditInputs", "grpo_advantages", "grpo_advantages_loop", "is_token_level", "token_level"]
