"""Reductions across a step's tensors (``sum_all``) and rule-scope state (``scope = "rule"``).

The reference must compute sum_all over every tensor of the step at the point of the equation
that reads it, a rule-scope slot must be one value for every tensor, the error model must give
them budgets, golden files must record them, and the spec layer must refuse what the
evaluators cannot do, each with a one-line SpecError.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from optspec.errors import GoldenError, SpecError
from optspec.golden import content_hash, parse_document, to_document
from optspec.golden import generate as generate_golden
from optspec.reference import FLOAT32, FLOAT64, CaseInputs, run_reference
from optspec.spec import parse_spec
from optspec.tolerance import measure

_SPEC = """
name = "probe"
title = "probe"
references = [{{ title = "t", year = 2026 }}]
step = {step}

[hyper.lr]
default = 0.1
domain = "[0, inf)"
doc = "lr"

{state}
"""

_RULE_SLOT = """
[state.d]
init = "{init}"
scope = "rule"
doc = "a rule-scope scalar"
"""


def _spec(step: list[str], state: str = "", name: str = "probe"):  # type: ignore[no-untyped-def]
    return parse_spec(_SPEC.format(step=json.dumps(step), state=state), f"<{name}>")


def _inputs(steps: int = 4) -> CaseInputs:
    rng = np.random.default_rng(5)
    shapes = [(), (3,), (2, 2)]
    params = tuple(rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in shapes)
    grads = tuple(rng.standard_normal((steps, *s)).astype(np.float32).astype(np.float64) for s in shapes)
    return CaseInputs(params, grads, np.ones(steps))


def test_sum_all_sums_every_tensor_at_that_point_of_the_step() -> None:
    """theta <- theta - lr * sum over all tensors of sum(g * theta): every tensor gets the same total."""
    spec = _spec(["total = sum_all(grad * theta)", "theta = theta - lr * total"])
    inputs = _inputs()
    got = run_reference(spec.resolve(), {"lr": 0.1}, inputs, FLOAT64, [1, 2, 3, 4])
    thetas = [p.copy() for p in inputs.params]
    for t in range(4):
        total = sum(float(np.sum(g[t] * th)) for g, th in zip(inputs.grads, thetas))
        thetas = [th - 0.1 * total for th in thetas]
        for index, th in enumerate(thetas):
            assert np.allclose(got[t + 1][index]["theta"], th, rtol=1e-14, atol=1e-15), (
                f"step {t + 1}, tensor {index}: reference {got[t + 1][index]['theta']} != hand-computed {th}"
            )


def test_rule_slot_is_one_value_carried_across_steps() -> None:
    """d accumulates the l1 norm of every gradient; each tensor records the same d."""
    spec = _spec(["d = d + sum_all(abs(grad))", "theta = theta - lr * d * grad"], _RULE_SLOT.format(init="1"))
    rule = spec.resolve()
    assert rule.rule_slots == ("d",) and rule.couples_tensors, f"rule slots {rule.rule_slots}, couples {rule.couples_tensors}"
    inputs = _inputs()
    got = run_reference(rule, {"lr": 0.1}, inputs, FLOAT64, [1, 2, 3, 4])
    d = 1.0
    for t in range(4):
        d += sum(float(np.sum(np.abs(g[t]))) for g in inputs.grads)
        values = [float(got[t + 1][i]["d"]) for i in range(3)]
        assert values == [values[0]] * 3, f"step {t + 1}: d differs between tensors: {values}"
        assert values[0] == pytest.approx(d, rel=1e-14), f"step {t + 1}: d = {values[0]}, hand-computed {d}"


def test_budgets_of_cross_tensor_rules_are_measured_and_hold_float32() -> None:
    """The error model gives sum_all and the rule slot finite budgets (the same for every tensor), and a
    float32 evaluation of the rule lies within them."""
    spec = _spec(["s = sum_all(grad * grad)", "d = d + s", "theta = theta - lr * grad / sqrt(d)"], _RULE_SLOT.format(init="1"))
    rule, inputs = spec.resolve(), _inputs(20)
    budgets = measure(rule, {"lr": 0.1}, inputs, [1, 10, 20], seed_text="probe")
    ref = run_reference(rule, {"lr": 0.1}, inputs, FLOAT64, [1, 10, 20])
    f32 = run_reference(rule, {"lr": 0.1}, inputs, FLOAT32, [1, 10, 20])
    for step in (1, 10, 20):
        d_budgets = {budgets["float32"][step][i]["d"] for i in range(3)}
        assert len(d_budgets) == 1 and 0 < min(d_budgets) < np.inf, f"step {step}: d budgets {d_budgets}"
        for i in range(3):
            for slot in ("theta", "d"):
                err = float(np.max(np.abs(f32[step][i][slot] - ref[step][i][slot])))
                budget = budgets["float32"][step][i][slot]
                assert err <= budget, f"step {step} tensor {i} {slot}: float32 error {err:.3e} > budget {budget:.3e}"


def test_golden_file_records_rule_slots_and_refuses_an_edited_one() -> None:
    spec = _spec(["d = d + sum_all(abs(grad))", "theta = theta - lr * d * grad"], _RULE_SLOT.format(init="1"))
    golden = generate_golden(spec)
    doc = to_document(golden, spec)
    group = doc["testGroups"][0]
    assert group["ruleSlots"] == ["d"], f"group fields: {sorted(group)}"
    parsed = parse_document(json.loads(json.dumps(doc)), "<probe.json>", spec)
    assert parsed.tests[0].rule_slots == ("d",), f"read back: {parsed.tests[0].rule_slots}"
    # Tensor 1's d made different from tensor 0's: a rule slot is one scalar.
    edited = json.loads(json.dumps(doc))
    record = edited["testGroups"][0]["tests"][0]["expected"][0]
    record["values"]["d"][1] = record["values"]["theta"][0]
    edited["contentSha256"] = content_hash(edited)
    with pytest.raises(GoldenError, match="rule slot 'd' must be one scalar"):
        parse_document(edited, "<probe.json>", spec)


@pytest.mark.parametrize(
    ("step", "state", "message"),
    [
        (["d = d + sum(grad)", "theta = theta - lr * d"], _RULE_SLOT.format(init="1"), "differs from tensor to tensor"),
        (["d = d + 1", "theta = theta - lr * d"], _RULE_SLOT.format(init="norm(theta)"), "starts from hyperparameters"),
        (["x = sum_all(sum_all(grad) * grad)", "theta = theta - lr * x"], "", "cannot be nested"),
        (["theta = theta - lr * sum_all(matmul(grad, transpose(grad)))"], "", "cannot be combined"),
        (
            ["theta = theta - lr * d * grad"],
            '[state.d]\ninit = "sum_all(theta)"\ndoc = "x"\nkind = "scalar"',
            "not available in initialisers",
        ),
        (
            ["d = d * 1", "theta = theta - lr * d"],
            '[state.d]\ninit = "1"\nscope = "rule"\nkind = "tensor"\ndoc = "x"',
            "kind must be",
        ),
    ],
    ids=["per-tensor-into-rule-slot", "rule-slot-init-reads-theta", "nested", "with-matmul", "in-init", "tensor-kind"],
)
def test_spec_refuses_what_the_evaluators_cannot_do(step: list[str], state: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(step, state)


def test_a_local_made_of_uniform_values_may_feed_a_rule_slot() -> None:
    """dlr = d * lr is the same for every tensor, so d = max(d, dlr * sum_all(...)) is accepted."""
    spec = _spec(["dlr = d * lr", "d = max(d, dlr * sum_all(grad))", "theta = theta - dlr * grad"], _RULE_SLOT.format(init="1"))
    assert spec.resolve().rule_slots == ("d",)


def test_cuda_generator_states_why_a_cross_tensor_rule_has_no_kernel() -> None:
    from optspec.impls.cuda.codegen import no_kernel_reason

    spec = _spec(["d = d + sum_all(abs(grad))", "theta = theta - lr * d * grad"], _RULE_SLOT.format(init="1"))
    reason = no_kernel_reason(spec.resolve())
    assert reason is not None and "sum_all()" in reason and "every tensor" in reason, f"reason: {reason!r}"
    only_slot = _spec(["d = d * 2", "theta = theta - lr * d * grad"], _RULE_SLOT.format(init="1"))
    reason = no_kernel_reason(only_slot.resolve())
    assert reason is not None and 'scope "rule"' in reason, f"reason: {reason!r}"
