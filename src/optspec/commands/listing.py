"""``optspec list``: every rule with its hyperparameters, variants and cases."""

from __future__ import annotations

import argparse

from optspec.commands import add_spec_options, library_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list rules, their variants and golden cases")
    add_spec_options(parser)
    parser.add_argument("rules", nargs="*", help="only these rules")
    parser.add_argument("--verbose", "-v", action="store_true", help="also show hyperparameters and cases")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    library = library_from(args)
    for name in args.rules or library.names:
        spec = library.get(name)
        print(f"{spec.name}: {spec.title}")
        for knob in spec.knobs.values():
            values = ", ".join(f"{v}{' (default)' if v == knob.default else ''}" for v in knob.values)
            print(f"  variant {knob.name}: {values}")
        if args.verbose:
            for hyper in spec.hyper.values():
                print(f"  hyper {hyper.name} = {hyper.default!r} in {hyper.domain}: {hyper.doc}")
            for case in spec.cases:
                print(f"  case {case.id}: {case.comment}")
    return 0
