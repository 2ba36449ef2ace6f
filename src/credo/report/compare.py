"""`credo compare` and `credo report`: methods side by side on the same task, seeds and budget.

    credo compare --preset tiny --recipes grpo,dr_grpo,dapo,gspo,sapo --seeds 0,1,2 [--out DIR]
    credo compare --arm kl0 rl.kl_coef=0 --arm kl04 rl.kl_coef=0.04 --seeds 0,1 [--rl.steps 40 ...]
    credo compare --arms arms.toml ...        # [[arm]] name = "...", recipe = "...", "rl.kl_coef" = 0.1
    credo report DIR_OR_RUN... [--out DIR]    # rebuild the report from finished or running runs

An arm is a configuration: an optional recipe plus dotted fields, on top of the shared preset, config
file and command-line overrides (the precedence of `credo train`). Every (arm, seed) is one ordinary
run folder under DIR/runs, trained by `credo train --config DIR/configs/<arm>-s<seed>.json` in its own
process (output in DIR/logs), so a crash of one run loses nothing of the others. Same data order and
budget: a seed fixes the prompts and the held-out set, and the budget fields (`BUDGET`) must agree
across arms (`--allow-unequal-budget` to compare anyway). DAPO's refill rounds generate more than one
batch per step: the wall-time curves and the s / step column show what that costs.

When the arms agree on model, task, sampling and warm-up, the warm-up runs once per seed (run folder
`_warmup-s<seed>`) and every arm of that seed starts RL from its checkpoint: the arms then begin from
the very same weights, and the warm-up is not paid once per arm (`--no-shared-warmup` to turn it off).
Runs go one after another by default (`--jobs N` runs N at once: on 2 cores it only helps with idle
time); seeds are the outer loop, so the first seed of every arm finishes first. `--ray [ADDRESS]` sends
each run to a Ray worker (`ray_runner`: a local Ray, or a cluster whose nodes share DIR's filesystem),
as many at once as the cluster has CPUs for (`--cpus-per-run`, default 1). DIR/compare.json records each
run's status; running the same command again continues: finished runs are kept, interrupted ones
resumed (`credo train --resume`), failed ones retried. The report (`report/render.py`) is rewritten
after every run, and `credo report DIR` rebuilds it at any time, also while runs are going.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from credo.errors import CredoError
from credo.report.render import markdown_table, write_report
from credo.report.runs import RunRecord, load_run

BUDGET = ("model.name", "task.name", "task.params", "task.eval_size", "warmup.steps", "warmup.batch_size",
          "rl.steps", "rl.prompts_per_step", "rl.group_size", "sampling.max_new_tokens")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
MANIFEST = "compare.json"


@dataclass
class Arm:
    """One configuration of a comparison: a name, an optional recipe, dotted overrides."""

    name: str
    recipe: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "recipe": self.recipe, "overrides": [list(p) for p in self.overrides]}


def _text(value: Any) -> str:
    """A TOML value as the text an override takes (strings as they are, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_arm_spec(words: Sequence[str]) -> Arm:
    """['name', 'recipe=dapo', 'rl.kl_coef=0.1'] -> Arm."""
    if not words:
        raise CredoError("--arm needs a name, then KEY=VALUE fields (recipe=NAME, rl.kl_coef=0.1, ...)")
    name, recipe, overrides = words[0], None, []
    for word in words[1:]:
        if "=" not in word:
            raise CredoError(f"--arm {name}: {word!r} is not KEY=VALUE (for example rl.kl_coef=0.1 or recipe=dapo)")
        key, value = word.split("=", 1)
        if key == "recipe":
            recipe = value
        else:
            overrides.append((key, value))
    return Arm(name, recipe, overrides)


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"rl": {"kl_coef": 0.1}} -> [("rl.kl_coef", 0.1)]: TOML's dotted keys and tables both become the
    dotted overrides `credo train` takes (a table under task.params sets its keys one by one)."""
    out = []
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def arms_from_file(path: str | Path) -> list[Arm]:
    """[[arm]] tables of a TOML file: name (required), recipe (optional), any config field as a dotted
    key (rl.kl_coef = 0.1) or a table ([arm.rl] kl_coef = 0.1)."""
    from credo.config import load_file

    path = Path(path)
    try:
        loaded = load_file(path)  # (the errors of config files: missing, not UTF-8, invalid TOML)
    except CredoError as exc:
        raise CredoError(f"--arms: {exc}") from exc
    tables = loaded.get("arm")
    if not isinstance(tables, list) or not tables:
        raise CredoError(f"--arms {path}: expected [[arm]] tables (name = \"...\", recipe = \"...\", "
                         f"\"rl.kl_coef\" = 0.1)")
    arms = []
    for i, table in enumerate(tables, 1):
        if not isinstance(table.get("name"), str):
            raise CredoError(f"--arms {path}: arm {i} has no name (a string)")
        recipe = table.get("recipe")
        if recipe is not None and not isinstance(recipe, str):
            raise CredoError(f"--arms {path}: arm {table['name']!r}: recipe must be a recipe name, got {recipe!r}")
        fields = {k: v for k, v in table.items() if k not in ("name", "recipe")}
        arms.append(Arm(table["name"], recipe, [(k, _text(v)) for k, v in _flatten(fields)]))
    return arms


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise CredoError(f"--seeds {text!r}: expected comma-separated integers like 0,1,2") from exc
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CredoError(f"--seeds {text!r}: expected distinct integers >= 0, like 0,1,2")
    return seeds


def check_arms(arms: list[Arm]) -> None:
    if not arms:
        raise CredoError("credo compare needs arms: --recipes a,b,... or --arm NAME KEY=VALUE ... or --arms FILE")
    seen = set()
    for arm in arms:
        if not ARM_NAME.fullmatch(arm.name):
            raise CredoError(f"arm name {arm.name!r}: use letters, digits and _ . + - (it names run folders)")
        if arm.name in seen:
            raise CredoError(f"arm name {arm.name!r} is given twice")
        seen.add(arm.name)


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def resolve_arms(arms: list[Arm], *, preset: str | None, config: str | None, common: list[tuple[str, str]],
                 allow_unequal: bool) -> dict[str, Any]:
    """Each arm's TrainConfig (validated now, before any run starts); refuses unequal budgets."""
    from credo.resolve import resolve_config
    from credo.train.run import validate

    resolved = {}
    for arm in arms:
        try:
            cfg = resolve_config(preset, config, list(common) + list(arm.overrides), recipe=arm.recipe)
            validate(cfg)
        except CredoError as exc:
            raise CredoError(f"arm {arm.name!r}: {exc}") from exc
        resolved[arm.name] = cfg
    if not allow_unequal and len(resolved) > 1:
        first_name, first = next(iter(resolved.items()))
        for name, cfg in resolved.items():
            differ = [k for k in BUDGET if _get(cfg, k) != _get(first, k)]
            if differ:
                detail = ", ".join(f"{k} {_get(first, k)!r} vs {_get(cfg, k)!r}" for k in differ)
                raise CredoError(f"arms {first_name!r} and {name!r} differ in their budget ({detail}); compare "
                                 f"at equal budget, or pass --allow-unequal-budget")
    return resolved


