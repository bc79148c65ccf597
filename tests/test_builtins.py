"""The built-in names global_grad_norm and ndim: what the reference binds, and where they may be used."""

from __future__ import annotations

import numpy as np
import pytest

from optspec.errors import SpecError
from optspec.reference import FLOAT32, FLOAT64, CaseInputs, run_reference
from optspec.spec import parse_spec

RULE = """
name = "probe"
title = "probe"
doc = "clip by the global norm, move only matrices"
references = [{{ title = "probe", year = 2026 }}]
step = [{step}]
[hyper.lr]
default = 0.5
domain = "[0, inf)"
doc = "lr"
[state.m]
init = "{init}"
doc = "a slot"
"""


def probe(step: str, init: str = "0"):
    return parse_spec(RULE.format(step=step, init=init), "<probe>").resolve()


def inputs() -> CaseInputs:
    rng = np.random.default_rng(0)
    params = (rng.normal(size=(3, 4)), rng.normal(size=(5,)), np.array(0.5))
    grads = tuple(rng.normal(size=(4, *np.shape(p))) for p in params)
    return CaseInputs(params, grads, np.ones(4))


def test_the_reference_binds_the_global_norm_and_ndim() -> None:
    rule = probe('"m = global_grad_norm + 0 * m", "theta = theta - lr * where(ndim > 1, grad / global_grad_norm, 0)"')
    case = inputs()
    out = run_reference(rule, {"lr": 0.5}, case, FLOAT64, range(1, 5))
    for step in range(1, 5):
        norm = np.sqrt(sum(np.sum(g[step - 1] ** 2) for g in case.grads))
        for index, param in enumerate(case.params):
            np.testing.assert_allclose(out[step][index]["m"], norm, rtol=1e-15, err_msg=f"step {step}: not the norm of all grads")
            moved = sum(0.5 * case.grads[index][s] / np.sqrt(sum(np.sum(g[s] ** 2) for g in case.grads)) for s in range(step))
            want = param - moved if param.ndim > 1 else param
            message = f"tensor {index} (ndim {param.ndim}) at step {step}: only tensors with ndim > 1 move"
            np.testing.assert_allclose(out[step][index]["theta"], want, rtol=1e-13, err_msg=message)


def test_float32_reference_computes_the_global_norm_in_binary32() -> None:
    """As torch does for float32 gradients: each tensor's norm in binary32, then the norm of the norms."""
    rule = probe('"m = global_grad_norm + 0 * m", "theta = theta - lr * grad"')
    case = inputs()
    got = float(run_reference(rule, {"lr": 0.5}, case, FLOAT32, [1])[1][0]["m"].flat[0])
    norms = np.array([np.sqrt(np.sum(np.square(g[0].astype(np.float32)))) for g in case.grads], dtype=np.float32)
    want = float(np.sqrt(np.sum(np.square(norms))))
    assert got == want, f"float32 global norm {got!r}, binary32 evaluation gives {want!r}"


@pytest.mark.parametrize("name", ["global_grad_norm", "ndim"])
def test_the_new_builtins_are_read_only(name: str) -> None:
    with pytest.raises(SpecError, match=f"'{name}' is read-only"):
        probe(f'"{name} = 1", "m = m", "theta = theta - lr * grad + 0 * m"')


def test_global_grad_norm_is_not_available_to_state_initialisers() -> None:
    with pytest.raises(SpecError, match="unknown name 'global_grad_norm'"):
        probe('"m = m + grad", "theta = theta - lr * m"', init="global_grad_norm")
