"""optax.schedules under test, driven for real through ``optax.scale_by_schedule``.

Each schedule spec is bound to the optax schedule built from the spec's hyperparameters. A
run jit-compiles ``scale_by_schedule(fn).update`` on a scalar update of 1 and reads the
scaled update after each call: the transformation evaluates ``fn(count)`` with its int32
``count`` = t - 1 before incrementing it, exactly as an optimizer does. ``float64`` runs with
``jax_enable_x64`` on, ``float32`` with JAX's default (x64 off).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from optspec.errors import AdapterError
from optspec.impls.base import Requirement
from optspec.impls.optax_jax import jax_unavailable, use_compilation_cache, x64
from optspec.impls.schedule_base import ScheduleBinding, ScheduleRun, implemented_variant, int_hyper
from optspec.schedules import ScheduleTest


def _optax() -> Any:
    import optax

    return optax


def _onecycle(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    o = _optax()
    steps = int_hyper(h, "total_steps")
    if v["phases"] == "two":
        return o.cosine_onecycle_schedule(steps, h["lr"], h["pct_start"], h["div_factor"], h["final_div_factor"])
    return o.linear_onecycle_schedule(steps, h["lr"], h["pct_start"], h["pct_final"], h["div_factor"], h["final_div_factor"])


def _onecycle_combination(variant: Mapping[str, str]) -> str | None:
    if (variant["phases"], variant["anneal"]) in (("two", "cos"), ("three", "linear")):
        return None
    return (
        f"optax has a two-phase cosine and a three-phase linear one-cycle only, "
        f"not phases={variant['phases']}, anneal={variant['anneal']}"
    )


def _wsd(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    o = _optax()
    parts = [
        o.linear_schedule(h["init_value"], h["lr"], int_hyper(h, "warmup_steps")),
        o.constant_schedule(h["lr"]),
        o.linear_schedule(h["lr"], h["end_value"], int_hyper(h, "decay_steps")),
    ]
    return o.join_schedules(parts, [int_hyper(h, "warmup_steps"), int_hyper(h, "decay_start")])


def _warmup_exponential(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    o = _optax()
    parts = [
        o.linear_schedule(h["init_value"], h["lr"], int_hyper(h, "warmup_steps")),
        o.exponential_decay(h["lr"], 1, h["gamma"]),
    ]
    return o.join_schedules(parts, [int_hyper(h, "warmup_steps")])


def _sgdr(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    """``cycles`` warm-up-free cosine decays of lengths T_0, T_0 T_mult, ... joined."""
    t0, mult = int_hyper(h, "T_0"), int_hyper(h, "T_mult")
    cycles = [
        {"init_value": h["lr"], "peak_value": h["lr"], "warmup_steps": 0, "decay_steps": t0 * mult**k, "end_value": h["eta_min"]}
        for k in range(int_hyper(h, "cycles"))
    ]
    return _optax().sgdr_schedule(cycles)


def _piecewise_interpolate(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    scales = {int_hyper(h, "b1"): h["s1"], int_hyper(h, "b2"): h["s2"]}
    return _optax().piecewise_interpolate_schedule(v["interpolate"], h["lr"], scales)


def _plateau(h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    """reduce_on_plateau scaling the update, then optax.scale(lr): the update is lr * scale."""
    o = _optax()
    from optax import contrib

    plateau = contrib.reduce_on_plateau(
        factor=h["factor"],
        patience=int_hyper(h, "patience"),
        rtol=h["rtol"],
        atol=h["atol"],
        cooldown=int_hyper(h, "cooldown"),
        accumulation_size=1,
        min_scale=h["min_lr"] / h["lr"],
    )
    return o.chain(plateau, o.scale(h["lr"]))


#: linear_schedule evaluates (init - end)(1 - n / T)^1 + end: the spec's from_end form.
_FROM_END = frozenset({"from_end"})

BINDINGS: dict[str, ScheduleBinding] = {
    b.schedule: b
    for b in (
        ScheduleBinding("constant", "optax.constant_schedule", {}, lambda h, v: _optax().constant_schedule(h["lr"])),
        ScheduleBinding(
            "linear_warmup",
            "optax.linear_schedule",
            {},
            lambda h, v: _optax().linear_schedule(
                h["lr"] * h["start_factor"], h["lr"] * h["end_factor"], int_hyper(h, "total_iters")
            ),
        ),
        ScheduleBinding(
            "step",
            "optax.exponential_decay(staircase=True)",
            {},
            lambda h, v: _optax().exponential_decay(h["lr"], int_hyper(h, "step_size"), h["gamma"], staircase=True),
        ),
        ScheduleBinding(
            "multistep",
            "optax.piecewise_constant_schedule",
            {},
            lambda h, v: _optax().piecewise_constant_schedule(
                h["lr"], {int_hyper(h, "first"): h["gamma"], int_hyper(h, "second"): h["gamma"]}
            ),
            (Requirement("first < second", "piecewise_constant_schedule takes a dict: equal milestones collapse"),),
        ),
        ScheduleBinding(
            "exponential", "optax.exponential_decay", {}, lambda h, v: _optax().exponential_decay(h["lr"], 1, h["gamma"])
        ),
        ScheduleBinding(
            "polynomial",
            "optax.polynomial_schedule",
            {},
            lambda h, v: _optax().polynomial_schedule(h["lr"], h["end_value"], h["power"], int_hyper(h, "total_iters")),
        ),
        ScheduleBinding(
            "cosine",
            "optax.cosine_decay_schedule",
            {"past_end": frozenset({"clamped"})},
            lambda h, v: _optax().cosine_decay_schedule(
                h["lr"], int_hyper(h, "T_max"), alpha=h["eta_min"] / h["lr"], exponent=h["exponent"]
            ),
            (Requirement("lr > 0", "optax's alpha = eta_min / lr needs lr > 0"),),
        ),
        ScheduleBinding(
            "warmup_cosine",
            "optax.warmup_cosine_decay_schedule",
            {"past_end": frozenset({"clamped"}), "warmup_form": _FROM_END},
            lambda h, v: _optax().warmup_cosine_decay_schedule(
                h["init_value"],
                h["lr"],
                int_hyper(h, "warmup_steps"),
                int_hyper(h, "decay_steps"),
                h["end_value"],
                h["exponent"],
            ),
        ),
        ScheduleBinding(
            "onecycle",
            "optax.cosine_onecycle_schedule / linear_onecycle_schedule",
            {"convention": frozenset({"optax"}), "phases": frozenset({"two", "three"}), "anneal": frozenset({"cos", "linear"})},
            _onecycle,
            combination=_onecycle_combination,
        ),
        ScheduleBinding("wsd", "optax.join_schedules(linear, constant, linear)", {"warmup_form": _FROM_END}, _wsd),
        ScheduleBinding(
            "warmup_exponential",
            "optax.join_schedules(linear, exponential_decay)",
            {"warmup_form": _FROM_END},
            _warmup_exponential,
        ),
        ScheduleBinding("sgdr", "optax.sgdr_schedule", {"past_end": frozenset({"hold"})}, _sgdr),
        ScheduleBinding(
            "piecewise_interpolate",
            "optax.piecewise_interpolate_schedule",
            {"interpolate": frozenset({"linear", "cosine"})},
            _piecewise_interpolate,
            (Requirement("b1 < b2", "piecewise_interpolate_schedule takes a dict: equal boundaries collapse"),),
        ),
        ScheduleBinding(
            "warmup_constant",
            # optax.schedules has it in every supported release (0.2.3 optax/schedules/__init__.py:35); the
            # top-level alias optax.warmup_constant_schedule only from 0.2.4 (optax/__init__.py:210)
            "optax.schedules.warmup_constant_schedule",
            {"warmup_form": _FROM_END},
            lambda h, v: _optax().schedules.warmup_constant_schedule(h["init_value"], h["lr"], int_hyper(h, "warmup_steps")),
        ),
        ScheduleBinding(
            "reduce_on_plateau",
            "optax.contrib.reduce_on_plateau",
            {"convention": frozenset({"optax"}), "timing": frozenset({"same_step"})},
            _plateau,
            (Requirement("rtol + atol > 0", "reduce_on_plateau rejects rtol = atol = 0"),),
            step_inputs={"loss": "value"},
            transformation=True,
        ),
    )
}


class OptaxSchedule:
    """An optax schedule inside ``scale_by_schedule``, jit-compiled."""

    name = "optax.schedules"
    dtypes = ("float32", "float64")

    def unavailable(self) -> str | None:
        return jax_unavailable()

    def binding(self, schedule: str) -> ScheduleBinding | None:
        return BINDINGS.get(schedule)

    def run(self, binding: ScheduleBinding, test: ScheduleTest, variant: Mapping[str, str], dtype: str) -> ScheduleRun:
        import jax
        import jax.numpy as jnp

        use_compilation_cache()
        with x64(dtype == "float64"):
            jdtype = jnp.float64 if dtype == "float64" else jnp.float32
            try:
                built = binding.build(test.hyper, variant)
                tx = built if binding.transformation else _optax().scale_by_schedule(built)
                one = jnp.ones((), dtype=jdtype)
                state = tx.init(one)
                update = jax.jit(tx.update)
                lrs = []
                for n in range(test.count):
                    fed = {kw: jnp.asarray(test.inputs[name][n], dtype=jdtype) for name, kw in binding.step_inputs.items()}
                    scaled, state = update(one, state, **fed)
                    lrs.append(float(np.asarray(scaled, dtype=np.float64)))
            except Exception as exc:
                raise AdapterError(f"{binding.target}: raised {type(exc).__name__}: {exc}") from None
        return ScheduleRun({"lr": lrs})


def build_optax_schedule(name: str, variant: Mapping[str, str], hyper: Mapping[str, float]) -> Any:
    """The optax schedule for a rule case's schedule (used as the optimizer's learning_rate).

    A variant value optax lacks is replaced by the one a registered deviation says it implements.
    """
    binding = BINDINGS.get(name)
    if binding is None:
        raise AdapterError(f"optax has no binding for schedule {name!r}")
    if binding.transformation:
        raise AdapterError(f"{binding.target} is a transformation fed a loss, not a learning-rate schedule")
    variant = implemented_variant(binding, OptaxSchedule.name, variant)
    for requirement in binding.requires:
        if not requirement.holds(hyper):
            raise AdapterError(f"{binding.target}: {requirement.reason}")
    return binding.build(hyper, variant)


IMPLEMENTATIONS = (OptaxSchedule(),)
