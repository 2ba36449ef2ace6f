"""The trainer's forward pass with each group's shared prompt computed once (the fast path of
`logprobs.policy_outputs`, used when it is given the rows' group ids).

A GRPO group is G completions of one prompt: rows [prompt, completion_i, pad]. The reference forward
runs the prompt G times and pads every row to the longest one in the micro-batch. This path runs

1. the prefix forward once per group: tokens [n_groups, P_max] (left-padded, position ids counting
   real tokens only, exactly as the torch rollout engine prefills), keeping its per-layer keys and
   values (a Hugging Face cache, under autograd);
2. the suffix forward of every row: its completion tokens [B, S_max] (right-padded to the longest
   completion, not to the longest prompt + completion), attending to its group's prefix keys/values
   (selected per row, so gradients from all G rows accumulate into the one prefix computation) with
   position ids continuing after the prefix;
3. the output head on the scored positions only: the prefix's last hidden state scores each row's
   first completion token, the suffix's hidden states score the rest.

The prefix of a group is the longest run of tokens every row of the group shares and that holds no
scored position (so nothing scored is lost; on a rollout batch it is the prompt). Rows whose prefix
tokens differ from their group's are each their own group. The result equals the reference forward
up to float rounding (tests/test_prefix_forward.py: logprobs, entropies and gradients within 1e-5 in
fp32). FLOPs saved per group: (G - 1) x P prompt tokens, plus the prompt-length padding of every row.

Not used (the caller falls back to the reference forward) when hidden states are needed (their layout
is the reference [B, T, C]), under gradient checkpointing (Hugging Face drops the cache in training),
or when a row's attention mask is not one contiguous run from position 0.
"""

from __future__ import annotations

import inspect

import torch


def _prefix_plan(tokens: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                 group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(group index of each row [B], prefix length of each group [n_groups], its representative row
    [n_groups]); None when a row's mask is not a contiguous prefix of ones."""
    B, T = tokens.shape
    lengths = attention_mask.long().sum(-1)
    contiguous = torch.arange(T)[None, :] < lengths[:, None]
    if not torch.equal(contiguous, attention_mask.bool().cpu()) or bool((lengths < 1).any()):
        return None
    scored = score_mask.cpu()
    first = torch.where(scored.any(-1), scored.float().argmax(-1), lengths.cpu())  # first scored position
    keys: dict[tuple[int, int], int] = {}
    row_group, prefix_len, rep = [], [], []
    toks = tokens.cpu()
    for b in range(B):
        g = int(group_ids[b])
        key = (g, -1)
        if key in keys:  # same group: its prefix must hold these tokens (else a group of its own)
            k = keys[key]
            p = min(prefix_len[k], int(first[b]))
            if p >= 1 and torch.equal(toks[b, :p], toks[rep[k], :p]):
                prefix_len[k] = p
                row_group.append(k)
                continue
            key = (g, b)
        keys[key] = len(prefix_len)
        row_group.append(len(prefix_len))
        prefix_len.append(max(int(first[b]), 1))
        rep.append(b)
    return torch.tensor(row_group), torch.tensor(prefix_len), torch.tensor(rep)


def shared_prefix_hidden(model, tokens: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                         group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The final hidden states of the scored positions, in `score_mask.nonzero()` order.

    tokens, attention_mask, score_mask [B, T] (right-padded rows, score_mask False at position 0),
    group_ids [B] -> (hidden [N, C] where hidden[i] scores the i-th scored token, targets [N] long: those
    tokens), or None when this path does not apply (see the module docstring).
    """
    checkpointing = getattr(type(model), "is_activation_checkpointing", None)  # (is_gradient_checkpointing before)
    checkpointing = model.is_activation_checkpointing if checkpointing is not None else \
        getattr(model, "is_gradient_checkpointing", False)
    if checkpointing and model.training:
        return None
    plan = _prefix_plan(tokens, attention_mask, score_mask, group_ids)
    if plan is None:
        return None
    row_group, prefix_len, rep = plan
    device = tokens.device
    B, T = tokens.shape
    n_groups, p_max = len(prefix_len), int(prefix_len.max())
    # 1. prefixes, left-padded (real tokens end at column p_max - 1 in every group)
    pre_ids = torch.zeros((n_groups, p_max), dtype=torch.long)
    pre_mask = torch.zeros((n_groups, p_max), dtype=torch.long)
    toks = tokens.cpu()
    for k in range(n_groups):
        p = int(prefix_len[k])
        pre_ids[k, p_max - p:] = toks[int(rep[k]), :p]
        pre_mask[k, p_max - p:] = 1
    pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
    out = model.base_model(input_ids=pre_ids, attention_mask=pre_mask, position_ids=(pre_mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=True)
    cache = out.past_key_values
    cache.batch_select_indices(row_group.to(device))  # each row gets its group's keys and values
    # 2. suffixes: the tokens after each row's prefix, right-padded
    lengths = attention_mask.long().sum(-1).cpu()
    row_p = prefix_len[row_group]
    suffix_len = lengths - row_p
    s_max = int(suffix_len.max())
    last_pre = out.last_hidden_state[:, -1]  # [n_groups, C]: scores each row's token at position p
    if s_max > 0:
        cols = row_p[:, None] + torch.arange(s_max)[None, :]  # absolute positions [B, S]
        suf_mask = torch.arange(s_max)[None, :] < suffix_len[:, None]
        suf_ids = torch.where(suf_mask, toks.gather(1, cols.clamp(max=T - 1)), 0)
        full_mask = torch.cat([pre_mask[row_group.to(device)], suf_mask.long().to(device)], dim=-1)
        suf = model.base_model(input_ids=suf_ids.to(device), attention_mask=full_mask,
                               position_ids=cols.to(device), use_cache=True, **{_cache_kwarg(model): cache})
        hidden = torch.cat([last_pre[row_group.to(device)][:, None], suf.last_hidden_state[:, :-1]], dim=1)  # [B, S, C]
        # hidden[b, j] is at absolute position p_b + j - 1 and scores token p_b + j
        local_score = score_mask.cpu().gather(1, cols.clamp(max=T - 1)) & suf_mask
    else:
        cols = row_p[:, None]
        hidden = last_pre[row_group.to(device)][:, None]
        local_score = torch.zeros((B, 1), dtype=torch.bool)
    # every scored position lies at or after its row's prefix, so this covers score_mask exactly
    if int(local_score.sum()) != int(score_mask.sum()):
        raise AssertionError("shared-prefix plan lost a scored position")  # (the plan guarantees it)
    where = local_score.to(device)
    return hidden[where], toks.gather(1, cols.clamp(max=T - 1))[local_score].to(device)


def _cache_kwarg(model) -> str:
    """"cache" (transformers >= 5.2x) or "past_key_values" (older), as the base model's forward names it."""
    forward = getattr(model.base_model, "forward", None)  # (lora.AdaptersOff hands out a plain wrapper function)
    return "cache" if forward is not None and "cache" in inspect.signature(forward).parameters else "past_key_values"
