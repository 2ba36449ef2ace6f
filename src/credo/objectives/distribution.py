"""Objectives that read more of the policy than the sampled token: DCPO, NLPO, BuPO.

| objective | what it reads                          | what it changes in the GRPO/PPO loss                         |
|-----------|----------------------------------------|--------------------------------------------------------------|
| dcpo      | full_logprobs [N, V]                   | advantage += a REINFORCE term weighted by pi^(T)/pi |
| nlpo      | full_logprobs [N, V]                   | the policy is renormalised over a top-p action mask          |
| bupo      | hidden_states + the model's output head | the PPO loss is taken on an internal layer's policy         |

`outputs.full_logprobs` rows follow `loss_mask.nonzero()` order (credo.logprobs): row n scores the n-th
loss-mask token in row-major order, so `x[mask]` / `out[mask] = v` convert between [N] and [B, T].

pi_old and the full distribution: the batch carries only sampled-token behaviour logprobs. Where a
method needs the OLD policy's full distribution (DCPO's tempered ratio, NLPO's masking policy), the
detached CURRENT full_logprobs stand in for it. With `rl.recompute_old_logprobs` (the default) the
first minibatch of the first epoch is exactly on-policy, so the proxy is exact there and a close
approximation on later minibatches. Each docstring states its deviation.

Every objective here sees one micro-batch, so DCPO's batch success ratio is a micro-batch statistic
(a minibatch statistic when `rl.micro_batch_size` >= the minibatch size).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Sequence

import torch

from credo.batch import RolloutBatch
from credo.entry import Entry
from credo.objectives.base import OBJECTIVES, LossTerms, PolicyOutputs, masked_mean, needs
from credo.objectives.common import add_kl_penalty, ratio_metrics, token_log_ratio
from credo.objectives.grpo import ppo_clip_per_token
from credo.objectives.kl import kl_k3


def full_logprobs_at_mask(outputs: PolicyOutputs, mask: torch.Tensor, who: str) -> torch.Tensor:
    """outputs.full_logprobs [N, V], checked against the loss mask [B, T] (N = mask.sum())."""
    full = outputs.full_logprobs
    if full is None:
        raise ValueError(f"{who}: outputs.full_logprobs is None; the objective must declare @needs('full_logprobs')")
    n = int(mask.sum())
    if full.dim() != 2 or full.shape[0] != n:
        raise ValueError(
            f"{who}: outputs.full_logprobs has shape {tuple(full.shape)}, expected [N, V] with N = {n} "
            f"loss-mask tokens (the trainer scores exactly the loss-mask positions)"
        )
    return full


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] values at the mask positions -> [B, T], zero elsewhere."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    out[mask] = values
    return out


# -- DCPO ------------------------------------------------------------------------------------------


def tempered_logprob_ratio(full_logprobs: torch.Tensor, token_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """rho [N] = pi^(T)(y) / pi(y) from full log-probs [N, V] and sampled ids [N] (no gradient).

    pi^(T) = softmax(z / T). The full log-probs are z - logsumexp(z) (at the trainer's temperature),
    and log-softmax is shift-invariant, so log pi^(T) = log_softmax(full_logprobs / T) exactly: T is
    relative to the temperature the full log-probs were computed at.
    """
    with torch.no_grad():
        lp = full_logprobs.detach().float()
        y = token_ids[:, None]
        lp1 = lp.gather(-1, y).squeeze(-1)
        lpt = torch.log_softmax(lp / temperature, dim=-1).gather(-1, y).squeeze(-1)
        return torch.exp(lpt - lp1)


@OBJECTIVES.register("dcpo")
@needs("full_logprobs", "whole_groups")
def dcpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    entropy_base: float = 0.5,
    temperature_high: float = 1.2,
    temperature_low: float = 0.8,
    alpha_cap: float = 0.1,
    success_threshold: float = 0.05,
    entropy_estimate: float | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossTerms:
    """DCPO (Distribution-Centric): PPO clip on an advantage mixed with a tempered REINFORCE term.

    logprobs [B, T]; outputs.full_logprobs [N, V]; uses batch.advantages (GRPO), batch.rewards [B],
    batch.behaviour_logprobs, batch.loss_mask -> LossTerms(per_token [B, T]).
    H   = entropy_estimate, else the NLL proxy -mean_mask(behaviour logprobs) of this batch
    T   = temperature_high if H <= entropy_base else temperature_low   (heat up when entropy is low)
    rho_{i,t} = pi^(T)(y_{i,t}) / pi(y_{i,t}),  b_i = 1[R_i > success_threshold],  p = mean_i b_i
    alpha0 = min(|entropy_base - H|, alpha_cap) / p ;  alpha = alpha0 / (alpha0 + 1)   (alpha = 0 if p = 0)
    A'_{i,t} = (1 - alpha) A_{i,t} + alpha b_i rho_{i,t};   L = max(-A' r, -A' clip(r, 1 - clip_low, 1 + clip_high))
    Incorrect responses keep (1 - alpha) A. Defaults (official config.py): H0 = 0.5 (the README reports
    0.25 as best), T = 1.2 / 0.8, cap 0.1, threshold 0.05, clip 0.2, no KL. Reduction: token_mean.
    Deviations (documented): (1) rho uses the detached CURRENT full distribution as pi_old (exact on
    the first, on-policy minibatch with rl.recompute_old_logprobs); T is relative to the trainer's
    temperature (DCPO samples at 1.0). (2) H: the official code uses the previous update's
    "actor/entropy_loss" (mean sampled-token NLL, not full entropy) and H = 0 on the first step; a
    pure function has no history, so the default is the same NLL proxy on the current batch.
    (3) p is over this micro-batch's rows (official: the whole rollout batch); micro-batches hold
    whole groups (the objective declares "whole_groups"). The all-correct groups, whose advantage is
    0 and which carry only the REINFORCE term, are always kept: `ppo_update` ignores
    rl.skip_zero_advantage for whole-group objectives. (4) p = 0 (official: division by zero)
    gives alpha = 0.
    Metrics: dcpo_alpha, dcpo_temperature, dcpo_entropy_estimate, dcpo_success_ratio, dcpo_rho_mean.
    Departs from GRPO: the extra alpha b rho term (a regulariser toward the tempered distribution).
    Paper: "Distribution-Centric Policy Optimization Dominates Exploration-Exploitation Trade-off"
    (arXiv 2601.12730; code 597358816/DCPO). Not Dynamic Clipping Policy Optimization.
    Status: confirmed (official code: verl/trainer/ray_trainer.py, branch alg == "DCPO").
    """
    mask = batch.loss_mask
    full = full_logprobs_at_mask(outputs, mask, "dcpo_loss")
    with torch.no_grad():
        if entropy_estimate is None:
            h = float(masked_mean(-batch.behaviour_logprobs.detach(), mask))
        else:
            h = float(entropy_estimate)
        temp = temperature_high if h <= entropy_base else temperature_low
        rho = _scatter(tempered_logprob_ratio(full, batch.tokens[mask], temp), mask).to(batch.advantages.dtype)
        b = (batch.rewards > success_threshold).to(batch.advantages.dtype)  # [B]
        p = float(b.mean()) if len(b) else 0.0
        if p > 0:
            a0 = min(abs(entropy_base - h), alpha_cap) / p
            alpha = a0 / (a0 + 1.0)
        else:  # no success in the batch: the official code divides by zero here
            alpha = 0.0
        adv = (1.0 - alpha) * batch.advantages + alpha * b[:, None] * rho
    terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, adv, mask, clip_low=clip_low, clip_high=clip_high)
    terms.metrics.update(
        dcpo_alpha=torch.tensor(alpha), dcpo_temperature=torch.tensor(temp),
        dcpo_entropy_estimate=torch.tensor(h), dcpo_success_ratio=torch.tensor(p),
        dcpo_rho_mean=masked_mean(rho, mask),
    )
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="dcpo_loss")


# -- NLPO ------------------------------------------------------------------------------------------


def top_p_action_mask(
    mask_logprobs: torch.Tensor,
    top_p: float,
    *,
    min_tokens_to_keep: int = 1,
    keep_token_ids: Sequence[int] = (),
) -> torch.Tensor:
    """NLPO's action mask [N, V] bool from the masking policy's log-probs [N, V].

    Keep the smallest set of most likely tokens whose mass reaches top_p (the token that crosses
    top_p is kept: token v is kept iff the mass of the tokens ranked above it is <= top_p), at least
    min_tokens_to_keep tokens, and every id in keep_token_ids (RL4LMs always unmasks special ids).
    Reference: RL4LMs `MaskLogitsProcessorCasualLM._get_action_masks`, mask_type "learned_top_p".
    """
    lp = mask_logprobs.detach().float()
    sorted_lp, order = torch.sort(lp, dim=-1, descending=True)
    above = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()  # mass ranked strictly above
    rank = torch.arange(lp.shape[-1], device=lp.device)
    keep_sorted = (above <= top_p) | (rank < max(1, min_tokens_to_keep))
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if len(keep_token_ids):
        keep[:, torch.as_tensor(list(keep_token_ids), dtype=torch.long, device=lp.device)] = True
    return keep


@OBJECTIVES.register("nlpo")
@needs("full_logprobs")
def nlpo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    top_p: float = 0.9,
    min_tokens_to_keep: int = 100,
    keep_token_ids: Sequence[int] = (),
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
    masking_policy: Any = None,
) -> LossTerms:
    """NLPO's loss side: the PPO clipped surrogate on the policy restricted to a top-p action mask.

    logprobs [B, T]; outputs.full_logprobs [N, V] (with grad); uses batch.advantages,
    batch.behaviour_logprobs, batch.loss_mask, batch.tokens -> LossTerms(per_token [B, T]).
    M_t = top_p_action_mask(masking policy at t)       (top_p 0.9, at least min_tokens_to_keep)
    log pi_M(y_t) = log pi(y_t) - log Z_t,  Z_t = sum_{v in M_t} pi(v)
    r_t = exp(log pi_M(y_t) - [old_logp_t - sg(log Z_t)]);  L_t = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high))
    A sampled token outside M_t has no probability under the masked policy: its loss and gradient are 0
    (it still counts in the token_mean denominator); `nlpo_outside_mask` reports their fraction. When
    the sampler uses the same top-p, no sampled token is outside the mask.
    The masking policy: in training, `masking_policy` is the `rollout.sampler = "nlpo"` sampler
    (rollout/masking.py), whose delayed copy of the policy (synced every target_update_iterations = 20
    RL steps, as RL4LMs) also masked every decoding step of the rollouts; its `action_mask` gives M_t
    (and its own top_p / min_tokens_to_keep; this function's are then unused). The trainer refuses
    rl.objective nlpo without that sampler. Called without one (unit tests), M_t comes from the
    detached CURRENT policy.
    old_logp_t: the trainer's recomputed pi_old(y_t) (unmasked, so sg(log Z_t) is taken off); without
    recomputation and with the masking sampler the sampler's logprobs are already those of the masked
    policy and are used as they are.
    Reconstructed (document): (1) the old policy's mass on the mask is approximated by the current
    one's (sg log Z), so the ratio's VALUE is pi / pi_old and its gradient is that of the masked
    log-prob; (2) advantages come from the credit estimator (GRPO by default), not RL4LMs' critic with a
    KL-in-reward. Defaults: top_p 0.9, min_tokens_to_keep 100 (RL4LMs README), clip 0.2, no KL.
    Reduction: token_mean.
    Departs from GRPO: the policy (and the ratio) is the renormalised top-p-masked distribution.
    Paper: "Is Reinforcement Learning (Not) for Natural Language Processing: Benchmarks, Baselines,
    and Building Blocks for Natural Language Policy Optimization" (arXiv 2210.01241).
    Status: reconstructed (loss side only; masking rule confirmed in RL4LMs).
    """
    mask = batch.loss_mask
    full = full_logprobs_at_mask(outputs, mask, "nlpo_loss")
    y = batch.tokens[mask][:, None]  # [N, 1]
    if masking_policy is not None:  # the delayed copy that masked the rollouts (rollout/masking.py)
        keep = masking_policy.action_mask(batch.tokens, batch.attention_mask, mask).to(full.device)
    else:
        keep = top_p_action_mask(full, top_p, min_tokens_to_keep=min_tokens_to_keep, keep_token_ids=keep_token_ids)
    log_z = torch.logsumexp(full.float().masked_fill(~keep, -math.inf), dim=-1)  # [N], with grad
    in_mask = keep.gather(-1, y).squeeze(-1)  # [N]
    log_z_bt = _scatter(log_z.to(logprobs.dtype), mask)
    inside = _scatter(in_mask, mask)  # [B, T] bool
    masked_logprobs = logprobs - log_z_bt
    if masking_policy is not None and batch.old_logprobs is None:  # sampled from the masked policy already
        masked_old = batch.sampler_logprobs
    else:
        masked_old = batch.behaviour_logprobs - log_z_bt.detach()
    adv = torch.where(inside, batch.advantages, torch.zeros_like(batch.advantages))
    terms = ppo_clip_per_token(masked_logprobs, masked_old, adv, mask & inside, clip_low=clip_low, clip_high=clip_high)
    with torch.no_grad():
        terms.metrics["nlpo_outside_mask"] = masked_mean((~inside).to(logprobs.dtype), mask)
        terms.metrics["nlpo_kept_mass"] = masked_mean(_scatter(log_z.detach().exp().to(logprobs.dtype), mask), mask)
        terms.metrics["nlpo_kept_tokens"] = keep.sum(-1).float().mean() if keep.numel() else torch.tensor(0.0)
    return add_kl_penalty(terms, logprobs, batch, kl_coef=kl_coef, kl_estimator=kl_estimator, who="nlpo_loss")


# -- BuPO ------------------------------------------------------------------------------------------


def internal_layer_logprobs(
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An internal layer policy's sampled-token logprobs [B, T] and entropy [B, T] (detached).

    hidden [B, T, C]: the residual stream after decoder layer l (Hugging Face `hidden_states[l]`);
    tokens [B, T] long; score_mask [B, T] bool (False at position 0).
    pi_l = softmax(lm_head(norm(h_l)) / temperature); same shift convention as credo.logprobs: the
    hidden state at t - 1 scores token t. Only scored positions go through the [V]-wide head.
    norm=None applies the head directly to the residual stream (as BuPO's released visualisation).
    """
    where = score_mask[:, 1:]
    h = hidden[:, :-1][where]  # [N, C]
    if norm is not None:
        h = norm(h)
    logp_all = torch.log_softmax(lm_head(h).float() / temperature, dim=-1)  # [N, V]
    picked = logp_all.gather(-1, tokens[:, 1:][where][:, None]).squeeze(-1)
    logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    logprobs[:, 1:][where] = picked
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1)
    entropy = torch.zeros_like(logprobs)
    entropy[:, 1:][where] = ent
    return logprobs, entropy


