"""Every named loss reduction against hand-computed values, and the global-count invariance."""

import pytest
import torch

from credo.errors import CredoError
from credo.objectives.reduce import REDUCTIONS, reduce_loss

# Two rows: row 0 has 3 valid tokens with losses 1, 2, 3; row 1 has 1 valid token with loss 6;
# row 2 is an empty response.
L = torch.tensor([[1.0, 2.0, 3.0, 100.0], [6.0, 100.0, 100.0, 100.0], [100.0, 100.0, 100.0, 100.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", (1 + 2 + 3 + 6) / 4),  # 3.0
        ("seq_mean_token_mean", ((1 + 2 + 3) / 3 + 6 / 1) / 2),  # 4.0: empty row excluded
        ("seq_mean_token_sum", (6 + 6) / 2),  # 6.0
        # verl 0.9.1 agg_loss: the seq-mean-token-sum (over non-empty rows) divided by C = T = 4
        ("seq_mean_token_sum_norm", (6 + 6) / (4 * 2)),
        ("token_sum", 12.0),
    ],
)
def test_reduction_values(mode, expected):
    assert reduce_loss(L, M, mode).item() == pytest.approx(expected)


def test_norm_constant_and_global_counts():
    assert reduce_loss(L, M, "seq_mean_token_sum_norm", norm_constant=16).item() == pytest.approx(12 / 32)
    assert reduce_loss(L, M, "token_mean", num_tokens=8).item() == pytest.approx(12 / 8)
    assert reduce_loss(L, M, "seq_mean_token_mean", num_seqs=4).item() == pytest.approx(8 / 4)


def test_all_masked_is_zero_not_nan():
    empty = torch.zeros_like(M)
    for mode in REDUCTIONS:
        value = reduce_loss(L, empty, mode)
        assert torch.isfinite(value) and value.item() == 0.0, mode


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "token_sum"])
def test_micro_batch_split_invariance(mode):
    """Summing micro-batch losses with the minibatch's global counts equals the full-batch loss."""
    g = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.4
    mask[2] = False  # an empty response in the middle
    full = reduce_loss(per_token, mask, mode)
    n_tok, n_seq = float(mask.sum()), float(mask.any(-1).sum())
    parts = sum(
        reduce_loss(per_token[i : i + 2], mask[i : i + 2], mode, num_tokens=n_tok, num_seqs=n_seq)
        for i in range(0, 6, 2)
    )
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_masked_positions_get_zero_gradient():
    per_token = torch.randn(3, 4, requires_grad=True)
    for mode in REDUCTIONS:
        per_token.grad = None
        reduce_loss(per_token, M, mode).backward()
        assert torch.all(per_token.grad[~M] == 0), mode
        assert torch.all(per_token.grad[M] != 0), mode


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(CredoError, match="token_mean"):
        reduce_loss(L, M, "mean")
