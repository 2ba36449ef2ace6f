"""Turn-level estimators over produced turn signals: SIOP, OPRL, Sotopia-RL, CALM, LaRe.

Each reads the per-turn rewards a producer in `turn_rewards.py` wrote into `step_rewards [B, K]`
(turns from `step_ids [B, T]`, -1 off the policy's tokens) and returns advantages [B, T] that are
constant over each turn's tokens and 0 off the loss mask.

| estimator  | step_rewards hold (producer)                 | advantage                                         |
|------------|----------------------------------------------|---------------------------------------------------|
| siop       | q(c) x potential step (`siop_turn_rewards`)  | z-normalised pooled per prompt; A_k = r~_k + g A_k+1 |
| calm       | subgoal bonuses (`calm_subgoal_rewards`)     | as siop, on bonus + outcome at the last turn      |
| lare       | decoded proxy rewards (`lare_decode`)        | as siop                                           |
| oprl       | implicit-PRM rewards (`oprl_step_rewards`)   | GRPO(outcome) + alpha z-normalised step reward    |
| sotopia_rl | utterance rewards / RM scores                | GRPO over the prompt group's utterances           |

The pooled z-normalisation is SIOP's (official code): all (rollout, turn) rewards of a prompt group
share one mean and unbiased std; a pool of at most one value gives 0, a std below eps counts as 1,
and a zero-variance pool gives exactly 0.
"""

from __future__ import annotations

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, token_level
from credo.credit.outcome import grpo_advantages
from credo.credit.providers import (StepContext, judged_turn_probabilities, model_judge, nan_padded,
                                    provides_step_rewards)
from credo.credit.turn_rewards import (calm_subgoal_rewards, lare_decode, lare_fit_decoder, oprl_step_rewards,
                                      pad_turn_rewards, siop_cluster_weights, siop_turn_rewards,
                                      sotopia_utterance_rewards)
from credo.credit.turn_common import (
    F64, broadcast_loop, dense_ids, discounted, finish, group_moments, mean_std_loop, place, returns_loop, rows_of,
    turn_table, znorm, znorm_loop,
)


def pooled_turn_advantages(u: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, *, gamma: float,
                           eps: float) -> torch.Tensor:
    """SIOP's turn advantage [B, K] from turn rewards u [B, K]: z-normalise over each prompt group's
    (rollout, turn) pairs (unbiased std; std < eps -> 1; <= 1 pair or zero variance -> 0), then
    A_k = r~_k + gamma A_{k+1}."""
    rows, cols = valid.nonzero(as_tuple=True)
    x = u[rows, cols]
    g, _ = dense_ids(group_ids)
    seg, n = dense_ids(g[rows])
    count, mean, ss, flat = group_moments(x, seg, n)
    std = torch.sqrt(ss / (count - 1.0).clamp(min=1.0))
    std = torch.where(std < eps, torch.ones_like(std), std)
    z = (x - mean[seg]) / (std[seg] + eps)
    z = torch.where((count[seg] <= 1) | flat[seg], torch.zeros_like(z), z)
    return discounted(place(z, valid), gamma)


def pooled_turn_advantages_loop(per_row: list[list[float]], groups: list[int], *, gamma: float,
                                eps: float) -> list[list[float]]:
    """Readable reference for `pooled_turn_advantages` (per-row turn reward lists)."""
    out = []
    for b, u in enumerate(per_row):
        pool = [v for c, other in enumerate(per_row) if groups[c] == groups[b] for v in other]
        if len(pool) <= 1 or max(pool) == min(pool):
            z = [0.0] * len(u)
        else:
            mean, sd = mean_std_loop(pool)
            sd = 1.0 if sd < eps else sd
            z = [(v - mean) / (sd + eps) for v in u]
        out.append(returns_loop(z, gamma))
    return out


# -- SIOP --------------------------------------------------------------------------------------------


