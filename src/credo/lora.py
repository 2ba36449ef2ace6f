"""LoRA adapters through peft (`model.lora_rank > 0`): attach, reference view, checkpoints, merged weights.

What LoRA is: each targeted linear layer y = x W^T (W [out, in], frozen) gets a trainable low-rank
update, y = x W^T + s * (dropout(x) A^T) B^T with A [r, in], B [out, r], s = lora_alpha / r; B starts
at zero, so the adapted model starts equal to the base. Paper: "LoRA: Low-Rank Adaptation of Large
Language Models" (arXiv 2106.09685). credo does not reimplement it: peft (pinned 0.21.2) injects the
layers and owns the math; this module is the glue, confirmed against peft's own code (peft 0.21.2,
`tuners/lora/layer.py::Linear.forward` / `get_delta_weight`, `peft_model.py::disable_adapter`).

How credo uses it (one place for each decision):

- `attach_lora(model, ...)` wraps the policy with `peft.get_peft_model`; peft injects the adapter
  layers into the Hugging Face model IN PLACE, so the trainer keeps holding that same model
  (`Run.model`: `model.base_model` is still the decoder trunk that `logprobs.policy_outputs` calls)
  and `LoRAPolicy.peft_model` is kept beside it for peft's own operations. peft freezes every base
  parameter, so `train/optim.py::make_optimizer` (requires_grad only) sees exactly the adapters.
  Adapters are attached at setup, before warm-up: warm-up trains adapters too.
- The reference model is `AdaptersOff`: the same module with peft's `disable_adapter()` active
  during each call (LoRA layers then return `base_layer(x)`, bit for bit the base model). No second
  copy of the weights. Departure from full fine-tuning: the KL anchor is the BASE model as loaded
  (before warm-up), not the warmed-up policy, as in TRL's peft path (ref = adapter-disabled model).
- Checkpoints: `model/` is peft's adapter folder (adapter_config.json + adapter_model.safetensors,
  no base weights) + tokenizer, and state.json's "lora" records the base model's name, the seed
  (the tiny preset is random in it) and `base_fingerprint` (SHA-256 over the base weights),
  checked when the adapters are loaded back (resume, `credo export`).
- `merged_weights(model)`: (base name, W + s B A) for vLLM's weight sync, computed out of place
  (the trainer's weights are never merged and unmerged, so they stay bitwise the same).
- `export(...)` (`credo export`): base + adapters merged by peft's `merge_and_unload` into a plain
  Hugging Face folder that transformers, `credo eval` and `credo generate` load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from credo.errors import CredoError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is in the test extra
        raise CredoError("model.lora_rank > 0 needs peft: pip install 'credo[lora]' (peft==0.21.2)") from exc
    return peft


def base_param_name(name: str) -> str | None:
    """A parameter / state-dict name of a peft-injected model -> the base model's name; None for peft's
    own adapter tensors (lora_A, lora_B, ...)."""
    if "lora_" in name:
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def available_linear_names(model: torch.nn.Module) -> list[str]:
    """Last dotted components of the model's linear layers (what lora_target_modules may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def base_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the base weights (names mapped to base names, adapters left out, tied tensors once):
    name, dtype, shape and raw bytes of every tensor in state-dict order. The same value before and
    after `attach_lora` as long as the adapters are not merged in place (credo never does)."""
    digest, seen = hashlib.sha256(), set()
    for name, tensor in model.state_dict().items():
        base = base_param_name(name)
        if base is None or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{base}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AdaptersOff:
    """The frozen reference model of a LoRA run: the policy's own module, called with peft's
    `disable_adapter()` active (every LoRA layer returns its base layer's output), so no second copy
    of the weights exists. Offers what `logprobs.policy_outputs` uses: `base_model(...)`,
    `get_output_embeddings()`, `config`, `parameters()`; and `__call__` for the full forward."""

    def __init__(self, model: torch.nn.Module, peft_model):
        self._model, self._peft = model, peft_model

    @property
    def config(self):
        return self._model.config

    def parameters(self):
        return self._model.parameters()

    def _off(self, fn):
        def call(*args, **kwargs):
            with self._peft.disable_adapter():
                return fn(*args, **kwargs)
        return call

    @property
    def base_model(self):
        return self._off(self._model.base_model)

    def get_output_embeddings(self):
        return self._off(self._model.get_output_embeddings())

    def __call__(self, *args, **kwargs):
        return self._off(self._model)(*args, **kwargs)

    # the trainer treats its reference as a frozen module: these are no-ops on the shared weights
    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self


@dataclass
class LoRAPolicy:
    """A policy with peft adapters: `model` is the HF model the trainer holds (adapters injected),
    `peft_model` peft's wrapper around it, `meta` what state.json's "lora" records."""

    model: torch.nn.Module
    peft_model: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def reference(self) -> AdaptersOff:
        return AdaptersOff(self.model, self.peft_model)

    def load(self, model_dir: Path, recorded: dict[str, Any] | None) -> None:
        load_adapters(self, model_dir, recorded)

    def adapter_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]


def attach_lora(model: torch.nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str],
                base: str, seed: int) -> LoRAPolicy:
    """Inject LoRA adapters into `model` (in place; see the module docstring). `base` and `seed` name
    the base weights for checkpoints and export. A target that names no linear layer is refused."""
    if rank < 1:
        raise CredoError(f"model.lora_rank must be >= 1 to attach adapters (got {rank})")
    if not targets:
        raise CredoError("model.lora_target_modules is empty: name the linear layers that get adapters")
    available = available_linear_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise CredoError(f"model.lora_target_modules: {', '.join(map(repr, missing))} not found in the model; "
                         f"its linear layers are: {', '.join(available)}")
    fingerprint = base_fingerprint(model)
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                             bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # A's kaiming init: deterministic, global RNGs untouched
        torch.manual_seed(seed)
        peft_model = peft.get_peft_model(model, config)
    meta = {"base": base, "base_seed": seed, "base_fingerprint": fingerprint, "rank": rank, "alpha": alpha,
            "dropout": dropout, "target_modules": list(targets)}
    return LoRAPolicy(model, peft_model, meta)


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def check_base(recorded: dict[str, Any] | None, fingerprint: str, where: Path) -> None:
    """Refuse adapters trained on other base weights than the ones loaded."""
    if not recorded or "base_fingerprint" not in recorded:
        raise CredoError(f"checkpoint {where} holds LoRA adapters but state.json records no base fingerprint")
    if recorded["base_fingerprint"] != fingerprint:
        raise CredoError(
            f"checkpoint {where}: its LoRA adapters were trained on base weights with SHA-256 "
            f"{recorded['base_fingerprint'][:16]}... ({recorded.get('base')!r}, seed {recorded.get('base_seed')}), "
            f"but the loaded base model has {fingerprint[:16]}...; load the same base model (model.name, run.seed)")


def load_adapters(lora: LoRAPolicy, model_dir: Path, recorded: dict[str, Any] | None) -> None:
    """Load a checkpoint's adapter tensors into `lora` after checking the base fingerprint."""
    from safetensors.torch import load_file

    check_base(recorded, lora.meta["base_fingerprint"], model_dir.parent)
    path = Path(model_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CredoError(f"checkpoint {model_dir.parent} is missing model/{ADAPTER_WEIGHTS}")
    result = _peft().set_peft_model_state_dict(lora.peft_model, load_file(str(path)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise CredoError(f"checkpoint {model_dir.parent}: adapters do not match model.lora_* settings "
                         f"(missing {missing[:4]}, unexpected {list(result.unexpected_keys)[:4]})")


def _adapted_layers(model: torch.nn.Module) -> dict[str, Any]:
    """{base name of W: its LoRA layer} for every enabled, unmerged LoRA layer with an active adapter."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
            continue
        if any(a in module.lora_A for a in module.active_adapters):
            out[base_param_name(f"{name}.base_layer.weight")] = module
    return out


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(base name, tensor) of every base parameter, with W + sum over active adapters of s B A
    (peft's `get_delta_weight`) for adapted layers: what the merged model would hold, computed out of
    place, one layer at a time (the trainer's W is never touched). Tied weights appear once."""
    with torch.no_grad():
        layers = _adapted_layers(model)
        for name, param in model.named_parameters():
            base = base_param_name(name)
            if base is None or "original_module" in name:
                continue
            w = param.detach()
            if base in layers:
                module = layers[base]
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                w = w + delta.to(w.dtype)
            yield base, w


# -- credo export --------------------------------------------------------------------------------------


def resolve_checkpoint(path: Path):
    """A checkpoint folder as given, or a run folder's final checkpoint (else its newest complete one)."""
    from credo.train.checkpoint import MANIFEST, newest_complete, verify

    path = Path(path)
    if (path / MANIFEST).is_file():
        return verify(path)
    ckpts = path / "checkpoints"
    if (ckpts / "final").is_dir():
        return verify(ckpts / "final")
    chosen, skipped = newest_complete(ckpts)
    if chosen is None:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CredoError(f"--run {path}: neither a checkpoint folder nor a run folder with a complete checkpoint{why}")
    return chosen


def export(source: Path, out: Path) -> Path:
    """Write a plain Hugging Face folder (safetensors + config + tokenizer) at `out` from a checkpoint
    or run folder: LoRA adapters are merged into their base by peft's `merge_and_unload`; a full
    fine-tuning checkpoint's model is copied as it is."""
    from credo.models import load_policy

    checkpoint = resolve_checkpoint(source)
    model_dir = checkpoint.folder / "model"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CredoError(f"--out {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if not is_adapter_folder(model_dir):  # full fine-tuning: already a plain folder
            policy = load_policy(str(model_dir))
            model = policy.model
        else:
            recorded = checkpoint.state.get("lora")
            if not recorded:
                raise CredoError(f"checkpoint {checkpoint.folder}: state.json has no 'lora' record")
            policy = load_policy(recorded["base"], seed=int(recorded.get("base_seed", 0)))
            check_base(recorded, base_fingerprint(policy.model), checkpoint.folder)
            peft = _peft()
            merged = peft.PeftModel.from_pretrained(policy.model, str(model_dir)).merge_and_unload()
            model = merged
        if hasattr(model, "peft_config"):
            del model.peft_config
        model.save_pretrained(tmp, safe_serialization=True)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir) if (model_dir / "tokenizer_config.json").is_file() \
            else policy.tokenizer
        tokenizer.save_pretrained(tmp)
        (tmp / "credo_export.json").write_text(json.dumps(
            {"checkpoint": str(checkpoint.folder), "lora": checkpoint.state.get("lora")}, indent=1))
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def lora_from_config(model_cfg, model: torch.nn.Module, seed: int) -> LoRAPolicy | None:
    """`model.lora_*` -> adapters attached to `model` (None when model.lora_rank = 0). A folder name is
    recorded as an absolute path, so `credo export` finds the base from anywhere."""
    if model_cfg.lora_rank <= 0:
        return None
    name = model_cfg.name
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    return attach_lora(model, rank=model_cfg.lora_rank, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                       targets=list(model_cfg.lora_target_modules), base=name, seed=seed)
