"""BNPO, SPO (single stream) and OBLR-PO: hand values, special cases, state transitions, loop == vectorized."""

import io
import math
import random

import numpy as np
import pytest
import torch

from credo.credit import CREDIT
from credo.credit.normalisation import (
    OBLRState,
    SPOState,
    bnpo_advantages,
    bnpo_advantages_loop,
    bnpo_beta_fit,
    bnpo_decomposed_advantages,
    logit_grad_sq_norm,
    oblr_advantages,
    oblr_advantages_loop,
    oblr_lr_update,
    oblr_snr,
    spo_advantages,
    spo_advantages_loop,
    spo_baseline,
    spo_init_state,
    spo_rho,
    spo_sampling_weights,
    spo_update,
)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def beta_pdf(x, a, b):
    """An independent Beta density (math.lgamma)."""
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return math.exp((a - 1) * math.log(x) + (b - 1) * math.log(1 - x) + log_norm)


def test_registered_names():
    for name in ("bnpo", "spo", "oblr"):
        assert name in CREDIT


# -- BNPO ----------------------------------------------------------------------------------------


def test_bnpo_hand_computed():
    # p = 0.5, 0.25, 0 -> mu = 0.25, v = 0.0625 (unbiased), mu(1-mu)/v - 1 = 2
    # a = 0.5, b = 1.5 -> alpha = 1 + 0.5/3, beta = 1 + 1.5/3 = 1.5
    rewards = t([1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    groups = t([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], torch.long)
    alpha, beta = 1 + 0.5 / 3, 1.5
    assert bnpo_beta_fit(t([0.5, 0.25, 0.0])) == pytest.approx((alpha, beta))
    adv = bnpo_advantages(rewards, groups)
    w0, w1 = 1 / beta_pdf(0.5, alpha, beta), 1 / beta_pdf(0.25, alpha, beta)
    expected = [w0 * 0.5, w0 * 0.5, -w0 * 0.5, -w0 * 0.5, w1 * 0.75] + [-w1 * 0.25] * 3 + [0.0] * 4
    assert adv.tolist() == pytest.approx(expected, rel=1e-5)
    # the all-wrong group: the Beta pdf at 0 is 0 (weight clamped at 1e6), but it multiplies 0
    assert adv[8:].tolist() == [0.0] * 4


def test_bnpo_alpha_beta_one_is_reinforce_with_group_mean_baseline():
    rewards = t([1, 0, 0, 1, 1, 1, 0, 0.5])
    groups = t([0, 0, 0, 3, 3, 3, 7, 7], torch.long)
    adv = bnpo_advantages(rewards, groups, alpha=1.0, beta=1.0)
    expected = []
    for r, g in zip(rewards.tolist(), groups.tolist()):
        members = [x for x, gg in zip(rewards.tolist(), groups.tolist()) if gg == g]
        expected.append(r - np.mean(members))
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_bnpo_alpha_beta_three_halves_is_rescaled_grpo():
    # Beta(3/2, 3/2) pdf = (8 / pi) sqrt(p (1 - p)): A = (pi / 8) (R - p) / std_population
    rewards = t([1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1])
    groups = t([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], torch.long)
    adv = bnpo_advantages(rewards, groups, alpha=1.5, beta=1.5)
    for g in range(3):
        r = rewards[groups == g].numpy()
        grpo = (r - r.mean()) / r.std(ddof=0)
        assert adv[groups == g].tolist() == pytest.approx((math.pi / 8 * grpo).tolist(), rel=1e-5)


def test_bnpo_degenerate_batches():
    # every prompt has the same p: v = 0 would give NaN officially; guarded to unit weights
    rewards = t([1, 0, 0, 1, 1, 0])
    groups = t([0, 0, 1, 1, 2, 2], torch.long)
    adv = bnpo_advantages(rewards, groups)
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.5, -0.5])
    # one prompt: mu := 0, v := 1 -> alpha = beta = 1
    adv = bnpo_advantages(t([1, 0, 0, 0]), t([5, 5, 5, 5], torch.long))
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    # all-zero rewards (a tiny random model): zero and finite
    adv = bnpo_advantages(torch.zeros(8), t([0, 0, 0, 0, 1, 1, 1, 1], torch.long))
    assert adv.tolist() == [0.0] * 8
    # a group of one uses p = 0 (official): A = w(0) R
    adv = bnpo_advantages(t([1, 0, 1, 1]), t([0, 0, 1, 2], torch.long))
    assert torch.isfinite(adv).all()


