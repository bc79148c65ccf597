"""Monte Carlo arithmetic: the spread of rounding over equivalent evaluations of a spec.

A single float32 evaluation of a rule is one draw of its rounding errors; another
implementation that evaluates the same algebra in another order makes another draw. The
error model (:mod:`optspec.tolerance`) therefore bounds the *spread* of those draws,
estimated the way Monte Carlo arithmetic does (D. Stott Parker, "Monte Carlo Arithmetic:
exploiting randomness in floating-point arithmetic", UCLA CSD-970002, 1997; Verificarlo,
Denis, de Oliveira Castro and Petit, ARITH 2016): every rounding site of the spec's
evaluation returns

    fl(x) = x (1 + u xi)                                                           (1)

computed in a *carrier* precision wider than the target's (binary64 for binary32 and
bfloat16 targets, the x87 80-bit ``numpy.longdouble`` for binary64 targets), where u is the
target's unit roundoff for that site and xi in [-1, 1]. An ensemble of such runs, side by
side on a leading array axis, gives for each step, tensor and slot the largest distance
from the unperturbed carrier run (member 0: the exact value to within the carrier's own
rounding).

Two kinds of members bound two behaviours of round-to-nearest:

* ``random`` members draw xi ~ U(-1, 1) afresh at every site, element and step: errors
  that are uncorrelated from step to step and grow like sqrt(n) u (stochastic rounding,
  Connolly, Higham and Mary, SIAM J. Sci. Comput. 43(1), 2021);
* ``systematic`` members draw one xi per site for the whole run wherever the rounded
  value is a per-tensor scalar or constant (a bias correction, theta's decay factor
  ``1 - eta lambda``, a hyperparameter rounded to binary32): round-to-nearest rounds a
  value that is the same at every step the same way at every step, so the error of
  ``theta (1 - eta lambda)`` against ``theta - eta lambda theta`` grows linearly in the
  step count. Tensor-valued sites still draw afresh (their operands change every step).

Rounding sites and their unit roundoff, per category of the value (see
:mod:`optspec.reference`): the result of ``+ - * / **``, ``sqrt exp log cos`` and of a
reduction (times ``1 + log2 n`` for a pairwise sum of n elements); and a value converted
to a higher category whose precision differs (a binary64 scalar meeting a binary32
tensor). Negation, ``abs sign floor min max maximum minimum``, comparisons and ``where``
are exact and are never perturbed. Inputs (parameters, gradients, hyperparameters) are
exact: golden inputs are binary32 values.

Matrix constructs (:data:`optspec.expr.SHAPED_FUNCTIONS`) need each tensor's shape, so a rule
that uses them is run tensor by tensor, values shaped (members, *shape) instead of side by side
on one flat axis (:class:`ShapedLayout`). Their sites: each element of ``matmul(a, b)`` is a dot
product of n terms, modelled as the textbook sequence of roundings (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., section 3.1): every product a_ik b_kj is one site
and every partial sum s_k = s_{k-1} + a_ik b_kj another, in the tensor format; a blocked, fused
or pairwise BLAS kernel rounds fewer times, so this ensemble spreads at least as far as theirs.
A product of two bfloat16 values is exact in binary32 and so is not perturbed, by the rule
above. ``row_mean`` and ``col_mean`` are reductions over n elements (one site of weight
1 + log2 n); ``transpose``, ``rows`` and ``cols`` are exact. ``round_bf16(x)`` is no random
site: every member's value is rounded to the nearest bfloat16 deterministically, as the
implementation does, so a member whose earlier roundings moved a value across a bfloat16
rounding boundary lands one bfloat16 ulp away from member 0, exactly as an implementation with
another accumulation order does. Every site inside round_bf16's argument rounds to a format
no wider than binary32 (torch's bfloat16 matmul, addmm and norm accumulate in binary32 even
when the parameters are binary64), so the float64 profile of a bfloat16 Newton-Schulz gets
the spread a binary32 accumulator causes.

A reduction across tensors, ``sum_all(x)``, needs every tensor of a step side by side, which the
flat layout has: each tensor's sum of a tensor-valued x is one site of weight 1 + log2 n_i in the
tensor format (as ``sum``), and the total over the T tensors one more, of weight 1 + log2 T, in
the scalar format (none for T = 1); the result is the same for every tensor, shape (members, 1).
A rule-scope slot is kept at that shape too. The spec layer refuses these constructs together
with matrix constructs (which the ensemble runs tensor by tensor).

A case whose gradients are taken at the point (a quadratic loss, :class:`optspec.reference.Quadratic`)
gives every member its gradient at its own parameter, h * (theta - c) + n_t, with the difference,
the product and the sum as tensor sites (:func:`point_gradient`): an error committed at one step
feeds back through the next gradient, and the spread includes it.

Each member of an ensemble may have its own unit roundoffs, so that one pass evaluates
several profiles (the torch-like ``float32`` and JAX-like ``float32_scalar32`` members
share a binary64 carrier). The ensemble is seeded: the same rule, case and seed give the
same spread bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optspec.expr import (
    AXIS_REDUCTIONS,
    GLOBAL_REDUCTIONS,
    REDUCTIONS,
    ROUNDING_FUNCTIONS,
    SHAPE_QUERIES,
    SHAPED_FUNCTIONS,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    Unary,
    walk,
)
from optspec.reference import (
    _BINARY,
    _ELEMENTWISE,
    SHAPE_QUERY_FUNCTIONS,
    SHAPED_TENSOR_FUNCTIONS,
    CaseInputs,
    _init_order,
    round_bf16,
)
from optspec.spec import ResolvedRule

#: Functions whose result is exact (no rounding site).
EXACT_FUNCTIONS = frozenset({"abs", "sign", "floor", "min", "max", "maximum", "minimum", "transpose"})
#: Binary operators that round (comparisons do not).
ROUNDING_OPERATORS = frozenset({"+", "-", "*", "/", "**"})

_RANK = {"const": 0, "scalar": 1, "tensor": 2}

Env = dict[str, Any]
Fn = Callable[[Env], Any]


#: Unit roundoff of each format a member can round to.
UNIT = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def numpy_format(name: str) -> Any:
    """The numpy scalar type of a format name (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name).type


