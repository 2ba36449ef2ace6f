"""The runner's one hook for several ranks: place the policy and the reference for the RL stage."""

from __future__ import annotations

from credo.dist.hooks import DistHooks
from credo.dist.wrap import place
from credo.errors import CredoError


def place_for_rl(run, ref_model):
    """Wrap run.model (DDP / FSDP2) and the reference; point the engine at the sampling model.

    Returns (the policy the trainer updates, the reference model, DistHooks). Refuses what is not
    distributed yet, with the field to change: a stateful credit estimator's state, rl.snr_lr under
    FSDP2, and resuming an FSDP2 run from a one-process checkpoint. (A critic is replicated on every rank, built by the
    runner on the plain sampling module; critic_update sums its gradients over ranks.)"""
    from credo.credit import CREDIT
    from credo.credit.base import credit_state_of
    from credo.dist.checkpoint import is_dcp

    cfg = run.cfg
    if credit_state_of(CREDIT.get(cfg.rl.credit)) is not None:
        raise CredoError(f"rl.credit {cfg.rl.credit!r} keeps per-prompt state across steps, which is not "
                         f"sharded yet; use dist.strategy none")
    if cfg.dist.strategy == "fsdp2" and cfg.rl.snr_lr:
        raise CredoError("rl.snr_lr records whole-parameter gradients, which dist.strategy fsdp2 shards; "
                         "use dist.strategy ddp")
    resumed = run.resumed
    if (cfg.dist.strategy == "fsdp2" and resumed is not None and resumed.state.get("stage") == "rl"
            and not is_dcp(resumed)):
        raise CredoError(f"checkpoint {resumed.folder} was written by one process; resume it with "
                         f"dist.strategy ddp or none (fsdp2 resumes sharded checkpoints)")
    placement = place(run.world, run.model, ref_model)
    run.placement = placement
    run.engine.load_weights(placement.rollout_model)
    return placement.policy, placement.ref_model, DistHooks(run.world, placement)
