"""Per-token KL estimators between the policy and a reference, from sampled-token logprobs.

Schulman, "Approximating KL Divergence" (2020). With log-ratio d = ref_logprobs - logprobs
(samples drawn from the policy):
  k1 = -d                      unbiased, high variance, can be negative
  k2 = d^2 / 2                 biased, low variance
  k3 = exp(d) - d - 1          unbiased, low variance, >= 0 ("low_var_kl" in verl, GRPO's choice)
As in verl, d is clamped to [-20, 20] before exp and k3 is clamped to [-10, 10].
All take logprobs [B, T] and ref_logprobs [B, T] and return [B, T] (mask applied by the reduction).
"""

from __future__ import annotations

import torch

from credo.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    d = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
