"""The reference evaluator against closed forms, and its precision categories."""

from __future__ import annotations

import numpy as np

from optspec.reference import FLOAT32, FLOAT32_SCALAR32, FLOAT64, CaseInputs, run_reference
from optspec.spec import SpecLibrary

LIBRARY = SpecLibrary()


def _inputs(theta: float, grads: list[float], lr_multipliers: list[float] | None = None) -> CaseInputs:
    steps = len(grads)
    return CaseInputs(
        (np.array([theta]),),
        (np.array(grads, dtype=np.float64).reshape(steps, 1),),
        np.array(lr_multipliers or [1.0] * steps),
    )


def test_adam_first_step_closed_form() -> None:
    spec = LIBRARY.get("adam")
    hyper = spec.hyper_values({"lr": 0.1})
    out = run_reference(spec.resolve(), hyper, _inputs(1.0, [0.5]), FLOAT64, [1])
    # m_hat = g, v_hat = g^2 after one step: theta - lr * g / (|g| + eps)
    assert out[1][0]["theta"][0] == 1.0 - 0.1 * 0.5 / (0.5 + 1e-8)
    assert np.isclose(out[1][0]["m"][0], 0.05, rtol=1e-15) and np.isclose(out[1][0]["v"][0], 0.001 * 0.25, rtol=1e-15)


def test_sgd_torch_dampening_skipped_on_first_step() -> None:
    spec = LIBRARY.get("sgd")
    hyper = spec.hyper_values({"lr": 1.0, "momentum": 0.5, "dampening": 0.5})
    out = run_reference(spec.resolve(), hyper, _inputs(0.0, [1.0, 1.0]), FLOAT64, [1, 2])
    assert out[1][0]["b"][0] == 1.0, "b_1 = g_1 without dampening"
    assert out[2][0]["b"][0] == 0.5 * 1.0 + 0.5 * 1.0
    always = run_reference(spec.resolve({"dampening": "always"}), hyper, _inputs(0.0, [1.0]), FLOAT64, [1])
    assert always[1][0]["b"][0] == 0.5, "b_1 = (1 - tau) g_1 when dampening always applies"


def test_adamw_decay_scales_under_a_schedule() -> None:
    spec = LIBRARY.get("adamw")
    hyper = spec.hyper_values({"lr": 0.1, "weight_decay": 0.1})
    inputs = _inputs(1.0, [0.0], [0.5])
    for value, factor in [("lr", 1 - 0.05 * 0.1), ("schedule", 1 - 0.5 * 0.1), ("unscaled", 1 - 0.1)]:
        out = run_reference(spec.resolve({"decay_scale": value}), hyper, inputs, FLOAT64, [1])
        assert np.isclose(out[1][0]["theta"][0], factor, rtol=1e-15), f"decay_scale={value}: theta {out[1][0]['theta'][0]}"


def test_precisions_round_where_they_should() -> None:
    spec = LIBRARY.get("adam")
    hyper = spec.hyper_values()
    inputs = _inputs(0.5, [0.25])
    r64 = run_reference(spec.resolve({"amsgrad": "corrected"}), hyper, inputs, FLOAT64, [1])[1][0]
    r32 = run_reference(spec.resolve({"amsgrad": "corrected"}), hyper, inputs, FLOAT32, [1])[1][0]
    r32s = run_reference(spec.resolve({"amsgrad": "corrected"}), hyper, inputs, FLOAT32_SCALAR32, [1])[1][0]
    # vmax = v_1 / (1 - beta2) = g^2 exactly in float64; float32 with double scalars stays within an ulp;
    # with float32 step scalars, 1 - float32(0.999)**1 carries float32(0.999)'s representation error (1.3e-5).
    assert np.isclose(r64["vmax"][0], 0.0625, rtol=1e-14)
    assert abs(r32["vmax"][0] / 0.0625 - 1) < 2**-23
    assert 1.2e-5 < abs(r32s["vmax"][0] / 0.0625 - 1) < 1.4e-5, r32s["vmax"][0]
