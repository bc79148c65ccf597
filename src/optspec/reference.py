"""The reference evaluator: runs any resolved spec on numpy arrays, one tensor at a time.

There is no per-rule code here. Equations are compiled once into closures over numpy;
each step binds ``theta``, ``grad``, ``t``, ``lr`` (eta_t = eta * s_t), ``lr_multiplier``
(s_t), the hyperparameters and the state slots, and runs the equations in order.

The loop is step-major: at each step every equation runs for every tensor before the next
equation, so that a reduction across tensors, ``sum_all(x)``, sees x of every tensor at that
point of the step (the argument is evaluated per tensor, each tensor's sum is taken in the
argument's type as ``sum`` does, and the total is accumulated tensor by tensor in the scalar
type). A rule-scope slot (``scope = "rule"``) is one scalar, computed once per step and
given to every tensor. Each tensor's own arithmetic is what a tensor-by-tensor loop does, so
rules without these constructs get the same values bit for bit.

A :class:`Precision` says in which floating-point type tensor arithmetic and per-tensor
scalar arithmetic (hyperparameters, ``t``, bias corrections, reductions) are done:

* ``float64``: everything in binary64 — the golden values;
* ``float32``: tensors in binary32, scalars in binary64 and rounded to binary32 where they
  meet a tensor (what torch.optim's default path and host-side kernel launches do);
* ``float32_scalar32``: tensors and step-dependent scalars (``t``, ``lr``, bias corrections,
  reductions) in binary32, while expressions of hyperparameters and literals alone are
  folded in binary64 and rounded where they meet a step-dependent value. This is JAX's
  weak typing with its default ``jax_enable_x64=False``, as optax runs: ``1 - b2`` is a
  Python double, ``1 - b2**count`` is float32 because ``count`` is an int32 array.

The two float32 evaluations exist for the error model (:mod:`optspec.tolerance`): their
distance from the float64 trajectory measures how much rounding this rule, case and
variant amplify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optspec.expr import (
    AXIS_REDUCTIONS,
    GLOBAL_REDUCTIONS,
    MATRIX_FUNCTIONS,
    REDUCTIONS,
    SHAPE_QUERIES,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    Unary,
)
from optspec.spec import ResolvedRule, StateSlot

Value = Any  # a numpy array (tensor kind) or a numpy scalar (scalar kind)
Env = dict[str, Value]
Fn = Callable[[Env], Value]
#: a hoisted ``sum_all(x)``: the env key its total is bound to, x's closure and the type x is summed in
Hoisted = tuple[str, Fn, type[np.floating[Any]]]


@dataclass(frozen=True)
class Precision:
    name: str
    tensor: type[np.floating[Any]]
    scalar: type[np.floating[Any]]

    @property
    def unit_roundoff(self) -> float:
        """u = 2^-p for a p-bit significand: 2^-24 for binary32, 2^-53 for binary64."""
        return float(np.finfo(self.tensor).eps) / 2


FLOAT64 = Precision("float64", np.float64, np.float64)
FLOAT32 = Precision("float32", np.float32, np.float64)
FLOAT32_SCALAR32 = Precision("float32_scalar32", np.float32, np.float32)
#: x87 80-bit extended (64-bit significand) on x86-64 Linux: the error model's exact value.
EXTENDED = Precision("extended", np.longdouble, np.longdouble)
PRECISIONS = {p.name: p for p in (FLOAT64, FLOAT32, FLOAT32_SCALAR32, EXTENDED)}


@dataclass(frozen=True)
class Quadratic:
    """A separable quadratic loss per tensor: the gradient at the point p is h * (p - c) + n_t.

    ``curvature[i]`` (h > 0) and ``center[i]`` (c) have the shape of tensor i; the per-step
    term n_t is the case's ``grads[i][t - 1]``, so that steps differ. With
    L(p) = sum(h (p - c)^2 / 2 - n_t p) the gradient is a function of the point it is taken at,
    and an optimizer whose stored parameters drift from the reference's gets other gradients
    (the feedback a fixed gradient sequence hides).
    """

    curvature: tuple[np.ndarray, ...]
    center: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class CaseInputs:
    """What a run needs: initial parameters, gradients per step, s_t per step.

    ``params[i]`` has the shape of tensor i; ``grads[i]`` has shape ``(steps, *shape)``;
    ``lr_multipliers`` has shape ``(steps,)`` (all ones for a constant learning rate).
    With ``quadratic`` the gradient of step t is taken at the parameter before the step,
    g_t = h * (theta_{t-1} - c) + grads[i][t - 1] (:func:`gradient_at`); without it,
    g_t = grads[i][t - 1].
    """

    params: tuple[np.ndarray, ...]
    grads: tuple[np.ndarray, ...]
    lr_multipliers: np.ndarray
    #: the schedule spec that produced ``lr_multipliers`` (an optspec.schedules.ScheduleRef), if any:
    #: adapters then drive the library's own scheduler instead of writing eta * s_t
    schedule: Any = None
    #: the loss whose gradient is taken at the point (None: the fixed sequence ``grads``)
    quadratic: Quadratic | None = None

    @property
    def steps(self) -> int:
        return int(self.lr_multipliers.shape[0])

    def digest(self) -> str:
        """sha256 of everything a run reads from these inputs: every array's dtype, shape and
        bytes (parameters, gradients, lr multipliers, the quadratic loss's curvature and centre)
        and the schedule."""
        digest = hashlib.sha256()
        arrays = (*self.params, *self.grads, self.lr_multipliers)
        if self.quadratic is not None:
            arrays += (*self.quadratic.curvature, *self.quadratic.center)
        for array in arrays:
            value = np.ascontiguousarray(array)
            digest.update(repr((value.dtype.str, value.shape)).encode())
            digest.update(value.tobytes())
        digest.update(b"quadratic" if self.quadratic is not None else b"fixed")
        digest.update(repr(None if self.schedule is None else self.schedule.as_json()).encode())
        return digest.hexdigest()


#: ``trajectory[step][tensor_index][slot]`` with slot ``"theta"`` for the parameter.
Trajectory = dict[int, list[dict[str, np.ndarray]]]


def round_bf16(x: Value) -> Value:
    """Round to the nearest bfloat16 (an 8-bit significand, ties to even), in x's own type.

    x = m 2^e with 1/2 <= |m| < 1 (``frexp``); m 2^8 rounded to an integer by ``rint`` (ties
    to even) keeps 8 significant bits; ``ldexp`` scales back exactly. One rounding from any
    binary format, so a binary64 or longdouble evaluation gets the correctly rounded value,
    not float32's double rounding. bfloat16 subnormals (|x| < 2^-126) and overflow are not
    modelled (values of that size do not occur in the golden cases).
    """
    array = np.asarray(x)
    mantissa, exponent = np.frexp(array)
    out = np.ldexp(np.rint(np.ldexp(mantissa, 8)), exponent - 8).astype(array.dtype, copy=False)
    return out[()] if out.ndim == 0 else out


def transpose(x: Value) -> Value:
    """Swap the last two axes (the identity for fewer than two)."""
    return np.swapaxes(x, -1, -2) if np.ndim(x) >= 2 else x


def row_mean(x: Value) -> Value:
    """Mean over the last axis with keepdims: (r, c) -> (r, 1); a scalar as it is."""
    return np.mean(x, axis=-1, keepdims=True) if np.ndim(x) >= 1 else x


def col_mean(x: Value) -> Value:
    """Mean over axis -2 with keepdims: (r, c) -> (1, c); fewer than two axes as it is."""
    return np.mean(x, axis=-2, keepdims=True) if np.ndim(x) >= 2 else x


def rows(x: Value) -> int:
    """The size of axis -2 (1 for fewer than two axes)."""
    return int(np.shape(x)[-2]) if np.ndim(x) >= 2 else 1


def cols(x: Value) -> int:
    """The size of the last axis (1 for a scalar)."""
    return int(np.shape(x)[-1]) if np.ndim(x) >= 1 else 1


#: Tensor functions whose result has another shape than their operands (all tensor-valued).
SHAPED_TENSOR_FUNCTIONS: dict[str, Callable[..., Value]] = {
    "matmul": np.matmul,
    "transpose": transpose,
    "row_mean": row_mean,
    "col_mean": col_mean,
}
SHAPE_QUERY_FUNCTIONS: dict[str, Callable[[Value], int]] = {"rows": rows, "cols": cols}

_ELEMENTWISE: dict[str, Callable[..., Value]] = {
    "round_bf16": round_bf16,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sign": np.sign,
    "exp": np.exp,
    "log": np.log,
    "cos": np.cos,
    "floor": np.floor,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "min": np.minimum,
    "max": np.maximum,
}
_REDUCE: dict[str, Callable[[np.ndarray], Value]] = {
    "norm": lambda x: np.sqrt(np.sum(np.square(x))),
    "sum": np.sum,
    "mean": np.mean,
    "max_abs": lambda x: np.max(np.abs(x)) if np.size(x) else np.zeros((), dtype=np.asarray(x).dtype)[()],
}
_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "**": np.power,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


#: Value categories inside the compiler: ``const`` (hyperparameters and literals, folded in
#: float64 as Python and JAX fold them), ``scalar`` (per-tensor scalars that depend on the
#: step: t, lr, reductions, scalar state) and ``tensor``. When two meet, the lower one is
#: rounded to the type of the higher one first.
_RANK = {"const": 0, "scalar": 1, "tensor": 2}


class _Compiler:
    """Turns an AST into a closure that computes in the given precision."""

    def __init__(self, kinds: Mapping[str, str], precision: Precision, constants: frozenset[str] = frozenset()) -> None:
        self.kinds = {name: ("const" if name in constants else kind) for name, kind in kinds.items()}
        self.p = precision
        #: the sum_all() calls of the compiled expression, inner first (see :meth:`CompiledRule.step_all`)
        self.hoisted: list[Hoisted] = []

    def dtype(self, kind: str) -> type[np.floating[Any]]:
        return {"const": np.float64, "scalar": self.p.scalar, "tensor": self.p.tensor}[kind]

    def compile(self, expr: Expr) -> tuple[Fn, str]:
        if isinstance(expr, Num):
            value = np.float64(expr.value)
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
            return self._apply(_BINARY[expr.op], [expr.left, expr.right])
        assert isinstance(expr, Call)
        if expr.func in GLOBAL_REDUCTIONS:
            arg, kind = self.compile(expr.args[0])
            key = f"{expr.func}#{id(expr)}#{len(self.hoisted)}"
            self.hoisted.append((key, arg, self.dtype(kind)))
            return (lambda env: env[key]), "scalar"
        if expr.func in REDUCTIONS:
            arg, kind = self.compile(expr.args[0])
            reduce = _REDUCE[expr.func]
            scalar = self.p.scalar
            as_type = self.dtype(kind)
            return (lambda env: scalar(reduce(np.asarray(arg(env), dtype=as_type)))), "scalar"
        if expr.func in SHAPE_QUERIES:
            arg, _ = self.compile(expr.args[0])
            query, scalar = SHAPE_QUERY_FUNCTIONS[expr.func], self.p.scalar
            return (lambda env: scalar(query(arg(env)))), "scalar"
        if expr.func in MATRIX_FUNCTIONS or expr.func in AXIS_REDUCTIONS:
            fns, _ = self._operands(expr.args)
            func, tensor = SHAPED_TENSOR_FUNCTIONS[expr.func], self.dtype("tensor")
            if len(fns) == 1:
                (x,) = fns
                return (lambda env: np.asarray(func(np.asarray(x(env), dtype=tensor)), dtype=tensor)), "tensor"
            x, y = fns
            return (
                lambda env: np.asarray(func(np.asarray(x(env), dtype=tensor), np.asarray(y(env), dtype=tensor)), dtype=tensor)
            ), "tensor"
        if expr.func == "where":
            return self._where(expr.args)
        return self._apply(_ELEMENTWISE[expr.func], list(expr.args))

    def _operands(self, args: Sequence[Expr]) -> tuple[list[Fn], str]:
        compiled = [self.compile(a) for a in args]
        kind = max((k for _, k in compiled), key=_RANK.__getitem__)
        target = self.dtype(kind)
        fns: list[Fn] = []
        for fn, k in compiled:
            if k != kind and self.dtype(k) is not target:
                # Operands of a lower category are rounded to the higher one's type first.
                fns.append(lambda env, fn=fn: target(fn(env)))
            else:
                fns.append(fn)
        return fns, kind

    def _apply(self, op: Callable[..., Value], args: Sequence[Expr]) -> tuple[Fn, str]:
        fns, kind = self._operands(args)
        if len(fns) == 1:
            (a,) = fns
            return (lambda env: op(a(env))), kind
        a, b = fns
        return (lambda env: op(a(env), b(env))), kind

    def _where(self, args: Sequence[Expr]) -> tuple[Fn, str]:
        cond, cond_kind = self.compile(args[0])
        fns, kind = self._operands(args[1:])
        a, b = fns
        as_type = self.dtype(kind)
        if kind != "tensor":
            return (lambda env: as_type(a(env) if bool(cond(env)) else b(env))), kind
        if cond_kind != "tensor":
            # A per-tensor condition selects a whole branch, which is the only one evaluated:
            # the branches may differ in shape (transpose(x) or x) or exist for some ranks only.
            return (lambda env: _selected(a(env) if bool(cond(env)) else b(env), env, as_type)), kind
        return (lambda env: np.where(cond(env), a(env), b(env)).astype(as_type, copy=False)), kind


def _selected(value: Value, env: Env, as_type: type[np.floating[Any]]) -> Value:
    """A selected branch in the tensor type; a scalar branch spread to theta's shape, as np.where would."""
    if np.ndim(value) == 0:
        return np.full(np.shape(env["theta"]), value, dtype=as_type)
    return np.asarray(value, dtype=as_type)


class _Binary32Compiler(_Compiler):
    """Every operand is rounded to binary32 and every operation is done in binary32: how an
    in-place update of a float32 tensor (``x *= y`` in torch) computes, whatever the
    precision of the values it reads."""

    def dtype(self, kind: str) -> type[np.floating[Any]]:
        return np.float32

    def compile(self, expr: Expr) -> tuple[Fn, str]:
        if isinstance(expr, Num):
            value = np.float32(expr.value)
            return (lambda env: value), "const"
        if isinstance(expr, Name):
            name = expr.id
            return (lambda env: np.asarray(env[name], dtype=np.float32)[()]), self.kinds[name]
        return super().compile(expr)


@dataclass
class CompiledRule:
    """A resolved rule compiled for one precision."""

    rule: ResolvedRule
    precision: Precision
    steps: list[tuple[str, Fn]]
    inits: list[tuple[str, Fn, str]]
    #: per equation, its sum_all() calls (empty for most rules)
    hoisted: list[list[Hoisted]] = field(default_factory=list)

    @classmethod
    def build(cls, rule: ResolvedRule, precision: Precision, store32: Collection[str] = ()) -> CompiledRule:
        """``store32`` names state slots that a library keeps in float32 whatever the parameter
        dtype (see the registry's [[storage]]): their equations compute in binary32 from
        operands rounded to binary32, as an in-place update of a float32 tensor does."""
        kinds = dict(rule.kinds)
        constants = frozenset(rule.spec.hyper)
        compiler = _Compiler(kinds, precision, constants)
        inits = [(name, *compiler.compile(slot.init)) for name, slot in _init_order(rule.state) if slot.init is not None]
        # Kinds of locals change along the step; recompile each equation with the kinds
        # in force at that point.
        steps: list[tuple[str, Fn]] = []
        hoisted: list[list[Hoisted]] = []
        flow: dict[str, str] = {n: k for n, k in kinds.items() if n not in rule.writes or n in rule.state or n == "theta"}
        for loc in rule.equations:
            target = loc.equation.target
            compiler_class = _Binary32Compiler if target in store32 else _Compiler
            equation_compiler = compiler_class(flow, precision, constants)
            fn, kind = equation_compiler.compile(loc.equation.expr)
            if target not in rule.state and target != "theta":
                flow[target] = kind
            steps.append((target, _store(fn, kind, target, rule, precision)))
            hoisted.append(equation_compiler.hoisted)
        return cls(rule, precision, steps, inits, hoisted)

    def init_state(self, theta: np.ndarray, hyper: Mapping[str, Value]) -> dict[str, Value]:
        env: Env = {**hyper, "theta": theta}
        state: dict[str, Value] = {}
        with np.errstate(all="ignore"):
            for name, fn, _kind in self.inits:
                value = fn(env)
                slot = self.rule.state[name]
                value = _as_slot(value, slot, theta.shape, self.precision)
                env[name] = value
                state[name] = value
        return state

    def step(self, env: Env) -> None:
        """One step of one tensor (a rule without sum_all() or rule-scope slots)."""
        with np.errstate(all="ignore"):
            for target, fn in self.steps:
                env[target] = fn(env)

    def step_all(self, envs: Sequence[Env]) -> None:
        """One step of every tensor, equation by equation: each sum_all() total is computed over
        every tensor's env before the equation that reads it, and a rule-scope slot is computed
        once (its expression is the same for every tensor) and given to every env."""
        scalar = self.precision.scalar
        rule_slots = frozenset(self.rule.rule_slots)
        hoisted = self.hoisted or [[] for _ in self.steps]
        with np.errstate(all="ignore"):
            for (target, fn), reductions in zip(self.steps, hoisted):
                for key, arg, as_type in reductions:
                    total = scalar(0)
                    for env in envs:
                        total = scalar(total + scalar(np.sum(np.asarray(arg(env), dtype=as_type))))
                    for env in envs:
                        env[key] = total
                if target in rule_slots:
                    value = fn(envs[0])
                    for env in envs:
                        env[target] = value
                else:
                    for env in envs:
                        env[target] = fn(env)


def _store(fn: Fn, kind: str, target: str, rule: ResolvedRule, precision: Precision) -> Fn:
    """Wrap an equation so that theta and tensor slots keep their shape and type."""
    tensor = precision.tensor
    if target == "theta" or (target in rule.state and rule.state[target].kind == "tensor"):
        if kind != "tensor":
            return lambda env: np.full(np.shape(env["theta"]), fn(env), dtype=tensor)
        return lambda env: np.asarray(fn(env), dtype=tensor)
    if target in rule.state:
        scalar = precision.scalar
        return lambda env: scalar(fn(env))
    return fn


def _as_slot(value: Value, slot: StateSlot, shape: tuple[int, ...], precision: Precision) -> Value:
    if slot.kind == "scalar":
        return precision.scalar(value)
    return np.full(shape, value, dtype=precision.tensor) if np.ndim(value) == 0 else np.asarray(value, dtype=precision.tensor)


def _init_order(state: Mapping[str, StateSlot]) -> list[tuple[str, StateSlot]]:
    """Slots ordered so that an initialiser runs after the slots it reads (no cycles: checked)."""
    from optspec.expr import names_in

    order: list[tuple[str, StateSlot]] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        slot = state[name]
        if slot.init is not None:
            for dep in names_in(slot.init):
                if dep.id in state:
                    visit(dep.id)
        order.append((name, slot))

    for name in state:
        visit(name)
    return order


def evaluate_lr_multipliers(expr: Expr | None, steps: int) -> np.ndarray:
    """s_t for t = 1..steps, in float64; all ones when the case has no schedule."""
    if expr is None:
        return np.ones(steps, dtype=np.float64)
    fn, _ = _Compiler({"t": "scalar"}, FLOAT64).compile(expr)
    with np.errstate(all="ignore"):
        return np.array([float(fn({"t": np.float64(t)})) for t in range(1, steps + 1)], dtype=np.float64)


def _global_grad_norms(inputs: CaseInputs, precision: Precision) -> list[Value]:
    """sqrt(sum_i ||g_i||^2) at every step: each tensor's norm, then the norm of the norms, in the tensor type."""
    tensor, scalar = precision.tensor, precision.scalar
    out = []
    with np.errstate(all="ignore"):
        for step in range(inputs.steps):
            norms = [np.sqrt(np.sum(np.square(np.asarray(g[step], dtype=tensor)))) for g in inputs.grads]
            out.append(scalar(np.sqrt(np.sum(np.square(np.asarray(norms, dtype=tensor))))))
    return out


def gradient_at(inputs: CaseInputs, index: int, t: int, point: np.ndarray, dtype: Any) -> np.ndarray:
    """The gradient of tensor ``index`` at step ``t``, taken at ``point``, computed in ``dtype``.

    The fixed sequence: ``grads[index][t - 1]``. A quadratic loss: h * (point - c) + n_t, each
    operation rounded to ``dtype`` ((point - c), the product, the sum: what an adapter that
    computes the loss's gradient in the parameter's dtype does).
    """
    noise = np.asarray(inputs.grads[index][t - 1], dtype=dtype)
    if inputs.quadratic is None:
        return noise
    h = np.asarray(inputs.quadratic.curvature[index], dtype=dtype)
    c = np.asarray(inputs.quadratic.center[index], dtype=dtype)
    with np.errstate(all="ignore"):
        return np.asarray(h * (np.asarray(point, dtype=dtype) - c) + noise, dtype=dtype)


def run_reference(
    rule: ResolvedRule,
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    precision: Precision = FLOAT64,
    record: Sequence[int] = (),
    store32: Collection[str] = (),
) -> Trajectory:
    """Run ``inputs.steps`` steps and return parameters and state at the ``record`` steps.

    Values are returned as float64 arrays whatever the precision of the arithmetic.
    ``store32`` names state slots held in binary32 whatever the precision (see
    :meth:`CompiledRule.build`).
    """
    compiled = CompiledRule.build(rule, precision, store32)
    scalar, tensor = precision.scalar, precision.tensor
    # Hyperparameters are constants: float64, rounded where they meet step-dependent values.
    hyper_values = {name: np.float64(value) for name, value in hyper.items()}
    wanted = set(record)
    trajectory: Trajectory = {step: [] for step in sorted(wanted)}
    base_lr = scalar(hyper["lr"])
    global_norms = _global_grad_norms(inputs, precision)
    # Step-major (see the module docstring): every tensor's env at step t, then the equations.
    thetas = [np.asarray(param, dtype=tensor).copy() for param in inputs.params]
    states = [compiled.init_state(theta, hyper_values) for theta in thetas]
    for t in range(1, inputs.steps + 1):
        multiplier = scalar(inputs.lr_multipliers[t - 1])
        envs: list[Env] = [
            {
                **hyper_values,
                **states[index],
                "theta": thetas[index],
                "grad": gradient_at(inputs, index, t, thetas[index], tensor),
                "t": scalar(t),
                "lr": scalar(base_lr * multiplier),
                "lr_multiplier": multiplier,
                "global_grad_norm": global_norms[t - 1],
                "ndim": scalar(np.ndim(param)),
            }
            for index, param in enumerate(inputs.params)
        ]
        compiled.step_all(envs)
        for index, env in enumerate(envs):
            thetas[index] = env["theta"]
            states[index] = {name: env[name] for name in rule.state}
            if t in wanted:
                snapshot = {"theta": np.array(thetas[index], dtype=np.float64)}
                for name, value in states[index].items():
                    snapshot[name] = np.array(value, dtype=np.float64)
                trajectory[t].append(snapshot)
    return trajectory
