"""VLLMEngine on CPU against tests/fake_vllm.py (a FAKE of vLLM's interface, not vLLM).

The fake samples from a real tiny torch model, so logprobs, stop strings and weight syncs are
checked on real numbers: against the trainer's teacher-forced `token_logprobs` and against the
torch engine. What only runs with real vLLM on CUDA is listed in README "GPU (vLLM)".
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from credo.batch import build_batch
from credo.config import TrainConfig
from credo.errors import CredoError
from credo.gpu import attention_implementation, on_model_device, resolve_device, resolve_rollout_defaults
from credo.logprobs import token_logprobs
from credo.rollout.base import SamplingParams
from credo.rollout.multiturn import generate_multiturn
from credo.rollout.torch_engine import TorchEngine

ROOT = Path(__file__).resolve().parents[1]


def load_fake():
    spec = importlib.util.spec_from_file_location("fake_vllm", Path(__file__).with_name("fake_vllm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_vllm"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake(monkeypatch):
    module = load_fake()
    monkeypatch.setitem(sys.modules, "vllm", module)  # the engine's lazy `import vllm` gets the fake
    return module


@pytest.fixture
def policy(tiny_policy):
    """A private copy of the tiny policy (tests change its weights)."""
    return dataclasses.replace(tiny_policy, model=copy.deepcopy(tiny_policy.model))


def make_engine(policy, tmp_path, llm=None, **settings):
    from credo.rollout.vllm_engine import VLLMEngine, VLLMSettings

    settings = {"dtype": "float32", **settings}
    return VLLMEngine(policy.model, policy.tokenizer, VLLMSettings(**settings), work_dir=tmp_path, llm=llm)


def prompts_of(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count: one two"]


def teacher_forced(model, completions, temperature):
    """(sampler logprobs, trainer logprobs) [B, T] of the completions' batch, and its loss mask."""
    batch = build_batch(completions, [0.0] * len(completions), list(range(len(completions))), pad_id=0)
    with torch.no_grad():
        trainer = token_logprobs(model, batch.tokens, batch.attention_mask, batch.loss_mask, temperature=temperature)
    return batch.sampler_logprobs, trainer, batch.loss_mask


# -- parameter mapping ---------------------------------------------------------------------------


def test_sampling_params_map_one_to_one(fake):
    from credo.rollout.vllm_engine import vllm_sampling_params

    sp = vllm_sampling_params(fake, SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12,
                                                   stop=("</answer>", "\n\n")), n=4, seed=99, eos_ids=[2, 0])
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed) == (4, 0.7, 0.9, 5, 12, 99)
    assert sp.stop == ["</answer>", "\n\n"] and sp.include_stop_str_in_output is True
    assert sp.stop_token_ids == [0, 2] and sp.logprobs == 0 and sp.skip_special_tokens is True
    greedy = vllm_sampling_params(fake, SamplingParams(temperature=0.0, top_k=0), n=1, seed=0, eos_ids=[2])
    assert greedy.temperature == 0.0 and greedy.top_k == -1 and greedy.stop is None  # credo 0 = off -> -1


def test_request_seeds_are_deterministic_and_distinct():
    from credo.rollout.vllm_engine import request_seed

    seeds = [request_seed(7, p) for p in range(50)]
    assert seeds == [request_seed(7, p) for p in range(50)]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(8, 0) != request_seed(7, 0)


def test_finish_reason_mapping():
    from credo.rollout.vllm_engine import finish_reason

    assert [finish_reason(r) for r in ("stop", "length", "abort", None)] == ["stop", "length", "length", "length"]


def test_llm_arguments_per_placement():
    from credo.rollout.vllm_engine import VLLMSettings, llm_kwargs

    colocated = llm_kwargs(VLLMSettings(gpu_memory_utilization=0.25, sleep_mode=True), "/m", seed=3)
    assert colocated["enable_prefix_caching"] and colocated["logprobs_mode"] == "processed_logprobs"
    assert colocated["enable_sleep_mode"] and colocated["distributed_executor_backend"] == "external_launcher"
    assert colocated["load_format"] == "dummy" and colocated["gpu_memory_utilization"] == 0.25
    assert "max_model_len" not in colocated  # 0 = the model's own
    separate = llm_kwargs(VLLMSettings(placement="separate", max_model_len=1024), "/m", seed=3)
    assert not separate["enable_sleep_mode"] and "distributed_executor_backend" not in separate
    assert separate["max_model_len"] == 1024


