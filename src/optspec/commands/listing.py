"""``optspec list``: every rule and every learning-rate schedule with its variants (and, verbose,
hyperparameters and cases). A composite rule (lookahead) lists its inner rules as the ``inner`` variant."""

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
    from optspec.schedule_spec import ScheduleLibrary

    library = library_from(args)
    schedules = ScheduleLibrary()
    for name in [n for n in args.rules if n not in schedules.names or n in library.names] if args.rules else library.names:
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
    if not args.rules or any(n in schedules.names for n in args.rules):
        _list_schedules(args, schedules)
    return 0


def _list_schedules(args: argparse.Namespace, schedules: object) -> None:
    from optspec.schedule_spec import INDEX_CONVENTION, ScheduleLibrary

    assert isinstance(schedules, ScheduleLibrary)
    names = [n for n in args.rules if n in schedules.names] if args.rules else schedules.names
    print(f"schedules ({INDEX_CONVENTION}):")
    for name in names:
        spec = schedules.get(name)
        print(f"schedule {spec.name}: {spec.title}")
        for knob in spec.knobs.values():
            values = ", ".join(f"{v}{' (default)' if v == knob.default else ''}" for v in knob.values)
            print(f"  variant {knob.name}: {values}")
        if args.verbose:
            for hyper in spec.hyper.values():
                print(f"  hyper {hyper.name} = {hyper.default!r} in {hyper.domain}: {hyper.doc}")
            for case in spec.cases:
                print(f"  case {case.id}: {case.comment}")
