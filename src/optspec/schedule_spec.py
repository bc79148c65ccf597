"""Learning-rate schedule specs: load, check and resolve a variant (the spec layer).

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
* ``state`` — ``"name = expr"`` scalars carried from one index to the next (a running best,
  a counter), initialised once from constants; ``next`` — ``"[label:] name = expr"`` equations
  evaluated in order after the phase at every index n: an assignment to a state name sets its
  value for index n + 1, any other target is a temporary. Lets, phases and ``defined`` read the
  state's values at index n (before that index's ``next``).
* ``[inputs.<name>]`` — a per-index input sequence ``{doc, default}`` (a loss, read by
  ReduceLROnPlateau); expressions read ``name`` as its value at index n, and a case may give its
  own sequence (``inputs = {name = [...]}``, at least 2T + 1 values). A schedule with inputs cannot
  drive a rule case (there is no loss to read).
* ``defined`` — optional condition on n; where it fails the schedule is undefined (torch's
  OneCycleLR raises past ``total_steps``) and an implementation must refuse to step.
* ``[variants.<knob>]`` — named conventions the libraries disagree on; a value may replace
  derived definitions and state initial values by name, ``let`` and ``next`` equations by label,
  phases by label, and ``defined``.
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

A schedule is one more kind of spec: it is read by the loader every spec goes through
(:func:`optspec.declarations.load_table`), declares hyperparameters and knobs like a rule
(:class:`~optspec.declarations.SpecDeclarations`), is evaluated by the float64 reference's
expression compiler (:mod:`optspec.schedule_reference`) and gets golden vectors from the golden
writer (:mod:`optspec.golden`, :mod:`optspec.schedule_golden`). This module imports only the
layers below it: :mod:`optspec.declarations`, :mod:`optspec.expr` and :mod:`optspec.errors`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from optspec.declarations import (
    Hyper,
    SpecDeclarations,
    SpecFiles,
    check_knob_default,
    load_table,
    packaged_schema,
    parse_hypers,
    read_spec_text,
    spec_hash,
    variant_label,
)
from optspec.errors import ExprError, SpecError, UsageError
from optspec.expr import REDUCTIONS, Call, Expr, names_in, parse_equation, parse_expr

#: The longest schedule horizon T (golden values cover 2T + 1 indices, evaluated in several precisions).
MAX_HORIZON = 1_000_000

INDEX_CONVENTION = (
    "values[n] is the learning rate in effect at optimizer step t = n + 1 (torch.optim.lr_scheduler "
    "evaluates last_epoch = 0 at construction and scheduler.step() follows optimizer.step(); optax's "
    "scale_by_schedule calls the schedule with count = t - 1 before incrementing it)"
)
OUTPUTS = ("lr", "momentum")
STANDARD_SCHEDULE_CASES: tuple[dict[str, object], ...] = (
    {"id": "defaults", "comment": "The spec's default hyperparameters.", "flags": ["Defaults"]},
)
#: Names every schedule expression may read besides its own.
CONSTANTS = {"pi": math.pi, "inf": math.inf}
#: Names the engine binds (the index n, the previous value prev): no hyperparameter may take them.
RESERVED = frozenset({"n", "prev", *CONSTANTS})


@dataclass(frozen=True)
class Let:
    """A per-index local ``[label:] target = expr``."""

    label: str | None
    target: str
    expr: Expr
    where: str


@dataclass(frozen=True)
class ScheduleInput:
    """A per-index input sequence (a loss) with its default values."""

    name: str
    doc: str
    default: tuple[float, ...]


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
    state: Mapping[str, tuple[Expr, str]] = field(default_factory=dict)
    next: Mapping[str, tuple[Let, ...]] = field(default_factory=dict)
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
    #: input name -> the sequence this case feeds (the spec's default where the case gives none)
    inputs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduleSpec(SpecDeclarations):
    """One learning-rate schedule as declared in its TOML file."""

    kind = "schedule"
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
    state: tuple[tuple[str, Expr], ...] = ()
    next: tuple[Let, ...] = ()
    inputs: Mapping[str, ScheduleInput] = field(default_factory=dict)

    def resolve(self, variant: Mapping[str, str] | None = None) -> ResolvedSchedule:
        """Apply a variant's edits and check the result statically."""
        full = self.full_variant(variant)
        derived = {name: (expr, text) for name, expr, text in self.derived}
        lets = list(self.let)
        phases = list(self.phases)
        defined = self.defined
        state = dict(self.state)
        nexts = list(self.next)
        for knob_name, value_name in full.items():
            value = self.knobs[knob_name].values[value_name]
            where = f"{self.where}, variant {knob_name}={value_name}"
            for name, item in value.derived.items():
                if name not in derived:
                    raise SpecError(where, f"derived name {name!r} is not declared (derived: {', '.join(derived) or 'none'})")
                derived[name] = item
            for name, (expr, _) in value.state.items():
                if name not in state:
                    raise SpecError(where, f"state {name!r} is not declared (state: {', '.join(state) or 'none'})")
                state[name] = expr
            for label, new in value.next.items():
                index = _find(nexts, label, lambda x: x.label, f"{where}, next.{label}")
                nexts[index : index + 1] = list(new)
            for label, new in value.let.items():
                index = _find(lets, label, lambda x: x.label, f"{where}, let.{label}")
                lets[index : index + 1] = list(new)
            for label, new_phases in value.phases.items():
                index = _find(phases, label, lambda x: x.label, f"{where}, phases.{label}")
                phases[index : index + 1] = list(new_phases)
            if value.defined is not None:
                defined = value.defined[0]
        resolved = ResolvedSchedule(
            self,
            full,
            tuple((n, e) for n, (e, _) in derived.items()),
            tuple(lets),
            tuple(phases),
            defined,
            tuple(state.items()),
            tuple(nexts),
        )
        resolved.check()
        return resolved

    def case(self, case_id: str) -> ScheduleCase:
        return super().case(case_id)  # type: ignore[no-any-return]


