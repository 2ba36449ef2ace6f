"""DATAMASK's prompt-pool selection (select/datamask.py): the joint objective by hand, the policy-gradient
estimator against the exact gradient over every mask of N = 4, a toy pool whose best subset is known,
degenerate pools, the scores, configuration errors, a tiny-preset run and a SIGKILL + resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from credo.errors import CredoError
from credo.select.datamask import (DataMaskParams, MaskSample, candidate_count, candidate_quality, facility_diversity,
                                   field_quality, joint_objective, joint_objective_loop, learn_mask,
                                   learnability_quality, length_quality, mask_log_prob, pairwise_diversity,
                                   policy_embeddings, policy_gradient, random_subset, sample_masks, scaled_to_unit,
                                   subset_scores, tfidf_embeddings, top_k, unit_rows)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and far faster on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TESTS = Path(__file__).parent


def _mask(n, ids):
    m = torch.zeros((1, n), dtype=torch.bool)
    m[0, list(ids)] = True
    return m


# e0 = (1, 0), e1 = (0, 1), e2 = e0 (a duplicate), e3 = (0.6, 0.8); cosines: s01 = 0, s02 = 1, s03 = 0.6,
# s12 = 0, s13 = 0.8, s23 = 0.6
E4 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
Q4 = torch.tensor([1.0, 0.5, 0.2, 0.8], dtype=torch.float64)


def test_joint_objective_by_hand():
    # facility {0, 1}: each point's best cover is 1, 1, 1, max(0.6, 0.8) -> 3.8 / 4; quality (1 + 0.5) / 2
    j = joint_objective(_mask(4, [0, 1]), Q4, E4, lam=1.0, diversity="facility")
    assert float(j) == pytest.approx(0.75 + 0.95, abs=1e-12)
    # the duplicate pair {0, 2}: covers 1, 0, 1, 0.6 -> 0.65; its pairwise distance is 0
    assert float(joint_objective(_mask(4, [0, 2]), Q4, E4, lam=1.0, diversity="facility")) == pytest.approx(0.6 + 0.65)
    assert float(joint_objective(_mask(4, [0, 2]), Q4, E4, lam=1.0, diversity="pairwise")) == pytest.approx(0.6)
    # pairwise {0, 1, 3}: distances 1, 0.4, 0.2 -> 1.6 / 3; lam 0.5 halves it
    j = joint_objective(_mask(4, [0, 1, 3]), Q4, E4, lam=0.5, diversity="pairwise")
    assert float(j) == pytest.approx(2.3 / 3 + 0.5 * 1.6 / 3, abs=1e-12)
    # DiSF {0, 1, 3}: columns a = (1, 0, 0.6), b = (0, 1, 0.8); unbiased var 0.76/3, 0.28; cov -0.24;
    # corr = -0.24 / sqrt(0.76/3 * 0.28); 2 off-diagonal entries over D'(D' - 1) = 2
    corr = -0.24 / math.sqrt(0.76 / 3 * 0.28)
    j = joint_objective(_mask(4, [0, 1, 3]), Q4, E4, lam=1.0, diversity="disf")
    assert float(j) == pytest.approx(2.3 / 3 + 1.0 - corr ** 2, abs=1e-6)  # (eps 1e-8 in the variances)
    # lam 0: the mean quality alone
    assert float(joint_objective(_mask(4, [1, 3]), Q4, E4, lam=0.0)) == pytest.approx(0.65)


@pytest.mark.parametrize("diversity", ["facility", "pairwise", "disf"])
def test_vectorised_objective_equals_the_loop_reference(diversity):
    g = torch.Generator().manual_seed(3)
    e = unit_rows(torch.randn(6, 3, generator=g, dtype=torch.float64))
    q = torch.rand(6, generator=g, dtype=torch.float64)
    sets = [c for r in range(0, 7) for c in itertools.combinations(range(6), r)]
    masks = torch.zeros((len(sets), 6), dtype=torch.bool)
    for row, ids in enumerate(sets):
        masks[row, list(ids)] = True
    got = joint_objective(masks, q, e, lam=0.7, diversity=diversity)
    want = [joint_objective_loop(ids, q.tolist(), e.tolist(), lam=0.7, diversity=diversity) for ids in sets]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


def test_degenerate_sets_and_pools():
    # empty set: no quality, no coverage, no pairs; one item: no pairs, no correlation
    empty = torch.zeros((1, 4), dtype=torch.bool)
    for diversity in ("facility", "pairwise", "disf"):
        assert float(joint_objective(empty, Q4, E4, diversity=diversity)) == 0.0
        assert float(joint_objective(_mask(4, [3]), Q4, E4, lam=1.0, diversity=diversity)) == pytest.approx(
            0.8 + (0.25 * (0.6 + 0.8 + 0.6 + 1.0) if diversity == "facility" else 0.0))
    # duplicates add nothing to coverage
    sims = E4 @ E4.T
    assert float(facility_diversity(_mask(4, [0, 2]), sims)) == float(facility_diversity(_mask(4, [0]), sims))
    assert float(pairwise_diversity(_mask(4, [0, 2]), sims)) == 0.0
    # a zero embedding (an empty prompt's TF-IDF) stays finite
    e = torch.cat([E4, torch.zeros(1, 2, dtype=torch.float64)])
    q = torch.cat([Q4, torch.tensor([0.3], dtype=torch.float64)])
    all5 = torch.ones((1, 5), dtype=torch.bool)
    assert all(math.isfinite(float(joint_objective(all5, q, e, diversity=d))) for d in ("facility", "pairwise", "disf"))
    # k = N: everything, without learning
    result = learn_mask(Q4, E4, 4)
    assert result.selected == [0, 1, 2, 3] and result.trace == []
    with pytest.raises(CredoError, match="cannot select 5 of 4"):
        learn_mask(Q4, E4, 5)


def test_all_equal_quality_selects_by_diversity_alone():
    """Equal quality: the objective is diversity only, so of three tight clusters the pick covers all three."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, dtype=torch.float64)
    e = unit_rows(centres.repeat_interleave(5, 0) + 0.02 * torch.randn(15, 3, generator=g, dtype=torch.float64))
    q = torch.full((15,), 0.5, dtype=torch.float64)
    result = learn_mask(q, e, 3, seed=0)
    assert sorted(i // 5 for i in result.selected) == [0, 1, 2]
    # duplicate embeddings and equal quality: every set of k is as good; ties go to the lower id, no NaN
    flat = learn_mask(q, torch.ones((15, 3), dtype=torch.float64) / math.sqrt(3), 4, seed=0, keep_best=False)
    assert len(flat.selected) == 4 and bool(torch.isfinite(flat.theta).all())


# -- the gradient estimator against the exact gradient ----------------------------------------------


def _exact_gradient(theta, q, e, k, sampling, diversity="facility"):
    """grad_theta E[J] by enumerating every mask (bernoulli) or every draw order (size_k) of N = 4."""
    t = theta.detach().clone().requires_grad_(True)
    n = len(q)
    total = torch.zeros((), dtype=torch.float64)
    if sampling == "bernoulli":
        p = torch.sigmoid(t)
        for bits in itertools.product([0, 1], repeat=n):
            m = torch.tensor(bits, dtype=torch.float64)
            prob = torch.prod(p * m + (1 - p) * (1 - m))
            total = total + prob * joint_objective(m.bool().unsqueeze(0), q, e, diversity=diversity)[0]
    else:
        w = torch.exp(t)
        for order in itertools.permutations(range(n), k):
            prob, left = torch.ones((), dtype=torch.float64), list(range(n))
            for i in order:
                prob = prob * w[i] / w[left].sum()
                left.remove(i)
            total = total + prob * joint_objective(_mask(n, order), q, e, diversity=diversity)[0]
    (grad,) = torch.autograd.grad(total, t)
    return grad


@pytest.mark.parametrize("sampling", ["size_k", "bernoulli"])
def test_policy_gradient_matches_the_exact_gradient(sampling):
    theta = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64)
    exact = _exact_gradient(theta, Q4, E4, 2, sampling)
    generator = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(20):  # 20 independent estimates of 1000 masks each: their spread gives the tolerance
        sample = sample_masks(theta, 1000, 2, sampling, generator)
        objective = joint_objective(sample.masks, Q4, E4)
        batches.append(policy_gradient(theta, sample, objective, sampling))
    batches = torch.stack(batches)
    estimate, stderr = batches.mean(0), batches.std(0) / math.sqrt(len(batches))
    assert float(exact.abs().max()) > 10 * float(stderr.max())  # the check is sharp enough to fail
    assert bool(((estimate - exact).abs() <= 4 * stderr + 1e-12).all()), (estimate, exact, stderr)


