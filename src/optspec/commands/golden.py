"""``optspec golden``: write the golden vectors, or ``--check`` that they are current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optspec.commands import add_spec_options, check_output_dir, library_from, write_failed
from optspec.errors import UsageError
from optspec.golden import check_all, default_golden_dir, golden_path, write_all
from optspec.progress import Progress
from optspec.schedule_spec import ScheduleLibrary, ScheduleSpec
from optspec.spec import Spec, SpecLibrary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("golden", help="generate golden vectors from the specs (float64 reference)")
    add_spec_options(parser)
    parser.add_argument("rules", nargs="*", help="only these rules or schedules (default: all rules and schedules)")
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.add_argument("--check", action="store_true", help="regenerate in memory and fail (exit 1) if any file differs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    library = library_from(args)
    schedules = ScheduleLibrary()
    # Names may be rules or schedules (specs/schedules/); no names: all of both. One writer
    # takes both kinds (a schedule's file lands in <dir>/schedules/).
    names = args.rules or [*library.names, *(f"schedule:{n}" for n in schedules.names)]
    specs: list[Spec | ScheduleSpec] = [
        schedules.get(n.removeprefix("schedule:")) if _is_schedule(n, library, schedules) else library.get(n) for n in names
    ]
    rules = sum(1 for spec in specs if isinstance(spec, Spec))
    directory = args.dir or default_golden_dir()
    total = sum(len(spec.golden_combos()) * len(spec.cases) if isinstance(spec, Spec) else 1 for spec in specs)
    if args.check:
        with Progress("optspec golden --check", total, "tests", args.quiet) as progress:
            problems = check_all(specs, directory, on_test=progress.update)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"golden vectors of {rules} rules and {len(specs) - rules} schedules in {directory} are current")
        return 0
    if not directory.parent.exists():
        raise UsageError(f"{directory}: parent directory does not exist; pass --dir")
    # Before generating anything: a read-only checkout is one line, not a traceback at the end.
    for folder in sorted({golden_path(spec, directory).parent for spec in specs}):
        check_output_dir(folder, "--dir" if args.dir else "golden directory")
    try:
        with Progress("optspec golden", total, "tests", args.quiet) as progress:
            written = write_all(specs, directory, on_test=progress.update)
        for path in written:
            print(f"wrote {path}")
    except OSError as exc:
        raise write_failed(Path(exc.filename or directory), exc) from None
    return 0


def _is_schedule(name: str, library: SpecLibrary, schedules: ScheduleLibrary) -> bool:
    """``schedule:<name>``, or a name that only the schedule library knows."""
    return name.startswith("schedule:") or (name not in library.names and name in schedules.names)
