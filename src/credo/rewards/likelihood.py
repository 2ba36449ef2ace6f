"""The `likelihood` reward term: PromptEcho's annotation-free likelihood reward, carried from images to text.

PromptEcho ("PromptEcho: Annotation-Free Reward from Vision-Language Models for Text-to-Image
Reinforcement Learning", arXiv 2604.12652) scores a generated image by showing it to a FROZEN
vision-language model with a guiding query ("describe this image") and reading the token-level
cross-entropy of the ORIGINAL PROMPT as the label: the better the image, the more likely the model
"echoes" the prompt. The text analog here: a frozen causal LM reads the prompt x, the completion y_i
and a guiding query, and the label is the example's reference answer a:

    r_i = (1 / |a|) sum_t log p(a_t | query(x, y_i), a_<t)            (normalize = "none", r_i <= 0)
    r_i = exp(r_i)   in [0, 1]  (the per-token geometric-mean probability)   (normalize = "exp")

The mean over answer tokens is PromptEcho's token-level cross-entropy with a mean reduction (what a
cross-entropy loss over the label tokens reports), negated; with a sum the reward would scale with the
answer's length. Within a GRPO group every completion shares the answer, so the choice only rescales a
group's rewards. For tasks whose answers no verifier can check (free-form answers): a completion that
reaches the answer makes the answer likely.

Query: `template` with the fields {prompt} and {completion} (default `DEFAULT_QUERY`), rendered as one
user message in the model's chat format; the answer tokens (tokenized alone, no special tokens, no
end-of-turn token) follow as the assistant's reply. Default model "smollm2" (the bundled model; "tiny" or
any local folder also work), loaded once per term on the CPU at its first call (validation builds the
term without loading anything). Batched (right-padded: a real token never sees a pad under the causal
mask, so a batched score equals the one-by-one score up to float rounding), no grad, and cached by
(prompt, completion, answer) in an LRU whose entries go into every RL checkpoint (state.json
"reward_terms"), so that `--resume` recomputes exactly what an uninterrupted run would. A query + answer
longer than `max_tokens` keeps its last `max_tokens` tokens (the oldest prompt text goes first); an
answer of max_tokens tokens or more is scored on its last max_tokens - 1 tokens (each scored token
needs one token before it). An example without a reference answer scores 0.0 (no label; the whole
group shares it, so it carries no advantage). Per-token log-probs are floored at -100 so that one
impossible token cannot make the reward -inf (which the mix would turn into 0, the best score).

Status: reconstructed. PromptEcho is a text-to-image method; the text version (the reference answer as
the label, the query template, the mean reduction, the exp option) is this module's assumption. Its
official code was not available; the formula above matches the paper's stated "token-level
cross-entropy of a frozen model with the prompt as the label".
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError

DEFAULT_QUERY = ("{prompt}\n\nHere is a response to this:\n{completion}\n\n"
                 "What is the final answer of this response? Reply with the answer only.")
NORMALIZE = ("none", "exp")
LOGP_FLOOR = -100.0  # a log-prob below this counts as this (see the module docstring)
MODEL_PRESETS = ("smollm2", "tiny")


def field_name(term: str, name: str) -> str:
    """How an error names a term's parameter: rl.reward_term_params['likelihood']['model']."""
    return f"rl.reward_term_params[{term!r}][{name!r}]"


