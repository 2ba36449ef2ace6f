"""Training configuration: component dataclasses, Python presets, TOML files and dotted overrides.

Precedence (later wins): preset -> config file -> command-line overrides such as
`--rl.clip_high 0.28` or `--task.params.difficulty 3`. The resolved config is written to the run
folder as `config.json` and can be passed back with `--config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from credo.errors import CredoError


@dataclass(frozen=True)
class Range:
    """The valid interval of a numeric config field, declared next to the field:

        lr: Annotated[float, Range(lo=0, lo_open=True)] = 1.5e-5

    `lo` / `hi` = None leaves that side unbounded; `*_open` excludes the bound itself. NaN and
    infinities are never in range. Checked for every field where the config is built (`check_ranges`)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False


@dataclass(frozen=True)
class OneOf:
    """A string field that must be one of a fixed set of names (for registries, the registry checks)."""

    choices: tuple[str, ...]


@dataclass(frozen=True)
class Text:
    """A free string field: `non_empty` refuses "" (and blanks); `pattern` (a full-match regex) and its
    `meaning` (for the error) constrain the form, e.g. rl.judge's "prm:<folder>"."""

    non_empty: bool = False
    pattern: str | None = None
    meaning: str = ""


@dataclass(frozen=True)
class SubsetOf:
    """A list-of-strings field whose entries must be distinct names from a fixed set (run.trackers):
    each name at most once, since a repeated entry would mean the same backend started twice."""

    choices: tuple[str, ...]


MARKERS = (Range, OneOf, Text, SubsetOf)


@dataclass
class ModelConfig:
    name: Annotated[str, Text(non_empty=True)] = "smollm2"
    """Model: "smollm2" (bundled), "tiny" (random, for tests) or a local Hugging Face folder."""
    precision: Annotated[str, OneOf(("auto", "bf16", "fp32"))] = "auto"
    """"bf16": bf16 autocast for forward/backward and sampling (weights and AdamW state stay fp32);
    3-4x faster on CPUs with AVX512-BF16 or AMX, about 30x SLOWER where bf16 is emulated. "fp32":
    exact. "auto": bf16 where the hardware has it natively (credo/gpu.py::resolve_precision), else
    fp32; config.json records the resolved value."""
    threads: Annotated[int, Range(lo=0)] = 0
    """torch intra-op threads; 0 keeps torch's default (one per core)."""
    device: Annotated[str, OneOf(("auto", "cpu", "cuda"))] = "auto"
    """Where the policy, reference and critic live and train: "auto" = "cuda" when a GPU is visible,
    else "cpu" (see credo/gpu.py)."""
    attn_implementation: Annotated[str, OneOf(("auto", "eager", "sdpa", "flash_attention_2"))] = "auto"
    """Attention kernel of the trainer's model: "auto" = flash_attention_2 on CUDA when the
    flash-attn package is installed, else sdpa (PyTorch's fused attention, CPU and GPU)."""
    fp32_lm_head: bool = False
    """Compute the output head (logits) in fp32 even under bf16 autocast, for exact-er logprobs,
    ratios and entropies (credo/memory.py); the torch engine samples with the same head."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of storing them (Hugging Face
    gradient checkpointing, use_reentrant=False): less memory, more time (benchmarks/grad_checkpointing.py)."""
    lora_rank: Annotated[int, Range(lo=0)] = 0
    """LoRA adapter rank r (credo/lora.py, through peft); 0 = off (full fine-tuning). With r > 0 only the
    adapters train (warm-up and RL), the reference model is the base with adapters disabled (no second
    copy), checkpoints hold the adapters only, and `credo export` merges them into a plain folder."""
    lora_alpha: Annotated[float, Range(lo=0, lo_open=True)] = 16.0
    """LoRA scaling numerator: the update is (lora_alpha / lora_rank) * B @ A (peft's default 8; 16 = 2r at r = 8)."""
    lora_dropout: Annotated[float, Range(lo=0, hi=1, hi_open=True)] = 0.0
    """Dropout on the adapter's input during training (peft's lora_dropout); 0 keeps updates deterministic."""
    lora_target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Names (last dotted component) of the linear layers that get adapters; the default is every
    attention and MLP projection of a Llama-style model (SmolLM2, the tiny preset). Unknown names are refused."""


@dataclass
class TaskConfig:
    name: Annotated[str, Text(non_empty=True)] = "arith"
    """A registered task (`credo list tasks`) or a 'package.module:Class' import path."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task, e.g. {"difficulty": 2} or {"path": "data.jsonl"}."""
    eval_size: Annotated[int, Range(lo=1)] = 500
    """Held-out problems scored by greedy decoding before warm-up, after warm-up and after RL."""
    eval_every: Annotated[int, Range(lo=0)] = 0
    """Also score the held-out set every N RL steps (phase "eval", stage "rl_step" rows in metrics.jsonl:
    the held-out curve of `credo compare` / `credo report`). 0 = only before and after RL."""
    eval_batch_size: Annotated[int, Range(lo=1)] = 100
    """Prompts per generation call during evaluation."""
    eval_samples: Annotated[int, Range(lo=0)] = 0
    """K > 0: every held-out evaluation also samples K completions per prompt (sampling.* settings)
    and reports pass@k, maj@k (k = 1, K and the powers of two between) and mean@K beside greedy
    accuracy (`train/sampled_eval.py`); 0 = greedy only."""


