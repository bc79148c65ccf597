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
    initial_scale: float = 0.0,
) -> Any:
    import optax

    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.rmsprop(
            learning_rate,
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            centered=centered,
            momentum=momentum,
        ),
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


def radam(
    learning_rate: Schedule, b1: float, b2: float, eps: float, threshold: float, weight_decay: float, decoupled: bool
) -> Any:
    """L2: chain(add_decayed_weights, radam). Decoupled: scale_by_radam, add_decayed_weights, then the lr."""
    import optax

    if decoupled:
        return optax.chain(
            optax.scale_by_radam(b1=b1, b2=b2, eps=eps, threshold=threshold),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        )
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.radam(learning_rate, b1=b1, b2=b2, eps=eps, threshold=threshold)
    )


def nadam(learning_rate: Schedule, b1: float, b2: float, eps: float, weight_decay: float, decoupled: bool) -> Any:
    """L2: chain(add_decayed_weights, nadam). Decoupled: optax.nadamw (adamw with nesterov=True)."""
    import optax

    if decoupled:
        return optax.nadamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.nadam(learning_rate, b1=b1, b2=b2, eps=eps))


def amsgrad(
    learning_rate: Schedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    bias_correction_mu: bool,
    bias_correction_nu: bool,
    decoupled: bool,
) -> Any:
    """L2: chain(add_decayed_weights, amsgrad). Decoupled: scale_by_amsgrad, add_decayed_weights, then the lr."""
    import optax

    flags = {"bias_correction_mu": bias_correction_mu, "bias_correction_nu": bias_correction_nu}
    if decoupled:
        return optax.chain(
            optax.scale_by_amsgrad(b1=b1, b2=b2, eps=eps, **flags),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        )
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps, **flags))


def adabelief(
    learning_rate: Schedule, b1: float, b2: float, eps: float, eps_root: float, weight_decay: float, decoupled: bool
) -> Any:
    """L2: chain(add_decayed_weights, adabelief). Decoupled: scale_by_belief, add_decayed_weights, then the lr."""
    import optax

    if decoupled:
        return optax.chain(
            optax.scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        )
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adabelief(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    )


def lion(learning_rate: Schedule, b1: float, b2: float, weight_decay: float) -> Any:
    import optax

    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def sgdw(learning_rate: Schedule, momentum: float, weight_decay: float) -> Any:
    """SGDW as optax composes decoupled decay (cf. optax.adamw): trace, add_decayed_weights, then the lr."""
    import optax

    return optax.chain(
        optax.trace(decay=momentum),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def lamb(learning_rate: Schedule, b1: float, b2: float, eps: float, eps_root: float, weight_decay: float) -> Any:
    import optax

    return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)


def lars(
    learning_rate: Schedule,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    momentum: float,
    nesterov: bool,
    trust_ratio_mask: bool,
    weight_decay_mask: bool,
) -> Any:
    """optax.lars; a False mask excludes every tensor of the case from the trust ratio (or the decay)."""
    import optax

    return optax.lars(
        learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        trust_coefficient=trust_coefficient,
        eps=eps,
        trust_ratio_mask=trust_ratio_mask,
        momentum=momentum,
        nesterov=nesterov,
    )


FACTORIES: dict[str, Callable[..., Any]] = {
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    "adamax": adamax,
    "adadelta": adadelta,
    "radam": radam,
    "nadam": nadam,
    "amsgrad": amsgrad,
    "adabelief": adabelief,
    "lion": lion,
    "sgdw": sgdw,
    "lamb": lamb,
    "lars": lars,
}


def muon(
    learning_rate: Schedule,
    beta: float,
    eps: float,
    weight_decay: float,
    ns_coeffs: tuple[float, float, float],
    nesterov: bool,
    consistent_rms: float | None,
) -> Any:
    """optax.contrib.muon, a factory (optax/contrib/_muon.py:519-727); the cases' tensors are all 2-D, so all go to Muon."""
    import optax.contrib

    return optax.contrib.muon(
        learning_rate,
        ns_coeffs=tuple(ns_coeffs),
        beta=beta,
        eps=eps,
        weight_decay=weight_decay,
        nesterov=nesterov,
        consistent_rms=consistent_rms,
    )


