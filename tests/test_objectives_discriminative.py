"""DisCO (+ DisCO-b), DRPO and CoPG against hand-computed numbers, loop references and each paper's key property."""

import math
import random

import numpy as np
import pytest
import torch

from credo.batch import RolloutBatch
from credo.objectives import OBJECTIVES, reduce_loss
from credo.objectives.discriminative import (
    copg_loss,
    disco_b_loss,
    disco_loss,
    drpo_loss,
    drpo_positive_weights,
    kl_squared_hinge,
)

MEAN_MODES = ("token_mean", "seq_mean_token_mean")


def make_batch(rows, rewards, groups, *, old=None, ref=None, pad=1):
    """rows: per-response lists of completion-token logprobs (position 0 is the prompt, never masked).

    Returns (logprobs [B, T] leaf with grad, batch). old / ref: same-shaped lists (default old = rows:
    on-policy). Masked positions hold the junk value 5.0 to catch leaks.
    """
    B = len(rows)
    T = 1 + max([len(r) for r in rows] + [1]) + pad
    logp = torch.full((B, T), 5.0)
    old_t = torch.zeros(B, T)
    ref_t = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r)
        mask[i, 1 : 1 + n] = True
        logp[i, 1 : 1 + n] = torch.tensor(r, dtype=torch.float32)
        old_t[i, 1 : 1 + n] = torch.tensor((old or rows)[i], dtype=torch.float32)
        if ref is not None:
            ref_t[i, 1 : 1 + n] = torch.tensor(ref[i], dtype=torch.float32)
    batch = RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask,
        sampler_logprobs=old_t,
        advantages=torch.zeros(B, T),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(groups, dtype=torch.long),
        ref_logprobs=ref_t if ref is not None else None,
    )
    return logp.requires_grad_(True), batch


def loss_and_grad(fn, logp, batch, mode="token_mean", **kw):
    terms = fn(logp, batch, **kw)
    loss = reduce_loss(terms.per_token, batch.loss_mask, mode)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad, terms


# Three prompts: group 0 two correct + one wrong, group 1 one correct + two wrong, group 2 all wrong.
ROWS = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0], [-1.5, -0.5], [-2.0], [-4.0, -1.0], [-1.0]]
REWARDS = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
GROUPS = [0, 0, 0, 1, 1, 1, 2]


# -- DisCO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MEAN_MODES)
def test_disco_hand_computed_value_and_gradient(mode):
    logp, batch = make_batch(ROWS, REWARDS, GROUPS)
    tau = 10.0
    loss, grad, terms = loss_and_grad(disco_loss, logp, batch, mode, tau=tau)
    s = np.array([np.mean(r) for r in ROWS])  # -1.5, -0.5, -2, -1, -2, -2.5, -1
    j0 = (s[0] + s[1]) / 2 - s[2]  # one negative: tau log mean exp(s / tau) = s
    soft = np.exp(s[4:6] / tau)
    j1 = s[3] - tau * np.log(soft.mean())
    expected = -(j0 + j1) / 3  # group 2 has no positive: dropped, but still counted (official)
    assert loss == pytest.approx(expected, rel=1e-5)
    # on-policy: KL = 0, the hinge adds nothing; every position carries the same batch loss
    assert terms.metrics["kl_constraint"].item() == pytest.approx(0.0, abs=1e-7)
    # gradient: d loss / d logp_{i,t} = -(1/3) dJ/ds_i / |y_i|
    w = soft / soft.sum()
    dj = {0: 0.5, 1: 0.5, 2: -1.0, 3: 1.0, 4: -w[0], 5: -w[1], 6: 0.0}
    for i, r in enumerate(ROWS):
        n = len(r)
        assert grad[i, 1 : 1 + n].tolist() == pytest.approx([-dj[i] / (3 * n)] * n, rel=1e-5, abs=1e-9)
        assert grad[i, 1 + n :].abs().max().item() == 0.0  # masked positions
        assert grad[i, 0].item() == 0.0


