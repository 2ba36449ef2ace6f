"""The registry of credit estimators, and the inputs token-, step- and turn-level estimators read.

Two kinds of estimator share one registry (`CREDIT`):

- outcome-level: `fn(rewards [B], group_ids [B], *, hparams) -> advantages [B]`; the trainer
  broadcasts the sequence advantage over the row's loss tokens. No mark.
- token-level (token, segment, step, turn): `fn(inputs: CreditInputs, *, hparams) -> advantages [B, T]`,
  zero off `inputs.loss_mask`. Marked with `@token_level(needs=...)`, which also says which optional
  fields of `CreditInputs` the trainer (or CreditBench) must fill in. Fields not declared are None.

Signals that need a judge, a PRM, an oracle, a matcher or an extra model are computed *before* the
estimator, into `step_rewards` (see `credo/judges/`), so the estimators stay pure functions.
An outcome-level estimator with memory across steps (SPO's tracker) is marked `stateful`: it reads
its state as a keyword and the trainer advances, carries and checkpoints it (`CreditState`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from credo.registry import Registry

CREDIT: Registry = Registry("credit estimator")

# What a token-level estimator may declare (each names a CreditInputs field, except "probe" and
# "extras" which are the callable / dict of the same name):
CREDIT_NEEDS = (
    "logprobs",       # behaviour-policy logprobs of the sampled tokens
    "ref_logprobs",   # frozen reference-model logprobs
    "entropy",        # policy entropy at each scored position
    "steps",          # step_ids: segmentation into steps / turns
    "step_rewards",   # a judge / PRM / oracle / environment reward per step
    "step_keys",      # hashable state before each step (anchor states)
    "values",         # a critic's V at each token
    "hidden_states",  # a hidden-state proxy per token
    "attention",      # an attention map per row
    "probe",          # Monte Carlo value probes from mid-sequence prefixes
    "extras",         # method-specific inputs (documented by the estimator)
)


@dataclass
class CreditInputs:
    """Everything a token-level estimator may read. B rows, T positions aligned with the batch's
    tokens (the shift convention of `batch.py`: position t holds token t and its logprob).

    rewards [B] float: outcome reward per row.
    group_ids [B] long: rows sampled from the same prompt (or initial state) share an id.
    loss_mask [B, T] bool: policy-sampled tokens; advantages must be 0 elsewhere.
    tokens [B, T] long | None.
    logprobs [B, T] float | None: behaviour logprobs of the sampled tokens (0 off the mask).
    ref_logprobs [B, T] float | None.
    entropy [B, T] float | None.
    step_ids [B, T] long | None: index k = 0..K_b-1 of the step (reasoning step, segment or turn)
        each policy token belongs to, in order; -1 on prompt, padding and environment tokens.
    step_rewards [B, K] float | None: a reward per step (K = max steps over rows), NaN past a row's
        last step.
    step_keys list[list[Hashable]] | None: step_keys[b][k] is the state observed before step k.
    values [B, T] float | None: a critic's estimate of V(s_t), the state before token t.
    hidden_states [B, T, H] float | None.
    attention [B, T, T] float | None: attention[b, t, j] = weight token t puts on token j (j <= t).
    probe Callable[[int, int], float] | None: probe(b, t) = Monte Carlo estimate of V for row b's
        prefix tokens[b, :t] (continuations sampled by the caller, whose cost it counts).
    extras dict: method-specific inputs, documented by the estimator that reads them.
    """

    rewards: torch.Tensor
    group_ids: torch.Tensor
    loss_mask: torch.Tensor
    tokens: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    step_ids: torch.Tensor | None = None
    step_rewards: torch.Tensor | None = None
    step_keys: list[list[Hashable]] | None = None
    values: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    probe: Callable[[int, int], float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.loss_mask.dim() != 2:
            raise ValueError(f"CreditInputs.loss_mask must be [B, T], got {tuple(self.loss_mask.shape)}")
        B, T = self.loss_mask.shape
        for name in ("rewards", "group_ids"):
            if tuple(getattr(self, name).shape) != (B,):
                raise ValueError(f"CreditInputs.{name} has shape {tuple(getattr(self, name).shape)}, expected ({B},)")
        for name in ("tokens", "logprobs", "ref_logprobs", "entropy", "step_ids", "values"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (B, T):
                raise ValueError(f"CreditInputs.{name} has shape {tuple(value.shape)}, expected ({B}, {T})")
        if self.step_rewards is not None and (self.step_rewards.dim() != 2 or self.step_rewards.shape[0] != B):
            raise ValueError(f"CreditInputs.step_rewards must be [B, K] with B = {B}, got {tuple(self.step_rewards.shape)}")

    def require(self, *names: str, method: str) -> None:
        """Raise a clear error when a field the estimator needs was not provided."""
        missing = [n for n in names if (self.extras.get(n[7:]) is None if n.startswith("extras.") else getattr(self, n) is None)]
        if missing:
            raise ValueError(f"credit estimator {method} needs {', '.join(missing)} in CreditInputs")


def token_level(*, needs: tuple[str, ...] = (), needs_when: Callable[[dict[str, Any]], tuple[str, ...]] | None = None,
                returns: Callable[..., torch.Tensor] | None = None) -> Callable:
    """Mark a token-level estimator `fn(inputs: CreditInputs, **hparams) -> [B, T]` and declare the
    CreditInputs fields it reads (CREDIT_NEEDS).

    needs_when(hparams) -> more needs, from the estimator's effective keyword hyperparameters (its
    defaults updated by what the config bound): e.g. GAE reads logprobs and ref_logprobs only when
    kl_coef != 0. `credit_needs_of` applies it, so the trainer loads a reference model exactly then.
    returns(inputs, **hparams) -> [B, T]: the critic's regression targets, for an estimator that reads
    values; built from the same token rewards as its advantages (see `critic.critic_returns`).
    """
    unknown = set(needs) - set(CREDIT_NEEDS)
    if unknown:
        raise ValueError(f"unknown credit need(s) {sorted(unknown)}; valid: {', '.join(CREDIT_NEEDS)}")

    def mark(fn: Callable) -> Callable:
        fn.credit_level = "token"
        fn.credit_needs = frozenset(needs)
        fn.credit_needs_when = needs_when
        fn.credit_returns = returns
        return fn

    return mark


@dataclass(frozen=True)
class CreditState:
    """How the trainer carries an outcome-level estimator's state across RL steps (`stateful`).

    The estimator itself stays a pure function that reads the state as its `state=` keyword and
    receives PERSISTENT prompt ids as its group_ids (the same prompt keeps its id across steps).
    init() -> the state before the first step.
    update(state, prompt_ids [B], rewards [B], rows, rescore) -> (new state, metrics): called once per
        step, before the policy update; rows[b] = (tokens [S] long: prompt + response, scored [S] bool:
        the loss tokens, logprobs [L] float: behaviour logprobs of the scored tokens, L = scored.sum());
        rescore(tokens list, scored list) -> current-policy logprobs [L] of stored responses (one
        forward pass, no gradient). The trainer commits the new state after the update.
    save(state) -> (JSON-able dict, {name: tensor}); load(dict, tensors) -> state (checkpoints).
    sampling_weights(state, prompt_ids [P]) -> [P] >= 0: optional prioritised prompt sampling.
    """

    init: Callable[[], Any]
    update: Callable[..., tuple[Any, dict[str, float]]]
    save: Callable[[Any], tuple[dict, dict[str, torch.Tensor]]]
    load: Callable[[dict, dict[str, torch.Tensor]], Any]
    sampling_weights: Callable[[Any, torch.Tensor], torch.Tensor] | None = None


def stateful(**protocol: Callable) -> Callable:
    """Mark an outcome-level estimator `fn(rewards, group_ids, *, state, **hparams)` whose state the
    trainer keeps between steps and checkpoints (fields of `CreditState`)."""
    spec = CreditState(**protocol)

    def mark(fn: Callable) -> Callable:
        fn.credit_state = spec
        return fn

    return mark


def _unwrap(fn: Callable) -> Callable:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def is_token_level(fn: Callable) -> bool:
    """True for estimators marked with `token_level` (also through functools.partial)."""
    return getattr(_unwrap(fn), "credit_level", "outcome") == "token"


def hparams_of(fn: Callable) -> dict[str, Any]:
    """The keyword hyperparameters an estimator will run with: its signature's keyword defaults,
    updated by what `functools.partial` bound (outermost binding wins, as in a call)."""
    import inspect

    bound: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        bound = {**fn.keywords, **bound}
        fn = fn.func
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
    return {**defaults, **bound}


def credit_needs_of(fn: Callable) -> frozenset[str]:
    """The CreditInputs fields a token-level estimator reads, with its bound hyperparameters
    (`token_level(needs_when=...)`); empty for outcome-level estimators."""
    base = _unwrap(fn)
    needs = getattr(base, "credit_needs", frozenset())
    when = getattr(base, "credit_needs_when", None)
    return needs | frozenset(when(hparams_of(fn))) if when is not None else needs


def credit_returns_of(fn: Callable) -> Callable[..., torch.Tensor] | None:
    """The estimator's critic-target function (`token_level(returns=...)`), or None."""
    return getattr(_unwrap(fn), "credit_returns", None)


