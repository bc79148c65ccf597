"""The ``optspec`` command line.

Exit codes: 0 success, 1 a conformance failure (or out-of-date golden vectors), 2 bad input
or usage (one line on stderr naming what is wrong).

Each command lives in a module with ``register(subparsers)``, listed in
:data:`COMMAND_MODULES`; the registered function receives the parsed arguments and returns
the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from optspec import __version__
from optspec.errors import OptspecError
from optspec.expr import RECURSION_LIMIT

COMMAND_MODULES = (
    "optspec.commands.listing",
    "optspec.commands.golden",
    "optspec.commands.validate",
    "optspec.commands.run",
    "optspec.commands.check",
    "optspec.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optspec",
        description="A numerical referee for optimizer update rules: specs, golden vectors, conformance.",
    )
    parser.add_argument("--version", action="version", version=f"optspec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Expressions may hold thousands of terms (optspec.expr.MAX_OPERATIONS); the reference
    # compiler recurses per term.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except OptspecError as exc:
        print(f"optspec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("optspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `optspec list | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
