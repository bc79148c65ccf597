"""Equivalent evaluations of every rule pass under the error model: no false alarms.

Each rule's equations are rewritten into algebraically equivalent forms
(:mod:`equivalent_forms`: reassociation, distributing lr and weight decay,
theta (1 - eta lambda) <-> theta - eta lambda theta, (m / bc1) / d <-> m / (bc1 d), lerp
forms), evaluated by numpy in float32 (torch's and JAX's scalar conventions) and float64,
and compared with the golden vectors under the budget of the matching profile. A rewrite
rounds differently from the spec's own order, as another library's code does; the budget
must hold for all of them, since they implement the same rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from equivalent_forms import REWRITES, apply_at, case_values, rewrite_everywhere, sites, with_equations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optspec.conformance import compare
from optspec.expr import to_source
from optspec.golden import GoldenFile, read_golden
from optspec.reference import FLOAT32, FLOAT32_SCALAR32, FLOAT64, Precision, run_reference
from optspec.spec import SpecLibrary

GOLDEN = Path(__file__).resolve().parents[1] / "conformance" / "golden"
LIBRARY = SpecLibrary()
RULES = [spec.name for spec in LIBRARY.all()]
PRECISIONS: tuple[tuple[Precision, str], ...] = (
    (FLOAT64, "float64"),
    (FLOAT32, "float32"),
    (FLOAT32_SCALAR32, "float32_scalar32"),
)

_GOLDEN: dict[str, GoldenFile] = {}


def golden(rule: str) -> GoldenFile:
    if rule not in _GOLDEN:
        _GOLDEN[rule] = read_golden(GOLDEN / f"{rule}.json", LIBRARY.get(rule))
    return _GOLDEN[rule]


def _check(rule: str, test_name: str, transform, what: str) -> None:
    test = golden(rule).test(test_name)
    rewritten = with_equations(LIBRARY.get(rule).resolve(test.variant), transform)
    for precision, profile in PRECISIONS:
        observed = run_reference(rewritten, test.hyper, test.inputs, precision, test.steps)
        result = compare(test, observed, profile, f"{test.name} rewritten by {what}, evaluated in {precision.name}")
        assert result.ok, (
            f"an equivalent evaluation fails the {profile} budget (a false alarm of the error model): {result.message}\n"
            "rewritten equations:\n  "
            + "\n  ".join(f"{loc.equation.target} = {to_source(loc.equation.expr)}" for loc in rewritten.equations)
        )


def _representative_tests(rule: str) -> list[str]:
    """Every case of the default variant, and one case (``knobs`` when there is one) of every
    other variant: each variant's equations, each case's hyperparameters, in bounded time."""
    spec = LIBRARY.get(rule)
    default = spec.default_variant()
    chosen: dict[str, str] = {}
    for test in golden(rule).tests:
        key = repr(sorted(test.variant.items()))
        if dict(test.variant) == dict(default) or key not in chosen or test.case == "knobs":
            chosen[key if dict(test.variant) != dict(default) else test.name] = test.name
    return sorted(set(chosen.values()))


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
@pytest.mark.parametrize("rule", RULES)
def test_each_rewrite_everywhere_passes(rule: str, rewrite: str) -> None:
    """Every site of one rewrite at once, in the rule's representative golden tests."""
    for name in _representative_tests(rule):
        test = golden(rule).test(name)
        values = case_values(test.hyper)
        if not any(sites(loc.equation.expr, rewrite, values) for loc in LIBRARY.get(rule).resolve(test.variant).equations):
            continue
        _check(rule, test.name, lambda _, e, values=values: rewrite_everywhere(e, rewrite, values), f"{rewrite} everywhere")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_random_rewrite_chains_pass(data: st.DataObject) -> None:
    """Random chains of rewrites at random sites of random equations, any rule, variant and case."""
    rule = data.draw(st.sampled_from(RULES), label="rule")
    test = data.draw(st.sampled_from(golden(rule).tests), label="test").name
    values = case_values(golden(rule).test(test).hyper)
    equations = [loc.equation.expr for loc in LIBRARY.get(rule).resolve(golden(rule).test(test).variant).equations]
    chosen: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    for _ in range(data.draw(st.integers(1, 6), label="rewrites")):
        index = data.draw(st.integers(0, len(equations) - 1), label="equation")
        expr = equations[index]
        options = [(path, name) for name in sorted(REWRITES) for path in sites(expr, name, values)]
        if not options:
            continue
        path, name = data.draw(st.sampled_from(options), label="site")
        rewritten = apply_at(expr, path, name, values)
        if rewritten is not None:
            equations[index] = rewritten
            chosen.setdefault(index, []).append((path, name))
    _check(rule, test, lambda i, e: equations[i], f"the chain {chosen}")


def test_rewrites_change_the_rounding() -> None:
    """The rewrites are not vacuous: they change float32 results (else the test proves nothing)."""
    test = golden("adamw").test("adamw/default/knobs")
    rule = LIBRARY.get("adamw").resolve(test.variant)
    values = case_values(test.hyper)
    base = run_reference(rule, test.hyper, test.inputs, FLOAT32, test.steps)
    changed = []
    for name in REWRITES:
        rewritten = with_equations(rule, lambda _, e, name=name: rewrite_everywhere(e, name, values))
        other = run_reference(rewritten, test.hyper, test.inputs, FLOAT32, test.steps)
        last = max(test.steps)
        if any((a["theta"] != b["theta"]).any() for a, b in zip(base[last], other[last])):
            changed.append(name)
    assert len(changed) >= 4, f"only {changed} of {sorted(REWRITES)} change adamw's float32 trajectory"
