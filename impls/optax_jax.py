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
from dataclasses import dataclass
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


@dataclass
class _Run:
    """One transformation on one case: its state between steps and the trajectory so far."""

    tx: Any
    slots: Mapping[str, Slot]
    inputs: CaseInputs
    wanted: frozenset[int]
    what: str
    jdtype: Any
    params: Any
    state: Any
    trajectory: Trajectory
    #: every step's gradients, converted to the run's dtype by JAX (see :func:`_start`)
    all_grads: list[np.ndarray]

    def grads(self, t: int) -> list[np.ndarray]:
        return [g[t - 1, ...] for g in self.all_grads]

    def advance(self, t: int, params: Any, state: Any) -> None:
        """Take the parameters and state after step ``t``; record them when ``t`` is recorded."""
        self.params, self.state = params, state
        if t in self.wanted:
            snapshot = [{"theta": np.asarray(p, dtype=np.float64)} for p in params]
            for slot, where in self.slots.items():
                value = find_state_field(state, where.key)
                if isinstance(value, (list, tuple)) and len(value) == len(params):
                    for index, item in enumerate(value):
                        snapshot[index][slot] = where.sign * np.asarray(item, dtype=np.float64)
            self.trajectory[t] = snapshot


def _start(tx: Any, slots: Mapping[str, Slot], inputs: CaseInputs, dtype: str, record: Sequence[int], what: str) -> _Run:
    """Parameters in ``dtype`` and ``tx.init`` of them (an AdapterError when init raises)."""
    import jax.numpy as jnp

    jdtype = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}[dtype]
    params = [jnp.asarray(p, dtype=jdtype) for p in inputs.params]
    try:
        state = tx.init(params)
    except Exception as exc:
        raise AdapterError(f"{what}: init raised {type(exc).__name__}: {exc}") from None
    # All steps' gradients converted by one jnp.asarray per tensor (the elementwise conversion
    # a per-step jnp.asarray makes) and kept on the host: a step then only copies them in.
    all_grads = [np.asarray(jnp.asarray(g, dtype=jdtype)) for g in inputs.grads]
    return _Run(tx, slots, inputs, frozenset(record), what, jdtype, params, state, {}, all_grads)


def _run_alone(run: _Run) -> Trajectory:
    """Every step of one run through its own ``jax.jit``-compiled step."""
    import jax
    import optax

    tx = run.tx

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, new_state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), new_state

    for t in range(1, run.inputs.steps + 1):
        try:
            params, state = step(run.params, run.state, run.grads(t))
        except Exception as exc:
            raise AdapterError(f"{run.what}: step {t} raised {type(exc).__name__}: {exc}") from None
        run.advance(t, params, state)
    return run.trajectory


def _run_together(runs: Sequence[_Run]) -> None:
    """Every step of several runs of equal length through one ``jax.jit``-compiled step.

    The compiled step holds each run's own step, unchanged (its ``tx.update`` and
    ``optax.apply_updates`` on its own arguments): XLA compiles once for the batch instead of
    once per run, which is most of the time of a small case. Raises whatever a step raises.
    """
    import jax
    import optax

    transformations = [run.tx for run in runs]

    @jax.jit
    def step(params: Any, states: Any, grads: Any) -> Any:
        out = []
        for tx, p, s, g in zip(transformations, params, states, grads):
            updates, new_state = tx.update(g, s, p)
            out.append((optax.apply_updates(p, updates), new_state))
        return out

    for t in range(1, runs[0].inputs.steps + 1):
        stepped = step([r.params for r in runs], [r.state for r in runs], [r.grads(t) for r in runs])
        for run, (params, state) in zip(runs, stepped):
            run.advance(t, params, state)


#: Runs compiled into one step at most (XLA's compile time grows with the batch).
BATCH = 64


