"""Token-level GAE with a critic (the PPO advantage), and the pieces the critic's value loss reuses.

    outcome_token_rewards  rewards [B] -> r [B, T]: outcome on the last loss token, optional KL reward
    gae_critic_returns     the critic's targets A + V on the same KL-penalised token rewards
    gae_returns            r [B, T], values [B, T], mask -> (advantages, returns) [B, T], not whitened
    masked_whiten          batch whitening over the masked tokens (verl's `masked_whiten`)
    gae                    the registered estimator: the three above, in that order

GAE runs over the loss tokens of each row only: prompt, padding and tool / environment tokens are
skipped, carrying V and the running advantage across them (verl's multi-turn form), so a tool
response between two turns is not a step of the backup. The value after the last loss token is 0
(terminal state).
"""

from __future__ import annotations

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level

# Defaults of objectives.md §1 (verl): gamma = lam = 1.0 with whitening. The classic (0.99, 0.95)
# and OpenRLHF's lam = 0.95 are available as arguments.
GAMMA = 1.0
LAM = 1.0
WHITEN_EPS = 1e-8  # verl's masked_whiten


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries of the whole batch, 0 elsewhere.

    x [B, T] float, mask [B, T] bool -> [B, T] float64. mean and var (unbiased, N - 1) are over the
    masked entries, as verl's `masked_whiten`. Fewer than two masked entries, or all equal: 0 (verl
    raises on a single entry; a constant has nothing to whiten).
    """
    x = x.to(torch.float64)
    mask = mask.bool()
    out = torch.zeros_like(x)
    vals = x[mask]
    if vals.numel() < 2 or bool(vals.max() == vals.min()):
        return out
    mean = vals.mean()
    var = ((vals - mean) ** 2).sum() / (vals.numel() - 1)
    out[mask] = (vals - mean) / torch.sqrt(var + eps)
    return out


def outcome_token_rewards(
    rewards: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Token rewards [B, T] float64: R_b on the last loss token of row b, minus kl_coef * KL_t.

    rewards [B], loss_mask [B, T] bool, logprobs / ref_logprobs [B, T] (needed when kl_coef != 0).
    KL_t = logprobs - ref_logprobs (verl `kl_penalty="kl"`, the k1 estimator), on loss tokens only.
    A row without loss tokens gets no reward anywhere.
    """
    mask = loss_mask.bool()
    B, T = mask.shape
    r = torch.zeros(B, T, dtype=torch.float64)
    has = mask.any(dim=1)
    last = (T - 1) - torch.flip(mask, dims=[1]).to(torch.long).argmax(dim=1)  # last True per row
    rows = torch.arange(B)[has]
    r[rows, last[has]] = rewards.to(torch.float64)[has]
    if kl_coef:
        if logprobs is None or ref_logprobs is None:
            raise ValueError("outcome_token_rewards: kl_coef != 0 needs logprobs and ref_logprobs")
        kl = logprobs.to(torch.float64) - ref_logprobs.to(torch.float64)
        r = r - kl_coef * torch.where(mask, kl, torch.zeros_like(kl))
    return r


