"""optax under ``jax.jit`` on a GPU, for the GPU conformance run.

The same bindings and runner as :mod:`optspec.impls.optax_jax`, with every array placed on
the first JAX GPU device (``jax.default_device``). It is named ``optax.gpu`` so that the
known-deviation registry's ``optax*`` entries (float32 scalar arithmetic with x64 off,
AMSGrad's corrected maximum...) apply to it as they do on the CPU. Without a JAX GPU
backend (``pip install 'jax[cuda13]'``) every case is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optspec.impls.base import Plan
from optspec.impls.optax_jax import OptaxJit, jax_unavailable
from optspec.reference import CaseInputs, Trajectory


def jax_gpu_unavailable() -> str | None:
    reason = jax_unavailable()
    if reason is not None:
        return reason
    import jax

    try:
        devices = jax.devices("gpu")
    except RuntimeError as exc:
        return f"JAX has no GPU backend ({str(exc).splitlines()[0]})"
    if not devices:
        return "JAX has no GPU device"
    return None


class OptaxGpu(OptaxJit):
    name = "optax.gpu"

    def unavailable(self) -> str | None:
        return jax_gpu_unavailable()

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        import jax

        with jax.default_device(jax.devices("gpu")[0]):
            return super().run(plan, inputs, hyper, dtype, record)


IMPLEMENTATIONS = (OptaxGpu(),)