@dataclass
class Job:
    arm: str
    seed: int
    folder: Path
    config_file: Path
    log: Path
    status: str = "pending"  # pending | finished | failed | running
    seconds: float | None = None
    returncode: int | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.arm}-s{self.seed}"


def _runs_json(out: Path, jobs: list[Job]) -> list[dict]:
    return [{"arm": j.arm, "seed": j.seed, "folder": str(j.folder.relative_to(out)), "status": j.status,
             "seconds": j.seconds, "returncode": j.returncode, "error": j.error} for j in jobs]


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def records_of_compare(out: Path) -> dict[str, list[RunRecord]]:
    """The runs of a compare folder, by arm in the manifest's order (runs not started yet left out)."""
    manifest = json.loads((out / MANIFEST).read_text())
    arms: dict[str, list[RunRecord]] = {a["name"]: [] for a in manifest["arms"]}
    for run in manifest["runs"]:
        folder = out / run["folder"]
        if not (folder / "config.json").is_file():
            continue
        status = "failed" if run["status"] == "failed" else None
        arms[run["arm"]].append(load_run(folder, arm=run["arm"], status=status))
    return arms


def records_of(paths: Sequence[str]) -> tuple[dict[str, list[RunRecord]], Path | None]:
    """Runs named on `credo report`'s command line: compare folders, run folders, or folders of runs."""
    arms: dict[str, list[RunRecord]] = {}
    compare_dir = None
    for text in paths:
        path = Path(text)
        if (path / MANIFEST).is_file():
            compare_dir = compare_dir or path
            found = records_of_compare(path)
        elif (path / "config.json").is_file():
            run = load_run(path)
            found = {run.arm: [run]}
        elif path.is_dir() and any((p / "config.json").is_file() for p in path.iterdir()):
            found = {}
            for sub in sorted(p for p in path.iterdir() if (p / "config.json").is_file()):
                run = load_run(sub)
                found.setdefault(run.arm, []).append(run)
        else:
            raise CredoError(f"{path}: neither a compare folder ({MANIFEST}), a run folder (config.json) nor a "
                             f"folder of runs")
        for arm, runs in found.items():
            arms.setdefault(arm, []).extend(runs)
    return arms, compare_dir


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


