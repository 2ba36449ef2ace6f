"""`credo pipeline --config PIPELINE.toml --out DIR`: stages chained in one command, each stage's
outputs (metrics, checkpoints, held-out scores) in its own run folder, resumable at and inside stages.

    [pipeline]
    preset = "default"              # every stage's base preset (a stage may name its own)
    seed = 0                        # run.seed of every stage
    fields = {"task.eval_size" = 200}   # dotted fields for every stage

    [[stages]]
    name = "warmup"
    kind = "sft"                    # credo list stages
    "warmup.steps" = 40             # any config field, dotted or as a table (warmup = {steps = 40})

    [[stages]]
    name = "specs"
    kind = "dpo"
    params = {pairs = "self", steps = 16, rounds = 1}   # the kind's own parameters

    [[stages]]
    name = "grpo"
    kind = "rl"
    recipe = "grpo"
    "rl.steps" = 20

Each stage starts from the model the previous stage ended with (its `checkpoints/final`), unless it
sets `model.name` itself (a distillation student, another model) or `from = "<stage name>"` (an
earlier stage's final model). Only the first stage evaluates its starting model (`run.eval_base`);
every stage reports the held-out evaluation after it (`summary["final"]`, stages/base.py).

Layout of DIR: `pipeline.json` (the stages, their status, seconds, exit codes and held-out scores;
written after every stage), `pipeline.md` (the table), `configs/<NN>-<name>.json` (each stage's
resolved TrainConfig) and `.params.json` (its kind's parameters), `stages/<NN>-<name>/` (the stage's
run folder), `logs/<NN>-<name>.log`. Every stage's config and parameters are resolved and checked
before the first stage starts. Each stage runs as `python -m credo stage KIND --config ... --params
...` in a child process: a crash loses only the stage in progress. Running the same command again
continues: finished stages are kept, an interrupted stage resumes from its newest complete checkpoint
(`--resume`, bitwise as `credo train --resume`), and the stages after it run. A failed stage stops the
pipeline (the later stages need its model) and the command exits 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from credo.errors import CredoError

NAME = re.compile(r"[A-Za-z0-9_.+-]+")
RESERVED = ("name", "kind", "preset", "recipe", "params", "from")


@dataclass
class StageSpec:
    name: str
    kind: str
    preset: str | None = None
    recipe: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    start: str | None = None  # `from`: the stage whose final model this one starts from (None: the previous)

    def folder_name(self, index: int) -> str:
        return f"{index:02d}-{self.name}"


def read_pipeline(path: str | Path) -> tuple[dict[str, Any], list[StageSpec]]:
    """([pipeline] header, the [[stages]] in order) of a TOML / JSON file; every problem names the stage."""
    from credo.config import load_file
    from credo.report.compare import _flatten, _text

    path = Path(path)
    loaded = load_file(path)
    header = loaded.get("pipeline", {})
    if not isinstance(header, dict):
        raise CredoError(f"{path}: [pipeline] must be a table")
    unknown = sorted(set(header) - {"preset", "seed", "fields", "name"})
    if unknown:
        raise CredoError(f"{path}: [pipeline] has unknown key(s) {', '.join(unknown)}; valid: preset, seed, fields, name")
    tables = loaded.get("stages")
    if not isinstance(tables, list) or not tables:
        raise CredoError(f"{path}: expected [[stages]] tables (name = \"...\", kind = \"sft\" | \"dpo\" | \"rl\" | ...)")
    extra = sorted(set(loaded) - {"pipeline", "stages"})
    if extra:
        raise CredoError(f"{path}: unknown top-level key(s) {', '.join(extra)}; expected [pipeline] and [[stages]]")
    specs, seen = [], set()
    for i, table in enumerate(tables, 1):
        name = table.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise CredoError(f"{path}: stage {i} needs a name of letters, digits and _ . + - (it names a folder)")
        if name in seen:
            raise CredoError(f"{path}: stage name {name!r} is used twice")
        seen.add(name)
        where = f"{path}: stage {name!r}"
        kind = table.get("kind")
        if not isinstance(kind, str):
            raise CredoError(f"{where}: needs kind = \"...\" (credo list stages)")
        for key in ("preset", "recipe", "from"):
            if key in table and not isinstance(table[key], str):
                raise CredoError(f"{where}: {key} must be a string, got {table[key]!r}")
        params = table.get("params", {})
        if not isinstance(params, dict):
            raise CredoError(f"{where}: params must be a table of the {kind} stage's parameters")
        if "from" in table and table["from"] not in seen - {name}:
            raise CredoError(f"{where}: from = {table['from']!r} names no earlier stage")
        fields = {k: v for k, v in table.items() if k not in RESERVED}
        specs.append(StageSpec(name, kind, table.get("preset"), table.get("recipe"),
                               [(k, _text(v)) for k, v in _flatten(fields)], dict(params), table.get("from")))
    common = header.get("fields", {})
    if not isinstance(common, dict):
        raise CredoError(f"{path}: [pipeline] fields must be a table of dotted config fields")
    header = dict(header, fields=[(k, _text(v)) for k, v in _flatten(common)])
    return header, specs


@dataclass
class ResolvedStage:
    spec: StageSpec
    index: int
    cfg: Any
    params: Any
    folder: Path
    config_file: Path
    params_file: Path
    log: Path


def final_model(stage: "ResolvedStage") -> str:
    """The model a stage ends with: its checkpoints/final, or for a stage that trains nothing (demos) the
    model it was given."""
    if stage.spec.kind == "demos":
        return stage.cfg.model.name
    return str(stage.folder / "checkpoints" / "final")


def referenced_stage(value: str, by_name: dict, resolved: list) -> "ResolvedStage | None":
    """The earlier stage "@previous" / "@<name>" names, else None."""
    ref = value[1:]
    return resolved[-1] if ref == "previous" and resolved else by_name.get(ref)


def demonstrations_file(value: str, by_name: dict, resolved: list, where: str) -> str:
    """warmup.demonstrations "@<stage>" / "@previous": that earlier demos stage's demonstrations.jsonl."""
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    stage = referenced_stage(value, by_name, resolved)
    if stage is None or stage.spec.kind != "demos":
        raise CredoError(f"{where}: warmup.demonstrations = {value!r} names no earlier demos stage")
    from credo.stages.demos import FILE

    return str(stage.folder / FILE)


