"""Importance-sampling corrections of the sampler/trainer mismatch and the policy lag.

The rollout engine samples with its own numerics (vLLM kernels, bf16 KV-cache decoding) and, with
asynchronous rollouts, with weights that are a few updates old. The trainer's recomputed behaviour
logprobs (`batch.old_logprobs`, the PPO "old" policy) then differ from the sampler's
(`batch.sampler_logprobs`), and the PPO ratio pi_theta / pi_old no longer corrects for where the
samples came from. These corrections reweight or drop tokens by

    k[b, t] = exp(old_logprobs[b, t] - sampler_logprobs[b, t])     = pi_old / pi_sampler

(the "decoupled" three-policy form of verl's rollout correction). Each returns a `Correction`:
weights [B, T] (detached, multiplied into the per-token loss) and keep [B, T] (tokens that stay in
the loss mask; dropped tokens leave the numerator and the global token count alike). Log-ratios are
clamped to [-20, 20] before exp (verl's SAFETY_BOUND).

| name     | weights                                   | dropped                               | source |
|----------|-------------------------------------------|---------------------------------------|--------|
| tis      | min(k, cap) per token (cap 2)             | none                                  | TIS, Yao et al. 2025; verl rollout_is="token" |
| seq_tis  | min(prod_t k, cap) per sequence (cap 2)   | none                                  | verl rollout_is="sequence" |
| icepop   | k inside [low, high] (0.5, 5)             | tokens with k outside [low, high]     | IcePop, Ring-1T (arXiv 2510.18855) |
| seq_mis  | prod_t k when <= cap (cap 2)              | sequences with prod_t k > cap         | Seq-MIS (TRL issue 4493; Qwen team's mismatch analysis) |
| geo_mask | 1                                         | sequences whose geometric-mean k is outside [low, high] (0.5, 2) | verl rollout_rs="seq_mean_k1" |
| token_mask | 1                                       | tokens with k outside [low, high] (0.5, 2) | verl rollout_rs="token_k1" |

`credo list corrections` lists them; `rl.is_correction` chooses one and `rl.is_params` sets its
thresholds. They need the trainer's recomputed behaviour logprobs (`rl.recompute_old_logprobs`,
on by default): without them old == sampler and every k is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from credo.entry import Entry
from credo.registry import Registry

LOG_RATIO_BOUND = 20.0


@dataclass
class Correction:
    """weights [B, T] float (1 where nothing is reweighted), keep [B, T] bool (subset of the loss
    mask), metrics: ratio statistics over the loss mask and the fractions truncated / masked."""

    weights: torch.Tensor
    keep: torch.Tensor
    metrics: dict[str, float]


IS_CORRECTIONS: Registry[Callable[..., Correction]] = Registry("importance-sampling correction")


def _log_ratio(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log k [B, T], 0 off the mask (so sums over a row are sums over its loss tokens)."""
    lr = (old.float() - sampler.float()).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return torch.where(mask, lr, torch.zeros_like(lr))


