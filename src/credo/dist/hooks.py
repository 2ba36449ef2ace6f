"""What the update asks when several ranks train one global batch (`train/rl.py` hooks).

The loss must equal the one-process loss on the union of the ranks' batches:

- minibatches are cut from the GLOBAL list of trainable rows with the same seeded generator on
  every rank (`Layout`), and each rank keeps the rows it holds, so minibatch k is the same set of
  rows as in one process;
- the reductions' token and row counts are all-reduced over ranks before `reduce_loss`, so each
  rank's loss is its part of the global minibatch loss; DDP and FSDP2 AVERAGE gradients over ranks,
  so the backward loss is multiplied by the world size (`loss_scale`) to get the global sum;
- every rank runs the same number of forward/backward passes per minibatch (the wrappers'
  collectives are matched call by call): a rank with fewer micro-batches runs filler passes on
  one of its rows with the loss multiplied by 0 (zero gradient, the collectives still happen).
  DDP reduces gradients only on the last pass of a minibatch (`no_sync` before it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from credo.dist.comm import all_gather_objects, all_reduce
from credo.dist.env import World
from credo.dist.wrap import Placement, sync_rollout_model


@dataclass
class Layout:
    """This rank's rows inside the global batch (ranks' batches concatenated in rank order).

    rows [R]: the trainable global row indices; group_ids [B_global]: global group ids."""

    offset: int
    count: int
    rows: torch.Tensor
    group_ids: torch.Tensor

    def local(self, global_rows: torch.Tensor) -> torch.Tensor:
        """The rows of a global minibatch held here, as local indices."""
        mine = (global_rows >= self.offset) & (global_rows < self.offset + self.count)
        return global_rows[mine] - self.offset


@dataclass
class DistHooks:
    world: World
    placement: Placement

    @property
    def scoring_model(self) -> torch.nn.Module:
        """A plain module with the current full weights for no-grad scoring (behaviour logprobs,
        credit forwards): its calls are local, never collectives, so ranks may make different
        numbers of them."""
        return self.placement.rollout_model

    @property
    def loss_scale(self) -> float:
        return float(self.world.world_size)

    def before_rollout(self) -> None:
        """Refresh the sampling model from the trained weights (FSDP2: an all-gather)."""
        sync_rollout_model(self.placement)

    def layout(self, group_ids: torch.Tensor, rows: torch.Tensor) -> Layout:
        """Gather every rank's batch size, trainable rows and group ids (one all_gather)."""
        mine = (len(group_ids), rows.tolist(), group_ids.tolist())
        parts = all_gather_objects(self.world, mine)
        offset = group_offset = 0
        all_rows, all_groups = [], []
        for rank, (count, trainable, groups) in enumerate(parts):
            if rank == self.world.rank:
                local_offset = offset
            all_rows += [offset + r for r in trainable]
            all_groups += [group_offset + g for g in groups]
            offset += count
            group_offset += (max(groups) + 1) if groups else 0
        return Layout(local_offset, len(group_ids), torch.tensor(all_rows, dtype=torch.long),
                      torch.tensor(all_groups, dtype=torch.long))

    def global_counts(self, num_tokens: float, num_seqs: float) -> tuple[float, float]:
        tokens, seqs = all_reduce(self.world, [num_tokens, num_seqs])
        return tokens, seqs

    def passes(self, count: int) -> int:
        """The number of forward/backward passes every rank makes for this minibatch."""
        return int(all_reduce(self.world, [count], op="max")[0])

    def sum_gradients(self, parameters) -> None:
        """All-reduce (sum) the gradients of a replicated module in one flat buffer (the critic)."""
        import torch.distributed as dist

        from credo.dist.env import comm_device

        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params]).to(comm_device(self.world))
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
            offset += n

    def sync_context(self, model: torch.nn.Module, index: int, passes: int):
        """DDP: skip the gradient all-reduce on every pass but the minibatch's last."""
        trunk = getattr(model, "trunk", None)
        if index < passes - 1 and hasattr(trunk, "no_sync"):
            return trunk.no_sync()
        return contextlib.nullcontext()
