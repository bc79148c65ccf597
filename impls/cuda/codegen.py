"""Generate fused multi-tensor CUDA kernels from a resolved spec.

Design
------
The step of a :class:`~optspec.spec.ResolvedRule` is put in SSA form (every equation defines
a fresh value; a name always denotes its latest definition) and every subexpression gets a
*category*, the lowest place where it can be computed:

=============  ==========================================================  =====================
category       depends on                                                  computed
=============  ==========================================================  =====================
``CONST``      hyperparameters and literals                                host, double
``HOST``       also ``t``, ``lr`` (eta_t), ``lr_multiplier``               host, double, once
``PER_TENSOR`` also per-tensor reductions and per-tensor scalar state      device prelude, double
``ELEMENT``    also ``theta``, ``grad`` and tensor state                   device body, float32
=============  ==========================================================  =====================

A node's category is the maximum of its operands'; a reduction (``norm sum mean max_abs``)
is ``PER_TENSOR`` whatever its argument. Where a lower-category value meets an ``ELEMENT``
operand it becomes a *coefficient*: computed in double (on the host, or in the per-tensor
prelude) and rounded once to float32. This is exactly the ``float32`` precision of the
reference evaluator (:mod:`optspec.reference`): tensors in binary32, scalars in binary64,
rounded where they meet a tensor, in the same order of operations as the spec is written.

Reductions get a *level*: 1 + the highest level of any reduction their argument depends
on. A rule with reductions of levels 1..L runs L reduction passes before the step pass;
pass l recomputes, from the step's inputs, only the SSA values that the level-l reductions
need (nothing is stored) and accumulates them per tensor in double. The step pass then
reads the finalised reductions (``norm`` = sqrt of the sum of squares, ``mean`` = sum /
numel) in its prelude. State initialisation is a pass of its own (``init``).

The output for one resolved rule is a traits struct (see ``optspec_mt.cuh`` for the
interface the hand-written, rule-independent runtime expects) plus ``extern "C"`` entry
points: ``host_scalars`` (the step's host scalars in double), ``init_scalars``, ``info``
and ``run`` (a pass: a kernel launch when compiled by nvcc, the CPU emulation of the same
chunk loop when compiled by a host C++ compiler).

Anything the generator cannot express raises :class:`CodegenError` naming the rule,
variant and equation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from optspec.errors import OptspecError
from optspec.expr import (
    AXIS_REDUCTIONS,
    GLOBAL_REDUCTIONS,
    MATRIX_FUNCTIONS,
    REDUCTIONS,
    ROUNDING_FUNCTIONS,
    SHAPE_QUERIES,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    Unary,
    walk,
)
from optspec.spec import ResolvedRule

#: Why a construct has no kernel: the generator emits elementwise chunk loops with per-tensor
#: reductions, so anything that needs a tensor's shape is out of its reach.
_NO_KERNEL = {
    **{
        f: "a matrix product or transpose couples whole rows and columns (not an elementwise chunk loop)"
        for f in MATRIX_FUNCTIONS
    },
    **{
        f: "a keepdims axis mean is a per-row or per-column reduction (the kernels reduce per tensor only)"
        for f in AXIS_REDUCTIONS
    },
    **{f: "a shape query needs the tensor's shape (the kernels see a flat element range)" for f in SHAPE_QUERIES},
    **{f: "explicit bfloat16 rounding has no C++ translation yet" for f in ROUNDING_FUNCTIONS},
    **{
        f: "a reduction across every tensor of a step needs a grid-wide pass between kernels (kernels reduce per tensor only)"
        for f in GLOBAL_REDUCTIONS
    },
}
#: Why a rule-scope state slot has no kernel.
_NO_KERNEL_RULE_SLOT = (
    "one scalar for the whole rule, carried across steps on the device (the kernels keep per-tensor state only)"
)


def no_kernel_reason(rule: ResolvedRule) -> str | None:
    """Why this resolved rule gets no generated kernel (None when it gets one): the first
    construct of its step or initialisers that the elementwise generator cannot express."""
    exprs = [(loc.where, loc.equation.expr) for loc in rule.equations]
    exprs += [(f"state {name!r} init", slot.init) for name, slot in rule.state.items() if slot.init is not None]
    for where, expr in exprs:
        for node in walk(expr):
            if isinstance(node, Call) and node.func in _NO_KERNEL:
                return f"rule {rule.spec.name!r}: {node.func}() in {where}: {_NO_KERNEL[node.func]}"
    for name in rule.rule_slots:
        return f'rule {rule.spec.name!r}: state {name!r} has scope "rule": {_NO_KERNEL_RULE_SLOT}'
    return None


CONST, HOST, PER_TENSOR, ELEMENT = 0, 1, 2, 3
CATEGORY_NAMES = {CONST: "const", HOST: "host", PER_TENSOR: "per-tensor", ELEMENT: "element"}

INIT_PASS = -1
STEP_PASS = 0

#: reduction -> (accumulator operation, how an element contributes, finalisation)
_REDUCTION_CODE = {
    "norm": ("OPTSPEC_RED_SUM", "(double)({x}) * (double)({x})", "sqrt({acc})"),
    "sum": ("OPTSPEC_RED_SUM", "(double)({x})", "{acc}"),
    "mean": ("OPTSPEC_RED_SUM", "(double)({x})", "{acc} / (double)numel"),
    "max_abs": ("OPTSPEC_RED_MAX", "(double)({x})", "{acc}"),
}
_FLOAT_FUNCS = {"sqrt": "sqrtf", "abs": "fabsf", "exp": "expf", "log": "logf", "cos": "cosf", "floor": "floorf"}
_DOUBLE_FUNCS = {"sqrt": "sqrt", "abs": "fabs", "exp": "exp", "log": "log", "cos": "cos", "floor": "floor"}
_TEMPLATE_FUNCS = {"maximum": "maximum", "minimum": "minimum", "max": "maximum", "min": "minimum", "sign": "sign"}
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})


class CodegenError(OptspecError):
    """The generator cannot express part of a rule; the message names rule, variant and equation."""


# --------------------------------------------------------------------------- IR


@dataclass(frozen=True, eq=False)
class Node:
    """An expression node with names resolved: ``kind`` is one of

    ``lit`` (value), ``hyper``/``builtin``/``theta``/``grad``/``slot``/``sslot`` (inputs,
    ``ref`` = index or name), ``ssa`` (``ref`` = a :class:`Value`), ``red`` (``ref`` = a
    :class:`Reduction`), ``op`` (``ref`` = operator or function name, ``args``).
    """

    kind: str
    ref: object
    args: tuple[Node, ...]
    category: int
    level: int
    key: str


@dataclass(eq=False)
class Value:
    """One SSA definition: the equation ``index`` assigns ``target``."""

    cid: str
    target: str
    node: Node
    index: int
    where: str

    @property
    def category(self) -> int:
        return self.node.category

    @property
    def level(self) -> int:
        return self.node.level


@dataclass(eq=False)
class Reduction:
    index: int
    func: str
    arg: Node
    level: int


@dataclass
class Program:
    """The SSA form of the step (or of the state initialisation)."""

    values: list[Value] = field(default_factory=list)
    reductions: list[Reduction] = field(default_factory=list)
    #: output name -> node: "theta", tensor slots, scalar slots
    outputs: dict[str, Node] = field(default_factory=dict)


def _lit(value: float) -> Node:
    return Node("lit", float(value), (), CONST, 0, f"lit({value!r})")


def _input(kind: str, ref: object, category: int) -> Node:
    return Node(kind, ref, (), category, 0, f"{kind}({ref})")


def _op(name: str, args: Sequence[Node]) -> Node:
    category = max(a.category for a in args)
    level = max(a.level for a in args)
    return Node("op", name, tuple(args), category, level, f"{name}({', '.join(a.key for a in args)})")


def _ssa(value: Value) -> Node:
    return Node("ssa", value, (), value.category, value.level, value.cid)


class _Builder:
    """Converts spec ASTs into IR nodes over an environment of current bindings."""

    def __init__(self, rule: ResolvedRule, program: Program) -> None:
        self.rule = rule
        self.program = program
        self._reductions: dict[str, Reduction] = {}

    def convert(self, expr: Expr, env: Mapping[str, Node], where: str) -> Node:
        if isinstance(expr, Num):
            return _lit(expr.value)
        if isinstance(expr, Name):
            if expr.id not in env:
                raise CodegenError(f"{where}: name {expr.id!r} is not available here (column {expr.column})")
            return env[expr.id]
        if isinstance(expr, Unary):
            operand = self.convert(expr.operand, env, where)
            return operand if expr.op == "+" else _op("neg", [operand])
        if isinstance(expr, Binary):
            return _op(expr.op, [self.convert(expr.left, env, where), self.convert(expr.right, env, where)])
        assert isinstance(expr, Call)
        args = [self.convert(a, env, where) for a in expr.args]
        if expr.func in REDUCTIONS:
            (arg,) = args
            if arg.category < ELEMENT:
                raise CodegenError(
                    f"{where}: {expr.func}() of a {CATEGORY_NAMES[arg.category]} scalar (column {expr.column}); "
                    "the CUDA generator reduces tensor expressions only"
                )
            key = f"{expr.func}({arg.key})"
            reduction = self._reductions.get(key)
            if reduction is None:
                reduction = Reduction(len(self.program.reductions), expr.func, arg, arg.level + 1)
                self.program.reductions.append(reduction)
                self._reductions[key] = reduction
            return Node("red", reduction, (), PER_TENSOR, reduction.level, f"red{reduction.index}")
        return _op(expr.func, args)


def build_step(rule: ResolvedRule) -> Program:
    """SSA form of the step with categories and reduction levels."""
    program = Program()
    builder = _Builder(rule, program)
    tensor_slots = [n for n, s in rule.state.items() if s.kind == "tensor"]
    scalar_slots = [n for n, s in rule.state.items() if s.kind == "scalar"]
    env: dict[str, Node] = {name: _input("hyper", i, CONST) for i, name in enumerate(rule.spec.hyper)}
    env.update({name: _input("builtin", name, HOST) for name in ("t", "lr", "lr_multiplier", "global_grad_norm")})
    env["theta"] = _input("theta", 0, ELEMENT)
    env["grad"] = _input("grad", 0, ELEMENT)
    env.update({name: _input("slot", j, ELEMENT) for j, name in enumerate(tensor_slots)})
    env.update({name: _input("sslot", j, PER_TENSOR) for j, name in enumerate(scalar_slots)})
    for index, loc in enumerate(rule.equations):
        where = f"{loc.where} [variant {rule.variant_label}]"
        node = builder.convert(loc.equation.expr, env, where)
        target = loc.equation.target
        if target in scalar_slots and node.category == ELEMENT:
            raise CodegenError(f"{where}: per-tensor scalar state {target!r} cannot hold an elementwise value")
        value = Value(f"v{index}_{target}", target, node, index, where)
        program.values.append(value)
        env[target] = _ssa(value)
    program.outputs["theta"] = env["theta"]
    for name in [*tensor_slots, *scalar_slots]:
        program.outputs[name] = env[name]
    return program


def build_init(rule: ResolvedRule) -> Program:
    """SSA form of the state initialisers (hyperparameters, theta and earlier slots' values)."""
    program = Program()
    builder = _Builder(rule, program)
    env: dict[str, Node] = {name: _input("hyper", i, CONST) for i, name in enumerate(rule.spec.hyper)}
    env["theta"] = _input("theta", 0, ELEMENT)
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        slot = rule.state[name]
        if slot.init is None:
            return
        from optspec.expr import names_in

        for dep in names_in(slot.init):
            if dep.id in rule.state:
                visit(dep.id)
        where = f"{rule.spec.where} [variant {rule.variant_label}], state {name!r} init {slot.init_text!r}"
        node = builder.convert(slot.init, env, where)
        if program.reductions:
            raise CodegenError(f"{where}: reductions in state initialisers are not supported by the CUDA generator")
        if slot.kind == "scalar" and node.category > HOST:
            raise CodegenError(f"{where}: a per-tensor scalar slot must be initialised from hyperparameters only")
        value = Value(f"i_{name}", name, node, len(program.values), where)
        program.values.append(value)
        env[name] = _ssa(value)
        program.outputs[name] = env[name]

    for name in rule.state:
        visit(name)
    return program


# --------------------------------------------------------------------------- rendering


def _double_literal(value: float) -> str:
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"({float(value).hex()})"


def _float_literal(value: float) -> str:
    # The compiler rounds the exact double to float32 (round to nearest even), as numpy does.
    return f"static_cast<float>({_double_literal(value)})"


def _walk_values(nodes: Iterable[Node], stop_below: int, seen: set[int], out: list[Value], reds: set[int]) -> None:
    """Collect SSA values (category >= stop_below) and reductions reachable from ``nodes``."""
    for node in nodes:
        if node.category < stop_below:
            continue
        if node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            if id(value) not in seen:
                seen.add(id(value))
                _walk_values([value.node], stop_below, seen, out, reds)
                out.append(value)
        elif node.kind == "red":
            reduction = node.ref
            assert isinstance(reduction, Reduction)
            reds.add(reduction.index)
        elif node.kind == "op":
            _walk_values(node.args, stop_below, seen, out, reds)


def _inputs_of(nodes: Iterable[Node]) -> set[tuple[str, object]]:
    """Element inputs (theta, grad, tensor slots) read by the element code of ``nodes``."""
    found: set[tuple[str, object]] = set()
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if node.category < ELEMENT:
            return
        if node.kind in ("theta", "grad", "slot"):
            found.add((node.kind, node.ref))
        elif node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            if id(value) not in seen:
                seen.add(id(value))
                visit(value.node)
        elif node.kind == "op":
            for arg in node.args:
                visit(arg)

    for node in nodes:
        visit(node)
    return found


class _Tables:
    """Host scalars and float coefficients of one program, numbered on first use."""

    def __init__(self) -> None:
        self.host: dict[str, tuple[int, Node]] = {}
        self.coef: dict[str, tuple[int, Node, bool]] = {}

    def host_index(self, node: Node) -> int:
        if node.key not in self.host:
            self.host[node.key] = (len(self.host), node)
        return self.host[node.key][0]

    def coef_index(self, node: Node, truth: bool) -> int:
        key = f"truth({node.key})" if truth else node.key
        if key not in self.coef:
            self.coef[key] = (len(self.coef), node, truth)
        return self.coef[key][0]


class _Renderer:
    """Renders IR nodes as C++ in one of three contexts: element (float), prelude or host (double)."""

    def __init__(self, tables: _Tables, input_names: Mapping[tuple[str, object], str]) -> None:
        self.tables = tables
        self.input_names = input_names
        self.used_coefs: set[int] = set()

    # element context: float32
    def elem(self, node: Node, truth: bool = False) -> str:
        if node.category < ELEMENT:
            if node.kind == "lit" and not truth:
                return _float_literal(float(node.ref))  # type: ignore[arg-type]
            index = self.tables.coef_index(node, truth)
            self.used_coefs.add(index)
            return f"c.f[{index}]"
        if node.kind in ("theta", "grad", "slot"):
            return self.input_names[(node.kind, node.ref)]
        if node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            return value.cid
        assert node.kind == "op"
        return self._op(node, self.elem, "float")

    # prelude context: per-tensor, double
    def prelude(self, node: Node) -> str:
        if node.category <= HOST:
            if node.kind == "lit":
                return _double_literal(float(node.ref))  # type: ignore[arg-type]
            return f"hs[{self.tables.host_index(node)}]"
        if node.kind == "sslot":
            return f"ps_in[{node.ref}]"
        if node.kind == "red":
            reduction = node.ref
            assert isinstance(reduction, Reduction)
            return f"r{reduction.index}"
        if node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            return f"p_{value.cid}"
        assert node.kind == "op", node.kind
        return self._op(node, self.prelude, "double")

    # host context: double
    def host(self, node: Node) -> str:
        if node.kind == "lit":
            return _double_literal(float(node.ref))  # type: ignore[arg-type]
        if node.kind == "hyper":
            return f"hyper[{node.ref}]"
        if node.kind == "builtin":
            return {"t": "t", "lr": "lr", "lr_multiplier": "lrm", "global_grad_norm": "gnorm"}[str(node.ref)]
        if node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            return f"h_{value.cid}"
        assert node.kind == "op", node.kind
        return self._op(node, self.host, "double")

    def _op(self, node: Node, render, ctype: str) -> str:  # type: ignore[no-untyped-def]
        name = str(node.ref)
        args = node.args
        if name == "neg":
            return f"(-{render(args[0])})"
        if name == "**":
            base, exponent = args
            if exponent.kind == "lit" and float(exponent.ref) == 2.0:  # type: ignore[arg-type]
                return f"optspec::square<{ctype}>({render(base)})"
            func = "powf" if ctype == "float" else "pow"
            return f"{func}({render(base)}, {render(exponent)})"
        if name in ("+", "-", "*", "/") or name in _COMPARISONS:
            return f"({render(args[0])} {name} {render(args[1])})"
        if name == "where":
            cond = self.elem(args[0], truth=True) if ctype == "float" else render(args[0])
            a, b = render(args[1]), render(args[2])
            return f"(({cond}) ? static_cast<{ctype}>({a}) : static_cast<{ctype}>({b}))"
        if name in _TEMPLATE_FUNCS:
            rendered = ", ".join(f"static_cast<{ctype}>({render(a)})" for a in args)
            return f"optspec::{_TEMPLATE_FUNCS[name]}<{ctype}>({rendered})"
        table = _FLOAT_FUNCS if ctype == "float" else _DOUBLE_FUNCS
        if name in table:
            return f"{table[name]}({render(args[0])})"
        raise CodegenError(f"function {name!r} has no C++ translation")  # unreachable for parsed specs


# --------------------------------------------------------------------------- the generated kernel


@dataclass(frozen=True)
class PassInfo:
    """What one pass reads and writes, per element (for the byte count) and per tensor."""

    number: int
    reads_theta: bool
    reads_grad: bool
    reads_state: tuple[bool, ...]
    writes_theta: bool
    writes_state: bool


@dataclass(frozen=True)
class GeneratedKernel:
    """The generated C++ of one resolved rule and what the Python driver needs to run it."""

    rule: str
    variant: Mapping[str, str]
    cname: str
    hyper_names: tuple[str, ...]
    tensor_slots: tuple[str, ...]
    scalar_slots: tuple[str, ...]
    reductions: tuple[str, ...]
    levels: int
    n_host: int
    n_host_init: int
    passes: tuple[PassInfo, ...]
    #: the traits struct and host-scalar functions (no entry points)
    body: str
    #: categories of every SSA value, for inspection and tests: cid -> category name
    categories: Mapping[str, str]
    #: elementwise functions whose float32 results may differ between libm and CUDA (exp, log, ...)
    transcendental: bool

    def entry_points(self) -> str:
        """``extern "C"`` functions: info, host_scalars, init_scalars, run (kernel or CPU emulation)."""
        k = self.cname
        cases = []
        for info in self.passes:
            for dtype, (pt, gt) in {"OPTSPEC_DTYPE_F32": ("float", "float"), "OPTSPEC_DTYPE_BF16": ("bf16", "bf16")}.items():
                nh = "K::NHS_INIT" if info.number == INIT_PASS else "K::NHS"
                cases.append((info.number, dtype, pt, gt, nh))
        device = "\n".join(
            f"  if (pass == {p} && dtype == {d}) return (int)launch_pass<K, {pt}, {gt}, {p}, {nh}>("
            "ptrs, numel, chunks, nchunks, chunk_size, hs, red, ps_in, ps_out, (cudaStream_t)(uintptr_t)extra);"
            for p, d, pt, gt, nh in cases
        )
        host = "\n".join(
            f"  if (pass == {p} && dtype == {d}) {{ host_pass<K, {pt}, {gt}, {p}>("
            "ptrs, numel, chunks, nchunks, chunk_size, hs, red, ps_in, ps_out, extra); return 0; }"
            for p, d, pt, gt, nh in cases
        )
        return f"""
extern "C" int optspec_{k}_info(long long* out) {{
  using K = optspec_gen::{k};
  out[0] = K::NS; out[1] = K::NSS; out[2] = K::NR; out[3] = K::LEVELS; out[4] = K::NHS; out[5] = K::NHS_INIT;
  return 0;
}}
extern "C" void optspec_{k}_host_scalars(const double* hyper, double t, double lr, double lrm, double gnorm, double* hs) {{
  optspec_gen::{k}_host_scalars(hyper, t, lr, lrm, gnorm, hs);
}}
extern "C" void optspec_{k}_init_scalars(const double* hyper, double* hs) {{ optspec_gen::{k}_init_scalars(hyper, hs); }}
extern "C" int optspec_{k}_run(int pass, int dtype, const uint64_t* ptrs, const long long* numel, const long long* chunks,
                               long long nchunks, long long chunk_size, const double* hs, double* red, const double* ps_in,
                               double* ps_out, long long extra) {{
  using namespace optspec;
  using K = optspec_gen::{k};
#ifdef __CUDACC__
{device}
#else
{host}
#endif
  return -1;
}}
"""

    def bytes_per_param(self, param_bytes: int = 4, grad_bytes: int | None = None) -> int:
        """Bytes one step moves per parameter with each input read once per pass that needs it.

        State is float32; theta has ``param_bytes``, grad ``grad_bytes`` (default: the same).
        """
        grad_bytes = param_bytes if grad_bytes is None else grad_bytes
        total = 0
        for info in self.passes:
            if info.number == INIT_PASS:
                continue
            total += param_bytes * (info.reads_theta + info.writes_theta) + grad_bytes * info.reads_grad
            total += 4 * sum(info.reads_state) + (4 * len(self.tensor_slots) if info.writes_state else 0)
        return total


def kernel_name(rule: ResolvedRule) -> str:
    digest = hashlib.sha256(rule.variant_label.encode()).hexdigest()[:8]
    return f"{rule.name}_{digest}"


def generate(rule: ResolvedRule) -> GeneratedKernel:
    """Generate the traits struct and host functions of one resolved rule."""
    step = build_step(rule)
    init = build_init(rule)
    tensor_slots = tuple(n for n, s in rule.state.items() if s.kind == "tensor")
    scalar_slots = tuple(n for n, s in rule.state.items() if s.kind == "scalar")
    levels = max((r.level for r in step.reductions), default=0)
    cname = kernel_name(rule)
    input_names: dict[tuple[str, object], str] = {("theta", 0): "th0", ("grad", 0): "gr"}
    input_names.update({("slot", j): f"s{j}_0" for j in range(len(tensor_slots))})

    step_tables, init_tables = _Tables(), _Tables()
    passes: list[PassInfo] = []
    elem_code: dict[int, list[str]] = {}
    coef_code: dict[int, list[str]] = {}
    ns = len(tensor_slots)

    def element_pass(
        number: int, program: Program, tables: _Tables, outputs: Mapping[str, Node], reductions: Sequence[Reduction]
    ) -> None:
        renderer = _Renderer(tables, input_names)
        roots = [*outputs.values(), *(r.arg for r in reductions)]
        values: list[Value] = []
        _walk_values(roots, ELEMENT, set(), values, set())
        values.sort(key=lambda v: v.index)
        reads = _inputs_of(roots)
        lines = []
        if ("theta", 0) in reads:
            lines.append("const float th0 = th;")
        for j in range(ns):
            if ("slot", j) in reads:
                lines.append(f"const float s{j}_0 = s[{j}];")
        for value in values:
            lines.append(f"const float {value.cid} = {renderer.elem(value.node)};  // {value.where}")
        for reduction in reductions:
            op, contribution, _ = _REDUCTION_CODE[reduction.func]
            x = f"x{reduction.index}"
            lines.append(f"const float {x} = {renderer.elem(reduction.arg)};")
            lines.append(f"optspec::accumulate(&acc[{reduction.index}], {op}, {contribution.format(x=x)});")
        stores = number in (STEP_PASS, INIT_PASS)
        if number == STEP_PASS:
            lines.append(f"th = {renderer.elem(outputs['theta'])};")
        if stores:
            for j, name in enumerate(tensor_slots):
                if name in outputs:
                    lines.append(f"s[{j}] = {renderer.elem(outputs[name])};")
        elem_code[number] = lines
        # The prelude: finalised reductions, per-tensor values, coefficients, scalar state.
        prelude = _Renderer(tables, input_names)
        scalar_outputs = [(j, outputs[name]) for j, name in enumerate(scalar_slots) if name in outputs]
        coef_nodes = [(i, node, truth) for i, node, truth in tables.coef.values() if i in renderer.used_coefs]
        pre_roots = [node for _, node, _ in coef_nodes] + [node for _, node in scalar_outputs]
        pre_values: list[Value] = []
        red_used: set[int] = set()
        _walk_values(pre_roots, PER_TENSOR, set(), pre_values, red_used)
        pre_values = [v for v in sorted(pre_values, key=lambda v: v.index) if v.category == PER_TENSOR]
        for v in pre_values:
            _walk_values([v.node], PER_TENSOR, set(), [], red_used)
        plines = []
        for index in sorted(red_used):
            reduction = program.reductions[index]
            if number != STEP_PASS and reduction.level >= number:
                raise CodegenError(f"rule {rule.name!r}: reduction {index} is needed before it is computed")  # internal
            plines.append(f"const double r{index} = {_REDUCTION_CODE[reduction.func][2].format(acc=f'red[{index}]')};")
        for value in pre_values:
            plines.append(f"const double p_{value.cid} = {prelude.prelude(value.node)};  // {value.where}")
        for i, node, truth in sorted(coef_nodes, key=lambda item: item[0]):
            text = prelude.prelude(node)
            if truth:
                text = f"static_cast<bool>({text})"
            plines.append(f"c.f[{i}] = static_cast<float>({text});")
        for j, node in scalar_outputs:
            plines.append(f"ps_new[{j}] = {prelude.prelude(node)};")
        coef_code[number] = plines
        passes.append(
            PassInfo(
                number=number,
                reads_theta=("theta", 0) in reads,
                reads_grad=("grad", 0) in reads,
                reads_state=tuple(("slot", j) in reads for j in range(ns)),
                writes_theta=number == STEP_PASS,
                writes_state=stores and bool(tensor_slots),
            )
        )

    element_pass(INIT_PASS, init, init_tables, init.outputs, [])
    for level in range(1, levels + 1):
        element_pass(level, step, step_tables, {}, [r for r in step.reductions if r.level == level])
    element_pass(STEP_PASS, step, step_tables, step.outputs, [])

    # Host scalar functions: every host-category value, then the hoisted expressions.
    def host_function(program: Program, tables: _Tables, signature: str) -> list[str]:
        renderer = _Renderer(tables, input_names)
        lines = [f"static inline void {signature} {{"]
        for value in program.values:
            if value.category <= HOST:
                lines.append(f"  const double h_{value.cid} = {renderer.host(value.node)};  // {value.where}")
                lines.append(f"  (void)h_{value.cid};")
        for key, (index, node) in sorted(tables.host.items(), key=lambda item: item[1][0]):
            lines.append(f"  hs[{index}] = {renderer.host(node)};  // {key}")
        lines.append("  (void)hyper; (void)hs;")
        lines.append("}")
        return lines

    host_lines = host_function(
        step, step_tables, f"{cname}_host_scalars(const double* hyper, double t, double lr, double lrm, double gnorm, double* hs)"
    )
    host_lines.insert(-1, "  (void)t; (void)lr; (void)lrm; (void)gnorm;")
    init_lines = host_function(init, init_tables, f"{cname}_init_scalars(const double* hyper, double* hs)")

    def branches(code: Mapping[int, list[str]], indent: str) -> str:
        out = []
        for number in sorted(code):
            body = "\n".join(f"{indent}  {line}" for line in code[number]) or f"{indent}  // nothing"
            out.append(f"{indent}if constexpr (PASS == {number}) {{\n{body}\n{indent}}}")
        return "\n".join(out)

    def table(name: str, entries: Sequence[object], default: str) -> str:
        body = " : ".join(f"k == {i} ? {e}" for i, e in enumerate(entries))
        return f"  static constexpr OPTSPEC_HD int {name}(int k) {{ return {body + ' : ' if body else ''}{default}; }}"

    def flag(attribute: str) -> str:
        true = [str(p.number) for p in passes if getattr(p, attribute)]
        return " || ".join(f"pass == {n}" for n in true) or "false"

    state_reads = " || ".join(
        f"(pass == {p.number} && ({' || '.join(f'j == {j}' for j, r in enumerate(p.reads_state) if r)}))"
        for p in passes
        if any(p.reads_state)
    )
    n_coef = max(len(step_tables.coef), len(init_tables.coef), 1)
    categories = {v.cid: CATEGORY_NAMES[v.category] for v in step.values}
    transcendental = any(
        name in ("exp", "log", "cos") or name == "**"
        for name in _op_names([v.node for v in step.values if v.category == ELEMENT] + [r.arg for r in step.reductions])
    )
    body = "\n".join(
        [
            f"// rule {rule.name!r}, variant {rule.variant_label}",
            f"// spec {rule.spec.path} sha256 {rule.spec.sha256}",
            f"// tensor state: {', '.join(tensor_slots) or 'none'}; per-tensor scalar state: {', '.join(scalar_slots) or 'none'}",
            f"// reductions: {', '.join(f'{r.func}@level{r.level}' for r in step.reductions) or 'none'}",
            "namespace optspec_gen {",
            f"struct {cname} {{",
            f"  static constexpr int NS = {len(tensor_slots)};",
            f"  static constexpr int NSS = {len(scalar_slots)};",
            f"  static constexpr int NR = {len(step.reductions)};",
            f"  static constexpr int LEVELS = {levels};",
            f"  static constexpr int NHS = {len(step_tables.host)};",
            f"  static constexpr int NHS_INIT = {len(init_tables.host)};",
            f"  struct Coef {{ float f[{n_coef}]; }};",
            f"  static constexpr OPTSPEC_HD bool loads_theta(int pass) {{ return {flag('reads_theta')}; }}",
            f"  static constexpr OPTSPEC_HD bool loads_grad(int pass) {{ return {flag('reads_grad')}; }}",
            f"  static constexpr OPTSPEC_HD bool loads_state(int pass, int j) {{ return {state_reads or 'false'}; }}",
            table("reduce_level", [r.level for r in step.reductions], "0"),
            table("reduce_op", [_REDUCTION_CODE[r.func][0] for r in step.reductions], "0"),
            "  template <int PASS>",
            "  static OPTSPEC_HD void coef(const double* hs, const double* red, const double* ps_in, long long numel, Coef& c,",
            "                              double* ps_new) {",
            "    (void)hs; (void)red; (void)ps_in; (void)numel; (void)c; (void)ps_new;",
            branches(coef_code, "    "),
            "  }",
            "  template <int PASS>",
            "  static OPTSPEC_HD void elem(const Coef& c, float& th, float gr, float* s, double* acc) {",
            "    (void)c; (void)th; (void)gr; (void)s; (void)acc;",
            branches(elem_code, "    "),
            "  }",
            "};",
            *host_lines,
            *init_lines,
            "}  // namespace optspec_gen",
        ]
    )
    return GeneratedKernel(
        rule=rule.name,
        variant=dict(rule.variant),
        cname=cname,
        hyper_names=tuple(rule.spec.hyper),
        tensor_slots=tensor_slots,
        scalar_slots=scalar_slots,
        reductions=tuple(r.func for r in step.reductions),
        levels=levels,
        n_host=len(step_tables.host),
        n_host_init=len(init_tables.host),
        passes=tuple(sorted(passes, key=lambda p: p.number)),
        body=body,
        categories=categories,
        transcendental=transcendental,
    )


def _op_names(nodes: Iterable[Node]) -> set[str]:
    names: set[str] = set()
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if node.category < ELEMENT:
            return  # computed in double on the host or in the prelude, not in the element body
        if node.kind == "op":
            if node.ref == "**" and node.args[1].kind == "lit" and float(node.args[1].ref) == 2.0:  # type: ignore[arg-type]
                names.add("square")
                visit(node.args[0])
                return
            names.add(str(node.ref))
            for arg in node.args:
                visit(arg)
        elif node.kind == "ssa":
            value = node.ref
            assert isinstance(value, Value)
            if id(value) not in seen:
                seen.add(id(value))
                visit(value.node)

    for node in nodes:
        visit(node)
    return names


def translation_unit(kernels: Sequence[GeneratedKernel], runtime_include: str = "optspec_mt.cuh") -> str:
    """One .cu file with the runtime include, every kernel's traits and its entry points.

    The same file compiles with nvcc (kernels and launchers) and with a host C++ compiler
    (``-x c++``: the CPU emulation of the same passes).
    """
    parts = [
        "// Generated by optspec.impls.cuda.codegen; do not edit. Regenerate with",
        "//   python -m optspec.impls.cuda.build",
        f'#include "{runtime_include}"',
    ]
    for kernel in kernels:
        parts.append(kernel.body)
        parts.append(kernel.entry_points())
    return "\n".join(parts) + "\n"
