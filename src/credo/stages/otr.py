"""The `otr` stage: One-Token Rollout, supervised fine-tuning as token-level on-policy policy gradient.

Paper: "One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient" (OTR, arXiv
2509.26313). Each position of a supervised response is a one-step RL episode: the state is the prompt
plus the ground-truth prefix y*_<t (one teacher-forced forward gives every position's full-vocabulary
distribution; nothing is generated), K candidate tokens are sampled from the current policy at
temperature T, and a candidate is rewarded by whether it equals the ground-truth token y*_t:

    a_1 .. a_K ~ softmax(z_t / T)                      (z_t: the policy's logits at position t, detached)
    r(a) = 1 if a = y*_t, else -penalty
    L_t  = -(1/K) sum_k r(a_k) log pi(a_k | x, y*_<t)  -  gt_weight log pi(y*_t | x, y*_<t)
    L    = mean of L_t over the response positions of the step (response tokens + EOS; global count)

pi is the policy at temperature 1 (what is trained and evaluated); T only shapes the candidates. In
expectation at T = 1 the candidate term is -(1 + penalty) pi(y*) log pi(y*) with pi(y*) held constant in
the gradient (sum_a pi(a) grad log pi(a) = 0), so the penalty also rescales the positive signal, and the
ground-truth term keeps a signal where the policy gives y*_t almost no mass (no candidate would hit it).

Status: the structure (K candidates per position from the current policy, reward by equality with the
ground truth, a penalty term for wrong candidates, a ground-truth term) is from the paper text as the
spec records it (objectives.md section 27); reconstructed, with every choice a parameter: the penalty
value (0.1), K (16), T (1.0), the ground-truth term's weight (default 1/K: the ground truth counted as
one more candidate with reward 1, the paper's "the ground-truth token is also included" read literally),
sampling with replacement, the loss on pi at temperature 1, the mean over positions.

Data (`data`): "task" (the demonstrations of `pool` training examples of the stage's task, default
steps x batch_size) or a JSONL / Parquet / CSV / `datasets` file with string fields `prompt_field` /
`response_field` (tasks/data_files.py); the prompt is rendered with the task's chat format as RL prompts
are, the loss covers response + EOS. Rows are visited in seeded epochs (`batch_size` per step); the
candidates of step s come from a generator seeded by (run.seed, s), drawn in micro-batch order, so a
resume after SIGKILL is bitwise (nothing else carries across steps but weights, AdamW and RNGs, all in
the checkpoint). Optimiser: AdamW at `lr` with a linear warm-up over 10% of the steps then cosine decay
to 10% (the warm-up stage's schedule), gradient norm clipped at `max_grad_norm`. Logged per step: loss,
nll (the plain SFT loss on the same tokens), gt_prob (mean pi(y*_t)), hit_rate (fraction of candidates
equal to y*_t), tokens, lr, grad_norm. Checkpoints every `checkpoint_every` steps and at the end;
held-out evaluations every `eval_every` steps and at the end (stage "otr").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from credo.entry import Entry
from credo.stages.base import StageKind, register_stage


@dataclass
class OTRParams:
    data: str = "task"  # "task" or a data file of prompt / response rows
    prompt_field: str = "prompt"
    response_field: str = "response"
    pool: int = 0  # data "task": training examples whose demonstrations are used; 0 = steps x batch_size
    steps: int = 16  # optimizer steps
    batch_size: int = 8  # supervised rows per step
    samples: int = 16  # K candidate tokens per position (reconstructed default)
    temperature: float = 1.0  # T of the candidate distribution softmax(z / T) (reconstructed default)
    penalty: float = 0.1  # reward -penalty of a candidate that is not the ground truth (reconstructed default)
    gt_weight: float | None = None  # weight of -log pi(y*_t); None = 1 / samples (reconstructed default)
    lr: float = 3e-5
    max_grad_norm: float = 1.0
    max_response_tokens: int = 256  # longer responses are cut (the EOS is kept)
    micro_batch: int = 0  # rows per forward / backward; 0 = the whole step at once
    checkpoint_every: int = 0  # steps; 0 = only at the end
    eval_every: int = 0  # steps; 0 = only at the end

    def check(self) -> None:
        for name in ("steps", "batch_size", "samples", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("pool", "micro_batch", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be a positive number, got {self.max_grad_norm}")
        if not (self.penalty >= 0 and math.isfinite(self.penalty)):
            raise ValueError(f"penalty must be a number >= 0 (the reward of a wrong candidate is -penalty), "
                             f"got {self.penalty}")
        if self.gt_weight is not None and not (self.gt_weight >= 0 and math.isfinite(self.gt_weight)):
            raise ValueError(f"gt_weight must be a number >= 0 or null (1 / samples), got {self.gt_weight}")
        if not self.data.strip():
            raise ValueError("data must be \"task\" or a data file")

    @property
    def ground_truth_weight(self) -> float:
        return 1.0 / self.samples if self.gt_weight is None else float(self.gt_weight)


# ---- the math ----

def draw_candidates(logprobs: torch.Tensor, *, samples: int, temperature: float,
                    generator: torch.Generator) -> torch.Tensor:
    """K candidate tokens per position from softmax(log pi / T) = softmax(z / T), with replacement:
    logprobs [N, V] (log pi at temperature 1; detached here) -> candidates [N, K] long."""
    if logprobs.shape[0] == 0:
        return torch.zeros((0, samples), dtype=torch.long, device=logprobs.device)
    probs = torch.softmax(logprobs.detach().float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), samples, replacement=True, generator=generator).to(logprobs.device)


def candidate_rewards(candidates: torch.Tensor, targets: torch.Tensor, *, penalty: float,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """r(a) = 1 where a candidate equals its position's ground-truth token, else -penalty:
    candidates [N, K], targets [N] -> [N, K] of `dtype`."""
    hit = candidates == targets[:, None]
    return torch.where(hit, torch.ones_like(hit, dtype=dtype), torch.full_like(hit, -float(penalty), dtype=dtype))


def otr_loss(logprobs: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor, *, penalty: float = 0.1,
             gt_weight: float = 1.0 / 16) -> torch.Tensor:
    """OTR's per-position loss [N]: -(1/K) sum_k r(a_k) log pi(a_k) - gt_weight log pi(y*).

    logprobs [N, V] (log pi, differentiable), candidates [N, K] long, targets [N] long. The gradient is the
    policy-gradient estimate -(1/K) sum_k r(a_k) grad log pi(a_k) plus the weighted SFT gradient of y*."""
    K = candidates.shape[1]
    rewards = candidate_rewards(candidates, targets, penalty=penalty, dtype=logprobs.dtype)
    picked = logprobs.gather(-1, candidates)  # [N, K]
    truth = logprobs.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    return -(rewards * picked).sum(-1) / K - gt_weight * truth


def otr_expected_loss(logprobs: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                      penalty: float = 0.1, gt_weight: float = 1.0 / 16) -> torch.Tensor:
    """The K -> infinity limit of `otr_loss` [N]: -sum_v q(v) r(v) log pi(v) - gt_weight log pi(y*), with
    q = softmax(log pi / T) held constant (the candidates' distribution carries no gradient)."""
    q = torch.softmax(logprobs.detach() / temperature, dim=-1)
    vocab = torch.arange(logprobs.shape[-1], device=logprobs.device)
    r = torch.where(vocab[None, :] == targets[:, None], 1.0, -float(penalty)).to(logprobs.dtype)
    truth = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    return -(q * r * logprobs).sum(-1) - gt_weight * truth


# ---- the stage ----

def otr_backward(model, rows, params: OTRParams, *, dtype, generator: torch.Generator, pad_id: int
                 ) -> dict[str, float]:
    """Backpropagate the step's mean OTR loss over every response position of `rows` (encoded (ids, start)
    pairs), micro-batch by micro-batch with the global position count; returns the step's metrics."""
    from credo.logprobs import policy_outputs
    from credo.rollout.torch_engine import autocast_context
    from credo.train.sft import pad_encoded

    total = float(sum(len(ids) - start for ids, start in rows))
    size = params.micro_batch if 0 < params.micro_batch < len(rows) else len(rows)
    device = next(model.parameters()).device
    sums = {"loss": 0.0, "nll": 0.0, "gt_prob": 0.0, "hit_rate": 0.0}
    for a in range(0, len(rows), size):
        tokens, attention, mask = pad_encoded(rows[a: a + size], pad_id)
        tokens, attention, mask = tokens.to(device), attention.to(device), mask.to(device)
        with autocast_context(dtype, device):
            out = policy_outputs(model, tokens, attention, mask, temperature=1.0, needs=frozenset({"full_logprobs"}))
        logprobs = out.full_logprobs.float()  # [N, V], N = the masked positions in row-major order
        targets = tokens[:, 1:][mask[:, 1:]]  # [N]: the token each of those positions scores (batch.py's shift)
        candidates = draw_candidates(logprobs, samples=params.samples, temperature=params.temperature,
                                     generator=generator)
        per_position = otr_loss(logprobs, candidates, targets, penalty=params.penalty,
                                gt_weight=params.ground_truth_weight)
        (per_position.sum() / total).backward()
        with torch.no_grad():
            truth = logprobs.gather(-1, targets[:, None]).squeeze(-1)
            sums["loss"] += float(per_position.sum())
            sums["nll"] += float(-truth.sum())
            sums["gt_prob"] += float(truth.exp().sum())
            sums["hit_rate"] += float((candidates == targets[:, None]).float().mean(-1).sum())
    return {**{k: v / max(total, 1.0) for k, v in sums.items()}, "tokens": total}


def run_otr(cfg, params: OTRParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.stages.common import open_stage
    from credo.stages.dpo import step_pairs
    from credo.train.evaluate import pad_token_id
    from credo.train.optim import lr_at, make_optimizer, set_lr
    from credo.train.rl import step_seed
    from credo.train.sft import encode_pairs, supervised_pairs

    st = open_stage(cfg, "otr", params, resume=resume)
    pairs = supervised_pairs(params.data, st.task, n=params.pool or params.steps * params.batch_size,
                             seed=cfg.run.seed + 40_000, prompt_field=params.prompt_field,
                             response_field=params.response_field, where="otr stage data")
    rows = encode_pairs(st.tokenizer, st.task, pairs, params.max_response_tokens)
    st.summary["rows"] = len(rows)
    optimizer = make_optimizer(st.model, params.lr, weight_decay=0.0)
    step = 0
    checkpoint = st.resume_from(optimizer=optimizer) if resume else None
    if checkpoint is not None:
        step = int(checkpoint.state["step"])
    elif cfg.run.eval_base:
        st.evaluate("base", after_step=0)
    while step < params.steps:
        started = time.perf_counter()
        lr = lr_at(step, params.steps, peak=params.lr, warmup=max(1, params.steps // 10), decay="cosine",
                   min_ratio=0.1)
        set_lr(optimizer, lr)
        st.model.train()
        batch = step_pairs(rows, step, params.batch_size, cfg.run.seed * 31 + 7)
        generator = torch.Generator().manual_seed(step_seed(cfg.run.seed, step))  # the step's candidates
        metrics = otr_backward(st.model, batch, params, dtype=st.dtype, generator=generator,
                               pad_id=pad_token_id(st.tokenizer))
        grad_norm = st.update(optimizer, params.max_grad_norm)
        step += 1
        st.writer.write({"phase": "otr", "step": step - 1, "lr": lr, "grad_norm": grad_norm, **metrics,
                         "step_time": time.perf_counter() - started})
        if params.eval_every and step % params.eval_every == 0 and step < params.steps:
            st.evaluate(f"step_{step}", after_step=step)
        if params.checkpoint_every and step % params.checkpoint_every == 0 and step < params.steps:
            st.save(f"step_{step}", optimizer=optimizer, state={"step": step})
    return st.conclude("otr", step=step, optimizer=optimizer, state={})


register_stage(StageKind("otr", OTRParams, run_otr,
                         "One-Token Rollout: SFT data as token-level policy gradient (K candidates per position)"))

CATALOG = [
    Entry("otr", "SFT as token-level on-policy policy gradient: at every response position K candidates from "
          "the policy at temperature T, reward 1 if equal to the ground-truth token else -penalty, plus a "
          "ground-truth term; one teacher-forced forward, no generation",
          "One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient (arXiv 2509.26313)",
          "reconstructed", "supervised data (the task's demonstrations or a prompt / response file)",
          training="works (penalty 0.1, K 16, T 1, ground-truth weight 1/K and the loss on pi at T = 1 are "
                   "our reading; the paper's values are unconfirmed)"),
]
