"""``optspec golden``: write the golden vectors, or ``--check`` that they are current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optspec.commands import add_spec_options, check_output_dir, library_from, write_failed
from optspec.errors import UsageError
from optspec.golden import check_all, default_golden_dir, write_all
from optspec.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("golden", help="generate golden vectors from the specs (float64 reference)")
    add_spec_options(parser)
    parser.add_argument("rules", nargs="*", help="only these rules or schedules (default: all rules and schedules)")
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.add_argument("--check", action="store_true", help="regenerate in memory and fail (exit 1) if any file differs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optspec.schedules import ScheduleLibrary, check_schedules, schedule_golden_dir, write_schedules

    library = library_from(args)
    schedules = ScheduleLibrary()
    # Names may be rules or schedules (specs/schedules/); no names: all of both.
    names = args.rules or [*library.names, *(f"schedule:{n}" for n in schedules.names)]
    specs = [library.get(n) for n in names if not _is_schedule(n, library, schedules)]
    schedule_specs = [schedules.get(n.removeprefix("schedule:")) for n in names if _is_schedule(n, library, schedules)]
    directory = args.dir or default_golden_dir()
    total = sum(len(spec.golden_combos()) * len(spec.cases) for spec in specs) + len(schedule_specs)
    if args.check:
        with Progress("optspec golden --check", total, "tests", args.quiet) as progress:
            problems = check_all(specs, directory, on_test=progress.update)
            for schedule in schedule_specs:
                problems += check_schedules([schedule], schedule_golden_dir(directory))
                progress.update(f"schedule {schedule.name}")
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"golden vectors of {len(specs)} rules and {len(schedule_specs)} schedules in {directory} are current")
        return 0
    if not directory.parent.exists():
        raise UsageError(f"{directory}: parent directory does not exist; pass --dir")
    # Before generating anything: a read-only checkout is one line, not a traceback at the end.
    check_output_dir(directory, "--dir" if args.dir else "golden directory")
    if schedule_specs:
        check_output_dir(schedule_golden_dir(directory), "--dir" if args.dir else "golden directory")
    try:
        with Progress("optspec golden", total, "tests", args.quiet) as progress:
            written = write_all(specs, directory, on_test=progress.update)
            for schedule in schedule_specs:
                written += write_schedules([schedule], schedule_golden_dir(directory))
                progress.update(f"schedule {schedule.name}")
        for path in written:
            print(f"wrote {path}")
    except OSError as exc:
        raise write_failed(Path(exc.filename or directory), exc) from None
    return 0


def _is_schedule(name: str, library: object, schedules: object) -> bool:
    """``schedule:<name>``, or a name that only the schedule library knows."""
    return name.startswith("schedule:") or (name not in library.names and name in schedules.names)  # type: ignore[attr-defined]
