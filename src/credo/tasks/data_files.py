"""Rows of the data files users bring: JSONL, Parquet, CSV, and local Hugging Face `datasets` folders.

`read_records(path)` yields `Record(where, number, split, row)` for every row, whatever the format:
`where` names the file and the row for error messages ("data.jsonl:3", "data.parquet: row 3",
"data.csv:4" (its line), "folder[test]: row 3"), `number` is the row's 1-based position (JSONL: its
line), `split` is the split a `datasets` DatasetDict file puts the row in ("train" / "test"; None
elsewhere), `row` a plain dict of Python values.

The format follows the path: a folder is a `datasets` folder written by `save_to_disk` (read with
`datasets.load_from_disk`, from disk only, never from a hub); `.parquet` is read with pyarrow; `.csv`
with the standard library (every value is a string; an empty cell is an empty string); anything else
is JSONL. Parquet and `datasets` need the `data` extra (`pip install 'credo[data]'`); the import
happens only for those formats. Every problem is a CredoError naming the file and, where it is one
row's, the row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from credo.errors import CredoError

JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
              float: "number", type(None): "null"}  # fmt: skip


def type_name(value: object) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Record:
    where: str
    number: int
    split: str | None
    row: dict[str, Any]


def format_of(path: Path) -> str:
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower()
    return {".parquet": "parquet", ".csv": "csv"}.get(suffix, "jsonl")


def read_records(path: str | Path) -> Iterator[Record]:
    """Every row of the file (see the module docstring); raises CredoError naming file and row."""
    path = Path(path)
    if not path.exists():
        raise CredoError(f"data file not found: {path}")
    kind = format_of(path)
    return {"jsonl": _jsonl, "parquet": _parquet, "csv": _csv, "datasets": _datasets}[kind](path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredoError(f"cannot read {path}: {exc.strerror or exc}") from None


def _jsonl(path: Path) -> Iterator[Record]:
    for number, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            raise CredoError(f"{where}: not valid UTF-8: {exc.reason}") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CredoError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:  # e.g. nesting too deep
            raise CredoError(f"{where}: invalid JSON: {type(exc).__name__}") from None
        if not isinstance(row, dict):
            raise CredoError(f"{where}: expected a JSON object, got {type_name(row)}")
        yield Record(where, number, None, row)


def _csv(path: Path) -> Iterator[Record]:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CredoError(f"{path}: not valid UTF-8 (byte {exc.start}): {exc.reason}") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        return
    try:
        for number, row in enumerate(reader, start=1):
            where = f"{path}:{reader.line_num}"
            if None in row:  # more cells than the header has columns
                raise CredoError(f"{where}: {len(reader.fieldnames) + len(row[None])} cells but the header names "
                                 f"{len(reader.fieldnames)} columns")
            yield Record(where, number, None, {k: v for k, v in row.items() if v is not None})
    except csv.Error as exc:
        raise CredoError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None


def _parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CredoError(f"{path}: reading Parquet needs pyarrow: pip install 'credo[data]'") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise CredoError(f"{path}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    for number, row in enumerate(rows, start=1):
        yield Record(f"{path}: row {number}", number, None, row)


def _datasets(path: Path) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise CredoError(f"{path}: reading a datasets folder needs datasets: pip install 'credo[data]'") from None
    try:
        loaded = datasets.load_from_disk(str(path))  # a local folder: nothing is fetched
    except Exception as exc:  # noqa: BLE001 - FileNotFoundError for a folder that is not a saved dataset, ...
        raise CredoError(f"{path}: cannot read it as a datasets folder written by save_to_disk "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, datasets.DatasetDict):
        unknown = [name for name in loaded if name not in ("train", "test")]
        if unknown:
            raise CredoError(f"{path}: the dataset's splits must be 'train' and / or 'test', got "
                             f"{', '.join(repr(n) for n in loaded)}")
        parts = [(name, loaded[name]) for name in loaded]
    else:
        parts = [(None, loaded)]
    for split, part in parts:
        label = f"{path}[{split}]" if split else str(path)
        for number, row in enumerate(part, start=1):
            yield Record(f"{label}: row {number}", number, split, dict(row))
