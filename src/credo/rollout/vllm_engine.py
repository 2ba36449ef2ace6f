"""vLLM behind credo's `RolloutEngine` protocol (GPU only; `vllm` is imported when this engine is built).

Chosen with `rollout.engine = "vllm"`; the rest of the trainer does not know which engine samples.
What this module does, and which vLLM call does it (vLLM's offline `LLM` API, as of vllm 0.1x-0.3x):

- Prompts go in as token ids (`{"prompt_token_ids": [...]}`), so the tokens trained on are the
  tokens sampled from (no re-tokenization; multi-turn transcripts included).
- Sampling parameters are mapped one to one (`vllm_sampling_params`): temperature (0 = greedy),
  top_p, top_k (credo's 0 = off becomes vLLM's -1, valid in every vLLM version), max_tokens, stop
  strings kept in the output (`include_stop_str_in_output=True`), EOS ids as `stop_token_ids` (the
  same set the torch engine stops on), `logprobs=0` (only the sampled token's logprob), and a
  per-request seed derived from (call seed, prompt index), so a call is reproducible.
- Logprobs: vLLM's default `logprobs_mode="raw_logprobs"` returns log_softmax(raw logits), i.e. NOT
  temperature-scaled. credo's convention (rollout/base.py) is softmax(logits / T) before top-k /
  top-p, so the engine asks for `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2; TRL's
  colocate mode does the same): temperature-scaled, which equals credo's convention exactly when
  top_k = 0 and top_p = 1 (credo's RL defaults). With top-k / top-p on, vLLM's processed logprobs
  are under the truncated, renormalised distribution (the one actually sampled from); they then
  exceed credo's convention by -log(kept mass) per token. Greedy (T = 0) gives the untempered
  logprobs in both modes, as the convention says.
- `finish_reason`: vLLM's "stop" (EOS, a stop token or a stop string) -> "stop"; "length" and
  anything else (an aborted request) -> "length". `text` is the decode of `token_ids` without
  special tokens, exactly as the torch engine makes it.
- Prefix caching is on (`enable_prefix_caching=True`): a group of G samples and the turns of a
  multi-turn episode reuse the prompt's KV blocks. The cache holds KV computed with the OLD
  weights, so it is reset after every weight sync (`reset_prefix_cache()`).
- Weight sync (`load_weights`): the trainer's parameters are streamed into vLLM's model in buckets
  of `weight_sync_bucket_mb` through `collective_rpc(fn, args=(bucket,))`, where fn calls the
  worker model's `load_weights(weights=[(name, tensor), ...])` (vLLM maps Hugging Face names onto
  its fused layers itself). Nothing is written to disk. In-process executors (external_launcher,
  the colocated default) get the trainer's device tensors directly; a multiprocess engine (the
  separate-GPU placement) gets CPU copies in vLLM's dtype, pickled by vLLM (this needs
  VLLM_ALLOW_INSECURE_SERIALIZATION=1, which the engine sets before building `LLM`).
- LoRA (a model with peft adapters injected, detected by `hasattr(model, "peft_config")`;
  credo/lora.py): the merged weights W + s B A of the adapted layers are computed out of place, one
  layer at a time (`credo.lora.merged_weights`), and streamed under their base names (peft's
  "base_model.model." prefix and ".base_layer" removed, lora_* tensors skipped). Unlike TRL's
  merge_adapter / unmerge_adapter, the trainer's weights are never modified (an in-place merge and
  unmerge leaves W changed by float rounding). vLLM's `LoRARequest` is not used: it loads an adapter
  from a folder, and weight sync must not write one.
- Colocated with the trainer on one GPU (`rollout.vllm_placement = "colocate"`): vLLM takes
  `gpu_memory_utilization` of the GPU; with `rollout.sleep_mode` the trainer calls `offload()`
  before the update (`LLM.sleep(level)`: level 1 offloads weights to CPU and frees the KV cache,
  level 2 frees both), `load_weights` wakes the weights only (`wake_up(tags=["weights"])`) to load
  the new ones, and the next `generate` wakes the KV cache. Separate GPU
  (`rollout.vllm_placement = "separate"`): vLLM's engine process sees only GPU `rollout.vllm_gpu`
  (CUDA_VISIBLE_DEVICES is set for the child process it spawns) and never sleeps.
- `weight_version` of every completion is the `version` of the last `load_weights`.

vLLM needs a model folder to build its model. The engine passes the policy's own folder when it
has one (`source`), else writes config + tokenizer (no weights) once into `work_dir`; either way it
builds with `load_format="dummy"` and then loads the trainer's weights with `load_weights`, so the
engine always samples from exactly the trainer's weights (after warm-up, after a resume).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from credo.errors import CredoError
from credo.rollout.base import Completion, SamplingParams
from credo.rollout.weights import named_weights, request_seed

VLLM_INSTALL_HINT = 'install the GPU extra: pip install -e ".[gpu]"'
TORCH_TO_VLLM_DTYPE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_vllm():
    """The `vllm` module, or a CredoError saying how to install it (never at credo import time)."""
    try:
        import vllm  # noqa: PLC0415 - lazy on purpose: vLLM is a multi-GB GPU-only dependency
    except ImportError as exc:
        raise CredoError(f"rollout.engine = \"vllm\" needs vLLM, which is not installed ({exc}); "
                         f"{VLLM_INSTALL_HINT}") from exc
    return vllm


@dataclass(frozen=True)
class VLLMSettings:
    """The rollout.* fields the vLLM engine reads (see `RolloutConfig` for each)."""

    placement: str = "colocate"
    gpu: int = 1
    gpu_memory_utilization: float = 0.3
    sleep_mode: bool = True
    sleep_level: int = 1
    max_model_len: int = 0
    dtype: str = "bfloat16"
    logprobs_mode: str = "processed_logprobs"
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    weight_sync_bucket_mb: int = 256

    @classmethod
    def from_config(cls, rollout) -> "VLLMSettings":
        return cls(placement=rollout.vllm_placement, gpu=rollout.vllm_gpu,
                   gpu_memory_utilization=rollout.gpu_memory_utilization, sleep_mode=rollout.sleep_mode,
                   sleep_level=rollout.sleep_level, max_model_len=rollout.max_model_len,
                   dtype=rollout.vllm_dtype, logprobs_mode=rollout.logprobs_mode,
                   enable_prefix_caching=rollout.enable_prefix_caching, enforce_eager=rollout.enforce_eager,
                   weight_sync_bucket_mb=rollout.weight_sync_bucket_mb)


def vllm_sampling_params(vllm, sampling: SamplingParams, n: int, seed: int, eos_ids: Sequence[int]):
    """credo's SamplingParams -> vllm.SamplingParams for one prompt (n samples, its own seed)."""
    return vllm.SamplingParams(
        n=n,
        temperature=max(float(sampling.temperature), 0.0),  # vLLM: 0 = greedy, like credo
        top_p=float(sampling.top_p),
        top_k=int(sampling.top_k) if sampling.top_k > 0 else -1,  # credo 0 = off; vLLM -1 = off
        max_tokens=int(sampling.max_new_tokens),
        stop=list(sampling.stop) or None,
        include_stop_str_in_output=True,  # credo keeps the stop string in the completion
        stop_token_ids=sorted(eos_ids) or None,
        seed=int(seed),
        logprobs=0,  # only the sampled token's logprob
        skip_special_tokens=True,
    )


