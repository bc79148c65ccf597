"""The restricted expression language of optspec specs.

A spec's step is a list of equations ``[label:] target = expression``. Expressions use
numbers, names, ``+ - * / **``, unary minus and plus, the comparisons
``< <= > >= == !=`` and calls of a fixed set of functions:

==============================  =======  ==================================================
function                        arity    meaning
==============================  =======  ==================================================
``where(c, a, b)``              3        elementwise ``a`` where ``c`` holds, else ``b``
``sqrt abs sign exp log``       1        elementwise
``cos floor``                   1        elementwise (for schedules)
``min max``                     2        of two per-tensor *scalars*
``maximum minimum``             2        elementwise
``norm sum mean max_abs``       1        per-tensor reductions: ``||x||_2`` (the Frobenius
                                         norm of a matrix), ``sum x``, ``mean x``,
                                         ``max |x|``; the result is a scalar
``matmul(a, b)``                2        matrix product of 2-D tensors, (r, n) (n, c) -> (r, c):
                                         each element a dot product of n terms
``transpose(x)``                1        a 2-D tensor's transpose (exact)
``rows(x) cols(x)``             1        shape queries: the size of axis -2 (1 for ndim < 2)
                                         and of the last axis (1 for a scalar); a scalar
``row_mean(x) col_mean(x)``     1        means with keepdims: over the last axis (r, c) ->
                                         (r, 1) and over axis -2 (r, c) -> (1, c); the
                                         identity where that axis does not exist
``round_bf16(x)``               1        round to the nearest bfloat16 (8-bit significand,
                                         ties to even), kept in the evaluation's type
``sum_all(x)``                  1        a reduction across every tensor of the step:
                                         sum over tensors i of sum(x_i) (of x_i itself for a
                                         per-tensor scalar); the same scalar for every tensor
==============================  =======  ==================================================

An equation ``[label:] repeat N: eq1; eq2; ...`` is a fixed-count loop: its body (plain
equations without labels, separated by ``;``) runs N times in order; ``N`` is a literal whole
number from 1 to :data:`MAX_REPEAT`. The spec layer unrolls it when it resolves a variant, so
the evaluators only ever see plain equations; a variant replaces the loop as a whole by label.

``**`` binds tighter than unary minus and is right-associative, as in Python and in the
papers (``-a**2 == -(a**2)``). Comparisons do not chain.

This module only parses: it turns text into an AST and never evaluates anything, and it
never uses Python's ``eval``. Any input either parses or raises :class:`ExprError` with a
1-based column; no other exception escapes (a property-based test feeds it random text).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from optspec.errors import ExprError

#: Elementwise functions of one argument.
UNARY_FUNCTIONS = frozenset({"sqrt", "abs", "sign", "exp", "log", "cos", "floor"})
#: Per-tensor reductions: tensor in, scalar out.
REDUCTIONS = frozenset({"norm", "sum", "mean", "max_abs"})
#: Functions of tensors whose shapes matter (matrices, axes); see the table above.
MATRIX_FUNCTIONS = frozenset({"matmul", "transpose"})
SHAPE_QUERIES = frozenset({"rows", "cols"})
AXIS_REDUCTIONS = frozenset({"row_mean", "col_mean"})
#: Explicit rounding to a narrower format, whatever the evaluation's precision.
ROUNDING_FUNCTIONS = frozenset({"round_bf16"})
#: Reductions across every tensor of a step (Prodigy's and D-Adaptation's sums): the evaluators
#: compute the argument for every tensor before the equation that reads the total.
GLOBAL_REDUCTIONS = frozenset({"sum_all"})
#: Every function whose evaluation needs the tensor's shape (not only its elements).
SHAPED_FUNCTIONS = MATRIX_FUNCTIONS | SHAPE_QUERIES | AXIS_REDUCTIONS
#: Functions of two per-tensor scalars.
SCALAR_BINARY_FUNCTIONS = frozenset({"min", "max"})
#: Elementwise functions of two arguments.
ELEMENTWISE_BINARY_FUNCTIONS = frozenset({"maximum", "minimum"})

FUNCTION_ARITY: dict[str, int] = {
    "where": 3,
    "matmul": 2,
    **{
        name: 1
        for name in UNARY_FUNCTIONS | REDUCTIONS | SHAPE_QUERIES | AXIS_REDUCTIONS | ROUNDING_FUNCTIONS | GLOBAL_REDUCTIONS
    },
    "transpose": 1,
    **{name: 2 for name in SCALAR_BINARY_FUNCTIONS | ELEMENTWISE_BINARY_FUNCTIONS},
}

COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")

T = TypeVar("T")

#: At most this many binary operators in one expression. The walks in this module and in
#: :mod:`optspec.spec` keep their own stacks, but the evaluators that consume an AST
#: (the reference compiler, the code generators) recurse once or a few times per level of
#: a left-deep chain ``a + b + c + ...``; the command line raises Python's recursion
#: limit to :data:`RECURSION_LIMIT` so that every expression accepted here can be evaluated.
MAX_OPERATIONS = 4000
#: Enough Python frames for the deepest accepted expression (nesting <= 100 plus
#: MAX_OPERATIONS left-deep operators) in a recursive evaluator that uses up to five
#: frames per level; below the depth at which C-level recursion would exhaust the stack.
RECURSION_LIMIT = 5 * (MAX_OPERATIONS + 2 * 100) + 2000


@dataclass(frozen=True)
class Num:
    value: float
    column: int


@dataclass(frozen=True)
class Name:
    id: str
    column: int


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "+"
    operand: Expr
    column: int


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / ** and the comparisons
    left: Expr
    right: Expr
    column: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    column: int


Expr = Num | Name | Unary | Binary | Call


@dataclass(frozen=True)
class Equation:
    """``label: target = expr``; ``label`` is optional and only used by variant edits.

    A loop ``label: repeat N: body`` is an Equation too, with ``repeat = N``, the body's
    equations in ``body``, an empty ``target`` and the loop's first body expression in
    ``expr`` (so that code which only reads names still sees a real expression).
    """

    label: str | None
    target: str
    expr: Expr
    text: str
    #: column (1-based, in ``text``) where the expression starts
    expr_column: int
    #: N of ``repeat N:``; 0 for a plain equation
    repeat: int = 0
    body: tuple[Equation, ...] = ()


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>\*\*|<=|>=|==|!=|[-+*/()<>,])
    """,
    re.VERBOSE | re.ASCII,
)


