"""Supervised warm-up (cold start): next-token loss on demonstration completions only.

As in "Warm Up Before You Train" (arXiv 2505.13718): a short supervised stage teaches the answer
format before RL, and is kept short so RL still has room to improve. The loss is the token mean of
-log p over completion tokens (prompt tokens are context, never targets); the demonstration is
followed by the tokenizer's EOS so the model learns to stop.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from credo.logprobs import token_logprobs
from credo.rollout.torch_engine import autocast_context
from credo.tasks.base import Example, Task, render_prompt
from credo.train.optim import lr_at, make_optimizer, set_lr


def read_demonstrations(path) -> list[Example]:
    """`warmup.demonstrations`: the file's rows as Examples (prompt, answer or "", demonstration, meta
    {"source": row["source"]} when given); raises CredoError naming the file, row and field of a bad row
    and of an empty file."""
    from credo.errors import CredoError
    from credo.tasks.data_files import read_records, type_name

    out = []
    for record in read_records(path):
        values = {}
        for name, required in (("prompt", True), ("demonstration", True), ("answer", False)):
            value = record.row.get(name)
            if value is None and not required:
                value = ""
            if not isinstance(value, str) or (required and not value.strip()):
                raise CredoError(f"{record.where}: field {name!r} must be a non-empty string, got "
                                 f"{type_name(value) if not isinstance(value, str) else repr(value)}")
            values[name] = value
        meta = {"source": record.row["source"]} if isinstance(record.row.get("source"), str) else {}
        out.append(Example(values["prompt"], values["answer"], values["demonstration"], meta))
    if not out:
        raise CredoError(f"warmup.demonstrations: {path} holds no rows")
    return out


def demonstration_batch(tokenizer, task: Task, examples: Sequence[Example]):
    """tokens [B, T], attention_mask [B, T], loss_mask [B, T] for prompt + demonstration + EOS."""
    rows = []
    for ex in examples:
        prompt = tokenizer(render_prompt(tokenizer, task, ex), add_special_tokens=False)["input_ids"]
        answer = tokenizer(ex.demonstration, add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return pad_encoded(rows, pad)


def run_warmup(
    model,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    autocast_dtype,
    on_step: Callable[[dict], None],
) -> None:
    """`steps` AdamW steps of supervised warm-up; `on_step` receives each step's metrics."""
    if steps <= 0:
        return
    optimizer = make_optimizer(model, lr, weight_decay=0.0)
    order = list(examples)
    random.Random(seed).shuffle(order)
    model.train()
    device = next(model.parameters()).device
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, peak=lr, warmup=max(1, steps // 10), decay="cosine", min_ratio=0.1))
        chunk = [order[(step * batch_size + k) % len(order)] for k in range(batch_size)]
        tokens, attention, loss_mask = demonstration_batch(tokenizer, task, chunk)
        with autocast_context(autocast_dtype, device):
            logprobs = token_logprobs(model, tokens, attention, loss_mask)
        loss = -(logprobs * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        on_step({"phase": "warmup", "step": step, "loss": loss.item(), "grad_norm": float(grad_norm)})


# -- supervised pairs from a task or a file (CHORD's expert rows, the OTR stage) ---------------------

SupervisedPair = tuple[str, str]  # (prompt: the user message, response: the assistant's completion)


def supervised_pairs(source: str, task: Task, *, n: int, seed: int, prompt_field: str = "prompt",
                     response_field: str = "response", where: str = "data") -> list[SupervisedPair]:
    """(prompt, response) pairs: source "task" = the demonstrations of `n` training examples of the task
    (seeded by `seed`); else a JSONL / Parquet / CSV / `datasets` file read by tasks/data_files.py, every
    row with string fields `prompt_field` and `response_field`. Problems are CredoErrors naming `where`
    (the config field) and, for a file, the row and field."""
    from credo.errors import CredoError
    from credo.tasks.data_files import read_records

    if source == "task":
        examples = task.examples("train", n, seed=seed)
        pairs = [(ex.prompt, ex.demonstration) for ex in examples if ex.demonstration and ex.demonstration.strip()]
        if not pairs:
            raise CredoError(f"{where} = 'task': task {getattr(task, 'name', task)!r} gives no demonstrations for "
                             f"its training prompts; give a file with {prompt_field!r} / {response_field!r} fields")
        return pairs
    pairs = []
    for record in read_records(source):
        row = []
        for name in (prompt_field, response_field):
            value = record.row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise CredoError(f"{where}: {record.where}: field {name!r} must be a non-empty string, got {value!r}")
            row.append(value)
        pairs.append((row[0], row[1]))
    if not pairs:
        raise CredoError(f"{where}: {source} holds no rows")
    return pairs


def encode_pairs(tokenizer, task: Task, pairs: Sequence[SupervisedPair], max_response_tokens: int
                 ) -> list[tuple[list[int], int]]:
    """Each pair as (token ids of chat prompt + response + EOS, index of the first response token); a
    response longer than max_response_tokens - 1 tokens is cut (the EOS is kept)."""
    out = []
    for prompt, response in pairs:
        head = tokenizer(render_prompt(tokenizer, task, Example(prompt, "", "")), add_special_tokens=False)["input_ids"]
        body = tokenizer(response, add_special_tokens=False)["input_ids"][: max(max_response_tokens - 1, 0)]
        out.append((list(head) + list(body) + [tokenizer.eos_token_id], max(len(head), 1)))
    return out


def pad_encoded(rows: Sequence[tuple[list[int], int]], pad_id: int):
    """tokens [B, T], attention_mask [B, T], loss_mask [B, T] (response + EOS) of encoded rows, right-padded."""
    T = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.bool)
    loss_mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (ids, start) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = True
        loss_mask[i, start: len(ids)] = True
    return tokens, attention, loss_mask