def test_disco_b_hand_computed():
    logp, batch = make_batch(ROWS, REWARDS, GROUPS)
    loss, grad, _ = loss_and_grad(disco_b_loss, logp, batch)
    s = np.array([np.mean(r) for r in ROWS])
    j0 = (s[0] + s[1]) / 2 - s[2]
    j1 = s[3] - (s[4] + s[5]) / 2
    assert loss == pytest.approx(-(j0 + j1) / 3, rel=1e-5)
    assert grad[5, 1:3].tolist() == pytest.approx([0.5 / (3 * 2)] * 2, rel=1e-5)


def test_disco_normalize_by_valid_divides_by_valid_prompts_only():
    logp, batch = make_batch(ROWS, REWARDS, GROUPS)
    all_prompts, _, _ = loss_and_grad(disco_b_loss, logp, batch)
    valid_only, _, _ = loss_and_grad(disco_b_loss, logp, batch, normalize_by_valid=True)
    assert valid_only == pytest.approx(all_prompts * 3 / 2, rel=1e-6)


def test_disco_raises_correct_and_lowers_incorrect_scores_without_length_bias():
    # one group: a short and a long correct answer, a short and a long wrong one, same token logprobs
    rows = [[-1.0], [-1.0] * 6, [-1.0], [-1.0] * 6]
    logp, batch = make_batch(rows, [1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0])
    for fn in (disco_loss, disco_b_loss, drpo_loss):
        kw = {"lam": 1e9} if fn is drpo_loss else {}
        _, grad, _ = loss_and_grad(fn, logp, batch, **kw)
        assert (grad[0:2][batch.loss_mask[0:2]] < 0).all()  # descent raises correct answers' logprobs
        assert (grad[2:4][batch.loss_mask[2:4]] > 0).all()  # and lowers incorrect ones
        per_seq = grad.sum(-1)  # total push on each response: the same for 1 and 6 tokens
        assert per_seq[0].item() == pytest.approx(per_seq[1].item(), rel=1e-5)
        assert per_seq[2].item() == pytest.approx(per_seq[3].item(), rel=1e-5)


def test_disco_does_not_clip_far_off_policy_tokens():
    # ratio e^3 on the correct answer: PPO's clip would zero the gradient, DisCO's Lratio score keeps it
    logp, batch = make_batch([[0.0], [-1.0]], [1.0, 0.0], [0, 0], old=[[-3.0], [-1.0]])
    _, grad, terms = loss_and_grad(disco_loss, logp, batch, score="Lratio", beta=0.0)
    assert terms.metrics["ratio_max"].item() == pytest.approx(math.exp(3.0), rel=1e-5)
    # d/dlogp of -s = -r: the gradient grows with the ratio
    assert grad[0, 1].item() == pytest.approx(-math.exp(3.0), rel=1e-5)


def test_disco_lratio_hand_computed():
    rows = [[-1.0, -1.0], [-2.0]]
    old = [[-1.2, -0.8], [-2.5]]
    logp, batch = make_batch(rows, [1.0, 0.0], [0, 0], old=old)
    loss, _, terms = loss_and_grad(disco_loss, logp, batch, score="Lratio", beta=0.0)
    r = [np.exp(np.array(a) - np.array(b)) for a, b in zip(rows, old)]
    s = [x.mean() for x in r]
    assert loss == pytest.approx(-(s[0] - s[1]), rel=1e-5)  # tau default 1 for Lratio, one negative
    lr = np.concatenate([np.log(x) for x in r])
    assert terms.metrics["kl_constraint"].item() == pytest.approx(np.mean(np.exp(lr) - 1 - lr), rel=1e-5)


