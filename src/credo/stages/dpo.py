"""The `dpo` stage: preference optimisation on offline pairs, or in rounds of generate -> score -> pair ->
train on the model's own samples.

Pairs (`pairs`):
- a file (JSONL, Parquet, CSV or a `datasets` folder, read by `tasks/data_files.py`) with string fields
  `prompt_field` / `chosen_field` / `rejected_field` (default prompt / chosen / rejected; TRL's
  explicit-prompt preference format); every problem names the file, row and field. The prompt is the
  user message: it is rendered with the stage task's chat format and system prompt, as RL prompts are.
- "self": each round samples `group_size` completions of `prompts_per_round` training prompts of the
  task (the stage's sampling settings, a seed derived from (run.seed, round)), scores them with the
  task's verifier, and pairs, per prompt, the highest-reward sample (chosen) with the lowest-reward one
  (rejected) when they differ; with `demo_fallback` a prompt whose samples are all wrong pairs the
  task's demonstration with its first sample. This is Metis-SPECS's self-distilled preference cold start
  ("Metis-SPECS: Decoupling Multimodal Learning via Self-distilled Preference-based Cold Start", arXiv
  2510.25801; status reconstructed: the paper's pairs are chosen for format and answer quality on its
  own data; here the task verifier labels them), and with `rounds` > 1 and `levels` (one task difficulty
  per round, e.g. [1, 2, 3]) the iterative rounds with an easy-to-hard warm-up of "Boosting Tool Use of
  Large Language Models via Iterative Reinforced Fine-Tuning" (iTool, arXiv 2501.09766; reconstructed:
  its rounds find the policy's deficiencies from its own feedback and collect fine-grained pairs on
  them with Monte Carlo Tree Search; here a pair needs a wrong sample, so pairs form exactly on the
  prompts the policy fails, from plain sampling instead of MCTS).

Loss: any pair objective of the RL registry that compares the samples of a group against a reference
(`objective`: dpo, rdpo, q_star, copg; their `objective_params`), on a batch whose groups are the pairs
(chosen reward 1, rejected 0), reduced with token_mean (these objectives put the batch loss on every
position, so the mean is the loss). Each sequence is prompt + response + EOS; the loss mask covers the
response and EOS. The reference is a frozen copy of the model at the start of each round (`reference
= "round"`, iterative DPO) or of the stage (`"initial"`). With the reference equal to the policy the
first DPO loss is exactly log 2 (tested).

Optimiser: AdamW, lr `lr` (default 1e-6, TRL DPOConfig's) with linear warm-up over the first 10% of
the stage's steps and linear decay to 0; gradient norm clipped at `max_grad_norm`. Pairs are visited
in seeded epochs, `batch_pairs` per step. After every round: a held-out evaluation (stage
"round_<r>") and a checkpoint; `checkpoint_every` adds checkpoints inside rounds; a resume is bitwise
(the round's pairs ride in the checkpoint).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, register_stage

PAIR_OBJECTIVES = ("dpo", "rdpo", "q_star", "copg")


@dataclass
class DPOParams:
    pairs: str = "self"  # "self" or a pairs file (see the module docstring)
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    objective: str = "dpo"  # one of PAIR_OBJECTIVES
    objective_params: dict = field(default_factory=dict)  # e.g. {"beta": 0.1}
    steps: int = 16  # optimizer steps per round
    batch_pairs: int = 8  # pairs per optimizer step
    lr: float = 1e-6
    max_grad_norm: float = 1.0
    rounds: int = 1
    prompts_per_round: int = 64  # "self": prompts sampled per round
    group_size: int = 4  # "self": samples per prompt
    levels: list = field(default_factory=list)  # "self": the task's level per round (easy-to-hard)
    level_param: str = "difficulty"
    demo_fallback: bool = True
    reference: str = "round"  # "round" or "initial"
    max_response_tokens: int = 256  # longer responses (file pairs) are cut
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end of each round

    def check(self) -> None:
        if self.objective not in PAIR_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not a pair objective; valid: {', '.join(PAIR_OBJECTIVES)}")
        for name in ("steps", "batch_pairs", "rounds", "prompts_per_round", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (a pair needs two samples), got {self.group_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.reference not in ("round", "initial"):
            raise ValueError(f"reference must be 'round' or 'initial', got {self.reference!r}")
        if self.levels and len(self.levels) != self.rounds:
            raise ValueError(f"levels gives {len(self.levels)} levels for {self.rounds} rounds; give one per round")
        if self.levels and self.pairs != "self":
            raise ValueError("levels (a task level per round) needs pairs = \"self\"")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


Pair = tuple[str, str, str]  # (prompt: the user message, chosen response, rejected response)


def read_pair_file(path: str, params: DPOParams) -> list[Pair]:
    """Every row's (prompt, chosen, rejected); a missing or non-string field is a CredoError naming row and field."""
    from credo.tasks.data_files import read_records

    out = []
    for record in read_records(path):
        row = []
        for name in (params.prompt_field, params.chosen_field, params.rejected_field):
            value = record.row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise CredoError(f"{record.where}: field {name!r} must be a non-empty string, got {value!r}")
            row.append(value)
        out.append(tuple(row))
    if not out:
        raise CredoError(f"{path}: no preference pairs")
    return out


