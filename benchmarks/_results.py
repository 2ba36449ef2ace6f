"""Shared by the benchmark scripts: write a result table (.md) and its raw rows (.json) side by side."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, lines: list[str], results: list[dict], meta: dict | None = None) -> Path:
    """Write `lines` to `out` (.md) and the rows to its .json sibling: the bare list, or
    {**meta, "results": rows} when `meta` (the command, the load average...) is given."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    raw = results if meta is None else {**meta, "results": results}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(f"wrote {out}")
    return out
