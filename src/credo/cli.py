"""`credo` command line: train, eval, generate, list.

    credo train [--preset default|tiny] [--config FILE.toml] [--rl.clip_high 0.28 ...]
    credo eval --model PATH|smollm2|tiny [--task arith] [--task.params.difficulty 2] [--n 500] [--samples 8]
    credo generate --model PATH "What is 2+3?"
    credo list [presets|recipes|tasks|objectives|credit|corrections|samplers|entropy|rewards|selection|curricula]
    credo compare --preset tiny --recipes grpo,dapo --seeds 0,1,2   (credo/report/compare.py)
    credo report RUN_OR_COMPARE_DIR...
    credo extract-rules --pairs PAIRS.jsonl --model FOLDER --out rules.json   (credo/rewards/autorule.py)

User errors (unknown names, missing files, malformed data) print `error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

from credo.errors import CredoError
from credo.resolve import _overrides, resolve_config  # (also imported from here by tests and scripts)


def cmd_train(args, rest) -> int:
    from credo.train.run import train

    from pathlib import Path

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise CredoError(f"--resume {run_dir}: not a run folder (no config.json)")
        if args.preset or args.config or args.recipe:
            raise CredoError("--resume takes the run folder's own config.json; drop --preset / --config / --recipe")
        cfg = resolve_config(None, str(run_dir / "config.json"), _overrides(rest))
        cfg.run.out_dir, cfg.run.name = str(run_dir.parent), run_dir.name
    else:
        notes: list[str] = []
        cfg = resolve_config(args.preset, args.config, _overrides(rest), recipe=args.recipe, notes=notes)
        for note in notes:
            print(f"credo: {note}", flush=True)
    summary = train(cfg, resume=bool(args.resume))
    keys = [k for k in ("base", "warmup", "rl") if k in summary]
    if keys:  # (ranks other than 0 of a torchrun job evaluate nothing)
        print("held-out accuracy: " + ", ".join(f"{k} {summary[k]['accuracy']:.1%}" for k in keys))
    return 0


def _task_from(args, rest):
    from credo.config import TaskConfig, set_dotted, TrainConfig
    from credo.tasks import make_task

    cfg = TrainConfig()
    cfg.task = TaskConfig(name=args.task)
    for key, value in _overrides(rest):
        if not key.startswith(("task.", "sampling.", "model.")):
            raise CredoError(f"{key!r} does not apply here; use task.*, sampling.* or model.* overrides")
        set_dotted(cfg, key, value)
    from credo.config import check_ranges

    check_ranges(cfg)
    return cfg, make_task(cfg.task.name, **cfg.task.params)


def cmd_eval(args, rest) -> int:
    from credo.models import load_policy
    from credo.rollout import SamplingParams, TorchEngine
    from credo.train.evaluate import evaluate
    from credo.train.run import PRECISIONS
    from credo.train.sampled_eval import check_sampled_args, evaluate_sampled

    temperature = check_sampled_args(args.samples, args.temperature)
    if args.n < 1:
        raise CredoError(f"credo eval: --n must be at least 1 (held-out problems), got {args.n}")
    cfg, task = _task_from(args, rest)
    policy = load_policy(args.model)
    from credo.gpu import resolve_precision

    precision = resolve_precision(cfg.model.precision, next(policy.model.parameters()).device)
    engine = TorchEngine(policy.model, policy.tokenizer, autocast_dtype=PRECISIONS[precision])
    sc = cfg.sampling
    sampling = SamplingParams(0.0, 1.0, 0, sc.max_new_tokens, tuple(sc.stop))
    examples = task.examples("test", args.n, seed=0)
    result = evaluate(engine, policy.tokenizer, task, examples, sampling, batch_size=cfg.task.eval_batch_size)
    if args.samples:  # pass@k, maj@k, mean@k beside greedy accuracy (train/sampled_eval.py)
        sampled = SamplingParams(temperature, sc.top_p, sc.top_k, sc.max_new_tokens, tuple(sc.stop))
        result.update(evaluate_sampled(engine, policy.tokenizer, task, examples, sampled, samples=args.samples,
                                       batch_size=cfg.task.eval_batch_size, seed=args.seed))
    print(json.dumps({"model": policy.source, "task": task.name, **result}, indent=2))
    return 0


def cmd_generate(args, rest) -> int:
    from credo.models import load_policy
    from credo.rollout import SamplingParams, TorchEngine
    from credo.tasks.base import Example, render_prompt

    if args.n < 1:
        raise CredoError(f"credo generate: --n must be at least 1 (completions), got {args.n}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise CredoError(f"credo generate: --temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {args.temperature}")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CredoError(f"credo generate: the prompt is not valid UTF-8 (at character {exc.start})") from exc
    if not args.prompt.strip():
        raise CredoError("credo generate: the prompt is empty")
    cfg, task = _task_from(args, rest)
    policy = load_policy(args.model)
    engine = TorchEngine(policy.model, policy.tokenizer)
    sc = cfg.sampling
    sampling = SamplingParams(args.temperature, sc.top_p, sc.top_k, sc.max_new_tokens, tuple(sc.stop))
    text = render_prompt(policy.tokenizer, task, Example(args.prompt, "", ""))
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    for completion in engine.generate([ids], args.n, sampling, seed=args.seed)[0]:
        print(f"[{completion.finish_reason}] {completion.text}")
    return 0


def cmd_make_student(args, rest) -> int:
    """`credo make-student --layers K --out DIR [--model SOURCE]`: a layer-dropped student folder (models.py)."""
    from credo.models import make_student

    if rest:
        raise CredoError(f"credo make-student takes only --layers, --out and --model; unexpected: {' '.join(rest)}")
    out = make_student(args.model, args.layers, args.out)
    print(f"credo: wrote a {args.layers}-layer student of {args.model} to {out} (use it as model.name {out})")
    return 0


def cmd_export(args, rest) -> int:
    """`credo export --run RUN_OR_CHECKPOINT --out DIR`: a plain Hugging Face folder (LoRA merged)."""
    from credo.lora import export

    if rest:
        raise CredoError(f"credo export takes only --run and --out; unexpected: {' '.join(rest)}")
    out = export(args.run, args.out)
    print(f"credo: exported {args.run} to {out} (load it with credo eval --model {out} or transformers)")
    return 0


def cmd_list(args, rest) -> int:
    from credo.catalog import print_catalog

    print_catalog(args.what)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credo", description="RL post-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run a training job (warm-up + RL)",
                       description="Extra --section.field VALUE arguments override the config.")
    p.add_argument("--preset", help="named preset (credo list presets)")
    p.add_argument("--recipe", help="named method: objective, estimator, reduction and the paper's defaults "
                                    "(credo list recipes); explicit fields still win")
    p.add_argument("--config", help="TOML or JSON config file (e.g. a run's config.json)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its newest complete checkpoint")
    p.set_defaults(func=cmd_train)
    for name, func, help_text in (("eval", cmd_eval, "held-out accuracy of a model on a task"),
                                  ("generate", cmd_generate, "sample completions from a model")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model/checkpoint folder")
        p.add_argument("--task", default="arith", help="task name (credo list tasks)")
        p.set_defaults(func=func)
    sub.choices["eval"].add_argument("--n", type=int, default=500, help="held-out problems")
    from credo.train.sampled_eval import add_eval_arguments

    add_eval_arguments(sub.choices["eval"])  # --samples K, --temperature, --seed: pass@k / maj@k / mean@k
    gen = sub.choices["generate"]
    gen.add_argument("prompt", help="the user message")
    gen.add_argument("--n", type=int, default=1, help="completions to sample")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("export", help="write a plain Hugging Face folder from a run or checkpoint (merges LoRA)")
    p.add_argument("--run", required=True, metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its final, else newest complete checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist or be empty)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("make-student", help="a smaller student: a model with K evenly spaced decoder layers kept "
                                            "(embeddings, final norm, head and tokenizer unchanged)")
    p.add_argument("--layers", type=int, required=True, metavar="K", help="decoder layers to keep")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist or be empty)")
    p.add_argument("--model", default="smollm2", help="the source: smollm2, a model folder or a checkpoint")
    p.set_defaults(func=cmd_make_student)
    p = sub.add_parser("list", help="list presets, tasks, objectives or credit estimators")
    p.add_argument("what", nargs="?", default="all", choices=["all", "presets", "recipes", "tasks", "objectives", "credit", "corrections", "samplers", "entropy",
                                                       "rewards", "selection", "curricula", "mixing", "warmstart", "stages"])
    p.set_defaults(func=cmd_list)
    from credo.creditbench import cli as creditbench_cli

    creditbench_cli.add_parser(sub)  # `credo creditbench`: estimators against exactly known credit
    from credo.judges import train_prm

    train_prm.add_parser(sub)  # `credo train-prm`: a process reward model from step labels
    from credo.judges import train_orm

    train_orm.add_parser(sub)  # `credo train-rm`: an outcome reward model from preference pairs
    from credo.rewards import autorule

    autorule.add_parser(sub)  # `credo extract-rules`: AutoRule's rules from preference pairs (the autorule term)
    from credo.report import compare

    compare.add_parsers(sub)  # `credo compare` (arms x seeds -> report) and `credo report` (rebuild one)
    from credo.stages import pipeline

    pipeline.add_parsers(sub)  # `credo pipeline` ([[stages]] in one TOML) and `credo stage` (one of them)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.func(args, rest)
    except CredoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
