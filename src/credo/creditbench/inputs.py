"""Build `CreditInputs` for any registered estimator from a CreditBench `Sample`, and count the cost.

An estimator gets exactly the fields it declares (`credit_needs_of`); outcome-level estimators get
rewards and group ids only and their [B] advantage is broadcast over the row's loss tokens. Where each
field comes from (the synthetic stand-ins for what the trainer builds from a real model):

| field | source in CreditBench |
|---|---|
| logprobs, entropy | the tabular policy at its current logits |
| ref_logprobs | the initial policy (the reference model is the policy before training) |
| steps | slots (chain) / turns (key-value); -1 on prompt, checkpoint and environment tokens |
| step_rewards | by default a `SyntheticJudge` (noise, bias, flip knobs) on the true step score (`env.py`): +1 optimal choice, -1 worse, 0 when the choice does not matter; multi-turn estimators that consume environment rewards get them instead; `STEP_REWARD_SOURCE` lists per-method sources (information gain for IGPO / A2TGPO) |
| step_keys | the environment state before each step: (prompt, slot, decisive choices so far) for the chain; (prompt, knowledge state[, turn counter]) for key-value |
| values | an oracle critic: the exact V(s_t) plus N(0, critic_noise^2) per token |
| hidden_states | a fixed random embedding of (position, token), H = 16 |
| attention | a synthetic causal map: softmax_j<=t <h_t, h_j> / sqrt(H) over those embeddings; it carries no information about credit (attention methods are tested for robustness, not for their premise) |
| probe | `n_probe` Monte Carlo continuations of the prefix with the tabular policy; every one is counted |
| extras | per-method adapters (`EXTRAS`): name -> fn(BenchContext) -> dict; an adapter raises `Unavailable` when the task cannot provide the input |

Compute counted per batch: rollouts (B), probe rollouts, judge calls (one per judged response) and the extra
model calls an adapter reports (`cost` key of its dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from credo.credit.base import CreditInputs, credit_needs_of, is_token_level
from credo.judges.synthetic import SyntheticJudge
from credo.creditbench.env import Sample
from credo.creditbench.policy import TabularPolicy


class Unavailable(Exception):
    """The task cannot provide an input the estimator needs; str(exc) names it."""


@dataclass(frozen=True)
class InputKnobs:
    judge_noise: float = 0.0  # Gaussian noise of the synthetic judge / PRM around the true step score
    judge_bias: float = 0.0  # additive bias of the judge (optimistic > 0)
    judge_flip: float = 0.0  # probability that a verdict is mirrored
    critic_noise: float = 0.0  # std of the Gaussian noise added to the oracle critic's V
    n_probe: int = 4  # Monte Carlo continuations per probe call
    hidden_dim: int = 16


@dataclass
class BenchContext:
    """What an extras adapter may read."""

    task: Any
    sample: Sample
    policy: TabularPolicy
    ref_policy: TabularPolicy
    knobs: InputKnobs
    rng: np.random.Generator
    judge: SyntheticJudge
    cost: dict[str, float] = field(default_factory=dict)


# estimator name -> step_rewards source ("judge", "env", "info_gain"); unlisted: "judge" on the chain,
# "env" on multi-turn tasks (as the trainer: environment rewards per turn).
STEP_REWARD_SOURCE: dict[str, str] = {
    "igpo": "info_gain", "a2tgpo": "info_gain",  # IG of the gold answer per turn
    # PRM / judge / oracle scores of steps, also on multi-turn tasks:
    "pure": "judge", "pure_sum": "judge", "capo": "judge", "tp_grpo": "judge", "grounded_prm": "judge",
    "mapo": "judge", "slate": "judge", "vpr": "judge",
}

# estimator name -> fn(BenchContext) -> extras dict (may hold "step_rewards" [B, K] to override the
# default source, and "cost": extra model calls); filled in by `adapters.py` style functions below.
EXTRAS: dict[str, Callable[[BenchContext], dict]] = {}


def extras_adapter(*names: str):
    def add(fn):
        for n in names:
            EXTRAS[n] = fn
        return fn
    return add


def nan_steps(x: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
    """NaN past each row's last step."""
    k = np.arange(x.shape[1])[None, :]
    return np.where(k < n_steps[:, None], x, np.nan)


