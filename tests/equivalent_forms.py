"""Algebraically equivalent rewrites of spec expressions, for the error model's property test.

Each rewrite maps an expression node to another that is equal in exact arithmetic but
rounds differently in floating point, the way another library writes the same rule:

==================  ====================================================================
``reassociate``     (a + b) + c -> a + (b + c), (a + b) - c -> a + (b - c),
                    (a * b) * c -> a * (b * c), (a * b) / c -> a * (b / c)
``distribute``      a * (b + c) -> a * b + a * c (and -, and (b + c) * a):
                    theta (1 - eta lambda) -> theta - theta eta lambda, lr and decay spread
``factor``          a * b + a * c -> a * (b + c) (the converse)
``fold_division``   (a / b) / c -> a / (b * c):  (m / bc1) / d -> m / (bc1 d)
``split_division``  a / (b * c) -> (a / b) / c
``reciprocal``      a / b -> a * (1 / b)
``lerp``            p * x + (1 - p) * y -> x + (1 - p) * (y - x)   (torch's lerp_)
``unlerp``          x + q * (y - x) -> (1 - q) * x + q * y
==================  ====================================================================

Comparisons and ``where`` conditions are left as written: a rewrite inside a threshold test
changes which branch a borderline value takes, which is a different rule, not a different
rounding. ``distribute`` does not split a difference of two constants that cancel
(``(1 - beta2) * g -> g - beta2 * g`` loses three digits for beta2 = 0.999: that is a
worse-conditioned algorithm, not the same one evaluated in another order); whether they
cancel is decided from the case's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from optspec.expr import Binary, Call, Expr, Name, Num, Unary
from optspec.spec import Located, ResolvedRule

Rewrite = Callable[[Expr, "Values"], Expr | None]
#: the values of hyperparameters, t and lr: what decides whether constants cancel
Values = dict[str, float]
COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})


def _bin(op: str, left: Expr, right: Expr) -> Binary:
    return Binary(op, left, right, 0)


def _one() -> Num:
    return Num(1.0, 0)


def reassociate(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and isinstance(e.left, Binary):
        inner = e.left
        if e.op in "+-" and inner.op == "+":
            return _bin("+", inner.left, _bin(e.op, inner.right, e.right))
        if e.op in "*/" and inner.op == "*":
            return _bin("*", inner.left, _bin(e.op, inner.right, e.right))
    return None


def distribute(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and e.op == "*":
        if isinstance(e.right, Binary) and e.right.op in "+-" and not _cancels(e.right, values):
            return _bin(e.right.op, _bin("*", e.left, e.right.left), _bin("*", e.left, e.right.right))
        if isinstance(e.left, Binary) and e.left.op in "+-" and not _cancels(e.left, values):
            return _bin(e.left.op, _bin("*", e.left.left, e.right), _bin("*", e.left.right, e.right))
    return None


def _cancels(e: Binary, values: Values) -> bool:
    """Whether ``a +- b`` of two constants loses more than one bit to cancellation."""
    a, b = _value(e.left, values), _value(e.right, values)
    if a is None or b is None:
        return False
    result = a + b if e.op == "+" else a - b
    return abs(result) < 0.5 * max(abs(a), abs(b))


def _value(e: Expr, values: Values) -> float | None:
    """The value of an expression of hyperparameters, t and lr; None if it reads anything else."""
    try:
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Name):
            return values.get(e.id)
        if isinstance(e, Unary):
            inner = _value(e.operand, values)
            return None if inner is None else (-inner if e.op == "-" else inner)
        if (isinstance(e, Binary) and e.op in "+-*/") or (isinstance(e, Binary) and e.op == "**"):
            a, b = _value(e.left, values), _value(e.right, values)
            if a is None or b is None:
                return None
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None, "**": a**b}[e.op]
    except (OverflowError, ZeroDivisionError, ValueError):
        return None
    return None


def factor(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and e.op in "+-" and isinstance(e.left, Binary) and isinstance(e.right, Binary):
        a, b = e.left, e.right
        if a.op == "*" and b.op == "*" and _same(a.left, b.left):
            return _bin("*", a.left, _bin(e.op, a.right, b.right))
    return None


def fold_division(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and e.op == "/" and isinstance(e.left, Binary) and e.left.op == "/":
        return _bin("/", e.left.left, _bin("*", e.left.right, e.right))
    return None


def split_division(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and e.op == "/" and isinstance(e.right, Binary) and e.right.op == "*":
        return _bin("/", _bin("/", e.left, e.right.left), e.right.right)
    return None


def reciprocal(e: Expr, values: Values) -> Expr | None:
    if isinstance(e, Binary) and e.op == "/" and not (isinstance(e.left, Num) and e.left.value == 1.0):
        return _bin("*", e.left, _bin("/", _one(), e.right))
    return None


def lerp(e: Expr, values: Values) -> Expr | None:
    """p * x + (1 - p) * y -> x + (1 - p) * (y - x)."""
    if isinstance(e, Binary) and e.op == "+" and isinstance(e.left, Binary) and isinstance(e.right, Binary):
        a, b = e.left, e.right
        if a.op == "*" and b.op == "*" and _is_one_minus(b.left, a.left):
            return _bin("+", a.right, _bin("*", b.left, _bin("-", b.right, a.right)))
    return None


def unlerp(e: Expr, values: Values) -> Expr | None:
    """x + q * (y - x) -> (1 - q) * x + q * y."""
    if isinstance(e, Binary) and e.op == "+" and isinstance(e.right, Binary) and e.right.op == "*":
        q, diff = e.right.left, e.right.right
        if isinstance(diff, Binary) and diff.op == "-" and _same(diff.right, e.left):
            return _bin("+", _bin("*", _bin("-", _one(), q), e.left), _bin("*", q, diff.left))
    return None


REWRITES: dict[str, Rewrite] = {
    "reassociate": reassociate,
    "distribute": distribute,
    "factor": factor,
    "fold_division": fold_division,
    "split_division": split_division,
    "reciprocal": reciprocal,
    "lerp": lerp,
    "unlerp": unlerp,
}


def _is_one_minus(e: Expr, p: Expr) -> bool:
    return isinstance(e, Binary) and e.op == "-" and isinstance(e.left, Num) and e.left.value == 1.0 and _same(e.right, p)


def _same(a: Expr, b: Expr) -> bool:
    """Structural equality, ignoring columns."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Num):
        return a.value == b.value  # type: ignore[union-attr]
    if isinstance(a, Name):
        return a.id == b.id  # type: ignore[union-attr]
    if isinstance(a, Unary):
        return a.op == b.op and _same(a.operand, b.operand)  # type: ignore[union-attr]
    if isinstance(a, Binary):
        return a.op == b.op and _same(a.left, b.left) and _same(a.right, b.right)  # type: ignore[union-attr]
    assert isinstance(a, Call) and isinstance(b, Call)
    return a.func == b.func and len(a.args) == len(b.args) and all(_same(x, y) for x, y in zip(a.args, b.args))