def test_log_probabilities_of_both_samplers_by_hand():
    theta = torch.tensor([0.0, math.log(2.0), math.log(3.0)], dtype=torch.float64)  # weights 1, 2, 3
    order = torch.tensor([[2, 0]])
    sample = MaskSample(torch.tensor([[True, False, True]]), order)
    assert float(mask_log_prob(theta, sample, "size_k")) == pytest.approx(math.log(3 / 6 * 1 / 3))
    # bernoulli: sigmoid(0) * (1 - sigmoid(log 2)) * sigmoid(log 3) = 1/2 * 1/3 * 3/4
    assert float(mask_log_prob(theta, sample, "bernoulli")) == pytest.approx(math.log(0.5 / 3 * 0.75))
    sizes = sample_masks(theta, 50, 2, "size_k", torch.Generator().manual_seed(0)).masks.sum(-1)
    assert bool((sizes == 2).all())


# -- the toy pool whose best subset is known ---------------------------------------------------------


def _toy_pool(noise=0.05, seed=0):
    """Two tight clusters of good prompts (q 0.9 and 0.8, 4 each) and 6 copies of one poor prompt (q 0.2)."""
    g = torch.Generator().manual_seed(seed)

    def around(axis, n):
        x = torch.zeros(n, 6, dtype=torch.float64)
        x[:, axis] = 1.0
        return x + noise * torch.randn(n, 6, generator=g, dtype=torch.float64)

    dup = torch.zeros(6, 6, dtype=torch.float64)
    dup[:, 2] = 1.0
    q = torch.tensor([0.9] * 4 + [0.8] * 4 + [0.2] * 6, dtype=torch.float64)
    return q, unit_rows(torch.cat([around(0, 4), around(1, 4), dup]))


