"""Credit over actions longer than a token: macro actions (MA-RLHF), action-decomposed Bellman
backups (POAD / BAD) and budget-relative CoT returns (BRPO / AnytimeReasoner).

    ma_rlhf  spans of tokens are the MDP actions: values and rewards aggregated per span, GAE over spans
    poad     token-level backup inside a language action; reward and gamma only at action boundaries
    brpo     thinking cut at token budgets; each budget interval gets a budget-weighted return minus a
             mix of the row's own earlier-budget scores and the group mean

All work on the loss tokens of each row in order (prompt, padding and environment tokens are skipped).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, mean_continuation_score, provides_extras
from credo.rollout.base import SamplingParams

# -- MA-RLHF ---------------------------------------------------------------------------------------

TERMINATIONS = ("fixed", "randomized", "ppl")
AGGREGATIONS = ("equal", "unit", "position")
RANDOM_NGRAMS = (1, 2, 3, 5, 10)  # the span lengths of the "randomized" rule (official code)


def macro_action_spans(
    length: int,
    *,
    termination: str = "fixed",
    ngram: int = 5,
    repeat_times: int = 3,
    rng: random.Random | None = None,
    ref_logprobs: Sequence[float] | None = None,
) -> list[tuple[int, int]]:
    """The macro actions of one response of `length` loss tokens: [start, end) spans covering 0..length.

    fixed: a span every `ngram` tokens; randomized: span lengths drawn from a shuffled multiset of
    {1, 2, 3, 5, 10} x repeat_times (the rest is one span); ppl: a span starts at token i wherever the
    reference perplexity rises at i + 1 (ref_logprobs[i + 1] < ref_logprobs[i]). As upstream, the
    counting stops before the last token, which is always a span of its own (so the outcome reward,
    which sits on it, is never averaged with KL rewards). Empty spans are dropped.
    """
    if length <= 0:
        return []
    if termination == "ppl":
        if ref_logprobs is None or len(ref_logprobs) != length:
            raise ValueError("macro_action_spans: the ppl rule needs the row's reference logprobs")
        starts = [i for i in range(length - 1) if ref_logprobs[i + 1] < ref_logprobs[i]]
        bounds = ([0] if 0 not in starts else []) + starts
    elif termination in ("fixed", "randomized"):
        if termination == "fixed":
            if ngram < 1:
                raise ValueError(f"macro_action_spans: ngram must be >= 1, got {ngram}")
            sizes = None
        else:
            if repeat_times < 1:
                raise ValueError(f"macro_action_spans: repeat_times must be >= 1, got {repeat_times}")
            sizes = [n for n in RANDOM_NGRAMS for _ in range(repeat_times)]
            (rng or random.Random(0)).shuffle(sizes)
        bounds, count, k = [0], 0, 0
        for i in range(length - 1):
            count += 1
            if count == (ngram if sizes is None else sizes[k]):
                bounds.append(i + 1)
                count, k = 0, k + 1
                if sizes is not None and k == len(sizes):
                    break  # the rest is one span
    else:
        raise ValueError(f"unknown MA-RLHF termination {termination!r}; valid: {', '.join(TERMINATIONS)} "
                         f"('parsing' needs a constituency parser and is not implemented)")
    bounds = bounds + [length - 1, length]
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def _row_rng(seed: int, row: int) -> random.Random:
    return random.Random(f"ma_rlhf/{seed}/{row}")  # str seeds hash with SHA-512: stable across runs


def _row_spans(inputs: CreditInputs, positions: list[list[int]], termination: str, ngram: int,
               repeat_times: int, seed: int) -> list[list[tuple[int, int]]]:
    out = []
    for b, pos in enumerate(positions):
        ref = [float(inputs.ref_logprobs[b, t]) for t in pos] if termination == "ppl" else None
        out.append(macro_action_spans(len(pos), termination=termination, ngram=ngram, repeat_times=repeat_times,
                                      rng=_row_rng(seed, b), ref_logprobs=ref))
    return out


def _positions(loss_mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row, as_tuple=False).flatten().tolist() for row in loss_mask.bool()]


def _token_rewards(inputs: CreditInputs, kl_coef: float, clip_reward: float | None) -> torch.Tensor:
    """r [B, T] float64: -kl_coef (logp - ref) on loss tokens, + clip(R) on each row's last loss token."""
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    r = torch.zeros(B, T, dtype=torch.float64)
    if kl_coef:
        kl = inputs.logprobs.to(torch.float64) - inputs.ref_logprobs.to(torch.float64)
        r = torch.where(mask, -kl_coef * kl, r)
    outcome = inputs.rewards.to(torch.float64)
    if clip_reward is not None:
        outcome = outcome.clamp(-clip_reward, clip_reward)
    has = mask.any(dim=1)
    last = (T - 1) - torch.flip(mask, dims=[1]).to(torch.long).argmax(dim=1)
    r[torch.arange(B)[has], last[has]] += outcome[has]
    return r


