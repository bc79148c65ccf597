"""``optspec bench RULE TARGET``: time a user's optimizer step against torch.optim and optax.

Runs the pytest-benchmark suite :mod:`optspec.bench_suite` (in this process, through
``pytest.main``) on the user's target and on torch.optim's for-loop, foreach and fused paths
and optax under ``jax.jit`` for the same rule, on the asv parameter sets, and writes
pytest-benchmark's JSON with ``--json`` (atomically: pytest-benchmark writes a temporary
file, copied into place). The target is configured as ``optspec check``
configures it (``--variant``, ``--map``, ``--kwarg``, ``--hyper``, ``--specs``); bad input is
exit 2 before anything is timed. Exit 1 when a benchmark raised.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from optspec.commands import add_spec_options, check_output_file, write_failed
from optspec.errors import UsageError
from optspec.golden import write_atomic

#: pytest's exit codes that mean bad input or nothing to run
_USAGE_CODES = (3, 4, 5)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time a third-party optimizer's step against torch.optim (for-loop, foreach, fused) and optax (pytest-benchmark)",
        description=(
            "Time one step of TARGET (module:attribute) and of torch.optim's and optax's implementations of RULE on the "
            "asv parameter sets with pytest-benchmark; --json writes pytest-benchmark's JSON."
        ),
    )
    add_spec_options(parser)
    parser.add_argument("rule", help="the rule the target implements, e.g. adam (its defaults configure every implementation)")
    parser.add_argument("target", help="MODULE:ATTRIBUTE, a torch.optim.Optimizer subclass or an optax factory")
    for name, metavar, what in (
        ("variant", "KNOB=VALUE", "the variant the target claims"),
        ("map", "SPEC=THEIRS", "the target's keyword for a spec hyperparameter"),
        ("kwarg", "NAME=VALUE", "a constructor argument the spec does not model (a Python literal)"),
        ("hyper", "NAME=VALUE", "override a hyperparameter (every implementation)"),
    ):
        parser.add_argument(f"--{name}", action="append", default=[], metavar=metavar, help=f"{what} (repeatable)")
    parser.add_argument(
        "--param-set", action="append", default=[], metavar="NAME", help="an asv parameter set (repeatable; default: all)"
    )
    parser.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="NAME",
        help="target, torch.for-loop, torch.foreach, torch.fused or optax.jit (repeatable; default: all)",
    )
    parser.add_argument(
        "--dtype", action="append", default=[], metavar="NAME", help="float32 or bf16-fp32state (repeatable; default: float32)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write pytest-benchmark's JSON")
    parser.add_argument(
        "--max-time", type=float, default=1.0, metavar="SECONDS", help="pytest-benchmark's time per benchmark (default 1)"
    )
    parser.add_argument("--min-rounds", type=int, default=5, metavar="N", help="pytest-benchmark's minimum rounds (default 5)")
    parser.set_defaults(func=run)


def pytest_args(args: argparse.Namespace, ini: Path, json_path: Path | None) -> list[str]:
    """The pytest command line of the suite for these options (pytest-benchmark's JSON to ``json_path``)."""
    out = [
        "--pyargs",
        "optspec.bench_suite",
        "-c",
        str(ini),
        "--rootdir",
        str(ini.parent),
        "-p",
        "no:cacheprovider",
        "-rs",
        "--optspec-bench",
        f"{args.rule}={args.target}",
        "--benchmark-max-time",
        repr(args.max_time),
        "--benchmark-min-rounds",
        str(args.min_rounds),
        "--benchmark-group-by",
        "group",
        "--benchmark-columns",
        "min,median,mean,stddev,rounds",
    ]
    if importlib.util.find_spec("xdist") is not None:
        out += ["-p", "no:xdist"]  # timings in one process, one at a time
    if importlib.util.find_spec("pytest_randomly") is not None:
        out += ["-p", "no:randomly"]
    for option, values in (
        ("variant", args.variant),
        ("map", args.map),
        ("kwarg", args.kwarg),
        ("hyper", args.hyper),
        ("specs", args.specs),
        ("bench-set", args.param_set),
        ("bench-impl", args.impl),
        ("bench-dtype", args.dtype),
    ):
        for value in values:
            out += [f"--optspec-{option}", str(value)]
    if json_path is not None:
        out += ["--benchmark-json", str(json_path)]
    return out


def _validate(args: argparse.Namespace) -> None:
    """Bad input is exit 2 here, with one line, before pytest starts."""
    from optspec.bench_suite import IMPLEMENTATIONS
    from optspec.benchmarks.bodies import DTYPES, PARAM_SETS, TargetSpec, target_prepared

    for option, values, known in (
        ("--param-set", args.param_set, list(PARAM_SETS)),
        ("--impl", args.impl, list(IMPLEMENTATIONS)),
        ("--dtype", args.dtype, list(DTYPES)),
    ):
        for value in values:
            if value not in known:
                raise UsageError(f"{option} {value}: unknown (known: {', '.join(known)})")
    if not (0 < args.max_time <= 3600):
        raise UsageError(f"--max-time {args.max_time:g}: must be positive and at most 3600 seconds")
    if args.min_rounds < 1:
        raise UsageError(f"--min-rounds {args.min_rounds}: must be at least 1")
    user = TargetSpec(args.rule, args.target, args.variant, args.map, args.kwarg, args.hyper, args.specs)
    _, session = target_prepared(user, (args.param_set or list(PARAM_SETS))[0], (args.dtype or ["float32"])[0])
    session.executor.close()


_XDIST_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise UsageError("optspec bench needs pytest-benchmark: pip install 'optspec[bench]'")
    check_output_file(args.json, "--json")
    _validate(args)
    import pytest

    with tempfile.TemporaryDirectory(prefix="optspec-bench-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        written = Path(tmp) / "benchmark.json"
        # The suite times in this one process: a caller's pytest-xdist worker variables (optspec bench
        # called from inside an xdist run) would make pytest-benchmark disable itself
        # (pytest_benchmark/session.py:76-78 reads PYTEST_XDIST_WORKER).
        saved = {name: os.environ.pop(name) for name in _XDIST_VARIABLES if name in os.environ}
        try:
            code = int(pytest.main(pytest_args(args, ini, written if args.json is not None else None)))
        finally:
            os.environ.update(saved)
        if code in _USAGE_CODES:
            raise UsageError(f"optspec bench {args.rule} {args.target}: pytest could not run the suite (exit {code}; see above)")
        if args.json is not None and written.exists():
            try:
                write_atomic(args.json, written.read_text())
            except OSError as exc:
                raise write_failed(args.json, exc) from None
            print(f"wrote {args.json}", file=sys.stderr)
    return 0 if code == 0 else 1
