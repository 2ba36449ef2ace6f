"""Difficulty curricula (train/curriculum.py): the schedules by hand, the prompt blocks of each level, the
adaptive rule and its state, configuration errors, and training on the tiny preset."""

from __future__ import annotations

import json

import pytest

from credo.errors import CredoError
from credo.tasks import make_task
from credo.train.curriculum import Curriculum, level_prompts, make_curriculum


def test_linear_schedule_by_hand():
    easy = make_curriculum("linear", {"levels": [1, 2, 3]}, steps=6, per_level=8)
    assert [easy.level_index(t) for t in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [easy.levels[easy.level_index(t)] for t in range(6)] == [1, 1, 2, 2, 3, 3]
    hard_first = make_curriculum("linear", {"levels": [3, 1]}, steps=5, per_level=8)
    assert [hard_first.levels[hard_first.level_index(t)] for t in range(5)] == [3, 3, 3, 1, 1]  # t * 2 // 5


def test_prompts_come_from_the_current_levels_block():
    cur = make_curriculum("linear", {"levels": [1, 3]}, steps=4, per_level=6)
    prompts = level_prompts(make_task, "arith", {"difficulty": 2}, cur, seed=0)
    assert len(prompts) == 12 and [p.meta["level"] for p in prompts] == [1] * 6 + [3] * 6
    for step in range(4):
        ids = cur.prompt_ids(step, per_step=4, seed=0)
        k = cur.level_index(step)
        assert all(k * 6 <= i < (k + 1) * 6 for i in ids)
        assert {prompts[i].meta["level"] for i in ids} == {cur.levels[k]}
    first, second = cur.prompt_ids(0, 4, seed=0), cur.prompt_ids(1, 4, seed=0)
    assert len(set(first + second)) == 6  # one epoch over the level's 6 prompts, then the next begins


def test_adaptive_moves_up_when_the_window_is_good_enough():
    cur = make_curriculum("adaptive", {"levels": [1, 2, 3], "threshold": 0.75, "window": 2}, steps=10, per_level=4)
    seen = []
    for step, accuracy in enumerate([1.0, 0.4, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]):
        seen.append(cur.level_index(step))
        cur.observe(step, accuracy)
    # window means: (1.0, 0.4) 0.7, (0.4, 1.0) 0.7, (1.0, 0.5) 0.75 -> level 2 after step 3; window restarts;
    # (1.0, 1.0) after step 5 -> level 3; the last level stays
    assert seen == [0, 0, 0, 0, 1, 1, 2, 2]
    restored = make_curriculum("adaptive", {"levels": [1, 2, 3], "threshold": 0.75, "window": 2}, steps=10,
                               per_level=4)
    restored.load_state(json.loads(json.dumps(cur.state())))
    assert (restored.index, restored.recent) == (cur.index, cur.recent)
    cur.observe(8, None)  # a step that logged no accuracy changes nothing
    assert cur.state() == restored.state()


def test_configuration_errors():
    assert make_curriculum("none", {}, steps=4, per_level=2) is None
    with pytest.raises(CredoError, match="needs rl.curriculum_params.levels"):
        make_curriculum("linear", {}, steps=4, per_level=2)
    with pytest.raises(CredoError, match="at least two levels"):
        make_curriculum("linear", {"levels": [1]}, steps=4, per_level=2)
    with pytest.raises(CredoError, match="threshold must be in"):
        make_curriculum("adaptive", {"levels": [1, 2], "threshold": 1.5}, steps=4, per_level=2)
    with pytest.raises(CredoError, match="rl.curriculum_params: .*unexpected keyword argument 'treshold'"):
        make_curriculum("adaptive", {"levels": [1, 2], "treshold": 0.5}, steps=4, per_level=2)
    with pytest.raises(CredoError, match="is set but rl.curriculum is"):
        make_curriculum("none", {"levels": [1, 2]}, steps=4, per_level=2)
    cur = Curriculum("linear", [1, 99], steps=4, per_level=2)
    with pytest.raises(CredoError, match=r"rl.curriculum level 99 \(difficulty of task 'arith'\)"):
        level_prompts(make_task, "arith", {}, cur, seed=0)
    from credo.cli import resolve_config
    from credo.train.run import validate

    with pytest.raises(CredoError, match="rl.curriculum with rl.dynamic_sampling is not built yet"):
        validate(resolve_config("tiny", None, [("rl.curriculum", "linear"), ("rl.curriculum_params", '{"levels": [1, 2]}'),
                                               ("rl.dynamic_sampling", "true")]))


def test_a_linear_curriculum_trains_on_the_tiny_preset(tmp_path):
    from credo.cli import resolve_config
    from credo.train.run import train

    cfg = resolve_config("tiny", None, [("rl.curriculum", "linear"), ("rl.curriculum_params", '{"levels": [1, 3]}'),
                                        ("rl.steps", "4"), ("run.out_dir", str(tmp_path)), ("run.name", "c"),
                                        ("run.progress", "false")])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["curriculum_level"] for r in rows if r["phase"] == "rl"] == [1, 1, 3, 3]