def resolve_stages(header: dict[str, Any], specs: Sequence[StageSpec], out: Path,
                   extra: Sequence[tuple[str, str]] = ()) -> list[ResolvedStage]:
    """Every stage's TrainConfig and parameters, checked now (before any stage runs), with the model chain,
    run folders and seeds filled in."""
    import dataclasses

    from credo.config import to_dict
    from credo.resolve import resolve_config
    from credo.stages import STAGES, parse_params
    from credo.train.run import validate

    out = out.resolve()
    resolved: list[ResolvedStage] = []
    by_name: dict[str, ResolvedStage] = {}
    for index, spec in enumerate(specs):
        where = f"stage {spec.name!r}"
        try:
            kind = STAGES.get(spec.kind)
        except CredoError as exc:
            raise CredoError(f"{where}: {exc}") from None
        overrides = [(k, demonstrations_file(v, by_name, resolved, where) if k == "warmup.demonstrations" else v)
                     for k, v in list(header.get("fields", [])) + list(spec.overrides) + list(extra)]
        keys = {k for k, _ in overrides}
        if "seed" in header and "run.seed" not in keys:
            overrides.append(("run.seed", str(int(header["seed"]))))
        if "run.eval_base" not in keys:
            overrides.append(("run.eval_base", "true" if index == 0 else "false"))
        try:
            cfg = resolve_config(spec.preset or header.get("preset"), None, overrides, recipe=spec.recipe)
            validate(cfg)
        except CredoError as exc:
            raise CredoError(f"{where}: {exc}") from None
        params = parse_params(kind, spec.params, f"{where} ({spec.kind})")
        folder = out / "stages" / spec.folder_name(index)
        cfg.run.out_dir, cfg.run.name = str(folder.parent), folder.name
        if "model.name" not in keys and index > 0:  # the chain: start from an earlier stage's final model
            cfg.model.name = final_model(by_name[spec.start] if spec.start else resolved[-1])
        teacher = getattr(params, "teacher", None)  # a distillation teacher named by stage: "@previous" / "@<name>"
        if isinstance(teacher, str) and teacher.startswith("@"):
            source = referenced_stage(teacher, by_name, resolved)
            if source is not None:
                params.teacher = final_model(source)
            else:
                raise CredoError(f"{where}: teacher = {teacher!r} names no earlier stage (use \"@previous\" or "
                                 f"\"@<stage name>\")")
        stage = ResolvedStage(spec, index, cfg, params, folder, out / "configs" / f"{folder.name}.json",
                              out / "configs" / f"{folder.name}.params.json", out / "logs" / f"{folder.name}.log")
        stage.config_file.parent.mkdir(parents=True, exist_ok=True)
        stage.config_file.write_text(json.dumps(to_dict(cfg), indent=2))
        stage.params_file.write_text(json.dumps(dataclasses.asdict(params), indent=2))
        resolved.append(stage)
        by_name[spec.name] = stage
    return resolved


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def stage_row(stage: ResolvedStage, status: str, seconds: float | None, returncode: int | None) -> dict[str, Any]:
    from credo.stages.base import held_out_of

    row = {"name": stage.spec.name, "kind": stage.spec.kind, "folder": str(stage.folder), "status": status,
           "model": stage.cfg.model.name, "task": stage.cfg.task.name, "seconds": seconds, "returncode": returncode}
    summary_path = stage.folder / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        final = held_out_of(summary)
        if final is not None:
            row["heldout"] = {k: final.get(k) for k in ("accuracy", "format_rate", "response_length", "n")}
        if isinstance(summary.get("base"), dict):
            row["base_accuracy"] = summary["base"].get("accuracy")
    return row


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| # | stage | kind | task | held-out accuracy after it | format | response length | seconds | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    if rows and rows[0].get("base_accuracy") is not None:
        lines.append(f"| - | (start) | - | {rows[0]['task']} | {rows[0]['base_accuracy']:.3f} | | | | |")
    for i, r in enumerate(rows):
        h = r.get("heldout") or {}
        acc = f"{h['accuracy']:.3f}" if h.get("accuracy") is not None else "-"
        fmt = f"{h['format_rate']:.3f}" if h.get("format_rate") is not None else "-"
        length = f"{h['response_length']:.1f}" if h.get("response_length") is not None else "-"
        secs = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"
        lines.append(f"| {i} | {r['name']} | {r['kind']} | {r['task']} | {acc} | {fmt} | {length} | {secs} | {r['status']} |")
    return lines


