"""The CUDA training path: device choice, attention kernel, batches on the device, engine choice,
and the defaults a vLLM run resolves to.

- Device (`model.device`): "auto" = cuda when `torch.cuda.is_available()`, else cpu. The policy is
  moved there before anything copies it, so the reference model (a deepcopy) and the critic
  (built on the policy, then `.to(device)`) live there too. Rollout batches stay on the CPU, where
  all credit and selection math was written and tested: the forward passes
  (`logprobs.policy_outputs`, `critic.ValueModel.forward`) move their inputs to the model's
  device and return [B, T] results on the batch's device (autograd flows through the copy), so
  the only per-step transfers are tokens in and [B, T] logprobs / entropies / values out.
- Precision: `model.precision = "bf16"` is bf16 autocast around every forward (the torch engine's
  `autocast_context` takes the device type, so the same code autocasts on CPU and CUDA); weights
  and AdamW state stay fp32. "auto" (the default) resolves to "bf16" where the hardware computes in
  bf16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX-BF16) and to "fp32" elsewhere:
  on an AMD EPYC without AVX512-BF16, a SmolLM2 forward + backward under bf16 autocast took 167 s
  against 5.4 s in fp32 (emulated bf16 is about 30x slower).
- Attention (`model.attn_implementation`): "auto" = flash_attention_2 on CUDA when the flash-attn
  package is importable, else sdpa (fused attention in PyTorch, on CPU and GPU).
- The sampler/trainer mismatch: vLLM's kernels (bf16 weights, other reductions, CUDA graphs) do not
  give the trainer's logprobs, so with `rollout.engine = "vllm"` and `rl.is_correction` left at
  "none", the resolved config uses "tis" (truncated importance sampling, Yao et al. 2025, "Your
  Efficient RL Framework Secretly Brings You Off-Policy RL Training"), unless
  `rollout.auto_is_correction = false`. The resolved value is what config.json records.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch

from credo.errors import CredoError


def resolve_device(name: str) -> torch.device:
    """model.device -> a torch.device ("auto": cuda if available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CredoError("model.device = \"cuda\" but no CUDA GPU is visible to torch "
                         f"(torch {torch.__version__}); use model.device = \"auto\" or \"cpu\"")
    if name not in ("cpu", "cuda"):
        raise CredoError(f"unknown model.device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def attention_implementation(device: torch.device, requested: str = "auto") -> str:
    """The attention kernel for `device`: an explicit choice as given, else flash_attention_2 on
    CUDA with flash-attn installed, else sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise CredoError("model.attn_implementation = \"flash_attention_2\" needs the flash-attn "
                             "package (pip install flash-attn); or use \"sdpa\"")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def place_policy(model: torch.nn.Module, device: torch.device, attn: str) -> torch.nn.Module:
    """Move the model to `device` and switch its attention kernel (transformers' setter when it
    has one, else the config attribute the attention layers read)."""
    setter = getattr(model, "set_attn_implementation", None)
    if getattr(model.config, "_attn_implementation", None) == attn:
        pass  # already so (the CPU default): nothing to switch
    elif callable(setter):
        setter(attn)
    else:
        model.config._attn_implementation = attn
    return model.to(device)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def on_model_device(home: torch.device, device: torch.device):
    """Run a forward on `device` under the autocast the caller set for `home` (the batch's device):
    callers write `autocast_context(dtype, batch.tokens.device)`, which on the CUDA path is a CPU
    autocast, and CPU autocast does not touch CUDA kernels."""
    if device == home or not torch.is_autocast_enabled(home.type):
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.get_autocast_dtype(home.type)):
        yield


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bf16 natively (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, assume emulated (fp32 is never the slow choice)
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """model.precision -> "bf16" or "fp32" ("auto": bf16 only where the hardware has it natively)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16(cpuinfo) else "fp32"


def resolve_rollout_defaults(cfg) -> list[str]:
    """Fill the defaults that depend on the engine and the hardware (in place); returns one note per change."""
    notes = []
    if cfg.model.precision == "auto":
        cfg.model.precision = resolve_precision("auto", resolve_device(cfg.model.device))
        why = "native bf16 on this hardware" if cfg.model.precision == "bf16" else \
            "this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 autocast would be emulated, ~30x slower"
        notes.append(f"model.precision = {cfg.model.precision!r} ({why}; set model.precision to choose)")
    if cfg.rollout.engine == "vllm" and cfg.rl.is_correction == "none" and cfg.rollout.auto_is_correction:
        cfg.rl.is_correction = "tis"
        notes.append("rl.is_correction = \"tis\" (the vLLM default: vLLM's logprobs differ from the "
                     "trainer's; set rollout.auto_is_correction = false to keep \"none\")")
    if cfg.rollout.max_staleness > 0 and cfg.rl.is_correction == "none" and cfg.rollout.auto_is_correction:
        cfg.rl.is_correction = "tis"
        notes.append(f"rl.is_correction = \"tis\" (rollout.max_staleness {cfg.rollout.max_staleness}: rollouts lag "
                     f"the trainer; set rollout.auto_is_correction = false to keep \"none\")")
    return notes


def make_engine(cfg, model, tokenizer, source: str | None, dtype: torch.dtype | None, work_dir: Path):
    """The rollout engine `rollout.engine` names; vLLM is imported only when it is chosen."""
    if cfg.rollout.engine == "torch":
        from credo.rollout.torch_engine import TorchEngine

        return TorchEngine(model, tokenizer, autocast_dtype=dtype)
    if cfg.rollout.engine == "vllm":
        from credo.rollout.vllm_engine import VLLMEngine, VLLMSettings

        return VLLMEngine(model, tokenizer, VLLMSettings.from_config(cfg.rollout), source=source,
                          work_dir=work_dir, seed=cfg.run.seed)
    if cfg.rollout.engine == "ray":
        from credo.rollout.ray_engine import RayEngine, WorkerSpec

        spec = WorkerSpec(cfg.model.name, seed=cfg.run.seed, autocast_dtype=dtype,
                          fp32_lm_head=cfg.model.fp32_lm_head, threads=cfg.rollout.ray_threads)
        engine = RayEngine(spec, workers=cfg.rollout.ray_workers, address=cfg.rollout.ray_address)
        engine.load_weights(model, version=0)  # the workers evaluate the base model with the trainer's weights
        return engine
    raise CredoError(f"unknown rollout.engine {cfg.rollout.engine!r}; valid: torch, vllm, ray")