def credit_state_of(fn: Callable) -> CreditState | None:
    """The `stateful` protocol of an estimator (also through functools.partial); None if stateless."""
    return getattr(_unwrap(fn), "credit_state", None)


def steps_from_boundaries(loss_mask: torch.Tensor, step_end: torch.Tensor) -> torch.Tensor:
    """step_ids [B, T] from a loss mask [B, T] and a bool [B, T] marking the last token of each step.

    Tokens after the last marked end (a response that does not end on a boundary) form one more step.
    Off the mask the id is -1.
    """
    ends_before = torch.cumsum(step_end.to(torch.long), dim=1) - step_end.to(torch.long)
    return torch.where(loss_mask, ends_before, torch.full_like(ends_before, -1))


def num_steps(step_ids: torch.Tensor) -> torch.Tensor:
    """K_b [B]: number of steps in each row (max id + 1; 0 for a row without policy tokens)."""
    return (step_ids.max(dim=1).values + 1).clamp(min=0)


def step_sum(values: torch.Tensor, step_ids: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Sum a [B, T] tensor over the tokens of each step: [B, K]."""
    B = step_ids.shape[0]
    k = int(num_steps(step_ids).max()) if k is None else k
    out = torch.zeros(B, max(k, 0), dtype=values.dtype)
    ok = step_ids >= 0
    rows = torch.arange(B)[:, None].expand_as(step_ids)
    out.index_put_((rows[ok], step_ids[ok]), values[ok], accumulate=True)
    return out


def broadcast_steps(per_step: torch.Tensor, step_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[B, K] per-step values -> [B, T]: every token of step k gets per_step[b, k]; 0 off the mask
    and on tokens without a step."""
    idx = step_ids.clamp(min=0)
    out = torch.gather(per_step.to(torch.float32), 1, idx.clamp(max=max(per_step.shape[1] - 1, 0))) \
        if per_step.shape[1] else torch.zeros(step_ids.shape, dtype=torch.float32)
    keep = loss_mask & (step_ids >= 0)
    return torch.where(keep, torch.nan_to_num(out, nan=0.0), torch.zeros_like(out))