@CREDIT.register("siop")
@token_level(needs=("steps", "step_rewards"))
def siop_advantages(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6, lam: float = 0.5) -> torch.Tensor:
    """SIOP: verifier-free turn credit from self-induced outcome potentials.

    Reads group_ids [B], step_ids [B, T], step_rewards [B, K] (r_k = q(c) (log p^_k - log p^_{k-1}),
    plus (1 - lam) q(c) on the last turn: `turn_rewards.siop_turn_rewards`) -> advantages [B, T] float32.
    r~ = (r - mean_x r) / (std_x r + eps)   mean / unbiased std pooled over every (rollout, turn)
         pair of prompt x; std < eps -> 1; a prompt with <= 1 pair gets 0
    A_k = r~_k + gamma A_{k+1}, broadcast over turn k's tokens
    Defaults (`train_siop.sh`): gamma 1.0, eps 1e-6 (the advantage's; lam 0.5, eta 1.0 and
    num_refs 3 belong to the producers: lam is handed to `siop_self_induced_step_rewards` in training).
    Paper: "Self-Induced Outcome Potential: Turn-Level Credit Assignment for Agents without Verifiers"
    (arXiv 2605.04984). Status: confirmed (official `core_algos.py::compute_siop_turn_level_advantage`);
    zero-variance pools give exactly 0 here. Loop reference: `siop_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "siop")
    return finish(pooled_turn_advantages(r, valid, inputs.group_ids, gamma=gamma, eps=eps), inputs)


def siop_advantages_loop(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Readable reference for `siop_advantages`."""
    rows = rows_of(inputs)
    per_turn = pooled_turn_advantages_loop([row["r"] for row in rows], [row["g"] for row in rows], gamma=gamma, eps=eps)
    return broadcast_loop(per_turn, inputs)


# -- CALM --------------------------------------------------------------------------------------------


@CREDIT.register("calm")
@token_level(needs=("steps", "step_rewards"))
def calm_advantages(inputs: CreditInputs, *, aux_coef: float = 1.0, gamma: float = 1.0,
                    eps: float = 1e-6) -> torch.Tensor:
    """CALM: LLM-verified subgoal achievements as auxiliary turn rewards, added to the task reward.

    Reads rewards [B] (the task's sparse outcome), group_ids [B], step_ids [B, T], step_rewards [B, K]
    (subgoal bonuses, `turn_rewards.calm_subgoal_rewards`) -> advantages [B, T] float32.
    u_k = aux_coef * bonus_k  (+ R on the last turn: the environment reward arrives at the end)
    A   = SIOP's pooled turn advantage of u (`pooled_turn_advantages`: z-normalised over the prompt
          group's (rollout, turn) pairs, then A_k = u~_k + gamma A_{k+1})
    CALM itself is offline and algorithm-agnostic (shaped reward r + r_aux); the group-relative turn
    advantage is our choice for critic-free LLM RL.
    Defaults: aux_coef 1.0, gamma 1.0, eps 1e-6 (assumptions).
    Paper: "Assessing the Zero-Shot Capabilities of LLMs for Action Evaluation in RL" (CALM,
    arXiv 2409.12798). Status: reconstructed (the advantage form is an assumption).
    Loop reference: `calm_advantages_loop`.
    """
    r, valid, k_b = turn_table(inputs, "calm")
    last = valid & (torch.arange(r.shape[1])[None, :] == k_b[:, None] - 1)
    u = aux_coef * r + torch.where(last, inputs.rewards.to(F64)[:, None], torch.zeros_like(r))
    return finish(pooled_turn_advantages(u, valid, inputs.group_ids, gamma=gamma, eps=eps), inputs)


def calm_advantages_loop(inputs: CreditInputs, *, aux_coef: float = 1.0, gamma: float = 1.0,
                         eps: float = 1e-6) -> torch.Tensor:
    """Readable reference for `calm_advantages`."""
    rows = rows_of(inputs)
    u = [[aux_coef * v + (row["R"] if k == row["K"] - 1 else 0.0) for k, v in enumerate(row["r"])] for row in rows]
    return broadcast_loop(pooled_turn_advantages_loop(u, [row["g"] for row in rows], gamma=gamma, eps=eps), inputs)


