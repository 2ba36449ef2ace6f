"""CreditBench tasks with exactly known credit (credit.md §23, "bifurcation chains").

Two task families, both small enough for exact dynamic programming under a tabular policy
(`policy.TabularPolicy`), so the true value V(s), Q(s, a) and advantage A*(s, a) = Q(s, a) - V(s) of
every sampled token and step are known.

Single-turn chain (`ChainTask`). A prompt token, then L slots; each slot is one policy token whose
value is an option id (option j -> token id 10 + j, ids shared by all slots). Slot kinds:
- decisive: 2-4 options with success factors p(option) (best 1.0, others U(0.05, 0.6));
- filler: 2-4 options that do not affect the outcome; a share `distractor_share` of them are
  "distractors" with near-uniform (high-entropy) initial logits, the rest "formatting" slots with
  peaked (low-entropy) logits;
- repair (recoverable variant): 2 options q = {keep: 0, repair: 1}, paired with the first decisive slot m;
  the pair's factor is max(p_m(a_m), q_r(a_r)): choosing "repair" undoes any mistake at m.
Success probability f(a) = product over units (decisive slots and repair pairs) of their factors; the
reward R ~ Bernoulli(f) (`Sample.expected_reward` keeps f). Since the policy is independent per slot,
V(prefix) = prod_units E_pi[factor | chosen slots of the prefix] in closed form. Filler slots get
A* = 0 exactly. An optional checkpoint token (an environment token, not in the loss mask) after the last
decisive slot shows 91 when every decisive choice so far was the best option, else 90 (it reveals failure).
Steps = slots (step_ids = slot index).

Multi-turn key-value lookup (`KeyValueTask`). A hidden table v over K keys; the question asks for
v^depth(q). Each turn the agent emits two policy tokens: a verb (20 query / 21 answer) and an argument
(10 + key); a query is answered by two environment tokens (30, 40 + v(key)); an answer ends the episode
with R = 1[argument = gold]; after `max_turns` turns without an answer R = 0. The policy is tabular over
the knowledge state (the set of keys looked up so far), so observations repeat exactly across
trajectories (GiGPO anchor states); `counters=True` puts a turn-counter token (60 + turn) at the start
of every turn and into step_keys, which breaks exact matching. Steps = turns.
Exact DP over (knowledge state, turn): V(S, t) = sum_a pi(a | S) Q(S, t, a), Q(query k) = V(S + k, t + 1),
Q(answer x) = 1[x = gold], V(., max_turns) = 0.

Definitions shared by both families (what the benchmark calls ground truth):
- true step score (what a perfect judge says): +1 if the chosen action attains max_a Q(s, a), -1 if it is
  strictly worse, 0 if every action has the same Q (the choice does not matter: filler);
- a step is decisive when max_a Q(s, a) - min_a Q(s, a) > 1e-9, filler otherwise;
- A*_step = Q(s, a) - V(s) = sum of the step's token advantages;
- environment step reward: chain: 0 on every step and R on the last one (sparse, as an env gives it);
  key-value: +0.1 for looking up a not-yet-known key of the question's chain, R on the answer turn;
- information gain (key-value): IG_k = P_ans(gold | S_after) - P_ans(gold | S_before), where
  P_ans(x | S) = pi(argument x | S, verb = answer) is the policy's probability of answering x now;
  on the answer turn S_after is terminal and P_ans(gold | S_after) := R. Chain: NaN (no gold answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from credo.creditbench.policy import TabularPolicy

OPTION_TOKEN = 10  # option j of any slot / key j -> token id 10 + j
PROMPT_TOKEN = 100  # prompt p -> 100 + p
CHECK_FAIL, CHECK_OK = 90, 91
VERB_TOKEN, OBS_TOKEN, VALUE_TOKEN, COUNTER_TOKEN = 20, 30, 40, 60
PAD = 0
TOL = 1e-9


@dataclass
class Sample:
    """A batch of B rollouts (numpy) with its exact ground truth. T positions, K steps.

    tokens [B, T] int, loss_mask [B, T] bool (policy tokens), ctx / opt [B, T] int (policy context and
    option of each policy token, -1 elsewhere), step_ids [B, T] int (-1 off policy tokens),
    rewards [B] float (sampled outcome), expected_reward [B] (E[R | whole trajectory]),
    group_ids [B], prompt_ids [B], true_adv [B, T] (token A*, 0 off the mask), true_value [B, T]
    (V of the state before token t), step_adv / step_truth / step_env_reward / step_info_gain [B, K]
    (NaN past a row's last step), step_decisive [B, K] bool, step_keys[b][k] hashable, n_steps [B],
    q_options [B, T, O]: Q of every option of the token's context (NaN off policy tokens / invalid options;
    for a multi-turn verb token, Q(verb) averages over the policy's argument).
    state: task-specific arrays the probe needs.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    ctx: np.ndarray
    opt: np.ndarray
    step_ids: np.ndarray
    rewards: np.ndarray
    expected_reward: np.ndarray
    group_ids: np.ndarray
    prompt_ids: np.ndarray
    true_adv: np.ndarray
    true_value: np.ndarray
    step_adv: np.ndarray
    step_truth: np.ndarray
    step_env_reward: np.ndarray
    step_info_gain: np.ndarray
    step_decisive: np.ndarray
    step_keys: list[list[Hashable]]
    n_steps: np.ndarray
    q_options: np.ndarray  # [B, T, O] Q(s_t, option) of every option at policy tokens, NaN elsewhere
    state: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])