def test_bnpo_reward_range():
    rewards = t([2.0, 0.0, 1.0, 1.0])
    groups = t([0, 0, 1, 1], torch.long)
    with pytest.raises(ValueError, match="r_min"):
        bnpo_advantages(rewards, groups)
    # the affine map into [0, 1]: rewards 0..2 with r_max = 2 equal rewards 0..1
    a = bnpo_advantages(rewards, groups, r_max=2.0)
    b = bnpo_advantages(rewards / 2, groups)
    assert a.tolist() == pytest.approx(b.tolist())


def test_bnpo_decomposition_averages_per_reward_advantages():
    acc = t([1, 0, 0, 1, 0, 0])
    fmt = t([1, 1, 0, 1, 0, 1])
    groups = t([0, 0, 0, 1, 1, 1], torch.long)
    adv = bnpo_decomposed_advantages(torch.stack([acc, fmt], 1), groups)
    expected = (bnpo_advantages(acc, groups) + bnpo_advantages(fmt, groups)) / 2
    assert adv.tolist() == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="reward_components"):
        bnpo_decomposed_advantages(acc, groups)


def random_layout(seed, values=(0.0, 1.0)):
    rng = random.Random(seed)
    rewards, groups = [], []
    for g in rng.sample(range(40), rng.randint(1, 6)):
        for _ in range(rng.choice([1, 2, 4, 4, 8])):
            rewards.append(rng.choice(values) if rng.random() < 0.8 else round(rng.random(), 3))
            groups.append(g)
    order = list(range(len(rewards)))
    rng.shuffle(order)
    return [rewards[i] for i in order], [groups[i] for i in order]


@pytest.mark.parametrize("seed", range(10))
def test_bnpo_loop_equals_vectorized(seed):
    rewards, groups = random_layout(seed)
    vec = bnpo_advantages(t(rewards), t(groups, torch.long))
    loop = bnpo_advantages_loop(rewards, groups)
    assert vec.tolist() == pytest.approx(loop, rel=1e-5, abs=1e-6)


# -- SPO -----------------------------------------------------------------------------------------


def test_spo_init_state():
    state = spo_init_state({3: 6, 9: 0}, offline_n=8, rho_min=0.875)  # N_init = 8
    assert state.alpha[3] == pytest.approx(8 * 6.5 / 9) and state.beta[3] == pytest.approx(8 * 2.5 / 9)
    assert state.alpha[9] == pytest.approx(8 * 0.5 / 9) and state.beta[9] == pytest.approx(8 * 8.5 / 9)
    fresh = spo_init_state({3: 6}, offline_n=0)
    assert fresh.alpha == {} and spo_baseline(fresh, t([3], torch.long)).tolist() == [0.5]


def test_spo_rho():
    assert spo_rho(None, torch.zeros(4)) == (0.96, 0.0)  # first visit: D = 0, rho = rho_max
    rho, d = spo_rho(torch.tensor([-1.0, -2.0]), torch.tensor([-1.006, -1.994]))
    assert d == pytest.approx(0.006, rel=1e-4)
    assert rho == pytest.approx(2 ** (-0.1), rel=1e-4)  # inside [0.875, 0.96]
    rho, _ = spo_rho(torch.tensor([-1.0]), torch.tensor([-1.5]))
    assert rho == 0.875  # far: clipped at rho_min
    assert spo_rho(torch.tensor([]), torch.tensor([]))[0] == 0.96  # empty response