# -- LaRe --------------------------------------------------------------------------------------------


@CREDIT.register("lare")
@token_level(needs=("steps", "step_rewards"))
def lare_advantages(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6, ridge: float = 1e-2) -> torch.Tensor:
    """LaRe: decoded latent-reward proxy rewards as turn rewards.

    Reads group_ids [B], step_ids [B, T], step_rewards [B, K] (r^_k = f(phi(s_k, a_k)), the decoder
    fitted so that sum_k r^_k ~ the episode return: `turn_rewards.lare_fit_decoder` / `lare_decode`)
    -> advantages [B, T] float32.
    A = SIOP's pooled turn advantage of r^ (z-normalised over the prompt group's (rollout, turn)
        pairs, then A_k = r~_k + gamma A_{k+1}).
    LaRe targets non-LLM policies (MuJoCo, MPE) trained on r^ by any RL algorithm; this group-relative
    turn advantage is the adaptation to critic-free LLM RL (assumption).
    Defaults: gamma 1.0, eps 1e-6 (assumptions); ridge 1e-2 is the decoder's (`lare_latent_step_rewards`).
    Paper: "Latent Reward: LLM-Empowered Credit Assignment in Episodic Reinforcement Learning"
    (arXiv 2412.11120). Status: reconstructed. Loop reference: `lare_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "lare")
    return finish(pooled_turn_advantages(r, valid, inputs.group_ids, gamma=gamma, eps=eps), inputs)


def lare_advantages_loop(inputs: CreditInputs, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Readable reference for `lare_advantages`."""
    return siop_advantages_loop(inputs, gamma=gamma, eps=eps)


# -- OPRL --------------------------------------------------------------------------------------------


