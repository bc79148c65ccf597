"""The conformance runner: every rule x implementation x golden case x dtype.

One check runs an implementation on a golden case's inputs and compares parameters and
every state slot it exposes, at every recorded step, with the golden values under the
error model's budget (:mod:`optspec.tolerance`). The outcome is one of

* ``conforms`` — within budget for the variant asked for;
* ``deviation`` — within budget for the variant (or arithmetic) that a known-deviation
  registry entry says the library deliberately implements;
* ``fails`` — outside budget (or non-finite where the golden value is finite);
* ``error`` — the adapter or the library raised, so nothing could be compared;
* ``skipped`` — the framework is missing or the library cannot express the case (reason given).

:func:`matrix` folds the checks into the rule x implementation table that ``optspec run``
prints and the reports show.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optspec.errors import AdapterError, GoldenError, LibraryCannotRun
from optspec.golden import GoldenFile, GoldenTest, read_golden
from optspec.impls.base import (
    Deviation,
    Implementation,
    Plan,
    find_precision_deviation,
    find_storage_deviation,
    plan_case,
)
from optspec.impls.defects import Defect, find_defect, find_error_defect
from optspec.reference import FLOAT64, Trajectory, run_reference
from optspec.spec import Spec, SpecLibrary, variant_label
from optspec.tolerance import measure

Status = Literal["conforms", "deviation", "fails", "error", "skipped"]
#: 16-bit parameter dtypes: checked only for implementations that declare them, each against
#: the spec evaluated in that format (the golden file's profile of the same name), and shown in
#: a matrix row of their own ("sgd bfloat16") so that a skipped or failing 16-bit cell is never
#: folded into a passing float32 cell.
HALF_DTYPES = ("bfloat16", "float16")
DTYPES = ("float32", "float64", *HALF_DTYPES)
#: the format of ``optspec run --json`` documents: environment (library versions) and results
RUN_FORMAT = "optspec-run/1"


@dataclass(frozen=True)
class Check:
    spec: Spec
    implementation: Implementation
    test: GoldenTest
    dtype: str
    golden: GoldenFile

    @property
    def id(self) -> str:
        return f"{self.implementation.name}::{self.test.name}::{self.dtype}"


@dataclass(frozen=True)
class StepError:
    """Worst error of one slot at one step, across tensors, relative to its budget."""

    step: int
    slot: str
    max_abs: float
    budget: float

    @property
    def ratio(self) -> float:
        if self.budget > 0:
            return self.max_abs / self.budget
        return 0.0 if self.max_abs == 0 else float("inf")


@dataclass(frozen=True)
class Comparison:
    ok: bool
    message: str
    errors: tuple[StepError, ...]
    compared_slots: tuple[str, ...]

    @property
    def worst_ratio(self) -> float:
        return max((e.ratio for e in self.errors), default=0.0)


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    rule: str
    implementation: str
    test: str
    case: str
    dtype: str
    variant: Mapping[str, str]
    status: Status
    message: str
    compared_variant: Mapping[str, str] = field(default_factory=dict)
    profile: str = ""
    deviations: tuple[Deviation, ...] = ()
    errors: tuple[StepError, ...] = ()
    compared_slots: tuple[str, ...] = ()
    #: a registered library bug that explains this failure or error (``impls/defects.toml``); never set on a pass
    defect: Defect | None = None


def compare(
    expected: GoldenTest, observed: Trajectory, profile: str, context: str, slots: Sequence[str] | None = None
) -> Comparison:
    """Compare ``observed`` with the golden test under the ``profile`` budget.

    Every step and slot present in both is compared; the message of the first violation
    names the step, tensor, slot, errors and budget.
    """
    errors: list[StepError] = []
    first: str | None = None
    compared: set[str] = set()
    for step in expected.steps:
        if step not in observed:
            return Comparison(False, f"{context}: the implementation recorded no values for step {step}", tuple(errors), ())
        for slot in slots or expected.slots:
            worst_abs, worst_budget, worst_ratio = 0.0, 0.0, -1.0
            for index, want_slots in enumerate(expected.expected[step]):
                if index >= len(observed[step]) or slot not in observed[step][index]:
                    continue
                compared.add(slot)
                want = want_slots[slot]
                got = np.asarray(observed[step][index][slot], dtype=np.float64)
                budget = expected.atol[profile][step][index][slot]
                shape = tuple(np.shape(expected.inputs.params[index]))
                if got.shape != want.shape:
                    message = (
                        f"{context}: step {step}, tensor {index} {shape}, slot {slot}: "
                        f"shape {list(got.shape)}, expected {list(want.shape)}"
                    )
                    return Comparison(False, message, tuple(errors), tuple(sorted(compared)))
                finite = np.isfinite(got)
                diff = np.abs(got - want) if finite.all() else np.full(want.shape, np.inf)
                max_abs = float(diff.max()) if diff.size else 0.0
                ratio = max_abs / budget if budget > 0 else (0.0 if max_abs == 0 else np.inf)
                if ratio > worst_ratio:
                    worst_abs, worst_budget, worst_ratio = max_abs, budget, ratio
                # not (error <= budget): a NaN error or a NaN budget fails instead of passing
                if first is None and not (max_abs <= budget):
                    scale = np.maximum(np.abs(want), np.finfo(np.float64).tiny)
                    rel = float((diff / scale).max()) if diff.size else 0.0
                    where = int(np.argmax(diff)) if diff.size else 0
                    flat_got = float(got.reshape(-1)[where]) if got.size else float("nan")
                    flat_want = float(want.reshape(-1)[where]) if want.size else float("nan")
                    what = (
                        "non-finite value"
                        if not finite.all() or not np.isfinite(max_abs)
                        else f"max abs error {max_abs:.3e} > budget {budget:.3e}"
                    )
                    first = (
                        f"{context}: step {step}, tensor {index} {shape}, slot {slot}: {what} "
                        f"(max rel error {rel:.3e}; element {where}: got {flat_got!r}, expected {flat_want!r})"
                    )
            if worst_ratio >= 0:
                errors.append(StepError(step, slot, worst_abs, worst_budget))
    if first is not None:
        return Comparison(False, first, tuple(errors), tuple(sorted(compared)))
    return Comparison(True, "", tuple(errors), tuple(sorted(compared)))


def load_goldens(library: SpecLibrary, directory: Path, rules: Iterable[str] | None = None) -> dict[str, GoldenFile]:
    out = {}
    for name in rules or library.names:
        spec = library.get(name)
        out[name] = read_golden(directory / f"{name}.json", spec, f"{directory / (name + '.json')}")
    return out


def enumerate_checks(
    library: SpecLibrary,
    goldens: Mapping[str, GoldenFile],
    implementations: Sequence[Implementation],
    dtypes: Sequence[str] = DTYPES,
) -> list[Check]:
    checks = []
    for rule, golden in goldens.items():
        spec = library.get(rule)
        for impl in implementations:
            if impl.unavailable() is None and impl.binding(rule) is None:
                continue
            for test in golden.tests:
                for dtype in dtypes:
                    if dtype in HALF_DTYPES and dtype not in impl.dtypes:
                        continue
                    checks.append(Check(spec, impl, test, dtype, golden))
    return checks


def run_check(check: Check) -> CheckResult:
    """Plan, run and compare one check (see the module docstring for the outcomes)."""
    prepared = _prepare(check)
    if isinstance(prepared, CheckResult):
        return prepared
    try:
        observed: Trajectory | AdapterError = prepared.run()
    except AdapterError as exc:
        observed = exc
    return _finish(prepared, observed)


def run_checks(checks: Sequence[Check], on_group: Callable[[str, str, int], None] | None = None) -> list[CheckResult]:
    """:func:`run_check` of every check, in order, with the same results, faster.

    Checks are taken group by group (consecutive checks of one rule and implementation, as
    :func:`enumerate_checks` orders them). Within a group, runs that are the same computation
    (same binding, keyword arguments, variant, hyperparameters, inputs, dtype and recorded
    steps: a known deviation compared with the variant it implements runs exactly what that
    variant's own test runs) are made once, and an implementation that has
    ``run_many(jobs) -> list[Trajectory | AdapterError]`` (``jobs`` a sequence of
    ``(plan, inputs, hyper, dtype, record)``) gets the group's distinct runs in one call.
    ``on_group(rule, implementation, count)`` is called after each group.
    """
    results: list[CheckResult] = []
    for group in check_groups(checks):
        results.extend(_run_group(group))
        if on_group is not None:
            on_group(group[0].spec.name, group[0].implementation.name, len(group))
    return results


def check_groups(checks: Sequence[Check]) -> list[list[Check]]:
    """Consecutive checks of one rule and one implementation, in order."""
    groups: list[list[Check]] = []
    for check in checks:
        if groups and groups[-1][0].spec.name == check.spec.name and groups[-1][0].implementation is check.implementation:
            groups[-1].append(check)
        else:
            groups.append([check])
    return groups


def _run_group(group: Sequence[Check]) -> list[CheckResult]:
    prepared = [_prepare(check) for check in group]
    pending = [p for p in prepared if isinstance(p, _Pending)]
    distinct: dict[tuple[Any, ...], _Pending] = {}
    for item in pending:
        distinct.setdefault(item.key(), item)
    unique = list(distinct.values())
    impl = group[0].implementation
    run_many = getattr(impl, "run_many", None)
    observed: list[Trajectory | AdapterError]
    if run_many is not None and unique:
        observed = list(run_many([item.job for item in unique]))
    else:
        observed = []
        for item in unique:
            try:
                observed.append(item.run())
            except AdapterError as exc:
                observed.append(exc)
    by_key = {item.key(): outcome for item, outcome in zip(unique, observed)}
    return [p if isinstance(p, CheckResult) else _finish(p, by_key[p.key()]) for p in prepared]


@dataclass
class _Pending:
    """A planned check, waiting for its implementation's trajectory."""

    check: Check
    plan: Plan
    target: GoldenTest
    base: dict[str, Any]
    context: str
    _key: tuple[Any, ...] | None = None

    @property
    def job(self) -> tuple[Plan, Any, Mapping[str, float], str, Sequence[int]]:
        test = self.check.test
        return (self.plan, test.inputs, test.hyper, self.check.dtype, test.steps)

    def run(self) -> Trajectory:
        plan, inputs, hyper, dtype, record = self.job
        return self.check.implementation.run(plan, inputs, hyper, dtype, record)

    def key(self) -> tuple[Any, ...]:
        """Everything a run depends on: equal keys are the same computation."""
        if self._key is None:
            plan, inputs, hyper, dtype, record = self.job
            binding = plan.binding
            assert binding is not None
            self._key = (
                binding.rule,
                binding.target,
                repr(sorted(plan.kwargs.items())),
                repr(sorted(plan.run_variant.items())),
                repr(sorted(hyper.items())),
                inputs.digest(),
                dtype,
                tuple(record),
            )
        return self._key


def _prepare(check: Check) -> CheckResult | _Pending:
    spec, impl, test, dtype = check.spec, check.implementation, check.test, check.dtype
    base = {
        "check_id": check.id,
        "rule": spec.name,
        "implementation": impl.name,
        "test": test.name,
        "case": test.case,
        "dtype": dtype,
        "variant": dict(test.variant),
    }
    plan: Plan = plan_case(impl, spec, test.variant, test.hyper, dtype)
    if plan.skip is not None:
        return CheckResult(**base, status="skipped", message=plan.skip)
    target = test
    if dict(plan.compared_variant) != dict(test.variant):
        found = check.golden.find(test.case, plan.compared_variant)
        if found is None:
            return CheckResult(
                **base,
                status="skipped",
                message=(
                    f"{impl.name} implements {variant_label(plan.compared_variant)} (known deviation), "
                    "for which there is no golden test with these inputs"
                ),
            )
        target = found
    if dtype not in target.atol:
        # The spec is not finite in this format in this case (the generator omits that budget),
        # or the file was generated before the 16-bit budgets were stored.
        if any(dtype in t.atol for t in check.golden.tests):
            why = (
                f"the spec evaluated in {dtype} is not finite in this case (a value past the format's range, or 0/0 "
                f"where eps = {test.hyper.get('eps', 'n/a')} rounds to 0), so it has no {dtype} budget"
            )
        else:
            why = f"{check.golden.path} has no {dtype} budgets (regenerate: optspec golden {spec.name})"
        return CheckResult(**base, status="skipped", message=f"{dtype} not checked: {why}")
    context = f"{spec.name} x {impl.name}, case {test.name}, {dtype}"
    return _Pending(check, plan, target, base, context)


def _finish(pending: _Pending, observed: Trajectory | AdapterError) -> CheckResult:
    base, plan, context = pending.base, pending.plan, pending.context
    if isinstance(observed, LibraryCannotRun):  # no kernel for this dtype in the installed release: not a verdict
        return CheckResult(**base, status="skipped", message=f"{context}: {observed}", compared_variant=plan.compared_variant)
    if isinstance(observed, AdapterError):
        check = pending.check
        defect = find_error_defect(check.spec.name, check.implementation.name, check.dtype, str(observed))
        message = f"{context}: {observed}" if defect is None else f"{context}: {observed} {defect.label}"
        return CheckResult(**base, status="error", message=message, compared_variant=plan.compared_variant, defect=defect)
    check = pending.check
    comparison, profile, registered = compare_with_registry(
        check.spec, check.implementation.name, pending.target, observed, check.dtype, context
    )
    deviations = (*plan.deviations, *registered)
    extra = {
        "compared_variant": plan.compared_variant,
        "profile": profile,
        "deviations": deviations,
        "errors": comparison.errors,
        "compared_slots": comparison.compared_slots,
    }
    if not comparison.ok:
        defect = find_defect(check.spec.name, check.implementation.name, check.dtype)
        message = comparison.message if defect is None else f"{comparison.message} {defect.label}"
        return CheckResult(**base, status="fails", message=message, defect=defect, **extra)
    if deviations:
        summary = "; ".join(f"{d.summary} [{d.id}]" for d in deviations)
        return CheckResult(**base, status="deviation", message=f"known deviation: {summary}", **extra)
    return CheckResult(**base, status="conforms", message="", **extra)


def result_record(result: CheckResult) -> dict[str, Any]:
    """A check result as JSON-ready data (non-finite numbers as strings)."""

    def num(x: float) -> float | str:
        return x if np.isfinite(x) else str(x)

    return {
        "id": result.check_id,
        "rule": result.rule,
        "implementation": result.implementation,
        "test": result.test,
        "case": result.case,
        "dtype": result.dtype,
        "variant": dict(result.variant),
        "status": result.status,
        "message": result.message,
        "comparedVariant": dict(result.compared_variant),
        "profile": result.profile,
        "deviations": [d.id for d in result.deviations],
        "defect": None if result.defect is None else result.defect.id,
        "slots": list(result.compared_slots),
        "errors": [{"step": e.step, "slot": e.slot, "maxAbs": num(e.max_abs), "budget": num(e.budget)} for e in result.errors],
    }


def compare_with_registry(
    spec: Spec, implementation: str, target: GoldenTest, observed: Trajectory, dtype: str, context: str
) -> tuple[Comparison, str, tuple[Deviation, ...]]:
    """Compare under ``dtype``; when that fails, under the arithmetic a registry entry says ``implementation`` has.

    A ``[[precision]]`` entry selects its error-model profile; a ``[[storage]]`` entry re-runs
    the float64 reference with its slots held in binary32 (the arithmetic the library really
    has) under the unchanged budget. Returns the comparison, the profile it was made under and
    the registry entries it needed (none when the plain comparison holds).
    """
    profile = dtype
    comparison = compare(target, observed, profile, context)
    deviations: tuple[Deviation, ...] = ()
    precision = find_precision_deviation(implementation, dtype) if not comparison.ok else None
    if precision is not None:
        target = _with_profile(spec, target, str(precision.profile))
        relaxed = compare(target, observed, str(precision.profile), context)
        if relaxed.ok:
            profile, comparison, deviations = str(precision.profile), relaxed, (precision,)
    if not comparison.ok:
        storage = find_storage_deviation(spec.name, implementation, dtype)
        if storage is not None:
            modelled = replace(target, expected=_stored_in_binary32(spec, target, storage.slots))
            # both entries at once where both apply (torch NAdam's float32 mu_product on the differentiable path)
            for judged, used in [(profile, (*deviations, storage))] + (
                [(str(precision.profile), (precision, storage))] if precision is not None and not deviations else []
            ):
                rerun = compare(modelled, observed, judged, f"{context} (model: {storage.summary})")
                if rerun.ok:
                    comparison, profile, deviations = rerun, judged, used
                    break
    return comparison, profile, deviations


def _with_profile(spec: Spec, test: GoldenTest, profile: str) -> GoldenTest:
    """``test`` with ``profile``'s budgets: stored, or measured now (a profile that only a registry
    entry needs, such as ``float64_scalar32``, is not stored in golden files; the measurement is
    seeded with the test's name like a stored one, and cached)."""
    if profile in test.atol:
        return test
    key = (spec.name, spec.sha256, test.name, profile)
    if key not in _MEASURED:
        rule = spec.resolve(test.variant)
        _MEASURED[key] = measure(rule, test.hyper, test.inputs, test.steps, (profile,), seed_text=test.name)[profile]
    return replace(test, atol={**test.atol, profile: _MEASURED[key]})


_MEASURED: dict[tuple[str, str, str, str], Any] = {}


def _stored_in_binary32(spec: Spec, test: GoldenTest, slots: Sequence[str]) -> Trajectory:
    rule = spec.resolve(test.variant)
    return run_reference(rule, test.hyper, test.inputs, FLOAT64, test.steps, store32=slots)


@dataclass
class Cell:
    status: str = "not run"
    counts: dict[str, int] = field(default_factory=dict)
    deviations: dict[str, Deviation] = field(default_factory=dict)
    #: registered library bugs behind some of this cell's failures
    defects: dict[str, Defect] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)