def run_optax_batch(
    items: Sequence[tuple[Any, Mapping[str, Slot], CaseInputs, Sequence[int], str]], dtype: str
) -> list[Trajectory | AdapterError]:
    """:func:`run_optax_transformation` of each ``(tx, slots, inputs, record, what)``, in one dtype.

    Runs of equal length are stepped together, :data:`BATCH` at a time; when a batch raises,
    its runs are made again one by one, so that each error names its own run and step.
    """
    outcomes: list[Trajectory | AdapterError | None] = [None] * len(items)
    started: list[tuple[int, _Run]] = []
    for index, (tx, slots, inputs, record, what) in enumerate(items):
        try:
            started.append((index, _start(tx, slots, inputs, dtype, record, what)))
        except AdapterError as exc:
            outcomes[index] = exc
    by_length: dict[int, list[tuple[int, _Run]]] = {}
    for index, run in started:
        by_length.setdefault(run.inputs.steps, []).append((index, run))
    for same in by_length.values():
        for first in range(0, len(same), BATCH):
            chunk = same[first : first + BATCH]
            initial = [(run.params, run.state) for _, run in chunk]
            if len(chunk) > 1:
                try:
                    _run_together([run for _, run in chunk])
                except Exception:
                    for (_, run), (params, state) in zip(chunk, initial):
                        run.params, run.state, run.trajectory = params, state, {}
                else:
                    for index, run in chunk:
                        outcomes[index] = run.trajectory
                    continue
            for index, run in chunk:
                try:
                    outcomes[index] = _run_alone(run)
                except AdapterError as exc:
                    outcomes[index] = exc
    return [outcome if outcome is not None else {} for outcome in outcomes]


def run_optax_transformation(
    tx: Any,
    slots: Mapping[str, Slot],
    inputs: CaseInputs,
    dtype: str,
    record: Sequence[int],
    what: str,
) -> Trajectory:
    """Run an optax transformation under jax.jit on the case inputs (x64 on for float64)."""
    return _run_alone(_start(tx, slots, inputs, dtype, record, what))


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

        with jax.enable_x64(dtype == "float64"):
            tx, slots, inputs, record, what = self._item(plan, inputs, hyper, dtype, record)
            return run_optax_transformation(tx, slots, inputs, dtype, record, what)

    def run_many(
        self, jobs: Sequence[tuple[Plan, CaseInputs, Mapping[str, float], str, Sequence[int]]]
    ) -> list[Trajectory | AdapterError]:
        """:meth:`run` of each ``(plan, inputs, hyper, dtype, record)``, the same results, compiled in batches."""
        import jax

        outcomes: list[Trajectory | AdapterError | None] = [None] * len(jobs)
        for dtype in dict.fromkeys(job[3] for job in jobs):
            with jax.enable_x64(dtype == "float64"):
                indices, items = [], []
                for index, (plan, inputs, hyper, job_dtype, record) in enumerate(jobs):
                    if job_dtype != dtype:
                        continue
                    try:
                        items.append(self._item(plan, inputs, hyper, dtype, record))
                        indices.append(index)
                    except AdapterError as exc:
                        outcomes[index] = exc
                for index, outcome in zip(indices, run_optax_batch(items, dtype)):
                    outcomes[index] = outcome
        return [outcome if outcome is not None else {} for outcome in outcomes]

    def _item(
        self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]
    ) -> tuple[Any, Mapping[str, Slot], CaseInputs, Sequence[int], str]:
        assert plan.binding is not None
        learning_rate = learning_rate_for(inputs, hyper["lr"], dtype)
        try:
            tx = FACTORIES[plan.binding.rule](learning_rate=learning_rate, **plan.kwargs)
        except Exception as exc:
            raise AdapterError(
                f"optax {plan.binding.target}: building the transformation raised {type(exc).__name__}: {exc}"
            ) from None
        return tx, plan.binding.state, inputs, record, f"optax {plan.binding.target}"


IMPLEMENTATIONS = (OptaxJit(),)


def _register_composites() -> None:
    """Composite specs (lookahead) reuse the bindings above; see optspec.impls.optax_lookahead."""
    from optspec.impls.optax_lookahead import register

    register(BINDINGS, FACTORIES)


_register_composites()
