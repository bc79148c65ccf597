"""GPU conformance: the generated kernels, torch's CUDA paths and optax on a GPU.

Run on a machine with a CUDA device (and nvcc for the generated kernels):

    pytest conformance/test_cuda_gpu.py

Without a CUDA device the whole module is skipped with the reason; nothing here passes
without running.

* ``test_gpu_conforms``: every golden case x {optspec.cuda, torch for-loop/foreach/fused/
  capturable on CUDA, optax.gpu} x dtype, exactly as ``test_conformance.py`` judges them
  (error-model budgets, known deviations from the registry).
* ``test_multi_tensor_launch``: the part CI cannot check on the CPU: one launch over many
  tensors of awkward sizes (empty, 1, 3, 4, 5, chunk boundary +- 1, misaligned), compared
  with the float64 reference under the error model's float32 budget, and, for rules whose
  element code uses only IEEE-exact operations (+ - * / sqrt, comparisons, min/max, where)
  and no reductions, bit for bit with the CPU build of the same generated code (both are
  compiled without FMA contraction).
* ``test_bfloat16_launch``: bf16 params and grads with float32 state, bit for bit with the
  CPU build.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from optspec.conformance import compare, enumerate_checks, load_goldens, run_check
from optspec.spec import SpecLibrary

from .conftest import GOLDEN_DIR


def _no_gpu() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False); run this module on a GPU machine"
    return None


_REASON = _no_gpu()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

from optspec.impls import torch_cuda  # noqa: E402
from optspec.impls.cuda import optax_gpu  # noqa: E402
from optspec.impls.cuda.adapter import GeneratedCuda, load_kernel, run_inputs  # noqa: E402
from optspec.impls.cuda.cases import MISALIGNED, awkward_case  # noqa: E402
from optspec.impls.cuda.driver import CudaBackend, HostBackend  # noqa: E402

pytestmark = pytest.mark.gpu

_LIBRARY = SpecLibrary()
_CUDA = GeneratedCuda("cuda", _LIBRARY)
_IMPLEMENTATIONS = [_CUDA, *torch_cuda.IMPLEMENTATIONS, *optax_gpu.IMPLEMENTATIONS]
_CHECKS = enumerate_checks(_LIBRARY, load_goldens(_LIBRARY, GOLDEN_DIR), _IMPLEMENTATIONS)


@pytest.mark.parametrize("check", _CHECKS, ids=[c.id for c in _CHECKS])
def test_gpu_conforms(check) -> None:
    result = run_check(check)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.status in ("conforms", "deviation"), result.message
    if result.status == "deviation":
        assert result.deviations and all(d.reason and d.upstream for d in result.deviations), result.message


@pytest.mark.parametrize("rule", _LIBRARY.names)
def test_multi_tensor_launch(rule: str) -> None:
    reason = _CUDA.unavailable()
    if reason is not None:
        pytest.skip(reason)
    expected = awkward_case(_LIBRARY.get(rule))
    inputs = expected.inputs
    steps = list(expected.steps)
    kernel, library = load_kernel(_LIBRARY, rule, expected.variant, "cuda")
    observed = run_inputs(kernel, library, CudaBackend(), inputs, expected.hyper, steps, "float32", 65536, MISALIGNED)
    comparison = compare(expected, observed, "float32", f"{rule} x optspec.cuda, multi-tensor launch")
    assert comparison.ok, comparison.message
    if kernel.transcendental or kernel.levels:
        return
    host_kernel, host_library = load_kernel(_LIBRARY, rule, expected.variant, "host")
    host = run_inputs(host_kernel, host_library, HostBackend(), inputs, expected.hyper, steps, "float32", 65536)
    for step in steps:
        for index, tensors in enumerate(host[step]):
            for slot, value in tensors.items():
                np.testing.assert_array_equal(observed[step][index][slot], value, err_msg=f"{rule} step {step} {slot}[{index}]")


@pytest.mark.parametrize("rule", ["sgd", "adam", "adamw"])
def test_bfloat16_launch(rule: str) -> None:
    reason = _CUDA.unavailable()
    if reason is not None:
        pytest.skip(reason)
    spec = _LIBRARY.get(rule)
    inputs = awkward_case(spec).inputs
    hyper = spec.hyper_values()
    steps = list(range(1, inputs.steps + 1))
    kernel, library = load_kernel(_LIBRARY, rule, spec.default_variant(), "cuda")
    host_kernel, host_library = load_kernel(_LIBRARY, rule, spec.default_variant(), "host")
    if kernel.transcendental:
        pytest.skip(f"{rule} uses exp/log/cos/pow, whose float32 results differ between libm and CUDA")
    gpu = run_inputs(kernel, library, CudaBackend(), inputs, hyper, steps, "bfloat16", 65536, MISALIGNED)
    host = run_inputs(host_kernel, host_library, HostBackend(), inputs, hyper, steps, "bfloat16", 65536)
    for step in steps:
        for index, tensors in enumerate(host[step]):
            for slot, value in tensors.items():
                np.testing.assert_array_equal(gpu[step][index][slot], value, err_msg=f"{rule} bf16 step {step} {slot}[{index}]")
