"""Teacher-forced scoring of tokens under a model, following the shift convention of `batch.py`.

Only positions that are scored go through the output head: prompt positions never pay for the
[V]-wide projection and log-softmax, which is a fifth of the model's FLOPs at V = 49,152.
"""

from __future__ import annotations

import torch


def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2 style soft-capping, applied by the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_logprobs(
    model,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs of `tokens` where `score_mask` is True.

    tokens [B, T] long, attention_mask [B, T], score_mask [B, T] bool (False at position 0)
    -> (logprobs [B, T] float32, zero off the mask; entropy [B, T] float32 or None).
    logprobs[b, t] = log softmax(logits[b, t - 1] / temperature)[tokens[b, t]].
    Gradients flow into the model unless called under `torch.no_grad()`.
    """
    hidden = model.base_model(input_ids=tokens, attention_mask=attention_mask.long()).last_hidden_state
    where = score_mask[:, 1:]  # [B, T-1]: the hidden state at t-1 scores token t
    logits = _final_logits(model, hidden[:, :-1][where]) / temperature  # [N, V]
    logp_all = torch.log_softmax(logits, dim=-1)
    picked = logp_all.gather(-1, tokens[:, 1:][where][:, None]).squeeze(-1)  # [N]
    logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    logprobs[:, 1:][where] = picked
    entropy = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
        entropy = torch.zeros_like(logprobs)
        entropy[:, 1:][where] = ent
    return logprobs, entropy
