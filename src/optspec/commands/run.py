"""``optspec run``: the main job. Conformance of every installed implementation, as a matrix."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from optspec import __version__
from optspec.checking.runner import environment
from optspec.commands import add_spec_options, check_output_file, library_from, write_failed
from optspec.conformance import (
    DTYPES,
    RUN_FORMAT,
    CheckResult,
    enumerate_checks,
    load_goldens,
    matrix,
    missing_in,
    result_record,
)
from optspec.errors import UsageError
from optspec.golden import default_golden_dir, write_atomic
from optspec.impls import all_implementations, implementation, sharded_implementations
from optspec.impls.schedule_base import enumerate_schedule_checks, run_schedule_check
from optspec.matrix_workers import default_jobs, one_thread, run_in_workers
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
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="add the sharded columns (torch DTensor, FSDP2, ZeRO over a gloo group of N ranks; optax over N host devices)",
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
    if args.world_size is not None and not 1 < args.world_size <= 64:
        raise UsageError(f"--world-size {args.world_size}: must be from 2 to 64")
    impls = [implementation(name) for name in args.impl] if args.impl else all_implementations()
    if args.world_size is not None and not args.impl:
        impls = [*impls, *sharded_implementations(args.world_size)]
    if args.world_size is not None or any("@" in i.name for i in impls):
        # one process group (gang) per process, started once and reused: no worker processes
        jobs = 1
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
    if schedule_checks or any(i.framework in ("torch", "cuda") for i in impls):
        one_thread()  # this process runs the schedules (and with --jobs 1 every check): tiny tensors
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
    # A library that raises where a registered defect says it does (impls/defects.toml, `raises`)
    # is a verdict on the library, shown as an error cell with its message: a failure, not exit 2.
    known_errors = [r for r in results if r.status == "error" and getattr(r, "defect", None) is not None]
    errors = [r for r in results if r.status == "error" and getattr(r, "defect", None) is None]
    for failure in [*failures, *known_errors]:
        print(f"FAIL {failure.message}")
    if args.json:
        try:
            write_atomic(args.json, json.dumps(run_document(results), indent=1) + "\n")
        except OSError as exc:
            raise write_failed(args.json, exc) from None
    counts = {s: sum(r.status == s for r in results) for s in ("conforms", "deviation", "fails", "skipped")}
    raised = f", {len(known_errors)} raise a registered library error" if known_errors else ""
    print(
        f"{counts['conforms']} conform, {counts['deviation']} known deviations, {counts['fails']} fail{raised}, "
        f"{len(errors)} could not run, {counts['skipped']} not expressible or not installed"
    )
    if errors:
        # An adapter or library that raises is an input problem, not a verdict: exit 2.
        for error in errors:
            print(f"optspec: error: {error.message}", file=sys.stderr)
        return 2
    return 1 if failures or known_errors else 0


def _schedule_checks(args: argparse.Namespace, directory: Path) -> list:
    from optspec.schedule_spec import ScheduleLibrary

    library = ScheduleLibrary()
    for name in args.schedule:
        library.get(name)
    return enumerate_schedule_checks(library, directory, set(args.schedule) or None)


def print_matrix(table: dict, implementations: list[str], what: str = "rule") -> None:
    width = max([len(r) for r in table] + [len(what)])
    columns = [i for i in implementations if any(i in row for row in table.values())]
    texts = {rule: [cell_text(table[rule][c]) if c in table[rule] else "-" for c in columns] for rule in table}
    widths = [max([len(c), 15] + [len(cells[i]) for cells in texts.values()]) for i, c in enumerate(columns)]
    print(what.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for rule in sorted(table):
        print(rule.ljust(width) + "  " + "  ".join(s.ljust(w) for s, w in zip(texts[rule], widths)))
    notes = {}
    defects: dict[str, tuple[Any, list[str]]] = {}
    for rule, row in sorted(table.items()):
        for name, cell in row.items():
            notes.update(cell.deviations)
            for defect in cell.defects.values():
                defects.setdefault(defect.id, (defect, []))[1].append(f"{rule} x {name}")
    if notes:
        print("\nknown deviations:")
        for deviation in notes.values():
            print(f"  [{deviation.id}] {deviation.summary}: {deviation.reason} ({'; '.join(deviation.upstream)})")
        print()
    if defects:
        # Failures all the same: a registered defect explains them, it does not excuse them.
        print("\nknown defects (these cells fail or raise):")
        for defect, cells in defects.values():
            print(f"  [{defect.id}] {', '.join(cells)}: {defect.reason} ({'; '.join(defect.upstream)})")
        print()


def run_document(results: list) -> dict[str, Any]:
    """The ``--json`` document (format optspec-run/1): the environment the run had (Python, the
    versions of numpy, torch, jax, jaxlib, optax, ml_dtypes) and every check's result.
    ``optspec report RUN.json ...`` puts several of these side by side."""
    return {
        "format": RUN_FORMAT,
        "optspec": __version__,
        "environment": environment(),
        "results": [result_json(r) for r in results],
    }


def cell_text(cell: Any) -> str:
    """The cell's status; a cell skipped wholly because the installed library lacks it says so ("not in torch 2.0.1"),
    and one whose every failure is a registered defect of the installed release says that."""
    if cell.status in ("fails", "error") and cell.failures and all("[known defect " in m for m in cell.failures):
        return f"{cell.status}: known defect"
    return missing_in(cell.skips) if cell.status == "skipped" and missing_in(cell.skips) else cell.status


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
