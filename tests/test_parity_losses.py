"""The 2026 peer-parity methods: LUSPO and VESPO (TRL), DPPO-TV / DPPO-KL, DRO, GDPO and the optimal
token baseline (verl), against hand-computed numbers and against the peers' functions re-implemented
here from reading (plain per-row loops, not copied):

  verl 1dda039 verl/trainer/ppo/core_algos.py: compute_policy_loss_dppo_tv / _dppo_kl / _dro,
      compute_gdpo_outcome_advantage (+ compute_grpo_outcome_advantage, verl_F.masked_whiten),
      compute_optimal_token_baseline_advantage
  TRL f2cd577 trl/trainer/grpo_trainer.py: _compute_loss (loss_type "luspo", "vespo"), get_gamma_weights

Losses are compared on value and on the gradient with respect to the policy logprobs, with credo's
reduction set to the peer's aggregation (verl token-mean; TRL luspo (l_i |y_i|).mean(); TRL vespo
sum / token count).
"""

import math
import random

import pytest
import torch

from credo.batch import RolloutBatch
from credo.config import TrainConfig
from credo.credit import CREDIT, CreditInputs
from credo.errors import CredoError
from credo.objectives import OBJECTIVES, reduce_loss
from credo.train.run import check_method_params

NEW_OBJECTIVES = ["luspo", "vespo", "dppo_tv", "dppo_kl", "dro"]
NEW_CREDIT = ["gdpo", "optimal_token_baseline"]


def make_batch(old, adv, mask):
    old, adv = torch.as_tensor(old, dtype=torch.float32), torch.as_tensor(adv, dtype=torch.float32)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    B, T = mask.shape
    return RolloutBatch(
        tokens=torch.zeros(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.bool),
        loss_mask=mask, sampler_logprobs=old * mask, advantages=adv * mask, rewards=torch.zeros(B),
        group_ids=torch.zeros(B, dtype=torch.long),
    )


def random_case(seed, *, seq_adv=False):
    """Rows with a prompt column, random lengths (>= 1), sampled-token probabilities in (0.02, 0.98),
    a policy that moved by up to +-0.6 in log space, advantages of both signs (one per row if seq_adv)."""
    rng = random.Random(seed)
    B, T = rng.randint(2, 5), rng.randint(3, 8)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, 1:1 + rng.randint(1, T - 1)] = True
    old = torch.tensor([[math.log(rng.uniform(0.02, 0.98)) for _ in range(T)] for _ in range(B)])
    new = (old + torch.tensor([[rng.uniform(-0.6, 0.6) for _ in range(T)] for _ in range(B)])).clamp(max=-1e-3)
    if seq_adv:
        adv = torch.tensor([[a] * T for a in (rng.choice([-1.5, -0.4, 0.0, 0.7, 1.2]) for _ in range(B))])
    else:
        adv = torch.tensor([[rng.uniform(-1.5, 1.5) for _ in range(T)] for _ in range(B)])
    return old, new, adv, mask


def credo_loss_and_grad(name, new, batch, reduction, **params):
    logp = new.clone().requires_grad_(True)
    terms = OBJECTIVES.get(name)(logp, batch, **params)
    loss = reduce_loss(terms.per_token, batch.loss_mask, reduction)
    loss.backward()
    return loss.item(), logp.grad * batch.loss_mask


def peer_loss_and_grad(fn, new, *args):
    logp = new.clone().double().requires_grad_(True)
    loss = fn(logp, *args)
    loss.backward()
    return loss.item(), logp.grad.float()


# -- registration ---------------------------------------------------------------------------------

def test_registered_and_listed():
    import credo.credit
    import credo.objectives
    from credo.catalog import entries

    listed = {e.name: e for e in entries(credo.objectives) + entries(credo.credit)}
    for name in NEW_OBJECTIVES:
        assert name in OBJECTIVES and name in listed and "arXiv" in listed[name].paper
    for name in NEW_CREDIT:
        assert name in CREDIT and name in listed and "arXiv" in listed[name].paper