@dataclass
class SamplingConfig:
    temperature: Annotated[float, Range(lo=0)] = 1.0
    """Sampling temperature of RL rollouts (evaluation is greedy)."""
    top_p: Annotated[float, Range(lo=0, hi=1, lo_open=True)] = 1.0
    """Nucleus sampling mass; 1.0 = off."""
    top_k: Annotated[int, Range(lo=0)] = 0
    """Keep the k most likely tokens; 0 = off."""
    max_new_tokens: Annotated[int, Range(lo=1)] = 16
    """Completion budget of rollouts and evaluation."""
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    """Strings that end a completion (kept in it)."""


@dataclass
class WarmupConfig:
    steps: Annotated[int, Range(lo=0)] = 20
    """Supervised warm-up (cold start) steps on task demonstrations; 0 skips the stage."""
    batch_size: Annotated[int, Range(lo=1)] = 16
    """Demonstrations per step."""
    lr: Annotated[float, Range(lo=0, lo_open=True)] = 3e-5
    """AdamW learning rate (linear warm-up over the first 10% of steps, then cosine decay)."""
    demonstrations: Annotated[str, Text()] = ""
    """A JSONL / Parquet / CSV file of {"prompt", "demonstration"} rows (an optional "answer"), e.g. a demos
    stage's demonstrations.jsonl: the warm-up trains on them, in seeded epochs, instead of the task's own
    demonstrations (the task still scores the held-out set). Empty = the task's. In a pipeline, "@<stage>"
    names an earlier demos stage's file."""


