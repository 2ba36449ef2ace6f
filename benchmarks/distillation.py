"""Distilling the default run into a k-layer SmolLM2 student: every token vs TIP vs entropy selection vs
AdaKD temperatures (+ LATF), with the `distill` stage, side by side in one invocation.

    python benchmarks/distillation.py [--teacher RUN_OR_CHECKPOINT] [--student-from bundled|teacher]
        [--layers 10] [--steps 12] [--prompts-per-step 4] [--samples 2] [--lr 1e-4] [--eval-size 200]
        [--seeds 0,1,2] [--arms all,tip,entropy,adakd] [--out DIR] [--results FILE] [--smoke]

1. The teacher: `--teacher` (a run folder, whose checkpoints/final is used, or a checkpoint / model folder),
   else the default run (`credo train --preset default`: warm-up + GRPO on the bundled model, about 15
   minutes) trained into OUT/teacher; a rerun reuses a finished teacher and resumes an interrupted one.
2. The student: `smollm2-layers:<layers>` (credo/models.py): SmolLM2-135M-Instruct's embeddings, final
   norm, tied head and tokenizer with `layers` of its 30 decoder layers kept, evenly spaced (10 layers:
   64 M parameters of 135 M). It starts from the bundled model, not from the teacher: the gap it closes
   is the teacher's whole training plus the dropped layers. `--student-from teacher` drops the layers from
   the teacher instead (credo.models.make_student; OUT/student-<layers>-layers-of-teacher): the gap is the
   dropped layers alone. The bundled model itself scores 0 on the default task before its warm-up (no
   answer format), and so does every layer-dropped student of it, so distillation from the bundled model
   has first to teach the format; dropping 6 of the default run's 30 layers also loses the format
   (0.000), but the student keeps the teacher's training in its other layers.
   `--seeds 0,1,2` runs each arm once per run.seed (OUT/arms/<arm>-s<seed>; seed 0 is OUT/arms/<arm>) and
   adds each arm's mean +- sample std of held-out accuracy.
3. Held-out accuracy (the default task, greedy, the stages' held-out set of --eval-size problems) of the
   teacher and of the student before distillation, then one `distill` stage per arm from that same
   student, same seed, same prompts (the stage's defaults otherwise: reverse KL, tau 1):

   all      every completion token, reverse KL (on-policy distillation / GKD, arXiv 2306.13649)
   tip      TIP token selection, keep_fraction 0.5 (arXiv 2604.14084)
   entropy  the top 50% of tokens by student entropy (TIP's entropy axis alone)
   adakd    AdaKD's inverse-difficulty temperatures with LATF token focusing (arXiv 2510.11615)

   Each arm row: held-out accuracy / format / length after the stage, the stage's seconds and seconds
   per step (mean step_time, step 0 excluded: one-off costs), the kept token fraction, and the mean
   per-token divergence at tau (every arm logs it over all its tokens, so it compares across arms) over
   the first and the last three steps.

Sizing (measured here while another benchmark held both cores, so about twice the quiet-machine times):
a distill step of this stage with the 10-layer student and the bundled 30-layer teacher, 8 prompts x 2
samples of 16 new tokens, took 20-49 s (generation 6-28 s); a held-out evaluation of 48 problems about
20 s. The defaults (12 steps of 4 prompts x 2 samples, 4 arms) aim at 3-4 minutes per arm on a quiet
2-core CPU in bf16, so with the default run (~15 minutes) the whole script takes about 30 minutes; with
`--teacher` it takes about 15. lr 1e-4 (the stage's default 1e-5 is for a student already close to its
teacher; a layer-dropped one starts far off: its first steps' reverse KL was ~9 nats / token).

--smoke: the same flow on tiny random models in about a minute (tests/test_distillation_benchmark.py):
the tiny preset's run as the teacher, a 1-layer student dropped from that teacher (credo.models.make_student),
2 steps per arm, 8 held-out problems; results in OUT/distillation.{md,json} unless --results is given.

Results: benchmarks/results/distillation.{md,json} (write_results). Timings compare only within one
invocation on one machine; `load_average` (1-minute) is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _results import write_results  # benchmarks/_results.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "all": {},
    "tip": {"token_selection": "tip", "keep_fraction": 0.5},
    "entropy": {"token_selection": "entropy", "keep_fraction": 0.5},
    "adakd": {"temperature": "adakd", "token_selection": "latf"},
}
SMOKE = {"layers": 1, "steps": 2, "prompts_per_step": 2, "samples": 2, "lr": 1e-3, "eval_size": 8}


def config(preset: str, out: Path, name: str, fields: dict[str, str]):
    from credo.resolve import resolve_config

    base = {"run.out_dir": str(out), "run.name": name, "run.progress": "false"}
    return resolve_config(preset, None, list({**base, **fields}.items()))


def shown(path: str | Path) -> str:
    """A path as the report writes it: relative to the repository when inside it (no machine's absolute path)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def teacher_folder(path: Path) -> Path:
    """A run folder's checkpoints/final, else the folder itself (a checkpoint or a model folder)."""
    final = path / "checkpoints" / "final"
    return final if final.is_dir() else path


def train_teacher(preset: str, out: Path, fields: dict[str, str]) -> Path:
    from credo.train.run import train

    run = out / "teacher"
    if not (run / "summary.json").is_file():
        resume = (run / "metrics.jsonl").is_file()
        print(f"distillation: {'resuming' if resume else 'training'} the teacher ({preset} run) in {run}", flush=True)
        train(config(preset, out, "teacher", fields), resume=resume)
    return teacher_folder(run)


def heldout(cfg, model_name: str) -> dict:
    """Greedy held-out accuracy of a model exactly as a stage measures it (stages/common.py::StageRun.evaluate:
    the same task, examples, sampling, precision and batch size)."""
    from credo.gpu import resolve_rollout_defaults
    from credo.models import load_policy
    from credo.rollout.base import SamplingParams
    from credo.rollout.torch_engine import TorchEngine
    from credo.tasks import make_task
    from credo.train.evaluate import evaluate
    from credo.train.run import PRECISIONS, max_prompt_tokens

    resolve_rollout_defaults(cfg)
    policy = load_policy(model_name, seed=cfg.run.seed)
    task = make_task(cfg.task.name, **cfg.task.params)
    engine = TorchEngine(policy.model, policy.tokenizer, autocast_dtype=PRECISIONS[cfg.model.precision])
    sc = cfg.sampling
    sampling = SamplingParams(sc.temperature, sc.top_p, sc.top_k, sc.max_new_tokens, tuple(sc.stop))
    started = time.perf_counter()
    result = evaluate(engine, policy.tokenizer, task, task.examples("test", cfg.task.eval_size, seed=0), sampling,
                      batch_size=cfg.task.eval_batch_size,
                      max_prompt_tokens=max_prompt_tokens(policy.model, sampling, engine))
    return {**result, "seconds": round(time.perf_counter() - started, 2)}


def run_arm(preset: str, out: Path, arm: str, student: str, params: dict, fields: dict[str, str],
            seed: int = 0) -> dict:
    """One distill stage in OUT/arms/<arm> (seed 0) or OUT/arms/<arm>-s<seed> (a finished one is reused,
    a partial one is redone)."""
    from credo.stages.distill import DistillParams, run_distill

    name = arm if seed == 0 else f"{arm}-s{seed}"
    run = out / "arms" / name
    if (run / "summary.json").is_file():
        print(f"distillation: arm {name} already finished; kept", flush=True)
        summary = json.loads((run / "summary.json").read_text())
    else:
        if run.exists():
            shutil.rmtree(run)
        cfg = config(preset, out / "arms", name, {**fields, "model.name": student, "run.eval_base": "false",
                                                  "run.seed": str(seed)})
        summary = run_distill(cfg, DistillParams(**params))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("phase") == "distill"]
    div = [r["divergence"] for r in steps if "divergence" in r]
    timed = [r["step_time"] for r in steps if r["step"] >= 1] or [r["step_time"] for r in steps]
    final = summary["final"]
    return {"arm": arm, "seed": seed, "params": {k: v for k, v in params.items() if k != "teacher"}, "steps": len(steps),
            "accuracy": final["accuracy"], "format_rate": final["format_rate"],
            "response_length": final["response_length"], "n": final["n"], "seconds": summary["seconds"],
            "s_per_step": statistics.mean(timed) if timed else None,
            "kept_fraction": statistics.mean(r["kept_fraction"] for r in steps if "kept_fraction" in r)
            if any("kept_fraction" in r for r in steps) else None,
            "divergence_first3": statistics.mean(div[:3]) if div else None,
            "divergence_last3": statistics.mean(div[-3:]) if div else None}


