"""``optspec validate``: every spec parses and checks, every golden file matches its schema and hash."""

from __future__ import annotations

import argparse
from pathlib import Path

from optspec.commands import add_spec_options, library_from
from optspec.golden import default_golden_dir, read_golden
from optspec.impls.base import deviations


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="check specs, golden files and the deviation registry")
    add_spec_options(parser)
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    library = library_from(args)
    directory = args.dir or default_golden_dir()
    count = 0
    for spec in library.all():
        golden = read_golden(directory / f"{spec.name}.json", spec)
        count += len(golden.tests)
    registry = deviations()
    print(f"{len(library.names)} specs, {count} golden tests and {len(registry)} known deviations are valid")
    return 0
