"""FAKE vLLM: a small stand-in for the part of vLLM's offline API credo's VLLMEngine calls, so the
engine is tested on CPU. It is NOT vLLM and is never installed as `vllm`; a test puts it in
`sys.modules["vllm"]` for the duration of the test (the engine imports `vllm` lazily).

What it keeps from vLLM (names and semantics read from vllm-project/vllm: vllm/sampling_params.py,
vllm/outputs.py, vllm/logprobs.py, vllm/entrypoints/llm.py, vllm/v1/sample/sampler.py and
vllm/v1/sample/ops/topk_topp_sampler.py, vLLM 0.10-0.2x):
- `SamplingParams` with vLLM's field names and defaults (top_k 0 or -1 = off, temperature 0 =
  greedy, `include_stop_str_in_output`, `stop_token_ids`, `logprobs`=None/int, `seed`).
- `RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished)` and
  `CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs, finish_reason,
  stop_reason)`; `logprobs` is a list with one dict[token_id -> Logprob] per generated token.
- `logprobs_mode`: "raw_logprobs" (vLLM's default) = log_softmax(raw logits); "processed_logprobs"
  = log_softmax after temperature and top-k / top-p masking (the distribution sampled from).
  Greedy requests return log_softmax of the untempered logits in both modes.
- A request with n > 1 is n children; child j is seeded with seed + j, as vLLM's ParentRequest does.
- Stop strings end the sequence with finish_reason "stop" and stop_reason = the string; EOS and
  `stop_token_ids` end it with "stop"; the budget with "length". Generated tokens all stay in
  token_ids; `text` is cut after (include_stop_str_in_output) or before the stop string.
- A prefix cache: with enable_prefix_caching, the next-token logits at the end of a prompt are
  cached by its token ids and reused until `reset_prefix_cache()`, so stale KV after a weight
  update shows up exactly as it would in vLLM.
- Sleep mode: `sleep(level)` (1: weights kept, KV freed; 2: weights discarded, here set to NaN),
  `wake_up(tags)`; generating while asleep or loading weights into sleeping weights raises.
- Weights: `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)`
  (in-process), `collective_rpc(fn_or_name, args=...)` calling fn(worker, *args), `apply_model`.
  load_weights takes Hugging Face names and raises on a name the model does not have.
What it does not do: batching, paged KV, CUDA graphs, LoRA, tensor parallelism, bf16 kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

FAKE = True


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self):  # vLLM's own checks on the fields credo sets
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


class FakeModel:
    """vLLM's model object as the worker holds it: a torch module with load_weights(weights)."""

    def __init__(self, hf_model):
        self.hf = hf_model.eval()
        self.loads = 0  # how many load_weights calls (tests count syncs)

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"fake vLLM model has no parameter {name!r}")
            if not self.awake:
                raise RuntimeError("load_weights into sleeping weights (wake_up(tags=['weights']) first)")
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].dtype))
            loaded.add(name)
        self.loads += 1
        return loaded

    awake = True


@dataclass
class FakeWorker:
    model_runner: Any

    def get_model(self):
        return self.model_runner.model


@dataclass
class _Runner:
    model: FakeModel


@dataclass
class _Executor:
    driver_worker: FakeWorker | None


@dataclass
class _Engine:
    model_executor: _Executor


