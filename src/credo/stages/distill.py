"""The `distill` stage: on-policy distillation of a teacher into the stage's model (the student), with
TIP token selection, AdaKD's token-adaptive temperatures and Sparse KD's probability-domain softening.

Each step (`steps` of them): `prompts_per_step` training prompts of the task (seeded order, or a fixed
pool with `prompt_pool`), `samples` completions each sampled by the STUDENT (torch engine, the stage's
sampling settings, seed from (run.seed, step)); one teacher-forced forward of the student (with grad)
and of the frozen TEACHER (`teacher`: a model folder, a credo checkpoint or a preset; no grad) over
prompt + completion; full-vocabulary log-probs at the N completion positions only (the output head never
runs on prompt positions: no [B, T, V] tensor); a per-token divergence D(p_s, p_t) [N]; the mean over the
selected tokens is the loss. AdamW with the dpo stage's schedule (linear warm-up over the first 10% of
steps, linear decay to 0), gradient norm clipped at `max_grad_norm`.

Methods (each a pure function below, tested against NumPy formulas in tests/test_distill.py):

- On-policy distillation / GKD ("On-Policy Distillation of Language Models: Learning from
  Self-Generated Mistakes", arXiv 2306.13649). `divergence`: "reverse_kl" KL(p_s || p_t) (default; GKD
  with beta = 1), "forward_kl" KL(p_t || p_s), "jsd" with `beta` (default 0.5): the generalised JSD
  JSD_b = b KL(p_t || m) + (1 - b) KL(p_s || m), m = b p_t + (1 - b) p_s, with b = 0 exactly forward KL
  and b = 1 exactly reverse KL (JSD_b / b -> forward KL as b -> 0, JSD_b / (1 - b) -> reverse KL as
  b -> 1). Status confirmed: this is TRL's GKDTrainer.generalized_jsd_loss convention (checked against
  trl/experimental/gkd/gkd_trainer.py). Departure: the teacher is a separate frozen model; lmbda (mixing
  in dataset responses) is 1 here: every sequence is the student's own sample.
- TIP ("TIP: Token Importance in On-Policy Distillation", arXiv 2604.14084). Two axes per token: the
  student's entropy H_t and the teacher-student divergence D_t (the training divergence, both at `tau`).
  `token_selection`: "all"; "entropy": the top `keep_fraction` of tokens by H_t; "tip": those plus the
  low-entropy / high-divergence quadrant (H_t <= median H and D_t > median D: overconfident and wrong).
  Quadrants (logged every step as tip_q1..tip_q4): q1 high H / high D, q2 high H / low D, q3 low H /
  high D, q4 low H / low D, "high" meaning above the batch median (torch.median, the lower median).
  Status reconstructed: the paper's exact selection rule is not in its public code (the OPD repository
  it extends samples tokens with weights H_norm^alpha JSD_norm^gamma instead); the median thresholds and
  the union with the entropy top fraction are our reading of the abstract's two regions.
- AdaKD ("LLM-Oriented Token-Adaptive Knowledge Distillation", arXiv 2510.11615, code
  github.com/SassyRong/AdaKD). Difficulty d_t = Hellinger distance between p_s and p_t.
  `temperature = "adakd"`: Inverse Difficulty Temperature Scaling, over the selected tokens,
  T_t = tau exp(-c tanh(log(d_t / median d))) with c = `adakd_scale` (default 0.5, the paper's GPT-2
  script), both distributions at T_t and the token's loss weighted by T_t^2 (hard tokens: low
  temperature). `token_selection = "latf"`: Loss-driven Adaptive Token Focusing: keep the top r of
  tokens by d_t, r starting at 1; an EMA (decay `latf_ema_decay`) of the step loss is compared with its
  value at the last change: rising by more than `latf_loss_eps` (relative) -> r *= 1 + `latf_ratio_eps`
  (at most 1); falling by more -> r *= 1 - `latf_ratio_eps` (at least `latf_min_ratio`); the reference
  is first taken after `latf_warmup` of the steps. Status confirmed against the official code
  (loss/losses.py::calculate_distillation_weight, distillation.py); defaults from its GPT-2 script
  (scripts/gpt2/AdaKD/AdaKD.sh: c 0.5, both eps 0.05, warm-up 0.05; arguments.py has 0.6 / 0.1 / 0.1);
  the floor 0.1 and the EMA decay 0.99 are the code's. Departures: a median guard (d / 0 is NaN there;
  here all-zero difficulty gives T = tau), and r lives in the checkpoint so a resume is exact.
- Sparse KD softening ("Sparse Knowledge Distillation: A Mathematical Framework for Probability-Domain
  Temperature Scaling and Multi-Stage Compression", arXiv 2601.03195). `teacher_top_k` = k > 0 keeps
  the teacher's top-k tokens; both distributions are renormalised on that support (so every divergence
  stays finite; the student's mass off the support gets no gradient). `softening`: "logit"
  softmax(z_t / T) on the support, or "probability": the operator p^(1/T) / sum p^(1/T) applied to the
  renormalised top-k teacher probabilities (what a teacher exposing only probabilities allows). The two
  are equal in exact arithmetic (the known equivalence p^(1/T) ~ softmax(z / T), tested).
  Status reconstructed: the paper is theory (operators, bounds); the support rule is our choice.

Evaluation: held out after the stage (stage "distill", also `summary["final"]`) and every
`eval_every` steps (stage "step_<k>"). Checkpoints every `checkpoint_every` steps and at the end
(`checkpoints/step_<steps>`, `checkpoints/final`); `resume` continues bitwise (the LATF ratio and its EMA
ride in state.json; the teacher is reloaded from its folder). Vocabularies must match.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, register_stage

DIVERGENCE_NAMES = ("reverse_kl", "forward_kl", "jsd")
SELECTIONS = ("all", "entropy", "tip", "latf")
TEMPERATURES = ("fixed", "adakd")
SOFTENINGS = ("logit", "probability")


@dataclass
class DistillParams:
    teacher: str = ""  # the teacher: a model folder, a credo checkpoint, a preset; "@previous" / "@<stage>" in a pipeline
    steps: int = 20  # optimizer steps
    prompts_per_step: int = 8
    samples: int = 2  # student completions per prompt
    prompt_pool: int = 0  # 0: fresh training prompts every step; N > 0: a fixed pool of N, seeded epochs
    divergence: str = "reverse_kl"  # one of DIVERGENCE_NAMES
    beta: float = 0.5  # "jsd": the teacher's weight in the mixture (0 forward KL, 1 reverse KL)
    token_selection: str = "all"  # one of SELECTIONS
    keep_fraction: float = 0.5  # "entropy" / "tip": the fraction kept by entropy
    temperature: str = "fixed"  # "fixed" (tau) or "adakd" (IDTS)
    tau: float = 1.0  # the divergence temperature ("adakd": the base temperature)
    adakd_scale: float = 0.5  # IDTS's c
    latf_ema_decay: float = 0.99
    latf_loss_eps: float = 0.05
    latf_ratio_eps: float = 0.05
    latf_min_ratio: float = 0.1
    latf_warmup: float = 0.05  # fraction of the steps before LATF takes its first reference
    teacher_top_k: int = 0  # 0: the full teacher distribution
    softening: str = "logit"  # "logit" or "probability"
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    micro_batch: int = 0  # sequences per forward / backward; 0 = the whole step at once
    eval_every: int = 0  # steps; 0 = only after the stage
    checkpoint_every: int = 0  # steps; 0 = only at the end

    def check(self) -> None:
        if not self.teacher.strip():
            raise ValueError("teacher must name the teacher model (a folder, a checkpoint, a preset, or \"@previous\")")
        for name, valid in (("divergence", DIVERGENCE_NAMES), ("token_selection", SELECTIONS),
                            ("temperature", TEMPERATURES), ("softening", SOFTENINGS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} {getattr(self, name)!r} is unknown; valid: {', '.join(valid)}")
        for name in ("steps", "prompts_per_step", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prompt_pool", "teacher_top_k", "micro_batch", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        for name in ("keep_fraction", "latf_min_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("tau", "lr", "max_grad_norm", "latf_loss_eps", "latf_ratio_eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (self.adakd_scale >= 0 and math.isfinite(self.adakd_scale)):
            raise ValueError(f"adakd_scale must be >= 0, got {self.adakd_scale}")
        if not 0.0 <= self.latf_ema_decay < 1.0:
            raise ValueError(f"latf_ema_decay must be in [0, 1), got {self.latf_ema_decay}")
        if not 0.0 <= self.latf_warmup < 1.0:
            raise ValueError(f"latf_warmup must be in [0, 1), got {self.latf_warmup}")


# ---- divergences: log-probs [N, K] of the student and the teacher on the same support -> [N] ----

def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) per row; [N, K] x 2 -> [N]. Terms with p_k = 0 are 0."""
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))  # 0 log 0 = 0 without NaN gradients
    return (p * diff).sum(-1)