def finish_reason(reason: str | None) -> str:
    """vLLM's CompletionOutput.finish_reason -> credo's ("stop" or "length")."""
    return "stop" if reason == "stop" else "length"


def sampled_logprobs(output) -> list[float]:
    """logprobs [K] of the sampled tokens from CompletionOutput.logprobs (one dict[token_id ->
    Logprob] per token, holding the sampled token with logprobs=0). A missing entry -> NaN (the
    batch then leaves that token out of the loss, as for any non-finite sampler logprob)."""
    if output.logprobs is None:
        raise CredoError("vLLM returned no logprobs: the engine asks for logprobs=0, check the vLLM version")
    out = []
    for token, entry in zip(output.token_ids, output.logprobs):
        item = entry.get(int(token)) if entry else None
        out.append(float(item.logprob) if item is not None else float("nan"))
    return out


def buckets(weights: Iterator[tuple[str, torch.Tensor]], limit_bytes: int) -> Iterator[list]:
    """Group (name, tensor) pairs into lists of at most limit_bytes (a tensor larger than the limit
    travels alone), so a multiprocess sync never holds a second full copy of the model."""
    bucket, size = [], 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > limit_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def _load_on_worker(worker, weights) -> int:
    """Runs inside each vLLM worker (collective_rpc): load (name, tensor) pairs into its model."""
    model = worker.model_runner.model if hasattr(worker, "model_runner") else worker.get_model()
    model.load_weights(weights=weights)
    return len(weights)


def model_folder(model, tokenizer, source: str | None, work_dir: Path) -> str:
    """A folder vLLM can build the architecture from: the policy's own, else config + tokenizer
    written once into work_dir (no weights: they come from load_weights)."""
    if source and (Path(source) / "config.json").is_file():
        return str(source)
    folder = Path(work_dir) / "vllm_model"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


