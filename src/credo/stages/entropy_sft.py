"""The `entropy_sft` stage: Light-IF's entropy-preserving supervised fine-tuning (Entropy-SFT).

Paper: "Light-IF: Endowing LLMs with Generalizable Reasoning via Preview and Self-Checking for Complex
Instruction Following" (arXiv 2508.03178; code github.com/Qihoo360/Light-IF,
coldstart/LLAMA-Factory/src/llamafactory/train/sft/custom_entropy_trainer.py).

Plain SFT lowers the loss on every response token, including the high-entropy "fork" tokens where the
policy still spreads its mass; the distribution collapses and the RL stage that follows explores less.
Entropy-SFT trains only a fraction of the tokens of each batch, chosen by their cross-entropy against
their entropy. Over the N response tokens of a batch (CE_t = -log p(y_t), H_t = the entropy of the
policy's next-token distribution at t, detached):

    delta_t = CE_t - entropy_coef * H_t
    keep    = the k = max(1, floor(token_ratio * N)) tokens with the largest delta (ties: the earlier token)
    loss    = mean_{t in keep} CE_t

So a token is trained when the model is wrong about it (high CE) and confident (low H); tokens the
model is unsure about (high H) are left alone, which keeps their entropy. Defaults are the official
code's: token_ratio 0.2, entropy_coef 1.0 (FinetuningArguments). Status: confirmed (the selection and the
loss are the official `build_entropy_loss_func`; H is computed on the full vocabulary, as there).
Departures: the selection runs over the whole optimizer batch (the official one runs per micro-batch of
HF Trainer); ties are broken deterministically (torch.topk leaves them unspecified); the loss divides by
k (the official divides by int(num_items_in_batch * ratio) when the Trainer passes the item count, by k
otherwise). token_ratio = 1 is plain SFT (the token mean of CE), which the tests compare against.

Data (`data`): "task" = the stage task's demonstrations (`pool` training examples, default steps x
batch_size, like the warm-up), or a file (JSONL / Parquet / CSV / datasets folder, tasks/data_files.py)
with string fields `prompt_field` / `response_field`; the prompt is the user message, rendered with the
stage task's chat format and system prompt. Each row is prompt + response + EOS; the loss mask covers
the response and EOS (cut at `max_response_tokens`). Examples are visited in seeded epochs,
`batch_size` per step.

Optimiser: AdamW, lr `lr` with the warm-up's schedule (linear warm-up over the first 10% of steps,
cosine decay to 10%), gradient norm clipped at `max_grad_norm`. Every step logs the loss, the mean
entropy and CE of all response positions and of the trained ones (`entropy_all`, `entropy_kept`,
`ce_all`, `ce_kept`) and the kept fraction. Held-out evaluation after the stage (stage "entropy_sft",
also `summary["final"]`) and every `eval_every` steps; checkpoints every `checkpoint_every` steps and at
the end; a resume is bitwise (nothing but the weights and the optimizer carries state).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, register_stage


@dataclass
class EntropySFTParams:
    data: str = "task"  # "task" (its demonstrations) or a prompt/response file (see the module docstring)
    prompt_field: str = "prompt"
    response_field: str = "response"
    pool: int = 0  # "task": demonstrations drawn; 0 = steps x batch_size
    steps: int = 20  # optimizer steps
    batch_size: int = 8  # examples per step
    lr: float = 3e-5  # credo's warm-up lr (warmup.lr); the paper's LLaMA-Factory lr is not published
    max_grad_norm: float = 1.0
    token_ratio: float = 0.2  # the fraction of a batch's response tokens trained (Light-IF's default)
    entropy_coef: float = 1.0  # delta = CE - entropy_coef * H (Light-IF's default)
    max_response_tokens: int = 256
    eval_every: int = 0  # steps; 0 = only after the stage
    checkpoint_every: int = 0  # steps; 0 = only at the end

    def check(self) -> None:
        for name in ("steps", "batch_size", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("pool", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.token_ratio <= 1.0:
            raise ValueError(f"token_ratio must be in (0, 1], got {self.token_ratio}")
        if not math.isfinite(self.entropy_coef):
            raise ValueError(f"entropy_coef must be a finite number, got {self.entropy_coef}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not self.data.strip():
            raise ValueError("data must be \"task\" or a prompt/response file")


# ---- the token rule and the loss (pure functions) ----

def keep_count(n: int, token_ratio: float) -> int:
    """k = max(1, floor(n token_ratio)) for n > 0 (the official `max(int(ratio * N), 1)`), 0 for n = 0.

    >>> keep_count(10, 0.2), keep_count(4, 0.2), keep_count(0, 0.2), keep_count(7, 1.0)
    (2, 1, 0, 7)
    """
    return 0 if n <= 0 else max(1, int(token_ratio * n))


def select_tokens(ce: torch.Tensor, entropy: torch.Tensor, *, token_ratio: float = 0.2,
                  entropy_coef: float = 1.0) -> torch.Tensor:
    """keep [N] bool: the k = keep_count(N) tokens with the largest delta = ce - entropy_coef * entropy.

    ce [N], entropy [N] (the response tokens of a batch, flattened). Ties keep the earlier token.
    """
    keep = torch.zeros(ce.shape, dtype=torch.bool, device=ce.device)
    k = keep_count(ce.numel(), token_ratio)
    if k:
        delta = ce.detach().double() - entropy_coef * entropy.detach().double()
        keep[torch.sort(delta, descending=True, stable=True).indices[:k]] = True
    return keep


def entropy_sft_loss(logprobs: torch.Tensor, entropy: torch.Tensor, loss_mask: torch.Tensor, *,
                     token_ratio: float = 0.2, entropy_coef: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, keep [B, T], metrics) on one batch.

    logprobs [B, T] (log p of each target token, shift convention of batch.py), entropy [B, T] (the
    policy's next-token entropy at the same positions), loss_mask [B, T] bool (response tokens).
    loss = mean over the kept tokens of -logprobs; keep = select_tokens over the masked positions.
    An empty mask gives a zero loss (still differentiable) and no kept token.
    """
    where = loss_mask.bool()
    ce, ent = -logprobs[where], entropy[where]  # [N], row-major order of the mask
    kept = select_tokens(ce, ent, token_ratio=token_ratio, entropy_coef=entropy_coef)
    keep = torch.zeros_like(where)
    keep[where] = kept
    n, k = ce.numel(), int(kept.sum())
    loss = ce[kept].sum() / max(k, 1) if k else (logprobs * 0.0).sum()
    mean = lambda x: float(x.detach().mean()) if x.numel() else 0.0  # noqa: E731
    metrics = {"tokens": float(n), "kept_tokens": float(k), "kept_fraction": k / n if n else 0.0,
               "ce_all": mean(ce), "ce_kept": mean(ce[kept]), "entropy_all": mean(ent),
               "entropy_kept": mean(ent[kept])}
    return loss, keep, metrics


