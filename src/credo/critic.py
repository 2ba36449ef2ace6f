"""The value model (critic) of the PPO path: V(s_t) for every token position, and its update.

Two kinds (`critic.kind` in the config):
- "head" (default): a linear value head on the policy's final hidden states, which are detached, so
  the critic never moves the policy. It costs one extra no-grad forward of the policy per update
  and a [H] + 1 parameter head; the features are the policy's, as in a shared-backbone actor-critic
  without the gradient interference. Cheap enough for the CPU.
- "model": a separate copy of the policy's backbone with its own value head, trained fully, as in
  verl / OpenRLHF (a second model in memory and a second forward + backward per update).

Shift convention (batch.py): values[b, t] is V of the state *before* token t, i.e. of the prefix
tokens[b, :t], read from the hidden state at t - 1. values[:, 0] = 0 (no prefix state).
Paper: "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); GAE arXiv 1506.02438.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from credo.batch import RolloutBatch
from credo.objectives.ppo import clipped_value_loss
from credo.rollout.torch_engine import autocast_context

CRITIC_KINDS = ("head", "model")


class ValueModel(torch.nn.Module):
    """V(s_t) [B, T] from tokens [B, T]; see the module docstring for the two kinds."""

    def __init__(self, policy: torch.nn.Module, kind: str = "head"):
        super().__init__()
        if kind not in CRITIC_KINDS:
            raise ValueError(f"critic kind must be one of {', '.join(CRITIC_KINDS)}, got {kind!r}")
        self.kind = kind
        hidden = policy.config.hidden_size
        if kind == "model":
            self.backbone = copy.deepcopy(policy.base_model).train()
            self.backbone.requires_grad_(True)
        else:
            # a plain attribute, not a submodule: the policy's weights are not the critic's parameters
            self.__dict__["shared_policy"] = policy
        # zero init: V = 0 before any update, so the first advantages are the plain returns
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device, home = self.head.weight.device, tokens.device
        if device != home:  # CUDA path (credo/gpu.py): values come back to the batch's device
            from credo.gpu import on_model_device

            with on_model_device(home, device):
                return self.forward(tokens.to(device), attention_mask.to(device)).to(home)
        if self.kind == "model":
            hidden = self.backbone(input_ids=tokens, attention_mask=attention_mask).last_hidden_state
        else:
            with torch.no_grad():
                base = self.shared_policy.base_model
                hidden = base(input_ids=tokens, attention_mask=attention_mask).last_hidden_state
        v = self.head(hidden.float()).squeeze(-1)  # v[:, j] = V(tokens[:, :j + 1])
        return torch.nn.functional.pad(v[:, :-1], (1, 0))  # values[:, t] = V(tokens[:, :t])


@torch.no_grad()
def compute_values(critic: ValueModel, batch: RolloutBatch, micro_batch_size: int,
                   autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """values [B, T] of every row (0 off the attention mask), in micro-batches."""
    out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
    for rows in torch.arange(len(batch)).split(micro_batch_size):
        part = batch.select(rows)
        with autocast_context(autocast_dtype, part.tokens.device):
            v = critic(part.tokens, part.attention_mask).float()
        out[rows, : part.tokens.shape[1]] = torch.where(part.attention_mask, v, torch.zeros_like(v))
    return out


@dataclass
class CriticSettings:
    lr: float = 1e-4
    value_clip: float | None = 0.5
    epochs: int = 1
    minibatches: int = 1
    micro_batch_size: int = 8
    max_grad_norm: float = 1.0


def critic_update(critic: ValueModel, optimizer: torch.optim.Optimizer, batch: RolloutBatch,
                  returns: torch.Tensor, settings: CriticSettings, generator: torch.Generator,
                  autocast_dtype: torch.dtype | None, dist=None) -> dict[str, float]:
    """epochs x minibatches steps of the clipped value loss (token mean over each minibatch).

    batch.values [B, T] holds the critic's values at collection time (V_old); returns [B, T] the
    regression targets (GAE: A + V_old). Returns value_loss, value_clip_fraction, explained_variance.
    dist (credo.dist.hooks.DistHooks, several ranks): the critic is replicated; minibatches are cut
    from the global rows, the token count is global and the gradients are summed over ranks.
    """
    if batch.values is None:
        raise ValueError("critic_update needs batch.values (the critic's values at collection time)")
    mask = batch.loss_mask
    rows = torch.nonzero(mask.any(-1)).flatten()
    layout = dist.layout(batch.group_ids, rows) if dist is not None else None
    split_from = rows if layout is None else layout.rows
    if len(split_from) == 0:
        return {"value_loss": float("nan"), "explained_variance": float("nan")}
    critic.train()
    losses, clipped_share = [], []
    for _ in range(settings.epochs):
        order = split_from[torch.randperm(len(split_from), generator=generator)]
        for minibatch in order.chunk(min(settings.minibatches, len(order))):
            minibatch = minibatch if layout is None else layout.local(minibatch)
            count = float(mask[minibatch].sum())
            if dist is not None:
                count = dist.global_counts(count, 0.0)[0]
            for micro in minibatch.split(settings.micro_batch_size):
                width = int(batch.attention_mask[micro].sum(-1).max())
                tok, att, m = batch.tokens[micro, :width], batch.attention_mask[micro, :width], mask[micro, :width]
                old, ret = batch.values[micro, :width], returns[micro, :width]
                with autocast_context(autocast_dtype, tok.device):
                    v = critic(tok, att).float()
                per_token = clipped_value_loss(v, old, ret, m, value_clip=settings.value_clip)
                loss = per_token.sum() / max(count, 1.0)
                loss.backward()
                losses.append(float(loss.detach()) * count)
                if settings.value_clip is not None:
                    moved = ((v.detach() - old).abs() > settings.value_clip) & m
                    clipped_share.append(float(moved.sum()))
            if dist is not None:  # each rank's loss is its part of the global one: sum the gradients
                dist.sum_gradients(critic.parameters())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(critic.parameters(), settings.max_grad_norm))
            if math.isfinite(grad_norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    tokens = float(mask.sum()) * settings.epochs
    residual = (returns - batch.values)[mask]
    var_ret = float(returns[mask].var()) if int(mask.sum()) > 1 else 0.0
    return {
        "value_loss": sum(losses) / max(tokens, 1.0),
        "value_clip_fraction": sum(clipped_share) / max(tokens, 1.0),
        "value_mean": float(batch.values[mask].mean()),
        # 1 - Var(Ret - V) / Var(Ret): how much of the return the critic explains (verl's vf_explained_var)
        "explained_variance": 1.0 - float(residual.var()) / var_ret if var_ret > 0 and len(residual) > 1 else float("nan"),
    }


def critic_optimizer(critic: ValueModel, lr: float) -> torch.optim.Optimizer:
    params = [p for p in critic.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def outcome_token_rewards(batch: RolloutBatch) -> torch.Tensor:
    """[B, T]: each row's outcome reward on its last loss token, 0 elsewhere (PPO's sparse reward)."""
    mask = batch.loss_mask
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    out = torch.zeros(mask.shape, dtype=torch.float32)
    has = last >= 0
    out[torch.nonzero(has).flatten(), last[has]] = batch.rewards[has].float()
    return out


def critic_returns(batch: RolloutBatch, credit) -> torch.Tensor:
    """The critic's regression targets [B, T] float32.

    An estimator that declares its own targets (`token_level(returns=...)`: GAE) gets them from the
    same token rewards as its advantages: with KL in the reward (gae's kl_coef), the critic regresses
    on the KL-penalised return, as verl builds advantages and returns from one `token_level_rewards`.
    The behaviour logprobs are the ones the advantages used (the recomputed old logprobs, stored on
    the batch before the update), so actor and critic see the same r_t. Any other estimator: GAE
    returns A + V_old on the outcome token rewards, with its own gamma / lam when it has them
    (MA-RLHF, POAD), else gamma = lam = 1 (the Monte Carlo return: the outcome reward at every token).
    """
    from credo.credit.base import CreditInputs, credit_returns_of, hparams_of
    from credo.credit.gae import gae_returns

    hparams = hparams_of(credit)
    own = credit_returns_of(credit)
    if own is not None:
        inputs = CreditInputs(rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask,
                              tokens=batch.tokens, logprobs=batch.behaviour_logprobs,
                              ref_logprobs=batch.ref_logprobs, values=batch.values)
        return own(inputs, **hparams).to(torch.float32)

    def param(name: str) -> float:
        return float(hparams.get(name, 1.0))

    _, returns = gae_returns(outcome_token_rewards(batch), batch.values, batch.loss_mask,
                             gamma=param("gamma"), lam=param("lam"))
    return returns.to(torch.float32)
