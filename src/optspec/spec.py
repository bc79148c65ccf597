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
* the state slots (read the value left by the previous step, write the new one); a slot
  declared ``scope = "rule"`` is one scalar for the whole rule (Prodigy's d), carried across
  steps, and its equations may read only values that are the same for every tensor
  (hyperparameters, ``t``, ``lr``, rule-scope slots, ``sum_all(...)`` totals and locals made of them);
* locals, which live for one step and must be written before they are read.

``sum_all(x)`` is a reduction across every tensor of the step (see :mod:`optspec.expr`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

# Re-exported: the declarations and the loader every spec kind shares (optspec.declarations).
from optspec.declarations import (  # noqa: F401
    Domain,
    Hyper,
    SpecDeclarations,
    SpecFiles,
    as_float,
    check_identifier,
    check_knob_default,
    load_table,
    load_toml,
    packaged_schema,
    parse_decimal,
    parse_hypers,
    quoted,
    read_spec_text,
    shorten,
    spec_hash,
    variant_label,
)
from optspec.errors import ExprError, SpecError
from optspec.expr import (
    AXIS_REDUCTIONS,
    GLOBAL_REDUCTIONS,
    MATRIX_FUNCTIONS,
    REDUCTIONS,
    SCALAR_BINARY_FUNCTIONS,
    SHAPE_QUERIES,
    SHAPED_FUNCTIONS,
    Call,
    Equation,
    Expr,
    Name,
    Num,
    children,
    fold,
    names_in,
    parse_equation,
    parse_expr,
    rename_names,
    to_source,
    unroll,
    walk,
)
from optspec.schedule_spec import ScheduleRef, schedule_ref

Kind = Literal["tensor", "scalar"]
Scope = Literal["tensor", "rule"]

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


@dataclass(frozen=True)
class StateSlot:
    """A piece of optimizer state; ``init`` is None when the step writes it before reading."""

    name: str
    init: Expr | None
    init_text: str | None
    kind: Kind
    doc: str
    #: "tensor": one value (or tensor) per parameter tensor; "rule": one scalar for the whole rule
    scope: Scope = "tensor"


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
    #: the schedule spec driving the lr, or None
    schedule: ScheduleRef | None = None
    #: indices of tensors that start at exactly zero (zero-initialised biases; trust-ratio guards)
    zero_params: tuple[int, ...] = ()


@dataclass(frozen=True)
class Spec(SpecDeclarations):
    """One update rule as declared in its TOML file."""

    kind = "rule"
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
    #: where the golden cases' gradients come from: None for a fixed sequence, "quadratic" for
    #: g_t = h * (theta_{t-1} - c) + n_t, taken at the stored parameter (the table ``gradient``)
    gradient: str | None = None

    def resolve(self, variant: Mapping[str, str] | None = None) -> ResolvedRule:
        """Apply the variant's edits to the step and check the result."""
        full = self.full_variant(variant)
        return ResolvedRule(self, full, *_apply_variant(self, full))

    def case(self, case_id: str) -> CaseSpec:
        return super().case(case_id)  # type: ignore[no-any-return]


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

    @cached_property
    def rule_slots(self) -> tuple[str, ...]:
        """The state slots declared ``scope = "rule"``: one scalar for every tensor of a step."""
        return tuple(name for name, slot in self.state.items() if slot.scope == "rule")

    @cached_property
    def couples_tensors(self) -> bool:
        """Whether a step needs every tensor side by side: a ``sum_all`` or a rule-scope slot."""
        return bool(self.rule_slots) or any(
            isinstance(node, Call) and node.func in GLOBAL_REDUCTIONS
            for loc in self.equations
            for node in walk(loc.equation.expr)
        )


# --------------------------------------------------------------------------- loading


@cache
def _schema() -> dict[str, Any]:
    return packaged_schema("spec.schema.json")


def load_spec(path: str | Path, display: str | None = None, inner: Callable[[str], Spec] | None = None) -> Spec:
    """Read, validate and check one spec file; ``display`` is the path shown in errors."""
    shown = display or str(path)
    return parse_spec(read_spec_text(path, shown, "spec"), shown, inner)


def parse_spec(text: str, shown: str, inner: Callable[[str], Spec] | None = None) -> Spec:
    """Parse and check a spec; ``inner`` resolves the rules a composite spec (``[inner]``) names."""
    table = load_table(text, shown, _schema(), "rule")
    name = str(table["name"])
    rule_where = f"{shown}: rule {name!r}"
    hypers = parse_hypers(table["hyper"], rule_where, set(BUILTIN_NAMES) - {"lr"})

    state = {sname: _slot(sname, s, f"{rule_where}, state {sname!r}") for sname, s in table.get("state", {}).items()}
    step = tuple(
        _inner_placeholder(f"{rule_where}, step equation {i + 1}", "inner" in table)
        if eq.strip() == INNER_MARKER
        else _equation(eq, f"{rule_where}, step equation {i + 1}")
        for i, eq in enumerate(table["step"])
    )

    knobs: dict[str, Knob] = {}
    for kname, k in table.get("variants", {}).items():
        check_identifier(kname, f"{rule_where}, variant {kname!r}")
        values: dict[str, VariantValue] = {}
        for vname, v in k["values"].items():
            vwhere = f"{rule_where}, variant {kname}={vname}"
            check_identifier(vname, vwhere)
            edits = {
                kind: {
                    label: tuple(_equation(eq, f"{vwhere}, {kind}.{label} equation {i + 1}") for i, eq in enumerate(eqs))
                    for label, eqs in v.get(kind, {}).items()
                }
                for kind in ("replace", "before", "after")
            }
            slots = {sname: _slot(sname, s, f"{vwhere}, state {sname!r}") for sname, s in v.get("state", {}).items()}
            values[vname] = VariantValue(vname, v.get("doc", ""), edits["replace"], edits["before"], edits["after"], slots)
        check_knob_default(k["default"], values, f"{rule_where}, variant {kname!r}")
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
        gradient=str(table["gradient"]["loss"]) if "gradient" in table else None,
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
                slot.scope,
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


def _equation(text: str, where: str) -> Located:
    try:
        return Located(parse_equation(text), f"{where} {quoted(text.strip())}")
    except ExprError as exc:
        raise SpecError(f"{where} {quoted(text.strip())}", exc.message, exc.column) from None


def _slot(name: str, table: Mapping[str, object], where: str) -> StateSlot:
    check_identifier(name, where)
    if name in BUILTIN_NAMES:
        raise SpecError(where, f"state slot {name!r} shadows a built-in name")
    init_text = table.get("init")
    init = None
    if init_text is not None:
        try:
            init = parse_expr(str(init_text))
        except ExprError as exc:
            raise SpecError(f"{where} init {quoted(str(init_text))}", exc.message, exc.column) from None
    scope = str(table.get("scope", "tensor"))
    kind = table.get("kind", "scalar" if scope == "rule" else "tensor")
    if scope == "rule" and kind != "scalar":
        raise SpecError(where, 'a slot with scope = "rule" is one scalar for the whole rule; its kind must be "scalar"')
    return StateSlot(name, init, None if init_text is None else str(init_text), kind, str(table["doc"]), scope)  # type: ignore[arg-type]


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


def _case_schedule(table: Mapping[str, object], lr_text: object, hyper: Mapping[str, float], where: str) -> ScheduleRef | None:
    """A case's ``schedule = {name, variant, hyper}``: a schedule spec feeds s_t = value[t-1] / eta."""
    if "schedule" not in table:
        return None
    if lr_text is not None:
        raise SpecError(where, "a case takes either lr_multiplier or schedule, not both")
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
            _check_init_scope(spec, name, slot, state, label)

    # Values that are the same for every tensor of a step: what a rule-scope slot may be made of.
    uniform = set(spec.hyper) | UNIFORM_BUILTINS | {n for n, s_ in state.items() if s_.scope == "rule"}
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
        per_tensor = [n for n in _names_outside_sum_all(eq.expr) if n.id not in uniform]
        if target in state and state[target].scope == "rule" and per_tensor:
            raise SpecError(
                where,
                f"rule-scope slot {target!r} is one value for every tensor, but {per_tensor[0].id!r} differs from tensor "
                "to tensor; reduce it across tensors with sum_all()",
                per_tensor[0].column,
            )
        if target not in state and target != "theta":
            (uniform.discard if per_tensor else uniform.add)(target)
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
    _check_coupling(spec, equations, state, label)
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
            if node.func in GLOBAL_REDUCTIONS:
                inner = [n for n in walk(node.args[0]) if isinstance(n, Call) and n.func in GLOBAL_REDUCTIONS]
                if inner:
                    raise SpecError(
                        where, f"{node.func}() cannot be nested; write the inner total to a local first", inner[0].column
                    )
                return "scalar"
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


#: Built-in names that are the same for every tensor of a step.
UNIFORM_BUILTINS = frozenset({"t", "lr", "lr_multiplier", "global_grad_norm"})


def _names_outside_sum_all(expr: Expr) -> list[Name]:
    """The names an expression reads outside the arguments of sum_all() (inside, they are summed over tensors)."""
    out: list[Name] = []
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Name):
            out.append(node)
        elif not (isinstance(node, Call) and node.func in GLOBAL_REDUCTIONS):
            stack.extend(reversed(children(node)))
    return out


def _check_init_scope(spec: Spec, name: str, slot: StateSlot, state: Mapping[str, StateSlot], label: str) -> None:
    """sum_all() is not for initialisers; a rule-scope slot starts from hyperparameters and other rule-scope slots."""
    assert slot.init is not None
    where = f"{spec.where}{label}, state {name!r} init {quoted(str(slot.init_text))}"
    for node in walk(slot.init):
        if isinstance(node, Call) and node.func in GLOBAL_REDUCTIONS:
            raise SpecError(
                where, f"{node.func}() is a reduction across a step's tensors; it is not available in initialisers", node.column
            )
    if slot.scope == "rule":
        for node in names_in(slot.init):
            if node.id not in spec.hyper and not (node.id in state and state[node.id].scope == "rule"):
                raise SpecError(
                    where, f"a rule-scope slot starts from hyperparameters and rule-scope slots, not {node.id!r}", node.column
                )


def _check_coupling(spec: Spec, equations: Sequence[Located], state: Mapping[str, StateSlot], label: str) -> None:
    """Cross-tensor constructs and matrix constructs do not combine: the error model evaluates a rule
    with matrix constructs tensor by tensor (each value in its own shape), while sum_all() and
    rule-scope slots need every tensor of a step side by side."""
    coupled = [n for n, s_ in state.items() if s_.scope == "rule"]
    for loc in equations:
        for node in walk(loc.equation.expr):
            if isinstance(node, Call) and node.func in GLOBAL_REDUCTIONS:
                coupled.append(f"{node.func}()")
    if not coupled:
        return
    for loc in equations:
        for node in walk(loc.equation.expr):
            if isinstance(node, Call) and node.func in SHAPED_FUNCTIONS:
                raise SpecError(
                    f"{loc.where}{label}",
                    f"{node.func}() cannot be combined with {coupled[0]}: the error model runs a rule with matrix "
                    "constructs tensor by tensor, and a reduction across tensors needs them side by side",
                    node.column,
                )


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
    read: set[str] = set()
    for resolved in spec.resolve_every_combination():
        read |= resolved.reads
    for case in spec.cases:
        if case.lr_multiplier is not None:
            read.add("t")
    if spec.gradient is not None and "global_grad_norm" in read:
        raise SpecError(
            spec.where,
            "global_grad_norm is the norm of a fixed gradient sequence; a rule whose gradients are taken at the point "
            "(gradient.loss) cannot read it",
        )
    unused = [h for h in spec.hyper if h not in read]
    if unused:
        raise SpecError(spec.where, f"hyperparameter {unused[0]!r} is never used by any equation of any variant")


# --------------------------------------------------------------------------- library


class SpecLibrary(SpecFiles[Spec]):
    """All rule specs visible to optspec: the packaged ``specs/`` plus any extra directories.

    A composite spec loads its inner rules through the library; a composite naming itself
    (directly or not) is a SpecError.
    """

    kind = "rule"

    def __init__(self, extra_dirs: Iterable[str | Path] = (), include_packaged: bool = True) -> None:
        super().__init__(resources.files("optspec.specs") if include_packaged else None, "specs/", extra_dirs)
        self._loading: list[str] = []

    def _load(self, name: str, path: Path, shown: str) -> Spec:
        if name in self._loading:
            raise SpecError(shown, f"composite spec cycle: {' -> '.join([*self._loading, name])}")
        self._loading.append(name)
        try:
            return load_spec(path, shown, self.get)
        finally:
            self._loading.pop()
