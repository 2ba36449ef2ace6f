"""Turn-level credit for multi-turn rollouts: GiGPO, MAPO, A2TGPO, IGPO, MatchTIR, SLATE, VPR.

Turns are steps. `step_ids [B, T]` gives the turn index k = 0..K_b-1 of every policy token (-1 on
prompt, environment and padding tokens); `step_rewards [B, K]` a signal per turn (env reward, judge
score, information gain, matcher reward: computed before the estimator, see `turn_rewards.py`);
`step_keys[b][k]` the observation before turn k. Every estimator computes one advantage per
(row, turn) pair and broadcasts it over the turn's tokens (`broadcast_steps`).

| estimator | per-turn signal (step_rewards)   | baseline group                            | accumulation over turns  |
|-----------|----------------------------------|-------------------------------------------|--------------------------|
| gigpo     | env reward -> discounted return  | episode: prompt; step: identical state    | R_t = r_t + g R_{t+1}    |
| mapo      | judge score -> discounted return | same turn index (batch) + whole batch     | G_k = s_k + g G_{k+1}    |
| a2tgpo    | information gain (+ outcome)     | (prompt, turn index)                      | sum / sqrt(#terms)       |
| igpo      | information gain (+ outcome)     | prompt (IG and outcome pooled separately) | A_k = r_k + g A_{k+1}    |
| matchtir  | tool-call matching reward        | trajectory: prompt; turn: (prompt, index) | D_k = r_k + 0.9 D_{k+1}  |
| slate     | judge step score                 | siblings sharing a prefix (step key)      | none                     |
| vpr       | oracle action score              | candidates at the same state (step key)   | none                     |

Conventions shared by all of them:
- K_b = max(step_ids[b]) + 1 turns (`num_steps`); a row without policy tokens has no turns and gets 0.
- Non-finite step rewards inside a row's turns count as 0; columns past K_b are ignored.
- A group of rows / turns is keyed by the raw `group_ids` values (rows sampled for the same prompt).
- A zero-variance group of two or more gets exactly 0 (a float mean of equal values can be off by an
  ulp, which a division by a tiny std would blow up).
- step keys are made hashable like verl-agent's `to_hashable` (`turn_common.to_hashable`).

Each vectorized estimator has a plain-Python loop reference `<name>_loop` (tests check they agree).
"""

from __future__ import annotations

import math

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.outcome import grpo_advantages
from credo.credit.providers import (continuation_mean_logprobs, provides_clip_scale, provides_step_rewards,
                                    restricts_loss_mask)
from credo.credit.turn_rewards import answer_f1, information_gain, matchtir_turn_rewards, pad_turn_rewards
from credo.credit.turn_common import (
    F64, broadcast_loop, dense_ids, discounted, finish, group_moments, mean_std_loop, place, returns_loop, rows_of,
    state_group_ids, state_keys_loop, turn_table, znorm, znorm_loop,
)

# -- GiGPO -------------------------------------------------------------------------------------------


