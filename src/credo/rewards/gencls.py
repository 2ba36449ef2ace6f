"""GenCLS++'s rule-based classification reward, the reward term `gencls`, and its label matcher.

    task.name = "classify"                       # (tasks/classify.py: topics of synthetic sentences)
    rl.reward_terms = {"gencls" = 1.0}

Paper: "GenCLS++: Pushing the Boundaries of Generative Classification in LLMs Through Comprehensive SFT
and RL Studies Across Diverse Datasets" (arXiv 2504.19898). Status: reconstructed. The paper applies
RL after an SFT "policy warm-up" with "a simple rule-based reward" and studies explicit uncertainty
labels and semantically irrelevant numeric labels; no official code was found, so the exact rule is
assumed to be the standard one:

    r = 1 if match(prediction) == match(gold) else 0

- prediction: the content of the first <answer>...</answer> tag when the completion has an opening
  tag (an unclosed tag is no prediction), else its first non-empty line (GenCLS++ finds classification
  works best answering the label directly, without a reasoning step);
- match: normalise (case-folded; every character that is not a letter, digit or space becomes a
  space; whitespace collapsed) and look it up in the label set. With numeric labels the outputs are
  the numbers 1..K of the labels in order (the names are not accepted); the optional uncertainty label
  is a formatted answer that is never right (0). An output outside the label set is unformatted
  (and scores 0); without any label set the normalised strings are compared.

The label set comes from the term's params (`labels`, `numeric_labels`, `uncertain_label`) or, for
each example, from `Example.meta` ("labels", "numeric_labels", "uncertain_label"; the classify task
sets them). A gold answer is matched by name or by number. Never raises on model output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from credo.entry import Entry
from credo.errors import CredoError
from credo.rewards.answer_tags import MAX_SCAN_CHARS, extract_answer

UNCERTAIN = -1  # LabelSet.index of the uncertainty label


def normalize_label(text: object) -> str:
    """Case-folded, punctuation to spaces, whitespace collapsed.

    >>> normalize_label("  Sci-Fi!  "), normalize_label("SPORTS."), normalize_label(None)
    ('sci fi', 'sports', '')
    """
    if not isinstance(text, str):
        return ""
    return " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in text.casefold()).split())


def parse_prediction(completion: object) -> str | None:
    """The predicted label text: the first answer tag's content when the completion opens one (None
    if it is not closed), else the first non-empty line; None for an empty completion.

    >>> parse_prediction("<answer> Food </answer> junk"), parse_prediction("\\n music \\nmore")
    ('Food', 'music')
    >>> parse_prediction("<answer>food"), parse_prediction("   ")
    (None, None)
    """
    if not isinstance(completion, str):
        return None
    head = completion[:MAX_SCAN_CHARS]
    if "<answer>" in head:
        return extract_answer(head)
    for line in head.splitlines():
        if line.strip():
            return line.strip()
    return None


@dataclass(frozen=True)
class LabelSet:
    """K labels in order, optionally answered by number (1..K), optionally with an uncertainty label."""

    labels: tuple[str, ...]
    numeric: bool = False
    uncertain: str | None = None

    @classmethod
    def of(cls, labels: Any, numeric: Any = False, uncertain: Any = None, where: str = "labels") -> "LabelSet":
        """Checked construction: CredoError naming `where` for an empty, non-string or ambiguous set."""
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels \
                or not all(isinstance(x, str) and normalize_label(x) for x in labels):
            raise CredoError(f"{where}['labels']: must be a non-empty list of label names, got {labels!r}")
        if not isinstance(numeric, bool):
            raise CredoError(f"{where}['numeric_labels']: must be true or false, got {numeric!r}")
        if uncertain is not None and not (isinstance(uncertain, str) and normalize_label(uncertain)):
            raise CredoError(f"{where}['uncertain_label']: must be a label name or null, got {uncertain!r}")
        names = [normalize_label(x) for x in labels] + ([normalize_label(uncertain)] if uncertain else [])
        if len(set(names)) != len(names):
            raise CredoError(f"{where}['labels']: two labels are equal once normalised (case, punctuation): "
                             f"{labels!r}" + (f" with {uncertain!r}" if uncertain else ""))
        return cls(tuple(labels), numeric, uncertain)

    def index(self, text: object, *, names: bool, numbers: bool) -> int | None:
        """Which label `text` is: 0..K-1, UNCERTAIN, or None (not in the set)."""
        norm = normalize_label(text)
        if not norm:
            return None
        if self.uncertain is not None and norm == normalize_label(self.uncertain):
            return UNCERTAIN
        if numbers and norm.isdigit() and 1 <= int(norm) <= len(self.labels):
            return int(norm) - 1
        if names:
            for i, label in enumerate(self.labels):
                if norm == normalize_label(label):
                    return i
        return None

    def predicted(self, completion: object) -> int | None:
        """The label a completion predicts (numbers only with numeric labels, else names only)."""
        return self.index(parse_prediction(completion), names=not self.numeric, numbers=self.numeric)

    def gold(self, answer: object) -> int | None:
        """The label a reference answer names, by name or by number."""
        return self.index(answer, names=True, numbers=True)

    def shown(self) -> list[str]:
        """The answers a prompt offers: the names, or the numbers 1..K, then the uncertainty label."""
        options = [str(i + 1) for i in range(len(self.labels))] if self.numeric else list(self.labels)
        return options + ([self.uncertain] if self.uncertain else [])


def classification_reward(completion: object, answer: str, labels: LabelSet | None) -> tuple[float, bool]:
    """(reward, formatted) of one completion: 1.0 when its label is the gold one (module docstring).

    >>> s = LabelSet(("sports", "food"), uncertain="uncertain")
    >>> classification_reward("<answer>FOOD.</answer>", "food", s), classification_reward("Uncertain", "food", s)
    ((1.0, True), (0.0, True))
    >>> classification_reward("pizza", "food", s), classification_reward("", "food", None)
    ((0.0, False), (0.0, False))
    """
    if labels is None:
        prediction = normalize_label(parse_prediction(completion))
        return (1.0 if prediction and prediction == normalize_label(answer) else 0.0), bool(prediction)
    got = labels.predicted(completion)
    if got is None:
        return 0.0, False
    gold = labels.gold(answer)
    return (1.0 if gold is not None and got == gold and got != UNCERTAIN else 0.0), True


@dataclass
class GenClsLabel:
    """The `gencls` term: 1 when the predicted label is the gold one; the label set from params or meta."""

    labels: Sequence[str] | None = None
    numeric_labels: bool = False
    uncertain_label: str | None = None

    def __post_init__(self):
        where = "rl.reward_term_params['gencls']"
        self._labels = None if self.labels is None else \
            LabelSet.of(self.labels, self.numeric_labels, self.uncertain_label, where)
        if self.labels is None and (self.numeric_labels is not False or self.uncertain_label is not None):
            raise CredoError(f"{where}: numeric_labels and uncertain_label need 'labels' (or leave all three "
                             f"to the task's examples)")

    def label_set(self, meta: dict) -> LabelSet | None:
        if self._labels is not None:
            return self._labels
        if not meta.get("labels"):
            return None
        return LabelSet.of(meta["labels"], bool(meta.get("numeric_labels", False)), meta.get("uncertain_label"),
                           "Example.meta")

    def __call__(self, inputs) -> list[float]:
        metas = inputs.metas if inputs.metas is not None else [{}] * len(inputs.texts)
        return [classification_reward(text, answer, self.label_set(meta or {}))[0]
                for text, answer, meta in zip(inputs.texts, inputs.answers, metas)]


CATALOG = [
    Entry("gencls", "1 when the label in the answer tag (or first line) equals the gold one after normalising",
          "GenCLS++: Pushing the Boundaries of Generative Classification in LLMs Through Comprehensive SFT and RL "
          "Studies Across Diverse Datasets (arXiv 2504.19898)", "reconstructed",
          "a label set (params or Example.meta: the classify task)",
          training="works on the classify task (synthetic topics; numeric and uncertainty labels optional); "
                   "no perplexity-based decoding"),
]
