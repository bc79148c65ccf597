"""Learning-rate schedule specs: load, check, resolve a variant, evaluate, golden vectors.

A schedule spec (``specs/schedules/<name>.toml``, checked structurally by
``specs/schedules/schedule.schema.json``) is data, like a rule spec:

* ``[hyper.*]`` — hyperparameters with default, domain and doc. ``lr`` is required: it is
  the base learning rate eta that a rule's ``lr`` hyperparameter supplies when the
  schedule drives a rule (the peak lr of a warm-up or one-cycle schedule).
* ``horizon`` — an expression of the hyperparameters: T, the schedule's length. Golden
  values cover the indices n = 0 .. 2T (at least), so that behaviour past the end is pinned.
* ``derived`` — ``"name = expr"`` scalars computed from hyperparameters (and earlier derived
  names) once, in float64, the way Python and JAX fold constants.
* ``let`` — ``"[label:] name = expr"`` per-index locals, evaluated in order at each index n.
* ``[[phases]]`` — ordered pieces ``{label, when, lr, momentum}``: at index n the first phase
  whose ``when`` condition holds (a phase without ``when`` always holds) gives the learning
  rate ``lr`` and, optionally, the momentum / beta1 value ``momentum`` (one-cycle's cycling).
* ``defined`` — optional condition on n; where it fails the schedule is undefined (torch's
  OneCycleLR raises past ``total_steps``) and an implementation must refuse to step.
* ``[variants.<knob>]`` — named conventions the libraries disagree on; a value may replace
  derived definitions by name, ``let`` equations by label, phases by label, and ``defined``.
* ``[[cases]]`` — golden scenarios (hyperparameter overrides); ``defaults`` is added.

Names available to expressions: the hyperparameters, the derived names, ``pi``, and (in
``let``, phases and ``defined``) ``n`` and the ``let`` locals. Phases may also read ``prev``,
the learning rate at index n - 1 (a recursive evaluation such as torch's chainable
schedulers; it is NaN at n = 0, so a phase that reads it must not hold there).

**Index convention.** ``value[n]`` is the learning rate in effect at optimizer step
t = n + 1. Both libraries use index t - 1 for step t: torch's ``LRScheduler`` evaluates
``last_epoch = 0`` in its constructor and ``scheduler.step()`` follows ``optimizer.step()``;
optax's ``scale_by_schedule`` calls the schedule with ``count`` before incrementing it.
When a schedule drives a rule, the rule's multiplier is s_t = value[t - 1] / eta.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from optspec import __version__
from optspec.errors import ExprError, GoldenError, SpecError, UsageError
from optspec.expr import REDUCTIONS, Call, Expr, names_in, parse_equation, parse_expr
from optspec.reference import EXTENDED, FLOAT32, FLOAT32_SCALAR32, FLOAT64, Precision, Trajectory, _Compiler
from optspec.spec import Domain, Hyper, SpecDeclarations, as_float, load_toml, quoted, spec_hash, variant_label
from optspec.tolerance import PROFILES, sequence_budgets
from optspec.tolerance import header as error_model_header

#: The longest schedule horizon T (golden values cover 2T + 1 indices, evaluated in several precisions).
MAX_HORIZON = 1_000_000

INDEX_CONVENTION = (
    "values[n] is the learning rate in effect at optimizer step t = n + 1 (torch.optim.lr_scheduler "
    "evaluates last_epoch = 0 at construction and scheduler.step() follows optimizer.step(); optax's "
    "scale_by_schedule calls the schedule with count = t - 1 before incrementing it)"
)
SCHEDULE_FORMAT = "optspec-schedule-golden/1"
OUTPUTS = ("lr", "momentum")
STANDARD_SCHEDULE_CASES: tuple[dict[str, object], ...] = (
    {"id": "defaults", "comment": "The spec's default hyperparameters.", "flags": ["Defaults"]},
)
SCHEDULE_FLAG_NOTES = {
    "Defaults": "The spec's default hyperparameters.",
    "PastEnd": "Indices beyond the horizon T are covered: periodic, clamped and held conventions part there.",
    "NonDefaultVariant": "At least one knob has a value other than its default; see the group's variant.",
    "OffGrid": "Boundaries such as pct_start * T are not integers, so floor and float boundary conventions part.",
}
#: Names every schedule expression may read besides its own.
CONSTANTS = {"pi": math.pi}


@dataclass(frozen=True)
class Let:
    """A per-index local ``[label:] target = expr``."""

    label: str | None
    target: str
    expr: Expr
    where: str


@dataclass(frozen=True)
class Phase:
    label: str
    doc: str
    when: Expr | None
    lr: Expr
    momentum: Expr | None
    where: str


@dataclass(frozen=True)
class ScheduleVariantValue:
    name: str
    doc: str
    derived: Mapping[str, tuple[Expr, str]]
    let: Mapping[str, tuple[Let, ...]]
    phases: Mapping[str, tuple[Phase, ...]]
    defined: tuple[Expr | None, str] | None
    #: another value computing the same function in exact arithmetic (only the rounding differs)
    same_function_as: str | None = None


@dataclass(frozen=True)
class ScheduleKnob:
    name: str
    doc: str
    default: str
    values: Mapping[str, ScheduleVariantValue]


@dataclass(frozen=True)
class ScheduleCase:
    id: str
    comment: str
    flags: tuple[str, ...]
    hyper: Mapping[str, float]


@dataclass(frozen=True)
class ScheduleSpec(SpecDeclarations):
    """One learning-rate schedule as declared in its TOML file."""

    name: str
    title: str
    doc: str
    references: tuple[Mapping[str, object], ...]
    hyper: Mapping[str, Hyper]
    horizon: Expr
    horizon_text: str
    derived: tuple[tuple[str, Expr, str], ...]
    let: tuple[Let, ...]
    phases: tuple[Phase, ...]
    defined: Expr | None
    knobs: Mapping[str, ScheduleKnob]
    cases: tuple[ScheduleCase, ...]
    extra_combos: tuple[Mapping[str, str], ...]
    path: str
    sha256: str

    @property
    def where(self) -> str:
        return f"{self.path}: schedule {self.name!r}"

    def resolve(self, variant: Mapping[str, str] | None = None) -> ResolvedSchedule:
        """Apply a variant's edits and check the result statically."""
        full = self.full_variant(variant)
        derived = {name: (expr, text) for name, expr, text in self.derived}
        lets = list(self.let)
        phases = list(self.phases)
        defined = self.defined
        for knob_name, value_name in full.items():
            value = self.knobs[knob_name].values[value_name]
            where = f"{self.where}, variant {knob_name}={value_name}"
            for name, item in value.derived.items():
                if name not in derived:
                    raise SpecError(where, f"derived name {name!r} is not declared (derived: {', '.join(derived) or 'none'})")
                derived[name] = item
            for label, new in value.let.items():
                index = _find(lets, label, lambda x: x.label, f"{where}, let.{label}")
                lets[index : index + 1] = list(new)
            for label, new_phases in value.phases.items():
                index = _find(phases, label, lambda x: x.label, f"{where}, phases.{label}")
                phases[index : index + 1] = list(new_phases)
            if value.defined is not None:
                defined = value.defined[0]
        resolved = ResolvedSchedule(
            self, full, tuple((n, e) for n, (e, _) in derived.items()), tuple(lets), tuple(phases), defined
        )
        resolved.check()
        return resolved

    def case(self, case_id: str) -> ScheduleCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise SpecError(self.where, f"no case {case_id!r} (cases: {', '.join(c.id for c in self.cases)})")