WARMUP_SECTIONS = ("model", "task", "sampling", "warmup")  # what the warm-up and its evaluation depend on


def shared_warmup_reason(resolved: dict[str, Any]) -> str | None:
    """None when every arm would run the same warm-up (so one warm-up per seed can serve them all),
    else why not."""
    from credo.config import to_dict

    dicts = [to_dict(cfg) for cfg in resolved.values()]
    first = dicts[0]
    if first["warmup"]["steps"] <= 0:
        return "warmup.steps is 0"
    if first["model"]["lora_rank"] > 0:
        return "LoRA warm-up checkpoints hold adapters only"
    if first["dist"]["strategy"] != "none":
        return "dist.strategy runs several ranks"
    for d in dicts:  # (when the held-out set is scored during RL does not touch the warm-up)
        d["task"] = {k: v for k, v in d["task"].items() if k != "eval_every"}
    for section in WARMUP_SECTIONS:
        if any(d[section] != first[section] for d in dicts[1:]):
            return f"the arms differ in their {section}.* fields"
    return None


def local_runner(argv: list[str], log: Path) -> int:
    """Train one run in a child process of this one; its output goes to `log`. Returns the exit code."""
    with open(log, "a") as out:
        return subprocess.run([sys.executable, "-m", "credo", *argv], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode


def ray_runner(address: str, cpus_per_run: int):
    """(runner, parallel runs): each run is a Ray task reserving `cpus_per_run` CPUs, which starts the same
    `python -m credo train ...` child on whichever node Ray places it. The run folders and logs are
    written by that node, so on a cluster DIR must be on a filesystem every node shares (the paths are
    absolute), and every node needs credo installed under the same interpreter path."""
    import os

    from credo.rollout.ray_engine import init_ray

    ray = init_ray(address)

    @ray.remote(num_cpus=cpus_per_run)
    def train_one(argv: list[str], log: str, cwd: str) -> int:
        import subprocess as sp
        import sys as _sys

        with open(log, "a") as out:
            return sp.run([_sys.executable, "-m", "credo", *argv], stdout=out, stderr=sp.STDOUT,
                          stdin=sp.DEVNULL, cwd=cwd).returncode

    cwd = os.getcwd()
    parallel = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_run))
    return (lambda argv, log: int(ray.get(train_one.remote(argv, str(Path(log).resolve()), cwd)))), parallel