def wire_internal_policy(objective: Callable, model: torch.nn.Module, *, final_norm: bool = True,
                         temperature: float = 1.0) -> Callable:
    """Bind a Hugging Face causal LM's output head (and final norm) into `bupo_loss`.

    How the trainer wires BuPO (credo.train.run.rl_context does this for any objective taking lm_head):
        objective = bind_params(OBJECTIVES.get("bupo"), common, params, "objective")
        objective = wire_internal_policy(objective, run.model, temperature=settings.temperature)
    The two-phase schedule is the objective's own (`iterative_steps`, with the `rl_step` the trainer
    binds). `needs` survives the partial (needs_of unwraps it).
    """
    bound: dict = {"lm_head": model.get_output_embeddings(), "temperature": temperature}
    if final_norm:
        base = model.base_model
        found = [getattr(base, n) for n in ("norm", "final_layernorm", "ln_f") if getattr(base, n, None) is not None]
        if not found:
            raise ValueError(f"wire_internal_policy: no final norm (norm / final_layernorm / ln_f) "
                             f"on {type(base).__name__}")
        bound["norm"] = found[0]
    return functools.partial(objective, **bound)


def _warn_unwired() -> None:
    # Python's default warning filter shows this once per process (per call site)
    warnings.warn(
        "bupo: no lm_head bound (see credo.objectives.distribution.wire_internal_policy); training the "
        "final-layer policy with GRPO, i.e. BuPO's second phase", RuntimeWarning, stacklevel=3,
    )