def _find(items: list[Any], label: str, key: Any, where: str) -> int:
    matches = [i for i, item in enumerate(items) if key(item) == label]
    if len(matches) != 1:
        raise SpecError(where, f"{len(matches)} items are labelled {label!r}; exactly one must be")
    return matches[0]


@dataclass(frozen=True)
class ScheduleValues:
    """``lr[n]`` (and ``momentum[n]``) for n < ``defined``; ``count`` indices were asked for."""

    lr: np.ndarray
    momentum: np.ndarray | None
    count: int

    @property
    def defined(self) -> int:
        return int(self.lr.shape[0])


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with one value chosen for every knob."""

    spec: ScheduleSpec
    variant: Mapping[str, str]
    derived: tuple[tuple[str, Expr], ...]
    let: tuple[Let, ...]
    phases: tuple[Phase, ...]
    defined: Expr | None
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_momentum(self) -> bool:
        return self.phases[0].momentum is not None

    def check(self) -> None:
        """Every name is known, momentum is given by all phases or none, no reductions."""
        where = f"{self.spec.where} [variant {variant_label(self.variant)}]"
        consts = set(self.spec.hyper) | set(CONSTANTS)
        for name, expr in self.derived:
            _check_names(expr, consts, f"{where}, derived {name!r}")
            consts.add(name)
        _check_names(self.spec.horizon, consts, f"{where}, horizon")
        per_index = consts | {"n"}
        if self.defined is not None:
            _check_names(self.defined, per_index, f"{where}, defined")
        for item in self.let:
            _check_names(item.expr, per_index, item.where)
            per_index.add(item.target)
        with_momentum = {phase.momentum is not None for phase in self.phases}
        if len(with_momentum) > 1:
            raise SpecError(where, "either every phase gives a momentum or none does")
        for phase in self.phases:
            for part, expr in (("when", phase.when), ("lr", phase.lr), ("momentum", phase.momentum)):
                if expr is not None:
                    _check_names(expr, per_index | {"prev"}, f"{phase.where} {part}")
        if self.phases[-1].when is not None:
            raise SpecError(f"{self.phases[-1].where}", "the last phase must have no 'when' (it covers every other index)")

    def constants(self, hyper: Mapping[str, float]) -> dict[str, np.float64]:
        """Hyperparameters, ``pi`` and derived names, folded in float64."""
        env: dict[str, Any] = {name: np.float64(v) for name, v in hyper.items()}
        env.update({name: np.float64(v) for name, v in CONSTANTS.items()})
        for name, expr in self.derived:
            fn, _ = _Compiler(dict.fromkeys(env, "scalar"), FLOAT64, frozenset(env)).compile(expr)
            with np.errstate(all="ignore"):
                env[name] = np.float64(fn(env))
        return env

    def horizon(self, hyper: Mapping[str, float]) -> int:
        env = self.constants(hyper)
        fn, _ = _Compiler(dict.fromkeys(env, "scalar"), FLOAT64, frozenset(env)).compile(self.spec.horizon)
        value = float(fn(env))
        if not math.isfinite(value) or not 1 <= value <= MAX_HORIZON:
            raise SpecError(
                self.spec.where, f"horizon {self.spec.horizon_text!r} evaluates to {value!r}; it must be from 1 to {MAX_HORIZON}"
            )
        return math.ceil(value)

    def evaluate(self, hyper: Mapping[str, float], count: int, precision: Precision = FLOAT64) -> ScheduleValues:
        """Values for n = 0 .. count-1, stopping at the first index where ``defined`` fails.

        Constants (hyperparameters and derived names) are float64; ``n`` and everything that
        depends on it are ``precision.scalar`` (binary32 for ``float32_scalar32``, JAX's weak
        typing with an int32 count), so the three precisions feed the error model.
        """
        consts = self.constants(hyper)
        kinds: dict[str, str] = {**dict.fromkeys(consts, "scalar"), "n": "scalar", "prev": "scalar"}
        frozen = frozenset(consts)
        lets = []
        for item in self.let:
            fn, kind = _Compiler(kinds, precision, frozen).compile(item.expr)
            kinds[item.target] = kind
            lets.append((item.target, fn))
        compiled = [
            (
                None if p.when is None else _Compiler(kinds, precision, frozen).compile(p.when)[0],
                _Compiler(kinds, precision, frozen).compile(p.lr)[0],
                None if p.momentum is None else _Compiler(kinds, precision, frozen).compile(p.momentum)[0],
            )
            for p in self.phases
        ]
        defined = None if self.defined is None else _Compiler(kinds, precision, frozen).compile(self.defined)[0]
        scalar = precision.scalar
        lrs: list[float] = []
        momenta: list[float] = []
        with np.errstate(all="ignore"):
            for n in range(count):
                env: dict[str, Any] = {**consts, "n": scalar(n), "prev": scalar(lrs[-1] if lrs else np.nan)}
                if defined is not None and not bool(defined(env)):
                    break
                for target, fn in lets:
                    env[target] = fn(env)
                for when, lr_fn, momentum_fn in compiled:
                    if when is None or bool(when(env)):
                        lrs.append(scalar(lr_fn(env)))
                        if momentum_fn is not None:
                            momenta.append(scalar(momentum_fn(env)))
                        break
        # Values keep the extended type of an EXTENDED evaluation (the error model's exact value).
        out = np.longdouble if scalar is np.longdouble else np.float64
        momentum = np.array(momenta, dtype=out) if self.has_momentum else None
        return ScheduleValues(np.array(lrs, dtype=out), momentum, count)


def _check_names(expr: Expr, known: set[str], where: str) -> None:
    for name in names_in(expr):
        if name.id not in known:
            raise SpecError(where, f"unknown name {name.id!r}", name.column)
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Call):
            if node.func in REDUCTIONS:
                raise SpecError(where, f"{node.func}() is a tensor reduction; a schedule has no tensors", node.column)
            stack.extend(node.args)
        else:
            stack.extend(getattr(node, a) for a in ("operand", "left", "right") if hasattr(node, a))


# --------------------------------------------------------------------------- loading


@cache
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("optspec.specs").joinpath("schedules", "schedule.schema.json").read_text())


def _expr(text: str, where: str) -> Expr:
    try:
        return parse_expr(str(text))
    except ExprError as exc:
        raise SpecError(f"{where} {text!r}", exc.message, exc.column) from None


def _let(text: str, where: str) -> Let:
    try:
        eq = parse_equation(text)
    except ExprError as exc:
        raise SpecError(f"{where} {text.strip()!r}", exc.message, exc.column) from None
    if eq.target in ("n", "lr", "momentum", "pi"):
        raise SpecError(f"{where} {text.strip()!r}", f"{eq.target!r} is reserved and cannot be assigned")
    return Let(eq.label, eq.target, eq.expr, f"{where} {text.strip()!r}")


def _phase(table: Mapping[str, Any], where: str) -> Phase:
    label = str(table["label"])
    pwhere = f"{where} phase {label!r}"
    return Phase(
        label=label,
        doc=str(table.get("doc", "")),
        when=None if "when" not in table else _expr(table["when"], f"{pwhere} when"),
        lr=_expr(table["lr"], f"{pwhere} lr"),
        momentum=None if "momentum" not in table else _expr(table["momentum"], f"{pwhere} momentum"),
        where=pwhere,
    )


def _derived(text: str, where: str) -> tuple[str, Expr, str]:
    item = _let(text, where)
    if item.label is not None:
        raise SpecError(item.where, "derived definitions take no label (variants replace them by name)")
    return item.target, item.expr, text


def load_schedule(path: str | Path, display: str | None = None) -> ScheduleSpec:
    """Read, validate and check one schedule spec; ``display`` is the path shown in errors."""
    path = Path(path)
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(shown, f"cannot read the schedule spec: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(shown, f"the schedule spec is not UTF-8 text: {exc.reason}") from None
    return parse_schedule(text, shown)


def parse_schedule(text: str, shown: str) -> ScheduleSpec:
    table = load_toml(text, shown)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(table))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SpecError(shown, f"field {where}: {error.message}")
    name = str(table["name"])
    if Path(shown).stem != name and not shown.startswith("<"):
        raise SpecError(shown, f"the schedule is named {name!r} but the file is {Path(shown).name!r}; they must agree")
    where = f"{shown}: schedule {name!r}"
    hypers: dict[str, Hyper] = {}
    for hname, h in table["hyper"].items():
        if hname in ("n", "pi"):
            raise SpecError(where, f"hyperparameter {hname!r} shadows a built-in name")
        domain = Domain.parse(h["domain"], bool(h.get("integer", False)), f"{where}, hyperparameter {hname!r} domain")
        default = as_float(h["default"], f"{where}, hyperparameter {hname!r} default")
        if not domain.contains(default):
            raise SpecError(where, f"hyperparameter {hname!r}: default {h['default']!r} is outside its domain {domain}")
        hypers[hname] = Hyper(hname, default, domain, h["doc"])
    knobs: dict[str, ScheduleKnob] = {}
    for kname, k in table.get("variants", {}).items():
        values: dict[str, ScheduleVariantValue] = {}
        for vname, v in k["values"].items():
            vwhere = f"{where}, variant {kname}={vname}"
            values[vname] = ScheduleVariantValue(
                name=vname,
                doc=str(v.get("doc", "")),
                derived={n: (_expr(e, f"{vwhere}, derived {n!r}"), e) for n, e in v.get("derived", {}).items()},
                let={lab: tuple(_let(e, f"{vwhere}, let.{lab}") for e in eqs) for lab, eqs in v.get("let", {}).items()},
                phases={lab: tuple(_phase(p, f"{vwhere}, phases.{lab}") for p in ps) for lab, ps in v.get("phases", {}).items()},
                defined=None
                if "defined" not in v
                else ((_expr(v["defined"], f"{vwhere}, defined") if v["defined"].strip() else None), v["defined"]),
                same_function_as=v.get("same_function_as"),
            )
        for vname, value in values.items():
            if value.same_function_as is not None and value.same_function_as not in values:
                raise SpecError(
                    f"{where}, variant {kname}={vname}",
                    f"same_function_as names {value.same_function_as!r}, which is not a value of {kname!r}",
                )
        if k["default"] not in values:
            raise SpecError(
                f"{where}, variant {kname!r}", f"default value {k['default']!r} is not one of its values ({', '.join(values)})"
            )
        knobs[kname] = ScheduleKnob(kname, str(k.get("doc", "")), k["default"], values)
    spec = ScheduleSpec(
        name=name,
        title=table["title"],
        doc=table.get("doc", ""),
        references=tuple(table["references"]),
        hyper=hypers,
        horizon=_expr(table["horizon"], f"{where}, horizon"),
        horizon_text=table["horizon"],
        derived=tuple(_derived(e, f"{where}, derived") for e in table.get("derived", [])),
        let=tuple(_let(e, f"{where}, let") for e in table.get("let", [])),
        phases=tuple(_phase(p, f"{where},") for p in table["phases"]),
        defined=_expr(table["defined"], f"{where}, defined") if table.get("defined") else None,
        knobs=knobs,
        cases=(),
        extra_combos=tuple(table.get("golden", {}).get("extra_combos", [])),
        path=shown,
        sha256=spec_hash(table),
    )
    cases: list[ScheduleCase] = []
    for item in [*STANDARD_SCHEDULE_CASES, *table.get("cases", [])]:
        cwhere = f"{where}, case {item['id']!r}"
        if any(c.id == item["id"] for c in cases):
            raise SpecError(cwhere, "duplicate case id (defaults is added to every schedule)")
        spec.hyper_values(item.get("hyper", {}), cwhere)
        cases.append(
            ScheduleCase(str(item["id"]), str(item["comment"]), tuple(item.get("flags", [])), dict(item.get("hyper", {})))
        )
    spec = ScheduleSpec(**{**spec.__dict__, "cases": tuple(cases)})
    for extra in spec.extra_combos:
        spec.full_variant(extra, f"{where}, golden.extra_combos")
    for combo in spec.all_combos():
        spec.resolve(combo)
    return spec


class ScheduleLibrary:
    """All schedule specs: the packaged ``specs/schedules`` plus any extra directories."""

    def __init__(self, extra_dirs: Iterable[str | Path] = (), include_packaged: bool = True) -> None:
        self._paths: dict[str, tuple[Path, str]] = {}
        if include_packaged:
            root = resources.files("optspec.specs").joinpath("schedules")
            if root.is_dir():
                for entry in sorted(root.iterdir(), key=lambda e: e.name):
                    if entry.name.endswith(".toml"):
                        self._paths[entry.name[:-5]] = (Path(str(entry)), f"specs/schedules/{entry.name}")
        for directory in extra_dirs:
            for path in sorted(Path(directory).glob("*.toml")):
                self._paths[path.stem] = (path, str(path))
        self._cache: dict[str, ScheduleSpec] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def get(self, name: str) -> ScheduleSpec:
        if name not in self._paths:
            raise UsageError(f"unknown schedule {name!r} (known schedules: {', '.join(self.names)})")
        if name not in self._cache:
            path, shown = self._paths[name]
            self._cache[name] = load_schedule(path, shown)
        return self._cache[name]

    def all(self) -> list[ScheduleSpec]:
        return [self.get(name) for name in self.names]


@cache
def packaged_schedules() -> ScheduleLibrary:
    return ScheduleLibrary()


# --------------------------------------------------------------------------- a schedule driving a rule


@dataclass(frozen=True)
class ScheduleRef:
    """A rule case's schedule: spec name, variant and hyperparameters (``lr`` = the rule's eta)."""

    name: str
    variant: Mapping[str, str]
    hyper: Mapping[str, float]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "variant": dict(self.variant), "hyper": dict(self.hyper)}


def schedule_ref(table: Mapping[str, Any], rule_lr: float, where: str, library: ScheduleLibrary | None = None) -> ScheduleRef:
    """Check a case's ``schedule = {name, variant, hyper}`` and bind the schedule's lr to eta."""
    library = library or packaged_schedules()
    if not isinstance(table, Mapping) or "name" not in table:
        raise SpecError(where, "schedule must be a table with a 'name' (and optional 'variant' and 'hyper')")
    extra = set(table) - {"name", "variant", "hyper"}
    if extra:
        raise SpecError(where, f"schedule has unknown field {sorted(extra)[0]!r} (fields: name, variant, hyper)")
    try:
        spec = library.get(str(table["name"]))
    except UsageError as exc:
        raise SpecError(where, str(exc)) from None
    if "lr" in table.get("hyper", {}):
        raise SpecError(where, "schedule hyper 'lr' is the rule's lr; set the rule's hyperparameter instead")
    if rule_lr <= 0:
        raise SpecError(where, "a scheduled case needs the rule's lr > 0 (the multiplier is value / lr)")
    hyper = spec.hyper_values({**dict(table.get("hyper", {})), "lr": rule_lr}, f"{where} (schedule {spec.name!r})")
    variant = spec.full_variant(dict(table.get("variant", {})), f"{where} (schedule {spec.name!r})")
    return ScheduleRef(spec.name, variant, hyper)


def schedule_multipliers(ref: ScheduleRef, steps: int, library: ScheduleLibrary | None = None) -> np.ndarray:
    """s_t = value[t - 1] / eta for t = 1..steps (float64)."""
    library = library or packaged_schedules()
    values = library.get(ref.name).resolve(ref.variant).evaluate(ref.hyper, steps)
    if values.defined < steps:
        raise SpecError(f"schedule {ref.name!r}", f"undefined from index {values.defined} on, but the case runs {steps} steps")
    return values.lr / ref.hyper["lr"]


# --------------------------------------------------------------------------- golden vectors


@dataclass(frozen=True)
class ScheduleTest:
    tc_id: int
    name: str
    case: str
    comment: str
    flags: tuple[str, ...]
    variant: Mapping[str, str]
    hyper: Mapping[str, float]
    count: int
    #: expected[output] has one value per defined index
    expected: Mapping[str, np.ndarray]
    #: atol[profile][output] has one budget per defined index
    atol: Mapping[str, Mapping[str, np.ndarray]]

    @property
    def defined(self) -> int:
        return int(self.expected["lr"].shape[0])

    @property
    def defined_until(self) -> int | None:
        """The first undefined index (an implementation must refuse it), or None."""
        return self.defined if self.defined < self.count else None


@dataclass(frozen=True)
class ScheduleGoldenFile:
    schedule: str
    spec_sha256: str
    tests: tuple[ScheduleTest, ...]
    path: str

    def find(self, case: str, variant: Mapping[str, str]) -> ScheduleTest | None:
        for test in self.tests:
            if test.case == case and dict(test.variant) == dict(variant):
                return test
        return None


def _as_trajectory(values: ScheduleValues) -> Trajectory:
    out: Trajectory = {}
    for n in range(values.defined):
        slots = {"lr": np.array(values.lr[n])}
        if values.momentum is not None:
            slots["momentum"] = np.array(values.momentum[n])
        out[n + 1] = [slots]
    return out


def generate_schedule(spec: ScheduleSpec) -> ScheduleGoldenFile:
    """Every golden combo x case in float64, with error-model budgets from float32 evaluations.

    The budget of index n is :func:`optspec.tolerance.sequence_budgets` applied to the
    sequence as a trajectory of one scalar (step n + 1): K times the running maximum of each
    profile's deviation from the longdouble evaluation (or FLOOR ulps of the running
    maximum value).
    """
    from optspec.golden import test_name

    tests: list[ScheduleTest] = []
    for variant in spec.golden_combos():
        resolved = spec.resolve(variant)
        non_default = any(spec.knobs[k].default != v for k, v in variant.items())
        for case in spec.cases:
            hyper = spec.hyper_values(case.hyper)
            count = 2 * resolved.horizon(hyper) + 1
            ref64 = resolved.evaluate(hyper, count, FLOAT64)
            ref32 = resolved.evaluate(hyper, count, FLOAT32)
            ref32s = resolved.evaluate(hyper, count, FLOAT32_SCALAR32)
            name = test_name(spec, variant, case.id)
            if not np.all(np.isfinite(ref64.lr)) or (ref64.momentum is not None and not np.all(np.isfinite(ref64.momentum))):
                raise GoldenError(f"{spec.path}: case {name}: the float64 schedule is not finite")
            if ref64.defined == 0:
                raise GoldenError(f"{spec.path}: case {name}: the schedule is undefined at index 0")
            steps = range(1, ref64.defined + 1)
            exact = resolved.evaluate(hyper, count, EXTENDED)
            lower = {"float64": ref64, "float32": ref32, "float32_scalar32": ref32s}
            per_step = sequence_budgets({p: _as_trajectory(v) for p, v in lower.items()}, _as_trajectory(exact), steps)
            outputs = ["lr"] + (["momentum"] if ref64.momentum is not None else [])
            atol = {
                profile: {out: np.array([per_step[profile][s][0][out] for s in steps]) for out in outputs} for profile in PROFILES
            }
            for profile, per_output in atol.items():
                for out, values in per_output.items():
                    if not np.all(np.isfinite(values)):
                        raise GoldenError(f"{spec.path}: case {name}: the {profile} budget of {out} is not finite")
            expected = {"lr": ref64.lr}
            if ref64.momentum is not None:
                expected["momentum"] = ref64.momentum
            flags = [*case.flags, "PastEnd"]
            if non_default:
                flags.append("NonDefaultVariant")
            tests.append(
                ScheduleTest(len(tests) + 1, name, case.id, case.comment, tuple(flags), variant, hyper, count, expected, atol)
            )
    return ScheduleGoldenFile(spec.name, spec.sha256, tuple(tests), f"conformance/golden/schedules/{spec.name}.json")


def schedule_document(golden: ScheduleGoldenFile, spec: ScheduleSpec) -> dict[str, Any]:
    from optspec.golden import content_hash, encode_array

    groups: dict[str, dict[str, Any]] = {}
    for test in golden.tests:
        key = json.dumps([test.variant, test.hyper], sort_keys=True)
        group = groups.setdefault(key, {"variant": dict(test.variant), "hyper": dict(test.hyper), "tests": []})
        group["tests"].append(
            {
                "tcId": test.tc_id,
                "name": test.name,
                "case": test.case,
                "comment": test.comment,
                "flags": list(test.flags),
                "count": test.count,
                "definedUntil": test.defined_until,
                "values": {out: encode_array(v) for out, v in test.expected.items()},
                "atol": {p: {out: [float(x) for x in v] for out, v in test.atol[p].items()} for p in PROFILES},
            }
        )
    doc: dict[str, Any] = {
        "format": SCHEDULE_FORMAT,
        "generator": {"name": "optspec", "version": __version__},
        "schedule": spec.name,
        "title": spec.title,
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "indexConvention": INDEX_CONVENTION,
        "errorModel": error_model_header("deterministic"),
        "notes": SCHEDULE_FLAG_NOTES,
        "numberOfTests": len(golden.tests),
        "testGroups": list(groups.values()),
    }
    doc["contentSha256"] = content_hash(doc)
    return doc


@cache
def _golden_schema() -> dict[str, Any]:
    return json.loads(resources.files("optspec.vectors").joinpath("schedules", "schedule-golden.schema.json").read_text())


def read_schedule_golden(path: str | Path, spec: ScheduleSpec | None = None, shown: str | None = None) -> ScheduleGoldenFile:
    """Load and verify a schedule golden file; every problem is a one-line GoldenError."""
    from optspec.golden import content_hash, decode_array, load_json, schema_error

    path = Path(path)
    shown = shown or str(path)
    doc = load_json(path, shown, "schedule golden file")
    error = schema_error(doc, _golden_schema(), shown, "schedule-golden.schema.json")
    if error is not None:
        raise error
    if doc["contentSha256"] != content_hash(doc):
        raise GoldenError(f"{shown}: content hash mismatch: the file was edited by hand or corrupted; regenerate it")
    if spec is not None and doc["spec"]["sha256"] != spec.sha256:
        raise GoldenError(f"{shown}: generated from another version of {spec.path}; regenerate it with `optspec golden`")
    tests = []
    for group in doc["testGroups"]:
        for item in group["tests"]:
            where = f"{shown}: test {quoted(item['name'])}"
            expected = {out: decode_array(a, f"{where} {out}") for out, a in item["values"].items()}
            defined = expected["lr"].shape
            if len(defined) != 1:
                raise GoldenError(f"{where}: lr values must be a 1-d array, not shape {list(defined)[:8]}")
            atol = {p: {out: np.array(v, dtype=np.float64) for out, v in item["atol"][p].items()} for p in PROFILES}
            for out, values in expected.items():
                if values.shape != defined or any(atol[p].get(out, np.empty(0)).shape != defined for p in PROFILES):
                    raise GoldenError(f"{where}: {out} values and budgets must have one entry per defined index")
            for p in PROFILES:
                if set(atol[p]) != set(expected):
                    raise GoldenError(f"{where}: the {p} budgets cover {sorted(atol[p])}, the values {sorted(expected)}")
            until = item["definedUntil"]
            if (until is None and defined[0] != item["count"]) or (until is not None and until != defined[0]):
                raise GoldenError(f"{where}: definedUntil={until} disagrees with {defined[0]} values of {item['count']}")
            tests.append(
                ScheduleTest(
                    int(item["tcId"]), item["name"], item["case"], item["comment"], tuple(item["flags"]),
                    dict(group["variant"]), {k: float(v) for k, v in group["hyper"].items()},
                    int(item["count"]), expected, atol,
                )
            )  # fmt: skip
    return ScheduleGoldenFile(doc["schedule"], doc["spec"]["sha256"], tuple(tests), shown)


def schedule_golden_dir(golden_dir: Path) -> Path:
    return golden_dir / "schedules"


def write_schedules(specs: Iterable[ScheduleSpec], directory: Path) -> list[Path]:
    from optspec.golden import dumps, write_atomic

    written = []
    for spec in specs:
        path = directory / f"{spec.name}.json"
        write_atomic(path, dumps(schedule_document(generate_schedule(spec), spec)))
        written.append(path)
    return written


def check_schedules(specs: Iterable[ScheduleSpec], directory: Path) -> list[str]:
    """Regenerate in memory; one message per schedule golden file that differs."""
    from optspec.golden import dumps, load_json, schema_error

    problems = []
    for spec in specs:
        path = directory / f"{spec.name}.json"
        fresh = json.loads(dumps(schedule_document(generate_schedule(spec), spec)))
        try:
            stored = load_json(path, str(path), "schedule golden file")
        except GoldenError as exc:
            problems.append(str(exc))
            continue
        error = schema_error(stored, _golden_schema(), str(path), "schedule-golden.schema.json") if stored != fresh else None
        if error is not None:
            problems.append(f"{error}; run `optspec golden`")
        elif stored != fresh:
            names = [t["name"] for g in fresh["testGroups"] for t in g["tests"]]
            old = {t["name"]: t for g in stored.get("testGroups", []) for t in g.get("tests", [])}
            first = next(
                (n for n in names if old.get(n) != next(t for g in fresh["testGroups"] for t in g["tests"] if t["name"] == n)),
                None,
            )
            what = f"first differing test is {first!r}" if first else "a header field differs"
            problems.append(f"{path}: out of date: {what}; run `optspec golden`")
    return problems


# --------------------------------------------------------------------------- comparison


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