def run_compare(arms: list[Arm], seeds: list[int], out: Path, *, preset: str | None, config: str | None,
                common: list[tuple[str, str]], jobs: int = 1, allow_unequal: bool = False,
                window: int | None = None, shared_warmup: bool = True, runner=local_runner, stream=None) -> int:
    """Train every (arm, seed) in its own process, keep the manifest and the report current; 0 = all finished.

    shared_warmup: when every arm would run the same warm-up (`shared_warmup_reason`), run it once per
    seed (run folder `_warmup-s<seed>`, RL steps 0) and start every arm of that seed from its checkpoint
    (model.name = the checkpoint, warmup.steps 0, run.eval_base true: the arm scores the warmed-up model
    as its start). The arms then begin RL from the very same weights."""
    from credo.config import to_dict

    stream = stream or sys.stderr
    check_arms(arms)
    resolved = resolve_arms(arms, preset=preset, config=config, common=common, allow_unequal=allow_unequal)
    why_not = shared_warmup_reason(resolved) if shared_warmup else "--no-shared-warmup"
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
    if previous is not None and ([a["name"] for a in previous["arms"]] != [a.name for a in arms]
                                 or previous["seeds"] != seeds
                                 or bool(previous.get("warmups")) != (why_not is None)):
        raise CredoError(f"{out} holds a comparison of other arms, seeds or warm-up sharing ({out / MANIFEST}); "
                         f"pick another --out")
    for sub in ("configs", "runs", "logs"):
        (out / sub).mkdir(exist_ok=True)

    def job_for(arm_name: str, seed: int, cfg) -> Job:
        key = f"{arm_name}-s{seed}"
        cfg.run.seed, cfg.run.out_dir, cfg.run.name = seed, str(out / "runs"), key
        job = Job(arm_name, seed, out / "runs" / key, out / "configs" / f"{key}.json", out / "logs" / f"{key}.log")
        job.config_file.write_text(json.dumps(to_dict(cfg), indent=2))
        if (job.folder / "summary.json").is_file():
            job.status = "finished"
        return job

    warmups: dict[int, Job] = {}
    todo: list[Job] = []
    for seed in seeds:  # seeds outer: every arm's first seed finishes first
        if why_not is None:
            cfg = copy.deepcopy(next(iter(resolved.values())))
            cfg.rl.steps = 0
            warmups[seed] = job_for("_warmup", seed, cfg)
        for arm in arms:
            cfg = copy.deepcopy(resolved[arm.name])
            if why_not is None:
                cfg.model.name = str(warmups[seed].folder / "checkpoints" / "warmup")
                cfg.warmup.steps, cfg.run.eval_base = 0, True
            todo.append(job_for(arm.name, seed, cfg))
    command = sys.argv[:] if sys.argv and sys.argv[0].endswith("credo") else ["credo", "compare"]
    lock = threading.Lock()
    started = time.perf_counter()
    durations: list[float] = []
    shared_note = ([f"Shared warm-up: one per seed (runs/_warmup-s<seed>); every arm of a seed starts RL from its "
                    f"checkpoint, so the start accuracy is the warmed-up model's."] if why_not is None
                   else [f"Each run does its own warm-up ({why_not})."])

    def save() -> None:
        _write_json(out / MANIFEST, {"arms": [a.to_json() for a in arms], "seeds": seeds, "command": command,
                                     "runs": _runs_json(out, todo), "warmups": _runs_json(out, list(warmups.values()))})

    def refresh() -> None:
        try:
            arms_now = records_of_compare(out)
            if any(arms_now.values()):
                write_report(out, arms_now, title=f"credo compare: {', '.join(a.name for a in arms)}",
                             notes=notes(resolved, seeds) + shared_note, window=window)
        except Exception as exc:  # a report problem must not stop the runs; it is said, and retried later
            print(f"credo compare: the report could not be rebuilt ({type(exc).__name__}: {exc})", file=stream)

    everything = list(warmups.values()) + todo

    def one(job: Job) -> None:
        warm = warmups.get(job.seed) if job.arm != "_warmup" else None
        if warm is not None and warm.status != "finished":  # its seed's shared warm-up failed: nothing to start from
            with lock:
                job.status, job.error = "failed", f"the shared warm-up of seed {job.seed} failed (see {warm.log})"
                save()
            return
        if (job.folder / "metrics.jsonl").is_file() and (job.folder / "config.json").is_file():
            argv = ["train", "--resume", str(job.folder)]  # interrupted: continue from its newest checkpoint
        else:
            argv = ["train", "--config", str(job.config_file)]
        with lock:
            job.status, job.error = "running", None
            save()
        t = time.perf_counter()
        with open(job.log, "a") as log:
            log.write(f"$ credo {' '.join(argv)}\n")
        try:
            returncode = runner(argv, job.log)
        except Exception as exc:  # a Ray task lost with its node: this run failed, the others go on
            returncode, job.error = -1, f"{type(exc).__name__}: {exc}"
        with lock:
            job.seconds, job.returncode = round(time.perf_counter() - t, 2), returncode
            job.status = "finished" if returncode == 0 and (job.folder / "summary.json").is_file() else "failed"
            if job.status == "failed" and job.error is None:
                tail = job.log.read_text(errors="replace").strip().splitlines()[-3:]
                job.error = " | ".join(tail)
            durations.append(job.seconds)
            save()
            refresh()
            done = sum(j.status in ("finished", "failed") for j in everything)
            left = sum(j.status in ("pending", "running") for j in everything)
            eta = _format_eta(sum(durations) / len(durations) * left / max(jobs, 1))
            print(f"credo compare: {done}/{len(everything)} runs, {job.key} {job.status} in {job.seconds:.0f} s "
                  f"(log {job.log}); elapsed {_format_eta(time.perf_counter() - started)}, ETA {eta}",
                  file=stream, flush=True)

    pending = [j for j in everything if j.status != "finished"]
    print(f"credo compare: {len(todo)} runs ({len(arms)} arms x {len(seeds)} seeds)"
          f"{f' + {len(warmups)} shared warm-ups' if warmups else ''}, {len(pending)} to train, into {out}",
          file=stream, flush=True)
    save()

    def run_all(batch: list[Job]) -> None:
        if jobs <= 1:
            for job in batch:
                one(job)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, batch))

    run_all([j for j in pending if j.arm == "_warmup"])  # (every arm of a seed starts from its warm-up)
    run_all([j for j in pending if j.arm != "_warmup"])
    refresh()
    failed = [j for j in everything if j.status == "failed"]
    arms_now = records_of_compare(out)
    if any(arms_now.values()):
        from credo.report.aggregate import final_table

        print(markdown_table(final_table(arms_now)))
        print(f"credo compare: report {out / 'report.html'} and {out / 'report.md'}", file=stream)
    for job in failed:
        print(f"credo compare: {job.key} failed (exit {job.returncode}); see {job.log}: {job.error}", file=stream)
    return 1 if failed else 0