# -- verl's DPPO (binary TV / KL), re-implemented per token ---------------------------------------

def verl_dppo(logp, old, adv, mask, kind, lo, hi, c):
    """token-mean of -A sg[min(r, c)] logp valid; valid per verl's binary TV / KL masks."""
    total, n = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            lp, lq, a = logp[b, t], float(old[b, t]), float(adv[b, t])
            r = math.exp(min(max(float(lp) - lq, -20.0), 20.0))
            p, q = math.exp(float(lp)), math.exp(lq)
            if kind == "tv":
                valid = (p - q <= hi) if a > 0 else (p - q >= -lo)
            else:
                d = q * (lq - float(lp)) + (1 - q) * math.log((1 - q + 1e-8) / (1 - p + 1e-8))
                valid = (d <= hi or p <= q) if a > 0 else (d <= lo or p >= q)
            total = total + (-a * min(r, c) * lp * float(valid))
            n += 1
    return total / n


@pytest.mark.parametrize("kind", ["tv", "kl"])
@pytest.mark.parametrize("seed", range(6))
def test_dppo_matches_verl(kind, seed):
    old, new, adv, mask = random_case(seed)
    lo, hi, c = 0.1, 0.15, 1.3  # small thresholds and truncation so every branch is exercised
    batch = make_batch(old, adv, mask)
    value, grad = credo_loss_and_grad(f"dppo_{kind}", new, batch, "token_mean",
                                      clip_low=lo, clip_high=hi, is_truncation=c)
    ref_value, ref_grad = peer_loss_and_grad(verl_dppo, new, old, adv * mask, mask, kind, lo, hi, c)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_dppo_tv_hand_values():
    # one token, q = 0.2, p = 0.5 (r = 2.5): p - q = 0.3
    #   A = +1: 0.3 > clip_high 0.2 -> masked, loss 0 and no gradient
    #   A = -1: 0.3 >= -0.2 -> kept: L = -(-1) * min(2.5, 20) * log 0.5 = 2.5 * (-0.6931) = -1.7329
    old = torch.tensor([[0.0, math.log(0.2)]] * 2)
    new = torch.tensor([[0.0, math.log(0.5)]] * 2)
    mask = torch.tensor([[False, True]] * 2)
    for a, want_loss, want_grad in ((1.0, 0.0, 0.0), (-1.0, 2.5 * math.log(0.5), 2.5)):
        batch = make_batch(old[:1], [[0.0, a]], mask[:1])
        value, grad = credo_loss_and_grad("dppo_tv", new[:1], batch, "token_mean")
        assert value == pytest.approx(want_loss, abs=1e-5)
        assert grad[0, 1].item() == pytest.approx(want_grad, abs=1e-5)


def test_dppo_kl_never_masks_a_move_against_the_advantage():
    # A = +1 and p fell far (0.9 -> 0.1): binary KL is large but p <= q, so the token keeps its gradient
    batch = make_batch([[0.0, math.log(0.9)]], [[0.0, 1.0]], [[False, True]])
    value, grad = credo_loss_and_grad("dppo_kl", torch.tensor([[0.0, math.log(0.1)]]), batch, "token_mean")
    r = 0.1 / 0.9
    assert grad[0, 1].item() == pytest.approx(-r, abs=1e-6)
    assert value == pytest.approx(-r * math.log(0.1), abs=1e-5)


# -- verl's DRO ----------------------------------------------------------------------------------

def verl_dro(logp, old, adv, mask, beta):
    m = mask.double()
    return (-(logp * adv - 0.5 * beta * (logp - old) ** 2) * m).sum() / m.sum()


