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
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

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
    "optspec.commands.bench",
)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``optspec CMD: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="optspec",
        description="A numerical referee for optimizer update rules: specs, golden vectors, conformance.",
    )
    parser.add_argument("--version", action="version", version=f"optspec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


#: The longest error line printed; longer messages (a 10 MB field echoed back) are cut.
ERROR_LIMIT = 1000


def _one_line(text: str, limit: int = ERROR_LIMIT) -> str:
    folded = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return folded if len(folded) <= limit else f"{folded[: limit - 40]}... ({len(folded)} characters in all)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT: ``finally`` blocks run, so worker processes are killed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    # Expressions may hold thousands of terms (optspec.expr.MAX_OPERATIONS); the reference
    # compiler recurses per term.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, RECURSION_LIMIT))
    try:
        return _main(argv)
    finally:
        sys.setrecursionlimit(limit)


def _main(argv: Sequence[str] | None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("RANK", "0") != "0":
        # a torchrun rank other than 0 serves rank 0's sharded runs (optspec.impls.torch_gang)
        from optspec.impls.torch_gang import serve

        return serve()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # rank 0 joins at once, so the other ranks are released (at exit) whatever the command does
        from optspec.impls.torch_gang import gang, launched_world_size

        size = launched_world_size()
        if size is not None and size > 1:
            gang(size)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed, one line)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except OptspecError as exc:
        print(f"optspec: error: {_one_line(str(exc), ERROR_LIMIT - 100)}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("optspec: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("optspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `optspec list | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