def notes(resolved: dict[str, Any], seeds: list[int]) -> list[str]:
    """What every run shared, for the report."""
    cfg = next(iter(resolved.values()))
    shared = ", ".join(f"{k} = {_get(cfg, k)!r}" for k in BUDGET)
    return [f"Shared by every arm: {shared}; seeds {', '.join(map(str, seeds))} (a seed fixes the prompt order "
            f"and sampling; the held-out set is the same for all runs)."]


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="train several configurations x seeds and write a comparison report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="named preset shared by every arm (credo list presets)")
    p.add_argument("--config", help="TOML or JSON config file shared by every arm")
    p.add_argument("--recipes", help="comma-separated recipes, one arm each (credo list recipes)")
    p.add_argument("--arm", nargs="+", action="append", metavar="NAME [KEY=VALUE]",
                   help="one arm: a name, then recipe=NAME and dotted fields (repeatable)")
    p.add_argument("--arms", metavar="FILE.toml", help="[[arm]] tables: name, recipe, dotted fields")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", help="the comparison folder (default runs/compare-<time>); rerun to continue it")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at once (default 1; with --ray: the cluster's CPUs / --cpus-per-run)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run each (arm, seed) as a Ray task: a local Ray, or the cluster at ADDRESS (DIR must be "
                        "on a filesystem all nodes share)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="CPUs a Ray task reserves per run (default 1)")
    p.add_argument("--allow-unequal-budget", action="store_true",
                   help="compare arms whose steps, prompts, group size or lengths differ")
    p.add_argument("--smooth", type=int, default=None,
                   help="trailing-mean window of the training curves (default: a tenth of the steps)")
    p.add_argument("--no-shared-warmup", action="store_true",
                   help="every run does its own warm-up (default: one per seed, shared by the arms when they "
                        "agree on model, task, sampling and warm-up)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="rebuild a comparison report from run folders (finished or running)")
    p.add_argument("paths", nargs="+", help="compare folders, run folders, or folders holding run folders")
    p.add_argument("--out", help="report folder (default: the compare folder, else ./report)")
    p.add_argument("--title", default="credo report")
    p.add_argument("--smooth", type=int, default=None, help="trailing-mean window of the training curves")
    p.set_defaults(func=cmd_report)


def cmd_compare(args, rest) -> int:
    from credo.resolve import _overrides

    arms = [Arm(name, recipe=name) for name in (args.recipes or "").split(",") if name]
    arms += [parse_arm_spec(words) for words in args.arm or []]
    if args.arms:
        arms += arms_from_file(args.arms)
    if args.jobs is not None and args.jobs < 1:
        raise CredoError(f"--jobs must be at least 1, got {args.jobs}")
    if args.cpus_per_run < 1:
        raise CredoError(f"--cpus-per-run must be at least 1, got {args.cpus_per_run}")
    runner, jobs = local_runner, args.jobs or 1
    if args.ray is not None:
        runner, parallel = ray_runner(args.ray, args.cpus_per_run)
        jobs = args.jobs or parallel
    if args.smooth is not None and args.smooth < 1:
        raise CredoError(f"--smooth must be at least 1 (1 = no smoothing), got {args.smooth}")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return run_compare(arms, parse_seeds(args.seeds), out, preset=args.preset, config=args.config,
                       common=_overrides(rest), jobs=jobs, allow_unequal=args.allow_unequal_budget,
                       window=args.smooth, shared_warmup=not args.no_shared_warmup, runner=runner)


def cmd_report(args, rest) -> int:
    if rest:
        raise CredoError(f"credo report takes run folders and --out / --title / --smooth; unexpected: {' '.join(rest)}")
    if args.smooth is not None and args.smooth < 1:
        raise CredoError(f"--smooth must be at least 1 (1 = no smoothing), got {args.smooth}")
    arms, compare_dir = records_of(args.paths)
    if not any(arms.values()):
        raise CredoError(f"no run with a config.json in {' '.join(args.paths)} yet")
    out = Path(args.out) if args.out else (compare_dir or Path("report"))
    paths = write_report(out, arms, title=args.title, window=args.smooth)
    from credo.report.aggregate import final_table

    print(markdown_table(final_table(arms)))
    print(f"credo report: {paths['html']} and {paths['markdown']}", file=sys.stderr)
    return 0
