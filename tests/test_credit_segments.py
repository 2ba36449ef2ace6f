"""SPO-chain, SPO-tree (+ the tree builder) and TEMPO: hand values, loop == vectorized over random
layouts, degenerate cases and each paper's key property."""

import math
import random

import pytest
import torch

from credo.credit import CREDIT, CreditInputs, is_token_level
from credo.credit.base import credit_needs_of
from credo.credit.segments import (
    TreeNode,
    spo_chain,
    spo_chain_loop,
    spo_tree,
    spo_tree_loop,
    tempo,
    tempo_loop,
    tree_from_prefixes,
)


def probe_fn(b: int, t: int) -> float:
    """A deterministic stand-in for Monte Carlo continuations."""
    return ((b * 31 + t * 17) % 11) / 10


def random_inputs(seed: int, vocab: int = 3) -> CreditInputs:
    """Random groups (sizes 1-4, interleaved), prompts, holes, padding, empty responses; responses of
    a group share random prefixes of a group 'base' response (so tries and trees branch); a mix of
    confident (p > 0.9) and uncertain tokens."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    group_ids = [10 * g + 7 for g in range(rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
    rng.shuffle(group_ids)
    B, T = len(group_ids), rng.randint(1, 12)
    mask = torch.zeros(B, T, dtype=torch.bool)
    tokens = torch.randint(0, vocab, (B, T), generator=gen)
    base = {g: [rng.randrange(vocab) for _ in range(T)] for g in set(group_ids)}
    for b in range(B):
        prompt = rng.randint(0, min(2, T))
        length = rng.choice([0, T - prompt, rng.randint(0, T - prompt)])
        mask[b, prompt:prompt + length] = True
        if length > 2 and rng.random() < 0.3:
            mask[b, prompt + rng.randint(1, length - 2)] = False
        pos = mask[b].nonzero().flatten().tolist()
        shared = rng.randint(0, len(pos))
        for k, t in enumerate(pos[:shared]):
            tokens[b, t] = base[group_ids[b]][k]
    p = torch.where(torch.rand(B, T, generator=gen) < 0.5,
                    0.92 + 0.08 * torch.rand(B, T, generator=gen),
                    0.05 + 0.8 * torch.rand(B, T, generator=gen))
    return CreditInputs(
        rewards=torch.tensor([rng.choice([0.0, 1.0, 0.5]) for _ in range(B)]),
        group_ids=torch.tensor(group_ids),
        loss_mask=mask,
        tokens=tokens,
        logprobs=torch.where(mask, torch.log(p), torch.zeros(B, T)),
        probe=probe_fn,
    )


def one_row(probs, *, prompt=1, reward=1.0, probe=None):
    T = prompt + len(probs)
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, prompt:] = True
    logprobs = torch.zeros(1, T)
    logprobs[0, prompt:] = torch.log(torch.tensor(probs))
    return CreditInputs(rewards=torch.tensor([reward]), group_ids=torch.tensor([0]), loss_mask=mask,
                        logprobs=logprobs, probe=probe)


def test_registered_token_level_with_needs():
    assert credit_needs_of(CREDIT.get("spo_chain")) == frozenset({"logprobs", "probe"})
    assert credit_needs_of(CREDIT.get("spo_tree")) == frozenset({"extras"})
    for name in ("spo_chain", "spo_tree", "tempo"):
        assert is_token_level(CREDIT.get(name))


# -- SPO-chain -------------------------------------------------------------------------------------


CHAIN_PROBS = [0.5, 0.95, 0.3, 0.99, 0.6, 0.2]  # response tokens at positions 1..6
CHAIN_V = {1: 0.4, 3: 0.6, 5: 0.3, 6: 0.5}        # V of the prefix tokens[:t] (a cut before token t)


def test_spo_chain_hand_computed_interval_one():
    # candidates (p < 0.9) at compact 0, 2, 4, 5 -> cuts before positions 1 (the prompt: V(s0)), 3, 5, 6
    # segments: {0,1}: 0.6 - 0.4 = 0.2; {2,3}: 0.3 - 0.6 = -0.3; {4}: 0.5 - 0.3 = 0.2; {5}: R - 0.5 = 0.5
    # probability mask (p > 0.9): compact 1 and 3 -> 0
    calls = []
    inputs = one_row(CHAIN_PROBS, probe=lambda b, t: calls.append(t) or CHAIN_V[t])
    adv = spo_chain(inputs, cutpoint_interval=1, whiten=False)
    assert adv.tolist()[0] == pytest.approx([0.0, 0.2, 0.0, -0.3, 0.0, 0.2, 0.5], abs=1e-6)
    assert sorted(calls) == [1, 3, 5, 6]  # one probe per cut


def test_spo_chain_hand_computed_interval_two_and_whitening():
    # every 2nd candidate: cuts before positions 1 (V 0.4) and 5 (V 0.3)
    # compact 0..3: 0.3 - 0.4 = -0.1; compact 4..5: 1 - 0.3 = 0.7; masked: compact 1, 3
    inputs = one_row(CHAIN_PROBS, probe=lambda b, t: CHAIN_V[t])
    adv = spo_chain(inputs, cutpoint_interval=2, whiten=False)
    assert adv.tolist()[0] == pytest.approx([0.0, -0.1, 0.0, -0.1, 0.0, 0.7, 0.7], abs=1e-6)
    # whitening over the tokens with p < 0.9 only: values -0.1, -0.1, 0.7, 0.7 -> mean 0.3, var 0.64/3
    white = spo_chain(inputs, cutpoint_interval=2, whiten=True)
    s = math.sqrt(0.64 / 3 + 1e-8)
    assert white.tolist()[0] == pytest.approx([0.0, -0.4 / s, 0.0, -0.4 / s, 0.0, 0.4 / s, 0.4 / s], abs=1e-5)


def test_spo_chain_without_a_prompt_cut_the_first_segment_gets_zero():
    # the first two tokens are confident: no V(s0); cuts before compact 2 (position 3) and 4 (position 5)
    probs = [0.95, 0.99, 0.5, 0.97, 0.4]
    inputs = one_row(probs, probe=lambda b, t: {3: 0.2, 5: 0.9}[t])
    adv = spo_chain(inputs, cutpoint_interval=1, whiten=False)
    # {0,1}: no baseline -> 0; {2,3}: 0.9 - 0.2 = 0.7 (3 masked); {4}: 1 - 0.9 = 0.1
    assert adv.tolist()[0] == pytest.approx([0.0, 0.0, 0.0, 0.7, 0.0, 0.1], abs=1e-6)


def test_spo_chain_key_property_all_confident_response_gets_zero_and_no_probe():
    def never(b, t):
        raise AssertionError("an all-confident response needs no probe")

    inputs = one_row([0.95, 0.99, 0.97], probe=never)
    for whiten in (False, True):
        assert (spo_chain(inputs, whiten=whiten) == 0).all()
        assert (spo_chain_loop(inputs, whiten=whiten) == 0).all()


def test_spo_chain_single_prompt_cut_gives_reward_minus_v0_on_uncertain_tokens():
    inputs = one_row([0.5, 0.95, 0.92], probe=lambda b, t: 0.25, reward=1.0)
    adv = spo_chain(inputs, whiten=False)  # only one candidate: the cut before the first token
    assert adv.tolist()[0] == pytest.approx([0.0, 0.75, 0.0, 0.0], abs=1e-6)


def test_spo_chain_degenerate_and_errors():
    empty = CreditInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                         loss_mask=torch.zeros(1, 4, dtype=torch.bool), logprobs=torch.zeros(1, 4), probe=probe_fn)
    assert (spo_chain(empty) == 0).all()
    with pytest.raises(ValueError, match="probe"):
        spo_chain(one_row([0.5, 0.5]))
    with pytest.raises(ValueError, match="cutpoint_interval"):
        spo_chain(one_row([0.5], probe=probe_fn), cutpoint_interval=0)


def test_spo_chain_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed)
        for interval in (1, 2, 5):
            for whiten in (False, True):
                a = spo_chain(inputs, cutpoint_interval=interval, whiten=whiten)
                b = spo_chain_loop(inputs, cutpoint_interval=interval, whiten=whiten)
                assert torch.allclose(a, b, atol=1e-5), (seed, interval, whiten)
                assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()


# -- SPO-tree --------------------------------------------------------------------------------------


def hand_tree_inputs(**extras):
    # rows 0, 1, 3 continue a shared segment A (kept in row 0, positions 1-2); row 2 is a leaf B
    tree = [
        TreeNode(parent=-1),                                  # 0 root (the prompt)
        TreeNode(parent=0, row=0, start=1, end=3),            # 1 A, V = 2/3
        TreeNode(parent=0, row=2, start=1, end=4, reward=0.0),  # 2 B, V = 0
        TreeNode(parent=1, row=0, start=3, end=5, reward=1.0),  # 3
        TreeNode(parent=1, row=1, start=3, end=5, reward=0.0),  # 4
        TreeNode(parent=1, row=3, start=3, end=5, reward=1.0),  # 5
    ]
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 1:] = True
    mask[2, 4] = False
    return CreditInputs(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_ids=torch.zeros(4, dtype=torch.long),
                        loss_mask=mask, extras={"tree": tree, **extras})


def test_spo_tree_hand_computed_rloo_and_grpo():
    inputs = hand_tree_inputs()
    third = 1 / 3
    expected = [[0, third, third, third, third],       # A edge (2/3 - 1/3), then leaf 3 (1 - 2/3)
                [0, 0, 0, -2 * third, -2 * third],     # shared prefix counted once (row 0); leaf 4
                [0, -third, -third, -third, 0],        # B edge (0 - 1/3); position 4 off the mask
                [0, 0, 0, third, third]]               # leaf 5
    assert spo_tree(inputs).tolist() == [pytest.approx(r, abs=1e-6) for r in expected]
    # grpo: divided by the parent's population std: root std(2/3, 0) = 1/3, A std(1, 0, 1) = sqrt(2)/3
    s = math.sqrt(2) / 3
    expected_grpo = [[0, 1, 1, third / s, third / s], [0, 0, 0, -2 * third / s, -2 * third / s],
                     [0, -1, -1, -1, 0], [0, 0, 0, third / s, third / s]]
    assert spo_tree(inputs, adv_method="grpo").tolist() == [pytest.approx(r, abs=1e-5) for r in expected_grpo]


def test_tree_from_prefixes_hand_built():
    # prompt at position 0; group 0: [5,6,7,8], [5,6,9,9], [4,4,7]; group 1: [1,2]; M = 2
    tokens = torch.tensor([[0, 5, 6, 7, 8], [0, 5, 6, 9, 9], [0, 4, 4, 7, 0], [0, 1, 2, 0, 0]])
    mask = torch.tensor([[False, True, True, True, True], [False, True, True, True, True],
                         [False, True, True, True, False], [False, True, True, False, False]])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5])
    groups = torch.tensor([3, 3, 3, 9])
    tree = tree_from_prefixes(tokens, mask, rewards, groups, segment_len=2)
    assert tree == [
        TreeNode(parent=-1),
        TreeNode(parent=0, row=0, start=1, end=3),              # "5 6", shared by rows 0 and 1
        TreeNode(parent=1, row=0, start=3, end=5, reward=1.0),
        TreeNode(parent=1, row=1, start=3, end=5, reward=0.0),
        TreeNode(parent=0, row=2, start=1, end=3),              # "4 4"
        TreeNode(parent=4, row=2, start=3, end=4, reward=1.0),
        TreeNode(parent=-1),
        TreeNode(parent=6, row=3, start=1, end=3, reward=0.5),
    ]
    inputs = CreditInputs(rewards=rewards, group_ids=groups, loss_mask=mask, tokens=tokens)
    # V("5 6") = 0.5, V("4 4") = 1, V(root) = 0.75; group 1 has one leaf: 0
    expected = [[0, -0.25, -0.25, 0.5, 0.5], [0, 0, 0, -0.5, -0.5], [0, 0.25, 0.25, 0, 0], [0, 0, 0, 0, 0]]
    assert spo_tree(inputs, segment_len=2).tolist() == [pytest.approx(r, abs=1e-6) for r in expected]
    # max_depth 1: every response is one leaf segment
    flat = tree_from_prefixes(tokens, mask, rewards, groups, segment_len=2, max_depth=1)
    assert [n.parent for n in flat] == [-1, 0, 0, 0, -1, 4]
    assert [(n.row, n.start, n.end, n.reward) for n in flat if n.parent >= 0] == [
        (0, 1, 5, 1.0), (1, 1, 5, 0.0), (2, 1, 4, 1.0), (3, 1, 3, 0.5)]


def test_spo_tree_key_property_no_shared_segments_is_group_mean_centred():
    # one segment per response (M >= length): every row is a leaf under its group's root,
    # so A = R - mean_group(R) on every loss token (Dr.GRPO's advantage)
    for seed in range(15):
        inputs = random_inputs(seed)
        adv = spo_tree(inputs, segment_len=1000)
        for b in range(len(inputs.rewards)):
            members = [float(inputs.rewards[i]) for i in range(len(inputs.rewards))
                       if int(inputs.group_ids[i]) == int(inputs.group_ids[b])]
            expected = float(inputs.rewards[b]) - sum(members) / len(members)
            m = inputs.loss_mask[b]
            assert adv[b][m].tolist() == pytest.approx([expected] * int(m.sum()), abs=1e-6)


def test_spo_tree_sibling_advantages_sum_to_zero_under_rloo():
    for seed in range(15):
        inputs = random_inputs(seed)
        tree = tree_from_prefixes(inputs.tokens, inputs.loss_mask, inputs.rewards, inputs.group_ids, segment_len=2)
        adv = spo_tree(CreditInputs(rewards=inputs.rewards, group_ids=inputs.group_ids, loss_mask=torch.ones_like(
            inputs.loss_mask), extras={"tree": tree}))
        edge = {i: float(adv[n.row, n.start]) for i, n in enumerate(tree) if n.parent >= 0 and n.end > n.start}
        for p in {n.parent for n in tree if n.parent >= 0}:
            kids = [i for i, n in enumerate(tree) if n.parent == p]
            if all(k in edge for k in kids):
                assert sum(edge[k] for k in kids) == pytest.approx(0.0, abs=1e-6)


def test_spo_tree_degenerate_and_invalid():
    mask = torch.ones(1, 3, dtype=torch.bool)
    base = dict(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), loss_mask=mask)
    assert (spo_tree(CreditInputs(**base, extras={"tree": [TreeNode(parent=-1)]})) == 0).all()  # root only
    one = [TreeNode(parent=-1), TreeNode(parent=0, row=0, start=0, end=3, reward=1.0)]
    assert (spo_tree(CreditInputs(**base, extras={"tree": one})) == 0).all()  # group of one
    empty_leaf = [TreeNode(parent=-1), TreeNode(parent=0, row=0, start=0, end=3, reward=1.0),
                  TreeNode(parent=0, reward=0.0)]  # an empty response: a leaf with no tokens
    assert spo_tree(CreditInputs(**base, extras={"tree": empty_leaf})).tolist()[0] == pytest.approx([0.5] * 3)
    flat = [TreeNode(parent=-1), TreeNode(parent=0, row=0, start=0, end=3, reward=0.1),
            TreeNode(parent=0, reward=0.1), TreeNode(parent=0, reward=0.1)]
    assert (spo_tree(CreditInputs(**base, extras={"tree": flat}), adv_method="grpo") == 0).all()
    for bad, msg in [
        ([TreeNode(parent=1), TreeNode(parent=-1)], "parents must come first"),
        ([TreeNode(parent=-1), TreeNode(parent=0, row=0, start=0, end=2, reward=1.0),
          TreeNode(parent=0, row=0, start=1, end=3, reward=1.0)], "overlap"),
        ([TreeNode(parent=-1), TreeNode(parent=0, row=0, start=0, end=2)], "finite reward"),
        ([TreeNode(parent=-1), TreeNode(parent=0, row=5, start=0, end=2, reward=1.0)], "outside the batch"),
    ]:
        with pytest.raises(ValueError, match=msg):
            spo_tree(CreditInputs(**base, extras={"tree": bad}))
    with pytest.raises(ValueError, match="adv_method"):
        spo_tree(CreditInputs(**base, extras={"tree": one}), adv_method="mean")
    empty = CreditInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]),
                         loss_mask=torch.zeros(2, 3, dtype=torch.bool), tokens=torch.zeros(2, 3, dtype=torch.long))
    assert (spo_tree(empty) == 0).all()


def test_spo_tree_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed)
        for kw in (dict(segment_len=1), dict(segment_len=2), dict(segment_len=3, max_depth=2),
                   dict(segment_len=2, adv_method="grpo")):
            a, b = spo_tree(inputs, **kw), spo_tree_loop(inputs, **kw)
            assert torch.allclose(a, b, atol=1e-5), (seed, kw)
            assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()


# -- TEMPO -----------------------------------------------------------------------------------------


def group_rows(responses, rewards):
    T = max(len(y) for y in responses) + 1
    tokens = torch.zeros(len(responses), T, dtype=torch.long)
    mask = torch.zeros(len(responses), T, dtype=torch.bool)
    for b, y in enumerate(responses):
        tokens[b, 1:1 + len(y)] = torch.tensor(y, dtype=torch.long)
        mask[b, 1:1 + len(y)] = True
    return CreditInputs(rewards=torch.tensor(rewards), group_ids=torch.zeros(len(responses), dtype=torch.long),
                        loss_mask=mask, tokens=tokens)


def test_tempo_hand_computed():
    # y1 = 1 2 3 (R 1), y2 = 1 2 4 (R 0), y3 = 1 5 (R 0): GRPO A = 2/sqrt3, -1/sqrt3, -1/sqrt3
    # V(root) = V(1) = 0; V(1 2) = 1/(2 sqrt3); branch nodes: "1" (2 | 5) and "1 2" (3 | 4)
    a, c = 2 / math.sqrt(3), -1 / math.sqrt(3)
    v12 = 1 / (2 * math.sqrt(3))
    adv = tempo(group_rows([[1, 2, 3], [1, 2, 4], [1, 5]], [1.0, 0.0, 0.0]))
    assert adv[0, 1:].tolist() == pytest.approx([a, a + v12, a + (a - v12)], abs=1e-5)
    assert adv[1, 1:].tolist() == pytest.approx([c, c + v12, c + (c - v12)], abs=1e-5)
    assert adv[2, 1:3].tolist() == pytest.approx([c, c + c], abs=1e-5) and adv[2, 3] == 0


def test_tempo_a_row_ending_counts_as_a_branch():
    # "1 2" ends (R 0) where "1 2 3" continues (R 1): the node "1 2" branches (3 | end)
    r = 1 / math.sqrt(2)
    adv = tempo(group_rows([[1, 2], [1, 2, 3]], [0.0, 1.0]))
    assert adv[0, 1:3].tolist() == pytest.approx([-r, -r], abs=1e-5)
    assert adv[1, 1:4].tolist() == pytest.approx([r, r, r + r], abs=1e-5)


def branch_reference(inputs):
    """An independent trie: True at tokens whose prefix has two or more continuations (incl. ending)."""
    out = torch.zeros_like(inputs.loss_mask)
    pos = [inputs.loss_mask[b].nonzero().flatten().tolist() for b in range(len(inputs.rewards))]
    ys = [[int(inputs.tokens[b, t]) for t in p] for b, p in enumerate(pos)]
    for b, y in enumerate(ys):
        for k, t in enumerate(pos[b]):
            nxt = {(z[k] if len(z) > k else None) for i, z in enumerate(ys)
                   if int(inputs.group_ids[i]) == int(inputs.group_ids[b]) and z[:k] == y[:k]}
            out[b, t] = len(nxt) >= 2
    return out


def test_tempo_key_property_non_branch_tokens_get_exactly_the_grpo_advantage():
    for seed in range(30):
        inputs = random_inputs(seed, vocab=2)
        adv = tempo(inputs)
        grpo = CREDIT.get("grpo")(inputs.rewards, inputs.group_ids)
        plain = inputs.loss_mask & ~branch_reference(inputs)
        assert torch.equal(adv[plain], grpo[:, None].expand_as(adv)[plain]), seed
        assert torch.equal(tempo(inputs, lam=0.0)[inputs.loss_mask], grpo[:, None].expand_as(adv)[inputs.loss_mask])


def test_tempo_degenerate():
    single = group_rows([[1, 2, 3]], [0.7])
    assert tempo(single)[0, 1:].tolist() == pytest.approx([0.7] * 3, abs=1e-5)  # group of one: GRPO's A = R (verl)
    assert (tempo(group_rows([[1, 2], [1, 3]], [0.5, 0.5])) == 0).all()  # zero-variance group
    with_empty = group_rows([[], [1, 2]], [1.0, 0.0])
    adv = tempo(with_empty)  # the empty row ends at the root, so the root branches (end | 1)
    r = 1 / math.sqrt(2)
    assert adv[0].tolist() == [0.0, 0.0, 0.0]
    assert adv[1, 1:].tolist() == pytest.approx([-r + (-r - 0.0), -r], abs=1e-5)
    nothing = CreditInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                           loss_mask=torch.zeros(1, 2, dtype=torch.bool), tokens=torch.zeros(1, 2, dtype=torch.long))
    assert (tempo(nothing) == 0).all()
    with pytest.raises(ValueError, match="tokens"):
        tempo(CreditInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                          loss_mask=torch.ones(1, 2, dtype=torch.bool)))


def test_tempo_loop_equals_vectorized():
    for seed in range(40):
        inputs = random_inputs(seed, vocab=2)
        for kw in ({}, dict(lam=0.5), dict(scale_by_std=False)):
            a, b = tempo(inputs, **kw), tempo_loop(inputs, **kw)
            assert torch.allclose(a, b, atol=1e-5), (seed, kw)
            assert torch.isfinite(a).all() and (a[~inputs.loss_mask] == 0).all()
