"""Generic mutations of a resolved rule: the slips real implementations make, derived from the equations.

A :class:`Mutation` rewrites a :class:`~optspec.spec.ResolvedRule` (its equations' ASTs or its
state initialisers); nothing here knows any rule by name. :func:`mutations` finds, in one
resolved rule, every place where a mutation applies:

* ``drop_bias_correction`` — a factor ``1 - beta ** t`` replaced by 1 (the correction forgotten);
* ``bias_correction_early`` — ``t`` inside ``1 - beta ** t`` replaced by ``t + 1`` (the step
  counter advanced twice before its use). The other direction, ``t - 1``, is not searched: it
  makes the first step's correction 0 and the trajectory non-finite, and a non-finite value
  never compares within a budget, so it could never be named;
* ``init_one`` — a state slot initialised to 1 instead of 0;
* ``float32`` — the whole step computed in binary32 for binary64 parameters (judged against the
  reference under the float32 budget, see :attr:`Mutation.profile`);
* ``decay_constant`` — decoupled decay ``theta (1 - eta lambda)`` written ``theta - eta lambda``
  (the constant subtracted instead of the product with theta);
* ``decay_after_update`` — the decoupled decay applied after the step instead of before it;
* ``lr_into_buffer`` / ``lr_out_of_buffer`` — ``b = mu b + X; theta -= eta b`` against
  ``b = mu b + eta X; theta -= b`` (the learning rate moved into or out of a momentum buffer);
* ``shared_step_counter`` — one step counter shared by the tensors of a parameter group and
  advanced once per tensor per step: tensor i (0-based) of N at step s sees t = (s - 1) N + i + 1.
  It is applied per tensor (:attr:`Mutation.per_tensor`), with N and i inlined as literals.

Every mutation has a ``name`` (stable, for tests and JSON) and a one-sentence ``description``
used in the diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from optspec.expr import Binary, Call, Equation, Expr, Name, Num, Unary, names_in, to_source
from optspec.spec import Located, ResolvedRule, Spec

Rewrite = Callable[[ResolvedRule], ResolvedRule]


@dataclass(frozen=True)
class Mutation:
    """One rewrite of a resolved rule, with the words the diagnosis uses for it."""

    name: str
    description: str
    #: the rewrite; ``None`` for a mutation that changes the evaluation, not the equations
    rewrite: Rewrite | None = field(default=None, compare=False, repr=False)
    #: the precision profile the candidate is judged under instead of the observation's
    profile: str | None = None
    #: a rewrite that depends on the tensor: ``(rule, index, count) -> rule``
    per_tensor: Callable[[ResolvedRule, int, int], ResolvedRule] | None = field(default=None, compare=False, repr=False)

    def apply(self, rule: ResolvedRule, index: int = 0, count: int = 1) -> ResolvedRule:
        if self.per_tensor is not None:
            return self.per_tensor(rule, index, count)
        return self.rewrite(rule) if self.rewrite is not None else rule


@dataclass(frozen=True)
class MutatedSpec(Spec):
    """A spec whose resolved rules carry mutations (for :class:`~optspec.checking.expected.Expectations`).

    ``sha256`` is the base spec's hash extended by the mutation names, so that references of a
    mutant never share a cache entry with the unmutated rule.
    """

    applied: tuple[Mutation, ...] = ()
    tensor: tuple[int, int] = (0, 1)

    def resolve(self, variant: dict[str, str] | None = None) -> ResolvedRule:  # type: ignore[override]
        rule = Spec.resolve(self, variant)
        for mutation in self.applied:
            rule = mutation.apply(rule, *self.tensor)
        return rule


def mutated_spec(spec: Spec, applied: tuple[Mutation, ...], tensor: tuple[int, int] | None = None) -> Spec:
    """``spec`` with ``applied`` rewriting every resolved rule (``tensor``: index and count, for per-tensor ones)."""
    if not applied:
        return spec
    tag = "+".join(m.name for m in applied) + (f"@{tensor[0]}/{tensor[1]}" if tensor else "")
    fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__ if f not in ("applied", "tensor")}
    fields["sha256"] = f"{spec.sha256}+{tag}"
    return MutatedSpec(**fields, applied=applied, tensor=tensor or (0, 1))


# --------------------------------------------------------------------------- AST helpers


def _map(expr: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """A copy of ``expr``, top-down: ``fn(node)`` returns a replacement, or None to recurse into the node."""
    out = fn(expr)
    if out is not None:
        return out
    if isinstance(expr, Unary):
        return Unary(expr.op, _map(expr.operand, fn), expr.column)
    if isinstance(expr, Binary):
        return Binary(expr.op, _map(expr.left, fn), _map(expr.right, fn), expr.column)
    if isinstance(expr, Call):
        return Call(expr.func, tuple(_map(a, fn) for a in expr.args), expr.column)
    return expr


def _nodes(expr: Expr) -> list[Expr]:
    out = [expr]
    if isinstance(expr, Unary):
        out += _nodes(expr.operand)
    elif isinstance(expr, Binary):
        out += _nodes(expr.left) + _nodes(expr.right)
    elif isinstance(expr, Call):
        for arg in expr.args:
            out += _nodes(arg)
    return out


def _is_num(expr: Expr, value: float) -> bool:
    return isinstance(expr, Num) and expr.value == value


def _is_name(expr: Expr, name: str) -> bool:
    return isinstance(expr, Name) and expr.id == name


def _bias_correction_base(expr: Expr) -> str | None:
    """``beta`` (as source) when ``expr`` is ``1 - beta ** t``."""
    if isinstance(expr, Binary) and expr.op == "-" and _is_num(expr.left, 1.0):
        power = expr.right
        if isinstance(power, Binary) and power.op == "**" and _is_name(power.right, "t"):
            return to_source(power.left)
    return None


def _reads(expr: Expr, name: str) -> bool:
    return any(n.id == name for n in names_in(expr))


def _with_equations(rule: ResolvedRule, equations: list[Located]) -> ResolvedRule:
    return ResolvedRule(rule.spec, rule.variant, tuple(equations), rule.state, rule.kinds)


def _located(target: str, expr: Expr, label: str | None, where: str) -> Located:
    text = f"{target} = {to_source(expr)}"
    return Located(Equation(label, target, expr, text, len(target) + 4), f"{where} (mutated)")


def _rewrite_all(rule: ResolvedRule, fn: Callable[[Expr], Expr | None]) -> ResolvedRule:
    out = []
    for loc in rule.equations:
        eq = loc.equation
        new = _map(eq.expr, fn)
        out.append(loc if new == eq.expr else _located(eq.target, new, eq.label, loc.where))
    return _with_equations(rule, out)


# --------------------------------------------------------------------------- the mutations


def _bias_corrections(rule: ResolvedRule) -> list[Mutation]:
    bases: list[str] = []
    for loc in rule.equations:
        for node in _nodes(loc.equation.expr):
            base = _bias_correction_base(node)
            if base is not None and base not in bases:
                bases.append(base)
    out: list[Mutation] = []
    for base in bases:

        def drop(rule: ResolvedRule, base: str = base) -> ResolvedRule:
            return _rewrite_all(rule, lambda n: Num(1.0, 0) if _bias_correction_base(n) == base else None)

        def shift(delta: float, base: str = base) -> Rewrite:
            def rewrite(rule: ResolvedRule) -> ResolvedRule:
                def fn(node: Expr) -> Expr | None:
                    if _bias_correction_base(node) != base:
                        return None
                    assert isinstance(node, Binary) and isinstance(node.right, Binary)
                    t = Binary("+" if delta > 0 else "-", Name("t", 0), Num(abs(delta), 0), 0)
                    return Binary("-", node.left, Binary("**", node.right.left, t, 0), 0)

                return _rewrite_all(rule, fn)

            return rewrite

        out.append(Mutation(f"drop_bias_correction[{base}]", f"the bias correction 1 - {base}^t is missing (taken as 1)", drop))
        out.append(
            Mutation(
                f"bias_correction_early[{base}]",
                f"the bias correction is one step ahead, 1 - {base}^(t+1) (counter advanced twice)",
                shift(1.0),
            )
        )
    return out


def _init_ones(rule: ResolvedRule) -> list[Mutation]:
    out: list[Mutation] = []
    for name, slot in rule.state.items():
        if slot.init is None or not _is_num(slot.init, 0.0):
            continue

        def rewrite(rule: ResolvedRule, name: str = name) -> ResolvedRule:
            state = dict(rule.state)
            state[name] = replace(state[name], init=Num(1.0, 0), init_text="1")
            return ResolvedRule(rule.spec, rule.variant, rule.equations, state, rule.kinds)

        out.append(Mutation(f"init_one[{name}]", f"the state slot {name} starts at 1 instead of 0", rewrite))
    return out


def _decay_factor(expr: Expr) -> tuple[Expr, Expr] | None:
    """``(theta_expr, X)`` when ``expr`` is ``theta * (1 - X)`` with X reading lr (decoupled decay)."""
    if isinstance(expr, Binary) and expr.op == "*" and _is_name(expr.left, "theta"):
        factor = expr.right
        if isinstance(factor, Binary) and factor.op == "-" and _is_num(factor.left, 1.0) and _reads(factor.right, "lr"):
            return expr.left, factor.right
    return None


def _decoupled_decay(rule: ResolvedRule) -> list[Mutation]:
    out: list[Mutation] = []
    indices = [i for i, loc in enumerate(rule.equations) if _decay_factor(loc.equation.expr) is not None]
    if not indices:
        return out
    i = indices[0]
    loc = rule.equations[i]
    theta, amount = _decay_factor(loc.equation.expr)  # type: ignore[misc]

    def constant(rule: ResolvedRule) -> ResolvedRule:
        equations = list(rule.equations)
        equations[i] = _located(loc.equation.target, Binary("-", theta, amount, 0), loc.equation.label, loc.where)
        return _with_equations(rule, equations)

    out.append(
        Mutation(
            "decay_constant",
            f"the decoupled decay subtracts the constant {to_source(amount)} instead of {to_source(amount)} * theta",
            constant,
        )
    )
    later = [j for j, other in enumerate(rule.equations) if j > i and other.equation.target == "theta"]
    if loc.equation.target == "theta" and later:

        def after(rule: ResolvedRule) -> ResolvedRule:
            equations = list(rule.equations)
            moved = equations.pop(i)
            equations.insert(later[-1], moved)  # index shifts by one after the pop: lands after the last update
            return _with_equations(rule, equations)

        out.append(Mutation("decay_after_update", "the decoupled decay is applied after the update instead of before it", after))
    return out


def _strip_factor(expr: Expr, name: str) -> Expr | None:
    """``expr`` without one multiplicative factor ``name`` (None when it is not a product with it)."""
    if isinstance(expr, Binary) and expr.op == "*":
        if _is_name(expr.left, name):
            return expr.right
        if _is_name(expr.right, name):
            return expr.left
        left = _strip_factor(expr.left, name)
        if left is not None:
            return Binary("*", left, expr.right, expr.column)
    if isinstance(expr, Binary) and expr.op == "/":
        left = _strip_factor(expr.left, name)
        if left is not None:
            return Binary("/", left, expr.right, expr.column)
    return None


def _buffer_terms(expr: Expr, slot: str) -> tuple[Expr, Expr] | None:
    """``(carry, increment)`` when ``expr`` is ``c * slot + increment`` (the carry reads the slot, the increment does not)."""
    if isinstance(expr, Binary) and expr.op == "+":
        if _reads(expr.left, slot) and not _reads(expr.right, slot):
            return expr.left, expr.right
    return None


@dataclass(frozen=True)
class _Buffer:
    """``b = carry + increment`` at ``bi`` and ``theta = base - step`` at ``ti``, where ``step`` reads the slot ``b``."""

    slot: str
    bi: int
    ti: int
    carry: Expr
    increment: Expr
    base: Expr
    step: Expr


def _find_buffer(rule: ResolvedRule) -> _Buffer | None:
    equations = rule.equations
    for ti, loc in enumerate(equations):
        eq = loc.equation
        if eq.target != "theta" or not (isinstance(eq.expr, Binary) and eq.expr.op == "-"):
            continue
        step = eq.expr.right
        slot = next((n for n in rule.state if rule.state[n].kind == "tensor" and _reads(step, n)), None)
        bi = next((j for j in range(ti) if equations[j].equation.target == slot), None)
        if slot is None or bi is None:
            continue
        terms = _buffer_terms(equations[bi].equation.expr, slot)
        if terms is not None:
            return _Buffer(slot, bi, ti, terms[0], terms[1], eq.expr.left, step)
    return None


def _momentum_lr(rule: ResolvedRule) -> list[Mutation]:
    found = _find_buffer(rule)
    if found is None:
        return []
    buf = found
    lr = Name("lr", 0)

    def edit(rule: ResolvedRule, new_b: Expr, new_theta: Expr) -> ResolvedRule:
        eqs = list(rule.equations)
        bloc, tloc = eqs[buf.bi], eqs[buf.ti]
        eqs[buf.bi] = _located(buf.slot, new_b, bloc.equation.label, bloc.where)
        eqs[buf.ti] = _located("theta", new_theta, tloc.equation.label, tloc.where)
        return _with_equations(rule, eqs)

    out: list[Mutation] = []
    outside = _strip_factor(buf.step, "lr")
    if outside is not None and _is_name(outside, buf.slot):
        new_b = Binary("+", buf.carry, Binary("*", lr, buf.increment, 0), 0)
        new_theta = Binary("-", buf.base, Name(buf.slot, 0), 0)
        out.append(
            Mutation(
                "lr_into_buffer",
                f"the learning rate is inside the momentum buffer ({buf.slot} = ... + lr * increment; theta -= {buf.slot})",
                lambda rule: edit(rule, new_b, new_theta),
            )
        )
    stripped = _strip_factor(buf.increment, "lr")
    if _is_name(buf.step, buf.slot) and stripped is not None:
        new_b2 = Binary("+", buf.carry, stripped, 0)
        new_theta2 = Binary("-", buf.base, Binary("*", lr, Name(buf.slot, 0), 0), 0)
        out.append(
            Mutation(
                "lr_out_of_buffer",
                f"the learning rate multiplies the momentum buffer at the update (theta -= lr * {buf.slot}), not its increment",
                lambda rule: edit(rule, new_b2, new_theta2),
            )
        )
    return out


def _shared_counter(rule: ResolvedRule) -> list[Mutation]:
    if "t" not in rule.reads:
        return []

    def per_tensor(rule: ResolvedRule, index: int, count: int) -> ResolvedRule:
        # t -> (t - 1) * N + (i + 1)
        before = Binary("*", Binary("-", Name("t", 0), Num(1.0, 0), 0), Num(float(count), 0), 0)
        shared = Binary("+", before, Num(index + 1.0, 0), 0)
        return _rewrite_all(rule, lambda n: shared if _is_name(n, "t") else None)

    return [
        Mutation(
            "shared_step_counter",
            "one step counter is shared by the parameter group and advanced once per tensor per step",
            per_tensor=per_tensor,
        )
    ]


FLOAT32_MUTATION = Mutation(
    "float32", "computes in float32: the whole step is evaluated in binary32 for float64 parameters", profile="float32"
)


def mutations(rule: ResolvedRule) -> list[Mutation]:
    """Every generic mutation that applies to ``rule``, most common slips first."""
    found = [
        *_bias_corrections(rule),
        *_init_ones(rule),
        *_decoupled_decay(rule),
        *_momentum_lr(rule),
        *_shared_counter(rule),
    ]
    return [*found, FLOAT32_MUTATION]


def by_name(rule: ResolvedRule, name: str) -> Mutation:
    """The mutation called ``name`` for ``rule`` (KeyError naming the ones that apply)."""
    for mutation in mutations(rule):
        if mutation.name == name:
            return mutation
    raise KeyError(f"no mutation {name!r} applies to {rule.name} (applicable: {', '.join(m.name for m in mutations(rule))})")


__all__ = ["FLOAT32_MUTATION", "MutatedSpec", "Mutation", "by_name", "mutated_spec", "mutations"]