def group_pairs(prompt: str, samples: Sequence[tuple[str, float, bool]], demonstration: str | None) -> list[Pair]:
    """One pair per prompt from its scored samples [(text, reward, correct)]: the first highest-reward
    sample vs the first lowest-reward one when the rewards differ; all wrong and a demonstration given:
    (demonstration, first sample). Otherwise none.

    >>> group_pairs("q", [("a", 0.0, False), ("b", 1.0, True), ("c", 1.0, True), ("d", 0.0, False)], None)
    [('q', 'b', 'a')]
    >>> group_pairs("q", [("a", 1.0, True), ("b", 1.0, True)], "demo"), group_pairs("q", [("a", 0.0, False)], "demo")
    ([], [('q', 'demo', 'a')])
    """
    if not samples:
        return []
    rewards = [r for _, r, _ in samples]
    best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
    if rewards[best] > rewards[worst]:
        return [(prompt, samples[best][0], samples[worst][0])]
    if demonstration and not any(ok for _, _, ok in samples):
        return [(prompt, demonstration, samples[0][0])]
    return []


def self_pairs(st, params: DPOParams, round_index: int) -> tuple[list[Pair], dict[str, float]]:
    """A round's pairs from the model's own samples scored by the task (see the module docstring)."""
    from credo.tasks import make_task
    from credo.train.evaluate import encode_prompts, safe_score, too_long
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    task = st.task
    if params.levels:
        level = params.levels[round_index]
        task = make_task(st.cfg.task.name, **{**st.cfg.task.params, params.level_param: level})
    examples = task.examples("train", params.prompts_per_round, seed=st.cfg.run.seed + 7919 * (round_index + 1))
    prompts = encode_prompts(st.tokenizer, task, examples)
    drop = set(too_long(prompts, max_prompt_tokens(st.model, st.sampling, st.engine)))
    examples = [e for i, e in enumerate(examples) if i not in drop]
    prompts = [p for i, p in enumerate(prompts) if i not in drop]
    st.model.eval()
    st.engine.load_weights(st.model, version=round_index)
    groups = st.engine.generate(prompts, params.group_size, st.sampling,
                                seed=step_seed(st.cfg.run.seed, 500_000 + round_index))
    pairs, correct, n = [], 0, 0
    for ex, group in zip(examples, groups):
        scored = []
        for c in group:
            score, _ = safe_score(task, c.text, ex)
            scored.append((c.text, float(score.reward), bool(score.correct)))
            correct += score.correct
            n += 1
        pairs += group_pairs(ex.prompt, scored, ex.demonstration if params.demo_fallback else None)
    return pairs, {"pairs": float(len(pairs)), "sample_accuracy": correct / max(n, 1),
                   "prompts": float(len(examples)), "skipped_prompts": float(len(drop))}


