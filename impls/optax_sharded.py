"""optax on parameters sharded over N JAX devices: ``optax.sharded@N``.

The run happens in a worker process (:class:`optspec.checking.worker.Isolated`, started once
and reused) whose JAX sees N CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``:
the flag works only before JAX starts, so not in optspec's own process). Each parameter and its
gradients are placed with ``NamedSharding(Mesh(devices, ("x",)), P(...))`` split along the
first dimension that N divides; JAX refuses uneven splits (a dimension N does not divide), so a
tensor with no such dimension (0-d, (1,), (7,), (3, 5) at N = 2) is replicated, and a case in
which no tensor can be split is an error with that reason. The transformation is the one
:mod:`optspec.impls.optax_jax` binds; the update runs under ``jax.jit``, which keeps the
shardings; the parameters and state are gathered (``np.asarray``) and compared as for ``optax``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from optspec.checking.worker import Isolated, TargetFailure
from optspec.errors import AdapterError
from optspec.impls.base import Binding, Plan, Slot
from optspec.impls.optax_jax import BINDINGS, FACTORIES, find_state_field, jax_unavailable, learning_rate_for
from optspec.reference import CaseInputs, Trajectory

#: time limit of one case (the worker's first call also imports JAX and compiles)
CASE_TIMEOUT = 180.0


def split_dim(shape: Sequence[int], devices: int) -> int | None:
    """The first dimension ``devices`` divides evenly (None: the tensor is replicated)."""
    return next((d for d, n in enumerate(shape) if n >= devices and n % devices == 0), None)


# --------------------------------------------------------------------------- inside the worker


def run_on_devices(
    rule: str,
    kwargs: Mapping[str, Any],
    slots: Mapping[str, Slot],
    inputs: CaseInputs,
    base_lr: float,
    dtype: str,
    record: Sequence[int],
    devices: int,
) -> Trajectory:
    """Run the bound optax transformation with sharded parameters on ``devices`` host devices."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if jax.device_count() < devices:
        raise RuntimeError(f"JAX sees {jax.device_count()} devices, not {devices} (XLA_FLAGS was not applied)")
    mesh = Mesh(np.array(jax.devices()[:devices]), ("x",))

    def placement(shape: Sequence[int]) -> Any:
        dim = split_dim(shape, devices)
        names = [None] * len(shape)
        if dim is not None:
            names[dim] = "x"
        return NamedSharding(mesh, PartitionSpec(*names))

    with jax.enable_x64(dtype == "float64"):
        jdtype = {"float32": jnp.float32, "float64": jnp.float64}[dtype]
        shardings = [placement(np.shape(p)) for p in inputs.params]
        params = [jax.device_put(jnp.asarray(p, dtype=jdtype), s) for p, s in zip(inputs.params, shardings)]
        tx = FACTORIES[rule](learning_rate=learning_rate_for(inputs, base_lr, dtype), **kwargs)
        state = tx.init(params)

        @jax.jit
        def step(params: Any, state: Any, grads: Any) -> Any:
            updates, new_state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), new_state

        trajectory: Trajectory = {}
        for t in range(1, inputs.steps + 1):
            grads = [jax.device_put(jnp.asarray(g[t - 1], dtype=jdtype), s) for g, s in zip(inputs.grads, shardings)]
            if inputs.quadratic is not None:  # the loss's gradient at the (sharded) params, h * (p - c) + n_t
                loss = inputs.quadratic
                grads = [
                    jnp.asarray(h, dtype=jdtype) * (p - jnp.asarray(c, dtype=jdtype)) + g
                    for h, c, p, g in zip(loss.curvature, loss.center, params, grads)
                ]
            params, state = step(params, state, grads)
            if t in record:
                for p, s in zip(params, shardings):
                    if not p.sharding.is_equivalent_to(s, p.ndim):
                        raise RuntimeError(f"after step {t} a parameter has sharding {p.sharding}, not {s}")
                snapshot = [{"theta": np.asarray(p, dtype=np.float64)} for p in params]
                for slot, where in slots.items():
                    value = find_state_field(state, where.key)
                    if isinstance(value, (list, tuple)) and len(value) == len(params):
                        for index, item in enumerate(value):
                            snapshot[index][slot] = where.sign * np.asarray(item, dtype=np.float64)
                trajectory[t] = snapshot
    return trajectory


# --------------------------------------------------------------------------- the parent side

_WORKERS: dict[int, Isolated] = {}


@contextlib.contextmanager
def _forced_devices(devices: int) -> Iterator[None]:
    """The environment a freshly spawned worker starts with: N forced host devices, CPU only."""
    saved = {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS")}
    flags = [f for f in (saved["XLA_FLAGS"] or "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@atexit.register
def close_workers() -> None:
    for worker in _WORKERS.values():
        worker.close()
    _WORKERS.clear()


class OptaxSharded:
    """optax with every parameter sharded over N forced host devices where JAX allows it."""

    framework = "jax"
    dtypes = ("float32", "float64")

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.name = f"optax.sharded@{devices}"

    def unavailable(self) -> str | None:
        return jax_unavailable()

    def binding(self, rule: str) -> Binding | None:
        return BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        if all(split_dim(np.shape(p), self.devices) is None for p in inputs.params):
            shapes = ", ".join(str(tuple(np.shape(p))) for p in inputs.params)
            raise AdapterError(f"{self.name}: no tensor of shapes {shapes} splits evenly over {self.devices} devices")
        worker = _WORKERS.setdefault(self.devices, Isolated())
        with _forced_devices(self.devices):
            try:
                return worker.call(
                    "optspec.impls.optax_sharded:run_on_devices",
                    plan.binding.rule,
                    dict(plan.kwargs),
                    dict(plan.binding.state),
                    inputs,
                    float(hyper["lr"]),
                    dtype,
                    tuple(record),
                    self.devices,
                    timeout=CASE_TIMEOUT,
                )
            except TargetFailure as exc:
                raise AdapterError(f"{self.name} {plan.binding.target}: {exc.message}") from None


def implementations(devices: int) -> list[OptaxSharded]:
    return [OptaxSharded(devices)]