@CREDIT.register("gigpo")
@token_level(needs=("steps", "step_rewards", "step_keys"))
def gigpo_advantages(
    inputs: CreditInputs,
    *,
    gamma: float = 0.95,
    step_advantage_w: float = 1.0,
    mode: str = "mean_norm",
    eps: float = 1e-6,
    mean_std_cross_steps: bool = True,
    similarity_threshold: float | None = None,
) -> torch.Tensor:
    """GiGPO: episode-level group advantage + step-level advantage over identical anchor states.

    Reads rewards [B] (the episode score), group_ids [B], step_ids [B, T], step_rewards [B, K] (env
    reward of each turn), step_keys[b][k] (observation before turn k) -> advantages [B, T] float32.
    R_{b,k} = r_{b,k} + gamma R_{b,k+1}                                   (Eq. 5, per trajectory)
    A^E_b   = R_b - mean_g R  ("mean_norm")  or  (R_b - mean_g R) / (std_g R + eps)  ("mean_std_norm")
              mean / std (unbiased) over the group's rows, each row counted K_b times when
              mean_std_cross_steps (verl-agent: one batch row per (trajectory, step)); a group with a
              single counted row: mean 0, std 1 (so a lone trajectory of several turns gets A^E = 0
              with cross steps, R without).                             (Eq. 3)
    A^S_{b,k} = R_{b,k} - mean_anchor R   (or / (std_anchor + eps)); anchor = the (group, turn) pairs
              whose step keys are equal (any turn index, any row of the group). An anchor group of
              one gives A^S = 0 (its mean is itself).                   (Eqs. 6-7)
    A_{b,k} = A^E_b + step_advantage_w * A^S_{b,k}, broadcast over turn k's tokens.   (Eq. 8)
    similarity_threshold (text keys only): keys join the first cluster, in row-major (row, turn)
    order, whose first key has difflib ratio >= threshold (verl-agent uses 0.95); None = exact match.
    Note verl-agent's naming: "mean_norm" does NOT divide by the std; "mean_std_norm" does.
    Rows without turns are not counted and get 0.
    Defaults: gamma 0.95, omega 1.0, mode "mean_norm" (ALFWorld / WebShop scripts), eps 1e-6.
    Key property: with no repeated state (every anchor group of one) and mean_std_cross_steps=False,
    GiGPO equals episode-level GRPO (Dr.GRPO for "mean_norm").
    Paper: "Group-in-Group Policy Optimization for LLM Agent Training" (arXiv 2505.10978).
    Status: confirmed (verl-agent `gigpo/core_gigpo.py`: `episode_norm_reward`, `build_step_group`,
    `step_norm_reward`; zero-variance groups give exactly 0 here). Loop reference: `gigpo_advantages_loop`.
    """
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"gigpo: mode must be 'mean_norm' or 'mean_std_norm', got {mode!r}")
    r, valid, k_b = turn_table(inputs, "gigpo")
    scale = mode == "mean_std_norm"
    # episode part: weighted group statistics (weight = K_b, or 1 per trajectory with turns)
    score = inputs.rewards.to(F64)
    weight = k_b.to(F64) if mean_std_cross_steps else (k_b > 0).to(F64)
    g, n = dense_ids(inputs.group_ids)
    zeros = torch.zeros(n, dtype=F64)
    count = zeros.index_add(0, g, weight)
    mean = zeros.index_add(0, g, weight * score) / count.clamp(min=1.0)  # integer weights
    std = torch.sqrt(zeros.index_add(0, g, weight * (score - mean[g]) ** 2) / (count - 1.0).clamp(min=1.0))
    single = count[g] <= 1.0
    counted = weight > 0
    high = torch.full((n,), -torch.inf, dtype=F64).scatter_reduce(0, g, torch.where(counted, score, -torch.inf), "amax")
    low = torch.full((n,), torch.inf, dtype=F64).scatter_reduce(0, g, torch.where(counted, score, torch.inf), "amin")
    a_e = score - torch.where(single, torch.zeros_like(score), mean[g])
    if scale:
        a_e = a_e / (torch.where(single, torch.ones_like(score), std[g]) + eps)
    a_e = torch.where((high[g] == low[g]) & ~single, torch.zeros_like(a_e), a_e)
    # step part: discounted returns grouped by anchor state
    returns = discounted(r, gamma)
    anchors = state_group_ids(inputs, valid, "gigpo", similarity_threshold)
    n_anchor = int(anchors.max()) + 1 if anchors.numel() else 0
    a_s = znorm(returns[valid], anchors, n_anchor, eps=eps, scale=scale)
    per_turn = torch.where(valid, a_e[:, None], torch.zeros_like(r)) + step_advantage_w * place(a_s, valid)
    return finish(per_turn, inputs)


def gigpo_advantages_loop(inputs: CreditInputs, *, gamma: float = 0.95, step_advantage_w: float = 1.0,
                          mode: str = "mean_norm", eps: float = 1e-6,
                          mean_std_cross_steps: bool = True) -> torch.Tensor:
    """Readable reference for `gigpo_advantages` (exact anchor matching)."""
    rows, scale = rows_of(inputs), mode == "mean_std_norm"
    episode = []
    for row in rows:
        scores = []  # one entry per counted batch row of verl-agent
        for other in rows:
            if other["g"] == row["g"] and other["K"] > 0:
                scores += [other["R"]] * (other["K"] if mean_std_cross_steps else 1)
        if len(scores) <= 1:
            mean, sd = 0.0, 1.0
        else:
            mean, sd = mean_std_loop(scores)
        a = 0.0 if len(scores) > 1 and max(scores) == min(scores) else row["R"] - mean
        episode.append(a / (sd + eps) if scale else a)
    returns = [returns_loop(row["r"], gamma) for row in rows]
    keys = state_keys_loop(inputs, rows)
    per_turn = []
    for b, row in enumerate(rows):
        turns = []
        for k in range(row["K"]):
            members = [returns[c][j] for c in range(len(rows)) for j in range(rows[c]["K"]) if keys[c][j] == keys[b][k]]
            turns.append(episode[b] + step_advantage_w * znorm_loop(returns[b][k], members, eps=eps, scale=scale))
        per_turn.append(turns)
    return broadcast_loop(per_turn, inputs)


# -- MAPO --------------------------------------------------------------------------------------------


