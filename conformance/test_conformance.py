"""Conformance: every rule x implementation x golden case x dtype.

Each test runs one implementation on one golden case and compares parameters and every
exposed state slot at every recorded step with the float64 golden values, under the error
model's budget (optspec.tolerance). A known deviation passes only against the variant the
registry says the library implements; an implementation whose framework is missing, or
that cannot express the case, is skipped with the reason.
"""

from __future__ import annotations

import pytest

from optspec.conformance import enumerate_checks, load_goldens, run_check
from optspec.impls import all_implementations
from optspec.spec import SpecLibrary

from .conftest import GOLDEN_DIR

_LIBRARY = SpecLibrary()
_CHECKS = enumerate_checks(_LIBRARY, load_goldens(_LIBRARY, GOLDEN_DIR), all_implementations())


@pytest.mark.parametrize("check", _CHECKS, ids=[c.id for c in _CHECKS])
def test_conforms(check) -> None:
    result = run_check(check)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.status != "error", f"could not run: {result.message}"
    assert result.status in ("conforms", "deviation"), result.message
    if result.status == "deviation":
        # A deviation must name registry entries, each with a reason and an upstream reference.
        assert result.deviations and all(d.reason and d.upstream for d in result.deviations), (
            f"{result.check_id}: deviation without a registry reason: {result.message}"
        )