@dataclass
class RLConfig:
    recipe: Annotated[str, Text()] = ""
    """A named method (credo list recipes; credo/recipes.py) applied after the preset and before the
    config file and command-line overrides, so explicit fields win. Empty = none. `credo train --recipe
    NAME` sets it too. Without a recipe, choosing rl.objective alone also applies its paper's estimator /
    reduction pairing to the fields left unset (recipes.py::PAIRINGS), with a note."""
    steps: Annotated[int, Range(lo=0)] = 80
    """RL steps (each: sample, score, credit, update)."""
    prompts_per_step: Annotated[int, Range(lo=1)] = 16
    """Distinct prompts sampled per step."""
    group_size: Annotated[int, Range(lo=1)] = 4
    """Completions per prompt (G)."""
    prompt_pool: Annotated[int, Range(lo=0)] = 0
    """Training prompts to draw from. 0: fresh prompts every step (step s takes a fixed slice of a
    seeded list, none repeats). N > 0: a pool of N prompts visited in seeded shuffled epochs (each
    prompt once per epoch, as a dataset), so prompts repeat and stateful credit (SPO's per-prompt
    tracker) revisits them; the schedule depends only on (run.seed, step), so resume stays exact."""
    spo_prioritized: bool = False
    """With a stateful estimator that offers sampling weights (rl.credit = "spo") and prompt_pool > 0:
    draw each step's prompts from the pool with probability proportional to SPO's
    sqrt(p_hat (1 - p_hat)) + 0.05 (without replacement unless prompts_per_step > prompt_pool), with a
    generator seeded from (run.seed, step); the tracker is checkpointed, so resume stays exact."""
    objective: Annotated[str, Text(non_empty=True)] = "grpo"
    """Policy objective (`credo list objectives`)."""
    credit: Annotated[str, Text(non_empty=True)] = "grpo"
    """Advantage estimator (`credo list credit`)."""
    lr: Annotated[float, Range(lo=0, lo_open=True)] = 1.5e-5
    """AdamW peak learning rate."""
    weight_decay: Annotated[float, Range(lo=0)] = 0.0
    """AdamW weight decay."""
    lr_warmup_steps: Annotated[int, Range(lo=0)] = 2
    """Linear learning-rate warm-up, in optimizer steps."""
    lr_decay: Annotated[str, OneOf(("cosine", "linear", "constant"))] = "cosine"
    """"cosine", "linear" or "constant" decay after the warm-up."""
    min_lr_ratio: Annotated[float, Range(lo=0, hi=1)] = 0.1
    """Final learning rate as a fraction of the peak."""
    snr_lr: bool = False
    """OBLR-PO's learning rate from the gradient signal-to-noise ratio (any rl.credit; OBLR-PO as the
    paper states it is rl.credit = "oblr" with rl.snr_lr = true). Each step's minibatch gradients
    (before clipping; needs rl.minibatches >= 2) give SNR = ||mean g||^2 / mean ||g - mean g||^2, and
    the next step's lr is the schedule's lr times clamp(EMA(SNR) / first SNR, 0.1, 2)
    (`oblr_lr_update`); the state is checkpointed, so resume stays exact. Logs snr, lr_scale, lr_base.
    Off by default: the schedule is reconstructed, not the paper's confirmed one."""
    clip_low: Annotated[float | None, Range(lo=0)] = None
    """Clip range below 1 (ratio floor 1 - clip_low); unset = the objective's paper default
    (0.2 for GRPO / PPO, 3e-4 for GSPO, none for CISPO)."""
    clip_high: Annotated[float | None, Range(lo=0)] = None
    """Clip range above 1 (ratio cap 1 + clip_high); unset = the objective's paper default
    (0.2 for GRPO, 0.28 for DAPO's clip-higher, 4e-4 for GSPO)."""
    kl_coef: Annotated[float | None, Range(lo=0)] = None
    """Weight of the KL penalty to a frozen reference model (the policy as RL starts); unset = the
    objective's own default (0 for GRPO). A reference model is loaded only when this is > 0 or the
    objective declares it needs one."""
    kl_estimator: Annotated[str, Text(non_empty=True)] = "k3"
    """KL estimator: k1, k2 or k3."""
    entropy_coef: Annotated[float, Range()] = 0.0
    """Entropy bonus composable with any objective: the loss becomes objective - entropy_coef * H,
    reduced the same way (verl's entropy_coeff); > 0 makes the trainer compute a differentiable entropy.
    With rl.entropy_control set, the controller's initial coefficient."""
    entropy_control: Annotated[str, OneOf(("none", "adaptive"))] = "none"
    """Move the entropy coefficient with training (objectives/entropy_control.py): "adaptive" =
    Skywork-OR1's control as in TRL (+- delta per optimizer step around a target entropy, applied only at
    or below it; its state is checkpointed). "none" = the fixed rl.entropy_coef."""
    entropy_control_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the controller (adaptive: target 0.2, delta 0.005, coef_min 0, coef_max 1)."""
    loss_reduction: Annotated[str, Text(non_empty=True)] = "token_mean"
    """token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm, token_sum."""
    minibatches: Annotated[int, Range(lo=1)] = 2
    """Optimizer steps per rollout batch (each on a disjoint minibatch), so old != new logprobs."""
    epochs: Annotated[int, Range(lo=1)] = 1
    """Passes over the rollout batch."""
    micro_batch_size: Annotated[int, Range(lo=1)] = 32
    """Sequences per forward/backward (memory only: gradients are accumulated exactly)."""
    max_grad_norm: Annotated[float, Range(lo=0, lo_open=True)] = 1.0
    """Gradient clipping by global norm."""
    skip_zero_advantage: bool = True
    """Leave out of the update the sequences whose advantage is zero on every token (e.g. groups
    that all succeeded or all failed). With kl_coef = 0 they carry no gradient, so this only saves
    their forward/backward; the token count of the reduction then covers the kept tokens, as with
    DAPO's dynamic sampling."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: keep only the groups whose task rewards differ (not all correct, not
    all wrong) and refill the step with further prompts' groups, drawn from the run's prompt list by
    a generator seeded from (run.seed, step, round), so resume stays exact. Logs sampling_rounds,
    groups_discarded, groups_kept, refill_time (select/dynamic_sampling.py)."""
    max_sampling_rounds: Annotated[int, Range(lo=0)] = 3
    """With dynamic_sampling: extra generation rounds allowed per step to refill the batch with mixed
    groups (each round samples prompts_per_step prompts); when they run out the step goes on with the
    mixed groups it has. verl's algorithm.filter_groups.max_num_gen_batches counts all rounds and
    raises at the limit (its DAPO scripts: 10, i.e. 9 extra); 3 here keeps a CPU step affordable."""
    overlong_buffer: Annotated[int, Range(lo=0)] = 0
    """DAPO's soft overlong punishment: the last N tokens before sampling.max_new_tokens where the
    penalty falls linearly from 0 to -overlong_penalty_factor, by completion length in tokens (a
    multi-turn transcript counts all its tokens); added to the task reward before credit and logged
    (overlong_penalty_mean, overlong_fraction). 0 = off (the paper: 4096 of 20480)."""
    overlong_penalty_factor: Annotated[float, Range(lo=0)] = 1.0
    """Penalty at the generation limit with overlong_buffer > 0 (DAPO: 1.0)."""
    curriculum: Annotated[str, OneOf(("none", "linear", "adaptive", "context_length", "tarot"))] = "none"
    """Which difficulty level each RL step's prompts come from (train/curriculum.py; `credo list curricula`):
    "linear" = each level of rl.curriculum_params.levels in turn (the order given: easy-to-hard or
    hard-first), "adaptive" = the next level once the recent train accuracy reaches a threshold,
    "context_length" = QwenLong-L1's phases by prompt length (train/context_schedule.py), "tarot" =
    TAROT's schedule of test-tier weights in the code task's reward (prompts as usual; train/tarot.py)."""
    curriculum_params: dict[str, Any] = field(default_factory=dict)
    """{"levels": [1, 2, 3]} plus, optionally, "param" (the task's level parameter, default "difficulty"),
    and for "adaptive" "threshold" (0.8) and "window" (4 steps). For "context_length": "levels" =
    increasing prompt-token limits ([128, 256, 512]), "include_shorter" (false: phase k takes
    L_{k-1} < tokens <= L_k), "retrospective" (false) and "retro_ratio" (0.25 of each step's prompts).
    For "tarot" (needs task.params.tiers = true), all optional: "policy" ("auto" | "easy_to_hard" |
    "hard_first"), "threshold" (0.5: auto picks hard_first at or above this starting pass rate),
    "weights" ({basic, intermediate, complex, edge}: 0.15, 0.15, 0.35, 0.35), "boundaries" ([0.2, 0.4,
    0.6] of the RL steps), "capability" ("held_out" | "train") and "probe_size" (16)."""
    sample_selection: Annotated[str, OneOf(("none", "d3s"))] = "none"
    """Which rollouts of a step the update trains on (select/; `credo list selection`): "d3s" = D3S's
    sample level, per group the max-Var(A) subset, keep ratio 0.5 -> 1.0 over the first half of RL."""
    sample_selection_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of the selection rule, e.g. {"start": 0.5, "end": 1.0, "ramp": 0.5} for d3s."""
    data_selection: Annotated[str, OneOf(("none", "datamask"))] = "none"
    """Which training prompts make the pool (select/datamask.py; `credo list selection`): "datamask" =
    DATAMASK's policy-gradient mask learning keeps rl.prompt_pool (> 0) of rl.prompt_pool / ratio
    candidates by mean quality + lam x diversity, before RL; the choice is in data_selection.json and
    every RL checkpoint, so --resume trains on the same pool. "none" = the first rl.prompt_pool drawn."""
    data_selection_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of "datamask", e.g. {"ratio": 0.25, "quality": "learnability", "embed": "policy",
    "diversity": "facility", "lam": 1.0}; quality "length", "judge" or "field:<meta name>", embed "tfidf"."""
    reward_terms: dict[str, Any] = field(default_factory=dict)
    """Weighted reward terms (rewards/terms.py; `credo list rewards`): the reward is sum_k w_k term_k, each
    term logged as reward/<name>. Empty = the task's own reward. Example: {"task": 1.0, "hapo_length":
    1.0} (HAPO), {"task": 1.0, "format": 0.1}, {"math": 1.0} (math-verify equivalence)."""
    reward_term_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the terms that take them, by name, e.g. {"hapo_length": {"floor": -0.7}},
    {"adactrl": {"threshold": 0.625}}, {"cogre": {"dictionary": "keywords.json"}}, {"repetition": {"ngram_size": 3}}."""
    sft_mix: Annotated[str, OneOf(("none", "chord", "rmt"))] = "none"
    """Mix a supervised loss on expert data into every RL optimizer step (train/sft_mix.py; `credo list
    mixing`): "chord" = CHORD's (1 - mu(t)) L_rl + mu(t) L_sft with phi = p (1 - p) token weights and a
    warm-up / cosine-decay / valley schedule of mu. "rmt" = RMT's L_rl + lambda L_ntp (plain next-token
    prediction on all tokens of text rows) with the rollouts' max_new_tokens at step t a decaying budget
    B_t (train/rmt.py). "none" = RL alone."""
    sft_mix_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of "chord" (Trinity-RFT's defaults): {"mu_warmup": 0, "mu_decay": 0, "mu_peak": 0.1,
    "mu_valley": 0.1, "phi": true, "expert_batch": 8 (rows per optimizer step), "source": "task" (the
    task's demonstrations of "pool" = 256 training examples) or a JSONL / Parquet / CSV file with
    "prompt_field" / "response_field" (prompt / response), "max_response_tokens": 256}. Of "rmt":
    {"ntp_weight": 1.0 (lambda), "budget_min": 1, "budget_decay": 0.5 (gamma; 1 = fixed), "budget_power":
    1.0 (k), "ntp_batch": 8, "source": "task" (demonstrations of "pool" = 256 examples) or a .txt / JSONL /
    Parquet / CSV document file ("text_field": "text"), "max_tokens": 256}; B_0 = sampling.max_new_tokens."""
    warm_start: Annotated[str, OneOf(("none", "wsrl", "replay"))] = "none"
    """Warm-start PPO's critic before RL (train/warm_start.py; `credo list warmstart`; needs a critic
    estimator such as rl.credit gae): "wsrl" = WSRL's recipe: pre-train the critic (and optionally the
    policy) on offline rows, then warm-up rollouts of the pre-trained policy that only re-fit the critic,
    then online PPO without the offline rows; "replay" = the same pre-training, then a fixed fraction of
    every PPO batch is offline rows (the baseline WSRL argues against). "none" = off."""
    warm_start_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of the warm start: {"source": "task" (demonstrations of "pool" = 256 examples, reward 1;
    "self_samples": N adds the pre-RL policy's scored samples of N prompts) or a JSONL / Parquet / CSV file
    ("prompt_field" / "response_field" / "reward_field" / "answer_field": a row without a reward is scored
    by the verifier against its answer), "batch_rows": 16, "critic_steps": 20, "critic_lr" (rl.critic_lr),
    "policy_steps": 0, "policy_lr" (rl.lr), "policy_loss": "sft" (rows with reward >= "min_reward" 1.0) or
    "awr" ("awr_temperature" 1.0), "warmup_rollouts" (wsrl 2, replay 0), "replay_fraction" (replay: 0.5),
    "max_response_tokens": 256}."""
    max_nonfinite_steps: Annotated[int, Range(lo=1)] = 5
    """Stop with a clear message after this many consecutive RL steps whose optimizer steps were all
    skipped for a non-finite loss or gradient (each skip leaves weights and AdamW state untouched)."""
    recompute_old_logprobs: bool = True
    """Recompute the behaviour logprobs with the trainer's forward pass before updating (costs one
    forward; removes the sampler/trainer numeric mismatch from the importance ratio). When the update is
    one on-policy pass (rl.epochs = rl.minibatches = 1, no rl.is_correction, one process) the recompute is
    skipped: the update's own forward gives the same logprobs, detached, as the behaviour ones (ratio 1)."""
    shared_prefix: bool = True
    """Compute each group's prompt once in the trainer's forward and backward (and the reference and
    recomputed logprobs), its G completions attending to it, instead of G times padded
    (credo/prefix_forward.py); the same values up to float rounding. Off: the reference forward. One
    process only: under torch.distributed (dist.strategy) the reference forward is used."""
    chunked_head: bool = True
    """Compute the output head and log-softmax in chunks of 256 positions ([N, V] logits never held
    whole, credo/chunked_head.py); the same values up to float rounding. One process only, like
    rl.shared_prefix."""
    judge: Annotated[str, Text(pattern=r"synthetic|llm(:.+)?|prm:.+", meaning="synthetic, llm, llm:<folder> or prm:<folder>")] = "synthetic"
    """Who scores steps for step-level credit (PURE, CAPO, TP-GRPO, ...): "synthetic" (the task's true
    step scores with rl.judge_noise / judge_bias / judge_flip), "llm" (the bundled SmolLM2 asked yes/no,
    scored from its logprobs), "llm:<folder>" (any local causal LM) or "prm:<folder>" (a process reward
    model trained by `credo train-prm`). See credo/judges/."""
    reward_model: Annotated[str, Text(pattern=r"(rm:.+)?", meaning="empty or rm:<folder>")] = ""
    """The reward of every completion from an outcome reward model trained by `credo train-rm`
    ("rm:<folder>"; judges/orm.py): r(x, y), the Bradley-Terry logit, replaces the task's verifier reward
    (accuracy and format metrics stay the task's own verdict). Works with any task, the JSONL task
    without reference answers included. Empty: the task's verifier."""
    judge_noise: Annotated[float, Range(lo=0)] = 0.0
    """Step judge / PRM for step-level credit (PURE, CAPO, TP-GRPO, ...): std of the Gaussian noise a
    SyntheticJudge adds to the task's true step scores."""
    judge_bias: Annotated[float, Range()] = 0.0
    """Step judge: constant bias added to every step score."""
    judge_flip: Annotated[float, Range(lo=0, hi=1)] = 0.0
    """Step judge: probability of a mirrored (wrong) verdict per step."""
    probe_samples: Annotated[int, Range(lo=1)] = 4
    """Monte Carlo continuations per value probe (SPO-chain's V at cutpoints); each is counted."""
    critic_kind: Annotated[str, OneOf(("head", "model"))] = "head"
    """Value model when the credit estimator reads values (GAE, MA-RLHF, POAD): "head" (a value head on
    the policy's detached hidden states) or "model" (a separate copy of the backbone, as verl)."""
    critic_lr: Annotated[float, Range(lo=0, lo_open=True)] = 1e-4
    """AdamW learning rate of the value model."""
    value_clip: Annotated[float | None, Range(lo=0, lo_open=True)] = 0.5
    """Clip range of the value loss around the values at collection time (verl 0.5); unset = no clip."""
    phase_marker: Annotated[str, Text(non_empty=True)] = "<answer>"
    """F-GRPO: the text that starts the second (ranking / answer) phase of a completion."""
    dpo_model: Annotated[str, Text()] = ""
    """RTO: the frozen DPO-trained model whose token log-ratio is the dense reward (a folder, a credo
    checkpoint or a preset name)."""
    is_correction: Annotated[str, Text(non_empty=True)] = "none"
    """Importance-sampling correction of the sampler/trainer mismatch and policy lag, applied to the
    per-token loss with w = exp(trainer behaviour logprob - sampler logprob): a registered choice
    (`credo list corrections`); "none" = off."""
    is_params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the importance-sampling correction (thresholds)."""
    objective_params: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the objective."""
    credit_params: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the credit estimator."""


@dataclass
class RolloutConfig:
    engine: Annotated[str, OneOf(("torch", "vllm", "ray"))] = "torch"
    """Rollout engine: "torch" (the in-process KV-cache sampler, CPU or one GPU), "vllm" (GPU only,
    imported only when chosen) or "ray" (ray_workers Ray actors, each with its own policy copy and a
    torch engine; rollout/ray_engine.py)."""
    sampler: Annotated[str, OneOf(("independent", "tree", "nlpo", "slate", "vpr"))] = "independent"
    """How the rl.group_size completions of a prompt are drawn in RL steps (rollout/samplers.py):
    "independent" samples; "tree" = SPO-tree's segment tree (branching at every segment_len tokens;
    rl.group_size must equal prod(branching)); "slate" = SLATE's truncated step-level siblings
    (rl.group_size = siblings x depth); "nlpo" = NLPO's masked sampling (every step restricted to
    the top-p set of a delayed copy of the policy; torch engine; rollout/masking.py); "vpr" = VPR's
    state groups (multi-turn tasks: K candidate actions at every visited state, the best one committed;
    rl.group_size = candidates x turns; rollout/state_groups.py). Evaluation always samples independently."""
    sampler_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the sampler (tree: branching [2, 2], segment_len 30; slate: siblings 4, depth 2,
    step_end "\\n"; nlpo: update_every 20, top_p 0.9, min_tokens_to_keep 100; vpr: candidates 4, turns 4,
    oracle "truth")."""
    # -- Ray (read only when engine = "ray"; see rollout/ray_engine.py) ----------------------------
    ray_workers: Annotated[int, Range(lo=1)] = 2
    """Rollout worker actors; each samples a contiguous share of the step's prompts."""
    ray_threads: Annotated[int, Range(lo=1)] = 1
    """torch threads per rollout worker."""
    ray_address: Annotated[str, Text()] = ""
    """"" starts a local Ray; "auto" or "ray://host:10001" joins an existing cluster."""
    ray_verifiers: Annotated[int, Range(lo=0)] = 0
    """Verifier worker actors scoring the completions (rewards/verifier_pool.py); 0 = score in the
    trainer process. Works with every engine (it starts Ray at ray_address)."""
    max_staleness: Annotated[int, Range(lo=0)] = 0
    """Asynchronous rollouts (train/pipeline.py, engine = "ray"): generation of step s + k is sent
    before step s trains, so rollouts are sampled up to k weight updates behind; 0 = synchronous."""
    stale_policy: Annotated[str, OneOf(("resample", "drop", "keep"))] = "resample"
    """A group sampled more than max_staleness updates behind (only after a resume or a late sync):
    "resample" it with the current weights, "drop" it, or "keep" it (its importance weights correct
    the lag); each is counted in the step's metrics (stale_groups, stale_resampled / _dropped / _kept)."""
    # -- vLLM (read only when engine = "vllm"; see rollout/vllm_engine.py) --------------------------
    vllm_placement: Annotated[str, OneOf(("colocate", "separate"))] = "colocate"
    """"colocate": vLLM shares the trainer's GPU (in-process, gpu_memory_utilization of it, sleeping
    during updates with sleep_mode); "separate": vLLM runs in its own process on GPU vllm_gpu."""
    vllm_gpu: Annotated[int, Range(lo=0)] = 1
    """The GPU index vLLM uses with vllm_placement = "separate"."""
    gpu_memory_utilization: Annotated[float, Range(lo=0, hi=1, lo_open=True)] = 0.3
    """Fraction of the GPU vLLM reserves for its weights and KV cache (colocated: leave the rest to
    the trainer; separate: raise it to ~0.9)."""
    sleep_mode: bool = True
    """Colocated only: put vLLM to sleep during each update (LLM.sleep) and wake it for the weight
    sync and the next rollout, so the trainer gets the GPU memory back."""
    sleep_level: Annotated[int, Range(lo=1, hi=2)] = 1
    """vLLM sleep level: 1 offloads weights to CPU and frees the KV cache; 2 frees both (the weight
    sync reloads every weight anyway; saves CPU memory)."""
    max_model_len: Annotated[int, Range(lo=0)] = 0
    """vLLM's context length (prompt + completion); 0 = the model's own."""
    vllm_dtype: Annotated[str, OneOf(("auto", "bfloat16", "float16", "float32"))] = "bfloat16"
    """Dtype of vLLM's weights and activations (the trainer keeps fp32 master weights)."""
    logprobs_mode: Annotated[str, OneOf(("processed_logprobs", "raw_logprobs"))] = "processed_logprobs"
    """Which logprobs vLLM returns: "processed_logprobs" = after temperature (credo's convention when
    top_k = 0 and top_p = 1; after truncation otherwise); "raw_logprobs" = untempered."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of shared prefixes (a prompt's G samples, a multi-turn transcript)."""
    enforce_eager: bool = False
    """Disable vLLM's CUDA graphs (faster start, slower decoding)."""
    weight_sync_bucket_mb: Annotated[int, Range(lo=1)] = 256
    """Weight sync streams the state dict into vLLM in buckets of at most this many MiB."""
    temperature_schedule: Annotated[str, OneOf(("none", "hapo"))] = "none"
    """An adaptive sampling temperature per row and decoding step (rollout/temperature.py), torch engine
    only: "hapo" = HAPO's T (1 + clamp(h_hat, -1, 1) tau) from the previous training batch's entropy
    statistics (one extra no-grad forward per step; its state is checkpointed). "none" = fixed."""
    temperature_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the schedule (hapo: tau 0.05, pivot 0.8, signed true)."""
    auto_is_correction: bool = True
    """With engine = "vllm" or max_staleness > 0 and rl.is_correction left at "none", the resolved config
    uses "tis" (truncated importance sampling of the sampler/trainer mismatch); false keeps "none"."""


@dataclass
class DistConfig:
    strategy: Annotated[str, OneOf(("none", "ddp", "fsdp2"))] = "none"
    """How the policy is placed across torch.distributed ranks: "none" (one process), "ddp" or
    "fsdp2" (`torch.distributed.fsdp.fully_shard`); launch several ranks with torchrun."""
    backend: Annotated[str, OneOf(("auto", "gloo", "nccl"))] = "auto"
    """torch.distributed backend: "auto" = NCCL when CUDA is available, else gloo (CPU)."""
    seed_per_prompt: bool = False
    """Sample each prompt's group in its own engine call, seeded from (step seed, the prompt's
    position in the step), so the rollout batch is the same for any number of ranks (N ranks train
    exactly the one-process batch). Off: each rank samples its share in one call (better batching;
    rank r > 0 draws from seed + r * 1_000_039, so the batch depends on the world size)."""


@dataclass
class RunConfig:
    out_dir: Annotated[str, Text(non_empty=True)] = "runs"
    """Parent folder of run folders."""
    name: Annotated[str, Text(pattern=r"[^/\\\x00]*", meaning="a folder name without slashes")] = ""
    """Run folder name; empty = '<preset>-<timestamp>'."""
    seed: Annotated[int, Range(lo=0)] = 0
    """Seed of data order, sampling and initialisation."""
    eval_base: bool = True
    """Score the model before warm-up too."""
    checkpoint_every: Annotated[int, Range(lo=0)] = 0
    """Save a resumable checkpoint every N RL steps (0 = only after warm-up and at the end)."""
    progress: bool = True
    """Show a progress bar."""
    trackers: Annotated[list[str], SubsetOf(("tensorboard", "wandb"))] = field(default_factory=list)
    """Logging backends fed beside metrics.jsonl (train/trackers.py), rank 0 only; each is imported
    only when named. "tensorboard" writes event files under <run>/tensorboard (pip extra
    credo[tensorboard]); "wandb" writes an offline Weights & Biases run under <run>/wandb, never
    uploads (`wandb sync <run>/wandb/offline-run-*` later; extra credo[wandb]). A tracker that fails
    mid-run is switched off with a warning; training goes on. On the command line:
    --run.trackers tensorboard,wandb (or a JSON list)."""


@dataclass
class TrainConfig:
    preset: Annotated[str, Text(non_empty=True)] = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Convert a parsed value (or a command-line string) to the field's declared type."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # "X | None"
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"expected a string, got {value!r}")
            return str(value)
        if origin is list:
            if isinstance(value, str):
                value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected a list of strings, got {value!r}")
            return list(value)
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError(f"expected a table / JSON object, got {value!r}")
            return dict(value)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CredoError(f"config field {where}: {exc}") from exc
    return value


def marker_of(cls: type, name: str) -> Range | OneOf | Text | SubsetOf | None:
    """The validity marker declared on field `name` of config dataclass `cls` (None: none)."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, MARKERS):
                return meta
    return None


