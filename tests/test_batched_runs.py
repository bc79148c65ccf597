"""The fast paths give the results of the plain ones: run_checks == run_check, optax run_many == run.

optax's run_many compiles a group's runs into one jitted step; each run's arithmetic is its own
step, so every recorded array must be bitwise equal to the one-run-one-jit path's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optspec.conformance import enumerate_checks, load_goldens, run_check, run_checks
from optspec.errors import AdapterError
from optspec.impls import implementation
from optspec.impls.base import plan_case
from optspec.spec import SpecLibrary

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "conformance" / "golden"

LIBRARY = SpecLibrary()

pytest.importorskip("optax")


def _jobs(rule: str) -> list[tuple]:
    impl = implementation("optax")
    jobs = []
    for check in enumerate_checks(LIBRARY, load_goldens(LIBRARY, GOLDEN_DIR, [rule]), [impl]):
        plan = plan_case(impl, check.spec, check.test.variant, check.test.hyper, check.dtype)
        if plan.skip is None:
            jobs.append((plan, check.test.inputs, check.test.hyper, check.dtype, check.test.steps))
    return jobs


def test_optax_run_many_is_bitwise_the_one_jit_per_run_path() -> None:
    impl = implementation("optax")
    jobs = _jobs("adamax")
    assert len(jobs) >= 4, "adamax should give optax several runs in each dtype"
    together = impl.run_many(jobs)
    for job, batched in zip(jobs, together):
        alone = impl.run(*job)
        assert batched.keys() == alone.keys(), f"{job[3]}: recorded steps differ"
        for step in alone:
            for index, (got, want) in enumerate(zip(batched[step], alone[step])):
                for slot in want:
                    assert got[slot].dtype == want[slot].dtype and np.array_equal(got[slot], want[slot]), (
                        f"adamax {job[3]} step {step} tensor {index} slot {slot}: the batched run differs from the single run"
                    )


def test_a_run_that_cannot_be_built_is_its_own_error_and_the_others_still_run() -> None:
    impl = implementation("optax")
    jobs = _jobs("adamax")[:3]
    plan = jobs[1][0]
    jobs[1] = (replace(plan, kwargs={**plan.kwargs, "no_such_keyword": 1.0}), *jobs[1][1:])
    outcomes = impl.run_many(jobs)
    assert isinstance(outcomes[1], AdapterError) and "building the transformation raised TypeError" in str(outcomes[1]), (
        f"the broken run should be an AdapterError naming the build, got {outcomes[1]!r}"
    )
    assert all(isinstance(o, dict) and o for o in (outcomes[0], outcomes[2])), "the other runs should have trajectories"


@pytest.mark.parametrize("impl_name", ["optax", "torch.for-loop"])
def test_run_checks_gives_run_check_results(impl_name: str) -> None:
    every = enumerate_checks(LIBRARY, load_goldens(LIBRARY, GOLDEN_DIR, ["amsgrad"]), [implementation(impl_name)])
    # every variant and dtype, on two of the cases (each unbatched optax check is a jit compilation of its own)
    checks = [c for c in every if c.test.case in ("defaults", "knobs")]
    assert {tuple(sorted(c.test.variant.items())) for c in checks} == {tuple(sorted(c.test.variant.items())) for c in every}, (
        "a variant lost its checks"
    )
    groups: list[tuple[str, str, int]] = []
    fast = run_checks(checks, lambda rule, impl, n: groups.append((rule, impl, n)))
    assert groups == [("amsgrad", impl_name, len(checks))], f"one group callback expected, got {groups}"
    for check, result in zip(checks, fast):
        assert result == run_check(check), f"{check.id}: run_checks and run_check disagree"
