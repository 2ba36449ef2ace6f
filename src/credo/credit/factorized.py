"""F-GRPO credit: separate group-relative advantages for the two phases of one rollout.

A rollout first generates a candidate subset (phase 0, "generation") and then orders it (phase 1,
"ranking"). Each phase has its own reward: an order-invariant coverage reward for the subset and a
position-aware utility reward for the ranked list. The outcome reward alone cannot tell a bad subset
from a bad order; giving each phase's tokens the group-relative advantage of its own reward can.

Name collision: "F-GRPO: Don't Let Your Policy Learn the Obvious and Forget the Rare" (arXiv
2602.06717, a focal-style difficulty scaling of group advantages) is a different method.
"""

from __future__ import annotations

import torch

from credo.entry import Entry
from credo.credit.base import CREDIT, CreditInputs, broadcast_steps, token_level
from credo.credit.providers import StepContext, provides_extras, provides_steps, token_texts
from credo.credit.outcome import grpo_advantages

PHASES = 2  # 0: candidate generation, 1: ranking


def _phase_inputs(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (phase ids [B, T], phase rewards [B, 2] float64)."""
    inputs.require("step_ids", "extras.phase_rewards", method="f_grpo")
    phase_rewards = torch.as_tensor(inputs.extras["phase_rewards"])
    B = inputs.loss_mask.shape[0]
    if tuple(phase_rewards.shape) != (B, PHASES):
        raise ValueError(
            f"credit estimator f_grpo: extras['phase_rewards'] has shape {tuple(phase_rewards.shape)}, "
            f"expected ({B}, {PHASES}) = (coverage reward of the generation phase, "
            "utility reward of the ranking phase)"
        )
    if not bool(torch.isfinite(phase_rewards).all()):
        raise ValueError(
            "credit estimator f_grpo: extras['phase_rewards'] must be finite (score a missing phase, e.g. 0)"
        )
    phases = inputs.step_ids
    if bool((phases[inputs.loss_mask.bool()] >= PHASES).any()):
        raise ValueError(
            "credit estimator f_grpo: step_ids must be phase ids (0 generation, 1 ranking, -1 no phase); "
            f"found {int(phases.max())}"
        )
    return phases, phase_rewards.to(torch.float64)


@CREDIT.register("f_grpo")
@token_level(needs=("steps", "extras"))
def f_grpo_advantages(inputs: CreditInputs, *, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """F-GRPO: a GRPO advantage per phase, each from its own reward, on that phase's tokens.

    inputs.step_ids [B, T]: the phase of each policy token (0 candidate generation, 1 ranking; -1 on
    tokens of no phase); inputs.extras["phase_rewards"] [B, 2]: (coverage reward R_gen, utility reward
    R_rank) per row; inputs.group_ids [B]; inputs.loss_mask [B, T] -> advantages [B, T] float32.
    A^k_i = (R^k_i - mean_g R^k) / (std_g R^k + eps)   for k in {gen, rank}, within the row's group g
    A_{i,t} = A^{phase(t)}_i on the loss tokens (0 off the mask and on tokens of no phase)
    Each phase's statistics are computed independently (as `grpo_advantages`, unbiased std): changing
    the utility rewards never changes a generation-phase advantage, and vice versa. A group of one
    keeps its raw phase rewards; a phase whose rewards are equal across the group gets 0. Every row
    counts in both phases' statistics, also one without tokens of a phase (its reward still says how
    the group did); such a row simply has no token to carry that advantage.
    scale_by_std=False gives Dr.GRPO-style centring only.
    Defaults: eps 1e-6, scale_by_std True (GRPO's).
    Paper: "F-GRPO: Factorized Group-Relative Policy Optimization for Unified Candidate Generation and
    Ranking" (arXiv 2605.12995). Status: reconstructed (the abstract states separate group-relative
    advantages for generation and ranking; the z-score form per phase is assumed).
    """
    phases, phase_rewards = _phase_inputs(inputs)
    per_phase = torch.stack(
        [grpo_advantages(phase_rewards[:, k], inputs.group_ids, eps=eps, scale_by_std=scale_by_std)
         for k in range(PHASES)],
        dim=1,
    )  # [B, 2]: one advantage per row and phase
    return broadcast_steps(per_phase, phases, inputs.loss_mask.bool())


def f_grpo_advantages_loop(inputs: CreditInputs, *, eps: float = 1e-6, scale_by_std: bool = True) -> list[list[float]]:
    """Readable reference for `f_grpo_advantages`: plain Python over rows, phases and tokens."""
    phases, phase_rewards = _phase_inputs(inputs)
    rewards, groups = phase_rewards.tolist(), inputs.group_ids.tolist()
    per_phase = []
    for i in range(len(rewards)):
        row = []
        for k in range(PHASES):
            members = [rewards[j][k] for j in range(len(rewards)) if groups[j] == groups[i]]
            if len(members) == 1:
                mean, std = 0.0, 1.0
            else:
                mean = sum(members) / len(members)
                std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
            if len(members) > 1 and max(members) == min(members):
                row.append(0.0)
            else:
                row.append((rewards[i][k] - mean) / (std + eps) if scale_by_std else rewards[i][k] - mean)
        per_phase.append(row)
    mask, ids = inputs.loss_mask.tolist(), phases.tolist()
    return [
        [per_phase[b][ids[b][t]] if mask[b][t] and ids[b][t] >= 0 else 0.0 for t in range(len(mask[b]))]
        for b in range(len(mask))
    ]


# -- what training hands this estimator (credit/providers.py) ----------------------------------------


@provides_steps(f_grpo_advantages)
def phase_steps(ctx: StepContext) -> torch.Tensor:
    """F-GRPO's two phases: 0 (candidate generation) before the first token at which the completion's
    text contains `phase_marker` (default "<answer>": the reasoning, then the answer), 1 from there on."""
    marker = ctx.sources.phase_marker
    cache: dict[int, str] = {}
    batch = ctx.batch
    step_ids = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    for b in range(len(batch)):
        cols = torch.nonzero(batch.loss_mask[b]).flatten().tolist()
        text, phase = "", 0
        for c, piece in zip(cols, token_texts(ctx.sources.tokenizer, batch.tokens[b, cols].tolist(), cache)):
            text += piece
            if phase == 0 and marker in text:
                phase = 1
            step_ids[b, c] = phase
    return step_ids


@provides_extras(f_grpo_advantages)
def phase_rewards(ctx: StepContext) -> dict:
    """phase_rewards [B, 2]: the task's `phase_scores(example, completion) -> (coverage, utility)` when
    it has one; otherwise (format reward, outcome reward): the first phase is judged on producing a
    well-formed answer, the second on the answer itself."""
    task = ctx.sources.task
    rows = []
    for b, completion in enumerate(ctx.completions):
        example = ctx.examples[b]
        try:
            if hasattr(task, "phase_scores"):
                rows.append([float(x) for x in task.phase_scores(example, completion.text)])
            else:
                score = task.score(completion.text, example)
                rows.append([float(score.formatted), float(score.reward)])
        except Exception:  # model output must never crash training: a failed verifier scores 0
            rows.append([0.0, 0.0])
    return {"phase_rewards": torch.tensor(rows, dtype=torch.float32).nan_to_num(0.0)}


# The catalog rows of this module's methods (`credo list`).
CATALOG = [
    Entry("f_grpo", "separate group-relative advantages for the candidate-generation phase (coverage reward) "
          "and the ranking phase (utility reward), each on its own phase's tokens; loss: objective f_grpo",
          "F-GRPO: Factorized Group-Relative Policy Optimization (arXiv 2605.12995)", "reconstructed",
          "groups; phase ids as step_ids (0 gen / 1 rank); extras['phase_rewards'] [B, 2]"),
]
