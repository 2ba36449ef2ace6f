"""Advantage normalisation and baselines: BNPO, SPO (single stream), OBLR-PO.

| estimator | baseline                            | scale                                | state             |
|-----------|-------------------------------------|--------------------------------------|-------------------|
| bnpo      | group success rate p_q              | 1 / BetaPDF(p_q), Beta fit per batch | none              |
| spo       | per-prompt Beta tracker a / (a + b) | batch whitening                      | per prompt        |
| oblr      | group mean of R, grad-norm weighted | none                                 | SNR learning rate |

Each registered estimator is rewards [B] + group_ids [B] -> advantages [B] with a plain-Python loop
reference beside it. The stateful parts (SPO's tracker, OBLR-PO's SNR learning rate) are small state
classes of tensors / dicts with pure update functions (state in, state out; nothing is mutated), so
they can be checkpointed. SPO is marked `stateful` (credit/base.py): the trainer keeps its tracker
between steps, passes persistent prompt ids, and writes the tracker into checkpoints. OBLR-PO's
baseline gets per-row gradient norms from the trainer (it has a `grad_sq_norms` keyword), and its
learning-rate state is carried and checkpointed by the trainer with rl.snr_lr (train/snr.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, stateful, token_level
from credo.credit.providers import provides_extras


def _dense(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


def _gsum(x: torch.Tensor, dense: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros(k, dtype=x.dtype).index_add_(0, dense, x)


# -- BNPO ----------------------------------------------------------------------------------------


def beta_log_pdf(p: torch.Tensor, alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    """log BetaPDF(p; alpha, beta), float64; xlogy makes 0 * log 0 = 0 (alpha = 1 at p = 0 is finite)."""
    p = p.to(torch.float64)
    a = torch.as_tensor(alpha, dtype=torch.float64)
    b = torch.as_tensor(beta, dtype=torch.float64)
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
    return torch.xlogy(a - 1.0, p) + torch.xlogy(b - 1.0, 1.0 - p) + log_norm


def bnpo_beta_fit(p: torch.Tensor) -> tuple[float, float]:
    """Method-of-moments Beta parameters from per-prompt success rates p [K] (official BNPO).

    mu = mean p, v = var p (unbiased); one prompt: mu := 0, v := 1 (official), which gives (1, 1).
    a = (mu (1 - mu) / v - 1) mu,  b = (mu (1 - mu) / v - 1)(1 - mu);  alpha = max(1 + a/3, 1), beta likewise.
    Guard (not in the official code): v = 0 (every prompt has the same p) would give inf / NaN;
    it falls back to alpha = beta = 1, i.e. unit weights (REINFORCE with the group-mean baseline).
    """
    p = p.to(torch.float64)
    if p.numel() > 1:
        mu, var = float(p.mean()), float(p.var())
    else:
        mu, var = 0.0, 1.0
    if not var > 0.0:
        return 1.0, 1.0
    c = mu * (1.0 - mu) / var - 1.0
    a, b = c * mu, c * (1.0 - mu)
    return max(1.0 + a / 3.0, 1.0), max(1.0 + b / 3.0, 1.0)


@CREDIT.register("bnpo")
def bnpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    alpha: float | None = None,
    beta: float | None = None,
    max_weight: float = 1e6,
) -> torch.Tensor:
    """BNPO: the group-centred reward divided by a Beta density at the group's success rate.

    rewards [B] float, group_ids [B] long -> advantages [B] float32.
    R~_i = (R_i - r_min) / (r_max - r_min) ;  p_q = mean_{i in q} R~_i  (p := 0 for a group of one)
    alpha, beta = method-of-moments fit of p over the batch's prompts (`bnpo_beta_fit`), unless given
    w_q = clamp(1 / BetaPDF(p_q; alpha, beta), 0, max_weight) ;  A_i = w_q (R~_i - p_q)
    Special cases (paper): alpha = beta = 1 is REINFORCE with the group-mean baseline (A = R - p);
    alpha = beta = 3/2 is (pi / 8) (R - p) / sqrt(p (1 - p)), i.e. GRPO with the population std
    (for binary rewards) rescaled by pi / 8.
    All-correct / all-wrong groups: A = 0 (the weight may hit the clamp, it multiplies 0).
    Guard: every prompt with the same p (zero variance) -> alpha = beta = 1 (the official code gives
    NaN). A group of one uses p = 0 as the official code (its weight may reach the clamp; BNPO is
    meant for groups). Rewards outside [r_min, r_max] raise ValueError (an assertion officially).
    Defaults (official): r_min 0, r_max 1, max_weight 1e6; G = 16 with ~32 prompts per batch.
    Loss: the PPO clipped surrogate (objective "grpo", ideally clip 0.2 / 0.28, seq_mean_token_sum).
    Several rewards (accuracy, format): `bnpo_decomposed_advantages`.
    Departs from GRPO: the per-group scale is a Beta density fitted to the batch's success rates
    instead of the group std.
    Paper: "BNPO: Beta Normalization Policy Optimization" (arXiv 2506.02864).
    Status: confirmed (official code `compute_bnpo_outcome_advantage`).
    """
    if r_max <= r_min:
        raise ValueError(f"bnpo: r_max must exceed r_min, got {r_min} and {r_max}")
    r = (rewards.to(torch.float64) - r_min) / (r_max - r_min)
    if bool(((r < 0) | (r > 1)).any()):
        raise ValueError(
            f"bnpo: rewards must lie in [r_min, r_max] = [{r_min}, {r_max}] (got {float(rewards.min())} .. "
            f"{float(rewards.max())}); set credit_params r_min / r_max"
        )
    dense, k = _dense(group_ids)
    count = _gsum(torch.ones_like(r), dense, k)
    p = torch.where(count > 1, _gsum(r, dense, k) / count, torch.zeros_like(count))  # [K]
    if alpha is None or beta is None:
        fit_a, fit_b = bnpo_beta_fit(p)
        alpha = fit_a if alpha is None else alpha
        beta = fit_b if beta is None else beta
    weight = torch.clamp(1.0 / torch.exp(beta_log_pdf(p, alpha, beta)), 0.0, max_weight)  # 1/0 -> inf -> max
    centred = r - p[dense]
    # exactly 0 in a zero-variance group (a float mean of equal values can be off by an ulp)
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amin")
    flat = (high[dense] == low[dense]) & (count[dense] > 1)
    centred = torch.where(flat, torch.zeros_like(centred), centred)
    return (weight[dense] * centred).to(torch.float32)


def bnpo_advantages_loop(
    rewards: list[float], group_ids: list[int], *, r_min: float = 0.0, r_max: float = 1.0,
    alpha: float | None = None, beta: float | None = None, max_weight: float = 1e6,
) -> list[float]:
    """Readable reference for `bnpo_advantages` (plain Python and math.lgamma)."""
    r = [(x - r_min) / (r_max - r_min) for x in rewards]
    groups = list(dict.fromkeys(group_ids))
    p = {}
    for g in groups:
        members = [ri for ri, gi in zip(r, group_ids) if gi == g]
        p[g] = sum(members) / len(members) if len(members) > 1 else 0.0
    ps = [p[g] for g in groups]
    if len(ps) > 1:
        mu = sum(ps) / len(ps)
        var = sum((x - mu) ** 2 for x in ps) / (len(ps) - 1)
    else:
        mu, var = 0.0, 1.0
    if var > 0:
        c = mu * (1 - mu) / var - 1
        fit_a, fit_b = max(1 + c * mu / 3, 1.0), max(1 + c * (1 - mu) / 3, 1.0)
    else:
        fit_a, fit_b = 1.0, 1.0
    a = fit_a if alpha is None else alpha
    b = fit_b if beta is None else beta

    def pdf(x: float) -> float:
        log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        term_a = 0.0 if a == 1 else ((a - 1) * math.log(x) if x > 0 else -math.inf)
        term_b = 0.0 if b == 1 else ((b - 1) * math.log(1 - x) if x < 1 else -math.inf)
        return math.exp(term_a + term_b + log_norm)

    out = []
    for ri, g in zip(r, group_ids):
        members = [rj for rj, gj in zip(r, group_ids) if gj == g]
        density = pdf(p[g])
        w = max_weight if density == 0 else min(max(1.0 / density, 0.0), max_weight)
        centred = 0.0 if len(members) > 1 and max(members) == min(members) else ri - p[g]
        out.append(w * centred)
    return out


def bnpo_decomposed_advantages(reward_components: torch.Tensor, group_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """BNPO's advantage decomposition for several rewards (e.g. accuracy and format).

    reward_components [B, K] float (one column per reward), group_ids [B] -> advantages [B] float32.
    A_i = (1/K) sum_k A_i^(k), each A^(k) = `bnpo_advantages` of column k with its own Beta fit.
    Registered as the token-level estimator `bnpo_decomposed` (the components are the task's
    correctness and format, as GDPO's).
    Paper: "BNPO" (arXiv 2506.02864). Status: confirmed (official `RayBNPOTrainer.fit`,
    use_advantage_decomposition).
    """
    if reward_components.dim() != 2 or reward_components.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"bnpo_decomposed_advantages: reward_components must be [B, K] with B = {group_ids.shape[0]}, "
            f"got {tuple(reward_components.shape)}"
        )
    parts = [bnpo_advantages(reward_components[:, j], group_ids, **kwargs) for j in range(reward_components.shape[1])]
    return torch.stack(parts, 0).mean(0)


@CREDIT.register("bnpo_decomposed")
@token_level(needs=("extras",))
def bnpo_decomposed(inputs: CreditInputs, *, r_min: float = 0.0, r_max: float = 1.0, alpha: float | None = None,
                    beta: float | None = None, max_weight: float = 1e6) -> torch.Tensor:
    """BNPO with advantage decomposition, in training: one Beta-normalised advantage per reward component.

    Reads group_ids [B], loss_mask [B, T], extras["reward_components"] [B, K] (the task's (correct,
    formatted) of each completion: `gdpo.reward_components`, the same provider as GDPO) -> advantages
    [B, T] float32: `bnpo_decomposed_advantages` of the components (mean over k of each column's
    `bnpo_advantages`, its own Beta fit), broadcast over the response's tokens.
    Defaults: those of `bnpo_advantages` (r_min 0, r_max 1, Beta fitted, max_weight 1e6).
    Paper: "BNPO: Beta Normalization Policy Optimization" (arXiv 2506.02864). Status: confirmed.
    """
    inputs.require("extras.reward_components", method="bnpo_decomposed")
    parts = torch.as_tensor(inputs.extras["reward_components"], dtype=torch.float64)
    adv = bnpo_decomposed_advantages(parts, inputs.group_ids, r_min=r_min, r_max=r_max, alpha=alpha, beta=beta,
                                     max_weight=max_weight)
    return torch.where(inputs.loss_mask.bool(), adv[:, None].expand_as(inputs.loss_mask).float(),
                       torch.zeros(inputs.loss_mask.shape))


@provides_extras(bnpo_decomposed)
def bnpo_reward_components(ctx) -> dict:
    """reward_components [B, 2]: the task's (correct, formatted) of each completion, GDPO's provider."""
    from credo.credit.gdpo import reward_components

    return reward_components(ctx)


# -- SPO (single stream) ------------------------------------------------------------------------


@dataclass(frozen=True)
class SPOState:
    """SPO's per-prompt tracker (plain dicts keyed by a persistent prompt id; checkpoint with `to_dict`).

    alpha / beta: Beta pseudo-counts of success / failure; last_logprobs: the log-probs [L] of the
    prompt's last response at the time it was stored (to measure how far the policy has moved).
    last_response: the tokens [S] (prompt + response) of that response and a bool mask [S] of its
    L scored tokens, so the trainer can rescore it under the current policy (verl keeps the same).
    A prompt missing from alpha starts at the prior (prior_alpha, prior_beta).
    """

    alpha: dict[int, float] = field(default_factory=dict)
    beta: dict[int, float] = field(default_factory=dict)
    last_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)
    prior_alpha: float = 0.5
    prior_beta: float = 0.5
    last_response: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"alpha": dict(self.alpha), "beta": dict(self.beta),
                "last_logprobs": {k: v.clone() for k, v in self.last_logprobs.items()},
                "prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta,
                "last_response": {k: (t.clone(), m.clone()) for k, (t, m) in self.last_response.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SPOState":
        return cls(alpha=dict(d["alpha"]), beta=dict(d["beta"]), last_logprobs=dict(d["last_logprobs"]),
                   prior_alpha=d["prior_alpha"], prior_beta=d["prior_beta"],
                   last_response=dict(d.get("last_response", {})))


def spo_init_state(
    offline_successes: dict[int, int] | None = None, *, offline_n: int = 8, rho_min: float = 0.875
) -> SPOState:
    """Initial tracker from offline samples of a reference model.

    offline_successes: prompt id -> s, the number of correct samples (reward > 0) among offline_n.
    alpha_0 = N_init (s + 0.5) / (N + 1),  beta_0 = N_init (N - s + 0.5) / (N + 1),  N_init = 1 / (1 - rho_min)
    offline_n = 0 (or no offline data): alpha_0 = beta_0 = 0.5 for every prompt (the prior).
    Defaults (verl recipe): offline_n 8, rho_min 0.875 (so N_init = 8).
    """
    if offline_n == 0 or not offline_successes:
        return SPOState()
    n_init = 1.0 / (1.0 - rho_min)
    alpha = {k: n_init * (s + 0.5) / (offline_n + 1) for k, s in offline_successes.items()}
    beta = {k: n_init * (offline_n - s + 0.5) / (offline_n + 1) for k, s in offline_successes.items()}
    return SPOState(alpha=alpha, beta=beta)


def spo_baseline(state: SPOState, prompt_ids: torch.Tensor) -> torch.Tensor:
    """p_hat = alpha / (alpha + beta) per sample: prompt_ids [B] -> [B] float64 (prior for new prompts)."""
    out = []
    for k in prompt_ids.tolist():
        a = state.alpha.get(k, state.prior_alpha)
        b = state.beta.get(k, state.prior_beta)
        out.append(a / (a + b) if a + b > 0 else 0.5)
    return torch.tensor(out, dtype=torch.float64)


def spo_rho(
    stored_logprobs: torch.Tensor | None,
    current_logprobs: torch.Tensor,
    *,
    d_half: float = 0.06,
    rho_min: float = 0.875,
    rho_max: float = 0.96,
) -> tuple[float, float]:
    """KL-adaptive forgetting factor for one prompt: (rho, D).

    stored_logprobs [L] (the last response's log-probs when it was stored) and current_logprobs [L]
    (the same tokens under the current policy); None (first visit) -> D = 0.
    D = mean_t |stored - current| ;  rho = clip(2^(-D / d_half), rho_min, rho_max)
    (D = 0 gives rho = rho_max). An empty response has D = 0.
    """
    if stored_logprobs is None or stored_logprobs.numel() == 0:
        d = 0.0
    else:
        d = float((stored_logprobs.to(torch.float64) - current_logprobs.to(torch.float64)).abs().mean())
    return min(max(2.0 ** (-d / d_half), rho_min), rho_max), d


def spo_update(
    state: SPOState,
    prompt_ids: torch.Tensor,
    rewards: torch.Tensor,
    rho: dict[int, float] | float,
    new_logprobs: dict[int, torch.Tensor] | None = None,
    new_responses: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> SPOState:
    """One tracker step (returns a new state; `state` is not modified).

    prompt_ids [B] long, rewards [B] float in [0, 1] (binary in the paper; clamped to [0, 1] so the
    pseudo-counts stay non-negative), rho: per-prompt forgetting factors (or one for all).
    Per prompt k of the batch: alpha <- rho alpha + sum_{i: k} r_i ;  beta <- rho beta + sum_{i: k} (1 - r_i)
    (forgetting is applied once per step; with one sample per prompt, as SPO, this is the paper's
    update exactly). new_logprobs: prompt id -> log-probs [L] of its latest response, stored for the
    next visit's D; new_responses: prompt id -> (tokens [S], scored [S] bool) of that response.
    """
    alpha, beta = dict(state.alpha), dict(state.beta)
    last = dict(state.last_logprobs)
    responses = dict(state.last_response)
    sums: dict[int, list[float]] = {}
    for k, r in zip(prompt_ids.tolist(), rewards.to(torch.float64).clamp(0.0, 1.0).tolist()):
        acc = sums.setdefault(k, [0.0, 0.0])
        acc[0] += r
        acc[1] += 1.0 - r
    for k, (succ, fail) in sums.items():
        f = rho if isinstance(rho, float) else rho.get(k, 1.0)
        alpha[k] = f * alpha.get(k, state.prior_alpha) + succ
        beta[k] = f * beta.get(k, state.prior_beta) + fail
    if new_logprobs:
        last.update({k: v.detach().clone() for k, v in new_logprobs.items()})
    if new_responses:
        responses.update({k: (t.detach().clone(), m.detach().clone()) for k, (t, m) in new_responses.items()})
    return SPOState(alpha=alpha, beta=beta, last_logprobs=last,
                    prior_alpha=state.prior_alpha, prior_beta=state.prior_beta, last_response=responses)


def spo_sampling_weights(state: SPOState, prompt_ids: torch.Tensor, *, eps_explore: float = 0.05) -> torch.Tensor:
    """Prioritised-sampling weights [P] for candidate prompt_ids [P]: sqrt(p_hat (1 - p_hat)) + eps_explore.

    Sample the next batch with probability proportional to these (the verl recipe samples with
    replacement only when the batch is larger than the candidates). Default eps_explore 0.05.
    """
    p = spo_baseline(state, prompt_ids)
    return (torch.sqrt(p * (1.0 - p)) + eps_explore).to(torch.float32)


def spo_track(
    state: SPOState,
    prompt_ids: torch.Tensor,
    rewards: torch.Tensor,
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    rescore,
    *,
    d_half: float = 0.06,
    rho_min: float = 0.875,
    rho_max: float = 0.96,
) -> tuple[SPOState, dict[str, float]]:
    """One step of the tracker as the trainer runs it (SPO's `stateful` update): (new state, metrics).

    prompt_ids [B] persistent ids, rewards [B]; rows[b] = (tokens [S], scored [S] bool, logprobs [L])
    of row b's response, logprobs = the behaviour log-probs of its L scored tokens (recomputed by the
    trainer before the update); rescore(tokens list, scored list) -> the current policy's log-probs
    [L] of the stored responses. For each prompt k of the batch:
      D_k = mean_t |stored_k - rescore(stored response of k)|  (first visit: D = 0)
      rho_k = clip(2^(-D_k / d_half), rho_min, rho_max) ;  then `spo_update` with these rho_k,
    and row b's response becomes prompt k's stored one (of several rows of one prompt, the last).
    Defaults (verl recipe): d_half 0.06, rho_min 0.875, rho_max 0.96.
    Metrics: spo_D and spo_rho (means over the batch's prompts), spo_revisited (fraction of them
    seen before).
    """
    ids = prompt_ids.tolist()
    unique = sorted(set(ids))
    seen = [k for k in unique if k in state.last_logprobs and k in state.last_response]
    current = {}
    if seen:
        rescored = rescore([state.last_response[k][0] for k in seen], [state.last_response[k][1] for k in seen])
        current = dict(zip(seen, rescored))
    rho, ds = {}, []
    for k in unique:
        rho[k], d = spo_rho(state.last_logprobs.get(k) if k in current else None,
                            current.get(k, torch.empty(0)), d_half=d_half, rho_min=rho_min, rho_max=rho_max)
        ds.append(d)
    new_logprobs, new_responses = {}, {}
    for k, (tokens, scored, logprobs) in zip(ids, rows):
        new_logprobs[k] = logprobs
        new_responses[k] = (tokens, scored)
    new = spo_update(state, prompt_ids, rewards, rho, new_logprobs, new_responses)
    n = max(len(unique), 1)
    metrics = {"spo_D": sum(ds) / n, "spo_rho": sum(rho.values()) / n, "spo_revisited": len(seen) / n}
    return new, metrics


def spo_save(state: SPOState) -> tuple[dict, dict[str, torch.Tensor]]:
    """Checkpoint form: alpha / beta / priors as JSON (keys as strings; floats round-trip exactly),
    stored responses as tensors named logprobs.<id>, tokens.<id>, scored.<id>."""
    meta = {"alpha": {str(k): v for k, v in state.alpha.items()},
            "beta": {str(k): v for k, v in state.beta.items()},
            "prior_alpha": state.prior_alpha, "prior_beta": state.prior_beta}
    tensors = {f"logprobs.{k}": v.contiguous() for k, v in state.last_logprobs.items()}
    for k, (tokens, scored) in state.last_response.items():
        tensors[f"tokens.{k}"] = tokens.contiguous()
        tensors[f"scored.{k}"] = scored.contiguous()
    return meta, tensors


def spo_load(meta: dict, tensors: dict[str, torch.Tensor]) -> SPOState:
    """Inverse of `spo_save`."""
    def by_id(prefix: str) -> dict[int, torch.Tensor]:
        return {int(name.split(".", 1)[1]): t for name, t in tensors.items() if name.startswith(prefix + ".")}

    tokens, scored = by_id("tokens"), by_id("scored")
    return SPOState(alpha={int(k): float(v) for k, v in meta["alpha"].items()},
                    beta={int(k): float(v) for k, v in meta["beta"].items()},
                    last_logprobs=by_id("logprobs"), prior_alpha=meta["prior_alpha"],
                    prior_beta=meta["prior_beta"],
                    last_response={k: (tokens[k], scored[k].to(torch.bool)) for k in tokens})


@CREDIT.register("spo")
@stateful(init=spo_init_state, update=spo_track, save=spo_save, load=spo_load,
          sampling_weights=spo_sampling_weights)
def spo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    state: SPOState | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SPO (single-stream): reward minus a persistent per-prompt Beta baseline, whitened over the batch.

    rewards [B] float (binary), group_ids [B] long, read as PERSISTENT prompt ids -> advantages [B] float32.
    p_hat_k = alpha_k / (alpha_k + beta_k)  (the tracker BEFORE this step's update)
    A_i = r_i - p_hat_{k(i)} ;  A <- (A - mean_batch A) / (std_batch A + eps)   (std unbiased, eps 1e-8)
    The tracker is updated after the step with `spo_update` (forgetting rho from `spo_rho`), and the
    next batch can be drawn with `spo_sampling_weights`. With state None every prompt is at the prior
    (alpha = beta = 0.5, p_hat = 0.5), so A = whiten(r - 0.5) = whiten(r): REINFORCE++-style.
    A batch of one, or all advantages equal: A = 0.
    In the trainer (`stateful`, credit/base.py): group_ids are persistent prompt ids (the index of the
    prompt in its list; set rl.prompt_pool > 0 so prompts repeat), `state` is the tracker carried
    across steps; after each step the trainer advances it with `spo_track` (rho from `spo_rho` on the
    prompt's stored response rescored by the current policy, then `spo_update`) and checkpoints it
    (`spo_save` / `spo_load`); rl.spo_prioritized draws each step's prompts by `spo_sampling_weights`.
    The tracker starts at the prior (no offline samples: spo_init_state() with offline_n 0).
    SPO samples ONE response per prompt (rl.group_size 1); more are allowed (each uses its prompt's p_hat).
    Departs from GRPO: no group; the baseline is a tracked per-prompt success probability and the
    scale is the batch std. Loss: the PPO clipped surrogate (objective "grpo").
    Paper: "Single-stream Policy Optimization" (arXiv 2509.13232).
    Status: confirmed (verl recipe/spo, commit 4b2b364).
    """
    p_hat = spo_baseline(state if state is not None else SPOState(), group_ids)
    adv = rewards.to(torch.float64) - p_hat
    if adv.numel() < 2 or bool(adv.max() == adv.min()):
        return torch.zeros_like(adv, dtype=torch.float32)
    return ((adv - adv.mean()) / (adv.std() + eps)).to(torch.float32)


def spo_advantages_loop(
    rewards: list[float], group_ids: list[int], *, state: SPOState | None = None, eps: float = 1e-8
) -> list[float]:
    """Readable reference for `spo_advantages`."""
    state = state or SPOState()
    adv = []
    for r, k in zip(rewards, group_ids):
        a = state.alpha.get(k, state.prior_alpha)
        b = state.beta.get(k, state.prior_beta)
        adv.append(r - (a / (a + b) if a + b > 0 else 0.5))
    if len(adv) < 2 or max(adv) == min(adv):
        return [0.0] * len(adv)
    mean = sum(adv) / len(adv)
    std = (sum((x - mean) ** 2 for x in adv) / (len(adv) - 1)) ** 0.5
    return [(x - mean) / (std + eps) for x in adv]


# -- OBLR-PO -------------------------------------------------------------------------------------


def logit_grad_sq_norm(
    logprobs: torch.Tensor, loss_mask: torch.Tensor, full_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """A cheap proxy for ||grad log pi(y|x)||^2 per response: logprobs [B, T], loss_mask [B, T] -> [B].

    Exact gradient of log p(y_t) w.r.t. the logits at step t: e_{y_t} - p_t, squared norm
    1 - 2 p_{y_t} + sum_v p_v^2. With full_logprobs [N, V] (the scored positions in row-major mask
    order, as PolicyOutputs) that value is used; without, the lower bound (1 - p_{y_t})^2 (exact
    when the remaining mass sits on one token). Tokens are summed, ignoring cross-token covariance
    and everything below the logits. Assumption: OBLR-PO's paper does not say which approximation it
    uses; this one is documented as ours.
    """
    p = torch.exp(logprobs.detach().to(torch.float64))
    per_token = (1.0 - p) ** 2
    if full_logprobs is not None:
        probs = torch.exp(full_logprobs.detach().to(torch.float64))
        exact = 1.0 - 2.0 * p[loss_mask] + (probs ** 2).sum(-1)
        per_token = per_token.clone()
        per_token[loss_mask] = exact
    return torch.where(loss_mask, per_token, torch.zeros_like(per_token)).sum(-1).to(torch.float32)


@CREDIT.register("oblr")
def oblr_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    grad_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """OBLR-PO's variance-optimal baseline: the group mean of R weighted by squared gradient norms.

    rewards [B] float, group_ids [B] long, grad_sq_norms [B] float >= 0 (||grad log pi(y_i|x)||^2, e.g.
    `logit_grad_sq_norm`) -> advantages [B] float32.
    b*_q = sum_{i in q} g_i R_i / sum_{i in q} g_i ;  A_i = R_i - b*_{q(i)}
    b* minimises the variance of the single-sample gradient estimator (R - b) grad log pi. Without
    norms (grad_sq_norms None, or a group whose norms sum to 0) g = 1 and b* is the plain group mean
    (Dr.GRPO's advantage). A group of one: b = 0 (A = R, credo's GRPO convention); a zero-variance
    group: A = 0 exactly.
    In the trainer (`credo train`, train/rl.py::assign_credit): an estimator with a `grad_sq_norms`
    keyword gets g_i = `logit_grad_sq_norm(behaviour logprobs, loss_mask)` of every row, the behaviour
    logprobs being the trainer's recomputed ones (rl.recompute_old_logprobs; reused by the update)
    else the sampler's. No full-vocabulary pass: the proxy is the lower bound sum_t (1 - p(y_t))^2.
    The learning-rate half of the method is `oblr_snr` / `oblr_lr_update` (state: `OBLRState`), wired
    by rl.snr_lr (off by default; the paper's method is rl.credit "oblr" + rl.snr_lr true): the SNR of
    each step's minibatch gradients (before clipping, rl.minibatches >= 2) scales the next step's lr;
    the state is checkpointed (train/snr.py).
    Departs from GRPO: a gradient-weighted baseline, no std division.
    Paper: "OBLR-PO: A Theoretical Framework for Stable Reinforcement Learning" (arXiv 2511.23310).
    Status: reconstructed (the principle is from the paper text; the per-group estimator and the
    gradient-norm proxy are assumptions).
    """
    r = rewards.to(torch.float64)
    dense, k = _dense(group_ids)
    count = _gsum(torch.ones_like(r), dense, k)
    g = torch.ones_like(r) if grad_sq_norms is None else grad_sq_norms.to(torch.float64).clamp(min=0.0)
    g_sum = _gsum(g, dense, k)
    weighted = _gsum(g * r, dense, k) / g_sum.clamp(min=torch.finfo(torch.float64).tiny)
    plain = _gsum(r, dense, k) / count
    base = torch.where(g_sum > 0, weighted, plain)
    base = torch.where(count > 1, base, torch.zeros_like(base))
    adv = r - base[dense]
    high = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amax")
    low = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, dense, r, "amin")
    flat = (high[dense] == low[dense]) & (count[dense] > 1)
    return torch.where(flat, torch.zeros_like(adv), adv).to(torch.float32)


def oblr_advantages_loop(
    rewards: list[float], group_ids: list[int], *, grad_sq_norms: list[float] | None = None
) -> list[float]:
    """Readable reference for `oblr_advantages`."""
    g = [1.0] * len(rewards) if grad_sq_norms is None else [max(x, 0.0) for x in grad_sq_norms]
    out = []
    for r, k in zip(rewards, group_ids):
        members = [(rj, gj) for rj, gj, kj in zip(rewards, g, group_ids) if kj == k]
        if len(members) == 1:
            out.append(r)
            continue
        if max(m[0] for m in members) == min(m[0] for m in members):
            out.append(0.0)
            continue
        total = sum(m[1] for m in members)
        if total > 0:
            b = sum(m[0] * m[1] for m in members) / total
        else:
            b = sum(m[0] for m in members) / len(members)
        out.append(r - b)
    return out


@dataclass(frozen=True)
class OBLRState:
    """OBLR-PO's learning-rate state: the running SNR (EMA) and the reference SNR of the first step.

    Tensors only (0-d float64), so it checkpoints with torch.save; nan means "not seen yet".
    """

    snr_ema: torch.Tensor = field(default_factory=lambda: torch.tensor(math.nan, dtype=torch.float64))
    snr_ref: torch.Tensor = field(default_factory=lambda: torch.tensor(math.nan, dtype=torch.float64))
    steps: torch.Tensor = field(default_factory=lambda: torch.tensor(0, dtype=torch.long))

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"snr_ema": self.snr_ema.clone(), "snr_ref": self.snr_ref.clone(), "steps": self.steps.clone()}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "OBLRState":
        return cls(snr_ema=d["snr_ema"].clone(), snr_ref=d["snr_ref"].clone(), steps=d["steps"].clone())


