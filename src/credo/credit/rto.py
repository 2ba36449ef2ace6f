"""RTO credit: a DPO model's token log-ratio as a dense reward, turned into token advantages.

Rewards per token come from `credo.objectives.preference.rto_token_rewards` (the official RTO form:
clipped beta1 log pi_dpo / pi_ref, a k1 KL penalty to the reference, and the clamped outcome score at
the last token). Advantages are then the discounted return-to-go (no critic) or GAE (with a critic's
values), computed over the loss tokens only: prompt, padding and environment tokens are skipped, so
the next state of a policy token is the next policy token of its row.
"""

from __future__ import annotations

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, provides_extras, score_tokens


def _check(inputs: CreditInputs, gamma: float, lam: float) -> torch.Tensor:
    inputs.require("logprobs", "ref_logprobs", "extras.dpo_logprobs", method="rto")
    dpo = inputs.extras["dpo_logprobs"]
    if tuple(dpo.shape) != tuple(inputs.loss_mask.shape):
        raise ValueError(
            f"credit estimator rto: extras['dpo_logprobs'] has shape {tuple(dpo.shape)}, expected "
            f"{tuple(inputs.loss_mask.shape)} (the sampled tokens' log-probs under the DPO model)"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"credit estimator rto: gamma and lam must be in [0, 1], got {gamma}, {lam}")
    return dpo


@CREDIT.register("rto")
@token_level(needs=("logprobs", "ref_logprobs", "values", "extras"))
def rto_advantages(
    inputs: CreditInputs,
    *,
    beta1: float = 0.05,
    clip: float = 0.05,
    kl_coef: float = 0.01,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """RTO: PPO advantages from the DPO model's dense token reward plus the outcome score at EOS.

    inputs.logprobs [B, T] (behaviour policy), inputs.ref_logprobs [B, T], inputs.rewards [B] (the
    outcome / reward-model score), inputs.loss_mask [B, T], inputs.extras["dpo_logprobs"] [B, T]
    (log-probs of the sampled tokens under the DPO-trained model), optional inputs.values [B, T]
    (a critic's V(s_t)) -> advantages [B, T] float32, 0 off the loss mask.
    reward_t = clip(beta1 (log pi_dpo - log pi_ref)_t, +-clip) - kl_coef (log pi - log pi_ref)_t
               + 1[t = last loss token] clamp(R, -10, 10)                     (`rto_token_rewards`)
    no critic:  A_t = sum_{t' >= t} gamma^(n(t') - n(t)) reward_t'  (return-to-go; n counts loss tokens)
    with critic: delta_t = reward_t + gamma V_next - V_t;  A_t = delta_t + gamma lam A_next   (GAE;
                 V_next = V at the row's next loss token, 0 after its last one)
    The official code runs PPO + GAE with a critic, so `values` is declared (the trainer then trains
    a value model); a caller without a critic (values None) gets the plain return-to-go (REINFORCE).
    An empty response gets no advantage. No whitening is applied here.
    Defaults (official `train_rto_llama_8b.sh`, OpenRLHF): beta1 0.05, clip 0.05, kl_coef 0.01,
    gamma 1, lam 0.95.
    Paper: "DPO Meets PPO: Reinforced Token Optimization for RLHF" (arXiv 2404.18922).
    Status: confirmed (official code zkshan2002/RTO `_compute_dpo_rewards`, `compute_reward`,
    `get_advantages_and_returns`; credit spec Sec. 17b). The no-critic return-to-go is this library's.
    """
    from credo.objectives.preference import rto_token_rewards  # lazy: credo.objectives imports all its modules

    dpo = _check(inputs, gamma, lam)
    mask = inputs.loss_mask.bool()
    reward = rto_token_rewards(
        dpo, inputs.ref_logprobs, inputs.logprobs, mask, inputs.rewards, beta1=beta1, clip=clip, kl_coef=kl_coef
    )  # [B, T]
    values = None if inputs.values is None else inputs.values.float()
    B, T = mask.shape
    adv = torch.zeros(B, T, dtype=torch.float32)
    running = torch.zeros(B)  # A (or return) at the row's next loss token
    next_value = torch.zeros(B)  # V at the row's next loss token
    for t in reversed(range(T)):  # vectorized over rows, a loop over positions (as verl / OpenRLHF)
        m = mask[:, t]
        if values is None:
            now = reward[:, t] + gamma * running
        else:
            delta = reward[:, t] + gamma * next_value - values[:, t]
            now = delta + gamma * lam * running
            next_value = torch.where(m, values[:, t], next_value)
        adv[:, t] = torch.where(m, now, torch.zeros_like(now))
        running = torch.where(m, now, running)
    return adv


def rto_advantages_loop(
    inputs: CreditInputs, *, beta1: float = 0.05, clip: float = 0.05, kl_coef: float = 0.01,
    gamma: float = 1.0, lam: float = 0.95,
) -> list[list[float]]:
    """Readable reference for `rto_advantages`: plain Python over rows and their loss tokens."""
    dpo = _check(inputs, gamma, lam).tolist()
    mask = inputs.loss_mask.tolist()
    ref, logp, score = inputs.ref_logprobs.tolist(), inputs.logprobs.tolist(), inputs.rewards.tolist()
    values = None if inputs.values is None else inputs.values.tolist()
    out = []
    for b, row in enumerate(mask):
        positions = [t for t, on in enumerate(row) if on]
        rewards = []
        for t in positions:
            r = beta1 * (dpo[b][t] - ref[b][t])
            if clip > 0:
                r = max(-clip, min(clip, r))
            rewards.append(r - kl_coef * (logp[b][t] - ref[b][t]))
        if positions:
            rewards[-1] += max(-10.0, min(10.0, score[b]))
        adv = [0.0] * len(row)
        running, next_value = 0.0, 0.0
        for k in reversed(range(len(positions))):
            t = positions[k]
            if values is None:
                running = rewards[k] + gamma * running
            else:
                running = rewards[k] + gamma * next_value - values[b][t] + gamma * lam * running
                next_value = values[b][t]
            adv[t] = running
        out.append(adv)
    return out


# -- what training hands this estimator (credit/providers.py) ----------------------------------------


@provides_extras(rto_advantages)
def dpo_logprobs(ctx: StepContext) -> dict:
    """dpo_logprobs [B, T]: the sampled tokens scored by RTO's frozen DPO model (`rl.dpo_model`: a
    model folder, a credo checkpoint or a preset name), loaded once."""
    src = ctx.sources
    if not src.dpo_model:
        raise ValueError("credit estimator rto needs a DPO-trained model: set rl.dpo_model to its folder "
                         "(a Hugging Face folder or a credo checkpoint)")
    if "dpo_model" not in src.cache:
        from credo.models import load_policy

        src.cache["dpo_model"] = load_policy(src.dpo_model).model.eval().requires_grad_(False)
    return {"dpo_logprobs": score_tokens(ctx, src.cache["dpo_model"], ctx.batch)}


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("rto", "dense token reward clip(beta1 log pi_dpo/pi_ref) - KL + clamped outcome at EOS, then "
          "return-to-go (or GAE with a critic) (beta1 0.05, clip 0.05, kl 0.01)",
          "DPO Meets PPO: Reinforced Token Optimization (arXiv 2404.18922)", "confirmed",
          "DPO model log-probs (extras['dpo_logprobs']); reference model; critic values (else return-to-go)"),
]
