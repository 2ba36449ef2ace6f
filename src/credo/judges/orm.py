"""An outcome reward model: a causal-LM backbone with a scalar head on the response's last token,
trained from preference pairs (Bradley-Terry), usable as the reward of any task.

Input layout (token ids; the prompt and the response tokenised on their own):

    "Problem: {prompt}\\nResponse: " | response | EOS

The head reads the final hidden state h [H] at the EOS token: r(x, y) = w . h + b (a logit, unbounded).
Trained with the Bradley-Terry loss on (prompt, chosen, rejected) pairs (`judges/train_orm.py`):

    L = mean over pairs of  -log sigmoid( r(x, y_c) - r(x, y_r) - margin )  [+ c mean (r_c + r_r)^2]

as TRL's `RewardTrainer` (margin optional, centring coefficient c off by default) and InstructGPT's
reward model ("Training language models to follow instructions with human feedback", Ouyang et al.,
arXiv 2203.02155). In training (`rl.reward_model = "rm:<folder>"`), the reward of a completion is
r(x, y), the raw logit, as TRL's GRPOTrainer takes `logits[:, 0]` of a reward model.

Folder format (`save` / `load`): the backbone as a Hugging Face causal-LM folder, `orm_head.safetensors`
({"weight": [1, H], "bias": [1]}) and `orm.json` ({"format": "credo-orm-1", "prompt_prefix",
"response_prefix", "max_tokens", ...}). A response cut by `max_tokens` keeps its prompt and the
response's first tokens, then EOS (the score is of what fits, never an error).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from credo.errors import CredoError
from credo.judges.heads import load_head, read_head_info, save_head_folder, scalar_head
from credo.judges.prm import base_model

FORMAT = "credo-orm-1"


class OutcomeRewardModel(torch.nn.Module):
    """backbone: a causal LM (its base transformer is used); tokenizer: its tokenizer."""

    def __init__(self, backbone: torch.nn.Module, tokenizer, *, prompt_prefix: str = "Problem: ",
                 response_prefix: str = "\nResponse: ", max_tokens: int = 512, meta: dict[str, Any] | None = None):
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        self.prompt_prefix, self.response_prefix, self.max_tokens = prompt_prefix, response_prefix, int(max_tokens)
        self.meta = dict(meta or {})
        self.head = scalar_head(backbone.config.hidden_size)
        eos = tokenizer.eos_token_id
        self._eos = [eos if eos is not None else (tokenizer.pad_token_id or 0)]

    def encode(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        head = tok.encode(f"{self.prompt_prefix}{prompt}{self.response_prefix}", add_special_tokens=False)
        body = tok.encode(response if isinstance(response, str) else "", add_special_tokens=False)
        room = max(self.max_tokens - len(self._eos), 1)
        return (head + body)[:room] + self._eos

    def rewards(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16) -> torch.Tensor:
        """r(x, y) [N] float32 for (prompt, response) pairs, in right-padded batches (differentiable
        when grad is enabled)."""
        out = []
        for at in range(0, len(pairs), batch_size):
            out.append(self._forward([self.encode(p, r) for p, r in pairs[at:at + batch_size]]))
        return torch.cat(out) if out else torch.zeros(0)

    def _forward(self, encoded: Sequence[list[int]]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(e) for e in encoded)
        device = self.head.weight.device
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):  # right padding: causal attention never reads a pad
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = 1
        hidden = base_model(self.backbone)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = torch.tensor([len(e) - 1 for e in encoded], device=device)
        return self.head(hidden[torch.arange(len(encoded), device=device), last].float()).squeeze(-1)

    def save(self, folder: str | Path, **meta) -> Path:
        info = {"format": FORMAT, "prompt_prefix": self.prompt_prefix, "response_prefix": self.response_prefix,
                "max_tokens": self.max_tokens, "hidden_size": int(self.head.weight.shape[1]), **self.meta, **meta}
        return save_head_folder(folder, "orm", self.backbone, self.tokenizer, self.head, info)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str | None = None) -> "OutcomeRewardModel":
        from credo.models import load_policy

        folder = Path(folder).expanduser()
        info = read_head_info(folder, "orm", FORMAT, "reward model", "credo train-rm")
        policy = load_policy(str(folder))
        rm = cls(policy.model, policy.tokenizer, prompt_prefix=info.get("prompt_prefix", "Problem: "),
                 response_prefix=info.get("response_prefix", "\nResponse: "), max_tokens=int(info.get("max_tokens", 512)),
                 meta={k: v for k, v in info.items()
                       if k not in ("format", "prompt_prefix", "response_prefix", "max_tokens")})
        load_head(folder, "orm", rm.head)
        if device is not None:
            rm = rm.to(device)
        return rm.eval().requires_grad_(False)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss of paired rewards chosen [N], rejected [N] (margin [N] optional) -> scalar:
    mean(-log sigmoid(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2) (TRL RewardTrainer)."""
    gap = chosen - rejected - (margin if margin is not None else 0.0)
    loss = -torch.nn.functional.logsigmoid(gap).mean()
    return loss + center_coef * ((chosen + rejected) ** 2).mean() if center_coef else loss


class RewardModelScorer:
    """The reward of every completion from an outcome reward model (`rl.reward_model = "rm:<folder>"`):
    the verifier slot of the trainer (`score(pairs) -> [(Score, failed)]`, as rewards/verifier_pool.py).

    reward = r(x, y) (the raw logit); correct / formatted = the task's own verdict when it can give one
    (`safe_score`; a task without reference answers says False), so accuracy metrics stay the task's.
    One batched forward for the step's completions, timed and counted (`reward_model_calls`,
    `reward_model_seconds` in the step's metrics). A non-finite reward scores `error_reward`, counted as
    a verifier error (model output never crashes training)."""

    def __init__(self, rm: OutcomeRewardModel, task, *, error_reward: float = 0.0, batch_size: int = 16):
        self.rm, self.task, self.error_reward, self.batch_size = rm, task, float(error_reward), int(batch_size)
        self.calls, self.seconds = 0, 0.0

    def score(self, pairs: Sequence[tuple[str, Any]]):
        from credo.tasks.base import Score
        from credo.train.evaluate import safe_score

        start = time.perf_counter()
        with torch.no_grad():
            rewards = self.rm.rewards([(ex.prompt, text) for text, ex in pairs], batch_size=self.batch_size).tolist()
        self.calls += len(pairs)
        self.seconds += time.perf_counter() - start
        out = []
        for (text, ex), r in zip(pairs, rewards):
            verdict, _ = safe_score(self.task, text, ex, self.error_reward)
            if r != r or r in (float("inf"), float("-inf")):
                out.append((Score(self.error_reward, verdict.correct, verdict.formatted), True))
            else:
                out.append((Score(float(r), verdict.correct, verdict.formatted, verdict.outcome), False))
        return out

    def shutdown(self) -> None:
        """Nothing runs outside this process (the verifier slot's protocol)."""

    def metrics(self) -> dict[str, float]:
        """The counters since the last call (then reset)."""
        out = {"reward_model_calls": float(self.calls), "reward_model_seconds": self.seconds}
        self.calls, self.seconds = 0, 0.0
        return out