@contextlib.contextmanager
def _visible_gpu(settings: VLLMSettings):
    """Separate placement: the engine process vLLM spawns sees only GPU `settings.gpu`."""
    if settings.placement != "separate":
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(settings.gpu)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _single_process_env() -> None:
    """external_launcher runs vLLM in this process as rank 0 of a one-process group."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517")):
        os.environ.setdefault(key, value)


def llm_kwargs(settings: VLLMSettings, folder: str, seed: int) -> dict[str, Any]:
    """The keyword arguments of vllm.LLM for these settings (plain data: tested on CPU)."""
    colocate = settings.placement == "colocate"
    kwargs = dict(
        model=folder,
        tokenizer=folder,
        dtype=settings.dtype,
        seed=int(seed),
        load_format="dummy",  # weights come from the trainer (load_weights), never from disk
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enable_prefix_caching=settings.enable_prefix_caching,
        enable_sleep_mode=colocate and settings.sleep_mode,
        logprobs_mode=settings.logprobs_mode,
        enforce_eager=settings.enforce_eager,
    )
    if settings.max_model_len > 0:
        kwargs["max_model_len"] = settings.max_model_len
    if colocate:  # in-process worker: weight sync hands over the trainer's device tensors
        kwargs["distributed_executor_backend"] = "external_launcher"
    return kwargs


class VLLMEngine:
    """Samples with a vLLM `LLM`; see the module docstring for what is mapped how."""

    def __init__(self, model, tokenizer, settings: VLLMSettings, *, source: str | None = None,
                 work_dir: str | Path = ".", seed: int = 0, llm=None):
        self.vllm = import_vllm()
        self.settings = settings
        self.tokenizer = tokenizer
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(e for e in eos if e is not None)  # the torch engine's stop set
        self.weight_version = 0
        self.max_model_len = settings.max_model_len or None  # the trainer budgets prompts with it
        self.asleep: set[str] = set()  # vLLM memory tags now asleep ("weights", "kv_cache")
        if llm is None:
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc(callable)
            if settings.placement == "colocate":
                _single_process_env()
            folder = model_folder(model, tokenizer, source, Path(work_dir))
            with _visible_gpu(settings):
                llm = self.vllm.LLM(**llm_kwargs(settings, folder, seed))
        self.llm = llm
        self.load_weights(model, version=0)

    # -- weights ------------------------------------------------------------------------------------

    def _in_process(self) -> bool:
        executor = getattr(getattr(self.llm, "llm_engine", None), "model_executor", None)
        return getattr(executor, "driver_worker", None) is not None

    def load_weights(self, model, version: int = 0) -> None:
        """Stream the policy's current weights into vLLM (no disk), then stamp `version`."""
        if "weights" in self.asleep:  # weights must be mapped before they are written
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        in_process = self._in_process()
        target = getattr(torch, self.settings.dtype) if self.settings.dtype != "auto" else None
        limit = self.settings.weight_sync_bucket_mb * 2**20
        for bucket in buckets(named_weights(model), limit):  # (LoRA: merged out of place, credo/lora.py)
            if not in_process:  # pickled to the engine process: CPU copies in vLLM's dtype
                bucket = [(n, t.to("cpu", dtype=target or t.dtype)) for n, t in bucket]
            self.llm.collective_rpc(_load_on_worker, args=(bucket,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.weight_version = int(version)

    def offload(self) -> None:
        """Before the trainer's update (colocated + sleep mode): free vLLM's GPU memory."""
        if self.settings.placement == "colocate" and self.settings.sleep_mode and not self.asleep:
            self.llm.sleep(level=self.settings.sleep_level)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep = set()

    # -- sampling -----------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]:
        if not prompts:
            return []
        self._wake()
        params = [vllm_sampling_params(self.vllm, sampling, n, request_seed(seed, p), self.eos_ids)
                  for p in range(len(prompts))]
        requests = [{"prompt_token_ids": [int(t) for t in prompt]} for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for prompt, request in zip(prompts, outputs):
            if len(request.outputs) != n:
                raise CredoError(f"vLLM returned {len(request.outputs)} samples for a prompt, expected {n}")
            group = []
            for out in sorted(request.outputs, key=lambda o: o.index):
                tokens = [int(t) for t in out.token_ids]
                group.append(Completion(
                    prompt_ids=list(prompt), token_ids=tokens, logprobs=sampled_logprobs(out),
                    trainable=[True] * len(tokens), finish_reason=finish_reason(out.finish_reason),
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    weight_version=self.weight_version))
            result.append(group)
        return result
