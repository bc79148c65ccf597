"""Multi-tensor cases for the kernels' launch logic, judged by the float64 reference.

The golden vectors have five tensors of at most 24 elements; a fused multi-tensor kernel
also has to get large tensors, chunk boundaries, empty tensors and misaligned buffers
right. :func:`awkward_case` builds such a case for any rule: random float32-representable
parameters and gradients for tensors of sizes around the chunk size, the expected values
from the float64 reference and the budgets from the error model
(:func:`optspec.tolerance.measure`), packaged as a :class:`~optspec.golden.GoldenTest` so
that :func:`optspec.conformance.compare` judges it like a golden case.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from optspec.golden import GoldenTest
from optspec.reference import FLOAT64, CaseInputs, run_reference
from optspec.spec import Spec
from optspec.tolerance import measure

#: Sizes around a 64K-element chunk, the 4-wide vector path and its tail; an empty tensor.
SIZES = (0, 1, 3, 4, 5, 1000, 65535, 65536, 65537, 3 * 65536 + 7, 300_001)
#: Which of them get buffers one element past an aligned address (the scalar path).
MISALIGNED = (False, False, True, False, False, True, False, False, True, False, True)


def awkward_case(spec: Spec, steps: int = 3, sizes: Sequence[int] = SIZES) -> GoldenTest:
    """Default variant and hyperparameters of ``spec`` on tensors of ``sizes``, ``steps`` steps."""
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    params = tuple(rng.standard_normal(n).astype(np.float32).astype(np.float64) for n in sizes)
    grads = tuple(rng.standard_normal((steps, n)).astype(np.float32).astype(np.float64) for n in sizes)
    inputs = CaseInputs(params, grads, np.ones(steps))
    resolved = spec.resolve()
    hyper = spec.hyper_values()
    every = range(1, steps + 1)
    ref64 = run_reference(resolved, hyper, inputs, FLOAT64, every)
    # The kernels compute in binary32: only that profile is measured, with a smaller ensemble
    # (these tensors have up to 300,001 elements, and every element is its own sample).
    atol = measure(resolved, hyper, inputs, every, ("float32",), seed_text=f"{spec.name}/multi-tensor", ref64=ref64, members=2)
    return GoldenTest(
        tc_id=0,
        name=f"{spec.name}/default/multi-tensor",
        case="multi-tensor",
        comment="tensors of awkward sizes in one launch",
        flags=(),
        variant=dict(resolved.variant),
        hyper=hyper,
        inputs_id="multi-tensor",
        inputs=inputs,
        lr_multiplier=None,
        expected=ref64,
        atol=atol,
    )
