"""RMT: reinforcement learning plus next-token prediction in every RL optimizer step, under a dynamic
token budget (`rl.sft_mix = "rmt"`, `rl.sft_mix_params`).

Paper: "Reinforcement Mid-Training" (RMT, arXiv 2509.24375; ICLR 2026). No official code is public
("Code: TBD" at the time of writing), so every part below is from the paper's text as summarised in
public reviews of it; status per part:

Dynamic token budget (reconstructed: the formula is the paper's, its defaults are not recovered).
The rollout's completion limit at RL step t decays exponentially with training progress:

    B_t = max(B_min, floor(B_0 gamma^((t / T)^k))),   t = 0 .. T - 1 (0-based RL step), T = rl.steps

B_0 is the run's own sampling.max_new_tokens (the budget of the first step), B_min >= 1 the floor,
gamma in (0, 1) the decay (1 here = a fixed budget, the switch-off), k > 0 the shape (k = 1: a plain
exponential in t; k > 1 keeps the budget high longer). The paper writes the exponent as "t / T^k";
read literally with T in steps that barely moves (T^k >> t), so it is read as (t / T)^k, the form that
makes k a shape of the progress t / T. Rounding down keeps B_t within the formula. B_t is a pure
function of t, logged as `token_budget` (with `response_length_max`, the longest completion of the
step, never above it): a resumed run samples with the same budget and there is no state to save.
The paper also adds a length reward r_len(l; B_t) of triangular shape that rewards staying within the
budget; its exact shape is not recovered, so it is not built (the hard limit is; rl.reward_terms can add a
length term).

Dual training strategy (the split confirmed: token-selective RL plus next-token prediction on all tokens;
the weighting reconstructed). The paper trains one unified objective, "a weighted sum" of the RL loss and
a next-token-prediction loss, so that the majority low-entropy tokens the RL part leaves out still carry
their information. Each optimizer step of RL step s (each minibatch of `train/rl.py::ppo_update`)
backpropagates

    L = L_rl + lambda L_ntp,    L_ntp = - sum_{rows, i >= 1} log pi(x_i | x_<i) / (number of scored tokens)

L_rl is the configured objective and reduction, unchanged (weight 1). L_ntp is plain next-token
prediction over ALL tokens of `ntp_batch` text rows (every token after a row's first, which has no
context: the paper's rule, no prompt / response split), a token mean over the optimizer step's rows
however they are cut into micro-batches, at temperature 1 (the model's own distribution, as in
pre-training; the RL part keeps the sampling temperature). lambda = `ntp_weight`, default 1 (an
unweighted sum: the paper's value is not recovered).
Text rows (`source`): "task" = the task's demonstrations of `pool` training examples, each rendered as
the model reads it (chat prompt + demonstration + EOS) and trained on every token; or a file of
documents: `.txt` (documents separated by blank lines) or JSONL / Parquet / CSV with a `text_field`;
each document + EOS is cut into consecutive windows of `max_tokens` tokens, one row each. Each optimizer
step draws the next `ntp_batch` rows from a generator seeded by (run.seed, s), as CHORD's expert rows,
so `--resume` is exact with no state. A step with no trainable rollout row still makes its optimizer
steps on lambda L_ntp alone.

Curriculum-based adaptive sampling: not built. In RMT it chooses which tokens of a pre-training document
become next-token-reasoning RL targets, by their entropy under the model, easy (low entropy) early and
hard later; credo's RL tasks are prompts with verified answers and there is no next-token-reasoning task
whose target tokens it could sample (rl.curriculum's level schedules are the nearest built rule).
Logged per RL step: token_budget, response_length_max, ntp_weight, ntp_loss (L_ntp), ntp_tokens.
Not built: several ranks (dist.strategy), rollouts sent ahead, the tree / branching samplers and DAPO's
overlong punishment with a moving budget (refused at validation); credit probe rollouts keep
sampling.max_new_tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.train.mix_common import param_error, supervised_only_update, typed_params

KIND = "rmt"


@dataclass(frozen=True)
class RMTParams:
    """`rl.sft_mix_params` of "rmt" (see the module docstring)."""

    ntp_weight: float = 1.0  # lambda in L = L_rl + lambda L_ntp (reconstructed: the paper's value is not public)
    budget_min: int = 1  # B_min: the budget never falls below it (the paper's B_min >= 1)
    budget_decay: float = 0.5  # gamma in (0, 1]: B_T would be B_0 gamma; 1 = a fixed budget (no decay)
    budget_power: float = 1.0  # k > 0: the exponent on the progress t / T
    ntp_batch: int = 8  # text rows per optimizer step (CHORD's expert_batch default: 8 of 40 rows)
    source: str = "task"  # "task" or a document file: .txt (blank-line separated) / JSONL / Parquet / CSV
    pool: int = 256  # source "task": how many training examples' demonstrations form the rows
    text_field: str = "text"  # JSONL / Parquet / CSV source: the document's field
    max_tokens: int = 256  # a row's length: documents are cut into windows of this many tokens


def token_budget(step: int, *, steps: int, initial: int, minimum: int = 1, decay: float = 0.5,
                 power: float = 1.0) -> int:
    """RMT's dynamic token budget B_t = max(B_min, floor(B_0 gamma^((t / T)^k))) at 0-based RL step t of T.

    >>> [token_budget(t, steps=4, initial=8, minimum=3, decay=0.25) for t in range(4)]
    [8, 5, 4, 3]
    """
    progress = (step / max(steps, 1)) ** power
    # (+1e-9: a product that is an integer up to rounding, 8 x 0.5, must not floor to one less)
    return max(minimum, math.floor(initial * decay ** progress + 1e-9))


def ntp_per_token(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token prediction's per-token loss [B, T]: -log pi(x_t | x_<t) on `mask` [B, T], zero off it."""
    return torch.where(mask, -logprobs, torch.zeros_like(logprobs))