def _find(items: list[Any], label: str, key: Any, where: str) -> int:
    matches = [i for i, item in enumerate(items) if key(item) == label]
    if len(matches) != 1:
        raise SpecError(where, f"{len(matches)} items are labelled {label!r}; exactly one must be")
    return matches[0]


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with one value chosen for every knob."""

    spec: ScheduleSpec
    variant: Mapping[str, str]
    derived: tuple[tuple[str, Expr], ...]
    let: tuple[Let, ...]
    phases: tuple[Phase, ...]
    defined: Expr | None
    state: tuple[tuple[str, Expr], ...] = ()
    next: tuple[Let, ...] = ()

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
        for name, expr in self.state:
            _check_names(expr, consts, f"{where}, state {name!r}")
        per_index = consts | {"n"} | {name for name, _ in self.state} | set(self.spec.inputs)
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
        after = per_index | {"prev"}
        for item in self.next:
            _check_names(item.expr, after, item.where)
            if item.target in consts or item.target in self.spec.inputs or item.target in ("n", "prev"):
                raise SpecError(item.where, f"{item.target!r} is not a state name or a temporary; next cannot assign it")
            after.add(item.target)


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
    return packaged_schema("schedules", "schedule.schema.json")


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
    shown = display or str(path)
    return parse_schedule(read_spec_text(path, shown, "schedule spec"), shown)


def parse_schedule(text: str, shown: str) -> ScheduleSpec:
    """Parse and check a schedule spec: the shared loader, then every knob combination resolves."""
    table = load_table(text, shown, _schema(), "schedule")
    name = str(table["name"])
    where = f"{shown}: schedule {name!r}"
    hypers: dict[str, Hyper] = parse_hypers(table["hyper"], where, RESERVED)
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
                state={n: (_expr(e, f"{vwhere}, state {n!r}"), e) for n, e in v.get("state", {}).items()},
                next={lab: tuple(_let(e, f"{vwhere}, next.{lab}") for e in eqs) for lab, eqs in v.get("next", {}).items()},
            )
        for vname, value in values.items():
            if value.same_function_as is not None and value.same_function_as not in values:
                raise SpecError(
                    f"{where}, variant {kname}={vname}",
                    f"same_function_as names {value.same_function_as!r}, which is not a value of {kname!r}",
                )
        check_knob_default(k["default"], values, f"{where}, variant {kname!r}")
        knobs[kname] = ScheduleKnob(kname, str(k.get("doc", "")), k["default"], values)
    state = tuple(_derived(e, f"{where}, state") for e in table.get("state", []))
    inputs: dict[str, ScheduleInput] = {}
    for iname, item in table.get("inputs", {}).items():
        if iname in hypers or iname in RESERVED or iname in {s[0] for s in state}:
            raise SpecError(f"{where}, inputs.{iname}", f"{iname!r} is already a hyperparameter, state or reserved name")
        inputs[iname] = ScheduleInput(iname, str(item.get("doc", "")), tuple(float(x) for x in item["default"]))
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
        state=tuple((n, e) for n, e, _ in state),
        next=tuple(_let(e, f"{where}, next") for e in table.get("next", [])),
        inputs=inputs,
    )
    cases: list[ScheduleCase] = []
    for item in [*STANDARD_SCHEDULE_CASES, *table.get("cases", [])]:
        cwhere = f"{where}, case {item['id']!r}"
        if any(c.id == item["id"] for c in cases):
            raise SpecError(cwhere, "duplicate case id (defaults is added to every schedule)")
        spec.hyper_values(item.get("hyper", {}), cwhere)
        given = dict(item.get("inputs", {}))
        unknown = sorted(set(given) - set(inputs))
        if unknown:
            raise SpecError(cwhere, f"unknown input {unknown[0]!r} (inputs: {', '.join(inputs) or 'none'})")
        case_inputs = {n: tuple(float(x) for x in given.get(n, i.default)) for n, i in inputs.items()}
        cases.append(
            ScheduleCase(
                str(item["id"]), str(item["comment"]), tuple(item.get("flags", [])), dict(item.get("hyper", {})), case_inputs
            )
        )
    spec = ScheduleSpec(**{**spec.__dict__, "cases": tuple(cases)})
    spec.resolve_every_combination()
    return spec


class ScheduleLibrary(SpecFiles[ScheduleSpec]):
    """All schedule specs: the packaged ``specs/schedules`` plus any extra directories."""

    kind = "schedule"

    def __init__(self, extra_dirs: Iterable[str | Path] = (), include_packaged: bool = True) -> None:
        packaged = resources.files("optspec.specs").joinpath("schedules") if include_packaged else None
        super().__init__(packaged, "specs/schedules/", extra_dirs)

    def _load(self, name: str, path: Path, shown: str) -> ScheduleSpec:
        return load_schedule(path, shown)


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
    if spec.inputs:
        raise SpecError(
            where, f"schedule {spec.name!r} reads the input sequence {', '.join(spec.inputs)}; a rule case has none to give it"
        )
    if rule_lr <= 0:
        raise SpecError(where, "a scheduled case needs the rule's lr > 0 (the multiplier is value / lr)")
    hyper = spec.hyper_values({**dict(table.get("hyper", {})), "lr": rule_lr}, f"{where} (schedule {spec.name!r})")
    variant = spec.full_variant(dict(table.get("variant", {})), f"{where} (schedule {spec.name!r})")
    return ScheduleRef(spec.name, variant, hyper)
