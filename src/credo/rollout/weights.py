"""What a separate rollout engine (vLLM, Ray workers) needs from the trainer's model: its weights under
plain Hugging Face names, and a seed per prompt that does not depend on how prompts are batched."""

from __future__ import annotations

from typing import Iterator

import torch


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` in a call seeded `seed`: deterministic, distinct per prompt,
    in [0, 2**31) (every vLLM version accepts it). splitmix64 of (seed, index)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) % (2**31)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


def hf_param_name(name: str) -> str | None:
    """A trainer parameter name -> the plain Hugging Face name (what vLLM's load_weights and an
    unwrapped model's load_state_dict expect); None = skip (peft's own lora_* tensors and the
    frozen originals of modules_to_save)."""
    if "lora_" in name or "original_module" in name:
        return None
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    return name.replace("modules_to_save.default.", "").replace("_checkpoint_wrapped_module.", "")


def named_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every parameter to sync. Tied weights appear once (named_parameters
    de-duplicates them; vLLM skips lm_head when the embeddings are tied). LoRA: merged weights."""
    if is_peft_model(model):
        from credo.lora import merged_weights

        for name, tensor in merged_weights(model):
            yield hf_param_name(name), tensor
        return
    for name, param in model.named_parameters():
        mapped = hf_param_name(name)
        if mapped is not None:
            yield mapped, param.detach()
