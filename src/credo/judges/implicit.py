"""An implicit process reward model trained online beside the policy (OPRL; PRIME's implicit PRM).

pi_phi starts as a copy of the policy when RL starts and has its own AdamW. Each RL step, before the
policy update:
  1. `update`: `updates` AdamW steps on the trajectory-level DPO loss over the step's preference pairs
     (within a prompt group, every rollout with a strictly higher outcome reward beats every lower one):
        J = -mean log sigmoid(beta [(log pi_phi - log pi_old)(tau+) - (log pi_phi - log pi_old)(tau-)])
     (`credit/turn_rewards.py::oprl_prm_loss`, `oprl_preference_pairs`), with pi_old = the policy that
     sampled the step (the trainer's recomputed behaviour logprobs);
  2. `token_logprobs`: pi_phi's log-probs of the sampled tokens, from which the OPRL provider takes the
     step rewards r_k = beta sum_{t in step k} (log pi_phi(a_t) - log pi_old(a_t))
     (`credit/turn_rewards.py::oprl_step_rewards`).
pi_phi and its AdamW moments go into every RL checkpoint (`export` / `restore`: one tensor file plus a
JSON part), so a resumed run continues the same PRM.
Paper: "Online Process Reward Learning for Agentic Reinforcement Learning" (arXiv 2509.19199); the
implicit PRM of "Process Reinforcement through Implicit Rewards" (PRIME, arXiv 2502.01456) is the same
construction trained with cross-entropy on outcomes. Status: reconstructed (OPRL's update from a
third-party summary; PRM-first-then-reward order as PRIME's Algorithm 1).
Defaults: beta 0.1, lr 1e-6 (PRIME's PRM lr), 1 update per step, gradient norm clipped at 1.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from credo.credit.turn_rewards import oprl_preference_pairs, oprl_prm_loss
from credo.logprobs import token_logprobs
from credo.rollout.torch_engine import autocast_context


class ImplicitPRM:
    """pi_phi (see the module docstring). model: the policy to copy (its weights at RL start)."""

    def __init__(self, model: torch.nn.Module, *, beta: float = 0.1, lr: float = 1e-6, updates: int = 1,
                 micro_batch_size: int = 32, autocast_dtype: torch.dtype | None = None, temperature: float = 1.0,
                 max_grad_norm: float = 1.0):
        self.model = copy.deepcopy(model).train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.beta, self.updates, self.micro = beta, updates, micro_batch_size
        self.autocast_dtype, self.temperature, self.max_grad_norm = autocast_dtype, temperature, max_grad_norm
        self.steps = 0

    def _logprobs(self, batch, rows: torch.Tensor) -> torch.Tensor:
        part = batch.select(rows)
        device = next(self.model.parameters()).device
        with autocast_context(self.autocast_dtype, device):
            return token_logprobs(self.model, part.tokens, part.attention_mask, part.loss_mask,
                                  temperature=self.temperature)

    @torch.no_grad()
    def token_logprobs(self, batch) -> torch.Tensor:
        """pi_phi's log-probs [B, T] of the batch's tokens (0 off the loss mask)."""
        out = torch.zeros_like(batch.sampler_logprobs)
        for rows in torch.arange(len(batch)).split(self.micro):
            lp = self._logprobs(batch, rows)
            out[rows, : lp.shape[1]] = lp.float()
        return out

    def update(self, batch, old_logprobs: torch.Tensor) -> dict[str, float]:
        """`updates` AdamW steps on the step's preference pairs; returns prm_loss, prm_pairs, prm_accuracy
        (the fraction of pairs pi_phi ranks right before the update)."""
        pairs = oprl_preference_pairs(batch.rewards.tolist(), batch.group_ids.tolist())
        metrics = {"prm_pairs": float(len(pairs))}
        if not pairs:
            return metrics
        rows = torch.tensor(sorted({i for pair in pairs for i in pair}))
        index = {int(r): k for k, r in enumerate(rows)}
        local = [(index[w], index[l]) for w, l in pairs]
        mask = batch.loss_mask[rows]
        old_seq = (old_logprobs[rows] * mask).sum(-1).detach()
        self.model.train()
        for u in range(self.updates):
            seq = []
            for chunk in torch.arange(len(rows)).split(self.micro):  # one graph over the rows in pairs
                lp = self._logprobs(batch, rows[chunk]).float()
                seq.append((lp * mask[chunk, : lp.shape[1]]).sum(-1))
            seq = torch.cat(seq)
            loss = oprl_prm_loss(seq, old_seq, local, beta=self.beta)
            if u == 0:
                with torch.no_grad():
                    ratio = seq - old_seq
                    metrics["prm_accuracy"] = float(sum(bool(ratio[w] > ratio[l]) for w, l in local) / len(local))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            if math.isfinite(float(norm)):
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            metrics["prm_loss"] = float(loss.detach())
        self.steps += 1
        return metrics

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON part, tensors) for a checkpoint: the weights, the AdamW moments, the step count."""
        from credo.train.checkpoint import _optimizer_tensors, _unique_tensors

        opt_tensors, groups = _optimizer_tensors(self.optimizer)
        tensors = {**{f"model.{k}": v for k, v in _unique_tensors(self.model).items()},
                   **{f"optimizer.{k}": v for k, v in opt_tensors.items()}}
        return {"steps": self.steps, "optimizer_param_groups": groups}, tensors

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        from credo.train.checkpoint import _restore_optimizer

        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or any(not m.endswith("lm_head.weight") for m in missing):
            raise ValueError(f"implicit PRM state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        _restore_optimizer(self.optimizer, {k[len("optimizer."):]: v for k, v in tensors.items()
                                            if k.startswith("optimizer.")}, meta["optimizer_param_groups"])
        self.steps = int(meta["steps"])