@CREDIT.register("oprl")
@token_level(needs=("steps", "step_rewards", "logprobs"))
def oprl_advantages(inputs: CreditInputs, *, alpha: float = 1.0, eps: float = 1e-6, step_return: bool = False,
                    gamma: float = 1.0, beta: float = 0.1, prm_lr: float = 1e-6, prm_updates: int = 1) -> torch.Tensor:
    """OPRL: episode-level GRPO plus a group-normalised implicit-PRM step advantage.

    In training the step rewards come from OPRL's implicit PRM pi_phi, trained online beside the policy
    and checkpointed (`judges/implicit.py::ImplicitPRM`, created by this module's provider
    `oprl_implicit_step_rewards`): beta, prm_lr and prm_updates are its parameters (the advantage
    formula below does not read them).

    Reads rewards [B] (outcome from the verifier / ORM), group_ids [B], step_ids [B, T], step_rewards
    [B, K] (r_phi = beta sum_{t in step} log pi_phi / pi_old: `turn_rewards.oprl_step_rewards`)
    -> advantages [B, T] float32.
    A^E_i     = (R_i - mean_g R) / (std_g R + eps)         (GRPO, `grpo_advantages`)
    A^S_{i,k} = (x_{i,k} - mean_g x) / (std_g x + eps)     x = r_phi (or its discounted return with
                step_return), pooled over the prompt group's (rollout, step) pairs, unbiased std;
                a pool of one or zero variance gives 0
    A_{i,k}   = A^E_i + alpha A^S_{i,k}, broadcast over the step's tokens
    Early in training pi_phi ~ pi_old, so r_phi ~ 0 and A^S ~ 0: OPRL starts as GRPO.
    Defaults: alpha 1.0, step_return False, gamma 1.0, eps 1e-6 (unconfirmed: assumptions).
    Paper: "Online Process Reward Learning for Agentic Reinforcement Learning" (arXiv 2509.19199).
    Status: reconstructed (formulas from a third-party summary). Loop: `oprl_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "oprl")
    a_e = grpo_advantages(inputs.rewards, inputs.group_ids, eps=eps).to(F64)
    x = (discounted(r, gamma) if step_return else r)[valid]
    rows = valid.nonzero()[:, 0]
    g, _ = dense_ids(inputs.group_ids)
    seg, n = dense_ids(g[rows])
    a_s = znorm(x, seg, n, eps=eps)
    return finish(place(a_e[rows] + alpha * a_s, valid), inputs)


def oprl_advantages_loop(inputs: CreditInputs, *, alpha: float = 1.0, eps: float = 1e-6, step_return: bool = False,
                         gamma: float = 1.0, **_prm) -> torch.Tensor:
    """Readable reference for `oprl_advantages`."""
    rows = rows_of(inputs)
    xs = [returns_loop(row["r"], gamma) if step_return else row["r"] for row in rows]
    per_turn = []
    for b, row in enumerate(rows):
        a_e = znorm_loop(row["R"], [o["R"] for o in rows if o["g"] == row["g"]], eps=eps, single="raw")
        pool = [v for c, o in enumerate(rows) if o["g"] == row["g"] for v in xs[c]]
        per_turn.append([a_e + alpha * znorm_loop(v, pool, eps=eps) for v in xs[b]])
    return broadcast_loop(per_turn, inputs)


# -- Sotopia-RL ----------------------------------------------------------------------------------------


@CREDIT.register("sotopia_rl")
@token_level(needs=("steps", "step_rewards"))
def sotopia_rl_advantages(inputs: CreditInputs, *, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """Sotopia-RL: single-turn GRPO on utterance-level rewards.

    Reads group_ids [B], step_ids [B, T] (one turn per utterance), step_rewards [B, K] (each
    utterance's reward: the utterance-level RM's score, trained on `sotopia_utterance_rewards`
    labels) -> advantages [B, T] float32.
    A_{i,k} = (r_{i,k} - mean_g r) / (std_g r + eps)   over all utterances of the prompt group
              (same dialogue context: in the paper's single-turn GRPO each row is one sampled
              utterance); no accumulation over turns: the attributed reward already is the
              utterance's credit. A group with a single utterance: mean 0, std 1 (verl's GRPO);
              zero variance: 0. scale_by_std=False: no std division.
    Defaults: eps 1e-6, scale_by_std True (GRPO).
    Paper: "Sotopia-RL: Reward Design for Social Intelligence" (arXiv 2508.03905). Status:
    reconstructed for this multi-turn layout (confirmed: utterance rewards and single-turn GRPO;
    assumed: pooling the utterances of a prompt group). Loop reference: `sotopia_rl_advantages_loop`.
    """
    r, valid, _ = turn_table(inputs, "sotopia_rl")
    rows = valid.nonzero()[:, 0]
    g, _ = dense_ids(inputs.group_ids)
    seg, n = dense_ids(g[rows])
    return finish(place(znorm(r[valid], seg, n, eps=eps, scale=scale_by_std, single="raw"), valid), inputs)


def sotopia_rl_advantages_loop(inputs: CreditInputs, *, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """Readable reference for `sotopia_rl_advantages`."""
    rows = rows_of(inputs)
    per_turn = []
    for row in rows:
        pool = [v for o in rows if o["g"] == row["g"] for v in o["r"]]
        per_turn.append([znorm_loop(v, pool, eps=eps, scale=scale_by_std, single="raw") for v in row["r"]])
    return broadcast_loop(per_turn, inputs)


# The catalog rows of this module's methods (`credo list`).
# -- what training hands CALM and Sotopia-RL (credit/providers.py) -------------------------------------


@provides_step_rewards(calm_advantages)
def calm_judged_subgoals(ctx: StepContext, step_ids: torch.Tensor) -> torch.Tensor | None:
    """With a model judge (rl.judge = "llm[:<folder>]"): CALM's LLM verifies, for every turn, whether it
    achieves a subgoal of the task (template "subgoal": task, transcript before the turn, the turn),
    one batched call; a yes (q > 1/2) pays the bonus (`turn_rewards.calm_subgoal_rewards` with one
    subgoal per turn, so a subgoal never pays twice). The paper first has the LLM decompose the task into
    named subgoals; a yes/no judge does not name them (documented deviation). Other judges: None, the
    default source (the environment's turn rewards)."""
    if model_judge(ctx) is None:
        return None
    rows = [calm_subgoal_rewards([{(b, k)} if q > 0.5 else set() for k, q in enumerate(turns)])
            for b, turns in enumerate(judged_turn_probabilities(ctx, "subgoal"))]
    return nan_padded(rows)


@provides_step_rewards(sotopia_rl_advantages)
def sotopia_judged_attribution(ctx: StepContext, step_ids: torch.Tensor) -> torch.Tensor | None:
    """With a model judge: Sotopia-RL's attribution of the episode's outcome to each utterance (template
    "attribution": goal, conversation before the utterance, the utterance), one batched call; the
    attribution a_k = round(3 q) in {0, 1, 2, 3} and the goal score 10 R (the outcome reward in [0, 1]
    on the 0..10 scale) give r_k = a_k / 3 * 10 R (`turn_rewards.sotopia_utterance_rewards`). The paper's
    attributor is a prompted GPT-4o scoring all utterances at once; here one yes/no question per
    utterance (documented deviation). Other judges: None, the default source (the environment's turn
    rewards)."""
    if model_judge(ctx) is None:
        return None
    rows = [sotopia_utterance_rewards([int(round(3 * q)) for q in turns], 10.0 * float(ctx.batch.rewards[b]))
            for b, turns in enumerate(judged_turn_probabilities(ctx, "attribution"))]
    return nan_padded(rows)


# -- what training hands SIOP and LaRe (credit/providers.py) -----------------------------------------


@provides_step_rewards(siop_advantages)
def siop_self_induced_step_rewards(ctx: StepContext, step_ids: torch.Tensor, *, lam: float = 0.5) -> torch.Tensor:
    """step_rewards [B, K]: SIOP's verifier-free turn rewards of each multi-turn rollout, in training.

    Clusters: the rollouts' final answers (`task.final_answer(transcript, example)`) grouped by exact
    string match within the prompt group, no answer -> no cluster; q(c) = |c| / K_valid
    (`turn_rewards.siop_cluster_weights`, no evidence calibration). Potential after each turn: the
    policy's mean token log-prob of the rollout's own cluster answer (one reference, num_refs 1) written
    as the task answers ("<answer>" as context, the answer as target; `continuation_mean_logprobs`),
    at the K_b + 1 contexts prompt, prompt + turns < k, ..., the whole transcript; the rewards are
    `turn_rewards.siop_turn_rewards(q, ...)` with lam. The outcome reward is never read (SIOP's point).
    The paper clusters with an NLI model and samples 3 references per cluster; a bundled 135M model has
    no NLI head, so clusters are exact answers (the keyvalue answers are two-digit numbers, where the
    two agree). Cost: sum_b (K_b + 1) forward rows for rows with an answer, counted.
    Paper: "Self-Induced Outcome Potential" (arXiv 2605.04984).
    """
    from credo.credit.providers import continuation_mean_logprobs
    from credo.credit.turns import turn_protocol

    task = turn_protocol(ctx, "siop", "final_answer")
    src = ctx.sources
    answers = [task.final_answer(c.text, e) for c, e in zip(ctx.completions, ctx.examples)]
    q = siop_cluster_weights(answers, [int(g) for g in ctx.batch.group_ids])
    head = src.tokenizer.encode(getattr(task, "answer_prefix", "<answer>"), add_special_tokens=False)
    prefixes, targets, owners = [], [], []
    for b, c in enumerate(ctx.completions):
        spans = c.meta.get("turn_spans", [])
        if len(spans) > 1 and answers[b] is not None and q[b] > 0:  # (else the rewards need no potential)
            target = src.tokenizer.encode(answers[b], add_special_tokens=False)
            for cut in [start for start, _ in spans] + [len(c.token_ids)]:
                prefixes.append(list(c.prompt_ids) + list(c.token_ids[:cut]) + head)
                targets.append(target)
            owners.append(b)
    means = continuation_mean_logprobs(ctx, prefixes, targets) if prefixes else []
    logliks: dict[int, list[list[float]]] = {}
    at = 0
    for b in owners:
        n = len(ctx.completions[b].meta["turn_spans"]) + 1
        logliks[b] = [[m] for m in means[at:at + n]]
        at += n
    per_row = []
    for b, c in enumerate(ctx.completions):
        n = len(c.meta.get("turn_spans", []))
        per_row.append(siop_turn_rewards(float(q[b]), logliks.get(b, [[float("nan")]] * (n + 1)), num_turns=n, lam=lam))
    return pad_turn_rewards(per_row)


@provides_step_rewards(lare_advantages)
def lare_latent_step_rewards(ctx: StepContext, step_ids: torch.Tensor, *, ridge: float = 1e-2) -> torch.Tensor:
    """step_rewards [B, K]: LaRe's decoded latent rewards of each multi-turn rollout, in training.

    phi(s_k, a_k) = `task.latent_features(example, actions[:k+1], observations before turn k)` [D]; the
    linear decoder w is fitted on THIS batch so that sum_k phi_{b,k} . w ~ R_b (the outcome rewards,
    ridge; `turn_rewards.lare_fit_decoder`), and r^_{b,k} = phi_{b,k} . w (`lare_decode`).
    LaRe has an LLM write the encoder's code from the task description (and refines it); the 135M bundled
    model cannot write working code, so the task author's encoder stands in (keyvalue:
    `KeyValueTask.latent_features`, 6 features read from what the policy saw). The decoder is refitted
    each step, not trained across steps (assumption: the linear closed form; no state to checkpoint).
    Paper: "Latent Reward: LLM-Empowered Credit Assignment in Episodic RL" (arXiv 2412.11120).
    """
    from credo.credit.turns import turn_protocol

    task = turn_protocol(ctx, "lare", "latent_features")
    rows = []
    for c, example in zip(ctx.completions, ctx.examples):
        texts, keys = list(c.meta.get("turn_texts", [])), list(c.meta.get("turn_keys", []))
        rows.append([task.latent_features(example, texts[:k + 1], list(keys[k]) if k < len(keys) else [])
                     for k in range(len(texts))])
    K = max((len(r) for r in rows), default=0)
    D = len(next((f for r in rows for f in r), []))
    features = torch.zeros(len(rows), K, max(D, 1), dtype=torch.float64)
    valid = torch.zeros(len(rows), K, dtype=torch.bool)
    for b, r in enumerate(rows):
        for k, f in enumerate(r):
            features[b, k, :len(f)] = torch.tensor(f, dtype=torch.float64)
            valid[b, k] = True
    if K == 0:
        return torch.full((len(rows), 0), float("nan"))
    weights = lare_fit_decoder(features, valid, ctx.batch.rewards.to(torch.float64), ridge=ridge)
    ctx.sources.step_metrics.update({f"lare/w_{name}": float(w) for name, w in
                                     zip(getattr(task, "LATENT_FEATURES", range(D)), weights.tolist())})
    return lare_decode(features, valid, weights)


# -- what training hands OPRL (credit/providers.py) -------------------------------------------------

OPRL_PRM = "oprl_prm"  # its key in CreditSources.cache (checkpointed with the run: judges/implicit.py)


@provides_step_rewards(oprl_advantages)
def oprl_implicit_step_rewards(ctx: StepContext, step_ids: torch.Tensor, *, beta: float = 0.1, prm_lr: float = 1e-6,
                               prm_updates: int = 1) -> torch.Tensor:
    """step_rewards [B, K] from OPRL's implicit PRM, trained online: on the first call pi_phi is a copy of
    the policy (or the checkpoint's, on resume); each step it first learns from the step's outcome
    preference pairs, then scores the sampled tokens (PRIME's order), r_k = beta sum_{t in step k}
    (log pi_phi - log pi_old), pi_old = the trainer's recomputed behaviour logprobs. PRM metrics (pairs,
    loss, pre-update pair accuracy) go to the step's metrics through `sources.counters`."""
    import torch.distributed as dist

    from credo.errors import CredoError
    from credo.judges.implicit import ImplicitPRM

    src = ctx.sources
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise CredoError("rl.credit oprl with several ranks is not built yet (each rank would train its own "
                         "implicit PRM); use dist.strategy none")
    prm = src.cache.get(OPRL_PRM)
    if prm is None:
        prm = ImplicitPRM(src.model, beta=beta, lr=prm_lr, updates=prm_updates, micro_batch_size=src.micro_batch_size,
                          autocast_dtype=src.autocast_dtype, temperature=src.temperature)
        saved = src.cache.get("resumed_method_state", {}).get(OPRL_PRM)
        if saved is not None:
            prm.restore(*saved)
        src.cache[OPRL_PRM] = prm
    old = ctx.batch.behaviour_logprobs
    metrics = prm.update(ctx.batch, old)
    src.step_metrics.update(metrics)
    return oprl_step_rewards(prm.token_logprobs(ctx.batch), old, step_ids, ctx.batch.loss_mask, beta=prm.beta)


CATALOG = [
    Entry("siop", "cluster-weighted potential-difference turn rewards, z-normalised per prompt, summed to go",
          "Self-Induced Outcome Potential (arXiv 2605.04984)", "confirmed",
          "groups, turns, step_rewards (training: exact-answer clusters, the policy's log-likelihood of the "
          "cluster answer after each turn; no NLI model)",
          training="works on multi-turn tasks; answers cluster by exact match (no NLI model bundled)"),
    Entry("calm", "LLM-verified subgoal bonuses + outcome, SIOP-style turn advantage",
          "CALM: Credit Assignment with Language Models (arXiv 2409.12798)", "reconstructed",
          "groups, turns, step_rewards (rl.judge llm: its subgoal verdict per turn; otherwise the "
          "environment's turn rewards stand in)",
          training="works with rl.judge llm[:<folder>] (a subgoal verdict per turn; subgoals are not named); other judges: the environment's turn rewards"),
    Entry("lare", "least-squares-decoded latent proxy rewards, SIOP-style turn advantage",
          "Latent Reward: LLM-Empowered Credit Assignment (arXiv 2412.11120)", "reconstructed",
          "groups, turns, step_rewards (training: the task's latent features per turn, linear decoder fitted "
          "on the batch's returns)",
          training="works on keyvalue; the task's hand-written feature encoder stands in for LaRe's LLM-written one (the 135M model cannot write it)"),
    Entry("oprl", "GRPO outcome advantage + alpha * group-normalised implicit-PRM step reward",
          "Online Process Reward Learning for Agentic RL (arXiv 2509.19199)", "reconstructed",
          "groups, steps, step_rewards (implicit PRM trained online beside the policy, checkpointed)",
          training="works (implicit PRM trained online, checkpointed); one rank only (dist.strategy none)"),
    Entry("sotopia_rl", "GRPO over the prompt group's utterance-level rewards (no accumulation)",
          "Sotopia-RL: Reward Design for Social Intelligence (arXiv 2508.03905)", "reconstructed",
          "groups, turns, step_rewards (rl.judge llm: its attribution per utterance x 10 R; otherwise the "
          "environment's turn rewards stand in)",
          training="works with rl.judge llm[:<folder>] (one attribution question per utterance); other judges: the environment's turn rewards"),
]
