"""Ray rollout workers, verifier workers and asynchronous rollouts on a local Ray (this CPU).

- 1 and 2 rollout workers give the same completions for the same seeds, equal to the in-process torch
  engine sampling each prompt with its request seed, stamped with the synced weight version;
- a weight sync really replaces the workers' weights;
- 2 verifier workers give the in-process scores (errors counted the same way);
- a training run with 2 workers + 2 verifiers ends with the same weights as 1 worker + none;
- the asynchronous loop at k = 0 equals the synchronous loop bitwise; at k = 1 every step after the
  first samples one update behind; stale groups are resampled, dropped or kept and counted;
- the combinations not built yet are refused with one line naming the fields.
"""

import json
import sys
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from credo.cli import main, resolve_config
from credo.errors import CredoError
from credo.models import load_policy
from credo.rewards.verifier_pool import VerifierPool
from credo.rollout import Completion, SamplingParams, TorchEngine
from credo.rollout.ray_engine import RayEngine, WorkerSpec, init_ray
from credo.rollout.weights import request_seed
from credo.tasks import TASKS
from credo.tasks.arithmetic import ArithmeticTask
from credo.train.evaluate import safe_score
from credo.train.logging import read_metrics
from credo.train.pipeline import RolloutPipeline
from credo.train.run import validate

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
import fixture_tasks  # noqa: E402
from fixture_tasks import ParityTask  # noqa: E402

PROMPTS = [[1, 50, 60], [1, 70], [1, 80, 81, 82], [1, 90], [1, 91, 92]]
SAMPLING = SamplingParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def local_ray():
    init_ray("", num_cpus=2)
    ray.cloudpickle.register_pickle_by_value(fixture_tasks)  # test tasks travel to the workers by value
    yield ray
    ray.shutdown()  # (the rest of the suite runs without a Ray cluster in the background)


def _key(groups):
    return [[(c.token_ids, c.logprobs, c.finish_reason) for c in g] for g in groups]


def test_one_and_two_workers_give_the_same_completions(local_ray):
    policy = load_policy("tiny", seed=3)  # other weights than the workers' own init (seed 0)
    local = TorchEngine(policy.model, policy.tokenizer)
    expected = [g for p, prompt in enumerate(PROMPTS)
                for g in local.generate([prompt], 3, SAMPLING, request_seed(11, p))]
    got = {}
    for workers in (1, 2):
        engine = RayEngine(WorkerSpec("tiny", seed=0), workers=workers)
        engine.load_weights(policy.model, version=5)
        got[workers] = engine.generate(PROMPTS, 3, SAMPLING, seed=11)
        assert {c.weight_version for g in got[workers] for c in g} == {5}
        engine.shutdown()
    assert _key(got[1]) == _key(got[2]) == _key(expected)
    assert len({tuple(c.token_ids) for g in got[2] for c in g}) > 3  # really sampled, not one repeated row


def test_a_weight_sync_replaces_the_workers_weights(local_ray):
    policy = load_policy("tiny", seed=3)
    engine = RayEngine(WorkerSpec("tiny", seed=0), workers=2)
    engine.load_weights(policy.model, version=1)
    before = engine.generate(PROMPTS, 2, SAMPLING, seed=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.load_weights(policy.model, version=2, wait=False)  # (ordered: the next generate sees it)
    after = engine.generate(PROMPTS, 2, SAMPLING, seed=4)
    engine.shutdown()
    local = TorchEngine(policy.model, policy.tokenizer)
    expected = [g for p, prompt in enumerate(PROMPTS) for g in local.generate([prompt], 2, SAMPLING, request_seed(4, p))]
    assert _key(after) == _key(expected) and _key(after) != _key(before)
    assert {c.weight_version for g in after for c in g} == {2}


class FlakyArith(ArithmeticTask):
    """Raises on completions that mention 'boom' (a verifier bug must be counted, not crash)."""

    def score(self, completion, example):
        if "boom" in completion:
            raise RuntimeError("verifier bug")
        return super().score(completion, example)


def test_verifier_workers_give_the_in_process_scores(local_ray):
    task = FlakyArith()
    examples = task.examples("train", 6, seed=0)
    texts = [f"<answer>{e.answer}</answer>" for e in examples[:3]] + ["<answer>-1</answer>", "boom", "no tags"]
    pairs = list(zip(texts, examples))
    local = [safe_score(task, t, e, 0.0) for t, e in pairs]
    pool = VerifierPool(task, safe_score, workers=2)
    remote = pool.score(pairs)
    pool.shutdown()
    assert remote == local
    assert [s.correct for s, _ in remote] == [True, True, True, False, False, False]
    assert [failed for _, failed in remote] == [False, False, False, False, True, False]


def _run(tmp_path, name, *extra, steps=3):
    args = ["train", "--preset", "tiny", "--run.out_dir", str(tmp_path), "--run.name", name, "--run.progress",
            "false", "--rl.steps", str(steps), "--run.eval_base", "false", "--task.name", "parity",
            "--task.eval_size", "4", "--warmup.steps", "1", "--model.threads", "1", "--rollout.engine", "ray", *extra]
    assert main(args) == 0
    rows = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    weights = load_file(str(tmp_path / name / "checkpoints" / "final" / "model" / "model.safetensors"))
    return rows, weights


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, local_ray):
    """Four tiny runs: 1 worker (the pipeline at k = 0), 2 workers + 2 verifiers, 1 worker through the
    plain generate-then-train loop, and k = 1 (4 steps)."""
    tmp = tmp_path_factory.mktemp("ray_runs")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASKS._items, "parity", ParityTask)
        out["one"] = _run(tmp, "one", "--rollout.ray_workers", "1")
        out["two"] = _run(tmp, "two", "--rollout.ray_workers", "2", "--rollout.ray_verifiers", "2")
        out["k1"] = _run(tmp, "k1", "--rollout.ray_workers", "2", "--rollout.max_staleness", "1", steps=4)
        out["k1_config"] = json.loads((tmp / "k1" / "config.json").read_text())
        import credo.train.run as run_module

        mp.setattr(run_module, "uses_pipeline", lambda run: False)
        out["sync"] = _run(tmp, "sync", "--rollout.ray_workers", "1")
    return out


