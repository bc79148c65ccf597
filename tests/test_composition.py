"""Composite rules: lookahead names an inner rule, inlined with prefixed names.

The identities checked here follow from the lookahead definition (Zhang et al. 2019; optax
lookahead semantics, conventions.md §13), independently of any implementation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from optspec.errors import SpecError
from optspec.reference import CaseInputs, run_reference
from optspec.spec import SpecLibrary, parse_spec

LIB = SpecLibrary()
ROOT = Path(__file__).parent.parent


def _inputs(steps: int, seed: int = 1) -> CaseInputs:
    rng = np.random.default_rng(seed)
    return CaseInputs((rng.standard_normal(4),), (rng.standard_normal((steps, 4)),), np.ones(steps))


def test_lookahead_inlines_each_inner_rule_with_prefixed_names() -> None:
    spec = LIB.get("lookahead")
    assert set(spec.knobs["inner"].values) >= {"sgd", "adam"}, f"inner rules: {list(spec.knobs['inner'].values)}"
    assert {"adam_beta1", "sgd_momentum", "k", "alpha", "lr"} <= set(spec.hyper), f"hyper: {list(spec.hyper)}"
    rule = spec.resolve({"inner": "adam"})
    assert {"slow", "count", "adam_m", "adam_v"} == set(rule.state), f"state of lookahead(adam): {list(rule.state)}"


def test_k1_alpha1_is_the_inner_rule_and_alpha0_never_moves() -> None:
    spec = LIB.get("lookahead")
    inputs = _inputs(7)
    adam = LIB.get("adam")
    plain = run_reference(adam.resolve(), adam.hyper_values({"lr": 0.1}), inputs, record=[7])
    hyper = spec.hyper_values({"lr": 0.1, "k": 1, "alpha": 1.0})
    wrapped = run_reference(spec.resolve({"inner": "adam"}), hyper, inputs, record=[7])
    np.testing.assert_array_equal(
        wrapped[7][0]["theta"],
        plain[7][0]["theta"],
        err_msg="k=1, alpha=1 syncs slow := fast every step: lookahead(adam) is adam",
    )
    frozen = run_reference(spec.resolve({"inner": "adam"}), {**hyper, "alpha": 0.0}, inputs, record=[7])
    np.testing.assert_array_equal(
        frozen[7][0]["theta"], inputs.params[0], err_msg="alpha=0, k=1 resets theta to theta_0 each step"
    )


def test_two_sgd_steps_then_half_way_back() -> None:
    spec = LIB.get("lookahead")
    inputs = CaseInputs((np.array([1.0]),), (np.ones((3, 1)),), np.ones(3))
    hyper = spec.hyper_values({"lr": 0.1, "k": 2, "alpha": 0.5})
    out = run_reference(spec.resolve({"inner": "sgd"}), hyper, inputs, record=[1, 2, 3])
    # fast 1.0 -> 0.9 -> 0.8, sync at step 2: slow = 1 + 0.5 (0.8 - 1) = 0.9, fast = slow; step 3: 0.8
    got = [float(out[t][0]["theta"][0]) for t in (1, 2, 3)] + [float(out[2][0]["slow"][0])]
    assert got == pytest.approx([0.9, 0.9, 0.8, 0.9], rel=1e-15, abs=1e-15), f"(theta_1..3, slow_2) = {got}"


def _spec_text(**changes: str) -> str:
    text = (ROOT / "specs" / "lookahead.toml").read_text()
    for old, new in changes.items():
        assert old in text, f"test setup: {old!r} is no longer in specs/lookahead.toml"
        text = text.replace(old, new)
    return text


def test_composition_errors_are_one_line_spec_errors() -> None:
    with pytest.raises(SpecError, match="only be loaded through a SpecLibrary"):
        parse_spec(_spec_text(), "<lookahead>")
    with pytest.raises(SpecError, match="inner rule 'nosuch'"):
        parse_spec(_spec_text(**{'rules = ["sgd", "adam", "lamb"]': 'rules = ["sgd", "nosuch"]'}), "<lookahead>", LIB.get)
    with pytest.raises(SpecError, match="no \\[inner\\] table"):
        parse_spec((ROOT / "specs" / "sgd.toml").read_text().replace('"grad: g = grad",', '"@inner", "grad: g = grad",'), "<sgd>")
    with pytest.raises(SpecError, match="cannot itself be composite"):
        parse_spec(
            _spec_text(
                **{'rules = ["sgd", "adam", "lamb"]': 'rules = ["lookahead"]', 'default = "sgd"': 'default = "lookahead"'}
            ),
            "<x>",
            LIB.get,
        )


def test_optax_lookahead_with_wrong_sync_period_fails_against_golden() -> None:
    pytest.importorskip("optax")
    from optspec.conformance import compare
    from optspec.golden import read_golden
    from optspec.impls.base import plan_case
    from optspec.impls.optax_jax import OptaxJit

    spec = LIB.get("lookahead")
    golden = read_golden(ROOT / "conformance" / "golden" / "lookahead.json", spec)
    test = golden.find("momentum", {"inner": "sgd"})
    assert test is not None
    impl = OptaxJit()
    plan = plan_case(impl, spec, test.variant, test.hyper, "float64")
    assert plan.skip is None, plan.skip
    good = compare(test, impl.run(plan, test.inputs, test.hyper, "float64", test.steps), "float64", "lookahead")
    assert good.ok and "slow" in good.compared_slots and "sgd_b" in good.compared_slots, (good.message, good.compared_slots)
    mutant = dataclasses.replace(plan, kwargs={**plan.kwargs, "sync_period": test.hyper["k"] + 1})
    bad = compare(test, impl.run(mutant, test.inputs, test.hyper, "float64", test.steps), "float64", "lookahead")
    assert not bad.ok and "step" in bad.message, f"a sync period of k+1 must be caught: {bad.message}"
