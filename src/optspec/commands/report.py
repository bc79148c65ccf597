"""``optspec report``: run the conformance matrix and write HTML, Markdown and JSON pages; or, given
``optspec run --json`` documents, put those runs side by side (a column per library version)."""

from __future__ import annotations

import argparse
from pathlib import Path

from optspec.commands import add_spec_options, check_output_dir, library_from
from optspec.conformance import DTYPES
from optspec.errors import UsageError
from optspec.golden import default_golden_dir
from optspec.impls import all_implementations, implementation
from optspec.matrix_workers import default_jobs
from optspec.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write the conformance report (HTML, Markdown, JSON, plots) to reports/")
    add_spec_options(parser)
    parser.add_argument(
        "runs",
        nargs="*",
        type=Path,
        metavar="RUN.json",
        help="recorded `optspec run --json` documents to put side by side (a column per library version) instead of running",
    )
    parser.add_argument("--rule", action="append", default=[], help="only this rule (repeatable)")
    parser.add_argument("--impl", action="append", default=[], help="only this implementation (repeatable)")
    parser.add_argument("--dtype", action="append", default=[], choices=DTYPES, help="only this dtype (repeatable)")
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output directory (default: reports)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--jobs", "-j", type=int, default=None, metavar="N", help="worker processes (default: one per CPU; 1: none)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optspec.report import collect, load_run, write_comparison, write_report

    check_output_dir(args.out, "--out")
    if args.runs:
        if args.rule or args.impl or args.dtype or args.dir or args.specs:
            raise UsageError("RUN.json files are reported as recorded: --rule, --impl, --dtype, --dir and --specs do not apply")
        runs = [load_run(path) for path in args.runs]
        for path in write_comparison(runs, args.out):
            print(f"wrote {path}")
        return 0
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: give a number of worker processes of at least 1")
    library = library_from(args)
    for rule in args.rule:
        library.get(rule)
    impls = [implementation(name) for name in args.impl] if args.impl else all_implementations()
    with Progress("optspec report", None, "checks", args.quiet) as progress:
        data = collect(
            library,
            args.dir or default_golden_dir(),
            impls,
            args.rule or None,
            tuple(args.dtype) or DTYPES,
            jobs=jobs,
            spec_dirs=[Path(d) for d in args.specs],
            progress=progress,
        )
    for path in write_report(data, args.out):
        print(f"wrote {path}")
    return 0
