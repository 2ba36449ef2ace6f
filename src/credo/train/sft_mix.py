"""CHORD: on-policy RL mixed with a phi-weighted SFT loss on expert data under a global weight mu(t)
(`rl.sft_mix = "chord"`, `rl.sft_mix_params`). `rl.sft_mix = "rmt"` (RL + next-token prediction under a
dynamic token budget) lives in train/rmt.py and shares this module's parameter checks and sft-only steps.

Paper: "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and Reinforcement
Learning via Dynamic Weighting" (CHORD, arXiv 2508.11408). Status: confirmed against the reference
implementation in the authors' framework, Trinity-RFT `trinity/algorithm/policy_loss_fn/chord_policy_loss.py`
(`mu_schedule_function`, `phi_function`, `SFTPhiLossFn`, `MIXCHORDPolicyLossFn`, registered `mix_chord`).

Every optimizer step of RL step s (each minibatch of `train/rl.py::ppo_update`) backpropagates

    L = (1 - mu(t)) L_rl + mu(t) L_sft,     t = s + 1 (Trinity's global step, which counts from 1)

L_rl   the configured objective and reduction on the minibatch, exactly what it is without CHORD.
L_sft  on `expert_batch` expert rows (chat prompt + response + EOS; the loss on response + EOS):
       L_sft = sum_tokens -log pi(y_t) sg[phi_t] / (number of expert tokens),  phi_t = p_t (1 - p_t),  p_t = pi(y_t)
       (phi = false: the plain NLL, the paper's CHORD-mu variant).
mu(t)  = mu_peak t / T_w                                                   t < T_w
       = mu_valley + (mu_peak - mu_valley) (1 + cos(pi (t - T_w) / T_d)) / 2  T_w <= t < T_w + T_d
       = mu_valley                                                          afterwards

Defaults (Trinity's `default_args`): mu_warmup 0, mu_decay 0, mu_peak 0.1, mu_valley 0.1 (a constant 0.1),
phi on. The paper's example: 200 / 400 / 0.5 / 0.02 with phi; CHORD-mu: 0 / 200 / 0.9 / 0.05 without phi.
phi -> 0 as p -> 0 or 1: expert tokens the policy already knows and ones it finds very unlikely are both
down-weighted (the paper's reason: keep on-policy exploration, avoid disruption by off-policy tokens).

How it departs from Trinity, in batching only:
- Trinity puts expert and on-policy rows in one batch (`expert_mask`) and scales each micro-batch's part by
  rows x its normaliser; here the expert rows are extra forward/backward passes after each minibatch's RL
  passes, normalised by the step's global expert-token count: L_sft is the token mean over the step's
  expert rows however they are cut into micro-batches (Trinity's `use_token_level_loss_in_sft` default,
  equal to this when all expert rows sit in one micro-batch).
- expert rows are drawn from a pool (source "task": the demonstrations of `pool` training examples of the
  task; or every row of a JSONL / Parquet / CSV file with `prompt_field` / `response_field`) by a
  generator seeded from (run.seed, s): each optimizer step takes the next `expert_batch` rows of that
  generator (without repeats inside an optimizer step while the pool allows), so `--resume` is exact with
  no state of its own.
- the expert logprobs use the trainer's temperature (sampling.temperature), as in Trinity, where the actor
  divides every logit by the rollout temperature, expert rows included.
- a step with no trainable rollout row (every group uniform, rl.skip_zero_advantage) still makes its
  rl.minibatches x rl.epochs optimizer steps on mu L_sft alone: in Trinity the expert rows are in every
  batch whatever the rollouts' advantages.
Logged per RL step: mu, sft_loss (L_sft, phi-weighted when phi is on), sft_nll (the plain expert NLL),
phi_mean (mean phi over expert tokens), expert_tokens. Not built: several ranks (dist.strategy).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.train.mix_common import param_error, supervised_only_update, typed_params

SFT_MIXES = ("none", "chord", "rmt")  # "rmt": RL + next-token prediction, a dynamic token budget (train/rmt.py)


@dataclass(frozen=True)
class ChordParams:
    """`rl.sft_mix_params` of "chord" (see the module docstring)."""

    mu_warmup: int = 0  # T_w: steps of the linear rise of mu from 0 to mu_peak
    mu_decay: int = 0  # T_d: steps of the cosine decay from mu_peak to mu_valley
    mu_peak: float = 0.1
    mu_valley: float = 0.1
    phi: bool = True  # weight expert tokens by sg[p (1 - p)] (CHORD-phi); false = plain NLL (CHORD-mu)
    expert_batch: int = 8  # expert rows per optimizer step: 8 of 40 rows = Trinity's example expert ratio 0.2
    #                        at credo's default 16 prompts x 4 samples in 2 minibatches
    source: str = "task"  # "task" or a data file (JSONL / Parquet / CSV / datasets folder)
    pool: int = 256  # source "task": how many training examples' demonstrations form the expert pool
    prompt_field: str = "prompt"  # file source: the user message
    response_field: str = "response"  # file source: the expert completion
    max_response_tokens: int = 256  # longer expert responses are cut (the EOS is kept)


def chord_mu(step: int, *, mu_warmup: int = 0, mu_decay: int = 0, mu_peak: float = 0.1,
             mu_valley: float = 0.1) -> float:
    """CHORD's global SFT weight mu(t) at global step t (Trinity's `mu_schedule_function`, same operations).

    >>> paper = dict(mu_warmup=200, mu_decay=400, mu_peak=0.5, mu_valley=0.02)  # the paper's example
    >>> [chord_mu(t, **paper) for t in (0, 100, 200, 400, 600)]
    [0.0, 0.25, 0.5, 0.26, 0.02]
    """
    if step < mu_warmup:
        return (step / mu_warmup) * mu_peak
    if step >= mu_warmup + mu_decay:
        return mu_valley
    cosine = 0.5 * (1 + math.cos(math.pi * (step - mu_warmup) / mu_decay))
    return (mu_peak - mu_valley) * cosine + mu_valley


def phi_weights(logprobs: torch.Tensor) -> torch.Tensor:
    """phi = p (1 - p), p = exp(logprobs), detached; [B, T] -> [B, T] (Trinity's `phi_function`)."""
    p = torch.exp(logprobs.detach())
    return p * (1 - p)


def sft_per_token(logprobs: torch.Tensor, mask: torch.Tensor, *, phi: bool = True) -> torch.Tensor:
    """CHORD's per-token SFT loss [B, T]: -log pi(y_t) sg[phi_t] (phi = false: -log pi(y_t)); zero off
    `mask` [B, T]. Its gradient is -phi_t grad log pi(y_t): the NLL gradient scaled by p (1 - p)."""
    weight = phi_weights(logprobs) if phi else torch.ones_like(logprobs)
    return torch.where(mask, -logprobs * weight, torch.zeros_like(logprobs))


def check_sft_mix(cfg) -> None:
    """rl.sft_mix and its params, at config validation (before anything loads): a CredoError names the field."""
    rl = cfg.rl
    if rl.sft_mix not in SFT_MIXES:
        raise CredoError(f"unknown rl.sft_mix {rl.sft_mix!r}; valid: {', '.join(SFT_MIXES)}")
    if rl.sft_mix == "none":
        if rl.sft_mix_params:
            raise CredoError(f"rl.sft_mix_params is set ({', '.join(sorted(rl.sft_mix_params))}) but rl.sft_mix is "
                             f"'none'; set rl.sft_mix = \"chord\" or \"rmt\", or remove the params")
        return
    if rl.sft_mix == "rmt":
        from credo.train.rmt import check_rmt

        check_rmt(cfg)
    else:
        chord_params(rl.sft_mix_params)
    if cfg.dist.strategy != "none":
        raise CredoError(f"rl.sft_mix {rl.sft_mix!r} with dist.strategy {cfg.dist.strategy!r} is not built yet (the "
                         f"expert rows would be replicated on every rank); use one process")


def chord_params(table: dict[str, Any]) -> ChordParams:
    """ChordParams from rl.sft_mix_params, every key, type and range checked."""
    params = typed_params(ChordParams, table, "chord")

    def bad(name: str, why: str):
        return param_error(table, name, why)

    for name in ("mu_warmup", "mu_decay"):
        if getattr(params, name) < 0:
            raise bad(name, "must be >= 0")
    for name in ("mu_peak", "mu_valley"):
        if not 0.0 <= getattr(params, name) <= 1.0:
            raise bad(name, "must be in [0, 1] (the weights are 1 - mu and mu)")
    for name in ("expert_batch", "pool", "max_response_tokens"):
        if getattr(params, name) < 1:
            raise bad(name, "must be >= 1")
    if params.source != "task":
        from pathlib import Path

        if not Path(params.source).expanduser().exists():
            raise bad("source", "is neither \"task\" nor an existing data file")
    return params


class ChordMix:
    """The bound CHORD mix of a run: parameters, the encoded expert pool, the seed; `at_step(s)` gives the
    per-RL-step object `ppo_update` calls."""

    def __init__(self, params: ChordParams, rows: Sequence[tuple[list[int], int]], pad_id: int, seed: int):
        if not rows:
            raise CredoError("rl.sft_mix chord: the expert pool is empty")
        self.params, self.rows, self.pad_id, self.seed = params, list(rows), pad_id, seed

    def mu(self, step: int) -> float:
        """mu of RL step `step` (0-based): Trinity's schedule at its 1-based global step."""
        p = self.params
        return chord_mu(step + 1, mu_warmup=p.mu_warmup, mu_decay=p.mu_decay, mu_peak=p.mu_peak, mu_valley=p.mu_valley)

    def at_step(self, step: int) -> "ChordStep":
        generator = torch.Generator().manual_seed(self.seed * 1_000_033 + step)  # (seed, s): exact resume
        return ChordStep(self, step, self.mu(step), generator)


@dataclass
class ChordStep:
    """One RL step's part of CHORD: `rl_weight` scales every RL backward; `backward` adds mu x L_sft of the
    next expert rows before each optimizer step; `metrics` averages what the optimizer steps saw."""

    mix: ChordMix
    step: int
    mu: float
    generator: torch.Generator
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 0

    @property
    def rl_weight(self) -> float:
        return 1.0 - self.mu

    def draw(self) -> list[int]:
        """The expert rows of the next optimizer step (pool indices)."""
        n, size = self.mix.params.expert_batch, len(self.mix.rows)
        if n <= size:
            return torch.randperm(size, generator=self.generator)[:n].tolist()
        return torch.randint(size, (n,), generator=self.generator).tolist()

    def backward(self, model: torch.nn.Module, settings) -> None:
        """Backpropagate mu x L_sft on this optimizer step's expert rows (micro-batches of
        settings.micro_batch_size, global token count), adding to the RL gradients already there."""
        from credo.logprobs import token_logprobs
        from credo.rollout.torch_engine import autocast_context
        from credo.train.sft import pad_encoded

        rows = [self.mix.rows[i] for i in self.draw()]
        total = float(sum(len(ids) - start for ids, start in rows))
        device = next(model.parameters()).device
        loss_sum = nll_sum = phi_sum = 0.0
        for a in range(0, len(rows), settings.micro_batch_size):
            tokens, attention, mask = pad_encoded(rows[a: a + settings.micro_batch_size], self.mix.pad_id)
            with autocast_context(settings.autocast_dtype, device):
                logprobs = token_logprobs(model, tokens, attention, mask, temperature=settings.temperature)
            loss = sft_per_token(logprobs, mask, phi=self.mix.params.phi).sum() / max(total, 1.0)
            (self.mu * loss).backward()
            with torch.no_grad():
                loss_sum += float(loss)  # (already divided by the step's expert-token count)
                nll_sum += float(-(logprobs * mask).sum())
                phi_sum += float((phi_weights(logprobs) * mask).sum())
        self.steps += 1
        for key, value in (("sft_loss", loss_sum), ("sft_nll", nll_sum / max(total, 1.0)),
                           ("phi_mean", phi_sum / max(total, 1.0)), ("expert_tokens", total)):
            self.sums[key] = self.sums.get(key, 0.0) + value

    def metrics(self) -> dict[str, float]:
        return {"mu": self.mu, **{k: v / max(self.steps, 1) for k, v in self.sums.items()}}

    def sft_only_update(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings) -> dict[str, float]:
        """A step without trainable rollout rows: minibatches x epochs optimizer steps on mu L_sft alone."""
        return supervised_only_update(self, model, optimizer, settings)


def make_sft_mix(cfg, task, tokenizer):
    """The run's mix (None for rl.sft_mix "none"): CHORD's ChordMix with its expert pool read and encoded
    once, or RMT's train/rmt.py::RMTMix (text rows + the dynamic token budget)."""
    if cfg.rl.sft_mix == "none":
        return None
    if cfg.rl.sft_mix == "rmt":
        from credo.train.rmt import make_rmt

        return make_rmt(cfg, task, tokenizer)
    from credo.train.evaluate import pad_token_id
    from credo.train.sft import encode_pairs, supervised_pairs

    params = chord_params(cfg.rl.sft_mix_params)
    pairs = supervised_pairs(params.source, task, n=params.pool, seed=cfg.run.seed + 30_000,
                             prompt_field=params.prompt_field, response_field=params.response_field,
                             where="rl.sft_mix_params['source']")
    rows = encode_pairs(tokenizer, task, pairs, params.max_response_tokens)
    return ChordMix(params, rows, pad_token_id(tokenizer), cfg.run.seed)


CATALOG = [
    Entry("chord", "every optimizer step: (1 - mu(t)) x the RL loss + mu(t) x a phi = p(1 - p)-weighted SFT loss on "
          "expert rows (task demonstrations or a file); mu: warm-up, cosine decay, valley",
          "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and Reinforcement Learning via "
          "Dynamic Weighting (CHORD; arXiv 2508.11408)", "confirmed",
          "expert data (the task's demonstrations or a prompt / response file)",
          training="works (Trinity-RFT's formulas; expert rows as extra passes per optimizer step, global token mean)"),
    Entry("chord (phi = false)", "CHORD-mu: the same mix with the plain expert NLL (no phi weights); the paper's "
          "schedule 0 / 200 / 0.9 / 0.05",
          "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and Reinforcement Learning via "
          "Dynamic Weighting (CHORD; arXiv 2508.11408)", "confirmed", "expert data"),
]
