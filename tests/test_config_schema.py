"""A fuzz test over the whole config schema: every field, given a value of the wrong type (in a JSON
config file) or out of its declared range (on the command line), must give a CredoError that names the
field: no traceback, no silent acceptance. A new scalar field without a validity marker fails here."""

import dataclasses
import json
import math
import typing

import pytest

from credo.cli import main, resolve_config
from credo.config import OneOf, Range, Text, TrainConfig, marker_of
from credo.errors import CredoError


def _base(hint):
    """(base type, origin) of a field type: `float | None` -> float; list[str] -> list."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")):
        (hint,) = [a for a in args if a is not type(None)]
    return hint, typing.get_origin(hint)


def leaf_fields(cls=TrainConfig, where=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from leaf_fields(hint, f"{where}{f.name}.")
        else:
            yield f"{where}{f.name}", cls, f.name, hint


FIELDS = list(leaf_fields())
IDS = [path for path, *_ in FIELDS]


def test_the_schema_is_walked():
    assert len(FIELDS) > 80 and "rl.lr" in IDS and "rollout.vllm_gpu" in IDS and "preset" in IDS


@pytest.mark.parametrize("path,cls,name,hint", FIELDS, ids=IDS)
def test_every_scalar_field_declares_a_marker(path, cls, name, hint):
    base, origin = _base(hint)
    if base in (int, float, str):
        assert marker_of(cls, name) is not None, f"{path} has no Range / OneOf / Text marker"


def wrong_types(hint):
    base, origin = _base(hint)
    if base is bool:
        return ["maybe", 3, [True], {"a": 1}]
    if base is int:
        return ["abc", 1.5, [1], {"a": 1}, True]
    if base is float:
        return ["abc", [1.0], {"a": 1}, True]
    if base is str:
        return [[1], {"a": 1}, True]
    if origin is list:
        return [5, {"a": 1}, [1, 2]]
    if origin is dict:
        return ["not a table", 5, [1]]
    raise AssertionError(f"unexpected field type {hint}")


def out_of_range(marker, hint):
    base, _ = _base(hint)
    if isinstance(marker, OneOf):
        return ["definitely-not-a-choice", ""]
    if isinstance(marker, Text):
        values = ["", "   "] if marker.non_empty else []
        if marker.pattern:
            values += ["prm:" if "prm" in marker.pattern else "a/b"]
        return values
    if isinstance(marker, Range):
        values = ["nan", "inf"] if base is float else []
        step = 1 if base is int else 0.5
        if marker.lo is not None:
            values.append(str(marker.lo if marker.lo_open else marker.lo - step))
        if marker.hi is not None:
            values.append(str(marker.hi if marker.hi_open else marker.hi + step))
        return values
    return []


def _nested(path, value):
    out = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


@pytest.mark.parametrize("path,cls,name,hint", FIELDS, ids=IDS)
def test_wrong_types_in_a_config_file_name_the_field(tmp_path, path, cls, name, hint):
    for value in wrong_types(hint):
        file = tmp_path / "bad.json"
        file.write_text(json.dumps(_nested(path, value)))
        with pytest.raises(CredoError, match=path.replace(".", r"\.")):
            resolve_config(None, str(file), [])


@pytest.mark.parametrize("path,cls,name,hint", FIELDS, ids=IDS)
def test_out_of_range_values_name_the_field(path, cls, name, hint):
    marker = marker_of(cls, name)
    for text in out_of_range(marker, hint) if marker is not None else []:
        with pytest.raises(CredoError, match=path.replace(".", r"\.")):
            resolve_config(None, None, [(path, text)])


def test_every_preset_and_the_defaults_are_in_range():
    from credo.presets import PRESETS

    for name in PRESETS.names():
        resolve_config(name, None, [])


def test_range_edges_are_inclusive_or_open_as_declared():
    resolve_config(None, None, [("sampling.top_p", "1.0"), ("sampling.temperature", "0"), ("rl.min_lr_ratio", "1"),
                                ("rl.judge", "prm:/x"), ("rl.judge", "llm"), ("rl.entropy_coef", "-0.01")])
    with pytest.raises(CredoError, match=r"sampling\.top_p: 0\.0 is out of range; expected a finite number > 0"):
        resolve_config(None, None, [("sampling.top_p", "0")])
    assert not math.isfinite(float("nan"))


def test_a_bad_field_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("kept")
    code = main(["train", "--run.out_dir", str(tmp_path), "--rl.lr", "nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rl.lr" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # nothing written, nothing lost
