"""credo report / compare: aggregation across seeds against hand-computed values, run folders read while
they are going, the written outputs, and `credo compare` end to end on the tiny preset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from credo.cli import main
from credo.errors import CredoError
from credo.report.aggregate import curve_by_step, curve_by_time, final_table, seed_stats, smooth, welch
from credo.report.compare import Arm, arms_from_file, parse_arm_spec, parse_seeds, records_of, run_compare
from credo.report.render import write_report
from credo.report.runs import RunRecord, held_out_points, load_run


def test_seed_stats_is_mean_and_sample_std():
    mean, std, n = seed_stats([0.5, 0.7, 0.9, None, float("nan")])
    assert (mean, n) == (pytest.approx(0.7), 3)
    assert std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert seed_stats([0.3]) == (0.3, 0.0, 1)
    mean, std, n = seed_stats([])
    assert math.isnan(mean) and math.isnan(std) and n == 0


def test_smooth_is_a_trailing_mean_that_skips_gaps():
    assert smooth([1.0, math.nan, 3.0, 5.0], 2) == [1.0, 1.0, 3.0, 4.0]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_curve_by_step_over_the_seeds_that_have_the_step():
    curve = curve_by_step([{0: 1.0, 1: 2.0}, {0: 3.0, 1: 4.0, 2: 5.0}])
    assert curve["x"] == [0, 1, 2]
    assert curve["mean"] == [2.0, 3.0, 5.0]
    assert curve["std"] == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0])
    assert curve["n"] == [2, 2, 1]


def test_curve_by_time_interpolates_onto_the_common_span():
    # seed A: (1 s, 0) -> (3 s, 2); seed B: (1 s, 2) -> (2 s, 4): the grid is [1, 2] s (B ends first)
    curve = curve_by_time([[(1.0, 0.0), (3.0, 2.0)], [(1.0, 2.0), (2.0, 4.0)]], points=3)
    assert curve["x"] == pytest.approx([1.0, 1.5, 2.0])
    assert curve["mean"] == pytest.approx([1.0, 1.75, 2.5])  # A: 0, 0.5, 1; B: 2, 3, 4
    assert curve["std"] == pytest.approx([2 / math.sqrt(2), 2.5 / math.sqrt(2), 3 / math.sqrt(2)])


def _t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p of Student's t by integrating its density numerically (independent of scipy)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    xs = np.linspace(0.0, abs(t), 200_001)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(xs * xs / df))
    inside = np.trapezoid(density, xs)
    return float(1.0 - 2.0 * inside)


def test_welch_against_the_closed_form_at_two_degrees_of_freedom():
    # b has no spread, so the Welch-Satterthwaite df is n_a - 1 = 2, where the t CDF has a closed form:
    # p = 1 - t / sqrt(2 + t^2); t = (2 - 0) / sqrt(1 / 3)
    result = welch([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t = 2.0 / math.sqrt(1.0 / 3.0)
    assert result["t"] == pytest.approx(t)
    assert result["df"] == pytest.approx(2.0)
    assert result["p"] == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)


def test_welch_matches_the_textbook_formula_on_unequal_spreads():
    a, b = [0.5, 0.6, 0.7, 0.65], [0.2, 0.3, 0.25]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    result = welch(a, b)
    assert result["t"] == pytest.approx(t)
    assert result["df"] == pytest.approx(df)
    assert result["p"] == pytest.approx(_t_two_sided_p(t, df), abs=1e-6)


def test_welch_degenerate_cases():
    assert welch([0.5], [0.1, 0.2]) is None  # one seed: no spread to compare with
    assert welch([0.3, 0.3], [0.3, 0.3])["p"] == 1.0
    assert welch([0.3, 0.3], [0.1, 0.1])["p"] == 0.0


def _run(arm: str, seed: int, *, start: float, final: float | None, rewards: list[float], steps: int | None = None,
         step_time: float = 2.0, folder: str = "x") -> RunRecord:
    rows = [{"phase": "eval", "stage": "base", "accuracy": 0.0},
            {"phase": "warmup", "step": 0, "loss": 1.0},
            {"phase": "eval", "stage": "warmup", "accuracy": start}]
    rows += [{"phase": "rl", "step": i, "reward_mean": r, "response_length": 10.0 + i, "step_time": step_time,
              "entropy": 1.0, "approx_kl": 0.0, "clip_fraction": 0.0} for i, r in enumerate(rewards)]
    if final is not None:
        rows.append({"phase": "eval", "stage": "rl", "accuracy": final})
    steps = len(rewards) if steps is None else steps
    return RunRecord(Path(folder) / f"{arm}-s{seed}", arm, seed, {"rl": {"steps": steps}}, rows,
                     None if final is None else {"rl": {"accuracy": final}},
                     "finished" if final is not None else "running")


def test_final_table_by_hand():
    arms = {
        "a": [_run("a", 0, start=0.5, final=0.8, rewards=[0.1] * 9 + [0.9]),
              _run("a", 1, start=0.5, final=0.9, rewards=[0.2] * 9 + [0.7]),
              _run("a", 2, start=0.6, final=0.85, rewards=[0.3] * 9 + [0.8], step_time=4.0)],
        "b": [_run("b", 0, start=0.5, final=0.6, rewards=[0.0] * 10),
              _run("b", 1, start=0.5, final=0.7, rewards=[0.0] * 10),
              _run("b", 2, start=0.5, final=None, rewards=[0.0] * 4, steps=10)],  # still running
    }
    table = final_table(arms)
    a, b = table
    assert a["heldout_accuracy"]["mean"] == pytest.approx(0.85)
    assert a["heldout_accuracy"]["std"] == pytest.approx(0.05)
    assert a["gain"]["mean"] == pytest.approx((0.3 + 0.4 + 0.25) / 3)
    assert a["train_reward"]["mean"] == pytest.approx(0.8)  # the last 10% of 10 steps = the last step
    assert a["response_length"]["mean"] == pytest.approx(19.0)
    assert a["s_per_step"]["mean"] == pytest.approx((2 + 2 + 4) / 3)
    assert a["best"] and a["test"] is None
    assert b["seeds"] == [0, 1] and b["runs"] == 3  # the running seed is not in the table yet
    assert b["heldout_accuracy"]["mean"] == pytest.approx(0.65)
    expected = welch([0.6, 0.7], [0.8, 0.9, 0.85])
    assert b["test"]["p"] == pytest.approx(expected["p"]) and b["test"]["against"] == "a"
    assert b["test"]["exceeds"] == (expected["p"] < 0.05)


def test_held_out_points_put_every_evaluation_at_its_rl_step():
    run = _run("a", 0, start=0.4, final=0.7, rewards=[0.0] * 6)
    run.rows.insert(-1, {"phase": "eval", "stage": "rl_step", "step": 3, "accuracy": 0.55})
    assert held_out_points(run) == [(0, 0.4), (3, 0.55), (6, 0.7)]


def _write_run(folder: Path, seed: int, rows: list[dict], *, summary: bool = True, torn: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"seed": seed}, "rl": {"recipe": "grpo", "steps": 4}}))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"phase": "rl", "st'  # the process was killed while writing this line
    (folder / "metrics.jsonl").write_text(text)
    if summary:
        (folder / "summary.json").write_text("{}")
    return folder


def test_load_run_reads_a_run_that_is_still_going(tmp_path):
    rows = [{"phase": "eval", "stage": "warmup", "accuracy": 0.5}, {"phase": "rl", "step": 0, "reward_mean": 0.2}]
    run = load_run(_write_run(tmp_path / "r", 3, rows, summary=False, torn=True))
    assert run.status == "running" and run.seed == 3 and run.arm == "grpo"
    assert run.rows == rows  # the torn last line is dropped


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(CredoError, match="not a run folder"):
        load_run(tmp_path)
    folder = _write_run(tmp_path / "r", 0, [])
    (folder / "metrics.jsonl").write_text('{"phase": "rl"}\nnot json\n{"phase": "rl"}\n')
    with pytest.raises(CredoError, match=r"metrics\.jsonl: a broken line"):
        load_run(folder)
    (folder / "config.json").write_text("{oops")
    with pytest.raises(CredoError, match=r"config\.json: not valid JSON \(line 1"):
        load_run(folder)


def test_write_report_outputs(tmp_path):
    arms = {"a": [_run("a", s, start=0.5, final=0.8 + 0.05 * s, rewards=[0.1, 0.5, 0.9]) for s in range(2)],
            "b": [_run("b", 0, start=0.5, final=None, rewards=[0.1], steps=3)]}
    paths = write_report(tmp_path / "rep", arms, title="t", window=1)
    page = paths["html"].read_text()
    assert page.count('<img class="plot"') == 3 and page.count("data:image/png;base64,") == 3
    assert "running (1/3 RL steps)" in page
    md = paths["markdown"].read_text()
    assert "| a | 2/2 | 0.825 ± 0.035 |" in md  # mean 0.825, sample std 0.0354
    assert "![against RL step](plots/by_step.png)" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r.rows) for rs in arms.values() for r in rs)
    assert {r["arm"] for r in rows} == {"a", "b"}
    payload = json.loads(paths["json"].read_text())
    assert [r["arm"] for r in payload["table"]] == ["a", "b"]
    for name in ("by_step", "by_time", "final"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arm_parsing():
    arm = parse_arm_spec(["hot", "recipe=dapo", "sampling.temperature=1.2"])
    assert (arm.name, arm.recipe, arm.overrides) == ("hot", "dapo", [("sampling.temperature", "1.2")])
    with pytest.raises(CredoError, match="not KEY=VALUE"):
        parse_arm_spec(["hot", "dapo"])
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    for bad in ("0,0", "-1", "a"):
        with pytest.raises(CredoError, match="--seeds"):
            parse_seeds(bad)


def test_arms_file(tmp_path):
    path = tmp_path / "arms.toml"
    path.write_text('[[arm]]\nname = "kl"\nrecipe = "grpo"\nrl.kl_coef = 0.1\ntask.params = {difficulty = 3}\n'
                    '"sampling.stop" = ["</answer>"]\n[[arm]]\nname = "plain"\n')
    kl, plain = arms_from_file(path)
    assert (kl.name, kl.recipe, plain.recipe, plain.overrides) == ("kl", "grpo", None, [])
    assert kl.overrides == [("rl.kl_coef", "0.1"), ("task.params.difficulty", "3"),
                            ("sampling.stop", '["</answer>"]')]
    path.write_text('[[arm]]\nrecipe = "grpo"\n')
    with pytest.raises(CredoError, match="arm 1 has no name"):
        arms_from_file(path)
    with pytest.raises(CredoError, match="--arms: config file not found"):
        arms_from_file(tmp_path / "missing.toml")
    path.write_text('[[arm]\nname = "x"\n')
    with pytest.raises(CredoError, match="--arms: .*invalid config file"):
        arms_from_file(path)


def test_compare_refuses_unequal_budgets_and_bad_names(tmp_path):
    arms = [Arm("short", "grpo", [("rl.steps", "2")]), Arm("long", "grpo", [("rl.steps", "3")])]
    with pytest.raises(CredoError, match=r"differ in their budget \(rl\.steps 2 vs 3\)"):
        run_compare(arms, [0], tmp_path / "c", preset="tiny", config=None, common=[])
    with pytest.raises(CredoError, match="arm 'x': .*unknown recipe|arm 'x'"):
        run_compare([Arm("x", "no_such_recipe")], [0], tmp_path / "c", preset="tiny", config=None, common=[])
    with pytest.raises(CredoError, match="given twice"):
        run_compare([Arm("a", "grpo"), Arm("a", "dapo")], [0], tmp_path / "c", preset="tiny", config=None, common=[])
    with pytest.raises(CredoError, match="arm name"):
        run_compare([Arm("a/b", "grpo")], [0], tmp_path / "c", preset="tiny", config=None, common=[])


def test_compare_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "tiny", "--recipes", "grpo,dapo", "--seeds", "0,1", "--out", str(out),
            "--rl.steps", "2", "--task.eval_every", "1", "--run.progress", "false"]
    assert main(argv) == 0
    manifest = json.loads((out / "compare.json").read_text())
    assert [(r["arm"], r["seed"], r["status"]) for r in manifest["runs"]] == [
        ("grpo", 0, "finished"), ("dapo", 0, "finished"), ("grpo", 1, "finished"), ("dapo", 1, "finished")]
    for name in ("report.html", "report.md", "metrics.csv", "metrics.json", "plots/by_step.png"):
        assert (out / name).is_file(), name
    # the same data for every arm of a seed: the held-out set and the RL prompts come from the seed
    grpo0 = json.loads((out / "configs" / "grpo-s0.json").read_text())
    dapo0 = json.loads((out / "configs" / "dapo-s0.json").read_text())
    assert grpo0["run"]["seed"] == dapo0["run"]["seed"] == 0 and dapo0["rl"]["dynamic_sampling"] is True
    # one shared warm-up per seed: every arm of the seed starts RL from its checkpoint and scores it first
    warm = out / "runs" / "_warmup-s0"
    assert grpo0["model"]["name"] == dapo0["model"]["name"] == str(warm / "checkpoints" / "warmup")
    assert grpo0["warmup"]["steps"] == 0 and (warm / "checkpoints" / "warmup" / "model" / "config.json").is_file()
    assert [w["status"] for w in manifest["warmups"]] == ["finished", "finished"]
    warm_eval = next(r for r in load_run(warm).rows if r.get("stage") == "warmup")
    for arm in ("grpo", "dapo"):
        base = next(r for r in load_run(out / "runs" / f"{arm}-s0").rows if r.get("stage") == "base")
        assert {k: base[k] for k in warm_eval if k != "stage"} == {k: warm_eval[k] for k in warm_eval if k != "stage"}
    arms, _ = records_of([str(out)])
    assert {k: len(v) for k, v in arms.items()} == {"grpo": 2, "dapo": 2}
    run = arms["grpo"][0]
    assert [s for s, _ in held_out_points(run)] == [0, 1, 2]  # warm-up, the periodic one, the final one
    assert "| grpo | 2/2 |" in capsys.readouterr().out
    # run again: nothing left to train, the report is rebuilt
    assert main(argv) == 0
    assert "0 to train" in capsys.readouterr().err
    # credo report on the run folders themselves (no manifest): arms from the recipes
    assert main(["report", str(out / "runs"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()


def test_compare_keeps_going_past_a_failed_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    arms = [Arm("ok", "grpo"), Arm("broken", "grpo", [("model.name", str(tmp_path / "no_model"))])]
    code = run_compare(arms, [0], out, preset="tiny", config=None,
                       common=[("rl.steps", "1"), ("run.progress", "false"), ("run.eval_base", "false")],
                       allow_unequal=True)
    assert code == 1
    manifest = json.loads((out / "compare.json").read_text())
    status = {r["arm"]: r["status"] for r in manifest["runs"]}
    assert status == {"ok": "finished", "broken": "failed"}
    assert "broken-s0 failed" in capsys.readouterr().err
    assert (out / "report.html").is_file()  # the finished arm is reported


def test_compare_on_local_ray_workers(tmp_path):
    import ray

    from credo.report.compare import ray_runner
    from credo.rollout.ray_engine import init_ray

    init_ray("", num_cpus=2)
    try:
        runner, parallel = ray_runner("", cpus_per_run=1)
        assert parallel == 2  # 2 CPUs / 1 per run
        out = tmp_path / "cmp"
        code = run_compare([Arm("grpo", "grpo"), Arm("sapo", "sapo")], [0], out, preset="tiny", config=None,
                           common=[("rl.steps", "1"), ("run.progress", "false")], jobs=parallel, runner=runner)
    finally:
        ray.shutdown()
    assert code == 0
    manifest = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["finished", "finished"]
    assert [r["status"] for r in manifest["warmups"]] == ["finished"]
    arms, _ = records_of([str(out)])
    assert all(len(runs) == 1 and runs[0].summary is not None for runs in arms.values())


def test_shared_warmup_only_when_the_arms_agree_on_what_the_warmup_reads():
    from credo.report.compare import resolve_arms, shared_warmup_reason

    def reason(*arms):
        return shared_warmup_reason(resolve_arms(list(arms), preset="tiny", config=None, common=[], allow_unequal=True))

    assert reason(Arm("a", "grpo", [("task.eval_every", "2")]), Arm("b", "dapo", [("rl.steps", "7")])) is None
    assert reason(Arm("a", None, [("task.params.difficulty", "1")]), Arm("b")) == "the arms differ in their task.* fields"
    assert reason(Arm("a", None, [("warmup.lr", "0.01")]), Arm("b")) == "the arms differ in their warmup.* fields"
    assert reason(Arm("a", None, [("warmup.steps", "0")]), Arm("b", None, [("warmup.steps", "0")])) == \
        "warmup.steps is 0"
    assert reason(Arm("a", None, [("model.lora_rank", "4")]), Arm("b", None, [("model.lora_rank", "4")])) == \
        "LoRA warm-up checkpoints hold adapters only"
