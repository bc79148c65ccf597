"""``optspec validate``: every spec parses and checks, every golden file matches its schema and hash,
and a random sample of golden tests, regenerated from the specs, agrees with the stored values.

The content hash is a plain sha256 that anyone can recompute, so it detects corruption, not
tampering. The sample catches a tampered value without the full ``optspec golden --check``:
for ``--sample N`` tests of every golden file (chosen with ``--seed``, printed so a failure can
be repeated) the float64 reference and the error-model budgets are computed again, and

* every stored expected value must lie within the regenerated float64 budget of the
  regenerated value, |stored - fresh| <= atol_fresh (bit-exact on the generating platform;
  the budget absorbs another platform's last-ulp differences in libm);
* every stored budget must lie within a factor 2 of the regenerated one
  (atol_fresh / 2 <= atol_stored <= 2 atol_fresh): an inflated budget would let every
  implementation pass.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optspec.commands import add_spec_options, library_from
from optspec.errors import GoldenError
from optspec.golden import GoldenFile, default_golden_dir, generate_many, measurement_pool, read_golden
from optspec.impls.base import deviations
from optspec.spec import Spec

#: Stored and regenerated budgets may differ by at most this factor.
BUDGET_FACTOR = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="check specs, golden files and the deviation registry")
    add_spec_options(parser)
    parser.add_argument("--dir", type=Path, default=None, help="golden directory (default: ./conformance/golden)")
    parser.add_argument(
        "--sample",
        type=_count,
        default=2,
        metavar="N",
        help="regenerate N random tests of every golden file from its spec and compare (default 2; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the sample (default: random, printed)")
    parser.add_argument(
        "--jobs", type=_count, default=None, metavar="N", help="processes measuring the sample's budgets (default: one per CPU)"
    )
    parser.add_argument("--rule", action="append", default=[], help="only this rule's golden file (repeatable)")
    parser.add_argument("--schedule", action="append", default=[], help="only this schedule's golden file (repeatable)")
    parser.set_defaults(func=run)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def run(args: argparse.Namespace) -> int:
    library = library_from(args)
    directory = args.dir or default_golden_dir()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    from optspec.schedule_golden import read_schedule_golden, schedule_golden_dir
    from optspec.schedule_spec import ScheduleLibrary

    schedules = ScheduleLibrary()
    # as in `optspec run`: --rule alone selects no schedule, --schedule alone no rule
    rules = [library.get(name) for name in args.rule] if args.rule else ([] if args.schedule else library.all())
    chosen = [schedules.get(name) for name in args.schedule] if args.schedule else ([] if args.rule else schedules.all())
    count = 0
    samples: list[tuple[Spec, GoldenFile, list[Any]]] = []
    for spec in rules:
        golden = read_golden(directory / f"{spec.name}.json", spec)
        count += len(golden.tests)
        samples.append((spec, golden, rng.sample(golden.tests, min(args.sample, len(golden.tests)))))
    # every sampled rule test regenerated at once, the budgets measured in worker processes
    only = {spec.name: [(test.variant, test.case) for test in tests] for spec, _, tests in samples}
    pool = measurement_pool(args.jobs) if sum(map(len, only.values())) > 1 else None
    try:
        regenerated = generate_many([spec for spec, _, _ in samples], pool, only=only)
    finally:
        if pool is not None:
            pool.shutdown()
    sampled = 0
    for (_, golden, tests), fresh in zip(samples, regenerated, strict=True):
        sampled += check_rule_sample(golden, tests, fresh.tests, seed)
    schedule_tests = 0
    for schedule in chosen:
        golden = read_schedule_golden(schedule_golden_dir(directory) / f"{schedule.name}.json", schedule)
        schedule_tests += len(golden.tests)
        sampled += check_schedule_sample(schedule, golden, rng.sample(golden.tests, min(args.sample, len(golden.tests))), seed)
    registry = deviations()
    print(
        f"{len(rules)} rule specs with {count} golden tests, {len(chosen)} schedules with "
        f"{schedule_tests} golden tests and {len(registry)} known deviations are valid; "
        f"{sampled} sampled tests regenerated from the specs agree (--seed {seed})"
    )
    return 0


def check_rule_sample(golden: GoldenFile, tests: Sequence[Any], regenerated: Sequence[Any], seed: int) -> int:
    """Compare each sampled test of a rule's golden file with the same test regenerated from the
    spec (``regenerated``, in the same order); a disagreement is a GoldenError."""
    for test, fresh in zip(tests, regenerated, strict=True):
        where = f"{golden.path}: test {test.name!r}"
        for step in fresh.steps:
            if step not in test.expected:
                raise GoldenError(f"{where}: step {step} is missing (--seed {seed})")
            for index, slots in enumerate(fresh.expected[step]):
                for slot, value in slots.items():
                    budget = fresh.atol["float64"][step][index][slot]
                    stored = test.expected[step][index][slot]
                    _agree(where, f"step {step} {slot}[{index}]", stored, value, budget, seed)
                    # a 16-bit profile a file lacks (older than those budgets) makes its checks skip, not pass
                    for profile in (p for p in fresh.atol if p in test.atol):
                        _budget_agrees(
                            where,
                            f"step {step} {slot}[{index}] atol {profile}",
                            test.atol[profile][step][index][slot],
                            fresh.atol[profile][step][index][slot],
                            seed,
                        )
    return len(tests)


def check_schedule_sample(schedule: Any, golden: Any, tests: Sequence[Any], seed: int) -> int:
    """The same for a schedule's golden file: values and budgets of each sampled test."""
    from optspec.schedule_golden import generate_schedule

    for test in tests:
        (fresh,) = generate_schedule(_one_test(schedule, test.variant, test.case)).tests
        where = f"{golden.path}: test {test.name!r}"
        for out, values in fresh.expected.items():
            stored = test.expected.get(out)
            if stored is None or stored.shape != values.shape:
                raise GoldenError(f"{where}: {out} has another length than the spec gives (--seed {seed})")
            _agree(where, out, stored, values, fresh.atol["float64"][out], seed)
            for profile, per_output in fresh.atol.items():
                _budget_agrees(where, f"{out} atol {profile}", test.atol[profile][out], per_output[out], seed)
    return len(tests)


