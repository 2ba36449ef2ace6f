"""Recipes (`credo train --recipe`) and objective pairings: precedence, notes, validity, a tiny run."""

import json
import sys
from pathlib import Path

import pytest

from credo.cli import main, resolve_config
from credo.credit import CREDIT
from credo.errors import CredoError
from credo.objectives import OBJECTIVES, REDUCTIONS
from credo.recipes import PAIRINGS, RECIPES
from credo.tasks import TASKS
from credo.train.run import validate

sys.path.insert(0, str(Path(__file__).parent))  # the shared fixtures module (import mode is importlib)
from fixture_tasks import ParityTask, tiny_run  # noqa: E402


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", RECIPES.names())
def test_each_recipe_sets_its_fields_and_names_real_methods(name):
    fields = RECIPES.get(name).fields
    from credo.rollout.samplers import SAMPLERS

    sampler = fields.get("rollout.sampler")  # a sampler that branches episodes (vpr) needs a multi-turn task
    multiturn = sampler in SAMPLERS.names() and getattr(SAMPLERS.get(sampler), "multiturn", False)
    cfg = resolve_config("tiny", None, [("task.name", "keyvalue"), ("task.params", "{}")] if multiturn else [],
                         recipe=name)
    for key, value in fields.items():
        assert _get(cfg, key) == value, key
    assert cfg.rl.recipe == name
    OBJECTIVES.get(cfg.rl.objective), CREDIT.get(cfg.rl.credit)
    assert cfg.rl.loss_reduction in REDUCTIONS
    validate(cfg)


def test_explicit_fields_win_over_the_recipe(tmp_path):
    cfg = resolve_config("tiny", None, [("rl.loss_reduction", "seq_mean_token_mean")], recipe="dapo")
    assert (cfg.rl.objective, cfg.rl.loss_reduction, cfg.rl.dynamic_sampling) == ("dapo", "seq_mean_token_mean", True)
    toml = tmp_path / "c.toml"
    toml.write_text('[rl]\nrecipe = "grpo"\nkl_coef = 0.1\n')
    cfg = resolve_config("tiny", str(toml), [])
    assert (cfg.rl.recipe, cfg.rl.kl_coef, cfg.rl.kl_estimator, cfg.rl.loss_reduction) == ("grpo", 0.1, "k3",
                                                                                         "seq_mean_token_mean")
    cfg = resolve_config("tiny", str(toml), [("rl.kl_coef", "0.0")])
    assert cfg.rl.kl_coef == 0.0


def test_the_recipe_override_key_works_like_the_flag():
    a = resolve_config("tiny", None, [("rl.recipe", "gspo")])
    b = resolve_config("tiny", None, [], recipe="gspo")
    assert json.dumps(a.__dict__, default=str) == json.dumps(b.__dict__, default=str)


def test_objective_alone_gets_its_papers_pairing_for_unset_fields_only():
    notes: list[str] = []
    cfg = resolve_config("tiny", None, [("rl.objective", "gspo")], notes=notes)
    assert cfg.rl.loss_reduction == "seq_mean_token_mean"
    assert len(notes) == 1 and "rl.loss_reduction" in notes[0] and "gspo" in notes[0]
    notes = []
    cfg = resolve_config("tiny", None, [("rl.objective", "gspo"), ("rl.loss_reduction", "token_mean")], notes=notes)
    assert cfg.rl.loss_reduction == "token_mean" and notes == []
    cfg = resolve_config("tiny", None, [("rl.objective", "ppo")])
    assert cfg.rl.credit == "gae"
    base = resolve_config("tiny", None, [])  # nothing chosen: the preset as it is
    assert base.rl.loss_reduction == resolve_config("tiny", None, [("run.seed", "1")]).rl.loss_reduction
    assert PAIRINGS["dr_grpo"] == {"rl.credit": "dr_grpo", "rl.loss_reduction": "seq_mean_token_sum_norm"}


def test_a_resumed_config_is_reproduced_as_written(tmp_path):
    cfg = resolve_config("tiny", None, [("rl.objective", "gspo"), ("rl.loss_reduction", "token_mean")])
    from credo.config import to_dict

    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    again = resolve_config(None, str(path), [])
    assert to_dict(again) == to_dict(cfg)


def test_unknown_recipe_is_one_clear_error(capsys):
    with pytest.raises(CredoError, match="dapo"):
        resolve_config("tiny", None, [], recipe="dapoo")
    assert main(["train", "--preset", "tiny", "--recipe", "nope"]) == 2
    assert "recipe" in capsys.readouterr().err


def test_list_recipes_names_every_recipe(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    for name in RECIPES.names():
        assert name in out


def test_a_tiny_run_with_the_dapo_recipe_records_it_and_samples_dynamically(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, "parity", ParityTask)
    rows = tiny_run(tmp_path, "dapo", "--recipe", "dapo")
    saved = json.loads((tmp_path / "dapo" / "config.json").read_text())
    assert saved["rl"]["recipe"] == "dapo" and saved["rl"]["dynamic_sampling"] is True
    assert saved["rl"]["objective"] == "dapo"
    assert all("sampling_rounds" in r for r in rows)
