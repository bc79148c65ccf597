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
    library = library_from(args)
    for rule in args.rule:
        library.get(rule)
    impls = [implementation(name) for name in args.impl] if args.impl else all_implementations()
    data = collect(library, args.dir or default_golden_dir(), impls, args.rule or None, tuple(args.dtype) or DTYPES)
    for path in write_report(data, args.out):
        print(f"wrote {path}")
    return 0