def test_disco_large_tau_recovers_disco_b():
    logp, batch = make_batch(ROWS, REWARDS, GROUPS)
    a, ga, _ = loss_and_grad(disco_loss, logp, batch, tau=1e6)
    b, gb, _ = loss_and_grad(disco_b_loss, logp, batch)
    assert a == pytest.approx(b, rel=1e-4)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_squared_hinge_is_zero_inside_the_kl_budget():
    for kl_value, delta, beta in [(0.5e-4, 1e-4, 1e3), (1e-4, 1e-4, 1e3), (0.3, 0.5, 10.0)]:
        kl = torch.tensor(kl_value, requires_grad=True)
        out = kl_squared_hinge(kl, delta=delta, beta=beta)
        (g,) = torch.autograd.grad(out, kl)
        assert out.item() == 0.0 and g.item() == 0.0
    # outside: gradient of (beta/2)[KL - delta]^2 = beta (KL - delta)
    kl = torch.tensor(0.3, requires_grad=True)
    out = kl_squared_hinge(kl, delta=0.1, beta=10.0)
    (g,) = torch.autograd.grad(out, kl)
    assert out.item() == pytest.approx(10.0 * 0.2 * 0.3)
    assert g.item() == pytest.approx(10.0 * 0.2)


def test_disco_kl_constraint_in_the_objective():
    # same scores, off-policy by +0.2 per token: KL = mean(r - 1 - log r) with r = e^0.2
    rows = [[-1.0, -1.0], [-2.0, -2.0]]
    old = [[-1.2, -1.2], [-2.2, -2.2]]
    logp, batch = make_batch(rows, [1.0, 0.0], [0, 0], old=old)
    kl = math.exp(0.2) - 1 - 0.2  # 0.0214
    inside, g_in, t_in = loss_and_grad(disco_b_loss, logp, batch, delta=0.05, beta=1e3)
    assert t_in.metrics["kl_constraint_active"].item() == 0.0
    assert inside == pytest.approx(-(-1.0 - -2.0), rel=1e-5)
    outside, g_out, t_out = loss_and_grad(disco_b_loss, logp, batch, delta=0.01, beta=1e3)
    assert t_out.metrics["kl_constraint_active"].item() == 1.0
    assert outside == pytest.approx(inside + 1e3 * (kl - 0.01) * kl, rel=1e-4)
    # extra gradient per token: beta (KL - delta) d KL / d logp_t = beta (KL - delta) (r - 1) / n_tokens
    extra = 1e3 * (kl - 0.01) * (math.exp(0.2) - 1) / 4
    assert (g_out - g_in)[batch.loss_mask].tolist() == pytest.approx([extra] * 4, rel=1e-4)


def test_disco_degenerate_batches():
    # all-zero rewards (a tiny random model): no valid group, only the KL hinge (0 on-policy)
    logp, batch = make_batch(ROWS, [0.0] * 7, GROUPS)
    for fn in (disco_loss, disco_b_loss, drpo_loss):
        loss, grad, terms = loss_and_grad(fn, logp, batch)
        assert loss == 0.0 and grad.abs().max().item() == 0.0
        assert terms.metrics["valid_group_fraction"].item() == 0.0
    # every row empty
    logp, batch = make_batch([[], []], [1.0, 0.0], [0, 0])
    for fn in (disco_loss, disco_b_loss, drpo_loss, copg_loss):
        loss, grad, _ = loss_and_grad(fn, logp, batch)
        assert math.isfinite(loss) and torch.isfinite(grad).all()


def test_disco_ignores_non_binary_rewards_and_empty_responses():
    rows = [[-1.0], [-2.0], [-3.0], []]
    logp, batch = make_batch(rows, [1.0, 0.0, 0.5, 1.0], [0, 0, 0, 0])
    loss, grad, _ = loss_and_grad(disco_loss, logp, batch)
    assert loss == pytest.approx(-(-1.0 - -2.0), rel=1e-5)
    assert grad[2].abs().max().item() == 0.0 and grad[3].abs().max().item() == 0.0
    # a threshold turns 0.5 into a negative
    _, grad_t, _ = loss_and_grad(disco_b_loss, logp, batch, threshold=0.7)
    assert grad_t[2, 1].item() > 0


def test_disco_rejects_unknown_score_and_bad_tau():
    logp, batch = make_batch(ROWS, REWARDS, GROUPS)
    with pytest.raises(ValueError, match="score"):
        disco_loss(logp, batch, score="logp")
    with pytest.raises(ValueError, match="tau"):
        disco_loss(logp, batch, tau=0.0)


