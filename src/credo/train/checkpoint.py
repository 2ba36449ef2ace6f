"""Model checkpoints: a Hugging Face folder (safetensors + config + tokenizer), written atomically.

The folder is written under a temporary name and renamed into place, so a crash mid-write never
leaves a folder that looks complete. `credo eval --model <folder>` loads it like any model folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def save_checkpoint(model, tokenizer, folder: Path, state: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