def test_engine_without_vllm_says_how_to_install(monkeypatch, policy, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(CredoError, match=r"pip install -e \"\.\[gpu\]\""):
        make_engine(policy, tmp_path)


def test_importing_the_engine_does_not_import_vllm():
    code = "import sys, credo.rollout.vllm_engine, credo.gpu, credo.train.run; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- logprobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.7, 1.0, 0.0])
def test_logprobs_equal_trainer_teacher_forced(fake, policy, tmp_path, temperature):
    engine = make_engine(policy, tmp_path)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=6)
    groups = engine.generate(prompts_of(policy.tokenizer, PROMPTS), n=2, sampling=sampling, seed=5)
    assert [len(g) for g in groups] == [2, 2, 2]
    completions = [c for g in groups for c in g]
    # greedy logprobs are those of the untempered model (rollout/base.py)
    sampler, trainer, mask = teacher_forced(policy.model, completions, temperature if temperature > 0 else 1.0)
    assert mask.sum() == sum(len(c.token_ids) for c in completions)
    torch.testing.assert_close(sampler[mask], trainer[mask], atol=1e-4, rtol=0)
    # the shift convention: completion token k sits at batch position len(prompt) + k
    c = completions[0]
    assert c.logprobs[0] == pytest.approx(float(sampler[0, len(c.prompt_ids)]))


def test_raw_logprobs_mode_is_untempered(fake, policy, tmp_path):
    """Why the engine asks for processed_logprobs: vLLM's default mode ignores the temperature."""
    engine = make_engine(policy, tmp_path, logprobs_mode="raw_logprobs")
    groups = engine.generate(prompts_of(policy.tokenizer, PROMPTS), n=1,
                             sampling=SamplingParams(temperature=0.5, max_new_tokens=5), seed=1)
    completions = [g[0] for g in groups]
    sampler, at_one, mask = teacher_forced(policy.model, completions, 1.0)
    torch.testing.assert_close(sampler[mask], at_one[mask], atol=1e-4, rtol=0)
    _, tempered, _ = teacher_forced(policy.model, completions, 0.5)
    assert (sampler[mask] - tempered[mask]).abs().max() > 1e-2


def test_same_seed_same_samples(fake, policy, tmp_path):
    engine = make_engine(policy, tmp_path)
    prompts, sampling = prompts_of(policy.tokenizer, PROMPTS), SamplingParams(temperature=1.0, max_new_tokens=6)
    first = [c.token_ids for g in engine.generate(prompts, 3, sampling, seed=11) for c in g]
    again = [c.token_ids for g in engine.generate(prompts, 3, sampling, seed=11) for c in g]
    other = [c.token_ids for g in engine.generate(prompts, 3, sampling, seed=12) for c in g]
    assert first == again and first != other


def test_top_k_and_top_p_restrict_the_sampled_tokens(fake, policy, tmp_path):
    engine = make_engine(policy, tmp_path)
    prompt = prompts_of(policy.tokenizer, PROMPTS[:1])
    for c in engine.generate(prompt, 8, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=3), seed=2)[0]:
        greedy = engine.generate(prompt, 1, SamplingParams(temperature=0.0, max_new_tokens=3), seed=0)[0][0]
        assert c.token_ids == greedy.token_ids  # top_k = 1 is greedy
    wide = engine.generate(prompt, 8, SamplingParams(temperature=1.0, top_k=0, max_new_tokens=3), seed=2)[0]
    assert len({tuple(c.token_ids) for c in wide}) > 1  # top_k = 0 is off, not "keep 0"


# -- stop strings, finish reasons, parity with the torch engine -----------------------------------