@pytest.mark.parametrize("diversity", ["facility", "pairwise"])
def test_toy_pool_finds_the_best_subset_and_beats_random_and_quality_only(diversity):
    q, e = _toy_pool()
    k = 4
    sets = list(itertools.combinations(range(14), k))
    masks = torch.zeros((len(sets), 14), dtype=torch.bool)
    for row, ids in enumerate(sets):
        masks[row, list(ids)] = True
    every = joint_objective(masks, q, e, diversity=diversity)  # brute force over all 1001 subsets
    best = float(every.max())
    top_quality = subset_scores(top_k(q, k), q, e, lam=1.0, diversity=diversity)["objective"]
    assert top_quality < best - 0.3  # quality alone takes one cluster only
    for seed in range(3):
        result = learn_mask(q, e, k, diversity=diversity, seed=seed)
        got = subset_scores(result.selected, q, e, lam=1.0, diversity=diversity)
        assert got["objective"] == pytest.approx(best, abs=1e-3)  # (cluster members differ by their noise only)
        assert {i // 4 for i in result.selected if i < 8} == {0, 1}  # both good clusters
        assert got["objective"] >= subset_scores(random_subset(14, k, seed), q, e, lam=1.0,
                                                 diversity=diversity)["objective"]
    assert best > float(every.mean()) + 0.2  # and well above a random subset on average


def test_determinism_for_a_seed():
    q, e = _toy_pool()
    a, b = learn_mask(q, e, 4, seed=5, iterations=50), learn_mask(q, e, 4, seed=5, iterations=50)
    assert a.selected == b.selected and torch.equal(a.theta, b.theta) and a.trace == b.trace
    assert not torch.equal(a.theta, learn_mask(q, e, 4, seed=6, iterations=50).theta)


# -- scores ------------------------------------------------------------------------------------------


def test_quality_sources_by_hand():
    assert length_quality(["a b", "a b c d", ""]).tolist() == [0.5, 1.0, 0.0]
    assert length_quality(["", ""]).tolist() == [1.0, 1.0]  # all equal: no information
    assert learnability_quality(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])).tolist() == [0.0, 0.75, 1.0, 0.75, 0.0]
    assert field_quality([{"s": 0.2}, {"s": 1.0}], "s").tolist() == [0.2, 1.0]
    assert field_quality([{"s": 1}, {"s": 3}, {"s": 5}], "s").tolist() == [0.0, 0.5, 1.0]  # min-max scaled
    assert scaled_to_unit(torch.tensor([7.0, 7.0])).tolist() == [1.0, 1.0]
    with pytest.raises(CredoError, match=r"rl.data_selection_params\['quality'\] 'field:s': candidate 1 .*no meta "
                                         r"field 's'.*meta_fields"):
        field_quality([{"s": 0.5}, {"source": "x.jsonl", "line": 2}], "s")
    with pytest.raises(CredoError, match="'nan'|nan"):
        field_quality([{"s": float("nan")}], "s")