@OBJECTIVES.register("bupo")
@needs("hidden_states")
def bupo_loss(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    *,
    outputs: PolicyOutputs,
    layer: int = 6,
    lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
    old_logprobs: str = "current",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 10.0,
    iterative_steps: int | None = 30,
    rl_step: int | None = None,
) -> LossTerms:
    """BuPO: the GRPO/PPO clipped loss on an internal layer's policy (phase 1, InterGRPO) for the first
    `iterative_steps` RL steps, then on the final policy (phase 2, plain GRPO), in one run.

    logprobs [B, T] (final layer; unused once wired); outputs.hidden_states (tuple of [B, T, C],
    embeddings first); uses batch.advantages, batch.tokens, batch.loss_mask -> LossTerms(per_token [B, T]).
    pi_l = softmax(lm_head(norm(h_l)) / temperature),  h_l = hidden_states[layer]
    r_t = pi_l(y_t) / pi_l,old(y_t);  L_t = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high))
    and L_t = min(L_t, -A c) where A < 0 (dual clip c)
    Only the layers up to l (and the shared embeddings / head) receive gradient: the residual stream
    at layer l does not depend on later layers. BuPO optimises this for the first `iterative_steps`
    RL steps (30 in the official script), then plain GRPO on the final policy: the trainer binds
    `rl_step` (the RL step being trained, objectives/base.py::wants_step) before every update, and from
    rl_step >= iterative_steps on this loss is `ppo_clip_per_token` on the final-layer logprobs
    (bupo_internal = 0 in the metrics). iterative_steps None keeps phase 1 for the whole run; a call
    without rl_step (a direct call) is phase 1.
    Defaults (official BuPO_qwen3.sh): internal_layer k = 5 (0-based) = hidden_states[6] -> layer 6
    (k = 6 for Qwen3-8B), clip 0.2 / 0.2, dual clip 10, token-mean, no KL, temperature 1.0.
    Wiring: lm_head (and norm) are the model's callables, bound by `wire_internal_policy`; the trainer
    does this for any objective taking lm_head (`credo.train.run.rl_context`), so `rl.objective bupo`
    trains the internal policy. Called without them (a direct call, an unwired caller), this
    objective warns once, trains the FINAL policy with GRPO (BuPO's phase 2) and logs bupo_internal = 0.
    pi_old (documented deviation): the official code recomputes old logprobs at layer l. The batch
    holds final-layer ones, so old_logprobs="current" uses sg[pi_l] (ratio 1, on-policy; exact on the
    first minibatch); old_logprobs="batch" uses batch.behaviour_logprobs, for a trainer that stores
    layer-l old logprobs there. Norm: the brief and logit-lens practice apply the final norm
    (wire_internal_policy(final_norm=True)); BuPO's released code applies lm_head to the raw residual
    stream (final_norm=False). Hugging Face's last hidden state is already normed, so the norm is
    skipped for the last layer.
    Departs from GRPO: the policy whose ratio is clipped is an internal layer's, not the model's.
    Paper: "Bottom-up Policy Optimization: Your Language Model Policy Secretly Contains Internal
    Policies" (arXiv 2512.19673). Status: reconstructed (official code Trae1ounG/BuPO read through a
    third-party walkthrough; the custom model file was not available).
    """
    mask = batch.loss_mask
    phase_two = iterative_steps is not None and rl_step is not None and rl_step >= iterative_steps
    if lm_head is None or phase_two:
        if lm_head is None:
            _warn_unwired()
        terms = ppo_clip_per_token(logprobs, batch.behaviour_logprobs, batch.advantages, mask,
                                   clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
        terms.metrics["bupo_internal"] = torch.tensor(0.0)
        return terms
    if old_logprobs not in ("current", "batch"):
        raise ValueError(f"bupo_loss: old_logprobs must be 'current' or 'batch', got {old_logprobs!r}")
    hidden = outputs.hidden_states
    if hidden is None:
        raise ValueError("bupo_loss: outputs.hidden_states is None; the objective must declare @needs('hidden_states')")
    n_layers = len(hidden) - 1
    index = layer if layer >= 0 else len(hidden) + layer
    if not 1 <= index <= n_layers:
        raise ValueError(f"bupo_loss: layer {layer} is out of range; the model has layers 1..{n_layers} "
                         f"(hidden_states[0] is the embedding output)")
    lp_l, ent_l = internal_layer_logprobs(
        hidden[index], batch.tokens, mask, lm_head=lm_head,
        norm=norm if index < n_layers else None, temperature=temperature,
    )
    old = lp_l.detach() if old_logprobs == "current" else batch.behaviour_logprobs
    terms = ppo_clip_per_token(lp_l, old, batch.advantages, mask, clip_low=clip_low, clip_high=clip_high,
                               dual_clip=dual_clip)
    with torch.no_grad():
        terms.metrics["bupo_internal"] = torch.tensor(1.0)
        terms.metrics["internal_entropy"] = masked_mean(ent_l, mask)
        terms.metrics["internal_minus_final_logprob"] = masked_mean(lp_l.detach() - logprobs.detach(), mask)
        terms.metrics["approx_kl_final"] = ratio_metrics(token_log_ratio(logprobs, batch), mask)["approx_kl"]
    return terms


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("dcpo", "Distribution-Centric PO: advantage (1-a)A + a*b*pi^(T)/pi, T = 1.2/0.8 by an entropy gap; "
          "pi_old full distribution proxied by the detached current one; reduction token_mean",
          "Distribution-Centric Policy Optimization (arXiv 2601.12730)", "confirmed",
          "groups; full_logprobs; rewards"),
    Entry("nlpo", "PPO clip on the policy renormalised over the top-p action mask (p 0.9, >= 100 tokens) of a "
          "delayed copy of the policy (rollout.sampler nlpo, synced every 20 steps); reduction token_mean",
          "NLPO / RL4LMs (arXiv 2210.01241)", "reconstructed", "full_logprobs; rollout.sampler nlpo (the pairing)",
          training="works on the torch engine; advantages from the credit estimator, not RL4LMs' critic"),
    Entry("bupo", "GRPO on an internal layer policy softmax(head(norm(h_l))) (layer 6); needs the model's head "
          "bound by wire_internal_policy) for the first iterative_steps (30) RL steps, then GRPO on the final "
          "policy, in one run",
          "Bottom-up Policy Optimization (arXiv 2512.19673)", "reconstructed",
          "groups; hidden_states; model head (wire_internal_policy)"),
]