def _short(text: str, limit: int = 40) -> str:
    """A token as shown in a message: a 10 MB number or name is cut to its first characters."""
    return text if len(text) <= limit else f"{text[: limit - 10]}...({len(text)} characters)"


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, name, op, end
    text: str
    column: int


def _tokenize(text: str, offset: int = 0) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ExprError(f"unexpected character {text[pos]!r}", offset + pos + 1)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), offset + pos + 1))
        pos = match.end()
    tokens.append(_Tok("end", "", offset + len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent over the token list; one method per precedence level."""

    #: deeper nesting than this is reported, not left to Python's recursion limit
    MAX_DEPTH = 100

    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.operations = 0

    def operation(self, column: int) -> None:
        """Count one binary operator; more than :data:`MAX_OPERATIONS` in one expression is an error."""
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise ExprError(f"more than {MAX_OPERATIONS} operators in one expression; split it into several equations", column)

    def nest(self, column: int) -> None:
        self.depth += 1
        if self.depth > self.MAX_DEPTH:
            raise ExprError(f"expression nested more than {self.MAX_DEPTH} levels deep", column)

    @property
    def tok(self) -> _Tok:
        return self.tokens[self.pos]

    def advance(self) -> _Tok:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def expect(self, text: str) -> _Tok:
        if self.tok.text != text or self.tok.kind != "op":
            found = "end of expression" if self.tok.kind == "end" else repr(_short(self.tok.text))
            raise ExprError(f"expected {text!r}, found {found}", self.tok.column)
        return self.advance()

    def parse(self) -> Expr:
        expr = self.comparison()
        if self.tok.kind != "end":
            raise ExprError(f"unexpected {_short(self.tok.text)!r} after a complete expression", self.tok.column)
        return expr

    def comparison(self) -> Expr:
        left = self.additive()
        if self.tok.kind == "op" and self.tok.text in COMPARISONS:
            op = self.advance()
            self.operation(op.column)
            right = self.additive()
            if self.tok.kind == "op" and self.tok.text in COMPARISONS:
                raise ExprError("comparisons do not chain; use where() or parentheses", self.tok.column)
            return Binary(op.text, left, right, op.column)
        return left

    def additive(self) -> Expr:
        left = self.term()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.advance()
            self.operation(op.column)
            left = Binary(op.text, left, self.term(), op.column)
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/"):
            op = self.advance()
            self.operation(op.column)
            left = Binary(op.text, left, self.unary(), op.column)
        return left

    def unary(self) -> Expr:
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            op = self.advance()
            self.nest(op.column)
            operand = self.unary()
            self.depth -= 1
            return Unary(op.text, operand, op.column)
        return self.power()

    def power(self) -> Expr:
        base = self.atom()
        if self.tok.kind == "op" and self.tok.text == "**":
            op = self.advance()
            self.operation(op.column)
            self.nest(op.column)
            exponent = self.unary()
            self.depth -= 1
            return Binary("**", base, exponent, op.column)
        return base

    def atom(self) -> Expr:
        tok = self.tok
        if tok.kind == "num":
            self.advance()
            value = float(tok.text)
            if not math.isfinite(value):
                raise ExprError(f"number {_short(tok.text)} is not finite", tok.column)
            if value == 0 and any(c in "123456789" for c in re.split("[eE]", tok.text)[0]):
                raise ExprError(f"number {_short(tok.text)} underflows to 0 in binary64", tok.column)
            return Num(value, tok.column)
        if tok.kind == "name":
            self.advance()
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            if tok.text in FUNCTION_ARITY:
                raise ExprError(f"function {tok.text!r} must be called with arguments", tok.column)
            return Name(tok.text, tok.column)
        if tok.kind == "op" and tok.text == "(":
            self.advance()
            self.nest(tok.column)
            inner = self.comparison()
            self.expect(")")
            self.depth -= 1
            return inner
        found = "end of expression" if tok.kind == "end" else repr(_short(tok.text))
        raise ExprError(f"expected a number, a name or '(', found {found}", tok.column)

    def call(self, name: _Tok) -> Expr:
        if name.text not in FUNCTION_ARITY:
            known = ", ".join(sorted(FUNCTION_ARITY))
            raise ExprError(f"unknown function {_short(name.text)!r} (known: {known})", name.column)
        self.expect("(")
        self.nest(name.column)
        args: list[Expr] = []
        if not (self.tok.kind == "op" and self.tok.text == ")"):
            args.append(self.comparison())
            while self.tok.kind == "op" and self.tok.text == ",":
                self.advance()
                args.append(self.comparison())
        self.expect(")")
        self.depth -= 1
        arity = FUNCTION_ARITY[name.text]
        if len(args) != arity:
            raise ExprError(
                f"{name.text}() takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}",
                name.column,
            )
        return Call(name.text, tuple(args), name.column)


def parse_expr(text: str, offset: int = 0) -> Expr:
    """Parse one expression; columns are reported as ``offset + position + 1``."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, not {type(text).__name__}", 1)
    return _Parser(_tokenize(text, offset)).parse()


_EQUATION = re.compile(r"^\s*(?:(?P<label>[A-Za-z_][A-Za-z_0-9]*)\s*:)?\s*(?P<target>[A-Za-z_][A-Za-z_0-9]*)\s*=(?!=)", re.ASCII)
_LOOP = re.compile(r"^\s*(?:(?P<label>[A-Za-z_][A-Za-z_0-9]*)\s*:)?\s*repeat\s+(?P<count>[0-9]+)\s*:", re.ASCII)
_BODY_EQUATION = re.compile(r"^\s*(?P<target>[A-Za-z_][A-Za-z_0-9]*)\s*=(?!=)", re.ASCII)
#: The most iterations of one ``repeat`` loop (it is unrolled).
MAX_REPEAT = 100


def parse_equation(text: str) -> Equation:
    """Parse ``[label:] target = expression`` or a loop ``[label:] repeat N: eq; eq; ...``."""
    if not isinstance(text, str):
        raise ExprError(f"an equation must be a string, not {type(text).__name__}", 1)
    loop = _LOOP.match(text)
    if loop is not None:
        return _parse_loop(text, loop)
    match = _EQUATION.match(text)
    if match is None:
        raise ExprError("an equation has the form '[label:] name = expression' or '[label:] repeat N: name = expression; ...'", 1)
    if match.group("target") in FUNCTION_ARITY:
        raise ExprError(f"cannot assign to the function name {match.group('target')!r}", match.start("target") + 1)
    expr = parse_expr(text[match.end() :], offset=match.end())
    return Equation(match.group("label"), match.group("target"), expr, text, match.end() + 1)


def _parse_loop(text: str, loop: re.Match[str]) -> Equation:
    """``repeat N: a = ...; b = ...``: N from 1 to MAX_REPEAT, a body of unlabelled equations."""
    digits = loop.group("count")
    count = int(digits) if len(digits) <= 4 else MAX_REPEAT + 1  # int() of a huge digit string raises
    if not 1 <= count <= MAX_REPEAT:
        raise ExprError(
            f"repeat count {_short(loop.group('count'))} must be a whole number from 1 to {MAX_REPEAT}", loop.start("count") + 1
        )
    body: list[Equation] = []
    start = loop.end()
    for piece in text[loop.end() :].split(";"):
        match = _BODY_EQUATION.match(piece)
        if match is None:
            if not piece.strip() and body:
                start += len(piece) + 1
                continue  # a trailing ';'
            raise ExprError(
                "a loop body is equations 'name = expression' separated by ';' (no labels, no nested loops)", start + 1
            )
        if match.group("target") in FUNCTION_ARITY:
            raise ExprError(f"cannot assign to the function name {match.group('target')!r}", start + match.start("target") + 1)
        offset = start + match.end()
        expr = parse_expr(piece[match.end() :], offset=offset)
        body.append(Equation(None, match.group("target"), expr, piece.strip(), offset + 1))
        start += len(piece) + 1
    return Equation(loop.group("label"), "", body[0].expr, text, body[0].expr_column, count, tuple(body))


def unroll(equation: Equation) -> list[tuple[int, Equation]]:
    """A plain equation as itself (iteration 0); a loop as its body N times, (iteration, equation)."""
    if not equation.repeat:
        return [(0, equation)]
    return [(i, eq) for i in range(1, equation.repeat + 1) for eq in equation.body]


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct operands of a node, left to right."""
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    return ()


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr`` in source order (pre-order, left to right).

    The walk keeps its own stack, so a left-deep chain of thousands of terms
    (``a + b + c + ...``) does not meet Python's recursion limit.
    """
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def fold(expr: Expr, leaf: Callable[[Expr], T], combine: Callable[[Expr, list[T]], T]) -> T:
    """Bottom-up evaluation without recursion: ``leaf`` for Num and Name, ``combine(node, operand results)``.

    Every node's operands are combined before the node itself (post-order), with an explicit
    stack instead of the call stack.
    """
    results: list[T] = []
    # (node, expanded): a node is pushed once to expand its operands and once to combine them.
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        operands = children(node)
        if not operands and not isinstance(node, Call):
            results.append(leaf(node))
        elif expanded:
            count = len(operands)
            args = results[len(results) - count :] if count else []
            del results[len(results) - count :]
            results.append(combine(node, args))
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(operands))
    return results[0]