def test_spo_update_transitions_and_purity():
    state = SPOState(alpha={1: 2.0, 2: 1.0}, beta={1: 1.0, 2: 3.0})
    new = spo_update(state, t([1, 2, 7], torch.long), t([1.0, 0.0, 1.0]), {1: 0.9, 2: 0.5, 7: 0.96},
                     new_logprobs={1: torch.tensor([-0.1, -0.2])})
    assert new.alpha == pytest.approx({1: 0.9 * 2 + 1, 2: 0.5 * 1, 7: 0.96 * 0.5 + 1})
    assert new.beta == pytest.approx({1: 0.9 * 1, 2: 0.5 * 3 + 1, 7: 0.96 * 0.5})
    assert new.last_logprobs[1].tolist() == pytest.approx([-0.1, -0.2])
    assert state.alpha == {1: 2.0, 2: 1.0} and state.last_logprobs == {}  # the input is untouched
    # p_hat before / after
    assert spo_baseline(state, t([1, 2, 7], torch.long)).tolist() == pytest.approx([2 / 3, 0.25, 0.5])
    # several samples of one prompt: forgetting once, all outcomes counted
    multi = spo_update(state, t([1, 1, 1], torch.long), t([1.0, 0.0, 1.0]), 0.9)
    assert multi.alpha[1] == pytest.approx(0.9 * 2 + 2) and multi.beta[1] == pytest.approx(0.9 * 1 + 1)
    # rewards outside [0, 1] are clamped so pseudo-counts stay non-negative
    clamped = spo_update(SPOState(), t([0], torch.long), t([-3.0]), 1.0)
    assert clamped.alpha[0] == 0.5 and clamped.beta[0] == 1.5


def test_spo_advantages_hand_computed():
    state = SPOState(alpha={0: 3.0, 1: 1.0, 2: 1.0}, beta={0: 1.0, 1: 3.0, 2: 1.0})
    rewards = t([1.0, 1.0, 0.0, 0.0])
    prompts = t([0, 1, 2, 5], torch.long)  # prompt 5 is new: prior 0.5 / 0.5
    adv = spo_advantages(rewards, prompts, state=state)
    raw = np.array([1 - 0.75, 1 - 0.25, 0 - 0.5, 0 - 0.5])
    assert adv.tolist() == pytest.approx(((raw - raw.mean()) / (raw.std(ddof=1) + 1e-8)).tolist(), rel=1e-5)
    # no state: every p_hat is 0.5, so the advantage is the whitened reward
    r = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    adv = spo_advantages(t(r.tolist()), t([0, 1, 2, 3, 4], torch.long))
    assert adv.tolist() == pytest.approx(((r - r.mean()) / (r.std(ddof=1) + 1e-8)).tolist(), rel=1e-5)


def test_spo_degenerate():
    assert spo_advantages(t([1.0]), t([0], torch.long)).tolist() == [0.0]  # batch of one
    assert spo_advantages(torch.zeros(4), t([0, 1, 2, 3], torch.long)).tolist() == [0.0] * 4  # all equal
    assert spo_advantages(t([]), t([], torch.long)).numel() == 0


def test_spo_sampling_weights():
    state = SPOState(alpha={0: 1.0, 1: 5.0}, beta={0: 1.0, 1: 0.0})
    w = spo_sampling_weights(state, t([0, 1, 2], torch.long))
    assert w.tolist() == pytest.approx([0.5 + 0.05, 0.0 + 0.05, 0.5 + 0.05])


def test_spo_state_checkpoints():
    state = spo_update(spo_init_state({1: 3}), t([1, 4], torch.long), t([1.0, 0.0]), 0.9,
                       new_logprobs={4: torch.tensor([-0.3])})
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    back = SPOState.from_dict(torch.load(buf))
    assert back.alpha == state.alpha and back.beta == state.beta
    assert back.last_logprobs[4].tolist() == pytest.approx([-0.3])