def reverse_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_s || p_t) [N] (mode-seeking; on-policy distillation's default, GKD beta = 1)."""
    return _kl(student_logprobs, teacher_logprobs)


def forward_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s) [N] (mean-seeking; GKD beta = 0, classic KD)."""
    return _kl(teacher_logprobs, student_logprobs)


def generalized_jsd(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, beta: float = 0.5
                    ) -> torch.Tensor:
    """GKD's JSD_beta [N] = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s;
    beta = 0 is exactly forward KL and beta = 1 exactly reverse KL (TRL's special cases, arXiv 2306.13649)."""
    if beta == 0.0:
        return forward_kl(student_logprobs, teacher_logprobs)
    if beta == 1.0:
        return reverse_kl(student_logprobs, teacher_logprobs)
    log_m = torch.logsumexp(torch.stack([teacher_logprobs + math.log(beta),
                                         student_logprobs + math.log1p(-beta)]), dim=0)
    return beta * _kl(teacher_logprobs, log_m) + (1 - beta) * _kl(student_logprobs, log_m)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p log p [N] from log-probs [N, K]."""
    p = logprobs.exp()
    return -(p * torch.where(p > 0, logprobs, torch.zeros_like(logprobs))).sum(-1)


def hellinger(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """AdaKD's token difficulty [N] in [0, 1]: sqrt(sum (sqrt p_t - sqrt p_s)^2) / sqrt 2."""
    diff = (0.5 * teacher_logprobs).exp() - (0.5 * student_logprobs).exp()
    return (diff.pow(2).sum(-1) / 2).clamp(min=0).sqrt()


def divergence_fn(params: DistillParams):
    """The per-token divergence the params name, bound to its hyperparameters (the one string -> callable)."""
    if params.divergence == "jsd":
        return lambda s, t: generalized_jsd(s, t, beta=params.beta)
    return {"reverse_kl": reverse_kl, "forward_kl": forward_kl}[params.divergence]


# ---- Sparse KD: the teacher's top-k support and the softening operators ----

def soften_probabilities(probs: torch.Tensor, temperature) -> torch.Tensor:
    """The probability-domain softening operator p^(1/T) / sum p^(1/T); probs [N, K], T scalar or [N, 1]."""
    powered = probs.pow(1.0 / temperature)
    return powered / powered.sum(-1, keepdim=True)


def distill_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature, *, top_k: int = 0,
                     softening: str = "logit") -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) log-probs [N, K] compared by the divergence; logits [N, V], T scalar or [N, 1].

    Student: log softmax(z_s / T), on the teacher's top-k support when top_k > 0 (K = k, else K = V).
    Teacher, softening "logit": log softmax(z_t / T) on the support; "probability": the support's
    teacher probabilities at T = 1 renormalised, then p^(1/T) / sum p^(1/T) (in log space: the same
    operator as soften_probabilities without underflow)."""
    if top_k and top_k < teacher_logits.shape[-1]:
        support = teacher_logits.topk(top_k, dim=-1).indices  # [N, k]; the ranking does not depend on T
        student_logits, picked = student_logits.gather(-1, support), teacher_logits.gather(-1, support)
    else:
        picked = teacher_logits
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    if softening == "logit":
        return student, torch.log_softmax(picked / temperature, dim=-1)
    probs_log = torch.log_softmax(teacher_logits, dim=-1)  # the teacher's probabilities (log) at T = 1
    if picked is not teacher_logits:
        probs_log = probs_log.gather(-1, support)
    probs_log = probs_log - torch.logsumexp(probs_log, dim=-1, keepdim=True)  # top-k renormalised
    return student, torch.log_softmax(probs_log / temperature, dim=-1)  # log(p^(1/T) / sum p^(1/T))


# ---- TIP: token selection on the (entropy, divergence) plane ----

def _keep_count(n: int, fraction: float) -> int:
    return 0 if n == 0 else min(n, max(1, int(math.floor(n * fraction + 1e-9))))


def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """keep [N] bool: the floor(N f) (at least 1) highest scores; ties keep the earlier token."""
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep[order[: _keep_count(scores.numel(), fraction)]] = True
    return keep


def quadrants(ent: torch.Tensor, div: torch.Tensor) -> torch.Tensor:
    """TIP quadrant [N] in 1..4 from entropy [N] and divergence [N], "high" = above the batch median:
    1 high H / high D, 2 high H / low D, 3 low H / high D (overconfident and wrong), 4 low H / low D."""
    if ent.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=ent.device)
    high_h, high_d = ent > ent.median(), div > div.median()
    return torch.where(high_h, torch.where(high_d, 1, 2), torch.where(high_d, 3, 4)).long()


def select_tokens(ent: torch.Tensor, div: torch.Tensor, *, rule: str, keep_fraction: float) -> torch.Tensor:
    """keep [N] bool. "all"; "entropy": top keep_fraction by entropy; "tip": those or quadrant 3."""
    if rule == "all":
        return torch.ones(ent.shape, dtype=torch.bool, device=ent.device)
    keep = top_fraction(ent, keep_fraction)
    if rule == "tip":
        keep |= quadrants(ent, div) == 3
    return keep


# ---- AdaKD: IDTS temperatures and LATF's adaptive ratio ----

def idts_temperatures(difficulty: torch.Tensor, *, base: float, scale: float) -> torch.Tensor:
    """T [M] = base exp(-scale tanh(log(d / median d))): hard tokens (d above the median) get a lower
    temperature, easy ones a higher one, within base [e^-scale, e^scale]. All-zero difficulty -> base."""
    if difficulty.numel() == 0:
        return difficulty.clone()
    median = difficulty.median()
    if not float(median) > 0:
        return torch.full_like(difficulty, base)
    ratio = (difficulty / median).clamp(min=1e-8)
    return base * torch.exp(-scale * torch.tanh(torch.log(ratio)))


def latf_update(state: dict[str, Any], loss: float, *, step: int, total: int, decay: float, loss_eps: float,
                ratio_eps: float, min_ratio: float, warmup: float) -> dict[str, Any]:
    """LATF after 1-based step `step` with loss `loss`: state {"ratio", "ema", "reference"} -> new state.

    ema <- loss (first step) or decay ema + (1 - decay) loss. With a reference R and delta = R - ema:
    delta < -R loss_eps (the loss rose) -> ratio * (1 + ratio_eps), at most 1; delta > R loss_eps (it fell)
    -> ratio * (1 - ratio_eps), at least min_ratio; either change sets R = ema. Without a reference,
    R = ema once step > warmup * total (AdaKD's distillation.py). JSON-safe (floats and None)."""
    ratio, ref = state["ratio"], state["reference"]
    ema = loss if state["ema"] is None else decay * state["ema"] + (1 - decay) * loss
    if ref is not None:
        delta, eps = ref - ema, ref * loss_eps
        if delta < -eps:
            ratio, ref = min(ratio * (1 + ratio_eps), 1.0), ema
        elif delta > eps:
            ratio, ref = max(ratio * (1 - ratio_eps), min_ratio), ema
    elif step > warmup * total:
        ref = ema
    return {"ratio": ratio, "ema": ema, "reference": ref}


# ---- the model side ----

def completion_logits(model, tokens: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor, *,
                      dtype) -> torch.Tensor:
    """Output-head logits [N, V] (float32) at the N masked positions, row-major order: the hidden state
    at t - 1 scores token t (batch.py's shift convention); only those N rows go through the head."""
    from credo.logprobs import _final_logits
    from credo.rollout.torch_engine import autocast_context

    device = next(model.parameters()).device
    tokens, attention, mask = tokens.to(device), attention.to(device), mask.to(device)
    with autocast_context(dtype, device):
        hidden = model.base_model(input_ids=tokens, attention_mask=attention.long()).last_hidden_state
        return _final_logits(model, hidden[:, :-1][mask[:, 1:]])


@dataclass
class TokenPlan:
    """Per-token axes [N] at tau (entropy, divergence, difficulty), the kept tokens [N] bool, and the
    temperatures / loss weights [M] of the M kept tokens."""

    entropy: torch.Tensor
    divergence: torch.Tensor
    difficulty: torch.Tensor
    keep: torch.Tensor
    temperature: torch.Tensor
    weight: torch.Tensor


def plan_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor, params: DistillParams, *,
                latf_ratio: float) -> TokenPlan:
    """The selection and temperatures of one step from its logits [N, V] (no grad)."""
    with torch.no_grad():
        s, t = distill_logprobs(student_logits, teacher_logits, params.tau, top_k=params.teacher_top_k,
                                softening=params.softening)
        ent = entropy(torch.log_softmax(student_logits / params.tau, dim=-1))  # the student's own, full vocab
        div, diff = divergence_fn(params)(s, t), hellinger(s, t)
        if params.token_selection == "latf":
            keep = top_fraction(diff, latf_ratio)
        else:
            keep = select_tokens(ent, div, rule=params.token_selection, keep_fraction=params.keep_fraction)
        if params.temperature == "adakd":
            temp = idts_temperatures(diff[keep], base=params.tau, scale=params.adakd_scale)
            weight = temp.pow(2)  # AdaKD weights each token's loss by T^2 (Hinton's gradient-scale fix)
        else:
            temp = torch.full((int(keep.sum()),), params.tau, device=div.device)
            weight = torch.ones_like(temp)
    return TokenPlan(ent, div, diff, keep, temp, weight)


