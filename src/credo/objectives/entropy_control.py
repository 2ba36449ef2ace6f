"""Entropy control: the coefficient of the entropy bonus as state that moves with training (`rl.entropy_control`).

The trainer's entropy bonus is composable with every objective (`rl.entropy_coef`: the per-token loss
becomes l_t - c H_t, reduced with the objective). A controller replaces the fixed c: before each optimizer
step the trainer asks it for the c to apply (`coef_for_step()`), and after the step hands it the step's
mean per-token entropy over the loss tokens of all its micro-batches (and, under torch.distributed, of
all ranks: the sums and token counts are all-reduced together), `observe(h)`. Its state (`state()` /
`load_state()`, JSON) goes into every RL checkpoint, so a resumed run applies the same coefficients.

Registered:
- "adaptive": Skywork-OR1's adaptive entropy control, as TRL implements it (`use_adaptive_entropy`,
  huggingface/trl f2cd577, `trl/trainer/grpo_trainer.py` `compute_loss` and `grpo_config.py`):
      c_0 = rl.entropy_coef,  h_{-1} = +inf
      applied at step s:   c_s * [h_{s-1} <= target]          (no bonus until the entropy has fallen to target)
      after step s:        c_{s+1} = min(c_s + delta, c_max) if h_s <= target else max(c_s - delta, c_min)
  Defaults are TRL's: target 0.2 nats, delta 0.005, c_min 0, c_max 1. One difference from TRL: TRL's
  bonus is always the mean per-token entropy, credo's is reduced with the objective's `rl.loss_reduction`
  (the two agree under the default `token_mean`). Paper: "Skywork Open Reasoner 1 Technical Report"
  (arXiv 2505.22312), section on adaptive entropy control. Status: confirmed against TRL's code.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from credo.entry import Entry
from credo.errors import CredoError
from credo.registry import Registry

ENTROPY_CONTROLS: Registry = Registry("entropy control")


def _finite(name: str, value: Any, *, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
        raise CredoError(f"rl.entropy_control_params: adaptive {name} must be a finite number >= {lo:g}, got {value!r}")
    return float(value)


@ENTROPY_CONTROLS.register("adaptive")
class AdaptiveEntropyControl:
    """Skywork-OR1's adaptive entropy coefficient (see the module docstring). State: (coef, last_entropy)."""

    def __init__(self, *, coef: float, target: float = 0.2, delta: float = 0.005, coef_min: float = 0.0,
                 coef_max: float = 1.0):
        self.target = _finite("target", target)
        self.delta = _finite("delta", delta)
        self.coef_min = _finite("coef_min", coef_min)
        self.coef_max = _finite("coef_max", coef_max)
        if self.coef_min > self.coef_max:
            raise CredoError(f"rl.entropy_control_params: adaptive coef_min {coef_min!r} is above coef_max {coef_max!r}")
        self.coef = _finite("initial coefficient (rl.entropy_coef)", coef)
        self.last_entropy = math.inf  # no measurement yet: the first step applies no bonus (as TRL)

    def coef_for_step(self) -> float:
        """The coefficient every micro-batch of the next optimizer step applies."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def observe(self, entropy: float) -> None:
        """Take the finished step's mean per-token entropy (nats) and move the coefficient by delta.
        A non-finite entropy (a step without loss tokens) leaves the state as it is."""
        if not math.isfinite(entropy):
            return
        if entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = float(entropy)

    def state(self) -> dict[str, Any]:
        return {"coef": self.coef, "last_entropy": None if math.isinf(self.last_entropy) else self.last_entropy}

    def load_state(self, state: dict[str, Any]) -> None:
        self.coef = float(state["coef"])
        self.last_entropy = math.inf if state["last_entropy"] is None else float(state["last_entropy"])


def make_entropy_control(name: str, params: dict[str, Any], coef: float):
    """rl.entropy_control / entropy_control_params (initial coefficient rl.entropy_coef) -> the
    controller, or None for "none" (the fixed rl.entropy_coef)."""
    if name == "none":
        return None
    cls = ENTROPY_CONTROLS.get(name)
    accepted = {n for n, p in inspect.signature(cls).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "coef"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise CredoError(f"rl.entropy_control_params: {name} has no parameter(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(sorted(accepted))}")
    return cls(coef=coef, **params)


CONTROLS_CATALOG = [
    Entry("adaptive", "entropy coefficient +- delta per optimizer step around a target entropy, applied only "
          "at or below it (defaults target 0.2, delta 0.005, [0, 1])", "Skywork-OR1 (arXiv 2505.22312)",
          "confirmed", "entropy"),
]
