"""Token-signal credit estimators: the GRPO advantage A_i of each row, redistributed over its tokens
by a per-token signal the policy itself provides (entropy, surprisal, hidden states, attention,
contrastive log-probs) or by token identity across the group (GTPO).

| estimator        | signal (CreditInputs field)                    | what it does to A_i on token t               |
|------------------|------------------------------------------------|----------------------------------------------|
| hicra            | entropy [B, T] (top-q = planning proxy)        | A + alpha |A| on planning tokens              |
| hicra_gram       | extras["planning_mask"] [B, T] bool            | same, planning = Strategic-Gram tokens       |
| gtpo_credit      | tokens (always filled), entropy [B, T]         | conflict tokens never pushed down            |
| aem              | logprobs [B, T] (response surprisal)           | A g(relative surprisal), g > 0               |
| delta            | hidden_states [B, T, H]                        | A c_t, c from side-centroid alignment        |
| attention_anchor | attention [B, T, T]                            | A (1 + gamma) on top-q anchor / preplan      |
| t_reg            | extras["contrastive_logprobs_pos" / "_neg"]    | A spread over tokens by sigma(lp+ - lp-)     |
| d3s_token        | entropy [B, T]                                 | keep the top |A| H tokens, zero the rest     |
| forking_tokens   | entropy [B, T]                                 | A on the top-rho entropy tokens, else 0      |

Every estimator starts from `grpo_advantages(rewards, group_ids, scale_by_std=...)` (a group of one:
A = R; a zero-variance group: A = 0), returns float32 [B, T] that is 0 off `loss_mask`, and has a
readable loop reference `<name>_loop` beside it. "Top-q" picks ceil(q n_b) of a row's n_b loss tokens,
ties broken by the earlier position.
"""

from __future__ import annotations

import math

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, provides_extras, score_tokens, token_texts
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop
from credo.objectives.entropy_aware import gtpo_conflict_deltas

# -- shared pieces -------------------------------------------------------------------------------


def _row_adv(inputs: CreditInputs, scale_by_std: bool) -> torch.Tensor:
    """GRPO advantage per row, float64 [B]."""
    return grpo_advantages(inputs.rewards, inputs.group_ids, scale_by_std=scale_by_std).to(torch.float64)


def _adv_loop(inputs: CreditInputs, scale_by_std: bool) -> list[float]:
    return grpo_advantages_loop([float(r) for r in inputs.rewards], [int(g) for g in inputs.group_ids],
                                scale_by_std=scale_by_std)


