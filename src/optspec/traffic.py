"""The minimum memory traffic of one optimizer step, derived from a resolved spec.

An elementwise optimizer step is memory-bound: its physical limit is the number of bytes it
must move between memory and the compute units, divided by the device's bandwidth. This
module derives that byte count from the equations of a :class:`~optspec.spec.ResolvedRule`
instead of a hand-written table per rule, so that a new rule or variant gets its figure
from its spec.

The model (what "minimum" means here):

* Memory holds ``theta`` and ``grad`` (parameter dtype) and every tensor state slot (state
  dtype). Locals live in registers; per-tensor scalars (step counts, bias corrections,
  norms once reduced) are negligible and counted as zero.
* Hyperparameter values are substituted and the step is simplified (``0 * x`` is 0,
  ``where(1, a, b)`` is ``a``), then dead work is removed: a state slot is kept only if its
  value at the start of a step is read by work that reaches ``theta`` (checked to a fixed
  point), so SGD with ``momentum = 0`` keeps no buffer, as torch does.
* One *pass* streams over the elements once: each stored tensor it needs is read once and
  each stored tensor it updates is written once. A per-tensor reduction (``norm``,
  ``sum``, ``mean``, ``max_abs``) must finish before anything that uses its result, so
  such work runs in a later pass (LAMB's trust ratio: the norms in pass 1, the update in
  pass 2). A tensor a later pass needs is re-read from memory if it is stored there,
  recomputed from what is stored (re-reading its sources) or, if that costs more,
  written to a temporary in its pass and read back (two element accesses).
* ``lr`` is the scheduled learning rate eta_t: it is never folded, so ``lr = 0`` does not
  make the update vanish.

Unit: bytes per parameter element per step; multiply by the number of elements (per-tensor
scalars are neglected). Figures in float32 (``param_bytes = state_bytes = 4``): SGD 12,
SGD with momentum 20, Adam 28, Adam with AMSGrad 36; bfloat16 parameters and gradients with
float32 state: Adam 22.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from optspec.expr import REDUCTIONS, Binary, Call, Expr, Name, Num, Unary
from optspec.spec import BUILTIN_NAMES, ResolvedRule

#: Names bound to the parameter dtype; every other stored tensor has the state dtype.
PARAM_DTYPE_TENSORS = frozenset({"theta", "grad"})
#: Element accesses a spilled temporary costs (one write, one read).
SPILL_COST = 2
#: Builtins never substituted by a value (``lr`` is eta_t, not the base rate).
_UNFOLDED = frozenset({"lr", "t", "lr_multiplier"})
#: Placement combinations searched for the cheapest schedule of a multi-pass step.
_MAX_CANDIDATES = 4096


@dataclass(frozen=True)
class Pass:
    """One sweep over the elements: the stored tensors it reads and writes."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]


@dataclass(frozen=True)
class Traffic:
    """Stored tensors read and written by one step, pass by pass.

    Names are ``theta``, ``grad``, state slot names, ``tmp:<local>`` for a spilled
    intermediate and ``saved:<name>`` for a copy kept because a pass overwrites a tensor a
    later pass still needs.
    """

    rule: str
    variant: Mapping[str, str]
    passes: tuple[Pass, ...]

    @staticmethod
    def _bytes_of(name: str, param_bytes: float, state_bytes: float) -> float:
        base = name.split(":", 1)[-1]
        return param_bytes if base in PARAM_DTYPE_TENSORS and not name.startswith("tmp:") else state_bytes

    def bytes_per_param(self, param_bytes: float = 4, state_bytes: float = 4) -> float:
        """Bytes moved per parameter element: every read and write of every pass."""
        return sum(self._bytes_of(name, param_bytes, state_bytes) for step in self.passes for name in (*step.reads, *step.writes))

    def step_bytes(self, numel: int, param_bytes: float = 4, state_bytes: float = 4) -> int:
        """Bytes one step over ``numel`` parameter elements must move (scalars neglected)."""
        return round(numel * self.bytes_per_param(param_bytes, state_bytes))

    @property
    def state_tensors(self) -> tuple[str, ...]:
        """State slots the step keeps in memory (read or written by some pass)."""
        names = {n for step in self.passes for n in (*step.reads, *step.writes)}
        return tuple(sorted(n for n in names if n not in PARAM_DTYPE_TENSORS and ":" not in n))

    def explain(self) -> str:
        """One line per pass, e.g. ``pass 1: read theta, grad, m; write theta, m``."""
        lines = []
        for index, step in enumerate(self.passes, 1):
            reads = ", ".join(step.reads) or "nothing"
            writes = ", ".join(step.writes) or "nothing"
            lines.append(f"pass {index}: read {reads}; write {writes}")
        return "\n".join(lines)


