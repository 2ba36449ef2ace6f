"""Verifiers and reward terms: plain functions of model output that never raise."""

from credo.rewards.answer_tags import extract_answer, only_answer, parse_int

__all__ = ["extract_answer", "only_answer", "parse_int"]
