"""The error model (optspec.tolerance): equivalent float32 arithmetic passes, a convention change fails.

The implementations here are written by hand in numpy, independently of the reference
evaluator, in the operation order torch.optim uses (lerp for the first moment, sqrt(v) /
sqrt(bc2) + eps), so they round differently from the spec's own float32 evaluation.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from optspec.conformance import compare
from optspec.golden import GoldenTest, read_golden
from optspec.reference import Trajectory
from optspec.spec import SpecLibrary

GOLDEN = Path(__file__).resolve().parents[1] / "conformance" / "golden"
LIBRARY = SpecLibrary()


def _adam(test: GoldenTest, dtype: type, eps_inside: bool = False) -> Trajectory:
    h = test.hyper
    out: Trajectory = {s: [] for s in test.steps}
    for param, grads in zip(test.inputs.params, test.inputs.grads, strict=True):
        theta = param.astype(dtype)
        m = np.zeros_like(theta)
        v = np.zeros_like(theta)
        for t in range(1, test.inputs.steps + 1):
            g = grads[t - 1].astype(dtype) + dtype(h["weight_decay"]) * theta
            m = m + dtype(1 - h["beta1"]) * (g - m)  # torch's lerp
            v = v * dtype(h["beta2"]) + dtype(1 - h["beta2"]) * g * g
            bc1 = 1 - h["beta1"] ** t  # scalars in double, as torch does
            bc2 = 1 - h["beta2"] ** t
            lr = h["lr"] * float(test.inputs.lr_multipliers[t - 1])
            if eps_inside:
                denom = np.sqrt(v / dtype(bc2) + dtype(h["eps"]))
            else:
                denom = np.sqrt(v) / dtype(np.sqrt(bc2)) + dtype(h["eps"])
            theta = theta - dtype(lr / bc1) * (m / denom)
            if t in out:
                out[t].append({"theta": theta.astype(np.float64), "m": m.astype(np.float64), "v": v.astype(np.float64)})
    return out


@pytest.fixture(scope="module")
def adam_golden():
    return read_golden(GOLDEN / "adam.json", LIBRARY.get("adam"))


@pytest.mark.parametrize("case", ["defaults", "knobs", "zero_grad"])
@pytest.mark.parametrize(("dtype", "profile"), [(np.float32, "float32"), (np.float64, "float64")])
def test_equivalent_arithmetic_passes(adam_golden, case: str, dtype: type, profile: str) -> None:
    test = adam_golden.find(case, LIBRARY.get("adam").default_variant())
    result = compare(test, _adam(test, dtype), profile, f"hand-written adam ({profile}), case {case}")
    assert result.ok, result.message


@pytest.mark.parametrize("case", ["defaults", "knobs"])
def test_convention_change_fails_in_float32(adam_golden, case: str) -> None:
    test = adam_golden.find(case, LIBRARY.get("adam").default_variant())
    result = compare(test, _adam(test, np.float32, eps_inside=True), "float32", f"eps-inside adam, case {case}")
    assert not result.ok, "epsilon inside the sqrt must not pass as the default (outside) variant"
    assert "slot theta" in result.message or "slot m" in result.message or "slot v" in result.message, result.message


def test_failure_message_names_everything(adam_golden) -> None:
    test = adam_golden.find("defaults", LIBRARY.get("adam").default_variant())
    message = compare(
        test, _adam(test, np.float32, eps_inside=True), "float32", "adam x mine, case adam/default/defaults"
    ).message
    for fragment in [
        "adam x mine",
        "adam/default/defaults",
        "step ",
        "tensor ",
        "slot ",
        "max abs error",
        "budget",
        "max rel error",
    ]:
        assert fragment in message, f"failure message {message!r} lacks {fragment!r}"


def test_budgets_never_shrink_with_the_step_count() -> None:
    for spec in LIBRARY.all():
        golden = read_golden(GOLDEN / f"{spec.name}.json", spec)
        for test in golden.tests:
            for profile, per_step in test.atol.items():
                steps = sorted(per_step)
                for earlier, later in itertools.pairwise(steps):
                    for index, slots in enumerate(per_step[later]):
                        for slot, budget in slots.items():
                            assert budget >= per_step[earlier][index][slot], (
                                f"{test.name} {profile}: budget of {slot}[{index}] shrinks from step {earlier} to {later}"
                            )


def test_float64_budget_is_near_machine_precision() -> None:
    """The float64 budget is measured in binary64 (Monte Carlo arithmetic against a longdouble
    evaluation): it stays within a few thousand ulps of the scale, far below any binary32 error."""
    from optspec.expr import ROUNDING_FUNCTIONS, Call, walk

    for spec in LIBRARY.all():
        golden = read_golden(GOLDEN / f"{spec.name}.json", spec)
        for test in golden.tests:
            rule = spec.resolve(test.variant)
            if any(
                isinstance(n, Call) and n.func in ROUNDING_FUNCTIONS for loc in rule.equations for n in walk(loc.equation.expr)
            ):
                # An explicit round_bf16 (torch Muon's bfloat16 Newton-Schulz) is bfloat16 arithmetic
                # with a binary32 accumulator at any parameter dtype: its float64 budget is not binary64's.
                continue
            last = max(test.steps)
            for index, slots in enumerate(test.expected[last]):
                scale = float(np.max(np.abs(slots["theta"])))
                budget = test.atol["float64"][last][index]["theta"]
                assert budget <= max(1e-9 * scale, 1e-300), (
                    f"{test.name}: float64 theta budget {budget:.3e} is not near machine precision for scale {scale:.3e}"
                )


def _theta_separation(golden, spec, knob: str, a: str, b: str) -> tuple[float, str]:
    """Largest |theta_a - theta_b| / float32 budget over cases, steps and tensors."""
    default = spec.default_variant()
    best, where = 0.0, ""
    for case in spec.cases:
        ta = golden.find(case.id, {**default, knob: a})
        tb = golden.find(case.id, {**default, knob: b})
        assert ta is not None and tb is not None, f"{spec.name}: no golden test for {knob}={a} or {knob}={b} in case {case.id}"
        for step in ta.steps:
            for index in range(len(ta.expected[step])):
                gap = float(np.max(np.abs(ta.expected[step][index]["theta"] - tb.expected[step][index]["theta"])))
                budget = ta.atol["float32"][step][index]["theta"]
                ratio = gap / budget if budget > 0 else (np.inf if gap > 0 else 0.0)
                if ratio > best:
                    best, where = ratio, f"case {case.id} step {step} tensor {index}"
    return best, where


def _knob_pairs() -> list[tuple[str, str, str, str]]:
    return [
        (spec.name, knob.name, a, b)
        for spec in LIBRARY.all()
        for knob in spec.knobs.values()
        for a, b in itertools.combinations(knob.values, 2)
    ]


@pytest.mark.parametrize(("rule", "knob", "a", "b"), _knob_pairs(), ids=lambda x: str(x))
def test_every_variant_pair_is_discriminated(rule: str, knob: str, a: str, b: str) -> None:
    """Some golden case separates every pair of knob values by >= 100x the float32 tolerance."""
    spec = LIBRARY.get(rule)
    golden = read_golden(GOLDEN / f"{rule}.json", spec)
    ratio, where = _theta_separation(golden, spec, knob, a, b)
    assert ratio >= 100, (
        f"{rule}: {knob}={a} and {knob}={b} are separated by only {ratio:.3g}x the float32 budget (best: {where})"
    )
