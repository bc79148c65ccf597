"""``optspec check RULE TARGET``: does a third-party optimizer implement a rule correctly?

Exit 0 when it conforms, 1 when it does not (with a diagnosis of what it does instead),
2 for bad input (unknown rule or variant, target not importable).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from optspec.commands import add_spec_options, check_output_file, library_from, write_failed
from optspec.errors import UsageError
from optspec.progress import Progress
from optspec.spec import SpecLibrary

if TYPE_CHECKING:
    from optspec.checking.results import CheckReport


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a third-party optimizer (torch.optim.Optimizer subclass or optax factory) against a rule",
        description=(
            "Run TARGET (module:attribute) on the rule's cases in float64 and float32 against the float64 reference, "
            "diagnose what it implements when it does not conform, and run behavioural checks."
        ),
    )
    add_spec_options(parser)
    parser.add_argument("rule", help="the rule the target claims to implement, e.g. adamw")
    parser.add_argument("target", help="MODULE:ATTRIBUTE, e.g. torch.optim:AdamW or optax:adamw")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="KNOB=VALUE", help="the variant the target claims (repeatable)"
    )
    parser.add_argument(
        "--hyper", action="append", default=[], metavar="NAME=VALUE", help="override a hyperparameter in every case (repeatable)"
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SPEC=THEIRS",
        help="the target's keyword for a spec hyperparameter, e.g. --map beta1=b1 (repeatable)",
    )
    parser.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a constructor argument the spec does not model, VALUE a Python literal, e.g. max_grad_norm=None (repeatable)",
    )
    parser.add_argument(
        "--inner",
        default=None,
        metavar="MODULE:ATTR",
        help="the inner optimizer of a wrapper (composite rules such as lookahead): Target(Inner(params, ...), ...)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the full result as JSON (atomically)")
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="PATH",
        help="write one self-contained page: error-versus-step plot, cases and diagnosis (atomically; needs matplotlib)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time limit of importing the target and of each run (default 60)",
    )
    parser.add_argument("--no-behaviour", action="store_true", help="skip the behavioural checks")
    parser.add_argument(
        "--shard",
        choices=("dtensor", "dtensor1", "fsdp2", "zero"),
        default=None,
        help="run the cases on sharded parameters: DTensor Shard(0) (dtensor) or Shard(1) (dtensor1), "
        "fully_shard (fsdp2) or ZeroRedundancyOptimizer (zero), over a gloo group of --world-size ranks",
    )
    parser.add_argument("--world-size", type=int, default=2, metavar="N", help="ranks of --shard (default 2)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optspec.checking.runner import format_report, write_json
    from optspec.checking.worker import valid_timeout

    valid_timeout(args.timeout)
    check_output_file(args.json, "--json")
    check_output_file(args.html, "--html")
    if args.html is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"--html {args.html}: the plot needs matplotlib; pip install 'optspec[report]'")
    shard = None
    if args.shard is not None:
        from optspec.checking.sharded import layout_for

        shard = (layout_for(args.shard, args.world_size), args.world_size)
    library = library_from(args)
    spec = library.get(args.rule)
    # the cases in float64 and float32, the flag rows, the behavioural checks
    total = 2 * len(spec.cases) + 1 + (0 if args.no_behaviour else 1)
    with Progress(f"optspec check {args.rule} {args.target}", total, "steps", args.quiet) as progress:
        report = _check(args, library, progress, shard)
    print(format_report(report))
    if args.json is not None:
        try:
            write_json(report, args.json)
        except OSError as exc:
            raise write_failed(args.json, exc) from None
        print(f"wrote {args.json}", file=sys.stderr)
    if args.html is not None:
        from optspec.check_page import write_page

        try:
            write_page(report, args.html)
        except OSError as exc:
            raise write_failed(args.html, exc) from None
        print(f"wrote {args.html}", file=sys.stderr)
    return report.exit_code


def _check(args: argparse.Namespace, library: SpecLibrary, progress: Progress, shard: tuple[str, int] | None) -> CheckReport:
    from optspec.checking.runner import check

    return check(
        args.rule,
        args.target,
        library=library,
        variant=args.variant,
        hypers=args.hyper,
        maps=args.map,
        timeout=args.timeout,
        behaviour=not args.no_behaviour,
        kwargs=args.kwarg,
        inner=args.inner,
        on_progress=progress.update,
        shard=shard,
    )
