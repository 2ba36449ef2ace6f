"""SPO-tree's tree sampler (rollout/samplers.py) and the sampled tree the spo_tree estimator reads.

- siblings share exactly their parent's tokens and logprobs, and the concatenated segments' sampled
  logprobs are the model's teacher-forced logprobs of the whole completion (a valid sample);
- an early leaf fills its slots with untrainable copies that the tree leaves out;
- `tree_from_meta` builds the sampled tree by hand-checkable rules, keeps siblings that sampled the same
  tokens apart (the prefix builder merges them), and gives the loop reference's advantages;
- bad parameters and a tree that does not fit rl.group_size are refused; a tiny run trains with it.
"""

import sys
from pathlib import Path

import pytest
import torch

from credo.batch import build_batch
from credo.cli import main, resolve_config
from credo.credit.base import CreditInputs
from credo.credit.providers import StepContext
from credo.credit.segments import TreeNode, spo_tree, spo_tree_from_sampler, spo_tree_loop, tree_from_meta, \
    tree_from_prefixes
from credo.errors import CredoError
from credo.logprobs import token_logprobs
from credo.models import load_policy
from credo.rollout import Completion, SamplingParams, TorchEngine
from credo.rollout.samplers import TreeSampler, make_sampler
from credo.tasks import TASKS
from credo.train.logging import read_metrics
from credo.train.run import validate

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask  # noqa: E402


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_policy("tiny", seed=0)


def test_siblings_share_exactly_their_prefix_and_logprobs_are_the_models(policy):
    sampler = TreeSampler(branching=[2, 3], segment_len=3)
    engine = TorchEngine(policy.model, policy.tokenizer)
    prompts = [[1, 50, 60], [1, 70]]
    groups = sampler.generate(engine, policy.tokenizer, prompts, 6, SamplingParams(max_new_tokens=8), seed=5)
    assert [len(g) for g in groups] == [6, 6]
    for group in groups:
        paths = [tuple(c.meta["tree_path"]) for c in group]
        assert paths == sorted(paths) and len(set(paths)) == 6  # (no early stop with the random model and no EOS)
        for a in group:
            for b in group:
                if a.meta["tree_path"][0] == b.meta["tree_path"][0]:  # same depth-0 parent
                    assert a.token_ids[:3] == b.token_ids[:3] and a.logprobs[:3] == b.logprobs[:3]
        assert len({tuple(c.token_ids[:3]) for c in group}) == 2  # two depth-0 segments
        assert len({tuple(c.token_ids) for c in group}) > 2  # depth-1 siblings differ
    # the behaviour logprobs of a tree completion are the model's logprobs of it (segments chain correctly)
    flat = [c for g in groups for c in g]
    batch = build_batch(flat, [0.0] * len(flat), [0] * 6 + [1] * 6, pad_id=0)
    with torch.no_grad():
        scored = token_logprobs(policy.model, batch.tokens, batch.attention_mask, batch.loss_mask)
    assert torch.allclose(scored[batch.loss_mask], batch.sampler_logprobs[batch.loss_mask], atol=1e-4)


