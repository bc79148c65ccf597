"""The whole check of a target: golden-style cases, diagnosis, behavioural checks, output.

For each case of the rule (``defaults``, ``zero_grad`` and the spec's own cases, with any
``--hyper`` overrides) and each dtype (float64, then float32), the target runs on the
case's inputs in the worker (with a time limit) and its parameters and exposed state are
compared at the recorded steps with the float64 reference of the claimed variant under
the error model's budget. A JAX target whose float32 run misses the float32 budget is
judged under the model's ``float32_scalar32`` profile (JAX without x64 computes step
scalars in float32; registry entry ``optax-float32-scalar-arithmetic``) and reported as a
known deviation when it passes there.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from optspec import __version__
from optspec.cases import make_inputs, recorded_steps
from optspec.checking.diagnose import Diagnosis, Observation, diagnose
from optspec.checking.expected import Expectations
from optspec.checking.targets import Group, Naming, Scenario, TargetInfo, state_slots
from optspec.checking.worker import Executor, InProcess, Isolated, TargetFailure
from optspec.conformance import StepError, compare
from optspec.errors import UsageError
from optspec.golden import write_atomic
from optspec.impls.base import find_precision_deviation
from optspec.reference import CaseInputs, Trajectory
from optspec.spec import Spec, SpecLibrary, variant_label

FORMAT = "optspec-check/1"
DTYPES = ("float64", "float32")
TARGETS_MODULE = "optspec.checking.targets"


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
        }


@dataclass
class BehaviourResult:
    name: str
    status: str  # passed | failed | not applicable | skipped
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message}


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
    #: the distinct texts the target printed (truncated), shown once at the end of the report
    target_output: list[str] = field(default_factory=list)

    @property
    def conforms(self) -> bool:
        return not any(c.status == "fails" for c in self.cases) and not any(b.status == "failed" for b in self.behaviour)

    @property
    def exit_code(self) -> int:
        return 0 if self.conforms else 1


class Session:
    """One target under check: how to configure it, run it and what to expect."""

    def __init__(
        self,
        spec: Spec,
        library: SpecLibrary,
        target: str | Any,
        executor: Executor,
        info: TargetInfo,
        variant: Mapping[str, str],
        overrides: Mapping[str, float],
        maps: Mapping[str, str],
        timeout: float,
    ) -> None:
        self.spec = spec
        self.library = library
        self.target = target
        self.executor = executor
        self.info = info
        self.variant = dict(variant)
        self.overrides = dict(overrides)
        self.naming = Naming(spec, info, maps)
        self.timeout = timeout
        self.expectations = Expectations()
        self.slots = state_slots(info.kind, spec)
        self.cwd = os.getcwd()
        self.notes: list[str] = []

    def hyper_for(self, case_hyper: Mapping[str, float]) -> dict[str, float]:
        return self.spec.hyper_values({**case_hyper, **self.overrides})

    def scenario(
        self,
        hyper: Mapping[str, float],
        inputs: CaseInputs,
        dtype: str,
        record: Sequence[int],
        variant: Mapping[str, str] | None = None,
        groups: Sequence[tuple[Sequence[int], Mapping[str, float]]] | None = None,
        present: tuple[np.ndarray, ...] | None = None,
        checkpoint_after: int | None = None,
    ) -> Scenario | str:
        """A runnable scenario, or the reason the target cannot express it."""
        variant = dict(variant or self.variant)
        layout = list(groups) if groups is not None else [(range(len(inputs.params)), hyper)]
        built: list[Group] = []
        for indices, group_hyper in layout:
            config = self.naming.configure(group_hyper, variant)
            for note in config.notes:
                if note not in self.notes:
                    self.notes.append(note)
            if config.problems:
                return "; ".join(config.problems)
            built.append(Group(tuple(indices), dict(config.kwargs), config.lr_keyword, config.base_lr))
        return Scenario(
            kind=self.info.kind,
            groups=tuple(built),
            params=inputs.params,
            grads=inputs.grads,
            lr_multipliers=inputs.lr_multipliers,
            dtype=dtype,
            record=tuple(record),
            slots=self.slots,
            present=present,
            checkpoint_after=checkpoint_after,
        )

    def run(self, scenario: Scenario) -> Trajectory:
        """Run in the executor; raises TargetFailure."""
        return self.executor.call(f"{TARGETS_MODULE}:run_scenario", self.target, self.cwd, scenario, timeout=self.timeout)


def parse_assignments(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{what} {item!r} must be NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def parse_hypers(items: Sequence[str], spec: Spec) -> dict[str, float]:
    raw = parse_assignments(items, "--hyper")
    values: dict[str, float] = {}
    for name, text in raw.items():
        if name not in spec.hyper:
            raise UsageError(
                f"--hyper {name}: rule {spec.name!r} has no hyperparameter {name!r} (known: {', '.join(spec.hyper)})"
            )
        try:
            values[name] = float(text)
        except ValueError:
            raise UsageError(f"--hyper {name}={text}: {text!r} is not a number") from None
    spec.hyper_values(values, where=f"--hyper for rule {spec.name!r}")
    return values


def parse_maps(items: Sequence[str], spec: Spec) -> dict[str, str]:
    maps = parse_assignments(items, "--map")
    knob_keywords = {"maximize", "amsgrad", "nesterov", "centered", "eps", "eps_root", "momentum", "decoupled", "eps_in_sqrt"}
    for name in maps:
        if name not in spec.hyper and name not in knob_keywords:
            raise UsageError(
                f"--map {name}=...: {name!r} is neither a hyperparameter of rule {spec.name!r} ({', '.join(spec.hyper)}) "
                f"nor a variant keyword ({', '.join(sorted(knob_keywords))})"
            )
    return maps


def open_session(
    rule: str,
    target: str | Any,
    library: SpecLibrary | None = None,
    variant: Sequence[str] = (),
    hypers: Sequence[str] = (),
    maps: Sequence[str] = (),
    timeout: float = 60.0,
    isolate: bool | None = None,
) -> Session:
    """Resolve the rule, variant, overrides and target; bad input raises UsageError/SpecError."""
    library = library or SpecLibrary()
    spec = library.get(rule)
    claimed = spec.full_variant(parse_assignments(variant, "--variant"))
    overrides = parse_hypers(hypers, spec)
    renames = parse_maps(maps, spec)
    if isolate is None:
        isolate = isinstance(target, str)
    executor: Executor = Isolated() if isolate else InProcess()
    try:
        # --timeout bounds importing the target too (a module that hangs on import)
        info = executor.call(f"{TARGETS_MODULE}:describe", target, os.getcwd(), timeout=timeout)
    except TargetFailure as exc:
        executor.close()
        if exc.kind == "usage":
            raise UsageError(exc.message) from None
        raise UsageError(f"cannot load target {target!r}: {exc.message}") from None
    if isinstance(executor, Isolated):
        executor.warmup = (f"{TARGETS_MODULE}:describe", (target, os.getcwd()))
    return Session(spec, library, target, executor, info, claimed, overrides, renames, timeout)


def check(
    rule: str,
    target: str | Any,
    library: SpecLibrary | None = None,
    variant: Sequence[str] = (),
    hypers: Sequence[str] = (),
    maps: Sequence[str] = (),
    timeout: float = 60.0,
    isolate: bool | None = None,
    behaviour: bool = True,
    dtypes: Sequence[str] = DTYPES,
    steps: int | None = None,
) -> CheckReport:
    """Check ``target`` against ``rule``; see the module docstring.

    ``steps`` shortens every case to that many steps (inputs regenerated for the shorter
    case, so the falling-norm phase still happens); None keeps the spec's step counts.
    """
    session = open_session(rule, target, library, variant, hypers, maps, timeout, isolate)
    try:
        report = run_session(session, behaviour, dtypes, steps)
        report.target_output = session.executor.captured()
        return report
    finally:
        session.executor.close()


def run_session(
    session: Session, behaviour: bool = True, dtypes: Sequence[str] = DTYPES, steps: int | None = None
) -> CheckReport:
    spec = session.spec
    report = CheckReport(
        rule=spec.name,
        target=session.info.ref,
        info=session.info,
        variant=session.variant,
        overrides=session.overrides,
        maps=session.naming.maps,
    )
    report.specs = {s.name: {"path": s.path, "sha256": s.sha256} for s in session.library.all()}
    observations: dict[str, list[Observation]] = {dtype: [] for dtype in dtypes}
    divergence: dict[str, str] = {}
    for case in spec.cases:
        merged = replace(case, hyper={**case.hyper, **session.overrides}, steps=steps or case.steps)
        hyper = session.hyper_for(case.hyper)
        inputs = make_inputs(spec, merged)
        record = recorded_steps(merged.steps)
        expected = session.expectations.test(spec, session.variant, hyper, inputs, record, case.id)
        for dtype in dtypes:
            result, observed = run_case(session, case.id, hyper, inputs, record, dtype, expected)
            report.cases.append(result)
            if observed is not None:
                profile = result.profile or dtype
                observations[dtype].append(Observation(case.id, hyper, inputs, observed, profile))
                if result.status == "fails" and dtype not in divergence:
                    divergence[dtype] = result.message
    numeric = [c for c in report.cases if c.failure == "numeric"]
    if numeric:
        dtype = "float64" if any(c.dtype == "float64" for c in numeric) else numeric[0].dtype
        if dtype == "float32" and any(c.dtype == "float64" and c.status in ("conforms", "deviation") for c in report.cases):
            report.diagnosis = Diagnosis(
                explanation="conforms in float64 but exceeds the float32 budget: a precision problem, not a different variant",
                first_divergence=divergence.get("float32", ""),
            )
        else:
            failing = [c.case for c in report.cases if c.dtype == dtype and c.failure == "numeric"]
            report.diagnosis = diagnose(
                spec,
                session.variant,
                observations[dtype],
                session.library,
                session.expectations,
                divergence.get(dtype, ""),
                failing,
            )
    if behaviour:
        from optspec.checking.behaviour import run_behaviour

        report.behaviour = run_behaviour(session, report)
    report.notes = list(session.notes)
    return report


def run_case(
    session: Session,
    case: str,
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    record: Sequence[int],
    dtype: str,
    expected: Any,
) -> tuple[CaseResult, Trajectory | None]:
    scenario = session.scenario(hyper, inputs, dtype, record)
    if isinstance(scenario, str):
        return CaseResult(case, dtype, "skipped", f"not expressible: {scenario}"), None
    try:
        observed = session.run(scenario)
    except TargetFailure as exc:
        return CaseResult(case, dtype, "fails", exc.message, failure=exc.kind), None
    context = f"{session.spec.name} x {session.info.ref}, case {case}, {dtype}"
    comparison = compare(expected, observed, dtype, context)
    profile, status, message = dtype, "conforms", ""
    if not comparison.ok and session.info.kind == "optax" and dtype == "float32":
        relaxed = compare(expected, observed, "float32_scalar32", context)
        if relaxed.ok:
            deviation = find_precision_deviation("optax", "float32")
            cite = f" [{deviation.id}]" if deviation is not None else ""
            comparison, profile, status = relaxed, "float32_scalar32", "deviation"
            message = f"within the float32_scalar32 budget: JAX without x64 computes step scalars in float32{cite}"
    if not comparison.ok:
        return (
            CaseResult(
                case, dtype, "fails", comparison.message, "numeric", profile, comparison.errors, comparison.compared_slots
            ),
            observed,
        )
    return CaseResult(case, dtype, status, message, "", profile, comparison.errors, comparison.compared_slots), observed


# --------------------------------------------------------------------------- output


def _num(x: float) -> float | str:
    return x if np.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("numpy", "torch", "jax", "jaxlib", "optax", "ml_dtypes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def to_json(report: CheckReport) -> dict[str, Any]:
    info = report.info
    return {
        "format": FORMAT,
        "optspec": __version__,
        "rule": report.rule,
        "specs": report.specs,
        "target": {
            "ref": info.ref,
            "kind": info.kind,
            "qualname": info.qualname,
            "package": info.package,
            "packageVersion": info.package_version,
            "acceptedKeywords": list(info.accepted) if info.accepted is not None else None,
            "defaults": dict(info.defaults),
        },
        "claimedVariant": dict(report.variant),
        "hyperOverrides": dict(report.overrides),
        "map": dict(report.maps),
        "environment": environment(),
        "verdict": "conforms" if report.conforms else "fails",
        "exitCode": report.exit_code,
        "cases": [c.to_json() for c in report.cases],
        "diagnosis": report.diagnosis.to_json() if report.diagnosis is not None else None,
        "behaviour": [b.to_json() for b in report.behaviour],
        "notes": list(report.notes),
        "targetOutput": list(report.target_output),
    }


def write_json(report: CheckReport, path: Path) -> None:
    write_atomic(path, json.dumps(to_json(report), indent=1) + "\n")


def format_report(report: CheckReport) -> str:
    """The human summary: a table of cases and behavioural checks, then every failure."""
    lines = [
        f"optspec check {report.rule} {report.target}",
        f"  target: {report.info.kind} ({report.info.qualname}"
        + (f", {report.info.package} {report.info.package_version}" if report.info.package_version else "")
        + ")",
        f"  claimed variant: {variant_label(report.variant)}",
    ]
    if report.overrides:
        lines.append("  hyperparameter overrides: " + ", ".join(f"{k}={v:g}" for k, v in report.overrides.items()))
    lines.append("")
    width = max([len(c.case) for c in report.cases] + [4])
    lines.append(f"{'case'.ljust(width)}  dtype    status     worst error / budget")
    for c in report.cases:
        worst = c.worst_ratio
        shown = "" if worst is None else (f"{worst:.3g}" if np.isfinite(worst) else "inf")
        if c.failure and c.failure != "numeric":
            shown = c.failure
        status = "deviation" if c.status == "deviation" else c.status
        lines.append(f"{c.case.ljust(width)}  {c.dtype:<7}  {status:<9}  {shown}")
    if report.behaviour:
        lines.append("")
        bwidth = max(len(b.name) for b in report.behaviour)
        lines.append(f"{'behavioural check'.ljust(bwidth)}  status")
        for b in report.behaviour:
            lines.append(f"{b.name.ljust(bwidth)}  {b.status}")
    failures = [c for c in report.cases if c.status == "fails"]
    failed_behaviour = [b for b in report.behaviour if b.status == "failed"]
    if failures or failed_behaviour:
        lines.append("")
    for c in failures:
        lines.append(f"FAIL case {c.case} ({c.dtype}): {c.message}")
    for b in failed_behaviour:
        lines.append(f"FAIL behaviour {b.name}: {b.message}")
    skipped = [c for c in report.cases if c.status == "skipped"] + [
        b for b in report.behaviour if b.status != "passed" and b.status != "failed"
    ]
    if skipped or report.notes:
        lines.append("")
    for item in skipped:
        if isinstance(item, CaseResult):
            lines.append(f"skipped case {item.case} ({item.dtype}): {item.message}")
        else:
            lines.append(f"{item.status} behaviour {item.name}: {item.message}")
    for c in report.cases:
        if c.status == "deviation":
            lines.append(f"note: case {c.case} ({c.dtype}) {c.message}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.target_output:
        lines.append("")
        lines.append(f"target output ({len(report.target_output)} distinct, each shown once, truncated):")
        for text in report.target_output:
            shown = text.splitlines()
            lines.extend(f"  | {line[:200]}{'...' if len(line) > 200 else ''}" for line in shown[:20])
            lines.extend([f"  | ... ({len(shown) - 20} more lines)"] if len(shown) > 20 else [])
    if report.diagnosis is not None:
        lines.append("")
        lines.append(f"diagnosis: {report.diagnosis.explanation}")
        if report.diagnosis.nearest:
            lines.append(f"  {report.diagnosis.nearest}")
    lines.append("")
    lines.append(
        f"verdict: {report.target} conforms to {report.rule} ({variant_label(report.variant)})"
        if report.conforms
        else f"verdict: {report.target} does NOT conform to {report.rule} ({variant_label(report.variant)})"
    )
    return "\n".join(lines)