def names_in(expr: Expr) -> list[Name]:
    """Every name an expression reads, in source order."""
    return [node for node in walk(expr) if isinstance(node, Name)]


def to_source(expr: Expr) -> str:
    """Render an AST back to fully parenthesised text (used by code generators and messages)."""

    def leaf(node: Expr) -> str:
        return repr(node.value) if isinstance(node, Num) else node.id  # type: ignore[union-attr]

    def combine(node: Expr, parts: list[str]) -> str:
        if isinstance(node, Unary):
            return f"({node.op}{parts[0]})"
        if isinstance(node, Binary):
            return f"({parts[0]} {node.op} {parts[1]})"
        assert isinstance(node, Call)
        return f"{node.func}({', '.join(parts)})"

    return fold(expr, leaf, combine)


def rename_names(expr: Expr, mapping: Mapping[str, str]) -> Expr:
    """A copy of ``expr`` with every name in ``mapping`` replaced (used to inline composed rules)."""

    def leaf(node: Expr) -> Expr:
        return Name(mapping.get(node.id, node.id), node.column) if isinstance(node, Name) else node

    def combine(node: Expr, parts: list[Expr]) -> Expr:
        if isinstance(node, Unary):
            return Unary(node.op, parts[0], node.column)
        if isinstance(node, Binary):
            return Binary(node.op, parts[0], parts[1], node.column)
        assert isinstance(node, Call)
        return Call(node.func, tuple(parts), node.column)

    return fold(expr, leaf, combine)