def disco_loop(logp, batch, *, tau, delta, beta, score, weights=None):
    """Plain-Python DisCO / DisCO-b / DRPO loss (tau None: DisCO-b), grouping with dicts."""
    mask = batch.loss_mask
    old = batch.sampler_logprobs
    scores = {}
    for i in range(len(batch)):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        if not toks:
            continue
        vals = [logp[i, t] if score == "logL" else torch.exp(logp[i, t] - old[i, t]) for t in toks]
        scores[i] = sum(vals) / len(vals)
    groups = {}
    for i, g in enumerate(batch.group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    total = 0.0
    for members in groups.values():
        pos = [i for i in members if i in scores and batch.rewards[i].item() == 1.0]
        neg = [i for i in members if i in scores and batch.rewards[i].item() == 0.0]
        if not pos or not neg:
            continue
        if tau is None:
            neg_term = sum(scores[j] for j in neg) / len(neg)
        else:
            neg_term = tau * (torch.logsumexp(torch.stack([scores[j] / tau for j in neg]), 0) - math.log(len(neg)))
        if weights is None:
            pos_term = sum(scores[i] for i in pos) / len(pos)
        else:
            z = sum(weights[i] for i in pos)
            pos_term = sum(weights[i] / z * scores[i] for i in pos)
        total = total + pos_term - neg_term
    objective = -total / len(groups)
    kls = [torch.exp(logp[i, t] - old[i, t]) - 1 - (logp[i, t] - old[i, t])
           for i in range(len(batch)) for t in range(mask.shape[1]) if mask[i, t]]
    kl = sum(kls) / max(len(kls), 1)
    kl_value = float(kl.detach()) if torch.is_tensor(kl) else float(kl)
    return objective + max(beta * (kl_value - delta), 0.0) * kl


def random_group_batch(seed, *, max_len=5):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 5) for _ in range(rng.randint(1, 4))]
    rows, rewards, groups, old = [], [], [], []
    ids = rng.sample(range(100), len(sizes))  # arbitrary, non-contiguous group ids
    for gid, size in zip(ids, sizes):
        for _ in range(size):
            n = rng.choice([0, 1, 2, max_len]) if rng.random() < 0.2 else rng.randint(1, max_len)
            row = [rng.uniform(-3, -0.1) for _ in range(n)]
            rows.append(row)
            old.append([x + rng.uniform(-0.05, 0.05) for x in row])
            rewards.append(rng.choice([0.0, 1.0, 1.0, 0.0, 0.5]))
            groups.append(gid)
    order = list(range(len(rows)))
    rng.shuffle(order)  # groups interleaved in the batch
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return pick(rows), pick(rewards), pick(groups), pick(old)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("variant", ["disco", "disco_b", "disco_lratio", "drpo"])
def test_loop_reference_equals_vectorized(seed, variant):
    rows, rewards, groups, old = random_group_batch(seed)
    logp, batch = make_batch(rows, rewards, groups, old=old)
    delta, beta = 1e-4, 1e3
    if variant == "disco":
        fn, kw, ref_kw = disco_loss, {}, {"tau": 10.0, "score": "logL"}
    elif variant == "disco_b":
        fn, kw, ref_kw = disco_b_loss, {}, {"tau": None, "score": "logL"}
    elif variant == "disco_lratio":
        fn, kw, ref_kw = disco_loss, {"score": "Lratio"}, {"tau": 1.0, "score": "Lratio"}
    else:
        fn, kw, ref_kw = drpo_loss, {"lam": 0.3, "max_length": 6}, {"tau": 10.0, "score": "logL"}
        lengths = batch.loss_mask.sum(-1).tolist()
        ref_kw["weights"] = [math.exp((1 - n / 6) / 0.3) for n in lengths]
    loss, grad, _ = loss_and_grad(fn, logp, batch, **kw)
    logp2 = logp.detach().clone().requires_grad_(True)
    ref = disco_loop(logp2, batch, delta=delta, beta=beta, **ref_kw)
    ref = ref if torch.is_tensor(ref) else torch.tensor(float(ref), requires_grad=True)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-6)
    if ref.requires_grad and ref.grad_fn is not None:
        (ref_grad,) = torch.autograd.grad(ref, logp2, allow_unused=True)
        ref_grad = torch.zeros_like(grad) if ref_grad is None else ref_grad
    else:
        ref_grad = torch.zeros_like(grad)
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-4)


