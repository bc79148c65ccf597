"""The results of a check: case rows, behavioural results and the whole report (data only).

:mod:`optspec.checking.runner` fills them and :mod:`optspec.checking.behaviour` adds the
behavioural results; both import this module, so neither imports the other at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optspec.checking.diagnose import Diagnosis
from optspec.checking.targets import TargetInfo
from optspec.conformance import StepError
from optspec.impls.base import Deviation

#: the named precision findings (issue 9: a failure with an explanation, and a known deviation)
COMPUTES_IN_FLOAT32 = "computes in float32"
STEP_SCALARS_FLOAT32 = "step scalars in float32"
#: the profiles of float32 arithmetic: tensors in float32 with float64 or with float32 step scalars
FLOAT32_PROFILES = ("float32", "float32_scalar32")


def _num(x: float) -> float | str:
    return x if np.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


@dataclass
class CaseResult:
    case: str
    dtype: str
    status: str  # conforms | deviation | fails | skipped
    message: str = ""
    failure: str = ""  # numeric | raised | timeout | crashed | ""
    profile: str = ""
    errors: tuple[StepError, ...] = ()
    slots: tuple[str, ...] = ()
    #: a flag row: the keyword settings that select ``variant`` (e.g. ``amsgrad=True``)
    flag: str = ""
    #: the variant this row was compared with
    variant: Mapping[str, str] = field(default_factory=dict)
    #: a named precision finding that explains this failure (e.g. "computes in float32")
    finding: str = ""
    deviations: tuple[str, ...] = ()

    @property
    def worst_ratio(self) -> float | None:
        ratios = [e.ratio for e in self.errors]
        return max(ratios) if ratios else None

    def to_json(self) -> dict[str, Any]:
        worst = self.worst_ratio
        return {
            "case": self.case,
            "dtype": self.dtype,
            "status": self.status,
            "failure": self.failure or None,
            "message": self.message,
            "profile": self.profile or None,
            "slots": list(self.slots),
            "worstRatio": worst if worst is None or np.isfinite(worst) else "inf",
            "errors": [
                {"step": e.step, "slot": e.slot, "maxAbs": _num(e.max_abs), "budget": _num(e.budget)} for e in self.errors
            ],
            "flag": self.flag or None,
            "variant": dict(self.variant),
            "finding": self.finding or None,
            "deviations": list(self.deviations),
        }


@dataclass
class BehaviourResult:
    name: str
    status: str  # passed | failed | not applicable | skipped
    message: str
    #: a failure that follows from the numeric finding (the diagnosis) and is grouped under it
    follows: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "follows": self.follows or None}


@dataclass
class CheckReport:
    rule: str
    target: str
    info: TargetInfo
    variant: Mapping[str, str]
    overrides: Mapping[str, float]
    maps: Mapping[str, str]
    cases: list[CaseResult] = field(default_factory=list)
    behaviour: list[BehaviourResult] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    notes: list[str] = field(default_factory=list)
    specs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the variant the cases were compared with (differs from ``variant`` by registered deviations)
    compared: Mapping[str, str] = field(default_factory=dict)
    deviations: list[Deviation] = field(default_factory=list)
    #: fixed keyword arguments (--kwarg) and the inner optimizer (--inner)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    inner: TargetInfo | None = None
    #: the distinct texts the target printed (truncated), shown once at the end of the report
    target_output: list[str] = field(default_factory=list)

    @property
    def conforms(self) -> bool:
        return not any(c.status == "fails" for c in self.cases) and not any(b.status == "failed" for b in self.behaviour)

    @property
    def verdict(self) -> str:
        """conforms | deviation (conforms only through known deviations) | fails."""
        if not self.conforms:
            return "fails"
        return "deviation" if any(c.status == "deviation" for c in self.cases) else "conforms"

    @property
    def exit_code(self) -> int:
        return 0 if self.conforms else 1
