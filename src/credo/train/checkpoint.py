"""Checkpoints that hold everything needed to continue a run exactly, written atomically.

Layout of `checkpoints/<name>/`:
  model/                 Hugging Face folder (safetensors + config + tokenizer): `credo eval --model` loads it;
                         with LoRA (model.lora_rank > 0) peft's adapter folder + tokenizer instead, and
                         state.json's "lora" names the base and its SHA-256 (credo/lora.py; `credo export`)
  optimizer.safetensors  AdamW moments and step counts, keyed "<param index>.<state name>"
  rng.safetensors        torch CPU generator state, numpy's MT19937 key
  ref_model.safetensors  the frozen reference model, when the run has one
  credit_state.safetensors  the tensors of a stateful credit estimator's state (SPO's stored
                         responses); its JSON part (SPO's alpha / beta) is state.json's "credit_state"
  method_<name>.safetensors  a credit provider's kept state (OPRL's implicit PRM: weights + AdamW moments,
                         judges/implicit.py); its JSON part is state.json's "method_state"[name]
  state.json             counters (stage, RL step), optimizer hyperparameters, python / numpy RNG
                         scalars, task and method state (rl.snr_lr: "snr_lr", OBLR-PO's SNR EMA,
                         reference SNR, step count and the next step's lr scale; train/snr.py)
  manifest.json          SHA-256 of every file above; written last: its presence marks completeness

Writes go to a hidden temporary folder that is renamed into place, so a crash at any moment leaves
either the previous checkpoint set or a hidden folder that is never picked. Nothing is loaded with
pickle: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from credo.errors import CredoError
from credo.faults import maybe_die

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors, state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
               "python": [version, list(internal), gauss]}
    return tensors, scalars


def _restore_rng(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))


def _unique_tensors(model) -> dict[str, torch.Tensor]:
    """The state dict with tied (shared-storage) tensors stored once, as safetensors requires."""
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous()
    return out


def _load_weights(model, weights: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # a tied output head is saved once, as the input embedding; anything else missing is a mismatch
    tied = {"lm_head.weight"} if getattr(getattr(model, "config", None), "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CredoError(f"checkpoint {where} does not match the model: missing {missing}, unexpected {unexpected}")


def save_checkpoint(
    folder: Path,
    *,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer | None = None,
    ref_model=None,
    critic=None,
    critic_optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    credit_state: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
    method_state: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None,
) -> Path:
    """Write a complete checkpoint to `folder` atomically (see the module docstring)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    maybe_die("checkpoint_write")  # crash tests: a half-written checkpoint must never be picked
    full_state = dict(state or {})
    if optimizer is not None:
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        full_state["optimizer_param_groups"] = groups
    rng_tensors, rng_scalars = _rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    full_state["rng"] = rng_scalars
    if ref_model is not None:
        save_file(_unique_tensors(ref_model), str(tmp / "ref_model.safetensors"))
    if critic is not None:  # the value model and its AdamW moments (PPO's critic path)
        save_file(_unique_tensors(critic), str(tmp / "critic.safetensors"))
        tensors, groups = _optimizer_tensors(critic_optimizer)
        save_file(tensors, str(tmp / "critic_optimizer.safetensors"))
        full_state["critic_optimizer_param_groups"] = groups
    if credit_state is not None:  # a stateful credit estimator's state: JSON part + tensors
        meta, tensors = credit_state
        save_file(tensors, str(tmp / "credit_state.safetensors"))
        full_state["credit_state"] = meta
    for name, (meta, tensors) in (method_state or {}).items():  # a credit provider's state (OPRL's PRM)
        save_file(tensors, str(tmp / f"method_{name}.safetensors"))
        full_state.setdefault("method_state", {})[name] = meta
    (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in files + [tmp / MANIFEST]:  # durable before the rename makes it visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


@dataclass
class Checkpoint:
    """A verified checkpoint folder and its state.json."""

    folder: Path
    state: dict[str, Any]


def verify(folder: Path) -> Checkpoint:
    """Check a checkpoint is complete and intact; CredoError naming the missing or corrupt part."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CredoError(f"checkpoint {folder} is incomplete: no {MANIFEST} (it was never finished)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CredoError(f"checkpoint {folder}: {MANIFEST} is corrupt: {exc}") from exc
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise CredoError(f"checkpoint {folder} is missing {name}")
        if _sha256(path) != digest:
            raise CredoError(f"checkpoint {folder}: {name} is corrupt (checksum mismatch)")
    return Checkpoint(folder, json.loads((folder / "state.json").read_text()))


def newest_complete(checkpoints_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The RL checkpoint with the highest step that verifies, else the warm-up one; and the reasons
    other candidates were passed over (hidden temporary folders are never candidates)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None, []
    steps = sorted(
        (int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name))
    )
    candidates = [p for _, p in reversed(steps)] + [checkpoints_dir / "warmup"]
    skipped = []
    for folder in candidates:
        if not folder.exists():
            continue
        try:
            return verify(folder), skipped
        except CredoError as exc:
            skipped.append(str(exc))
    return None, skipped


def load_credit_state(checkpoint: Checkpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The (JSON part, tensors) of a stateful credit estimator's state; None if the checkpoint has none."""
    if "credit_state" not in checkpoint.state:
        return None
    path = checkpoint.folder / "credit_state.safetensors"
    if not path.is_file():
        raise CredoError(f"checkpoint {checkpoint.folder} is missing credit_state.safetensors")
    return checkpoint.state["credit_state"], load_file(str(path))


def load_method_state(checkpoint: Checkpoint) -> dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """name -> (JSON part, tensors) of the credit providers' states the checkpoint holds."""
    out = {}
    for name, meta in checkpoint.state.get("method_state", {}).items():
        path = checkpoint.folder / f"method_{name}.safetensors"
        if not path.is_file():
            raise CredoError(f"checkpoint {checkpoint.folder} is missing {path.name}")
        out[name] = (meta, load_file(str(path)))
    return out


def load_into(checkpoint: Checkpoint, *, model, optimizer=None, ref_model=None, critic=None,
              critic_optimizer=None, lora=None) -> None:
    """Restore weights, optimizer moments, the reference model and every RNG from a checkpoint.

    lora (credo.lora.LoRAPolicy): the run trains adapters; `model/` then holds only them, and the base
    weights' fingerprint in state.json["lora"] must match the loaded base."""
    folder = checkpoint.folder
    if (folder / "model" / "adapter_config.json").is_file() != (lora is not None):  # peft's adapter folder
        raise CredoError(f"checkpoint {folder} holds {'LoRA adapters' if lora is None else 'full model weights'}, "
                         f"but this run has model.lora_rank {'= 0' if lora is None else '> 0'}; resume with the "
                         f"run's own config")
    if lora is not None:
        lora.load(folder / "model", checkpoint.state.get("lora"))  # (credo/lora.py: checks the base fingerprint)
    else:
        weights = {}
        for file in sorted((folder / "model").glob("*.safetensors")):
            weights.update(load_file(str(file)))
        _load_weights(model, weights, folder / "model")
    if optimizer is not None:
        if not (folder / "optimizer.safetensors").is_file():
            raise CredoError(f"checkpoint {folder} has no optimizer state to resume from")
        _restore_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")),
                           checkpoint.state["optimizer_param_groups"])
    if ref_model is not None:
        _load_weights(ref_model, load_file(str(folder / "ref_model.safetensors")), folder / "ref_model.safetensors")
    if critic is not None:
        if not (folder / "critic.safetensors").is_file():
            raise CredoError(f"checkpoint {folder} has no value model (critic.safetensors) to resume from")
        _load_weights(critic, load_file(str(folder / "critic.safetensors")), folder / "critic.safetensors")
        _restore_optimizer(critic_optimizer, load_file(str(folder / "critic_optimizer.safetensors")),
                           checkpoint.state["critic_optimizer_param_groups"])
    _restore_rng(load_file(str(folder / "rng.safetensors")), checkpoint.state["rng"])
