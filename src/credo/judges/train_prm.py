"""`credo train-prm`: train a process reward model from step labels and report held-out AUROC.

Loss (Lightman et al., arXiv 2305.20050; Math-Shepherd, arXiv 2312.08935): binary cross-entropy of the
step logits against y_k = 1[label_k > 0], over the steps with a verdict (label != 0), token-free:

    L = mean over labelled steps in the batch of BCEWithLogits(logit_k, y_k)

AdamW on all parameters (backbone lr `lr`, head lr `head_lr`), fixed seed, bf16 autocast optional.
Held-out AUROC (`auroc`) is computed on rows built from the task's test split, so no problem is shared
with training. The folder it writes is a `ProcessRewardModel` (`judges/prm.py`), loaded in training
with `rl.judge = "prm:<folder>"`, plus `metrics.json` (loss curve and AUROC).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from credo.errors import CredoError
from credo.gpu import resolve_precision
from credo.judges.heads import add_head_training_args, check_head_training_args, head_optimizer
from credo.judges.prm import ProcessRewardModel
from credo.judges.prm_data import StepRow


def auroc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve of scores for labels > 0 vs labels < 0 (labels == 0 ignored).

    The Mann-Whitney form: P(score_pos > score_neg) + 0.5 P(equal), over all positive/negative pairs,
    computed with average ranks (ties share their mean rank). NaN when a class is empty."""
    pairs = [(float(s), float(y) > 0) for s, y in zip(scores, labels) if float(y) != 0]
    n_pos = sum(1 for _, p in pairs if p)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    ranks = [0.0] * len(pairs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and pairs[order[j + 1]][0] == pairs[order[i]][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, (_, p) in zip(ranks, pairs) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class PRMTrainSettings:
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-5
    head_lr: float = 1e-3
    seed: int = 0
    bf16: bool = True
    eval_every: int = 100


def _bce(prm: ProcessRewardModel, rows: Sequence[StepRow]) -> torch.Tensor:
    encoded = [prm.encode(r.prompt, r.steps) for r in rows]
    logits, targets = [], []
    for r, e, lg in zip(rows, encoded, prm.logits(encoded)):
        keep = [k for k in range(len(e.ends)) if r.labels[k] != 0]
        if keep:
            logits.append(lg[keep])
            targets.append(torch.tensor([1.0 if r.labels[k] > 0 else 0.0 for k in keep], device=lg.device))
    if not logits:
        return torch.zeros((), requires_grad=True)
    return torch.nn.functional.binary_cross_entropy_with_logits(torch.cat(logits), torch.cat(targets))


def step_kind(step: str) -> str:
    """"answer" (holds an answer tag), "equation" (holds '='), else "other"."""
    return "answer" if "<answer>" in step else "equation" if "=" in step else "other"


@torch.no_grad()
def evaluate_prm(prm: ProcessRewardModel, rows: Sequence[StepRow], batch_size: int = 32) -> dict[str, float]:
    """Held-out step AUROC of the PRM's probabilities: over all labelled steps ("all"), and within each
    step kind ("answer", "equation"), which rules out scoring well by telling the kinds apart."""
    from credo.judges.prm import PRMJudge

    judge = PRMJudge(prm, low=0.0, high=1.0, batch_size=batch_size)
    scores = judge.score_many([(r.prompt, r.steps) for r in rows])
    flat = [(s, y, step_kind(t)) for r, row in zip(rows, scores) for s, y, t in zip(row, r.labels, r.steps)]
    out = {"all": auroc([s for s, _, _ in flat], [y for _, y, _ in flat])}
    for kind in ("answer", "equation"):
        out[kind] = auroc([s for s, _, k in flat if k == kind], [y for _, y, k in flat if k == kind])
    return out


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def train_prm(prm: ProcessRewardModel, train_rows: Sequence[StepRow], test_rows: Sequence[StepRow],
              settings: PRMTrainSettings, *, log=print) -> dict:
    """Train in place; returns metrics {"loss": [...], "auroc": [(step, {kind: value}), ...], "seconds"}."""
    if not train_rows:
        raise CredoError("train-prm: no training rows")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = head_optimizer(prm, prm.head, lr=settings.lr, head_lr=settings.head_lr)
    device = prm.head.weight.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    metrics: dict = {"loss": [], "auroc": [], "seconds": 0.0}
    start = time.perf_counter()
    order: list[int] = []
    prm.train()
    for step in range(1, settings.steps + 1):
        if len(order) < settings.batch_size:
            fresh = list(range(len(train_rows)))
            rng.shuffle(fresh)
            order += fresh
        batch = [train_rows[i] for i in order[: settings.batch_size]]
        del order[: settings.batch_size]
        with autocast:
            loss = _bce(prm, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prm.parameters(), 1.0)
        opt.step()
        metrics["loss"].append(float(loss.detach()))
        if step % settings.eval_every == 0 or step == settings.steps:
            prm.eval()
            value = evaluate_prm(prm, test_rows)
            prm.train()
            metrics["auroc"].append((step, value))
            recent = metrics["loss"][-settings.eval_every:]
            log(f"train-prm step {step}/{settings.steps}: loss {sum(recent) / len(recent):.4f}, "
                f"held-out step AUROC {_fmt(value)}")
    prm.eval()
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def label_rows(task, examples, labels: str, *, seed: int, per_example: int, policy=None, mc_n: int = 4,
               max_new_tokens: int = 64) -> list[StepRow]:
    """Rows for `examples` with calculator labels ("calculator") or Math-Shepherd MC labels ("mc")."""
    from credo.judges.prm_data import arith_chains, mc_step_labels

    if labels == "calculator":
        return arith_chains(task, examples, seed, per_example=per_example)
    if labels == "mc":
        from credo.rollout.base import SamplingParams
        from credo.rollout.torch_engine import TorchEngine
        from credo.train.evaluate import encode_prompts

        engine = TorchEngine(policy.model, policy.tokenizer)
        prompts = encode_prompts(policy.tokenizer, task, examples)
        sampling = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
        outs = engine.generate(prompts, per_example, sampling, seed=seed)
        exs, texts, ids = [], [], []
        for ex, p, row in zip(examples, prompts, outs):
            for c in row:
                exs.append(ex), texts.append(c.text), ids.append(p)
        rows, _ = mc_step_labels(engine, policy.tokenizer, task, exs, texts, ids, n=mc_n,
                                 sampling=sampling, seed=seed)
        return rows
    raise CredoError(f"train-prm: unknown --labels {labels!r}; valid: calculator, mc")


def add_parser(sub) -> None:
    p = sub.add_parser("train-prm", help="train a process reward model from step labels (held-out AUROC)")
    p.add_argument("--out", required=True, help="folder to write the PRM into (must not exist)")
    p.add_argument("--model", default="smollm2", help="backbone: smollm2, tiny, or a model folder")
    p.add_argument("--task", default="arith", help="task whose problems are labelled")
    p.add_argument("--difficulty", type=int, default=2, help="arith difficulty level")
    p.add_argument("--labels", default="calculator", choices=["calculator", "mc"],
                   help="calculator: arith's step labels; mc: Math-Shepherd Monte Carlo labels")
    p.add_argument("--train-size", type=int, default=2000, help="training problems")
    p.add_argument("--test-size", type=int, default=300, help="held-out problems")
    p.add_argument("--per-example", type=int, default=1, help="solutions per problem")
    p.add_argument("--mc-n", type=int, default=4, help="continuations per step (--labels mc)")
    add_head_training_args(p, steps=300)
    p.set_defaults(func=cmd_train_prm)


def cmd_train_prm(args, rest) -> int:
    from credo.models import load_policy
    from credo.tasks import make_task

    if rest:
        raise CredoError(f"train-prm: unknown arguments {' '.join(rest)}")
    out = check_head_training_args("train-prm", args, ("train_size", "test_size", "per_example", "mc_n"))
    params = {"difficulty": args.difficulty} if args.task == "arith" else {}
    task = make_task(args.task, **params)
    policy = load_policy(args.model, seed=args.seed)
    train_ex = task.examples("train", args.train_size, args.seed)
    test_ex = task.examples("test", args.test_size, args.seed)
    train_rows = label_rows(task, train_ex, args.labels, seed=args.seed, per_example=args.per_example,
                            policy=policy, mc_n=args.mc_n)
    test_rows = label_rows(task, test_ex, args.labels, seed=args.seed + 1, per_example=1, policy=policy,
                           mc_n=args.mc_n)
    prm = ProcessRewardModel(policy.model, policy.tokenizer,
                             meta={"task": args.task, "labels": args.labels, "base": args.model})
    settings = PRMTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                                seed=args.seed,
                               bf16=resolve_precision(args.precision, torch.device("cpu")) == "bf16",
                                eval_every=max(1, min(100, args.steps)))
    before = evaluate_prm(prm, test_rows)
    print(f"train-prm: {len(train_rows)} training rows, {len(test_rows)} held-out rows; "
          f"held-out step AUROC before training: {_fmt(before)}", flush=True)
    metrics = train_prm(prm, train_rows, test_rows, settings, log=lambda s: print(s, flush=True))
    final = metrics["auroc"][-1][1]
    prm.save(out, held_out_auroc=final, steps=args.steps, train_rows=len(train_rows))
    (out / "metrics.json").write_text(json.dumps({"auroc_before": before, **metrics}, indent=2) + "\n")
    print(f"train-prm: wrote {out} (held-out step AUROC {_fmt(final)}; {metrics['seconds']:.0f} s)", flush=True)
    return 0

