"""WSRL warm starts for PPO with a critic (`rl.warm_start = "wsrl" | "replay"`, `rl.warm_start_params`).

Paper: "Efficient Online Reinforcement Learning Fine-Tuning Need Not Retain Offline Data" (WSRL,
arXiv 2412.07762). Checked against the official code (zhouzypaul/wsrl, `finetune.py`): after offline
pre-training, the online phase starts with `warmup_steps` (5000) environment steps of the pre-trained
policy with NO updates, which seed an initially empty online buffer; then online RL samples its batches
from that buffer only (`offline_data_ratio` 0). `offline_data_ratio > 0` ("mixed" sampling, RLPD's 0.5)
is the baseline that keeps replaying offline data; the restored agent keeps its optimizer state.

Here, on credo's PPO path (a token-level estimator that reads a critic, e.g. rl.credit gae), before the
first RL step:
  (1) pre-training on offline rows (prompt, response, reward):
      critic: `critic_steps` AdamW steps of value regression on `batch_rows` rows each,
          L_V = 0.5 * token mean over the rows' response tokens of (V(s_t) - G_t)^2,
          G_t = gamma^(n_t) R   (n_t = response tokens after t; gamma = the estimator's own, 1 for gae:
          the outcome reward broadcast to every response token, which is exactly what `critic_returns`
          regresses on with gamma = lam = 1 and no KL). Monte Carlo returns, as WSRL's CalQL pre-training
          (its ReplayBufferMC); no value clip (there are no collection-time values to stay near).
      policy (`policy_steps`, default 0): "sft" = plain NLL token mean on the rows with reward >=
          `min_reward` (rejection-sampling fine-tuning); "awr" = IQL's advantage-weighted regression as in
          WSRL's `awr_actor_loss`: -min(exp(temperature * (G_t - V(s_t))), 100) log pi(y_t), token mean.
          Default "sft": with the default source (the task's demonstrations, all reward 1) the AWR
          weights only reflect the critic's error, and the supervised warm-up stage is already SFT;
          "awr" is for files with mixed rewards, where it down-weights the bad rows instead of dropping them.
  (2) "wsrl": `warmup_rollouts` rollout batches (rl.prompts_per_step x rl.group_size) of the pre-trained
      policy, each used only to re-fit the critic with the RL critic update (same returns, clip, epochs);
      the policy is not updated. PPO keeps no buffer, so WSRL's "collect without updating, then train on
      it" becomes "fit the critic on it", which is what the warm-up is for: recalibrating the value
      function on the online distribution before the actor follows it.
  (3) "wsrl": ordinary online PPO; the offline rows are never seen again.
      "replay": the same pre-training (no warm-up rollouts by default), then every RL batch gets
      round(n_online x f / (1 - f)) offline rows appended (f = `replay_fraction`, default 0.5 as RLPD /
      WSRL's mixed sampling), so a fraction f of every batch is offline data, in the credit (GAE), the
      policy update and the critic update. Their behaviour logprobs are the current policy's (scored
      before the update), so their first-update ratio is 1, as for recomputed on-policy rows.

Offline rows (`source`): "task" = the demonstrations of `pool` training examples of the task, reward 1
(what the built-in verifiers give a correct completion), plus with `self_samples` = N the policy's own
rl.group_size samples of N training prompts before any pre-training, scored by the verifier; or a JSONL /
Parquet / CSV file with `prompt_field`, `response_field` and optional `reward_field` (a row without a
reward gets the verifier's score against its `answer_field`).

Optimizers: the critic pre-trains with the run's critic AdamW (lr `critic_lr`, default rl.critic_lr),
the policy with the RL AdamW (lr `policy_lr`, default rl.lr): their moments carry into RL, as WSRL's
restored agent does. After policy pre-training the frozen reference model (when the run has one; not
with LoRA, whose reference is the base) is reset to the pre-trained policy: RL starts there.

Why an RL option and not a stage kind (stages/): the critic is built by the RL stage, lives in its
checkpoints and its warm-up rollouts use the RL engine, settings and rewards; a stage would hand all of
it over. Resume: each pre-training step and warm-up rollout is one unit; with run.checkpoint_every = k
a checkpoint `step_0` (stage "rl", RL step 0) is written every k units and when the warm start ends,
with the progress in state.json["warm_start"] (every RL checkpoint has it), so --resume after a SIGKILL
continues exactly (rows drawn from generators seeded by (run.seed, phase, unit)). Crash point:
`CREDO_FAULT=warm_start:<n>` (after the n-th unit's update, before its checkpoint).
Logged: phase "warm_start" rows (part pool / critic / policy / warmup_rollout); RL rows in replay mode get
replay_rows, replay_fraction, replay_reward_mean. Not built: several ranks (dist.strategy).
Status: reconstructed (the warm-up phase's order and the data-retention choice are WSRL's, confirmed in
its code; their PPO / language-model form, MC value targets, SFT / AWR policy pre-training are assumed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError

WARM_STARTS = ("none", "wsrl", "replay")
POLICY_LOSSES = ("sft", "awr")
AWR_MAX_WEIGHT = 100.0  # WSRL iql.py awr_actor_loss adv_clip_max
PARTS = ("critic", "policy", "warmup_rollout")


@dataclass(frozen=True)
class WarmStartParams:
    """`rl.warm_start_params` (see the module docstring)."""

    source: str = "task"  # "task" or a data file (JSONL / Parquet / CSV / datasets folder)
    pool: int = 256  # source "task": training examples whose demonstrations are offline rows
    self_samples: int = 0  # prompts whose rl.group_size pre-RL policy samples join the rows, scored
    prompt_field: str = "prompt"
    response_field: str = "response"
    reward_field: str = "reward"  # optional per row; missing: the verifier's score against answer_field
    answer_field: str = "answer"
    max_response_tokens: int = 256  # longer responses are cut (the EOS is kept)
    batch_rows: int = 16  # offline rows per pre-training optimizer step
    critic_steps: int = 20
    critic_lr: float | None = None  # None: rl.critic_lr
    policy_steps: int = 0
    policy_lr: float | None = None  # None: rl.lr
    policy_loss: str = "sft"  # "sft" (rows with reward >= min_reward) or "awr"
    min_reward: float = 1.0
    awr_temperature: float = 1.0  # WSRL IQLAgent.create default (its antmaze config: 10)
    warmup_rollouts: int | None = None  # None: 2 for "wsrl", 0 for "replay"
    replay_fraction: float | None = None  # "replay" only; None: 0.5


# -- the math --------------------------------------------------------------------------------------

def offline_value_targets(rewards: torch.Tensor, loss_mask: torch.Tensor, *, gamma: float = 1.0) -> torch.Tensor:
    """Monte Carlo value targets [B, T] float32 of offline rows: G_t = gamma^(n_t) R_b on the loss tokens,
    n_t = loss tokens of row b after t (the outcome sits on the last one); 0 off the mask.

    rewards [B], loss_mask [B, T] bool. gamma = 1 (gae's default): R_b broadcast to every loss token.
    Equal to gae's critic returns A + V at lam = 1 for any V (tests/test_warm_start.py). Status: reconstructed
    (Monte Carlo returns as WSRL's CalQL pre-training, ReplayBufferMC; no KL term: offline rows have no
    behaviour logprobs).
    >>> offline_value_targets(torch.tensor([2.0]), torch.tensor([[False, True, True, True]]), gamma=0.5).tolist()
    [[0.0, 0.5, 1.0, 2.0]]
    """
    mask = loss_mask.bool()
    after = mask.flip(1).long().cumsum(1).flip(1) - mask.long()  # loss tokens strictly after t
    g = torch.as_tensor(gamma, dtype=torch.float64) ** after.to(torch.float64)
    out = rewards.to(torch.float64)[:, None] * g
    return torch.where(mask, out, torch.zeros_like(out)).to(torch.float32)


def offline_value_loss(values: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """0.5 * token mean of (V - G)^2 over the loss tokens (a scalar; 0 with no loss token).
    values, targets [B, T] float, loss_mask [B, T] bool. The critic's value loss without the clip."""
    m = loss_mask.bool()
    return (0.5 * (values - targets) ** 2)[m].sum() / max(int(m.sum()), 1)


def awr_weights(targets: torch.Tensor, values: torch.Tensor, loss_mask: torch.Tensor, *,
                temperature: float = 1.0, max_weight: float = AWR_MAX_WEIGHT) -> torch.Tensor:
    """AWR token weights [B, T]: min(exp(temperature (G_t - V_t)), max_weight) on the loss tokens, 0 off.
    Paper: IQL (arXiv 2110.06169). Status: confirmed (WSRL wsrl/agents/iql.py `awr_actor_loss`: exp(adv *
    temperature), clipped at adv_clip_max 100); the token-level advantage G_t - V_t is this module's assumption."""
    w = torch.exp(temperature * (targets.double() - values.double())).clamp(max=max_weight)
    return torch.where(loss_mask.bool(), w, torch.zeros_like(w)).float()


# -- config ----------------------------------------------------------------------------------------

def _bad(name: str, value: Any, why: str) -> CredoError:
    return CredoError(f"rl.warm_start_params[{name!r}]: {why}, got {value!r}")


def warm_start_params(table: dict[str, Any], mode: str) -> WarmStartParams:
    """WarmStartParams from rl.warm_start_params, every key, type and range checked, defaults resolved."""
    hints = {f.name: f.type for f in dataclasses.fields(WarmStartParams)}
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise CredoError(f"rl.warm_start_params: unknown key(s) {', '.join(unknown)}; valid: {', '.join(hints)}")
    for name, value in table.items():
        kind = hints[name].replace(" | None", "")
        if value is None and "None" in hints[name]:
            continue
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(name, value, "must be an integer")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value)):
            raise _bad(name, value, "must be a number")
        if kind == "str" and (not isinstance(value, str) or not value.strip()):
            raise _bad(name, value, "must be a non-empty string")
    p = WarmStartParams(**table)
    for name in ("self_samples", "critic_steps", "policy_steps", "warmup_rollouts"):
        if getattr(p, name) is not None and getattr(p, name) < 0:
            raise _bad(name, getattr(p, name), "must be >= 0")
    for name in ("pool", "batch_rows", "max_response_tokens"):
        if getattr(p, name) < 1:
            raise _bad(name, getattr(p, name), "must be >= 1")
    for name in ("critic_lr", "policy_lr", "awr_temperature"):
        if getattr(p, name) is not None and getattr(p, name) <= 0:
            raise _bad(name, getattr(p, name), "must be > 0")
    if p.policy_loss not in POLICY_LOSSES:
        raise _bad("policy_loss", p.policy_loss, f"must be one of {', '.join(POLICY_LOSSES)}")
    if mode == "wsrl" and p.replay_fraction is not None:
        raise _bad("replay_fraction", p.replay_fraction, "is for rl.warm_start \"replay\" (wsrl never replays "
                                                          "offline rows)")
    if p.replay_fraction is not None and not 0.0 < p.replay_fraction < 1.0:
        raise _bad("replay_fraction", p.replay_fraction, "must be in (0, 1) (the offline share of each batch)")
    if p.source != "task":
        from pathlib import Path

        if not Path(p.source).expanduser().exists():
            raise _bad("source", p.source, "is neither \"task\" nor an existing data file")
    return dataclasses.replace(p, warmup_rollouts=(2 if mode == "wsrl" else 0) if p.warmup_rollouts is None
                               else p.warmup_rollouts,
                               replay_fraction=0.5 if mode == "replay" and p.replay_fraction is None
                               else p.replay_fraction)


