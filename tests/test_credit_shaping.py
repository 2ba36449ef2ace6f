"""ASPO advantage shaping: hand-computed values, the no-sign-flip bound, loop == vectorized."""

import math

import numpy as np
import pytest
import torch

from credo.credit import CREDIT
from credo.credit.shaping import aspo_shape_advantages, aspo_shape_advantages_loop

NAN = float("nan")


def test_aspo_hand_computed():
    # group 0: three correct responses calling code at 0.1 / 0.5 / 0.9, one wrong one
    # mean 0.5, population std sqrt(0.32 / 3) = 0.32660, z = -1.2247, 0, +1.2247
    adv = torch.tensor([1.0, 1.0, 1.0, -1.5])
    correct = torch.tensor([True, True, True, False])
    pos = torch.tensor([0.1, 0.5, 0.9, 0.2])
    groups = torch.tensor([0, 0, 0, 0])
    z = 0.4 / math.sqrt(0.32 / 3)
    # delta 0.2: bonus -0.2 z within the bound 0.5 |A|
    out = aspo_shape_advantages(adv, correct, pos, groups, delta=0.2, clip_k=0.5)
    assert out.tolist() == pytest.approx([1 + 0.2 * z, 1.0, 1 - 0.2 * z, -1.5], rel=1e-6)
    # delta 1: |-z| = 1.22 > 0.5 -> clipped to +-0.5 |A|
    out = aspo_shape_advantages(adv, correct, pos, groups, delta=1.0, clip_k=0.5)
    assert out.tolist() == pytest.approx([1.5, 1.0, 0.5, -1.5], rel=1e-6)


def test_aspo_degenerate_cases():
    adv = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.8, -0.8, 2.0, 1.0])
    correct = torch.tensor([True, True, True, True, True, False, True, True])
    pos = torch.tensor([0.3, NAN, 0.2, 0.7, 0.4, 0.1, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = aspo_shape_advantages(adv, correct, pos, groups)
    # g0: one correct response with a call (the other made none): no statistics, unchanged
    # g1: all correct, A = 0: the bound 0 |A| leaves it 0
    # g2: one correct caller: unchanged; the wrong response is never shaped
    # g3: equal positions (std 0): unchanged
    assert out.tolist() == pytest.approx(adv.tolist())
    with pytest.raises(ValueError, match="clip_k"):
        aspo_shape_advantages(adv, correct, pos, groups, clip_k=1.0)
    assert aspo_shape_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0),
                                 torch.zeros(0, dtype=torch.long)).numel() == 0


@pytest.mark.parametrize("seed", range(6))
def test_aspo_never_flips_the_sign_and_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    B = 24
    groups = rng.integers(0, 4, size=B)
    adv = rng.normal(size=B)
    correct = rng.random(B) < 0.6
    pos = np.where(rng.random(B) < 0.8, rng.random(B), np.nan)
    k = float(rng.uniform(0.0, 0.99))
    delta = float(rng.uniform(0.1, 3.0))
    out = aspo_shape_advantages(torch.tensor(adv), torch.tensor(correct), torch.tensor(pos), torch.tensor(groups),
                                delta=delta, clip_k=k).numpy()
    ref = aspo_shape_advantages_loop(adv.tolist(), correct.tolist(), pos.tolist(), groups.tolist(),
                                     delta=delta, clip_k=k)
    assert out.tolist() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    a32 = adv.astype(np.float32)
    assert np.all(np.abs(out - a32) <= k * np.abs(a32) + 1e-6)
    assert np.all((np.sign(out) == np.sign(a32)) | (a32 == 0))
    unshaped = ~correct | np.isnan(pos)
    assert out[unshaped].tolist() == pytest.approx(a32[unshaped].tolist())


def test_registered_aspo_estimator_hand_values():
    """R = [1, 1, 0, 1] in one group: GRPO A = [0.5, 0.5, -1.5, 0.5] (mean 0.75, unbiased std 0.5).
    Correct callers: rows 0 and 1 at 0.1 and 0.5 (mean 0.3, population std 0.2, z = -1, +1); the bonus
    -delta z = +1 / -1 is clipped to 0.5 |A| = 0.25. Row 2 is wrong, row 3 made no call: unchanged."""
    from credo.credit import CREDIT
    from credo.credit.base import CreditInputs

    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[3, 2] = False
    inputs = CreditInputs(rewards=torch.tensor([1.0, 1.0, 0.0, 1.0]), group_ids=torch.zeros(4, dtype=torch.long),
                          loss_mask=mask, extras={"first_call_positions": torch.tensor([0.1, 0.5, 0.2, float("nan")])})
    out = CREDIT.get("aspo")(inputs)
    expected = torch.tensor([0.75, 0.25, -1.5, 0.5])[:, None] * mask
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="first_call_positions"):
        CREDIT.get("aspo")(CreditInputs(rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long),
                                        loss_mask=torch.ones(2, 2, dtype=torch.bool)))
