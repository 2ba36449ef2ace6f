"""`credo train-rm`: train an outcome reward model from preference pairs (Bradley-Terry) and report its
held-out pairwise accuracy.

Pairs come from a JSONL file (`--pairs FILE`, TRL's explicit-prompt preference format):

    {"prompt": "What is 2+3?", "chosen": "<answer>5</answer>", "rejected": "<answer>6</answer>"}
    {"prompt": "...", "chosen": "...", "rejected": "...", "margin": 1.0, "split": "test"}

(`margin` optional, a finite number; `split` optional, "train" or "test", default a stable hash of the
prompt, as the JSONL task), or from a task's verifier (`--task NAME`): `--samples` completions per
prompt sampled from `--model` at temperature 1, scored by the task, and every (correct, wrong) pair of
a prompt kept (at most `--pairs-per-prompt`; a prompt without a correct sample pairs its demonstration
with each wrong sample). Every problem with the file is a CredoError naming the file, line and field.

Loss and model: `judges/orm.py` (`bradley_terry_loss`, `OutcomeRewardModel`). AdamW (backbone `lr`,
head `head_lr`), fixed seed, bf16 autocast optional. Held-out: pairwise accuracy P(r_c > r_r) on the
test pairs. The folder it writes is loaded in training with `rl.reward_model = "rm:<folder>"`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from credo.errors import CredoError
from credo.gpu import resolve_precision
from credo.judges.heads import add_head_training_args, check_head_training_args, head_optimizer
from credo.judges.orm import OutcomeRewardModel, bradley_terry_loss


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


def read_pairs(path: str | Path) -> dict[str, list[PreferencePair]]:
    """{"train": [...], "test": [...]} from a preference JSONL file (see the module docstring)."""
    from credo.tasks.base import SPLITS, split_of
    from credo.tasks.data_files import read_records  # (also Parquet / CSV / datasets folders of pairs)

    path = Path(path)
    if not path.exists():
        raise CredoError(f"train-rm: pairs file not found: {path}")

    out: dict[str, list[PreferencePair]] = {"train": [], "test": []}
    for record in read_records(path):  # (JSONL lines: UTF-8, JSON objects, errors with file:line)
        where, row = record.where, record.row
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise CredoError(f"{where}: field {name!r} must be a non-empty string")
        margin = row.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise CredoError(f"{where}: field 'margin' must be a finite number, got {margin!r}")
        split = row.get("split", split_of(row["prompt"]))
        if split not in SPLITS:
            raise CredoError(f"{where}: field 'split' must be 'train' or 'test', got {split!r}")
        out[split].append(PreferencePair(row["prompt"], row["chosen"], row["rejected"], float(margin)))
    if not out["train"]:
        raise CredoError(f"{path}: no training pairs")
    return out


def verifier_pairs(task, examples, policy, *, samples: int, pairs_per_prompt: int, seed: int,
                   max_new_tokens: int = 32, stop: tuple[str, ...] = ("</answer>",)) -> tuple[list[PreferencePair], dict[str, float]]:
    """Preference pairs from the task's verifier on the policy's own samples (see the module docstring);
    also (prompt, response, correct) statistics: {"samples", "correct", "prompts_mixed"}."""
    from credo.rollout.base import SamplingParams
    from credo.rollout.torch_engine import TorchEngine
    from credo.train.evaluate import encode_prompts, safe_score

    engine = TorchEngine(policy.model, policy.tokenizer)
    prompts = encode_prompts(policy.tokenizer, task, examples)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, stop=stop)
    rng = random.Random(seed)
    pairs, n_correct, mixed = [], 0, 0
    for at in range(0, len(examples), 16):
        outs = engine.generate(prompts[at:at + 16], samples, sampling, seed=seed + at)
        for ex, group in zip(examples[at:at + 16], outs):
            verdicts = [(c.text, safe_score(task, c.text, ex)[0].correct) for c in group]
            good = [t for t, ok in verdicts if ok]
            bad = [t for t, ok in verdicts if not ok]
            n_correct += len(good)
            mixed += bool(good and bad)
            if not bad:
                continue
            good = good or [ex.demonstration]
            combos = [(g, b) for g in good for b in bad]
            rng.shuffle(combos)
            pairs += [PreferencePair(ex.prompt, g, b) for g, b in combos[:pairs_per_prompt]]
    return pairs, {"samples": float(len(examples) * samples), "correct": float(n_correct), "prompts_mixed": float(mixed)}


@torch.no_grad()
def pairwise_accuracy(rm: OutcomeRewardModel, pairs: Sequence[PreferencePair], batch_size: int = 32) -> float:
    """P(r(x, y_c) > r(x, y_r)) over the pairs (a tie counts one half); NaN without pairs."""
    if not pairs:
        return float("nan")
    was = rm.training
    rm.eval()
    chosen = rm.rewards([(p.prompt, p.chosen) for p in pairs], batch_size=batch_size)
    rejected = rm.rewards([(p.prompt, p.rejected) for p in pairs], batch_size=batch_size)
    rm.train(was)
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


@dataclass
class RMTrainSettings:
    steps: int = 200
    batch_size: int = 16
    lr: float = 2e-5
    head_lr: float = 1e-3
    center_coef: float = 0.0
    seed: int = 0
    bf16: bool = True
    eval_every: int = 100


def train_rm(rm: OutcomeRewardModel, train: Sequence[PreferencePair], test: Sequence[PreferencePair],
             settings: RMTrainSettings, *, log=print) -> dict:
    """Train in place; returns {"loss": [...], "accuracy": [(step, held-out accuracy)], "seconds"}."""
    if not train:
        raise CredoError("train-rm: no training pairs")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = head_optimizer(rm, rm.head, lr=settings.lr, head_lr=settings.head_lr)
    device = rm.head.weight.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    metrics: dict = {"loss": [], "accuracy": [], "seconds": 0.0}
    start, order = time.perf_counter(), []
    rm.train()
    for step in range(1, settings.steps + 1):
        if len(order) < settings.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        batch = [train[i] for i in order[: settings.batch_size]]
        del order[: settings.batch_size]
        with autocast:
            rewards = rm.rewards([(p.prompt, p.chosen) for p in batch] + [(p.prompt, p.rejected) for p in batch],
                                 batch_size=2 * len(batch))
        margin = torch.tensor([p.margin for p in batch], device=rewards.device)
        loss = bradley_terry_loss(rewards[: len(batch)], rewards[len(batch):], margin=margin,
                                  center_coef=settings.center_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        metrics["loss"].append(float(loss.detach()))
        if step % settings.eval_every == 0 or step == settings.steps:
            accuracy = pairwise_accuracy(rm, test)
            metrics["accuracy"].append((step, accuracy))
            recent = metrics["loss"][-settings.eval_every:]
            log(f"train-rm step {step}/{settings.steps}: loss {sum(recent) / len(recent):.4f}, "
                f"held-out pairwise accuracy {accuracy:.4f}")
    rm.eval()
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def add_parser(sub) -> None:
    p = sub.add_parser("train-rm", help="train an outcome reward model from preference pairs (Bradley-Terry)")
    p.add_argument("--out", required=True, help="folder to write the reward model into (must not exist)")
    p.add_argument("--model", default="smollm2", help="backbone (and sampler with --task): smollm2, tiny, or a model folder")
    p.add_argument("--pairs", default=None, help="preference pairs JSONL (prompt, chosen, rejected[, margin, split])")
    p.add_argument("--task", default=None, help="build pairs from this task's verifier on --model's samples")
    p.add_argument("--task-params", default="{}", help="the task's parameters as JSON (e.g. '{\"difficulty\": 2}')")
    p.add_argument("--train-size", type=int, default=600, help="training prompts (--task)")
    p.add_argument("--test-size", type=int, default=100, help="held-out prompts (--task)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (--task)")
    p.add_argument("--pairs-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32, help="sample length (--task)")
    p.add_argument("--center-coef", type=float, default=0.0, help="TRL's center_rewards_coefficient (0: off)")
    add_head_training_args(p, steps=200)
    p.set_defaults(func=cmd_train_rm)


def cmd_train_rm(args, rest) -> int:
    from credo.models import load_policy
    from credo.tasks import make_task

    if rest:
        raise CredoError(f"train-rm: unknown arguments {' '.join(rest)}")
    if (args.pairs is None) == (args.task is None):
        raise CredoError("train-rm: give exactly one of --pairs FILE or --task NAME")
    out = check_head_training_args("train-rm", args,
                                   ("train_size", "test_size", "samples", "pairs_per_prompt", "max_new_tokens"))
    policy = load_policy(args.model, seed=args.seed)
    stats: dict[str, float] = {}
    if args.pairs is not None:
        split = read_pairs(args.pairs)
        train, test = split["train"], split["test"]
        source = {"pairs": str(args.pairs)}
    else:
        try:
            params = json.loads(args.task_params)
        except ValueError as exc:
            raise CredoError(f"train-rm: --task-params is not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise CredoError("train-rm: --task-params must be a JSON object")
        task = make_task(args.task, **params)
        kw = dict(samples=args.samples, pairs_per_prompt=args.pairs_per_prompt, max_new_tokens=args.max_new_tokens)
        train, stats = verifier_pairs(task, task.examples("train", args.train_size, args.seed), policy, seed=args.seed, **kw)
        test, test_stats = verifier_pairs(task, task.examples("test", args.test_size, args.seed), policy,
                                          seed=args.seed + 1, **kw)
        stats.update({f"test_{k}": v for k, v in test_stats.items()})
        source = {"task": args.task, "task_params": params}
        print(f"train-rm: {len(train)} training pairs, {len(test)} held-out pairs from {args.task}'s verifier on "
              f"{args.model}'s samples (train: {stats['correct']:.0f} of {stats['samples']:.0f} correct)", flush=True)
    rm = OutcomeRewardModel(policy.model, policy.tokenizer, meta={"base": args.model, **source})
    settings = RMTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                               center_coef=args.center_coef, seed=args.seed,
                               bf16=resolve_precision(args.precision, torch.device("cpu")) == "bf16",
                               eval_every=max(1, min(100, args.steps)))
    before = pairwise_accuracy(rm, test)
    print(f"train-rm: held-out pairwise accuracy before training: {before:.4f} ({len(test)} pairs)", flush=True)
    metrics = train_rm(rm, train, test, settings, log=lambda s: print(s, flush=True))
    final = metrics["accuracy"][-1][1]
    rm.save(out, held_out_pairwise_accuracy=final, steps=args.steps, train_pairs=len(train), test_pairs=len(test))
    (out / "metrics.json").write_text(json.dumps({"accuracy_before": before, "pairs": stats, **metrics}, indent=2) + "\n")
    print(f"train-rm: wrote {out} (held-out pairwise accuracy {final:.4f}; {metrics['seconds']:.0f} s)", flush=True)
    return 0
