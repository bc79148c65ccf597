"""The generated CUDA kernels, compiled for the CPU and checked against the golden vectors.

What runs here (no GPU): each rule's generated traits struct and the rule-independent chunk
loop of ``impls/cuda/optspec_mt.cuh``, compiled by the host C++ compiler, executed chunk by
chunk and lane (emulated thread) by lane. That verifies the generated arithmetic, the
host/device split of scalars, the pass structure (reductions, per-tensor scalar state,
initialisation), the chunked work list and the vector/scalar/misaligned element paths.
What only a GPU can verify (launch, block reduction, atomics, real concurrency) is in
``conformance/test_cuda_gpu.py``.

All golden cases of every rule run (about 140 float32 cases, 100 steps each; a few seconds
once the per-rule libraries are compiled, about 2-3 s of g++ per rule, cached).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optspec.conformance import compare, enumerate_checks, load_goldens, run_check
from optspec.golden import generate as generate_golden
from optspec.impls.cuda import build
from optspec.impls.cuda.adapter import GeneratedCuda, load_kernel, run_inputs
from optspec.impls.cuda.cases import MISALIGNED, awkward_case
from optspec.impls.cuda.driver import HostBackend, float_to_bf16_bits
from optspec.spec import SpecLibrary

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "conformance" / "golden"

pytestmark = pytest.mark.skipif(build.host_compiler() is None, reason="no host C++ compiler (g++/c++/clang++) on PATH")

_LIBRARY = SpecLibrary()
_HOST = GeneratedCuda("host", _LIBRARY)
_CHECKS = enumerate_checks(_LIBRARY, load_goldens(_LIBRARY, GOLDEN_DIR), [_HOST], dtypes=("float32",))


@pytest.mark.parametrize("check", _CHECKS, ids=[c.id for c in _CHECKS])
def test_host_kernel_conforms(check) -> None:
    """Every golden case, float32 budget of the error model, every recorded step and slot."""
    result = run_check(check)
    assert result.status == "conforms", result.message
    # Every state slot of the variant was compared, not only theta.
    assert set(result.compared_slots) == set(check.test.slots)


def test_wrong_variant_is_caught() -> None:
    """The comparison is sensitive: adam's epsilon=inside kernel must fail the epsilon=outside golden case."""
    golden = load_goldens(_LIBRARY, GOLDEN_DIR, ["adam"])["adam"]
    test = golden.find("defaults", _LIBRARY.get("adam").default_variant())
    assert test is not None
    wrong = {**test.variant, "epsilon": "inside"}
    kernel, library = load_kernel(_LIBRARY, "adam", wrong, "host")
    observed = run_inputs(kernel, library, HostBackend(), test.inputs, test.hyper, test.steps)
    assert not compare(test, observed, "float32", "adam epsilon=inside vs outside").ok


@pytest.mark.parametrize("rule", ["sgd", "adam", "rmsprop"])
def test_chunking_lanes_and_alignment_do_not_change_results(rule: str) -> None:
    """Elementwise rules are bit-for-bit independent of chunk size, lanes and alignment."""
    spec = _LIBRARY.get(rule)
    golden = load_goldens(_LIBRARY, GOLDEN_DIR, [rule])[rule]
    test = golden.tests[0]
    kernel, library = load_kernel(_LIBRARY, rule, test.variant, "host")
    runs = []
    for lanes, chunk, misalign in [(1, 65536, False), (3, 8, True), (5, 4, False)]:
        flags = [misalign and i % 2 == 1 for i in range(len(test.inputs.params))]
        runs.append(run_inputs(kernel, library, HostBackend(lanes), test.inputs, test.hyper, test.steps, "float32", chunk, flags))
    for step in test.steps:
        for index in range(len(test.inputs.params)):
            for slot in ("theta", *spec.state):
                if slot in runs[0][step][index]:
                    first = runs[0][step][index][slot]
                    for other in runs[1:]:
                        np.testing.assert_array_equal(other[step][index][slot], first, err_msg=f"{rule} {slot}[{index}]")


def test_bfloat16_parameters_round_once_per_step() -> None:
    """bf16 params and grads, float32 state: theta is the float32 step rounded to bf16 (torch's rounding)."""
    torch = pytest.importorskip("torch")
    golden = load_goldens(_LIBRARY, GOLDEN_DIR, ["adamw"])["adamw"]
    test = golden.tests[0]
    kernel, library = load_kernel(_LIBRARY, "adamw", test.variant, "host")
    # Inputs representable in bf16, so both runs start from the same values.
    to_bf16 = lambda a: torch.tensor(np.asarray(a, dtype=np.float32)).to(torch.bfloat16).to(torch.float64).numpy()  # noqa: E731
    inputs = type(test.inputs)(
        tuple(to_bf16(p) for p in test.inputs.params),
        tuple(to_bf16(g[:1]) for g in test.inputs.grads),
        test.inputs.lr_multipliers[:1],
    )
    f32 = run_inputs(kernel, library, HostBackend(2), inputs, test.hyper, [1], "float32", 8)
    bf16 = run_inputs(kernel, library, HostBackend(2), inputs, test.hyper, [1], "bfloat16", 8, [False, False, True, False, False])
    for index in range(len(inputs.params)):
        want = torch.tensor(f32[1][index]["theta"], dtype=torch.float32).to(torch.bfloat16).to(torch.float64).numpy()
        np.testing.assert_array_equal(bf16[1][index]["theta"], want)
        for slot in kernel.tensor_slots:
            np.testing.assert_array_equal(bf16[1][index][slot], f32[1][index][slot])
    # The step changed theta by more than bf16 rounding somewhere, so the check above is not vacuous.
    assert any(np.any(bf16[1][i]["theta"] != inputs.params[i]) for i in range(len(inputs.params)))


