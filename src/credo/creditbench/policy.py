"""A tabular softmax policy: one logit vector per context, trained by plain policy gradient.

Every policy token of a CreditBench task is (context c, option j): the context is the slot of a chain
(per prompt) or the (knowledge state, role) of a multi-turn episode; the option is the token chosen.
Contexts have at most O options; `valid` [C, O] masks options a context does not have.

    probs [C, O] = softmax(logits [C, O]) over the valid options (0 elsewhere)
    d log pi(j | c) / d logits[c, i] = 1[i = j] - pi(i | c)

`pg_update` is REINFORCE with the estimator's advantages: for a batch of B rows,
    g[c] = (1 / B) * sum_{tokens (c, j)} A_t * (onehot(j) - pi(. | c)),  logits += lr * g
with the update's global L2 norm clipped to `max_norm` (as max_grad_norm in LLM trainers), so an
estimator that returns huge advantages cannot blow the table up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TabularPolicy:
    logits: np.ndarray  # [C, O] float64
    valid: np.ndarray  # [C, O] bool, at least one valid option per context

    def __post_init__(self):
        self.logits = np.asarray(self.logits, dtype=np.float64)
        self.valid = np.asarray(self.valid, dtype=bool)
        if self.logits.shape != self.valid.shape or self.logits.ndim != 2:
            raise ValueError(f"TabularPolicy: logits {self.logits.shape} and valid {self.valid.shape} must be the same [C, O]")
        if not self.valid.any(axis=1).all():
            raise ValueError("TabularPolicy: every context needs at least one valid option")
        self._cache = None

    def copy(self) -> "TabularPolicy":
        return TabularPolicy(self.logits.copy(), self.valid.copy())

    def probs(self) -> np.ndarray:
        """[C, O] action probabilities (0 on invalid options); cached until the next update."""
        if self._cache is None:
            z = np.where(self.valid, self.logits, -np.inf)
            z = z - z.max(axis=1, keepdims=True)
            e = np.where(self.valid, np.exp(z), 0.0)
            self._cache = e / e.sum(axis=1, keepdims=True)
        return self._cache

    def log_probs(self) -> np.ndarray:
        """[C, O] log pi (-inf... replaced by a large negative number on invalid options)."""
        p = self.probs()
        return np.where(p > 0, np.log(np.maximum(p, 1e-300)), -1e30)

    def entropy(self) -> np.ndarray:
        """[C] entropy of each context's distribution (nats)."""
        p = self.probs()
        return -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=1)

    def sample(self, ctx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One option per entry of ctx (any shape) by inverse-CDF sampling."""
        ctx = np.asarray(ctx)
        cdf = np.cumsum(self.probs()[ctx.reshape(-1)], axis=1)
        u = rng.random(ctx.size)[:, None] * cdf[:, -1:]
        out = (u >= cdf).sum(axis=1)
        # Guard against u landing exactly on the total mass: never pick an invalid trailing option.
        out = np.minimum(out, self.valid[ctx.reshape(-1)].shape[1] - 1)
        return out.reshape(ctx.shape)

    def pg_update(self, ctx: np.ndarray, opt: np.ndarray, adv: np.ndarray, *, lr: float, n_rows: int,
                  max_norm: float = 5.0, normalize: bool = False) -> float:
        """One REINFORCE step from flat arrays of policy tokens (ctx [N], opt [N], adv [N]).

        normalize=True takes a step of length lr along the gradient's direction (logits += lr g/|g|),
        so estimators are compared on where they point, not on the scale of their advantages.
        Returns the gradient norm before clipping. Non-finite advantages count as 0.
        """
        adv = np.nan_to_num(np.asarray(adv, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        ctx = np.asarray(ctx, dtype=np.int64)
        opt = np.asarray(opt, dtype=np.int64)
        p = self.probs()
        grad = np.zeros_like(self.logits)
        np.add.at(grad, (ctx, opt), adv)
        # sum_t A_t * pi(. | c_t): accumulate A per context, then multiply by pi once.
        per_ctx = np.zeros(self.logits.shape[0])
        np.add.at(per_ctx, ctx, adv)
        grad -= per_ctx[:, None] * p
        grad /= max(n_rows, 1)
        norm = float(np.sqrt(np.sum(grad**2)))
        if normalize:
            grad = grad / norm if norm > 1e-12 else grad * 0.0
        elif norm > max_norm:
            grad *= max_norm / norm
        self.logits = np.where(self.valid, self.logits + lr * grad, self.logits)
        self._cache = None
        return norm
