"""DATAMASK's joint quality-diversity selection of the RL prompt pool (`rl.data_selection = "datamask"`).

Paper: "Joint Selection for Large-Scale Pre-Training Data via Policy Gradient-based Mask Learning"
(DATAMASK, arXiv 2512.24265; code github.com/ByteDance-Seed/DATAMASK, not readable from here).
The paper selects ~10% of FineWeb by learning the logits of a mask distribution with policy gradients
on an objective that adds a quality metric and a diversity metric of the selected set. Here the same
mask learning picks the run's prompt pool: k = rl.prompt_pool prompts out of N = ceil(k / ratio)
candidate training prompts, and RL trains on the selected pool (seeded epochs, train/prompts.py).

    quality    q_i in [0, 1]        "learnability" 4 p (1 - p), p = the policy's pass rate over
                                    `learn_samples` samples per prompt before RL (p = 1/2 scores 1);
                                    "length" w_i / max_j w_j (w = words of the prompt);
                                    "judge" LLMJudge yes-probability of the "wellposed" template
                                    ("is this a clear, well-posed problem?", judges/llm.py);
                                    "field:<name>" a number in Example.meta (a jsonl column named in
                                    the task's meta_fields); values outside [0, 1] are min-max scaled
    embeddings e_i, ||e_i|| = 1     "policy" the mean-pooled last hidden state of the policy over the
                                    prompt's own tokens; "tfidf" a TF-IDF bag of words (no model)
    objective  J(m) = mean_{i in m} q_i + lam * div(m)
    diversity  "facility"  (1/N) sum_i max_{j in m} max(0, e_i . e_j)   coverage of the candidates
               "pairwise"  mean over pairs i != j in m of (1 - e_i . e_j)
               "disf"      1 - mean squared off-diagonal feature correlation of the selected set
                           (DiSF's decorrelation, arXiv 2504.20644, as its code computes the
                           correlation: columns standardised over the set with eps 1e-8)
    masks      "size_k"    Plackett-Luce draws of k distinct ids (Gumbel top-k on theta);
                           log p = sum_t [theta_{i_t} - logsumexp(theta over the ids not yet drawn)]
               "bernoulli" m_i ~ Bernoulli(sigmoid(theta_i)), theta starts at logit(ratio)
    update     theta <- theta + lr * 1/(M - 1) sum_m (J(m) - mean J) grad log p(m)   (T iterations)
    selection  the k largest logits (ties: the lower id), or the best size-k mask drawn while learning
               when its J is higher (`keep_best`)

Status: reconstructed. Confirmed from the paper's abstract and README: a mask over the candidates
with learnable sampling logits, iterative sampling of masks, policy gradients of a joint objective of a
quality and a diversity metric with a tunable balance, updates of the logits, and DiSF as the greedy
diversity baseline the speed-up is measured against. Not confirmed (the method section and code
could not be read here), so assumed, and why:
- Baseline: the mean J of the M masks (the group-relative baseline the brief names); scaled by
  M / (M - 1) it is the leave-one-out baseline, so the estimate is unbiased for grad E[J] (the plain
  mean gives (1 - 1/M) grad E[J]); tests compare it with the exact gradient over all masks of N = 4.
- Masks default to exact size-k draws ("size_k"): the selection returns exactly k ids, so the objective
  is learned on sets of the size that is kept; "bernoulli" (independent sigmoid gates, the other
  reading of "mask logits") is offered and tested the same way; its masks have any size, so with
  "pairwise" diversity (highest for two far-apart prompts) it learns small sets and its top-k is poor.
- Diversity defaults to facility location: DiSF's correlation is invariant to per-feature scale, so on
  the few dozen prompts selected here a tight cluster with noise looks as decorrelated as spread-out
  prompts (DiSF runs on batches of 1024 files); coverage is not fooled by that and gives no credit to
  a duplicate. "disf" is offered; its normalisation (divide by D'(D' - 1), D' = the trace of the
  correlation matrix, i.e. the features that vary in the set) is this reconstruction's.
- `normalize` (default true) divides the advantages by their std (+1e-8), as GRPO does, so one lr fits
  every quality source (a judge's q spread is not a length heuristic's); off = the plain estimator.
- `keep_best` (default true, not the paper's): the top-k logits can miss interchangeable candidates
  (k copies of a duplicate share the logit mass of taking one of them, so none reaches the top k),
  so the best size-k mask drawn while learning is kept when its J beats the top-k logits' J.
- Defaults: ratio 0.25, lam 1.0, M 32 masks, T 200 iterations, lr 4.0 (with normalize; within 1% of
  the greedy optimum on the toy pools of the tests, pools of 40 and 256), quality "learnability" with 4
  samples, embed "policy", diversity "facility" (the paper's values are for trillion-token pools; these
  fit pools of tens to hundreds of prompts). The paper's acceleration tricks (probability relaxation,
  distributed grouping) are not built: a pool of a few hundred candidates needs none.

Pure functions (`joint_objective` with `joint_objective_loop`, `sample_masks`, `mask_log_prob`,
`policy_gradient`, `learn_mask`) take tensors; `bind_data_selection` is the trainer's binding: it draws
the candidates, scores them, learns the mask, writes `data_selection.json` and one metrics row, and
restores the same pool from an RL checkpoint's state.json["data_selection"] on --resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError

QUALITY_SOURCES = ("learnability", "length", "judge", "field:<name>")
EMBEDDINGS = ("policy", "tfidf")
DIVERSITIES = ("facility", "pairwise", "disf")
SAMPLINGS = ("size_k", "bernoulli")
WHERE = "rl.data_selection_params"
_SALT = 1_000_081  # seeds of the mask learning and the random baseline, apart from the step seeds
_DISF_EPS = 1e-8  # DiSF's cal_corre: columns divided by sqrt(eps + var)
_TFIDF_MAX_FEATURES = 4096  # the most frequent words (document frequency), bounding [N, V]


# -- scores -----------------------------------------------------------------------------------------


def length_quality(texts: Sequence[str]) -> torch.Tensor:
    """q [N] = words_i / max_j words_j (a longer prompt states more); all empty -> all 1.

    >>> length_quality(["a b", "a b c d", ""]).tolist()
    [0.5, 1.0, 0.0]
    """
    words = torch.tensor([len(t.split()) for t in texts], dtype=torch.float64)
    top = float(words.max()) if len(words) else 0.0
    return torch.ones_like(words) if top == 0 else words / top


def scaled_to_unit(values: torch.Tensor) -> torch.Tensor:
    """values [N] as they are when all lie in [0, 1], else min-max scaled to [0, 1] (all equal -> 1)."""
    if bool(((values >= 0) & (values <= 1)).all()):
        return values
    low, high = float(values.min()), float(values.max())
    return torch.ones_like(values) if high == low else (values - low) / (high - low)


def field_quality(metas: Sequence[dict], name: str) -> torch.Tensor:
    """q [N] from the number meta[name] of each candidate (see `scaled_to_unit`)."""
    values = []
    for i, meta in enumerate(metas):
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            where = {k: meta[k] for k in ("source", "line", "row") if k in meta}
            raise CredoError(f"{WHERE}['quality'] 'field:{name}': candidate {i} {where or ''} has "
                             f"{'no meta field ' + repr(name) if value is None else repr(value)}, not a finite "
                             f"number (a jsonl task copies columns into meta with task.params.meta_fields)")
        values.append(float(value))
    return scaled_to_unit(torch.tensor(values, dtype=torch.float64))


def learnability_quality(pass_rates: torch.Tensor) -> torch.Tensor:
    """q [N] = 4 p (1 - p): 1 at p = 1/2, 0 for prompts always or never solved (no GRPO signal).

    >>> learnability_quality(torch.tensor([0.0, 0.25, 0.5, 1.0])).tolist()
    [0.0, 0.75, 1.0, 0.0]
    """
    return 4.0 * pass_rates * (1.0 - pass_rates)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x [N, D] with each row divided by its L2 norm (zero rows stay zero)."""
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp(min=1e-30), torch.zeros_like(x))


