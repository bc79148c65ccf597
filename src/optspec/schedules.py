"""Learning-rate schedules: the public face of the schedule pipeline, and the comparison of a run.

A schedule is one more kind of spec and goes through the layers every spec goes through:

* spec: :mod:`optspec.schedule_spec` (load with the shared loader, check, resolve a variant;
  the format is described there and in ``specs/README.md``);
* reference: :mod:`optspec.schedule_reference` (evaluate ``lr[n]`` in a precision with the
  reference's expression compiler; the multipliers s_t of a rule case driven by a schedule);
* error model: :func:`optspec.tolerance.sequence_budgets`;
* golden: :mod:`optspec.schedule_golden`, written and checked by :func:`optspec.golden.write_all`
  and :func:`optspec.golden.check_all` with the rules' golden files;
* conformance (this module): :func:`compare_schedule` compares an implementation's values with
  a golden test under a profile's budget (the adapters in ``impls/schedule_base.py`` use it).

The names below are re-exported so that ``from optspec.schedules import ...`` keeps working;
modules of :mod:`optspec` import from the layer modules, never from this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optspec.schedule_golden import (
    SCHEDULE_FLAG_NOTES,
    SCHEDULE_FORMAT,
    ScheduleGoldenFile,
    ScheduleTest,
    generate_schedule,
    read_schedule_golden,
    schedule_document,
    schedule_golden_dir,
    schedule_golden_schema,
)
from optspec.schedule_reference import (
    ScheduleValues,
    evaluate_schedule,
    schedule_constants,
    schedule_horizon,
    schedule_multipliers,
)
from optspec.schedule_spec import (
    CONSTANTS,
    INDEX_CONVENTION,
    MAX_HORIZON,
    OUTPUTS,
    STANDARD_SCHEDULE_CASES,
    Let,
    Phase,
    ResolvedSchedule,
    ScheduleCase,
    ScheduleKnob,
    ScheduleLibrary,
    ScheduleRef,
    ScheduleSpec,
    ScheduleVariantValue,
    load_schedule,
    packaged_schedules,
    parse_schedule,
    schedule_ref,
)

__all__ = [
    "CONSTANTS",
    "INDEX_CONVENTION",
    "MAX_HORIZON",
    "OUTPUTS",
    "SCHEDULE_FLAG_NOTES",
    "SCHEDULE_FORMAT",
    "STANDARD_SCHEDULE_CASES",
    "Let",
    "Phase",
    "ResolvedSchedule",
    "ScheduleCase",
    "ScheduleComparison",
    "ScheduleGoldenFile",
    "ScheduleKnob",
    "ScheduleLibrary",
    "ScheduleRef",
    "ScheduleSpec",
    "ScheduleTest",
    "ScheduleValues",
    "ScheduleVariantValue",
    "compare_schedule",
    "evaluate_schedule",
    "generate_schedule",
    "load_schedule",
    "packaged_schedules",
    "parse_schedule",
    "read_schedule_golden",
    "schedule_constants",
    "schedule_document",
    "schedule_golden_dir",
    "schedule_golden_schema",
    "schedule_horizon",
    "schedule_multipliers",
    "schedule_ref",
]


@dataclass(frozen=True)
class ScheduleComparison:
    ok: bool
    message: str
    worst_ratio: float


def compare_schedule(
    test: ScheduleTest, observed: Mapping[str, Sequence[float]], profile: str, context: str
) -> ScheduleComparison:
    """Compare observed outputs index by index with the golden values under ``profile``'s budget.

    ``observed[output]`` holds the implementation's values for n = 0, 1, ...; every output it
    gives that the golden test has is compared over the defined indices.
    """
    worst = 0.0
    for out, want in test.expected.items():
        if out not in observed:
            continue
        got = np.asarray(observed[out], dtype=np.float64)
        if got.shape[0] < want.shape[0]:
            return ScheduleComparison(False, f"{context}: {out}: {got.shape[0]} values, expected {want.shape[0]}", worst)
        got = got[: want.shape[0]]
        budget = test.atol[profile][out]
        diff = np.where(np.isfinite(got), np.abs(got - want), np.inf)
        ratio = np.where(budget > 0, diff / np.where(budget > 0, budget, 1.0), np.where(diff == 0, 0.0, np.inf))
        worst = max(worst, float(ratio.max()))
        bad = np.nonzero(~(diff <= budget))[0]  # NaN (error or budget) fails
        if bad.size:
            n = int(bad[0])
            return ScheduleComparison(
                False,
                f"{context}: {out} at index n={n} (step t={n + 1}): got {got[n]!r}, expected {want[n]!r}, "
                f"abs error {diff[n]:.3e} > budget {budget[n]:.3e} ({profile}); {bad.size} of {want.shape[0]} indices off",
                worst,
            )
    return ScheduleComparison(True, "", worst)
