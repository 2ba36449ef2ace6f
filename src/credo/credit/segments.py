"""Segment- and tree-level credit without a critic: SPO-chain, SPO-tree and TEMPO.

    spo_chain  cut each response before low-probability tokens, V at the cuts by Monte Carlo probes,
               segment advantage = difference of V across the segment
    spo_tree   a tree of segments shared by several completions; edge advantage = V(child) - V(parent)
    tempo      a token trie over the group's responses; a TD term at branch tokens added to GRPO's A

The SPO tree is a small explicit structure (`TreeNode` list) that the caller passes in
`extras["tree"]`, or that `tree_from_prefixes` derives from the group's rows when they share
token prefixes cut into segments of fixed length M (what a tree sampler with fixed segment length
produces once its paths are laid out as rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.providers import StepContext, provides_extras
from credo.credit.gae import _whiten_loop, masked_whiten
from credo.credit.outcome import grpo_advantages, grpo_advantages_loop

PROB_THRESHOLD = 0.9  # SPO: hard-coded in the official code (cutpoints below, probability mask above)


def _loss_positions(loss_mask: torch.Tensor) -> list[list[int]]:
    """Per row, the positions of its loss tokens in order (the response as the estimator sees it)."""
    return [torch.nonzero(row, as_tuple=False).flatten().tolist() for row in loss_mask.bool()]


# -- SPO-chain -------------------------------------------------------------------------------------


@CREDIT.register("spo_chain")
@token_level(needs=("logprobs", "probe"))
def spo_chain(
    inputs: CreditInputs,
    *,
    cutpoint_interval: int = 5,
    prob_threshold: float = PROB_THRESHOLD,
    whiten: bool = True,
    whiten_eps: float = 1e-8,
) -> torch.Tensor:
    """SPO-chain: segment advantages from Monte Carlo values at low-probability cutpoints.

    inputs.logprobs [B, T] (behaviour policy), inputs.rewards [B], inputs.probe(b, t) -> [B, T] float32.
    Over the loss tokens j of a row, p_j = exp(logprobs_j):
      candidates = { j : p_j < prob_threshold };  cuts = candidates[::cutpoint_interval]
      a cut before token j splits the response; V(cut) = probe(b, t_j), the MC value of the prefix
      tokens[b, :t_j] (the cut before the first token is the bare prompt, V(s0)); V(end) = R_b
      tokens from one cut up to the next get A = V(next cut, or end) - V(cut)
      tokens before the first cut get A = 0 (no V(s0) baseline unless the first token is itself a cut)
      A_j = 0 where p_j > prob_threshold (probability mask)
    whiten=True: A <- (A - mean) / sqrt(var + eps) over the loss tokens with p < prob_threshold of the
    whole batch (the trainer's masked_whiten; unbiased var); every other token gets 0.
    Defaults: cutpoint_interval = 5 (the "int5" config), prob_threshold = 0.9 (hard-coded upstream),
    whiten = True (the SPO trainer whitens), whiten_eps = 1e-8. The probe's sample count (N = 9 for
    Rho-1.1B GSM8K, 4 for long CoT) and the unfinished-continuation score (0) belong to the probe.
    Degenerate: no cutpoints (all-confident response, or an empty one) -> all 0; a single cut at the
    first token -> A = R - V(s0) on every token that is not masked; the probe is called once per cut.
    Needs: logprobs, probe (MC continuations from mid-sequence prefixes). The trainer should also drop
    tokens with p >= 0.9 from the loss mask (the official trainer ANDs it with p < 0.9).
    Paper: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large
    Language Models" (arXiv 2505.23564). Status: confirmed (AIFrameResearch/SPO
    `math_episode_generator_with_mc_advantages.py::_compute_token_advantages`).
    Loop reference: `spo_chain_loop`.
    """
    inputs.require("logprobs", "probe", method="spo_chain")
    if cutpoint_interval < 1:
        raise ValueError(f"spo_chain: cutpoint_interval must be >= 1, got {cutpoint_interval}")
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    p = torch.exp(inputs.logprobs.to(torch.float64))
    candidate = mask & (p < prob_threshold)
    rank = torch.cumsum(candidate.to(torch.long), dim=1) - 1
    cut = candidate & (rank % cutpoint_interval == 0)
    seg = torch.cumsum(cut.to(torch.long), dim=1)  # segment of each token: 0 = before the first cut
    n_cuts = cut.sum(dim=1)
    k = int(n_cuts.max()) if B else 0
    # cut_values[b, s] = V at cut s (s = 1..n_b), then R_b at s = n_b + 1 (the end of the response)
    cut_values = torch.zeros(B, k + 2, dtype=torch.float64)
    for b, t in cut.nonzero(as_tuple=False).tolist():  # one MC probe per cut (the costly part)
        cut_values[b, seg[b, t]] = float(inputs.probe(b, t))
    cut_values[torch.arange(B), n_cuts + 1] = inputs.rewards.to(torch.float64)
    start = torch.gather(cut_values, 1, seg)
    end = torch.gather(cut_values, 1, seg + 1)
    adv = torch.where(seg > 0, end - start, torch.zeros_like(start))
    adv = torch.where(mask & ~(p > prob_threshold), adv, torch.zeros_like(adv))
    if whiten:
        adv = masked_whiten(adv, mask & (p < prob_threshold), eps=whiten_eps)
    return adv.to(torch.float32)


def spo_chain_loop(
    inputs: CreditInputs,
    *,
    cutpoint_interval: int = 5,
    prob_threshold: float = PROB_THRESHOLD,
    whiten: bool = True,
    whiten_eps: float = 1e-8,
) -> torch.Tensor:
    """Readable reference for `spo_chain`, shaped like the official `_compute_token_advantages`."""
    B, T = inputs.loss_mask.shape
    out = [[0.0] * T for _ in range(B)]
    keep_for_whitening = [[False] * T for _ in range(B)]
    for b, pos in enumerate(_loss_positions(inputs.loss_mask)):
        probs = [math.exp(float(inputs.logprobs[b, t])) for t in pos]
        for j, pj in enumerate(probs):
            keep_for_whitening[b][pos[j]] = pj < prob_threshold
        # cutpoint c = j - 1: the position just before a low-probability token (-1 = the prompt)
        cutpoints = [j - 1 for j, pj in enumerate(probs) if pj < prob_threshold][::cutpoint_interval]
        if not pos or not cutpoints:
            continue
        values = [None] * len(pos)
        values[-1] = float(inputs.rewards[b])
        base = None
        for c in cutpoints:
            v = float(inputs.probe(b, pos[c + 1]))
            if c == -1:
                base = v
            else:
                values[c] = v
        adv = [None] * len(pos)
        for i, v in enumerate(values):
            if v is not None:
                adv[i] = 0.0 if base is None else v - base
                base = v
        for i in range(len(pos) - 1, -1, -1):  # backward fill: a token takes its segment end's ΔV
            if adv[i] is None:
                adv[i] = adv[i + 1]
        for i, t in enumerate(pos):
            out[b][t] = 0.0 if probs[i] > prob_threshold else adv[i]
    if whiten:
        flat = [out[b][t] for b in range(B) for t in range(T) if keep_for_whitening[b][t]]
        it = iter(_whiten_loop(flat, whiten_eps))
        out = [[next(it) if keep_for_whitening[b][t] else 0.0 for t in range(T)] for b in range(B)]
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- SPO-tree --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeNode:
    """One node of an SPO tree: a segment of tokens continuing its parent's text.

    parent: index of the parent node in the tree list; -1 for a root (the prompt; one per group).
    row, start, end: the segment's tokens are tokens[row, start:end] ([start, end) absolute positions,
        the shift convention of `batch.py`); a root has no tokens (row -1, start = end). A segment
        shared by several completions sits in one row; its copies in other rows get 0 (the same
        prefix gives the same gradient, so counting each edge once matches the tree sampler).
    reward: a leaf's outcome reward (a finished completion); None for a node with children.
    A tree is a list of nodes in topological order (parent index < own index); several roots make a
    forest (one tree per group).
    """

    parent: int
    row: int = -1
    start: int = 0
    end: int = 0
    reward: float | None = None


def _check_tree(tree: list[TreeNode], B: int, T: int) -> list[list[int]]:
    """Validate the tree against a [B, T] batch; return the children of every node."""
    children: list[list[int]] = [[] for _ in tree]
    covered = torch.zeros(B, T, dtype=torch.long)
    for i, node in enumerate(tree):
        if not -1 <= node.parent < i:
            raise ValueError(f"spo_tree: node {i} has parent {node.parent}; parents must come first (-1 = root)")
        if node.parent >= 0:
            children[node.parent].append(i)
        if not 0 <= node.start <= node.end <= T:
            raise ValueError(f"spo_tree: node {i} span [{node.start}, {node.end}) is outside [0, {T}]")
        if node.start < node.end:
            if node.parent < 0:
                raise ValueError(f"spo_tree: root node {i} must hold no tokens (it is the prompt)")
            if not 0 <= node.row < B:
                raise ValueError(f"spo_tree: node {i} row {node.row} is outside the batch of {B} rows")
            covered[node.row, node.start:node.end] += 1
    if bool((covered > 1).any()):
        b, t = (covered > 1).nonzero(as_tuple=False)[0].tolist()
        raise ValueError(f"spo_tree: token ({b}, {t}) belongs to two tree nodes; spans must not overlap")
    for i, node in enumerate(tree):
        if node.parent >= 0 and not children[i] and (node.reward is None or not math.isfinite(node.reward)):
            raise ValueError(f"spo_tree: leaf node {i} needs a finite reward, got {node.reward}")
    return children


def tree_from_prefixes(
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    segment_len: int = 30,
    max_depth: int | None = None,
) -> list[TreeNode]:
    """Build the SPO tree of each group from its rows: shared token prefixes become shared nodes.

    tokens [B, T], loss_mask [B, T], rewards [B], group_ids [B] -> list[TreeNode] (one root per group).
    Each row's loss tokens are cut into segments of segment_len tokens (M); with max_depth = D the
    D-th segment takes the rest (the tree sampler's unlimited last depth). A non-final segment is
    an internal node, shared by all rows of the group whose tokens agree up to its end (it sits in
    the lowest-index such row); each row's final segment is its own leaf with the row's reward (an
    empty response is a leaf with no tokens). Rows that never share a prefix give a root whose
    children are single chains: only the first segment then gets a non-zero advantage.
    """
    if segment_len < 1 or (max_depth is not None and max_depth < 1):
        raise ValueError(f"tree_from_prefixes: need segment_len >= 1 and max_depth >= 1 or None, "
                         f"got {segment_len}, {max_depth}")
    tree: list[TreeNode] = []
    roots: dict[int, int] = {}
    internal: dict[tuple, int] = {}
    for b, pos in enumerate(_loss_positions(loss_mask)):
        g = int(group_ids[b])
        if g not in roots:
            roots[g] = len(tree)
            tree.append(TreeNode(parent=-1))
        parent = roots[g]
        cuts = list(range(0, len(pos), segment_len)) + [len(pos)]
        if max_depth is not None:
            cuts = cuts[:max_depth] + [len(pos)]
        cuts = sorted(set(cuts)) if pos else [0, 0]
        ids = [int(x) for x in tokens[b, pos].tolist()] if pos else []
        for s, e in zip(cuts[:-2], cuts[1:-1]):  # internal segments
            key = (g, tuple(ids[:e]))
            if key not in internal:
                internal[key] = len(tree)
                tree.append(TreeNode(parent=parent, row=b, start=pos[s], end=pos[e - 1] + 1))
            parent = internal[key]
        s, e = cuts[-2], cuts[-1]
        span = (pos[s], pos[e - 1] + 1) if e > s else (0, 0)
        tree.append(TreeNode(parent=parent, row=b, start=span[0], end=span[1], reward=float(rewards[b])))
    return tree


def _tree_of(inputs: CreditInputs, segment_len: int, max_depth: int | None) -> list[TreeNode]:
    tree = inputs.extras.get("tree")
    if tree is not None:
        return list(tree)
    inputs.require("tokens", method="spo_tree (no extras['tree'] given: built from token prefixes)")
    return tree_from_prefixes(inputs.tokens, inputs.loss_mask, inputs.rewards, inputs.group_ids,
                              segment_len=segment_len, max_depth=max_depth)


@CREDIT.register("spo_tree")
@token_level(needs=("extras",))
def spo_tree(
    inputs: CreditInputs,
    *,
    segment_len: int = 30,
    max_depth: int | None = None,
    adv_method: str = "rloo",
    eps: float = 1e-8,
) -> torch.Tensor:
    """SPO-tree: every edge of a segment tree gets A = V(child) - V(parent), on the child's tokens.

    inputs.extras["tree"]: list[TreeNode] (see `TreeNode`); when absent the tree is built by
    `tree_from_prefixes(tokens, loss_mask, rewards, group_ids, segment_len, max_depth)`.
    -> advantages [B, T] float32, 0 off the loss mask and on tokens of no node.
      V(leaf) = its reward;  V(node) = mean of V(children);  std(node) = population std of V(children)
      A_edge = V(child) - V(parent)                               adv_method "rloo" (default)
             = (V(child) - V(parent)) / (std(parent) + eps)       adv_method "grpo"
    Siblings that all have the same V give their parent exactly that V, so their edges get A = 0
    (upstream drops such edges; here they are 0 and the trainer skips all-zero rows).
    Defaults: adv_method "rloo", eps 1e-8 (official); segment_len M = 30 (the smallest published M,
    Rho-1.1B GSM8K; 100 / 600 / 1333 for larger models); max_depth None (cut every M tokens; the
    official trees have depth 3). The optional PAV bonus is not implemented.
    Degenerate: a root alone (no edges) or a group of one (its leaf equals its root) -> 0; a node
    with an empty span adds nothing; an all-equal group -> 0.
    Needs: extras["tree"] (a tree sampler), or tokens with shared prefixes of M tokens, rewards, groups.
    Paper: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large
    Language Models" (arXiv 2505.23564). Status: confirmed (AIFrameResearch/SPO
    `tree_episode_generator.py::extract_edges_from_tree`, `hybrid_inference_strategy.py::_construct_tree`).
    Loop reference: `spo_tree_loop`.
    """
    if adv_method not in ("rloo", "grpo"):
        raise ValueError(f"spo_tree: adv_method must be 'rloo' or 'grpo', got {adv_method!r}")
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    tree = _tree_of(inputs, segment_len, max_depth)
    _check_tree(tree, B, T)
    n = len(tree)
    if n == 0:
        return torch.zeros(B, T, dtype=torch.float32)
    parent = torch.tensor([node.parent for node in tree], dtype=torch.long)
    reward = torch.tensor([math.nan if node.reward is None else node.reward for node in tree], dtype=torch.float64)
    has_parent = parent[parent >= 0]
    n_children = torch.zeros(n, dtype=torch.long).index_add_(0, has_parent, torch.ones_like(has_parent))
    depth = torch.zeros(n, dtype=torch.long)
    for _ in range(n):  # parents come first, so depth settles in at most (tree height) passes
        new = torch.where(parent >= 0, depth[parent.clamp(min=0)] + 1, torch.zeros_like(depth))
        if torch.equal(new, depth):
            break
        depth = new
    value = torch.where(n_children == 0, torch.nan_to_num(reward, nan=0.0), torch.zeros(n, dtype=torch.float64))
    std = torch.zeros(n, dtype=torch.float64)
    for d in range(int(depth.max()), 0, -1):  # deepest level first: children are final before parents
        kids = (depth == d).nonzero(as_tuple=False).flatten()
        par = parent[kids]
        cnt = n_children[par].to(torch.float64)
        mean = torch.zeros(n, dtype=torch.float64).index_add_(0, par, value[kids] / cnt)
        var = torch.zeros(n, dtype=torch.float64).index_add_(0, par, (value[kids] - mean[par]) ** 2 / cnt)
        high = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, par, value[kids], "amax")
        low = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, par, value[kids], "amin")
        at = torch.unique(par)
        flat = high[at] == low[at]
        value[at] = torch.where(flat, high[at], mean[at])  # all-equal children: exactly their value
        std[at] = torch.where(flat, torch.zeros_like(mean[at]), var[at].sqrt())
    edges = (parent >= 0).nonzero(as_tuple=False).flatten()
    adv_edge = value[edges] - value[parent[edges]]
    if adv_method == "grpo":
        adv_edge = adv_edge / (std[parent[edges]] + eps)
    rows = torch.tensor([tree[i].row for i in edges.tolist()], dtype=torch.long)
    start = torch.tensor([tree[i].start for i in edges.tolist()], dtype=torch.long)
    end = torch.tensor([tree[i].end for i in edges.tolist()], dtype=torch.long)
    has_tokens = end > start
    positions = torch.arange(T)
    span = (positions[None, :] >= start[has_tokens, None]) & (positions[None, :] < end[has_tokens, None])
    adv = torch.zeros(B, T, dtype=torch.float64).index_add_(
        0, rows[has_tokens], span.to(torch.float64) * adv_edge[has_tokens, None])
    return torch.where(mask, adv, torch.zeros_like(adv)).to(torch.float32)


def spo_tree_loop(
    inputs: CreditInputs,
    *,
    segment_len: int = 30,
    max_depth: int | None = None,
    adv_method: str = "rloo",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Readable reference for `spo_tree`: values by recursion, then one pass over the edges."""
    B, T = inputs.loss_mask.shape
    tree = _tree_of(inputs, segment_len, max_depth)
    children = _check_tree(tree, B, T)

    def value_and_std(i: int) -> tuple[float, float]:
        if not children[i]:
            return (tree[i].reward if tree[i].reward is not None else 0.0), 0.0
        vs = [value_and_std(c)[0] for c in children[i]]
        if max(vs) == min(vs):
            return vs[0], 0.0
        mean = sum(vs) / len(vs)
        return mean, (sum((v - mean) ** 2 for v in vs) / len(vs)) ** 0.5

    out = [[0.0] * T for _ in range(B)]
    for i, node in enumerate(tree):
        if node.parent < 0:
            continue
        v_parent, std_parent = value_and_std(node.parent)
        a = value_and_std(i)[0] - v_parent
        if adv_method == "grpo":
            a = a / (std_parent + eps)
        for t in range(node.start, node.end):
            if bool(inputs.loss_mask[node.row, t]):
                out[node.row][t] = a
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- TEMPO -----------------------------------------------------------------------------------------


