"""The expression language: precedence, error columns, and a parser that never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optspec.errors import ExprError
from optspec.expr import FUNCTION_ARITY, Binary, Call, Name, Num, Unary, parse_equation, parse_expr, to_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a + b * c", "(a + (b * c))"),
        ("a - b - c", "((a - b) - c)"),
        ("a / b / c", "((a / b) / c)"),
        ("-a ** 2", "(-(a ** 2.0))"),
        ("a ** b ** c", "(a ** (b ** c))"),
        ("a ** -b", "(a ** (-b))"),
        ("2 * -x", "(2.0 * (-x))"),
        ("a + b < c * d", "((a + b) < (c * d))"),
        ("where(t == 1, g, 0.5 * g)", "where((t == 1.0), g, (0.5 * g))"),
        ("1e-8 + .5 + 3.", "((1e-08 + 0.5) + 3.0)"),
        ("max_abs(x) / norm(x)", "(max_abs(x) / norm(x))"),
    ],
)
def test_precedence_and_associativity(text: str, expected: str) -> None:
    assert to_source(parse_expr(text)) == expected, f"{text!r} parsed as {to_source(parse_expr(text))}, expected {expected}"


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("a + ", "expected a number, a name or '('", 5),
        ("a $ b", "unexpected character '$'", 3),
        ("sqrt(a, b)", "sqrt() takes 1 argument, got 2", 1),
        ("where(a, b)", "where() takes 3 arguments, got 2", 1),
        ("cosh(a)", "unknown function 'cosh'", 1),
        ("a < b < c", "comparisons do not chain", 7),
        ("(a + b", "expected ')'", 7),
        ("a b", "unexpected 'b' after a complete expression", 3),
        ("sqrt + 1", "function 'sqrt' must be called with arguments", 1),
        ("1e999", "not finite", 1),
    ],
)
def test_errors_name_the_column(text: str, message: str, column: int) -> None:
    with pytest.raises(ExprError) as info:
        parse_expr(text)
    assert message in info.value.message, f"{text!r}: message {info.value.message!r} lacks {message!r}"
    assert info.value.column == column, f"{text!r}: column {info.value.column}, expected {column}"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ExprError, match="nested more than"):
        parse_expr("(" * 5000 + "a" + ")" * 5000)
    with pytest.raises(ExprError, match="nested more than"):
        parse_expr("-" * 5000 + "a")


def test_equation_with_label_and_columns() -> None:
    eq = parse_equation("decay: g = g + weight_decay * theta")
    assert (eq.label, eq.target) == ("decay", "g")
    assert to_source(eq.expr) == "(g + (weight_decay * theta))"
    with pytest.raises(ExprError) as info:
        parse_equation("m = beta1 * * m")
    assert info.value.column == 13, "the column counts from the start of the equation text"


@pytest.mark.parametrize("text", ["g == 1", "= g", "sqrt = g", "1x = 2", ""])
def test_malformed_equations(text: str) -> None:
    with pytest.raises(ExprError):
        parse_equation(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abgt01.eE+-*/()<>=!,_ sqrtwhermaxin:$\t\n")), max_size=60))
def test_parser_never_crashes_on_random_text(text: str) -> None:
    """Any text either parses or raises ExprError with a valid column; nothing else escapes."""
    for parse in (parse_expr, parse_equation):
        try:
            parse(text)
        except ExprError as exc:
            assert 1 <= exc.column <= len(text) + 1, f"column {exc.column} outside {text!r}"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parser_never_crashes_on_arbitrary_unicode(text: str) -> None:
    try:
        parse_expr(text)
    except ExprError:
        pass


_NAMES = st.sampled_from(["a", "b", "theta", "grad", "t"])
_LEAVES = st.one_of(_NAMES.map(lambda n: Name(n, 1)), st.floats(0, 1e6, allow_nan=False).map(lambda v: Num(v, 1)))


def _trees(children: st.SearchStrategy) -> st.SearchStrategy:
    binary = st.builds(lambda op, a, b: Binary(op, a, b, 1), st.sampled_from(["+", "-", "*", "/", "**", "<"]), children, children)
    unary = st.builds(lambda a: Unary("-", a, 1), children)
    calls = st.sampled_from(sorted(f for f, n in FUNCTION_ARITY.items() if n == 1)).flatmap(
        lambda f: st.builds(lambda a: Call(f, (a,), 1), children)
    )
    return st.one_of(binary, unary, calls)


@settings(max_examples=200, deadline=None)
@given(st.recursive(_LEAVES, _trees, max_leaves=12))
def test_rendered_trees_parse_back_to_the_same_tree(tree) -> None:
    text = to_source(tree)
    assert to_source(parse_expr(text)) == text, f"{text!r} does not round-trip"
