"""The matrix against the oldest supported releases (``tox -e oldest``): torch 2.0.1, optax 0.2.3
with jax 0.4.31, numpy 1.26.

``optspec run`` must exit 0 or 1, never 2 (nothing "could not run": a keyword or path torch
2.0.1 lacks is a skip that says so), and every failing check must be one of the real, named
defects of those releases below, each with its evidence (the released source, file:line) and
the upstream fix: the ``[[defect]]`` entries of impls/deviations.toml, which the matrix names
in each such failure. A failure not registered fails the test; so does a registered defect of
these releases that no longer shows (the registry cannot hide anything), and the proofs at the
end show each defect is exactly what its entry says. The whole matrix takes minutes on two cores, so the
module runs only where ``OPTSPEC_OLDEST=1`` (set by tox -e oldest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.oldest,
    pytest.mark.skipif(
        os.environ.get("OPTSPEC_OLDEST") != "1",
        reason="the whole matrix against torch 2.0.1 / optax 0.2.3 runs in tox -e oldest (OPTSPEC_OLDEST=1)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
OLDEST = {"torch": "2.0.1", "optax": "0.2.3", "jax": "0.4.31", "jaxlib": "0.4.31"}


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("oldest") / "run-oldest.json"
    result = subprocess.run(
        [sys.executable, "-m", "optspec.cli", "run", "--quiet", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3000,
    )
    doc = json.loads(out.read_text()) if out.exists() else None
    return {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr, "doc": doc}


def test_the_installed_releases_are_the_oldest(matrix_run: dict[str, Any]) -> None:
    assert matrix_run["doc"] is not None, f"optspec run wrote no --json document: {matrix_run['stderr'][-2000:]}"
    packages = matrix_run["doc"]["environment"]["packages"]
    for name, version in OLDEST.items():
        assert (packages.get(name) or "").split("+")[0] == version, f"{name}: installed {packages.get(name)}, expected {version}"
    assert (packages.get("numpy") or "").startswith("1.26."), f"numpy {packages.get('numpy')}: expected 1.26.x"


def test_the_matrix_exits_0_or_1_never_2(matrix_run: dict[str, Any]) -> None:
    """Nothing "could not run" except where a registered defect says the library raises (``raises``: exit 1)."""
    errors = [r for r in (matrix_run["doc"] or {}).get("results", []) if r["status"] == "error" and r.get("defect") is None]
    assert matrix_run["code"] in (0, 1), (
        f"optspec run exited {matrix_run['code']}; {len(errors)} checks could not run, first: "
        f"{errors[0]['message'] if errors else matrix_run['stderr'][-2000:]}"
    )
    assert not errors, f"{len(errors)} checks could not run, first: {errors[0]['message']}"


def test_every_failure_is_a_registered_defect_of_the_old_release(matrix_run: dict[str, Any]) -> None:
    """Each failing check names a [[defect]] of impls/defects.toml that the installed release has
    (evidence: the released source; the upstream fix), and each old-release defect shows."""
    from optspec.impls.defects import defects as registry

    defects = {d.id: d for d in registry() if d.present()}
    old_release = {d.id for d in registry() if d.fixed_in is not None and d.present()}
    # a wrong result, or the library's own error where a defect with `raises` registers it
    failures = [r for r in matrix_run["doc"]["results"] if r["status"] == "fails" or (r["status"] == "error" and r.get("defect"))]
    unexplained = [r for r in failures if r.get("defect") not in defects]
    assert not unexplained, f"{len(unexplained)} failures are not a registered defect, first: {unexplained[0]['message']}"
    assert all("[known defect " in r["message"] for r in failures), "a defect's failure message must name it"
    seen = {r["defect"] for r in failures}
    assert old_release <= seen, f"registered defects of these releases that no longer show: {sorted(old_release - seen)}"
    assert (matrix_run["code"] == 1) == bool(failures), f"exit {matrix_run['code']} with {len(failures)} failures"
    assert "fails: known defect" in matrix_run["stdout"], "the matrix cell of a defect must say so"
    assert "error: known defect" in matrix_run["stdout"], "the cell of a registered library error must say so"


def test_what_torch_2_0_1_cannot_compute_is_a_named_skip(matrix_run: dict[str, Any]) -> None:
    """torch 2.0.1 has no CPU float16 kernel for addcmul, addcdiv and clamp: those checks are skips that say so."""
    results = matrix_run["doc"]["results"]
    for rule, kernel in (("adadelta", "addcmul_cpu_out"), ("adamax", "addcdiv_cpu_out"), ("rprop", "clamp_scalar_cpu")):
        half = [
            r for r in results if r.get("rule") == rule and r["implementation"] == "torch.for-loop" and r["dtype"] == "float16"
        ]
        wanted = f"not run: torch 2.0.1 has no CPU float16 kernel for {kernel}"
        assert half and any(wanted in r["message"] for r in half), (
            f"{rule} float16 on torch 2.0.1: {sorted({r['message'][-90:] for r in half})[:3]}"
        )
        assert all(r["status"] == "skipped" for r in half if "kernel for" in r["message"]), (
            f"{rule}: a missing kernel must be a skip"
        )
    assert "not run: torch 2.0.1 has no CPU float16 kernel" in matrix_run["stdout"], "the matrix cell must say why nothing ran"


def test_what_torch_2_0_1_lacks_is_a_named_skip(matrix_run: dict[str, Any]) -> None:
    """The fused path (CPU from 2.4) and decoupled decay in RAdam (2.2), NAdam (2.1), Adam (2.7)."""
    results = matrix_run["doc"]["results"]
    fused = [r for r in results if r["implementation"] == "torch.fused"]
    assert fused and all(r["status"] == "skipped" and "the fused path is not in torch 2.0.1" in r["message"] for r in fused), (
        f"torch.fused on torch 2.0.1: {sorted({r['message'][:90] for r in fused})[:3]}"
    )
    for rule, target in (("radam", "RAdam"), ("nadam", "NAdam"), ("amsgrad", "Adam")):
        decoupled = [
            r
            for r in results
            if r.get("rule") == rule
            and r["implementation"] == "torch.for-loop"
            and r["variant"].get("weight_decay") == "decoupled"
        ]
        wanted = f"torch.optim.{target}(decoupled_weight_decay=True) is not in torch 2.0.1"
        # every decoupled case is skipped: for the keyword, or first for what torch cannot express in any
        # release (RAdam's hard-coded threshold, NAdam's schedule=one_correction)
        reasons = sorted({r["message"] for r in decoupled if r["status"] == "skipped"})
        assert decoupled and all(r["status"] == "skipped" for r in decoupled), f"{rule} decoupled ran on torch 2.0.1"
        assert any(wanted in m for m in reasons), f"{rule} decoupled on torch 2.0.1 skipped only for: {reasons[:3]}"
    ran = [r for r in results if r.get("rule") in ("radam", "nadam", "amsgrad") and r["status"] in ("conforms", "deviation")]
    assert ran, "the L2 cases of radam, nadam and amsgrad must run on torch 2.0.1 (no decoupled_weight_decay passed)"
    optax_rms = [r for r in results if r.get("rule") == "rmsprop" and r["implementation"] == "optax"]
    assert any("eps_in_sqrt=False) is not in optax 0.2.3" in r["message"] for r in optax_rms), "optax 0.2.3 has no eps_in_sqrt"
    assert any(r["status"] in ("conforms", "deviation") for r in optax_rms), "optax 0.2.3 rmsprop (eps inside) must run"


# --------------------------------------------------------------------------- the defects, shown to be exactly that


def _golden(rule: str) -> Any:
    from optspec.golden import read_golden
    from optspec.spec import SpecLibrary

    spec = SpecLibrary().get(rule)
    return spec, read_golden(ROOT / "conformance" / "golden" / f"{rule}.json", spec, f"conformance/golden/{rule}.json")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optax_0_2_3_adabelief_is_the_previous_moment_variant(dtype: str) -> None:
    """[[defect]] optax-adabelief-previous-moment: the failing runs conform to prediction=previous."""
    from optspec.conformance import compare_with_registry
    from optspec.impls import implementation
    from optspec.impls.base import plan_case

    spec, golden = _golden("adabelief")
    impl = implementation("optax")
    for case in ("defaults", "knobs", "scheduled"):
        asked = golden.find(case, spec.default_variant())
        previous = golden.find(case, {**spec.default_variant(), "prediction": "previous"})
        assert asked is not None and previous is not None, f"adabelief golden has no {case} case for both predictions"
        plan = plan_case(impl, spec, asked.variant, asked.hyper, dtype)
        assert plan.skip is None, plan.skip
        observed = impl.run(plan, asked.inputs, asked.hyper, dtype, asked.steps)
        as_asked, _, _ = compare_with_registry(spec, "optax", asked, observed, dtype, f"{case} (current)")
        as_previous, _, _ = compare_with_registry(spec, "optax", previous, observed, dtype, f"{case} (previous)")
        assert not as_asked.ok, f"optax 0.2.3 adabelief {case} {dtype} conforms to prediction=current: the defect is gone"
        assert as_previous.ok, f"optax 0.2.3 adabelief {case} {dtype} is not prediction=previous either: {as_previous.message}"


def test_torch_2_0_1_foreach_adagrad_conforms_with_a_float64_step_tensor() -> None:
    """[[defect]] torch-adagrad-foreach-float32-step-size: the only difference is the float32 step tensor."""
    import torch

    from optspec.conformance import compare
    from optspec.impls import implementation
    from optspec.impls.base import plan_case

    spec, golden = _golden("adagrad")
    impl = implementation("torch.foreach")
    for case in ("defaults", "knobs"):
        test = golden.find(case, {**spec.default_variant(), "epsilon": "outside"})
        assert test is not None, f"adagrad golden has no epsilon=outside {case} case"
        plan = plan_case(impl, spec, test.variant, test.hyper, "float64")
        assert plan.skip is None, plan.skip
        plain = impl.run(plan, test.inputs, test.hyper, "float64", test.steps)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            wide = impl.run(plan, test.inputs, test.hyper, "float64", test.steps)
        finally:
            torch.set_default_dtype(previous)
        assert not compare(test, plain, "float64", case).ok, f"torch 2.0.1 foreach adagrad {case} conforms: the defect is gone"
        result = compare(test, wide, "float64", f"{case} with a float64 step tensor")
        assert result.ok, f"with the default dtype float64, foreach adagrad {case} still differs: {result.message}"


def test_torch_2_0_1_foreach_asgd_eta_is_the_misplaced_power() -> None:
    """[[defect]] torch-asgd-foreach-eta-precedence: foreach lr / (1 + lambd lr t^alpha), for-loop lr / (1 + lambd lr t)^alpha."""
    import torch

    lr, lambd, alpha, steps = 0.1, 0.5, 0.75, 6
    etas = {}
    for foreach in (False, True):
        param = torch.zeros(3, dtype=torch.float64)
        optimizer = torch.optim.ASGD([param], lr=lr, lambd=lambd, alpha=alpha, t0=1e6, foreach=foreach)
        for _ in range(steps):
            param.grad = torch.ones_like(param)
            optimizer.step()
        etas[foreach] = float(optimizer.state[param]["eta"])
    documented = lr / (1 + lambd * lr * steps) ** alpha
    misplaced = lr / (1 + lambd * lr * steps**alpha)
    assert abs(documented - misplaced) / documented > 1e-2, "the two formulas must be far apart at these hyperparameters"
    # eta is a float32 tensor in torch 2.0.1 (asgd.py:86): equal to within float32 rounding
    assert abs(etas[False] - documented) <= 1e-7 * documented, f"for-loop eta {etas[False]} is not the documented {documented}"
    assert abs(etas[True] - misplaced) <= 1e-7 * misplaced, (
        f"foreach eta {etas[True]} is not lr / (1 + lambd lr t^alpha) = {misplaced}"
    )


def test_torch_2_0_1_differentiable_nadam_scales_the_gradient_twice() -> None:
    """[[defect]] torch-nadam-differentiable-exp-avg-term: step 1's second term is grad_scaled * c2, not exp_avg * c2'."""
    import torch

    lr, beta1, beta2, eps, psi = 2e-3, 0.9, 0.999, 1e-8, 4e-3
    g = torch.tensor([0.3, -1.2], dtype=torch.float64)
    moved = {}
    for differentiable in (False, True):
        param = torch.zeros(2, dtype=torch.float64)
        optimizer = torch.optim.NAdam(
            [param], lr=lr, betas=(beta1, beta2), eps=eps, momentum_decay=psi, differentiable=differentiable
        )
        param.grad = g.clone()
        optimizer.step()
        moved[differentiable] = param.clone()
    mu = beta1 * (1 - 0.5 * 0.96**psi)
    mu_next = beta1 * (1 - 0.5 * 0.96 ** (2 * psi))
    m, v = (1 - beta1) * g, (1 - beta2) * g * g
    denom = (v / (1 - beta2)).sqrt() + eps
    scaled = g * (-lr * (1 - mu) / (1 - mu))  # mu_product after step 1 is mu (float32 in 2.0.1: compared loosely)
    documented = scaled / denom + m * (-lr * mu_next / (1 - mu * mu_next)) / denom
    twice = scaled / denom + scaled * (-lr * (1 - mu_next) / (1 - mu * mu_next)) / denom
    assert torch.allclose(moved[False], documented, rtol=1e-6, atol=0), f"for-loop NAdam {moved[False]} != {documented}"
    assert torch.allclose(moved[True], twice, rtol=1e-6, atol=0), (
        f"differentiable NAdam {moved[True]} is not the 2.0.1 formula {twice}"
    )
    assert not torch.allclose(moved[True], documented, rtol=1e-4, atol=0), "differentiable NAdam conforms: the defect is gone"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optax_0_2_3_optimistic_gd_first_step_uses_a_zero_previous_gradient(dtype: str) -> None:
    """[[defect]] optax-optimistic-gd-zero-first-previous-gradient: step 1 moves by lr (alpha + beta) g, not lr alpha g."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    from optspec.impls.optax_jax import x64

    lr, alpha, beta, grad = 0.1, 0.5, 2.0, [1.0, -2.0]
    with x64(dtype == "float64"):
        g = jnp.asarray(grad, dtype=jnp.float64 if dtype == "float64" else jnp.float32)
        tx = optax.optimistic_gradient_descent(lr, alpha=alpha, beta=beta)
        update, _ = tx.update(g, tx.init(jnp.zeros_like(g)))
        got = np.asarray(update, dtype=np.float64).tolist()
    zero_previous = [-lr * (alpha + beta) * x for x in grad]
    assert got == pytest.approx(zero_previous, rel=1e-6), (
        f"optax 0.2.3 step 1 update {got} != -lr (alpha + beta) g = {zero_previous}"
    )
    assert got != pytest.approx([-lr * alpha * x for x in grad], rel=1e-3), "step 1 uses g_0 := g_1: the defect is gone"


def test_optax_0_2_3_fromage_decay_is_float32() -> None:
    """[[defect]] optax-fromage-float32-decay-cancellation: the decay mult - 1 is computed in float32 and cancels.

    With a zero gradient fromage's update is the decay alone, (mult - 1) theta: at theta = 1 it is the coefficient."""
    import jax.numpy as jnp
    import optax

    from optspec.impls.optax_jax import x64

    lr = 1e-2
    with x64(False):
        theta = jnp.ones((), dtype=jnp.float32)
        tx = optax.fromage(lr)
        update, _ = tx.update(jnp.zeros_like(theta), tx.init(theta), theta)
        coefficient = float(update)
        float32_cancelled = float(1 / jnp.sqrt(jnp.float32(1 + lr**2)) - 1)
    exact = 1 / (1 + lr**2) ** 0.5 - 1
    assert coefficient == float32_cancelled, (
        f"optax 0.2.3 fromage decay {coefficient} is not the float32 mult - 1 {float32_cancelled}"
    )
    assert abs(coefficient - exact) / abs(exact) > 1e-4, (
        f"decay {coefficient} is within 1e-4 of the exact {exact}: the defect is gone"
    )