@CREDIT.register("tempo")
@token_level(needs=())
def tempo(
    inputs: CreditInputs,
    *,
    lam: float = 1.0,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """TEMPO / Prefix-to-Tree: GRPO's advantage plus a TD term at the branch tokens of the group's trie.

    inputs.tokens [B, T], inputs.rewards [B], inputs.group_ids [B] -> advantages [B, T] float32.
    The loss tokens of a group's rows form a prefix trie; s_t = a row's prefix before its token t.
      R~_i   = GRPO advantage of row i (group mean / std normalised reward, `grpo_advantages`)
      V(s)   = mean of R~_i over the rows i whose response passes through s (starts with prefix s)
      A_i,t  = R~_i + lam * 1[branch(s_t)] * (V(s_{t+1}) - V(s_t))
    branch(s): the rows through s do not all continue with the same token; a row that ends at s
    counts as one more continuation (so V changes across s_t -> s_{t+1} only at branch nodes).
    Off branch nodes the TD term is 0 and A is exactly GRPO's (the paper's stated property).
    Defaults: lam = 1.0 (mixing weight; unconfirmed), eps = 1e-6 and scale_by_std (GRPO's).
    Degenerate: a group of one has no branch (A = GRPO's, i.e. its raw reward, verl convention); a
    zero-variance group gives 0; an empty response passes through the root only and adds nothing.
    Tokens are compared by id, not text.
    Needs: tokens (always filled by the trainer), groups. No critic, judge or probe.
    Paper: "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs" (arXiv 2509.18314).
    Status: reconstructed (only "V(s) = mean outcome through s; TD term zero off branch tokens" is
    confirmed; the additive form with weight lam and the termination-as-branch rule are assumptions).
    Loop reference: `tempo_loop`.
    """
    inputs.require("tokens", method="tempo")
    mask = inputs.loss_mask.bool()
    B, T = mask.shape
    a_grpo = grpo_advantages(inputs.rewards, inputs.group_ids, eps=eps, scale_by_std=scale_by_std).to(torch.float64)
    lengths = mask.sum(dim=1)
    L = int(lengths.max()) if B else 0
    if L == 0:
        return torch.zeros(B, T, dtype=torch.float32)
    compact_index = torch.cumsum(mask.to(torch.long), dim=1) - 1  # k-th loss token of its row
    rows = torch.arange(B)[:, None].expand(B, T)
    tok = torch.full((B, L), -1, dtype=torch.long)
    tok[rows[mask], compact_index[mask]] = inputs.tokens[mask].to(torch.long)
    # node[b, k] = trie node of row b's prefix of length k (the root of its group at k = 0)
    node = torch.full((B, L + 1), -1, dtype=torch.long)
    node[:, 0] = torch.unique(inputs.group_ids, return_inverse=True)[1]
    n_nodes = int(node[:, 0].max()) + 1
    for k in range(L):
        active = lengths > k
        pairs = torch.stack([node[active, k], tok[active, k]], dim=1)
        uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        node[active, k + 1] = n_nodes + inverse
        n_nodes += uniq.shape[0]
    on_path = torch.arange(L + 1)[None, :] <= lengths[:, None]  # prefixes 0..L_b of every row
    ids = node[on_path]
    weight = a_grpo[:, None].expand(B, L + 1)[on_path]
    total = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, ids, weight)
    count = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, ids, torch.ones_like(weight))
    value = total / count.clamp(min=1.0)
    # continuations of each node: the next prefix node, or "ends here" (-1), counted once each
    step = torch.arange(L)[None, :] < lengths[:, None]
    nxt = torch.cat([node[:, 1:][step], torch.full((B,), -1, dtype=torch.long)])
    cur = torch.cat([node[:, :-1][step], node[torch.arange(B), lengths]])
    distinct = torch.unique(torch.stack([cur, nxt], dim=1), dim=0)
    n_cont = torch.zeros(n_nodes, dtype=torch.long).index_add_(0, distinct[:, 0], torch.ones_like(distinct[:, 0]))
    here, there = node[:, :-1].clamp(min=0), node[:, 1:].clamp(min=0)
    td = torch.where(n_cont[here] >= 2, value[there] - value[here], torch.zeros(B, L, dtype=torch.float64))
    a_compact = a_grpo[:, None] + lam * td
    adv = torch.zeros(B, T, dtype=torch.float64)
    adv[mask] = a_compact[rows[mask], compact_index[mask]]
    return adv.to(torch.float32)


