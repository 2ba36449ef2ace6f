"""Teacher-forced scoring of tokens under a model, following the shift convention of `batch.py`.

Only positions that are scored go through the output head: prompt positions never pay for the
[V]-wide projection and log-softmax, which is a fifth of the model's FLOPs at V = 49,152.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from credo.chunked_head import chunked_head_applies, chunked_logprobs

# What an objective may declare it needs beyond sampled-token logprobs (see objectives.base.needs).
OUTPUT_NEEDS = ("entropy", "full_logprobs", "hidden_states")


@dataclass
class PolicyOutputs:
    """The trainer's forward pass on one micro-batch, computed once and shared.

    logprobs [B, T]: sampled-token logprobs (shift convention of batch.py), zero off the mask.
    entropy [B, T]: entropy of softmax(logits / temperature) at each scored position; differentiable
        only when an objective declared "entropy", otherwise detached (logged as a metric).
    full_logprobs [N, V] | None: log-softmax over the vocabulary at the N scored positions, in
        row-major order of score_mask (i.e. `score_mask.nonzero()` order); only when declared.
    hidden_states tuple([B, T, C], ...) | None: the base model's per-layer hidden states (embeddings
        first, as Hugging Face returns them); only when declared.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor
    full_logprobs: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2 style soft-capping, applied by the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits


def policy_outputs(
    model,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    needs: frozenset[str] = frozenset(),
    group_ids: torch.Tensor | None = None,
    chunked_head: bool = True,
) -> PolicyOutputs:
    """One forward pass giving what the objective needs (see PolicyOutputs).

    tokens [B, T] long, attention_mask [B, T], score_mask [B, T] bool (False at position 0).
    logprobs[b, t] = log softmax(logits[b, t - 1] / temperature)[tokens[b, t]].
    group_ids [B] (optional): rows of one group share their prompt; it is then computed once per group
    (credo/prefix_forward.py, the same values up to float rounding) unless hidden states are needed.
    chunked_head: the output head and log-softmax in chunks of positions, [N, V] never held whole
    (credo/chunked_head.py), unless full_logprobs are needed or the head is not a plain linear layer.
    """
    unknown = set(needs) - set(OUTPUT_NEEDS)
    if unknown:
        raise ValueError(f"unknown policy output(s) {sorted(unknown)}; valid: {', '.join(OUTPUT_NEEDS)}")
    device, home = next(model.parameters()).device, tokens.device
    if device != home:  # CUDA path (credo/gpu.py): the batch stays on the CPU, the forward runs on the GPU
        from credo.gpu import on_model_device

        with on_model_device(home, device):
            out = policy_outputs(model, tokens.to(device), attention_mask.to(device), score_mask.to(device),
                                 temperature=temperature, needs=needs,
                                 group_ids=group_ids, chunked_head=chunked_head)
        return PolicyOutputs(*(None if x is None else (tuple(h.to(home) for h in x) if isinstance(x, tuple)
                                                        else x.to(home))
                               for x in (out.logprobs, out.entropy, out.full_logprobs, out.hidden_states)))
    want_hidden = "hidden_states" in needs
    where = score_mask[:, 1:]  # [B, T-1]: the hidden state at t-1 scores token t
    shared = None
    if group_ids is not None and not want_hidden:
        from credo.prefix_forward import shared_prefix_hidden

        shared = shared_prefix_hidden(model, tokens, attention_mask, score_mask, group_ids)
    if shared is not None:
        hidden, targets, out = *shared, None
    else:
        out = model.base_model(input_ids=tokens, attention_mask=attention_mask.long(),
                               output_hidden_states=want_hidden)
        hidden, targets = out.last_hidden_state[:, :-1][where], tokens[:, 1:][where]  # [N, C], [N]
    logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    entropy = torch.zeros_like(logprobs)
    logp_all = None
    grad_entropy = torch.is_grad_enabled() and "entropy" in needs
    if chunked_head and "full_logprobs" not in needs and chunked_head_applies(model):
        picked, ent = chunked_logprobs(model, hidden, targets, temperature=temperature)
        ent = ent if grad_entropy else ent.detach()
    else:
        logits = _final_logits(model, hidden) / temperature  # [N, V]
        logp_all = torch.log_softmax(logits, dim=-1)
        picked = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # [N]
        with torch.set_grad_enabled(grad_entropy):
            ent = -(logp_all.exp() * logp_all).sum(-1)
    logprobs[:, 1:][where] = picked
    entropy = entropy.to(ent.dtype)
    entropy[:, 1:][where] = ent
    return PolicyOutputs(
        logprobs=logprobs,
        entropy=entropy,
        full_logprobs=logp_all if "full_logprobs" in needs else None,
        hidden_states=tuple(out.hidden_states) if want_hidden else None,
    )


def token_logprobs(
    model,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Just the sampled-token logprobs [B, T] (see `policy_outputs`)."""
    return policy_outputs(model, tokens, attention_mask, score_mask, temperature=temperature).logprobs