@pytest.mark.parametrize("seed", range(4))
def test_dro_matches_verl(seed):
    old, new, adv, mask = random_case(seed)
    batch = make_batch(old, adv, mask)
    value, grad = credo_loss_and_grad("dro", new, batch, "token_mean", beta=0.3)
    ref_value, ref_grad = peer_loss_and_grad(verl_dro, new, old.double(), (adv * mask).double(), mask, 0.3)
    assert value == pytest.approx(ref_value, rel=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_dro_hand_values():
    # A = 1, logp = -1, old = -1.5, beta 0.1: L = -(1 * -1 - 0.05 * 0.25) = 1.0125; dL/dlogp = -(1 - 0.1 * 0.5) = -0.95
    batch = make_batch([[0.0, -1.5]], [[0.0, 1.0]], [[False, True]])
    value, grad = credo_loss_and_grad("dro", torch.tensor([[0.0, -1.0]]), batch, "token_mean", beta=0.1)
    assert value == pytest.approx(1.0125, abs=1e-6)
    assert grad[0, 1].item() == pytest.approx(-0.95, abs=1e-6)


# -- TRL's LUSPO and VESPO -----------------------------------------------------------------------

def trl_luspo(logp, old, adv, mask, eps_lo, eps_hi):
    """sequence-level IS (mean log ratio), clipped surrogate on [B, 1], then (l_i * |y_i|).mean()."""
    rows = []
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten()
        s = torch.exp((logp[b, idx] - old[b, idx]).mean())
        a = float(adv[b, idx[0]])
        l_i = -torch.minimum(s * a, torch.clamp(s, 1 - eps_lo, 1 + eps_hi) * a)
        rows.append(l_i * len(idx))
    return torch.stack(rows).mean()


@pytest.mark.parametrize("seed", range(6))
def test_luspo_matches_trl(seed):
    old, new, adv, mask = random_case(seed, seq_adv=True)
    batch = make_batch(old, adv, mask)
    value, grad = credo_loss_and_grad("luspo", new, batch, "seq_mean_token_sum", clip_low=0.1, clip_high=0.12)
    ref_value, ref_grad = peer_loss_and_grad(trl_luspo, new, old.double(), adv, mask, 0.1, 0.12)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_luspo_is_gspo_under_the_length_weighted_reduction():
    # LUSPO's per-row loss is GSPO's l_i; what makes it length-unbiased is the reduction:
    # seq_mean_token_sum gives (1/N) sum_i |y_i| l_i, where GSPO's seq_mean_token_mean gives (1/N) sum_i l_i
    old, new, adv, mask = random_case(3, seq_adv=True)
    batch = make_batch(old, adv, mask)
    lu = OBJECTIVES.get("luspo")(new, batch, clip_low=0.2, clip_high=0.2).per_token
    gs = OBJECTIVES.get("gspo")(new, batch, clip_low=0.2, clip_high=0.2).per_token
    l_i = gs[:, 1]  # GSPO repeats l_i on every position of row i
    lengths = mask.sum(-1).float()
    assert reduce_loss(lu, mask, "seq_mean_token_sum").item() == pytest.approx((lengths * l_i).mean().item(), rel=1e-6)
    assert reduce_loss(gs, mask, "seq_mean_token_mean").item() == pytest.approx(l_i.mean().item(), rel=1e-6)


def test_luspo_refuses_the_reduction_that_makes_it_gspo():
    cfg = TrainConfig()
    cfg.rl.objective, cfg.rl.loss_reduction = "luspo", "seq_mean_token_mean"
    with pytest.raises(CredoError, match="seq_mean_token_sum"):
        check_method_params(cfg)


def trl_vespo(logp, old, adv, mask, kp, lp, kn, ln):
    total = 0.0
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten()
        log_w = float(torch.clamp(logp[b, idx].detach() - old[b, idx], -20, 20).sum())
        log_w = min(max(log_w, math.log(1e-8)), 20.0)
        a = float(adv[b, idx[0]])
        k, lam = (kp, lp) if a >= 0 else (kn, ln)
        lam = max(lam, 1e-4)
        phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
        total = total + (-phi * a * logp[b, idx]).sum()
    return total / mask.sum()


@pytest.mark.parametrize("seed", range(6))
def test_vespo_matches_trl(seed):
    old, new, adv, mask = random_case(seed, seq_adv=True)
    batch = make_batch(old, adv, mask)
    value, grad = credo_loss_and_grad("vespo", new, batch, "token_mean")
    ref_value, ref_grad = peer_loss_and_grad(trl_vespo, new, old.double(), adv, mask, 2.0, 3.0, 3.0, 2.0)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_vespo_gamma_weight_hand_values():
    from credo.objectives.sequence_weighted import vespo_gamma_weights

    # A >= 0 (k 2, lambda 3): w = 1 -> phi = e^(3 + 0 - 3) = 1; w = e^-1 -> phi = e^(3 - 2 - 3/e) = 0.90165
    # A < 0 (k 3, lambda 2): w = e^-1 -> phi = e^(2 - 3 - 2/e) = 0.17604
    log_ratio = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [-0.5, -0.5]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    phi = vespo_gamma_weights(log_ratio, mask, torch.tensor([1.0, 1.0, -1.0]),
                              k_pos=2.0, lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0)
    assert phi.tolist() == pytest.approx([1.0, math.exp(1 - 3 / math.e), math.exp(-1 - 2 / math.e)], rel=1e-6)


# -- verl's GDPO ---------------------------------------------------------------------------------

def verl_gdpo(components, group_ids, mask, weights, eps=1e-6):
    B, T = mask.shape
    total = [0.0] * B
    for k, w in enumerate(weights):
        for i in range(B):
            members = [components[j][k] for j in range(B) if group_ids[j] == group_ids[i]]
            if len(members) == 1:
                mean, std = 0.0, 1.0
            else:
                mean = sum(members) / len(members)
                std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
            total[i] += w * (components[i][k] - mean) / (std + eps)
    vals = [total[i] for i in range(B) for t in range(T) if mask[i, t]]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / len(vals) * len(vals) / (len(vals) - 1)
    return [[(total[i] - mean) / math.sqrt(var + 1e-8) if mask[i, t] else 0.0 for t in range(T)] for i in range(B)]


def test_gdpo_hand_values():
    # one group; (correct, formatted) = (1, 1) and (0, 1); row 0 has 2 tokens, row 1 has 3
    # correct: GRPO +-0.7071 / 0.7071 = +-1; formatted: constant -> 0; S = [+1, -1]
    # whiten over the 5 tokens [1, 1, -1, -1, -1]: mean -0.2, unbiased var 4.8 / 4 = 1.2, std 1.0954
    #   -> 1.2 / 1.0954 = 1.0954 and -0.8 / 1.0954 = -0.7303
    mask = torch.tensor([[False, True, True, False], [False, True, True, True]])
    inputs = CreditInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]), loss_mask=mask,
                          extras={"reward_components": torch.tensor([[1.0, 1.0], [0.0, 1.0]])})
    adv = CREDIT.get("gdpo")(inputs)
    assert adv.tolist() == [pytest.approx(r, abs=1e-4) for r in
                            ([0, 1.0954, 1.0954, 0], [0, -0.7303, -0.7303, -0.7303])]