def kept_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, plan_slice: TokenPlan,
              params: DistillParams) -> torch.Tensor:
    """Sum over the kept tokens of weight * D(student, teacher) at each token's temperature (scalar)."""
    keep = plan_slice.keep
    if not bool(keep.any()):
        return student_logits.sum() * 0.0
    s, t = distill_logprobs(student_logits[keep], teacher_logits[keep], plan_slice.temperature[:, None],
                            top_k=params.teacher_top_k, softening=params.softening)
    return (plan_slice.weight * divergence_fn(params)(s, t)).sum()


def distill_backward(student, teacher, tokens, attention, mask, params: DistillParams, *, dtype,
                     latf_ratio: float) -> tuple[float, TokenPlan]:
    """Backpropagate the step's loss (mean over the kept tokens, global count) and return (loss, plan).

    With micro_batch > 0 a no-grad pass over the micro-batches plans the whole step first (selection and
    medians are batch-wide), then each micro-batch's forward / backward adds its share."""
    rows = tokens.shape[0]
    size = params.micro_batch if 0 < params.micro_batch < rows else rows
    chunks = [slice(a, min(a + size, rows)) for a in range(0, rows, size)]

    def logits(model, rs: slice) -> torch.Tensor:
        width = int(attention[rs].sum(-1).max())  # right padding: trim the chunk to its longest row
        return completion_logits(model, tokens[rs, :width], attention[rs, :width], mask[rs, :width], dtype=dtype)

    def teacher_logits(rs: slice) -> torch.Tensor:
        with torch.no_grad():
            return logits(teacher, rs).float()

    if len(chunks) == 1:
        z_s, z_t = logits(student, chunks[0]).float(), teacher_logits(chunks[0])
        plan = plan_tokens(z_s.detach(), z_t, params, latf_ratio=latf_ratio)
        pairs = [(z_s, z_t)]
    else:
        with torch.no_grad():
            zs = [(logits(student, c).float(), teacher_logits(c)) for c in chunks]
        plan = plan_tokens(torch.cat([a for a, _ in zs]), torch.cat([b for _, b in zs]), params, latf_ratio=latf_ratio)
        del zs
        pairs = None
    count = int(plan.keep.sum())
    total, start, kept_start = 0.0, 0, 0
    for i, rs in enumerate(chunks):
        z_s, z_t = pairs[0] if pairs else (logits(student, rs).float(), teacher_logits(rs))
        n = z_s.shape[0]
        keep = plan.keep[start: start + n]
        m = int(keep.sum())
        part = TokenPlan(plan.entropy, plan.divergence, plan.difficulty, keep,
                         plan.temperature[kept_start: kept_start + m], plan.weight[kept_start: kept_start + m])
        if m:
            loss = kept_loss(z_s, z_t, part, params) / count
            loss.backward()
            total += float(loss.detach())
        start, kept_start = start + n, kept_start + m
    return total, plan