def pair_batch(tokenizer, task, pairs: Sequence[Pair], max_response_tokens: int):
    """tokens [2P, T], attention [2P, T], loss_mask [2P, T], rewards [2P], group_ids [2P]: rows 2p (chosen,
    reward 1) and 2p + 1 (rejected, reward 0) form group p; the mask covers response + EOS
    (train/sft.py::encode_pairs, pad_encoded)."""
    from credo.train.evaluate import pad_token_id
    from credo.train.sft import encode_pairs, pad_encoded

    rows = encode_pairs(tokenizer, task, [(p, r) for p, c, rj in pairs for r in (c, rj)], max_response_tokens)
    tokens, attention, loss_mask = pad_encoded(rows, pad_token_id(tokenizer))
    rewards = torch.tensor([1.0, 0.0] * len(pairs))
    group_ids = torch.arange(len(pairs)).repeat_interleave(2)
    return tokens, attention, loss_mask, rewards, group_ids


def pair_loss(model, ref_model, objective, tokenizer, task, pairs: Sequence[Pair], *, max_response_tokens: int,
              autocast_dtype) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's batch loss (scalar, with grad) on the pairs, and its metrics."""
    from credo.batch import RolloutBatch
    from credo.logprobs import token_logprobs
    from credo.objectives.reduce import reduce_loss
    from credo.rollout.torch_engine import autocast_context

    tokens, attention, loss_mask, rewards, group_ids = pair_batch(tokenizer, task, pairs, max_response_tokens)
    device = next(model.parameters()).device
    tokens, attention, loss_mask = tokens.to(device), attention.to(device), loss_mask.to(device)
    with torch.no_grad(), autocast_context(autocast_dtype, device):
        ref = token_logprobs(ref_model, tokens, attention, loss_mask).float()
    with autocast_context(autocast_dtype, device):
        logprobs = token_logprobs(model, tokens, attention, loss_mask).float()
    zeros = torch.zeros_like(ref)
    batch = RolloutBatch(tokens, attention, loss_mask, zeros, zeros, rewards.to(device), group_ids.to(device),
                         ref_logprobs=ref, old_logprobs=ref)
    terms = objective(logprobs, batch)
    loss = reduce_loss(terms.per_token, loss_mask, "token_mean")
    return loss, {k: float(v) for k, v in terms.metrics.items()}


def step_pairs(pairs: Sequence[Pair], step: int, batch: int, seed: int) -> list[Pair]:
    """The pairs of in-round step `step`: positions [step b, (step + 1) b) of seeded epochs over the pairs."""
    out, orders = [], {}
    for position in range(step * batch, (step + 1) * batch):
        epoch, index = divmod(position, len(pairs))
        if epoch not in orders:
            order = list(range(len(pairs)))
            random.Random(seed * 1_000_033 + epoch).shuffle(order)
            orders[epoch] = order
        out.append(pairs[orders[epoch][index]])
    return out


