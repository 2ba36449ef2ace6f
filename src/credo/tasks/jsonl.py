r"""A task loaded from the user's data file: JSONL, Parquet, CSV or a local `datasets` folder.

    {"prompt": "What is the capital of France?", "answer": "Paris"}
    {"prompt": "What is 6*7?", "answer": 42, "split": "test"}

The format follows `path` (`tasks/data_files.py`): `.parquet` (pyarrow), `.csv` (a header row, every
value a string), a folder written by `datasets`' `save_to_disk` (read from disk only; a DatasetDict's
"train" / "test" splits are the rows' splits), anything else JSONL (one JSON object per line, blank
lines skipped). Parquet and `datasets` need `pip install 'credo[data]'`.

Fields (names configurable, the same for every format): `prompt` (a non-empty string), `answer` (a
string or a number), optionally a demonstration completion (default: "<answer>{answer}</answer>") and
a split column whose values must be "train" or "test" (default: each row's split is a stable hash of
its prompt, see `split_of`). The file is read once, on first use, and every problem with it is a
`CredoError` naming the file, the row (JSONL and CSV: its line) and the field.

Matching of the answer inside `<answer>...</answer>` (`match`):
- "exact": the stripped strings are equal (case-sensitive);
- "int": both are plain integers (`parse_int`: optional sign, commas allowed) and equal;
- "float": both are decimal numbers (commas allowed) within a relative tolerance of 1e-6;
- "math": LaTeX or plain mathematical equivalence by math-verify (`rewards/math_answers.py`:
  `\frac{1}{2}` = 0.5 = 1/2, `\sqrt{4}` = 2; `pip install 'credo[math]'`); an answer the file gives
  that math-verify cannot parse is refused with its row, a completion's unparseable answer is wrong.

Reward: 1.0 when the completion is exactly one answer tag (`only_answer`) with a matching answer.

Extras: `meta_fields` copies row fields (when a row has them) into `Example.meta`, where reward terms
read them (CogRE's `keywords`, `rewards/cogre.py`); `budget_tag` ("easy" / "hard") forces AdaCtrl's
budget by pre-filling the assistant turn with "[Easy]" / "[Hard]" (`rewards/adactrl.py`).

Without reference answers (`answer_field: null` in the task's params) the rows need only a prompt
(and a demonstration field for the warm-up); the task cannot verify, so its own score is 0 with
`correct` False (`formatted` still checks the answer tag), `has_reference_answers` is False, and
training refuses to start unless `rl.reward_model` gives the reward (an outcome reward model,
judges/orm.py) and `warmup.steps` is 0 or `demonstration_field` is set.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from credo.errors import CredoError
from credo.rewards.answer_tags import extract_answer, only_answer, parse_int
from credo.rewards.math_answers import canonical_math, check_math_verify, math_equal, parses_as_math
from credo.tasks.base import SPLITS, Example, Score, check_split, split_of
from credo.tasks.data_files import format_of, read_records, type_name as _type_name

MATCHES = ("exact", "int", "float", "math")
_FLOAT = re.compile(r"[+-]?(?:\d{1,64}(?:\.\d{0,64})?|\.\d{1,64})(?:[eE][+-]?\d{1,4})?")


def parse_float(text: str | None) -> float | None:
    """A finite decimal number written plainly (commas allowed), else None.

    >>> parse_float(" 1,234.5 ")
    1234.5
    >>> parse_float("nan") is None
    True
    """
    if not isinstance(text, str):
        return None
    text = text.strip().replace(",", "")
    if not _FLOAT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass
class JsonlTask:
    path: str
    prompt_field: str = "prompt"
    answer_field: str | None = "answer"
    demonstration_field: str | None = None
    system_prompt: str | None = "Reply only with the answer as <answer>...</answer>."
    split_field: str | None = None
    match: str = "exact"
    meta_fields: list[str] | None = None  # row fields copied into Example.meta (e.g. ["keywords"] for CogRE)
    budget_tag: str | None = None  # "easy" / "hard": AdaCtrl's forced budget, pre-filled in the assistant turn
    name: str = "jsonl"
    _rows: list[tuple[str, Example]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.match not in MATCHES:
            raise CredoError(f"jsonl: unknown match {self.match!r}; valid: {', '.join(MATCHES)}")
        if self.match == "math":
            check_math_verify()
        if self.meta_fields is not None and (isinstance(self.meta_fields, str) or not all(
                isinstance(f, str) and f for f in self.meta_fields)):
            raise CredoError(f"jsonl: meta_fields must be a list of field names, got {self.meta_fields!r}")
        if self.budget_tag is not None:
            from credo.rewards.adactrl import BUDGETS

            if self.budget_tag not in BUDGETS:
                raise CredoError(f"jsonl: budget_tag must be one of {', '.join(BUDGETS)} or null, "
                                 f"got {self.budget_tag!r}")

    @property
    def response_prefix(self) -> str:
        """AdaCtrl's budget tag ("[Easy]" / "[Hard]") that `render_prompt` pre-fills, or ""."""
        from credo.rewards.adactrl import budget_prefix

        return "" if self.budget_tag is None else budget_prefix(self.budget_tag)

    @property
    def has_reference_answers(self) -> bool:
        """False when the rows carry no answers (answer_field null): a reward model must score them."""
        return self.answer_field is not None

    def _rows_cached(self) -> list[tuple[str, Example]]:
        if self._rows is None:
            self._rows = self._read()
        return self._rows

    def _read(self) -> list[tuple[str, Example]]:
        if not Path(self.path).exists():
            raise CredoError(f"jsonl: file not found: {self.path}")
        rows = [self._row(r.row, r.where, r.number, r.split) for r in read_records(self.path)]
        if not rows:
            raise CredoError(f"{self.path}: no rows (the file is empty or has only blank lines)")
        return rows

    @staticmethod
    def _field(row: dict, name: str, where: str, kinds: tuple[type, ...], wanted: str):
        if name not in row:
            raise CredoError(f"{where}: missing field {name!r}")
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise CredoError(f"{where}: field {name!r} must be {wanted}, got {_type_name(value)}")
        return value

    def _row(self, row: dict, where: str, number: int, file_split: str | None = None) -> tuple[str, Example]:
        prompt = self._field(row, self.prompt_field, where, (str,), "a string")
        if not prompt.strip():
            raise CredoError(f"{where}: field {self.prompt_field!r} is empty")
        answer = self._answer(row, where) if self.answer_field is not None else ""
        demonstration = f"<answer>{answer}</answer>" if answer else ""
        if self.demonstration_field is not None:
            demonstration = self._field(row, self.demonstration_field, where, (str,), "a string")
        split = file_split or split_of(prompt)  # (a datasets folder's train / test splits)
        if self.split_field is not None:
            split = self._field(row, self.split_field, where, (str,), "a string")
            if split not in SPLITS:
                raise CredoError(
                    f"{where}: field {self.split_field!r} must be 'train' or 'test', got {split!r}"
                )
        meta = {"source": self.path, "line" if format_of(Path(self.path)) == "jsonl" else "row": number}
        meta.update({f: row[f] for f in self.meta_fields or () if f in row})  # (absent: the example has none)
        return split, Example(prompt, answer, demonstration, meta)

    def _answer(self, row: dict, where: str) -> str:
        name = self.answer_field
        value = self._field(row, name, where, (str, int, float), "a string or number")
        answer = str(value).strip()
        if not answer:
            raise CredoError(f"{where}: field {name!r} is empty")
        if self.match == "int" and parse_int(answer) is None:
            raise CredoError(f"{where}: field {name!r} is not an integer (match='int'): {answer!r}")
        if self.match == "float" and parse_float(answer) is None:
            raise CredoError(f"{where}: field {name!r} is not a number (match='float'): {answer!r}")
        if self.match == "math" and not parses_as_math(answer):
            raise CredoError(f"{where}: field {name!r} is not an answer math-verify can parse (match='math'): "
                             f"{answer!r}")
        return answer

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        check_split(split)
        rows = self._rows_cached()
        pool = [example for row_split, example in rows if row_split == split]
        if not pool:
            raise CredoError(f"{self.path}: no rows in split {split!r} ({len(rows)} rows in all)")
        if not 0 <= n <= len(pool):
            raise CredoError(
                f"{self.path}: asked for {n} {split} examples but the file has {len(pool)} "
                f"{split} rows ({len(rows)} rows in all)"
            )
        random.Random(f"{self.name}:{split}:{seed}").shuffle(pool)
        return pool[:n]

    def _matches(self, given: str | None, answer: str) -> bool:
        if given is None:
            return False
        if self.match == "exact":
            return given == answer.strip()
        if self.match == "int":
            value = parse_int(given)
            return value is not None and value == parse_int(answer)
        if self.match == "math":
            return math_equal(given, answer)
        value, expected = parse_float(given), parse_float(answer)
        if value is None or expected is None:
            return False
        return math.isclose(value, expected, rel_tol=1e-6)

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The answer in the tag, canonical under `match` ("int": the integer; "float": the number to
        9 significant digits; "exact": the stripped text), else the raw text, for majority voting; no
        vote without the strict format."""
        if not only_answer(completion):
            return None
        raw = extract_answer(completion)
        if self.match == "int":
            value = parse_int(raw)
            return raw if value is None else str(value)
        if self.match == "float":
            number = parse_float(raw)
            return raw if number is None else f"{number:.9g}"
        if self.match == "math":
            return canonical_math(raw)
        return raw

    def score(self, completion: str, example: Example) -> Score:
        formatted = only_answer(completion)
        correct = formatted and bool(example.answer) and self._matches(extract_answer(completion), example.answer)
        return Score(reward=1.0 if correct else 0.0, correct=correct, formatted=formatted)
