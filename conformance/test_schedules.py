"""Conformance of learning-rate schedules: torch.optim.lr_scheduler and optax.schedules.

Each test drives one library schedule for real (a torch scheduler stepping an optimizer, or
optax's ``scale_by_schedule``) over every index of one golden test (at least 2T + 1 indices) and
compares every value with the float64 golden values under the error model's budget. A known
deviation passes only against the variant (or arithmetic profile) the registry names; a
schedule the library cannot express is skipped with the reason.
"""

from __future__ import annotations

import pytest

from optspec.impls.schedule_base import ScheduleCheck, enumerate_schedule_checks, run_schedule_check
from optspec.schedules import ScheduleLibrary

from .conftest import GOLDEN_DIR

_CHECKS = enumerate_schedule_checks(ScheduleLibrary(), GOLDEN_DIR)


@pytest.mark.parametrize("check", _CHECKS, ids=[c.id for c in _CHECKS])
def test_schedule_conforms(check: ScheduleCheck) -> None:
    result = run_schedule_check(check)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.status in ("conforms", "deviation"), result.message
    if result.status == "deviation":
        assert result.deviations and all(d.reason and d.upstream for d in result.deviations), (
            f"{result.check_id}: deviation without a registry reason: {result.message}"
        )