# ---- data ----

def read_sft_file(path: str, params: EntropySFTParams) -> list[tuple[str, str]]:
    """Every row's (prompt, response); a missing or non-string field is a CredoError naming row and field."""
    from credo.tasks.data_files import read_records

    out = []
    for record in read_records(path):
        row = []
        for name in (params.prompt_field, params.response_field):
            value = record.row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise CredoError(f"{record.where}: field {name!r} must be a non-empty string, got {value!r}")
            row.append(value)
        out.append((row[0], row[1]))
    if not out:
        raise CredoError(f"{path}: no prompt/response rows")
    return out


def sft_batch(tokenizer, task, items: Sequence[tuple[str, str]], max_response_tokens: int):
    """tokens [B, T], attention [B, T], loss_mask [B, T] for rendered prompt + response + EOS; the mask
    covers the response and EOS (the response cut to max_response_tokens - 1 tokens)."""
    from credo.train.evaluate import pad_token_id
    from credo.train.sft import encode_pairs, pad_encoded

    return pad_encoded(encode_pairs(tokenizer, task, list(items), max_response_tokens), pad_token_id(tokenizer))


def training_items(st, params: EntropySFTParams) -> list[tuple[str, str]]:
    if params.data != "task":
        return read_sft_file(params.data, params)
    size = params.pool or params.steps * params.batch_size
    return [(e.prompt, e.demonstration) for e in st.task.examples("train", size, seed=st.cfg.run.seed + 10_000)]