def check_vocabularies(student, student_tokenizer, teacher, teacher_tokenizer, *, student_name: str,
                       teacher_name: str) -> None:
    """Token-level distillation compares distributions over one vocabulary: sizes and token ids must agree."""
    sizes = {"student": (student.get_output_embeddings().weight.shape[0], len(student_tokenizer)),
             "teacher": (teacher.get_output_embeddings().weight.shape[0], len(teacher_tokenizer))}
    if sizes["student"] != sizes["teacher"]:
        raise CredoError(f"distill: the student {student_name!r} (output head {sizes['student'][0]}, tokenizer "
                         f"{sizes['student'][1]} tokens) and the teacher {teacher_name!r} (output head "
                         f"{sizes['teacher'][0]}, tokenizer {sizes['teacher'][1]} tokens) have different "
                         f"vocabularies; token-level distillation needs one shared tokenizer")
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise CredoError(f"distill: the student {student_name!r} and the teacher {teacher_name!r} have tokenizers "
                         f"of the same size that map tokens to different ids; they must share one tokenizer")


def load_teacher(name: str, seed: int, device):
    from credo.models import load_policy

    if name.startswith("@"):
        raise CredoError(f"distill: teacher = {name!r} names a pipeline stage; `credo pipeline` resolves it, "
                         f"a single stage needs a model folder, a credo checkpoint or a preset")
    policy = load_policy(name, seed=seed)
    policy.model.to(device).eval()
    for p in policy.model.parameters():
        p.requires_grad_(False)
    return policy