def table(teacher: dict, student: dict, rows: list[dict]) -> list[str]:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| model | held-out accuracy | format | response length | seconds | s / step | kept tokens | "
             "divergence first 3 -> last 3 steps |", "|---|---|---|---|---|---|---|---|",
             f"| teacher | {teacher['accuracy']:.3f} | {teacher['format_rate']:.3f} | "
             f"{teacher['response_length']:.1f} | {teacher['seconds']:.0f} (eval) | | | |",
             f"| student before distillation | {student['accuracy']:.3f} | {student['format_rate']:.3f} | "
             f"{student['response_length']:.1f} | {student['seconds']:.0f} (eval) | | | |"]
    for r in rows:
        if "seeds" in r:  # the mean of several seeds
            lines.append(f"| distill {r['arm']}, mean of seeds {r['seeds']} | {r['accuracy']:.3f} +- "
                         f"{r['accuracy_std']:.3f} | {r['format_rate']:.3f} | {r['response_length']:.1f} | "
                         f"{r['seconds']:.0f} | {num(r['s_per_step'], '.1f')} | {num(r['kept_fraction'], '.2f')} | "
                         f"{num(r['divergence_first3'], '.3f')} -> {num(r['divergence_last3'], '.3f')} |")
            continue
        seed = f" (seed {r['seed']})" if r.get("seed") else ""
        lines.append(f"| distill {r['arm']}{seed} | {r['accuracy']:.3f} | {r['format_rate']:.3f} | "
                     f"{r['response_length']:.1f} | {r['seconds']:.0f} | {num(r['s_per_step'], '.1f')} | "
                     f"{num(r['kept_fraction'], '.2f')} | {num(r['divergence_first3'], '.3f')} -> "
                     f"{num(r['divergence_last3'], '.3f')} |")
    return lines


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per arm with the mean (and accuracy's sample std) over its seeds; arms with one seed: none."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        group = [r for r in rows if r["arm"] == arm]
        if len(group) < 2:
            continue

        def mean(key):
            values = [r[key] for r in group if r[key] is not None]
            return statistics.mean(values) if values else None

        out.append({"arm": arm, "seeds": ",".join(str(r["seed"]) for r in group),
                    "accuracy_std": statistics.stdev(r["accuracy"] for r in group),
                    **{k: mean(k) for k in ("accuracy", "format_rate", "response_length", "seconds", "s_per_step",
                                            "kept_fraction", "divergence_first3", "divergence_last3")}})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="a run folder or checkpoint to distil (default: train the default run)")
    parser.add_argument("--layers", type=int, default=10, help="decoder layers of the student (default 10 of 30)")
    parser.add_argument("--student-from", choices=("bundled", "teacher"), default="bundled",
                        help="drop the student's layers from the bundled model (default) or from the teacher")
    parser.add_argument("--steps", type=int, default=12, help="distill steps per arm (default 12)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2, help="student completions per prompt (default 2)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--seeds", default="0", help="run.seed of each arm's stage, comma-separated (default 0); "
                                                      "with several, the table adds each arm's mean")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=0, help="model.threads (0: torch's default)")
    parser.add_argument("--out", help="work folder (default runs/bench_distillation, or runs/bench_distillation_smoke)")
    parser.add_argument("--results", help="the .md to write (default benchmarks/results/distillation.md; "
                                          "--smoke: OUT/distillation.md)")
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 2 steps per arm (about a minute)")
    args = parser.parse_args(argv)
    if args.smoke:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in SMOKE.items():  # smoke sizes unless given explicitly
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise SystemExit(f"--arms: unknown arm(s) {', '.join(unknown) or '(none)'}; valid: {', '.join(ARMS)}")
    preset = "tiny" if args.smoke else "default"
    out = Path(args.out or ROOT / "runs" / ("bench_distillation_smoke" if args.smoke else "bench_distillation"))
    results = Path(args.results or (out / "distillation.md" if args.smoke else
                                    ROOT / "benchmarks" / "results" / "distillation.md"))
    fields = {"task.eval_size": str(args.eval_size)}
    if args.threads:
        fields["model.threads"] = str(args.threads)
    started = time.perf_counter()

    teacher = teacher_folder(Path(args.teacher)) if args.teacher else train_teacher(preset, out, fields)
    teacher_s = time.perf_counter() - started
    if args.smoke or args.student_from == "teacher":  # dropped from the teacher itself (smoke: no bundled model)
        from credo.models import make_student

        student = out / f"student-{args.layers}-layers-of-teacher"
        if not (student / "config.json").is_file():
            shutil.rmtree(student, ignore_errors=True)
            make_student(str(teacher), args.layers, student)
        student = str(student)
    else:
        student = f"smollm2-layers:{args.layers}"
    eval_cfg = config(preset, out, "eval", fields)
    teacher_eval = heldout(eval_cfg, str(teacher))
    student_eval = heldout(eval_cfg, student)
    print(f"distillation: teacher {teacher_eval['accuracy']:.1%}, student before {student_eval['accuracy']:.1%}",
          flush=True)
    common = {"teacher": str(teacher), "steps": args.steps, "prompts_per_step": args.prompts_per_step,
              "samples": args.samples, "lr": args.lr}
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: comma-separated integers, got {args.seeds!r}") from None
    rows = [run_arm(preset, out, arm, student, {**common, **ARMS[arm]}, fields, seed) for arm in arms for seed in seeds]
    means = mean_rows(rows)
    minutes = (time.perf_counter() - started) / 60
    lines = [f"# On-policy distillation into a {args.layers}-layer student: token selection and temperature arms",
             "", f"`python benchmarks/distillation.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"teacher {shown(teacher)} ({'given' if args.teacher else f'trained here, {teacher_s / 60:.1f} min'}), "
             f"student {shown(student)}; {args.steps} distill steps x {args.prompts_per_step} prompts x {args.samples} "
             f"samples per arm, lr {args.lr:g}; held-out {args.eval_size} problems of the {preset} preset's task; "
             f"{minutes:.1f} min this invocation (the arms' stages: {sum(r['seconds'] for r in rows) / 60:.1f} min, "
             f"kept from earlier invocations where finished); 1-minute load average at the end {os.getloadavg()[0]:.1f}.", "",
             *table(teacher_eval, student_eval, rows + means)]
    meta = {"command": sys.argv if argv is None else ["benchmarks/distillation.py", *argv], "smoke": args.smoke,
            "teacher": shown(teacher), "student": shown(student), "layers": args.layers, "teacher_eval": teacher_eval,
            "student_eval": student_eval, "minutes": round(minutes, 2), "load_average": os.getloadavg()[0]}
    write_results(results, lines, rows, {**meta, "means": means})


if __name__ == "__main__":
    main()
