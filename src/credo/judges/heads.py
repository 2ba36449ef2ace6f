"""What the scored-head models share (the PRM, judges/prm.py; the outcome RM, judges/orm.py): a scalar
linear head on a causal LM's hidden states, its folder (backbone as a Hugging Face folder, the head in
`<kind>_head.safetensors`, the settings in `<kind>.json` with a format tag) and its training optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from credo.errors import CredoError


def scalar_head(hidden: int) -> torch.nn.Linear:
    """Linear(hidden, 1) with a small normal init (std 0.1 / sqrt(hidden)) that does not consume the
    caller's RNG stream, and a zero bias."""
    head = torch.nn.Linear(hidden, 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.nn.init.normal_(head.weight, std=hidden ** -0.5 * 0.1)
    torch.nn.init.zeros_(head.bias)
    return head


def save_head_folder(folder: str | Path, kind: str, backbone, tokenizer, head: torch.nn.Linear,
                     info: dict[str, Any]) -> Path:
    """Write the backbone, the tokenizer, `<kind>_head.safetensors` and `<kind>.json` (info) into folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    save_file({"weight": head.weight.detach().contiguous().cpu(), "bias": head.bias.detach().contiguous().cpu()},
              str(folder / f"{kind}_head.safetensors"))
    (folder / f"{kind}.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def read_head_info(folder: Path, kind: str, fmt: str, what: str, command: str) -> dict[str, Any]:
    """`<kind>.json` of folder, checked: present, valid JSON, the format tag `fmt`; `what` names the model
    and `command` the credo command that makes one, in the error."""
    path = folder / f"{kind}.json"
    if not path.is_file():
        raise CredoError(f"{what} folder {folder} has no {kind}.json (train one with `{command}`)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CredoError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise CredoError(f"{path}: field 'format' must be {fmt!r}")
    return info


def load_head(folder: Path, kind: str, head: torch.nn.Linear) -> None:
    """Copy `<kind>_head.safetensors` into head (shape checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / f"{kind}_head.safetensors"
    try:
        saved = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CredoError(f"{path}: cannot read the {kind.upper()} head ({exc})") from exc
    if saved.get("weight") is None or tuple(saved["weight"].shape) != tuple(head.weight.shape):
        raise CredoError(f"{path}: head weight must have shape {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(saved["weight"])
        head.bias.copy_(saved["bias"])


def head_optimizer(model: torch.nn.Module, head: torch.nn.Module, *, lr: float, head_lr: float) -> torch.optim.AdamW:
    """AdamW with two groups: the backbone at lr, the head at head_lr, no weight decay."""
    head_params = list(head.parameters())
    ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head_params, "lr": head_lr}], weight_decay=0.0)


def add_head_training_args(p, *, steps: int) -> None:
    """The optimisation flags `credo train-prm` and `credo train-rm` share (argparse parser p)."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate")
    p.add_argument("--head-lr", type=float, default=1e-3, help="scoring head learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has it natively, else fp32 (credo/gpu.py)")
    p.add_argument("--threads", type=int, default=0)


def check_head_training_args(command: str, args, counts: tuple[str, ...]) -> Path:
    """Refuse non-positive counts (`counts` plus steps and batch size) and learning rates, and an --out
    folder that exists (nothing is overwritten); set the thread count. Returns the --out path."""
    for name in counts + ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise CredoError(f"{command}: --{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    for name in ("lr", "head_lr"):
        value = getattr(args, name)
        if not value > 0 or value != value:
            raise CredoError(f"{command}: --{name.replace('_', '-')} must be > 0 (got {value})")
    out = Path(args.out)
    if out.exists():
        raise CredoError(f"{command}: --out {out} already exists (nothing was overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    return out
