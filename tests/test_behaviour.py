"""Each behavioural check of ``optspec check`` catches its deliberately broken optimizer and
passes torch.optim's own (or the reference-backed optimizer for a test-only rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from fixtures import behaviours, broken
from fixtures.reference_optimizer import make_reference_optimizer

from optspec.checking.behaviour import run_behaviour
from optspec.checking.runner import BehaviourResult, CheckReport, open_session
from optspec.spec import SpecLibrary

TEST_SPECS = Path(__file__).parent / "fixtures" / "specs"


def behaviour(rule: str, target: object, check: str, library: SpecLibrary | None = None) -> BehaviourResult:
    """Run one behavioural check in-process on ``target`` claimed as ``rule``'s default variant."""
    session = open_session(rule, target, library=library, isolate=False)
    report = CheckReport(rule, session.info.ref, session.info, session.variant, {}, {})
    try:
        (result,) = run_behaviour(session, report, only=[check])
    finally:
        session.executor.close()
    return result


def assert_status(result: BehaviourResult, status: str, target: object, contains: str = "") -> None:
    name = getattr(target, "__name__", repr(target))
    assert result.status == status, (
        f"behaviour {result.name} of {name}: status {result.status!r}, expected {status!r}: {result.message}"
    )
    assert contains in result.message, f"behaviour {result.name} of {name}: message should mention {contains!r}: {result.message}"


@pytest.mark.parametrize(
    ("check", "rule", "good", "bad", "says"),
    [
        (
            "hyperparameters",
            "adam",
            torch.optim.Adam,
            broken.IgnoresWeightDecayAdam,
            "'weight_decay' (spec weight_decay) is accepted but ignored",
        ),
        ("maximize", "adam", torch.optim.Adam, broken.IgnoresMaximizeAdam, "maximize=True is ignored"),
        ("zero_gradients", "adam", torch.optim.Adam, broken.EpsAfterRsqrtAdam, "became non-finite"),
        ("none_gradients", "sgd", torch.optim.SGD, broken.DecaysWithoutGradSGD, "changed at step 2"),
        ("none_gradients", "adam", torch.optim.Adam, broken.SharedStepAdam, "its own step counter"),
        ("param_groups", "adam", torch.optim.Adam, broken.FirstGroupBetasAdam, "second group"),
        ("state_dict", "adam", torch.optim.Adam, broken.ForgetfulAdam, "must be bit-identical"),
        ("non_finite", "adam", torch.optim.Adam, broken.NanRepairAdam, "silently repaired"),
        ("non_finite", "adam", torch.optim.Adam, broken.RaisesOnNanAdam, "made the target fail"),
        ("bfloat16", "adam", torch.optim.Adam, broken.Bf16PathAdam, "bfloat16 parameters:"),
        ("grad_unchanged", "sgd", torch.optim.SGD, behaviours.GradDecaySGD, "step 1 modified p.grad of parameter 0"),
        ("param_groups_lr", "adam", torch.optim.Adam, behaviours.CachedStepSizeAdam, "two groups (lr 0.01 -> 0.02"),
        ("non_finite", "lion", behaviours.NanSignLion, behaviours.TorchSignLion, "the NaN stays hidden in the state"),
    ],
)
def test_check_passes_torch_and_catches_the_broken_optimizer(check, rule, good, bad, says) -> None:
    assert_status(behaviour(rule, good, check), "passed", good)
    assert_status(behaviour(rule, bad, check), "failed", bad, says)


def test_zero_init_guard() -> None:
    library = SpecLibrary([TEST_SPECS])
    good = make_reference_optimizer("trust_sgd", library=library)
    assert_status(behaviour("trust_sgd", good, "zero_init", library), "passed", good)
    assert_status(
        behaviour("trust_sgd", broken.NoGuardTrustSGD, "zero_init", library), "failed", broken.NoGuardTrustSGD, "never moved"
    )
    assert_status(behaviour("adam", torch.optim.Adam, "zero_init"), "not applicable", torch.optim.Adam, "no norm of theta")


def test_optax_target_runs_the_checks_that_apply() -> None:
    optax = pytest.importorskip("optax")
    for check in ("non_finite", "zero_gradients", "hyperparameters"):
        assert_status(behaviour("adamw", optax.adamw, check), "passed", optax.adamw)
    for check in ("none_gradients", "param_groups", "state_dict"):
        assert_status(behaviour("adamw", optax.adamw, check), "not applicable", optax.adamw)


def test_torch_sign_lion_freezes_the_nan_element_in_its_state() -> None:
    """The spec's sign(NaN) is NaN (optspec.reference uses numpy.sign), so the reference makes the element NaN;
    torch.sign(NaN) is 0, so a torch.sign Lion keeps the element finite while exp_avg holds the NaN."""
    result = behaviour("lion", behaviours.TorchSignLion, "non_finite")
    assert_status(result, "failed", behaviours.TorchSignLion, "while state exp_avg holds the NaN")
    assert "sign(NaN) is 0" in result.message, result.message


def test_torch_adagrad_ignores_a_per_group_initial_accumulator_value() -> None:
    """A behavioural finding on torch.optim.Adagrad 2.13, read in torch/optim/adagrad.py: __init__ (lines 79-98)
    fills state['sum'] of every parameter with the constructor's initial_accumulator_value, and _init_group
    (lines 172-182) uses self.defaults['initial_accumulator_value'], never group['initial_accumulator_value']."""
    result = behaviour("adagrad", torch.optim.Adagrad, "param_groups")
    assert_status(result, "failed", torch.optim.Adagrad, "the second group's 'initial_accumulator_value'")
    assert "is ignored" in result.message and "the value given to the constructor" in result.message, result.message
    others = behaviour("adagrad", torch.optim.Adagrad, "param_groups_lr")
    assert_status(others, "passed", torch.optim.Adagrad)
