"""Subcommands of the ``optspec`` command line, one module each (see :mod:`optspec.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from optspec.spec import SpecLibrary


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--specs", action="append", default=[], metavar="DIR", help="an extra directory of rule specs (repeatable)"
    )


def library_from(args: argparse.Namespace) -> SpecLibrary:
    return SpecLibrary(extra_dirs=[Path(d) for d in args.specs])
