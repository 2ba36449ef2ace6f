"""`credo creditbench`: run every credit estimator on the CreditBench suite and write md / json / png.

    credo creditbench [--quick] [--out DIR] [--only grpo,pure,...] [--seeds N]

Hooked into `credo.cli.build_parser` with `creditbench_cli.add_parser(sub)`.
"""

from __future__ import annotations

import argparse
from typing import Sequence


def add_parser(subparsers) -> argparse.ArgumentParser:
    from credo.creditbench.run import add_arguments

    p = subparsers.add_parser(
        "creditbench", help="benchmark credit estimators on tasks with exactly known credit",
        description="Runs every registered credit estimator on synthetic tasks with exact true advantages "
                    "(bifurcation chains, a multi-turn key-value lookup) and writes creditbench.md / .json / .png.")
    add_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args, rest: Sequence[str] = ()) -> int:
    from credo.creditbench.run import run_from_args
    from credo.errors import CredoError

    if rest:
        raise CredoError(f"credo creditbench: unexpected argument(s) {' '.join(rest)}")
    if args.seeds is not None and args.seeds < 1:
        raise CredoError(f"credo creditbench: --seeds must be at least 1, got {args.seeds}")
    return run_from_args(args)
