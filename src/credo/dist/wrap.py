"""Placing the policy and the reference model on the ranks: DDP or FSDP2.

The trainer scores sequences with `logprobs.policy_outputs(model, ...)`, which calls
`model.base_model(...)` and then the output head only on the scored positions. A wrapper's hooks
(DDP's gradient reducer, FSDP2's all-gather / reduce-scatter) run only when the wrapped ROOT module
is called, so `_Trunk` makes the transformer body the root's forward and `DistPolicy.base_model`
calls it. The output head is used outside that forward: under DDP its gradient is still reduced by
the parameter hooks; under FSDP2 the root's parameters (embeddings, tied head, final norm) stay
unsharded after the forward (`reshard_after_forward=False` on the root) and are reduce-scattered
by FSDP2's end-of-backward callback.

- "ddp": every rank holds the whole model; gradients are averaged over ranks in backward.
  The reference model is frozen, so it is replicated as it is (DDP wraps only trainable modules).
- "fsdp2": `fully_shard` on every decoder layer, then on the root; parameters, gradients and
  AdamW moments are sharded (DTensors). The reference model is sharded the same way. Sampling runs
  on a plain full copy of the policy per rank (`rollout_model`), refreshed from the shards before
  each step's rollouts (one all-gather), as a colocated inference engine holds its own weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from credo.dist.env import World
from credo.errors import CredoError


class _Trunk(torch.nn.Module):
    """The policy's transformer body as the forward of one root module (see the module docstring).

    Its parameter names are the policy's with an `inner.` prefix, in every placement (also in one
    process), so DCP checkpoints load across DDP, FSDP2 and a single process."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, **kwargs):
        return self.inner.base_model(**kwargs)


class DistPolicy(torch.nn.Module):
    """What the trainer holds as `model` on a rank: the wrapped trunk plus the policy's head/config.

    `base_model(...)` runs the wrapper's forward; `get_output_embeddings()` and `config` are the
    policy's; `parameters()` are the wrapper's (FSDP2: DTensor shards), so the optimizer and
    gradient clipping see what the wrapper manages."""

    def __init__(self, model: torch.nn.Module, trunk: torch.nn.Module, strategy: str):
        super().__init__()
        self.trunk = trunk
        self.__dict__["inner"] = model  # not a second registration of the same parameters
        self.strategy = strategy

    @property
    def base_model(self) -> torch.nn.Module:
        return self.trunk

    @property
    def config(self):
        return self.inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one (Llama / Mistral / Qwen: base_model.layers)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise CredoError(f"dist.strategy fsdp2: {type(model).__name__} has no base_model.layers to shard")
    return list(layers)


def _fully_shard(model: torch.nn.Module, world: World) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    trunk = _Trunk(model)
    fully_shard(trunk, reshard_after_forward=False)
    return trunk


def _device(world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if world.backend == "nccl" else torch.device("cpu")


@dataclass
class Placement:
    """The policy as the trainer updates it, the reference model, and the plain model sampling uses."""

    policy: DistPolicy
    ref_model: torch.nn.Module | None
    rollout_model: torch.nn.Module


def place(world: World, model: torch.nn.Module, ref_model: torch.nn.Module | None) -> Placement:
    """Wrap `model` (every rank holds the same weights) and the frozen reference for world.strategy."""
    from torch.nn.parallel import DistributedDataParallel

    device = _device(world)
    model.to(device)
    if ref_model is not None:
        ref_model.to(device)
    if world.strategy == "ddp":
        ids = [world.local_rank] if device.type == "cuda" else None
        # broadcast_buffers=False: the rotary tables are identical on every rank, and a buffer
        # broadcast in each forward would make no-grad scoring a collective
        import inspect

        # no buffer sync in each forward: the rotary tables are identical on every rank, and a
        # per-forward broadcast would make no-grad scoring a collective (the keyword was renamed)
        sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        trunk = DistributedDataParallel(_Trunk(model), device_ids=ids, **{sync: False})
        return Placement(DistPolicy(model, trunk, "ddp"), ref_model, model)
    if world.strategy == "fsdp2":
        rollout = copy.deepcopy(model).eval().requires_grad_(False)
        trunk = _fully_shard(model, world)
        ref = None
        if ref_model is not None:
            ref = DistPolicy(ref_model, _fully_shard(ref_model, world), "fsdp2").eval().requires_grad_(False)
        return Placement(DistPolicy(model, trunk, "fsdp2"), ref, rollout)
    raise CredoError(f"place: unknown dist.strategy {world.strategy!r}")


def state_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameter names key checkpoints: the wrapper of a DistPolicy, else a plain
    model seen through `_Trunk` (same `inner.` names)."""
    return model.trunk if isinstance(model, DistPolicy) else _Trunk(model)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's full (unsharded) weights under its own names, on every rank (a collective for
    FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(state_module(model), options=StateDictOptions(full_state_dict=True))
    return {k.removeprefix("inner."): v for k, v in sd.items()}


def sync_rollout_model(placement: Placement) -> None:
    """FSDP2: copy the current shards into the plain sampling model (one all-gather); DDP: nothing
    (sampling uses the wrapped module's own tensors)."""
    if placement.policy.strategy != "fsdp2":
        return
    weights = full_state_dict(placement.policy)
    with torch.no_grad():
        placement.rollout_model.load_state_dict(weights, strict=False)
