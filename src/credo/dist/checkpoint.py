"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), loadable at any world size.

Layout of `checkpoints/<name>/` written by several ranks (the single-process layout of
`train/checkpoint.py` plus a `dcp/` folder, minus the per-file optimizer / reference tensors):
  dcp/             DCP shards (every rank writes its own; replicated DDP tensors once) of
                   {"model": policy, "optim": AdamW state keyed by parameter name, "ref": reference,
                   "critic" / "critic_optim": the value model and its AdamW state (replicated)}
  model/           Hugging Face folder of the full policy (rank 0), so `credo eval --model` works
  rng.safetensors  rank 0's torch / numpy generator state (the loop's own randomness is seeded
                   from (seed, step), see train/checkpoint.py)
  state.json       stage, RL step, method state, "format": "dcp", the writing world size and strategy
  manifest.json    SHA-256 of every file, written last by rank 0 (the same `verify` as one process)

Atomicity as in one process: rank 0 picks a hidden temporary folder, every rank writes its shards
into it, rank 0 adds the rest and renames it into place after a barrier.

Loading goes through `get_*_state_dict` / `set_*_state_dict` on parameter NAMES (`_Trunk`'s
`inner.` names in every placement), so DCP reshards on load: a checkpoint written by N ranks loads
onto M ranks, under the other strategy, or into one plain process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from credo.dist.comm import broadcast_object
from credo.dist.env import World, barrier
from credo.dist.wrap import DistPolicy, full_state_dict, state_module
from credo.errors import CredoError
from credo.faults import maybe_die
from credo.train.checkpoint import MANIFEST, Checkpoint, _restore_rng, _rng_state, _sha256

DCP_DIR = "dcp"


def is_dcp(checkpoint: Checkpoint) -> bool:
    return (checkpoint.folder / DCP_DIR).is_dir()


def _state(model, optimizer, ref_model, critic=None, critic_optimizer=None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    module = state_module(model)
    out: dict[str, Any] = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        out["optim"] = get_optimizer_state_dict(module, optimizer)
    if ref_model is not None:
        out["ref"] = get_model_state_dict(state_module(ref_model))
    if critic is not None:  # replicated on every rank (DCP writes it once)
        out["critic"] = get_model_state_dict(critic)
        out["critic_optim"] = get_optimizer_state_dict(critic, critic_optimizer)
    return out


def save_dcp(world: World, folder: Path, *, model: DistPolicy, optimizer, ref_model, tokenizer,
             critic=None, critic_optimizer=None,
             export_model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Every rank calls this (collectives inside); see the module docstring."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    tmp = None
    if world.is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent)
    tmp = Path(broadcast_object(world, tmp))
    parts = _state(model, optimizer, ref_model, critic, critic_optimizer)
    dcp.save(parts, checkpoint_id=str(tmp / DCP_DIR))
    weights = full_state_dict(model)  # (FSDP2: an all-gather on every rank)
    if world.is_main:
        if export_model is not model.inner:
            with torch.no_grad():
                export_model.load_state_dict(weights, strict=False)
        export_model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        maybe_die("checkpoint_write")
        rng_tensors, rng_scalars = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        full_state = {**state, "rng": rng_scalars, "format": "dcp", "world_size": world.world_size,
                      "strategy": world.strategy, "dcp_parts": sorted(parts)}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    barrier(world)  # every rank's shards are on disk
    if world.is_main:
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({str(p.relative_to(tmp)): _sha256(p) for p in files}, indent=1))
        for p in files + [tmp / MANIFEST]:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    barrier(world)


def load_dcp(checkpoint: Checkpoint, *, model, optimizer, ref_model=None, critic=None,
             critic_optimizer=None) -> None:
    """Restore policy, AdamW state, reference model and RNGs from a DCP checkpoint into whatever
    placement `model` has (a DistPolicy on N ranks, or a plain model in one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    folder = checkpoint.folder
    parts = checkpoint.state.get("dcp_parts", [])
    for name, wanted in (("ref", ref_model), ("critic", critic)):
        if wanted is not None and name not in parts:
            raise CredoError(f"checkpoint {folder} has no {'reference model' if name == 'ref' else 'value model'} "
                             f"to resume from")
    state = _state(model, optimizer, ref_model, critic, critic_optimizer)
    try:
        dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
    except Exception as exc:  # noqa: BLE001 - DCP raises several kinds for missing keys / shapes
        raise CredoError(f"checkpoint {folder}: cannot load {DCP_DIR}/ into this run: {exc}") from exc
    module = state_module(model)
    set_model_state_dict(module, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(module, optimizer, state["optim"])
    if ref_model is not None:
        set_model_state_dict(state_module(ref_model), state["ref"])
    if critic is not None:
        set_model_state_dict(critic, state["critic"])
        set_optimizer_state_dict(critic, critic_optimizer, state["critic_optim"])
    _restore_rng(load_file(str(folder / "rng.safetensors")), checkpoint.state["rng"])
