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


def sharded_implementations(world_size: int) -> list[Implementation]:
    """The sharded columns at ``world_size``: torch.dtensor.shard0/shard1, torch.fsdp2, torch.zero, optax.sharded."""
    from optspec.errors import UsageError
    from optspec.impls.optax_sharded import implementations as optax_sharded
    from optspec.impls.torch_gang import launched_world_size
    from optspec.impls.torch_sharded import implementations as torch_sharded

    launched = launched_world_size()
    if launched is not None and launched != world_size:
        raise UsageError(f"--world-size {world_size}: under torchrun the world size is WORLD_SIZE = {launched}")
    return [*torch_sharded(world_size), *optax_sharded(world_size)]


def implementation(name: str) -> Implementation:
    from optspec.errors import UsageError

    _, at, size = name.rpartition("@")
    if at and size.isdigit() and 1 < int(size) <= 64:  # a sharded column, e.g. torch.fsdp2@2
        for impl in sharded_implementations(int(size)):
            if impl.name == name:
                return impl
    for impl in all_implementations():
        if impl.name == name:
            return impl
    known = ", ".join(i.name for i in all_implementations())
    raise UsageError(f"unknown implementation {name!r} (known: {known})")