def sft_step(model, tokenizer, task, items, params: EntropySFTParams, dtype) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's Entropy-SFT loss (with grad) and metrics."""
    from credo.logprobs import policy_outputs
    from credo.rollout.torch_engine import autocast_context

    tokens, attention, mask = sft_batch(tokenizer, task, items, params.max_response_tokens)
    device = next(model.parameters()).device
    tokens, attention, mask = tokens.to(device), attention.to(device), mask.to(device)
    with autocast_context(dtype, device):
        out = policy_outputs(model, tokens, attention, mask)
    loss, _, metrics = entropy_sft_loss(out.logprobs.float(), out.entropy.float(), mask,
                                        token_ratio=params.token_ratio, entropy_coef=params.entropy_coef)
    return loss, metrics


def run_entropy_sft(cfg, params: EntropySFTParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.stages.common import open_stage
    from credo.stages.dpo import step_pairs
    from credo.train.optim import lr_at, make_optimizer, set_lr

    if params.data != "task":
        read_sft_file(params.data, params)  # a bad file fails before any model loads
    st = open_stage(cfg, "entropy_sft", params, resume=resume)
    items = training_items(st, params)
    optimizer = make_optimizer(st.model, params.lr, weight_decay=0.0)
    step = 0
    checkpoint = st.resume_from(optimizer=optimizer) if resume else None
    if checkpoint is not None:
        step = int(checkpoint.state["step"])
    elif cfg.run.eval_base:
        st.evaluate("base", after_step=0)
    st.model.train()
    while step < params.steps:
        started = time.perf_counter()
        lr = lr_at(step, params.steps, peak=params.lr, warmup=max(1, params.steps // 10), decay="cosine",
                   min_ratio=0.1)
        set_lr(optimizer, lr)
        loss, metrics = sft_step(st.model, st.tokenizer, st.task, step_pairs(items, step, params.batch_size,
                                                                              cfg.run.seed * 31 + 5),
                                 params, st.dtype)
        loss.backward()
        grad_norm = st.update(optimizer, params.max_grad_norm, apply=metrics["kept_tokens"] > 0)
        step += 1
        st.writer.write({"phase": "entropy_sft", "step": step - 1, "lr": lr, "loss": float(loss.detach()),
                         "grad_norm": grad_norm, **metrics, "step_time": time.perf_counter() - started})
        if params.eval_every and step % params.eval_every == 0 and step < params.steps:
            st.evaluate(f"step_{step}", after_step=step)
            st.model.train()
        if params.checkpoint_every and step % params.checkpoint_every == 0 and step < params.steps:
            st.save(f"step_{step}", optimizer=optimizer, state={"step": step})
    return st.conclude("entropy_sft", step=step, optimizer=optimizer, state={})


register_stage(StageKind("entropy_sft", EntropySFTParams, run_entropy_sft,
                         "Light-IF's entropy-preserving SFT: train only the top token_ratio of response tokens "
                         "by CE - entropy_coef * H (demonstrations or a prompt/response file)"))

CATALOG = [
    Entry("entropy_sft", "entropy-preserving SFT: per batch, only the top token_ratio (0.2) of response tokens by "
          "CE - entropy_coef (1.0) x entropy are trained (confident mistakes), the uncertain ones keep their entropy",
          "Light-IF: Endowing LLMs with Generalizable Reasoning via Preview and Self-Checking for Complex Instruction "
          "Following (arXiv 2508.03178)", "confirmed", "demonstrations (the task's, or a prompt/response file)",
          training="works (the official selection and loss; selection over the whole optimizer batch)"),
]
