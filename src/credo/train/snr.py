"""OBLR-PO's SNR learning rate in the trainer: the gradient SNR of a step from running sums.

The per-sample gradients of `credit/normalisation.py::oblr_snr` are, in the trainer, the minibatch
gradients of one RL step's optimizer steps (rl.minibatches x rl.epochs of them), each read after its
backward passes and before clipping. Keeping them all would cost one parameter copy per minibatch;
the SNR only needs three running sums over the n recorded gradients g_1..g_n:

    S = sum_i g_i  (a parameter-sized float64 buffer),  Q = sum_i ||g_i||^2,  n
    mean m = S / n ;  signal = ||m||^2 = ||S||^2 / n^2
    noise = (1/n) sum_i ||g_i - m||^2 = (1/n) sum_i (||g_i||^2 - 2 g_i.m + ||m||^2) = Q / n - ||m||^2
    SNR = signal / noise

which is `oblr_snr` of the stacked gradients (tests/test_oblr_wiring.py checks it). As `oblr_snr`:
n = 1, or no noise, gives +inf when m != 0 and 0 when every gradient is 0. Q / n - ||m||^2 cancels
in floating point when the gradients are (nearly) identical, so a noise below 1e-12 Q / n counts as
no noise. A minibatch gradient that is not finite (its optimizer step is skipped) is not recorded.

The learning rate of step s is lr_at(s) * lr_scale, where lr_scale comes from
`oblr_lr_update(state, snr, base_lr=1.0)` after step s - 1 (1.0 before the first step), so it is a
function of the checkpointed (OBLRState, lr_scale) only and resume stays exact.
"""

from __future__ import annotations

import math

import torch

from credo.credit.normalisation import OBLRState

# below this fraction of the mean squared gradient norm, Q/n - ||m||^2 is rounding, not noise
NOISE_RTOL = 1e-12


def snr_from_sums(sum_norm_sq: float, sum_sq: float, count: int) -> float:
    """SNR from the running sums: sum_norm_sq = ||S||^2, sum_sq = Q = sum_i ||g_i||^2, count = n.

    count 0 (nothing recorded) -> nan: no measurement (the trainer then leaves its lr state alone).
    """
    if count == 0:
        return math.nan
    signal = sum_norm_sq / count ** 2
    mean_sq = sum_sq / count
    noise = mean_sq - signal if count > 1 else 0.0
    if not noise > NOISE_RTOL * mean_sq:
        return math.inf if signal > 0 else 0.0
    return signal / noise


class GradSNR:
    """Running sums of the minibatch gradients of one RL step (created per step, never checkpointed:
    a step either finishes, and its SNR goes into the checkpointed OBLRState, or is redone)."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}  # parameter index -> sum of its gradients, float64
        self.sum_sq = 0.0
        self.count = 0

    def add(self, parameters) -> bool:
        """Record the current .grad of `parameters` as one gradient (a None grad is zero). Returns
        False, recording nothing, when the gradient is not finite."""
        grads = [(i, p.grad) for i, p in enumerate(parameters) if p.grad is not None]
        sq = sum(float(g.detach().to(torch.float64).pow(2).sum()) for _, g in grads)
        if not math.isfinite(sq):
            return False
        for i, g in grads:
            g = g.detach().to(torch.float64)
            if i in self.sums:
                self.sums[i].add_(g)
            else:
                self.sums[i] = g.clone()
        self.sum_sq += sq
        self.count += 1
        return True

    def snr(self) -> float:
        total = sum(float(s.pow(2).sum()) for s in self.sums.values())
        return snr_from_sums(total, self.sum_sq, self.count)


def lr_state_to_json(state: OBLRState, lr_scale: float) -> dict:
    """Checkpoint form (state.json["snr_lr"]): Python floats round-trip exactly through JSON (NaN too)."""
    return {"snr_ema": float(state.snr_ema), "snr_ref": float(state.snr_ref), "steps": int(state.steps),
            "lr_scale": float(lr_scale)}


def lr_state_from_json(d: dict) -> tuple[OBLRState, float]:
    return (OBLRState(snr_ema=torch.tensor(d["snr_ema"], dtype=torch.float64),
                      snr_ref=torch.tensor(d["snr_ref"], dtype=torch.float64),
                      steps=torch.tensor(d["steps"], dtype=torch.long)), float(d["lr_scale"]))
