"""The matrix constructs of the spec language (issue 12): parsing, the float64 reference against
numpy, ml_dtypes and torch.optim.Muon, the Monte Carlo model's shaped runs, and the CUDA
generator's reason for giving Muon no kernel."""

from __future__ import annotations

import numpy as np
import pytest

from optspec.cases import make_inputs
from optspec.errors import ExprError
from optspec.expr import parse_equation, unroll
from optspec.reference import FLOAT64, round_bf16, run_reference
from optspec.spec import SpecLibrary

LIBRARY = SpecLibrary()


def test_repeat_loop_parses_and_unrolls() -> None:
    eq = parse_equation("ns: repeat 3: A = matmul(x, transpose(x)); x = 2 * x + matmul(A, x)")
    assert eq.label == "ns" and eq.repeat == 3, f"loop parsed as label={eq.label!r}, repeat={eq.repeat}"
    targets = [e.target for _, e in unroll(eq)]
    assert targets == ["A", "x"] * 3, f"unrolled targets {targets}, expected A, x three times"


@pytest.mark.parametrize(
    "text",
    ["repeat 0: x = x", "repeat 101: x = x", "repeat 2: lab: x = x", "repeat 2: ", "repeat 2: x = (x"],
)
def test_bad_loops_are_expr_errors(text: str) -> None:
    with pytest.raises(ExprError):
        parse_equation(text)


def test_round_bf16_matches_ml_dtypes() -> None:
    import ml_dtypes

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10_000) * 10.0 ** rng.uniform(-20, 20, 10_000)).astype(np.float32)
    ours = round_bf16(x)
    theirs = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    bad = np.flatnonzero(ours != theirs)
    assert bad.size == 0, f"round_bf16 differs from ml_dtypes at {bad.size} values, e.g. {x[bad[:3]]}"


def _muon_run(variant: dict[str, str], case: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    spec = LIBRARY.get("muon")
    inputs = make_inputs(spec, spec.case(case))
    hyper = spec.hyper_values(spec.case(case).hyper)
    ref = run_reference(spec.resolve(variant), hyper, inputs, FLOAT64, record=[inputs.steps])[inputs.steps]
    return [r["theta"] for r in ref], [hyper, inputs]  # type: ignore[list-item]


def test_muon_bf16_reference_is_torch_muon_in_float64() -> None:
    """torch.optim.Muon on float64 parameters does its Newton-Schulz in bfloat16; the spec's
    round_bf16 sites reproduce it to float64 rounding (torch/optim/_muon.py:55-66)."""
    torch = pytest.importorskip("torch")
    ref, (hyper, inputs) = _muon_run({}, "knobs")
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in inputs.params]
    opt = torch.optim.Muon(
        params, lr=hyper["lr"], weight_decay=hyper["weight_decay"], momentum=hyper["momentum"], eps=hyper["eps"]
    )
    for t in range(inputs.steps):
        for p, g in zip(params, inputs.grads):
            p.grad = torch.tensor(g[t], dtype=torch.float64)
        opt.step()
    for i, (p, r) in enumerate(zip(params, ref)):
        err = float(np.max(np.abs(p.detach().numpy() - r)))
        assert err < 1e-12, f"tensor {i}: torch.optim.Muon float64 differs from the bf16 spec by {err:.3e}"


# over a minute on one core: in tox -e slow, not the default run
@pytest.mark.slow
def test_muon_optax_variant_is_optax_contrib_muon_with_x64() -> None:
    """optax.contrib.muon with x64 is the ns_dtype=param, normalise=add, bias_correction=on,
    lr_scale=cols_over_rows variant (optax/contrib/_muon.py:135-145, :340, :488-497)."""
    jax = pytest.importorskip("jax")
    import optax
    import optax.contrib

    variant = {"ns_dtype": "param", "normalise": "add", "bias_correction": "on", "lr_scale": "cols_over_rows"}
    ref, (hyper, inputs) = _muon_run(variant, "knobs")
    with jax.enable_x64(True):
        import jax.numpy as jnp

        tx = optax.contrib.muon(
            hyper["lr"],
            ns_coeffs=(hyper["ns_a"], hyper["ns_b"], hyper["ns_c"]),
            beta=hyper["momentum"],
            eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
        )
        params = [jnp.asarray(p) for p in inputs.params]
        state = tx.init(params)
        for t in range(inputs.steps):
            updates, state = tx.update([jnp.asarray(g[t]) for g in inputs.grads], state, params)
            params = optax.apply_updates(params, updates)
        out = [np.asarray(p) for p in params]
    for i, (p, r) in enumerate(zip(out, ref)):
        err = float(np.max(np.abs(p - r)))
        assert err < 1e-9, f"tensor {i}: optax.contrib.muon (x64) differs from its variant by {err:.3e}"