# -- DRPO ----------------------------------------------------------------------------------------


def test_drpo_positive_weights_sum_to_one_within_positives():
    mask = torch.zeros(6, 9, dtype=torch.bool)
    for i, n in enumerate([2, 8, 4, 3, 5, 1]):
        mask[i, 1 : 1 + n] = True
    pos = torch.tensor([True, True, False, True, True, False])
    groups = torch.tensor([7, 7, 7, 3, 3, 3])
    w = drpo_positive_weights(mask, pos, groups, lam=0.1, max_length=8)
    assert w[~pos].tolist() == [0.0, 0.0]
    assert w[:3].sum().item() == pytest.approx(1.0) and w[3:].sum().item() == pytest.approx(1.0)
    # hand: exp((1 - 2/8)/0.1) : exp((1 - 8/8)/0.1) = e^7.5 : 1
    assert w[0].item() == pytest.approx(math.exp(7.5) / (math.exp(7.5) + 1.0), rel=1e-6)
    assert w[3].item() > w[4].item()  # shorter correct answer weighs more
    # no positives anywhere: all zero, finite
    w0 = drpo_positive_weights(mask, torch.zeros(6, dtype=torch.bool), groups, lam=0.1, max_length=None)
    assert w0.abs().sum().item() == 0.0


def test_drpo_hand_computed():
    rows = [[-1.0], [-2.0, -2.0, -2.0], [-3.0, -1.0]]
    logp, batch = make_batch(rows, [1.0, 1.0, 0.0], [0, 0, 0])
    loss, grad, _ = loss_and_grad(drpo_loss, logp, batch, lam=0.5, max_length=4)
    w = np.array([np.exp((1 - 1 / 4) / 0.5), np.exp((1 - 3 / 4) / 0.5)])
    w = w / w.sum()
    s = [-1.0, -2.0, -2.0]
    assert loss == pytest.approx(-(w[0] * s[0] + w[1] * s[1] - s[2]), rel=1e-5)
    assert grad[0, 1].item() == pytest.approx(-w[0], rel=1e-5)
    assert grad[1, 1:4].tolist() == pytest.approx([-w[1] / 3] * 3, rel=1e-5)


def test_drpo_long_correct_answer_still_gets_a_positive_push_and_large_lam_is_disco():
    rows = [[-1.0], [-1.0] * 7, [-1.0, -1.0]]
    logp, batch = make_batch(rows, [1.0, 1.0, 0.0], [0, 0, 0])
    _, grad, _ = loss_and_grad(drpo_loss, logp, batch, lam=0.05, max_length=8)
    assert (grad[1, 1:8] < 0).all()  # tiny weight, but never the wrong sign
    a, ga, _ = loss_and_grad(drpo_loss, logp, batch, lam=1e9)
    b, gb, _ = loss_and_grad(disco_loss, logp, batch, tau=10.0)
    assert a == pytest.approx(b, rel=1e-6) and torch.allclose(ga, gb, atol=1e-7)


def test_drpo_default_length_is_longest_response():
    rows = [[-1.0], [-2.0, -2.0], [-3.0]]
    logp, batch = make_batch(rows, [1.0, 1.0, 0.0], [0, 0, 0], pad=3)
    a, _, _ = loss_and_grad(drpo_loss, logp, batch)
    b, _, _ = loss_and_grad(drpo_loss, logp, batch, max_length=2)
    assert a == pytest.approx(b, rel=1e-6)


# -- CoPG ----------------------------------------------------------------------------------------


