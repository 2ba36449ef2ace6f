"""Process-group lifecycle from torchrun's environment variables, and who this process is.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts
(on one machine or, with --nnodes / --rdzv_endpoint, on several); `init` reads them. Without them
(a plain `credo train`) the run is one process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from credo.errors import CredoError

STRATEGIES = ("none", "ddp", "fsdp2")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class World:
    """This process's place in the job. strategy "none" with world_size 1: the plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"
    backend: str = ""

    @property
    def distributed(self) -> bool:
        """A process group is up and the policy is wrapped (also with one rank under torchrun)."""
        return self.strategy != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes the run folder; the other ranks write nothing."""
        return self.rank == 0


SINGLE = World()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_backend(backend: str) -> str:
    """"auto": NCCL when CUDA is available, else gloo (CPU)."""
    if backend not in BACKENDS:
        raise CredoError(f"unknown dist.backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init(strategy: str, backend: str = "auto", timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun set up, or return the one-process World.

    strategy "none" under torchrun with several ranks is refused (every rank would train alone and
    write the same run folder); a strategy without torchrun runs as one process, with a note.
    """
    import torch.distributed as dist

    if strategy not in STRATEGIES:
        raise CredoError(f"unknown dist.strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "none":
        if launched_by_torchrun() and world_size > 1:
            raise CredoError(f"launched with {world_size} ranks but dist.strategy is \"none\"; "
                             f"set --dist.strategy ddp or fsdp2")
        return SINGLE
    if not launched_by_torchrun():
        print(f"credo: dist.strategy {strategy} without torchrun: training in one process", flush=True)
        return SINGLE
    backend = resolve_backend(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                 strategy=strategy, backend=backend)


def teardown(world: World) -> None:
    """Leave the process group (every rank; after the last collective)."""
    import torch.distributed as dist

    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    import torch.distributed as dist

    if world.distributed:
        dist.barrier()


def comm_device(world: World) -> torch.device:
    """Where collective tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else torch.device("cpu")


class NullWriter:
    """The metrics writer of ranks other than 0: they write nothing (rank 0 logs the reduced metrics)."""

    def write(self, record) -> None:
        pass

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass
