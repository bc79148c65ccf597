"""Gradients taken at the point (a quadratic loss): reference, error model, golden format, specs.

A rule whose spec declares ``gradient = {loss = "quadratic", at = "theta"}`` gets gradients
g_t = h * (theta_{t-1} - c) + n_t (optspec.cases.quadratic_loss); every other rule keeps its
fixed gradient stream, bit for bit.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from optspec.cases import make_inputs
from optspec.errors import GoldenError, SpecError
from optspec.golden import parse_document, read_golden
from optspec.mca import run_ensemble
from optspec.reference import FLOAT64, CaseInputs, Quadratic, gradient_at, run_reference
from optspec.spec import SpecLibrary, parse_spec
from optspec.tolerance import ensembles_for

LIBRARY = SpecLibrary()
GOLDEN = Path(__file__).resolve().parents[1] / "conformance" / "golden"
SCHEDULE_FREE = ("schedule_free_sgd", "schedule_free_adamw")


def _quadratic_sgd_inputs(steps: int = 5) -> CaseInputs:
    h, c = np.array([0.5, 0.25]), np.array([1.0, -2.0])
    noise = np.linspace(-0.5, 0.5, 2 * steps).reshape(steps, 2)
    return CaseInputs((np.array([0.0, 3.0]),), (noise,), np.ones(steps), quadratic=Quadratic((h,), (c,)))


def test_reference_takes_each_gradient_at_the_parameter_before_the_step() -> None:
    spec = LIBRARY.get("sgd")
    inputs = _quadratic_sgd_inputs()
    hyper = spec.hyper_values({"lr": 0.1})
    out = run_reference(spec.resolve(), hyper, inputs, FLOAT64, range(1, 6))
    theta = np.array([0.0, 3.0])
    h, c = inputs.quadratic.curvature[0], inputs.quadratic.center[0]
    for t in range(1, 6):
        theta = theta - 0.1 * (h * (theta - c) + inputs.grads[0][t - 1])
        np.testing.assert_array_equal(out[t][0]["theta"], theta, err_msg=f"plain SGD on the quadratic loss, step {t}")
    fixed = run_reference(spec.resolve(), hyper, CaseInputs(inputs.params, inputs.grads, inputs.lr_multipliers), FLOAT64, [5])
    assert not np.array_equal(fixed[5][0]["theta"], out[5][0]["theta"]), "without the loss the gradients are the fixed n_t"


def test_gradient_is_rounded_in_the_requested_type() -> None:
    inputs = _quadratic_sgd_inputs()
    point = np.array([0.1, 2.9])
    g32 = gradient_at(inputs, 0, 1, point, np.float32)
    assert g32.dtype == np.float32, f"a float32 evaluation computes the gradient in float32, got {g32.dtype}"
    h, c, n = (np.float32(x) for x in (0.5, 1.0, inputs.grads[0][0][0]))
    assert g32[0] == h * (np.float32(0.1) - c) + n, "h * (p - c) + n, each operation in float32"


def test_ensemble_members_take_gradients_at_their_own_point() -> None:
    """Member 0 (unperturbed, longdouble) is the reference's trajectory on the quadratic loss, and the
    perturbed members spread: their gradients follow their own (perturbed) parameters."""
    spec = LIBRARY.get("sgd")
    rule = spec.resolve()
    inputs = _quadratic_sgd_inputs(20)
    hyper = spec.hyper_values({"lr": 0.1})
    ref = run_reference(rule, hyper, inputs, FLOAT64, [20])
    (ensemble,) = [e for e in ensembles_for(["float32"]) if e.carrier is np.float64]
    spread, exact = run_ensemble(rule, hyper, inputs, ensemble, "test")
    np.testing.assert_allclose(exact[20][0]["theta"], ref[20][0]["theta"], rtol=1e-14, err_msg="member 0 is the reference")
    assert 0 < spread[20][0]["theta"]["float32"] < 1e-5, f"float32 members spread by {spread[20][0]['theta']}"


@pytest.mark.parametrize("rule", SCHEDULE_FREE)
def test_schedule_free_cases_carry_the_loss(rule: str) -> None:
    spec = LIBRARY.get(rule)
    assert spec.gradient == "quadratic", f"{rule} declares gradients taken at theta"
    for case in spec.cases:
        inputs = make_inputs(spec, case)
        if case.grads == "zero":
            assert inputs.quadratic is None, f"{rule}/{case.id}: zero_grad keeps every gradient exactly zero"
            continue
        assert inputs.quadratic is not None, f"{rule}/{case.id} has no quadratic loss"
        for h, c, p in zip(inputs.quadratic.curvature, inputs.quadratic.center, inputs.params):
            assert h.shape == c.shape == p.shape, f"{rule}/{case.id}: curvature and center have the parameter's shape"
            assert np.all((h >= 0.05) & (h <= 1.0)), f"{rule}/{case.id}: curvature outside [0.05, 1]"
            assert np.array_equal(h, h.astype(np.float32)) and np.array_equal(c, c.astype(np.float32)), "binary32-exact"


@pytest.mark.parametrize("rule", SCHEDULE_FREE)
def test_golden_file_stores_the_loss(rule: str) -> None:
    spec = LIBRARY.get(rule)
    golden = read_golden(GOLDEN / f"{rule}.json", spec)
    for test in golden.tests:
        fresh = make_inputs(spec, spec.case(test.case))
        if fresh.quadratic is None:
            assert test.inputs.quadratic is None, f"{test.name}: a stored loss where the case has none"
            continue
        assert test.inputs.quadratic is not None, f"{test.name}: the stored inputs lost the quadratic loss"
        for stored, made in zip(test.inputs.quadratic.curvature, fresh.quadratic.curvature):
            np.testing.assert_array_equal(stored, made, err_msg=f"{test.name}: stored curvature")


def _numpy_schedule_free_sgd_f32(inputs: CaseInputs, hyper: dict[str, float], steps: int) -> list[np.ndarray]:
    """schedulefree's lerp form (sgd_schedulefree.py:177-186) in float32 numpy, read from the golden file
    alone: the consumer the README describes, taking each gradient at its own y."""
    f = np.float32
    lr, beta, wd, warm = hyper["lr"], hyper["momentum"], hyper["weight_decay"], hyper["warmup_steps"]
    ys = [p.astype(f) for p in inputs.params]
    zs = [y.copy() for y in ys]
    lr_max, weight_sum = 0.0, 0.0
    loss = inputs.quadratic
    for t in range(1, steps + 1):
        sched = t / warm if t - 1 < warm else 1.0
        eta = lr * sched
        lr_max = max(lr_max, eta)
        weight = t ** hyper["r"] * lr_max ** hyper["weight_lr_power"]
        weight_sum += weight
        ck = weight / weight_sum if weight_sum else 0.0
        for i, (y, z) in enumerate(zip(ys, zs)):
            g = f(loss.curvature[i]) * (y - f(loss.center[i])) + f(inputs.grads[i][t - 1])
            g = g + f(wd) * y
            ys[i] = y + f(ck) * (z - y) + f(eta * (beta * (1 - ck) - 1)) * g
            zs[i] = z - f(eta) * g
    return ys


def test_a_float32_lerp_form_passes_the_stored_budgets() -> None:
    """The budgets include the feedback through the gradient: an implementation in another order
    (torch's lerp, the gradient in float32 at its own y) stays within the float32 budget."""
    spec = LIBRARY.get("schedule_free_sgd")
    golden = read_golden(GOLDEN / "schedule_free_sgd.json", spec)
    checked = 0
    for test in golden.tests:
        if test.variant != {"warmup": "inside"} or test.inputs.quadratic is None:
            continue
        last = max(test.steps)
        ys = _numpy_schedule_free_sgd_f32(test.inputs, dict(test.hyper), last)
        for i, y in enumerate(ys):
            error = float(np.max(np.abs(y - test.expected[last][i]["theta"])))
            budget = test.atol["float32"][last][i]["theta"]
            assert error <= budget, f"{test.name}: tensor {i} off by {error:.3e} > float32 budget {budget:.3e}"
        checked += 1
    assert checked >= 3, f"only {checked} schedule_free_sgd tests with the loss were checked"


def test_edited_loss_shape_is_one_line(tmp_path: Path) -> None:
    spec = LIBRARY.get("schedule_free_sgd")
    doc = json.loads((GOLDEN / "schedule_free_sgd.json").read_text())
    bad = copy.deepcopy(doc)
    inputs = next(item for item in bad["inputs"].values() if "gradient" in item)
    inputs["gradient"]["center"][3] = {"shape": [2], "data": base64.b64encode(np.zeros(2).tobytes()).decode()}
    from optspec.golden import content_hash

    bad["contentSha256"] = content_hash(bad)
    with pytest.raises(GoldenError) as info:
        parse_document(bad, "x.json", spec)
    message = str(info.value)
    assert "gradient center[3]" in message and "\n" not in message, f"not a one-line error naming the array: {message!r}"


def test_spec_may_not_read_the_global_norm_of_a_fixed_stream() -> None:
    text = (Path(__file__).resolve().parents[1] / "specs" / "schedule_free_sgd.toml").read_text()
    text = text.replace('"grad: g = grad",', '"grad: g = grad / max(global_grad_norm, 1)",')
    with pytest.raises(SpecError, match="global_grad_norm"):
        parse_spec(text, "schedule_free_sgd.toml")


def test_spec_gradient_point_is_checked_by_the_schema() -> None:
    text = (Path(__file__).resolve().parents[1] / "specs" / "schedule_free_sgd.toml").read_text()
    with pytest.raises(SpecError, match="gradient"):
        parse_spec(text.replace('at = "theta"', 'at = "z"'), "schedule_free_sgd.toml")
