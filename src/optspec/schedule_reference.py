"""The reference evaluation of a schedule: ``lr[n]`` (and ``momentum[n]``) in a chosen precision.

A resolved schedule (:class:`optspec.schedule_spec.ResolvedSchedule`) is evaluated by the same
expression compiler as an update rule's step (:class:`optspec.reference._Compiler`), with every
name a scalar:

* constants: the hyperparameters, ``pi`` and the ``derived`` names, folded once in float64 in
  declaration order (the way Python and JAX fold constants);
* per index n = 0, 1, ...: the ``let`` locals in order, then the first phase whose ``when``
  holds gives ``lr[n]`` (and ``momentum[n]``); ``prev`` is ``lr[n - 1]`` (NaN at n = 0);
* ``state`` names start at their initial values (folded in float64, then rounded to
  ``precision.scalar``); after the phase at index n the ``next`` equations run in order and
  the state names they assign hold at index n + 1;
* an ``input`` name is the case's sequence at index n (rounded to ``precision.scalar``);
* evaluation stops at the first n where ``defined`` fails (the schedule is undefined there).

``n`` and everything that depends on it are ``precision.scalar``; a schedule driving a rule
multiplies its lr by s_t = lr[t - 1] / eta (:func:`schedule_multipliers`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optspec.errors import SpecError
from optspec.reference import FLOAT64, Precision, _Compiler
from optspec.schedule_spec import CONSTANTS, MAX_HORIZON, ResolvedSchedule, ScheduleLibrary, ScheduleRef, packaged_schedules


@dataclass(frozen=True)
class ScheduleValues:
    """``lr[n]`` (and ``momentum[n]``) for n < ``defined``; ``count`` indices were asked for."""

    lr: np.ndarray
    momentum: np.ndarray | None
    count: int

    @property
    def defined(self) -> int:
        return int(self.lr.shape[0])


def schedule_constants(resolved: ResolvedSchedule, hyper: Mapping[str, float]) -> dict[str, np.float64]:
    """Hyperparameters, ``pi`` and derived names, folded in float64."""
    env: dict[str, Any] = {name: np.float64(v) for name, v in hyper.items()}
    env.update({name: np.float64(v) for name, v in CONSTANTS.items()})
    for name, expr in resolved.derived:
        fn, _ = _Compiler(dict.fromkeys(env, "scalar"), FLOAT64, frozenset(env)).compile(expr)
        with np.errstate(all="ignore"):
            env[name] = np.float64(fn(env))
    return env


def schedule_horizon(resolved: ResolvedSchedule, hyper: Mapping[str, float]) -> int:
    """T = ceil(horizon) in float64; a horizon outside [1, MAX_HORIZON] is a SpecError."""
    spec = resolved.spec
    env = schedule_constants(resolved, hyper)
    fn, _ = _Compiler(dict.fromkeys(env, "scalar"), FLOAT64, frozenset(env)).compile(spec.horizon)
    value = float(fn(env))
    if not math.isfinite(value) or not 1 <= value <= MAX_HORIZON:
        raise SpecError(spec.where, f"horizon {spec.horizon_text!r} evaluates to {value!r}; it must be from 1 to {MAX_HORIZON}")
    return math.ceil(value)


def evaluate_schedule(
    resolved: ResolvedSchedule,
    hyper: Mapping[str, float],
    count: int,
    precision: Precision = FLOAT64,
    inputs: Mapping[str, Sequence[float]] | None = None,
) -> ScheduleValues:
    """Values for n = 0 .. count-1, stopping at the first index where ``defined`` fails.

    Constants (hyperparameters and derived names) are float64; ``n`` and everything that
    depends on it are ``precision.scalar`` (binary32 for ``float32_scalar32``, JAX's weak
    typing with an int32 count), so the three precisions feed the error model. ``inputs``
    gives each declared input sequence (the spec's defaults where omitted); each needs at
    least ``count`` values.
    """
    consts = schedule_constants(resolved, hyper)
    scalar = precision.scalar
    spec = resolved.spec
    series: dict[str, np.ndarray] = {}
    for name, declared in spec.inputs.items():
        given = (inputs or {}).get(name, declared.default)
        if len(given) < count:
            raise SpecError(f"{spec.where}, input {name!r}", f"{len(given)} values, but {count} indices are evaluated")
        series[name] = np.asarray(given, dtype=np.float64)
    state: dict[str, Any] = {}
    for name, expr in resolved.state:
        fn, _ = _Compiler(dict.fromkeys(consts, "scalar"), FLOAT64, frozenset(consts)).compile(expr)
        with np.errstate(all="ignore"):
            state[name] = scalar(fn(consts))
    kinds: dict[str, str] = {
        **dict.fromkeys(consts, "scalar"),
        **dict.fromkeys(state, "scalar"),
        **dict.fromkeys(series, "scalar"),
        "n": "scalar",
        "prev": "scalar",
    }
    frozen = frozenset(consts)
    lets = []
    for item in resolved.let:
        fn, kind = _Compiler(kinds, precision, frozen).compile(item.expr)
        kinds[item.target] = kind
        lets.append((item.target, fn))
    compiled = [
        (
            None if p.when is None else _Compiler(kinds, precision, frozen).compile(p.when)[0],
            _Compiler(kinds, precision, frozen).compile(p.lr)[0],
            None if p.momentum is None else _Compiler(kinds, precision, frozen).compile(p.momentum)[0],
        )
        for p in resolved.phases
    ]
    defined = None if resolved.defined is None else _Compiler(kinds, precision, frozen).compile(resolved.defined)[0]
    after = dict(kinds)
    nexts = []
    for item in resolved.next:
        fn, kind = _Compiler(after, precision, frozen).compile(item.expr)
        after[item.target] = kind
        nexts.append((item.target, fn))
    lrs: list[float] = []
    momenta: list[float] = []
    with np.errstate(all="ignore"):
        for n in range(count):
            env: dict[str, Any] = {**consts, **state, "n": scalar(n), "prev": scalar(lrs[-1] if lrs else np.nan)}
            env.update({name: scalar(values[n]) for name, values in series.items()})
            if defined is not None and not bool(defined(env)):
                break
            for target, fn in lets:
                env[target] = fn(env)
            for when, lr_fn, momentum_fn in compiled:
                if when is None or bool(when(env)):
                    lrs.append(scalar(lr_fn(env)))
                    if momentum_fn is not None:
                        momenta.append(scalar(momentum_fn(env)))
                    break
            for target, fn in nexts:
                env[target] = fn(env)
            state = {name: scalar(env[name]) for name in state}
    # Values keep the extended type of an EXTENDED evaluation (the error model's exact value).
    out = np.longdouble if scalar is np.longdouble else np.float64
    momentum = np.array(momenta, dtype=out) if resolved.has_momentum else None
    return ScheduleValues(np.array(lrs, dtype=out), momentum, count)


def schedule_multipliers(ref: ScheduleRef, steps: int, library: ScheduleLibrary | None = None) -> np.ndarray:
    """s_t = value[t - 1] / eta for t = 1..steps (float64)."""
    library = library or packaged_schedules()
    values = evaluate_schedule(library.get(ref.name).resolve(ref.variant), ref.hyper, steps)
    if values.defined < steps:
        raise SpecError(f"schedule {ref.name!r}", f"undefined from index {values.defined} on, but the case runs {steps} steps")
    return values.lr / ref.hyper["lr"]
