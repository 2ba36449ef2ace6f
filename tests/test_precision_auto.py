"""model.precision "auto" (credo/gpu.py::resolve_precision): bf16 only where the CPU or GPU computes it
natively (emulated bf16 autocast measured ~30x slower than fp32 on an AMD EPYC without AVX512-BF16),
resolved before config.json is written, with a note."""

import torch

from credo.config import TrainConfig
from credo.gpu import cpu_has_native_bf16, resolve_precision, resolve_rollout_defaults

AMX = "processor : 0\nflags : fpu sse2 avx2 avx512f amx_bf16 amx_tile\n"
AVX512_BF16 = "flags : fpu avx2 avx512f avx512_bf16\n"
PLAIN = "flags : fpu sse2 avx2 avx512f avx512bw\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(AMX) and cpu_has_native_bf16(AVX512_BF16)
    assert not cpu_has_native_bf16(PLAIN) and not cpu_has_native_bf16("")


def test_auto_resolves_by_hardware_and_explicit_choices_stay():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, AMX) == "bf16"
    assert resolve_precision("auto", cpu, PLAIN) == "fp32"
    assert resolve_precision("bf16", cpu, PLAIN) == "bf16" and resolve_precision("fp32", cpu, AMX) == "fp32"


def test_the_default_is_auto_and_the_resolved_value_is_recorded(monkeypatch):
    import credo.gpu as gpu

    cfg = TrainConfig()
    assert cfg.model.precision == "auto"
    monkeypatch.setattr(gpu, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    cfg.model.device = "cpu"
    notes = resolve_rollout_defaults(cfg)
    assert cfg.model.precision == "fp32"
    assert any(n.startswith("model.precision = 'fp32' (this CPU has no native bf16") for n in notes)
    assert resolve_rollout_defaults(cfg) == []  # resolved once: nothing left to change
