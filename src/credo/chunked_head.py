"""The output head and log-softmax over the vocabulary in chunks of positions, so that [N, V] logits are
never held whole (at V = 49,152 and N = 2,048 scored tokens, each [N, V] fp32 tensor is 400 MB and
the reference path keeps several for backward).

Forward, per chunk of `chunk` rows: z = h W^T / T (fp32 out; the matmul in autocast's dtype when
autocast is on, as the reference head), lse = logsumexp(z), picked = z[target] - lse,
entropy = -sum p log p (p = softmax(z)). Saved for backward: h [N, C], lse [N], entropy [N] only.
Backward recomputes z per chunk (one extra head matmul, about 2 N C V FLOPs) and applies
d picked / dz = onehot(target) - p and d entropy / dz = -p (log p + H), then /T, into dh and dW.

Used by `logprobs.policy_outputs` when no objective needs the full [N, V] log-probabilities and the
head is a plain bias-free linear layer without logit soft-capping (else the reference path).
tests/test_prefix_forward.py checks it against the reference (logprobs, entropies, gradients).
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 256  # 256 x 49,152 fp32 logits = 50 MB per chunk


def _compute_dtype(hidden: torch.Tensor, fp32_head: bool) -> torch.dtype:
    device = hidden.device.type
    if not fp32_head and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.float32 if fp32_head else hidden.dtype


def _logits_into(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """out[:n] = (h @ w^T).float() / temperature, reusing `out` (fresh [n, V] tensors cost page faults
    that take longer than the arithmetic on them on a CPU)."""
    z = out[: h.shape[0]]
    if h.dtype == torch.float32:
        torch.matmul(h, w.t(), out=z)
    else:
        z.copy_(torch.nn.functional.linear(h, w))
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int, dtype: torch.dtype):
        n_all, vocab = hidden.shape[0], weight.shape[0]
        picked = torch.empty(n_all, dtype=torch.float32, device=hidden.device)
        entropy, lse = torch.empty_like(picked), torch.empty_like(picked)
        w = weight.to(dtype)
        rows = min(chunk, n_all)
        zbuf = torch.empty((rows, vocab), dtype=torch.float32, device=hidden.device)
        lbuf = torch.empty_like(zbuf)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n_all, chunk):
                sl = slice(start, start + chunk)
                z = _logits_into(zbuf, hidden[sl].to(dtype), w, temperature)  # [n, V]
                logp = torch.log_softmax(z, dim=-1, out=lbuf[: z.shape[0]])
                picked[sl] = logp.gather(-1, targets[sl, None]).squeeze(-1)
                lse[sl] = z[:, 0] - logp[:, 0]
                entropy[sl] = -z.copy_(logp).exp_().mul_(logp).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        ctx.set_materialize_grads(False)
        return picked, entropy

    @staticmethod
    def backward(ctx, g_picked, g_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        if g_picked is None and g_entropy is None:
            return None, None, None, None, None, None
        dtype, temperature = ctx.dtype, ctx.temperature
        n_all, vocab = hidden.shape[0], weight.shape[0]
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        g_picked = torch.zeros(n_all, device=hidden.device) if g_picked is None else g_picked.float()
        zbuf = torch.empty((min(ctx.chunk, n_all), vocab), dtype=torch.float32, device=hidden.device)
        pbuf = torch.empty_like(zbuf) if g_entropy is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n_all, ctx.chunk):
                sl = slice(start, start + ctx.chunk)
                h = hidden[sl].to(dtype)
                logp = _logits_into(zbuf, h, w, temperature).sub_(lse[sl, None])  # [n, V]
                # dL/dz = g_p (onehot - p) - g_H p (log p + H), all / T
                a = (-g_picked[sl] / temperature)[:, None]
                if g_entropy is None:
                    gz = logp.exp_().mul_(a)
                else:
                    p = torch.exp(logp, out=pbuf[: logp.shape[0]])
                    b = (-g_entropy[sl].float() / temperature)[:, None]
                    gz = logp.add_(entropy[sl, None]).mul_(b).add_(a).mul_(p)
                gz.scatter_add_(-1, targets[sl, None], (g_picked[sl] / temperature)[:, None])
                gz = gz.to(dtype)
                if grad_h is not None:
                    grad_h[sl] = (gz @ w).to(hidden.dtype)
                if grad_w is not None:
                    grad_w.addmm_(gz.t(), h) if dtype == torch.float32 else grad_w.add_((gz.t() @ h).float())
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def chunked_head_applies(model) -> bool:
    """A bias-free linear output head, no logit soft-capping."""
    head = model.get_output_embeddings()
    return (isinstance(head, torch.nn.Linear) and head.bias is None
            and not getattr(model.config, "final_logit_softcapping", None))


def chunked_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                     chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, C], targets [N] long -> (logprobs [N] of the targets, entropies [N]) under
    softmax(head(hidden) / temperature), both float32 and differentiable (see the module docstring)."""
    head = model.get_output_embeddings()
    fp32_head = "forward" in vars(head)  # model.fp32_lm_head (credo/memory.py) overrides the instance's forward
    return _ChunkedHead.apply(hidden, head.weight, targets, float(temperature), int(chunk),
                              _compute_dtype(hidden, fp32_head))
