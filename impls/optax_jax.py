"""optax under ``jax.jit``, in float32 (JAX's default, x64 off) and float64 (x64 on).

Each rule is bound to a factory that builds the optax ``GradientTransformation`` the way
optax's documentation composes it: the alias itself where it exists, and
``optax.chain(optax.add_decayed_weights(lambda), alias)`` for L2 weight decay, which the
aliases leave out. A learning-rate schedule is passed as a schedule function of optax's
step count, so step t uses eta * s_t as in the spec.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from optspec.errors import AdapterError
from optspec.impls.base import Binding, Plan, Requirement, Slot, Support
from optspec.reference import CaseInputs, Trajectory

Schedule = Callable[[Any], Any] | float


def _as_schedule(learning_rate: Schedule) -> Callable[[Any], Any]:
    return learning_rate if callable(learning_rate) else (lambda count: learning_rate)


def sgd(learning_rate: Schedule, momentum: float, nesterov: bool, weight_decay: float, decoupled: bool) -> Any:
    """L2: chain(add_decayed_weights, sgd). Decoupled: trace, then add_decayed_weights, then the lr."""
    import optax

    if decoupled:
        return optax.chain(
            optax.trace(decay=momentum, nesterov=nesterov),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        )
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def adam(learning_rate: Schedule, b1: float, b2: float, eps: float, eps_root: float, weight_decay: float, amsgrad: bool) -> Any:
    import optax

    core = optax.amsgrad if amsgrad else optax.adam
    return optax.chain(optax.add_decayed_weights(weight_decay), core(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def adamw(learning_rate: Schedule, b1: float, b2: float, eps: float, weight_decay: float) -> Any:
    import optax

    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def rmsprop(
    learning_rate: Schedule,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    centered: bool,
    momentum: float | None,
    weight_decay: float,
) -> Any:
    import optax

    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.rmsprop(learning_rate, decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt, centered=centered, momentum=momentum),
    )


def adagrad(learning_rate: Schedule, lr_decay: float, initial_accumulator_value: float, eps: float, weight_decay: float) -> Any:
    """optax.adagrad has no lr_decay; it becomes the schedule eta_t / (1 + count * lr_decay)."""
    import optax

    base = _as_schedule(learning_rate)
    schedule = (lambda count: base(count) / (1 + count * lr_decay)) if lr_decay else learning_rate
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.adagrad(schedule, initial_accumulator_value=initial_accumulator_value, eps=eps),
    )


def adamax(learning_rate: Schedule, b1: float, b2: float, eps: float, weight_decay: float) -> Any:
    import optax

    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adamax(learning_rate, b1=b1, b2=b2, eps=eps))


def adadelta(learning_rate: Schedule, rho: float, eps: float, weight_decay: float) -> Any:
    import optax

    return optax.adadelta(learning_rate, rho=rho, eps=eps, weight_decay=weight_decay)


FACTORIES: dict[str, Callable[..., Any]] = {
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    "adamax": adamax,
    "adadelta": adadelta,
}

_NO_MAXIMIZE = {"off": Support()}
_NO_DAMPENING = Requirement("dampening == 0", "optax.sgd has no dampening (its trace is g + mu * trace)")

BINDINGS: dict[str, Binding] = {
    "sgd": Binding(
        rule="sgd",
        target="optax.sgd",
        hyper={"momentum": "momentum", "weight_decay": "weight_decay"},
        variants={
            "weight_decay": {"l2": Support({"decoupled": False}), "decoupled": Support({"decoupled": True})},
            # with dampening 0 both conventions are optax's trace (zero init, t_1 = g_1)
            "dampening": {"first_step_undamped": Support(), "always": Support()},
            "nesterov": {"off": Support({"nesterov": False}), "on": Support({"nesterov": True})},
            "maximize": _NO_MAXIMIZE,
        },
        state={"b": Slot("trace")},
        requires=(_NO_DAMPENING,),
    ),
    "adam": Binding(
        rule="adam",
        target="optax.adam",
        hyper={"beta1": "b1", "beta2": "b2", "weight_decay": "weight_decay"},
        variants={
            "epsilon": {
                "outside": Support({"eps": "$eps", "eps_root": 0.0}),
                "inside": Support({"eps": 0.0, "eps_root": "$eps"}),
            },
            "amsgrad": {"off": Support({"amsgrad": False}), "corrected": Support({"amsgrad": True})},
            "maximize": _NO_MAXIMIZE,
        },
        state={"m": Slot("mu"), "v": Slot("nu"), "vmax": Slot("nu_max")},
    ),
    "adamw": Binding(
        rule="adamw",
        target="optax.adamw",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"decay_scale": {"lr": Support()}, "maximize": _NO_MAXIMIZE},
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "rmsprop": Binding(
        rule="rmsprop",
        target="optax.rmsprop",
        hyper={"alpha": "decay", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "centered": {"off": Support({"centered": False}), "on": Support({"centered": True})},
            "epsilon": {"outside": Support({"eps_in_sqrt": False}), "inside": Support({"eps_in_sqrt": True})},
            "momentum_lr": {
                "inside": Support({"momentum": "$momentum"}),
                "outside": Support(
                    {"momentum": None},
                    (Requirement("momentum == 0", "optax.rmsprop applies momentum after the learning rate"),),
                ),
            },
            "maximize": _NO_MAXIMIZE,
        },
        state={"v": Slot("nu"), "gbar": Slot("mu"), "b": Slot("trace", sign=-1.0)},
    ),
    "adagrad": Binding(
        rule="adagrad",
        target="optax.adagrad",
        hyper={
            "lr_decay": "lr_decay",
            "initial_accumulator_value": "initial_accumulator_value",
            "eps": "eps",
            "weight_decay": "weight_decay",
        },
        variants={"epsilon": {"inside": Support()}, "maximize": _NO_MAXIMIZE},
        state={"G": Slot("sum_of_squares")},
    ),
    "adamax": Binding(
        rule="adamax",
        target="optax.adamax",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _NO_MAXIMIZE},
        state={"m": Slot("mu"), "u": Slot("nu")},
    ),
    "adadelta": Binding(
        rule="adadelta",
        target="optax.adadelta",
        hyper={"rho": "rho", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _NO_MAXIMIZE},
        state={"Eg": Slot("e_g"), "Ex": Slot("e_x")},
    ),
}


def jax_unavailable() -> str | None:
    for module in ("jax", "optax"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'optspec[jax]')"
    return None


def find_state_field(state: Any, name: str) -> Any | None:
    """The first NamedTuple field called ``name`` in an optax state tree (depth first)."""
    if hasattr(state, "_fields"):
        if name in state._fields:
            return getattr(state, name)
        children = [getattr(state, f) for f in state._fields]
    elif isinstance(state, (tuple, list)):
        children = list(state)
    else:
        return None
    for child in children:
        found = find_state_field(child, name)
        if found is not None:
            return found
    return None


def run_optax_transformation(
    tx: Any,
    slots: Mapping[str, Slot],
    inputs: CaseInputs,
    dtype: str,
    record: Sequence[int],
    what: str,
) -> Trajectory:
    """Run an optax transformation under jax.jit on the case inputs (x64 on for float64)."""
    import jax
    import jax.numpy as jnp
    import optax

    jdtype = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}[dtype]
    params = [jnp.asarray(p, dtype=jdtype) for p in inputs.params]
    try:
        state = tx.init(params)
    except Exception as exc:
        raise AdapterError(f"{what}: init raised {type(exc).__name__}: {exc}") from None

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, new_state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), new_state

    wanted = set(record)
    trajectory: Trajectory = {}
    for t in range(1, inputs.steps + 1):
        grads = [jnp.asarray(g[t - 1], dtype=jdtype) for g in inputs.grads]
        try:
            params, state = step(params, state, grads)
        except Exception as exc:
            raise AdapterError(f"{what}: step {t} raised {type(exc).__name__}: {exc}") from None
        if t in wanted:
            snapshot = [{"theta": np.asarray(p, dtype=np.float64)} for p in params]
            for slot, where in slots.items():
                value = find_state_field(state, where.key)
                if isinstance(value, (list, tuple)) and len(value) == len(params):
                    for index, item in enumerate(value):
                        snapshot[index][slot] = where.sign * np.asarray(item, dtype=np.float64)
            trajectory[t] = snapshot
    return trajectory


def learning_rate_for(inputs: CaseInputs, base_lr: float, dtype: str) -> Schedule:
    """A float for a constant lr; else a schedule function count -> eta * s_{count+1}."""
    if np.all(inputs.lr_multipliers == 1.0):
        return base_lr
    import jax.numpy as jnp

    values = jnp.asarray(base_lr * inputs.lr_multipliers, dtype=jnp.float64 if dtype == "float64" else jnp.float32)
    last = len(inputs.lr_multipliers) - 1
    return lambda count: values[jnp.minimum(count, last)]


class OptaxJit:
    framework = "jax"
    name = "optax"
    dtypes = ("float32", "float64")

    def unavailable(self) -> str | None:
        return jax_unavailable()

    def binding(self, rule: str) -> Binding | None:
        return BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        import jax

        assert plan.binding is not None
        with jax.enable_x64(dtype == "float64"):
            learning_rate = learning_rate_for(inputs, hyper["lr"], dtype)
            try:
                tx = FACTORIES[plan.binding.rule](learning_rate=learning_rate, **plan.kwargs)
            except Exception as exc:
                raise AdapterError(
                    f"optax {plan.binding.target}: building the transformation raised {type(exc).__name__}: {exc}"
                ) from None
            return run_optax_transformation(tx, plan.binding.state, inputs, dtype, record, f"optax {plan.binding.target}")


IMPLEMENTATIONS = (OptaxJit(),)
