"""DRO: REINFORCE with a quadratic penalty on the log-ratio to the behaviour policy.

Peer: verl-project/verl commit 1dda039b9c6311889a9c9a26040677e1254814f9, `verl/trainer/ppo/core_algos.py`
`compute_policy_loss_dro` (registered "dro", docstring "Direct Reward Optimization with a quadratic
log-ratio penalty"; docs/algo/dro.md: "DRO expects the caller to construct advantages appropriate for its
soft off-policy formulation"). TRL (f2cd577) has no DRO loss type. The paper is "Offline Regularised
Reinforcement Learning for Large Language Models Alignment" (Richemond et al., arXiv 2405.19107, Direct
Reward Optimisation): its loss (1/2)(r - V - tau log(pi / pi_ref))^2 has the policy gradient
-tau (A - tau log(pi / pi_ref)) grad log pi with A = r - V, which is tau times the gradient of verl's form
with beta = tau and the sampler pi_old in place of pi_ref. credo follows verl's code (the on-policy form);
the paper's offline setting and learned value V are not reproduced (A comes from rl.credit).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.errors import CredoError
from credo.objectives.base import OBJECTIVES, LossTerms, checks
from credo.objectives.common import add_kl_penalty, ratio_metrics
from credo.objectives.kl import kl_k3


def _check_dro(params: dict, cfg) -> None:
    beta = params["beta"]
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise CredoError(f"rl.objective dro: beta must be a finite number > 0 (verl's dro_beta), got {beta!r}")


@OBJECTIVES.register("dro")
@checks(_check_dro)
def dro_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    beta: float = 0.05,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DRO as verl: L_t = -(A_t logp_t - (beta / 2) (logp_t - old_logp_t)^2).

    logprobs [B, T] (policy, with grad); uses batch.behaviour_logprobs, batch.advantages, batch.loss_mask
    -> LossTerms(per_token [B, T]). The log-ratio is not clamped (verl's form has no exp to overflow).
    grad = -(A_t - beta log r_t) grad(logp_t): the penalty pulls the policy back to the sampler's as the
    log-ratio grows, a soft trust region instead of a clip.
    Defaults: beta 0.05 (verl has no default, `policy_loss.dro_beta` must be set > 0; 0.05 is the value
    of verl's own example command in PR #7245), no KL. Recommended reduction: `token_mean` (verl's default).
    Paper: DRO, arXiv 2405.19107 (see the module docstring for how verl's loss maps onto it).
    Status: confirmed against verl 1dda039 `compute_policy_loss_dro`; the paper's offline value model is
    not reproduced.
    """
    log_ratio = logprobs - batch.behaviour_logprobs
    per_token = -(logprobs * batch.advantages - 0.5 * beta * log_ratio.square())
    terms = LossTerms(per_token=per_token, metrics=ratio_metrics(log_ratio.clamp(-20, 20), batch.loss_mask))
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="dro_loss")


CATALOG = [
    Entry("dro", "REINFORCE minus a (beta/2) squared log-ratio penalty to the sampler (beta 0.05), as verl; "
          "the paper's offline value model not reproduced", "DRO (arXiv 2405.19107)", "confirmed", "groups"),
]