def test_stop_strings_and_finish_reasons_match_the_torch_engine(fake, policy, tmp_path):
    engine, reference = make_engine(policy, tmp_path), TorchEngine(policy.model, policy.tokenizer)
    prompts = prompts_of(policy.tokenizer, PROMPTS)
    free = engine.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=10), seed=0)
    assert all(g[0].finish_reason == "length" and len(g[0].token_ids) == 10 for g in free
               if policy.tokenizer.eos_token_id not in g[0].token_ids)
    text = free[0][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the greedy completion is known to contain
    assert stop.strip(), f"greedy text too short to cut a stop string from: {text!r}"
    sampling = SamplingParams(temperature=0.0, max_new_tokens=10, stop=(stop,))
    stopped = engine.generate(prompts, 1, sampling, seed=0)
    assert stopped[0][0].finish_reason == "stop" and stop in stopped[0][0].text  # kept in the completion
    assert len(stopped[0][0].token_ids) < 10
    assert free[0][0].token_ids[: len(stopped[0][0].token_ids)] == stopped[0][0].token_ids
    torch_out = reference.generate(prompts, 1, sampling, seed=0)
    for ours, theirs in zip(stopped, torch_out):
        assert (ours[0].token_ids, ours[0].finish_reason, ours[0].text) == \
               (theirs[0].token_ids, theirs[0].finish_reason, theirs[0].text)
        assert ours[0].logprobs == pytest.approx(theirs[0].logprobs, abs=1e-4)


# -- weight sync, versions, sleep mode, LoRA -------------------------------------------------------


def fake_weights(engine) -> dict[str, torch.Tensor]:
    return dict(engine.llm._model.hf.named_parameters())


def assert_same_weights(engine, model):
    theirs = fake_weights(engine)
    for name, p in model.named_parameters():
        torch.testing.assert_close(theirs[name], p.detach(), atol=0, rtol=0, msg=name)


def no_disk_writes(monkeypatch, empty: Path):
    """Any model / tensor save raises, and the working directory is an empty folder to watch."""
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weight sync wrote to disk")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", refuse)
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setenv("TMPDIR", str(empty))