def test_copg_pair_hand_computed():
    rows = [[-1.0, -2.0], [-0.5]]
    ref = [[-1.5, -1.5], [-1.0]]
    logp, batch = make_batch(rows, [1.0, 0.0], [0, 0], ref=ref)
    beta = 0.5
    loss, grad, terms = loss_and_grad(copg_loss, logp, batch, beta=beta)
    lr = [(-3.0) - (-3.0), (-0.5) - (-1.0)]  # 0, 0.5
    x = [1.0 - beta * lr[0], 0.0 - beta * lr[1]]  # 1, -0.25
    assert loss == pytest.approx((x[0] - x[1]) ** 2 / (4 * beta), rel=1e-6)
    # grad of the loss w.r.t. each token logprob of y: -(1/2)(x - x'); of y': +(1/2)(x - x')
    assert grad[0, 1:3].tolist() == pytest.approx([-0.5 * (x[0] - x[1])] * 2, rel=1e-6)
    assert grad[1, 1].item() == pytest.approx(0.5 * (x[0] - x[1]), rel=1e-6)
    assert terms.metrics["reference_is_behaviour"].item() == 0.0


def test_copg_group_of_three_is_the_mean_over_pairs():
    rows = [[-1.0], [-2.0, -1.0], [-0.3]]
    ref = [[-1.2], [-1.0, -1.0], [-0.9]]
    rewards = [0.2, 1.0, 0.7]
    logp, batch = make_batch(rows, rewards, [4, 4, 4], ref=ref)
    beta = 0.3
    loss, _, _ = loss_and_grad(copg_loss, logp, batch, beta=beta)
    x = [r - beta * (sum(a) - sum(b)) for r, a, b in zip(rewards, rows, ref)]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum((x[i] - x[j]) ** 2 / (4 * beta) for i, j in pairs) / 3
    assert loss == pytest.approx(expected, rel=1e-5)


def test_copg_equal_regularised_rewards_give_zero_gradient():
    rows = [[-1.0, -2.0], [-0.5], [-0.7, -0.1]]
    logp, batch = make_batch(rows, [1.0, 1.0, 1.0], [0, 0, 0], ref=rows)  # pi == pi_ref, equal rewards
    loss, grad, _ = loss_and_grad(copg_loss, logp, batch)
    assert loss == 0.0 and grad.abs().max().item() == 0.0
    # equal rewards alone are not enough: a pi / pi_ref gap gives a KL-driven gradient toward pi_ref
    ref = [[-1.0, -2.0], [-1.5], [-0.7, -0.1]]  # response 1 is 1 nat more likely than under pi_ref
    logp, batch = make_batch(rows, [1.0, 1.0, 1.0], [0, 0, 0], ref=ref)
    _, grad, _ = loss_and_grad(copg_loss, logp, batch)
    assert grad[1, 1].item() > 0  # descent lowers log pi(y_1) back toward pi_ref


def test_copg_with_half_reward_gap_is_ipo():
    # R - R' = 1/2 (preference labels): (1/(4 beta)) (1/2 - beta h)^2 = (beta / 4) (h - 1/(2 beta))^2
    rows = [[-1.0, -1.0], [-2.0]]
    ref = [[-1.5, -1.0], [-1.0]]
    logp, batch = make_batch(rows, [0.5, 0.0], [0, 0], ref=ref)
    beta = 0.1
    loss, _, _ = loss_and_grad(copg_loss, logp, batch, beta=beta)
    h = (-2.0 - -2.5) - (-2.0 - -1.0)  # log-ratio margin of the preferred over the rejected response
    assert loss == pytest.approx(beta / 4 * (h - 1 / (2 * beta)) ** 2, rel=1e-5)