def _stats(log_k: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
    n = int(mask.sum())
    if n == 0:
        return {"is_ratio_mean": 1.0, "is_ratio_min": 1.0, "is_ratio_max": 1.0,
                "is_truncated_frac": 0.0, "is_masked_frac": 0.0}
    k = log_k.exp()[mask]
    return {"is_ratio_mean": float(k.mean()), "is_ratio_min": float(k.min()), "is_ratio_max": float(k.max()),
            "is_truncated_frac": float((truncated & mask).sum()) / n,
            "is_masked_frac": float((mask & ~keep).sum()) / n}


@IS_CORRECTIONS.register("tis")
def tis(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *, cap: float = 2.0) -> Correction:
    """Token-level truncated importance sampling: w[b, t] = min(k[b, t], cap).

    old, sampler [B, T] logprobs; mask [B, T] bool. Paper: "Your Efficient RL Framework Secretly
    Brings You Off-Policy RL Training" (Yao et al. 2025, fengyao.notion.site; no arXiv id) and verl's
    rollout_is="token" with rollout_is_threshold 2.0; TRL applies the same by default with vLLM.
    Defaults: cap 2.
    """
    log_k = _log_ratio(old, sampler, mask)
    k = log_k.exp()
    weights = torch.where(mask, k.clamp(max=cap), torch.ones_like(k))
    return Correction(weights, mask.clone(), _stats(log_k, mask, k > cap, mask))


@IS_CORRECTIONS.register("seq_tis")
def seq_tis(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *, cap: float = 2.0) -> Correction:
    """Sequence-level truncated IS: w[b, :] = min(prod_t k[b, t], cap) on every loss token of row b.

    old, sampler [B, T]; mask [B, T]. verl rollout_is="sequence" (threshold 2.0). Unbiased for the
    sequence-level objective before truncation, high variance for long sequences. Defaults: cap 2.
    """
    log_k = _log_ratio(old, sampler, mask)
    seq = log_k.sum(-1).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()  # [B]
    w = seq.clamp(max=cap)[:, None].expand_as(log_k)
    weights = torch.where(mask, w, torch.ones_like(w))
    truncated = (seq > cap)[:, None].expand_as(mask)
    return Correction(weights, mask.clone(), _stats(log_k, mask, truncated, mask))


@IS_CORRECTIONS.register("icepop")
def icepop(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *,
           low: float = 0.5, high: float = 5.0) -> Correction:
    """IcePop's double-sided masked IS: M(k; a, b) = k for k in [a, b], else the token is dropped.

    old, sampler [B, T]; mask [B, T]. Paper: "Every Step Evolves: Scaling Reinforcement Learning for
    Trillion-Scale Thinking Model" (Ring-1T, arXiv 2510.18855), IcePop; objective
    E[M(pi_train / pi_infer; a, b) * min(r A, clip(r) A)]. Defaults: a = 0.5, b = 5 (Ring-1T).
    """
    log_k = _log_ratio(old, sampler, mask)
    k = log_k.exp()
    inside = (k >= low) & (k <= high)
    keep = mask & inside
    weights = torch.where(keep, k, torch.ones_like(k))
    return Correction(weights, keep, _stats(log_k, mask, torch.zeros_like(mask), keep))


@IS_CORRECTIONS.register("seq_mis")
def seq_mis(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *, cap: float = 2.0) -> Correction:
    """Sequence-level masked IS: w[b, :] = rho_b = prod_t k[b, t] when rho_b <= cap, else row b is dropped.

    old, sampler [B, T]; mask [B, T]. Seq-MIS as proposed for TRL (huggingface/trl issue 4493) after
    the Qwen team's mismatch analysis; reconstructed (no single reference implementation).
    Defaults: cap 2.
    """
    log_k = _log_ratio(old, sampler, mask)
    rho = log_k.sum(-1).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()  # [B]
    keep = mask & (rho <= cap)[:, None]
    weights = torch.where(keep, rho[:, None].expand_as(log_k), torch.ones_like(log_k))
    return Correction(weights, keep, _stats(log_k, mask, torch.zeros_like(mask), keep))


@IS_CORRECTIONS.register("geo_mask")
def geo_mask(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *,
             low: float = 0.5, high: float = 2.0) -> Correction:
    """Geometric sequence masking: drop row b when exp(mean_t log k[b, t]) is outside [low, high].

    old, sampler [B, T]; mask [B, T]. verl rollout_rs="seq_mean_k1" (rejection, no reweighting):
    length-invariant, unlike the product. Defaults: [0.5, 2].
    """
    log_k = _log_ratio(old, sampler, mask)
    counts = mask.sum(-1).clamp(min=1)
    geo = (log_k.sum(-1) / counts).exp()  # [B]
    keep = mask & ((geo >= low) & (geo <= high))[:, None]
    return Correction(torch.ones_like(log_k), keep, _stats(log_k, mask, torch.zeros_like(mask), keep))


@IS_CORRECTIONS.register("token_mask")
def token_mask(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *,
               low: float = 0.5, high: float = 2.0) -> Correction:
    """Token rejection: drop tokens whose k is outside [low, high]; kept tokens are not reweighted.

    old, sampler [B, T]; mask [B, T]. verl rollout_rs="token_k1". Defaults: [0.5, 2].
    """
    log_k = _log_ratio(old, sampler, mask)
    k = log_k.exp()
    keep = mask & (k >= low) & (k <= high)
    return Correction(torch.ones_like(k), keep, _stats(log_k, mask, torch.zeros_like(mask), keep))


# not `CATALOG`: the objectives catalog lists OBJECTIVES only; `credo list corrections` prints these
CORRECTIONS_CATALOG = [
    Entry("tis", "token-level truncated IS weight min(pi_old / pi_sampler, 2)", "confirmed",
          "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (Yao et al. 2025; verl rollout_is=token)",
          "trainer-recomputed behaviour logprobs (rl.recompute_old_logprobs)"),
    Entry("seq_tis", "sequence-level truncated IS weight min(prod_t k, 2) on every token", "confirmed",
          "verl rollout correction (rollout_is=sequence)", "trainer-recomputed behaviour logprobs"),
    Entry("icepop", "tokens with k outside [0.5, 5] dropped, kept ones weighted by k", "confirmed",
          "Ring-1T / IcePop (arXiv 2510.18855)", "trainer-recomputed behaviour logprobs"),
    Entry("seq_mis", "sequence weight prod_t k, sequences with prod_t k > 2 dropped", "reconstructed",
          "Seq-MIS (huggingface/trl issue 4493)", "trainer-recomputed behaviour logprobs"),
    Entry("geo_mask", "sequences with geometric-mean k outside [0.5, 2] dropped, no reweighting", "confirmed",
          "verl rollout correction (rollout_rs=seq_mean_k1)", "trainer-recomputed behaviour logprobs"),
    Entry("token_mask", "tokens with k outside [0.5, 2] dropped, no reweighting", "confirmed",
          "verl rollout correction (rollout_rs=token_k1)", "trainer-recomputed behaviour logprobs"),
]
