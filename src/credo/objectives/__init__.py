"""Policy objectives: pure functions fn(logprobs, batch, *, hparams) -> LossTerms, by name."""

from credo.objectives import grpo  # noqa: F401  (registers "grpo")
from credo.objectives import baselines  # noqa: F401  (registers "dr_grpo", "lite_ppo")
from credo.objectives import dapo  # noqa: F401  (registers "dapo")
from credo.objectives import ratio_variants  # noqa: F401  (registers "gspo", "gspo_token", "cispo", "sapo")
from credo.objectives import discriminative, trust_region  # noqa: F401  (disco(_b), drpo, copg; bpo, gbpo, fiberpo, garl)
from credo.objectives import distribution, entropy_aware  # noqa: F401  (dcpo, nlpo, bupo; gtpo, lp_reg, hapo_token, tea_rl)
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
