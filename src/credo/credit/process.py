"""Step-reward credit estimators: a judge / PRM / tool verifier scores each step, the estimator turns
those scores into token advantages [B, T].

| estimator    | step signal it assumes (inputs.step_rewards [B, K])      | how steps become token credit          |
|--------------|-----------------------------------------------------------|----------------------------------------|
| pure         | PRM score in [-1, 1] (SyntheticJudge's default range)     | softmin-weighted (min-form) return     |
| pure_sum     | same                                                      | sum-form discounted return (or 1/K)    |
| capo         | fraction of critiques flagging the step wrong, in [0, 1]  | GRPO advantage - penalty on wrong steps|
| tp_grpo      | step correctness score, correct when > 0 ([-1, 1])        | GRPO advantage + thought-unit reward   |
| grounded_prm | tool verdict, +1 when score > 0 else -1                   | verdict fused with the outcome, centred|

Scales, converted explicitly: `SyntheticJudge` scores lie in [-1, 1] and are PURE's PRM range as they
are. CAPO wants a wrong-vote fraction: `judge_wrong_fraction(scores)` turns one or several judges'
[-1, 1] scores into it (a step is flagged wrong by a judge whose score is below 0). TP-GRPO and
GroundedPRM binarise the score at 0. A NaN score inside a row's steps (a step the judge did not score)
counts as 0; NaN past a row's last step is padding. `step_rewards` narrower than the row's steps is
padded with NaN.

Common conventions: steps come from `inputs.step_ids` (k = 0..K_b-1, -1 off the policy tokens); a row
without steps (empty response) gets 0 everywhere; advantages are 0 off `loss_mask`. "Correct" means
`rewards >= correct_threshold` (0.5 suits 0/1 rewards). Every vectorized estimator has a readable
loop reference `<name>_loop` here; tests check they agree.
"""

from __future__ import annotations

import math

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, broadcast_steps, num_steps, step_sum, token_level
from credo.credit.providers import (StepContext, model_judge, nan_padded, provides_step_rewards,
                                    transforms_step_rewards)
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop

# -- shared pieces -------------------------------------------------------------------------------


