"""A process reward model: a causal-LM backbone with a scalar head read at every step boundary.

Input layout (token ids, each segment tokenised on its own so step boundaries are exact):

    "Problem: {prompt}\\n" | step_1 | SEP | step_2 | SEP | ... | step_K | SEP        (SEP = "\\n")

The head reads the final hidden state h_k [H] at the last token of the k-th SEP:

    logit_k = w . h_k + b,   p_k = sigmoid(logit_k)   (probability that step k is correct)
    score_k = low + (high - low) * p_k                 (default [-1, 1], PURE's PRM range)

This is the discriminative PRM of "Let's Verify Step by Step" (Lightman et al., arXiv 2305.20050) and
Math-Shepherd (Wang et al., arXiv 2312.08935): binary step labels, a classification head at step ends,
trained with binary cross-entropy (`judges/train_prm.py`). PURE (arXiv 2504.15275) consumes its scores.

Folder format (`save` / `load`): the backbone as a Hugging Face causal-LM folder (config.json,
model.safetensors, tokenizer files), `prm_head.safetensors` ({"weight": [1, H], "bias": [1]}) and
`prm.json` ({"format": "credo-prm-1", "step_sep", "prompt_prefix", "hidden_size", ...}). Steps past
`max_tokens` get the neutral score (low + high) / 2 (p = 0.5), never an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from credo.errors import CredoError
from credo.judges.heads import load_head, read_head_info, save_head_folder, scalar_head

FORMAT = "credo-prm-1"


def base_model(lm: torch.nn.Module) -> torch.nn.Module:
    """The transformer of a Hugging Face causal LM without its output head (no [V]-wide projection)."""
    return getattr(lm, lm.base_model_prefix)


@dataclass
class Encoded:
    ids: list[int]
    ends: list[int]  # position of each step's boundary token (len = steps that fit)
    n_steps: int


class ProcessRewardModel(torch.nn.Module):
    """backbone: a causal LM (its base transformer is used); tokenizer: its tokenizer."""

    def __init__(self, backbone: torch.nn.Module, tokenizer, *, step_sep: str = "\n",
                 prompt_prefix: str = "Problem: ", max_tokens: int = 512, meta: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.step_sep = step_sep
        self.prompt_prefix = prompt_prefix
        self.max_tokens = max_tokens
        self.meta = dict(meta or {})
        self.head = scalar_head(backbone.config.hidden_size)
        self._sep = tokenizer.encode(step_sep, add_special_tokens=False)
        if not self._sep:
            raise CredoError(f"PRM: the step separator {step_sep!r} tokenises to nothing")

    def encode(self, prompt: str, steps: Sequence[str]) -> Encoded:
        tok = self.tokenizer
        ids = tok.encode(f"{self.prompt_prefix}{prompt}\n", add_special_tokens=False)
        ends = []
        for step in steps:
            piece = tok.encode(step, add_special_tokens=False) + self._sep
            if len(ids) + len(piece) > self.max_tokens:
                break
            ids += piece
            ends.append(len(ids) - 1)
        return Encoded(ids, ends, len(steps))

    def logits(self, encoded: Sequence[Encoded]) -> list[torch.Tensor]:
        """Per row, the step logits [K_fit] (differentiable)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(1, max(len(e.ids) for e in encoded))
        device = self.head.weight.device
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):  # right padding: causal attention never reads a pad
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, : len(e.ids)] = 1
        hidden = base_model(self.backbone)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        out = []
        for i, e in enumerate(encoded):
            h = hidden[i, torch.tensor(e.ends, dtype=torch.long, device=device)]
            out.append(self.head(h.float()).squeeze(-1))
        return out

    def save(self, folder: str | Path, **meta) -> Path:
        info = {"format": FORMAT, "step_sep": self.step_sep, "prompt_prefix": self.prompt_prefix,
                "max_tokens": self.max_tokens, "hidden_size": int(self.head.weight.shape[1]),
                **self.meta, **meta}
        return save_head_folder(folder, "prm", self.backbone, self.tokenizer, self.head, info)

    @classmethod
    def load(cls, folder: str | Path) -> "ProcessRewardModel":
        from credo.models import load_policy

        folder = Path(folder).expanduser()
        info = read_head_info(folder, "prm", FORMAT, "PRM", "credo train-prm")
        policy = load_policy(str(folder))
        prm = cls(policy.model, policy.tokenizer, step_sep=info.get("step_sep", "\n"),
                  prompt_prefix=info.get("prompt_prefix", "Problem: "), max_tokens=int(info.get("max_tokens", 512)),
                  meta={k: v for k, v in info.items() if k not in ("format", "step_sep", "prompt_prefix", "max_tokens")})
        load_head(folder, "prm", prm.head)
        return prm.eval()


class PRMJudge:
    """A `StepJudge` over a trained `ProcessRewardModel`: score_k = low + (high - low) * sigmoid(logit_k).

    Batched over rows (`score_many`), counted (`calls`, steps scored) and timed (`seconds`)."""

    def __init__(self, prm: ProcessRewardModel, *, low: float = -1.0, high: float = 1.0, batch_size: int = 16):
        if low >= high:
            raise CredoError(f"PRM judge: need low < high (got {low}, {high})")
        self.prm, self.low, self.high, self.batch_size = prm.eval(), low, high, batch_size
        self.calls, self.seconds = 0, 0.0

    @torch.no_grad()
    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        start = time.perf_counter()
        out: list[list[float]] = []
        for at in range(0, len(items), self.batch_size):
            chunk = items[at:at + self.batch_size]
            encoded = [self.prm.encode(p, s) for p, s in chunk]
            for e, logit in zip(encoded, self.prm.logits(encoded)):
                p = torch.sigmoid(logit).tolist()
                p += [0.5] * (e.n_steps - len(p))  # steps past max_tokens: neutral
                out.append([self.low + (self.high - self.low) * x for x in p])
        self.calls += sum(len(s) for _, s in items)
        self.seconds += time.perf_counter() - start
        return out

    def score(self, prompt: str, steps: Sequence[str], truth: Sequence[float] | None = None) -> list[float]:
        return self.score_many([(prompt, steps)])[0]
