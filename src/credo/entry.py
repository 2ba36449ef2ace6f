"""The catalog row type: one registered method's name, summary, paper, status and needs.

A leaf module (it imports nothing from credo): every method module keeps a `CATALOG` list of
`Entry` rows next to its code and imports it from here, while `credo.catalog`, which collects the
rows, imports the method packages. With `Entry` inside `credo.catalog` the two imported each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    paper: str
    status: str  # "confirmed" or "reconstructed"
    needs: str