def check_model_name(model: Any, where: str) -> None:
    """A model parameter is "smollm2", "tiny", a folder with config.json and weights, or an object with
    `model` and `tokenizer` (a loaded credo.models.Policy); checked without loading anything."""
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        return
    if not isinstance(model, str) or not model.strip():
        raise CredoError(f"{where}: expected 'smollm2', 'tiny' or a model folder, got {model!r}")
    if model in MODEL_PRESETS:
        if model == "smollm2":
            from credo.models import locate_bundled_gguf

            locate_bundled_gguf()  # (raises a CredoError saying how to install it; loads nothing)
        return
    folder = Path(model).expanduser()
    if (folder / "model" / "config.json").is_file():  # a credo checkpoint folder
        folder = folder / "model"
    if not (folder / "config.json").is_file():
        raise CredoError(f"{where}: {model!r} is neither 'smollm2', 'tiny' nor a model folder with config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise CredoError(f"{where}: model folder {folder} has no weight files (*.safetensors)")


def load_frozen(model: Any):
    """(model, tokenizer) on the CPU in eval mode, from a name / folder or a loaded Policy."""
    if isinstance(model, str):
        from credo.models import load_policy

        model = load_policy(model)
    model.model.eval()
    return model.model, model.tokenizer


class ScoreCache:
    """An LRU of floats keyed by a digest of text fields, with a JSON state (an RL checkpoint's).

    Keys are 32-hex-digit BLAKE2b digests of the JSON-encoded fields (a checkpoint stores ~50 bytes per
    entry, not the texts); values are floats, which JSON round-trips exactly. size 0 = no cache.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.entries: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def key(*fields: str) -> str:
        return hashlib.blake2b(json.dumps(fields).encode("utf-8"), digest_size=16).hexdigest()

    def get(self, key: str) -> float | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key: str, value: float) -> None:
        if not self.size:
            return
        self.entries[key] = float(value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def state(self) -> dict[str, Any]:
        return {"keys": list(self.entries), "values": list(self.entries.values())}  # oldest first

    def load_state(self, state: dict[str, Any]) -> None:
        self.entries = OrderedDict((str(k), float(v)) for k, v in zip(state["keys"], state["values"]))


def check_template(template: Any, allowed: Sequence[str], required: str, where: str) -> None:
    """The template is a str whose fields are among `allowed` and include `required`."""
    if not isinstance(template, str):
        raise CredoError(f"{where}: expected a string, got {type(template).__name__}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        template.format(**{n: "" for n in allowed})
    except (ValueError, KeyError, IndexError) as exc:
        raise CredoError(f"{where}: not a valid template ({type(exc).__name__}: {exc}); fields are "
                         f"{', '.join('{' + n + '}' for n in allowed)}, and a literal brace is written twice") from None
    unknown = sorted(names - set(allowed))
    if unknown or required not in names:
        raise CredoError(f"{where}: the template must use {{{required}}} and only "
                         f"{', '.join('{' + n + '}' for n in allowed)}; got fields {sorted(names)}")


def positive_int(value: Any, where: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise CredoError(f"{where}: expected an integer >= {lo}, got {value!r}")
    return value


def mean_answer_logprob(logprobs: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """(1 / n_b) sum_t logprobs[b, t] over the scored positions of each row; 0.0 for a row with none.

    logprobs [B, T] float, score_mask [B, T] bool -> [B] float32. Log-probs below LOGP_FLOOR count as it.
    """
    lp = logprobs.float().clamp(min=LOGP_FLOOR) * score_mask
    n = score_mask.sum(-1)
    return torch.where(n > 0, lp.sum(-1) / n.clamp(min=1), torch.zeros_like(lp[:, 0]))


def echo_reward(mean_logprob: float, normalize: str) -> float:
    """r from the mean answer log-prob: itself ("none") or exp of it ("exp").

    >>> echo_reward(-0.5, "none"), round(echo_reward(math.log(0.25), "exp"), 12)
    (-0.5, 0.25)
    """
    return math.exp(mean_logprob) if normalize == "exp" else float(mean_logprob)


class PromptEchoLikelihood:
    """The `likelihood` term (see the module docstring). Parameters (rl.reward_term_params["likelihood"]):

    model: "smollm2" (default), "tiny" or a local model folder (or, from Python, a loaded Policy);
    template: the guiding query with {prompt} and {completion} (default DEFAULT_QUERY);
    normalize: "none" (mean log-prob, <= 0) or "exp" (its exp, in [0, 1]);
    batch_size: rows per forward pass (8); max_tokens: query + answer window (1024);
    cache_size: LRU entries kept (and checkpointed) across steps (4096; 0 = none).
    """

    def __init__(self, *, model: Any = "smollm2", template: str = DEFAULT_QUERY, normalize: str = "none",
                 batch_size: int = 8, max_tokens: int = 1024, cache_size: int = 4096):
        check_model_name(model, field_name("likelihood", "model"))
        check_template(template, ("prompt", "completion"), "completion", field_name("likelihood", "template"))
        if normalize not in NORMALIZE:
            raise CredoError(f"{field_name('likelihood', 'normalize')}: expected one of {', '.join(NORMALIZE)}, "
                             f"got {normalize!r}")
        self.model_spec, self.template, self.normalize = model, template, normalize
        self.batch_size = positive_int(batch_size, field_name("likelihood", "batch_size"))
        self.max_tokens = positive_int(max_tokens, field_name("likelihood", "max_tokens"), lo=2)
        self.cache = ScoreCache(positive_int(cache_size, field_name("likelihood", "cache_size"), lo=0))
        self._model = self._tokenizer = None
        self.forward_rows = 0  # rows that went through the model
        self.cache_hits = 0

    def _load(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = load_frozen(self.model_spec)

    def encode(self, prompt: str, completion: str, answer: str) -> tuple[list[int], int]:
        """(token ids of query + answer, left-truncated to max_tokens; n = how many of the last ids are
        scored answer tokens)."""
        from credo.judges.llm import user_turn_ids

        self._load()
        query = user_turn_ids(self._tokenizer, self.template.format(prompt=prompt, completion=completion))
        label = list(self._tokenizer.encode(answer, add_special_tokens=False)) if answer else []
        ids = (query + label)[-self.max_tokens:]
        return ids, min(len(label), len(ids) - 1)

    @torch.no_grad()
    def mean_logprobs(self, rows: Sequence[tuple[list[int], int]]) -> list[float]:
        """Mean answer log-prob of each (ids, n) row, in right-padded batches of batch_size."""
        from credo.logprobs import token_logprobs

        self._load()
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(len(ids) for ids, _ in chunk)
            tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            scored = torch.zeros((len(chunk), width), dtype=torch.bool)
            for i, (ids, n) in enumerate(chunk):
                tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[i, : len(ids)] = 1
                scored[i, len(ids) - n: len(ids)] = True  # the last n tokens are the answer's (n may be 0)
            logprobs = token_logprobs(self._model, tokens, mask, scored)
            out.extend(float(x) for x in mean_answer_logprob(logprobs, scored))
            self.forward_rows += len(chunk)
        return out

    def __call__(self, inputs) -> list[float]:
        if inputs.prompts is None:
            raise ValueError("the likelihood term needs the prompts (TermInputs.prompts)")
        keys = [ScoreCache.key(str(p), str(c), str(a)) for p, c, a in zip(inputs.prompts, inputs.texts, inputs.answers)]
        values: dict[str, float] = {}
        todo: dict[str, tuple[str, str, str]] = {}
        for key, p, c, a in zip(keys, inputs.prompts, inputs.texts, inputs.answers):
            hit = self.cache.get(key)
            if hit is not None:
                values[key] = hit
                self.cache_hits += 1
            elif key not in todo:
                todo[key] = (str(p), str(c), str(a))
        labelled = [k for k, (_, _, a) in todo.items() if a]  # (no reference answer: 0.0, no forward pass)
        rows = [self.encode(*todo[k]) for k in labelled]
        for key, (_, n), mean in zip(labelled, rows, self.mean_logprobs(rows) if rows else []):
            values[key] = echo_reward(mean, self.normalize) if n > 0 else 0.0
        for key in todo:
            values.setdefault(key, 0.0)
            self.cache.put(key, values[key])
        return [values[k] for k in keys]

    def state(self) -> dict[str, Any]:
        return {"cache": self.cache.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.cache.load_state(state["cache"])


CATALOG = [
    Entry("likelihood", "mean log-likelihood of the reference answer under a frozen model reading prompt + completion "
          "+ a guiding query (PromptEcho's echo reward, text analog; normalize exp -> [0, 1])",
          "PromptEcho: Annotation-Free Reward from Vision-Language Models for Text-to-Image Reinforcement Learning "
          "(arXiv 2604.12652)", "reconstructed", "reference answers; a frozen model folder (default smollm2)",
          training="works (text analog of an image method: the label is the reference answer, not the prompt)"),
]