def check_warm_start(cfg) -> None:
    """rl.warm_start and its params at config validation, before anything loads (CredoError naming the field)."""
    from credo.credit import CREDIT
    from credo.credit.base import credit_needs_of

    rl = cfg.rl
    if rl.warm_start not in WARM_STARTS:
        raise CredoError(f"unknown rl.warm_start {rl.warm_start!r}; valid: {', '.join(WARM_STARTS)}")
    if rl.warm_start == "none":
        if rl.warm_start_params:
            raise CredoError(f"rl.warm_start_params is set ({', '.join(sorted(rl.warm_start_params))}) but "
                             f"rl.warm_start is 'none'; set rl.warm_start \"wsrl\" or \"replay\", or remove them")
        return
    if "values" not in credit_needs_of(CREDIT.get(rl.credit)):
        raise CredoError(f"rl.warm_start needs a critic estimator that reads values (credo list credit: needs values) (rl.credit "
                         f"{rl.credit!r} reads no values, so there is no critic to warm-start)")
    params = warm_start_params(rl.warm_start_params, rl.warm_start)
    if cfg.dist.strategy != "none":
        raise CredoError(f"rl.warm_start {rl.warm_start!r} with dist.strategy {cfg.dist.strategy!r} is not built "
                         f"yet; use one process")
    if params.source != "task":
        for record in _records(params):  # row problems now, not after the warm-up stage
            _file_row(record, params, None)


