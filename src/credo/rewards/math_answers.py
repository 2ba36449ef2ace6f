"""Mathematical answer equivalence with math-verify (Hugging Face's verifier, as Open-R1 and TRL use it).

    math_equal("\\frac{1}{2}", "0.5") -> True        math_equal("x = 3", "3") -> True
    math_equal("\\sqrt{4}", "2") -> True             math_equal("{{broken", "2") -> False

`parse_math(text)`: math-verify's `parse` of the text as it is (plain expressions, `$...$`,
`\\boxed{}`), and if that finds nothing, of the text wrapped in `$...$` (a bare LaTeX answer such as
`\\sqrt{4}` inside `<answer>` tags has no delimiters). `math_equal(given, reference)` is
`verify(gold=parse_math(reference), target=parse_math(given))` with math-verify's defaults (6-digit
float rounding, strict); it never raises: an unparseable or empty answer, or any error inside
math-verify, is simply not equal. math-verify bounds its parsing time with SIGALRM, which Python allows
only in the main thread; elsewhere (a worker thread) the timeouts are off.

Needs `pip install 'credo[math]'` (math-verify with its LaTeX parser); `check_math_verify` says so.
"""

from __future__ import annotations

import threading
from typing import Any

from credo.errors import CredoError

TIMEOUT_S = 5  # math-verify's own default, per parse and per verify


def check_math_verify() -> None:
    """Raise CredoError when math-verify (and its LaTeX parser) cannot be imported."""
    try:
        import math_verify  # noqa: F401
        import latex2sympy2_extended  # noqa: F401
    except ImportError as exc:
        raise CredoError(f"match 'math' needs math-verify: pip install 'credo[math]' ({exc})") from None


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def parse_math(text: str | None) -> list[Any]:
    """math-verify's parse of `text` (then of `$text$`); [] when nothing parses. Never raises."""
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        from math_verify import parse

        parsed = parse(text, parsing_timeout=_timeout())
        if not parsed and "$" not in text:
            parsed = parse(f"${text}$", parsing_timeout=_timeout())
        return list(parsed)
    except Exception:  # noqa: BLE001 - a model's answer must never stop training
        return []


def parses_as_math(text: str) -> bool:
    """True when math-verify makes an expression of `text` (not only its string fallback, as for "{{")."""
    return any(not isinstance(p, str) for p in parse_math(text))


def math_equal(given: str | None, reference: str) -> bool:
    """Is `given` mathematically equal to `reference`? (see the module docstring). Never raises."""
    target, gold = parse_math(given), parse_math(reference)
    if not target or not gold:
        return False
    try:
        from math_verify import verify

        return bool(verify(gold, target, timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001
        return False


def canonical_math(text: str | None) -> str | None:
    """A voting key for majority voting: the parsed expression's text (so "0.5" and "1/2" may still differ:
    voting needs equal keys, equivalence is `math_equal`'s), else the stripped text."""
    parsed = parse_math(text)
    if parsed:
        return str(parsed[0])
    return None if text is None else text.strip()
