"""CreditBench runner: every registered credit estimator on a suite of knobs, several seeds.

    python -m credo.creditbench.run [--quick] [--out DIR] [--only grpo,pure,...]

For each (estimator, knob, seed):
1. credit metrics (`metrics.py`) on `metric_batches` batches sampled from the initial policy (the same
   batches for every estimator);
2. sample efficiency at equal compute: train the tabular policy by REINFORCE with the estimator's
   advantages (fixed lr, same seeds) until the exact expected success reaches
   s0 + target_frac * (s_best - s0); compute = rollouts + probe rollouts + judge calls + extra model
   calls, summed over the iterations used. Every estimator gets the same budget: the rollouts of
   `train_iters` iterations of plain GRPO; a run that spends it without reaching the target reports
   the compute it spent (a lower bound, marked ">" in the table) and counts as not reached.
An estimator whose inputs cannot be built is "n/a (needs X)"; one that raises or returns a wrong shape
or non-finite values is "error: ..."; neither stops the run.
Outputs in the run folder: creditbench.md (tables and the closing note), creditbench.json (every
number), creditbench.png (heatmaps).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from credo.credit.base import CREDIT, is_token_level
from credo.creditbench.env import ChainConfig, ChainTask, KeyValueConfig, KeyValueTask
from credo.creditbench.inputs import InputBuilder, InputKnobs, Unavailable
from credo.creditbench.metrics import credit_metrics

METRICS = ("decisive_mass", "spearman", "sign_error", "filler_credit", "scale")
BASELINE = "grpo"


@dataclass(frozen=True)
class Knob:
    name: str
    description: str
    task: ChainConfig | KeyValueConfig
    inputs: InputKnobs = InputKnobs()

    def make_task(self, seed: int):
        return ChainTask(self.task, seed) if isinstance(self.task, ChainConfig) else KeyValueTask(self.task, seed)


SUITE: tuple[Knob, ...] = (
    Knob("early", "chain L=12, 3 decisive slots in the first third", ChainConfig(position="early")),
    Knob("middle", "chain L=12, 3 decisive slots in the middle third (base)", ChainConfig(position="middle")),
    Knob("late", "chain L=12, 3 decisive slots in the last third", ChainConfig(position="late")),
    Knob("short_filler", "chain L=5, 3 decisive slots spread (little filler)", ChainConfig(n_slots=5, position="spread")),
    Knob("long_filler", "chain L=30, 3 decisive slots in the middle third", ChainConfig(n_slots=30, position="middle")),
    Knob("recoverable", "base chain + a repair slot at the end that undoes a mistake at the first decisive slot",
         ChainConfig(recoverable=True)),
    Knob("prm_noise", "base chain; judge noise 0.5 + 10% flipped verdicts; critic noise 0.2",
         ChainConfig(), InputKnobs(judge_noise=0.5, judge_flip=0.1, critic_noise=0.2)),
    Knob("prm_bias", "base chain; judge bias +0.5 (optimistic PRM)", ChainConfig(), InputKnobs(judge_bias=0.5)),
    Knob("kv_anchors", "multi-turn key-value lookup (depth 2, 4 keys, 4 turns); states repeat exactly", KeyValueConfig()),
    Knob("kv_counters", "the same with turn counters in the observations (anchors never match across turns)",
         KeyValueConfig(counters=True)),
)

QUICK_SUITE: tuple[Knob, ...] = (
    Knob("middle", "chain L=8, 2 decisive slots in the middle third", ChainConfig(n_slots=8, n_decisive=2, n_prompts=2)),
    Knob("recoverable", "the same + a repair slot", ChainConfig(n_slots=8, n_decisive=2, recoverable=True, n_prompts=2)),
    Knob("kv_anchors", "multi-turn key-value lookup", KeyValueConfig(n_keys=3, depth=1, max_turns=3, n_prompts=2)),
)


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    group_size: int = 8
    metric_batches: int = 2
    train_iters: int = 40
    lr: float = 3.0
    max_norm: float = 5.0
    # equal step length for every estimator (lr along the unit gradient): with a fixed lr the advantage
    # scale would be a hidden step size, and sample efficiency would rank scales, not credit
    normalize_step: bool = True
    step_length: float = 1.0
    target_frac: float = 0.5


QUICK = Settings(seeds=(0, 1), group_size=4, metric_batches=1, train_iters=5)

# estimators defined with their own sampler: sampled that way where the task can (the chain tasks'
# `sample_tree`); the key-value world has no tree sampler and samples independently
TREE_SAMPLED: dict[str, dict] = {"spo_tree": {"segment_len": 3}}


def tree_branching(group_size: int) -> list[int]:
    """Binary branching where G is a power of two (G = 8: [2, 2, 2], depth 3 as the official trees), else [G]."""
    depth = int(math.log2(group_size)) if group_size > 1 else 0
    return [2] * depth if depth and 2 ** depth == group_size else [group_size]


def draw(task, name: str, group_size: int, policy, rng: np.random.Generator):
    """A batch of the task for estimator `name`: its tree sampler where it has one, else independent groups."""
    tree = TREE_SAMPLED.get(name)
    if tree is not None and hasattr(task, "sample_tree"):
        return task.sample_tree(policy, tree_branching(group_size), tree["segment_len"], rng)
    return task.sample(policy, group_size, rng)


# per-estimator hyperparameter overrides (none: every estimator runs with its paper defaults)
HPARAMS: dict[str, dict] = {
    # SPO-tree's published segment length (30+ tokens) exceeds these responses (5-30 tokens): its tree
    # sampler cuts every 3 tokens instead (TREE_SAMPLED); where no tree is sampled (key-value), shared
    # prefixes of the group's rows are cut at the same length.
    "spo_tree": {"segment_len": 3},
    # A chain step is one token, which is also its step-end token: PURE's separator masking would zero
    # every token (a real response ends a step with a separator it does not train on).
    "pure": {"mask_step_end": False},
    "pure_sum": {"mask_step_end": False},
}


class BadOutput(Exception):
    pass


def advantages(fn: Callable, inputs, hparams: dict | None = None) -> np.ndarray:
    """[B, T] float64 advantages from any registered estimator; outcome-level ones broadcast."""
    hparams = hparams or {}
    mask = inputs.loss_mask
    if is_token_level(fn):
        out = fn(inputs, **hparams)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(mask.shape):
            raise BadOutput(f"returned {getattr(out, 'shape', type(out))}, expected [B, T] = {tuple(mask.shape)}")
    else:
        out = fn(inputs.rewards, inputs.group_ids, **hparams)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(inputs.rewards.shape):
            raise BadOutput(f"returned {getattr(out, 'shape', type(out))}, expected [B] = {tuple(inputs.rewards.shape)}")
        out = out[:, None].expand(mask.shape)
    out = out.detach().to(torch.float64)
    if not bool(torch.isfinite(out[mask]).all()):
        raise BadOutput("returned non-finite advantages")
    return torch.where(mask, out, torch.zeros_like(out)).numpy()


def _policy_tokens(sample):
    m = sample.loss_mask
    return sample.ctx[m], sample.opt[m]


def run_one(name: str, fn: Callable, knob: Knob, seed: int, settings: Settings) -> dict:
    """Metrics and sample efficiency of one estimator on one knob and seed."""
    task = knob.make_task(seed)
    builder = InputBuilder(task, knob.inputs, seed)
    policy = task.initial_policy()
    ref = policy.copy()
    hp = HPARAMS.get(name)
    per_batch = []
    for i in range(settings.metric_batches):
        sample = draw(task, name, settings.group_size, policy, np.random.default_rng([seed, 100, i]))
        inputs, _ = builder.build(name, fn, sample, policy, ref, np.random.default_rng([seed, 101, i]))
        per_batch.append(credit_metrics(advantages(fn, inputs, hp), sample))
    out = {k: float(np.nanmean([m[k] for m in per_batch])) if any(not math.isnan(m[k]) for m in per_batch)
           else float("nan") for k in METRICS}
    s0 = task.expected_success(policy)
    target = s0 + settings.target_frac * (task.best_success() - s0)
    compute, reached, succ = 0.0, False, s0
    budget = settings.train_iters * task.config.n_prompts * settings.group_size  # plain GRPO's rollouts
    it = 0
    while compute < budget:
        it += 1
        sample = draw(task, name, settings.group_size, policy, np.random.default_rng([seed, 200, it]))
        inputs, cost = builder.build(name, fn, sample, policy, ref, np.random.default_rng([seed, 201, it]))
        adv = advantages(fn, inputs, hp)
        compute += sum(cost.values())
        c, o = _policy_tokens(sample)
        policy.pg_update(c, o, adv[sample.loss_mask], lr=settings.step_length if settings.normalize_step else settings.lr,
                         n_rows=sample.size, max_norm=settings.max_norm, normalize=settings.normalize_step)
        succ = task.expected_success(policy)
        if succ >= target:
            reached = True
            break
    out.update(compute=compute, reached=reached, final_success=succ, start_success=s0, iterations=it)
    return out


def _mean_std(values: list[float]) -> dict:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(v)), "std": float(np.std(v))}


def evaluate(name: str, fn: Callable, knob: Knob, settings: Settings) -> dict:
    """Aggregate over seeds; never raises."""
    runs = []
    try:
        for seed in settings.seeds:
            runs.append(run_one(name, fn, knob, seed, settings))
    except Unavailable as exc:
        return {"status": f"n/a (needs {exc})"}
    except Exception as exc:  # noqa: BLE001 — a failing estimator is a result, not a crash
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {"status": f"error: {line[:160]}"}
    res = {"status": "ok"}
    for k in METRICS + ("compute", "final_success", "start_success"):
        res[k] = _mean_std([r[k] for r in runs])
    res["reached"] = sum(r["reached"] for r in runs)
    res["seeds"] = len(runs)
    return res


def run_suite(names: Sequence[str] | None = None, suite: Sequence[Knob] = SUITE, settings: Settings = Settings(),
              log: Callable[[str], None] | None = print, estimators: dict[str, Callable] | None = None) -> dict:
    """Results of `names` (default: every registered estimator), or of an explicit
    {name: function} dict `estimators` (tests, user code)."""
    import credo.credit  # noqa: F401  (registers every estimator)

    if estimators is None:
        estimators = {n: CREDIT.get(n) for n in (list(names) if names else CREDIT.names())}
    start = time.time()
    results: dict[str, dict] = {}
    for name, fn in estimators.items():
        t0 = time.time()
        results[name] = {k.name: evaluate(name, fn, k, settings) for k in suite}
        results[name]["_level"] = "token" if is_token_level(fn) else "outcome"
        results[name]["_seconds"] = round(time.time() - t0, 2)
        if log:
            states = {r["status"] for k, r in results[name].items() if not k.startswith("_")}
            log(f"{name:24s} {time.time() - t0:6.1f}s  {', '.join(sorted(states))}")
    return {"settings": asdict(settings), "suite": [{"name": k.name, "description": k.description} for k in suite],
            "results": results, "runtime_s": round(time.time() - start, 1)}


# -- outputs ------------------------------------------------------------------------------------


def _cell(res: dict, key: str, digits: int = 2) -> str:
    if res["status"] != "ok":
        return "n/a" if res["status"].startswith("n/a") else "error"
    v = res[key]
    if v["mean"] is None:
        return "—"
    if key == "compute":
        mark = "" if res["reached"] == res["seeds"] else ">"
        return f"{mark}{v['mean']:.0f} ± {v['std']:.0f}"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def _mean_of(res: dict, key: str) -> float | None:
    return res[key]["mean"] if res.get("status") == "ok" and res[key]["mean"] is not None else None


def beats_baseline(result: dict, baseline: str = BASELINE) -> dict[str, list[str]]:
    """knob -> lines naming the estimators that beat the baseline there, with the numbers.

    Credit quality: Spearman above the baseline's by more than max(0.05, sqrt(std_a^2 + std_b^2)).
    Efficiency: every seed reached the target and the mean compute is at least 10% below the
    baseline's (whose seeds must all have reached it too, else any all-reached run counts)."""
    res = result["results"]
    notes: dict[str, list[str]] = {}
    if baseline not in res:
        return notes
    for knob in [k["name"] for k in result["suite"]]:
        base = res[baseline][knob]
        if base.get("status") != "ok":
            continue
        lines = []
        for name, per in res.items():
            r = per.get(knob, {})
            if name == baseline or r.get("status") != "ok":
                continue
            bits = []
            sp, bsp = r["spearman"], base["spearman"]
            if sp["mean"] is not None and sp["mean"] - bsp["mean"] > max(0.05, math.hypot(sp["std"], bsp["std"])):
                bits.append(f"Spearman {sp['mean']:.2f} vs {bsp['mean']:.2f}")
            c, bc = r["compute"]["mean"], base["compute"]["mean"]
            base_all = base["reached"] == base["seeds"]
            if r["reached"] == r["seeds"] and (not base_all or c <= 0.9 * bc):
                bits.append(f"compute {c:.0f} vs {'>' if not base_all else ''}{bc:.0f}")
            if bits:
                lines.append(f"`{name}` ({'; '.join(bits)})")
        notes[knob] = lines
    return notes