def tfidf_embeddings(texts: Sequence[str]) -> torch.Tensor:
    """e [N, V] float64: TF-IDF of lower-cased \\w+ words, idf = log((1 + N) / (1 + df)) + 1 (smooth, as
    scikit-learn), the V <= 4096 words of highest document frequency (ties: alphabetical), rows L2-normalised."""
    docs = [re.findall(r"\w+", t.lower()) for t in texts]
    df: dict[str, int] = {}
    for words in docs:
        for w in set(words):
            df[w] = df.get(w, 0) + 1
    vocab = sorted(df, key=lambda w: (-df[w], w))[:_TFIDF_MAX_FEATURES]
    column = {w: j for j, w in enumerate(sorted(vocab))}
    x = torch.zeros(len(docs), max(1, len(column)), dtype=torch.float64)
    for i, words in enumerate(docs):
        for w in words:
            if w in column:
                x[i, column[w]] += 1.0
    idf = torch.tensor([math.log((1 + len(docs)) / (1 + df[w])) + 1.0 for w in sorted(vocab)] or [1.0],
                       dtype=torch.float64)
    return unit_rows(x * idf)


@torch.no_grad()
def policy_embeddings(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                      max_tokens: int = 512) -> torch.Tensor:
    """e [N, D] float64: the last hidden state [B, T, D] mean-pooled over each prompt's own tokens (no
    chat markup: the shared system prompt would dominate the mean), L2-normalised; a prompt with no
    tokens gets a zero row (as in TF-IDF). Right padding; the model's train/eval mode is restored."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            ids = [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] or [pad] for t in chunk]
            width = max(len(i) for i in ids)
            tokens = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for r, row in enumerate(ids):
                tokens[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            hidden = model(input_ids=tokens.to(device), attention_mask=mask.to(device),
                           output_hidden_states=True).hidden_states[-1].float().cpu()  # [B, T, D]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * weights).sum(1) / weights.sum(1))
    finally:
        model.train(was_training)
    empty = torch.tensor([not tokenizer.encode(t, add_special_tokens=False) for t in texts])
    return unit_rows(torch.cat(out).to(torch.float64)).masked_fill(empty.unsqueeze(-1), 0.0)


# -- the joint objective ----------------------------------------------------------------------------


def quality_term(masks: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """masks [M, N] (0/1), quality [N] -> mean quality of each selected set [M] (0 for an empty set)."""
    m = masks.to(quality.dtype)
    return (m @ quality) / m.sum(-1).clamp(min=1.0)


def facility_diversity(masks: torch.Tensor, sims: torch.Tensor, *, chunk: int = 1 << 22) -> torch.Tensor:
    """masks [M, N], sims [N, N] (cosine) -> (1/N) sum_i max_{j in m} max(0, s_ij) [M]; empty set 0.
    Masks are taken in chunks of about `chunk` / N^2 so memory stays O(chunk)."""
    n = sims.shape[0]
    s = sims.clamp(min=0.0)
    out = []
    step = max(1, chunk // max(1, n * n))
    for start in range(0, masks.shape[0], step):
        m = masks[start:start + step].bool()
        best = s.unsqueeze(0).masked_fill(~m.unsqueeze(1), -1.0).amax(-1)  # [m, N]: best cover of each i
        out.append(torch.where(m.any(-1, keepdim=True), best, torch.zeros_like(best)).mean(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=sims.dtype)


def pairwise_diversity(masks: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
    """masks [M, N], sims [N, N] -> mean over ordered pairs i != j in m of (1 - s_ij) [M]; < 2 items 0.

    sum_{i != j} m_i m_j (1 - s_ij) = (n^2 - m^T S m) - sum_i m_i (1 - s_ii), over n (n - 1) pairs."""
    m = masks.to(sims.dtype)
    n = m.sum(-1)
    total = n * n - ((m @ sims) * m).sum(-1)
    off = total - (m * (1.0 - sims.diagonal())).sum(-1)
    pairs = n * (n - 1)
    return torch.where(pairs > 0, off / pairs.clamp(min=1.0), torch.zeros_like(n))


def disf_diversity(masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """masks [M, N], embeddings [N, D] -> 1 - sum_{a != b} C_ab^2 / (D' (D' - 1)) [M], where C [D, D] is
    the correlation of the selected rows (columns centred and divided by sqrt(1e-8 + unbiased var),
    C = Z^T Z / (n - 1), as DiSF's cal_corre) and D' = trace C; computed from the n x n Gram matrix
    (||Z^T Z||_F = ||Z Z^T||_F). Fewer than 2 rows, or D' <= 1: 0."""
    out = torch.zeros(masks.shape[0], dtype=embeddings.dtype)
    for r in range(masks.shape[0]):
        x = embeddings[masks[r].bool()]
        n = x.shape[0]
        if n < 2:
            continue
        z = x - x.mean(0, keepdim=True)
        z = z / torch.sqrt(_DISF_EPS + z.pow(2).sum(0, keepdim=True) / (n - 1))
        fro2 = (z @ z.T).pow(2).sum() / (n - 1) ** 2
        diag = z.pow(2).sum(0) / (n - 1)
        dims = float(diag.sum())
        if dims > 1.0:
            out[r] = 1.0 - (fro2 - diag.pow(2).sum()) / (dims * (dims - 1.0))
    return out


def joint_objective(masks: torch.Tensor, quality: torch.Tensor, embeddings: torch.Tensor, *, lam: float = 1.0,
                    diversity: str = "facility", sims: torch.Tensor | None = None) -> torch.Tensor:
    """J [M] = quality_term + lam * diversity of masks [M, N]; quality [N]; embeddings [N, D] unit rows.
    `sims` [N, N] = embeddings embeddings^T may be passed in to save recomputing it."""
    j = quality_term(masks, quality)
    if lam == 0.0:
        return j
    if diversity == "disf":
        return j + lam * disf_diversity(masks, embeddings)
    s = embeddings @ embeddings.T if sims is None else sims
    div = facility_diversity(masks, s) if diversity == "facility" else pairwise_diversity(masks, s)
    return j + lam * div


def joint_objective_loop(selected: Sequence[int], quality: Sequence[float], embeddings: Sequence[Sequence[float]],
                         *, lam: float = 1.0, diversity: str = "facility") -> float:
    """Readable reference for `joint_objective` on one set of ids (plain Python)."""
    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    chosen = list(selected)
    q = sum(quality[i] for i in chosen) / len(chosen) if chosen else 0.0
    if diversity == "facility":
        div = 0.0 if not chosen else \
            sum(max(max(0.0, dot(e, embeddings[j])) for j in chosen) for e in embeddings) / len(embeddings)
    elif diversity == "pairwise":
        pairs = [(i, j) for i in chosen for j in chosen if i != j]
        div = sum(1.0 - dot(embeddings[i], embeddings[j]) for i, j in pairs) / len(pairs) if pairs else 0.0
    else:  # disf
        n, d = len(chosen), len(embeddings[0])
        if n < 2:
            return q
        cols = []
        for a in range(d):
            col = [embeddings[i][a] for i in chosen]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / (n - 1)
            cols.append([(v - mean) / math.sqrt(_DISF_EPS + var) for v in col])
        corr = [[dot(cols[a], cols[b]) / (n - 1) for b in range(d)] for a in range(d)]
        dims = sum(corr[a][a] for a in range(d))
        off = sum(corr[a][b] ** 2 for a in range(d) for b in range(d) if a != b)
        div = 1.0 - off / (dims * (dims - 1.0)) if dims > 1.0 else 0.0
    return q + lam * div


# -- mask sampling and the policy gradient ----------------------------------------------------------


class MaskSample(NamedTuple):
    masks: torch.Tensor  # [M, N] bool
    order: torch.Tensor | None  # [M, k] long: the draw order of a size-k sample (None for bernoulli)


def sample_masks(theta: torch.Tensor, count: int, k: int, sampling: str, generator: torch.Generator) -> MaskSample:
    """`count` masks from the distribution with logits theta [N] (module docstring), from `generator`."""
    u = torch.rand((count, theta.shape[0]), generator=generator, dtype=torch.float64)
    if sampling == "bernoulli":
        return MaskSample(u < torch.sigmoid(theta.detach()).unsqueeze(0), None)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    order = torch.sort(theta.detach().unsqueeze(0) + gumbel, dim=-1, descending=True, stable=True).indices[:, :k]
    masks = torch.zeros((count, theta.shape[0]), dtype=torch.bool)
    masks[torch.arange(count).unsqueeze(1), order] = True
    return MaskSample(masks, order)


def mask_log_prob(theta: torch.Tensor, sample: MaskSample, sampling: str) -> torch.Tensor:
    """log p(m) [M], differentiable in theta [N]. bernoulli: sum_i m_i theta_i - softplus(theta_i);
    size_k: the Plackett-Luce log-probability of the draw order (its score function has the same
    expectation as the set's: J depends on the set only)."""
    if sampling == "bernoulli":
        m = sample.masks.to(theta.dtype)
        return (m * theta - torch.nn.functional.softplus(theta)).sum(-1)
    order = sample.order
    rows = torch.arange(order.shape[0])
    left = torch.ones(sample.masks.shape, dtype=torch.bool)
    total = torch.zeros(order.shape[0], dtype=theta.dtype)
    for t in range(order.shape[1]):
        total = total + theta[order[:, t]] - torch.logsumexp(theta.masked_fill(~left, -math.inf), dim=-1)
        left = left.clone()
        left[rows, order[:, t]] = False
    return total


def policy_gradient(theta: torch.Tensor, sample: MaskSample, objective: torch.Tensor, sampling: str, *,
                    normalize: bool = False) -> torch.Tensor:
    """grad [N] ~ grad_theta E[J]: 1/(M - 1) sum_m (J_m - mean J) grad log p(m) over the M masks of
    `sample` with objective [M] (the leave-one-out baseline: unbiased). normalize: advantages / (std + 1e-8)."""
    count = objective.shape[0]
    if count < 2:
        raise CredoError(f"{WHERE}['masks']: the baseline needs at least 2 masks per iteration, got {count}")
    adv = objective - objective.mean()
    if normalize:
        adv = adv / (adv.std() + 1e-8)
    leaf = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((adv.detach() * mask_log_prob(leaf, sample, sampling)).sum() / (count - 1), leaf)
    return grad


def top_k(theta: torch.Tensor, k: int) -> list[int]:
    """The ids of the k largest entries of theta [N] (ties: the lower id), ascending."""
    return sorted(torch.sort(theta, descending=True, stable=True).indices[:k].tolist())


@dataclass
class MaskResult:
    selected: list[int]  # the k chosen ids, ascending
    theta: torch.Tensor  # [N] the learned logits
    trace: list[float]  # mean J of each iteration's masks
    source: str = "logits"  # "logits": the top-k logits; "sampled": the best size-k mask drawn (keep_best)


def learn_mask(quality: torch.Tensor, embeddings: torch.Tensor, k: int, *, lam: float = 1.0,
               diversity: str = "facility", sampling: str = "size_k", masks: int = 32, iterations: int = 200,
               lr: float = 4.0, normalize: bool = True, keep_best: bool = True, seed: int = 0) -> MaskResult:
    """DATAMASK's mask learning (module docstring): quality [N], embeddings [N, D] unit rows, k <= N.
    Deterministic for a seed (one torch.Generator draws every mask). k = N selects everything.
    keep_best: when a size-k mask drawn during learning scored a higher J than the top-k logits, keep it
    (interchangeable candidates, e.g. duplicates of which one is worth taking, share their logit mass
    so that none of them may reach the top k)."""
    n = quality.shape[0]
    if not 1 <= k <= n:
        raise CredoError(f"{WHERE}: cannot select {k} of {n} candidates")
    q = quality.to(torch.float64)
    e = embeddings.to(torch.float64)
    start = 0.0 if sampling == "size_k" else math.log(k / n) - math.log1p(-k / n) if k < n else 0.0
    theta = torch.full((n,), start, dtype=torch.float64)
    if k == n:
        return MaskResult(list(range(n)), theta, [])
    sims = None if diversity == "disf" else e @ e.T
    generator = torch.Generator().manual_seed(seed * _SALT + 1)
    trace, best, best_j = [], None, -math.inf
    for _ in range(iterations):
        sample = sample_masks(theta, masks, k, sampling, generator)
        objective = joint_objective(sample.masks, q, e, lam=lam, diversity=diversity, sims=sims)
        trace.append(float(objective.mean()))
        exact = torch.where(sample.masks.sum(-1) == k, objective, torch.full_like(objective, -math.inf))
        if float(exact.max()) > best_j:  # (bernoulli masks count only when they hold exactly k ids)
            best_j, best = float(exact.max()), sorted(sample.masks[int(exact.argmax())].nonzero().flatten().tolist())
        theta = theta + lr * policy_gradient(theta, sample, objective, sampling, normalize=normalize)
    chosen = top_k(theta, k)
    mask = torch.zeros((1, n), dtype=torch.bool)
    mask[0, chosen] = True
    if keep_best and best is not None and best_j > float(joint_objective(mask, q, e, lam=lam, diversity=diversity,
                                                                         sims=sims)[0]):
        return MaskResult(best, theta, trace, "sampled")
    return MaskResult(chosen, theta, trace)


def random_subset(n: int, k: int, seed: int) -> list[int]:
    """k distinct ids of 0..n-1 drawn uniformly from a generator seeded from `seed` (the baseline), ascending."""
    generator = torch.Generator().manual_seed(seed * _SALT + 2)
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def subset_scores(selected: Sequence[int], quality: torch.Tensor, embeddings: torch.Tensor, *, lam: float,
                  diversity: str) -> dict[str, float]:
    """{"quality", "diversity", "objective"} of one set of ids."""
    m = torch.zeros((1, quality.shape[0]), dtype=torch.bool)
    m[0, list(selected)] = True
    q = float(quality_term(m, quality.to(torch.float64))[0])
    j = float(joint_objective(m, quality.to(torch.float64), embeddings.to(torch.float64), lam=1.0,
                              diversity=diversity)[0])
    return {"quality": q, "diversity": j - q, "objective": q + lam * (j - q)}


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataMaskParams:
    """rl.data_selection_params for "datamask" (defaults and meaning: module docstring)."""

    ratio: float = 0.25
    quality: str = "learnability"
    embed: str = "policy"
    diversity: str = "facility"
    lam: float = 1.0
    sampling: str = "size_k"
    masks: int = 32
    iterations: int = 200
    lr: float = 4.0
    normalize: bool = True
    keep_best: bool = True
    learn_samples: int = 4
    judge_model: str = "smollm2"
    batch_size: int = 16

    def __post_init__(self):
        def bad(name, why):
            raise CredoError(f"{WHERE}[{name!r}]: {why}, got {getattr(self, name)!r}")

        def number(name, integer=False):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
            if not ok or not math.isfinite(value):
                bad(name, "must be an integer" if integer else "must be a number")
            return value

        if not 0.0 < number("ratio") <= 1.0:
            bad("ratio", "must be in (0, 1] (k = rl.prompt_pool of N = rl.prompt_pool / ratio candidates)")
        if not isinstance(self.quality, str) or not (self.quality in QUALITY_SOURCES[:3] or (
                self.quality.startswith("field:") and self.quality[len("field:"):].strip())):
            bad("quality", f"must be one of {', '.join(QUALITY_SOURCES)}")
        for name, choices in (("embed", EMBEDDINGS), ("diversity", DIVERSITIES), ("sampling", SAMPLINGS)):
            if getattr(self, name) not in choices:
                bad(name, f"must be one of {', '.join(choices)}")
        if number("lam") < 0:
            bad("lam", "must be >= 0")
        if number("masks", integer=True) < 2:
            bad("masks", "must be at least 2 (the baseline is the mean of the other masks)")
        if number("iterations", integer=True) < 0:
            bad("iterations", "must be >= 0")
        if number("lr") <= 0:
            bad("lr", "must be > 0")
        for name in ("normalize", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        for name in ("learn_samples", "batch_size"):
            if number(name, integer=True) < 1:
                bad(name, "must be at least 1")
        if not isinstance(self.judge_model, str) or not self.judge_model.strip():
            bad("judge_model", "must be \"smollm2\", \"policy\" or a model folder")

    @classmethod
    def from_config(cls, params: dict[str, Any]) -> "DataMaskParams":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise CredoError(f"{WHERE}: unknown parameter(s) {', '.join(map(repr, unknown))} for \"datamask\"; "
                             f"valid: {', '.join(valid)}")
        return cls(**params)


def candidate_count(k: int, ratio: float) -> int:
    """N = ceil(k / ratio) candidates for a pool of k (round-off guarded: 16 / 0.25 is 64, not 65)."""
    return max(k, math.ceil(k / ratio - 1e-9))


def check_data_selection(cfg) -> None:
    """Before anything loads (train/run.py::validate): the method, its parameters, the pool size, and the
    combinations not built yet."""
    rl = cfg.rl
    if rl.data_selection == "none":
        if rl.data_selection_params:
            raise CredoError(f"{WHERE} is set but rl.data_selection is \"none\"")
        return
    if rl.data_selection != "datamask":
        raise CredoError(f"unknown rl.data_selection {rl.data_selection!r}; valid: none, datamask")
    DataMaskParams.from_config(rl.data_selection_params)
    if rl.prompt_pool <= 0:
        raise CredoError("rl.data_selection \"datamask\" selects the training pool: it keeps rl.prompt_pool prompts "
                         "of rl.prompt_pool / ratio candidates, so set rl.prompt_pool > 0 (e.g. 64)")
    if rl.curriculum != "none":
        raise CredoError("rl.data_selection with rl.curriculum is not built yet (the curriculum draws its own "
                         "per-level prompt blocks); use one of them")


# -- the trainer's binding --------------------------------------------------------------------------


def _fingerprint(examples: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.prompt.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _pass_rates(ctx, examples: Sequence[Any], samples: int, seed: int, batch: int) -> torch.Tensor:
    """p [N]: the fraction of `samples` completions per prompt the task counts correct, sampled with the
    run's engine and sampling (seeds apart from the RL steps'); a prompt too long for the context gets 0."""
    from credo.train.evaluate import encode_prompts, generate_groups, too_long
    from credo.train.rl import score_groups

    rates = torch.zeros(len(examples), dtype=torch.float64)
    for c, start in enumerate(range(0, len(examples), batch)):
        chunk = list(examples[start:start + batch])
        prompts = encode_prompts(ctx.tokenizer, ctx.task, chunk)
        drop = set(too_long(prompts, ctx.max_prompt_tokens))
        keep = [i for i in range(len(chunk)) if i not in drop]
        if not keep:
            continue
        groups = generate_groups(ctx.engine, ctx.tokenizer, ctx.task, [chunk[i] for i in keep],
                                 [prompts[i] for i in keep], samples, ctx.sampling, seed * _SALT + 3 + c,
                                 ctx.max_prompt_tokens)
        _, scores, group_ids, _ = score_groups(ctx.task, groups, [chunk[i] for i in keep], ctx.error_reward,
                                               ctx.verifier)
        for score, g in zip(scores, group_ids):
            rates[start + keep[g]] += float(bool(score.correct))
        for g, group in enumerate(groups):
            rates[start + keep[g]] /= max(1, len(group))
    return rates


def candidate_quality(params: DataMaskParams, candidates: Sequence[Any], ctx, model, tokenizer, seed: int,
                      device=None) -> torch.Tensor:
    """q [N] in [0, 1] from the configured source (module docstring)."""
    texts = [ex.prompt for ex in candidates]
    if params.quality == "length":
        return length_quality(texts)
    if params.quality.startswith("field:"):
        return field_quality([ex.meta for ex in candidates], params.quality[len("field:"):].strip())
    if params.quality == "learnability":
        return learnability_quality(_pass_rates(ctx, candidates, params.learn_samples, seed, params.batch_size))
    from credo.judges.llm import LLMJudge

    if params.judge_model == "policy":
        judge_model, judge_tokenizer = model, tokenizer
    else:
        from credo.models import load_policy

        policy = load_policy(params.judge_model)
        judge_model = policy.model if device is None else policy.model.to(device)
        judge_tokenizer = policy.tokenizer
    was_training = judge_model.training
    try:
        judge = LLMJudge(judge_model, judge_tokenizer, template="wellposed", batch_size=params.batch_size)
        return torch.tensor(judge.yes_probability("wellposed", [{"prompt": t} for t in texts]), dtype=torch.float64)
    finally:
        judge_model.train(was_training)


def bind_data_selection(run, ctx, model) -> list:
    """The run's prompt list under rl.data_selection "datamask": draw N candidates, score and select k of
    them, log once, write `data_selection.json`; or, resuming from an RL checkpoint, the pool it recorded
    (nothing is recomputed). Sets `run.data_selection` (saved into every RL checkpoint's state.json).
    `model` is the plain policy module (the engine's weights)."""
    from credo.dist.comm import broadcast_object

    cfg, rl = run.cfg, run.cfg.rl
    params = DataMaskParams.from_config(rl.data_selection_params)
    k, n = rl.prompt_pool, candidate_count(rl.prompt_pool, params.ratio)
    try:
        candidates = run.task.examples("train", n, seed=cfg.run.seed)
    except CredoError as exc:
        raise CredoError(f"rl.data_selection: N = ceil(rl.prompt_pool / ratio) = {n} candidates: {exc}") from None
    fingerprint = _fingerprint(candidates)
    resumed = run.resumed
    if resumed is not None and resumed.state.get("stage") == "rl":
        state = resumed.state.get("data_selection")
        if state is None:
            raise CredoError(f"checkpoint {resumed.folder} has no state for rl.data_selection")
        if state.get("n_candidates") != n or state.get("fingerprint") != fingerprint:
            raise CredoError(f"checkpoint {resumed.folder}: rl.data_selection chose from other candidates "
                             f"({state.get('n_candidates')} with fingerprint {state.get('fingerprint')}, now {n} "
                             f"with {fingerprint}); the task's training prompts changed since the run started")
        run.data_selection = state
        run.summary["data_selection"] = state["metrics"]
        print(f"credo: data selection restored from {resumed.folder.name} ({k} of {n} candidates)", flush=True)
        return [candidates[i] for i in state["selected"]]
    started = time.perf_counter()
    device = next(model.parameters()).device
    quality = candidate_quality(params, candidates, ctx, model, run.tokenizer, cfg.run.seed, device)
    texts = [ex.prompt for ex in candidates]
    embeddings = tfidf_embeddings(texts) if params.embed == "tfidf" else \
        policy_embeddings(model, run.tokenizer, texts, batch_size=params.batch_size)
    result = learn_mask(quality, embeddings, k, lam=params.lam, diversity=params.diversity,
                        sampling=params.sampling, masks=params.masks, iterations=params.iterations, lr=params.lr,
                        normalize=params.normalize, keep_best=params.keep_best, seed=cfg.run.seed)
    seconds = time.perf_counter() - started
    scores = {name: subset_scores(ids, quality, embeddings, lam=params.lam, diversity=params.diversity)
              for name, ids in (("selected", result.selected), ("random", random_subset(n, k, cfg.run.seed)),
                                ("top", top_k(quality, k)))}
    metrics = {f"{name}_{key}": value for name, s in scores.items() for key, value in s.items()}
    metrics.update({"n_candidates": n, "k": k, "data_selection_seconds": seconds})
    state = {"method": "datamask", "params": dataclasses.asdict(params), "n_candidates": n, "k": k,
             "fingerprint": fingerprint, "selected": result.selected,
             "quality": [float(quality[i]) for i in result.selected],
             "logits": [float(result.theta[i]) for i in result.selected], "metrics": metrics}
    state = broadcast_object(run.world, state)  # every rank trains on rank 0's pool
    run.data_selection = state
    run.summary["data_selection"] = state["metrics"]
    run.timings["data_selection"] = seconds  # (summary.json timings_s)
    if run.world.is_main:
        record = dict(state, candidate_quality=[float(x) for x in quality], trace=result.trace)
        (run.run_dir / "data_selection.json").write_text(json.dumps(record, indent=2))
        run.writer.write({"phase": "data_selection", "step": 0, **state["metrics"]})
        m = state["metrics"]
        print(f"credo: data selection (datamask): {k} of {n} candidates in {seconds:.1f} s; quality "
              f"{m['selected_quality']:.3f} (random {m['random_quality']:.3f}), diversity "
              f"{m['selected_diversity']:.3f} "
              f"(random {m['random_diversity']:.3f}), objective {m['selected_objective']:.3f} "
              f"(random {m['random_objective']:.3f}, quality top-k {m['top_objective']:.3f})", flush=True)
    return [candidates[i] for i in state["selected"]]


CATALOG = [
    Entry("datamask", "pick the RL prompt pool (k of k / ratio candidates) by policy-gradient mask learning of "
          "mean quality + lam x diversity (facility location, pairwise distance or DiSF decorrelation)",
          "Joint Selection for Large-Scale Pre-Training Data via Policy Gradient-based Mask Learning "
          "(arXiv 2512.24265)", "reconstructed", "rl.prompt_pool > 0; quality: learnability, length, judge or a "
          "meta field"),
]
