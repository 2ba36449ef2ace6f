"""Turn-level signal producers: raw material -> per-turn rewards (`CreditInputs.step_rewards [B, K]`).

The estimators in `turns.py` and `turn_reward_credit.py` are pure functions of `step_rewards`; these
functions make those rewards from what the trainer has at hand (tool calls, log-likelihoods, cluster
ids, judge verdicts, latent features). They are plain functions, not registered estimators, and never
raise on model output (a malformed tool call scores 0). Per-row lists are turned into the
NaN-padded [B, K] tensor by `pad_turn_rewards`.

| producer                      | method      | input                                           |
|-------------------------------|-------------|-------------------------------------------------|
| information_gain              | IGPO/A2TGPO | p(gold answer) after each turn (mean log-prob)  |
| matchtir_turn_rewards         | MatchTIR    | predicted tool calls per turn, ground truth     |
| siop_cluster_weights          | SIOP        | answer cluster ids (from an NLI model), evidence|
| siop_turn_rewards             | SIOP        | cluster weights, log-likelihoods of references  |
| sotopia_utterance_rewards     | Sotopia-RL  | attribution scores 0..3 (or -1), goal score     |
| calm_subgoal_rewards          | CALM        | subgoals a judge says each turn achieved        |
| lare_fit_decoder / _decode    | LaRe        | latent reward features per turn, episode return |
| oprl_step_rewards             | OPRL        | implicit-PRM and old-policy token log-probs     |
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from typing import Any, Collection, Hashable, Mapping, Sequence

import torch

from credo.credit.base import step_sum

F64 = torch.float64


def pad_turn_rewards(per_row: Sequence[Sequence[float]], k: int | None = None) -> torch.Tensor:
    """Per-row lists of turn rewards -> [B, K] float32, NaN past each row's last turn (the
    `step_rewards` convention). K = the longest row unless given."""
    k = max([len(r) for r in per_row] + [0]) if k is None else k
    out = torch.full((len(per_row), k), float("nan"))
    for b, row in enumerate(per_row):
        if len(row):
            out[b, : len(row)] = torch.tensor([float(v) for v in row])
    return out


# -- IGPO / A2TGPO: information gain --------------------------------------------------------------------


def information_gain(answer_mean_logprobs: Sequence[float], *, log_space: bool = False) -> list[float]:
    """Information gain of each turn from the gold answer's likelihood after each turn.

    answer_mean_logprobs [K_b + 1]: mean token log-prob of the gold answer y* given the context
    after turn k-1 (index 0: the prompt only, index k: after turn k-1) -> IG [K_b].
    p_k = exp(mean log-prob)  (the length-normalised probability);  IG_k = p_{k+1} - p_k
    log_space=True: IG_k = log p_{k+1} - log p_k. A non-finite entry gives IG 0 for its turns.
    Paper: "Information Gain-based Policy Optimization" (arXiv 2510.14967); the log-space variant is the
    A2TGPO spec's alternative (arXiv 2605.06200). Status: confirmed (paper text, IGPO).
    """
    out = []
    for before, after in zip(answer_mean_logprobs[:-1], answer_mean_logprobs[1:]):
        if not (math.isfinite(before) and math.isfinite(after)):
            out.append(0.0)
        else:
            out.append(after - before if log_space else math.exp(after) - math.exp(before))
    return out


# -- MatchTIR: tool-call matching -----------------------------------------------------------------------


def _arguments(call: Mapping[str, Any], field: str) -> dict:
    """A call's arguments as a dict; a JSON string is parsed; anything malformed gives {}."""
    args = call.get(field, {}) if isinstance(call, Mapping) else {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return {}
    return args if isinstance(args, dict) else {}


def key_overlap(gt_keys: Sequence[Hashable], pred_keys: Sequence[Hashable]) -> float:
    """Multiset Jaccard of two key lists (MatchTIR `match_score`): equal lists 1, one empty 0,
    else |intersection| / (|a| + |b| - |intersection|)."""
    if list(gt_keys) == list(pred_keys):
        return 1.0
    if not gt_keys or not pred_keys:
        return 0.0
    a, b = Counter(gt_keys), Counter(pred_keys)
    inter = sum(min(a[k], b[k]) for k in a.keys() & b.keys())
    return inter / (len(gt_keys) + len(pred_keys) - inter)


def tool_call_similarity(pred: Mapping[str, Any], gt: Mapping[str, Any]) -> float:
    """MatchTIR similarity of a predicted and a ground-truth tool call, in [0, 1].

    pred {"name", "arguments": dict or JSON string}; gt {"name", "parameters": dict}.
    sim = [1 + key_overlap(gt keys, pred keys) + #(gt params whose value pred matches exactly)]
          / (2 + |gt params|)      if the names match (case-insensitive), else 0.
    A malformed prediction (no name, unparsable arguments) never raises: its arguments count as {}.
    Paper: "MatchTIR" (arXiv 2601.10712). Status: confirmed (official `tool.py::tool_similarity`).
    """
    name = str(pred.get("name", "") if isinstance(pred, Mapping) else "").lower()
    if name != str(gt.get("name", "")).lower():
        return 0.0
    p, g = _arguments(pred, "arguments"), _arguments(gt, "parameters")
    values = sum(1.0 for k, v in g.items() if k in p and p[k] == v)
    return (1.0 + key_overlap(list(g.keys()), list(p.keys())) + values) / (2.0 + len(g))


def greedy_call_matching(scores: Sequence[Sequence[float]]) -> list[int | None]:
    """Greedy max-score assignment of predictions (rows) to ground truths (columns).

    All (pred, gt) pairs sorted by score descending (ties: earlier pred, then earlier gt), each taken
    when both ends are still free and the score is > 0. Not an optimal (Kuhn-Munkres) assignment:
    this is what MatchTIR's function named `hungarian_assignment` does, so it is named for what it is.
    Returns the matched gt index of each prediction, or None.
    """
    pairs = sorted(((s, i, j) for i, row in enumerate(scores) for j, s in enumerate(row)),
                   key=lambda p: (-p[0], p[1], p[2]))
    assignment: list[int | None] = [None] * len(scores)
    taken: set[int] = set()
    for s, i, j in pairs:
        if s > 0 and assignment[i] is None and j not in taken:
            assignment[i] = j
            taken.add(j)
    return assignment


def sinkhorn_plan(scores: torch.Tensor, *, reg: float = 0.1, iters: int = 1000, tol: float = 1e-9) -> torch.Tensor:
    """Entropic optimal transport plan [P, G] between uniform marginals for cost -scores (POT's
    `ot.sinkhorn`, Sinkhorn-Knopp; checked every 10 iterations like POT)."""
    P, G = scores.shape
    a, b = torch.full((P,), 1.0 / P, dtype=F64), torch.full((G,), 1.0 / G, dtype=F64)
    kernel = torch.exp(scores.to(F64) / reg)
    u, v = torch.full((P,), 1.0 / P, dtype=F64), torch.full((G,), 1.0 / G, dtype=F64)
    for it in range(iters):
        v = b / (kernel.T @ u)
        u = a / (kernel @ v)
        if it % 10 == 0 and float(torch.linalg.norm((u[:, None] * kernel * v[None, :]).sum(0) - b)) < tol:
            break
    return u[:, None] * kernel * v[None, :]


def matchtir_call_rewards(preds: Sequence[Mapping], gts: Sequence[Mapping], *, matching: str = "greedy",
                          unmatched_penalty: float = 0.0, reg: float = 0.1) -> list[float]:
    """One reward per predicted call: its matched similarity ("greedy"; unmatched_penalty if none),
    or sum_j T_ij S_ij under the Sinkhorn plan T ("ot", reg 0.1). No ground truth: every call is
    unmatched ("greedy") or scores 0 ("ot").
    Defaults: unmatched_penalty 0 (`compute_process_KM`; the function default there is -0.5).
    Status: confirmed (official `assign_rewards_hungarian`, `assign_rewards_ot`).
    """
    if matching not in ("greedy", "ot"):
        raise ValueError(f"matchtir: matching must be 'greedy' or 'ot', got {matching!r}")
    if not preds:
        return []
    sims = [[tool_call_similarity(p, g) for g in gts] for p in preds]
    if matching == "ot":
        if not gts:
            return [0.0] * len(preds)
        s = torch.tensor(sims, dtype=F64)
        return (sinkhorn_plan(s, reg=reg) * s).sum(1).tolist()
    assignment = greedy_call_matching(sims)
    return [sims[i][j] if j is not None else unmatched_penalty for i, j in enumerate(assignment)]


def answer_f1(prediction: str | None, gold: str) -> float:
    """Set-of-words F1 after lowercasing and replacing punctuation by spaces (MatchTIR's answer
    score); no prediction (no <answer>) gives 0."""
    def words(text: str) -> set[str]:
        text = text.lower()
        for p in string.punctuation:
            text = text.replace(p, " ")
        return set(re.sub(r"\s+", " ", text).strip().split())

    if prediction is None:
        return 0.0
    pred, ref = words(prediction), words(gold)
    common = len(pred & ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def matchtir_turn_rewards(turn_calls: Sequence[Sequence[Mapping]], gt_calls: Sequence[Mapping], *,
                          answer_scores: Sequence[float | None] | None = None, matching: str = "greedy",
                          unmatched_penalty: float = 0.0) -> list[float]:
    """MatchTIR turn rewards of one trajectory.

    turn_calls[k]: the tool calls predicted in turn k; gt_calls: the ground-truth call sequence;
    answer_scores[k]: the answer F1 if turn k holds an <answer> (`answer_f1`), else None -> [K_b].
    All predicted calls of the trajectory are matched jointly against the ground truth; then
    r_k = ( sum of turn k's call rewards + answer score ) / max(#calls in turn k, 1)
    (the official code places r_k on the turn's last token; here it is the turn's entry).
    Paper: "MatchTIR" (arXiv 2601.10712). Status: confirmed (official `compute_process_KM` / `_ot`).
    """
    flat = [call for calls in turn_calls for call in calls]
    owner = [k for k, calls in enumerate(turn_calls) for _ in calls]
    rewards = matchtir_call_rewards(flat, gt_calls, matching=matching, unmatched_penalty=unmatched_penalty)
    totals, counts = [0.0] * len(turn_calls), [0] * len(turn_calls)
    for k in range(len(turn_calls)):
        score = answer_scores[k] if answer_scores is not None and k < len(answer_scores) else None
        totals[k] = float(score) if score is not None else 0.0
    for r, k in zip(rewards, owner):
        totals[k] += r
        counts[k] += 1
    return [t / c if c else t for t, c in zip(totals, counts)]


# -- SIOP: self-induced outcome potential ------------------------------------------------------------


def siop_cluster_weights(cluster_ids: Sequence[Hashable | None], group_ids: Sequence[Hashable], *,
                         evidence: Sequence[float | None] | None = None, eta: float = 1.0) -> list[float]:
    """SIOP target weight q(c_i) of each rollout's answer cluster, within its prompt group.

    cluster_ids[i]: the semantic cluster of rollout i's final answer (the NLI clustering is out of
    scope: give its ids), None when the rollout has no answer; group_ids[i]: its prompt.
    m(c) = |c| / K_valid (K_valid = rollouts of the group with an answer); no answer: q = 0.
    Calibration (only with evidence, eta > 0 and >= 2 clusters in the group):
    q(c) = softmax_c( log(m(c) + 1e-12) + eta r(c) ),  r(c) = mean evidence of c's members that have
    one (None = no tool observation), 0 if none. evidence[i]: mean NLI entailment of rollout i's
    tool observations toward its cluster's answer.
    Defaults: eta 1.0 (`train_siop.sh`).
    Paper: "Self-Induced Outcome Potential: Turn-Level Credit Assignment for Agents without Verifiers"
    (arXiv 2605.04984). Status: confirmed (official `siop_cluster_pass`).
    """
    out = [0.0] * len(cluster_ids)
    for g in dict.fromkeys(group_ids):
        members = [i for i, gg in enumerate(group_ids) if gg == g and cluster_ids[i] is not None]
        clusters: dict[Hashable, list[int]] = {}
        for i in members:
            clusters.setdefault(cluster_ids[i], []).append(i)
        weights = {c: len(idx) / len(members) for c, idx in clusters.items()}
        if evidence is not None and eta > 0 and len(clusters) > 1:
            logits = {}
            for c, idx in clusters.items():
                ev = [evidence[i] for i in idx if evidence[i] is not None]
                logits[c] = math.log(weights[c] + 1e-12) + eta * (sum(ev) / len(ev) if ev else 0.0)
            top = max(logits.values())
            total = sum(math.exp(v - top) for v in logits.values())
            weights = {c: math.exp(v - top) / total for c, v in logits.items()}
        for c, idx in clusters.items():
            for i in idx:
                out[i] = weights[c]
    return out


def siop_turn_rewards(q: float, reference_logliks: Sequence[Sequence[float]], *, num_turns: int,
                      lam: float = 0.5, eps: float = 1e-8, alphas: Sequence[float] | None = None) -> list[float]:
    """SIOP potential-difference turn rewards of one rollout.

    q: the rollout's cluster weight (`siop_cluster_weights`); reference_logliks[k][j]: mean token
    log-prob of the pseudo-response answering with reference j of the cluster, given the context
    truncated after turn k-1 (index 0: prompt only) -> [num_turns].
    p^_k = sum_j alpha_j exp(loglik_{k,j})   (non-finite entries skipped; none finite: undefined)
    r_k  = q (log(p^_{k+1} + eps) - log(p^_k + eps))   (undefined or non-finite -> 0)
    r_last += (1 - lam) q.   A single-turn rollout (num_turns <= 1): r = [(1 - lam) q];
    q = 0 (no answer): all 0. alphas: reference weights, uniform by default.
    Defaults (`train_siop.sh`): lam 0.5, eps 1e-8 (num_refs 3 is the caller's choice).
    Paper: "Self-Induced Outcome Potential" (arXiv 2605.04984). Status: confirmed (official
    `compute_siop_process_rewards`).
    """
    if num_turns <= 0:
        return []
    if q == 0.0:
        return [0.0] * num_turns
    if num_turns == 1:
        return [(1.0 - lam) * q]
    if len(reference_logliks) != num_turns + 1:
        raise ValueError(f"siop_turn_rewards: need {num_turns + 1} contexts (prompt + each turn), "
                         f"got {len(reference_logliks)}")

    def p_hat(row: Sequence[float]) -> float | None:
        weights = alphas if alphas is not None else [1.0 / max(len(row), 1)] * len(row)
        finite = [(a, v) for a, v in zip(weights, row) if math.isfinite(v)]
        return sum(a * math.exp(v) for a, v in finite) if finite else None

    p = [p_hat(row) for row in reference_logliks]
    out = []
    for before, after in zip(p[:-1], p[1:]):
        r = 0.0 if before is None or after is None else q * (math.log(after + eps) - math.log(before + eps))
        out.append(r if math.isfinite(r) else 0.0)
    out[-1] += (1.0 - lam) * q
    return out


# -- Sotopia-RL --------------------------------------------------------------------------------------


def sotopia_utterance_rewards(attributions: Sequence[float], goal_score: float, *, scale: float = 3.0) -> list[float]:
    """Sotopia-RL utterance rewards from attribution scores of one episode.

    attributions[k] in {0, 1, 2, 3} (how much utterance k contributed to the goal, by the
    attribution LLM) or the sentinel -1; goal_score: the episode's goal score (0..10).
    r_k = attribution_k / 3 * goal_score;  attribution -1 -> r_k = -1.
    Paper: "Sotopia-RL: Reward Design for Social Intelligence" (arXiv 2508.03905). Status: confirmed
    (official `process_annotation_direct_attribution.py::calc_reward`).
    """
    return [-1.0 if a == -1 else a / scale * goal_score for a in attributions]


def sotopia_combine_dimensions(per_dimension: Mapping[str, Sequence[float]],
                               weights: Mapping[str, float] | None = None) -> list[float]:
    """Weighted sum over social dimensions of per-utterance rewards (each from
    `sotopia_utterance_rewards` with that dimension's episode score). Default weights {"goal": 1}.
    Status: reconstructed (the paper combines dimensions; the official weights are not in the code)."""
    weights = {"goal": 1.0} if weights is None else weights
    lengths = {len(v) for k, v in per_dimension.items() if weights.get(k, 0.0)}
    if len(lengths) > 1:
        raise ValueError(f"sotopia_combine_dimensions: dimensions have different utterance counts {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    return [sum(w * per_dimension[d][k] for d, w in weights.items() if w) for k in range(n)]


# -- CALM ----------------------------------------------------------------------------------------------


def calm_subgoal_rewards(achieved: Sequence[Collection[Hashable]], *, bonus: float = 1.0,
                         first_only: bool = True) -> list[float]:
    """CALM auxiliary rewards of one trajectory: bonus per subgoal achieved in each transition.

    achieved[k]: the subgoals (ids from the LLM's task decomposition) that the judge LLM says
    transition k achieved (option terminations) -> [K_b]. r_k = bonus * #(new subgoals achieved at k);
    first_only: a subgoal pays once per trajectory (repeating it is not progress).
    Defaults: bonus 1.0, first_only True (reconstructed: the paper gives no values).
    Paper: "Assessing the Zero-Shot Capabilities of LLMs for Action Evaluation in RL" (CALM,
    arXiv 2409.12798). Status: reconstructed (paper text: "every time an option terminates, a subgoal
    is achieved, and CALM provides an auxiliary reward").
    """
    seen: set[Hashable] = set()
    out = []
    for goals in achieved:
        new = [g for g in dict.fromkeys(goals) if not (first_only and g in seen)]
        seen.update(goals)
        out.append(bonus * len(new))
    return out


# -- LaRe ----------------------------------------------------------------------------------------------


def lare_fit_decoder(features: torch.Tensor, valid: torch.Tensor, returns: torch.Tensor, *,
                     ridge: float = 1e-6, bias: bool = False) -> torch.Tensor:
    """Least-squares reward decoder for LaRe's return decomposition.

    features [N, K, D] (latent reward vectors phi(s, a) per step, from the LLM-written encoder),
    valid [N, K] bool, returns [N] episodic returns -> weights [D] (or [D + 1] with a per-step bias).
    w = argmin sum_n ( sum_{k valid} phi_{n,k} . w - R_n )^2 + ridge |w|^2, solved in closed form
    (normal equations on x_n = sum_k phi_{n,k}), so that sum_k r^_{n,k} ~ R_n.
    LaRe trains an MLP decoder by this return-decomposition loss; a linear decoder keeps it pure torch
    and convex (the assumption). Non-finite features of valid steps count as 0.
    Paper: "Latent Reward: LLM-Empowered Credit Assignment in Episodic Reinforcement Learning"
    (arXiv 2412.11120). Status: reconstructed (linear decoder, closed form).
    """
    phi = _lare_inputs(features, valid, bias)
    x = phi.sum(1)  # [N, D]: the return is linear in the summed features
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=F64)
    return torch.linalg.solve(gram, x.T @ returns.to(F64))


def lare_decode(features: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Proxy rewards r^ = phi . w  [N, K] float32, NaN on invalid steps (the step_rewards layout).
    With bias, weights has one more entry than the feature dimension."""
    phi = _lare_inputs(features, valid, weights.shape[0] == features.shape[-1] + 1)
    r = phi @ weights.to(F64)
    return torch.where(valid, r, torch.full_like(r, float("nan"))).to(torch.float32)


def _lare_inputs(features: torch.Tensor, valid: torch.Tensor, bias: bool) -> torch.Tensor:
    phi = torch.nan_to_num(features.to(F64), nan=0.0, posinf=0.0, neginf=0.0)
    if bias:
        phi = torch.cat([phi, torch.ones(*phi.shape[:2], 1, dtype=F64)], dim=-1)
    return phi * valid[..., None].to(F64)


# -- OPRL ----------------------------------------------------------------------------------------------


def oprl_step_rewards(prm_logprobs: torch.Tensor, old_logprobs: torch.Tensor, step_ids: torch.Tensor,
                      loss_mask: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """OPRL implicit step reward: beta * log pi_phi / pi_old summed over each step's tokens.

    prm_logprobs [B, T] (the implicit PRM pi_phi's log-probs of the sampled tokens), old_logprobs
    [B, T] (the frozen previous policy's), step_ids [B, T], loss_mask [B, T] -> [B, K] float32,
    NaN past each row's last step. r_k = beta sum_{t in step k} (log pi_phi(a_t) - log pi_old(a_t)).
    Default beta 0.1 (the paper's beta in [0, 1] is unconfirmed; 0.1 is the DPO convention).
    Paper: "Online Process Reward Learning for Agentic Reinforcement Learning" (arXiv 2509.19199).
    Status: reconstructed (from a third-party summary).
    """
    diff = prm_logprobs.to(F64) - old_logprobs.to(F64)
    diff = torch.where(loss_mask, diff, torch.zeros_like(diff))
    per_step = beta * step_sum(diff, torch.where(loss_mask, step_ids, torch.full_like(step_ids, -1)))
    k_b = (step_ids.max(dim=1).values + 1).clamp(min=0)
    k = per_step.shape[1]
    past = torch.arange(k)[None, :] >= k_b[:, None]
    return torch.where(past, torch.full_like(per_step, float("nan")), per_step).to(torch.float32)


def oprl_prm_loss(prm_seq_logprobs: torch.Tensor, old_seq_logprobs: torch.Tensor,
                  pairs: Sequence[tuple[int, int]], *, beta: float = 0.1) -> torch.Tensor:
    """Trajectory-level DPO loss that trains the implicit PRM online.

    prm_seq_logprobs [B] (sum of pi_phi's token log-probs of each trajectory; differentiable),
    old_seq_logprobs [B] (pi_old's), pairs [(winner, loser)] -> scalar
    J = -mean log sigmoid( beta (log pi_phi/pi_old (tau+) - log pi_phi/pi_old (tau-)) ); no pairs: 0.
    Status: reconstructed (OPRL, arXiv 2509.19199).
    """
    if not pairs:
        return prm_seq_logprobs.sum() * 0.0
    w = torch.tensor([p[0] for p in pairs])
    l = torch.tensor([p[1] for p in pairs])
    ratio = prm_seq_logprobs - old_seq_logprobs.detach()
    return -torch.nn.functional.logsigmoid(beta * (ratio[w] - ratio[l])).mean()


def oprl_preference_pairs(rewards: Sequence[float], group_ids: Sequence[Hashable]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs within each prompt group, every pair with a strictly higher
    outcome; a group whose rollouts all have the same outcome gives none."""
    return [(i, j) for i in range(len(rewards)) for j in range(len(rewards))
            if group_ids[i] == group_ids[j] and rewards[i] > rewards[j]]