def run_dpo(cfg, params: DPOParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.objectives import OBJECTIVES
    from credo.stages.common import open_stage
    from credo.train.optim import lr_at, make_optimizer, set_lr
    from credo.train.rl import bind_params

    objective = bind_params(OBJECTIVES.get(params.objective), {}, dict(params.objective_params),
                            f"dpo stage objective_params: objective")
    file_pairs = None if params.pairs == "self" else read_pair_file(params.pairs, params)
    st = open_stage(cfg, "dpo", params, resume=resume)
    ref_model = copy.deepcopy(st.model).eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    optimizer = make_optimizer(st.model, params.lr, weight_decay=0.0)
    total = params.rounds * params.steps
    step, first_round, first_in_round, pairs = 0, 0, 0, None
    checkpoint = st.resume_from(optimizer=optimizer, extra_model=ref_model) if resume else None
    if checkpoint is not None:
        step, first_round = int(checkpoint.state["step"]), int(checkpoint.state["round"])
        first_in_round = int(checkpoint.state["in_round"])
        pairs = [tuple(p) for p in checkpoint.state["pairs"]] if checkpoint.state.get("pairs") else None
    elif cfg.run.eval_base:
        st.evaluate("base", after_step=0)
    for r in range(first_round, params.rounds):
        if first_in_round == 0 or pairs is None:
            if params.reference == "round" or r == 0:
                ref_model.load_state_dict(st.model.state_dict())
            if file_pairs is not None:
                pairs, stats = file_pairs, {"pairs": float(len(file_pairs))}
            else:
                pairs, stats = self_pairs(st, params, r)
            st.writer.write({"phase": "pairs", "step": step, "round": r, **stats})
            if not pairs:
                print(f"credo: dpo round {r}: no preference pair (every group's samples scored alike); "
                      f"the round trains nothing", flush=True)
        st.model.train()
        for s in range(first_in_round, params.steps if pairs else 0):
            lr = lr_at(step, total, peak=params.lr, warmup=max(1, total // 10), decay="linear", min_ratio=0.0)
            set_lr(optimizer, lr)
            loss, metrics = pair_loss(st.model, ref_model, objective, st.tokenizer, st.task,
                                      step_pairs(pairs, s, params.batch_pairs, cfg.run.seed * 31 + r),
                                      max_response_tokens=params.max_response_tokens, autocast_dtype=st.dtype)
            loss.backward()
            grad_norm = st.update(optimizer, params.max_grad_norm)
            step += 1
            st.writer.write({"phase": "dpo", "step": step - 1, "round": r, "lr": lr, "loss": float(loss.detach()),
                             "grad_norm": grad_norm, **metrics})
            if params.checkpoint_every and step % params.checkpoint_every == 0 and s + 1 < params.steps:
                st.save(f"step_{step}", optimizer=optimizer, extra_model=ref_model,
                        state={"step": step, "round": r, "in_round": s + 1, "pairs": [list(p) for p in pairs]})
        first_in_round = 0
        st.evaluate(f"round_{r}", after_step=step)
        st.save(f"step_{step}", optimizer=optimizer, extra_model=ref_model,
                state={"step": step, "round": r + 1, "in_round": 0, "pairs": None})
    st.summary["final"] = dict(st.summary.get(f"round_{params.rounds - 1}", {}))
    st.save("final", state={"step": step, "round": params.rounds, "in_round": 0, "pairs": None, "final": True})
    return st.finish()


register_stage(StageKind("dpo", DPOParams, run_dpo,
                         "preference optimisation (DPO / rDPO / CoPG / Q*) on file pairs or self-generated rounds"))

CATALOG = [
    Entry("dpo", "DPO-family loss on offline pairs (JSONL / Parquet / CSV / datasets) against a frozen reference",
          "Direct Preference Optimization: Your Language Model is Secretly a Reward Model (arXiv 2305.18290)",
          "confirmed", "preference pairs"),
    Entry("dpo (pairs = self)", "self-distilled preference pairs from the verifier on the model's samples, "
          "DPO before RL (Metis-SPECS cold start)",
          "Metis-SPECS: Decoupling Multimodal Learning via Self-distilled Preference-based Cold Start (arXiv 2510.25801)",
          "reconstructed", "a task with a verifier",
          training="works (pairs labelled by the task verifier; the paper's multimodal data is not used)"),
    Entry("dpo (rounds, levels)", "iterative generate / score / pair / DPO rounds with an easy-to-hard warm-up",
          "Boosting Tool Use of Large Language Models via Iterative Reinforced Fine-Tuning (arXiv 2501.09766)",
          "reconstructed", "a task with levels",
          training="works on the built-in graded tasks (plain sampling, not MCTS; no tool-use environment yet)"),
]
