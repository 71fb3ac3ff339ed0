"""The ``kws`` command. Each pipeline stage registers its own sub-commands.

A stage module exposes ``add_commands(subparsers)``; its handlers take the parsed
args and return an exit code. Imports are lazy so ``kws --help`` stays fast and a
broken optional stage cannot take the whole tool down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kws import __version__

# The order is the pipeline's order, and the order of ``kws --help``.
STAGES = [
    "kws.data.cli",
    "kws.training.cli",
    "kws.evaluation.cli",
    "kws.export.cli",
    "kws.streaming.cli",
    "kws.demo.cli",
]


class UserError(Exception):
    """An error that is the user's to fix: printed as one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kws {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not written yet
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        # Errors the user can act on: one clear line on stderr, never a traceback.
        print(f"kws {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
