"""Parsing of `<answer>...</answer>` tags: plain functions that never raise on model output.

Model output is hostile input: it can be empty, enormous, contain several tags, nested tags, or no
tags at all. These helpers only look at a bounded prefix of the text and return `None` when no
well-formed answer is present.

>>> extract_answer("so <answer> 42 </answer>")
'42'
>>> extract_answer("no tags") is None
True
>>> extract_answer("<answer>1</answer><answer>2</answer>")  # first tag wins
'1'
>>> only_answer("<answer>1</answer> junk </answer>")  # text after the first closing tag
False
>>> only_answer("  <answer>7</answer>  ")
True
>>> answer_after_thought("<think>3+4 is 7</think> <answer>7</answer>")
True
>>> answer_after_thought("<think>a</think><think>b</think><answer>7</answer>")  # one thought at most
False
>>> extract_answer(after_thought("<think>so 7?</think><answer>7</answer>"))
'7'
>>> parse_int(" -17 ")
-17
>>> parse_int("4.0") is None
True
"""

from __future__ import annotations

import re

# A correct completion is short; scanning megabytes of hostile output for tags is wasted work and a
# potential regex slowdown, so verifiers only look at this many characters.
MAX_SCAN_CHARS = 4096

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INT = re.compile(r"[+-]?\d{1,64}")


def extract_answer(text: object) -> str | None:
    """The stripped content of the first `<answer>...</answer>` tag, or None."""
    if not isinstance(text, str):
        return None
    match = _ANSWER.search(text[:MAX_SCAN_CHARS])
    return None if match is None else match.group(1).strip()


def parse_int(text: str | None) -> int | None:
    """An integer written plainly (optional sign, at most 64 digits), else None."""
    if text is None:
        return None
    text = text.strip().replace(",", "")
    return int(text) if _INT.fullmatch(text) else None


def only_answer(text: object) -> bool:
    """True when the text is exactly one answer tag with nothing but whitespace around it.

    Used as the strict format check: text after the closing tag is a known failure mode of small
    models under RL, and nothing else penalises it.
    """
    if not isinstance(text, str) or len(text) > MAX_SCAN_CHARS:
        return False
    return re.fullmatch(r"\s*<answer>(?:(?!</?answer>).)*</answer>\s*", text, re.DOTALL) is not None


# A thought is longer than an answer (a 4-inhabitant knights trace is ~5,000 characters), so it gets its
# own bound; the tempered pattern below is linear in the text.
MAX_THOUGHT_CHARS = 32768
_THOUGHT = re.compile(r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>", re.DOTALL)


def after_thought(text: object) -> str | None:
    """The text after one leading `<think>...</think>` block (the whole text when it has none), or None
    when the thought is malformed: unclosed, holding an answer or think tag, or longer than
    MAX_THOUGHT_CHARS. A text that opens no thought is returned unchanged."""
    if not isinstance(text, str):
        return None
    if not text.lstrip().startswith("<think>"):
        return text
    if len(text) > MAX_THOUGHT_CHARS:
        return None
    match = _THOUGHT.match(text)
    return None if match is None else text[match.end():]


def answer_after_thought(text: object) -> bool:
    """`only_answer`, optionally after one `<think>...</think>` block (`after_thought`): the format of a
    task that lets the model reason first ("<think>...</think> <answer>...</answer>", the R1 / Logic-RL
    format). The thought holds no answer or think tag, so the answer read is never one quoted inside the
    thought; nothing but whitespace may follow the answer."""
    rest = after_thought(text)
    return rest is not None and only_answer(rest)


def tag_format(text: object, *, thought: bool) -> bool:
    """A task's strict format check: `answer_after_thought` when the task lets the model think first
    (knights `reasoning`, arith `think`), else `only_answer`."""
    return answer_after_thought(text) if thought else only_answer(text)


def tag_answer(text: object, *, thought: bool) -> str | None:
    """The answer tag's content, read after the thought when the task lets the model think first."""
    return extract_answer(after_thought(text) if thought else text)
