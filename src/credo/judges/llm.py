"""An LLM judge: any local Hugging Face causal LM asked a yes/no question, scored from its logprobs.

For every (problem, steps so far, step) the judge renders a documented template into the model's chat
format, runs one forward pass and reads the probability of its answer tokens at the first answer
position:

    q = p("Yes") / (p("Yes") + p("No"))         (the first token of each answer word)
    score = low + (high - low) * q              (default [-1, 1], PURE's PRM range)

This is the "LLM-as-a-judge with logprob scores" used by the PRM-free variants of the step-credit papers
(e.g. PURE, arXiv 2504.15275, uses a trained PRM; CAPO, arXiv 2508.02298, uses a generative critic's
votes; here a single forward pass reads the verdict instead of sampling critiques). The templates
(`TEMPLATES`) are one per use:

| use           | question asked                                                                    |
|---------------|-----------------------------------------------------------------------------------|
| step          | is the next step of this solution correct?  (step-level credit: PURE, TP-GRPO, ...)|
| critique      | is step k of this whole solution correct? (CAPO: the critic sees the full solution) |
| subgoal       | does this turn achieve a subgoal of the task? (CALM-style subgoal check)            |
| attribution   | did this utterance contribute to the outcome? (Sotopia-RL-style attribution)        |
| rule          | does this response follow this rule? (AutoRule's rule verifier, rewards/autorule.py) |
| wellposed     | is this a clear, well-posed problem? (a prompt's quality, select/datamask.py)     |

`score()` (the `StepJudge` interface) uses the "step" template; `yes_probability(template, fields)`
asks any template. Queries are batched (right-padded, read at each row's last real token, so a batched
score equals the one-by-one score up to float rounding), cached in an LRU keyed by the rendered query
(re-scoring the same step within a training step costs nothing), and counted (`calls`, `cache_hits`,
`forward_rows`) and timed (`seconds`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from credo.errors import CredoError

TEMPLATES: dict[str, str] = {
    "step": ("Problem: {prompt}\nSolution so far:\n{context}\nNext step: {step}\n\n"
             "Is the next step correct? Answer Yes or No."),
    "critique": ("Problem: {prompt}\nSolution:\n{context}\n\nStep {index} of this solution: {step}\n\n"
                 "Is step {index} correct? Answer Yes or No."),
    "subgoal": ("Task: {prompt}\nInteraction so far:\n{context}\nLatest turn: {step}\n\n"
                "Does the latest turn achieve a subgoal of the task? Answer Yes or No."),
    "attribution": ("Conversation goal: {prompt}\nConversation:\n{context}\nUtterance: {step}\n\n"
                    "Did this utterance help reach the goal? Answer Yes or No."),
    "rule": ("Prompt: {prompt}\nResponse:\n{response}\n\nRule: {rule}\n\n"
             "Does the response follow this rule? Answer Yes or No."),
    "wellposed": "Problem: {prompt}\n\nIs this a clear, well-posed problem? Answer Yes or No.",
}


def user_turn_ids(tokenizer, text: str) -> list[int]:
    """`text` as one user message in the tokenizer's chat format, ending where the assistant's reply
    starts (a tokenizer without a chat template: the text, then "\nAnswer:")."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer.encode(text + "\nAnswer:", add_special_tokens=True))