def oblr_snr(per_sample_grads: torch.Tensor) -> torch.Tensor:
    """Gradient signal-to-noise ratio: per_sample_grads [N, P] -> 0-d float64.

    SNR = ||mean_n g_n||^2 / mean_n ||g_n - mean g||^2. No noise (N = 1 or identical gradients):
    +inf if the mean is non-zero, 0 if every gradient is zero.
    """
    g = per_sample_grads.detach().to(torch.float64)
    mean = g.mean(0)
    signal = (mean ** 2).sum()
    noise = ((g - mean) ** 2).sum(-1).mean() if g.shape[0] > 1 else torch.zeros((), dtype=torch.float64)
    if noise <= 0:
        return torch.tensor(math.inf if signal > 0 else 0.0, dtype=torch.float64)
    return signal / noise


def oblr_lr_update(
    state: OBLRState,
    snr: torch.Tensor | float,
    *,
    base_lr: float,
    ema: float = 0.9,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
) -> tuple[OBLRState, float]:
    """One learning-rate step (returns the new state and this step's learning rate).

    snr_ema <- ema snr_ema + (1 - ema) snr (the first finite snr initialises it and becomes snr_ref)
    lr = base_lr clamp(snr_ema / snr_ref, min_scale, max_scale)          (eta proportional to SNR)
    So the first step runs at base_lr and later steps scale with the SNR relative to the start.
    An infinite SNR counts as max_scale; a zero reference SNR leaves lr = base_lr until it is positive.
    Assumptions (reconstructed): the EMA, the first-step reference and the clamp; the paper states
    only eta proportional to SNR. Defaults: ema 0.9, scale in [0.1, 2].
    """
    x = torch.as_tensor(snr, dtype=torch.float64)
    steps = state.steps + 1
    if not bool(torch.isfinite(x)):  # no measurable noise: the state is left as it is
        return OBLRState(state.snr_ema, state.snr_ref, steps), base_lr * (max_scale if bool(x > 0) else min_scale)
    ema_value = x if bool(torch.isnan(state.snr_ema)) else ema * state.snr_ema + (1.0 - ema) * x
    has_ref = not bool(torch.isnan(state.snr_ref)) and bool(state.snr_ref > 0)
    ref = state.snr_ref if has_ref else x  # the first positive SNR becomes the reference
    scale = float(torch.clamp(ema_value / ref, min_scale, max_scale)) if bool(ref > 0) else 1.0
    return OBLRState(snr_ema=ema_value, snr_ref=ref, steps=steps), base_lr * scale


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("bnpo_decomposed", "BNPO's advantage decomposition: one Beta-normalised advantage per reward component "
          "(correct, formatted), averaged", "BNPO: Beta Normalization Policy Optimization (arXiv 2506.02864)",
          "confirmed", "groups; task correct/formatted (the GDPO provider)"),
    Entry("bnpo", "group-centred reward / BetaPDF(group success rate), Beta fitted to the batch by moments; "
          "loss: objective grpo",
          "BNPO: Beta Normalization Policy Optimization (arXiv 2506.02864)", "confirmed",
          "groups; a batch of prompts; rewards in [r_min, r_max]"),
    Entry("spo", "reward minus a per-prompt Beta-tracker baseline, whitened over the batch; loss: objective grpo",
          "Single-stream Policy Optimization (arXiv 2509.13232)", "confirmed",
          "per-prompt tracker carried by the trainer (rl.prompt_pool > 0 to revisit prompts); 1 sample per prompt"),
    Entry("oblr", "reward minus the gradient-norm-weighted group mean (the variance-optimal baseline)",
          "OBLR-PO: A Theoretical Framework for Stable RL (arXiv 2511.23310)", "reconstructed",
          "groups; per-row grad-norm proxy from behaviour logprobs (trainer); rl.snr_lr true for the SNR lr"),
]