def test_spo_two_step_cycle():
    """Step 1 on fresh prompts, then step 2 sees the updated baseline and the drift-based rho."""
    state = SPOState()
    prompts = t([0, 1], torch.long)
    adv1 = spo_advantages(t([1.0, 0.0]), prompts, state=state)
    assert adv1.tolist() == pytest.approx([0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)], rel=1e-6)  # std of (0.5, -0.5)
    rho = {0: spo_rho(None, torch.tensor([-0.2]))[0], 1: spo_rho(None, torch.tensor([-0.4]))[0]}
    state = spo_update(state, prompts, t([1.0, 0.0]), rho,
                       new_logprobs={0: torch.tensor([-0.2]), 1: torch.tensor([-0.4])})
    assert state.alpha[0] == pytest.approx(0.96 * 0.5 + 1) and state.beta[1] == pytest.approx(0.96 * 0.5 + 1)
    # the policy has moved by 0.006 nats on prompt 0's stored response
    rho0, d0 = spo_rho(state.last_logprobs[0], torch.tensor([-0.206]))
    assert d0 == pytest.approx(0.006, rel=1e-3) and rho0 == pytest.approx(2 ** -0.1, rel=1e-3)


@pytest.mark.parametrize("seed", range(8))
def test_spo_loop_equals_vectorized(seed):
    rng = random.Random(seed)
    rewards, prompts = random_layout(seed)
    state = SPOState(alpha={g: rng.uniform(0.1, 5) for g in set(prompts) if rng.random() < 0.7},
                     beta={g: rng.uniform(0.1, 5) for g in set(prompts)})
    vec = spo_advantages(t(rewards), t(prompts, torch.long), state=state)
    loop = spo_advantages_loop(rewards, prompts, state=state)
    assert vec.tolist() == pytest.approx(loop, rel=1e-5, abs=1e-6)


# -- OBLR-PO -------------------------------------------------------------------------------------


def test_oblr_hand_computed():
    rewards = t([1.0, 0.0, 0.0, 0.3, 0.3, 2.0])
    groups = t([0, 0, 0, 1, 1, 2], torch.long)
    norms = t([2.0, 1.0, 1.0, 5.0, 1.0, 3.0])
    adv = oblr_advantages(rewards, groups, grad_sq_norms=norms)
    # b*_0 = (2 * 1) / 4 = 0.5; group 1 zero variance; a group of one: b = 0
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.0, 0.0, 2.0])
    plain = oblr_advantages(rewards, groups)
    assert plain[:3].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    zero = oblr_advantages(rewards, groups, grad_sq_norms=torch.zeros(6))  # sum g = 0: the plain mean
    assert zero.tolist() == pytest.approx(plain.tolist())


def test_oblr_baseline_minimises_the_gradient_variance():
    rng = np.random.default_rng(0)
    r = rng.random(6)
    g = rng.random(6) * 4
    adv = oblr_advantages(t(r.tolist()), torch.zeros(6, dtype=torch.long), grad_sq_norms=t(g.tolist()))
    b_star = float(r[0] - adv[0])
    variance = lambda b: float(np.sum(g * (r - b) ** 2))  # noqa: E731  E ||(R - b) grad log pi||^2
    for delta in (-0.1, -1e-3, 1e-3, 0.1):
        assert variance(b_star) < variance(b_star + delta)


def test_logit_grad_sq_norm():
    logp = torch.log(t([[1.0, 0.5, 0.25, 1.0], [1.0, 0.8, 1.0, 1.0]]))
    mask = torch.tensor([[False, True, True, False], [False, True, False, False]])
    proxy = logit_grad_sq_norm(logp, mask)
    assert proxy.tolist() == pytest.approx([0.25 + 0.5625, 0.04])
    # full vocabulary (V = 3), rows of the three scored positions in mask order
    full = torch.log(t([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.8, 0.1, 0.1]]))
    exact = logit_grad_sq_norm(logp, mask, full_logprobs=full)
    e = [1 - 2 * 0.5 + (0.25 + 0.09 + 0.04), 1 - 2 * 0.25 + (0.0625 + 0.0625 + 0.25), 1 - 2 * 0.8 + (0.64 + 0.02)]
    assert exact.tolist() == pytest.approx([e[0] + e[1], e[2]], rel=1e-5)
    assert (exact >= proxy - 1e-6).all()  # the sampled-token form is a lower bound


