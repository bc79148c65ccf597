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
    from optspec.schedules import ScheduleLibrary, read_schedule_golden, schedule_golden_dir

    schedules = ScheduleLibrary()
    schedule_tests = 0
    for schedule in schedules.all():
        golden = read_schedule_golden(schedule_golden_dir(directory) / f"{schedule.name}.json", schedule)
        schedule_tests += len(golden.tests)
    registry = deviations()
    print(
        f"{len(library.names)} rule specs with {count} golden tests, {len(schedules.names)} schedules with "
        f"{schedule_tests} golden tests and {len(registry)} known deviations are valid"
    )
    return 0