def _one_test(spec: Any, variant: Mapping[str, str], case: str) -> Any:
    """A copy of ``spec`` whose golden combos and cases are just this one test's."""
    chosen = spec.case(case)

    class OneTest(type(spec)):  # type: ignore[misc]
        def golden_combos(self) -> list[dict[str, str]]:
            return [dict(variant)]

    return OneTest(**{**spec.__dict__, "cases": (chosen,)})


def _agree(where: str, what: str, stored: Any, fresh: Any, budget: Any, seed: int) -> None:
    stored, fresh, budget = (np.asarray(x, dtype=np.float64) for x in (stored, fresh, budget))
    if stored.shape != fresh.shape:
        raise GoldenError(f"{where}: {what} has shape {list(stored.shape)}, the spec gives {list(fresh.shape)} (--seed {seed})")
    error = np.abs(stored - fresh)
    bad = ~(error <= budget)
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise GoldenError(
            f"{where}: {what}: stored {stored.reshape(-1)[i]!r}, regenerated from the spec {fresh.reshape(-1)[i]!r} "
            f"(budget {np.broadcast_to(budget, fresh.shape).reshape(-1)[i]:.3e}): the file was tampered with; "
            f"regenerate it with `optspec golden` (--seed {seed})"
        )


def _budget_agrees(where: str, what: str, stored: Any, fresh: Any, seed: int) -> None:
    stored, fresh = np.asarray(stored, dtype=np.float64), np.asarray(fresh, dtype=np.float64)
    bad = ~((stored <= BUDGET_FACTOR * fresh) & (fresh <= BUDGET_FACTOR * stored))
    if stored.shape != fresh.shape or bad.any():
        i = int(np.argmax(bad.reshape(-1))) if stored.shape == fresh.shape else 0
        raise GoldenError(
            f"{where}: {what}: stored budget {stored.reshape(-1)[i]!r}, regenerated {fresh.reshape(-1)[i]!r} "
            f"(more than a factor {BUDGET_FACTOR:g} apart): the file was tampered with; "
            f"regenerate it with `optspec golden` (--seed {seed})"
        )