# ---- the stage ----

def sample_step(st, params: DistillParams, prompts_list, step: int):
    """The step's prompts and the student's completions: (batch, completions, examples, skipped)."""
    from credo.batch import build_batch
    from credo.train.evaluate import encode_prompts, pad_token_id, too_long
    from credo.train.prompts import scheduled_prompt_ids
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    ids = scheduled_prompt_ids(step, params.prompts_per_step, len(prompts_list) if params.prompt_pool else 0,
                               st.cfg.run.seed)
    examples = [prompts_list[i] for i in ids]
    encoded = encode_prompts(st.tokenizer, st.task, examples)
    drop = set(too_long(encoded, max_prompt_tokens(st.model, st.sampling, st.engine)))
    examples = [e for i, e in enumerate(examples) if i not in drop]
    encoded = [p for i, p in enumerate(encoded) if i not in drop]
    st.engine.load_weights(st.model, version=step)
    groups = st.engine.generate(encoded, params.samples, st.sampling, seed=step_seed(st.cfg.run.seed, step))
    completions = [c for g in groups for c in g]
    if not completions:
        return None, [], examples, len(drop)
    batch = build_batch(completions, [0.0] * len(completions), [i // params.samples for i in range(len(completions))],
                        pad_id=pad_token_id(st.tokenizer))
    return batch, completions, examples, len(drop)


def step_metrics(plan: TokenPlan, completions, examples, task, params: DistillParams) -> dict[str, float]:
    from credo.train.evaluate import safe_score

    n = max(plan.entropy.numel(), 1)
    quads = quadrants(plan.entropy, plan.divergence)
    rewards = [float(safe_score(task, c.text, examples[i // params.samples])[0].reward)
               for i, c in enumerate(completions)]
    out = {"tokens": float(plan.entropy.numel()), "kept_fraction": float(plan.keep.sum()) / n,
           "divergence": float(plan.divergence.mean()) if plan.divergence.numel() else 0.0,
           "divergence_kept": float(plan.divergence[plan.keep].mean()) if bool(plan.keep.any()) else 0.0,
           "entropy": float(plan.entropy.mean()) if plan.entropy.numel() else 0.0,
           "difficulty": float(plan.difficulty.mean()) if plan.difficulty.numel() else 0.0,
           "response_length": sum(len(c.token_ids) for c in completions) / max(len(completions), 1),
           "truncation_rate": sum(c.finish_reason == "length" for c in completions) / max(len(completions), 1),
           "sample_reward": sum(rewards) / max(len(rewards), 1)}
    out.update({f"tip_q{q}": float((quads == q).sum()) / n for q in (1, 2, 3, 4)})
    if plan.temperature.numel():
        out.update(temperature_mean=float(plan.temperature.mean()), temperature_min=float(plan.temperature.min()),
                   temperature_max=float(plan.temperature.max()))
    return out


def run_distill(cfg, params: DistillParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.faults import maybe_die
    from credo.gpu import resolve_device
    from credo.stages.common import open_stage
    from credo.train.optim import lr_at, make_optimizer, set_lr

    teacher = load_teacher(params.teacher, cfg.run.seed, resolve_device(cfg.model.device))
    st = open_stage(cfg, "distill", params, resume=resume)
    check_vocabularies(st.model, st.tokenizer, teacher.model, teacher.tokenizer, student_name=cfg.model.name,
                       teacher_name=params.teacher)
    st.summary["teacher"] = teacher.source
    optimizer = make_optimizer(st.model, params.lr, weight_decay=0.0)
    size = params.prompt_pool or params.steps * params.prompts_per_step
    prompts_list = st.task.examples("train", size, seed=cfg.run.seed + 20_000)
    step, latf = 0, {"ratio": 1.0, "ema": None, "reference": None}
    checkpoint = st.resume_from(optimizer=optimizer) if resume else None
    if checkpoint is not None:
        step, latf = int(checkpoint.state["step"]), dict(checkpoint.state["latf"])
    elif cfg.run.eval_base:
        st.evaluate("base", after_step=0)

    def state() -> dict[str, Any]:
        return {"step": step, "latf": latf}

    while step < params.steps:
        started = time.perf_counter()
        st.model.eval()
        batch, completions, examples, skipped = sample_step(st, params, prompts_list, step)
        gen_time = time.perf_counter() - started
        maybe_die("rollout")
        lr = lr_at(step, params.steps, peak=params.lr, warmup=max(1, params.steps // 10), decay="linear",
                   min_ratio=0.0)
        set_lr(optimizer, lr)
        st.model.train()
        row = {"phase": "distill", "step": step, "lr": lr, "skipped_prompts": float(skipped)}
        if batch is not None and bool(batch.loss_mask.any()):
            loss, plan = distill_backward(st.model, teacher.model, batch.tokens, batch.attention_mask,
                                          batch.loss_mask, params, dtype=st.dtype, latf_ratio=latf["ratio"])
            grad_norm = float(torch.nn.utils.clip_grad_norm_(st.model.parameters(), params.max_grad_norm))
            if math.isfinite(grad_norm) and bool(plan.keep.any()):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            row.update(loss=loss, grad_norm=grad_norm, **step_metrics(plan, completions, examples, st.task, params))
            if params.token_selection == "latf":
                row["latf_ratio"] = latf["ratio"]
                latf = latf_update(latf, loss, step=step + 1, total=params.steps, decay=params.latf_ema_decay,
                                   loss_eps=params.latf_loss_eps, ratio_eps=params.latf_ratio_eps,
                                   min_ratio=params.latf_min_ratio, warmup=params.latf_warmup)
        else:
            print(f"credo: distill step {step}: no completion token to distil on; the step trains nothing", flush=True)
        step += 1
        st.writer.write({**row, "gen_time": gen_time, "step_time": time.perf_counter() - started})
        maybe_die("update")
        if params.eval_every and step % params.eval_every == 0 and step < params.steps:
            st.evaluate(f"step_{step}", after_step=step)
        if params.checkpoint_every and step % params.checkpoint_every == 0 and step < params.steps:
            st.save(f"step_{step}", optimizer=optimizer, state=state())
    if "distill" not in st.summary:  # (a resume from the last checkpoint already holds it)
        st.evaluate("distill", after_step=step)
    st.save(f"step_{step}", optimizer=optimizer, state=state())
    st.summary["final"] = dict(st.summary["distill"])
    st.save("final", state={**state(), "final": True})
    return st.finish()


register_stage(StageKind("distill", DistillParams, run_distill,
                         "on-policy distillation from a teacher model (reverse KL / forward KL / GKD JSD; TIP "
                         "token selection, AdaKD temperatures, sparse top-k teachers)"))

CATALOG = [
    Entry("distill", "on-policy distillation: the student samples, a frozen teacher scores every completion token "
          "with its full distribution; reverse KL (default), forward KL or GKD's generalised JSD(beta)",
          "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes (arXiv 2306.13649)",
          "confirmed", "a teacher model with the student's tokenizer"),
    Entry("distill (token_selection = tip)", "TIP token selection: the top keep_fraction by student entropy plus the "
          "low-entropy / high-divergence quadrant (batch medians); quadrant fractions logged every step",
          "TIP: Token Importance in On-Policy Distillation (arXiv 2604.14084)", "reconstructed",
          "a teacher model", training="works (median thresholds and the union rule are our reading of the paper)"),
    Entry("distill (temperature = adakd, token_selection = latf)", "AdaKD: inverse-difficulty token temperatures "
          "(IDTS, Hellinger difficulty, T^2 weights) and loss-driven adaptive token focusing (LATF)",
          "LLM-Oriented Token-Adaptive Knowledge Distillation (arXiv 2510.11615)", "confirmed", "a teacher model",
          training="works (formulas from the official code; on-policy samples instead of the paper's dataset)"),
    Entry("distill (teacher_top_k, softening = probability)", "sparse top-k teacher with probability-domain "
          "softening p^(1/T) / sum p^(1/T) (equal to softmax(z / T); tested)",
          "Sparse Knowledge Distillation: A Mathematical Framework for Probability-Domain Temperature Scaling and "
          "Multi-Stage Compression (arXiv 2601.03195)", "reconstructed", "a teacher model",
          training="works (both distributions renormalised on the teacher's top-k support: our choice)"),
]