def describe(marker: Range | OneOf | Text | SubsetOf) -> str:
    """The valid values of a marker in words, for error messages."""
    if isinstance(marker, OneOf):
        return "one of " + ", ".join(marker.choices)
    if isinstance(marker, SubsetOf):
        return "a list of distinct names from " + ", ".join(marker.choices)
    if isinstance(marker, Text):
        if marker.pattern:
            return marker.meaning or f"text matching {marker.pattern}"
        return "a non-empty string" if marker.non_empty else "a string"
    parts = []
    if marker.lo is not None:
        parts.append(f"{'>' if marker.lo_open else '>='} {marker.lo:g}")
    if marker.hi is not None:
        parts.append(f"{'<' if marker.hi_open else '<='} {marker.hi:g}")
    return "a finite number" + (" " + " and ".join(parts) if parts else "")


def in_range(value: Any, marker: Range | OneOf | Text | SubsetOf) -> bool:
    if isinstance(marker, OneOf):
        return isinstance(value, str) and value in marker.choices
    if isinstance(marker, SubsetOf):
        return (isinstance(value, list) and all(isinstance(v, str) and v in marker.choices for v in value)
                and len(set(value)) == len(value))
    if isinstance(marker, Text):
        if not isinstance(value, str) or (marker.non_empty and not value.strip()):
            return False
        return marker.pattern is None or re.fullmatch(marker.pattern, value) is not None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if marker.lo is not None and (value < marker.lo or (marker.lo_open and value == marker.lo)):
        return False
    if marker.hi is not None and (value > marker.hi or (marker.hi_open and value == marker.hi)):
        return False
    return True