def judge_scores(ctx: BenchContext, truth: np.ndarray | None = None) -> np.ndarray:
    """[B, K] judge scores of every step (NaN past a row's last step); counts one call per response.

    The judge sees the step in context: the text of step k is the row's tokens up to the end of step k,
    so the same prefix always gets the same verdict (a deterministic PRM)."""
    s = ctx.sample
    truth = s.step_truth if truth is None else truth
    out = np.full(truth.shape, np.nan)
    for b in range(s.size):
        n = int(s.n_steps[b])
        if n == 0:
            continue
        ends = [int(np.flatnonzero(s.step_ids[b] == k).max()) for k in range(n)]
        row = s.tokens[b]
        texts = [" ".join(map(str, row[: e + 1])) for e in ends]
        out[b, :n] = ctx.judge.score(str(int(s.prompt_ids[b])), texts, [float(x) for x in truth[b, :n]])
    # One call per judged response: a discriminative PRM scores every step of a response in one forward
    # pass (PURE's PRM), a generative judge critiques all steps in one generation (CAPO, TP-GRPO).
    ctx.cost["judge_calls"] = ctx.cost.get("judge_calls", 0.0) + float((s.n_steps > 0).sum())
    return out


class InputBuilder:
    """Builds CreditInputs for one task instance (fixed embeddings and judge, seeded)."""

    def __init__(self, task, knobs: InputKnobs, seed: int):
        self.task, self.knobs, self.seed = task, knobs, seed
        gen = np.random.default_rng([seed, 7])
        self.embedding = gen.normal(size=(task.T, 128, knobs.hidden_dim)) / math.sqrt(knobs.hidden_dim)

    def judge(self) -> SyntheticJudge:
        k = self.knobs
        return SyntheticJudge(noise=k.judge_noise, bias=k.judge_bias, flip=k.judge_flip, seed=self.seed)

    def build(self, name: str, fn: Callable, sample: Sample, policy: TabularPolicy, ref_policy: TabularPolicy,
              rng: np.random.Generator) -> tuple[CreditInputs, dict[str, float]]:
        """(inputs, cost). Raises Unavailable("X") when a declared need cannot be built."""
        s = sample
        cost = {"rollouts": float(s.size), "probe_rollouts": 0.0, "judge_calls": 0.0, "extra_calls": 0.0}
        base = dict(rewards=torch.tensor(s.rewards, dtype=torch.float32),
                    group_ids=torch.tensor(s.group_ids, dtype=torch.long),
                    loss_mask=torch.tensor(s.loss_mask))
        if not is_token_level(fn):
            return CreditInputs(**base), cost
        needs = credit_needs_of(fn)
        ctx = BenchContext(self.task, s, policy, ref_policy, self.knobs, rng, self.judge(), cost)
        mask = s.loss_mask
        safe_ctx, safe_opt = np.maximum(s.ctx, 0), np.maximum(s.opt, 0)
        kw: dict[str, Any] = {"tokens": torch.tensor(s.tokens)}

        def token_table(table: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.where(mask, table[safe_ctx, safe_opt], 0.0), dtype=torch.float32)

        # logprobs are cheap and many estimators read them without declaring: always provide them
        kw["logprobs"] = token_table(policy.log_probs())
        if "ref_logprobs" in needs:
            kw["ref_logprobs"] = token_table(ref_policy.log_probs())
        if "entropy" in needs:
            kw["entropy"] = torch.tensor(np.where(mask, policy.entropy()[safe_ctx], 0.0), dtype=torch.float32)
        kw["step_ids"] = torch.tensor(s.step_ids)
        if "step_keys" in needs:
            kw["step_keys"] = s.step_keys
        if "values" in needs:
            noise = rng.normal(size=s.true_value.shape) * self.knobs.critic_noise
            kw["values"] = torch.tensor(s.true_value + noise, dtype=torch.float32)
        if "hidden_states" in needs or "attention" in needs:
            h = self.embedding[np.arange(s.tokens.shape[1])[None, :], np.minimum(s.tokens, 127)]  # [B, T, H]
            if "hidden_states" in needs:
                kw["hidden_states"] = torch.tensor(h, dtype=torch.float32)
            if "attention" in needs:
                scores = np.einsum("bth,bjh->btj", h, h) / math.sqrt(self.knobs.hidden_dim)
                T = scores.shape[1]
                scores = np.where(np.tril(np.ones((T, T), bool))[None], scores, -np.inf)
                scores -= scores.max(axis=2, keepdims=True)
                att = np.exp(scores)
                kw["attention"] = torch.tensor(att / att.sum(axis=2, keepdims=True), dtype=torch.float32)
        if "probe" in needs:
            def probe(b: int, t: int) -> float:
                cost["probe_rollouts"] += self.knobs.n_probe
                return self.task.probe(policy, s, int(b), int(t), self.knobs.n_probe, rng)
            kw["probe"] = probe
        extras: dict[str, Any] = {}
        if name in EXTRAS:
            extras = dict(EXTRAS[name](ctx))
            cost["extra_calls"] += float(extras.pop("cost", 0.0))
        elif "extras" in needs:
            raise Unavailable("extras without a CreditBench adapter")
        if "step_rewards" in needs:
            if "step_rewards" in extras:
                step_rewards = extras.pop("step_rewards")
            else:
                source = STEP_REWARD_SOURCE.get(name, "env" if self.task.kind == "multiturn" else "judge")
                if source == "judge":
                    step_rewards = judge_scores(ctx)
                elif source == "env":
                    step_rewards = s.step_env_reward
                else:
                    if np.isnan(s.step_info_gain).all():
                        raise Unavailable("a gold answer for information gain")
                    step_rewards = s.step_info_gain
            kw["step_rewards"] = torch.tensor(nan_steps(np.asarray(step_rewards, dtype=np.float64), s.n_steps),
                                              dtype=torch.float32)
        kw["extras"] = extras
        return CreditInputs(**base, **kw), cost


