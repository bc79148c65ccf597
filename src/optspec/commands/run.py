"""``optspec run``: the main job. Conformance of every installed implementation, as a matrix."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from optspec.commands import add_spec_options, check_output_file, library_from, write_failed
from optspec.conformance import DTYPES, CheckResult, enumerate_checks, load_goldens, matrix, result_record
from optspec.errors import UsageError
from optspec.golden import default_golden_dir, write_atomic
from optspec.impls import all_implementations, implementation
from optspec.impls.schedule_base import enumerate_schedule_checks, run_schedule_check
from optspec.matrix_workers import default_jobs, run_in_workers
from optspec.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run conformance of every installed implementation (main job)")
    add_spec_options(parser)
    parser.add_argument("--rule", action="append", default=[], help="only this rule (repeatable)")
    parser.add_argument("--schedule", action="append", default=[], help="only this LR schedule (repeatable)")
    parser.add_argument("--impl", action="append", default=[], help="only this implementation (repeatable)")
    parser.add_argument("--dtype", action="append", default=[], choices=DTYPES, help="only this dtype (repeatable)")
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every check's result here")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr: print only the matrix and failures")
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        metavar="N",
        help="worker processes for independent rule x implementation groups (default: one per CPU; 1: none)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.json, "--json")
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: give a number of worker processes of at least 1")
    library = library_from(args)
    for rule in args.rule:
        library.get(rule)
    directory = args.dir or default_golden_dir()
    impls = [implementation(name) for name in args.impl] if args.impl else all_implementations()
    run_rules = bool(args.rule) or not args.schedule
    run_schedules = (bool(args.schedule) or not args.rule) and not args.impl
    checks = []
    if run_rules:
        goldens = load_goldens(library, directory, args.rule or None)
        checks = enumerate_checks(library, goldens, impls, tuple(args.dtype) or DTYPES)
    schedule_checks = _schedule_checks(args, directory) if run_schedules else []
    if not checks and not schedule_checks:
        raise UsageError("nothing to run for this selection")
    schedule_results: list = []
    with Progress("optspec run", len(checks) + len(schedule_checks), "checks", args.quiet) as progress:

        def run_schedules() -> None:  # in this process, while the workers run the rules
            for check in schedule_checks:
                schedule_results.append(run_schedule_check(check))
                progress.update(f"schedule {check.spec.name} x {check.implementation.name}")

        results: list[CheckResult] = run_in_workers(
            checks,
            jobs,
            [Path(d) for d in args.specs],
            directory,
            lambda rule, impl, n: progress.update(f"{rule} x {impl}", n),
            run_schedules,
        )
    if results:
        print_matrix(matrix(results), [i.name for i in impls])
    if schedule_results:
        print_matrix(matrix(schedule_results), sorted({r.implementation for r in schedule_results}), "schedule")
    results = [*results, *schedule_results]
    unavailable = {i.name: i.unavailable() for i in impls if i.unavailable()}
    for name, reason in unavailable.items():
        print(f"not run: {name}: {reason}")
    failures = [r for r in results if r.status == "fails"]
    errors = [r for r in results if r.status == "error"]
    for failure in failures:
        print(f"FAIL {failure.message}")
    if args.json:
        try:
            write_atomic(args.json, json.dumps([result_json(r) for r in results], indent=1) + "\n")
        except OSError as exc:
            raise write_failed(args.json, exc) from None
    counts = {s: sum(r.status == s for r in results) for s in ("conforms", "deviation", "fails", "error", "skipped")}
    print(
        f"{counts['conforms']} conform, {counts['deviation']} known deviations, "
        f"{counts['fails']} fail, {counts['error']} could not run, {counts['skipped']} not expressible or not installed"
    )
    if errors:
        # An adapter or library that raises is an input problem, not a verdict: exit 2.
        for error in errors:
            print(f"optspec: error: {error.message}", file=sys.stderr)
        return 2
    return 1 if failures else 0


def _schedule_checks(args: argparse.Namespace, directory: Path) -> list:
    from optspec.schedules import ScheduleLibrary

    library = ScheduleLibrary()
    for name in args.schedule:
        library.get(name)
    return enumerate_schedule_checks(library, directory, set(args.schedule) or None)


def print_matrix(table: dict, implementations: list[str], what: str = "rule") -> None:
    width = max([len(r) for r in table] + [len(what)])
    columns = [i for i in implementations if any(i in row for row in table.values())]
    widths = [max(len(c), 15) for c in columns]
    print(what.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for rule in sorted(table):
        cells = [table[rule][c].status if c in table[rule] else "-" for c in columns]
        print(rule.ljust(width) + "  " + "  ".join(s.ljust(w) for s, w in zip(cells, widths)))
    notes = {}
    for row in table.values():
        for cell in row.values():
            notes.update(cell.deviations)
    if notes:
        print("\nknown deviations:")
        for deviation in notes.values():
            print(f"  [{deviation.id}] {deviation.summary}: {deviation.reason} ({'; '.join(deviation.upstream)})")
        print()


def result_json(result: Any) -> dict:
    if not isinstance(result, CheckResult):  # a schedule check
        return {
            "id": result.check_id,
            "schedule": result.schedule,
            "implementation": result.implementation,
            "test": result.test,
            "dtype": result.dtype,
            "status": result.status,
            "message": result.message,
            "comparedVariant": dict(result.compared_variant),
            "profile": result.profile,
            "deviations": [d.id for d in result.deviations],
            "worstRatio": result.worst_ratio,
        }
    return result_record(result)