@dataclass
class LLM:
    """vllm.LLM(model, **engine args): builds the architecture from the folder's config.json."""

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    load_format: str = "auto"
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool | None = None
    enable_sleep_mode: bool = False
    logprobs_mode: str = "raw_logprobs"
    enforce_eager: bool = False
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    kwargs: dict = field(default_factory=dict)
    in_process: bool = True  # fake only: False hides driver_worker, as a multiprocess engine does

    def __post_init__(self):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(self.model)
        torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[self.dtype]
        with torch.random.fork_rng():
            torch.manual_seed(12345)  # "dummy" weights: random, deliberately not the trainer's
            hf = AutoModelForCausalLM.from_config(config).to(torch_dtype)
        self._model = FakeModel(hf)
        self._worker = FakeWorker(_Runner(self._model))
        self.llm_engine = _Engine(_Executor(self._worker if self.in_process else None))
        self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer or self.model)
        self._prefix: dict[tuple[int, ...], torch.Tensor] = {}
        self.sleeping: set[str] = set()
        self.calls: list[tuple] = []  # (method, details) of each call, for the tests
        self._context = self.max_model_len or getattr(config, "max_position_embeddings", 2048)

    # -- control ---------------------------------------------------------------------------------

    def sleep(self, level: int = 1):
        if not self.enable_sleep_mode:
            raise RuntimeError("Sleep mode is not enabled in the model config")
        self.calls.append(("sleep", level))
        self.sleeping = {"weights", "kv_cache"}
        self._prefix.clear()  # the KV cache is freed at every level
        self._model.awake = False
        if level == 2:  # weights discarded: whatever is read before a reload is garbage
            with torch.no_grad():
                for p in self._model.hf.parameters():
                    p.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        self.sleeping -= set(tags) if tags else set(self.sleeping)
        self._model.awake = "weights" not in self.sleeping

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache", None))
        self._prefix.clear()
        return True

    def collective_rpc(self, method: str | Callable, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None) -> list:
        self.calls.append(("collective_rpc", getattr(method, "__name__", method)))
        fn = getattr(self._worker, method) if isinstance(method, str) else (lambda *a, **k: method(self._worker, *a, **k))
        return [fn(*args, **(kwargs or {}))]

    def apply_model(self, func: Callable) -> list:
        return [func(self._model)]

    def get_tokenizer(self):
        return self._tokenizer

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def _next_logits(self, ids: list[int], prompt_len: int) -> torch.Tensor:
        key = tuple(ids)
        if len(ids) == prompt_len and self.enable_prefix_caching and key in self._prefix:
            return self._prefix[key]
        logits = self._model.hf(input_ids=torch.tensor([ids])).logits[0, -1].float()
        if len(ids) == prompt_len and self.enable_prefix_caching:
            self._prefix[key] = logits
        return logits

    @staticmethod
    def _truncate(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
        """vLLM's apply_top_k_top_p on one row: keep the k largest; then, sorted ascending, mask the
        tokens whose cumulative probability is <= 1 - top_p (the most likely token always stays)."""
        out = scaled.clone()
        if top_k > 0 and top_k < out.numel():
            kth = out.topk(top_k).values[-1]
            out[out < kth] = -math.inf
        if top_p < 1.0:
            ascending, order = out.sort()
            cumulative = ascending.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - top_p
            drop[-1] = False
            out[order[drop]] = -math.inf
        return out

    def _sample_one(self, prompt: list[int], sp: SamplingParams, generator: torch.Generator, index: int):
        if len(prompt) >= self._context:
            raise ValueError(f"prompt of {len(prompt)} tokens is longer than max_model_len {self._context}")
        eos = self._tokenizer.eos_token_id
        stops = set(sp.stop_token_ids or [])
        tokens: list[int] = []
        entries: list[dict[int, Logprob]] = []
        finish, stop_reason, text = "length", None, None
        while len(tokens) < (sp.max_tokens or 16) and len(prompt) + len(tokens) < self._context:
            logits = self._next_logits(prompt + tokens, len(prompt))
            greedy = sp.temperature < 1e-5
            if greedy:
                token = int(logits.argmax())
                returned = logits.log_softmax(-1)
            else:
                kept = self._truncate(logits / sp.temperature, sp.top_k, sp.top_p)
                token = int(torch.multinomial(kept.softmax(-1), 1, generator=generator))
                returned = kept.log_softmax(-1) if self.logprobs_mode == "processed_logprobs" else logits.log_softmax(-1)
            if self.logprobs_mode == "raw_logprobs":
                returned = logits.log_softmax(-1)
            tokens.append(token)
            if sp.logprobs is not None:
                rank = int((returned > returned[token]).sum()) + 1
                entry = {token: Logprob(float(returned[token]), rank, self._tokenizer.decode([token]))}
                for alt in returned.topk(sp.logprobs).indices.tolist() if sp.logprobs > 0 else []:
                    entry.setdefault(alt, Logprob(float(returned[alt]), None, None))
                entries.append(entry)
            if token in stops or (token == eos and not sp.ignore_eos):
                finish, stop_reason = "stop", (token if token in stops else None)
                break
            decoded = self._tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens)
            hit = [(decoded.find(s), s) for s in (sp.stop or []) if s in decoded]
            if hit:
                at, s = min(hit)
                finish, stop_reason = "stop", s
                text = decoded[: at + len(s)] if sp.include_stop_str_in_output else decoded[:at]
                break
        if text is None:
            text = self._tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens)
        cumulative = sum(e[t].logprob for e, t in zip(entries, tokens)) if sp.logprobs is not None else None
        return CompletionOutput(index, text, tokens, cumulative, entries if sp.logprobs is not None else None,
                                finish, stop_reason)

    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True, lora_request=None):
        if self.sleeping:
            raise RuntimeError(f"generate while asleep ({sorted(self.sleeping)}): call wake_up first")
        if not isinstance(prompts, list):
            prompts = [prompts]
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("the lengths of prompts and sampling_params must be the same")
        self.calls.append(("generate", len(prompts)))
        results = []
        for r, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
            ids = [int(t) for t in prompt["prompt_token_ids"]]
            # vLLM fans a request out into n children; child j samples with seed + j
            # (vllm/v1/engine/parallel_sampling.py::ParentRequest._get_child_sampling_params)
            base = sp.seed if sp.seed is not None else self.seed * 7919 + r
            outs = [self._sample_one(ids, sp, torch.Generator().manual_seed(base + j), j) for j in range(sp.n)]
            results.append(RequestOutput(str(r), None, ids, None, outs))
        return results