def markdown_report(result: dict) -> str:
    res, knobs = result["results"], [k["name"] for k in result["suite"]]
    st = result["settings"]
    lines = [
        "# CreditBench results", "",
        f"{len(res)} credit estimators x {len(knobs)} knobs x {len(st['seeds'])} seeds in {result['runtime_s']} s "
        f"(`python -m credo.creditbench.run`). Tabular softmax policy; group size {st['group_size']}; credit metrics "
        f"on {st['metric_batches']} batch(es) from the initial policy; training: REINFORCE, "
        f"{'a step of length ' + str(st['step_length']) + ' along the unit gradient (equal for every estimator)' if st.get('normalize_step') else 'lr ' + str(st['lr'])}, "
        f"up to {st['train_iters']} iterations, target = start + {st['target_frac']} x (best - start) exact success.",
        "Cells: mean ± std over seeds. `n/a`: the task cannot provide an input (the summary's status says which); "
        "`error`: see the list at the end.",
        "", "| knob | setting |", "|---|---|",
    ]
    lines += [f"| {k['name']} | {k['description']} |" for k in result["suite"]]
    lines += ["", "## Summary", "",
              "Means over the knobs where the value exists. Spearman: rank correlation of the estimated and true "
              "per-step advantages; decisive mass: share of |A| on steps whose choice matters; sign error: wrong sign "
              "where A* != 0; filler credit: share of filler steps with non-negligible credit; compute vs GRPO: "
              "median over knobs of compute-to-target / GRPO's (lower is better); mean |A|: the advantage scale "
              "(training takes equal-length steps, so the scale does not act as a step size; without that, large-scale estimators would learn faster per "
              "rollout for that reason alone).", "",
              "| estimator | level | Spearman | decisive mass | sign error | filler credit | mean \\|A\\| | compute vs GRPO | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, per in res.items():
        vals = []
        for key in ("spearman", "decisive_mass", "sign_error", "filler_credit", "scale"):
            xs = [_mean_of(per[k], key) for k in knobs]
            xs = [x for x in xs if x is not None]
            vals.append(f"{np.mean(xs):.2f}" if xs else "—")
        ratios = []
        for k in knobs:
            c, b = _mean_of(per[k], "compute"), _mean_of(res.get(BASELINE, {}).get(k, {}), "compute")
            if c is not None and b:
                ratios.append(c / b)
        vals.append(f"{np.median(ratios):.2f}" if ratios else "—")
        states = sorted({per[k]["status"] for k in knobs})
        status = "ok" if states == ["ok"] else "; ".join(s if s.startswith("n/a") else "error" if s != "ok" else "ok"
                                                          for s in states)
        lines.append(f"| `{name}` | {per['_level']} | " + " | ".join(vals) + f" | {status} |")
    for key, title in (("spearman", "Spearman rank correlation with the true advantages"),
                       ("decisive_mass", "Decisive mass (— on multi-turn knobs: every turn is decisive)"),
                       ("sign_error", "Sign error on units with A* != 0"),
                       ("filler_credit", "Filler steps with non-negligible credit"),
                       ("compute", "Compute to target (rollouts + probe rollouts + judge calls + extra calls; "
                                   "> = some seed did not reach it)")):
        lines += ["", f"## {title}", "", "| estimator | " + " | ".join(knobs) + " |", "|---" * (len(knobs) + 1) + "|"]
        for name, per in res.items():
            lines.append(f"| `{name}` | " + " | ".join(_cell(per[k], key) for k in knobs) + " |")
    lines += ["", f"## Closing note: who beats plain GRPO (`{BASELINE}`), knob by knob", "",
              "Credit: Spearman above GRPO's by more than max(0.05, combined std). Efficiency: all seeds reach the "
              "target with at least 10% less compute (probes and judge calls included).", ""]
    notes = beats_baseline(result)
    for k in knobs:
        found = notes.get(k)
        lines.append(f"- **{k}**: " + (", ".join(found) if found else "none") )
    errors = [(n, k, per[k]["status"]) for n, per in res.items() for k in knobs if per[k]["status"].startswith("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- `{n}` on {k}: {s}" for n, k, s in errors]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, knobs = result["results"], [k["name"] for k in result["suite"]]
    names = list(res)
    panels = [("spearman", "Spearman with true A", -1, 1, "RdBu"),
              ("decisive_mass", "decisive mass", 0, 1, "viridis"),
              ("compute", "log2 compute / GRPO", -2, 2, "RdBu_r")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 2 + 0.28 * len(names)), squeeze=False)
    for ax, (key, title, lo, hi, cmap) in zip(axes[0], panels):
        grid = np.full((len(names), len(knobs)), np.nan)
        for i, n in enumerate(names):
            for j, k in enumerate(knobs):
                v = _mean_of(res[n][k], key)
                if key == "compute":
                    b = _mean_of(res.get(BASELINE, {}).get(k, {}), "compute")
                    v = math.log2(v / b) if v and b else None
                grid[i, j] = np.nan if v is None else v
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(len(knobs)), knobs, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle("CreditBench (grey: n/a or error)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(result: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = out_dir / "creditbench.md", out_dir / "creditbench.json", out_dir / "creditbench.png"
    md.write_text(markdown_report(result))
    js.write_text(json.dumps(result, indent=1, sort_keys=False, allow_nan=False, default=str))
    plot(result, png)
    return [md, js, png]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m credo.creditbench.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny suite and settings (tests, smoke runs)")
    parser.add_argument("--out", help="output folder (default runs/creditbench/<timestamp>)")
    parser.add_argument("--only", help="comma-separated estimator names (default: every registered one)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 5; quick 2)")


def run_from_args(args) -> int:
    suite, settings = (QUICK_SUITE, QUICK) if args.quick else (SUITE, Settings())
    if args.seeds:
        settings = replace(settings, seeds=tuple(range(args.seeds)))
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    if names:
        import credo.credit  # noqa: F401

        unknown = [n for n in names if n not in CREDIT and ":" not in n]  # "pkg.mod:fn" = user code
        if unknown:
            from credo.errors import CredoError

            raise CredoError(f"unknown credit estimator(s) {', '.join(unknown)}; valid: {', '.join(CREDIT.names())}")
    out = Path(args.out) if args.out else Path("runs/creditbench") / time.strftime("%Y%m%d-%H%M%S")
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give (and the CPU is shared)
    result = run_suite(names, suite, settings)
    paths = write_outputs(result, out)
    print(f"CreditBench: {len(result['results'])} estimators x {len(suite)} knobs in {result['runtime_s']} s")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