# -- extras adapters ------------------------------------------------------------------------------
# Each returns the extras an estimator documents (plus optional "step_rewards" and "cost"). They use
# only what a real pipeline could compute (the policy, a reference model, an oracle DPO model standing
# in for a trained one, MC continuations); the ground truth enters only through the documented oracles.

DPO_BETA = 0.1  # temperature of the oracle DPO / contrastive models: pi ∝ pi_ref exp(+-Q / DPO_BETA)


def tilted_logprobs(ctx: BenchContext, sign: float, base: TabularPolicy) -> np.ndarray:
    """[B, T] log-prob of each sampled token under pi' ∝ base(.|s) exp(sign Q~(s, .) / DPO_BETA), the
    KL-regularised optimum for reward sign*Q (what DPO's model approximates); 0 off policy tokens.
    Q~ = Q + judge_noise * N(0, 1) per (token, option): the PRM-noise knob also degrades these learned
    reward models (a constant bias would cancel in the softmax)."""
    s = ctx.sample
    mask = s.loss_mask
    logp = base.log_probs()[np.maximum(s.ctx, 0)]  # [B, T, O]
    q = np.nan_to_num(s.q_options, nan=0.0)
    if ctx.knobs.judge_noise:
        q = q + ctx.knobs.judge_noise * ctx.rng.normal(size=q.shape)
    valid = base.valid[np.maximum(s.ctx, 0)]
    z = np.where(valid, logp + sign * q / DPO_BETA, -np.inf)
    z = z - z.max(axis=2, keepdims=True)
    logz = np.log(np.sum(np.where(valid, np.exp(z), 0.0), axis=2))
    chosen = np.take_along_axis(z, np.maximum(s.opt, 0)[..., None], axis=2)[..., 0]
    return np.where(mask, chosen - logz, 0.0)


