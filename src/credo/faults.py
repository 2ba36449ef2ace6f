"""Fault injection for crash tests: die at a named point of the training loop.

Set `CREDO_FAULT=<point>:<n>` (e.g. `checkpoint_write:2`) and the process kills itself with SIGKILL
the n-th time it reaches `<point>` (1-based). Points: `rollout` (after sampling, before scoring),
`update` (between optimizer steps of an update), `checkpoint_write` (a checkpoint's files are
half-written). Unset in normal runs, where `maybe_die` is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def maybe_die(point: str) -> None:
    spec = os.environ.get("CREDO_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
