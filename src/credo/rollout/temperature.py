"""Adaptive sampling temperatures: a per-row temperature at every decoding step (`rollout.temperature_schedule`).

A schedule is a callable `logits [A, V] (float32) -> temperatures [A]` that the torch engine applies
at each decoding step in place of the fixed `sampling.temperature` (`SamplingParams.temperature_fn`;
`torch_engine.py::choose_tokens`). The recorded sampler logprobs are those of the distribution
actually sampled, log softmax(logits / T_a), so importance corrections (`rl.is_correction`) see the
true behaviour policy; the trainer's recomputed old logprobs stay at the fixed temperature.

A schedule may read the training batch: `needs_entropy = True` makes the trainer hand it each step's
per-token entropies under the pre-update policy (`observe(entropy [B, T], mask [B, T])`, one no-grad
forward, `train/rl.py::observe_sampling_entropy`), and its state (`state()` / `load_state()`, JSON)
goes into every RL checkpoint, so a resumed run samples with the same temperatures.

Registered:
- "hapo": HAPO's entropy-based temperature, T_a = T (1 + clamp(h_hat_a, -1, 1) tau), h_hat from the
  row's next-token entropy normalised with the previous training batch's statistics
  (`objectives/entropy_aware.py::hapo_sampling_temperature`, `hapo_entropy_signal`). Before the first
  observation (the first RL step) it samples at the fixed temperature T. Defaults: tau 0.05, pivot 0.8,
  signed h_hat (the paper's intent; signed=False is the released code's sign). Paper: "From Uniform to
  Heterogeneous: Tailoring Policy Optimization to Every Token's Nature" (arXiv 2509.16591); the official
  code patches vLLM (`compute_entropy_based_temperature`), credo's torch engine does it natively.
  The vLLM engine cannot apply it (refused at validation).
"""

from __future__ import annotations

from typing import Any

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.objectives.entropy_aware import EntropyStats, hapo_entropy_signal, hapo_sampling_temperature
from credo.registry import Registry

TEMPERATURE_SCHEDULES: Registry = Registry("temperature schedule")
_STATS = ("median", "std", "scale_pos", "scale_neg")  # EntropyStats' fields


@TEMPERATURE_SCHEDULES.register("hapo")
class HAPOTemperature:
    """HAPO's adaptive sampling temperature (see the module docstring). State: the last batch's
    EntropyStats (median, std, scale_pos, scale_neg of the normalised log-entropy)."""

    needs_entropy = True

    def __init__(self, *, temperature: float = 1.0, tau: float = 0.05, pivot: float = 0.8, signed: bool = True,
                 eps: float = 1e-6):
        if not 0.0 <= pivot <= 1.0:
            raise CredoError(f"rollout.temperature_params: hapo pivot must be in [0, 1], got {pivot!r}")
        if not tau >= 0.0:
            raise CredoError(f"rollout.temperature_params: hapo tau must be >= 0, got {tau!r}")
        self.temperature, self.tau, self.pivot, self.signed, self.eps = float(temperature), tau, pivot, signed, eps
        self.stats: EntropyStats | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [A, V] -> temperatures [A]."""
        if self.stats is None:
            return torch.full((logits.shape[0],), self.temperature, dtype=torch.float32, device=logits.device)
        return hapo_sampling_temperature(logits, self.stats, temperature=self.temperature, tau=self.tau,
                                         signed=self.signed, eps=self.eps).float()

    def observe(self, entropy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Take the training batch's statistics (entropy [B, T], mask [B, T]); returns them as metrics."""
        _, stats = hapo_entropy_signal(entropy, mask, pivot=self.pivot, signed=self.signed)
        self.stats = EntropyStats(*(getattr(stats, k).detach().float().cpu() for k in _STATS))
        return {"temp_entropy_median": float(self.stats.median), "temp_entropy_std": float(self.stats.std)}

    def state(self) -> dict[str, Any] | None:
        return None if self.stats is None else {k: float(getattr(self.stats, k)) for k in _STATS}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.stats = None if state is None else EntropyStats(
            *(torch.tensor(state[k], dtype=torch.float32) for k in _STATS))


def make_schedule(name: str, params: dict[str, Any], temperature: float):
    """rollout.temperature_schedule / temperature_params -> the schedule, or None for "none"."""
    if name == "none":
        return None
    factory = TEMPERATURE_SCHEDULES.get(name)
    try:
        return factory(temperature=temperature, **params)
    except TypeError as exc:
        raise CredoError(f"rollout.temperature_params {params}: {exc}") from exc


CATALOG = [
    Entry("hapo", "HAPO's entropy-adaptive sampling temperature T(1 + clamp(h_hat, -1, 1) tau) per decoding step, "
          "statistics from the previous training batch", "From Uniform to Heterogeneous (arXiv 2509.16591)",
          "confirmed", "torch engine; rollout.temperature_schedule = \"hapo\""),
]