@extras_adapter("rto")
def _rto(ctx: BenchContext) -> dict:
    """dpo_logprobs: an oracle DPO model (pi_ref tilted by exp(Q / 0.1)); one forward per row."""
    return {"dpo_logprobs": torch.tensor(tilted_logprobs(ctx, +1.0, ctx.ref_policy), dtype=torch.float32),
            "cost": ctx.sample.size}


@extras_adapter("t_reg")
def _t_reg(ctx: BenchContext) -> dict:
    """contrastive_logprobs_pos / _neg: the policy "prompted" to be good / bad, modelled as the
    policy tilted by exp(+-Q / 0.1); two extra passes per row."""
    pos = tilted_logprobs(ctx, +1.0, ctx.policy)
    neg = tilted_logprobs(ctx, -1.0, ctx.policy)
    return {"contrastive_logprobs_pos": torch.tensor(pos, dtype=torch.float32),
            "contrastive_logprobs_neg": torch.tensor(neg, dtype=torch.float32), "cost": 2 * ctx.sample.size}


@extras_adapter("capo")
def _capo(ctx: BenchContext) -> dict:
    """CAPO reads the fraction of critiques flagging each step wrong: one judge (score < 0 = wrong)."""
    from credo.credit.process import judge_wrong_fraction

    return {"step_rewards": judge_wrong_fraction(torch.tensor(judge_scores(ctx))).numpy()}


@extras_adapter("spo_tree")
def _spo_tree(ctx: BenchContext) -> dict:
    """The sampled tree where the task drew one (ChainTask.sample_tree, run.TREE_SAMPLED); otherwise
    nothing, and the estimator builds the tree from the group's shared token prefixes."""
    metas = ctx.sample.state.get("tree_meta")
    if metas is None:
        return {}
    from credo.credit.segments import tree_from_meta

    s = ctx.sample
    return {"tree": tree_from_meta(torch.as_tensor(s.loss_mask), torch.as_tensor(s.rewards, dtype=torch.float32),
                                   torch.as_tensor(s.group_ids), metas)}


@extras_adapter("brpo")
def _brpo(ctx: BenchContext, n_budgets: int = 4) -> dict:
    """budget_positions: cuts after every ceil(K / S)-th step; budget_scores: the forced summary's
    correctness at each cut, modelled as an MC continuation probe of the prefix (n_probe rollouts per
    cut); the last budget is the whole trace (score R)."""
    s = ctx.sample
    B, T = s.tokens.shape
    pos = np.zeros((B, n_budgets), dtype=np.int64)
    scores = np.zeros((B, n_budgets))
    for b in range(B):
        n = int(s.n_steps[b])
        for j in range(n_budgets):
            k = min(n, int(math.ceil((j + 1) * n / n_budgets)))
            cols = np.flatnonzero(s.step_ids[b] == k - 1) if k > 0 else np.array([0])
            pos[b, j] = int(cols.max()) + 1 if k > 0 else 1
            if j == n_budgets - 1 or k >= n:
                scores[b, j] = s.rewards[b]
            else:
                scores[b, j] = ctx.task.probe(ctx.policy, s, b, int(pos[b, j]), ctx.knobs.n_probe, ctx.rng)
                ctx.cost["probe_rollouts"] = ctx.cost.get("probe_rollouts", 0.0) + ctx.knobs.n_probe
    return {"budget_positions": torch.tensor(pos), "budget_scores": torch.tensor(scores, dtype=torch.float32)}


@extras_adapter("f_grpo")
def _f_grpo(ctx: BenchContext) -> dict:
    raise Unavailable("phase_rewards: a generate-then-rank task")


@extras_adapter("oprl")
def _oprl(ctx: BenchContext) -> dict:
    """OPRL's implicit PRM pi_phi, modelled as the trained optimum: the current policy tilted by
    exp(Q / 0.1); step reward beta sum log pi_phi / pi_old (`turn_rewards.oprl_step_rewards`)."""
    from credo.credit.turn_rewards import oprl_step_rewards

    s = ctx.sample
    mask = torch.tensor(s.loss_mask)
    prm = torch.tensor(tilted_logprobs(ctx, +1.0, ctx.policy), dtype=torch.float32)
    old = torch.tensor(np.where(s.loss_mask, ctx.policy.log_probs()[np.maximum(s.ctx, 0), np.maximum(s.opt, 0)], 0.0),
                       dtype=torch.float32)
    r = oprl_step_rewards(prm, old, torch.tensor(s.step_ids), mask)
    return {"step_rewards": r.numpy(), "cost": s.size}