# -- offline rows ----------------------------------------------------------------------------------

@dataclass
class OfflineRow:
    """One offline row: chat prompt ids, response ids (+ EOS), which response tokens are trained, reward."""

    prompt_ids: list[int]
    response_ids: list[int]
    trainable: list[bool]
    reward: float
    prompt: str  # the user message and reference answer (the Example handed to credit providers)
    answer: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _records(params: WarmStartParams):
    from credo.tasks.data_files import read_records

    return read_records(params.source)


def _file_row(record, params: WarmStartParams, task) -> tuple[str, str, float | None, str]:
    """(prompt, response, reward or None, answer) of a file row; CredoError naming the row and field."""
    where = f"rl.warm_start_params['source']: {record.where}"
    values = []
    for name in (params.prompt_field, params.response_field):
        value = record.row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise CredoError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        values.append(value)
    reward, answer = record.row.get(params.reward_field), record.row.get(params.answer_field)
    if isinstance(reward, str) and reward.strip():  # CSV cells are strings
        try:
            reward = float(reward)
        except ValueError:
            raise CredoError(f"{where}: field {params.reward_field!r} must be a number, got {reward!r}") from None
    if reward == "" or reward is None:
        reward = None
        if not isinstance(answer, str) or not answer.strip():
            raise CredoError(f"{where}: no {params.reward_field!r} and no {params.answer_field!r} to score the "
                             f"response with the task's verifier")
    elif isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise CredoError(f"{where}: field {params.reward_field!r} must be a finite number, got {reward!r}")
    return values[0], values[1], None if reward is None else float(reward), answer if isinstance(answer, str) else ""