def _first_token(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise CredoError(f"LLM judge: the tokenizer maps the answer word {word!r} to no tokens")
    return ids[0]


@dataclass
class LLMJudge:
    """A yes/no LLM judge (see the module docstring). model: a causal LM; tokenizer: its tokenizer.

    batch_size: rows per forward pass; cache_size: LRU entries (0 = no cache); max_tokens: a query
    longer than this keeps its last `max_tokens` tokens (the question stays, the oldest context goes).
    """

    model: torch.nn.Module
    tokenizer: object
    template: str = "step"
    yes: str = "Yes"
    no: str = "No"
    low: float = -1.0
    high: float = 1.0
    batch_size: int = 16
    cache_size: int = 4096
    max_tokens: int = 1024
    calls: int = 0
    cache_hits: int = 0
    forward_rows: int = 0
    seconds: float = 0.0
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise CredoError(f"LLM judge: unknown template {self.template!r}; valid: {', '.join(TEMPLATES)}")
        if self.low >= self.high or self.batch_size < 1:
            raise CredoError(f"LLM judge: need low < high and batch_size >= 1 (got {self.low}, {self.high}, "
                             f"{self.batch_size})")
        self._yes = _first_token(self.tokenizer, self.yes)
        self._no = _first_token(self.tokenizer, self.no)
        if self._yes == self._no:
            raise CredoError(f"LLM judge: {self.yes!r} and {self.no!r} start with the same token")
        self.model.eval()

    def _render(self, template: str, fields: dict[str, str]) -> list[int]:
        return user_turn_ids(self.tokenizer, TEMPLATES[template].format(**fields))[-self.max_tokens:]

    @torch.no_grad()
    def _forward(self, queries: list[list[int]]) -> list[float]:
        """q = p(yes) / (p(yes) + p(no)) at the last position of each query, in batches."""
        out: list[float] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start:start + self.batch_size]
            width = max(len(q) for q in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, q in enumerate(chunk):  # right padding: real tokens never see a pad (causal mask)
                ids[i, : len(q)] = torch.tensor(q)
                mask[i, : len(q)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = mask.sum(-1) - 1
            rows = logits[torch.arange(len(chunk)), last.to(device)].float()
            pair = torch.log_softmax(rows, dim=-1)[:, [self._yes, self._no]]
            q = torch.softmax(pair, dim=-1)[:, 0]  # renormalised over the two answer tokens
            out.extend(float(x) for x in q.cpu())
            self.forward_rows += len(chunk)
        return out

    def yes_probability(self, template: str, fields: Sequence[dict[str, str]]) -> list[float]:
        """q in [0, 1] for each query (template filled with each dict of fields), cached and batched."""
        start = time.perf_counter()
        rendered = [tuple(self._render(template, f)) for f in fields]
        todo = [q for q in dict.fromkeys(rendered) if q not in self._cache]
        self.cache_hits += len(rendered) - len(todo)
        for q, value in zip(todo, self._forward([list(q) for q in todo])):
            self._cache[q] = value
        result = []
        for q in rendered:
            if q in self._cache:
                self._cache.move_to_end(q)
                result.append(self._cache[q])
        # entries of this call evicted by the LRU before being read are recomputed (rare: huge batches)
        if len(result) != len(rendered):
            result = self._forward([list(q) for q in rendered])
        while self.cache_size and len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not self.cache_size:
            self._cache.clear()
        self.seconds += time.perf_counter() - start
        return result

    def score(self, prompt: str, steps: Sequence[str], truth: Sequence[float] | None = None) -> list[float]:
        """One score per step in [low, high]; `truth` is ignored (a real judge does not see it)."""
        fields = [{"prompt": prompt, "context": "\n".join(steps[:k]) or "(nothing yet)", "step": step}
                  for k, step in enumerate(steps)]
        self.calls += len(steps)
        return [self.low + (self.high - self.low) * q for q in self.yes_probability(self.template, fields)]

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Score many (prompt, steps) rows in one batched pass (the trainer's path)."""
        fields, sizes = [], []
        for prompt, steps in items:
            fields += [{"prompt": prompt, "context": "\n".join(steps[:k]) or "(nothing yet)", "step": s}
                       for k, s in enumerate(steps)]
            sizes.append(len(steps))
        self.calls += len(fields)
        flat = [self.low + (self.high - self.low) * q for q in self.yes_probability(self.template, fields)]
        out, at = [], 0
        for n in sizes:
            out.append(flat[at:at + n])
            at += n
        return out