@CREDIT.register("mapo")
@token_level(needs=("steps", "step_rewards"))
def mapo_advantages(inputs: CreditInputs, *, alpha: float = 0.5, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """MAPO: judge-scored turn returns, normalised per turn index and over the batch, then mixed.

    Reads step_ids [B, T], step_rewards [B, K] (judge score s of each turn) -> advantages [B, T] float32.
    G_{i,k}       = sum_{k' >= k} gamma^(k'-k) s_{i,k'}                 (Monte Carlo turn return)
    A^turn_{i,k}  = (G_{i,k} - mean_{i'} G_{i',k}) / (std_{i'} G_{i',k} + eps)   over all dialogues of
                    the batch that reached turn k (no prompt groups: MAPO is critic-free without
                    turn-level resampling)
    A^batch_{i,k} = (G_{i,k} - mean_batch G) / (std_batch G + eps)       over all (dialogue, turn) pairs
    A_{i,k}       = alpha A^turn + (1 - alpha) A^batch, broadcast over turn k's tokens
    std unbiased. A turn index reached by one dialogue gives A^turn = 0 there (only the batch term
    remains); a batch with a single turn, or zero variance, gives 0.
    Defaults: alpha 0.5, gamma 1.0, eps 1e-6 -- the paper's values are unknown (assumptions).
    Paper: "MAPO: Mixed Advantage Policy Optimization for long-horizon multi-turn dialogue"
    (arXiv 2603.06194). Status: reconstructed (the design is from the abstract; the formulas above,
    the batch-wide turn-index groups and the defaults are assumptions). Loop: `mapo_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "mapo")
    returns = discounted(r, gamma)[valid]
    cols = valid.nonzero()[:, 1]
    seg, n = dense_ids(cols)
    a_turn = znorm(returns, seg, n, eps=eps)
    a_batch = znorm(returns, torch.zeros_like(cols), 1, eps=eps)
    return finish(place(alpha * a_turn + (1.0 - alpha) * a_batch, valid), inputs)


@provides_step_rewards(mapo_advantages)
def mapo_judged_turns(ctx, step_ids: torch.Tensor) -> torch.Tensor | None:
    """With a model judge (rl.judge = "llm[:<folder>]"): MAPO's judge score of every turn, s_k = q_k, the
    judge's probability that the turn is a good next step (template "step": task, transcript before the
    turn, the turn), one batched call. Other judges: None, the default source (the environment's turn
    rewards). The paper's judge is a large LLM grading dialogue turns; here the bundled model or any
    local causal LM answers yes / no (documented deviation)."""
    from credo.credit.providers import judged_turn_probabilities, model_judge, nan_padded

    if model_judge(ctx) is None:
        return None
    return nan_padded(judged_turn_probabilities(ctx, "step"))


def mapo_advantages_loop(inputs: CreditInputs, *, alpha: float = 0.5, gamma: float = 1.0,
                         eps: float = 1e-6) -> torch.Tensor:
    """Readable reference for `mapo_advantages`."""
    rows = rows_of(inputs)
    returns = [returns_loop(row["r"], gamma) for row in rows]
    everything = [v for rr in returns for v in rr]
    per_turn = []
    for rr in returns:
        turns = []
        for k, v in enumerate(rr):
            same_index = [other[k] for other in returns if len(other) > k]
            turns.append(alpha * znorm_loop(v, same_index, eps=eps) + (1 - alpha) * znorm_loop(v, everything, eps=eps))
        per_turn.append(turns)
    return broadcast_loop(per_turn, inputs)


# -- A2TGPO ------------------------------------------------------------------------------------------


def _a2tgpo_turn_scores(inputs: CreditInputs, *, eps: float, outcome_on_last_turn: bool, method: str):
    """Normalised per-turn signal I~ [B, K] (IG per (prompt, turn index); outcome per prompt at the
    last turn), valid [B, K], K_b [B]."""
    r, valid, k_b = turn_table(inputs, method)
    rows, cols = valid.nonzero(as_tuple=True)
    last = cols == k_b[rows] - 1
    is_ig = ~last if outcome_on_last_turn else torch.ones_like(last)
    g, _ = dense_ids(inputs.group_ids)
    K = r.shape[1]
    z = torch.zeros(rows.shape, dtype=F64)
    seg, n = dense_ids(g[rows[is_ig]] * max(K, 1) + cols[is_ig])
    z[is_ig] = znorm(r[rows[is_ig], cols[is_ig]], seg, n, eps=eps)
    if outcome_on_last_turn:
        seg, n = dense_ids(g[rows[last]])
        z[last] = znorm(inputs.rewards.to(F64)[rows[last]], seg, n, eps=eps)
    return place(z, valid), valid, k_b


@CREDIT.register("a2tgpo")
@token_level(needs=("steps", "step_rewards"))
def a2tgpo_advantages(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6,
                      outcome_on_last_turn: bool = True, spread: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """A2TGPO: turn-group normalised information gain, accumulated and divided by sqrt(#terms).

    Reads rewards [B] (outcome), group_ids [B], step_ids [B, T], step_rewards [B, K] (information gain
    IG_{i,k} of each turn, e.g. `turn_rewards.information_gain`) -> advantages [B, T] float32.
    I~_{i,k} = (IG_{i,k} - mean_{x,k} IG) / (std_{x,k} IG + eps)   group = same prompt x, same turn
               index k (only rollouts that reached turn k); std unbiased; a (prompt, turn index)
               reached by one rollout gives I~ = 0 (degenerate sigma).
    outcome_on_last_turn (IGPO's layout, A2TGPO refines IGPO): the last turn's term is the outcome
               reward z-normalised within the prompt group instead of its IG.
    A_{i,k}  = ( sum_{k'=k}^{K_i-1} gamma^(k'-k) I~_{i,k'} ) / sqrt(K_i - k)   (K_i - k = #terms summed)
    The sqrt rescaling keeps the variance of deep and shallow trajectories comparable; IGPO has none.
    The adaptive turn-level clipping lives in `a2tgpo_clip_scale`, this estimator's clip-scale companion
    (spread, temperature are its parameters): the trainer puts it in batch.clip_scale and the
    objective `a2tgpo` (objectives/turn_clip.py; `--recipe a2tgpo`) multiplies its clip range by it.
    Defaults: gamma 1.0, eps 1e-6 (the paper's values are unknown: assumptions).
    Paper: "A2TGPO: Agentic Turn-Group Policy Optimization with Adaptive Turn-level Clipping"
    (arXiv 2605.06200). Status: reconstructed (confirmed design: turn-group normalisation, sqrt-rescaled
    accumulation, IG-adaptive clipping; assumed: the exact formulas, the outcome term as IGPO's last
    turn, the defaults). Loop reference: `a2tgpo_advantages_loop`.
    """
    z, valid, k_b = _a2tgpo_turn_scores(inputs, eps=eps, outcome_on_last_turn=outcome_on_last_turn, method="a2tgpo")
    terms = (k_b[:, None] - torch.arange(z.shape[1])[None, :]).clamp(min=1).to(F64)
    return finish(torch.where(valid, discounted(z, gamma) / terms.sqrt(), torch.zeros_like(z)), inputs)


def a2tgpo_clip_scale(inputs: CreditInputs, *, spread: float = 0.5, temperature: float = 1.0, eps: float = 1e-6,
                      outcome_on_last_turn: bool = True) -> torch.Tensor:
    """A2TGPO's adaptive turn-level clipping: a per-token multiplier of the PPO clip range.

    Same inputs as `a2tgpo_advantages` -> scale [B, T] float32 (1.0 off the loss mask / turns).
    f(I~) = 1 + spread * tanh(I~ / temperature)  in (1 - spread, 1 + spread): increasing and bounded,
    so informative turns (high normalised IG) get a wider clip range, uninformative ones a narrower
    one; I~ = 0 keeps the base range. The objective `a2tgpo` consumes it as eps_{i,k} = eps0 * scale
    (batch.clip_scale multiplying clip_low / clip_high; the trainer calls this companion after the
    estimator).
    Defaults spread 0.5, temperature 1.0: reconstructed (the paper's f is unpublished).
    Paper: "A2TGPO" (arXiv 2605.06200). Status: reconstructed.
    """
    if not 0.0 <= spread < 1.0 or temperature <= 0:
        raise ValueError(f"a2tgpo_clip_scale: need 0 <= spread < 1 and temperature > 0, got {spread}, {temperature}")
    z, valid, _ = _a2tgpo_turn_scores(inputs, eps=eps, outcome_on_last_turn=outcome_on_last_turn, method="a2tgpo")
    scale = torch.where(valid, 1.0 + spread * torch.tanh(z / temperature), torch.ones_like(z))
    on_turn = inputs.loss_mask & (inputs.step_ids >= 0)
    idx = inputs.step_ids.clamp(min=0, max=max(scale.shape[1] - 1, 0))
    gathered = torch.gather(scale, 1, idx) if scale.shape[1] else torch.ones(on_turn.shape, dtype=F64)
    return torch.where(on_turn, gathered, torch.ones_like(gathered)).to(torch.float32)


def a2tgpo_advantages_loop(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6,
                           outcome_on_last_turn: bool = True) -> torch.Tensor:
    """Readable reference for `a2tgpo_advantages`."""
    rows = rows_of(inputs)

    def is_ig(row, k):
        return not (outcome_on_last_turn and k == row["K"] - 1)

    z = []
    for row in rows:
        zs = []
        for k in range(row["K"]):
            if is_ig(row, k):
                members = [o["r"][k] for o in rows if o["g"] == row["g"] and o["K"] > k and is_ig(o, k)]
                zs.append(znorm_loop(row["r"][k], members, eps=eps))
            else:
                members = [o["R"] for o in rows if o["g"] == row["g"] and o["K"] > 0]
                zs.append(znorm_loop(row["R"], members, eps=eps))
        z.append(zs)
    per_turn = [[returns_loop(zs, gamma)[k] / math.sqrt(len(zs) - k) for k in range(len(zs))] for zs in z]
    return broadcast_loop(per_turn, inputs)


# -- IGPO --------------------------------------------------------------------------------------------


@CREDIT.register("igpo")
@token_level(needs=("steps", "step_rewards"))
def igpo_advantages(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6, norm_mode: str = "separate",
                    outcome_on_last_turn: bool = True, var_floor: float = 1e-8) -> torch.Tensor:
    """IGPO: information-gain turn rewards z-normalised per prompt, then discounted accumulation.

    Reads rewards [B] (outcome, e.g. answer F1), group_ids [B], step_ids [B, T], step_rewards [B, K]
    (information gain IG_{i,k} = p(y* | after turn k) - p(y* | before), `turn_rewards.information_gain`)
    -> advantages [B, T] float32.
    u_{i,k} = IG_{i,k} for k < K_i - 1;  u_{i,K_i-1} = R_i (the answer turn carries the outcome)
    r~ = (u - mean) / (sqrt(var + var_floor) + eps), mean / population var pooled over the prompt's
         (rollout, turn) pairs: IG turns and outcome turns normalised separately ("separate", the
         reference default) or together ("joint"); a pool of one value gives 0.
    A_{i,k} = r~_{i,k} + gamma A_{i,k+1}, broadcast over the turn's tokens; no sqrt rescaling
    (A2TGPO adds it). outcome_on_last_turn=False uses step_rewards for every turn.
    Defaults (reference): gamma 1.0, eps 1e-6, var_floor 1e-8, norm_mode "separate".
    Paper: "Information Gain-based Policy Optimization: A Simple and Effective Approach for Multi-Turn
    LLM Agents" (arXiv 2510.14967). Status: confirmed (reference implementation in the SIOP repository,
    `core_algos.py::compute_igpo_turn_level_advantage`), one deviation: the reference finds IG turns by
    a non-zero reward, so an IG of exactly 0 leaves its turn out of the statistics and merges its tokens
    into the next turn; here every turn is a turn. Loop reference: `igpo_advantages_loop`.
    """
    if norm_mode not in ("separate", "joint"):
        raise ValueError(f"igpo: norm_mode must be 'separate' or 'joint', got {norm_mode!r}")
    r, valid, k_b = turn_table(inputs, "igpo")
    rows, cols = valid.nonzero(as_tuple=True)
    last = (cols == k_b[rows] - 1) & outcome_on_last_turn
    u = torch.where(last, inputs.rewards.to(F64)[rows], r[rows, cols])
    g, _ = dense_ids(inputs.group_ids)
    pool = g[rows] * 2 + (last.long() if norm_mode == "separate" else 0)
    seg, n = dense_ids(pool)
    z = znorm(u, seg, n, eps=eps, std="population", var_floor=var_floor)
    return finish(discounted(place(z, valid), gamma), inputs)


def igpo_advantages_loop(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6, norm_mode: str = "separate",
                         outcome_on_last_turn: bool = True, var_floor: float = 1e-8) -> torch.Tensor:
    """Readable reference for `igpo_advantages`."""
    rows = rows_of(inputs)
    signal = []  # per row: [(value, kind)], kind "outcome" for the answer turn
    for row in rows:
        signal.append([(row["R"], "outcome") if outcome_on_last_turn and k == row["K"] - 1 else (row["r"][k], "ig")
                       for k in range(row["K"])])
    per_turn = []
    for b, row in enumerate(rows):
        z = []
        for value, kind in signal[b]:
            pool = [v for c, o in enumerate(rows) if o["g"] == row["g"] for v, kk in signal[c]
                    if norm_mode == "joint" or kk == kind]
            z.append(znorm_loop(value, pool, eps=eps, unbiased=False, var_floor=var_floor))
        per_turn.append(returns_loop(z, gamma))
    return broadcast_loop(per_turn, inputs)


# -- MatchTIR ----------------------------------------------------------------------------------------


@CREDIT.register("matchtir")
@token_level(needs=("steps", "step_rewards"))
def matchtir_advantages(inputs: CreditInputs, *, gamma: float = 0.9, eps: float = 1e-6,
                        scale_by_std: bool = True, matching: str = "greedy",
                        unmatched_penalty: float = 0.0) -> torch.Tensor:
    """MatchTIR dual-level advantage: trajectory GRPO averaged with turn-index-normalised returns.

    Reads group_ids [B], step_ids [B, T], step_rewards [B, K] (turn rewards from tool-call matching,
    `turn_rewards.matchtir_turn_rewards`) -> advantages [B, T] float32.
    A^traj_i     = GRPO( sum_k r_{i,k} )   (group mean / unbiased std + eps; a group of one: mean 0,
                   std 1; scale_by_std=False: no std division)
    D_{i,k}      = sum_{k' >= k} gamma^(k'-k) r_{i,k'}
    A^turn_{i,k} = (D_{i,k} - mean_{prompt,k} D) / (std_{prompt,k} D + eps)   over rollouts of the
                   prompt that reached turn k; a turn index reached by one rollout: mean 0, std 1
                   (A^turn = D / (1 + eps)), as the official code
    A_{i,k}      = (A^traj_i + A^turn_{i,k}) / 2, broadcast over the turn's tokens
    A row without turns scores 0 in A^traj's statistics and gets no advantage.
    Defaults (official): gamma 0.9 (hard-coded `lam`), eps 1e-6, std scaling on. `matching` ("greedy" |
    "ot") and `unmatched_penalty` (0) belong to the producer (`matchtir_matched_step_rewards` in training).
    Paper: "MatchTIR: Fine-Grained Supervision for Tool-Integrated Reasoning via Bipartite Matching"
    (arXiv 2601.10712). Status: confirmed (official `core_algos.py::compute_grpo_outcome_advantage`,
    modified); zero-variance turn groups give exactly 0 here. Loop: `matchtir_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "matchtir")
    a_traj = grpo_advantages(r.sum(1), inputs.group_ids, eps=eps, scale_by_std=scale_by_std).to(F64)
    rows, cols = valid.nonzero(as_tuple=True)
    g, _ = dense_ids(inputs.group_ids)
    seg, n = dense_ids(g[rows] * max(r.shape[1], 1) + cols)
    a_turn = znorm(discounted(r, gamma)[valid], seg, n, eps=eps, single="raw")
    return finish(place((a_traj[rows] + a_turn) / 2.0, valid), inputs)


def matchtir_advantages_loop(inputs: CreditInputs, *, gamma: float = 0.9, eps: float = 1e-6,
                             scale_by_std: bool = True) -> torch.Tensor:
    """Readable reference for `matchtir_advantages`."""
    rows = rows_of(inputs)
    totals = [sum(row["r"]) for row in rows]
    returns = [returns_loop(row["r"], gamma) for row in rows]
    per_turn = []
    for b, row in enumerate(rows):
        group = [totals[c] for c, o in enumerate(rows) if o["g"] == row["g"]]
        a_traj = znorm_loop(totals[b], group, eps=eps, scale=scale_by_std, single="raw")
        turns = []
        for k in range(row["K"]):
            members = [returns[c][k] for c, o in enumerate(rows) if o["g"] == row["g"] and o["K"] > k]
            turns.append((a_traj + znorm_loop(returns[b][k], members, eps=eps, single="raw")) / 2.0)
        per_turn.append(turns)
    return broadcast_loop(per_turn, inputs)


# -- SLATE -------------------------------------------------------------------------------------------


@CREDIT.register("slate")
@token_level(needs=("steps", "step_rewards", "step_keys"))
def slate_advantages(inputs: CreditInputs, *, scale_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """SLATE: sibling-relative step advantage among the k alternatives sampled from a shared prefix.

    Reads group_ids [B], step_ids [B, T], step_rewards [B, K] (the judge's step score, e.g. the sum of
    ternary {-1, 0, +1} verdicts over quality dimensions, early-answer bonus included),
    step_keys[b][k] (an id of the shared prefix tau_<k: siblings have equal keys) -> [B, T] float32.
    A_j = r_j - mean_siblings(r)   (scale_by_std: / (std_siblings + eps), std unbiased)
    Siblings = (row, step) pairs of the same prompt group with equal step keys. A step without
    siblings, or siblings that all got the same score (judge ties), gets A = 0 (masked).
    Shifting every sibling's reward by the same constant (the prefix's value) leaves A unchanged.
    Defaults: scale_by_std False, eps 1e-6 (the paper's choice is unknown: assumption).
    Paper: "SLATE: truncated step-level sampling with LLM-judge step rewards" (arXiv 2602.23440).
    Status: reconstructed (confirmed: truncated sampling of k next-step alternatives and a
    sibling-relative advantage; assumed: its exact form, no std division by default).
    Loop reference: `slate_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "slate")
    seg = state_group_ids(inputs, valid, "slate")
    a = znorm(r[valid], seg, int(seg.max()) + 1 if seg.numel() else 0, eps=eps, scale=scale_by_std)
    return finish(place(a, valid), inputs)


def slate_advantages_loop(inputs: CreditInputs, *, scale_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Readable reference for `slate_advantages`."""
    rows = rows_of(inputs)
    keys = state_keys_loop(inputs, rows)
    per_turn = []
    for b, row in enumerate(rows):
        turns = []
        for k in range(row["K"]):
            siblings = [rows[c]["r"][j] for c in range(len(rows)) for j in range(rows[c]["K"])
                        if keys[c][j] == keys[b][k]]
            turns.append(znorm_loop(row["r"][k], siblings, eps=eps, scale=scale_by_std))
        per_turn.append(turns)
    return broadcast_loop(per_turn, inputs)


# -- VPR ---------------------------------------------------------------------------------------------


def _vpr_groups(inputs: CreditInputs, outcome_reward_scale: float, eps: float):
    """Effective rewards of the valid pairs [N], valid [B, K], and which pairs are informative [N]."""
    r, valid, k_b = turn_table(inputs, "vpr")
    rows, cols = valid.nonzero(as_tuple=True)
    x = r[rows, cols] + outcome_reward_scale * torch.where(
        cols == k_b[rows] - 1, inputs.rewards.to(F64)[rows], torch.zeros(rows.shape, dtype=F64))
    seg = state_group_ids(inputs, valid, "vpr")
    n = int(seg.max()) + 1 if seg.numel() else 0
    count, mean, ss, flat = group_moments(x, seg, n)
    std = torch.sqrt(ss / count.clamp(min=1.0))  # population std (np.std)
    keep = ((count >= 2) & (std > eps) & ~flat)[seg]
    return x - mean[seg], std[seg], keep, valid


@CREDIT.register("vpr")
@token_level(needs=("steps", "step_rewards", "step_keys"))
def vpr_advantages(inputs: CreditInputs, *, mode: str = "mean_then_batch_whiten", eps: float = 1e-8,
                   outcome_reward_scale: float = 0.0) -> torch.Tensor:
    """VPR: within-state relative oracle reward of the K candidate actions, whitened over the batch.

    Reads rewards [B], group_ids [B], step_ids [B, T], step_rewards [B, K] (the oracle's score of each
    action), step_keys[b][k] (the state the action was taken in: candidates of one state share it)
    -> advantages [B, T] float32.
    x = oracle reward (+ outcome_reward_scale * R_i on the row's last turn, the terminal bonus)
    c = x - mean_state(x)                 state group = (prompt group, step key)
    "mean_then_batch_whiten" (the official scripts): A = (c - mean c) / (std c + eps) over every kept
        candidate of the batch (population std; std <= eps -> 0)
    "group_whiten": A = c / (std_state + eps)
    A state group with fewer than two candidates, or whose candidates all got the same reward
    (population std <= eps), is masked: A = 0 (the official code also drops those tokens from the
    loss; `vpr_train_mask`, this estimator's loss-mask companion, gives that mask and the trainer
    applies it).
    Defaults (official `vpr_*.sh`): mode "mean_then_batch_whiten", outcome_reward_scale 0, eps 1e-8.
    Paper: "VPR: Verifiable Process Rewards" (arXiv 2605.10325). Status: confirmed (official code
    thu-nics/VPR `gigpo/core_gigpo.py::compute_vpr_turn_level_advantage`, state-group branch).
    Loop reference: `vpr_advantages_loop`.
    """
    if mode not in ("mean_then_batch_whiten", "group_whiten"):
        raise ValueError(f"vpr: mode must be 'mean_then_batch_whiten' or 'group_whiten', got {mode!r}")
    centred, std, keep, valid = _vpr_groups(inputs, outcome_reward_scale, eps)
    if mode == "group_whiten":
        a = centred / (std + eps)
    else:
        kept = centred[keep]
        spread = kept.std(unbiased=False) if kept.numel() else kept.new_tensor(0.0)
        a = (centred - kept.mean()) / (spread + eps) if bool(spread > eps) else torch.zeros_like(centred)
    return finish(place(torch.where(keep, a, torch.zeros_like(a)), valid), inputs)


def vpr_train_mask(inputs: CreditInputs, *, eps: float = 1e-8, outcome_reward_scale: float = 0.0) -> torch.Tensor:
    """[B, T] bool: the loss-mask tokens of turns in informative VPR state groups (the official code
    zeroes the response mask of the rest, so they leave the loss denominators too)."""
    _, _, keep, valid = _vpr_groups(inputs, outcome_reward_scale, eps)
    return finish(place(keep.to(F64), valid), inputs) > 0


provides_clip_scale(a2tgpo_advantages)(a2tgpo_clip_scale)
restricts_loss_mask(vpr_advantages)(vpr_train_mask)


def vpr_advantages_loop(inputs: CreditInputs, *, mode: str = "mean_then_batch_whiten", eps: float = 1e-8,
                        outcome_reward_scale: float = 0.0) -> torch.Tensor:
    """Readable reference for `vpr_advantages`."""
    rows = rows_of(inputs)
    keys = state_keys_loop(inputs, rows)
    x = [[row["r"][k] + (outcome_reward_scale * row["R"] if k == row["K"] - 1 else 0.0) for k in range(row["K"])]
         for row in rows]
    raw: dict[tuple[int, int], float] = {}  # kept (row, turn) -> centred reward (or group-whitened)
    for b, row in enumerate(rows):
        for k in range(row["K"]):
            members = [x[c][j] for c in range(len(rows)) for j in range(rows[c]["K"]) if keys[c][j] == keys[b][k]]
            mean, sd = mean_std_loop(members, unbiased=False)
            if len(members) >= 2 and sd > eps and max(members) != min(members):
                raw[(b, k)] = (x[b][k] - mean) / (sd + eps) if mode == "group_whiten" else x[b][k] - mean
    if mode == "mean_then_batch_whiten" and raw:
        mean, sd = mean_std_loop(list(raw.values()), unbiased=False)
        raw = {key: ((v - mean) / (sd + eps) if sd > eps else 0.0) for key, v in raw.items()}
    per_turn = [[raw.get((b, k), 0.0) for k in range(row["K"])] for b, row in enumerate(rows)]
    return broadcast_loop(per_turn, inputs)


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("gigpo", "episode group advantage + step advantage over identical anchor states (gamma 0.95, omega 1)",
          "Group-in-Group Policy Optimization for LLM Agent Training (arXiv 2505.10978)", "confirmed",
          "groups, turns, step_rewards (env reward per turn), step_keys (observation before each turn)"),
    Entry("mapo", "judge-scored turn returns; mix of turn-index and batch normalisation",
          "MAPO: Mixed Advantage Policy Optimization (arXiv 2603.06194)", "reconstructed",
          "turns, step_rewards (judge score per turn)",
          training="works with rl.judge llm[:<folder>] (a yes/no verdict per turn); other judges: the environment's turn rewards stand in"),
    Entry("a2tgpo", "IG normalised per (prompt, turn index), discounted sum / sqrt(#terms); IG-adaptive clip scale companion",
          "A2TGPO: Agentic Turn-Group Policy Optimization (arXiv 2605.06200)", "reconstructed",
          "groups, turns, step_rewards (information gain per turn)",
          training="works on multi-turn tasks; its adaptive clip needs rl.objective a2tgpo (--recipe a2tgpo)"),
    Entry("igpo", "IG (and outcome) z-normalised per prompt, discounted accumulation, no sqrt",
          "Information Gain-based Policy Optimization (arXiv 2510.14967)", "confirmed",
          "groups, turns, step_rewards (information gain per turn)",
          training="works on multi-turn tasks (the policy's probability of the gold answer after each turn)"),
    Entry("matchtir", "(trajectory GRPO + turn-index-normalised discounted turn reward) / 2",
          "MatchTIR: Fine-Grained Supervision for Tool-Integrated Reasoning (arXiv 2601.10712)", "confirmed",
          "groups, turns, step_rewards (training: the task's tool calls per turn matched against its gold call "
          "chain, answer F1)",
          training="works on tasks that parse tool calls and give a gold call chain (keyvalue)"),
    Entry("slate", "step reward minus the mean of siblings sampled from the same prefix",
          "SLATE: truncated step-level sampling with LLM-judge step rewards (arXiv 2602.23440)", "reconstructed",
          "groups, steps, step_rewards (judge), step_keys (shared-prefix id: rollout.sampler slate)",
          training="works with rollout.sampler slate (siblings of each step from a shared prefix, judged in context); with independent samples, siblings share a prefix only by chance"),
    Entry("vpr", "oracle reward minus the state-group mean, whitened over the batch; equal-reward states masked",
          "VPR: Verifiable Process Rewards (arXiv 2605.10325)", "confirmed",
          "groups, turns, step_rewards (oracle score), step_keys (state of each candidate)",
          training="works with rollout.sampler vpr (--recipe vpr: K candidate actions branched at every visited state, scored by the task's turn truth; the paper's game solvers are not bundled)"),
]


# -- information gain in training (IGPO, A2TGPO) -------------------------------------------------------


def information_gain_step_rewards(ctx, step_ids: torch.Tensor, *, log_space: bool = False) -> torch.Tensor:
    """step_rewards [B, K]: IGPO's information gain of each turn of a multi-turn rollout, in training.

    For row b with turns k = 0..K_b-1 (the completion's `turn_spans`), the context before turn k is the
    prompt and the completion up to the start of action k (earlier actions and their observations);
    after the last turn it is the whole completion. At each of the K_b + 1 contexts the policy scores
    the gold answer written as the task answers ("<answer>" as context, the answer text as target;
    a task may set `answer_prefix`): m_k = mean token log-prob of the answer
    (`providers.continuation_mean_logprobs`), and IG_k = exp(m_{k+1}) - exp(m_k)
    (`turn_rewards.information_gain`; log_space=True gives m_{k+1} - m_k, A2TGPO's variant).
    A row without turns (single-turn) gets no turn (NaN). Cost: sum_b (K_b + 1) forward rows, counted.
    Paper: "Information Gain-based Policy Optimization" (arXiv 2510.14967), Sec. 3: the turn reward is
    the change in the policy's probability of the ground-truth answer.
    """
    src = ctx.sources
    prefix_text = getattr(src.task, "answer_prefix", "<answer>")
    head = src.tokenizer.encode(prefix_text, add_special_tokens=False)
    prefixes, targets, owners = [], [], []
    for b, c in enumerate(ctx.completions):
        spans = c.meta.get("turn_spans", [])
        if not spans:
            continue
        answer = src.tokenizer.encode(str(ctx.examples[b].answer), add_special_tokens=False)
        cuts = [start for start, _ in spans] + [len(c.token_ids)]
        for cut in cuts:
            prefixes.append(list(c.prompt_ids) + list(c.token_ids[:cut]) + head)
            targets.append(answer)
        owners.append((b, len(cuts)))
    means = continuation_mean_logprobs(ctx, prefixes, targets)
    per_row: list[list[float]] = [[] for _ in ctx.completions]
    at = 0
    for b, n in owners:
        per_row[b] = information_gain(means[at:at + n], log_space=log_space)
        at += n
    return pad_turn_rewards(per_row)  # NaN past each row's last turn, and for rows without turns


provides_step_rewards(igpo_advantages)(information_gain_step_rewards)
provides_step_rewards(a2tgpo_advantages)(information_gain_step_rewards)


# -- MatchTIR's tool-call matching in training ----------------------------------------------------------


def turn_protocol(ctx, method: str, *names: str):
    """The task of `ctx` if it offers every method in `names` (what a turn-level signal reads from it);
    else a CredoError naming the task, the estimator and the missing methods."""
    from credo.errors import CredoError

    task = ctx.sources.task
    missing = [n for n in names if not callable(getattr(task, n, None))]
    if missing:
        raise CredoError(f"rl.credit {method}: task {getattr(task, 'name', type(task).__name__)!r} has no "
                         f"{', '.join(missing)} (the turn signal reads them; the keyvalue task has them)")
    return task


@provides_step_rewards(matchtir_advantages)
def matchtir_matched_step_rewards(ctx, step_ids: torch.Tensor, *, matching: str = "greedy",
                                  unmatched_penalty: float = 0.0) -> torch.Tensor:
    """step_rewards [B, K]: MatchTIR's turn rewards of each multi-turn rollout, in training.

    Turn k's predicted calls are the task's parse of its action (`task.tool_calls(text)`), an answer turn
    scores the answer's word F1 against the gold answer (`answer_f1` of `task.answer_of(text)`), and all
    calls of the trajectory are matched jointly against the gold call chain (`task.gold_calls(example)`)
    by `turn_rewards.matchtir_turn_rewards` (matching "greedy" = the official Hungarian-style assignment,
    "ot" = Sinkhorn). A row without turns gets no turn (NaN). No model call: the cost is the matching.
    Paper: "MatchTIR" (arXiv 2601.10712).
    """
    task = turn_protocol(ctx, "matchtir", "tool_calls", "gold_calls", "answer_of")
    per_row: list[list[float]] = []
    for c, example in zip(ctx.completions, ctx.examples):
        texts = list(c.meta.get("turn_texts", []))
        answers = [task.answer_of(t) for t in texts]
        per_row.append(matchtir_turn_rewards(
            [task.tool_calls(t) for t in texts], task.gold_calls(example),
            answer_scores=[None if a is None else answer_f1(a, str(example.answer)) for a in answers],
            matching=matching, unmatched_penalty=unmatched_penalty))
    return pad_turn_rewards(per_row)
