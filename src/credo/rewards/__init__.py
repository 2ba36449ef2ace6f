"""Verifiers and reward terms: plain functions of model output that never raise.

`answer_tags` parses answer tags; `length` holds DAPO's overlong penalty; `sandbox` runs model-written
code under OS isolation; `code` scores programs against test cases and composes reward functions
(`combine`).
"""

from credo.rewards.answer_tags import extract_answer, only_answer, parse_int
from credo.rewards.code import combine, score_program
from credo.rewards.length import overlong_penalty
from credo.rewards.sandbox import SandboxResult, run_sandboxed

__all__ = ["SandboxResult", "combine", "extract_answer", "only_answer", "overlong_penalty", "parse_int",
           "run_sandboxed", "score_program"]