def matrix(results: Iterable[Any]) -> dict[str, dict[str, Cell]]:
    """rule (or schedule; ``"rule bfloat16"`` for a 16-bit dtype) -> implementation -> cell:
    error > fails > known deviation > conforms > skipped."""
    table: dict[str, dict[str, Cell]] = {}
    for result in results:
        row = getattr(result, "rule", None) or result.schedule
        if result.dtype in HALF_DTYPES:
            row = f"{row} {result.dtype}"
        cell = table.setdefault(row, {}).setdefault(result.implementation, Cell())
        cell.counts[result.status] = cell.counts.get(result.status, 0) + 1
        if result.status in ("fails", "error"):
            cell.failures.append(result.message)
        elif result.status == "skipped":
            cell.skips.append(result.message)
        for deviation in result.deviations:
            cell.deviations[deviation.id] = deviation
        defect = getattr(result, "defect", None)
        if defect is not None:
            cell.defects[defect.id] = defect
    for row in table.values():
        for cell in row.values():
            if cell.counts.get("error"):
                cell.status = "error"
            elif cell.counts.get("fails"):
                cell.status = "fails"
            elif cell.counts.get("deviation"):
                cell.status = "known deviation"
            elif cell.counts.get("conforms"):
                cell.status = "conforms"
            else:
                cell.status = "skipped"
    return table


def missing_in(skips: Sequence[str]) -> str:
    """``"not in torch 2.0.1"`` when every skip reason names that same missing release (or
    ``"not run: torch 2.0.1 has no CPU float16 kernel"`` when each is that release's missing kernel), else ``""``."""
    found = {match.group(0) if (match := _NOT_IN.search(reason)) else "" for reason in skips}
    return found.pop() if len(found) == 1 else ""


_NOT_IN = re.compile(r"not in [\w.-]+ \d[\w.]*|not run: [\w.-]+ \d[\w.]* has no \w+ \w+ kernel")


def golden_dir_error(directory: Path) -> GoldenError:
    return GoldenError(f"{directory}: no golden vectors here; run `optspec golden` from the repository root")
