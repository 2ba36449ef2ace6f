"""Shared by the benchmark scripts: write a result table (.md) and its raw rows (.json) side by side."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, lines: list[str], results: list[dict]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return out
