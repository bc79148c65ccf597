"""The whole check of a target: golden-style cases, diagnosis, behavioural checks, output.

For each case of the rule (``defaults``, ``zero_grad`` and the spec's own cases, with any
``--hyper`` overrides) and each dtype (float64, then float32), the target runs on the
case's inputs in the worker (with a time limit) and its parameters and exposed state are
compared at the recorded steps with the float64 reference of the claimed variant under
the error model's budget.

Known deviations (``impls/deviations.toml``) apply as in ``optspec run``, matched on the
target's ``module:attribute``: a knob value the library deliberately replaces is compared
with the variant it implements, and a ``[[precision]]`` or ``[[storage]]`` entry selects
the arithmetic the library has (:func:`optspec.conformance.compare_with_registry`).

Two precision findings need no registry entry:

* a float32 case that misses the float32 budget but is within the ``float32_scalar32``
  budget (the spec evaluated with step-dependent scalars in binary32) is the known
  precision deviation "step scalars in float32", whatever the target's kind;
* float64 cases that fail but are within the float32 budget are the finding "computes in
  float32": still failures, with that explanation as the diagnosis.

Flags. Every other value of a knob that the target selects with keyword arguments its
signature names (``amsgrad``, ``nesterov``, ``centered``, ``maximize``, ...) is run
against the matching variant, on the one case that separates the two variants most
(the largest float64-reference difference relative to the claimed variant's float32
budget), in float64 and float32, as rows ``CASE[knob=value]``.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from optspec import __version__
from optspec.cases import make_inputs, recorded_steps
from optspec.checking.diagnose import Candidate, Diagnosis, Observation, diagnose
from optspec.checking.expected import Expectations
from optspec.checking.mutations import FLOAT32_MUTATION
from optspec.checking.results import (
    COMPUTES_IN_FLOAT32,
    FLOAT32_PROFILES,
    STEP_SCALARS_FLOAT32,
    BehaviourResult,
    CaseResult,
    CheckReport,
)
from optspec.checking.targets import Group, Naming, Scenario, TargetInfo, keyword_base, state_slots
from optspec.checking.worker import Executor, InProcess, Isolated, TargetFailure
from optspec.conformance import compare, compare_with_registry
from optspec.errors import UsageError
from optspec.golden import GoldenTest, write_atomic
from optspec.impls.base import Deviation, find_variant_deviation
from optspec.reference import FLOAT64, CaseInputs, Trajectory
from optspec.spec import Spec, SpecLibrary, variant_label

FORMAT = "optspec-check/1"
DTYPES = ("float64", "float32")
TARGETS_MODULE = "optspec.checking.targets"


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
        fixed: Mapping[str, Any] | None = None,
        inner: str | Any | None = None,
        inner_info: TargetInfo | None = None,
    ) -> None:
        self.spec = spec
        self.library = library
        self.target = target
        self.executor = executor
        self.info = info
        self.claimed = dict(variant)
        self.overrides = dict(overrides)
        self.fixed = dict(fixed or {})
        self.inner = inner
        self.inner_info = inner_info
        self.naming = Naming(spec, info, maps, self.fixed, inner_info)
        self.timeout = timeout
        self.expectations = Expectations()
        self.cwd = os.getcwd()
        self.notes: list[str] = []
        # Knob values the library deliberately replaces (impls/deviations.toml, as optspec run).
        self.deviations: list[Deviation] = []
        self.variant = dict(variant)
        binding = self.naming.binding
        for knob, value in variant.items():
            if binding is None or self.naming.knob_support(knob, value) is not None:
                continue
            deviation = find_variant_deviation(spec.name, info.origin, knob, value)
            if deviation is not None and deviation.implements in binding.variants.get(knob, {}):
                self.variant[knob] = str(deviation.implements)
                self.deviations.append(deviation)
        self.slots = state_slots(info.kind, spec, self.naming.inner_rule(self.variant) if inner is not None else None)
        #: (layout, world size) when the cases run on sharded parameters (--shard), else None
        self.shard: tuple[str, int] | None = None

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
            built.append(Group(tuple(indices), dict(config.kwargs), config.lr_keyword, config.base_lr, dict(config.inner_kwargs)))
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
            inner=self.inner,
            quadratic=inputs.quadratic,
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


_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[0-9]+\])?")


def parse_maps(items: Sequence[str], spec: Spec) -> dict[str, str]:
    """``--map SPEC=THEIRS``: SPEC a hyperparameter or a variant keyword, THEIRS ``NAME`` or ``NAME[INDEX]``."""
    maps = parse_assignments(items, "--map")
    knob_keywords = {"maximize", "amsgrad", "nesterov", "centered", "eps", "eps_root", "momentum", "decoupled", "eps_in_sqrt"}
    for name, theirs in maps.items():
        if name not in spec.hyper and name not in knob_keywords:
            raise UsageError(
                f"--map {name}=...: {name!r} is neither a hyperparameter of rule {spec.name!r} ({', '.join(spec.hyper)}) "
                f"nor a variant keyword ({', '.join(sorted(knob_keywords))})"
            )
        if not _KEYWORD.fullmatch(theirs):
            raise UsageError(
                f"--map {name}={theirs}: {theirs!r} is not a keyword name (NAME, or NAME[INDEX] for a tuple argument)"
            )
    return maps


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--kwarg NAME=VALUE``: VALUE a Python literal (``None``, ``True``, ``0.5``, ``'text'``, ``(1, 2)``)."""
    out: dict[str, Any] = {}
    for name, text in parse_assignments(items, "--kwarg").items():
        if not name.isidentifier():
            raise UsageError(f"--kwarg {name}={text}: {name!r} is not a keyword name")
        try:
            out[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise UsageError(
                f"--kwarg {name}={shown}: not a Python literal (e.g. None, True, 0.5, 'text', (1, 2)); quote strings"
            ) from None
    return out


def _check_keywords(session: Session, maps: Mapping[str, str], kwargs: Mapping[str, Any]) -> None:
    """Every --map target keyword and --kwarg name is in the signature of the optimizer that takes it."""
    naming = session.naming
    for name, theirs in maps.items():
        owner = naming.owner(name, session.variant) if name in session.spec.hyper else session.info
        if not owner.accepts(theirs):
            raise UsageError(
                f"--map {name}={theirs}: {owner.ref} takes no keyword {keyword_base(theirs)!r}; "
                f"its signature is {owner.signature}"
            )
    set_by_optspec = {keyword_base(naming.keyword(h, session.variant)): h for h in session.spec.hyper}
    knob_keywords: dict[str, str] = {}
    for knob_name, knob in session.spec.knobs.items():
        for value in knob.values:
            support = naming.knob_support(knob_name, value)
            for keyword in support.kwargs if support is not None else ():
                knob_keywords.setdefault(keyword_base(naming.maps.get(keyword, keyword)), knob_name)
    for name in kwargs:
        if not session.info.accepts(name):
            raise UsageError(
                f"--kwarg {name}=...: {session.info.ref} takes no keyword {name!r}; its signature is {session.info.signature}"
            )
        # A keyword of a hyperparameter the claimed variant does not read is the target's own
        # business (timm Lamb(max_grad_norm=None) claimed as lamb with grad_clip=none): it may be fixed.
        if name in set_by_optspec and set_by_optspec[name] in naming.reads(session.variant):
            hyper = set_by_optspec[name]
            raise UsageError(f"--kwarg {name}=...: {name!r} is set from spec hyperparameter {hyper}; use --hyper {hyper}=VALUE")
        if name in knob_keywords:
            knob_name = knob_keywords[name]
            raise UsageError(
                f"--kwarg {name}=...: {name!r} selects the variant knob {knob_name}; use --variant {knob_name}=VALUE "
                f"(values: {', '.join(session.spec.knobs[knob_name].values)})"
            )


def open_session(
    rule: str,
    target: str | Any,
    library: SpecLibrary | None = None,
    variant: Sequence[str] = (),
    hypers: Sequence[str] = (),
    maps: Sequence[str] = (),
    timeout: float = 60.0,
    isolate: bool | None = None,
    kwargs: Sequence[str] = (),
    inner: str | Any | None = None,
    shard: tuple[str, int] | None = None,
) -> Session:
    """Resolve the rule, variant, overrides and target; bad input raises UsageError/SpecError.

    ``shard`` = (layout, world size) runs every case on sharded parameters over a gloo gang
    (:mod:`optspec.checking.sharded`)."""
    library = library or SpecLibrary()
    spec = library.get(rule)
    claimed = spec.full_variant(parse_assignments(variant, "--variant"))
    overrides = parse_hypers(hypers, spec)
    renames = parse_maps(maps, spec)
    fixed = parse_kwargs(kwargs)
    if inner is not None and "inner" not in spec.knobs:
        raise UsageError(
            f"--inner: rule {spec.name!r} is not a composite rule (it has no [inner] rule); only wrappers take --inner"
        )
    if isolate is None:
        isolate = isinstance(target, str)
    if shard is not None:
        from optspec.checking.sharded import ShardedExecutor

        if inner is not None:
            raise UsageError("--shard: wrappers (--inner) are not run on sharded parameters")
        executor: Executor = ShardedExecutor(*shard)
    else:
        executor = Isolated() if isolate else InProcess()
    infos: list[TargetInfo] = []
    for what in (target, inner) if inner is not None else (target,):
        try:
            # --timeout bounds importing the target too (a module that hangs on import)
            infos.append(executor.call(f"{TARGETS_MODULE}:describe", what, os.getcwd(), timeout=timeout))
        except TargetFailure as exc:
            executor.close()
            if exc.kind == "usage":
                raise UsageError(exc.message if what is target else f"--inner: {exc.message}") from None
            raise UsageError(f"cannot load target {what!r}: {exc.message}") from None
    info = infos[0]
    inner_info = infos[1] if inner is not None else None
    if shard is not None and info.kind != "torch":
        raise UsageError(
            f"--shard: {info.ref} is an optax factory; only torch optimizers run sharded (optax: optspec run --world-size N)"
        )
    if inner_info is not None and (info.kind != "torch" or inner_info.kind != "torch"):
        executor.close()
        raise UsageError("--inner: only torch wrappers are supported (Wrapper(Inner(params, ...), ...))")
    if inner_info is not None and "inner" not in parse_assignments(variant, "--variant"):
        # Lookahead(Adam(...)) is lookahead with inner=adam: the inner class names the inner rule.
        named = inner_info.qualname.split(".")[-1].lower()
        if named in spec.knobs["inner"].values:
            claimed = {**claimed, "inner": named}
    if isinstance(executor, Isolated):
        executor.warmup = (f"{TARGETS_MODULE}:describe", (target, os.getcwd()))
    session = Session(spec, library, target, executor, info, claimed, overrides, renames, timeout, fixed, inner, inner_info)
    session.shard = shard
    try:
        _check_keywords(session, renames, fixed)
    except UsageError:
        executor.close()
        raise
    return session


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
    kwargs: Sequence[str] = (),
    inner: str | Any | None = None,
    flags: bool = True,
    shard: tuple[str, int] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check ``target`` against ``rule``; see the module docstring.

    ``on_progress(what)`` is called after each case row (``defaults float64``), after the
    flag rows (``flags``) and after the behavioural checks (``behaviour``).

    ``steps`` shortens every case to that many steps (inputs regenerated for the shorter
    case, so the falling-norm phase still happens); None keeps the spec's step counts.
    A target that could not be run in any case raises UsageError ("could not run TARGET").
    """
    session = open_session(rule, target, library, variant, hypers, maps, timeout, isolate, kwargs, inner, shard)
    try:
        report = run_session(session, behaviour, dtypes, steps, flags, on_progress)
        report.target_output = session.executor.captured()
        return report
    finally:
        session.executor.close()


@dataclass
class _Ran:
    """What one row needs for the findings after all cases ran."""

    result: CaseResult
    expected: GoldenTest
    observed: Trajectory | None
    observation: Observation | None


def run_session(
    session: Session,
    behaviour: bool = True,
    dtypes: Sequence[str] = DTYPES,
    steps: int | None = None,
    flags: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> CheckReport:
    spec = session.spec
    report = CheckReport(
        rule=spec.name,
        target=session.info.ref,
        info=session.info,
        variant=session.claimed,
        overrides=session.overrides,
        maps=session.naming.maps,
        compared=session.variant,
        deviations=list(session.deviations),
        kwargs=session.fixed,
        inner=session.inner_info,
    )
    ran: list[_Ran] = []
    prepared: list[tuple[str, dict[str, float], CaseInputs, list[int], GoldenTest]] = []
    for case in spec.cases:
        merged = replace(case, hyper={**case.hyper, **session.overrides}, steps=steps or case.steps)
        hyper = session.hyper_for(case.hyper)
        inputs = make_inputs(spec, merged)
        record = recorded_steps(merged.steps)
        expected = session.expectations.test(spec, session.variant, hyper, inputs, record, case.id)
        prepared.append((case.id, hyper, inputs, record, expected))
        for dtype in dtypes:
            ran.append(run_case(session, case.id, hyper, inputs, record, dtype, expected))
            if on_progress is not None:
                on_progress(f"{case.id} {dtype}")
    main = list(ran)
    if flags:
        ran.extend(run_flags(session, prepared, dtypes))
        if on_progress is not None:
            on_progress("flags")
    report.cases = [r.result for r in ran]
    _refuse_if_nothing_ran(session, ran)
    report.diagnosis = _diagnose(session, main, ran)
    if behaviour and session.shard is not None:
        from optspec.checking.sharded import reshard_behaviour

        report.behaviour = [reshard_behaviour(session)]
        session.notes.append("the one-process behavioural checks are not run with --shard (run the check without it for them)")
    elif behaviour:
        from optspec.checking.behaviour import run_behaviour

        report.behaviour = run_behaviour(session, report)
        if on_progress is not None:
            on_progress("behaviour")
    report.notes = list(session.notes)
    # the specs the verdict was computed from: the rule's, its inner rule's, those the diagnosis compared
    report.specs = {s.name: {"path": s.path, "sha256": s.sha256} for s in session.library.loaded()}
    return report


def _refuse_if_nothing_ran(session: Session, ran: Sequence[_Ran]) -> None:
    """A target that produced no trajectory in any case is bad input (exit 2), not a verdict."""
    if any(r.observed is not None for r in ran):
        return
    failed = [r.result for r in ran if r.result.status == "fails"]
    if failed:
        first = failed[0]
        why = f"{first.message} (case {first.case}, {first.dtype}"
        why += f"; every one of the {len(failed)} runs failed)" if len(failed) > 1 else ")"
    else:
        reasons = sorted({r.result.message for r in ran if r.result.message})
        why = "every case was skipped: " + "; ".join(reasons) if reasons else "the rule has no cases"
    if len(why) > 400:
        why = why[:397] + "..."
    if "inner" in session.spec.knobs and session.inner is None:
        why += f"; rule {session.spec.name} is a composite: a wrapper needs its inner optimizer, --inner MODULE:ATTR"
    raise UsageError(f"could not run {session.info.ref}: {why}")


def _diagnose(session: Session, main: Sequence[_Ran], ran: Sequence[_Ran]) -> Diagnosis | None:
    """The explanation of the numeric failures: a precision finding, a variant, or 'unexplained'."""
    spec = session.spec
    numeric = [r for r in main if r.result.failure == "numeric"]
    if session.shard is not None and numeric:
        from optspec.checking.sharded import local_shard_diagnosis

        local = local_shard_diagnosis(session, numeric)
        if local is not None:
            return local
    float64_all = [r for r in ran if r.result.failure == "numeric" and r.result.dtype == "float64"]
    if float64_all and all(r.observed is not None and _within_float32(r.expected, r.observed) for r in float64_all):
        for r in float64_all:
            r.result.finding = COMPUTES_IN_FLOAT32
        cases = ", ".join(sorted({r.result.case for r in float64_all}))
        # The same finding as the diagnosis's generic mutation "float32", so that --json names it alike.
        as_mutation = Candidate(spec.name, dict(session.variant), True, {}, (FLOAT32_MUTATION,))
        return Diagnosis(
            matches=[as_mutation],
            explanation=(
                f"{COMPUTES_IN_FLOAT32}: the failing float64 cases ({cases}) are within the float32 budget of the "
                "reference, so the target computes float64 parameters (or a state slot, or its step arithmetic) in float32"
            ),
            first_divergence=float64_all[0].result.message,
        )
    if not numeric:
        failing_flags = [r for r in ran if r.result.flag and r.result.failure == "numeric"]
        if not failing_flags:
            return None
        first = failing_flags[0].result
        variant = dict(first.variant)
        observations = [r.observation for r in ran if r.result.flag == first.flag and r.observation is not None]
        observations = [o for o in observations if o.profile == "float64"] or observations
        found = diagnose(
            spec,
            variant,
            observations,
            session.library,
            session.expectations,
            first.message,
            [r.result.case for r in failing_flags if r.result.flag == first.flag],
        )
        found.explanation = (
            f"the flag {first.flag} does not implement {variant_label(_changed(session.variant, variant))}: {found.explanation}"
        )
        return found
    float64 = [r for r in numeric if r.result.dtype == "float64"]
    dtype = "float64" if float64 else numeric[0].result.dtype
    if dtype == "float32" and any(r.result.dtype == "float64" and r.result.status in ("conforms", "deviation") for r in main):
        return Diagnosis(
            explanation="conforms in float64 but exceeds the float32 budget: a precision problem, not a different variant",
            first_divergence=next(r.result.message for r in numeric if r.result.dtype == "float32"),
        )
    observations = [r.observation for r in main if r.observation is not None and r.result.dtype == dtype]
    failing = [r.result.case for r in numeric if r.result.dtype == dtype]
    divergence = next(r.result.message for r in numeric if r.result.dtype == dtype)
    return diagnose(spec, session.variant, observations, session.library, session.expectations, divergence, failing)


def _within_float32(expected: GoldenTest, observed: Trajectory) -> bool:
    """Whether a float64 run is within the budget of some float32 arithmetic (it computes in float32)."""
    return any(compare(expected, observed, profile, "").ok for profile in FLOAT32_PROFILES)


def _changed(base: Mapping[str, str], variant: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in variant.items() if base.get(k) != v}


def run_case(
    session: Session,
    case: str,
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    record: Sequence[int],
    dtype: str,
    expected: GoldenTest,
    variant: Mapping[str, str] | None = None,
    flag: str = "",
    row: str | None = None,
) -> _Ran:
    """Run one case in one dtype and judge it (registry, then the precision findings)."""
    variant = dict(variant or session.variant)
    row = row or case
    scenario = session.scenario(hyper, inputs, dtype, record, variant=variant)
    if isinstance(scenario, str):
        return _Ran(
            CaseResult(row, dtype, "skipped", f"not expressible: {scenario}", flag=flag, variant=variant), expected, None, None
        )
    try:
        observed = session.run(scenario)
    except TargetFailure as exc:
        message = f"with {flag}: {exc.message}" if flag else exc.message
        return _Ran(CaseResult(row, dtype, "fails", message, failure=exc.kind, flag=flag, variant=variant), expected, None, None)
    context = f"{session.spec.name} x {session.info.ref}, case {row}, {dtype}" + (f", with {flag}" if flag else "")
    comparison, profile, registered = compare_with_registry(session.spec, session.info.origin, expected, observed, dtype, context)
    deviations = [*session.deviations, *registered]
    message = ""
    if not comparison.ok and dtype == "float32":
        relaxed = compare(expected, observed, "float32_scalar32", context)
        if relaxed.ok:
            comparison, profile = relaxed, "float32_scalar32"
            why = (
                "JAX without x64 computes step scalars in float32"
                if session.info.kind == "optax"
                else "step scalars computed in float32"
            )
            message = f"known precision deviation: {STEP_SCALARS_FLOAT32} (within the float32_scalar32 budget; {why})"
    status = "fails" if not comparison.ok else ("deviation" if deviations or message else "conforms")
    if comparison.ok and deviations:
        summary = "; ".join(f"{d.summary} [{d.id}]" for d in deviations)
        message = f"known deviation: {summary}" + (f"; {message}" if message else "")
    if not comparison.ok:
        message = comparison.message
    result = CaseResult(
        row,
        dtype,
        status,
        message,
        "numeric" if not comparison.ok else "",
        profile,
        comparison.errors,
        comparison.compared_slots,
        flag=flag,
        variant=variant,
        deviations=tuple(d.id for d in deviations),
    )
    return _Ran(result, expected, observed, Observation(row, hyper, inputs, observed, profile))


def flag_values(session: Session) -> list[tuple[str, str, dict[str, Any]]]:
    """(knob, value, keyword settings) for every other knob value the target selects with its own keywords."""
    out = []
    for knob_name, knob in session.spec.knobs.items():
        for value in knob.values:
            if value == session.variant.get(knob_name):
                continue
            keywords = session.naming.knob_keywords(knob_name, value)
            if keywords is not None:
                out.append((knob_name, value, keywords))
    return out


def _settings(keywords: Mapping[str, Any]) -> str:
    return ",".join(
        f"{k}={v!r}" if not (isinstance(v, str) and v.startswith("$")) else f"{k}={v[1:]}" for k, v in keywords.items()
    )


def run_flags(
    session: Session,
    prepared: Sequence[tuple[str, dict[str, float], CaseInputs, list[int], GoldenTest]],
    dtypes: Sequence[str],
) -> list[_Ran]:
    """Rows ``CASE[knob=value]``: each flag value run against its variant on the case that separates it most.

    The separating case is the one where the flag variant's float64 reference differs most
    from the claimed variant's, relative to the claimed variant's float32 budget (cases whose
    hyperparameters the flag cannot be used with are left out). A flag no case separates is noted.
    """
    out: list[_Ran] = []
    spec = session.spec
    for knob, value, keywords in flag_values(session):
        variant = {**session.variant, knob: value}
        support = session.naming.knob_support(knob, value)
        assert support is not None
        best: tuple[float, int] | None = None
        for position, (case_id, hyper, inputs, _record, expected) in enumerate(prepared):
            if not all(r.holds(hyper) for r in support.requires):
                continue
            reference = session.expectations.reference(spec, variant, hyper, inputs, FLOAT64, f"flag:{case_id}")
            separation = compare(expected, reference, "float32", "flag separation", ["theta"]).worst_ratio
            if separation > 1 and (best is None or separation > best[0]):
                best = (separation, position)
        flag = _settings(keywords)
        if best is None:
            session.notes.append(
                f"flag {flag} ({knob}={value}) not checked: no case of {spec.name} separates it "
                f"from {knob}={session.variant[knob]}"
            )
            continue
        case_id, hyper, inputs, record, _ = prepared[best[1]]
        expected = session.expectations.test(spec, variant, hyper, inputs, record, f"{case_id}[{knob}={value}]")
        for dtype in dtypes:
            out.append(
                run_case(session, case_id, hyper, inputs, record, dtype, expected, variant, flag, f"{case_id}[{knob}={value}]")
            )
    return out


# --------------------------------------------------------------------------- output


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("numpy", "torch", "jax", "jaxlib", "optax", "ml_dtypes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def _target_json(info: TargetInfo) -> dict[str, Any]:
    return {
        "ref": info.ref,
        "kind": info.kind,
        "qualname": info.qualname,
        "package": info.package,
        "distribution": info.distribution,
        "packageVersion": info.package_version,
        "signature": info.signature,
        "acceptedKeywords": list(info.accepted) if info.accepted is not None else None,
        "defaults": dict(info.defaults),
    }


def _literal(value: Any) -> Any:
    """A --kwarg value as JSON (repr when JSON has no such value)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def to_json(report: CheckReport) -> dict[str, Any]:
    """The result as JSON data, described by ``conformance/check-result.schema.json``."""
    return {
        "format": FORMAT,
        "optspec": __version__,
        "rule": report.rule,
        "specs": report.specs,
        "target": _target_json(report.info),
        "inner": _target_json(report.inner) if report.inner is not None else None,
        "kwargs": {k: _literal(v) for k, v in report.kwargs.items()},
        "claimedVariant": dict(report.variant),
        "comparedVariant": dict(report.compared),
        "knownDeviations": [{"id": d.id, "summary": d.summary, "upstream": list(d.upstream)} for d in report.deviations],
        "hyperOverrides": dict(report.overrides),
        "map": dict(report.maps),
        "environment": environment(),
        "verdict": report.verdict,
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
    lines = [f"optspec check {report.rule} {report.target}", f"  target: {_target_line(report.info)}"]
    if report.inner is not None:
        lines.append(f"  inner optimizer: {report.inner.ref}: {_target_line(report.inner)}")
    lines.append(f"  claimed variant: {variant_label(report.variant)}")
    for deviation in report.deviations:
        lines.append(f"  known deviation: {deviation.summary} [{deviation.id}]")
    if report.kwargs:
        lines.append("  fixed keyword arguments: " + ", ".join(f"{k}={v!r}" for k, v in report.kwargs.items()))
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
        extra = f"  ({c.flag})" if c.flag else ""
        lines.append(f"{c.case.ljust(width)}  {c.dtype:<7}  {status:<9}  {shown}{extra}")
    if report.behaviour:
        lines.append("")
        bwidth = max(len(b.name) for b in [*report.behaviour, BehaviourResult("behavioural check", "", "")])
        lines.append(f"{'behavioural check'.ljust(bwidth)}  status")
        for b in report.behaviour:
            lines.append(f"{b.name.ljust(bwidth)}  {b.status}" + (f" (follows from: {b.follows})" if b.follows else ""))
    failures = [c for c in report.cases if c.status == "fails"]
    failed_behaviour = [b for b in report.behaviour if b.status == "failed" and not b.follows]
    grouped = [b for b in report.behaviour if b.status == "failed" and b.follows]
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
    deviating: dict[str, list[str]] = {}
    for c in report.cases:
        if c.status == "deviation":
            deviating.setdefault(c.message, []).append(f"{c.case} ({c.dtype})")
    for message, where in deviating.items():
        lines.append(f"note: {message}: cases {', '.join(where)}")
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
        for b in grouped:
            lines.append(f"  it also explains the failed behavioural check {b.name}: {b.message}")
    lines.append("")
    label = variant_label(report.variant)
    if report.verdict == "deviation":
        ids = sorted({i for c in report.cases for i in c.deviations})
        precision = any(STEP_SCALARS_FLOAT32 in c.message for c in report.cases)
        what = ", ".join(ids) + (", " if ids and precision else "") + (STEP_SCALARS_FLOAT32 if precision else "")
        lines.append(f"verdict: {report.target} conforms to {report.rule} ({label}) with known deviations: {what}")
    elif report.conforms:
        lines.append(f"verdict: {report.target} conforms to {report.rule} ({label})")
    else:
        lines.append(f"verdict: {report.target} does NOT conform to {report.rule} ({label})")
    return "\n".join(lines)


def _target_line(info: TargetInfo) -> str:
    """``torch (AdamW), distribution torch 2.13.0`` or ``... not from an installed distribution``."""
    if info.distribution is not None:
        origin = f"distribution {info.distribution} {info.package_version or '(version unknown)'}"
    elif info.package_version:
        origin = f"{info.package} {info.package_version} (not from an installed distribution)"
    else:
        origin = f"module {info.package or '?'}, not from an installed distribution"
    return f"{info.kind} ({info.qualname}), {origin}"
