"""Ray rollout workers: N actors, each holding its own copy of the policy and a torch rollout engine.

`rollout.engine = "ray"` makes `RayEngine` the run's engine. It starts (or joins) Ray with
`ray.init(address=rollout.ray_address or None)`: a local Ray on this machine by default, an existing
cluster by address ("auto", "ray://host:10001"). Each `RolloutWorker` actor loads the same model
(`model.name`, so a cluster node needs the model where the driver has it), keeps
`rollout.ray_threads` torch threads, and samples with `credo.rollout.torch_engine.TorchEngine` (vLLM
workers are the GPU issue's next step).

Weight sync (`load_weights(model, version)`): the trainer's weights under plain Hugging Face names
(`rollout/weights.py::named_weights`; LoRA: merged) are put once into Ray's object store and every worker
loads them into its copy; `version` (the trainer's count of weight updates) is stamped on every
completion a worker samples afterwards. Actor calls run in the order they were sent, so a generation
sent before a sync samples the old weights and one sent after samples the new ones: the asynchronous
loop (`train/pipeline.py`) relies on it, and `load_weights(..., wait=False)` returns before the workers
have loaded (errors surface at the next `generate`).

Seeds: prompt p of a call seeded s is sampled in its own engine call with seed `request_seed(s, p)`
(as the vLLM engine seeds its requests), so the completions do not depend on how the prompts are cut
across workers: 1 worker and N workers give the same completions (tests/test_ray.py). Prompts are cut
into contiguous shards, one per worker, and every worker samples its shard in parallel.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from credo.errors import CredoError
from credo.rollout.base import Completion, SamplingParams
from credo.rollout.weights import named_weights, request_seed


def import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the test extra
        raise CredoError("rollout.engine \"ray\" needs Ray: pip install -e '.[ray]'") from exc
    return ray


def init_ray(address: str = "", num_cpus: int | None = None) -> Any:
    """Start a local Ray (address "") or connect to a cluster; a no-op when Ray is already up."""
    ray = import_ray()
    if not ray.is_initialized():
        # a local Ray's workers import credo from this interpreter's environment; the dashboard and
        # usage stats would only cost start-up time and memory on a laptop
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kwargs["address"] = address
        elif num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CredoError(f"rollout.ray_address {address!r}: cannot start or join Ray: {first}") from exc
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What every rollout worker builds its copy of the policy from."""

    model: str  # model.name: "smollm2", "tiny" or a folder
    seed: int = 0  # the tiny model's init seed (its weights are replaced at the first sync anyway)
    autocast_dtype: torch.dtype | None = None
    fp32_lm_head: bool = False
    threads: int = 1


class RolloutWorker:
    """One rollout actor (wrapped with ray.remote by RayEngine): a policy copy and a TorchEngine."""

    def __init__(self, spec: WorkerSpec):
        torch.set_num_threads(spec.threads)
        from credo.memory import apply_memory_options
        from credo.models import load_policy
        from credo.rollout.torch_engine import TorchEngine

        policy = load_policy(spec.model, seed=spec.seed)
        apply_memory_options(policy.model, fp32_lm_head=spec.fp32_lm_head, gradient_checkpointing=False)
        self.model = policy.model.eval().requires_grad_(False)
        self.engine = TorchEngine(self.model, policy.tokenizer, autocast_dtype=spec.autocast_dtype)
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))

    def load(self, weights: list[tuple[str, torch.Tensor]], version: int) -> int:
        """Copy (name, tensor) pairs into the model; returns the number loaded."""
        missing, unexpected = self.model.load_state_dict(dict(weights), strict=False)
        if self.tied:  # named_parameters lists a tied head once, under the embedding's name
            missing = [m for m in missing if m != "lm_head.weight"]
        if missing or unexpected:
            raise CredoError(f"ray rollout worker: weight sync names do not match the model: missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}")
        self.engine.weight_version = version
        return len(weights)

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seeds: Sequence[int]) -> tuple[list[list[Completion]], float]:
        """Each prompt in its own engine call, with its own seed; also this process's peak RSS (MB)."""
        groups = []
        for prompt, seed in zip(prompts, seeds):
            groups += self.engine.generate([prompt], n, sampling, seed)
        return groups, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def version(self) -> int:
        return self.engine.weight_version


class RayEngine:
    """The rollout protocol over `workers` Ray actors (see the module docstring)."""

    def __init__(self, spec: WorkerSpec, *, workers: int = 2, address: str = ""):
        if workers < 1:
            raise CredoError(f"rollout.ray_workers must be >= 1, got {workers}")
        self.ray = init_ray(address, num_cpus=None)
        actor = self.ray.remote(num_cpus=0)(RolloutWorker)  # (num_cpus 0: N actors fit any laptop)
        self.workers = [actor.remote(spec) for _ in range(workers)]
        self.weight_version = 0
        self.worker_rss_mb = 0.0  # the largest peak resident memory a worker has reported (MB)
        self._syncs: list = []  # weight loads not yet checked (load_weights(wait=False))

    def load_weights(self, model, version: int = 0, wait: bool = True) -> None:
        weights = [(name, tensor.detach().to("cpu", copy=True)) for name, tensor in named_weights(model)]
        ref = self.ray.put(weights)  # one copy in the object store, read by every worker
        self._syncs += [w.load.remote(ref, version) for w in self.workers]
        self.weight_version = version
        if wait:
            self.ray.get(self._syncs)
            self._syncs = []

    def submit(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> list:
        """Send a generation to the workers now; `collect` its result later (the asynchronous loop)."""
        if sampling.temperature_fn is not None:
            raise CredoError("rollout.engine \"ray\" cannot apply rollout.temperature_schedule (its state lives "
                             "in the trainer); use rollout.engine \"torch\"")
        from credo.dist.shard import shard_bounds

        seeds = [request_seed(seed, p) for p in range(len(prompts))]
        futures = []
        for rank, worker in enumerate(self.workers):
            lo, hi = shard_bounds(len(prompts), rank, len(self.workers))
            if hi > lo:
                futures.append(worker.generate.remote(list(prompts[lo:hi]), n, sampling, seeds[lo:hi]))
        return futures

    def collect(self, futures: list) -> list[list[Completion]]:
        """The groups of a `submit`, in prompt order. A failed weight load sent before it raises here
        (actor calls run in order, so every earlier load has finished by then)."""
        syncs, self._syncs = self._syncs, []
        done = self.ray.get(syncs + list(futures))
        groups: list[list[Completion]] = []
        for part, rss in done[len(syncs):]:
            groups += part
            self.worker_rss_mb = max(self.worker_rss_mb, rss)
        return groups

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]:
        if not prompts:
            return []
        return self.collect(self.submit(prompts, n, sampling, seed))

    def shutdown(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
