"""HAPO's n-gram repetition penalty r_rep, the reward term `repetition`.

    rl.reward_terms = {"task" = 1.0, "hapo_length" = 1.0, "repetition" = 0.1}
    rl.reward_term_params = {"repetition" = {"ngram_size" = 3}}

Paper: "HAPO: Training Language Models to Reason Concisely via History-Aware Policy Optimization"
(arXiv 2505.11225), R_i = r_corr + w r_len + r_rep (spec section 30). Status: confirmed against the
official code (HCY123902/HAPO, `utils.py::compute_repetition_penalty_reward`, itself taken from
eddycmu/demystify-long-cot), called with only_start=False by `grpo_trainer.py::combined_reward_func`:

    over the response's tokens y_1..y_L, scan the n-grams g_j = (y_j, ..., y_{j+n-1}) in order;
    g_j is *repeated* when an equal n-gram occurred earlier (j' < j);
    every token covered by a repeated n-gram is marked (once, however many cover it);
    r_rep = max_penalty * (#marked tokens) / L            (0 when L < n)

max_penalty <= 0 is `--rep_penalty` (default 0.0: off in `train_grpo.sh`). Here the term returns
-(#marked / L) in [-1, 0] and the term's weight is |max_penalty| (weight 0.1 = rep_penalty -0.1), so
the penalty scale lives where every other term's scale does. only_start=True (the official option, off
in HAPO's runs) marks a repeated n-gram only when it starts after the last marked one ended, so
overlapping repeats of one run are counted once.

Tokens: the policy's sampled token ids (`TermInputs.token_ids`; a multi-turn task's tool responses are
not the policy's and are left out). HAPO re-tokenises the decoded text, which has no EOS token: a
completion that stopped on EOS here has one token more in L (and an EOS never repeats inside one
response), a difference of at most 1/L in the marked fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from credo.entry import Entry
from credo.errors import CredoError


def repeated_fraction(tokens: Sequence[int], *, ngram_size: int = 3, only_start: bool = False) -> float:
    """The share of tokens [L] covered by a repeated n-gram (HAPO's r_rep / max_penalty), in [0, 1].

    >>> repeated_fraction([1, 2, 3, 1, 2, 3])          # (1,2,3) repeats at 3: tokens 3, 4, 5 marked
    0.5
    >>> repeated_fraction([7, 7, 7, 7], ngram_size=2)  # (7,7) at 1 and 2 repeat: tokens 1..3 marked
    0.75
    >>> repeated_fraction([1, 2], ngram_size=3), repeated_fraction([], ngram_size=1)   # shorter than n
    (0.0, 0.0)
    """
    n, length = int(ngram_size), len(tokens)
    if length < n or length == 0:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    marked = [False] * length
    last_end = -1  # last token index of the previous repeated n-gram (only_start)
    for start in range(length - n + 1):
        gram = tuple(tokens[start:start + n])
        if gram in seen:
            if not only_start or start > last_end:
                marked[start:start + n] = [True] * n
            last_end = start + n - 1  # (the official code moves it for every repeat, marked or not)
        seen.add(gram)
    return sum(marked) / length


@dataclass
class RepetitionPenalty:
    """The `repetition` term: -repeated_fraction(tokens) per completion, in [-1, 0]; weight = |rep_penalty|."""

    ngram_size: int = 3
    only_start: bool = False

    def __post_init__(self):
        where = "rl.reward_term_params['repetition']"
        if isinstance(self.ngram_size, bool) or not isinstance(self.ngram_size, int) or self.ngram_size < 1:
            raise CredoError(f"{where}['ngram_size']: must be an integer >= 1, got {self.ngram_size!r}")
        if not isinstance(self.only_start, bool):
            raise CredoError(f"{where}['only_start']: must be true or false, got {self.only_start!r}")

    def __call__(self, inputs) -> list[float]:
        if inputs.token_ids is None:
            raise ValueError("the repetition term needs the completions' token ids (TermInputs.token_ids)")
        return [-repeated_fraction(ids, ngram_size=self.ngram_size, only_start=self.only_start) + 0.0
                for ids in inputs.token_ids]  # (+ 0.0: no -0.0 in the logs)


CATALOG = [
    Entry("repetition", "HAPO's r_rep: minus the share of tokens inside a repeated n-gram (weight = |rep_penalty|)",
          "HAPO: Training Language Models to Reason Concisely via History-Aware Policy Optimization (arXiv 2505.11225)",
          "confirmed", "token ids", training="works (off in HAPO's runs, rep_penalty 0; n-gram size 3)"),
]
