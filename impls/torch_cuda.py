"""torch.optim's CUDA code paths under test, including ``capturable=True``.

:class:`~optspec.impls.torch_optim.TorchOptim` runs every path of :data:`~optspec.impls.torch_optim.PATHS`
on ``device="cuda"``. The capturable path keeps the step count on the device as a float32
tensor and computes the bias corrections as tensor operations (in float32 unless the default
dtype is float64), which is what CUDA-graph capture needs; only the classes with a
``capturable`` argument in torch 2.13 are bound (Adam, AdamW, Adamax, Adadelta, RMSprop,
RAdam, NAdam), with torch's foreach kernels (``foreach=True``), torch's default on CUDA.

Without a CUDA device every case is skipped with the reason.
"""

from __future__ import annotations

from optspec.impls.torch_optim import CAPTURABLE_RULES, TorchOptim

__all__ = ["CAPTURABLE_RULES", "IMPLEMENTATIONS"]

#: torch's CUDA paths: for-loop, foreach, fused (where torch has it) and capturable.
IMPLEMENTATIONS = tuple(TorchOptim(path, "cuda") for path in ("for-loop", "foreach", "fused", "capturable"))
