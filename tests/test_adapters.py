"""Adapters: how a case is planned (run, known deviation, skip) and how failures are reported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from optspec.conformance import enumerate_checks, load_goldens, matrix, run_check
from optspec.errors import AdapterError
from optspec.impls import implementation
from optspec.impls.base import Binding, Plan, Requirement, Slot, Support, parse_registry, plan_case
from optspec.reference import CaseInputs, Trajectory
from optspec.spec import SpecLibrary

LIBRARY = SpecLibrary()
GOLDEN = Path(__file__).resolve().parents[1] / "conformance" / "golden"


def _plan(impl: str, rule: str, variant: Mapping[str, str], hyper: Mapping[str, float] | None = None) -> Plan:
    spec = LIBRARY.get(rule)
    return plan_case(implementation(impl), spec, spec.full_variant(variant), spec.hyper_values(hyper), "float32")


def test_torch_amsgrad_maps_to_betas_and_flag() -> None:
    pytest.importorskip("torch")
    plan = _plan("torch.for-loop", "adam", {"amsgrad": "raw"}, {"beta1": 0.8})
    assert plan.skip is None and plan.kwargs["amsgrad"] is True and plan.kwargs["betas"] == (0.8, 0.999), plan


def test_known_deviation_compares_against_the_implemented_variant() -> None:
    pytest.importorskip("optax")
    plan = _plan("optax", "adam", {"amsgrad": "raw"})
    assert plan.skip is None
    assert plan.compared_variant["amsgrad"] == "corrected", "optax's AMSGrad must be compared with the bias-corrected maximum"
    assert [d.id for d in plan.deviations] == ["optax-amsgrad-corrected-max"]


def test_not_expressible_is_skipped_with_the_reason() -> None:
    pytest.importorskip("torch")
    plan = _plan("torch.for-loop", "adam", {"epsilon": "hat"})
    assert plan.skip == "torch.optim.Adam: cannot express epsilon=hat", plan.skip
    plan = _plan("torch.for-loop", "sgd", {"nesterov": "on"}, {"momentum": 0.9, "dampening": 0.5})
    assert plan.skip == "torch.optim.SGD: Nesterov needs dampening = 0", plan.skip


def test_missing_framework_is_a_skip_with_reason() -> None:
    class Missing:
        name, framework, dtypes = "ghost", "ghost", ("float32",)

        def unavailable(self) -> str | None:
            return "ghostlib is not installed"

        def binding(self, rule: str) -> Binding | None:
            return None

    spec = LIBRARY.get("adam")
    plan = plan_case(Missing(), spec, spec.default_variant(), spec.hyper_values(), "float32")
    assert plan.skip == "ghostlib is not installed"


class Raising:
    """An adapter whose library raises at step 2."""

    name, framework, dtypes = "raising", "test", ("float32", "float64")

    def unavailable(self) -> str | None:
        return None

    def binding(self, rule: str) -> Binding | None:
        return Binding(rule, "Raising", {}, {"maximize": {"off": Support()}}, {"u": Slot("u")}) if rule == "adamax" else None

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        raise AdapterError("Raising: step 2 raised RuntimeError: boom")


def test_an_adapter_that_raises_is_an_error_not_a_pass() -> None:
    goldens = load_goldens(LIBRARY, GOLDEN, ["adamax"])
    results = [run_check(c) for c in enumerate_checks(LIBRARY, goldens, [Raising()])]
    ran = [r for r in results if r.status != "skipped"]
    assert ran and all(r.status == "error" and "step 2 raised RuntimeError: boom" in r.message for r in ran), ran[0]
    assert matrix(results)["adamax"]["raising"].status == "error"


def test_requirement_in_the_expression_language() -> None:
    requirement = Requirement("momentum > 0", "needs momentum")
    assert requirement.holds({"momentum": 0.9}) and not requirement.holds({"momentum": 0.0})


_PRECISION_ENTRY = "\n".join(
    [
        "[[precision]]",
        "id = 'a'",
        "implementations = ['x']",
        "dtype = 'float32'",
        "profile = 'float32_scalar32'",
        "reason = 'a reason long enough'",
        "upstream = ['u']",
        "",
    ]
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[deviation]]\nid = 'x'\n", "impls/test.toml: at deviation/0: 'rule' is a required property"),
        ("[[deviation]\n", "impls/test.toml: not valid TOML"),
        (2 * _PRECISION_ENTRY, "duplicate deviation id 'a'"),
    ],
)
def test_registry_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(AdapterError) as info:
        parse_registry(text, "impls/test.toml")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_storage_deviation_models_what_torch_stores() -> None:
    """torch.optim.NAdam keeps mu_product in float32: checked against that model, named, not hidden."""
    pytest.importorskip("torch")
    goldens = load_goldens(LIBRARY, GOLDEN, ["nadam"])
    checks = [
        c
        for c in enumerate_checks(LIBRARY, goldens, [implementation("torch.for-loop")], dtypes=("float64",))
        if c.test.case == "knobs" and c.test.variant == LIBRARY.get("nadam").default_variant()
    ]
    (result,) = [run_check(c) for c in checks]
    assert result.status == "deviation", result.message
    assert [d.id for d in result.deviations] == ["torch-nadam-mu-product-float32"], result.deviations
    assert result.profile == "float64", "the storage model must be checked under the unchanged float64 budget"
