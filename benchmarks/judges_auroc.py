"""Held-out step AUROC of credo's judges on `arith` worked solutions with calculator labels.

    python benchmarks/judges_auroc.py --prm runs/prm_arith [--llm smollm2] [--test-size 300] [--out FILE.md]

The rows are those `credo train-prm` evaluates on (`judges/prm_data.arith_chains` over the test split,
seed + 1), so a PRM's figure here equals its training log's. Each judge scores every step; AUROC is
reported over all labelled steps and within each step kind (answer steps: is the final answer right;
equation steps: does "a op b = c" hold), since a judge could score well overall just by telling the
kinds apart. Also: seconds and steps scored per judge. Results go to benchmarks/results/judges_auroc.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _results import write_results  # benchmarks/_results.py (the script's folder is on sys.path)

from credo.judges.prm_data import arith_chains
from credo.judges.train_prm import auroc, step_kind
from credo.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def score_rows(judge, rows) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    scores = judge.score_many([(r.prompt, r.steps) for r in rows])
    seconds = time.perf_counter() - start
    flat = [(s, y, step_kind(t)) for r, row in zip(rows, scores) for s, y, t in zip(row, r.labels, r.steps)]
    out = {"all": auroc([s for s, _, _ in flat], [y for _, y, _ in flat])}
    for kind in ("answer", "equation"):
        out[kind] = auroc([s for s, _, k in flat if k == kind], [y for _, y, k in flat if k == kind])
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prm", action="append", default=[], help="a PRM folder (repeatable)")
    parser.add_argument("--llm", action="append", default=[], help="an LLM judge model: smollm2 or a folder")
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "judges_auroc.md"))
    args = parser.parse_args()
    from credo.judges import make_judge

    task = make_task("arith", difficulty=args.difficulty)
    rows = arith_chains(task, task.examples("test", args.test_size, args.seed), args.seed + 1)
    labelled = [y for r in rows for y in r.labels if y != 0]
    results = []
    for spec in [f"prm:{p}" for p in args.prm] + [f"llm:{m}" if m != "smollm2" else "llm" for m in args.llm]:
        judge = make_judge(spec)
        values, seconds = score_rows(judge, rows)
        results.append({"judge": spec, "auroc": values, "seconds": seconds, "steps": judge.calls})
        print(json.dumps(results[-1]), flush=True)
    lines = [f"Held-out step AUROC on arith difficulty {args.difficulty}: {len(rows)} worked solutions from the test "
             f"split (calculator labels, {len(labelled)} labelled steps, {sum(y > 0 for y in labelled)} correct).",
             "Command: `python " + " ".join(["benchmarks/judges_auroc.py"] + [f"--prm {p}" for p in args.prm]
                                          + [f"--llm {m}" for m in args.llm]) + "`", "",
             "| judge | AUROC all steps | answer steps | equation steps | steps scored | seconds |",
             "|---|---|---|---|---|---|"]
    for r in results:
        a = r["auroc"]
        lines.append(f"| {r['judge']} | {a['all']:.4f} | {a['answer']:.4f} | {a['equation']:.4f} | {r['steps']} | "
                     f"{r['seconds']:.1f} |")
    write_results(args.out, lines, results)


if __name__ == "__main__":
    main()