def test_copg_degenerate_and_reference_choice():
    # groups of one have no pair; all-zero rewards on-policy with pi == pi_ref: zero loss
    logp, batch = make_batch([[-1.0], [-2.0], [-1.0]], [0.0, 0.0, 0.0], [0, 1, 1], ref=[[-1.0], [-2.0], [-1.0]])
    loss, grad, terms = loss_and_grad(copg_loss, logp, batch)
    assert terms.metrics["valid_group_fraction"].item() == 0.5
    assert math.isfinite(loss)
    # no reference model: "auto" falls back to the behaviour policy, "ref" refuses
    logp, batch = make_batch([[-1.0], [-2.0]], [1.0, 0.0], [0, 0])
    _, _, terms = loss_and_grad(copg_loss, logp, batch)
    assert terms.metrics["reference_is_behaviour"].item() == 1.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        copg_loss(logp, batch, reference="ref")
    with pytest.raises(ValueError, match="beta"):
        copg_loss(logp, batch, beta=0.0)


@pytest.mark.parametrize("seed", range(6))
def test_copg_loop_reference_equals_vectorized(seed):
    rows, rewards, groups, old = random_group_batch(seed + 100)
    rewards = [r + 0.1 * i for i, r in enumerate(rewards)]  # continuous rewards
    logp, batch = make_batch(rows, rewards, groups, ref=old)
    beta = 0.2
    loss, grad, _ = loss_and_grad(copg_loss, logp, batch, beta=beta)
    logp2 = logp.detach().clone().requires_grad_(True)
    by_group = {}
    for i, g in enumerate(groups):
        if rows[i]:
            by_group.setdefault(g, []).append(i)
    group_losses = []
    for members in by_group.values():
        pair_losses = []
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                xi = rewards[i] - beta * (logp2[i, 1 : 1 + len(rows[i])].sum() - sum(old[i]))
                xj = rewards[j] - beta * (logp2[j, 1 : 1 + len(rows[j])].sum() - sum(old[j]))
                pair_losses.append((xi - xj) ** 2 / (4 * beta))
        if pair_losses:
            group_losses.append(sum(pair_losses) / len(pair_losses))
    if not group_losses:
        assert loss == 0.0 and grad.abs().max().item() == 0.0
        return
    ref = sum(group_losses) / len(group_losses)
    assert loss == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    (ref_grad,) = torch.autograd.grad(ref, logp2)
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-4)


# -- shared properties ---------------------------------------------------------------------------

ALL = [disco_loss, disco_b_loss, drpo_loss, copg_loss]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("mode", MEAN_MODES)
def test_masked_positions_and_empty_rows_get_zero_gradient(fn, mode):
    rows = [[-1.0, -2.0], [], [-0.5, -0.2, -1.0], [-2.0]]
    old = [[-1.1, -2.0], [], [-0.5, -0.3, -1.0], [-2.2]]
    logp, batch = make_batch(rows, [1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0], old=old)
    _, grad, _ = loss_and_grad(fn, logp, batch, mode)
    assert grad[~batch.loss_mask].abs().max().item() == 0.0
    assert grad[1].abs().max().item() == 0.0
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", ALL)
def test_the_two_mean_reductions_agree(fn):
    logp, batch = make_batch(ROWS, REWARDS, GROUPS, old=[[x - 0.01 for x in r] for r in ROWS])
    a, ga, _ = loss_and_grad(fn, logp, batch, "token_mean")
    b, gb, _ = loss_and_grad(fn, logp, batch, "seq_mean_token_mean")
    assert a == pytest.approx(b, rel=1e-6) and torch.allclose(ga, gb, atol=1e-7)


@pytest.mark.parametrize("fn", [disco_loss, disco_b_loss, drpo_loss])
def test_kl_to_reference_term(fn):
    logp, batch = make_batch(ROWS, REWARDS, GROUPS, ref=[[x - 0.5 for x in r] for r in ROWS])
    base = fn(logp, batch).per_token
    with_kl = fn(logp, batch, kl_coef=0.1)
    d = 0.5  # ref - logp = -0.5 -> k3 = e^-0.5 + 0.5 - 1
    diff = (with_kl.per_token - base)[batch.loss_mask]
    assert diff.tolist() == pytest.approx([0.1 * (math.exp(-d) + d - 1)] * int(batch.loss_mask.sum()), rel=1e-5)


def test_registered():
    for name in ("disco", "disco_b", "drpo", "copg"):
        assert name in OBJECTIVES