@extras_adapter("sotopia_rl")
def _sotopia(ctx: BenchContext) -> dict:
    """The attribution LLM: attribution_k = round(1.5 (judge score + 1)) in {0..3} (the judge on the
    true step score: optimal 3, irrelevant 2, mistake 0); goal score = 10 R
    (`turn_rewards.sotopia_utterance_rewards`)."""
    from credo.credit.turn_rewards import sotopia_utterance_rewards

    s = ctx.sample
    scores = judge_scores(ctx)
    out = np.full(scores.shape, np.nan)
    for b in range(s.size):
        n = int(s.n_steps[b])
        att = [int(np.clip(np.round(1.5 * (x + 1.0)), 0, 3)) for x in scores[b, :n]]
        out[b, :n] = sotopia_utterance_rewards(att, 10.0 * float(s.rewards[b]))
    return {"step_rewards": out}


def _subgoal(ctx: BenchContext, b: int, k: int):
    """The subgoal a step achieves: chain -> its slot; key-value -> the key looked up, or the answer."""
    s = ctx.sample
    if ctx.task.kind == "chain":
        return ("slot", k)
    verb = int(s.state["verbs"][b, k])
    arg = int(s.opt[b][(s.step_ids[b] == k) & s.loss_mask[b]][-1])
    return ("answer",) if verb == 1 else ("key", arg)


@extras_adapter("calm")
def _calm(ctx: BenchContext) -> dict:
    """CALM's judge LLM says a transition achieved its subgoal when the judge's step score is > 0
    (the true score: +1 for the optimal choice); `turn_rewards.calm_subgoal_rewards`, bonus 1."""
    from credo.credit.turn_rewards import calm_subgoal_rewards

    s = ctx.sample
    scores = judge_scores(ctx)
    out = np.full(scores.shape, np.nan)
    for b in range(s.size):
        n = int(s.n_steps[b])
        achieved = [[_subgoal(ctx, b, k)] if scores[b, k] > 0 else [] for k in range(n)]
        out[b, :n] = calm_subgoal_rewards(achieved)
    return {"step_rewards": out}


@extras_adapter("lare")
def _lare(ctx: BenchContext) -> dict:
    """LaRe's latent reward: a symbolic encoder phi(s_k, a_k) = one-hot of (step index, chosen option
    of each token of the step), decoded linearly, fitted on this batch's returns
    (`turn_rewards.lare_fit_decoder` / `lare_decode`)."""
    from credo.credit.turn_rewards import lare_decode, lare_fit_decoder

    s = ctx.sample
    B, K = s.step_adv.shape
    O = ctx.policy.logits.shape[1]
    per_step = np.zeros((B, K), dtype=np.int64)  # tokens of each (row, step)
    ok = s.step_ids >= 0
    np.add.at(per_step, (np.nonzero(ok)[0], s.step_ids[ok]), 1)
    width = max(int(per_step.max(initial=0)), 1)
    feats = np.zeros((B, K, K * width * O))
    for b in range(B):
        for k in range(int(s.n_steps[b])):
            opts = s.opt[b][(s.step_ids[b] == k) & s.loss_mask[b]]
            for j, o in enumerate(opts):
                feats[b, k, (k * width + j) * O + int(o)] = 1.0
    valid = torch.tensor(np.arange(K)[None, :] < s.n_steps[:, None])
    f = torch.tensor(feats, dtype=torch.float32)
    w = lare_fit_decoder(f, valid, torch.tensor(s.rewards, dtype=torch.float32), ridge=1e-2)
    return {"step_rewards": lare_decode(f, valid, w).numpy()}


