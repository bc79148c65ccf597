"""torch.optim's CUDA code paths under test, including ``capturable=True``.

:class:`~optspec.impls.torch_optim.TorchOptim` already runs the for-loop, foreach and fused
paths on ``device="cuda"``. This module adds the capturable path: the step count lives on
the device as a float32 tensor and the bias corrections are tensor operations (in float32
unless the default dtype is float64), which is what CUDA-graph capture needs. Only the
classes with a ``capturable`` argument in torch 2.13 are bound (Adam, AdamW, Adamax,
Adadelta, RMSprop, RAdam, NAdam); the kernels are torch's foreach ones (``foreach=True``), torch's
default on CUDA.

Without a CUDA device every case is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optspec.impls.base import Binding, Plan
from optspec.impls.torch_optim import BINDINGS, TorchOptim, resolve_target, run_torch_optimizer
from optspec.reference import CaseInputs, Trajectory

#: torch.optim classes with a ``capturable`` keyword in torch 2.13.
CAPTURABLE_RULES = frozenset({"adam", "adamw", "adamax", "adadelta", "rmsprop", "radam", "nadam"})


class TorchCapturable(TorchOptim):
    """``torch.optim.<Class>(..., capturable=True, foreach=True)`` on CUDA tensors."""

    def __init__(self, device: str = "cuda") -> None:
        super().__init__("capturable", device)

    def binding(self, rule: str) -> Binding | None:
        if rule not in CAPTURABLE_RULES:
            return None
        return BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        kwargs = {**plan.kwargs, "capturable": True, "foreach": True}
        return run_torch_optimizer(
            resolve_target(plan.binding.target),
            kwargs,
            plan.binding.state,
            inputs,
            hyper["lr"],
            dtype,
            record,
            f"{self.name} {plan.binding.target}",
            self.device,
        )


#: torch's CUDA paths: for-loop, foreach, fused (where torch has it) and capturable.
IMPLEMENTATIONS = (
    TorchOptim("for-loop", "cuda"),
    TorchOptim("foreach", "cuda"),
    TorchOptim("fused", "cuda"),
    TorchCapturable("cuda"),
)
