"""`dissect-kernels` command line (also `python -m dissect_kernels`): one module per
subcommand (dissect, gan, ablate, compare + export, paint, analyze), shared helpers in cli.common. With no arguments it dissects
the embedded default model."""
from __future__ import annotations

import argparse
import os
import sys

from dissect_kernels.cli import ablate, analyze, compare, dissect, gan, paint
from dissect_kernels.cli.common import one_line

SUBCOMMANDS = (dissect, gan, ablate, compare, paint, analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dissect-kernels",
        description="Network Dissection and GAN Dissection with fused kernels. "
                    "Run with no arguments to dissect the embedded default model.")
    sub = parser.add_subparsers(dest="command")
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or ["dissect"])
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, LookupError, OSError) as err:
        if os.environ.get("DK_TRACEBACK"):
            raise
        # bad data or an unwritable --out: one line, no traceback (DK_TRACEBACK=1 shows it)
        raise SystemExit(f"dissect-kernels: error: {one_line(err)}") from err


__all__ = ["build_parser", "main"]