def test_tfidf_by_hand():
    e = tfidf_embeddings(["a b", "a c", ""])
    # df: a 2, b 1, c 1 over N = 3; idf = log(4 / (1 + df)) + 1; doc 0 = (idf_a, idf_b, 0) normalised
    ia, ib = math.log(4 / 3) + 1, math.log(2) + 1
    assert e[0].tolist() == pytest.approx([ia / math.hypot(ia, ib), ib / math.hypot(ia, ib), 0.0])
    assert float(e[0] @ e[1]) == pytest.approx(ia * ia / (ia * ia + ib * ib))
    assert e[2].tolist() == [0.0, 0.0, 0.0]


def test_policy_embeddings_are_unit_rows_and_batch_invariant(tiny_policy):
    texts = ["What is 2+3?", "What is 17+25? Think about it.", "hello", ""]
    model = tiny_policy.model.train()
    one = policy_embeddings(model, tiny_policy.tokenizer, texts, batch_size=1)
    many = policy_embeddings(model, tiny_policy.tokenizer, texts, batch_size=4)
    assert model.training  # the mode is restored
    assert torch.allclose(one.norm(dim=-1), torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(one, many, atol=1e-5)  # right padding never leaks into a row


def test_judge_quality_on_the_policy_model(tiny_policy):
    from credo.judges.llm import LLMJudge
    from credo.tasks import make_task

    examples = make_task("arith").examples("train", 3, seed=0)
    params = DataMaskParams(quality="judge", judge_model="policy", embed="tfidf")
    model = tiny_policy.model.train()
    q = candidate_quality(params, examples, None, model, tiny_policy.tokenizer, seed=0)
    assert model.training
    want = LLMJudge(model, tiny_policy.tokenizer).yes_probability("wellposed", [{"prompt": x.prompt} for x in examples])
    model.train()
    assert q.tolist() == pytest.approx(want) and all(0.0 < v < 1.0 for v in want)


# -- configuration -----------------------------------------------------------------------------------


def _validate(*overrides):
    from credo.cli import resolve_config
    from credo.train.run import validate

    validate(resolve_config("tiny", None, list(overrides)))


def test_configuration_errors_name_the_field():
    assert candidate_count(16, 0.25) == 64 and candidate_count(5, 0.3) == 17 and candidate_count(4, 1.0) == 4
    with pytest.raises(CredoError, match=r"datamask.*set rl.prompt_pool > 0"):
        _validate(("rl.data_selection", "datamask"))
    with pytest.raises(CredoError, match=r"rl.data_selection_params: unknown parameter\(s\) 'ration'.*valid: ratio"):
        _validate(("rl.data_selection", "datamask"), ("rl.prompt_pool", "4"),
                  ("rl.data_selection_params", '{"ration": 0.5}'))
    for params, match in (('{"ratio": 0}', r"\['ratio'\]: must be in \(0, 1\]"),
                          ('{"quality": "beauty"}', r"\['quality'\]: must be one of learnability, length, judge"),
                          ('{"quality": "field:"}', r"\['quality'\]"),
                          ('{"diversity": "dpp"}', r"\['diversity'\]: must be one of facility, pairwise, disf"),
                          ('{"masks": 1}', r"\['masks'\]: must be at least 2"),
                          ('{"lr": "fast"}', r"\['lr'\]: must be a number"),
                          ('{"normalize": 1}', r"\['normalize'\]: must be true or false")):
        with pytest.raises(CredoError, match=r"rl.data_selection_params" + match):
            _validate(("rl.data_selection", "datamask"), ("rl.prompt_pool", "4"), ("rl.data_selection_params", params))
    with pytest.raises(CredoError, match=r"rl.data_selection_params is set but rl.data_selection is \"none\""):
        _validate(("rl.data_selection_params", '{"ratio": 0.5}'))
    with pytest.raises(CredoError, match="rl.data_selection with rl.curriculum is not built yet"):
        _validate(("rl.data_selection", "datamask"), ("rl.prompt_pool", "4"), ("rl.curriculum", "linear"),
                  ("rl.curriculum_params", '{"levels": [1, 2]}'))
    with pytest.raises(CredoError, match=r"config field rl.data_selection: 'dm' is out of range"):
        _validate(("rl.data_selection", "dm"))
    _validate(("rl.data_selection", "datamask"), ("rl.prompt_pool", "4"))


# -- training ----------------------------------------------------------------------------------------


def test_datamask_pool_trains_on_the_tiny_preset(tmp_path, monkeypatch):
    """Learnability from real samples of the tiny policy and its own embeddings: the pool is selected,
    logged once, written to data_selection.json and into the final checkpoint's state."""
    monkeypatch.syspath_prepend(str(TESTS))  # fixture_tasks (the parity task)
    from credo.cli import resolve_config
    from credo.train.run import train

    cfg = resolve_config("tiny", None, [
        ("rl.data_selection", "datamask"), ("rl.prompt_pool", "6"), ("task.name", "fixture_tasks:ParityTask"),
        ("rl.data_selection_params", '{"ratio": 0.5, "iterations": 30, "learn_samples": 2}'),
        ("rl.steps", "2"), ("warmup.steps", "0"), ("run.eval_base", "false"), ("task.eval_size", "4"),
        ("run.out_dir", str(tmp_path)), ("run.name", "dm"), ("run.progress", "false")])
    summary = train(cfg)
    run_dir = tmp_path / "dm"
    record = json.loads((run_dir / "data_selection.json").read_text())
    assert record["n_candidates"] == 12 and record["k"] == 6 and len(record["selected"]) == 6
    assert record["selected"] == sorted(set(record["selected"])) and max(record["selected"]) < 12
    assert record["quality"] == [record["candidate_quality"][i] for i in record["selected"]]
    # ParityTask: p = fraction of odd-length completions of 2 samples, so q = 4 p (1 - p) is 0 or 1
    assert set(record["candidate_quality"]) <= {0.0, 1.0}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    selection = [r for r in rows if r["phase"] == "data_selection"]
    assert len(selection) == 1 and selection[0]["k"] == 6
    assert selection[0]["selected_objective"] >= selection[0]["random_objective"] and "top_objective" in selection[0]
    assert selection[0]["selected_objective"] == pytest.approx(
        selection[0]["selected_quality"] + selection[0]["selected_diversity"])  # (lam 1)
    assert summary["data_selection"]["n_candidates"] == 12
    state = json.loads((run_dir / "checkpoints" / "final" / "state.json").read_text())
    assert state["data_selection"]["selected"] == record["selected"]
    assert len([r for r in rows if r["phase"] == "rl"]) == 2


TIMING_KEYS = {"gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s",
               "data_selection_seconds"}
ARGS = ["--preset", "tiny", "--run.checkpoint_every", "1", "--rl.steps", "3", "--model.threads", "1",
        "--run.progress", "false", "--task.name", "fixture_tasks:ParityTask", "--rl.lr", "0.01",
        "--task.eval_size", "4", "--rl.data_selection", "datamask", "--rl.prompt_pool", "4",
        "--rl.data_selection_params", '{"ratio": 0.5, "iterations": 20, "learn_samples": 2}']


def _credo(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("CREDO_FAULT", None)
    if fault:
        env["CREDO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "credo.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_selected_pool_survives_a_sigkill_and_resumes_bitwise(tmp_path):
    from safetensors.torch import load_file

    from credo.train.logging import read_metrics

    ref = _credo(ARGS + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "credo: data selection (datamask): 4 of 8 candidates" in ref.stdout
    crash_args = ARGS + ["--run.out_dir", str(tmp_path), "--run.name", "crash"]
    crashed = _credo(crash_args, "update:3")  # (2 minibatches a step: killed in step 2, after checkpoint step_1)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _credo(["--resume", str(tmp_path / "crash")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "data selection restored from step_1" in resumed.stdout and "data selection (datamask)" not in resumed.stdout

    def comparable(name):
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert comparable("crash") == comparable("ref")
    assert sum(r["phase"] == "data_selection" for r in comparable("crash")) == 1
    selected = [json.loads((tmp_path / n / "data_selection.json").read_text())["selected"] for n in ("ref", "crash")]
    assert selected[0] == selected[1]
    weights = [load_file(str(tmp_path / n / "checkpoints" / "final" / "model" / "model.safetensors"))
               for n in ("ref", "crash")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