FACTORIES["muon"] = muon


def adafactor(
    learning_rate: Schedule,
    min_dim_size_to_factor: int,
    decay_rate: float,
    multiply_by_parameter_scale: bool,
    clipping_threshold: float | None,
    momentum: float | None,
    weight_decay_rate: float,
    eps: float,
    factored: bool,
) -> Any:
    """optax.adafactor (optax/_src/alias.py:224-326)."""
    import optax

    return optax.adafactor(
        learning_rate,
        min_dim_size_to_factor=int(min_dim_size_to_factor),
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
        eps=eps,
        factored=factored,
    )


FACTORIES["adafactor"] = adafactor

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
            # optax.rmsprop(initial_scale=...) starts nu at that value
            "init": {"zeros": Support({"initial_scale": 0.0}), "ones": Support({"initial_scale": 1.0})},
            "weight_decay": {"l2": Support()},
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
    "radam": Binding(
        rule="radam",
        target="optax.radam",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "threshold": "threshold", "weight_decay": "weight_decay"},
        variants={
            "comparison": {"nonstrict": Support()},
            "epsilon": {"corrected": Support()},
            "below_threshold": {"sgd": Support()},
            "weight_decay": {"l2": Support({"decoupled": False}), "decoupled": Support({"decoupled": True})},
        },
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "nadam": Binding(
        rule="nadam",
        target="optax.nadam",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "schedule": {"constant": Support()},
            "weight_decay": {"l2": Support({"decoupled": False}), "decoupled": Support({"decoupled": True})},
        },
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "amsgrad": Binding(
        rule="amsgrad",
        target="optax.amsgrad",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "maximum": {
                "corrected": Support({"bias_correction_nu": True}),
                "uncorrected": Support({"bias_correction_nu": False}),
            },
            "mu_correction": {"on": Support({"bias_correction_mu": True}), "off": Support({"bias_correction_mu": False})},
            "weight_decay": {"l2": Support({"decoupled": False}), "decoupled": Support({"decoupled": True})},
        },
        state={"m": Slot("mu"), "v": Slot("nu"), "vmax": Slot("nu_max")},
    ),
    "adabelief": Binding(
        rule="adabelief",
        target="optax.adabelief",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "eps_root": "eps_root", "weight_decay": "weight_decay"},
        variants={
            "eps_root": {"accumulated": Support()},
            "weight_decay": {"l2": Support({"decoupled": False}), "decoupled": Support({"decoupled": True})},
            # optax.scale_by_belief: no rectification; prediction_error = updates - mu with the new mu
            "rectify": {"off": Support()},
            "prediction": {"current": Support()},
        },
        state={"m": Slot("mu"), "s": Slot("nu")},
    ),
    "lion": Binding(
        rule="lion",
        target="optax.lion",
        hyper={"beta1": "b1", "beta2": "b2", "weight_decay": "weight_decay"},
        variants={"weight_decay": {"decoupled": Support()}},
        state={"m": Slot("mu")},
    ),
    "sgdw": Binding(
        rule="sgdw",
        target="optax.chain(trace, add_decayed_weights, scale_by_learning_rate)",
        hyper={"momentum": "momentum", "weight_decay": "weight_decay"},
        variants={"decay_scale": {"lr": Support()}, "momentum_lr": {"outside": Support()}},
        state={"b": Slot("trace")},
    ),
    "lamb": Binding(
        rule="lamb",
        target="optax.lamb",
        hyper={"beta1": "b1", "beta2": "b2", "weight_decay": "weight_decay"},
        variants={
            "guard": {"either": Support()},
            "clip": {"none": Support()},
            "decay": {"in_ratio": Support()},
            "bias_correction": {"on": Support()},
            "adaptation": {"always": Support()},
            "grad_clip": {"none": Support()},
            "epsilon": {
                "outside": Support({"eps": "$eps", "eps_root": 0.0}),
                "inside": Support({"eps": 0.0, "eps_root": "$eps"}),
            },
        },
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "lars": Binding(
        rule="lars",
        target="optax.lars",
        hyper={
            "weight_decay": "weight_decay",
            "trust_coefficient": "trust_coefficient",
            "eps": "eps",
            "momentum": "momentum",
        },
        variants={
            "denominator": {"combined": Support()},
            "momentum_lr": {"inside": Support()},
            "nesterov": {"off": Support({"nesterov": False}), "on": Support({"nesterov": True})},
            "adaptation": {
                "adapted": Support({"trust_ratio_mask": True, "weight_decay_mask": True}),
                "excluded": Support({"trust_ratio_mask": False, "weight_decay_mask": True}),
                "excluded_no_decay": Support({"trust_ratio_mask": False, "weight_decay_mask": False}),
            },
        },
        state={"b": Slot("trace", sign=-1.0)},
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
    """A float for a constant lr; optax's own schedule for a schedule spec; else a function
    count -> eta * s_{count+1} looked up from the case's multipliers."""
    if inputs.schedule is not None:
        from optspec.impls.optax_schedules import build_optax_schedule

        return build_optax_schedule(inputs.schedule.name, inputs.schedule.variant, inputs.schedule.hyper)
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


def _register_composites() -> None:
    """Composite specs (lookahead) reuse the bindings above; see optspec.impls.optax_lookahead."""
    from optspec.impls.optax_lookahead import register

    register(BINDINGS, FACTORIES)


_register_composites()

BINDINGS["muon"] = Binding(
    rule="muon",
    target="optax.contrib.muon",
    hyper={
        "momentum": "beta",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "ns_a": "ns_coeffs[0]",
        "ns_b": "ns_coeffs[1]",
        "ns_c": "ns_coeffs[2]",
    },
    variants={
        # optax/contrib/_muon.py:346 (parameter dtype), :340 (+ eps), :488-497 (bias-corrected momentum)
        "ns_dtype": {"param": Support()},
        "normalise": {"add": Support()},
        "nesterov": {"on": Support({"nesterov": True}), "off": Support({"nesterov": False})},
        "bias_correction": {"on": Support()},
        # :145 sqrt(max(1, fan_out / fan_in)) without consistent_rms, :156 with it
        "lr_scale": {
            "cols_over_rows": Support({"consistent_rms": None}),
            "match_rms": Support({"consistent_rms": "$consistent_rms"}),
        },
    },
    # MuonState.mu lives inside combine.partition's dict of inner states, which the state
    # finder does not enter: parameters are compared, state is not.
    state={},
)

_ADAFACTOR_SCALE = Requirement("eps2 == 0.001", "optax's parameter scale floor is fixed at 1e-3 (transform.py:557-560)")

BINDINGS["adafactor"] = Binding(
    rule="adafactor",
    target="optax.adafactor",
    hyper={"decay_rate": "decay_rate", "eps_g2": "eps", "min_dim_size_to_factor": "min_dim_size_to_factor"},
    variants={
        # optax/_src/factorized.py:52-57 (factor when the second-largest dim >= min_dim_size_to_factor)
        "factored": {"min_size": Support({"factored": True}), "never": Support({"factored": False})},
        "epsilon": {"add": Support()},  # factorized.py:180, :199
        "step_size": {
            "param_scale": Support({"multiply_by_parameter_scale": True}, (_ADAFACTOR_SCALE,)),
            "plain": Support({"multiply_by_parameter_scale": False}),
        },
        "clipping": {"on": Support({"clipping_threshold": "$d"}), "off": Support({"clipping_threshold": None})},
        "momentum": {"off": Support({"momentum": None}), "ema": Support({"momentum": "$momentum"})},
        "decay": {"unscaled": Support({"weight_decay_rate": "$weight_decay"})},  # alias.py:320-325
    },
    state={},
)