def _check_ma_args(inputs: CreditInputs, termination: str, value_function: str, kl_coef: float) -> None:
    inputs.require("values", method="ma_rlhf")
    if kl_coef:
        inputs.require("logprobs", "ref_logprobs", method="ma_rlhf (kl_coef != 0)")
    if termination == "ppl":
        inputs.require("ref_logprobs", method="ma_rlhf (termination 'ppl')")
    if value_function not in AGGREGATIONS:
        raise ValueError(f"unknown MA-RLHF value_function {value_function!r}; valid: {', '.join(AGGREGATIONS)}")


def ma_rlhf_advantages_returns(
    inputs: CreditInputs,
    *,
    termination: str = "fixed",
    ngram: int = 5,
    repeat_times: int = 3,
    seed: int = 0,
    value_function: str = "equal",
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.05,
    clip_reward: float | None = 2.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] float64 of `ma_rlhf`; returns = A_span + V_span on every token of
    the span (MA-RLHF's critic target: each token's value is regressed on its span's return)."""
    _check_ma_args(inputs, termination, value_function, kl_coef)
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    positions = _positions(mask)
    spans = _row_spans(inputs, positions, termination, ngram, repeat_times, seed)
    S = max([len(s) for s in spans] + [0])
    if S == 0:
        zeros = torch.zeros(B, T, dtype=torch.float64)
        return zeros, zeros.clone()
    # span id, position j inside the span and span length n of every loss token (structure only)
    span_id = torch.full((B, T), -1, dtype=torch.long)
    j_in = torch.zeros(B, T, dtype=torch.long)
    for b, (pos, row_spans) in enumerate(zip(positions, spans)):
        for k, (s, e) in enumerate(row_spans):
            idx = torch.tensor(pos[s:e], dtype=torch.long)
            span_id[b, idx] = k
            j_in[b, idx] = torch.arange(e - s)
    rows = torch.arange(B)[:, None].expand(B, T)
    n = torch.zeros(B, S, dtype=torch.long).index_put_((rows[mask], span_id[mask]),
                                                       torch.ones_like(span_id[mask]), accumulate=True)
    n_tok = torch.gather(n, 1, span_id.clamp(min=0)).to(torch.float64)
    jf = j_in.to(torch.float64)
    if value_function == "equal":
        sigma = 1.0 / n_tok
    elif value_function == "unit":
        sigma = (jf == n_tok - 1).to(torch.float64)
    else:  # "position": sigma_j ∝ 1/(j+1), normalised over the span (H_n = 1 + 1/2 + ... + 1/n)
        harmonic = torch.cumsum(1.0 / torch.arange(1, T + 2, dtype=torch.float64), 0)
        sigma = (1.0 / (jf + 1)) / harmonic[(n_tok - 1).long().clamp(min=0)]
    sigma = torch.where(mask, sigma, torch.zeros_like(sigma))
    r_tok = _token_rewards(inputs, kl_coef, clip_reward)
    v_tok = inputs.values.to(torch.float64)

    def per_span(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(B, S, dtype=torch.float64).index_put_(
            (rows[mask], span_id[mask]), (sigma * x)[mask], accumulate=True)

    v_span, r_span = per_span(v_tok), per_span(r_tok)
    n_spans = torch.tensor([len(s) for s in spans], dtype=torch.long)
    adv_span = torch.zeros(B, S, dtype=torch.float64)
    running = torch.zeros(B, dtype=torch.float64)
    for k in reversed(range(S)):
        active = (k < n_spans).to(torch.float64)
        next_value = v_span[:, k + 1] * (k + 1 < n_spans) if k + 1 < S else torch.zeros(B, dtype=torch.float64)
        delta = r_span[:, k] + gamma * next_value - v_span[:, k]
        running = active * (delta + gamma * lam * running)
        adv_span[:, k] = running
    idx = span_id.clamp(min=0)
    adv = torch.where(mask, torch.gather(adv_span, 1, idx), torch.zeros(B, T, dtype=torch.float64))
    ret = torch.where(mask, torch.gather(adv_span + v_span, 1, idx), torch.zeros(B, T, dtype=torch.float64))
    return adv, ret


def ma_rlhf_critic_returns(inputs: CreditInputs, **hparams) -> torch.Tensor:
    """The critic's targets [B, T] of `ma_rlhf` (its span returns, on the same KL-penalised rewards)."""
    return ma_rlhf_advantages_returns(inputs, **hparams)[1]


@CREDIT.register("ma_rlhf")
@token_level(needs=("values", "logprobs", "ref_logprobs"), returns=ma_rlhf_critic_returns)
def ma_rlhf(
    inputs: CreditInputs,
    *,
    termination: str = "fixed",
    ngram: int = 5,
    repeat_times: int = 3,
    seed: int = 0,
    value_function: str = "equal",
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.05,
    clip_reward: float | None = 2.5,
) -> torch.Tensor:
    """MA-RLHF: PPO over macro actions, GAE over token spans; every token gets its span's advantage.

    inputs.values [B, T], inputs.rewards [B], inputs.logprobs / ref_logprobs [B, T] -> [B, T] float32.
    Spans per row (`macro_action_spans`): termination "fixed" (every ngram tokens), "randomized"
    (lengths from a shuffled {1,2,3,5,10} x repeat_times, seeded by (seed, row)) or "ppl" (a span
    starts where the reference perplexity rises next); the last token is always a span of its own.
      r_j      = -kl_coef (logp_j - ref_j) + [j last] clip(R, +-clip_reward)
      V_span   = sum_j sigma_j V_j,  r_span = sum_j sigma_j r_j   over the span's tokens j = 0..n-1
                 sigma: "equal" 1/n, "unit" last token only, "position" (1/(j+1)) / sum_i 1/(i+1)
      delta_k  = r_k + gamma V_{k+1} - V_k   (V after the last span = 0);  A_k = delta_k + gamma lam A_{k+1}
    The critic target is `ma_rlhf_advantages_returns(...)[1]` (the trainer reads it through
    `token_level(returns=...)`, `critic.critic_returns`). Not whitened (DeepSpeed-Chat does not).
    With termination "fixed" and ngram = 1 this is token-level PPO/GAE (the upstream README's vanilla PPO).
    Defaults (run_gemma.sh): fixed, ngram 5, equal, gamma 1.0, lam 0.95, kl_coef 0.05, reward clip 2.5.
    repeat_times = 3 is an assumption (no published default). The "parsing" rule (constituency
    parser) is not implemented.
    Degenerate: an empty response -> 0; a one-token response is one span; zero values give A = the
    sum of the span rewards ahead, discounted by gamma lam per span.
    Departure: upstream appends a zero-length span when (L - 1) is a multiple of ngram (a span with
    V = r = 0 inside the backup); empty spans are dropped here. Boundaries are per row (upstream reads row 0).
    Needs: values (critic); logprobs and ref_logprobs (KL reward with the default kl_coef; ppl rule).
    Paper: "MA-RLHF: Reinforcement Learning from Human Feedback with Macro Actions" (arXiv 2410.02743).
    Status: confirmed (ernie-research/MA-RLHF `ppo_trainer.py`: `fixed_ngram_selection`,
    `randomized_ngram_selection`, `ppl_selection`, `modeling_macro_action`, `get_advantages_and_returns`).
    Loop reference: `ma_rlhf_loop`.
    """
    adv, _ = ma_rlhf_advantages_returns(
        inputs, termination=termination, ngram=ngram, repeat_times=repeat_times, seed=seed,
        value_function=value_function, gamma=gamma, lam=lam, kl_coef=kl_coef, clip_reward=clip_reward)
    return adv.to(torch.float32)


def ma_rlhf_loop(
    inputs: CreditInputs,
    *,
    termination: str = "fixed",
    ngram: int = 5,
    repeat_times: int = 3,
    seed: int = 0,
    value_function: str = "equal",
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.05,
    clip_reward: float | None = 2.5,
) -> torch.Tensor:
    """Readable reference for `ma_rlhf`, shaped like upstream `modeling_macro_action` + GAE."""
    _check_ma_args(inputs, termination, value_function, kl_coef)
    B, T = inputs.loss_mask.shape
    positions = _positions(inputs.loss_mask)
    spans = _row_spans(inputs, positions, termination, ngram, repeat_times, seed)
    out = [[0.0] * T for _ in range(B)]
    for b, (pos, row_spans) in enumerate(zip(positions, spans)):
        rewards = []
        for i, t in enumerate(pos):
            r = -kl_coef * (float(inputs.logprobs[b, t]) - float(inputs.ref_logprobs[b, t])) if kl_coef else 0.0
            if i == len(pos) - 1:
                outcome = float(inputs.rewards[b])
                r += outcome if clip_reward is None else max(-clip_reward, min(clip_reward, outcome))
            rewards.append(r)
        values = [float(inputs.values[b, t]) for t in pos]
        v_span, r_span = [], []
        for s, e in row_spans:
            n = e - s
            if value_function == "equal":
                sigma = [1.0 / n] * n
            elif value_function == "unit":
                sigma = [0.0] * (n - 1) + [1.0]
            else:
                raw = [1.0 / (j + 1) for j in range(n)]
                sigma = [x / sum(raw) for x in raw]
            v_span.append(sum(w * v for w, v in zip(sigma, values[s:e])))
            r_span.append(sum(w * r for w, r in zip(sigma, rewards[s:e])))
        running = 0.0
        for k in reversed(range(len(row_spans))):
            next_value = v_span[k + 1] if k + 1 < len(row_spans) else 0.0
            running = r_span[k] + gamma * next_value - v_span[k] + gamma * lam * running
            for i in range(*row_spans[k]):
                out[b][pos[i]] = running
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- POAD / BAD ------------------------------------------------------------------------------------


def _check_poad_args(inputs: CreditInputs, reward: str) -> None:
    inputs.require("values", "step_ids", method="poad")
    if reward not in ("outcome", "step"):
        raise ValueError(f"poad: reward must be 'outcome' or 'step', got {reward!r}")
    if reward == "step":
        inputs.require("step_rewards", method="poad (reward='step')")


def _action_rewards(inputs: CreditInputs, b: int, step: int, is_last_action: bool, reward: str) -> float:
    if reward == "step":
        k = inputs.step_rewards.shape[1]
        r = float(inputs.step_rewards[b, step]) if step < k else 0.0
        return r if r == r else 0.0  # NaN (past the row's last step) -> no reward
    return float(inputs.rewards[b]) if is_last_action else 0.0


def poad_advantages_returns(
    inputs: CreditInputs,
    *,
    gamma: float = 0.95,
    lam: float = 0.95,
    ntpo: bool = False,
    reward: str = "outcome",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] float64 of `poad`; returns = A + V (the token-level critic's target)."""
    _check_poad_args(inputs, reward)
    mask = inputs.loss_mask.bool() & (inputs.step_ids >= 0)  # tokens without a step are skipped
    B, T = mask.shape
    lengths = mask.sum(dim=1)
    L = int(lengths.max()) if B else 0
    zeros = torch.zeros(B, T, dtype=torch.float64)
    if L == 0:
        return zeros, zeros.clone()
    rows = torch.arange(B)[:, None].expand(B, T)
    compact = torch.cumsum(mask.to(torch.long), dim=1) - 1
    v = torch.zeros(B, L + 1, dtype=torch.float64)  # one spare column: V after the last token = 0
    step = torch.full((B, L + 1), -1, dtype=torch.long)
    v[rows[mask], compact[mask]] = inputs.values.to(torch.float64)[mask]
    step[rows[mask], compact[mask]] = inputs.step_ids[mask].to(torch.long)
    j = torch.arange(L)[None, :]
    active = j < lengths[:, None]
    last_of_action = active & (step[:, 1:] != step[:, :-1])  # the next token starts another action (or none)
    has_next = (j + 1) < lengths[:, None]
    # reward at the end of each action: the step's reward, or the outcome at the row's last token
    r = torch.zeros(B, L, dtype=torch.float64)
    if reward == "step":
        k = inputs.step_rewards.shape[1]
        sr = torch.nan_to_num(inputs.step_rewards.to(torch.float64), nan=0.0)
        idx = step[:, :-1].clamp(min=0, max=max(k - 1, 0))
        per_step = torch.gather(sr, 1, idx) if k else torch.zeros(B, L, dtype=torch.float64)
        r = torch.where(last_of_action & (step[:, :-1] < k), per_step, r)
    else:
        r = torch.where(last_of_action & ~has_next, inputs.rewards.to(torch.float64)[:, None].expand(B, L), r)
    adv_c = torch.zeros(B, L, dtype=torch.float64)
    running = torch.zeros(B, dtype=torch.float64)
    for i in reversed(range(L)):
        m_next = has_next[:, i].to(torch.float64)
        boundary = r[:, i] + gamma * v[:, i + 1] * m_next - v[:, i] + gamma * lam * m_next * running
        if ntpo:  # NTPO baseline: gamma also inside the action
            inside = gamma * v[:, i + 1] - v[:, i] + gamma * lam * running
        else:     # POAD: no discount and no reward between the tokens of one action
            inside = v[:, i + 1] - v[:, i] + lam * running
        running = torch.where(last_of_action[:, i], boundary, inside) * active[:, i]
        adv_c[:, i] = running
    adv = zeros.clone()
    adv[mask] = adv_c[rows[mask], compact[mask]]
    ret = torch.where(mask, adv + inputs.values.to(torch.float64), zeros)
    return adv, ret


@CREDIT.register("poad")
@token_level(needs=("values", "steps"))
def poad(
    inputs: CreditInputs,
    *,
    gamma: float = 0.95,
    lam: float = 0.95,
    ntpo: bool = False,
    reward: str = "outcome",
) -> torch.Tensor:
    """POAD (BAD backup): token-level GAE where reward and gamma apply only at language-action ends.

    inputs.values [B, T] (token-level critic), inputs.step_ids [B, T] (actions = steps / turns),
    inputs.rewards [B] (or inputs.step_rewards [B, K] with reward="step") -> advantages [B, T] float32.
    Over the loss tokens of a row, action t's tokens j = 0..n-1 (an action = a run of equal step id):
      j < last:  delta = V(t, j+1) - V(t, j);                          A = delta + lam A_next
      j = last:  delta = r_t + gamma V(t+1, 0) m - V(t, j);            A = delta + gamma lam m A_next
    m = 0 after the row's last action (terminal). ntpo=True is the NTPO baseline: the intra-action step
    also discounts (delta = gamma V' - V, A = delta + gamma lam A_next), i.e. plain token-level GAE.
    r_t: reward="outcome" puts R on the last action (default); reward="step" uses step_rewards[b, t]
    (NaN -> 0). With one-token actions POAD equals token-level GAE with gamma at every token.
    The critic target is `poad_advantages_returns(...)[1]`.
    Defaults (ADRL config.py): gamma 0.95, lam 0.95, ntpo False, reward "outcome".
    Degenerate: an empty response, or loss tokens without a step id (-1), get 0 and are skipped by the
    backup; a single action is the undiscounted lam-return of R; zero values with lam = 1 give
    A = R gamma^(number of actions after the token's own).
    Needs: values (token-level critic), steps; step_rewards with reward="step".
    Paper: "Reinforcing Language Agents via Policy Optimization with Action Decomposition"
    (arXiv 2405.15821). Status: confirmed (morning9393/ADRL `language_buffer.py::batch_process_tppo`).
    Loop reference: `poad_loop`.
    """
    adv, _ = poad_advantages_returns(inputs, gamma=gamma, lam=lam, ntpo=ntpo, reward=reward)
    return adv.to(torch.float32)


def poad_loop(
    inputs: CreditInputs, *, gamma: float = 0.95, lam: float = 0.95, ntpo: bool = False, reward: str = "outcome",
) -> torch.Tensor:
    """Readable reference for `poad`, shaped like upstream `batch_process_tppo`."""
    _check_poad_args(inputs, reward)
    B, T = inputs.loss_mask.shape
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        pos = [t for t in range(T) if bool(inputs.loss_mask[b, t]) and int(inputs.step_ids[b, t]) >= 0]
        actions: list[list[int]] = []  # runs of equal step id, as token positions
        for t in pos:
            if actions and int(inputs.step_ids[b, actions[-1][-1]]) == int(inputs.step_ids[b, t]):
                actions[-1].append(t)
            else:
                actions.append([t])
        gae = 0.0
        for a in reversed(range(len(actions))):
            tokens = actions[a]
            rew = _action_rewards(inputs, b, int(inputs.step_ids[b, tokens[0]]), a == len(actions) - 1, reward)
            for i in reversed(range(len(tokens))):
                v = float(inputs.values[b, tokens[i]])
                if i == len(tokens) - 1:
                    mask_next = 1.0 if a + 1 < len(actions) else 0.0
                    v_next = float(inputs.values[b, actions[a + 1][0]]) if mask_next else 0.0
                    gae = rew + gamma * v_next * mask_next - v + gamma * lam * mask_next * gae
                else:
                    v_next = float(inputs.values[b, tokens[i + 1]])
                    gae = (gamma * v_next - v + gamma * lam * gae) if ntpo else (v_next - v + lam * gae)
                out[b][tokens[i]] = gae
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- BRPO / AnytimeReasoner ------------------------------------------------------------------------

VARIANCE_REDUCTIONS = ("brpo", "v1only", "v2only", "none")


def _brpo_inputs(inputs: CreditInputs, budget_probs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (scores [B, S] float64, positions [B, S] long, probs [S] float64 summing to 1)."""
    inputs.require("extras.budget_scores", "extras.budget_positions", method="brpo")
    scores = torch.as_tensor(inputs.extras["budget_scores"]).to(torch.float64)
    positions = torch.as_tensor(inputs.extras["budget_positions"]).to(torch.long)
    B, T = inputs.loss_mask.shape
    if scores.dim() != 2 or scores.shape[0] != B or positions.shape != scores.shape or scores.shape[1] < 1:
        raise ValueError(f"brpo: extras budget_scores and budget_positions must both be [B, S] with B = {B}, "
                         f"S >= 1; got {tuple(scores.shape)} and {tuple(positions.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("brpo: extras['budget_scores'] has non-finite entries")
    if bool((positions < 0).any() or (positions > T).any() or (positions[:, 1:] < positions[:, :-1]).any()):
        raise ValueError(f"brpo: extras['budget_positions'] must be non-decreasing cut positions in [0, {T}]")
    S = scores.shape[1]
    if isinstance(budget_probs, str) and budget_probs not in ("base", "uniform"):
        raise ValueError(f"brpo: budget_probs must be 'base', 'uniform' or a list of {S} numbers, got {budget_probs!r}")
    if budget_probs is None or (isinstance(budget_probs, str) and budget_probs == "base"):
        probs = torch.zeros(S, dtype=torch.float64)
        probs[-1] = 1.0
    elif isinstance(budget_probs, str):  # "uniform"
        probs = torch.full((S,), 1.0 / S, dtype=torch.float64)
    else:
        probs = torch.as_tensor(budget_probs, dtype=torch.float64)
        if probs.shape != (S,) or bool((probs < 0).any()) or not float(probs.sum()) > 0:
            raise ValueError(f"brpo: budget_probs must be 'base', 'uniform' or {S} non-negative numbers "
                             f"with a positive sum; got {budget_probs!r}")
    return scores, positions, probs / probs.sum()


@CREDIT.register("brpo")
@token_level(needs=("extras",))
def brpo(
    inputs: CreditInputs,
    *,
    budget_probs: str | Sequence[float] | None = "base",
    variance_reduction: str = "brpo",
    discount_factor: float = 2.0,
    budgets: int = 4,
    summary_tokens: int = 32,
) -> torch.Tensor:
    """BRPO: budget-relative advantages for the thinking (CoT) tokens of each budget interval.

    inputs.extras["budget_scores"] [B, S] float: r_{g,s}, mean correctness of the summaries forced
    after the CoT is cut at budget s (s = 0..S-1, increasing budgets);
    inputs.extras["budget_positions"] [B, S] long: the cut of budget s in row g, as a position in
    [0, T] (tokens[g, :pos] is the kept thinking, as for probes; non-decreasing in s; a trace that
    ends before budget s repeats its end position, and its score is that of the full trace)
    -> advantages [B, T] float32: loss tokens t with pos_{s-1} <= t < pos_s (pos_{-1} = 0) get A_{g,s};
    loss tokens at or after pos_{S-1} (e.g. the final answer) get 0.
      p_s       = budget_probs normalised to sum 1
      R_{g,s}   = sum_{j>=s} p_j r_{g,j}
      V1_{g,s}  = [sum_{j<s} 2^j r_{g,j} / sum_{j<s} 2^j] * sum_{j>=s} p_j      (0 at s = 0)
      V2_{g,s}  = mean of R_{g',s} over the group (0 for a group of one)
      A_{g,s}   = R_{g,s} - (s V1 + (S - s) V2) / S     "brpo"; "v1only": V1; "v2only": V2; "none": 0
    Summary tokens are separate sequences upstream (A = score - group mean at the same budget); they
    are not produced here. With S = 1 and "brpo", A = R - group mean (Dr.GRPO-style).
    Defaults: budget_probs "base" (all mass on the largest budget, run_1.5b_8k.sh), "uniform" or an
    explicit list (e.g. linear: proportional to the budgets); variance_reduction "brpo";
    discount_factor 2.0 (hard-coded upstream). `budgets` (4) and `summary_tokens` (32) belong to the
    training provider (`budget_probes`), which makes the extras.
    Degenerate: group of one -> V2 = 0; equal scores everywhere -> A = 0 under "brpo"; an empty
    response -> 0; non-finite scores raise.
    Needs: extras budget_scores and budget_positions (forced-summary probes at each budget; verifier).
    Paper: "Optimizing Anytime Reasoning via Budget Relative Policy Optimization" (arXiv 2505.13438).
    Status: confirmed (sail-sg/AnytimeReasoner `brpo.py::compute_cot_advantage`,
    `compute_token_level_advantage`). Loop reference: `brpo_loop`.
    """
    if variance_reduction not in VARIANCE_REDUCTIONS:
        raise ValueError(f"brpo: variance_reduction must be one of {', '.join(VARIANCE_REDUCTIONS)}, "
                         f"got {variance_reduction!r}")
    scores, positions, p = _brpo_inputs(inputs, budget_probs)
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    S = scores.shape[1]
    tail = torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0])                 # sum_{j>=s} p_j
    ret = torch.flip(torch.cumsum(torch.flip(p * scores, [1]), 1), [1])         # R [B, S]
    w = discount_factor ** torch.arange(S, dtype=torch.float64)
    prev_num = torch.cumsum(w * scores, 1) - w * scores                         # sum_{j<s} w_j r_j
    prev_den = torch.cumsum(w, 0) - w
    v1 = torch.where(prev_den > 0, prev_num / prev_den.clamp(min=1e-300), torch.zeros_like(prev_num)) * tail
    dense = torch.unique(inputs.group_ids, return_inverse=True)[1]
    k = int(dense.max()) + 1 if B else 0
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, dense, torch.ones(B, dtype=torch.float64))
    group_sum = torch.zeros(k, S, dtype=torch.float64).index_add_(0, dense, ret)
    v2 = torch.where(count[dense, None] > 1, group_sum[dense] / count[dense, None], torch.zeros_like(ret))
    s_idx = torch.arange(S, dtype=torch.float64)
    baseline = {"brpo": (s_idx * v1 + (S - s_idx) * v2) / S, "v1only": v1, "v2only": v2,
                "none": torch.zeros_like(ret)}[variance_reduction]
    adv_budget = ret - baseline
    t = torch.arange(T)
    segment = (positions[:, None, :] <= t[None, :, None]).sum(dim=2)             # [B, T]: budget of token t
    inside = mask & (segment < S)
    adv = torch.gather(adv_budget, 1, segment.clamp(max=S - 1))
    return torch.where(inside, adv, torch.zeros_like(adv)).to(torch.float32)


def brpo_loop(
    inputs: CreditInputs,
    *,
    budget_probs: str | Sequence[float] | None = "base",
    variance_reduction: str = "brpo",
    discount_factor: float = 2.0,
) -> torch.Tensor:
    """Readable reference for `brpo`, shaped like upstream `compute_cot_advantage`."""
    scores_t, positions_t, p_t = _brpo_inputs(inputs, budget_probs)
    scores, positions, p = scores_t.tolist(), positions_t.tolist(), p_t.tolist()
    B, T = inputs.loss_mask.shape
    S = len(p)
    groups = inputs.group_ids.tolist()
    disc = [discount_factor ** j for j in range(S)]

    def cot_return(g: int, s: int) -> float:
        return sum(scores[g][j] * p[j] for j in range(s, S))

    out = [[0.0] * T for _ in range(B)]
    for g in range(B):
        members = [i for i in range(B) if groups[i] == groups[g]]
        for s in range(S):
            avg_return = sum(cot_return(i, s) for i in members) / len(members) if len(members) > 1 else 0.0
            last_cot_return = 0.0
            if s > 0:
                prev = sum(scores[g][j] * disc[j] for j in range(s)) / sum(disc[:s])
                last_cot_return = prev * sum(p[s:])
            baseline = {"brpo": (s * last_cot_return + (S - s) * avg_return) / S, "v1only": last_cot_return,
                        "v2only": avg_return, "none": 0.0}[variance_reduction]
            lo = positions[g][s - 1] if s > 0 else 0
            for t in range(lo, positions[g][s]):
                if bool(inputs.loss_mask[g, t]):
                    out[g][t] = cot_return(g, s) - baseline
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- what training hands this estimator (credit/providers.py) ----------------------------------------

SUMMARY_PREFIX = "\n<answer>"  # forced after the cut when the task names no `summary_prefix`


def forced_summary_probe(ctx: StepContext, *, summary_tokens: int):
    """probe(b, t) -> the mean score of `probe_samples` summaries forced after row b's kept thinking
    tokens[b, :t]: the prompt and the kept tokens, then the task's `summary_prefix` ("\\n<answer>" by
    default) as forced tokens, then at most `summary_tokens` sampled tokens; each summary is scored by
    the task's verifier on the summary alone (the prefix's text after its newlines + the sampled text),
    as AnytimeReasoner scores the answer written after `</think>`. Counted as `probe_rollouts`; a
    verifier that raises scores 0 (model output never crashes training)."""
    src, batch = ctx.sources, ctx.batch
    prefix_text = getattr(src.task, "summary_prefix", SUMMARY_PREFIX)
    forced = src.tokenizer.encode(prefix_text, add_special_tokens=False)
    head = prefix_text.lstrip("\n")
    params = SamplingParams(src.sampling.temperature, src.sampling.top_p, src.sampling.top_k, summary_tokens,
                            src.sampling.stop)

    def probe(b: int, t: int) -> float:
        prefix = batch.tokens[b, :t].tolist() + forced
        seed = hash((2, b, t, int(batch.tokens[b].sum()))) % (2**31)  # (ints only: str hashes vary per process)
        return mean_continuation_score(ctx, b, prefix, params, seed, head)

    return probe


@provides_extras(brpo)
def budget_probes(ctx: StepContext, *, budgets: int = 4, summary_tokens: int = 32) -> dict:
    """BRPO's budgets and their forced summaries, in training.

    Budgets b_s = round((s + 1) L / S), s = 0..S-1 (S = `budgets`, L = rollout.max_new_tokens: the
    paper's n_budget_support budgets spread evenly over the generation length). Row g's thinking is
    cut at c_{g,s} = prompt + min(b_s, len_g); r_{g,s} = the mean verifier score of probe_samples
    summaries forced at the cut (`forced_summary_probe`), or the row's own reward when the trace ended
    within the budget (it needs no summary). -> budget_scores [B, S], budget_positions [B, S] (the cut
    as a position: tokens[g, :pos] kept).
    Defaults: budgets 4 and probe_samples as n_summary (4 in the paper's main runs,
    run_experiments.sh); summary_tokens 32 is this project's (short answers; assumption). The paper
    also trains the summary tokens with their own group advantage; here only the thinking tokens are
    trained (the summaries are probes, not trained sequences).
    """
    batch = ctx.batch
    if budgets < 1 or summary_tokens < 1:
        raise ValueError(f"brpo: budgets and summary_tokens must be >= 1, got {budgets}, {summary_tokens}")
    probe = forced_summary_probe(ctx, summary_tokens=summary_tokens)
    L = ctx.sources.sampling.max_new_tokens
    B = len(batch)
    scores = torch.zeros(B, budgets, dtype=torch.float32)
    positions = torch.zeros(B, budgets, dtype=torch.long)
    for b, completion in enumerate(ctx.completions):
        start, length = len(completion.prompt_ids), len(completion.token_ids)
        for s in range(budgets):
            budget = int(round((s + 1) * L / budgets))
            positions[b, s] = start + min(budget, length)
            scores[b, s] = float(batch.rewards[b]) if budget >= length else probe(b, start + budget)
    return {"budget_scores": scores, "budget_positions": positions}


CATALOG = [
    Entry("ma_rlhf", "PPO over macro actions: span values / rewards aggregated, GAE over spans",
          "MA-RLHF: Reinforcement Learning from Human Feedback with Macro Actions (arXiv 2410.02743)",
          "confirmed", "values (critic), logprobs, ref_logprobs (KL reward, ppl rule)"),
    Entry("poad", "token-level Bellman backup inside language actions; reward and gamma at action ends",
          "Reinforcing Language Agents via Policy Optimization with Action Decomposition (arXiv 2405.15821)",
          "confirmed", "values (token-level critic), steps; step_rewards if reward='step'"),
    Entry("brpo", "CoT tokens per budget interval: budget-weighted return minus own-past / group baseline",
          "Optimizing Anytime Reasoning via Budget Relative Policy Optimization (arXiv 2505.13438)",
          "confirmed", "extras budget_scores, budget_positions (training: summaries forced after the thinking "
          "cut at 4 budgets of max_new_tokens, probe_samples each)",
          training="works (summaries forced at 4 budgets); the summary tokens are probes, not trained as in the paper"),
]