def gae_returns(
    rewards_tok: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    lam: float = LAM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the masked tokens of each row: (advantages, returns), both [B, T] float64, 0 off mask.

    rewards_tok [B, T], values [B, T] (V(s_t), the state before token t), mask [B, T] bool.
    Over the loss tokens t_1 < ... < t_L of a row (unmasked positions are skipped, not steps):
        delta_t = r_t + gamma V_next - V_t      V_next = V of the next loss token, 0 after the last
        A_t     = delta_t + gamma lam A_next     returns_t = A_t + V_t   (the critic's target)
    Not whitened (the critic's returns are taken before whitening, as in verl).
    Paper: "High-Dimensional Continuous Control Using Generalized Advantage Estimation"
    (arXiv 1506.02438). Status: confirmed (verl `compute_gae_advantage_return`).
    """
    r = rewards_tok.to(torch.float64)
    v = values.to(torch.float64)
    m = mask.to(torch.float64)
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    next_value = torch.zeros(B, dtype=torch.float64)
    running = torch.zeros(B, dtype=torch.float64)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        candidate = delta + gamma * lam * running
        # an unmasked position leaves the backup untouched: V and A carry over it
        running = m[:, t] * candidate + (1 - m[:, t]) * running
        next_value = m[:, t] * v[:, t] + (1 - m[:, t]) * next_value
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + v) * m


def gae_returns_loop(
    rewards_tok: list[list[float]], values: list[list[float]], mask: list[list[bool]],
    gamma: float = GAMMA, lam: float = LAM,
) -> tuple[list[list[float]], list[list[float]]]:
    """Readable reference for `gae_returns`: each row's loss tokens taken out, GAE on them, put back."""
    advs, rets = [], []
    for r_row, v_row, m_row in zip(rewards_tok, values, mask):
        idx = [t for t, m in enumerate(m_row) if m]
        adv_row, ret_row = [0.0] * len(m_row), [0.0] * len(m_row)
        running, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = r_row[t] + gamma * next_value - v_row[t]
            running = delta + gamma * lam * running
            next_value = v_row[t]
            adv_row[t], ret_row[t] = running, running + v_row[t]
        advs.append(adv_row)
        rets.append(ret_row)
    return advs, rets


def _kl_needs(hparams: dict) -> tuple[str, ...]:
    """KL in the reward reads the behaviour and reference logprobs (so the trainer loads a reference)."""
    return ("logprobs", "ref_logprobs") if hparams.get("kl_coef") else ()


def gae_token_rewards(inputs: CreditInputs, *, kl_coef: float = 0.0) -> torch.Tensor:
    """The token rewards r [B, T] float64 that both the advantages and the critic's returns are built
    from: the outcome on the last loss token minus kl_coef * (logprobs - ref_logprobs) on every loss
    token (verl `apply_kl_penalty` with kl_penalty="kl": token_level_scores - beta * kld * mask)."""
    if kl_coef:
        inputs.require("logprobs", "ref_logprobs", method="gae (kl_coef != 0)")
    return outcome_token_rewards(inputs.rewards, inputs.loss_mask.bool(), logprobs=inputs.logprobs,
                                 ref_logprobs=inputs.ref_logprobs, kl_coef=kl_coef)


def gae_critic_returns(
    inputs: CreditInputs, *, gamma: float = GAMMA, lam: float = LAM, kl_coef: float = 0.0, **_: object
) -> torch.Tensor:
    """The critic's targets [B, T] float64 of `gae`: returns = A + V before whitening, on the same
    KL-penalised token rewards as the advantages (verl `compute_gae_advantage_return`'s `returns`).
    Other keywords of `gae` (whiten, whiten_eps) do not change the returns and are ignored."""
    inputs.require("values", method="gae")
    mask = inputs.loss_mask.bool()
    return gae_returns(gae_token_rewards(inputs, kl_coef=kl_coef), inputs.values, mask, gamma, lam)[1]


@CREDIT.register("gae")
@token_level(needs=("values",), needs_when=_kl_needs, returns=gae_critic_returns)
def gae(
    inputs: CreditInputs,
    *,
    gamma: float = GAMMA,
    lam: float = LAM,
    kl_coef: float = 0.0,
    whiten: bool = True,
    whiten_eps: float = WHITEN_EPS,
) -> torch.Tensor:
    """PPO's token-level GAE advantage from a critic.

    inputs.rewards [B], inputs.values [B, T] (V(s_t) before token t), inputs.loss_mask [B, T]
    -> advantages [B, T] float32, 0 off the loss mask.
    r_t = R on the last loss token - kl_coef (logprobs_t - ref_logprobs_t)   (KL in the reward, k1)
    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}  (over loss tokens only,
    V after the last one = 0);  whiten=True: A <- (A - mean) / sqrt(var + whiten_eps) over every loss
    token of the batch (unbiased var). With gamma = lam = 1 and kl_coef = 0, A_t = R - V_t before
    whitening. The critic's target is `gae_critic_returns` (returns = A + V before whitening, on the
    same KL-penalised r_t), which the trainer reads through `token_level(returns=...)`.
    Defaults: gamma = 1.0, lam = 1.0 (verl, objectives.md §1; the brief's lam = 0.95 is OpenRLHF's and
    MA-RLHF's), kl_coef = 0 (verl uses 0.001 when KL-in-reward is on), whiten = True (verl always
    whitens GAE advantages), whiten_eps = 1e-8.
    Degenerate: an empty response gives zeros; fewer than two loss tokens in the batch, or all
    advantages equal, whiten to 0; zero values give A_t = sum of the rewards ahead (gamma = lam = 1: R).
    Needs: values (a critic); logprobs and ref_logprobs too when kl_coef != 0 (declared through
    `needs_when`, so the trainer then loads the frozen reference model and hands both over).
    Papers: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation" (arXiv 1506.02438).
    Status: confirmed (verl `compute_gae_advantage_return`, `masked_whiten`, and the KL-penalised
    token rewards of `apply_kl_penalty`, verl 0.9.1). Loop reference: `gae_loop`.
    """
    inputs.require("values", method="gae")
    mask = inputs.loss_mask.bool()
    adv, _ = gae_returns(gae_token_rewards(inputs, kl_coef=kl_coef), inputs.values, mask, gamma, lam)
    if whiten:
        adv = masked_whiten(adv, mask, eps=whiten_eps)
    return adv.to(torch.float32)


def _whiten_loop(values: list[float], eps: float) -> list[float]:
    if len(values) < 2 or max(values) == min(values):
        return [0.0] * len(values)
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return [(v - mean) / (var + eps) ** 0.5 for v in values]


def gae_loop(
    inputs: CreditInputs,
    *,
    gamma: float = GAMMA,
    lam: float = LAM,
    kl_coef: float = 0.0,
    whiten: bool = True,
    whiten_eps: float = WHITEN_EPS,
) -> torch.Tensor:
    """Readable reference for `gae` (plain Python per row)."""
    mask = inputs.loss_mask.bool().tolist()
    values = inputs.values.double().tolist()
    rewards_tok = []
    for b, m_row in enumerate(mask):
        row = [0.0] * len(m_row)
        idx = [t for t, m in enumerate(m_row) if m]
        for t in idx:
            if kl_coef:
                row[t] -= kl_coef * (float(inputs.logprobs[b, t]) - float(inputs.ref_logprobs[b, t]))
        if idx:
            row[idx[-1]] += float(inputs.rewards[b])
        rewards_tok.append(row)
    adv, _ = gae_returns_loop(rewards_tok, values, mask, gamma, lam)
    if whiten:
        flat = _whiten_loop([a for a_row, m_row in zip(adv, mask) for a, m in zip(a_row, m_row) if m], whiten_eps)
        it = iter(flat)
        adv = [[next(it) if m else 0.0 for m in m_row] for m_row in mask]
    return torch.tensor(adv, dtype=torch.float32).reshape(inputs.loss_mask.shape)


CATALOG = [
    Entry("gae", "PPO token-level GAE from a critic; outcome on the last token, optional KL reward, whitened",
          "Proximal Policy Optimization Algorithms (arXiv 1707.06347); GAE (arXiv 1506.02438)", "confirmed",
          "values (critic); logprobs, ref_logprobs if kl_coef > 0"),
]
