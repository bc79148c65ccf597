"""Implementations under test, each an adapter that satisfies ``optspec.impls.base.Implementation``.

``all_implementations()`` lists every adapter optspec knows; an adapter whose framework is
not installed is still listed and reports why it cannot run.
"""

from __future__ import annotations

from optspec.impls.base import Implementation


def all_implementations() -> list[Implementation]:
    from optspec.impls.cuda.adapter import IMPLEMENTATIONS as CUDA
    from optspec.impls.optax_jax import IMPLEMENTATIONS as OPTAX
    from optspec.impls.torch_optim import IMPLEMENTATIONS as TORCH

    return [*TORCH, *OPTAX, *CUDA]


def implementation(name: str) -> Implementation:
    from optspec.errors import UsageError

    for impl in all_implementations():
        if impl.name == name:
            return impl
    known = ", ".join(i.name for i in all_implementations())
    raise UsageError(f"unknown implementation {name!r} (known: {known})")