def rmt_params(table: dict[str, Any]) -> RMTParams:
    """RMTParams from rl.sft_mix_params, every key, type and range checked."""
    params = typed_params(RMTParams, table, KIND)
    if params.ntp_weight < 0:
        raise param_error(table, "ntp_weight", "must be >= 0")
    if not 0.0 < params.budget_decay <= 1.0:
        raise param_error(table, "budget_decay", "must be in (0, 1] (1 = a fixed budget)")
    if params.budget_power <= 0:
        raise param_error(table, "budget_power", "must be > 0")
    for name in ("budget_min", "ntp_batch", "pool"):
        if getattr(params, name) < 1:
            raise param_error(table, name, "must be >= 1")
    if params.max_tokens < 2:
        raise param_error(table, "max_tokens", "must be >= 2 (a row needs a token to predict after its first)")
    if params.source != "task" and not Path(params.source).expanduser().exists():
        raise param_error(table, "source", "is neither \"task\" nor an existing text / data file")
    return params


def check_rmt(cfg) -> None:
    """rl.sft_mix "rmt" at validation: its params, the budget's floor against sampling.max_new_tokens (B_0),
    and the combinations not built with a moving budget."""
    params = rmt_params(cfg.rl.sft_mix_params)
    initial = cfg.sampling.max_new_tokens
    if params.budget_min > initial:
        raise CredoError(f"rl.sft_mix_params['budget_min']: {params.budget_min} is above sampling.max_new_tokens "
                         f"{initial} (B_0, the first step's budget); lower it or raise sampling.max_new_tokens")
    if params.budget_decay == 1.0:  # a fixed budget: nothing below moves
        return
    for name, on, why in (
            ("rollout.max_staleness > 0", cfg.rollout.max_staleness > 0, "groups sampled ahead would use an "
             "earlier step's budget"),
            (f"rollout.sampler {cfg.rollout.sampler!r}", cfg.rollout.sampler != "independent", "its segments are "
             "sized from sampling.max_new_tokens"),
            ("rl.overlong_buffer > 0", cfg.rl.overlong_buffer > 0, "DAPO's punishment counts from "
             "sampling.max_new_tokens, not from the budget")):
        if on:
            raise CredoError(f"rl.sft_mix \"rmt\" with a decaying budget (rl.sft_mix_params['budget_decay'] < 1) and "
                             f"{name} is not built yet ({why}); use one of them, or budget_decay 1")


class RMTMix:
    """The bound RMT mix of a run: parameters, the encoded text rows, B_0 and T for the budget, the seed;
    `at_step(s)` gives the per-RL-step object `ppo_update` calls, `token_budget(s)` the step's rollout limit."""

    def __init__(self, params: RMTParams, rows: Sequence[tuple[list[int], int]], pad_id: int, seed: int, *,
                 initial_budget: int, steps: int):
        if not rows:
            raise CredoError("rl.sft_mix rmt: no text rows (every document is shorter than two tokens)")
        self.params, self.rows, self.pad_id, self.seed = params, list(rows), pad_id, seed
        self.initial_budget, self.steps = initial_budget, steps

    def token_budget(self, step: int) -> int:
        p = self.params
        return token_budget(step, steps=self.steps, initial=self.initial_budget, minimum=p.budget_min,
                            decay=p.budget_decay, power=p.budget_power)

    def at_step(self, step: int) -> "RMTStep":
        generator = torch.Generator().manual_seed(self.seed * 1_000_037 + step)  # (seed, s): exact resume
        return RMTStep(self, step, generator)


