"""torch.distributed for the trainer: one process per rank (torchrun), DDP or FSDP2, DCP checkpoints.

The loop in `train/rl.py` and `train/run.py` is the same code in one process and in many; what
changes with several ranks lives here and is reached through small hooks:

- `env.py`      init / teardown of the process group from torchrun's environment variables; `World`
                (rank, world size, strategy); the rank-0-writes rule.
- `comm.py`     all-reduce / all-gather helpers over plain Python numbers (counts, metrics).
- `wrap.py`     placement of the policy and the reference model: DDP (replicated, gradients averaged)
                or FSDP2 (`fully_shard` per decoder layer + the root); `DistPolicy`, the module the
                trainer calls, whose `base_model` goes through the wrapper so its hooks run.
- `hooks.py`    `DistHooks`: what `ppo_update` / `rl_step` ask when several ranks train (the global
                row layout, global token / row counts, equal forward/backward counts per rank).
- `shard.py`    which prompts of a step each rank generates (whole groups), per-prompt seeds.
- `checkpoint.py` sharded checkpoints with `torch.distributed.checkpoint` (DCP), resharding on load.

Nothing here is imported by the single-process path unless the config asks for it, except the
plain-Python helpers of `shard.py`.
"""
