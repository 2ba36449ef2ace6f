"""The data users bring: the same rows as JSONL, Parquet, CSV and a local `datasets` folder give the same
task; errors name the file, the row and the field; `match: "math"` checks answers with math-verify."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from credo.errors import CredoError
from credo.rewards.math_answers import canonical_math, math_equal, parses_as_math
from credo.tasks import JsonlTask

ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _parquet(path: Path, rows) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _csv(path: Path, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _datasets(path: Path, rows) -> str:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _examples(task: JsonlTask):
    return [[(e.prompt, e.answer, e.demonstration) for e in task.examples(split, n, seed=3)]
            for split, n in (("train", 5), ("test", 5))]


def test_every_format_gives_the_same_task(tmp_path):
    reference = _examples(JsonlTask(path=_jsonl(tmp_path / "d.jsonl", ROWS), match="int"))
    for write, name in ((_parquet, "d.parquet"), (_csv, "d.csv"), (_datasets, "d_folder")):
        task = JsonlTask(path=write(tmp_path / name, ROWS), match="int")
        assert _examples(task) == reference, name
    parquet = JsonlTask(path=str(tmp_path / "d.parquet"))
    assert sorted(e.meta["row"] for e in parquet.examples("train", 5, seed=0))[0] >= 1
    csv_task = JsonlTask(path=str(tmp_path / "d.csv"), match="int")
    example = csv_task.examples("train", 1, seed=0)[0]
    assert csv_task.score(f"<answer>{example.answer}</answer>", example).correct


def test_a_dataset_dict_gives_its_own_splits(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:30]),
                          "test": datasets.Dataset.from_list(ROWS[30:])}).save_to_disk(str(folder))
    task = JsonlTask(path=str(folder))
    assert sorted(e.prompt for e in task.examples("test", 10, seed=0)) == sorted(r["prompt"] for r in ROWS[30:])
    with pytest.raises(CredoError, match="asked for 11 test examples but the file has 10 test rows"):
        task.examples("test", 11, seed=0)
    bad = tmp_path / "bad_dd"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(ROWS[:3])}).save_to_disk(str(bad))
    with pytest.raises(CredoError, match=r"splits must be 'train' and / or 'test', got 'validation'"):
        JsonlTask(path=str(bad)).examples("train", 1, seed=0)


def _error(path: str, **params) -> str:
    with pytest.raises(CredoError) as info:
        JsonlTask(path=path, **params).examples("train", 1, seed=0)
    return str(info.value)


def test_errors_name_the_file_the_row_and_the_field(tmp_path):
    rows = [dict(ROWS[0]), {"prompt": "no answer here"}]
    parquet = _parquet(tmp_path / "m.parquet", [dict(r, answer=r.get("answer")) for r in rows])
    assert _error(parquet) == f"{parquet}: row 2: field 'answer' must be a string or number, got null"
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("prompt,answer\nWhat is 1+1?,2\nWhat is 2+2?,\n")
    assert _error(str(csv_path)) == f"{csv_path}:3: field 'answer' is empty"
    csv_path.write_text("prompt,answer\nWhat is 1+1?,2,extra\n")
    assert _error(str(csv_path)) == f"{csv_path}:2: 3 cells but the header names 2 columns"
    csv_path.write_text("question,answer\nWhat is 1+1?,2\n")
    assert _error(str(csv_path)) == f"{csv_path}:2: missing field 'prompt'"
    csv_path.write_bytes(b"prompt,answer\n\xff,1\n")
    assert _error(str(csv_path)).startswith(f"{csv_path}: not valid UTF-8")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    assert _error(str(broken)).startswith(f"{broken}: not a readable Parquet file")
    folder = _datasets(tmp_path / "ds", [{"prompt": "p", "answer": 1}, {"prompt": "", "answer": 2}])
    assert _error(folder) == f"{folder}: row 2: field 'prompt' is empty"
    assert _error(str(tmp_path / "missing.parquet")) == f"jsonl: file not found: {tmp_path / 'missing.parquet'}"


@pytest.mark.parametrize("given, reference, equal", [
    ("\\frac{1}{2}", "0.5", True), ("0.5", "\\frac{1}{2}", True), ("x = 3", "3", True), ("\\sqrt{4}", "2", True),
    ("\\boxed{7}", "7", True), ("2", "3", False), ("{{broken", "2", False), ("", "2", False), (None, "2", False),
])
def test_math_equal(given, reference, equal):
    assert math_equal(given, reference) is equal


def test_math_match_in_a_task(tmp_path):
    rows = [{"prompt": f"Half of {i}?", "answer": f"\\frac{{{i}}}{{2}}"} for i in range(1, 41)]
    task = JsonlTask(path=_jsonl(tmp_path / "m.jsonl", rows), match="math")
    example = next(e for e in task.examples("train", 20, seed=0) if e.answer == "\\frac{3}{2}")
    assert task.score("<answer>1.5</answer>", example).correct
    assert task.score("<answer>3/2</answer>", example).reward == 1.0
    assert not task.score("<answer>{{\\frac</answer>", example).correct  # unparseable: wrong, never raises
    assert not task.score("1.5", example).formatted
    assert task.final_answer("<answer>3/2</answer>", example) == canonical_math("3/2") == "3/2"
    assert not parses_as_math("{{") and parses_as_math("\\frac{1}{2}")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "answer": "{{"}])
    assert _error(bad, match="math") == (f"{bad}:1: field 'answer' is not an answer math-verify can parse "
                                         f"(match='math'): '{{{{'")


def test_a_parquet_task_with_math_answers_trains_on_the_tiny_preset(tmp_path):
    from credo.cli import resolve_config
    from credo.train.run import train

    rows = [{"prompt": f"What is {i} / 4?", "answer": f"\\frac{{{i}}}{{4}}"} for i in range(200)]
    path = _parquet(tmp_path / "q.parquet", rows)
    cfg = resolve_config("tiny", None, [("task.name", "jsonl"), ("task.params", json.dumps({"path": path,
                                                                                          "match": "math"})),
                                        ("run.out_dir", str(tmp_path / "runs")), ("run.name", "pq"),
                                        ("rl.steps", "2"), ("run.progress", "false")])
    summary = train(cfg)
    assert summary["rl"]["n"] == 16 and 0.0 <= summary["rl"]["accuracy"] <= 1.0
    rows_logged = [json.loads(line) for line in (tmp_path / "runs" / "pq" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_logged if r["phase"] == "rl"] == [0, 1]