@pytest.mark.parametrize("seed", range(5))
def test_gdpo_matches_verl(seed):
    rng = random.Random(seed)
    group_ids = sorted(rng.choice([3, 8, 11]) for _ in range(rng.randint(4, 8)))
    B, T = len(group_ids), 6
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, 1:1 + rng.randint(1, T - 1)] = True
    comps = [[float(rng.random() < 0.5), rng.choice([0.0, 0.5, 1.0]), rng.uniform(-1, 1)] for _ in range(B)]
    weights = [1.0, 0.5, 2.0]
    inputs = CreditInputs(rewards=torch.zeros(B), group_ids=torch.tensor(group_ids), loss_mask=mask,
                          extras={"reward_components": torch.tensor(comps)})
    adv = CREDIT.get("gdpo")(inputs, weights=weights)
    want = verl_gdpo(comps, group_ids, mask, weights)
    assert adv.tolist() == [pytest.approx(r, abs=1e-5) for r in want]


def test_gdpo_is_invariant_to_each_reward_scale():
    # GDPO normalises each reward within its group before the sum, so scaling one component by 100
    # leaves the advantages as they were; GRPO on the summed reward lets the large component decide
    mask = torch.ones(3, 2, dtype=torch.bool)
    comps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.2]])
    scaled = comps * torch.tensor([100.0, 1.0])

    def gdpo(c):
        return CREDIT.get("gdpo")(CreditInputs(rewards=c.sum(-1), group_ids=torch.zeros(3, dtype=torch.long),
                                               loss_mask=mask, extras={"reward_components": c}))

    assert torch.allclose(gdpo(comps), gdpo(scaled), atol=1e-5)
    grpo = CREDIT.get("grpo")(scaled.sum(-1), torch.zeros(3, dtype=torch.long))  # [B]
    assert grpo[1].item() < -0.5 < 0 < gdpo(scaled)[1, 0].item()


