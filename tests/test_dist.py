"""torch.distributed training on this CPU (gloo): 2 ranks train what 1 process trains.

The 2-rank runs are real `torchrun -m credo train` jobs (subprocesses); the 1-process runs go
through the same `train()` in this process. Every run: the tiny preset on the parity task (mixed
rewards even for a random model, so GRPO's group advantages are real), fp32, one thread, a KL term
(the reference model is placed too) and an entropy bonus, 2 RL steps x 2 minibatches =
4 optimizer steps, micro-batches of 3 rows (ranks make different numbers of micro-batches, which
exercises the matched filler passes), `dist.seed_per_prompt` (the rollout batch is the same for
any number of ranks, credo/dist/shard.py).

Tolerances: AdamW's first steps move each weight by about lr x sign(g), so fp32 summation-order
noise (other micro-batch shapes, the all-reduce) decides the update of entries whose gradient is
about eps = 1e-8; measured here, 1-2 % of lr at the worst entry (tied embedding rows), 3e-4 of the
movement in norm. The learning rate is 1e-5 so that 1e-6 (DDP) and 1e-5 (FSDP2) are the issue's
absolute bounds, and every test also checks the weights moved by far more than its tolerance.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credo.cli import _overrides, resolve_config
from credo.dist.comm import reduce_metrics
from credo.dist.env import SINGLE, init
from credo.errors import CredoError
from credo.dist.hooks import Layout
from credo.dist.shard import prompt_seed, rank_seed, shard_bounds
from credo.train.checkpoint import verify
from credo.train.run import train

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # fixture_tasks (the parity task) for the in-process runs
ARGS = ["--preset", "tiny", "--run.progress", "false", "--run.eval_base", "false", "--task.eval_size", "4",
        "--warmup.steps", "1", "--rl.steps", "2", "--rl.minibatches", "2", "--rl.micro_batch_size", "3",
        "--rl.lr", "1e-5", "--rl.kl_coef", "0.05", "--rl.entropy_coef", "0.01", "--model.threads", "1",
        "--dist.seed_per_prompt", "true", "--task.name", "fixture_tasks:ParityTask",
        # several ranks use the reference forward; so does the one-process run compared with them
        "--rl.shared_prefix", "false", "--rl.chunked_head", "false"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process(out: Path, name: str, *extra: str) -> Path:
    overrides = _overrides([*ARGS[2:], "--run.out_dir", str(out), "--run.name", name, *extra])
    train(resolve_config("tiny", None, overrides))
    return out / name


def _torchrun(out: Path, name: str, *extra: str, ranks: int = 2, resume: bool = False) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
           "--master_addr", "127.0.0.1", "--master_port", str(_port()),
           "-m", "credo", "train",
           *(["--resume", str(out / name)] if resume else [*ARGS, "--run.out_dir", str(out), "--run.name", name]),
           *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return out / name


def _weights(run_dir: Path, checkpoint: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / checkpoint / "model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |difference| {diff:.3e}")  # (pytest -s shows the measured figures)
    return diff


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    return {"one": _one_process(out, "one"),
            "ddp": _torchrun(out, "ddp", "--dist.strategy", "ddp"),
            "fsdp2": _torchrun(out, "fsdp2", "--dist.strategy", "fsdp2", "--run.checkpoint_every", "1"),
            "out": out}


def test_ddp_two_ranks_end_with_the_one_process_weights(runs):
    one, ddp = _weights(runs["one"]), _weights(runs["ddp"])
    moved = _max_diff(one, _weights(runs["one"], "warmup"))
    assert moved > 20 * 1e-6  # the comparison is not between two untouched models
    assert _max_diff(one, ddp) < 1e-6


def test_fsdp2_two_ranks_end_with_the_one_process_weights(runs):
    one, fsdp = _weights(runs["one"]), _weights(runs["fsdp2"])
    assert _max_diff(one, _weights(runs["one"], "warmup")) > 2 * 1e-5
    assert _max_diff(one, fsdp) < 1e-5


def test_rank_zero_alone_writes_the_run_folder_with_reduced_metrics(runs):
    import json

    one = [json.loads(line) for line in (runs["one"] / "metrics.jsonl").read_text().splitlines()]
    ddp = [json.loads(line) for line in (runs["ddp"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in ddp] == [r["phase"] for r in one]  # one line per step, not one per rank
    for a, b in zip(one, ddp):
        if a["phase"] == "rl":  # global sums and means: the same numbers as one process
            assert b["trained_sequences"] == a["trained_sequences"] == 16
            assert 0.0 < a["reward_mean"] < 1.0  # mixed rewards: non-zero GRPO advantages
            assert b["reward_mean"] == pytest.approx(a["reward_mean"], abs=1e-6)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
            assert b["updates"] == a["updates"] == 2
    assert (runs["ddp"] / "summary.json").is_file()


def test_dcp_checkpoint_of_two_ranks_resumes_on_one_with_the_same_next_step(runs):
    src = runs["fsdp2"]
    step1 = verify(src / "checkpoints" / "step_1")  # the manifest covers the DCP shards
    assert step1.state["format"] == "dcp" and step1.state["world_size"] == 2
    assert sorted(p.name for p in (step1.folder / "dcp").iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]
    run = runs["out"] / "resumed"
    _cut_after_step_1(src, run)
    # one plain process (no process group) continues from the 2-rank sharded checkpoint
    cfg = resolve_config(None, str(run / "config.json"), [("dist.strategy", "none")])
    cfg.run.out_dir, cfg.run.name = str(run.parent), run.name
    summary = train(cfg, resume=True)
    assert summary["resumed_from"] == "step_1"
    assert _max_diff(_weights(run), _weights(src)) < 1e-6  # = continuing on 2 ranks
    assert _max_diff(_weights(run), _weights(src, "step_1")) > 1e-5  # and step 2 did move it


def _cut_after_step_1(src: Path, run: Path) -> None:
    shutil.copytree(src, run)
    for name in ("step_2", "final"):
        shutil.rmtree(run / "checkpoints" / name)
    (run / "summary.json").unlink()


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_on_two_ddp_ranks(runs):
    """Resharding across strategies: FSDP2 shards (2 ranks) -> DDP replicas (2 ranks)."""
    run = runs["out"] / "resumed_ddp"
    _cut_after_step_1(runs["fsdp2"], run)
    _torchrun(runs["out"], run.name, "--dist.strategy", "ddp", resume=True)
    assert _max_diff(_weights(run), _weights(runs["fsdp2"])) < 1e-6


@pytest.mark.slow
def test_ddp_critic_is_replicated_and_trains_as_in_one_process(runs):
    """PPO + GAE: the value head is replicated, its minibatches global, its gradients summed.
    GAE's batch whitening is a statistic of each rank's batch, so it is off here (see README)."""
    critic = ["--rl.credit", "gae", "--rl.objective", "ppo", "--rl.critic_lr", "1e-3",
              "--rl.credit_params", '{"whiten": false}']
    one = _one_process(runs["out"], "critic_one", *critic)
    two = _torchrun(runs["out"], "critic_ddp", "--dist.strategy", "ddp", *critic)
    assert _max_diff(_weights(one), _weights(two)) < 1e-6
    import torch.distributed.checkpoint as dcp

    head = load_file(str(one / "checkpoints" / "final" / "critic.safetensors"))
    loaded = {"critic": {k: torch.zeros_like(v) for k, v in head.items()}}
    dcp.load(loaded, checkpoint_id=str(two / "checkpoints" / "final" / "dcp"))
    assert float(head["head.weight"].abs().max()) > 1e-3  # the critic moved
    assert _max_diff(head, loaded["critic"]) < 1e-6


def test_shards_keep_whole_groups_and_cover_the_step():
    for count in range(0, 9):
        for world in (1, 2, 3):
            bounds = [shard_bounds(count, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    assert rank_seed(5, 0) == 5  # rank 0 keeps the one-process seed
    assert len({prompt_seed(5, k) for k in range(100)}) == 100


def test_layout_maps_global_minibatches_to_local_rows():
    layout = Layout(offset=4, count=3, rows=torch.tensor([0, 2, 4, 5, 6]), group_ids=torch.zeros(7, dtype=torch.long))
    assert layout.local(torch.tensor([6, 0, 4])).tolist() == [2, 0]
    assert layout.local(torch.tensor([1, 2])).tolist() == []


def test_one_process_metrics_pass_through():
    metrics = {"reward_mean": 0.5, "updates": 2}
    assert reduce_metrics(SINGLE, metrics, rows=8) is metrics


def test_launch_mismatches_are_refused_or_run_as_one_process(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CredoError, match="dist.strategy"):  # 2 ranks each training alone
        init("none")
    with pytest.raises(CredoError, match="unknown dist.strategy"):
        init("zero3")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert init("ddp") == SINGLE  # no torchrun: one plain process