def test_muon_has_no_cuda_kernel_and_says_why() -> None:
    from optspec.impls.cuda.codegen import no_kernel_reason

    reason = no_kernel_reason(LIBRARY.get("muon").resolve())
    assert reason is not None and "round_bf16()" in reason, (
        f"default (bf16 NS): expected a reason naming round_bf16, got {reason!r}"
    )
    reason = no_kernel_reason(LIBRARY.get("muon").resolve({"ns_dtype": "param"}))
    assert reason is not None and ("rows()" in reason or "matmul()" in reason), (
        f"param NS: expected a shape reason, got {reason!r}"
    )
    assert no_kernel_reason(LIBRARY.get("adam").resolve()) is None, "adam is elementwise and must keep its kernel"


def _adafactor(variant: dict[str, str], case: str):  # type: ignore[no-untyped-def]
    spec = LIBRARY.get("adafactor")
    inputs = make_inputs(spec, spec.case(case))
    hyper = spec.hyper_values(spec.case(case).hyper)
    ref = run_reference(spec.resolve(variant), hyper, inputs, FLOAT64, record=[inputs.steps])[inputs.steps]
    return [r["theta"] for r in ref], hyper, inputs


@pytest.mark.parametrize("case", ["defaults", "knobs"])
def test_adafactor_default_is_torch_adafactor_in_float64(case: str) -> None:
    """torch.optim.Adafactor (torch/optim/_adafactor.py:366-416) is the default variant."""
    torch = pytest.importorskip("torch")
    ref, hyper, inputs = _adafactor({}, case)
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in inputs.params]
    opt = torch.optim.Adafactor(
        params,
        lr=hyper["lr"],
        eps=(hyper["eps1"], hyper["eps2"]),
        d=hyper["d"],
        weight_decay=hyper["weight_decay"],
        foreach=False,
    )
    for t in range(inputs.steps):
        for p, g in zip(params, inputs.grads):
            p.grad = torch.tensor(g[t], dtype=torch.float64)
        opt.step()
    for i, (p, r) in enumerate(zip(params, ref)):
        err = float(np.max(np.abs(p.detach().numpy() - r)))
        assert err < 1e-12, f"{case}, tensor {i}: torch.optim.Adafactor float64 differs from the spec by {err:.3e}"


def test_adafactor_optax_variant_is_optax_adafactor_with_x64() -> None:
    """optax.adafactor with x64 is the min_size/add/param_scale/unscaled variant, up to its decay
    rate computed from a float32 count even with x64 (optax/_src/factorized.py:31): ~1e-11 here."""
    jax = pytest.importorskip("jax")
    import optax

    variant = {"factored": "min_size", "epsilon": "add", "step_size": "param_scale", "decay": "unscaled"}
    ref, hyper, inputs = _adafactor(variant, "knobs")
    with jax.enable_x64(True):
        import jax.numpy as jnp

        tx = optax.adafactor(
            hyper["lr"],
            min_dim_size_to_factor=int(hyper["min_dim_size_to_factor"]),
            decay_rate=hyper["decay_rate"],
            eps=hyper["eps_g2"],
            weight_decay_rate=hyper["weight_decay"],
            clipping_threshold=hyper["d"],
        )
        params = [jnp.asarray(p) for p in inputs.params]
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
        for t in range(inputs.steps):
            params, state = step(params, state, [jnp.asarray(g[t]) for g in inputs.grads])
        out = [np.asarray(p) for p in params]
    for i, (p, r) in enumerate(zip(out, ref)):
        err = float(np.max(np.abs(p - r)))
        assert err < 1e-9, f"tensor {i}: optax.adafactor (x64) differs from its variant by {err:.3e}"


def test_adafactor_has_no_cuda_kernel_and_says_why() -> None:
    from optspec.impls.cuda.codegen import no_kernel_reason

    reason = no_kernel_reason(LIBRARY.get("adafactor").resolve())
    assert reason is not None and "row_mean" in reason, f"expected a reason naming row_mean, got {reason!r}"