def test_training_with_two_workers_and_verifiers_equals_one_worker(runs):
    (one, w1), (two, w2) = runs["one"], runs["two"]
    assert _same(w1, w2)
    assert [r["reward_mean"] for r in one] == [r["reward_mean"] for r in two]
    assert any(0 < r["reward_mean"] < 1 for r in one) and all(r["updates"] >= 1 for r in one)
    assert all(r["policy_lag_max"] == 0 for r in one)  # k = 0: on-policy


def test_async_k0_equals_the_synchronous_loop_bitwise(runs):
    (piped, w_piped), (plain, w_plain) = runs["one"], runs["sync"]
    assert _same(w_piped, w_plain)
    drop = ("gen_time", "update_time", "step_time", "weight_sync_time", "tokens_per_s", "gen_tokens_per_s", "stale_groups",
            "rollout_worker_rss_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in piped] == \
        [{k: v for k, v in r.items() if k not in drop} for r in plain]
    assert all(r["stale_groups"] == 0 for r in piped) and all("stale_groups" not in r for r in plain)


def test_async_k1_samples_one_update_behind(runs):
    (lagged, w_lagged), (_, w_plain) = runs["k1"], runs["sync"]
    assert [r["policy_lag_max"] for r in lagged] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["stale_groups"] == 0 for r in lagged)
    assert runs["k1_config"]["rl"]["is_correction"] == "tis"  # the lag is corrected by default
    assert not _same(w_lagged, w_plain)


class FakeEngine:
    """submit/collect/generate over canned versions: group p of a submit is stamped versions[p]."""

    def __init__(self, versions):
        self.versions, self.generated = versions, []

    def _group(self, prompt, version, tag):
        return [Completion(list(prompt), [tag], [0.0], [True], "stop", "x", weight_version=version)]

    def submit(self, prompts, n, sampling, seed):
        return [self._group(p, v, 1) for p, v in zip(prompts, self.versions)]

    def collect(self, handle):
        return handle

    def generate(self, prompts, n, sampling, seed):
        self.generated.append(len(prompts))
        return [self._group(p, 9, 2) for p in prompts]


@pytest.mark.parametrize("policy, kept, counted", [
    ("resample", [0, 1, 2], {"stale_resampled": 2.0}),
    ("drop", [1], {"stale_dropped": 2.0}),
    ("keep", [0, 1, 2], {"stale_kept": 2.0}),
])
def test_stale_groups_follow_the_policy_and_are_counted(policy, kept, counted):
    # step 9, k = 2: versions 5 and 6 are 4 and 3 updates behind (stale), 8 is 1 behind (fine)
    engine = FakeEngine([5, 8, 6])
    prompts = [[1, 2], [1, 3], [1, 4]]
    pipe = RolloutPipeline(engine, max_staleness=2, stale_policy=policy, group_size=1, sampling=SAMPLING,
                           plan=lambda t: ([None] * 3, prompts), step_seed=lambda t: t, last_step=20)
    groups, keep, metrics = pipe.collect(9, prompts)
    assert keep == kept and metrics == {"stale_groups": 2.0, **counted}
    tags = [g[0].token_ids[0] for g in groups]
    assert tags == {"resample": [2, 1, 2], "drop": [1], "keep": [1, 1, 1]}[policy]
    assert engine.generated == ([2] if policy == "resample" else [])


def test_fill_sends_k_steps_ahead_and_checks_the_prompts():
    sent = []

    class Recorder(FakeEngine):
        def submit(self, prompts, n, sampling, seed):
            sent.append(seed)
            return super().submit(prompts, n, sampling, seed)

    pipe = RolloutPipeline(Recorder([0, 0]), max_staleness=2, stale_policy="resample", group_size=1,
                           sampling=SAMPLING, plan=lambda t: ([None], [[1, t]]), step_seed=lambda t: 100 + t,
                           last_step=4)
    pipe.fill(0)
    assert sent == [100, 101, 102] and sorted(pipe.pending) == [0, 1, 2]
    pipe.collect(0, [[1, 0]])
    pipe.fill(1)
    assert sent == [100, 101, 102, 103]  # step 4 does not exist (last_step 4 = steps 0..3)
    with pytest.raises(CredoError, match="differ from the ones sent ahead"):
        pipe.collect(1, [[1, 99]])


@pytest.mark.parametrize("overrides, match", [
    ([("rollout.max_staleness", "1")], "needs rollout.engine \"ray\""),
    ([("rollout.engine", "ray"), ("rollout.max_staleness", "1"), ("rl.dynamic_sampling", "true")], "rl.dynamic_sampling"),
    ([("rollout.engine", "ray"), ("dist.strategy", "ddp")], "dist.strategy"),
    ([("rollout.engine", "ray"), ("rollout.max_staleness", "1"), ("task.name", "keyvalue")], "multi-turn task"),
    ([("rollout.engine", "ray"), ("rollout.temperature_schedule", "hapo")], "needs the torch engine"),
])
def test_combinations_not_built_are_refused(overrides, match):
    with pytest.raises(CredoError, match=match):
        validate(resolve_config("tiny", None, overrides))
