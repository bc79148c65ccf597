"""Multi-tensor cases for the kernels' launch logic, judged by the float64 reference.

The golden vectors have five tensors of at most 24 elements; a fused multi-tensor kernel
also has to get large tensors, chunk boundaries, empty tensors and misaligned buffers
right. :func:`awkward_case` builds such a case for any rule: random float32-representable
parameters and gradients for tensors of sizes around the chunk size, the expected values
from the float64 reference and the budgets from the error model
(:func:`optspec.tolerance.budgets`), packaged as a :class:`~optspec.golden.GoldenTest` so
that :func:`optspec.conformance.compare` judges it like a golden case.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from optspec.golden import GoldenTest
from optspec.reference import FLOAT32, FLOAT32_SCALAR32, FLOAT64, CaseInputs, run_reference
from optspec.spec import Spec
from optspec.tolerance import budgets

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
    ref32 = run_reference(resolved, hyper, inputs, FLOAT32, every)
    ref32s = run_reference(resolved, hyper, inputs, FLOAT32_SCALAR32, every)
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
        atol=budgets(ref64, ref32, ref32s, every),
    )
