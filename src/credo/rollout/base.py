"""The rollout-engine protocol shared by the CPU engine, vLLM and test mocks.

Logprob convention: `Completion.logprobs[k]` is log p(token_ids[k] | prompt, token_ids[:k]) under the
*sampling* distribution softmax(logits / temperature), before top-k / top-p truncation. The trainer
scores tokens with the same temperature, so the PPO ratio is 1 on the first update of fresh samples.
With temperature 0 (greedy) the logprobs are those of the untempered model.

`trainable[k]` says whether token k was chosen by the policy (True) or inserted by an environment or
tool (False); the loss mask is built from these flags and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled.

    temperature: 0 means greedy decoding.
    top_p: nucleus sampling mass (1.0 = off).
    top_k: keep the k most likely tokens (0 = off).
    max_new_tokens: completion budget; a completion that uses it all finishes with "length".
    stop: strings that end a completion (kept in the completion, which finishes with "stop").
    temperature_fn: an adaptive temperature, logits [A, V] -> temperatures [A], applied at every
    decoding step instead of `temperature` when sampling (rollout/temperature.py); None = fixed.
    guide: a second model decoding in lockstep whose action mask [A, V] restricts every step's
    logits before sampling (NLPO's masking policy, rollout/masking.py::TopPMaskGuide); torch engine
    only; None = no mask.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    temperature_fn: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    guide: Any = field(default=None, compare=False, repr=False)


@dataclass
class Completion:
    """One sampled completion of one prompt.

    token_ids [K], logprobs [K], trainable [K]; `finish_reason` is "stop" (EOS or a stop string) or
    "length"; `text` is the decoded completion without special tokens.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    trainable: list[bool]
    finish_reason: str
    text: str
    meta: dict = field(default_factory=dict)
    weight_version: int = 0  # the trainer's weight version the engine sampled this completion with


class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        """`n` completions for each prompt: result[p][j] is sample j of prompt p."""
        ...

    def load_weights(self, model, version: int = 0) -> None:
        """Make the engine sample from the current policy weights; `version` (the trainer's count of
        weight updates) is stamped on every completion generated afterwards (`weight_version`)."""
        ...