def _dense(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, unique.numel()


def _top_q(score: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """bool [B, T]: each row's ceil(q n_b) highest-scoring loss tokens (ties: earlier position first)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"top-q fraction must be in [0, 1], got {q}")
    s = torch.where(mask, score.to(torch.float64), torch.full(score.shape, -math.inf, dtype=torch.float64))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1]).expand_as(order).contiguous())
    k = torch.ceil(q * mask.sum(1).to(torch.float64) - 1e-9).long()
    return mask & (rank < k[:, None])


def _top_q_loop(scores: list[float], q: float) -> set[int]:
    """Indices (into `scores`) of the ceil(q n) largest, earlier index first on ties."""
    k = math.ceil(q * len(scores) - 1e-9)
    return set(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k])


def _loss_cols(inputs: CreditInputs, b: int) -> list[int]:
    return [t for t in range(inputs.loss_mask.shape[1]) if bool(inputs.loss_mask[b, t])]


def _zeros_loop(inputs: CreditInputs) -> list[list[float]]:
    return [[0.0] * inputs.loss_mask.shape[1] for _ in range(inputs.loss_mask.shape[0])]


# -- HICRA ---------------------------------------------------------------------------------------


def _hicra(inputs: CreditInputs, planning: torch.Tensor, *, alpha: float, verl_variant: bool,
           scale_by_std: bool) -> torch.Tensor:
    mask = inputs.loss_mask
    a = _row_adv(inputs, scale_by_std)
    A = torch.where(mask, a[:, None].expand(mask.shape), torch.zeros(mask.shape, dtype=torch.float64))
    amplified = planning & mask
    if verl_variant:  # only correct (A > 0) responses longer than their group's average length
        length = mask.sum(1).to(torch.float64)
        dense, G = _dense(inputs.group_ids)
        count = torch.zeros(G, dtype=torch.float64).index_add_(0, dense, torch.ones_like(length))
        mean_len = (torch.zeros(G, dtype=torch.float64).index_add_(0, dense, length) / count)[dense]
        amplified = amplified & ((a > 0) & (length > mean_len))[:, None]
        return torch.where(amplified, A * (1 + alpha * torch.sign(A)), A).to(torch.float32)
    return torch.where(amplified, A + alpha * A.abs(), A).to(torch.float32)


@CREDIT.register("hicra")
@token_level(needs=("entropy",))
def hicra(inputs: CreditInputs, *, alpha: float = 0.2, top_q: float = 0.3, verl_variant: bool = False,
          scale_by_std: bool = True) -> torch.Tensor:
    """HICRA (entropy proxy): amplify the GRPO advantage on planning tokens, taken to be each
    response's top-q highest-entropy tokens.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], entropy [B, T] -> advantages [B, T] float32.
      S_i = top-q entropy tokens of row i;   A'_t = A_i + alpha |A_i| 1[t in S_i]
    With A < 0 this reduces the blame on planning tokens (A (1 - alpha)), by design.
    verl_variant=True (the code behind the paper's results, per TRL's docs): only rows with A > 0 and
    longer than their group's mean length, signed form A (1 + alpha sign A) on their planning tokens.
    Defaults: alpha 0.2 (paper, via TRL docs), top_q 0.3 (the verl code's top-30% entropy; taken per
    response here). Degenerate: A = 0 rows stay 0; an empty row has no tokens.
    Paper: "Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning" (HICRA, arXiv
    2509.03646). Status: reconstructed (the additive form is stated in TRL's documentation, a secondary
    source; the entropy proxy and the verl variant are unconfirmed). Loop reference: `hicra_loop`.
    """
    inputs.require("entropy", method="hicra")
    planning = _top_q(inputs.entropy, inputs.loss_mask, top_q)
    return _hicra(inputs, planning, alpha=alpha, verl_variant=verl_variant, scale_by_std=scale_by_std)


@CREDIT.register("hicra_gram")
@token_level(needs=("extras",))
def hicra_gram(inputs: CreditInputs, *, alpha: float = 0.2, verl_variant: bool = False,
               scale_by_std: bool = True) -> torch.Tensor:
    """HICRA (Strategic-Gram form): amplify the GRPO advantage on the tokens of matched Strategic Grams.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], extras["planning_mask"] [B, T] bool (tokens
    covered by Strategic-Gram occurrences: n-grams, n in [3, 5], from the top-20% document-frequency
    k-means clusters of sentence-embedded n-grams; built offline by the caller) -> [B, T] float32.
      A'_t = A_i + alpha |A_i| 1[planning_mask[b, t]]      (verl_variant as in `hicra`)
    Defaults: alpha 0.2. Planning flags off the loss mask are ignored.
    Paper: "Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning" (HICRA, arXiv
    2509.03646). Status: reconstructed (the form is stated in TRL's HICRA docs, a secondary source).
    Loop reference: `hicra_loop(..., planning="mask")`.
    """
    inputs.require("extras.planning_mask", method="hicra_gram")
    planning = torch.as_tensor(inputs.extras["planning_mask"]).bool()
    if tuple(planning.shape) != tuple(inputs.loss_mask.shape):
        raise ValueError(f"hicra_gram: extras['planning_mask'] must be [B, T] = {tuple(inputs.loss_mask.shape)}, "
                         f"got {tuple(planning.shape)}")
    return _hicra(inputs, planning, alpha=alpha, verl_variant=verl_variant, scale_by_std=scale_by_std)


def hicra_loop(inputs: CreditInputs, *, planning: str = "entropy", alpha: float = 0.2, top_q: float = 0.3,
               verl_variant: bool = False, scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `hicra` (planning="entropy") and `hicra_gram` (planning="mask")."""
    adv = _adv_loop(inputs, scale_by_std)
    cols = [_loss_cols(inputs, b) for b in range(len(adv))]
    groups = [int(g) for g in inputs.group_ids]
    out = _zeros_loop(inputs)
    for b, a in enumerate(adv):
        if planning == "entropy":
            chosen = _top_q_loop([float(inputs.entropy[b, t]) for t in cols[b]], top_q)
            plan = {cols[b][j] for j in chosen}
        else:
            plan = {t for t in cols[b] if bool(inputs.extras["planning_mask"][b, t])}
        lengths = [len(cols[j]) for j in range(len(adv)) if groups[j] == groups[b]]
        eligible = a > 0 and len(cols[b]) > sum(lengths) / len(lengths)
        for t in cols[b]:
            if t in plan and not verl_variant:
                out[b][t] = a + alpha * abs(a)
            elif t in plan and eligible:
                out[b][t] = a * (1 + alpha * (1.0 if a > 0 else -1.0 if a < 0 else 0.0))
            else:
                out[b][t] = a
    return out


# -- GTPO conflict-token credit ------------------------------------------------------------------


@CREDIT.register("gtpo_credit")
@token_level(needs=("entropy",))
def gtpo_credit(inputs: CreditInputs, *, ent_threshold: float = 0.7, ent_scale: float = 0.1, w_raw: float = 2.0,
                use_entropy: bool = True, protect_conflicts: bool = True, scale_by_std: bool = True) -> torch.Tensor:
    """GTPO's advantage as an estimator: conflict tokens shared by positive and negative completions
    are never pushed down (and amplified in positive ones); high-entropy completions are dropped.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], tokens [B, T] (always filled by the trainer;
    not a declarable need), entropy [B, T] -> advantages [B, T] float32.
      A_i  = GRPO advantage;  conflict runs and delta from `objectives.entropy_aware.gtpo_conflict_deltas`:
             a position (counted from the completion's start, and again from its end) whose token some
             A > 0 and some A < 0 completion of the group share there; only the initial run counts;
             delta = w_raw on it in A > 0 rows, 0 in A < 0 rows, 1 elsewhere (fwd x bwd)
      H_i  = mean entropy of row i;  A'_i = A_i - ent_scale H_i if H_i <= ent_threshold else 0
      A_t  = A'_i delta_t / n_conf_i      (n_conf_i = conflict tokens of row i, clamped >= 1)
    protect_conflicts: the entropy shift can turn a small positive A_i negative, which would then push
    (and amplify) its conflict tokens down; those tokens are clamped at 0 (never triggers for binary
    rewards: a positive GRPO advantage is >= 1/sqrt(G) > ent_scale ent_threshold for G < 204).
    use_entropy=False skips the entropy filter/shift (entropy is then not read).
    Degenerate: groups without both signs have no conflicts (delta 1); A = 0 rows get -ent_scale H_i
    (as the official code); an empty row has no tokens. Use the seq_mean_token_mean reduction to match
    the official per-completion token mean.
    Defaults (official config.yaml / constants): ent_threshold 0.7 nats, ent_scale 0.1, w_raw 2.0.
    Paper: "GTPO: Trajectory-Based Policy Optimization in Large Language Models" (arXiv 2508.03772).
    Status: confirmed (winstonsmith1897/GTPO gtpo/gtpo_training.py: build_conflict_mask, the entropy
    shaping), moved from the loss into the advantage; protect_conflicts is credo's guard.
    Loop reference: `gtpo_credit_loop`.
    """
    inputs.require("tokens", method="gtpo_credit")
    mask = inputs.loss_mask
    a = _row_adv(inputs, scale_by_std)
    delta, conflict, n_conf = gtpo_conflict_deltas(inputs.tokens, mask, inputs.group_ids, a, w_raw=w_raw)
    shaped = a
    if use_entropy:
        inputs.require("entropy", method="gtpo_credit")
        n = mask.sum(1).clamp(min=1).to(torch.float64)
        ent = torch.where(mask, inputs.entropy.to(torch.float64), torch.zeros(mask.shape, dtype=torch.float64))
        ent = ent.sum(1) / n
        shaped = torch.where(ent <= ent_threshold, a - ent_scale * ent, torch.zeros_like(a))
    out = shaped[:, None] * delta.to(torch.float64) / n_conf.to(torch.float64)[:, None]
    if protect_conflicts:
        out = torch.where(conflict & (a > 0)[:, None], out.clamp(min=0.0), out)
    return torch.where(mask, out, torch.zeros_like(out)).to(torch.float32)


def gtpo_conflict_loop(tokens: list[list[int]], cols: list[list[int]], groups: list[int], adv: list[float],
                       *, w_raw: float = 2.0) -> tuple[list[dict[int, float]], list[set[int]]]:
    """Readable GTPO conflict runs: per row, {position: delta} and the set of conflict positions."""
    B = len(tokens)
    deltas: list[dict[int, float]] = [{t: 1.0 for t in cols[b]} for b in range(B)]
    conflict: list[set[int]] = [set() for _ in range(B)]
    for b in range(B):
        if adv[b] == 0 or not cols[b]:
            continue
        start, end = cols[b][0], cols[b][-1]
        mates = [j for j in range(B) if groups[j] == groups[b] and adv[j] != 0 and cols[j]]
        for backward in (False, True):
            run = []
            span = range(end, start - 1, -1) if backward else range(start, end + 1)
            for p in span:
                rel = end - p if backward else p - start
                if p not in deltas[b]:  # a masked position inside the completion ends the run
                    break

                def has(j: int) -> bool:
                    q = cols[j][-1] - rel if backward else cols[j][0] + rel
                    return q in deltas[j] and tokens[j][q] == tokens[b][p]

                if any(has(j) for j in mates if adv[j] > 0) and any(has(j) for j in mates if adv[j] < 0):
                    run.append(p)
                else:
                    break
            for p in run:
                deltas[b][p] *= w_raw if adv[b] > 0 else 0.0
                conflict[b].add(p)
    return deltas, conflict


def gtpo_credit_loop(inputs: CreditInputs, *, ent_threshold: float = 0.7, ent_scale: float = 0.1,
                     w_raw: float = 2.0, use_entropy: bool = True, protect_conflicts: bool = True,
                     scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `gtpo_credit`."""
    adv = _adv_loop(inputs, scale_by_std)
    B = len(adv)
    cols = [_loss_cols(inputs, b) for b in range(B)]
    tokens = [[int(x) for x in row] for row in inputs.tokens]
    deltas, conflict = gtpo_conflict_loop(tokens, cols, [int(g) for g in inputs.group_ids], adv, w_raw=w_raw)
    out = _zeros_loop(inputs)
    for b in range(B):
        shaped = adv[b]
        if use_entropy:
            h = sum(float(inputs.entropy[b, t]) for t in cols[b]) / max(len(cols[b]), 1)
            shaped = adv[b] - ent_scale * h if h <= ent_threshold else 0.0
        n_conf = max(len(conflict[b]), 1)
        for t in cols[b]:
            value = shaped * deltas[b][t] / n_conf
            if protect_conflicts and t in conflict[b] and adv[b] > 0:
                value = max(value, 0.0)
            out[b][t] = value
    return out


# -- AEM -----------------------------------------------------------------------------------------


@CREDIT.register("aem")
@token_level(needs=("logprobs",))
def aem(inputs: CreditInputs, *, strength: float = 1.0, max_scale: float = 2.0, relative: str = "ratio",
        scale_by_std: bool = True) -> torch.Tensor:
    """AEM: rescale each response's advantage by its surprisal relative to its group.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], logprobs [B, T] (behaviour logprobs of the
    sampled tokens) -> advantages [B, T] float32.
      S_i = -(1/|y_i|) sum_t log pi(y_it)                      (length-normalised response surprisal)
      u_i = S_i / mean_G S  (relative="ratio")   or   exp(S_i - mean_G S)  (relative="difference")
      g_i = clip(u_i^strength, 1/max_scale, max_scale) > 0;   A'_t = A_i g_i
    Surprising responses move the policy (and its entropy) more, confident ones less; g > 0, so the
    sign of A is never changed. mean_G over the group's non-empty rows.
    Degenerate: an empty row, a group of one, or a group whose mean surprisal is 0 gets g = 1.
    Defaults (reconstruction; the paper's proxy is unpublished): strength 1.0, max_scale 2.0, ratio.
    Paper: "AEM: Adaptive Entropy Modulation for Multi-Turn Agentic Reinforcement Learning" (arXiv
    2605.00425). Status: reconstructed (only A' = A g(relative surprisal) is stated). Loop: `aem_loop`.
    """
    if max_scale < 1.0 or relative not in ("ratio", "difference"):
        raise ValueError(f"aem: need max_scale >= 1 and relative in ('ratio', 'difference'), got "
                         f"max_scale={max_scale}, relative={relative!r}")
    inputs.require("logprobs", method="aem")
    mask = inputs.loss_mask
    a = _row_adv(inputs, scale_by_std)
    n = mask.sum(1).to(torch.float64)
    S = -torch.where(mask, inputs.logprobs.to(torch.float64), torch.zeros(mask.shape, dtype=torch.float64)).sum(1) \
        / n.clamp(min=1.0)
    has = n > 0
    dense, G = _dense(inputs.group_ids)
    cnt = torch.zeros(G, dtype=torch.float64).index_add_(0, dense, has.to(torch.float64))[dense]
    mean = (torch.zeros(G, dtype=torch.float64).index_add_(0, dense, torch.where(has, S, torch.zeros_like(S)))
            [dense] / cnt.clamp(min=1.0))
    if relative == "ratio":
        ok = has & (cnt > 1) & (mean > 0)
        u = torch.where(ok, S / mean.clamp(min=1e-12), torch.ones_like(S))
    else:
        ok = has & (cnt > 1)
        u = torch.where(ok, torch.exp((S - mean).clamp(-50.0, 50.0)), torch.ones_like(S))
    g = torch.where(ok, (u ** strength).clamp(1.0 / max_scale, max_scale), torch.ones_like(S))
    return torch.where(mask, (a * g)[:, None].expand(mask.shape), torch.zeros(mask.shape, dtype=torch.float64)
                       ).to(torch.float32)


def aem_loop(inputs: CreditInputs, *, strength: float = 1.0, max_scale: float = 2.0, relative: str = "ratio",
             scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `aem`."""
    adv = _adv_loop(inputs, scale_by_std)
    cols = [_loss_cols(inputs, b) for b in range(len(adv))]
    surprisal = [-sum(float(inputs.logprobs[b, t]) for t in c) / len(c) if c else None for b, c in enumerate(cols)]
    groups = [int(g) for g in inputs.group_ids]
    out = _zeros_loop(inputs)
    for b, c in enumerate(cols):
        others = [surprisal[j] for j in range(len(adv)) if groups[j] == groups[b] and surprisal[j] is not None]
        g = 1.0
        if surprisal[b] is not None and len(others) > 1:
            mean = sum(others) / len(others)
            if relative == "ratio" and mean > 0:
                g = min(max((surprisal[b] / mean) ** strength, 1 / max_scale), max_scale)
            elif relative == "difference":
                g = min(max(math.exp(strength * (surprisal[b] - mean)), 1 / max_scale), max_scale)
        for t in c:
            out[b][t] = adv[b] * g
    return out


# -- DelTA ---------------------------------------------------------------------------------------


@CREDIT.register("delta")
@token_level(needs=("hidden_states",))
def delta(inputs: CreditInputs, *, temperature: float = 0.1, eps: float = 1e-8,
          scale_by_std: bool = True) -> torch.Tensor:
    """DelTA: per-token coefficients that favour side-specific directions over ones shared by the
    positive and negative responses of a group, with a hidden-state proxy for token gradients.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], hidden_states [B, T, H] (the state that
    scored token t) -> advantages [B, T] float32.
      mu+_g = sum_{i: A_i > 0} A_i sum_t h_it / sum_{i: A_i > 0} A_i |y_i|   (mu-_g likewise with |A_i|)
      a_t   = cos(h_t, mu_own) - cos(h_t, mu_other)     (own = the side of the token's row)
      c_t   = 2 sigmoid(a_t / temperature)              (1 for shared directions, up to 2 side-specific)
      c~_t  = c_t N / sum_{all loss tokens} c            (self-normalised over the batch)
      A'_t  = A_i c~_t   so that token_mean(A' ratio) = sum c A ratio / sum c, the paper's surrogate
    Tokens of A = 0 rows, and of groups lacking a positive or a negative row, get c = 1.
    Defaults (reconstruction): temperature 0.1. A batch without loss tokens returns zeros.
    Paper: "DelTA: Discriminative Token Credit Assignment for Reinforcement Learning from Verifiable
    Rewards" (arXiv 2605.21467). Status: reconstructed (the coefficient form is an assumption: the
    abstract only says coefficients up-weight side-specific and down-weight shared directions).
    Loop reference: `delta_loop`.
    """
    inputs.require("hidden_states", method="delta")
    mask = inputs.loss_mask
    h = inputs.hidden_states.to(torch.float64)
    a = _row_adv(inputs, scale_by_std)
    dense, G = _dense(inputs.group_ids)
    n = mask.sum(1).to(torch.float64)
    row_sum = torch.where(mask[..., None], h, torch.zeros_like(h)).sum(1)  # [B, H]

    def centroid(side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.where(side, a.abs(), torch.zeros_like(a))
        num = torch.zeros(G, h.shape[2], dtype=torch.float64).index_add_(0, dense, w[:, None] * row_sum)
        den = torch.zeros(G, dtype=torch.float64).index_add_(0, dense, w * n)
        return num / den.clamp(min=eps)[:, None], den > 0

    mu_pos, has_pos = centroid(a > 0)
    mu_neg, has_neg = centroid(a < 0)
    own = torch.where((a > 0)[:, None], mu_pos[dense], mu_neg[dense])  # [B, H]
    other = torch.where((a > 0)[:, None], mu_neg[dense], mu_pos[dense])

    def cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y[:, None, :]).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)[:, None]).clamp(min=eps)

    active = (a != 0) & has_pos[dense] & has_neg[dense]
    c = torch.where(active[:, None], 2 * torch.sigmoid((cos(h, own) - cos(h, other)) / temperature),
                    torch.ones(mask.shape, dtype=torch.float64))
    c = torch.where(mask, c, torch.zeros_like(c))
    total = c.sum()
    scale = mask.sum().to(torch.float64) / total if total > 0 else torch.zeros((), dtype=torch.float64)
    return (a[:, None] * c * scale).to(torch.float32)


def delta_loop(inputs: CreditInputs, *, temperature: float = 0.1, eps: float = 1e-8,
               scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `delta`."""
    adv = _adv_loop(inputs, scale_by_std)
    B = len(adv)
    cols = [_loss_cols(inputs, b) for b in range(B)]
    hs = [[[float(x) for x in inputs.hidden_states[b, t]] for t in range(inputs.loss_mask.shape[1])] for b in range(B)]
    H = inputs.hidden_states.shape[2]
    groups = [int(g) for g in inputs.group_ids]

    def centroid(g: int, positive: bool) -> list[float] | None:
        rows = [j for j in range(B) if groups[j] == g and (adv[j] > 0 if positive else adv[j] < 0)]
        den = sum(abs(adv[j]) * len(cols[j]) for j in rows)
        if den <= 0:
            return None
        return [sum(abs(adv[j]) * hs[j][t][d] for j in rows for t in cols[j]) / den for d in range(H)]

    def cos(x: list[float], y: list[float]) -> float:
        nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        return sum(u * v for u, v in zip(x, y)) / max(nx * ny, eps)

    coef = _zeros_loop(inputs)
    for b in range(B):
        pos, neg = centroid(groups[b], True), centroid(groups[b], False)
        for t in cols[b]:
            if adv[b] != 0 and pos is not None and neg is not None:
                own, other = (pos, neg) if adv[b] > 0 else (neg, pos)
                x = (cos(hs[b][t], own) - cos(hs[b][t], other)) / temperature
                coef[b][t] = 2 / (1 + math.exp(-x))
            else:
                coef[b][t] = 1.0
    total = sum(sum(row) for row in coef)
    n_tokens = sum(len(c) for c in cols)
    out = _zeros_loop(inputs)
    for b in range(B):
        for t in cols[b]:
            out[b][t] = adv[b] * coef[b][t] * n_tokens / total if total > 0 else 0.0
    return out


# -- Attention preplan / anchor ------------------------------------------------------------------

_TARGETS = ("anchor", "preplan", "both", "coupled")


def attention_metrics(attention: torch.Tensor, loss_mask: torch.Tensor,
                      window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(WAAD [B, T], FAI [B, T]) from attention [B, T, T] (attention[b, t, j]: weight of t on j <= t).
    WAAD_t = sum_{j <= t} a_tj min(t - j, W);  FAI_j = mean over later loss tokens t > j of a_tj (0 if none)."""
    B, T, _ = attention.shape
    a = attention.to(torch.float64)
    t_idx, j_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
    dist = torch.where(j_idx <= t_idx, (t_idx - j_idx).clamp(max=window), torch.zeros(T, T, dtype=torch.long))
    waad = (a * dist.to(torch.float64)[None]).sum(2)
    later = (t_idx > j_idx)[None] & loss_mask[:, :, None]  # [B, t, j]
    n_later = later.sum(1).to(torch.float64)
    fai = torch.where(n_later > 0, (a * later).sum(1) / n_later.clamp(min=1.0), torch.zeros(B, T, dtype=torch.float64))
    return waad, fai


@CREDIT.register("attention_anchor")
@token_level(needs=("attention",))
def attention_anchor(inputs: CreditInputs, *, window: int = 10, top_q: float = 0.1, gamma: float = 0.5,
                     target: str = "coupled", scale_by_std: bool = True) -> torch.Tensor:
    """Preplan-and-anchor credit: amplify the GRPO advantage on anchor tokens (high Future Attention
    Influence) and/or preplan tokens (high Windowed Average Attention Distance).

    inputs: rewards [B], group_ids [B], loss_mask [B, T], attention [B, T, T] (an attention map per
    row, e.g. the last layer averaged over heads) -> advantages [B, T] float32.
      WAAD_t = sum_{j <= t} a_tj min(t - j, W)      (look-back distance, clipped at W)
      FAI_j  = mean_{t > j, t a loss token} a_tj    (attention received from later response tokens)
      anchors = top-q loss tokens by FAI;  preplan = top-q by WAAD
      target: "anchor" | "preplan" | "both" (union) | "coupled" (anchors plus, for each anchor, the
              nearest preplan token before it: the anchor's credit propagated to its preplan token)
      A'_t = A_i (1 + gamma 1[t selected])
    Departs from the spec's literal WAAD range (j >= t - W): the distance is clipped instead, so
    attention mass beyond the window counts as distance W rather than being ignored.
    Defaults (reconstruction, unconfirmed): window 10, top_q 0.1, gamma 0.5, target "coupled".
    Degenerate: A = 0 rows stay 0; a row with one token has FAI 0 (it is still its own top-1).
    Paper: "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained
    Policy Optimization" (arXiv 2510.13554). Status: reconstructed. Loop: `attention_anchor_loop`.
    """
    if target not in _TARGETS:
        raise ValueError(f"attention_anchor: target must be one of {_TARGETS}, got {target!r}")
    inputs.require("attention", method="attention_anchor")
    mask = inputs.loss_mask
    waad, fai = attention_metrics(inputs.attention, mask, window)
    anchor, preplan = _top_q(fai, mask, top_q), _top_q(waad, mask, top_q)
    chosen = {"anchor": anchor, "preplan": preplan, "both": anchor | preplan}.get(target)
    if chosen is None:  # coupled: the last preplan token strictly before each anchor
        T = mask.shape[1]
        pos = torch.arange(T).expand(mask.shape)
        last_pre = torch.cummax(torch.where(preplan, pos, torch.full_like(pos, -1)), dim=1).values
        prev = torch.cat([torch.full((mask.shape[0], 1), -1), last_pre[:, :-1]], 1)  # strictly before t
        hit = torch.zeros(mask.shape[0], T + 1, dtype=torch.bool)
        hit.scatter_(1, torch.where(anchor & (prev >= 0), prev, torch.full_like(prev, T)), True)
        chosen = anchor | (hit[:, :T] & preplan)
    a = _row_adv(inputs, scale_by_std)[:, None]
    out = torch.where(chosen, a * (1 + gamma), a.expand(mask.shape))
    return torch.where(mask, out, torch.zeros_like(out)).to(torch.float32)


def attention_anchor_loop(inputs: CreditInputs, *, window: int = 10, top_q: float = 0.1, gamma: float = 0.5,
                          target: str = "coupled", scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `attention_anchor`."""
    adv = _adv_loop(inputs, scale_by_std)
    out = _zeros_loop(inputs)
    for b in range(len(adv)):
        cols = _loss_cols(inputs, b)
        att = inputs.attention[b]
        waad = [sum(float(att[t, j]) * min(t - j, window) for j in range(t + 1)) for t in cols]
        fai = []
        for j in cols:
            later = [t for t in cols if t > j]
            fai.append(sum(float(att[t, j]) for t in later) / len(later) if later else 0.0)
        anchors = {cols[i] for i in _top_q_loop(fai, top_q)}
        preplans = {cols[i] for i in _top_q_loop(waad, top_q)}
        if target == "anchor":
            chosen = anchors
        elif target == "preplan":
            chosen = preplans
        elif target == "both":
            chosen = anchors | preplans
        else:
            chosen = set(anchors)
            for t in anchors:
                before = [p for p in preplans if p < t]
                if before:
                    chosen.add(max(before))
        for t in cols:
            out[b][t] = adv[b] * (1 + gamma) if t in chosen else adv[b]
    return out


# -- T-REG ---------------------------------------------------------------------------------------


@CREDIT.register("t_reg")
@token_level(needs=("extras",))
def t_reg(inputs: CreditInputs, *, temperature: float = 1.0, eps: float = 1e-12,
          scale_by_std: bool = True) -> torch.Tensor:
    """T-REG's self-generated contrastive token rewards, used to distribute the sequence advantage.

    inputs: rewards [B], group_ids [B], loss_mask [B, T],
      extras["contrastive_logprobs_pos"] [B, T]: log pi(y_t | x+, y_<t), the policy prompted to write
        a better response;  extras["contrastive_logprobs_neg"] [B, T]: the same under a prompt asking
        for a worse one (two extra teacher-forced passes of the policy)  -> advantages [B, T] float32.
      r_t  = sigmoid((lp+_t - lp-_t) / temperature) in (0, 1)        (sigma-normalised token reward)
      w_t  = r_t / mean_row(r)       if A_i >= 0   (credit goes to tokens the "better" prompt prefers)
           = (1 - r_t) / mean_row(1 - r) if A_i < 0 (blame goes to tokens the "worse" prompt prefers)
      A'_t = A_i w_t      so sum_t A'_t = |y_i| A_i (the GRPO total) and w > 0 keeps the sign
    Equal differences on a row give w = 1 (GRPO). Defaults: temperature 1.0.
    Paper: "T-REG: Preference Optimization with Token-Level Reward Regularization" (arXiv 2412.02685).
    Status: reconstructed: T-REG regularises DPO's implicit token rewards toward r_t; here r_t
    redistributes an RL advantage instead (the spec's r_t; the distribution rule is an assumption).
    Loop reference: `t_reg_loop`.
    """
    inputs.require("extras.contrastive_logprobs_pos", "extras.contrastive_logprobs_neg", method="t_reg")
    mask = inputs.loss_mask
    lp_pos = torch.as_tensor(inputs.extras["contrastive_logprobs_pos"]).to(torch.float64)
    lp_neg = torch.as_tensor(inputs.extras["contrastive_logprobs_neg"]).to(torch.float64)
    for name, x in (("pos", lp_pos), ("neg", lp_neg)):
        if tuple(x.shape) != tuple(mask.shape):
            raise ValueError(f"t_reg: extras['contrastive_logprobs_{name}'] must be [B, T] = {tuple(mask.shape)}, "
                             f"got {tuple(x.shape)}")
    a = _row_adv(inputs, scale_by_std)
    r = torch.sigmoid(torch.nan_to_num(lp_pos - lp_neg) / temperature)
    score = torch.where((a < 0)[:, None], 1 - r, r)
    score = torch.where(mask, score, torch.zeros_like(score))
    mean = score.sum(1) / mask.sum(1).clamp(min=1).to(torch.float64)
    w = score / mean.clamp(min=eps)[:, None]
    return torch.where(mask, a[:, None] * w, torch.zeros_like(w)).to(torch.float32)


def t_reg_loop(inputs: CreditInputs, *, temperature: float = 1.0, eps: float = 1e-12,
               scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `t_reg`."""
    adv = _adv_loop(inputs, scale_by_std)
    pos, neg = inputs.extras["contrastive_logprobs_pos"], inputs.extras["contrastive_logprobs_neg"]
    out = _zeros_loop(inputs)
    for b, a in enumerate(adv):
        cols = _loss_cols(inputs, b)
        r = [1 / (1 + math.exp(-(float(pos[b, t]) - float(neg[b, t])) / temperature)) for t in cols]
        s = [1 - x for x in r] if a < 0 else r
        mean = sum(s) / len(s) if s else 0.0
        for t, x in zip(cols, s):
            out[b][t] = a * x / max(mean, eps)
    return out


# -- D3S token level -----------------------------------------------------------------------------


@CREDIT.register("d3s_token")
@token_level(needs=("entropy",))
def d3s_token(inputs: CreditInputs, *, keep_ratio: float = 0.5, scale_by_std: bool = True) -> torch.Tensor:
    """D3S token-level down-sampling as an estimator: keep the tokens with the largest |A_t| H_t.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], entropy [B, T] -> advantages [B, T] float32.
      score_t = |A_i| H_t over all loss tokens of the batch;  keep the top ceil(keep_ratio N) with
      score > 0 (ties: earlier row, then earlier position);  A'_t = A_i on kept tokens, 0 elsewhere
    The curriculum (aggressive at first, relaxing over training) is the caller's: pass a growing
    keep_ratio. Zero-variance groups score 0 and are never kept (they carry no signal).
    Defaults (reconstruction; ratios unconfirmed): keep_ratio 0.5. The sample-level half of D3S
    (max-Var(A) subsets) is a selection rule, not an estimator.
    Paper: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
    Optimization" (D3S, arXiv 2509.22115). Status: reconstructed. Loop reference: `d3s_token_loop`.
    """
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"d3s_token: keep_ratio must be in [0, 1], got {keep_ratio}")
    inputs.require("entropy", method="d3s_token")
    mask = inputs.loss_mask
    a = _row_adv(inputs, scale_by_std)[:, None].expand(mask.shape)
    score = torch.where(mask, a.abs() * inputs.entropy.to(torch.float64), torch.zeros(mask.shape, dtype=torch.float64))
    flat = torch.where(mask & (score > 0), score, torch.full_like(score, -math.inf)).flatten()
    k = math.ceil(keep_ratio * int(mask.sum()) - 1e-9)
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order] = True
    keep = keep.view(mask.shape) & (score > 0) & mask
    return torch.where(keep, a, torch.zeros_like(a)).to(torch.float32)


def d3s_token_loop(inputs: CreditInputs, *, keep_ratio: float = 0.5, scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `d3s_token`."""
    adv = _adv_loop(inputs, scale_by_std)
    cells = [(abs(adv[b]) * float(inputs.entropy[b, t]), b, t) for b in range(len(adv)) for t in _loss_cols(inputs, b)]
    k = math.ceil(keep_ratio * len(cells) - 1e-9)
    kept = [c for c in sorted(cells, key=lambda c: (-c[0], c[1], c[2])) if c[0] > 0][:k]
    out = _zeros_loop(inputs)
    for _, b, t in kept:
        out[b][t] = adv[b]
    return out


# -- the 80/20 rule: forking tokens -----------------------------------------------------------------


@CREDIT.register("forking_tokens")
@token_level(needs=("entropy",))
def forking_tokens(inputs: CreditInputs, *, top_quantile: float = 0.2, scale_by_std: bool = True) -> torch.Tensor:
    """The policy gradient only on the batch's highest-entropy ("forking") tokens.

    inputs: rewards [B], group_ids [B], loss_mask [B, T], entropy [B, T] -> advantages [B, T] float32.
      tau = the (1 - top_quantile) quantile of H_t over all loss tokens of the batch (linear
      interpolation, torch.quantile);  A'_t = A_i if H_t >= tau else 0   (A_i: GRPO's group advantage)
    Zeroing the advantage keeps the loss normaliser over every response token, as TRL's
    `top_entropy_quantile` does (its entropy mask multiplies the per-token loss, the token-mean still
    divides by the full completion mask); a KL term, if any, stays on every token. top_quantile 1.0
    keeps every token (plain GRPO). Ties at tau are all kept.
    Defaults: top_quantile 0.2 (the paper's rho, the top 20% of tokens). Paper: "Beyond the 80/20 Rule:
    High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning" (arXiv
    2506.01939). Status: confirmed against TRL's GRPOTrainer (`get_high_entropy_mask`, entropy over the
    batch's non-pad tokens). Loop reference: `forking_tokens_loop`.
    """
    if not 0.0 < top_quantile <= 1.0:
        raise ValueError(f"forking_tokens: top_quantile must be in (0, 1], got {top_quantile}")
    inputs.require("entropy", method="forking_tokens")
    mask = inputs.loss_mask
    a = _row_adv(inputs, scale_by_std)[:, None].expand(mask.shape)
    if not mask.any():
        return torch.zeros(mask.shape, dtype=torch.float32)
    entropy = inputs.entropy.to(torch.float64)
    tau = torch.quantile(entropy[mask], 1.0 - top_quantile)
    keep = mask & (entropy >= tau)
    return torch.where(keep, a, torch.zeros_like(a)).to(torch.float32)


def forking_tokens_loop(inputs: CreditInputs, *, top_quantile: float = 0.2, scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `forking_tokens` (the quantile by hand: linear between order statistics)."""
    adv = _adv_loop(inputs, scale_by_std)
    cells = [(float(inputs.entropy[b, t]), b, t) for b in range(len(adv)) for t in _loss_cols(inputs, b)]
    out = _zeros_loop(inputs)
    if not cells:
        return out
    values = sorted(h for h, _, _ in cells)
    pos = (1.0 - top_quantile) * (len(values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(values) - 1)
    tau = values[lo] + (values[hi] - values[lo]) * (pos - lo)
    for h, b, t in cells:
        if h >= tau:
            out[b][t] = adv[b]
    return out


# -- what training hands these estimators (credit/providers.py) --------------------------------------

# A small built-in stand-in for HICRA's Strategic-Gram lexicon (the paper mines n-grams offline with
# a sentence embedder): words that open a plan, a check or a change of course.
PLANNING_WORDS = frozenset({"first", "then", "next", "so", "therefore", "let", "wait", "check", "verify",
                            "instead", "because", "step", "plan", "try", "recall", "finally", "but"})


@provides_extras(hicra_gram)
def planning_mask(ctx: StepContext) -> dict:
    """planning_mask [B, T] bool: loss tokens whose text is a planning word (PLANNING_WORDS)."""
    batch, cache = ctx.batch, {}
    mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        for c, text in zip(cols, token_texts(ctx.sources.tokenizer, batch.tokens[b, cols].tolist(), cache)):
            mask[b, c] = text.strip().lower() in PLANNING_WORDS
    return {"planning_mask": mask}


CONTRAST_SUFFIX = {"pos": " Write the best possible response.", "neg": " Write a wrong response."}


@provides_extras(t_reg)
def contrastive_logprobs(ctx: StepContext) -> dict:
    """T-REG's self-generated token rewards: the sampled completion tokens scored by the policy under
    the prompt plus CONTRAST_SUFFIX["pos"] and plus ["neg"] (two extra teacher-forced passes)."""
    from dataclasses import replace as _replace

    from credo.batch import build_batch
    from credo.rollout.base import Completion
    from credo.train.evaluate import encode_prompts, pad_token_id

    src, batch = ctx.sources, ctx.batch
    out = {}
    for side, suffix in CONTRAST_SUFFIX.items():
        examples = [_replace(ex, prompt=ex.prompt + suffix) for ex in ctx.examples]
        prompts = encode_prompts(src.tokenizer, src.task, examples)
        moved = [Completion(p, c.token_ids, c.logprobs, c.trainable, c.finish_reason, c.text)
                 for p, c in zip(prompts, ctx.completions)]
        shifted = build_batch(moved, batch.rewards.tolist(), batch.group_ids.tolist(),
                              pad_id=pad_token_id(src.tokenizer))
        lp = score_tokens(ctx, src.model, shifted)
        aligned = torch.zeros(batch.tokens.shape, dtype=torch.float32)
        for b, (c, p) in enumerate(zip(ctx.completions, prompts)):  # back to the batch's positions
            k = len(c.token_ids)
            aligned[b, len(c.prompt_ids): len(c.prompt_ids) + k] = lp[b, len(p): len(p) + k]
        out[f"contrastive_logprobs_{side}"] = torch.where(batch.loss_mask, aligned, torch.zeros_like(aligned))
    return out


CATALOG = [
    Entry("hicra", "GRPO advantage + alpha |A| on planning tokens (top-q entropy proxy); verl signed variant",
          "Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning (arXiv 2509.03646)",
          "reconstructed", "groups, entropy"),
    Entry("hicra_gram", "GRPO advantage + alpha |A| on Strategic-Gram planning tokens",
          "Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning (arXiv 2509.03646)",
          "reconstructed", "groups, extras planning_mask (Strategic-Gram lexicon)"),
    Entry("gtpo_credit", "GTPO advantage: conflict tokens never pushed down, x w_raw when positive, entropy filter",
          "GTPO: Trajectory-Based Policy Optimization in Large Language Models (arXiv 2508.03772)",
          "confirmed", "groups, tokens, entropy"),
    Entry("aem", "advantage rescaled by relative response surprisal (sign kept)",
          "AEM: Adaptive Entropy Modulation for Multi-Turn Agentic Reinforcement Learning (arXiv 2605.00425)",
          "reconstructed", "groups, logprobs"),
    Entry("delta", "token coefficients from hidden-state alignment with own vs other side centroid, self-normalised",
          "DelTA: Discriminative Token Credit Assignment for Reinforcement Learning from Verifiable Rewards "
          "(arXiv 2605.21467)", "reconstructed", "groups (pos. + neg.), hidden_states"),
    Entry("attention_anchor", "advantage x (1 + gamma) on top-q anchor (FAI) / preplan (WAAD) tokens",
          "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained Policy "
          "Optimization (arXiv 2510.13554)", "reconstructed", "groups, attention"),
    Entry("t_reg", "sequence advantage spread over tokens by contrastive-prompt token rewards",
          "T-REG: Preference Optimization with Token-Level Reward Regularization (arXiv 2412.02685)",
          "reconstructed", "groups, extras contrastive_logprobs_pos/neg (2 prompted passes)"),
    Entry("forking_tokens", "the 80/20 rule: GRPO advantage only on the batch's top-20% entropy tokens",
          "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM "
          "Reasoning (arXiv 2506.01939)", "confirmed", "groups, entropy"),
    Entry("d3s_token", "keep the top |A| x entropy tokens of the batch, zero the rest",
          "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy "
          "Optimization (arXiv 2509.22115)", "reconstructed", "groups, entropy"),
]