def test_bf16_rounding_helper_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    values = np.array([1.0, 1.00390625, 1.005859375, -3.0e38, 1e-40, np.inf, -np.inf, 0.0, -0.0, 65504.0], dtype=np.float32)
    values = np.concatenate([values, np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    want = torch.tensor(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float_to_bf16_bits(values), want)


# --------------------------------------------------------------------------- reductions

_REDUCING_RULES = {
    "lambish": """
name = "lambish"
title = "LAMB-like trust ratio (norms in a pass before the update)"
references = [{ title = "Large Batch Optimization for Deep Learning", arxiv = "1904.00962", year = 2020 }]
step = [
  "m = beta1 * m + (1 - beta1) * grad",
  "v = beta2 * v + (1 - beta2) * grad * grad",
  "r = (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps) + weight_decay * theta",
  "wn = norm(theta)",
  "rn = norm(r)",
  "phi = where(wn == 0, 1, where(rn == 0, 1, wn / rn))",
  "theta = theta - lr * phi * r",
]
[hyper.lr]
default = 1e-3
domain = "[0, inf)"
doc = "lr"
[hyper.beta1]
default = 0.9
domain = "[0, 1)"
doc = "b1"
[hyper.beta2]
default = 0.999
domain = "[0, 1)"
doc = "b2"
[hyper.eps]
default = 1e-6
domain = "[0, inf)"
doc = "eps"
[hyper.weight_decay]
default = 0.01
domain = "[0, inf)"
doc = "wd"
[state.m]
init = "0"
doc = "m"
[state.v]
init = "0"
doc = "v"
""",
    "nested": """
name = "nested"
title = "Two reduction levels, a per-tensor scalar state and every reduction"
references = [{ title = "synthetic", year = 2024 }]
step = [
  "c = grad - mean(grad)",
  "s = norm(c) + max_abs(grad) + sum(theta) * 0.001",
  "ema = beta * ema + (1 - beta) * s",
  "theta = theta - lr * c / (ema + eps) - lr * weight_decay * theta",
]
[hyper.lr]
default = 1e-2
domain = "[0, inf)"
doc = "lr"
[hyper.beta]
default = 0.9
domain = "[0, 1)"
doc = "b"
[hyper.eps]
default = 1e-3
domain = "[0, inf)"
doc = "eps"
[hyper.weight_decay]
default = 0.1
domain = "[0, inf)"
doc = "wd"
[state.ema]
init = "1"
kind = "scalar"
doc = "per-tensor EMA of the gradient spread"
""",
}


@pytest.mark.parametrize("rule", sorted(_REDUCING_RULES))
def test_reduction_passes_against_reference(tmp_path: Path, rule: str) -> None:
    """Rules with norms (LAMB-like) and nested reductions plus scalar state: golden values from the float64 reference."""
    (tmp_path / f"{rule}.toml").write_text(_REDUCING_RULES[rule])
    library = SpecLibrary([tmp_path], include_packaged=False)
    spec = library.get(rule)
    golden = generate_golden(spec)
    kernel, kernel_library = load_kernel(library, rule, spec.default_variant(), "host")
    assert kernel.levels == (2 if rule == "nested" else 1)
    for test in golden.tests:
        for lanes, chunk, misalign in [(1, 65536, False), (3, 8, True)]:
            flags = [misalign and i == 3 for i in range(len(test.inputs.params))]
            observed = run_inputs(
                kernel, kernel_library, HostBackend(lanes), test.inputs, test.hyper, test.steps, "float32", chunk, flags
            )
            comparison = compare(test, observed, "float32", f"{rule} {test.name} lanes={lanes} chunk={chunk}")
            assert comparison.ok, comparison.message
            assert set(comparison.compared_slots) == set(test.slots)


@pytest.mark.parametrize("rule", [r for r in ("sgd", "lamb", "nadam", "lookahead") if r in _LIBRARY.names])
def test_large_multi_tensor_list_against_reference(rule: str) -> None:
    """~700K elements over 11 tensors (empty, chunk boundaries +- 1, misaligned), 64K chunks, 3 steps.

    sgd: plain elementwise; lamb: norms in a reduction pass; nadam: per-tensor scalar state;
    lookahead: a state slot initialised from theta and a scalar step counter.
    """
    expected = awkward_case(_LIBRARY.get(rule))
    kernel, library = load_kernel(_LIBRARY, rule, expected.variant, "host")
    observed = run_inputs(
        kernel, library, HostBackend(2), expected.inputs, expected.hyper, expected.steps, "float32", 65536, MISALIGNED
    )
    comparison = compare(expected, observed, "float32", f"{rule} x optspec.cuda-host, multi-tensor")
    assert comparison.ok, comparison.message
    assert set(comparison.compared_slots) == set(expected.slots)