def test_oblr_snr():
    g = t([[1.0, 0.0], [3.0, 0.0]], torch.float64)  # mean (2, 0): signal 4; noise mean(1, 1) = 1
    assert oblr_snr(g).item() == pytest.approx(4.0)
    assert oblr_snr(t([[1.0, 2.0], [1.0, 2.0]])).item() == math.inf  # identical: no noise
    assert oblr_snr(torch.zeros(3, 2)).item() == 0.0
    assert oblr_snr(t([[1.0, 1.0]])).item() == math.inf  # a single sample


def test_oblr_learning_rate_state_transitions():
    s0 = OBLRState()
    s1, lr1 = oblr_lr_update(s0, 2.0, base_lr=1e-5)
    assert lr1 == pytest.approx(1e-5) and s1.snr_ref.item() == 2.0 and s1.steps.item() == 1
    assert math.isnan(s0.snr_ema.item())  # the input state is untouched
    s2, lr2 = oblr_lr_update(s1, 4.0, base_lr=1e-5, ema=0.5)  # ema 3 -> scale 1.5
    assert s2.snr_ema.item() == pytest.approx(3.0) and lr2 == pytest.approx(1.5e-5)
    _, lr_hi = oblr_lr_update(s2, 100.0, base_lr=1e-5, ema=0.0)  # clamped at max_scale 2
    assert lr_hi == pytest.approx(2e-5)
    _, lr_lo = oblr_lr_update(s2, 0.0, base_lr=1e-5, ema=0.0)  # clamped at min_scale 0.1
    assert lr_lo == pytest.approx(1e-6)
    s3, lr_inf = oblr_lr_update(s2, math.inf, base_lr=1e-5)
    assert lr_inf == pytest.approx(2e-5) and s3.snr_ema.item() == s2.snr_ema.item()
    z1, lr_z = oblr_lr_update(OBLRState(), 0.0, base_lr=1e-5)  # no reference yet: base lr
    assert lr_z == pytest.approx(1e-5)
    z2, _ = oblr_lr_update(z1, 1.0, base_lr=1e-5)
    assert z2.snr_ref.item() == 1.0  # the first positive SNR becomes the reference
    back = OBLRState.from_dict(s2.to_dict())
    assert back.snr_ema.item() == s2.snr_ema.item() and back.steps.item() == 2


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("with_norms", [False, True])
def test_oblr_loop_equals_vectorized(seed, with_norms):
    rewards, groups = random_layout(seed, values=(0.0, 1.0, 0.5))
    rng = random.Random(seed)
    norms = [rng.choice([0.0, rng.uniform(0, 3)]) for _ in rewards] if with_norms else None
    vec = oblr_advantages(t(rewards), t(groups, torch.long), grad_sq_norms=None if norms is None else t(norms))
    loop = oblr_advantages_loop(rewards, groups, grad_sq_norms=norms)
    assert vec.tolist() == pytest.approx(loop, rel=1e-5, abs=1e-6)


# -- shared properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [bnpo_advantages, spo_advantages, oblr_advantages])
def test_permuting_the_batch_permutes_the_advantages(fn):
    rewards, groups = random_layout(3)
    r, g = t(rewards), t(groups, torch.long)
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(0))
    assert fn(r[perm], g[perm]).tolist() == pytest.approx(fn(r, g)[perm].tolist(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["bnpo", "spo", "oblr"])
def test_trains_end_to_end(tmp_path, name):
    """A 2-step tiny `credo train` with this credit estimator (one torch thread)."""
    from credo.cli import main
    from credo.train.logging import read_metrics

    threads = torch.get_num_threads()
    try:
        args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name,
                "--run.progress", "false", "--rl.steps", "2", "--run.eval_base", "false",
                "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1", "--rl.credit", name]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    rl = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2 and all(math.isfinite(r["loss"]) for r in rl)