class StopsFirstChild:
    """A fake engine: at depth 0, child 0 of each prompt stops after 1 token; everything else runs to the budget."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, sampling, seed):
        self.calls.append((len(prompts), n, sampling.max_new_tokens))
        out = []
        for p, prompt in enumerate(prompts):
            group = []
            for j in range(n):
                stop = len(self.calls) == 1 and j == 0
                k = 1 if stop else sampling.max_new_tokens
                toks = [10 + len(self.calls) * 10 + j] * k
                group.append(Completion(list(prompt), toks, [-0.5] * k, [True] * k, "stop" if stop else "length", "t"))
            out.append(group)
        return out


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_an_early_leaf_fills_its_slots_with_untrainable_copies():
    engine = StopsFirstChild()
    groups = TreeSampler(branching=[2, 2], segment_len=3).generate(
        engine, CharTokenizer(), [[1, 2]], 4, SamplingParams(max_new_tokens=7), seed=0)
    group = groups[0]
    # depth 0: one call with 1 prompt x 2; depth 1: only child 1 is open, budget 7 - 3 = 4 tokens
    assert engine.calls == [(1, 2, 3), (1, 2, 4)]
    assert [c.meta["tree_path"] for c in group] == [[0], [0], [1, 0], [1, 1]]
    assert [c.meta["tree_duplicate"] for c in group] == [False, True, False, False]
    assert [any(c.trainable) for c in group] == [True, False, True, True]
    assert group[0].token_ids == group[1].token_ids == [20]
    assert group[2].token_ids == [21, 21, 21, 30, 30, 30, 30] and group[3].token_ids[:3] == [21, 21, 21]


def _tree_batch(groups, rewards):
    flat = [c for g in groups for c in g]
    ids = [i for i, g in enumerate(groups) for _ in g]
    return flat, build_batch(flat, rewards, ids, pad_id=0)


def test_tree_from_meta_by_hand_and_against_the_loop():
    groups = TreeSampler(branching=[2, 2], segment_len=3).generate(
        StopsFirstChild(), CharTokenizer(), [[1, 2]], 4, SamplingParams(max_new_tokens=7), seed=0)
    flat, batch = _tree_batch(groups, [1.0, 1.0, 0.0, 1.0])
    tree = tree_from_meta(batch.loss_mask, batch.rewards, batch.group_ids, [c.meta for c in flat])
    # root; leaf [0] (row 0, 1 token); internal [1] (row 2, 3 tokens); leaves [1,0] (row 2), [1,1] (row 3)
    P = 2  # prompt length: responses start at column 2
    assert [(n.parent, n.row, n.start, n.end, n.reward) for n in tree] == [
        (-1, -1, 0, 0, None), (0, 0, P, P + 1, 1.0), (0, 2, P, P + 3, None),
        (2, 2, P + 3, P + 7, 0.0), (2, 3, P + 3, P + 7, 1.0)]
    inputs = CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                          extras={"tree": tree})
    adv = spo_tree(inputs)
    assert torch.allclose(adv, spo_tree_loop(inputs))
    # V(leaf [0]) = 1, V([1]) = 0.5, V(root) = 0.75: A = +0.25 on row 0, -0.25 on [1]'s tokens, -+0.5 below
    assert adv[0, P].item() == pytest.approx(0.25) and adv[1].abs().sum() == 0  # the copy gets nothing
    assert adv[2, P:P + 3].tolist() == pytest.approx([-0.25] * 3) and adv[3, P:P + 3].abs().sum() == 0
    assert adv[2, P + 3:P + 7].tolist() == pytest.approx([-0.5] * 4)
    assert adv[3, P + 3:P + 7].tolist() == pytest.approx([0.5] * 4)
    # the provider hands the sampled tree to the estimator
    ctx = StepContext(sources=None, batch=batch, completions=flat, examples=[None] * 4)
    assert [(n.parent, n.row, n.start, n.end) for n in spo_tree_from_sampler(ctx)["tree"]] == \
        [(n.parent, n.row, n.start, n.end) for n in tree]


def test_siblings_with_the_same_tokens_stay_two_nodes():
    def c(tokens, path):
        return Completion([1], tokens, [0.0] * len(tokens), [True] * len(tokens), "length", "",
                          meta={"tree_path": path, "tree_segment_len": 2, "tree_duplicate": False})
    flat = [c([5, 5, 7], [0, 0]), c([5, 5, 8], [0, 1]), c([5, 5, 9], [1, 0]), c([5, 5, 6], [1, 1])]
    batch = build_batch(flat, [1.0, 0.0, 1.0, 1.0], [0] * 4, pad_id=0)
    sampled = tree_from_meta(batch.loss_mask, batch.rewards, batch.group_ids, [x.meta for x in flat])
    merged = tree_from_prefixes(batch.tokens, batch.loss_mask, batch.rewards, batch.group_ids, segment_len=2)
    assert sum(n.reward is None and n.parent >= 0 for n in sampled) == 2  # two depth-0 nodes
    assert sum(n.reward is None and n.parent >= 0 for n in merged) == 1  # merged by their equal tokens
    adv = spo_tree(CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                                extras={"tree": sampled}))
    # V([0]) = 0.5, V([1]) = 1, V(root) = 0.75
    assert adv[0, 1].item() == pytest.approx(-0.25) and adv[2, 1].item() == pytest.approx(0.25)


@pytest.mark.parametrize("params, match", [
    ({"branching": []}, "branching"), ({"branching": [2, 0]}, "branching"), ({"segment_len": 0}, "segment_len"),
    ({"depth": 3}, "does not take"),
])
def test_bad_sampler_params_name_the_field(params, match):
    with pytest.raises(CredoError, match=match):
        make_sampler("tree", params)


def test_a_tree_that_does_not_fit_is_refused():
    cfg = resolve_config("tiny", None, [("rollout.sampler", "tree"), ("rollout.sampler_params", '{"branching": [2, 3]}')])
    with pytest.raises(CredoError, match="rl.group_size is 4"):
        validate(cfg)
    cfg = resolve_config("tiny", None, [("rollout.sampler", "tree"),
                                        ("rollout.sampler_params", '{"branching": [2, 2], "segment_len": 8}')])
    with pytest.raises(CredoError, match="leaves no tokens"):
        validate(cfg)
    with pytest.raises(CredoError, match="no parameters"):
        make_sampler("independent", {"branching": [2]})


def test_spo_tree_trains_on_the_sampled_tree(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", "tree", "--run.progress", "false",
            "--rl.steps", "2", "--run.eval_base", "false", "--task.name", "parity", "--task.eval_size", "4",
            "--warmup.steps", "1", "--model.threads", "1", "--rl.credit", "spo_tree", "--rollout.sampler", "tree",
            "--rollout.sampler_params", '{"branching": [2, 2], "segment_len": 3}']
    assert main(args) == 0
    rl = [r for r in read_metrics(tmp_path / "tree" / "metrics.jsonl") if r["phase"] == "rl"]
    assert len(rl) == 2 and all(r["updates"] >= 1 for r in rl)


def test_creditbench_chain_tree_shares_slots_by_node_and_spo_tree_reads_it():
    import numpy as np

    from credo.creditbench.run import SUITE, draw, tree_branching

    task = SUITE[1].make_task(0)  # chain L = 12
    sample = draw(task, "spo_tree", 8, task.initial_policy(), np.random.default_rng(0))
    choices, metas = sample.state["choices"], sample.state["tree_meta"]
    assert tree_branching(8) == [2, 2, 2] and tree_branching(6) == [6]
    for a in range(8):
        for b in range(8):
            pa, pb = metas[a]["tree_path"], metas[b]["tree_path"]
            shared = next((d for d in range(3) if pa[d] != pb[d]), 3)  # depth of their last common node
            assert (choices[a, : 3 * shared] == choices[b, : 3 * shared]).all()  # slots of common nodes
    other = draw(task, "grpo", 8, task.initial_policy(), np.random.default_rng(0))
    assert "tree_meta" not in other.state  # every other estimator samples independently
