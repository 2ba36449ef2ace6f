"""The example pipelines in configs/pipelines/ stay valid: each is read and resolved (every stage's
TrainConfig and parameters checked, no training), and what each file promises holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from credo.stages.pipeline import read_pipeline, resolve_stages

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pipelines"


def _resolve(name: str, tmp_path):
    header, specs = read_pipeline(CONFIGS / name)
    return resolve_stages(header, specs, tmp_path / "out")


def _held_out_and_train_sets_exist(stage):
    """The stage's held-out set (and an RL prompt pool) can be drawn: e.g. knights at 2 inhabitants has
    only 147 test puzzles, which resolve_stages does not check."""
    from credo.tasks import make_task

    task = make_task(stage.cfg.task.name, **stage.cfg.task.params)
    assert len(task.examples("test", stage.cfg.task.eval_size, seed=0)) == stage.cfg.task.eval_size
    if stage.spec.kind == "sft":
        n = stage.cfg.warmup.steps * stage.cfg.warmup.batch_size
        assert len(task.examples("train", n, seed=stage.cfg.run.seed + 10_000)) == n
    if stage.cfg.rl.prompt_pool:
        pool = stage.cfg.rl.prompt_pool
        assert len(task.examples("train", pool, seed=stage.cfg.run.seed)) == pool


def test_cold_start_pipeline(tmp_path):
    stages = _resolve("cold_start.toml", tmp_path)
    assert [(s.spec.name, s.spec.kind) for s in stages] == [("warmup", "sft"), ("specs", "dpo"), ("grpo", "rl"),
                                                            ("student", "distill")]
    warmup, specs, grpo, student = stages
    assert warmup.cfg.model.name == "smollm2" and warmup.cfg.warmup.steps > 0 and warmup.cfg.run.eval_base
    assert specs.params.pairs == "self" and specs.cfg.model.name == str(warmup.folder / "checkpoints" / "final")
    assert grpo.cfg.rl.objective == "grpo" and grpo.cfg.rl.kl_coef == pytest.approx(0.04)  # the grpo recipe
    assert grpo.cfg.model.name == str(specs.folder / "checkpoints" / "final")
    assert student.cfg.model.name == "smollm2-layers:10"  # the layer-dropped student, not the chain's model
    assert student.params.teacher == str(grpo.folder / "checkpoints" / "final")  # teacher "@previous"
    assert {s.cfg.task.name for s in stages} == {"arith"} and {s.cfg.task.eval_size for s in stages} == {200}
    for stage in stages:
        _held_out_and_train_sets_exist(stage)


def test_warmup_before_train_pipeline(tmp_path):
    stages = _resolve("warmup_before_train.toml", tmp_path)
    assert [(s.spec.name, s.spec.kind) for s in stages] == [("knights", "sft"), ("transfer", "eval"), ("arith", "rl"),
                                                            ("control", "rl")]
    knights, transfer, arith, control = stages
    assert knights.cfg.task.name == "knights" and knights.cfg.task.params == {"difficulty": 2, "reasoning": True}
    assert knights.cfg.warmup.steps > 0 and knights.cfg.run.eval_base
    warmed = str(knights.folder / "checkpoints" / "final")
    assert transfer.cfg.model.name == warmed and arith.cfg.model.name == warmed  # arith: from = "knights"
    assert control.cfg.model.name == "smollm2" and control.cfg.run.eval_base  # the paper's control: base model
    for stage in (transfer, arith, control):
        assert stage.cfg.task.name == "arith" and stage.cfg.task.params == {"difficulty": 2, "think": True}
    assert 0 < arith.cfg.rl.prompt_pool <= 100  # the paper's small target set (<= 100 examples)
    assert (arith.cfg.rl.prompt_pool, arith.cfg.rl.steps) == (control.cfg.rl.prompt_pool, control.cfg.rl.steps)
    # the longest reasoning demonstration fits the knights stage's completion budget
    from credo.models import bundled_tokenizer
    from credo.tasks import make_task

    task = make_task("knights", **knights.cfg.task.params)
    tokenizer = bundled_tokenizer()
    longest = max(len(tokenizer(e.demonstration)["input_ids"]) for e in task.examples("test", 147, seed=0))
    assert longest <= knights.cfg.sampling.max_new_tokens
    for stage in stages:
        _held_out_and_train_sets_exist(stage)