@extras_adapter("siop")
def _siop(ctx: BenchContext) -> dict:
    """SIOP on the key-value task: clusters = final answers (`siop_cluster_weights`, no evidence);
    reference log-likelihood after each turn = log pi(answer x | knowledge state) with the
    cluster's answer as the single reference; one extra forward per turn and row."""
    from credo.credit.turn_rewards import siop_cluster_weights, siop_turn_rewards

    s, task = ctx.sample, ctx.task
    if task.kind != "multiturn":
        raise Unavailable("final answers to cluster (multi-turn task)")
    answers = []
    for b in range(s.size):
        n = int(s.n_steps[b])
        last = n - 1
        is_answer = n > 0 and s.state["verbs"][b, last] == 1
        answers.append(int(s.opt[b][(s.step_ids[b] == last) & s.loss_mask[b]][-1]) if is_answer else None)
    q = siop_cluster_weights(answers, [int(g) for g in s.group_ids])
    logp = ctx.policy.log_probs()
    out = np.full(s.step_adv.shape, np.nan)
    calls = 0
    for b in range(s.size):
        n = int(s.n_steps[b])
        if n == 0:
            continue
        p = int(s.prompt_ids[b])
        masks = list(s.state["masks_before"][b, :n])
        # context after turn k-1 = knowledge before turn k; after the last turn = the final knowledge
        final = masks[-1] | ((1 << int(s.opt[b][(s.step_ids[b] == n - 1) & s.loss_mask[b]][-1]))
                             if s.state["verbs"][b, n - 1] == 0 else 0)
        states = masks + [final]
        x = answers[b]
        refs = [[float(logp[task.ctx(p, m, 2), x])] if x is not None else [float("nan")] for m in states]
        calls += len(states)
        out[b, :n] = siop_turn_rewards(float(q[b]), refs, num_turns=n)
    return {"step_rewards": out, "cost": calls}


@extras_adapter("hicra_gram")
def _hicra_gram(ctx: BenchContext) -> dict:
    """The Strategic-Gram lexicon as an oracle of the task's structure: planning tokens are the chain's
    decisive and repair slots (every slot that can matter), or the key-value verb tokens (query vs
    answer). Built offline: no cost."""
    s = ctx.sample
    if ctx.task.kind == "chain":
        slot_matters = np.zeros(s.tokens.shape, dtype=bool)
        slot_matters[:, ctx.task.pos] = ctx.task.kind_of[None, :] > 0
        plan = slot_matters & s.loss_mask
    else:
        plan = s.loss_mask & (s.tokens >= 20) & (s.tokens < 30)
    return {"planning_mask": torch.tensor(plan)}


@extras_adapter("matchtir")
def _matchtir(ctx: BenchContext) -> dict:
    """MatchTIR on the key-value task: each lookup is a call {"name": "lookup", "arguments": {"key"}}
    matched against the gold calls (the question's chain keys); an answer turn scores its F1 against
    the gold (`turn_rewards.matchtir_turn_rewards`). On the chain there are no tool calls: the gold
    path's role is played by the judge on the true step scores."""
    from credo.credit.turn_rewards import matchtir_turn_rewards

    s, task = ctx.sample, ctx.task
    if task.kind != "multiturn":
        return {"step_rewards": judge_scores(ctx)}
    out = np.full(s.step_adv.shape, np.nan)
    for b in range(s.size):
        n = int(s.n_steps[b])
        p = int(s.prompt_ids[b])
        gt = [{"name": "lookup", "parameters": {"key": str(k)}} for k in task.chain[p]]
        calls, answers = [], []
        for k in range(n):
            arg = int(s.opt[b][(s.step_ids[b] == k) & s.loss_mask[b]][-1])
            if s.state["verbs"][b, k] == 1:
                calls.append([])
                answers.append(float(arg == task.gold[p]))
            else:
                calls.append([{"name": "lookup", "arguments": {"key": str(arg)}}])
                answers.append(None)
        if n:
            out[b, :n] = matchtir_turn_rewards(calls, gt, answer_scores=answers)
    return {"step_rewards": out}