@dataclass(frozen=True)
class MemberGroup:
    """``count`` ensemble members that round like one arithmetic profile.

    ``tensor``, ``scalar`` and ``const`` name the format (``float64``, ``float32``,
    ``bfloat16``, ``float16``) that values of each category are rounded to: tensors; per-tensor
    scalars that depend on the step (``t``, ``lr``, bias corrections, reductions); expressions
    of hyperparameters and literals alone. ``systematic`` selects the per-site constant xi for
    scalar and constant sites (see the module docstring).
    """

    profile: str
    count: int
    tensor: str
    scalar: str
    const: str
    systematic: bool


@dataclass(frozen=True)
class Ensemble:
    """Members side by side on axis 0 of every value; member 0 is unperturbed."""

    groups: tuple[MemberGroup, ...]
    carrier: type[np.floating[Any]]
    seed: int

    @property
    def size(self) -> int:
        return 1 + sum(g.count for g in self.groups)

    def rows(self, attribute: str) -> list[tuple[str, slice]]:
        """(format, member slice) for each run of consecutive members that round a category
        to the same format."""
        out: list[tuple[str, slice]] = []
        start = 1
        for group in self.groups:
            fmt = getattr(group, attribute)
            if out and out[-1][0] == fmt and out[-1][1].stop == start:
                out[-1] = (fmt, slice(out[-1][1].start, start + group.count))
            else:
                out.append((fmt, slice(start, start + group.count)))
            start += group.count
        return out

    def systematic_rows(self) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        start = 1
        for group in self.groups:
            mask[start : start + group.count] = group.systematic
            start += group.count
        return mask

    def slices(self) -> dict[str, list[slice]]:
        """Member index ranges of each profile."""
        out: dict[str, list[slice]] = {}
        start = 1
        for group in self.groups:
            out.setdefault(group.profile, []).append(slice(start, start + group.count))
            start += group.count
        return out


