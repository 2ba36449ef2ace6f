"""NLPO's masked sampling: a delayed copy of the policy restricts every action to its top-p set.

NLPO (RL4LMs) keeps a masking policy pi_psi, a copy of the policy refreshed every
`target_update_iterations` (20 in the RL4LMs README configs). While rollouts are generated, each
decoding step keeps only the actions in pi_psi's top-p set (`top_p_action_mask`: the smallest set of
most likely tokens reaching top_p 0.9, at least min_tokens_to_keep 100) and samples from the policy
renormalised on that set; the PPO loss is taken on the same masked policy (`objectives/distribution.py
::nlpo_loss` with `masking_policy`).

- `DelayedPolicy`: the copy and the version it was synced at; synced to the engine's model when the
  engine's weight version is `update_every` past it (the trainer bumps the version once per RL step),
  checkpointed (`export` / `restore`: its weights and sync version), so a resumed run masks exactly as
  the uninterrupted one.
- `TopPMaskGuide`: the torch engine's per-step hook (`SamplingParams.guide`): the copy prefills the
  prompts and decodes in lockstep with its own KV cache, and returns the action mask of every step.
- `NLPOSampler` (`rollout.sampler = "nlpo"`): draws the group through `engine.generate` with the guide.
Paper: "Is Reinforcement Learning (Not) for Natural Language Processing: Benchmarks, Baselines, and
Building Blocks for Natural Language Policy Optimization" (arXiv 2210.01241). Reference: RL4LMs
`MaskLogitsProcessorCasualLM` (mask_type "learned_top_p"), `target_update_iterations`.
Not done: the vLLM and Ray engines have no per-step hook (refused with a clear error).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.rollout.base import Completion, SamplingParams


class DelayedPolicy:
    """A frozen copy of the policy, refreshed every `update_every` weight versions."""

    def __init__(self, model: torch.nn.Module, *, update_every: int, version: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.update_every, self.synced_version, self.syncs = int(update_every), int(version), 0

    def sync(self, model: torch.nn.Module, version: int) -> bool:
        """Copy `model`'s weights when `version` is update_every or more past the last sync; True if copied."""
        if version - self.synced_version < self.update_every:
            return False
        mine = self.model.state_dict()
        with torch.no_grad():
            for name, theirs in model.state_dict().items():
                mine[name].copy_(theirs)
        self.synced_version, self.syncs = int(version), self.syncs + 1
        return True

    @torch.no_grad()
    def full_logprobs(self, tokens: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        """[N, V] log-softmax of the copy at the N scored positions (score_mask order, the trainer's)."""
        from credo.logprobs import policy_outputs

        return policy_outputs(self.model, tokens, attention_mask, score_mask,
                              needs=frozenset({"full_logprobs"})).full_logprobs

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        from credo.train.checkpoint import _unique_tensors  # (tied embeddings saved once)

        return ({"synced_version": self.synced_version, "syncs": self.syncs, "update_every": self.update_every},
                _unique_tensors(self.model))

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        if unexpected or any(not m.endswith("lm_head.weight") for m in missing):  # (a tied head is not saved)
            raise CredoError(f"nlpo masking policy state does not fit the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        self.synced_version, self.syncs = int(meta["synced_version"]), int(meta["syncs"])


class TopPMaskGuide:
    """The masking policy decoding beside the engine's model (`SamplingParams.guide`, torch engine).

    begin(ids [P, W], attention_mask [P, W], n) -> keep [P * n, V] for the first sampled token;
    advance(tokens [A, 1], attention_mask [A, W'], positions [A, 1]) -> keep [A, V] for the next one;
    select(index [A']) keeps the rows the engine keeps. keep = top_p_action_mask(log-softmax of the
    copy's logits, top_p, min_tokens_to_keep, keep_token_ids)."""

    def __init__(self, policy: DelayedPolicy, *, top_p: float, min_tokens_to_keep: int,
                 keep_token_ids: Sequence[int] = (), autocast_dtype: torch.dtype | None = None):
        self.policy, self.top_p, self.min_keep = policy, float(top_p), int(min_tokens_to_keep)
        self.keep_ids, self.autocast_dtype = list(keep_token_ids), autocast_dtype
        self.cache = None
        self.steps = 0  # decoding steps masked (a metric)

    def _keep(self, logits: torch.Tensor) -> torch.Tensor:
        from credo.objectives.distribution import top_p_action_mask

        self.steps += 1
        return top_p_action_mask(torch.log_softmax(logits.float(), dim=-1), self.top_p,
                                 min_tokens_to_keep=self.min_keep, keep_token_ids=self.keep_ids)

    def _forward(self, **kwargs):
        from credo.rollout.torch_engine import autocast_context

        model = self.policy.model
        with torch.no_grad(), autocast_context(self.autocast_dtype, next(model.parameters()).device):
            return model(use_cache=True, **kwargs)

    def begin(self, ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> torch.Tensor:
        out = self._forward(input_ids=ids, attention_mask=attention_mask,
                            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(n)
        return self._keep(out.logits[:, -1].repeat_interleave(n, dim=0))

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)

    def advance(self, tokens: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self._forward(input_ids=tokens, attention_mask=attention_mask, position_ids=positions,
                            past_key_values=self.cache)
        self.cache = out.past_key_values
        return self._keep(out.logits[:, -1])


class NLPOSampler:
    """NLPO's masked sampling (see the module docstring): independent samples of each prompt from the
    policy restricted, at every step, to the delayed masking policy's top-p set.
    Defaults (RL4LMs README configs): update_every (target_update_iterations) 20, top_p 0.9,
    min_tokens_to_keep 100."""

    needs_guide = True  # the torch engine's per-step hook (SamplingParams.guide)

    def __init__(self, *, update_every: int = 20, top_p: float = 0.9, min_tokens_to_keep: int = 100):
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise CredoError(f"rollout.sampler_params: nlpo update_every must be an integer >= 1, got {update_every!r}")
        if not 0.0 < float(top_p) <= 1.0:
            raise CredoError(f"rollout.sampler_params: nlpo top_p must be in (0, 1], got {top_p!r}")
        if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise CredoError(f"rollout.sampler_params: nlpo min_tokens_to_keep must be an integer >= 1, "
                             f"got {min_tokens_to_keep!r}")
        self.update_every, self.top_p, self.min_tokens_to_keep = update_every, float(top_p), min_tokens_to_keep
        self.policy: DelayedPolicy | None = None
        self.keep_token_ids: list[int] = []
        self.autocast_dtype: torch.dtype | None = None
        self._saved = None  # a checkpoint's (meta, tensors), applied when the copy is made

    def check(self, group_size: int, max_new_tokens: int) -> None:
        """Any group size and budget will do (the samples are independent)."""

    def resume(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self._saved = (meta, tensors)

    def masking_policy(self, model: torch.nn.Module, version: int) -> DelayedPolicy:
        """The delayed copy, made from `model` on first use (or restored from the checkpoint), then synced."""
        if self.policy is None:
            self.policy = DelayedPolicy(model, update_every=self.update_every, version=version)
            if self._saved is not None:
                self.policy.restore(*self._saved)
                self._saved = None
        self.policy.sync(model, version)
        return self.policy

    def action_mask(self, tokens: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        """keep [N, V] bool at the N scored positions of a training (micro-)batch: the same top-p set of
        the same copy that masked these tokens' sampling (the copy is synced only before a rollout)."""
        from credo.objectives.distribution import top_p_action_mask

        if self.policy is None:
            raise CredoError("nlpo sampler: no masking policy yet (it is made at the first rollout)")
        return top_p_action_mask(self.policy.full_logprobs(tokens, attention_mask, score_mask), self.top_p,
                                 min_tokens_to_keep=self.min_tokens_to_keep, keep_token_ids=self.keep_token_ids)

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        if self.policy is None:
            raise CredoError("nlpo sampler: nothing to export before the first rollout")
        return self.policy.export()

    def generate(self, engine, tokenizer, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]:
        if not getattr(engine, "supports_guide", False):
            raise CredoError(f"rollout.sampler nlpo masks every decoding step: it needs rollout.engine \"torch\" "
                             f"({type(engine).__name__} has no per-step hook)")
        if not self.keep_token_ids:  # RL4LMs always unmasks the special ids (EOS: a completion can end)
            self.keep_token_ids = sorted(getattr(engine, "eos_ids", set()))
        policy = self.masking_policy(engine.model, int(getattr(engine, "weight_version", 0)))
        guide = TopPMaskGuide(policy, top_p=self.top_p, min_tokens_to_keep=self.min_tokens_to_keep,
                              keep_token_ids=self.keep_token_ids, autocast_dtype=getattr(engine, "autocast_dtype", None))
        return engine.generate(prompts, n, dataclasses.replace(sampling, guide=guide), seed)


MASKING_CATALOG = [
    Entry("nlpo", "NLPO's masked sampling: every decoding step restricted to the top-p set (0.9, >= 100 tokens) "
          "of a delayed copy of the policy, synced every 20 RL steps, checkpointed",
          "NLPO, RL4LMs (arXiv 2210.01241)", "reconstructed",
          "rollout.engine torch; rl.objective nlpo masks its loss with the same copy",
          training="works on the torch engine (vLLM and Ray have no per-step hook)"),
]