def step_traffic(rule: ResolvedRule, hyper: Mapping[str, float] | None = None) -> Traffic:
    """Derive the passes of one steady-state step (t > 1) of ``rule`` at these hyperparameters.

    ``hyper`` overrides the spec's defaults (unknown names or values outside a domain raise
    :class:`~optspec.errors.SpecError`).
    """
    values = rule.spec.hyper_values(hyper)
    consts = {name: value for name, value in values.items() if name not in _UNFOLDED}
    return _Analysis(rule, consts).run()


def bytes_per_param(
    rule: ResolvedRule, hyper: Mapping[str, float] | None = None, param_bytes: float = 4, state_bytes: float = 4
) -> float:
    """Shorthand for ``step_traffic(rule, hyper).bytes_per_param(param_bytes, state_bytes)``."""
    return step_traffic(rule, hyper).bytes_per_param(param_bytes, state_bytes)


# --------------------------------------------------------------------------- folding


def fold(expr: Expr, consts: Mapping[str, float]) -> Expr:
    """Substitute ``consts`` and simplify what the traffic depends on (zeros, ones, where)."""
    if isinstance(expr, Num):
        return expr
    if isinstance(expr, Name):
        return Num(float(consts[expr.id]), expr.column) if expr.id in consts else expr
    if isinstance(expr, Unary):
        operand = fold(expr.operand, consts)
        if isinstance(operand, Num):
            return Num(-operand.value if expr.op == "-" else operand.value, expr.column)
        return Unary(expr.op, operand, expr.column)
    if isinstance(expr, Binary):
        return _fold_binary(expr.op, fold(expr.left, consts), fold(expr.right, consts), expr.column)
    assert isinstance(expr, Call)
    args = tuple(fold(arg, consts) for arg in expr.args)
    if expr.func == "where":
        condition, if_true, if_false = args
        if isinstance(condition, Num):
            return if_true if condition.value != 0 else if_false
        if _key(if_true) == _key(if_false):
            return if_true
    return Call(expr.func, args, expr.column)


def _fold_binary(op: str, left: Expr, right: Expr, column: int) -> Expr:
    if isinstance(left, Num) and isinstance(right, Num):
        value = _evaluate(op, left.value, right.value)
        if value is not None:
            return Num(value, column)
    zero_left = isinstance(left, Num) and left.value == 0
    zero_right = isinstance(right, Num) and right.value == 0
    one_left = isinstance(left, Num) and left.value == 1
    one_right = isinstance(right, Num) and right.value == 1
    if op == "*" and (zero_left or zero_right):
        return Num(0.0, column)
    if op == "*" and one_left:
        return right
    if op in ("*", "/", "**") and one_right:
        return left
    if op == "+" and zero_left:
        return right
    if op in ("+", "-") and zero_right:
        return left
    if op == "/" and zero_left:
        return Num(0.0, column)
    return Binary(op, left, right, column)


def _evaluate(op: str, a: float, b: float) -> float | None:
    try:
        result = {
            "+": lambda: a + b,
            "-": lambda: a - b,
            "*": lambda: a * b,
            "/": lambda: a / b,
            "**": lambda: a**b,
            "<": lambda: float(a < b),
            "<=": lambda: float(a <= b),
            ">": lambda: float(a > b),
            ">=": lambda: float(a >= b),
            "==": lambda: float(a == b),
            "!=": lambda: float(a != b),
        }[op]()
    except (ZeroDivisionError, OverflowError):
        return None
    if isinstance(result, complex) or not math.isfinite(result):
        return None
    return float(result)


def _key(expr: Expr) -> tuple[object, ...]:
    """Structure of an expression without source columns (for ``where(c, a, a)``)."""
    if isinstance(expr, Num):
        return ("num", expr.value)
    if isinstance(expr, Name):
        return ("name", expr.id)
    if isinstance(expr, Unary):
        return ("unary", expr.op, _key(expr.operand))
    if isinstance(expr, Binary):
        return ("binary", expr.op, _key(expr.left), _key(expr.right))
    assert isinstance(expr, Call)
    return ("call", expr.func, *(_key(arg) for arg in expr.args))


# --------------------------------------------------------------------------- analysis


@dataclass
class _Node:
    """One equation in SSA form: ``operands`` maps each name it reads to a value id."""

    index: int
    target: str
    expr: Expr
    operands: dict[str, str]
    kind: str
    level: int = 0