# -- verl's optimal token baseline ---------------------------------------------------------------

def verl_otb(scores, group_ids, resp_mask, old_logp, sum_pi2, eps=1e-8):
    """verl's OTB on response-aligned [B, L] lists (reward on each row's last valid token)."""
    B, L = len(resp_mask), len(resp_mask[0])
    G = [[scores[i] if resp_mask[i][t] else 0.0 for t in range(L)] for i in range(B)]
    W = []
    for i in range(B):
        acc, row = 0.0, []
        for t in range(L):
            acc += (1 - 2 * math.exp(old_logp[i][t]) + sum_pi2[i][t]) * resp_mask[i][t]
            row.append(acc)
        W.append(row)
    base = [[0.0] * L for _ in range(B)]
    for g in set(group_ids):
        rows = [i for i in range(B) if group_ids[i] == g]
        if len(rows) == 1:
            continue
        for t in range(L):
            num = sum(G[i][t] * W[i][t] * resp_mask[i][t] for i in rows)
            den = sum(W[i][t] * resp_mask[i][t] for i in rows) + eps
            for i in rows:
                base[i][t] = num / den
        lengths = sorted(sum(resp_mask[i]) for i in rows)
        longest = [i for i in rows if sum(resp_mask[i]) == lengths[-1]]
        if len(longest) == 1 and lengths[-1] > lengths[-2]:
            for t in range(lengths[-2], L):
                base[longest[0]][t] = 0.0
    return [[(G[i][t] - base[i][t]) * resp_mask[i][t] for t in range(L)] for i in range(B)]


def test_otb_hand_values():
    # two rows, one group, R = 1 and 0, prompt in column 0
    # row 0: pi 0.5, sum pi^2 0.5 -> w = 0.5;   row 1: pi 0.9, sum pi^2 0.82 -> w = 0.02
    # t = 1: W = 0.5, 0.02 -> B = 0.5 / 0.52 = 0.96154; t = 2: W = 1.0, 0.04 -> B = 1 / 1.04 = 0.96154
    # t = 3: only row 0 (length 3 > 2): baseline zeroed (handle_zero_tail) -> A = G = 1
    mask = torch.tensor([[False, True, True, True], [False, True, True, False]])
    logp = torch.tensor([[0.0] + [math.log(0.5)] * 3, [0.0] + [math.log(0.9)] * 2 + [0.0]]) * mask
    s2 = torch.tensor([[0.0, 0.5, 0.5, 0.5], [0.0, 0.82, 0.82, 0.0]])
    inputs = CreditInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]), loss_mask=mask,
                          logprobs=logp, extras={"sum_pi_squared": s2})
    b = 0.5 / 0.52
    adv = CREDIT.get("optimal_token_baseline")(inputs)
    assert adv.tolist() == [pytest.approx(r, abs=1e-5) for r in ([0, 1 - b, 1 - b, 1.0], [0, -b, -b, 0])]
    # equal weights reduce to the group mean: A = +-0.5
    same = CreditInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]),
                        loss_mask=torch.tensor([[False, True, True, False]] * 2),
                        logprobs=torch.zeros(2, 4), extras={"sum_pi_squared": torch.full((2, 4), 0.3)})
    assert CREDIT.get("optimal_token_baseline")(same).tolist() == [
        pytest.approx(r, abs=1e-6) for r in ([0, 0.5, 0.5, 0], [0, -0.5, -0.5, 0])]


