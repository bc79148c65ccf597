"""Schedule implementations under test, their bindings, known deviations and the check runner.

A :class:`ScheduleBinding` says how one library builds a schedule spec: which variant
values (per knob) it implements, which combinations it can build, which requirements over
hyperparameters it needs, and a builder. A check runs the library's schedule for real over
the golden test's indices and compares every value (and the momentum where the library
cycles it) with the golden float64 values under the error model's budget.

Schedule deviations live in ``impls/deviations.toml`` as ``[[schedule]]`` entries, either a
convention (``knob``/``asked``/``implements``: the library implements another variant value
on purpose; the check compares with that variant's golden values) or an arithmetic
(``dtype``/``profile``: the library computes in float32 where the dtype says float64; the
check uses that profile's budget). Never a wider tolerance.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal, Protocol

import jsonschema

from optspec.errors import AdapterError
from optspec.impls.base import Requirement, find_precision_deviation
from optspec.schedules import ScheduleGoldenFile, ScheduleSpec, ScheduleTest, compare_schedule

Status = Literal["conforms", "deviation", "fails", "skipped"]


@dataclass(frozen=True)
class ScheduleBinding:
    schedule: str
    target: str
    #: knob -> values the library implements
    variants: Mapping[str, frozenset[str]]
    build: Callable[[Mapping[str, float], Mapping[str, str]], Any]
    requires: tuple[Requirement, ...] = ()
    #: a whole-variant check for combinations the library lacks: returns the reason or None
    combination: Callable[[Mapping[str, str]], str | None] = field(default=lambda variant: None)
    #: input name -> the keyword that feeds its value at index n to the library's step (a loss)
    step_inputs: Mapping[str, str] = field(default_factory=dict)
    #: optax: ``build`` returns a GradientTransformationExtraArgs scaling the update, not a schedule
    transformation: bool = False


@dataclass(frozen=True)
class ScheduleRun:
    """What an implementation produced: values per output for n = 0.., and where it refused."""

    values: Mapping[str, Sequence[float]]
    refused_at: int | None = None
    refusal: str = ""


class ScheduleImplementation(Protocol):
    name: str
    dtypes: tuple[str, ...]

    def unavailable(self) -> str | None: ...

    def binding(self, schedule: str) -> ScheduleBinding | None: ...

    def run(self, binding: ScheduleBinding, test: ScheduleTest, variant: Mapping[str, str], dtype: str) -> ScheduleRun: ...


@dataclass(frozen=True)
class ScheduleDeviation:
    id: str
    schedule: str
    implementations: tuple[str, ...]
    reason: str
    upstream: tuple[str, ...]
    knob: str | None = None
    asked: str | None = None
    implements: str | None = None
    dtype: str | None = None
    profile: str | None = None

    def applies_to(self, implementation: str) -> bool:
        return any(fnmatch.fnmatchcase(implementation, p) for p in self.implementations)

    @property
    def summary(self) -> str:
        if self.knob is not None:
            return f"{self.schedule}: {self.knob}={self.implements} instead of {self.knob}={self.asked}"
        return f"{self.schedule}: {self.dtype} computed as profile {self.profile}"


_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "schedule", "implementations", "reason", "upstream"],
    "properties": {
        "id": {"type": "string"},
        "schedule": {"type": "string"},
        "implementations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "knob": {"type": "string"},
        "asked": {"type": "string"},
        "implements": {"type": "string"},
        "dtype": {"enum": ["float32", "float64"]},
        "profile": {"enum": ["float32_scalar32"]},
        "reason": {"type": "string", "minLength": 20},
        "upstream": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "oneOf": [{"required": ["knob", "asked", "implements"]}, {"required": ["dtype", "profile"]}],
}


@cache
def schedule_deviations() -> tuple[ScheduleDeviation, ...]:
    """The ``[[schedule]]`` entries of ``impls/deviations.toml``, validated."""
    shown = "impls/deviations.toml"
    try:
        table = tomllib.loads(resources.files("optspec.impls").joinpath("deviations.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AdapterError(f"{shown}: cannot read the known-deviation registry ({exc})") from None
    return parse_schedule_deviations(table, shown)


def parse_schedule_deviations(table: Mapping[str, Any], shown: str) -> tuple[ScheduleDeviation, ...]:
    out = []
    validator = jsonschema.Draft202012Validator(_ENTRY_SCHEMA)
    for index, item in enumerate(table.get("schedule", [])):
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(entry)"
            raise AdapterError(f"{shown}: schedule entry {index + 1} ({item.get('id', '?')}): at {where}: {error.message}")
        out.append(
            ScheduleDeviation(
                id=item["id"],
                schedule=item["schedule"],
                implementations=tuple(item["implementations"]),
                reason=item["reason"],
                upstream=tuple(item["upstream"]),
                knob=item.get("knob"),
                asked=item.get("asked"),
                implements=item.get("implements"),
                dtype=item.get("dtype"),
                profile=item.get("profile"),
            )
        )
    ids = [d.id for d in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AdapterError(f"{shown}: duplicate schedule deviation id {duplicates[0]!r}")
    return tuple(out)


@dataclass(frozen=True)
class SchedulePlan:
    skip: str | None = None
    binding: ScheduleBinding | None = None
    compared_variant: Mapping[str, str] = field(default_factory=dict)
    deviations: tuple[ScheduleDeviation, ...] = ()


def plan_schedule(
    impl: ScheduleImplementation, spec: ScheduleSpec, variant: Mapping[str, str], hyper: Mapping[str, float], dtype: str
) -> SchedulePlan:
    """Decide how ``impl`` runs a schedule test, or why it cannot."""
    reason = impl.unavailable()
    if reason is not None:
        return SchedulePlan(skip=reason)
    binding = impl.binding(spec.name)
    if binding is None:
        return SchedulePlan(skip=f"{impl.name} has no binding for schedule {spec.name!r}")
    if dtype not in impl.dtypes:
        return SchedulePlan(skip=f"{impl.name} computes schedules in {', '.join(impl.dtypes)} only, not {dtype}")
    for requirement in binding.requires:
        if not requirement.holds(hyper):
            return SchedulePlan(skip=f"{binding.target}: {requirement.reason}")
    compared = dict(variant)
    used: list[ScheduleDeviation] = []
    for knob, value in variant.items():
        supported = binding.variants.get(knob, frozenset())
        if value in supported:
            continue
        deviation = next(
            (
                d
                for d in schedule_deviations()
                if d.schedule == spec.name and d.knob == knob and d.asked == value and d.applies_to(impl.name)
            ),
            None,
        )
        if deviation is None or deviation.implements not in supported:
            return SchedulePlan(skip=f"{binding.target}: cannot express {knob}={value}")
        compared[knob] = str(deviation.implements)
        used.append(deviation)
    why = binding.combination(compared)
    if why is not None:
        return SchedulePlan(skip=f"{binding.target}: {why}")
    return SchedulePlan(binding=binding, compared_variant=compared, deviations=tuple(used))


@dataclass(frozen=True)
class ScheduleCheck:
    spec: ScheduleSpec
    implementation: ScheduleImplementation
    test: ScheduleTest
    dtype: str
    golden: ScheduleGoldenFile

    @property
    def id(self) -> str:
        return f"{self.implementation.name}::{self.test.name}::{self.dtype}"


@dataclass(frozen=True)
class ScheduleCheckResult:
    check_id: str
    schedule: str
    implementation: str
    test: str
    dtype: str
    status: Status
    message: str
    compared_variant: Mapping[str, str] = field(default_factory=dict)
    profile: str = ""
    deviations: tuple[Any, ...] = ()
    worst_ratio: float = 0.0


def run_schedule_check(check: ScheduleCheck) -> ScheduleCheckResult:
    """Plan, run, compare: conforms, known deviation, fails or skipped (with the reason)."""
    spec, impl, test, dtype = check.spec, check.implementation, check.test, check.dtype
    base = {"check_id": check.id, "schedule": spec.name, "implementation": impl.name, "test": test.name, "dtype": dtype}
    plan = plan_schedule(impl, spec, test.variant, test.hyper, dtype)
    if plan.skip is not None:
        return ScheduleCheckResult(**base, status="skipped", message=plan.skip)
    assert plan.binding is not None
    target = check.golden.find(test.case, plan.compared_variant)
    if target is None:
        return ScheduleCheckResult(
            **base, status="skipped", message=f"{impl.name} implements {plan.compared_variant}, which has no golden test here"
        )
    context = f"schedule {spec.name} x {impl.name} ({plan.binding.target}), test {test.name}, {dtype}"
    if target is not test:
        context += f", compared with {target.name} (known deviation)"
    try:
        run = impl.run(plan.binding, target, plan.compared_variant, dtype)
    except AdapterError as exc:
        return ScheduleCheckResult(**base, status="fails", message=f"{context}: {exc}")
    extra: dict[str, Any] = {"compared_variant": plan.compared_variant}
    until = target.defined_until
    if until is None and run.refused_at is not None:
        return ScheduleCheckResult(
            **base,
            status="fails",
            message=f"{context}: refused index {run.refused_at} ({run.refusal}); the spec defines it",
            **extra,
        )
    if until is not None and run.refused_at != until:
        what = "never refused" if run.refused_at is None else f"refused index {run.refused_at}"
        return ScheduleCheckResult(
            **base,
            status="fails",
            message=f"{context}: the spec leaves index {until} on undefined, so stepping to it must raise; it {what}",
            **extra,
        )
    profile = dtype
    comparison = compare_schedule(target, run.values, profile, context)
    deviations: tuple[Any, ...] = plan.deviations
    if not comparison.ok:
        precision = next(
            (
                d
                for d in schedule_deviations()
                if d.schedule == spec.name and d.dtype == dtype and d.profile and d.applies_to(impl.name)
            ),
            None,
        ) or find_precision_deviation(impl.name, dtype)
        if precision is not None:
            relaxed = compare_schedule(target, run.values, str(precision.profile), context)
            if relaxed.ok:
                profile, comparison, deviations = str(precision.profile), relaxed, (*deviations, precision)
    extra.update(profile=profile, deviations=deviations, worst_ratio=comparison.worst_ratio)
    if not comparison.ok:
        return ScheduleCheckResult(**base, status="fails", message=comparison.message, **extra)
    if deviations:
        summary = "; ".join(f"{d.summary} [{d.id}]" for d in deviations)
        return ScheduleCheckResult(**base, status="deviation", message=f"known deviation: {summary}", **extra)
    return ScheduleCheckResult(**base, status="conforms", message="", **extra)


def implemented_variant(binding: ScheduleBinding, implementation: str, variant: Mapping[str, str]) -> dict[str, str]:
    """The variant the library runs for ``variant``: supported values as asked, others through a
    registered convention deviation; anything else is an AdapterError naming the knob."""
    out = dict(variant)
    for knob, value in variant.items():
        supported = binding.variants.get(knob, frozenset())
        if value in supported:
            continue
        deviation = next(
            (
                d
                for d in schedule_deviations()
                if d.schedule == binding.schedule and d.knob == knob and d.asked == value and d.applies_to(implementation)
            ),
            None,
        )
        if deviation is None or deviation.implements not in supported:
            raise AdapterError(f"{binding.target} cannot express {knob}={value}")
        out[knob] = str(deviation.implements)
    why = binding.combination(out)
    if why is not None:
        raise AdapterError(f"{binding.target}: {why}")
    return out


def all_schedule_implementations() -> list[ScheduleImplementation]:
    from optspec.impls.optax_schedules import IMPLEMENTATIONS as OPTAX
    from optspec.impls.torch_schedulers import IMPLEMENTATIONS as TORCH

    return [*TORCH, *OPTAX]


def int_hyper(hyper: Mapping[str, float], name: str) -> int:
    """An integer hyperparameter as a Python int (the spec's domain guarantees integrality)."""
    return round(hyper[name])


def enumerate_schedule_checks(library: Any, golden_dir: Any, names: Any = None) -> list[ScheduleCheck]:
    """Every schedule x implementation x golden test x dtype (``names`` restricts the schedules)."""
    from optspec.schedules import read_schedule_golden, schedule_golden_dir

    directory = schedule_golden_dir(golden_dir)
    checks = []
    for spec in library.all():
        if names and spec.name not in names:
            continue
        golden = read_schedule_golden(directory / f"{spec.name}.json", spec)
        for impl in all_schedule_implementations():
            if impl.unavailable() is None and impl.binding(spec.name) is None:
                continue
            for test in golden.tests:
                for dtype in impl.dtypes:
                    checks.append(ScheduleCheck(spec, impl, test, dtype, golden))
    return checks