@dataclass(frozen=True)
class Layout:
    """Every tensor of a case side by side on one flat axis, so that one pass steps them all.

    A tensor-valued quantity has shape (members, E), E the total element count; a per-tensor
    scalar (a reduction, a scalar state slot) has shape (members, T) or (members, 1) when it is
    the same for every tensor; ``segment[e]`` is the tensor of element e.
    """

    shapes: tuple[tuple[int, ...], ...]
    offsets: np.ndarray  # (T + 1,)
    segment: np.ndarray  # (E,)

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, ...]]) -> Layout:
        sizes = np.array([math.prod(s) for s in shapes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return cls(tuple(tuple(s) for s in shapes), offsets, np.repeat(np.arange(len(shapes)), sizes))

    @property
    def count(self) -> int:
        return len(self.shapes)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def expand(self, x: Any) -> Any:
        """A per-tensor scalar (members, T) spread over the elements (members, E)."""
        if isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == self.count and self.count > 1:
            return x[:, self.segment]
        return x

    def reduce(self, func: str, x: np.ndarray) -> np.ndarray:
        """A per-tensor reduction of a (members, E) value: (members, T)."""
        sizes = self.sizes
        nonempty = sizes > 0
        starts = self.offsets[:-1][nonempty]
        out = np.zeros((x.shape[0], self.count), dtype=x.dtype)
        if x.shape[1] == 0 or not np.any(nonempty):
            if func == "mean":
                out[:] = np.nan
            return out
        if func == "norm":
            out[:, nonempty] = np.sqrt(np.add.reduceat(np.square(x), starts, axis=1))
        elif func == "sum":
            out[:, nonempty] = np.add.reduceat(x, starts, axis=1)
        elif func == "mean":
            out[:, nonempty] = np.add.reduceat(x, starts, axis=1) / sizes[nonempty]
            out[:, ~nonempty] = np.nan
        else:  # max_abs
            out[:, nonempty] = np.maximum.reduceat(np.abs(x), starts, axis=1)
        return out


@dataclass(frozen=True)
class ShapedLayout:
    """One tensor of shape ``shape``, values shaped (members, *shape): what matrix constructs need.

    A tensor-valued quantity is (members, *its own shape) (a Gram matrix may differ from the
    parameter's shape); a per-tensor scalar is (members, 1, ..., 1) with one axis per axis of
    the parameter, so that it broadcasts over the parameter's elements.
    """

    shape: tuple[int, ...]

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return (self.shape,)

    @property
    def count(self) -> int:
        return 1

    @property
    def sizes(self) -> np.ndarray:
        return np.array([math.prod(self.shape)], dtype=np.int64)

    def scalar_shape(self, members: int) -> tuple[int, ...]:
        return (members, *(1,) * len(self.shape))

    def expand(self, x: Any) -> Any:
        return x

    def member_shape(self, x: np.ndarray, members: int) -> tuple[int, ...]:
        """The shape a value takes with the member axis: member-leading values keep theirs."""
        return (members, *x.shape[1:]) if x.ndim >= 1 else self.scalar_shape(members)

    def reduce(self, func: str, x: np.ndarray) -> np.ndarray:
        """A reduction over every axis but the member axis, shaped like a per-tensor scalar."""
        flat = x.reshape(x.shape[0], -1)
        if func == "norm":
            out = np.sqrt(np.sum(np.square(flat), axis=1))
        elif func == "sum":
            out = np.sum(flat, axis=1)
        elif func == "mean":
            out = np.mean(flat, axis=1) if flat.shape[1] else np.full(flat.shape[0], np.nan, dtype=x.dtype)
        else:  # max_abs
            out = np.max(np.abs(flat), axis=1) if flat.shape[1] else np.zeros(flat.shape[0], dtype=x.dtype)
        return out.reshape(self.scalar_shape(x.shape[0]))


class _Perturb:
    """Rounds a value at a site for every member: equation (1) of the module docstring.

    A member perturbs an element only where the carrier value is not exactly representable
    in the member's format (an exact result is not rounded: ``1 - 0 ** t`` stays 1), and
    not at all for a format no narrower than the carrier.
    """

    BLOCK = 1 << 16

    def __init__(self, ensemble: Ensemble, rng: np.random.Generator) -> None:
        self.rng = rng
        self.carrier = ensemble.carrier
        self.size = ensemble.size
        carrier_unit = float(np.finfo(self.carrier).eps) / 2
        #: kind -> [(format type, members, unit roundoff)]
        self.formats: dict[str, list[tuple[Any, slice, float]]] = {
            kind: [(numpy_format(fmt), rows, UNIT[fmt]) for fmt, rows in ensemble.rows(kind) if UNIT[fmt] > carrier_unit]
            for kind in ("tensor", "scalar", "const")
        }
        self.systematic = ensemble.systematic_rows()[:, None]
        self._constants: dict[int, np.ndarray] = {}
        self.buffer = np.empty(0, dtype=self.carrier)
        self.offset = 0
        #: set for a tensor-by-tensor run (matrix constructs): values keep their shapes
        self.shaped: ShapedLayout | None = None
        #: > 0 while evaluating the argument of round_bf16: formats no wider than binary32
        self.bf16_depth = 0
        self.bf16_formats = {
            kind: [
                (np.float32, rows, UNIT["float32"]) if unit_roundoff < UNIT["float32"] else (fmt, rows, unit_roundoff)
                for fmt, rows, unit_roundoff in [
                    (numpy_format(f), r, UNIT[f]) for f, r in ensemble.rows(kind) if max(UNIT[f], UNIT["float32"]) > carrier_unit
                ]
            ]
            for kind in ("tensor", "scalar", "const")
        }

    def _constant(self, site: int) -> np.ndarray:
        """The site's fixed xi, shape (members, 1), for systematic members."""
        if site not in self._constants:
            self._constants[site] = self.rng.uniform(-1.0, 1.0, (self.size, 1)).astype(self.carrier)
        return self._constants[site]

    def _uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        n = math.prod(shape)
        if self.offset + n > self.buffer.size:
            self.buffer = self.rng.uniform(-1.0, 1.0, max(n, self.BLOCK)).astype(self.carrier)
            self.offset = 0
        out = self.buffer[self.offset : self.offset + n]
        self.offset += n
        return out.reshape(shape)

    def __call__(self, value: Any, unit: str, site: int, fixed: bool, weight: Any = 1.0) -> Any:
        """Round ``value`` to each member's format for the ``unit`` category; ``fixed``: the
        value is a per-tensor scalar or constant, so systematic members use the site's xi.
        Inside the argument of ``round_bf16`` (``self.bf16_depth > 0``) no format is wider than
        binary32: a bfloat16 operation accumulates in binary32 whatever the parameter's dtype."""
        entries = self.formats[unit]
        if self.bf16_depth:
            entries = self.bf16_formats[unit]
        if not entries:
            return value
        x = np.asarray(value, dtype=self.carrier)
        if self.shaped is not None:
            shape = self.shaped.member_shape(x, self.size)
        else:
            shape = (self.size, x.shape[1]) if x.ndim == 2 else (self.size, 1)
        out = x.copy() if x.shape == shape else np.array(np.broadcast_to(x, shape))
        xi = self._uniform(shape)
        if fixed:
            lead = (self.size, *(1,) * (xi.ndim - 1))
            xi = np.where(self.systematic.reshape(lead), self._constant(site).reshape(lead), xi)
        for fmt, rows, unit_roundoff in entries:
            part = out[rows]
            part *= 1 + (unit_roundoff * weight) * xi[rows] * (part.astype(fmt) != part)
        return out


class _EnsembleCompiler:
    """Compiles an AST into a closure over ensemble-shaped values with rounding sites."""

    def __init__(
        self, kinds: Mapping[str, str], constants: frozenset[str], perturb: _Perturb, layout: Layout, sites: list[int]
    ) -> None:
        self.kinds = {name: ("const" if name in constants else kind) for name, kind in kinds.items()}
        self.perturb = perturb
        self.layout = layout
        self.sites = sites  # a shared counter: sites[0] is the last site id given out
        self.carrier = perturb.carrier

    def _site(self) -> int:
        self.sites[0] += 1
        return self.sites[0]

    def _round(self, fn: Fn, kind: str) -> Fn:
        site, perturb, fixed = self._site(), self.perturb, kind != "tensor"
        return lambda env: perturb(fn(env), kind, site, fixed)

    def compile(self, expr: Expr) -> tuple[Fn, str]:
        if isinstance(expr, Num):
            value = self.carrier(expr.value)
            return (lambda env: value), "const"
        if isinstance(expr, Name):
            name = expr.id
            return (lambda env: env[name]), self.kinds[name]
        if isinstance(expr, Unary):
            fn, kind = self.compile(expr.operand)
            if expr.op == "-":
                return (lambda env: np.negative(fn(env))), kind
            return fn, kind
        if isinstance(expr, Binary):
            fns, kind = self._operands([expr.left, expr.right])
            op = _BINARY[expr.op]
            a, b = fns
            out: Fn = lambda env: op(a(env), b(env))  # noqa: E731
            return (self._round(out, kind) if expr.op in ROUNDING_OPERATORS else out), kind
        assert isinstance(expr, Call)
        if expr.func in GLOBAL_REDUCTIONS:
            return self._sum_all(expr)
        if expr.func in REDUCTIONS:
            return self._reduce(expr)
        if expr.func in SHAPED_FUNCTIONS or expr.func in ROUNDING_FUNCTIONS:
            return self._shaped(expr)
        if expr.func == "where":
            cond, cond_kind = self.compile(expr.args[0])
            (a, b), kind = self._operands(expr.args[1:])
            if kind == "tensor" and cond_kind != "tensor" and isinstance(self.layout, ShapedLayout):
                return (lambda env: _select(cond(env), a, b, env)), kind
            if kind == "tensor" and cond_kind != "tensor":
                expand, scalar_cond = self.layout.expand, cond
                cond = lambda env: expand(scalar_cond(env))  # noqa: E731
            return (lambda env: np.where(cond(env), a(env), b(env))), kind
        fns, kind = self._operands(list(expr.args))
        func = _ELEMENTWISE[expr.func]
        if len(fns) == 1:
            (x,) = fns
            out = lambda env: func(x(env))  # noqa: E731
        else:
            x, y = fns
            out = lambda env: func(x(env), y(env))  # noqa: E731
        return (out if expr.func in EXACT_FUNCTIONS else self._round(out, kind)), kind

    def _operands(self, args: Sequence[Expr]) -> tuple[list[Fn], str]:
        compiled = [self.compile(a) for a in args]
        kind = max((k for _, k in compiled), key=_RANK.__getitem__)
        return [self._convert(fn, k, kind) if k != kind else fn for fn, k in compiled], kind

    def _convert(self, fn: Fn, frm: str, to: str) -> Fn:
        """A value meeting a higher category is rounded to that category's format (a value
        already in that format is exact there, so equal formats cost nothing); a per-tensor
        scalar meeting a tensor is spread over the tensor's elements."""
        site, perturb, expand = self._site(), self.perturb, self.layout.expand
        if to == "tensor":
            return lambda env: expand(perturb(fn(env), to, site, True))
        return lambda env: perturb(fn(env), to, site, True)

    def _shaped(self, expr: Call) -> tuple[Fn, str]:
        """Matrix constructs, axis means, shape queries and explicit rounding (module docstring)."""
        func = expr.func
        if func in ROUNDING_FUNCTIONS:
            arg, kind = self.compile(expr.args[0])
            perturb, carrier = self.perturb, self.carrier

            def rounded(env: Env) -> Any:
                perturb.bf16_depth += 1
                try:
                    value = arg(env)
                finally:
                    perturb.bf16_depth -= 1
                return round_bf16(np.asarray(value, dtype=carrier))

            return rounded, kind
        if func in SHAPE_QUERIES:
            arg, _ = self.compile(expr.args[0])
            query, carrier = SHAPE_QUERY_FUNCTIONS[func], self.carrier
            # the operand's own axes, without the member axis in front
            return (lambda env: carrier(query(np.empty(np.shape(arg(env))[1:])))), "scalar"
        fns, _ = self._operands(list(expr.args))
        perturb, site = self.perturb, self._site()
        if func == "transpose":
            (x,) = fns
            return (lambda env: np.swapaxes(x(env), -1, -2) if np.ndim(x(env)) >= 3 else x(env)), "tensor"
        if func in AXIS_REDUCTIONS:
            (x,) = fns
            mean = SHAPED_TENSOR_FUNCTIONS[func]
            axis = -1 if func == "row_mean" else -2

            def axis_mean(env: Env) -> Any:
                value = np.asarray(x(env))
                if value.ndim < (2 if func == "row_mean" else 3):
                    return value  # the axis does not exist: the identity, as in the reference
                n = value.shape[axis]
                return perturb(mean(value), "tensor", site, False, 1.0 + math.log2(max(n, 1)))

            return axis_mean, "tensor"
        a, b = fns

        def matmul(env: Env) -> Any:
            left, right = np.asarray(a(env)), np.asarray(b(env))
            # products (members, r, n, c): one site each, then the running sums over k
            products = perturb(left[..., :, :, None] * right[..., None, :, :], "tensor", site, False)
            total = products[..., :, 0, :]
            for k in range(1, products.shape[-2]):
                total = perturb(total + products[..., :, k, :], "tensor", site, False)
            return total

        return matmul, "tensor"

    def _sum_all(self, expr: Call) -> tuple[Fn, str]:
        """sum over tensors of sum(x_i): per-tensor sums (tensor format), then their total (scalar format)."""
        arg, kind = self.compile(expr.args[0])
        layout, perturb = self.layout, self.perturb
        if isinstance(layout, ShapedLayout):
            raise ValueError("sum_all() needs every tensor side by side; the spec layer refuses it with matrix constructs")
        inner_site, outer_site = self._site(), self._site()
        count = layout.count
        inner = (1.0 + np.log2(np.maximum(layout.sizes, 1))).astype(self.carrier)[None, :]
        outer = 1.0 + math.log2(count) if count > 1 else 0.0

        def total(env: Env) -> Any:
            x = np.asarray(arg(env))
            if kind == "tensor":
                per = perturb(layout.reduce("sum", x), "tensor", inner_site, False, inner)
            else:
                lead = x.shape[0] if x.ndim == 2 else 1
                per = np.broadcast_to(x if x.ndim == 2 else x.reshape(1, 1), (lead, count))
            out = np.sum(per, axis=1, keepdims=True)
            return perturb(out, "scalar", outer_site, True, outer) if outer else out

        return total, "scalar"

    def _reduce(self, expr: Call) -> tuple[Fn, str]:
        arg, kind = self.compile(expr.args[0])
        func, layout, site, perturb = expr.func, self.layout, self._site(), self.perturb
        if kind != "tensor":
            # A reduction of a per-tensor scalar is the scalar itself (its magnitude for norms).
            exact = (lambda env: np.abs(arg(env))) if func in ("norm", "max_abs") else arg
            return exact, "scalar"
        # A pairwise sum of n terms is bounded by (1 + log2 n) roundings of the result.
        weight = (1.0 + np.log2(np.maximum(layout.sizes, 1))).astype(self.carrier)[None, :]
        shaped = isinstance(layout, ShapedLayout)

        def reduce(env: Env) -> Any:
            x = np.asarray(arg(env))
            value = layout.reduce(func, x)
            if func == "max_abs":
                return value
            # a shaped value may be another shape than the parameter (a Gram matrix): its own n
            own = 1.0 + math.log2(max(math.prod(x.shape[1:]), 1)) if shaped else weight
            return perturb(value, "tensor", site, False, own)

        return reduce, "scalar"


def _select(cond: Any, a: Fn, b: Fn, env: Env) -> Any:
    """``where`` with a per-tensor condition in a shaped run: the whole branch the members agree
    on (only that one is evaluated: branches may differ in shape), else element by element."""
    c = np.asarray(cond)
    first = bool(c.reshape(-1)[0]) if c.size else False
    if c.ndim == 0 or bool(np.all(c == first)):
        return a(env) if first else b(env)
    return np.where(c, a(env), b(env))


def uses_shapes(rule: ResolvedRule) -> bool:
    """Whether any equation or initialiser uses a construct that needs tensor shapes."""
    exprs = [loc.equation.expr for loc in rule.equations] + [s.init for s in rule.state.values() if s.init is not None]
    return any(isinstance(node, Call) and node.func in SHAPED_FUNCTIONS for expr in exprs for node in walk(expr))


#: spread[step][tensor][slot][profile] = max over that profile's members of max_i |x - x_0|
Spread = dict[int, list[dict[str, dict[str, float]]]]


def run_ensemble(
    rule: ResolvedRule, hyper: Mapping[str, float], inputs: CaseInputs, ensemble: Ensemble, seed_text: str
) -> tuple[Spread, dict[int, list[dict[str, np.ndarray]]]]:
    """Run every member over every step; return the spread per profile and member 0's values.

    Member 0 is the unperturbed evaluation in the carrier precision (returned in the
    carrier dtype, so that a longdouble carrier yields the float64 reference's error too).
    """
    import zlib

    rng = np.random.default_rng([ensemble.seed, zlib.crc32(seed_text.encode())])
    perturb = _Perturb(ensemble, rng)
    if uses_shapes(rule):
        return _run_shaped(rule, hyper, inputs, ensemble, perturb)
    carrier, size = ensemble.carrier, ensemble.size
    layout = Layout.of([np.shape(p) for p in inputs.params])
    steps, inits = _compile(rule, frozenset(rule.spec.hyper), perturb, layout)
    hyper_values = {name: carrier(np.float64(value)) for name, value in hyper.items()}
    flat = np.concatenate([np.asarray(p, dtype=carrier).reshape(-1) for p in inputs.params])
    grads = np.concatenate([np.asarray(g, dtype=carrier).reshape(inputs.steps, -1) for g in inputs.grads], axis=1)
    loss = _flat_loss(inputs, carrier)
    slices = ensemble.slices()
    kinds = {name: "rule" if slot.scope == "rule" else slot.kind for name, slot in rule.state.items()}
    spread: Spread = {}
    exact: dict[int, list[dict[str, np.ndarray]]] = {}
    theta = np.broadcast_to(flat, (size, flat.size)).copy()
    env: Env = {**hyper_values, "theta": theta}
    state: dict[str, Any] = {}
    with np.errstate(all="ignore"):
        for name, fn in inits:
            value = _as_slot(fn(env), kinds[name], layout, size, carrier)
            env[name] = value
            state[name] = value
        base_lr = carrier(hyper["lr"])
        ndim = np.array([[len(shape) for shape in layout.shapes]], dtype=carrier)
        # The norm of all the step's gradients: one reduction over every element, in the tensor format.
        all_elements = 1.0 + math.log2(max(flat.size, 1))
        for t in range(1, inputs.steps + 1):
            multiplier = carrier(inputs.lr_multipliers[t - 1])
            global_norm = perturb(np.sqrt(np.sum(np.square(grads[t - 1]))), "tensor", 0, False, all_elements)
            env = {
                **hyper_values,
                **state,
                "theta": theta,
                "grad": np.broadcast_to(grads[t - 1], (size, flat.size))
                if loss is None
                else point_gradient(perturb, theta, *loss, grads[t - 1]),
                "t": carrier(t),
                "lr": base_lr * multiplier,
                "lr_multiplier": multiplier,
                "global_grad_norm": global_norm,
                "ndim": ndim,
            }
            for target, fn in steps:
                env[target] = fn(env)
            theta = _as_slot(env["theta"], "tensor", layout, size, carrier)
            state = {name: _as_slot(env[name], kinds[name], layout, size, carrier) for name in rule.state}
            spread[t], exact[t] = _record(layout, {"theta": theta, **state}, {"theta": "tensor", **kinds}, slices)
    return spread, exact


def point_gradient(perturb: _Perturb, theta: np.ndarray, curvature: np.ndarray, center: np.ndarray, noise: np.ndarray) -> Any:
    """The gradient of a quadratic loss at every member's own point: h * (theta - c) + n_t.

    Each member's gradient is taken at its own theta, so a rounding error committed in an
    earlier step feeds back through the gradient as it does in an implementation (the spread,
    and so the budget, includes the feedback). The difference, the product and the sum are
    tensor rounding sites drawn afresh at every element and step, as an adapter computing the
    gradient in the parameter's dtype rounds each of them.
    """
    difference = perturb(theta - center, "tensor", 0, False)
    product = perturb(curvature * difference, "tensor", 0, False)
    return perturb(product + noise, "tensor", 0, False)


def _flat_loss(inputs: CaseInputs, carrier: type[np.floating[Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """A quadratic loss's h and c on the flat axis of :class:`Layout` (None: a fixed gradient sequence)."""
    if inputs.quadratic is None:
        return None
    return tuple(  # type: ignore[return-value]
        np.concatenate([np.asarray(a, dtype=carrier).reshape(-1) for a in arrays])
        for arrays in (inputs.quadratic.curvature, inputs.quadratic.center)
    )


def _tensor_loss(inputs: CaseInputs, index: int, carrier: type[np.floating[Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """A quadratic loss's h and c of tensor ``index`` in its own shape (None: a fixed gradient sequence)."""
    if inputs.quadratic is None:
        return None
    q = inputs.quadratic
    return np.asarray(q.curvature[index], dtype=carrier), np.asarray(q.center[index], dtype=carrier)


def _record(
    layout: Layout, values: Mapping[str, np.ndarray], kinds: Mapping[str, str], slices: Mapping[str, list[slice]]
) -> tuple[list[dict[str, dict[str, float]]], list[dict[str, np.ndarray]]]:
    """Per tensor and slot: the spread of each profile (non-finite counts as inf), and member 0's value."""
    spread: list[dict[str, dict[str, float]]] = [{} for _ in layout.shapes]
    exact: list[dict[str, np.ndarray]] = [{} for _ in layout.shapes]
    for slot, value in values.items():
        if kinds[slot] == "rule":  # one value for every tensor: recorded with each tensor, like a per-tensor scalar
            value = np.broadcast_to(value, (value.shape[0], layout.count))
        diff = np.abs(value - value[0:1])
        tensor = kinds[slot] == "tensor"
        per_member = layout.reduce("max_abs", diff) if tensor else diff
        worst = {
            profile: np.max(np.stack([np.max(per_member[s], axis=0) for s in parts]), axis=0) for profile, parts in slices.items()
        }
        for column in worst.values():
            column[~np.isfinite(column)] = np.inf
        for index, shape in enumerate(layout.shapes):
            if tensor:
                exact[index][slot] = value[0, layout.offsets[index] : layout.offsets[index + 1]].reshape(shape)
            else:
                exact[index][slot] = np.array(value[0, index])
            spread[index][slot] = {profile: float(column[index]) for profile, column in worst.items()}
    return spread, exact


def _as_slot(value: Any, kind: str, layout: Layout, size: int, carrier: type[np.floating[Any]]) -> np.ndarray:
    x = np.asarray(value, dtype=carrier)
    if kind == "rule":
        target = (size, 1)
    elif kind == "scalar":
        target = (size, layout.count)
    else:
        target = (size, int(layout.offsets[-1]))
        x = layout.expand(x) if x.ndim == 2 and x.shape[1] != target[1] else x
    return x if x.shape == target else np.broadcast_to(x, target).copy()


def _compile(
    rule: ResolvedRule, constants: frozenset[str], perturb: _Perturb, layout: Layout
) -> tuple[list[tuple[str, Fn]], list[tuple[str, Fn]]]:
    sites = [0]
    kinds = dict(rule.kinds)
    init_compiler = _EnsembleCompiler(kinds, constants, perturb, layout, sites)
    inits = [(name, init_compiler.compile(slot.init)[0]) for name, slot in _init_order(rule.state) if slot.init is not None]
    flow: dict[str, str] = {n: k for n, k in kinds.items() if n not in rule.writes or n in rule.state or n == "theta"}
    steps: list[tuple[str, Fn]] = []
    for loc in rule.equations:
        target = loc.equation.target
        fn, kind = _EnsembleCompiler(flow, constants, perturb, layout, sites).compile(loc.equation.expr)
        if target not in rule.state and target != "theta":
            flow[target] = kind
        steps.append((target, fn))
    return steps, inits


def _run_shaped(
    rule: ResolvedRule, hyper: Mapping[str, float], inputs: CaseInputs, ensemble: Ensemble, perturb: _Perturb
) -> tuple[Spread, dict[int, list[dict[str, np.ndarray]]]]:
    """:func:`run_ensemble` tensor by tensor, values shaped (members, *shape) (matrix constructs)."""
    carrier, size = ensemble.carrier, ensemble.size
    slices = ensemble.slices()
    kinds = {name: slot.kind for name, slot in rule.state.items()}
    hyper_values = {name: carrier(np.float64(value)) for name, value in hyper.items()}
    base_lr = carrier(hyper["lr"])
    total = sum(int(np.size(p)) for p in inputs.params)
    all_elements = 1.0 + math.log2(max(total, 1))
    spread: Spread = {t: [] for t in range(1, inputs.steps + 1)}
    exact: dict[int, list[dict[str, np.ndarray]]] = {t: [] for t in range(1, inputs.steps + 1)}
    with np.errstate(all="ignore"):
        squares = [
            np.sum(np.square(np.concatenate([np.asarray(g[t], dtype=carrier).reshape(-1) for g in inputs.grads])))
            for t in range(inputs.steps)
        ]
        for index, (param, grads) in enumerate(zip(inputs.params, inputs.grads)):
            shape = tuple(np.shape(param))
            loss = _tensor_loss(inputs, index, carrier)
            layout = ShapedLayout(shape)
            perturb.shaped = layout
            steps, inits = _compile(rule, frozenset(rule.spec.hyper), perturb, layout)  # type: ignore[arg-type]
            theta = np.broadcast_to(np.asarray(param, dtype=carrier), (size, *shape)).copy()
            env: Env = {**hyper_values, "theta": theta}
            state: dict[str, Any] = {}
            for name, fn in inits:
                value = _shaped_slot(fn(env), kinds[name], layout, size, carrier)
                env[name] = value
                state[name] = value
            ndim = carrier(len(shape))
            for t in range(1, inputs.steps + 1):
                multiplier = carrier(inputs.lr_multipliers[t - 1])
                global_norm = perturb(np.sqrt(squares[t - 1]), "tensor", 0, False, all_elements)
                env = {
                    **hyper_values,
                    **state,
                    "theta": theta,
                    "grad": np.broadcast_to(np.asarray(grads[t - 1], dtype=carrier), (size, *shape))
                    if loss is None
                    else point_gradient(perturb, theta, *loss, np.asarray(grads[t - 1], dtype=carrier)),
                    "t": carrier(t),
                    "lr": base_lr * multiplier,
                    "lr_multiplier": multiplier,
                    "global_grad_norm": global_norm,
                    "ndim": ndim,
                }
                for target, fn in steps:
                    env[target] = fn(env)
                theta = _shaped_slot(env["theta"], "tensor", layout, size, carrier)
                state = {name: _shaped_slot(env[name], kinds[name], layout, size, carrier) for name in rule.state}
                values = {"theta": theta, **state}
                spread_t, exact_t = {}, {}
                for slot, value in values.items():
                    per_member = np.max(np.abs(value - value[0:1]).reshape(size, -1), axis=1)
                    per_member[~np.isfinite(per_member)] = np.inf
                    spread_t[slot] = {
                        profile: float(max(np.max(per_member[part]) for part in parts)) for profile, parts in slices.items()
                    }
                    exact_t[slot] = (
                        value[0].reshape(shape)
                        if slot == "theta" or kinds[slot] == "tensor"
                        else np.array(value[0].reshape(-1)[0])
                    )
                spread[t].append(spread_t)
                exact[t].append(exact_t)
    perturb.shaped = None
    return spread, exact


def _shaped_slot(value: Any, kind: str, layout: ShapedLayout, size: int, carrier: type[np.floating[Any]]) -> np.ndarray:
    x = np.asarray(value, dtype=carrier)
    target = layout.scalar_shape(size) if kind == "scalar" else (size, *layout.shape)
    return x if x.shape == target else np.broadcast_to(x, target).copy()
