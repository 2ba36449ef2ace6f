"""CogRE's keyword-grounded reward (Hit@Dict + accuracy), the reward term `cogre`.

    rl.reward_terms = {"cogre" = 1.0}
    rl.reward_term_params = {"cogre" = {"dictionary" = "relation_keywords.json"}}

Paper: "Peeking inside the Black-Box: Reinforcement Learning for Explainable and Accurate Relation
Extraction" (CogRE, arXiv 2510.06198). Status: confirmed against the official code
(xiyuuuuuuuu/CogRE-Hit-at-Dict, `verl/utils/reward_score/one_shot_tacred_train_weighted_reward_with_keywords.py`).

R = R_acc + R_Hit@Dict, the keyword part only for a correct answer. For one keyword set of a relation,
entity keywords E (the relation's argument types: "person", "organization", ...) and relation
keywords K ("born", "headquarters", ...), each counted when it occurs in the lower-cased completion
(a substring match, every listed keyword once):

    hits  = w_entity * #{e in E found} + w_relation * #{k in K found}
    words = max(1, number of \\b\\w+\\b words in the completion)
    score = scale * hits / (words / words_per_unit)        (a keyword density; not capped)

summed over the example's relations (CogRE scores the support and the test sentence's relations and
adds them). The term is task_weight * Score.reward + (sum of scores if Score.correct else 0).
Defaults (official): w_entity 0.4, w_relation 1.0, words_per_unit 5, scale 0.5; task_weight 1.0 so
that {"cogre": 1.0} alone is the paper's reward (R_acc is the task's own reward: CogRE's one-shot
Yes/No task pays 3 / 1 / -3 / -1 for right Yes / right No / wrong Yes / wrong No, which is that
task's verifier, not this term's; task_weight 0 leaves the keyword part alone). Departures: the
official rounds each score to 4 decimals (not here); it reads relation labels from fixed fields
(ss_relation, ts_relation) where this term reads them from the example.

Keywords of an example, in this order:
1. its own: `Example.meta[keywords_field]` (default "keywords"; a list of strings or one comma-separated
   string; relation keywords, weight w_relation) - the JSONL task copies row fields into meta with
   `meta_fields = ["keywords"]`;
2. else the keyword dictionary (`dictionary`: a JSON file {relation: [keywords]} or {relation:
   {"entity": [...], "relation": [...]}}) looked up by the example's relation(s):
   `Example.meta[relation_field]` (a string, a comma-separated string or a list), default the example's
   reference answer (a task whose answer is the relation label). The official dictionaries list four
   entity keywords first: {"entity": first four, "relation": the rest} reproduces them, and their
   "no_relation" entry counts every keyword as both ({"entity": all, "relation": all}).
An example without keywords (or whose relation is not in the dictionary) scores only task_weight *
reward. Never raises on model output.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from credo.entry import Entry
from credo.errors import CredoError

_WORD = re.compile(r"\b\w+\b")
KeywordSet = tuple[tuple[str, ...], tuple[str, ...]]  # (entity keywords, relation keywords)


def keyword_score(text: object, entity: Sequence[str], relation: Sequence[str], *, entity_weight: float = 0.4,
                  relation_weight: float = 1.0, words_per_unit: float = 5.0, scale: float = 0.5) -> float:
    """CogRE's Hit@Dict score of one completion for one keyword set (see the module docstring).

    >>> keyword_score("He was born in Paris, his birthplace.", ["person"], ["born", "birthplace", "died"])
    0.7142857142857143
    >>> keyword_score("", ["person"], ["born"]), keyword_score(None, [], ["born"])
    (0.0, 0.0)
    """
    if not isinstance(text, str):
        return 0.0
    lower = text.lower()
    hits = entity_weight * sum(k.lower() in lower for k in entity) + \
        relation_weight * sum(k.lower() in lower for k in relation)
    words = len(_WORD.findall(lower)) or 1
    return scale * hits / (words / words_per_unit)


def parse_keywords(value: Any, where: str) -> tuple[str, ...]:
    """Keywords from a list of strings or a comma-separated string; empty ones dropped (they would
    match every text). ValueError naming `where` for any other value."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: keywords must be a list of strings or a comma-separated string, "
                         f"got {type(value).__name__}")
    return tuple(k.strip() for k in value if k.strip())