def sites(e: Expr, name: str, values: Values, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths of the nodes where rewrite ``name`` applies (never inside a comparison)."""
    out = [path] if REWRITES[name](e, values) is not None else []
    for index, child in _children(e):
        out += sites(child, name, values, (*path, index))
    return out


def _children(e: Expr) -> list[tuple[int, Expr]]:
    if isinstance(e, Unary):
        return [(0, e.operand)]
    if isinstance(e, Binary):
        return [] if e.op in COMPARISONS else [(0, e.left), (1, e.right)]
    if isinstance(e, Call):
        # where(c, a, b): rewrite the branches, never the condition
        return [(i, a) for i, a in enumerate(e.args) if not (e.func == "where" and i == 0)]
    return []


def apply_at(e: Expr, path: tuple[int, ...], name: str, values: Values) -> Expr | None:
    """``e`` with rewrite ``name`` applied at ``path``; None where it does not apply there."""
    if not path:
        return REWRITES[name](e, values)
    children = dict(_children(e))
    if path[0] not in children:
        return None
    inner = apply_at(children[path[0]], path[1:], name, values)
    if inner is None:
        return None
    if isinstance(e, Unary):
        return replace(e, operand=inner)
    if isinstance(e, Binary):
        return replace(e, left=inner) if path[0] == 0 else replace(e, right=inner)
    assert isinstance(e, Call)
    args = list(e.args)
    args[path[0]] = inner
    return replace(e, args=tuple(args))


def rewrite_everywhere(e: Expr, name: str, values: Values) -> Expr:
    """Apply ``name`` at every site where it applies, innermost first (an inner rewrite leaves
    the paths of the nodes above it valid; a node that no longer matches is left alone)."""
    for path in sorted(sites(e, name, values), key=len, reverse=True):
        rewritten = apply_at(e, path, name, values)
        if rewritten is not None:
            e = rewritten
    return e


def case_values(hyper: dict[str, float] | Any) -> Values:
    """Values that decide cancellation: the hyperparameters, t = 1 and lr at its base value."""
    return {**{k: float(v) for k, v in hyper.items()}, "t": 1.0, "lr_multiplier": 1.0}


def with_equations(rule: ResolvedRule, transform: Callable[[int, Expr], Expr]) -> ResolvedRule:
    """The rule with every step equation's expression replaced by ``transform(index, expr)``."""
    equations = tuple(
        Located(replace(loc.equation, expr=transform(i, loc.equation.expr)), loc.where) for i, loc in enumerate(rule.equations)
    )
    return replace(rule, equations=equations)
