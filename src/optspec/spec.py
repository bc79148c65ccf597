"""Update-rule specs: load a TOML file, check it, and resolve a variant into equations.

A spec (``specs/<rule>.toml``) declares hyperparameters with defaults and domains, state
slots with their initialisation, the step as ordered equations, named variants (knobs
whose values replace equations or insert new ones around a labelled equation) and the
golden cases. The format is documented in ``specs/README.md`` and checked structurally by
``specs/spec.schema.json``; this module adds the semantic checks and reports every
problem as a :class:`~optspec.errors.SpecError` that names the file, the rule, the
equation and the column.

Names available to every equation:

* ``theta`` — the parameter (read and written), ``grad`` — its gradient g_t (read only);
* every hyperparameter (read only), except that ``lr`` denotes the learning rate in
  effect at step t, eta_t = eta * s_t, where eta is the hyperparameter ``lr``;
* ``t`` — the 1-based step count, ``lr_multiplier`` — the schedule multiplier s_t;
* ``global_grad_norm`` — sqrt(sum over every tensor of sum(g^2)) at this step, the norm of
  all the case's gradients together (global gradient clipping); ``ndim`` — the number of
  dimensions of this tensor (0 for a scalar; per-tensor exclusions such as ndim > 1);
* the state slots (read the value left by the previous step, write the new one);
* locals, which live for one step and must be written before they are read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema

from optspec.errors import ExprError, SpecError
from optspec.expr import (
    AXIS_REDUCTIONS,
    MATRIX_FUNCTIONS,
    REDUCTIONS,
    SCALAR_BINARY_FUNCTIONS,
    SHAPE_QUERIES,
    Call,
    Equation,
    Expr,
    Name,
    Num,
    fold,
    names_in,
    parse_equation,
    parse_expr,
    rename_names,
    to_source,
    unroll,
)

Kind = Literal["tensor", "scalar"]

#: Names bound by the engine at every step, and their kinds.
BUILTIN_NAMES: dict[str, Kind] = {
    "theta": "tensor",
    "grad": "tensor",
    "t": "scalar",
    "lr": "scalar",
    "lr_multiplier": "scalar",
    "global_grad_norm": "scalar",
    "ndim": "scalar",
}
READ_ONLY_BUILTINS = frozenset({"grad", "t", "lr", "lr_multiplier", "global_grad_norm", "ndim"})

#: Cases every rule gets without declaring them.
STANDARD_CASES: tuple[dict[str, object], ...] = (
    {
        "id": "defaults",
        "comment": "The spec's default hyperparameters on the standard gradient stream.",
        "flags": ["Defaults"],
    },
    {
        "id": "zero_grad",
        "comment": "Default hyperparameters with every gradient exactly zero.",
        "flags": ["ZeroGradient"],
        "grads": "zero",
    },
)
DEFAULT_STEPS = 100
#: The most steps a case may ask for: the inputs and the float64 trajectory of every step are
#: kept in memory (a few kB per step), and golden generation runs every case several times.
MAX_STEPS = 10_000

#: ASCII decimal numbers only: ``\d`` would also accept other scripts' digits.
_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DOMAIN = re.compile(
    rf"(?P<open>[\[(])\s*(?P<low>-?inf|{_DECIMAL})\s*,\s*(?P<high>[+-]?inf|{_DECIMAL})\s*(?P<close>[\])])", re.ASCII
)


def quoted(text: str, limit: int = 80) -> str:
    """``repr(text)``, shortened in the middle when longer than ``limit``: error lines stay short."""
    if len(text) <= limit:
        return repr(text)
    keep = limit // 2
    return f"{text[:keep]!r}...{text[-keep // 2 :]!r} ({len(text)} characters)"


def shorten(text: str, limit: int = 300) -> str:
    """``text`` on one line (newlines shown as ``\\n``), cut in the middle when longer than ``limit``."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...{text[-keep // 2 :]} ({len(text)} characters)"


def as_float(value: object, where: str) -> float:
    """A TOML number as binary64; an integer too large for binary64 is a SpecError, not an OverflowError."""
    try:
        result = float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        raise SpecError(where, f"{quoted(str(value))} is not a number binary64 can hold") from None
    if isinstance(value, int) and math.isfinite(result) and abs(result) > 2.0**53 and int(result) != value:
        raise SpecError(where, f"the integer {quoted(str(value))} is not exactly representable in binary64")
    return result