class _Analysis:
    """SSA over one step: value ids are ``in:<name>`` (start of step) or ``n<index>``."""

    def __init__(self, rule: ResolvedRule, consts: Mapping[str, float]) -> None:
        self.rule = rule
        self.stored = {"theta", "grad"} | {name for name, slot in rule.state.items() if slot.kind == "tensor"}
        self.nodes: dict[str, _Node] = {}
        env: dict[str, str] = {name: f"in:{name}" for name in (*BUILTIN_NAMES, *rule.state)}
        for index, located in enumerate(rule.equations):
            equation = located.equation
            expr = fold(equation.expr, consts)
            operands = {name.id: env[name.id] for name in _names(expr)}
            node = _Node(index, equation.target, expr, operands, self._kind(expr, operands))
            self.nodes[f"n{index}"] = node
            env[equation.target] = f"n{index}"
        self.final = {name: env[name] for name in self.stored if name != "grad"}

    # -- kinds and levels

    def _value_kind(self, value: str) -> str:
        if value.startswith("in:"):
            name = value[3:]
            if name in self.rule.state:
                return self.rule.state[name].kind
            return BUILTIN_NAMES.get(name, "scalar")
        return self.nodes[value].kind

    def _kind(self, expr: Expr, operands: Mapping[str, str]) -> str:
        if isinstance(expr, Num):
            return "scalar"
        if isinstance(expr, Name):
            return self._value_kind(operands[expr.id])
        if isinstance(expr, Call) and expr.func in REDUCTIONS:
            return "scalar"
        children = _children(expr)
        return "tensor" if any(self._kind(child, operands) == "tensor" for child in children) else "scalar"

    def _level(self, expr: Expr, operands: Mapping[str, str]) -> int:
        """The first pass in which ``expr`` can be evaluated elementwise."""
        if isinstance(expr, Num):
            return 0
        if isinstance(expr, Name):
            value = operands[expr.id]
            return 0 if value.startswith("in:") else self.nodes[value].level
        if isinstance(expr, Call) and expr.func in REDUCTIONS:
            (arg,) = expr.args
            inner = self._level(arg, operands)
            return inner + 1 if self._kind(arg, operands) == "tensor" else inner
        return max((self._level(child, operands) for child in _children(expr)), default=0)

    # -- liveness

    def _live(self) -> tuple[set[str], set[str]]:
        """Live node ids and the state slots whose stored value must survive the step."""
        kept: set[str] = set()
        while True:
            roots = [self.final["theta"], *(self.final[s] for s in kept)]
            live: set[str] = set()
            inputs: set[str] = set()
            stack = [v for v in roots if not v.startswith("in:")]
            while stack:
                value = stack.pop()
                if value in live:
                    continue
                live.add(value)
                for operand in self.nodes[value].operands.values():
                    if operand.startswith("in:"):
                        inputs.add(operand[3:])
                    else:
                        stack.append(operand)
            now = {name for name in inputs if name in self.stored and name not in ("theta", "grad")}
            if now <= kept:
                return live, kept
            kept |= now

    # -- placement: which pass computes each live tensor node

    def _placements(self, live: set[str]) -> tuple[list[str], list[tuple[int, Expr, dict[str, str]]], list[dict[str, int]]]:
        """Live tensor nodes, reduction sweeps (pass, argument, operands) and candidate placements.

        A tensor node can run in any pass from its level (its inputs exist) up to the first
        pass that consumes it; a node nothing in the step consumes (a stored result) can run
        in any pass from its level on. Every combination is a candidate (at most
        ``_MAX_CANDIDATES``; beyond that, earliest placement only).
        """
        ordered = sorted(live, key=lambda v: self.nodes[v].index)
        for value in ordered:
            node = self.nodes[value]
            node.level = self._level(node.expr, node.operands)
        reductions: list[tuple[int, Expr, dict[str, str]]] = []
        for value in ordered:
            node = self.nodes[value]
            for arg in _reduction_args(node.expr):
                if self._kind(arg, node.operands) == "tensor":
                    reductions.append((self._level(arg, node.operands), arg, node.operands))
        last = max([self.nodes[v].level for v in ordered] + [at for at, *_ in reductions], default=0)
        tensors = [v for v in ordered if self.nodes[v].kind == "tensor"]
        fixed_uses: dict[str, int] = {}
        for at, arg, operands in reductions:
            for name in _names(arg, skip_reductions=True):
                value = operands[name.id]
                fixed_uses[value] = min(fixed_uses.get(value, at), at)
        users: dict[str, list[str]] = {}
        for value in tensors:
            for name in _names(self.nodes[value].expr, skip_reductions=True):
                users.setdefault(self.nodes[value].operands[name.id], []).append(value)

        candidates: list[dict[str, int]] = []

        def assign(index: int, placed: dict[str, int]) -> None:
            if len(candidates) >= _MAX_CANDIDATES:
                return
            if index < 0:
                candidates.append(dict(placed))
                return
            value = tensors[index]
            uses = [placed[user] for user in users.get(value, [])]
            if value in fixed_uses:
                uses.append(fixed_uses[value])
            high = min(uses) if uses else last
            for place in range(self.nodes[value].level, max(high, self.nodes[value].level) + 1):
                placed[value] = place
                assign(index - 1, placed)
            del placed[value]

        assign(len(tensors) - 1, {})
        if len(candidates) >= _MAX_CANDIDATES:
            earliest = {v: self.nodes[v].level for v in tensors}
            candidates = [earliest]
        return tensors, reductions, candidates

    def run(self) -> Traffic:
        live, kept = self._live()
        tensors, reductions, candidates = self._placements(live)
        best: tuple[float, list[set[str]], list[set[str]]] | None = None
        for placed in candidates:
            reads, writes = self._sweeps(tensors, reductions, kept, placed)
            cost = sum(len(r) + len(w) for r, w in zip(reads, writes))
            if best is None or cost < best[0]:
                best = (cost, reads, writes)
        assert best is not None
        _, reads, writes = best
        ordered = [Pass(tuple(sorted(r, key=_order)), tuple(sorted(w, key=_order))) for r, w in zip(reads, writes)]
        return Traffic(self.rule.name, dict(self.rule.variant), tuple(p for p in ordered if p.reads or p.writes))

    def _sweeps(
        self,
        tensors: list[str],
        reductions: list[tuple[int, Expr, dict[str, str]]],
        kept: set[str],
        placed: Mapping[str, int],
    ) -> tuple[list[set[str]], list[set[str]]]:
        """Stored tensors each pass reads and writes for one placement of the tensor nodes."""
        passes = max([*placed.values(), *(at for at, *_ in reductions)], default=0) + 1
        reads: list[set[str]] = [set() for _ in range(passes)]
        writes: list[set[str]] = [set() for _ in range(passes)]
        stored_final = {self.final["theta"]: "theta", **{self.final[s]: s for s in kept}}
        written_in: dict[str, int] = {}
        for value, name in stored_final.items():
            if not value.startswith("in:"):
                written_in[name] = placed[value]
                writes[placed[value]].add(name)

        def need(value: str, at: int) -> None:
            """Make tensor ``value`` available to the sweep of pass ``at``."""
            if self._value_kind(value) != "tensor":
                return
            if value.startswith("in:"):
                name = value[3:]
                overwritten = written_in.get(name)
                if overwritten is not None and overwritten < at:
                    # a pass overwrote it: that pass keeps a copy of the old value
                    reads[overwritten].add(name)
                    writes[overwritten].add(f"saved:{name}")
                    reads[at].add(f"saved:{name}")
                else:
                    reads[at].add(name)
                return
            if placed[value] == at:
                return  # computed in this sweep
            if value in stored_final:
                reads[at].add(stored_final[value])
                return
            sources = self._sources(value, stored_final)
            names = {stored_final.get(source, source.removeprefix("in:")) for source in sources}
            if len(names - reads[at]) <= SPILL_COST:
                for source in sources:
                    need(source, at)
            else:
                node = self.nodes[value]
                writes[placed[value]].add(f"tmp:{node.target}")
                reads[at].add(f"tmp:{node.target}")

        work = [(at, arg, operands) for at, arg, operands in reductions]
        work += [(placed[v], self.nodes[v].expr, self.nodes[v].operands) for v in tensors]
        for at, expr, operands in work:
            for name in _names(expr, skip_reductions=True):
                need(operands[name.id], at)
        return reads, writes

    def _sources(self, value: str, stored_final: Mapping[str, str]) -> set[str]:
        """Tensor values in memory (inputs, stored results) an intermediate is recomputed from."""
        out: set[str] = set()
        for operand in self.nodes[value].operands.values():
            if self._value_kind(operand) != "tensor":
                continue
            if operand.startswith("in:") or operand in stored_final:
                out.add(operand)
            else:
                out |= self._sources(operand, stored_final)
        return out


def _children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    return ()


def _names(expr: Expr, skip_reductions: bool = False) -> list[Name]:
    """Names an expression reads; with ``skip_reductions`` not those inside a reduction."""
    if isinstance(expr, Name):
        return [expr]
    if skip_reductions and isinstance(expr, Call) and expr.func in REDUCTIONS:
        return []
    return [name for child in _children(expr) for name in _names(child, skip_reductions)]


def _reduction_args(expr: Expr) -> list[Expr]:
    if isinstance(expr, Call) and expr.func in REDUCTIONS:
        return [expr.args[0], *_reduction_args(expr.args[0])]
    return [arg for child in _children(expr) for arg in _reduction_args(child)]


def _order(name: str) -> tuple[int, str]:
    base = name.split(":", 1)[-1]
    rank = {"theta": 0, "grad": 1}.get(base, 2)
    return (rank + (3 if ":" in name else 0), name)