def _positions(region: str, n_slots: int, n: int) -> list[int]:
    """n slot indices spread evenly over a region of [0, n_slots)."""
    third = n_slots / 3.0
    lo, hi = {"early": (0.0, third), "middle": (third, 2 * third), "late": (2 * third, n_slots),
              "spread": (0.0, n_slots)}[region]
    if n > int(hi) - int(lo):
        raise ValueError(f"{n} decisive slots do not fit in the {region} third of {n_slots} slots")
    width = (hi - lo) / n
    return sorted({min(n_slots - 1, int(lo + width * (i + 0.5))) for i in range(n)})


@dataclass(frozen=True)
class ChainConfig:
    n_slots: int = 12
    n_decisive: int = 3
    position: str = "middle"  # early | middle | late | spread
    recoverable: bool = False
    checkpoint: bool = False
    distractor_share: float = 0.5
    n_prompts: int = 4


class ChainTask:
    """Single-turn bifurcation chain (see the module docstring)."""

    kind = "chain"
    n_options = 4

    def __init__(self, config: ChainConfig, seed: int):
        self.config = c = config
        rng = np.random.default_rng([seed, 1])
        L, P, O = c.n_slots, c.n_prompts, self.n_options
        self.decisive_slots = _positions(c.position, L, c.n_decisive)
        self.kind_of = np.zeros(L, dtype=np.int64)  # 0 filler, 1 decisive, 2 repair
        self.kind_of[self.decisive_slots] = 1
        self.units: list[tuple[int, ...]] = [(m,) for m in self.decisive_slots]
        if c.recoverable:
            m = self.decisive_slots[0]
            free = [s for s in range(m + 1, L) if self.kind_of[s] == 0]
            if not free:
                raise ValueError("recoverable chain: no free slot after the first decisive slot for the repair")
            r = free[-1]
            self.kind_of[r] = 2
            self.units[0] = (m, r)
        self.n_opt = rng.integers(2, O + 1, size=L)
        self.n_opt[self.kind_of == 2] = 2
        valid = np.arange(O)[None, :] < self.n_opt[:, None]  # [L, O]
        self.factor = np.ones((P, L, O))
        for p in range(P):
            for s in range(L):
                if self.kind_of[s] == 1:
                    f = rng.uniform(0.05, 0.6, size=O)
                    f[rng.integers(self.n_opt[s])] = 1.0
                    self.factor[p, s] = np.where(valid[s], f, 0.0)
                elif self.kind_of[s] == 2:
                    f = np.zeros(O)
                    f[rng.integers(2)] = 1.0
                    self.factor[p, s] = f
        filler = np.flatnonzero(self.kind_of == 0)
        distractors = set(rng.permutation(filler)[: int(round(c.distractor_share * len(filler)))].tolist())
        scale = np.array([0.3 if s in distractors else (3.0 if self.kind_of[s] == 0 else 1.0) for s in range(L)])
        self.distractors = sorted(distractors)
        logits = rng.normal(size=(P, L, O)) * scale[None, :, None]
        self._init_logits = logits.reshape(P * L, O)
        self._valid = np.broadcast_to(valid[None], (P, L, O)).reshape(P * L, O).copy()
        # positions: 0 prompt, then slots; the checkpoint token sits right after the last decisive slot
        self.check_after = max(self.decisive_slots) if c.checkpoint else None
        self.pos = np.array([1 + s + (1 if c.checkpoint and s > self.check_after else 0) for s in range(L)])
        self.T = 1 + L + (1 if c.checkpoint else 0)

    # -- exact values ------------------------------------------------------------------------

    def initial_policy(self) -> TabularPolicy:
        return TabularPolicy(self._init_logits.copy(), self._valid.copy())

    def _pi(self, policy: TabularPolicy) -> np.ndarray:
        c = self.config
        return policy.probs().reshape(c.n_prompts, c.n_slots, self.n_options)

    def values(self, pi: np.ndarray, pids: np.ndarray, choices: np.ndarray) -> np.ndarray:
        """V [N] of partial assignments: choices [N, L] with -1 on slots not chosen yet."""
        out = np.ones(len(pids))
        rows = np.arange(len(pids))
        for unit in self.units:
            m = unit[0]
            fm = self.factor[pids, m]  # [N, O]
            am = choices[:, m]
            if len(unit) == 1:
                exp_m = np.sum(pi[pids, m] * fm, axis=1)
                out *= np.where(am >= 0, fm[rows, np.maximum(am, 0)], exp_m)
                continue
            r = unit[1]
            M = np.maximum(fm[:, :, None], self.factor[pids, r][:, None, :])  # [N, O, O]
            pm, pr = pi[pids, m], pi[pids, r]
            ar = choices[:, r]
            row_m = M[rows, np.maximum(am, 0)]  # [N, O] factor given a_m
            col_r = M[rows, :, np.maximum(ar, 0)]  # [N, O] factor given a_r
            both = row_m[rows, np.maximum(ar, 0)]
            only_m = np.sum(row_m * pr, axis=1)
            only_r = np.sum(col_r * pm, axis=1)
            neither = np.einsum("ni,nij,nj->n", pm, M, pr)
            val = np.where(am >= 0, np.where(ar >= 0, both, only_m), np.where(ar >= 0, only_r, neither))
            out *= val
        return out

    def expected_success(self, policy: TabularPolicy) -> float:
        """Exact E[R] under the policy, averaged over prompts."""
        P = self.config.n_prompts
        return float(self.values(self._pi(policy), np.arange(P), -np.ones((P, self.config.n_slots), dtype=np.int64)).mean())

    def best_success(self) -> float:
        return 1.0  # every decisive slot has a factor-1 option

    # -- sampling ----------------------------------------------------------------------------

    def sample(self, policy: TabularPolicy, group_size: int, rng: np.random.Generator) -> Sample:
        c = self.config
        L, P, G = c.n_slots, c.n_prompts, group_size
        B = P * G
        pids = np.repeat(np.arange(P), G)
        ctx = pids[:, None] * L + np.arange(L)[None, :]
        choices = policy.sample(ctx, rng)
        return self.build(policy, pids, choices, rng)

    def sample_tree(self, policy: TabularPolicy, branching: Sequence[int], segment_len: int,
                    rng: np.random.Generator) -> Sample:
        """Groups of G = prod(branching) rows drawn as SPO-tree's tree (rollout/samplers.py::TreeSampler on
        this chain): depth d < D-1 samples slots [d M, (d + 1) M) once per node and copies them to the
        node's rows, the last depth samples the remaining slots per row. The rows of a node are contiguous;
        `state["tree_meta"]` holds each row's path (credit/segments.py::tree_from_meta)."""
        c = self.config
        L, P = c.n_slots, c.n_prompts
        G = int(np.prod(branching))
        pids = np.repeat(np.arange(P), G)
        ctx = pids[:, None] * L + np.arange(L)[None, :]
        choices = np.zeros((P * G, L), dtype=np.int64)
        r = np.arange(P * G) % G
        paths = np.zeros((P * G, len(branching)), dtype=np.int64)
        for d, k in enumerate(branching):
            block = G // int(np.prod(branching[:d + 1]))  # rows under one depth-d node
            paths[:, d] = (r // block) % k
            lo, hi = d * segment_len, (L if d == len(branching) - 1 else min(L, (d + 1) * segment_len))
            if hi <= lo:
                continue
            heads = np.flatnonzero(r % block == 0)  # one row per node draws, its block copies
            drawn = policy.sample(ctx[heads, lo:hi], rng)
            choices[:, lo:hi] = np.repeat(drawn, block, axis=0)
        sample = self.build(policy, pids, choices, rng)
        sample.state["tree_meta"] = [{"tree_path": [int(x) for x in row], "tree_segment_len": segment_len,
                                      "tree_duplicate": False} for row in paths]
        return sample

    def build(self, policy: TabularPolicy, pids: np.ndarray, choices: np.ndarray, rng: np.random.Generator,
              group_ids: np.ndarray | None = None) -> Sample:
        """The Sample (with ground truth) of given choices [B, L]; rewards drawn from rng."""
        c = self.config
        L, B, T = c.n_slots, len(pids), self.T
        pi = self._pi(policy)
        logp = policy.log_probs()
        ctx_slots = pids[:, None] * L + np.arange(L)[None, :]
        v_before = np.zeros((B, L + 1))
        q_all = np.full((B, L, self.n_options), np.nan)
        partial = -np.ones((B, L), dtype=np.int64)
        for s in range(L):
            v_before[:, s] = self.values(pi, pids, partial)
            for a in range(self.n_opt[s]):
                trial = partial.copy()
                trial[:, s] = a
                q_all[:, s, a] = self.values(pi, pids, trial)
            partial[:, s] = choices[:, s]
        v_before[:, L] = self.values(pi, pids, partial)
        f = v_before[:, L]
        rewards = (rng.random(B) < f).astype(np.float64)
        rows = np.arange(B)[:, None]
        q_chosen = q_all[rows, np.arange(L)[None, :], choices]
        q_max, q_min = np.nanmax(q_all, axis=2), np.nanmin(q_all, axis=2)
        decisive = (q_max - q_min) > TOL
        truth = np.where(decisive, np.where(q_chosen >= q_max - TOL, 1.0, -1.0), 0.0)
        step_adv = v_before[:, 1:] - v_before[:, :-1]

        tokens = np.full((B, T), PAD, dtype=np.int64)
        tokens[:, 0] = PROMPT_TOKEN + pids
        loss_mask = np.zeros((B, T), dtype=bool)
        ctx = -np.ones((B, T), dtype=np.int64)
        opt = -np.ones((B, T), dtype=np.int64)
        step_ids = -np.ones((B, T), dtype=np.int64)
        true_adv = np.zeros((B, T))
        true_value = np.zeros((B, T))
        true_value[:, 0] = v_before[:, 0]
        q_options = np.full((B, T, self.n_options), np.nan)
        q_options[:, self.pos] = q_all
        for s in range(L):
            t = self.pos[s]
            tokens[:, t] = OPTION_TOKEN + choices[:, s]
            loss_mask[:, t] = True
            ctx[:, t], opt[:, t], step_ids[:, t] = ctx_slots[:, s], choices[:, s], s
            true_adv[:, t] = step_adv[:, s]
            true_value[:, t] = v_before[:, s]
        if self.check_after is not None:
            t = self.pos[self.check_after] + 1
            upto = [m for m in self.decisive_slots if m <= self.check_after]
            best = np.argmax(self.factor[pids][:, upto], axis=2)  # [B, d]
            ok = np.all(choices[:, upto] == best, axis=1)
            tokens[:, t] = np.where(ok, CHECK_OK, CHECK_FAIL)
            true_value[:, t] = v_before[:, self.check_after + 1]
        env = np.zeros((B, L))
        env[:, -1] = rewards
        decisive_choice = choices * (self.kind_of[None, :] > 0) - (self.kind_of[None, :] == 0)
        keys = [[(int(pids[b]), s, tuple(int(x) for x in decisive_choice[b, :s] if x >= 0)) for s in range(L)]
                for b in range(B)]
        gids = pids.copy() if group_ids is None else group_ids
        return Sample(tokens=tokens, loss_mask=loss_mask, ctx=ctx, opt=opt, step_ids=step_ids, rewards=rewards,
                      expected_reward=f, group_ids=gids, prompt_ids=pids, true_adv=true_adv, true_value=true_value,
                      step_adv=step_adv, step_truth=truth, step_env_reward=env, step_info_gain=np.full((B, L), np.nan),
                      step_decisive=decisive, step_keys=keys, n_steps=np.full(B, L), q_options=q_options,
                      state={"choices": choices, "logp_table": logp})

    def probe(self, policy: TabularPolicy, sample: Sample, b: int, t: int, n: int, rng: np.random.Generator) -> float:
        """MC estimate of V(tokens[b, :t]) from n continuations sampled with the policy (cost n)."""
        c = self.config
        pid = int(sample.prompt_ids[b])
        fixed = self.pos < t
        choices = np.repeat(sample.state["choices"][b: b + 1], n, axis=0)
        ctx = pid * c.n_slots + np.flatnonzero(~fixed)
        if len(ctx):
            choices[:, ~fixed] = policy.sample(np.broadcast_to(ctx, (n, len(ctx))), rng)
        f = self.values(self._pi(policy), np.full(n, pid), choices)
        return float((rng.random(n) < f).mean())


@dataclass(frozen=True)
class KeyValueConfig:
    n_keys: int = 4
    depth: int = 2
    max_turns: int = 4
    counters: bool = False
    n_prompts: int = 4


class KeyValueTask:
    """Multi-turn key-value lookup with exact DP (see the module docstring)."""

    kind = "multiturn"

    def __init__(self, config: KeyValueConfig, seed: int):
        self.config = c = config
        if not 1 <= c.depth < c.n_keys:
            raise ValueError(f"KeyValueTask: need 1 <= depth < n_keys, got depth={c.depth}, n_keys={c.n_keys}")
        rng = np.random.default_rng([seed, 2])
        K, P = c.n_keys, c.n_prompts
        self.M = 1 << K
        self.n_options = max(2, K)
        self.table = np.zeros((P, K), dtype=np.int64)
        self.chain = np.zeros((P, c.depth), dtype=np.int64)  # keys to look up, in order
        self.gold = np.zeros(P, dtype=np.int64)
        for p in range(P):
            perm = rng.permutation(K)
            self.table[p] = rng.integers(K, size=K)
            for i in range(c.depth):
                self.table[p, perm[i]] = perm[i + 1]
            self.chain[p], self.gold[p] = perm[: c.depth], perm[c.depth]
        C = P * self.M * 3
        valid = np.zeros((C, self.n_options), dtype=bool)
        valid[0::3, :2] = True  # verb contexts: query / answer
        valid[1::3, :K] = True
        valid[2::3, :K] = True
        self._valid = valid
        self._init_logits = rng.normal(size=(C, self.n_options))
        self.W = 4 + (1 if c.counters else 0)  # tokens per turn
        self.T = 1 + c.max_turns * self.W

    def ctx(self, pids, masks, role):
        return (np.asarray(pids) * self.M + np.asarray(masks)) * 3 + role

    def initial_policy(self) -> TabularPolicy:
        return TabularPolicy(self._init_logits.copy(), self._valid.copy())

    # -- exact DP ----------------------------------------------------------------------------

    def dp(self, policy: TabularPolicy):
        """V [P, M, T+1], Q_verb [P, M, T, 2], Q_joint [P, M, T, 2, K] (T = max_turns)."""
        c = self.config
        K, P, M, Tm = c.n_keys, c.n_prompts, self.M, c.max_turns
        pi = policy.probs().reshape(P, M, 3, self.n_options)
        pv, pq, pa = pi[:, :, 0, :2], pi[:, :, 1, :K], pi[:, :, 2, :K]
        V = np.zeros((P, M, Tm + 1))
        Qv = np.zeros((P, M, Tm, 2))
        Qj = np.zeros((P, M, Tm, 2, K))
        nxt = np.arange(M)[:, None] | (1 << np.arange(K))[None, :]  # [M, K] knowledge after query k
        correct = (np.arange(K)[None, :] == self.gold[:, None]).astype(float)  # [P, K]
        for t in range(Tm - 1, -1, -1):
            Qj[:, :, t, 0] = V[:, :, t + 1][:, nxt]
            Qj[:, :, t, 1] = correct[:, None, :]
            Qv[:, :, t, 0] = np.sum(pq * Qj[:, :, t, 0], axis=2)
            Qv[:, :, t, 1] = np.sum(pa * Qj[:, :, t, 1], axis=2)
            V[:, :, t] = np.sum(pv * Qv[:, :, t], axis=2)
        return V, Qv, Qj

    def expected_success(self, policy: TabularPolicy) -> float:
        return float(self.dp(policy)[0][:, 0, 0].mean())

    def best_success(self) -> float:
        return 1.0 if self.config.max_turns > self.config.depth else 0.0

    # -- sampling ----------------------------------------------------------------------------

    def _rollout(self, policy, pids, masks, turn, verb, rng):
        """Continue episodes from (knowledge mask, turn, chosen verb or -1): outcome R [N]."""
        masks, turn, verb = masks.copy(), turn.copy(), verb.copy()
        R = np.zeros(len(pids))
        alive = turn < self.config.max_turns
        while alive.any():
            idx = np.flatnonzero(alive)
            need = idx[verb[idx] < 0]
            if len(need):
                verb[need] = policy.sample(self.ctx(pids[need], masks[need], 0), rng)
            arg = policy.sample(self.ctx(pids[idx], masks[idx], 1 + verb[idx]), rng)
            ans = verb[idx] == 1
            R[idx[ans]] = (arg[ans] == self.gold[pids[idx[ans]]]).astype(float)
            alive[idx[ans]] = False
            q = idx[~ans]
            masks[q] |= 1 << arg[~ans]
            turn[q] += 1
            verb[q] = -1
            alive &= turn < self.config.max_turns
        return R

    def sample(self, policy: TabularPolicy, group_size: int, rng: np.random.Generator) -> Sample:
        c = self.config
        K, P, Tm, W = c.n_keys, c.n_prompts, c.max_turns, self.W
        B = P * group_size
        pids = np.repeat(np.arange(P), group_size)
        V, Qv, Qj = self.dp(policy)
        pi = policy.probs()
        off = 1 if c.counters else 0
        tokens = np.full((B, self.T), PAD, dtype=np.int64)
        tokens[:, 0] = PROMPT_TOKEN + pids
        loss_mask = np.zeros((B, self.T), dtype=bool)
        ctx = -np.ones((B, self.T), dtype=np.int64)
        opt = -np.ones((B, self.T), dtype=np.int64)
        step_ids = -np.ones((B, self.T), dtype=np.int64)
        true_adv = np.zeros((B, self.T))
        true_value = np.zeros((B, self.T))
        true_value[:, 0] = V[pids, 0, 0]
        q_options = np.full((B, self.T, self.n_options), np.nan)
        nan = np.full((B, Tm), np.nan)
        step_adv, truth, env, gain = nan.copy(), nan.copy(), nan.copy(), nan.copy()
        decisive = np.zeros((B, Tm), dtype=bool)
        masks_before = np.zeros((B, Tm), dtype=np.int64)
        verbs = -np.ones((B, Tm), dtype=np.int64)
        keys: list[list[Hashable]] = [[] for _ in range(B)]
        mask = np.zeros(B, dtype=np.int64)
        alive = np.ones(B, dtype=bool)
        rewards = np.zeros(B)
        n_steps = np.zeros(B, dtype=np.int64)
        needed = np.zeros((B, K), dtype=bool)
        needed[np.repeat(np.arange(B), c.depth), self.chain[pids].reshape(-1)] = True
        for t in range(Tm):
            idx = np.flatnonzero(alive)
            if not len(idx):
                break
            p, m = pids[idx], mask[idx]
            s = 1 + t * W
            cv = self.ctx(p, m, 0)
            vb = policy.sample(cv, rng)
            ca = self.ctx(p, m, 1 + vb)
            ar = policy.sample(ca, rng)
            if c.counters:
                tokens[idx, s] = COUNTER_TOKEN + t
                true_value[idx, s] = V[p, m, t]
            tv, ta = s + off, s + off + 1
            tokens[idx, tv], tokens[idx, ta] = VERB_TOKEN + vb, OPTION_TOKEN + ar
            loss_mask[idx, tv] = loss_mask[idx, ta] = True
            ctx[idx, tv], ctx[idx, ta], opt[idx, tv], opt[idx, ta] = cv, ca, vb, ar
            step_ids[idx, tv] = step_ids[idx, ta] = t
            qv, qj = Qv[p, m, t, vb], Qj[p, m, t, vb, ar]
            true_value[idx, tv], true_value[idx, ta] = V[p, m, t], qv
            true_adv[idx, tv], true_adv[idx, ta] = qv - V[p, m, t], qj - qv
            q_options[idx, tv, :2] = Qv[p, m, t]
            q_options[idx, ta, :K] = Qj[p, m, t, vb]
            qall = Qj[p, m, t].reshape(len(idx), -1)
            decisive[idx, t] = (qall.max(1) - qall.min(1)) > TOL
            truth[idx, t] = np.where(decisive[idx, t], np.where(qj >= qall.max(1) - TOL, 1.0, -1.0), 0.0)
            step_adv[idx, t] = qj - V[p, m, t]
            p_before = pi[self.ctx(p, m, 2), self.gold[p]]
            masks_before[idx, t], verbs[idx, t] = m, vb
            for j, b in enumerate(idx):
                keys[b].append((int(p[j]), int(m[j])) + ((t,) if c.counters else ()))
            n_steps[idx] += 1
            ans = vb == 1
            a_idx, q_idx = idx[ans], idx[~ans]
            rewards[a_idx] = (ar[ans] == self.gold[p[ans]]).astype(float)
            env[a_idx, t] = rewards[a_idx]
            gain[a_idx, t] = rewards[a_idx] - p_before[ans]
            alive[a_idx] = False
            useful = needed[q_idx, ar[~ans]] & ((m[~ans] >> ar[~ans]) & 1 == 0)
            env[q_idx, t] = np.where(useful, 0.1, 0.0)
            new_mask = m[~ans] | (1 << ar[~ans])
            gain[q_idx, t] = pi[self.ctx(p[~ans], new_mask, 2), self.gold[p[~ans]]] - p_before[~ans]
            tokens[q_idx, ta + 1] = OBS_TOKEN
            tokens[q_idx, ta + 2] = VALUE_TOKEN + self.table[p[~ans], ar[~ans]]
            true_value[q_idx, ta + 1] = true_value[q_idx, ta + 2] = V[p[~ans], new_mask, t + 1]
            mask[q_idx] = new_mask
        return Sample(tokens=tokens, loss_mask=loss_mask, ctx=ctx, opt=opt, step_ids=step_ids, rewards=rewards,
                      expected_reward=rewards.copy(), group_ids=pids.copy(), prompt_ids=pids, true_adv=true_adv,
                      true_value=true_value, step_adv=step_adv, step_truth=truth, step_env_reward=env,
                      step_info_gain=gain, step_decisive=decisive, step_keys=keys, n_steps=n_steps, q_options=q_options,
                      state={"masks_before": masks_before, "verbs": verbs})

    def probe(self, policy: TabularPolicy, sample: Sample, b: int, t: int, n: int, rng: np.random.Generator) -> float:
        """MC estimate of V(tokens[b, :t]) from n continuations (cost n)."""
        j = int(sample.loss_mask[b, :t].sum())  # policy tokens already in the prefix
        k = j // 2
        if k >= sample.n_steps[b]:
            return float(sample.rewards[b])  # the episode is over inside the prefix
        pid = np.full(n, sample.prompt_ids[b])
        mask = np.full(n, sample.state["masks_before"][b, k])
        verb = np.full(n, sample.state["verbs"][b, k] if j % 2 == 1 else -1)
        return float(self._rollout(policy, pid, mask, np.full(n, k), verb, rng).mean())