def judge_wrong_fraction(scores: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """CAPO's step signal from judge scores: [V, B, K] (V judges / critiques) or [B, K] (one) ->
    [B, K] fraction of judges scoring the step below `threshold` (SyntheticJudge: [-1, 1], so < 0 is
    "wrong"). NaN (no step) stays NaN."""
    s = scores if scores.dim() == 3 else scores.unsqueeze(0)
    wrong = (s < threshold).to(torch.float32).mean(0)
    return torch.where(torch.isnan(s).any(0), torch.full_like(wrong, float("nan")), wrong)


def _dense_groups(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


def _group_sum(x: torch.Tensor, dense: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row sum over the row's group: [B] -> [B]."""
    return torch.zeros(k, dtype=x.dtype).index_add_(0, dense, x)[dense]


def _step_table(inputs: CreditInputs, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K_b [B], scores [B, K] float64 with NaN -> 0 inside a row's steps, exists [B, K] bool)."""
    inputs.require("step_ids", "step_rewards", method=method)
    k_b = num_steps(inputs.step_ids)
    K = int(k_b.max()) if k_b.numel() else 0
    raw = inputs.step_rewards.to(torch.float64)[:, :K]
    if raw.shape[1] < K:
        raw = torch.cat([raw, torch.full((raw.shape[0], K - raw.shape[1]), float("nan"), dtype=torch.float64)], 1)
    exists = torch.arange(K)[None, :] < k_b[:, None]
    return k_b, torch.where(exists & torch.isfinite(raw), raw, torch.zeros_like(raw)), exists


def _step_end_tokens(step_ids: torch.Tensor, k: int) -> torch.Tensor:
    """bool [B, T]: the last token of each step (PURE's step-separator / EOS positions)."""
    B, T = step_ids.shape
    pos = torch.arange(T).expand(B, T)
    ok = step_ids >= 0
    flat = (torch.arange(B)[:, None] * max(k, 1) + step_ids.clamp(min=0))[ok]
    last = torch.full((B * max(k, 1),), -1, dtype=torch.long).scatter_reduce(0, flat, pos[ok], "amax")
    return ok & (pos == last[torch.arange(B)[:, None] * max(k, 1) + step_ids.clamp(min=0)])


def _row_steps_loop(inputs: CreditInputs, b: int) -> tuple[list[int], list[int], list[float]]:
    """Loop helper: (loss positions, their step ids, the row's step scores with NaN -> 0)."""
    cols = [t for t in range(inputs.loss_mask.shape[1]) if bool(inputs.loss_mask[b, t])]
    ids = [int(inputs.step_ids[b, t]) for t in cols]
    k = max(ids, default=-1) + 1
    scores = []
    for j in range(k):
        s = float(inputs.step_rewards[b, j]) if j < inputs.step_rewards.shape[1] else float("nan")
        scores.append(s if math.isfinite(s) else 0.0)
    return cols, ids, scores


def _empty_like(inputs: CreditInputs) -> list[list[float]]:
    return [[0.0] * inputs.loss_mask.shape[1] for _ in range(inputs.loss_mask.shape[0])]


# -- PURE (min-form) and its sum-form contrast -----------------------------------------------------


STEP_WEIGHTS = ("none", "uniform")  # pure_sum: plain sum-form, or PURE's --disable_weighted_reward


def _pure_core(inputs: CreditInputs, *, form: str, temperature: float, gamma: float,
               verifiable_reward_coef: float, mask_step_end: bool, method: str,
               step_weight: str = "none") -> torch.Tensor:
    """form: "all" (softmin over all steps, the code), "future" (softmin over steps >= k), "sum"
    (step_weight "none": w_k = 1; "uniform": w_k = 1 / K_b)."""
    if step_weight not in STEP_WEIGHTS:
        raise ValueError(f"{method}: step_weight must be one of {', '.join(STEP_WEIGHTS)}, got {step_weight!r}")
    if temperature <= 0:
        raise ValueError(f"{method}: temperature must be > 0, got {temperature}")
    k_b, r, exists = _step_table(inputs, method)
    mask, step_ids = inputs.loss_mask, inputs.step_ids
    B, K = r.shape
    if form == "sum":
        w = 1.0 / k_b.clamp(min=1).to(torch.float64)[:, None] if step_weight == "uniform" else 1.0
        rw = torch.where(exists, w * r, torch.zeros_like(r))
    else:
        w = torch.softmax(torch.where(exists, -r / temperature, torch.full_like(r, -math.inf)), dim=1)
        rw = torch.where(exists, torch.nan_to_num(w, nan=0.0) * r, torch.zeros_like(r))
    dense, G = _dense_groups(inputs.group_ids)
    count = _group_sum(torch.ones(B, dtype=torch.float64), dense, G)
    # token-count baseline: the other rollouts' reward per token, times the step's tokens (the code
    # counts a step without its step-end token)
    outcome, length = rw.sum(1), mask.sum(1).to(torch.float64)
    others_len = _group_sum(length, dense, G) - length
    others_out = _group_sum(outcome, dense, G) - outcome
    rho = torch.where((count > 1) & (others_len > 0), others_out / others_len.clamp(min=1.0), torch.zeros_like(outcome))
    n_tok = step_sum(torch.ones(mask.shape, dtype=torch.float64), step_ids, K)
    base = torch.where(exists, -rho[:, None] * (n_tok - 1).clamp(min=0), torch.zeros_like(r))
    # verifiable reward v = R - 1 minus the others' mean v, on the last step (group of one: no baseline)
    R = inputs.rewards.to(torch.float64)
    loo = torch.where(count > 1, (_group_sum(R, dense, G) - R) / (count - 1).clamp(min=1.0), torch.ones_like(R))
    last = exists & (torch.arange(K)[None, :] == (k_b - 1)[:, None])
    base = base + torch.where(last, (verifiable_reward_coef * (R - loo))[:, None], torch.zeros_like(r))
    # returns per step: every token of step k sees the rewards of steps >= k
    if form == "future":
        later = torch.arange(K)[None, :] >= torch.arange(K)[:, None]  # [k, k']
        keep = exists[:, None, :] & later[None]  # [B, k, k']
        w = torch.softmax(torch.where(keep, -r[:, None, :] / temperature, torch.full((B, K, K), -math.inf,
                                                                                    dtype=torch.float64)), dim=2)
        proc = (torch.nan_to_num(w, nan=0.0) * r[:, None, :] * keep).sum(2)
        returns = proc + base.flip(1).cumsum(1).flip(1)
    else:
        disc = torch.where(torch.arange(K)[None, :] >= torch.arange(K)[:, None],
                           gamma ** (torch.arange(K)[None, :] - torch.arange(K)[:, None]).clamp(min=0).double(),
                           torch.zeros(K, K, dtype=torch.float64))
        returns = (rw + base) @ disc.T
    adv = broadcast_steps(returns, step_ids, mask)
    if mask_step_end:
        adv = torch.where(_step_end_tokens(step_ids, K), torch.zeros_like(adv), adv)
    return adv


@CREDIT.register("pure")
@token_level(needs=("steps", "step_rewards"))
def pure(inputs: CreditInputs, *, temperature: float = 0.1, verifiable_reward_coef: float = 1.0,
         future_only: bool = False, mask_step_end: bool = True) -> torch.Tensor:
    """PURE: min-form credit from PRM step scores (softmin weighting), token-count RLOO baseline.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], step_ids [B, T], step_rewards [B, K] (PRM
    score r_k = p(+) - p(-) in [-1, 1]: SyntheticJudge's range, used as is) -> advantages [B, T] float32.
      w_k   = softmax_k(-r_k / T) over ALL steps of the response   (T = temperature)
      r'_k  = w_k r_k - rho_i n_k,   rho_i = sum_{j != i} sum_k w r / sum_{j != i} |y_j|   (same group;
              n_k = the step's tokens minus its step-end token, as the code counts them)
      v_i   = coef (R_i - mean_{j != i} R_j)   added to the last step  (the code's (solved - 1) - LOO mean)
      G_k   = sum_{k' >= k} r'_k' (gamma = 1);  A_t = G_{step(t)};  step-end tokens get 0 (mask_step_end)
    As T -> 0 the weights pick the argmin step k*: tokens at or before k* get ~min_k r_k, later ones ~0.
    future_only=True: the strict reading, every step's own softmin over steps >= k:
      G_k = sum_{k' >= k} softmax_{k'' >= k}(-r / T)_{k'} r_{k'}  + the same baseline and verifier terms.
    Degenerate: a group of one (or whose other rows are empty) has no baseline (rho = 0, v = coef (R - 1));
    a row without steps gets 0. No NaN.
    Departs from the code: no KL in the reward (use the objective's kl_coef); the verifier reward uses
    rewards R in [0, 1] as "solved".
    Defaults (examples/scripts/train_pure.sh): T = 0.1, verifiable_reward_coef 1.0 (PRMVR),
    reward_baseline token, separator tokens masked.
    Paper: "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for Reasoning"
    (arXiv 2504.15275). Status: confirmed (CJReinforce/PURE: utils.py::turn_process_reward_logits_to_reward,
    experience_maker.py::process_experiences); future_only is the paper's formal reading (unconfirmed).
    Loop reference: `pure_loop`.
    """
    return _pure_core(inputs, form="future" if future_only else "all", temperature=temperature, gamma=1.0,
                      verifiable_reward_coef=verifiable_reward_coef, mask_step_end=mask_step_end,
                      method="pure").to(torch.float32)


@CREDIT.register("pure_sum")
@token_level(needs=("steps", "step_rewards"))
def pure_sum(inputs: CreditInputs, *, gamma: float = 1.0, verifiable_reward_coef: float = 1.0,
             mask_step_end: bool = True, step_weight: str = "none") -> torch.Tensor:
    """Sum-form contrast to PURE: the discounted return of the PRM step rewards.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], step_ids [B, T], step_rewards [B, K] in
    [-1, 1] -> advantages [B, T] float32.
      w_k  = 1 (step_weight "none", the default) or 1 / K_b (step_weight "uniform")
      r'_k = w_k r_k - rho_i n_k (+ v_i on the last step),  rho_i from the other rows' sum_k w r
             (RLOO, token count)
      G_k  = sum_{k' >= k} gamma^{k'-k} r'_k';   A_t = G_{step(t)};  step-end tokens get 0
    The default is the paper's sum-form definition (every positive step adds to the return, so many
    small positive steps raise it: the reward hacking PURE attributes to sum-form). It is NOT what
    the official code's sum-form switch computes: CJReinforce/PURE `--disable_weighted_reward`
    (openrlhf/utils/utils.py::turn_process_reward_logits_to_reward, commit 41f9363) replaces the
    softmin weights by a softmax of ones over the valid steps, i.e. a uniform w_k = 1 / K_b, which
    makes the first token's return the row's MEAN step reward; step_weight="uniform" with gamma = 1
    reproduces that flag.
    Degenerate cases as `pure`. Defaults: gamma 1.0, verifiable_reward_coef 1.0, step_weight "none".
    Paper: "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for Reasoning"
    (arXiv 2504.15275). Status: reconstructed (the paper's sum-form; the official flag only with
    step_weight="uniform", gamma = 1). Loop reference: `pure_loop(..., form="sum")`.
    """
    return _pure_core(inputs, form="sum", temperature=1.0, gamma=gamma, verifiable_reward_coef=verifiable_reward_coef,
                      mask_step_end=mask_step_end, method="pure_sum", step_weight=step_weight).to(torch.float32)


def pure_loop(inputs: CreditInputs, *, form: str = "all", temperature: float = 0.1, gamma: float = 1.0,
              verifiable_reward_coef: float = 1.0, mask_step_end: bool = True,
              step_weight: str = "none") -> list[list[float]]:
    """Readable reference for `pure` (form "all" / "future") and `pure_sum` (form "sum")."""
    B = inputs.loss_mask.shape[0]
    rows = [_row_steps_loop(inputs, b) for b in range(B)]

    def softmin_weighted(scores: list[float]) -> list[float]:
        if form == "sum":
            return [s / len(scores) for s in scores] if step_weight == "uniform" else list(scores)
        m = min(-s / temperature for s in scores) if scores else 0.0
        e = [math.exp(-s / temperature - m) for s in scores]
        return [x / sum(e) * s for x, s in zip(e, scores)]

    weighted = [softmin_weighted(scores) for _, _, scores in rows]
    groups = [int(g) for g in inputs.group_ids]
    out = _empty_like(inputs)
    for b, (cols, ids, scores) in enumerate(rows):
        k = len(scores)
        if k == 0:
            continue
        others = [j for j in range(B) if groups[j] == groups[b] and j != b]
        other_len = sum(len(rows[j][0]) for j in others)
        rho = sum(sum(weighted[j]) for j in others) / other_len if other_len > 0 else 0.0
        n_tok = [ids.count(j) for j in range(k)]
        base = [-rho * max(n - 1, 0) for n in n_tok]
        R = float(inputs.rewards[b])
        mean_others = sum(float(inputs.rewards[j]) for j in others) / len(others) if others else 1.0
        base[-1] += verifiable_reward_coef * (R - mean_others)
        returns = []
        for s in range(k):
            if form == "future":
                future = scores[s:]
                m = min(-x / temperature for x in future)
                e = [math.exp(-x / temperature - m) for x in future]
                returns.append(sum(ei / sum(e) * x for ei, x in zip(e, future)) + sum(base[s:]))
            else:
                returns.append(sum(gamma ** (j - s) * (weighted[b][j] + base[j]) for j in range(s, k)))
        last_of_step = {j: max(t for t, i in zip(cols, ids) if i == j) for j in set(ids)}
        for t, i in zip(cols, ids):
            if i >= 0 and not (mask_step_end and last_of_step[i] == t):
                out[b][t] = returns[i]
    return out


# -- CAPO ----------------------------------------------------------------------------------------

_VOTES = ("majority", "intersection", "union", "average")


def _capo_wrong(frac: torch.Tensor, vote: str) -> torch.Tensor:
    if vote == "majority":
        return (frac > 0.5).to(frac.dtype)
    if vote == "intersection":
        return (frac >= 1.0).to(frac.dtype)
    if vote == "union":
        return (frac > 0.0).to(frac.dtype)
    return frac.clamp(0.0, 1.0)  # average: the penalty scales with the share of critiques flagging it


@CREDIT.register("capo")
@token_level(needs=("steps", "step_rewards"))
def capo(inputs: CreditInputs, *, penalty: float = 1.0, penalty_correct: float = 0.5, vote: str = "majority",
         correct_threshold: float = 0.5, scale_by_std: bool = True) -> torch.Tensor:
    """CAPO: GRPO advantage minus a deterministic token penalty on steps a critique vote flags wrong.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], step_ids [B, T], step_rewards [B, K] = the
    fraction of the judge's critiques flagging step k wrong, in [0, 1] (0/1 for one critique; build it
    from [-1, 1] judge scores with `judge_wrong_fraction`) -> advantages [B, T] float32.
      wrong_k = 1[frac > 1/2] (vote "majority"), 1[frac = 1] ("intersection", conservative),
                1[frac > 0] ("union", aggressive), frac ("average", a soft penalty)
      A_t = A_i - P_i wrong_{step(t)},  A_i = GRPO advantage of row i,
      P_i = penalty_correct if R_i >= correct_threshold else penalty   (a wrong step inside a correct
            answer is penalised less, the balance the paper argues for)
    A zero-variance group (A_i = 0) still gets the step penalties; a row without steps gets A_i.
    Defaults (reconstruction, the paper's constants are unconfirmed): penalty 1.0, penalty_correct 0.5,
    majority vote. Departs from GRPO: token-level penalties from a frozen LLM judge (GenPRM).
    Paper: "CAPO: Towards Enhancing LLM Reasoning through Verifiable Generative Credit Assignment"
    (arXiv 2508.02298). Status: reconstructed (r_t = R_outcome - P 1[wrong step] as in the spec, with
    the outcome term replaced by its GRPO advantage). Loop reference: `capo_loop`.
    """
    if vote not in _VOTES:
        raise ValueError(f"capo: vote must be one of {_VOTES}, got {vote!r}")
    _, frac, exists = _step_table(inputs, "capo")
    adv = grpo_advantages(inputs.rewards, inputs.group_ids, scale_by_std=scale_by_std).to(torch.float64)
    p = torch.where(inputs.rewards.to(torch.float64) >= correct_threshold,
                    torch.full_like(adv, penalty_correct), torch.full_like(adv, penalty))
    per_step = adv[:, None] - p[:, None] * torch.where(exists, _capo_wrong(frac, vote), torch.zeros_like(frac))
    on_step = inputs.loss_mask & (inputs.step_ids >= 0)
    out = torch.where(on_step, broadcast_steps(per_step, inputs.step_ids, inputs.loss_mask).double(),
                      torch.where(inputs.loss_mask, adv[:, None].expand_as(on_step), torch.zeros(on_step.shape,
                                                                                             dtype=torch.float64)))
    return out.to(torch.float32)


def capo_loop(inputs: CreditInputs, *, penalty: float = 1.0, penalty_correct: float = 0.5,
              vote: str = "majority", correct_threshold: float = 0.5, scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `capo`."""
    adv = grpo_advantages_loop([float(r) for r in inputs.rewards], [int(g) for g in inputs.group_ids],
                               scale_by_std=scale_by_std)
    out = _empty_like(inputs)
    for b in range(inputs.loss_mask.shape[0]):
        cols, ids, fracs = _row_steps_loop(inputs, b)
        p = penalty_correct if float(inputs.rewards[b]) >= correct_threshold else penalty
        for t, k in zip(cols, ids):
            if k < 0:
                out[b][t] = adv[b]
                continue
            f = fracs[k]
            wrong = {"majority": f > 0.5, "intersection": f >= 1.0, "union": f > 0.0}.get(vote)
            out[b][t] = adv[b] - p * (float(wrong) if wrong is not None else min(max(f, 0.0), 1.0))
    return out


# -- TP-GRPO -------------------------------------------------------------------------------------


@CREDIT.register("tp_grpo")
@token_level(needs=("steps", "step_rewards"))
def tp_grpo(inputs: CreditInputs, *, thought_reward: float = 1.0, correct_above: float = 0.0,
            correct_threshold: float = 0.5, accumulate: bool = False, scale_by_std: bool = True) -> torch.Tensor:
    """TP-GRPO: runs of equally judged steps form "thought" units; each unit gets +-c scaled by the
    group's accuracy, added to the GRPO advantage.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], step_ids [B, T], step_rewards [B, K] (a
    GenPRM's step score; step correct when score > correct_above, i.e. > 0 on SyntheticJudge's
    [-1, 1]) -> advantages [B, T] float32.
      units: maximal runs of consecutive steps with the same verdict
      p_g = share of correct responses (R >= correct_threshold) in the row's group
      r_u = +c (1 - p_g) for a correct thought, -c p_g for a wrong one   (capability-adaptive: wrong
            thoughts are penalised less while the model is weak, correct ones rewarded less once strong)
      A_t = A_i + r_{unit(t)}        (accumulate=True: A_i + sum of r over unit(t) and the later units,
                                      DeepSeekMath's process-supervision return; only there does merging
                                      steps into units change the values)
    A row without steps gets A_i; a group of one has p = its own correctness.
    Defaults (reconstruction): c = thought_reward = 1.0, accumulate False.
    Paper: "Good Learners Think Their Thinking: Generative PRM Makes Large Reasoning Model More Efficient
    Math Learner" (arXiv 2507.23317). Status: reconstructed (the reward form is the spec's: +-c scaled by
    group accuracy, added to the GRPO advantage). Loop reference: `tp_grpo_loop`.
    """
    k_b, scores, exists = _step_table(inputs, "tp_grpo")
    B, K = scores.shape
    adv = grpo_advantages(inputs.rewards, inputs.group_ids, scale_by_std=scale_by_std).to(torch.float64)
    dense, G = _dense_groups(inputs.group_ids)
    correct = (inputs.rewards.to(torch.float64) >= correct_threshold).to(torch.float64)
    acc = _group_sum(correct, dense, G) / _group_sum(torch.ones(B, dtype=torch.float64), dense, G)
    good = scores > correct_above
    reward = torch.where(good, thought_reward * (1 - acc)[:, None], -thought_reward * acc[:, None])
    reward = torch.where(exists, reward, torch.zeros_like(reward))
    if accumulate:
        nxt = torch.cat([good[:, 1:], good[:, :1]], 1)
        unit_end = exists & ((torch.arange(K)[None, :] == (k_b - 1)[:, None]) | (nxt != good))
        reward = torch.where(unit_end, reward, torch.zeros_like(reward)).flip(1).cumsum(1).flip(1)
    per_step = adv[:, None] + reward
    on_step = inputs.loss_mask & (inputs.step_ids >= 0)
    out = torch.where(on_step, broadcast_steps(per_step, inputs.step_ids, inputs.loss_mask).double(),
                      torch.where(inputs.loss_mask, adv[:, None].expand_as(on_step),
                                  torch.zeros(on_step.shape, dtype=torch.float64)))
    return out.to(torch.float32)


def tp_grpo_loop(inputs: CreditInputs, *, thought_reward: float = 1.0, correct_above: float = 0.0,
                 correct_threshold: float = 0.5, accumulate: bool = False,
                 scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `tp_grpo`: builds the thought units explicitly."""
    rewards, groups = [float(r) for r in inputs.rewards], [int(g) for g in inputs.group_ids]
    adv = grpo_advantages_loop(rewards, groups, scale_by_std=scale_by_std)
    out = _empty_like(inputs)
    for b in range(len(rewards)):
        cols, ids, scores = _row_steps_loop(inputs, b)
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[b]]
        acc = sum(r >= correct_threshold for r in members) / len(members)
        units: list[list[int]] = []  # step indices of each thought
        for k, s in enumerate(scores):
            if units and (scores[units[-1][-1]] > correct_above) == (s > correct_above):
                units[-1].append(k)
            else:
                units.append([k])
        unit_reward = [thought_reward * (1 - acc) if scores[u[0]] > correct_above else -thought_reward * acc
                       for u in units]
        step_reward = {}
        for n, u in enumerate(units):
            for k in u:
                step_reward[k] = sum(unit_reward[n:]) if accumulate else unit_reward[n]
        for t, k in zip(cols, ids):
            out[b][t] = adv[b] + (step_reward[k] if k >= 0 else 0.0)
    return out


# -- GroundedPRM -----------------------------------------------------------------------------------


@CREDIT.register("grounded_prm")
@token_level(needs=("steps", "step_rewards"))
def grounded_prm(inputs: CreditInputs, *, verify_weight: float = 0.5, correct_threshold: float = 0.5) -> torch.Tensor:
    """GroundedPRM: tool-verified step labels fused with the outcome by the official hybrid rollout
    value, centred on the group.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], step_ids [B, T], step_rewards [B, K] (a tool
    verifier's verdict; v_k = +1 when score > 0, else -1, as the official binarisation) -> [B, T] float32.
      F_i  = +1 if R_i >= correct_threshold else -1                      (final-answer check)
      u_k  = hybrid value of the rest of the response after step k (official MCTS backpropagate):
             the later steps k+1..K-2 are the rollout's intermediate verdicts (N = K-2-k of them), the
             last step is scored by F:
             u_k = sum_{i=0}^{N-1} v_{k+1+i} (N - i) / N^2 + F / N   (N >= 1),   u_k = F   (N = 0)
      h_k  = verify_weight v_k + (1 - verify_weight) u_k                 (step fidelity + outcome)
      A_t  = h_{step(t)} - b_g,  b_g = mean over the group's rows with steps of their mean h
    A group of one (or with one row that has steps) has b = 0; a row without steps gets 0.
    Defaults (reconstruction): verify_weight 0.5. GroundedPRM is a PRM-labelling recipe (MCTS + tool
    verification, arXiv text); using its fused labels directly as RL step credit is this library's choice.
    Paper: "GroundedPRM: Tree-Guided and Fidelity-Aware Process Reward Modeling for Step-Level Reasoning"
    (arXiv 2510.14942). Status: reconstructed. Confirmed from the official code (JerryPlain/GroundedPRMCode,
    pipeline/MCTS/mcts.py: step_evaluate -> +-1, evaluate_final_state -> +-1, backpropagate -> u above;
    data_process/construct.py: labels binarised at 0); the mix h and the group centring are assumptions.
    Loop reference: `grounded_prm_loop`.
    """
    if not 0.0 <= verify_weight <= 1.0:
        raise ValueError(f"grounded_prm: verify_weight must be in [0, 1], got {verify_weight}")
    k_b, scores, exists = _step_table(inputs, "grounded_prm")
    B, K = scores.shape
    v = torch.where(scores > 0, 1.0, -1.0).to(torch.float64)
    F = torch.where(inputs.rewards.to(torch.float64) >= correct_threshold, 1.0, -1.0).to(torch.float64)
    kk, jj = torch.arange(K)[:, None], torch.arange(K)[None, :]
    N = (k_b[:, None] - 2 - torch.arange(K)[None, :]).clamp(min=0).to(torch.float64)  # [B, K]
    inter = (jj > kk)[None] & (jj[None] <= (k_b - 2)[:, None, None])  # [B, k, j]: j is an intermediate of k
    wgt = torch.where(inter, (N[:, :, None] - (jj - kk - 1)[None]) / N[:, :, None].clamp(min=1.0) ** 2,
                      torch.zeros(B, K, K, dtype=torch.float64))
    u = (wgt * v[:, None, :]).sum(2) + F[:, None] / N.clamp(min=1.0)
    h = torch.where(exists, verify_weight * v + (1 - verify_weight) * u, torch.zeros_like(v))
    has = k_b > 0
    row_mean = h.sum(1) / k_b.clamp(min=1).to(torch.float64)
    dense, G = _dense_groups(inputs.group_ids)
    n_has = _group_sum(has.to(torch.float64), dense, G)
    base = torch.where(n_has > 1, _group_sum(torch.where(has, row_mean, torch.zeros_like(row_mean)), dense, G)
                       / n_has.clamp(min=1.0), torch.zeros_like(row_mean))
    return broadcast_steps(torch.where(exists, h - base[:, None], torch.zeros_like(h)), inputs.step_ids,
                           inputs.loss_mask).to(torch.float32)


def grounded_prm_loop(inputs: CreditInputs, *, verify_weight: float = 0.5,
                      correct_threshold: float = 0.5) -> list[list[float]]:
    """Readable reference for `grounded_prm` (the official backpropagate, one rollout per step)."""
    B = inputs.loss_mask.shape[0]
    rows = [_row_steps_loop(inputs, b) for b in range(B)]
    fused = []
    for b, (_, _, scores) in enumerate(rows):
        verdicts = [1.0 if s > 0 else -1.0 for s in scores]
        final = 1.0 if float(inputs.rewards[b]) >= correct_threshold else -1.0
        h = []
        for k in range(len(verdicts)):
            path_value = [0.0] + verdicts[k + 1:]  # the node itself, then the rollout's steps ...
            path_value[-1] = final  # ... whose last one is scored by the final-answer check
            path_value = path_value[1:-1]
            n = len(path_value)
            value = sum((1 / n) * path_value[i] * (n - i) / n for i in range(n)) + final / n if n else final
            h.append(verify_weight * verdicts[k] + (1 - verify_weight) * value)
        fused.append(h)
    groups = [int(g) for g in inputs.group_ids]
    out = _empty_like(inputs)
    for b, (cols, ids, _) in enumerate(rows):
        means = [sum(fused[j]) / len(fused[j]) for j in range(B) if groups[j] == groups[b] and fused[j]]
        base = sum(means) / len(means) if len(means) > 1 else 0.0
        for t, k in zip(cols, ids):
            if k >= 0:
                out[b][t] = fused[b][k] - base
    return out


_PURE_PAPER = ("Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for Reasoning "
               "(arXiv 2504.15275)")

# -- what training hands this estimator (credit/providers.py) ----------------------------------------


@transforms_step_rewards(capo)
def capo_votes(scores: torch.Tensor) -> torch.Tensor:
    """CAPO reads the fraction of critiques calling a step wrong, not the judge's score itself."""
    return judge_wrong_fraction(scores)


@provides_step_rewards(capo)
def capo_critique_scores(ctx: StepContext, step_ids: torch.Tensor) -> torch.Tensor | None:
    """With a model judge (rl.judge = "llm[:<folder>]"): CAPO's critic, which reads the WHOLE solution
    and judges each step in hindsight (template "critique": problem, full solution, step k), one batched
    call; scores low + (high - low) q in the judge's range, turned into the wrong-vote fraction by
    `capo_votes` (one critique: q < 1/2 flags the step). The paper samples several generative critiques
    and votes; a logprob judge gives one verdict per step (documented deviation). Other judges: None,
    the default source (the judge's prefix-only step scores)."""
    judge = model_judge(ctx)
    if judge is None:
        return None
    tok, batch = ctx.sources.tokenizer, ctx.batch
    fields, sizes = [], []
    for b in range(len(batch)):
        k = int(step_ids[b].max()) + 1
        steps = [tok.decode(batch.tokens[b][step_ids[b] == j].tolist(), skip_special_tokens=True) for j in range(max(k, 0))]
        solution = "".join(steps)
        fields += [{"prompt": ctx.examples[b].prompt, "context": solution, "index": str(j + 1), "step": step.strip()}
                   for j, step in enumerate(steps)]
        sizes.append(len(steps))
    ctx.sources.counters["judge_calls"] += len(fields)
    q = judge.yes_probability("critique", fields) if fields else []
    rows, at = [], 0
    for n in sizes:
        rows.append([judge.low + (judge.high - judge.low) * v for v in q[at:at + n]])
        at += n
    return nan_padded(rows)


CATALOG = [
    Entry("pure", "min-form PRM credit: softmin-weighted step rewards, token-count RLOO baseline, verifier reward",
          _PURE_PAPER,
          "confirmed", "groups, steps, step_rewards (PRM/judge in [-1, 1])",
          training="works: rl.judge prm:<folder> (a PRM from `credo train-prm`), llm or synthetic scores the steps"),
    Entry("pure_sum", "sum-form contrast to PURE: discounted sum of PRM step rewards, same baseline "
          "(step_weight='uniform': the official --disable_weighted_reward, 1/K per step)",
          _PURE_PAPER,
          "reconstructed", "groups, steps, step_rewards (PRM/judge in [-1, 1])"),
    Entry("capo", "GRPO advantage minus token penalties on steps a critique vote flags wrong",
          "CAPO: Towards Enhancing LLM Reasoning through Verifiable Generative Credit Assignment (arXiv 2508.02298)",
          "reconstructed", "groups, steps, step_rewards (wrong-vote fraction; rl.judge llm: one hindsight "
          "critique per step over the whole solution)",
          training="works with rl.judge llm[:<folder>] (one hindsight critique per step); other judges: their step scores vote"),
    Entry("tp_grpo", "thought units (runs of equally judged steps) get +-c scaled by group accuracy, added to GRPO",
          "Good Learners Think Their Thinking: Generative PRM Makes Large Reasoning Model More Efficient Math "
          "Learner (arXiv 2507.23317)", "reconstructed", "groups, steps, step_rewards (GenPRM judge)",
          training="works with rl.judge llm or prm:<folder>; a generative PRM (GenPRM) is not bundled: the 135M model or a PRM stands in"),
    Entry("grounded_prm", "tool-verified +-1 step labels fused with the outcome (official MCTS hybrid value), centred",
          "GroundedPRM: Tree-Guided and Fidelity-Aware Process Reward Modeling for Step-Level Reasoning "
          "(arXiv 2510.14942)", "reconstructed", "groups, steps, step_rewards (tool verifier)",
          training="works on arith (calculator-verified steps, the tool verifier); no MCTS path search (steps are the policy's lines); other tasks: the judge's scores"),
]
