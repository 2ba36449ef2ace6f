"""Named loss reductions: how a per-token loss matrix becomes one scalar.

Reference: verl `core_algos.agg_loss`. With micro-batching, pass the counts of the whole optimizer
minibatch (`num_tokens`, `num_seqs`) so that summing the micro-batch losses gives exactly the loss
of the full minibatch, whatever the split ("token_mean with a global count").

| mode                      | formula (M = mask, L = per-token loss)                              |
|---------------------------|---------------------------------------------------------------------|
| token_mean                | sum(M*L) / sum(M)                                                   |
| seq_mean_token_mean       | mean over non-empty rows i of [ sum_t(M*L)_i / sum_t(M)_i ]         |
| seq_mean_token_sum        | mean over non-empty rows i of sum_t(M*L)_i                          |
| seq_mean_token_sum_norm   | sum(M*L) / (num_seqs * C), C a constant (max new tokens) [Dr.GRPO]  |
| token_sum                 | sum(M*L)                                                            |

Empty responses add nothing: they are excluded from row counts, and every denominator is guarded.
`seq_mean_token_sum_norm` is verl 0.9.1's: `agg_loss` takes the seq-mean-token-sum (token sums
averaged over the non-empty sequences, `global_batch_size`) and divides it by `loss_scale_factor`
(default: the mask width T; credo's trainer passes C = max_new_tokens, a constant as Dr.GRPO asks).
Older verl (0.8.0.dev, commit b178a3c) divided the batch's token sum by C only, without the
sequence count; credo follows 0.9.1.
"""

from __future__ import annotations

import torch

REDUCTIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_sum",
)


def reduce_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_constant: float | None = None,
) -> torch.Tensor:
    """per_token [B, T], mask [B, T] -> scalar.

    num_tokens / num_seqs: counts over the whole optimizer minibatch (default: this batch's own).
    norm_constant: C for seq_mean_token_sum_norm (default: this batch's T).
    """
    m = mask.to(per_token.dtype)
    # where(), not a product: an inf or NaN at a masked position must not leak in as inf * 0 = NaN
    masked = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    tokens_per_row = m.sum(-1)
    nonempty = (tokens_per_row > 0).to(per_token.dtype)
    rows = nonempty.sum() if num_seqs is None else per_token.new_tensor(float(num_seqs))
    rows = rows.clamp(min=1.0)
    if mode == "token_mean":
        count = m.sum() if num_tokens is None else per_token.new_tensor(float(num_tokens))
        return masked.sum() / count.clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        row_means = masked.sum(-1) / tokens_per_row.clamp(min=1.0)
        return (row_means * nonempty).sum() / rows
    if mode == "seq_mean_token_sum":
        return masked.sum() / rows
    if mode == "seq_mean_token_sum_norm":
        c = float(norm_constant) if norm_constant is not None else float(per_token.shape[-1])
        return masked.sum() / (c * rows)
    if mode == "token_sum":
        return masked.sum()
    from credo.errors import CredoError

    raise CredoError(f"unknown loss reduction {mode!r}; valid modes: {', '.join(REDUCTIONS)}")