def check_ranges(cfg: Any, where: str = "") -> None:
    """Check every field of a config dataclass (recursively) against its marker; a CredoError names
    the first field out of range, its value and what is valid. `None` passes for optional fields
    (`float | None`: unset means the method's default)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{path}.")
            continue
        marker = marker_of(type(cfg), f.name)
        if marker is None or value is None:
            continue
        if not in_range(value, marker):
            raise CredoError(f"config field {path}: {value!r} is out of range; expected {describe(marker)}")


def _parse_literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply(cfg: Any, updates: dict[str, Any], where: str = "") -> None:
    """Recursively set fields of a config dataclass from a nested dict, checking names and types."""
    hints = typing.get_type_hints(type(cfg))
    valid = {f.name for f in dataclasses.fields(cfg)}
    for key, value in updates.items():
        path = f"{where}{key}"
        if key not in valid:
            raise CredoError(f"unknown config field {path!r}; valid fields: {', '.join(sorted(valid))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise CredoError(f"config field {path!r} is a section; give it a table")
            apply(current, value, f"{path}.")
        else:
            setattr(cfg, key, _coerce(value, hints[key], path))


def set_dotted(cfg: TrainConfig, dotted: str, text: str) -> None:
    """Apply one override like ('rl.clip_high', '0.28') or ('task.params.difficulty', '3')."""
    parts = dotted.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(node, dict):  # free-form parameter tables take any key
            if i == len(parts) - 1:
                node[part] = _parse_literal(text)
            else:
                node = node.setdefault(part, {})
            continue
        valid = {f.name for f in dataclasses.fields(node)}
        if part not in valid:
            prefix = ".".join(parts[:i])
            raise CredoError(
                f"unknown config field {dotted!r}: {prefix + '.' if prefix else ''}{part} is not one "
                f"of {', '.join(sorted(valid))}"
            )
        if i == len(parts) - 1:
            apply(node, {part: text}, ".".join(parts[:i]) + "." if i else "")
        else:
            node = getattr(node, part)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a nested dict (a table at the top level)."""
    path = Path(path)
    if not path.is_file():
        raise CredoError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CredoError(f"{path}: not UTF-8 text (byte {exc.start}); config files are TOML or JSON") from exc
    except OSError as exc:
        raise CredoError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        loaded = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CredoError(f"{path}: invalid config file: {exc}") from exc
    except RecursionError as exc:
        raise CredoError(f"{path}: invalid config file: nested too deeply") from exc
    if not isinstance(loaded, dict):
        raise CredoError(f"{path}: the top level must be a table / JSON object of sections, "
                         f"not a {type(loaded).__name__}")
    if "preset" in loaded and not isinstance(loaded["preset"], str):
        raise CredoError(f"{path}: field 'preset' must be a preset name (a string), got {loaded['preset']!r}")
    return loaded