def offline_rows(params: WarmStartParams, task, tokenizer, seed: int) -> list[OfflineRow]:
    """The rows of `source` (not the self samples), encoded once; file rows without a reward are scored."""
    from credo.tasks.base import Example
    from credo.train.evaluate import safe_score
    from credo.train.sft import encode_pairs

    if params.source == "task":
        examples = [ex for ex in task.examples("train", params.pool, seed=seed + 50_000)
                    if ex.demonstration and ex.demonstration.strip()]
        if not examples:
            raise CredoError(f"rl.warm_start_params['source'] = 'task': task {getattr(task, 'name', task)!r} gives "
                             f"no demonstrations; give a file with prompt / response / reward fields")
        items = [(ex.prompt, ex.demonstration, 1.0, ex.answer) for ex in examples]
    else:
        items = []
        for record in _records(params):
            prompt, response, reward, answer = _file_row(record, params, task)
            if reward is None:
                reward = safe_score(task, response, Example(prompt, answer, ""))[0].reward
            items.append((prompt, response, reward, answer))
        if not items:
            raise CredoError(f"rl.warm_start_params['source']: {params.source} holds no rows")
    encoded = encode_pairs(tokenizer, task, [(p, r) for p, r, _, _ in items], params.max_response_tokens)
    return [OfflineRow(ids[:start], ids[start:], [True] * (len(ids) - start), reward, prompt, answer)
            for (ids, start), (prompt, _, reward, answer) in zip(encoded, items)]


# -- progress (state.json["warm_start"]) -------------------------------------------------------------

@dataclass
class Progress:
    """How far the warm start got: units done per part, whether it finished, the pre-RL self samples."""

    critic: int = 0
    policy: int = 0
    warmup_rollout: int = 0
    done: bool = False
    self_rows: list[dict] | None = None  # OfflineRow.to_json of the self samples (None: not drawn yet)

    @property
    def units(self) -> int:
        return self.critic + self.policy + self.warmup_rollout


def row_was_done(row: dict, state: dict) -> bool:
    """Whether a metrics.jsonl "warm_start" row happened before a checkpoint with `state` (restore keeps it)."""
    progress = state.get("warm_start") if state.get("stage") == "rl" else None
    if progress is None:
        return False
    if progress.get("done") or row.get("part") == "pool":
        return True
    return row.get("step", 0) < progress.get(row.get("part"), 0)


# -- the warm start --------------------------------------------------------------------------------

