"""Conformance: every rule x implementation x golden case x dtype.

Each test runs one implementation on one golden case and compares parameters and every
exposed state slot at every recorded step with the float64 golden values, under the error
model's budget (optspec.tolerance). A known deviation passes only against the variant the
registry says the library implements; an implementation whose framework is missing, or
that cannot express the case, is skipped with the reason. A failure that a known-defect
registry entry (impls/defects.toml: a library bug, with its source lines and upstream report)
explains is an expected failure with that reason; bfloat16 and float16 checks run for the
implementations that declare those dtypes (every torch path).

The default run keeps the bulk cheap: the float32 and float64 checks of the for-loop, foreach
and fused paths and of every other implementation run on every golden case, but the 16-bit
rows and the differentiable, capturable and param-groups paths run on the ``defaults`` and
``knobs`` cases only (every hyperparameter and knob that matters; the cases where the
registered defects show). ``OPTSPEC_CONFORMANCE=full`` (``tox -e paths``) runs every case of
every path and dtype, as ``optspec run`` does.
"""

from __future__ import annotations

import os

import pytest

from optspec.conformance import HALF_DTYPES, Check, CheckResult, check_groups, enumerate_checks, load_goldens, run_checks
from optspec.impls import all_implementations
from optspec.spec import SpecLibrary

from .conftest import GOLDEN_DIR

#: the paths beyond for-loop, foreach and fused, subset in the default run like the 16-bit rows
_EXTRA_PATHS = ("torch.differentiable", "torch.capturable", "torch.param-groups")
_REPRESENTATIVE_CASES = ("defaults", "knobs")
_FULL = os.environ.get("OPTSPEC_CONFORMANCE", "") == "full"


def _in_this_run(check: Check) -> bool:
    extra = check.dtype in HALF_DTYPES or check.implementation.name.startswith(_EXTRA_PATHS)
    return _FULL or not extra or check.test.case in _REPRESENTATIVE_CASES


_LIBRARY = SpecLibrary()
_CHECKS = [c for c in enumerate_checks(_LIBRARY, load_goldens(_LIBRARY, GOLDEN_DIR), all_implementations()) if _in_this_run(c)]
_GROUPS = {(g[0].spec.name, g[0].implementation.name): g for g in check_groups(_CHECKS)}
_RESULTS: dict[str, CheckResult] = {}


def result_of(check: Check) -> CheckResult:
    """``run_check(check)``'s result (see :func:`grouped_result`)."""
    return grouped_result(check, _GROUPS, _RESULTS)


def grouped_result(check: Check, groups: dict[tuple[str, str], list[Check]], results: dict[str, CheckResult]) -> CheckResult:
    """``run_check(check)``'s result, computed with the rest of its rule x implementation group
    on first use (``run_checks``: one jit compilation per group for optax, the same results)."""
    key = f"{check.spec.name}::{check.id}"
    if key not in results:
        group = groups[(check.spec.name, check.implementation.name)]
        for member, result in zip(group, run_checks(group)):
            results[f"{member.spec.name}::{member.id}"] = result
    return results[key]


# One xdist group per rule x implementation: with `pytest -n N --dist loadgroup` (tox) a group runs on one worker.
_PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(f"{c.spec.name}-{c.implementation.name}")) for c in _CHECKS]


@pytest.mark.parametrize("check", _PARAMS)
def test_conforms(check) -> None:
    expect_verdict(result_of(check))


def expect_verdict(result: CheckResult) -> None:
    """Pass on conforms or a registered deviation, skip with the reason, xfail a registered defect, fail otherwise."""
    if result.status == "skipped":
        pytest.skip(result.message)
    if result.status in ("fails", "error") and result.defect is not None:
        # A library bug registered with its evidence (impls/defects.toml): expected to fail (or to
        # raise the registered error), and still a failure in `optspec run`. Any other failure or
        # error of this check fails the test.
        pytest.xfail(f"known defect [{result.defect.id}]: {result.defect.reason} ({'; '.join(result.defect.upstream)})")
    assert result.status != "error", f"could not run: {result.message}"
    assert result.status in ("conforms", "deviation"), result.message
    if result.status == "deviation":
        # A deviation must name registry entries, each with a reason and an upstream reference.
        assert result.deviations and all(d.reason and d.upstream for d in result.deviations), (
            f"{result.check_id}: deviation without a registry reason: {result.message}"
        )