@pytest.mark.parametrize("seed", range(6))
def test_otb_matches_verl(seed):
    rng = random.Random(seed)
    group_ids = [rng.choice([0, 1, 2]) for _ in range(rng.randint(3, 7))]
    B, L, P = len(group_ids), 6, 2  # every row: P prompt columns, then its response (left-aligned)
    resp = [[t < n for t in range(L)] for n in (rng.randint(1, L) for _ in range(B))]
    old = [[math.log(rng.uniform(0.05, 0.95)) if resp[i][t] else 0.0 for t in range(L)] for i in range(B)]
    s2 = [[rng.uniform(math.exp(old[i][t]) ** 2, 1.0) if resp[i][t] else 0.0 for t in range(L)] for i in range(B)]
    scores = [rng.choice([0.0, 1.0, 0.5]) for _ in range(B)]
    want = verl_otb(scores, group_ids, resp, old, s2)
    pad = lambda rows: torch.tensor([[0.0] * P + list(map(float, r)) for r in rows])  # noqa: E731
    inputs = CreditInputs(rewards=torch.tensor(scores), group_ids=torch.tensor(group_ids),
                          loss_mask=pad(resp).bool(), logprobs=pad(old), extras={"sum_pi_squared": pad(s2)})
    adv = CREDIT.get("optimal_token_baseline")(inputs)
    assert adv[:, P:].tolist() == [pytest.approx(r, abs=1e-5) for r in want]
    assert adv[:, :P].abs().max().item() == 0.0


def test_sum_pi_squared_provider_matches_the_full_softmax():
    from credo.credit.otb import sum_pi_squared
    from credo.credit.providers import StepContext  # noqa: F401  (the provider's context type)
    from credo.models import load_policy

    policy = load_policy("tiny", seed=0)
    tokens = torch.tensor([[5, 9, 11, 3, 7], [4, 4, 8, 2, 1]])
    mask = torch.tensor([[False, False, True, True, True], [False, False, True, True, False]])
    batch = RolloutBatch(tokens=tokens, attention_mask=torch.ones_like(mask), loss_mask=mask,
                         sampler_logprobs=torch.zeros(2, 5), advantages=torch.zeros(2, 5),
                         rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long))

    class Sources:
        model, micro_batch_size, temperature, autocast_dtype = policy.model, 1, 0.7, None

    class Ctx:
        sources, batch = Sources(), None

    ctx = Ctx()
    ctx.batch = batch
    got = sum_pi_squared(ctx)["sum_pi_squared"]
    with torch.no_grad():
        logits = policy.model(tokens).logits.float() / 0.7
    probs = torch.softmax(logits[:, :-1], -1)  # the distribution of token t is read at position t - 1
    want = torch.zeros(2, 5)
    want[:, 1:] = (probs ** 2).sum(-1)
    assert torch.allclose(got, want * mask, atol=1e-5)


# -- config-time checks --------------------------------------------------------------------------

@pytest.mark.parametrize("objective, params, is_correction, words", [
    ("vespo", {"k_pos": 0}, "none", "k_pos"),
    ("vespo", {}, "tis", "is_correction"),
    ("dro", {"beta": 0}, "none", "beta"),
    ("dppo_tv", {"is_truncation": -1}, "none", "is_truncation"),
    ("dppo_kl", {"clip_high": float("nan")}, "none", "clip_high"),
])
def test_bad_method_params_are_refused_at_validation(objective, params, is_correction, words):
    cfg = TrainConfig()
    cfg.rl.objective, cfg.rl.objective_params = objective, params
    cfg.rl.is_correction = is_correction
    with pytest.raises(CredoError, match=words):
        check_method_params(cfg)


def test_defaults_pass_validation():
    for name in NEW_OBJECTIVES:
        cfg = TrainConfig()
        cfg.rl.objective = name
        check_method_params(cfg)
