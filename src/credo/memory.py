"""Memory and precision options of the trainer's model (`model.fp32_lm_head`, `model.gradient_checkpointing`).

- fp32 output head: under bf16 autocast the output projection runs in bf16, so logits over the V = 49,152
  vocabulary carry bf16 rounding (about 3 significant digits) into every log-probability, importance
  ratio and entropy. With the option on, the head's forward leaves autocast and computes
  logits = hidden.float() @ W.float()^T (+ b) in fp32 (verl's and TRL's "fp32 lm_head" choice for
  RL stability, e.g. MiniMax-M1, arXiv 2506.13585, Sec. 4 on the training/inference probability
  mismatch). The master weights are fp32 already, so this costs one fp32 matmul instead of a bf16 one.
  The head's parameters and state-dict keys are unchanged (an instance-level forward override), so
  checkpoints, weight tying and `save_pretrained` are as before. The torch rollout engine uses the same
  model and so the same head; the vLLM engine keeps its own precision (rollout.vllm_dtype).
- gradient checkpointing: Hugging Face's `gradient_checkpointing_enable(use_reentrant=False)` on the
  policy (and so on the critic copy and the frozen reference, where it has no effect: no gradients):
  activations of each decoder layer are recomputed in backward instead of stored, active only in train
  mode (the trainer's update); sampling runs in eval mode with the KV cache as before. Gradients are
  the same up to float rounding (tests/test_memory.py); time and peak memory: benchmarks/grad_checkpointing.py.
"""

from __future__ import annotations

import types

import torch

from credo.errors import CredoError


def _fp32_head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(hidden.float(), self.weight.float(), bias)


def keep_head_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """Make the output head compute fp32 logits even under autocast (see the module docstring)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise CredoError(f"model.fp32_lm_head needs a linear output head; this model's is {type(head).__name__}")
    head.forward = types.MethodType(_fp32_head_forward, head)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise CredoError(f"model.gradient_checkpointing: {type(model).__name__} does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_memory_options(model: torch.nn.Module, *, fp32_lm_head: bool, gradient_checkpointing: bool) -> torch.nn.Module:
    if fp32_lm_head:
        keep_head_fp32(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model