class WarmStart:
    """The bound warm start of a run: mode, parameters, offline rows, progress; `run` does (1)-(2) before the
    first RL step, `replay_rows` adds the offline rows of an RL batch ("replay")."""

    def __init__(self, mode: str, params: WarmStartParams, rows: Sequence[OfflineRow], *, seed: int, gamma: float,
                 critic_lr: float, policy_lr: float, progress: Progress | None = None):
        self.mode, self.params, self.base_rows, self.seed, self.gamma = mode, params, list(rows), seed, gamma
        self.critic_lr, self.policy_lr = critic_lr, policy_lr
        self.progress = progress or Progress()
        self.every = 1  # units per checkpoint (run.checkpoint_every), set by make_warm_start

    @property
    def rows(self) -> list[OfflineRow]:
        extra = [OfflineRow(**r) for r in self.progress.self_rows or []]
        return self.base_rows + extra

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self.progress)

    def generator(self, part: str, index: int) -> torch.Generator:
        """Seeded by (run.seed, part, index): a unit's rows do not depend on what ran before it (exact resume)."""
        code = {"critic": 1, "policy": 2, "replay": 3, "warmup_rollout": 4}[part]
        return torch.Generator().manual_seed(self.seed * 1_000_037 + code * 10_000_019 + index)

    def draw(self, candidates: Sequence[int], n: int, generator: torch.Generator) -> list[int]:
        """n row indices of `candidates`: without repeats while the candidates allow."""
        if n <= len(candidates):
            return [candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:n].tolist()]
        return [candidates[i] for i in torch.randint(len(candidates), (n,), generator=generator).tolist()]

    def completions(self, indices: Sequence[int]):
        from credo.rollout.base import Completion

        rows = self.rows
        return [Completion(list(rows[i].prompt_ids), list(rows[i].response_ids), [0.0] * len(rows[i].response_ids),
                           list(rows[i].trainable), "stop", "", meta={"offline": True}) for i in indices]

    def batch(self, indices: Sequence[int], pad_id: int):
        """A RolloutBatch [B = len(indices), T] of offline rows (their loss mask: the trainable response tokens)."""
        from credo.batch import build_batch

        return build_batch(self.completions(indices), [self.rows[i].reward for i in indices],
                           list(range(len(indices))), pad_id=pad_id)

    # -- (1) pre-training ----------------------------------------------------------------------------

    def critic_step(self, ctx, index: int) -> dict[str, float]:
        """One AdamW step of the critic on `batch_rows` offline rows against their MC returns (no clip)."""
        from credo.critic import compute_values, critic_update

        generator = self.generator("critic", index)
        batch = self.batch(self.draw(range(len(self.rows)), self.params.batch_rows, generator), _pad(ctx))
        batch.values = compute_values(ctx.critic, batch, ctx.settings.micro_batch_size, ctx.settings.autocast_dtype)
        targets = offline_value_targets(batch.rewards, batch.loss_mask, gamma=self.gamma)
        _set_lr(ctx.critic_optimizer, self.critic_lr)
        settings = dataclasses.replace(ctx.critic_settings, epochs=1, minibatches=1, value_clip=None)
        out = critic_update(ctx.critic, ctx.critic_optimizer, batch, targets, settings, generator,
                            ctx.settings.autocast_dtype)
        return {k: out[k] for k in ("value_loss", "value_mean", "explained_variance")} | \
            {"target_mean": float(targets[batch.loss_mask].mean())}

    def policy_candidates(self) -> list[int]:
        if self.params.policy_loss == "awr":
            return list(range(len(self.rows)))
        keep = [i for i, r in enumerate(self.rows) if r.reward >= self.params.min_reward]
        if not keep:
            raise CredoError(f"rl.warm_start_params['min_reward']: no offline row has a reward >= "
                             f"{self.params.min_reward} to fine-tune the policy on (policy_loss 'sft')")
        return keep

    def policy_step(self, ctx, index: int) -> dict[str, float]:
        """One AdamW step of the policy: token mean of -w_t log pi(y_t) (w = 1 for "sft", AWR weights)."""
        from credo.critic import compute_values
        from credo.logprobs import token_logprobs
        from credo.rollout.torch_engine import autocast_context

        generator = self.generator("policy", index)
        batch = self.batch(self.draw(self.policy_candidates(), self.params.batch_rows, generator), _pad(ctx))
        weights = batch.loss_mask.float()
        if self.params.policy_loss == "awr":
            values = compute_values(ctx.critic, batch, ctx.settings.micro_batch_size, ctx.settings.autocast_dtype)
            targets = offline_value_targets(batch.rewards, batch.loss_mask, gamma=self.gamma)
            weights = awr_weights(targets, values, batch.loss_mask, temperature=self.params.awr_temperature)
        model, total = ctx.model, max(float(batch.loss_mask.sum()), 1.0)
        _set_lr(ctx.optimizer, self.policy_lr)
        model.train()
        device = next(model.parameters()).device
        loss_sum = nll_sum = 0.0
        for micro in torch.arange(len(batch)).split(ctx.settings.micro_batch_size):
            part = batch.select(micro)
            with autocast_context(ctx.settings.autocast_dtype, device):
                logprobs = token_logprobs(model, part.tokens, part.attention_mask, part.loss_mask)
            w = weights[micro, : part.tokens.shape[1]]
            loss = -(w * logprobs * part.loss_mask).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
            nll_sum += float(-(logprobs.detach() * part.loss_mask).sum()) / total
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.settings.max_grad_norm))
        if math.isfinite(grad_norm):  # a non-finite gradient must not reach the optimizer state
            ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        on = batch.loss_mask
        return {"policy_loss": loss_sum, "nll": nll_sum, "grad_norm": grad_norm,
                "weight_mean": float(weights[on].mean()) if bool(on.any()) else float("nan")}

    # -- (2) warm-up rollouts ----------------------------------------------------------------------

    def warmup_rollout(self, ctx, index: int, examples: Sequence) -> dict[str, float]:
        """Sample the step's prompts with the (frozen) pre-trained policy, score them as RL does, and fit
        the critic on them with the RL critic update; the policy and its optimizer are not touched."""
        from credo.batch import build_batch
        from credo.critic import compute_values, critic_returns, critic_update
        from credo.dist.shard import sample_groups
        from credo.rewards.terms import TermInputs
        from credo.train.evaluate import encode_prompts, too_long
        from credo.train.rl import behaviour_logprobs, score_groups, step_seed
        from credo.logprobs import token_logprobs
        from credo.rollout.torch_engine import autocast_context

        prompts = encode_prompts(ctx.tokenizer, ctx.task, examples)
        drop = set(too_long(prompts, ctx.max_prompt_tokens))
        examples = [e for i, e in enumerate(examples) if i not in drop]
        prompts = [p for i, p in enumerate(prompts) if i not in drop]
        if not examples:
            return {"skipped_prompts": float(len(drop))}
        # seeds below every RL step's (step_seed(seed, s), s >= 0): the warm-up never repeats an RL rollout
        groups = sample_groups(ctx, examples, prompts, range(len(examples)), step_seed(ctx.seed, -1 - index))
        completions, scores, group_ids, errors = score_groups(ctx.task, groups, examples, ctx.error_reward,
                                                              ctx.verifier)
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        if ctx.reward_mix is not None:  # the RL reward (not committed: a term's history sees RL steps only)
            rewards, _ = ctx.reward_mix(TermInputs.of(ctx.task, completions, examples, scores, group_ids,
                                                      list(range(len(examples)))))
        if ctx.overlong is not None:
            rewards, _ = ctx.overlong(rewards, torch.tensor([len(c.token_ids) for c in completions]))
        batch = build_batch(completions, rewards.tolist(), group_ids, pad_id=_pad(ctx))
        if ctx.ref_model is not None:
            with torch.no_grad(), autocast_context(ctx.settings.autocast_dtype, batch.tokens.device):
                batch.ref_logprobs = token_logprobs(ctx.ref_model, batch.tokens, batch.attention_mask,
                                                    batch.loss_mask, temperature=ctx.settings.temperature)
        behaviour_logprobs(ctx, batch)  # (the returns' KL reward reads them, as in rl_step)
        batch.values = compute_values(ctx.critic, batch, ctx.settings.micro_batch_size, ctx.settings.autocast_dtype)
        returns = critic_returns(batch, ctx.credit)
        out = critic_update(ctx.critic, ctx.critic_optimizer, batch, returns, ctx.critic_settings,
                            self.generator("warmup_rollout", index), ctx.settings.autocast_dtype)
        return {"reward_mean": float(rewards.mean()), "accuracy": sum(s.correct for s in scores) / len(scores),
                "verifier_errors": float(errors), "skipped_prompts": float(len(drop)),
                **{k: out[k] for k in ("value_loss", "value_mean", "explained_variance")}}

    # -- the whole warm start ----------------------------------------------------------------------

    def run(self, ctx, *, write: Callable[[dict], None], save: Callable[[], None] | None,
            warmup_examples: Callable[[int], Sequence], refresh_reference: bool) -> None:
        """(1) and (2) from where the progress stands; `save` (None: no checkpoints) every
        run.checkpoint_every units (`self.every`) and at the end; `write` gets each unit's metrics row."""
        from credo.faults import maybe_die

        p = self.progress
        if p.done:
            return
        if p.units == 0 and p.self_rows is None:  # a fresh start: the pool, with the pre-RL self samples
            p.self_rows = [r.to_json() for r in self.self_samples(ctx)]
            rewards = [r.reward for r in self.rows]
            write({"phase": "warm_start", "part": "pool", "step": 0, "rows": len(rewards),
                   "self_rows": len(p.self_rows), "reward_mean": sum(rewards) / max(len(rewards), 1)})
        plan = [("critic", self.params.critic_steps), ("policy", self.params.policy_steps),
                ("warmup_rollout", self.params.warmup_rollouts)]
        total = sum(n for _, n in plan)
        for part, count in plan:
            while getattr(p, part) < count:
                index, t = getattr(p, part), time.perf_counter()
                if part == "critic":
                    metrics = self.critic_step(ctx, index)
                elif part == "policy":
                    metrics = self.policy_step(ctx, index)
                else:
                    metrics = self.warmup_rollout(ctx, index, warmup_examples(index))
                setattr(p, part, index + 1)
                if part == "policy" and p.policy == count:  # RL and the warm-up sample the pre-trained policy
                    self.policy_trained(ctx, refresh_reference)
                write({"phase": "warm_start", "part": part, "step": index, **metrics,
                       "step_time": time.perf_counter() - t})
                maybe_die("warm_start")
                if p.units == total:
                    self.finish(ctx)
                if save is not None and (p.units == total or p.units % self.every == 0):
                    save()
        if not p.done:  # (nothing to do: zero units)
            self.finish(ctx)
            if save is not None:
                save()

    def policy_trained(self, ctx, refresh_reference: bool) -> None:
        ctx.engine.load_weights(ctx.model, version=0)
        if refresh_reference and ctx.ref_model is not None:  # the KL anchor is the policy RL starts from
            ctx.ref_model.load_state_dict(ctx.model.state_dict())

    def finish(self, ctx) -> None:
        """The RL learning rates back (the RL loop sets the policy's every step; the critic's stays fixed)."""
        if ctx.critic_optimizer is not None:
            _set_lr(ctx.critic_optimizer, ctx.critic_settings.lr)
        self.progress.done = True

    def self_samples(self, ctx) -> list[OfflineRow]:
        """rl.group_size samples of the policy before pre-training on `self_samples` training prompts, scored."""
        from credo.dist.shard import sample_groups
        from credo.train.evaluate import encode_prompts, too_long
        from credo.train.rl import score_groups, step_seed

        n = self.params.self_samples
        if n == 0:
            return []
        examples = ctx.task.examples("train", n, seed=self.seed + 70_000)
        prompts = encode_prompts(ctx.tokenizer, ctx.task, examples)
        drop = set(too_long(prompts, ctx.max_prompt_tokens))
        examples = [e for i, e in enumerate(examples) if i not in drop]
        prompts = [q for i, q in enumerate(prompts) if i not in drop]
        if not examples:
            return []
        groups = sample_groups(ctx, examples, prompts, range(len(examples)), step_seed(ctx.seed, -1_000_000))
        completions, scores, group_ids, _ = score_groups(ctx.task, groups, examples, ctx.error_reward, ctx.verifier)
        return [OfflineRow(list(c.prompt_ids), list(c.token_ids), list(c.trainable), float(s.reward),
                           examples[g].prompt, examples[g].answer)
                for c, s, g in zip(completions, scores, group_ids) if c.token_ids]

    # -- (3) "replay" ------------------------------------------------------------------------------

    def replay_rows(self, ctx, step: int, completions: list, rewards: list[float], group_ids: list[int],
                    row_examples: list) -> tuple[list, list[float], list[int], list, dict[str, float]]:
        """The RL batch's rows with round(n f / (1 - f)) offline rows appended (each its own group), their
        behaviour logprobs scored by the current policy; and the replay metrics."""
        from credo.rollout.torch_engine import autocast_context
        from credo.logprobs import token_logprobs
        from credo.tasks.base import Example
        from credo.train.rl import scoring_model

        if self.mode != "replay":
            return completions, rewards, group_ids, row_examples, {}
        f = self.params.replay_fraction
        n = int(round(len(completions) * f / (1.0 - f)))
        if n == 0:
            return completions, rewards, group_ids, row_examples, {"replay_rows": 0.0}
        indices = self.draw(range(len(self.rows)), n, self.generator("replay", step))
        batch = self.batch(indices, _pad(ctx))
        model = scoring_model(ctx)
        with torch.no_grad(), autocast_context(ctx.settings.autocast_dtype, next(model.parameters()).device):
            logprobs = token_logprobs(model, batch.tokens, batch.attention_mask, batch.loss_mask,
                                      temperature=ctx.settings.temperature)
        offline = self.completions(indices)
        for row, c in enumerate(offline):
            start = len(c.prompt_ids)
            c.logprobs = logprobs[row, start: start + len(c.token_ids)].float().tolist()
        first = max(group_ids, default=-1) + 1
        rows = self.rows
        extra = [rows[i].reward for i in indices]
        return (completions + offline, rewards + extra, group_ids + list(range(first, first + n)),
                row_examples + [Example(rows[i].prompt, rows[i].answer, "") for i in indices],
                {"replay_rows": float(n), "replay_fraction": n / (n + len(completions)),
                 "replay_reward_mean": sum(extra) / n})