def tempo_loop(inputs: CreditInputs, *, lam: float = 1.0, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """Readable reference for `tempo`: one dict-based trie per group."""
    B, T = inputs.loss_mask.shape
    a_grpo = grpo_advantages_loop(inputs.rewards.tolist(), inputs.group_ids.tolist(), eps=eps,
                                  scale_by_std=scale_by_std)
    # exactly-zero advantages in zero-variance groups, as grpo_advantages guarantees
    for i, g in enumerate(inputs.group_ids.tolist()):
        members = [float(r) for r, gg in zip(inputs.rewards.tolist(), inputs.group_ids.tolist()) if gg == g]
        if len(members) > 1 and max(members) == min(members):
            a_grpo[i] = 0.0
    positions = _loss_positions(inputs.loss_mask)
    responses = [[int(inputs.tokens[b, t]) for t in pos] for b, pos in enumerate(positions)]
    out = [[0.0] * T for _ in range(B)]
    for g in set(inputs.group_ids.tolist()):
        members = [b for b in range(B) if int(inputs.group_ids[b]) == g]
        through: dict[tuple, list[int]] = {}  # prefix -> rows passing through it
        continuations: dict[tuple, set] = {}  # prefix -> next tokens ("end" if a row stops there)
        for b in members:
            y = responses[b]
            for k in range(len(y) + 1):
                through.setdefault(tuple(y[:k]), []).append(b)
                continuations.setdefault(tuple(y[:k]), set()).add(y[k] if k < len(y) else "end")

        def value(prefix: tuple) -> float:
            return sum(a_grpo[b] for b in through[prefix]) / len(through[prefix])

        for b in members:
            y = responses[b]
            for k, t in enumerate(positions[b]):
                here, there = tuple(y[:k]), tuple(y[:k + 1])
                td = value(there) - value(here) if len(continuations[here]) >= 2 else 0.0
                out[b][t] = a_grpo[b] + lam * td
    return torch.tensor(out, dtype=torch.float32).reshape(B, T)


# -- what training hands this estimator (credit/providers.py) ----------------------------------------


def tree_from_meta(loss_mask: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor,
                   metas: Sequence[dict]) -> list[TreeNode]:
    """The tree the tree sampler drew (rollout/samplers.py::TreeSampler), from each row's meta.

    loss_mask [B, T], rewards [B], group_ids [B], metas[b] with "tree_path" (sibling index per depth),
    "tree_segment_len" (M) and "tree_duplicate" -> list[TreeNode]. Row b's depth-d segment is its loss
    tokens [d M, (d + 1) M); the internal node (g, path[:d + 1]) sits in the first row reaching it, each
    row's last segment is its leaf (reward = the row's). Duplicate rows (an early leaf's copies, no
    trainable token) are not in the tree. Unlike `tree_from_prefixes`, two siblings that sampled the same
    tokens stay two nodes, as in the sampled tree."""
    tree: list[TreeNode] = []
    roots: dict[int, int] = {}
    internal: dict[tuple, int] = {}
    for b, pos in enumerate(_loss_positions(loss_mask)):
        meta = metas[b]
        if meta.get("tree_duplicate"):
            continue
        g, path, m = int(group_ids[b]), list(meta["tree_path"]), int(meta["tree_segment_len"])
        if g not in roots:
            roots[g] = len(tree)
            tree.append(TreeNode(parent=-1))
        parent = roots[g]
        for d in range(len(path) - 1):  # the segments before the row's last: shared internal nodes
            key = (g, tuple(path[:d + 1]))
            if key not in internal:
                s, e = d * m, min((d + 1) * m, len(pos))
                internal[key] = len(tree)
                tree.append(TreeNode(parent=parent, row=b, start=pos[s], end=pos[e - 1] + 1) if e > s
                            else TreeNode(parent=parent, row=b, start=0, end=0))
            parent = internal[key]
        s = (len(path) - 1) * m
        span = (pos[s], pos[-1] + 1) if len(pos) > s else (0, 0)
        tree.append(TreeNode(parent=parent, row=b, start=span[0], end=span[1], reward=float(rewards[b])))
    return tree


@provides_extras(spo_tree)
def spo_tree_from_sampler(ctx: StepContext) -> dict:
    """With the tree sampler (rollout.sampler = "tree"): the sampled tree, from the completions' meta.
    Without it: nothing, and the estimator builds the tree from the group's shared token prefixes."""
    metas = [c.meta for c in ctx.completions]
    if not metas or not all("tree_path" in m for m in metas):
        return {}
    b = ctx.batch
    return {"tree": tree_from_meta(b.loss_mask, b.rewards, b.group_ids, metas)}


CATALOG = [
    Entry("spo_chain", "segments cut before low-probability tokens; A = ΔV of MC probes; p > 0.9 masked",
          "Segment Policy Optimization (arXiv 2505.23564)", "confirmed", "logprobs, probe (MC continuations)"),
    Entry("spo_tree", "segment tree over a group; edge A = V(child) - V(parent) (rloo) or / std (grpo)",
          "Segment Policy Optimization (arXiv 2505.23564)", "confirmed",
          "the sampled tree (rollout.sampler tree) or tokens with shared M-token prefixes; groups",
          training="works with rollout.sampler tree; with independent samples groups rarely share M-token prefixes (Dr.GRPO-like)"),
    Entry("tempo", "GRPO advantage + TD term at branch tokens of the group's token trie",
          "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs (arXiv 2509.18314)",
          "reconstructed", "tokens, groups"),
]