def parse_decimal(text: str) -> float:
    """A decimal literal as binary64; ValueError when it overflows or a nonzero value underflows to 0."""
    if not re.fullmatch(_DECIMAL, text, re.ASCII):
        raise ValueError(f"{text!r} is not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} overflows binary64; write inf for an unbounded end")
    mantissa = re.split(r"[eE]", text)[0]
    if value == 0 and any(c in "123456789" for c in mantissa):
        raise ValueError(f"the number {text} underflows to 0 in binary64")
    return value


@dataclass(frozen=True)
class Domain:
    """A real interval such as ``[0, 1)``; ``integer`` restricts it to whole numbers."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    integer: bool = False

    @classmethod
    def parse(cls, text: str, integer: bool = False, where: str = "domain") -> Domain:
        """``[low, high]`` with ``(`` / ``)`` for open ends; a bound is a decimal number or ``inf``.

        Anything else (``"[., inf)"``, ``"[0, 1e5e5]"``, a bound that underflows to 0 or
        overflows, ``low > high``) is a :class:`~optspec.errors.SpecError` at ``where``.
        """
        match = _DOMAIN.fullmatch(text.strip())
        if match is None:
            raise SpecError(where, f"{quoted(text)} is not an interval like '[0, 1)' or '(0, inf)'")
        bounds = []
        for part in ("low", "high"):
            bound = match.group(part)
            try:
                bounds.append(float(bound) if bound.lstrip("+-") == "inf" else parse_decimal(bound))
            except ValueError as exc:
                raise SpecError(where, f"{quoted(text)}: {exc}") from None
        low, high = bounds
        low_closed, high_closed = match.group("open") == "[", match.group("close") == "]"
        if low > high or (low == high and not (low_closed and high_closed)):
            raise SpecError(where, f"{quoted(text)} is an empty interval")
        return cls(low, high, low_closed, high_closed, integer)

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def bound(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x)

        text = f"{'[' if self.low_closed else '('}{bound(self.low)}, {bound(self.high)}{']' if self.high_closed else ')'}"
        return f"{text} (integers)" if self.integer else text


@dataclass(frozen=True)
class Hyper:
    name: str
    default: float
    domain: Domain
    doc: str


@dataclass(frozen=True)
class StateSlot:
    """A piece of optimizer state; ``init`` is None when the step writes it before reading."""

    name: str
    init: Expr | None
    init_text: str | None
    kind: Kind
    doc: str


@dataclass(frozen=True)
class Located:
    """An equation together with where it came from, for error messages."""

    equation: Equation
    where: str


@dataclass(frozen=True)
class VariantValue:
    name: str
    doc: str
    replace: Mapping[str, tuple[Located, ...]]
    before: Mapping[str, tuple[Located, ...]]
    after: Mapping[str, tuple[Located, ...]]
    state: Mapping[str, StateSlot]


@dataclass(frozen=True)
class Knob:
    name: str
    doc: str
    default: str
    values: Mapping[str, VariantValue]


@dataclass(frozen=True)
class CaseSpec:
    """A golden scenario: hyperparameters, gradient stream and learning-rate multiplier."""

    id: str
    comment: str
    flags: tuple[str, ...]
    hyper: Mapping[str, float]
    grads: str
    lr_multiplier: Expr | None
    lr_multiplier_text: str | None
    steps: int
    #: a schedule spec driving the lr (an optspec.schedules.ScheduleRef), or None
    schedule: object | None = None
    #: indices of tensors that start at exactly zero (zero-initialised biases; trust-ratio guards)
    zero_params: tuple[int, ...] = ()


class SpecDeclarations:
    """What every spec (an update rule or a schedule) declares: hyperparameters and variant knobs.

    Subclasses provide ``hyper`` (name -> :class:`Hyper`), ``knobs`` (name -> knob with
    ``default`` and ``values``), ``extra_combos`` and ``where`` (the spec's location for errors).
    """

    hyper: Mapping[str, Hyper]
    knobs: Mapping[str, Any]
    extra_combos: tuple[Mapping[str, str], ...]

    @property
    def where(self) -> str:
        raise NotImplementedError

    def default_variant(self) -> dict[str, str]:
        return {name: knob.default for name, knob in self.knobs.items()}

    def full_variant(self, partial: Mapping[str, str] | None = None, where: str | None = None) -> dict[str, str]:
        """The default variant with ``partial`` applied; unknown knobs or values are errors."""
        variant = self.default_variant()
        for knob_name, value in (partial or {}).items():
            if knob_name not in self.knobs:
                known = ", ".join(self.knobs) or "none"
                raise SpecError(where or self.where, f"unknown variant knob {knob_name!r} (knobs: {known})")
            values = self.knobs[knob_name].values
            if value not in values:
                raise SpecError(where or self.where, f"knob {knob_name!r} has no value {value!r} (values: {', '.join(values)})")
            variant[knob_name] = value
        return variant

    def all_combos(self) -> list[dict[str, str]]:
        """Every combination of knob values (the product over knobs)."""
        names = list(self.knobs)
        return [dict(zip(names, values)) for values in itertools.product(*(self.knobs[n].values for n in names))]

    def hyper_values(self, overrides: Mapping[str, float] | None = None, where: str | None = None) -> dict[str, float]:
        """Defaults with ``overrides``; unknown names and values outside the domain are errors."""
        values = {name: h.default for name, h in self.hyper.items()}
        for name, value in (overrides or {}).items():
            if name not in self.hyper:
                raise SpecError(where or self.where, f"unknown hyperparameter {name!r} (known: {', '.join(self.hyper)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(where or self.where, f"hyperparameter {name}={value!r} is not a number")
            domain = self.hyper[name].domain
            value = as_float(value, f"{where or self.where}, hyperparameter {name!r}")
            if not domain.contains(value):
                raise SpecError(where or self.where, f"hyperparameter {name}={value!r} is outside its domain {domain}")
            values[name] = float(value)
        return values

    def golden_combos(self) -> list[dict[str, str]]:
        """The default variant, each knob value with the others at default, and extras."""
        combos = [self.default_variant()]
        for knob in self.knobs.values():
            for value in knob.values:
                if value != knob.default:
                    combos.append(self.full_variant({knob.name: value}))
        for extra in self.extra_combos:
            full = self.full_variant(extra)
            if full not in combos:
                combos.append(full)
        return combos


@dataclass(frozen=True)
class Spec(SpecDeclarations):
    """One update rule as declared in its TOML file."""

    name: str
    title: str
    doc: str
    references: tuple[Mapping[str, object], ...]
    hyper: Mapping[str, Hyper]
    state: Mapping[str, StateSlot]
    step: tuple[Located, ...]
    knobs: Mapping[str, Knob]
    cases: tuple[CaseSpec, ...]
    extra_combos: tuple[Mapping[str, str], ...]
    path: str
    sha256: str
    #: the golden cases' tensor shapes, when the rule needs its own (Muon: matrices only);
    #: None for the standard five of :mod:`optspec.cases`
    shapes: tuple[tuple[int, ...], ...] | None = None

    @property
    def where(self) -> str:
        return f"{self.path}: rule {self.name!r}"

    def resolve(self, variant: Mapping[str, str] | None = None) -> ResolvedRule:
        """Apply the variant's edits to the step and check the result."""
        full = self.full_variant(variant)
        return ResolvedRule(self, full, *_apply_variant(self, full))

    def case(self, case_id: str) -> CaseSpec:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise SpecError(self.where, f"no case {case_id!r} (cases: {', '.join(c.id for c in self.cases)})")


@dataclass(frozen=True)
class ResolvedRule:
    """A spec with one value chosen for every knob: an ordered list of checked equations."""

    spec: Spec
    variant: Mapping[str, str]
    equations: tuple[Located, ...]
    state: Mapping[str, StateSlot]
    kinds: Mapping[str, Kind] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def variant_label(self) -> str:
        return variant_label(self.variant)

    @cached_property
    def reads(self) -> frozenset[str]:
        """Every name read by the step or by a state initialiser."""
        names = {n.id for loc in self.equations for n in names_in(loc.equation.expr)}
        names |= {n.id for slot in self.state.values() if slot.init is not None for n in names_in(slot.init)}
        return frozenset(names)

    @cached_property
    def writes(self) -> frozenset[str]:
        return frozenset(loc.equation.target for loc in self.equations)


def variant_label(variant: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "(no knobs)"


# --------------------------------------------------------------------------- loading


def _schema() -> dict[str, object]:
    return json.loads(resources.files("optspec.specs").joinpath("spec.schema.json").read_text())


def spec_hash(table: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of the parsed TOML: comments and layout do not count."""
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_spec(path: str | Path, display: str | None = None, inner: Callable[[str], Spec] | None = None) -> Spec:
    """Read, validate and check one spec file; ``display`` is the path shown in errors."""
    path = Path(path)
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(shown, f"cannot read the spec: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(shown, f"the spec is not UTF-8 text: {exc.reason}") from None
    return parse_spec(text, shown, inner)


class _BadFloat(Exception):
    def __init__(self, literal: str, message: str) -> None:
        super().__init__(message)
        self.literal = literal
        self.message = message


def _toml_float(literal: str) -> float:
    """tomllib's ``parse_float``: refuse literals that overflow or underflow to 0 instead of keeping inf or 0."""
    if literal.lstrip("+-") in ("inf", "nan"):
        return float(literal)
    try:
        return parse_decimal(literal.replace("_", ""))
    except ValueError as exc:
        raise _BadFloat(literal, str(exc)) from None


def load_toml(text: str, shown: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure (syntax, a number binary64 cannot hold, nesting) as one SpecError."""
    try:
        return tomllib.loads(text, parse_float=_toml_float)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(shown, f"not valid TOML: {exc}") from None
    except _BadFloat as exc:
        line = text[: text.find(exc.literal)].count("\n") + 1 if exc.literal in text else None
        raise SpecError(shown, f"line {line}: {exc.message}" if line else exc.message) from None
    except RecursionError:
        raise SpecError(shown, "not valid TOML: arrays or tables nested too deeply") from None


def parse_spec(text: str, shown: str, inner: Callable[[str], Spec] | None = None) -> Spec:
    """Parse and check a spec; ``inner`` resolves the rules a composite spec (``[inner]``) names."""
    table = load_toml(text, shown)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(table))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SpecError(shown, f"field {shorten(where, 120)}: {shorten(error.message, 200)}")
    name = str(table["name"])
    stem = Path(shown).stem
    if stem != name and not shown.startswith("<"):
        raise SpecError(shown, f"the rule is named {name!r} but the file is {Path(shown).name!r}; they must agree")
    rule_where = f"{shown}: rule {name!r}"

    hypers: dict[str, Hyper] = {}
    for hname, h in table["hyper"].items():
        _check_identifier(hname, f"{rule_where}, hyperparameter {hname!r}")
        if hname in BUILTIN_NAMES and hname != "lr":
            raise SpecError(rule_where, f"hyperparameter {hname!r} shadows a built-in name")
        domain = Domain.parse(h["domain"], bool(h.get("integer", False)), f"{rule_where}, hyperparameter {hname!r} domain")
        default = as_float(h["default"], f"{rule_where}, hyperparameter {hname!r} default")
        if not domain.contains(default):
            raise SpecError(rule_where, f"hyperparameter {hname!r}: default {h['default']!r} is outside its domain {domain}")
        hypers[hname] = Hyper(hname, default, domain, h["doc"])

    state = {sname: _slot(sname, s, f"{rule_where}, state {sname!r}") for sname, s in table.get("state", {}).items()}
    step = tuple(
        _inner_placeholder(f"{rule_where}, step equation {i + 1}", "inner" in table)
        if eq.strip() == INNER_MARKER
        else _equation(eq, f"{rule_where}, step equation {i + 1}")
        for i, eq in enumerate(table["step"])
    )

    knobs: dict[str, Knob] = {}
    for kname, k in table.get("variants", {}).items():
        _check_identifier(kname, f"{rule_where}, variant {kname!r}")
        values: dict[str, VariantValue] = {}
        for vname, v in k["values"].items():
            vwhere = f"{rule_where}, variant {kname}={vname}"
            _check_identifier(vname, vwhere)
            edits = {
                kind: {
                    label: tuple(_equation(eq, f"{vwhere}, {kind}.{label} equation {i + 1}") for i, eq in enumerate(eqs))
                    for label, eqs in v.get(kind, {}).items()
                }
                for kind in ("replace", "before", "after")
            }
            slots = {sname: _slot(sname, s, f"{vwhere}, state {sname!r}") for sname, s in v.get("state", {}).items()}
            values[vname] = VariantValue(vname, v.get("doc", ""), edits["replace"], edits["before"], edits["after"], slots)
        if k["default"] not in values:
            raise SpecError(
                f"{rule_where}, variant {kname!r}",
                f"default value {k['default']!r} is not one of its values ({', '.join(values)})",
            )
        knobs[kname] = Knob(kname, k.get("doc", ""), k["default"], values)

    sha256 = spec_hash(table)
    if "inner" in table:
        knob, inner_hypers, inner_hashes = _compose(table["inner"], rule_where, set(hypers) | set(state), inner)
        if knob.name in knobs:
            raise SpecError(rule_where, f"variant knob {knob.name!r} is reserved for the inner rule")
        knobs = {knob.name: knob, **knobs}
        hypers.update(inner_hypers)
        sha256 = spec_hash({"spec": table, "inner": inner_hashes})

    spec = Spec(
        name=name,
        title=table["title"],
        doc=table.get("doc", ""),
        references=tuple(table["references"]),
        hyper=hypers,
        state=state,
        step=step,
        knobs=knobs,
        cases=(),
        extra_combos=tuple(table.get("golden", {}).get("extra_combos", [])),
        path=shown,
        sha256=sha256,
        shapes=tuple(tuple(int(n) for n in shape) for shape in table["shapes"]) if "shapes" in table else None,
    )
    cases = _cases(spec, [*STANDARD_CASES, *table.get("cases", [])])
    spec = Spec(**{**spec.__dict__, "cases": cases})
    _check_whole(spec)
    return spec


# --------------------------------------------------------------------------- composition

#: A step entry that stands for the inner rule's whole step (composite specs only).
INNER_MARKER = "@inner"
INNER_KNOB = "inner"


def _inner_placeholder(where: str, composite: bool) -> Located:
    if not composite:
        raise SpecError(where, f"{INNER_MARKER!r} runs the inner rule, but the spec has no [inner] table")
    return Located(parse_equation(f"{INNER_KNOB}: theta = theta"), f"{where} {INNER_MARKER!r}")


def _compose(
    table: Mapping[str, object], where: str, outer_names: set[str], resolve: Callable[[str], Spec] | None
) -> tuple[Knob, dict[str, Hyper], dict[str, str]]:
    """The ``inner`` knob of a composite spec: one value per inner rule.

    The inner rule (at its default variant) is inlined where the step says ``@inner``: it
    updates ``theta`` (the fast weights) from ``grad`` with the composite's ``lr``, ``t`` and
    ``lr_multiplier``. Its other hyperparameters, its state slots and its locals are renamed
    ``<rule>_<name>`` so that rules compose without clashes (lookahead's ``adam_beta1``).
    """
    if resolve is None:
        raise SpecError(where, "a composite spec ([inner]) can only be loaded through a SpecLibrary")
    rules = [str(r) for r in table["rules"]]  # type: ignore[index, union-attr]
    default = str(table.get("default", rules[0]))  # type: ignore[union-attr]
    if default not in rules:
        raise SpecError(f"{where}, inner", f"default {default!r} is not one of the inner rules ({', '.join(rules)})")
    values: dict[str, VariantValue] = {}
    hypers: dict[str, Hyper] = {}
    hashes: dict[str, str] = {}
    for rule in rules:
        iwhere = f"{where}, inner rule {rule!r}"
        try:
            inner_spec = resolve(rule)
        except SpecError:
            raise
        except Exception as exc:  # UsageError for an unknown rule, RecursionError for a cycle
            raise SpecError(iwhere, str(exc)) from None
        if INNER_KNOB in inner_spec.knobs:
            raise SpecError(iwhere, "an inner rule cannot itself be composite")
        resolved = inner_spec.resolve()
        rename = {h: f"{rule}_{h}" for h in inner_spec.hyper if h != "lr"}
        rename.update({s_: f"{rule}_{s_}" for s_ in resolved.state})
        rename.update({loc.equation.target: f"{rule}_{loc.equation.target}" for loc in resolved.equations})
        rename.pop("theta", None)
        clash = sorted(set(rename.values()) & outer_names)
        if clash:
            raise SpecError(iwhere, f"the renamed inner name {clash[0]!r} clashes with a name of the composite spec")
        equations = tuple(
            Located(_renamed_equation(loc.equation, rename), f"{loc.where} (inlined from {inner_spec.path})")
            for loc in resolved.equations
        )
        slots = {
            rename[n]: StateSlot(
                rename[n],
                None if slot.init is None else rename_names(slot.init, rename),
                slot.init_text,
                slot.kind,
                slot.doc,
            )
            for n, slot in resolved.state.items()
        }
        values[rule] = VariantValue(
            rule, f"{inner_spec.title} ({variant_label(resolved.variant)})", {INNER_KNOB: equations}, {}, {}, slots
        )
        for h, hyper in inner_spec.hyper.items():
            # Only what the inner rule's default variant reads: a hyperparameter of one of its
            # other variants would be an unused hyperparameter of the composite.
            if h != "lr" and h in resolved.reads:
                hypers[rename[h]] = Hyper(rename[h], hyper.default, hyper.domain, f"{rule}: {hyper.doc}")
        hashes[rule] = inner_spec.sha256
    doc = str(table.get("doc", "The inner rule."))  # type: ignore[union-attr]
    return Knob(INNER_KNOB, doc, default, values), hypers, hashes


def _renamed_equation(eq: Equation, rename: Mapping[str, str]) -> Equation:
    target = rename.get(eq.target, eq.target)
    expr = rename_names(eq.expr, rename)
    text = f"{target} = {to_source(expr)}"
    return Equation(None, target, expr, text, len(target) + 4)


def _check_identifier(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
        raise SpecError(where, f"{name!r} is not a valid name (letters, digits, underscore)")


def _equation(text: str, where: str) -> Located:
    try:
        return Located(parse_equation(text), f"{where} {quoted(text.strip())}")
    except ExprError as exc:
        raise SpecError(f"{where} {quoted(text.strip())}", exc.message, exc.column) from None


def _slot(name: str, table: Mapping[str, object], where: str) -> StateSlot:
    _check_identifier(name, where)
    if name in BUILTIN_NAMES:
        raise SpecError(where, f"state slot {name!r} shadows a built-in name")
    init_text = table.get("init")
    init = None
    if init_text is not None:
        try:
            init = parse_expr(str(init_text))
        except ExprError as exc:
            raise SpecError(f"{where} init {quoted(str(init_text))}", exc.message, exc.column) from None
    return StateSlot(name, init, None if init_text is None else str(init_text), table.get("kind", "tensor"), str(table["doc"]))


def _cases(spec: Spec, tables: Iterable[Mapping[str, object]]) -> tuple[CaseSpec, ...]:
    cases: list[CaseSpec] = []
    seen: set[str] = set()
    for table in tables:
        case_id = str(table["id"])
        where = f"{spec.where}, case {case_id!r}"
        if case_id in seen:
            raise SpecError(where, "duplicate case id (defaults and zero_grad are added to every rule)")
        seen.add(case_id)
        hyper = spec.hyper_values(table.get("hyper", {}), where)
        lr_text = table.get("lr_multiplier")
        lr_expr = None
        if lr_text is not None:
            try:
                lr_expr = parse_expr(str(lr_text))
            except ExprError as exc:
                raise SpecError(f"{where} lr_multiplier {quoted(str(lr_text))}", exc.message, exc.column) from None
            for name in names_in(lr_expr):
                if name.id != "t":
                    raise SpecError(
                        f"{where} lr_multiplier {quoted(str(lr_text))}",
                        f"only 't' may be used here, not {name.id!r}",
                        name.column,
                    )
        cases.append(
            CaseSpec(
                id=case_id,
                comment=str(table["comment"]),
                flags=tuple(table.get("flags", [])),
                hyper={k: hyper[k] for k in table.get("hyper", {})},
                grads=str(table.get("grads", "standard")),
                lr_multiplier=lr_expr,
                lr_multiplier_text=None if lr_text is None else str(lr_text),
                steps=_steps(table, where),
                schedule=_case_schedule(table, lr_text, hyper, where),
                zero_params=tuple(int(i) for i in table.get("zero_params", [])),
            )
        )
    return tuple(cases)


def _steps(table: Mapping[str, object], where: str) -> int:
    steps = table.get("steps", DEFAULT_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise SpecError(where, f"field steps: {steps!r} must be a whole number from 1 to {MAX_STEPS}")
    return steps


def _case_schedule(table: Mapping[str, object], lr_text: object, hyper: Mapping[str, float], where: str) -> object | None:
    """A case's ``schedule = {name, variant, hyper}``: a schedule spec feeds s_t = value[t-1] / eta."""
    if "schedule" not in table:
        return None
    if lr_text is not None:
        raise SpecError(where, "a case takes either lr_multiplier or schedule, not both")
    from optspec.schedules import schedule_ref

    return schedule_ref(table["schedule"], hyper["lr"], f"{where} schedule")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- variants


def _apply_variant(spec: Spec, variant: Mapping[str, str]) -> tuple[tuple[Located, ...], dict[str, StateSlot], dict[str, Kind]]:
    equations = list(spec.step)
    state = dict(spec.state)
    for knob_name, value_name in variant.items():
        value = spec.knobs[knob_name].values[value_name]
        where = f"{spec.where}, variant {knob_name}={value_name}"
        for label, new in value.replace.items():
            index = _find_label(equations, label, f"{where}, replace.{label}")
            equations[index : index + 1] = list(new)
        for label, new in value.before.items():
            index = _find_label(equations, label, f"{where}, before.{label}")
            equations[index:index] = list(new)
        for label, new in value.after.items():
            index = _find_label(equations, label, f"{where}, after.{label}")
            equations[index + 1 : index + 1] = list(new)
        for slot_name, slot in value.state.items():
            if slot_name in state:
                raise SpecError(where, f"state slot {slot_name!r} is already declared")
            state[slot_name] = slot
    equations = _unroll_loops(equations)
    kinds = _check_resolved(spec, variant, equations, state)
    return tuple(equations), state, kinds


def _unroll_loops(equations: list[Located]) -> list[Located]:
    """Each ``repeat N:`` loop becomes its body N times; the copies carry no label."""
    out: list[Located] = []
    for loc in equations:
        if not loc.equation.repeat:
            out.append(loc)
            continue
        for iteration, eq in unroll(loc.equation):
            out.append(Located(eq, f"{loc.where}, iteration {iteration} {quoted(eq.text)}"))
    return out


def _find_label(equations: list[Located], label: str, where: str) -> int:
    matches = [i for i, loc in enumerate(equations) if loc.equation.label == label]
    if not matches:
        labels = ", ".join(loc.equation.label for loc in equations if loc.equation.label) or "none"
        raise SpecError(where, f"no equation is labelled {label!r} (labels: {labels})")
    if len(matches) > 1:
        raise SpecError(where, f"label {label!r} is used by {len(matches)} equations; labels must be unique")
    return matches[0]


def _check_resolved(
    spec: Spec, variant: Mapping[str, str], equations: list[Located], state: Mapping[str, StateSlot]
) -> dict[str, Kind]:
    """Static checks of one resolved step; returns the kind of every name after the step."""
    label = f" [variant {variant_label(variant)}]" if variant else ""
    base: dict[str, Kind] = {**{h: "scalar" for h in spec.hyper}, **BUILTIN_NAMES}
    for name in state:
        if name in spec.hyper:
            raise SpecError(f"{spec.where}, state {name!r}", "a state slot and a hyperparameter share this name")

    # State initialisers may read hyperparameters, theta and other slots' initial values.
    _check_init_cycles(spec, state, label)
    kinds: dict[str, Kind] = dict(base)
    init_kinds: dict[str, Kind] = {}
    for name, slot in state.items():
        kinds[name] = slot.kind
        if slot.init is not None:
            env = {**base, **{s: state[s].kind for s in state if state[s].init is not None}}
            env.pop("grad")
            for r in ("t", "lr", "lr_multiplier", "global_grad_norm"):
                env.pop(r)
            kind = _infer(slot.init, env, f"{spec.where}{label}, state {name!r} init {quoted(str(slot.init_text))}")
            if slot.kind == "scalar" and kind == "tensor":
                raise SpecError(f"{spec.where}, state {name!r}", "a scalar slot cannot be initialised from a tensor expression")
            init_kinds[name] = kind

    written: set[str] = set()
    assigned_somewhere = {loc.equation.target for loc in equations}
    labels: dict[str, str] = {}
    assigns_theta = False
    for loc in equations:
        eq = loc.equation
        where = f"{loc.where}{label}"
        if eq.label is not None:
            if eq.label in labels:
                raise SpecError(where, f"label {eq.label!r} is already used by {labels[eq.label]}")
            labels[eq.label] = loc.where
        available = {n: k for n, k in kinds.items() if n not in state or state[n].init is not None or n in written}
        try:
            kind = _infer(eq.expr, available, where, state=state, locals_written=assigned_somewhere)
        except _ReadBeforeWrite as exc:
            raise SpecError(where, exc.message, exc.column) from None
        target = eq.target
        if target in READ_ONLY_BUILTINS or target in spec.hyper:
            raise SpecError(where, f"{target!r} is read-only and cannot be assigned", 1)
        if target in state and state[target].kind == "scalar" and kind == "tensor":
            raise SpecError(
                where, f"state slot {target!r} is a per-tensor scalar; it cannot hold a tensor expression", eq.expr_column
            )
        if target == "theta":
            assigns_theta = True
        elif target not in state:
            kinds[target] = kind
        written.add(target)
    if not assigns_theta:
        raise SpecError(f"{spec.where}{label}", "the step never assigns theta")
    reads = {n.id for loc in equations for n in names_in(loc.equation.expr)}
    reads |= {n.id for s in state.values() if s.init is not None for n in names_in(s.init)}
    for name in state:
        if name not in reads:
            raise SpecError(f"{spec.where}, state {name!r}{label}", "unused state slot: no equation reads it")
        if name not in written:
            raise SpecError(f"{spec.where}, state {name!r}{label}", "the step never writes this state slot")
    return kinds


class _ReadBeforeWrite(Exception):
    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column


def _infer(
    expr: Expr,
    env: Mapping[str, Kind],
    where: str,
    state: Mapping[str, StateSlot] | None = None,
    locals_written: set[str] | None = None,
) -> Kind:
    """Kind of an expression ('tensor' if any operand is elementwise) with name checks.

    ``locals_written`` holds every name the step assigns somewhere, so that reading one too
    early is reported as read-before-write rather than as an unknown name. The walk is
    iterative (:func:`optspec.expr.fold`): a chain of thousands of terms is fine.
    """

    def leaf(node: Expr) -> Kind:
        if isinstance(node, Num):
            return "scalar"
        assert isinstance(node, Name)
        if node.id in env:
            return env[node.id]
        if state is not None and node.id in state:
            raise _ReadBeforeWrite(f"state slot {node.id!r} has no init and is read before the step writes it", node.column)
        if locals_written is not None and node.id in locals_written:
            raise _ReadBeforeWrite(f"local {node.id!r} is read before the step writes it", node.column)
        raise SpecError(where, f"unknown name {node.id!r}", node.column)

    def combine(node: Expr, kinds: list[Kind]) -> Kind:
        if isinstance(node, Call):
            if node.func in REDUCTIONS or node.func in SHAPE_QUERIES:
                return "scalar"
            if (node.func in MATRIX_FUNCTIONS or node.func in AXIS_REDUCTIONS) and "scalar" in kinds:
                raise SpecError(where, f"{node.func}() takes tensors, not per-tensor scalars", node.column)
            if node.func in SCALAR_BINARY_FUNCTIONS and "tensor" in kinds:
                raise SpecError(
                    where,
                    f"{node.func}() takes per-tensor scalars; use {'maximum' if node.func == 'max' else 'minimum'}() elementwise",
                    node.column,
                )
        return "tensor" if "tensor" in kinds else "scalar"

    return fold(expr, leaf, combine)


def _check_init_cycles(spec: Spec, state: Mapping[str, StateSlot], label: str) -> None:
    graph = {
        name: [n.id for n in names_in(slot.init) if n.id in state] if slot.init is not None else []
        for name, slot in state.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise SpecError(f"{spec.where}{label}, state {name!r} init", f"initialisation cycle: {cycle}")
        visiting.append(name)
        for dep in graph[name]:
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def _check_whole(spec: Spec) -> None:
    """Checks over every knob combination: each must resolve, and every hyperparameter is read."""
    combos = spec.all_combos()
    if len(combos) > 4096:
        raise SpecError(spec.where, f"{len(combos)} knob combinations; at most 4096 are supported")
    read: set[str] = set()
    for combo in combos:
        read |= spec.resolve(combo).reads
    for case in spec.cases:
        if case.lr_multiplier is not None:
            read.add("t")
    unused = [h for h in spec.hyper if h not in read]
    if unused:
        raise SpecError(spec.where, f"hyperparameter {unused[0]!r} is never used by any equation of any variant")
    for extra in spec.extra_combos:
        spec.full_variant(extra)


# --------------------------------------------------------------------------- library


class SpecLibrary:
    """All specs visible to optspec: the packaged ``specs/`` plus any extra directories."""

    def __init__(self, extra_dirs: Iterable[str | Path] = (), include_packaged: bool = True) -> None:
        self._paths: dict[str, tuple[Path, str]] = {}
        if include_packaged:
            root = resources.files("optspec.specs")
            for entry in sorted(root.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".toml"):
                    self._paths[entry.name[:-5]] = (Path(str(entry)), f"specs/{entry.name}")
        for directory in extra_dirs:
            for path in sorted(Path(directory).glob("*.toml")):
                self._paths[path.stem] = (path, str(path))
        self._cache: dict[str, Spec] = {}
        self._loading: list[str] = []

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def get(self, name: str) -> Spec:
        if name not in self._paths:
            from optspec.errors import UsageError

            raise UsageError(f"unknown rule {name!r} (known rules: {', '.join(self.names)})")
        if name not in self._cache:
            path, shown = self._paths[name]
            if name in self._loading:
                raise SpecError(shown, f"composite spec cycle: {' -> '.join([*self._loading, name])}")
            self._loading.append(name)
            try:
                self._cache[name] = load_spec(path, shown, self.get)
            finally:
                self._loading.pop()
        return self._cache[name]

    def all(self) -> list[Spec]:
        return [self.get(name) for name in self.names]