def _pad(ctx) -> int:
    from credo.train.evaluate import pad_token_id

    return pad_token_id(ctx.tokenizer)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_warm_start(cfg, task, tokenizer, credit, resumed_state: dict | None) -> WarmStart | None:
    """The run's warm start (None for rl.warm_start "none"); its progress from an RL checkpoint's state."""
    rl = cfg.rl
    if rl.warm_start == "none":
        return None
    from credo.credit.base import hparams_of

    params = warm_start_params(rl.warm_start_params, rl.warm_start)
    progress = None
    if resumed_state is not None and resumed_state.get("stage") == "rl":
        if "warm_start" not in resumed_state:
            raise CredoError("the checkpoint to resume from has no state for rl.warm_start (it was written by a "
                             "run without a warm start); resume with the run's own config")
        progress = Progress(**resumed_state["warm_start"])
    rows = offline_rows(params, task, tokenizer, cfg.run.seed)
    warm = WarmStart(rl.warm_start, params, rows, seed=cfg.run.seed, gamma=float(hparams_of(credit).get("gamma", 1.0)),
                     critic_lr=params.critic_lr or rl.critic_lr, policy_lr=params.policy_lr or rl.lr,
                     progress=progress)
    warm.every = max(cfg.run.checkpoint_every, 1)
    return warm


CATALOG = [
    Entry("wsrl", "before RL: critic value regression on offline rows (MC returns), optional SFT / AWR of the policy, "
          "then warm-up rollouts of the pre-trained policy that only re-fit the critic; online PPO never sees the "
          "offline rows again",
          "Efficient Online Reinforcement Learning Fine-Tuning Need Not Retain Offline Data (WSRL; arXiv 2412.07762)",
          "reconstructed", "a critic estimator (an rl.credit that reads values); offline rows (task demonstrations or a file)",
          training="works (WSRL's warm-up without updates becomes critic-only fitting: PPO keeps no buffer)"),
    Entry("replay", "the same pre-training, then a fixed fraction (0.5) of every PPO batch is offline rows (credit, "
          "policy and critic updates): the data-retention baseline WSRL argues against",
          "Efficient Online Reinforcement Learning Fine-Tuning Need Not Retain Offline Data (WSRL; arXiv 2412.07762), "
          "as its offline_data_ratio / RLPD (arXiv 2302.02948)", "reconstructed",
          "a critic estimator (an rl.credit that reads values); offline rows",
          training="works (offline rows' behaviour logprobs are the current policy's: ratio 1 on the first update)"),
]