@pytest.mark.parametrize("in_process", [True, False])
def test_weight_sync_streams_weights_without_disk(fake, policy, tmp_path, monkeypatch, in_process):
    from credo.rollout.vllm_engine import model_folder

    folder = model_folder(policy.model, policy.tokenizer, None, tmp_path)
    llm = fake.LLM(folder, dtype="float32", enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                   in_process=in_process)
    engine = make_engine(policy, tmp_path, llm=llm, weight_sync_bucket_mb=1)
    assert_same_weights(engine, policy.model)  # built with dummy weights, then synced at version 0
    prompts, sampling = prompts_of(policy.tokenizer, PROMPTS), SamplingParams(temperature=0.8, max_new_tokens=5)
    before = engine.generate(prompts, 2, sampling, seed=3)  # fills the fake's prefix cache
    assert all(c.weight_version == 0 for g in before for c in g)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    no_disk_writes(monkeypatch, tmp_path / "cwd")
    rpcs = sum(1 for call in llm.calls if call[0] == "collective_rpc")
    engine.load_weights(policy.model, version=3)
    assert_same_weights(engine, policy.model)
    assert list((tmp_path / "cwd").iterdir()) == []
    assert sum(1 for call in llm.calls if call[0] == "collective_rpc") - rpcs > 1  # 1 MiB buckets
    assert llm.calls[-1] == ("reset_prefix_cache", None)
    after = engine.generate(prompts, 2, sampling, seed=3)
    completions = [c for g in after for c in g]
    assert all(c.weight_version == 3 for c in completions)
    sampler, trainer, mask = teacher_forced(policy.model, completions, 0.8)  # no stale prefix KV
    torch.testing.assert_close(sampler[mask], trainer[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("level", [1, 2])
def test_colocated_sleep_around_the_update(fake, policy, tmp_path, level):
    engine = make_engine(policy, tmp_path, sleep_mode=True, sleep_level=level)
    llm = engine.llm
    assert llm.enable_sleep_mode
    engine.offload()
    assert llm.sleeping == {"weights", "kv_cache"}
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(0.9)
    mark = len(llm.calls)
    engine.load_weights(policy.model, version=1)
    groups = engine.generate(prompts_of(policy.tokenizer, PROMPTS), 1, SamplingParams(temperature=0.9, max_new_tokens=4), seed=0)
    names = [c[0] for c in llm.calls[mark:]]
    assert names[0] == "wake_up" and llm.calls[mark][1] == ("weights",)
    assert names.index("reset_prefix_cache") < names.index("generate")
    assert llm.calls[names.index("generate") + mark - 1] == ("wake_up", ("kv_cache",))
    completions = [g[0] for g in groups]
    sampler, trainer, mask = teacher_forced(policy.model, completions, 0.9)  # level 2 reloaded every weight
    torch.testing.assert_close(sampler[mask], trainer[mask], atol=1e-4, rtol=0)


def test_prompt_budget_follows_a_shorter_vllm_context(fake, policy, tmp_path):
    from credo.train.run import max_prompt_tokens

    sampling = SamplingParams(max_new_tokens=16)
    full = max_prompt_tokens(policy.model, sampling, TorchEngine(policy.model, policy.tokenizer))
    assert full == policy.model.config.max_position_embeddings - 16
    assert max_prompt_tokens(policy.model, sampling, make_engine(policy, tmp_path, max_model_len=100)) == 84
    assert max_prompt_tokens(policy.model, sampling, make_engine(policy, tmp_path)) == full  # 0 = the model's


def test_separate_placement_never_sleeps(fake, policy, tmp_path):
    engine = make_engine(policy, tmp_path, placement="separate", sleep_mode=True)
    engine.offload()
    assert not engine.llm.enable_sleep_mode and engine.llm.sleeping == set()


def test_lora_policy_syncs_merged_weights_without_touching_the_trainer(fake, policy, tmp_path):
    """A real peft LoRA policy (credo/lora.py): vLLM receives W + (alpha / r) * B @ A for every adapted
    layer, computed here by hand from the lora_A / lora_B tensors, under the base names; the trainer's
    own weights stay bitwise the same (no in-place merge / unmerge) and are never marked merged."""
    from peft.tuners.lora import LoraLayer

    from credo.lora import attach_lora

    engine = make_engine(policy, tmp_path)
    model = copy.deepcopy(policy.model)
    lora = attach_lora(model, rank=2, alpha=6.0, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"],
                       base="tiny", seed=0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # B starts at zero: give it values so the merge is not vacuous
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.load_weights(model, version=2)
    assert engine.weight_version == 2
    theirs = fake_weights(engine)
    adapted = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert len(adapted) == 3 * model.config.num_hidden_layers
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name  # the trainer's weights are untouched
    assert not any(m.merged for m in adapted.values())
    for name, p in policy.model.named_parameters():
        module = name.rsplit(".", 1)[0]
        expected = p.detach()
        if module in adapted:
            a = before[f"{module}.lora_A.default.weight"]
            b = before[f"{module}.lora_B.default.weight"]
            expected = expected + b @ a * (6.0 / 2)
            assert not torch.equal(theirs[name], p.detach())
        torch.testing.assert_close(theirs[name], expected, atol=1e-6, rtol=0, msg=name)
    assert lora.peft_model.base_model.model is model


# -- multi-turn through the engine --------------------------------------------------------------------


@dataclasses.dataclass
class CountingTask:
    """A test environment: every action gets the observation "<obs>k</obs>" until max_turns."""

    name: str = "counting"
    max_turns: int = 3
    turn_stop: tuple[str, ...] = ("</call>",)

    def reset(self, example):
        return 0

    def step(self, state, action_text):
        return f"\n<obs>{state}</obs>\n", 0.1, state + 1

    def turn_truth(self, state):
        return 1.0


def test_multiturn_episodes_through_the_engine(fake, policy, tmp_path):
    from credo.tasks.base import Example

    engine = make_engine(policy, tmp_path)
    engine.load_weights(policy.model, version=4)
    task, sampling = CountingTask(), SamplingParams(temperature=0.9, max_new_tokens=4)
    examples = [Example(prompt=p, answer="", demonstration="") for p in PROMPTS[:2]]
    prompts = prompts_of(policy.tokenizer, PROMPTS[:2])
    groups = generate_multiturn(engine, policy.tokenizer, task, examples, prompts, 2, sampling, seed=1)
    completions = [c for g in groups for c in g]
    assert all(c.meta["turns"] == 3 and c.weight_version == 4 for c in completions)
    for c in completions:
        observed = [i for i, t in enumerate(c.trainable) if not t]
        assert observed and all(c.logprobs[i] == 0.0 for i in observed)
    sampler, trainer, mask = teacher_forced(policy.model, completions, 0.9)  # actions only, in context
    torch.testing.assert_close(sampler[mask], trainer[mask], atol=1e-4, rtol=0)
    greedy = dataclasses.replace(sampling, temperature=0.0)
    ours = generate_multiturn(engine, policy.tokenizer, task, examples, prompts, 1, greedy, seed=0)
    theirs = generate_multiturn(TorchEngine(policy.model, policy.tokenizer), policy.tokenizer, task,
                                examples, prompts, 1, greedy, seed=0)
    assert [g[0].token_ids for g in ours] == [g[0].token_ids for g in theirs]
    assert [g[0].trainable for g in ours] == [g[0].trainable for g in theirs]


# -- the CUDA path's defaults (resolution logic runs on CPU) ------------------------------------------


def test_vllm_resolves_to_tis_by_default():
    def TrainConfig():  # (the precision resolved: only the engine's defaults are under test here)
        from credo.config import TrainConfig as Config

        cfg = Config()
        cfg.model.precision = "fp32"
        return cfg

    cfg = TrainConfig()
    cfg.rollout.engine = "vllm"
    assert resolve_rollout_defaults(cfg) and cfg.rl.is_correction == "tis"
    chosen = TrainConfig()
    chosen.rollout.engine, chosen.rl.is_correction = "vllm", "icepop"
    assert resolve_rollout_defaults(chosen) == [] and chosen.rl.is_correction == "icepop"
    torch_engine = TrainConfig()
    assert resolve_rollout_defaults(torch_engine) == [] and torch_engine.rl.is_correction == "none"
    off = TrainConfig()
    off.rollout.engine, off.rollout.auto_is_correction = "vllm", False
    assert resolve_rollout_defaults(off) == [] and off.rl.is_correction == "none"


def test_device_and_attention_choice_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CredoError, match="model.device"):
        resolve_device("cuda")
    assert attention_implementation(torch.device("cpu")) == "sdpa"
    assert attention_implementation(torch.device("cpu"), "eager") == "eager"
    if importlib.util.find_spec("flash_attn") is None:
        assert attention_implementation(torch.device("cuda")) == "sdpa"
        with pytest.raises(CredoError, match="flash-attn"):
            attention_implementation(torch.device("cuda"), "flash_attention_2")


def test_forward_on_another_device_keeps_the_callers_autocast():
    # xpu stands in for cuda: the CPU build of torch accepts an xpu autocast, not a cuda one
    cpu, other = torch.device("cpu"), torch.device("xpu")
    with torch.autocast("cpu", dtype=torch.bfloat16), on_model_device(cpu, other):
        assert torch.is_autocast_enabled("xpu") and torch.get_autocast_dtype("xpu") == torch.bfloat16
    with on_model_device(cpu, other):
        assert not torch.is_autocast_enabled("xpu")
    with on_model_device(cpu, cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_train_end_to_end_on_the_fake(fake, tmp_path):
    """The run wiring: engine chosen by config, synced after warm-up and every RL step, tis recorded."""
    from credo.presets import tiny
    from credo.train.run import train

    cfg = tiny()
    cfg.rollout.engine, cfg.rollout.vllm_dtype, cfg.rollout.sleep_mode = "vllm", "float32", False
    cfg.rl.steps, cfg.task.eval_size, cfg.run.eval_base = 2, 4, False
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(tmp_path), "v", False
    summary = train(cfg)
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["rl"]["is_correction"] == "tis"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "rl"] == [0, 1]
    assert all(r["weight_sync_time"] >= 0 for r in rows if r["phase"] == "rl")
    # step s samples with the weights of s updates: the version stamped on its completions
    assert [r["policy_lag_max"] for r in rows if r["phase"] == "rl"] == [0.0, 0.0]


def test_gpu_benchmark_fails_with_one_clear_line_without_cuda():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_vllm.py")], capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "vLLM" in lines[0], out.stderr


def test_gpu_benchmark_report_marks_failed_parts(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_vllm", ROOT / "benchmarks" / "gpu_vllm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = {"device": "GPU X", "model": "m", "torch_engine": {"tokens_per_s": 1234.4},
              "vllm_engine": {"tokens_per_s": 9876.6}, "credo_rl_error": "Traceback ..."}
    bench.write(result, tmp_path / "r")
    md = (tmp_path / "r.md").read_text()
    assert "| torch engine tokens/s | 1234 |" in md and "| vLLM engine tokens/s | 9877 |" in md
    assert "| credo s/RL step (vLLM, colocated) | failed (see JSON) |" in md
    assert json.loads((tmp_path / "r.json").read_text())["credo_rl_error"] == "Traceback ..."
