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
    # What runs in a credo training run: "works" (the paper's signal, sampler, judge or schedule runs in
    # training and a test proves it), or one line saying what stands in or what is missing, and why.
    training: str = "works"