@dataclass
class RMTStep:
    """One RL step's part of RMT: the RL backward keeps weight 1 (`rl_weight`); `backward` adds
    lambda x L_ntp of the next text rows before each optimizer step; `metrics` averages over those steps."""

    mix: RMTMix
    step: int
    generator: torch.Generator
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    rl_weight: float = 1.0  # L = L_rl + lambda L_ntp

    def draw(self) -> list[int]:
        """The text rows of the next optimizer step (indices; no repeats while the rows allow)."""
        n, size = self.mix.params.ntp_batch, len(self.mix.rows)
        if n <= size:
            return torch.randperm(size, generator=self.generator)[:n].tolist()
        return torch.randint(size, (n,), generator=self.generator).tolist()

    def backward(self, model: torch.nn.Module, settings) -> None:
        """Backpropagate lambda x L_ntp on this optimizer step's rows (micro-batches of
        settings.micro_batch_size, one global token count), adding to the RL gradients already there."""
        from credo.logprobs import token_logprobs
        from credo.rollout.torch_engine import autocast_context
        from credo.train.sft import pad_encoded

        rows = [self.mix.rows[i] for i in self.draw()]
        total = float(sum(len(ids) - start for ids, start in rows))
        device = next(model.parameters()).device
        weight = self.mix.params.ntp_weight
        loss_sum = 0.0
        for a in range(0, len(rows), settings.micro_batch_size):
            tokens, attention, mask = pad_encoded(rows[a: a + settings.micro_batch_size], self.mix.pad_id)
            with autocast_context(settings.autocast_dtype, device):  # temperature 1: plain NTP
                logprobs = token_logprobs(model, tokens.to(device), attention.to(device), mask.to(device))
            loss = ntp_per_token(logprobs, mask.to(device)).sum() / max(total, 1.0)
            (weight * loss).backward()
            loss_sum += float(loss.detach())
        self.steps += 1
        for key, value in (("ntp_loss", loss_sum), ("ntp_tokens", total)):
            self.sums[key] = self.sums.get(key, 0.0) + value

    def metrics(self) -> dict[str, float]:
        return {"ntp_weight": self.mix.params.ntp_weight, **{k: v / max(self.steps, 1) for k, v in self.sums.items()}}

    def sft_only_update(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings) -> dict[str, float]:
        """A step without trainable rollout rows: minibatches x epochs optimizer steps on lambda L_ntp alone."""
        return supervised_only_update(self, model, optimizer, settings)


def document_rows(tokenizer, documents: Sequence[str], max_tokens: int) -> list[tuple[list[int], int]]:
    """Each document's tokens + EOS cut into consecutive windows of `max_tokens`, as (ids, 1) rows: every
    token after a window's first is a target. Windows of one token (nothing to predict) are left out."""
    rows = []
    for text in documents:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        rows += [(ids[a: a + max_tokens], 1) for a in range(0, len(ids), max_tokens) if len(ids) - a >= 2]
    return rows


def read_documents(source: str, text_field: str, where: str) -> list[str]:
    """The documents of a file: .txt split at blank lines; otherwise every row's `text_field` (a non-empty
    string; tasks/data_files.py reads JSONL / Parquet / CSV / datasets folders). CredoErrors name `where`."""
    from credo.tasks.data_files import read_records

    path = Path(source).expanduser()
    if path.suffix.lower() == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredoError(f"{where}: cannot read {path} as UTF-8 text: {exc}") from None
        docs = [d.strip() for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
    else:
        docs = []
        for record in read_records(path):
            value = record.row.get(text_field)
            if not isinstance(value, str) or not value.strip():
                raise CredoError(f"{where}: {record.where}: field {text_field!r} must be a non-empty string, "
                                 f"got {value!r}")
            docs.append(value)
    if not docs:
        raise CredoError(f"{where}: {path} holds no documents")
    return docs


def make_rmt(cfg, task, tokenizer) -> RMTMix:
    """The run's RMT mix: its text rows read and encoded once, B_0 = sampling.max_new_tokens, T = rl.steps."""
    from credo.train.evaluate import pad_token_id
    from credo.train.sft import encode_pairs, supervised_pairs

    params = rmt_params(cfg.rl.sft_mix_params)
    where = "rl.sft_mix_params['source']"
    if params.source == "task":
        pairs = supervised_pairs("task", task, n=params.pool, seed=cfg.run.seed + 31_000, where=where)
        # the rendered chat row, every token a target (the paper's NTP has no prompt / response split)
        rows = [(ids[: params.max_tokens], 1) for ids, _ in encode_pairs(tokenizer, task, pairs, params.max_tokens)]
    else:
        rows = document_rows(tokenizer, read_documents(params.source, params.text_field, where), params.max_tokens)
    return RMTMix(params, rows, pad_token_id(tokenizer), cfg.run.seed,
                  initial_budget=cfg.sampling.max_new_tokens, steps=cfg.rl.steps)


CATALOG = [
    Entry("rmt", "every optimizer step: the RL loss + lambda x plain next-token prediction on all tokens of text rows "
          "(task demonstrations or documents); rollouts limited to a dynamic token budget "
          "B_t = max(B_min, B_0 gamma^((t/T)^k))",
          "Reinforcement Mid-Training (RMT; arXiv 2509.24375)", "reconstructed",
          "text rows (the task's demonstrations or a .txt / JSONL document file)",
          training="works (budget formula from the paper; lambda = 1, gamma = 0.5, k = 1 and the exponent's reading "
                   "assumed; no official code; the entropy curriculum and the length reward not built)"),
]