def run_stage_child(stage: ResolvedStage, resume: bool) -> int:
    """`python -m credo stage ...` for one stage; its output goes to the console and to its log."""
    argv = [sys.executable, "-m", "credo", "stage", stage.spec.kind, "--config", str(stage.config_file),
            "--params", str(stage.params_file)] + (["--resume"] if resume else [])
    stage.log.parent.mkdir(parents=True, exist_ok=True)
    with open(stage.log, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
        return proc.wait()


def run_pipeline(path: str | Path, out: Path, extra: Sequence[tuple[str, str]] = ()) -> int:
    header, specs = read_pipeline(path)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = resolve_stages(header, specs, out, extra)
    manifest_path = out / "pipeline.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    times = {r["name"]: r.get("seconds") for r in previous.get("stages", [])}
    rows = [stage_row(s, "finished" if (s.folder / "summary.json").is_file() else "pending", times.get(s.spec.name),
                      None) for s in stages]

    def save() -> None:
        _write_json(manifest_path, {"config": str(Path(path).resolve()), "stages": rows})
        (out / "pipeline.md").write_text("\n".join([f"# Pipeline {header.get('name') or Path(path).stem}", "",
                                                    f"`credo pipeline --config {path} --out {out}`", "",
                                                    *table_lines(rows)]) + "\n")

    save()
    for i, stage in enumerate(stages):
        if rows[i]["status"] == "finished":
            print(f"credo: pipeline stage {i + 1}/{len(stages)} {stage.spec.name!r} already finished; kept", flush=True)
            continue
        resume = (stage.folder / "metrics.jsonl").is_file()
        print(f"credo: pipeline stage {i + 1}/{len(stages)} {stage.spec.name!r} ({stage.spec.kind})"
              f"{' resumed' if resume else ''}, log {stage.log}", flush=True)
        rows[i] = stage_row(stage, "running", None, None)
        save()
        started = time.perf_counter()
        code = run_stage_child(stage, resume)
        seconds = (times.get(stage.spec.name) or 0.0) * resume + time.perf_counter() - started
        rows[i] = stage_row(stage, "finished" if code == 0 else "failed", round(seconds, 1), code)
        save()
        if code != 0:
            print(f"error: pipeline stage {stage.spec.name!r} failed (exit {code}); its log: {stage.log}; run the "
                  f"same command again to resume it", file=sys.stderr, flush=True)
            return 1
    print("\n".join(table_lines(rows)), flush=True)
    print(f"credo: pipeline report {out / 'pipeline.md'}", flush=True)
    return 0


def cmd_pipeline(args, rest) -> int:
    from credo.resolve import _overrides

    out = Path(args.out) if args.out else Path("runs") / f"pipeline-{Path(args.config).stem}"
    return run_pipeline(args.config, out, _overrides(rest))


def cmd_stage(args, rest) -> int:
    """One stage in this process (what `credo pipeline` runs per stage; usable by hand)."""
    from credo.resolve import _overrides, resolve_config
    from credo.stages import STAGES, parse_params

    kind = STAGES.get(args.kind)
    cfg = resolve_config(None, args.config, _overrides(rest))
    table = {}
    if args.params:
        try:
            table = json.loads(Path(args.params).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CredoError(f"--params {args.params}: {exc}") from None
    params = parse_params(kind, table, f"stage {args.kind} --params {args.params}")
    summary = kind.run(cfg, params, resume=args.resume)
    final = summary.get("final") or {}
    if "accuracy" in final:
        print(f"held-out accuracy after the {args.kind} stage: {final['accuracy']:.1%}", flush=True)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("pipeline", help="run a chain of stages (sft, dpo, rl, distill, ...) from one TOML file",
                       description="Extra --section.field VALUE arguments apply to every stage.")
    p.add_argument("--config", required=True, help="the pipeline TOML file ([pipeline] and [[stages]])")
    p.add_argument("--out", help="output folder (default runs/pipeline-<file name>); rerun to continue")
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("stage", help="run one stage (what credo pipeline runs for each stage)")
    p.add_argument("kind", help="the stage kind (credo list stages)")
    p.add_argument("--config", required=True, help="the stage's TrainConfig (TOML or JSON)")
    p.add_argument("--params", help="a JSON file of the kind's parameters")
    p.add_argument("--resume", action="store_true", help="continue the stage's run folder")
    p.set_defaults(func=cmd_stage)