def load_dictionary(path: str, where: str) -> dict[str, KeywordSet]:
    """{relation: (entity keywords, relation keywords)} from a JSON file; CredoError naming `where`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CredoError(f"{where}: keyword dictionary not found: {file}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CredoError(f"{where}: {file} is not a JSON file: {exc}") from None
    if not isinstance(raw, dict):
        raise CredoError(f"{where}: {file} must hold a JSON object {{relation: [keywords]}}")
    out: dict[str, KeywordSet] = {}
    for relation, value in raw.items():
        at = f"{where}: {file}: relation {relation!r}"
        try:
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"entity", "relation"})
                if unknown:
                    raise ValueError(f"{at}: unknown keys {unknown} (valid: entity, relation)")
                out[relation] = (parse_keywords(value.get("entity", []), at),
                                 parse_keywords(value.get("relation", []), at))
            else:
                out[relation] = ((), parse_keywords(value, at))
        except ValueError as exc:
            raise CredoError(str(exc)) from None
    return out


@dataclass
class CogReKeywords:
    """The `cogre` term: task_weight * reward + (keyword density of the example's relations if correct)."""

    dictionary: str | None = None
    keywords_field: str = "keywords"
    relation_field: str = "relation"
    entity_weight: float = 0.4
    relation_weight: float = 1.0
    words_per_unit: float = 5.0
    scale: float = 0.5
    task_weight: float = 1.0
    _dictionary: dict[str, KeywordSet] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        where = "rl.reward_term_params['cogre']"
        for name in ("keywords_field", "relation_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CredoError(f"{where}[{name!r}]: must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("entity_weight", "relation_weight", "words_per_unit", "scale", "task_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CredoError(f"{where}[{name!r}]: must be a finite number, got {value!r}")
        if self.words_per_unit <= 0:
            raise CredoError(f"{where}['words_per_unit']: must be > 0, got {self.words_per_unit!r}")
        if self.dictionary is not None:
            if not isinstance(self.dictionary, str):
                raise CredoError(f"{where}['dictionary']: must be a path to a JSON file, got {self.dictionary!r}")
            self._dictionary = load_dictionary(self.dictionary, f"{where}['dictionary']")

    def keyword_sets(self, meta: dict, answer: str) -> list[KeywordSet]:
        """The example's keyword sets: its own keywords, else its relations' dictionary entries."""
        if meta.get(self.keywords_field) is not None:
            return [((), parse_keywords(meta[self.keywords_field], f"Example.meta[{self.keywords_field!r}]"))]
        relations = meta.get(self.relation_field, answer)
        relations = parse_keywords(relations, f"Example.meta[{self.relation_field!r}]") if relations else ()
        return [self._dictionary[r] for r in relations if r in self._dictionary]

    def __call__(self, inputs) -> list[float]:
        metas = inputs.metas if inputs.metas is not None else [{}] * len(inputs.texts)
        out = []
        for text, s, meta, answer in zip(inputs.texts, inputs.scores, metas, inputs.answers):
            value = self.task_weight * float(s.reward)
            if s.correct:  # (the official code drops the keyword score of a wrong answer)
                value += sum(keyword_score(text, entity, relation, entity_weight=self.entity_weight,
                                           relation_weight=self.relation_weight,
                                           words_per_unit=self.words_per_unit, scale=self.scale)
                             for entity, relation in self.keyword_sets(meta or {}, answer))
            out.append(value)
        return out


CATALOG = [
    Entry("cogre", "task reward plus, when correct, the density of the relation's keywords in the explanation",
          "Peeking inside the Black-Box: Reinforcement Learning for Explainable and Accurate Relation Extraction "
          "(CogRE, arXiv 2510.06198)", "confirmed",
          "keywords per example (Example.meta / JSONL meta_fields) or a keyword dictionary file",
          training="works on any task with keywords (no built-in relation-extraction task; CogRE's dictionary "
                   "is built offline by GPT-4o)"),
]
