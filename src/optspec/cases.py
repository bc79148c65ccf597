"""Golden-case inputs: initial parameters and gradient streams, made deterministically.

Every case has five tensors with shapes (), (1,), (7,), (3, 5) and (2, 3, 4), each with
its own gradient profile so that every convention shows up somewhere:

====  =========  ===============================================================
idx   shape      gradient profile (``standard``)
====  =========  ===============================================================
0     ()         N(0, 1)
1     (1,)       N(0, 1) * small, ``small = 3 * eps`` (magnitude near epsilon)
2     (7,)       N(0, 1), then N(0, 1) * 0.05 after the first fifth of the steps
                 (falling norm: AMSGrad's two maxima part)
3     (3, 5)     0.5 + N(0, 1) (a consistent direction)
4     (2, 3, 4)  N(0, 1) * 10**U(log10(small), 0) per element (mixed scales)
====  =========  ===============================================================

Initial parameters are N(0, 1), except that the tensors a case lists in ``zero_params``
start at exactly zero (zero-initialised biases, where trust ratios need their guard).
``zero`` gives exactly zero gradients. All values are rounded to binary32, so that a
float32 implementation receives exactly the inputs the float64 reference used.

A rule whose gradients are taken at the point (``gradient = {loss = "quadratic", at = "theta"}``
in its spec: Schedule-Free, whose stored parameters are y and whose x and z differ from them)
gets a separable quadratic loss per tensor: the gradient of step t is
g_t = h * (theta_{t-1} - c) + n_t, with n_t the standard stream above, so that an
implementation that drifts from the reference is fed other gradients, as in training.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping

import numpy as np

from optspec.reference import CaseInputs, Quadratic, evaluate_lr_multipliers
from optspec.schedule_reference import schedule_multipliers
from optspec.spec import CaseSpec, Spec

SHAPES: tuple[tuple[int, ...], ...] = ((), (1,), (7,), (3, 5), (2, 3, 4))
#: Steps whose parameters and state are stored (plus the last step).
RECORDED_STEPS = (1, 2, 3, 10)


def recorded_steps(steps: int) -> tuple[int, ...]:
    return tuple(sorted({*(s for s in RECORDED_STEPS if s <= steps), steps}))


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def small_scale(hyper: Mapping[str, float]) -> float:
    """Gradient magnitude 'near epsilon' for this case."""
    eps = hyper.get("eps", 0.0)
    return 3.0 * eps if eps > 0 else 1e-4


def shapes_of(spec: Spec) -> tuple[tuple[int, ...], ...]:
    """The tensor shapes of every case of ``spec``: its own ``shapes``, else :data:`SHAPES`."""
    return spec.shapes if spec.shapes is not None else SHAPES


def _own_shapes(
    spec: Spec, case: CaseSpec, rng: np.random.Generator, small: float
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Parameters and gradients for a spec's own shapes: tensor i gets the gradient profile
    of standard tensor i mod 5 (N(0, 1); near epsilon; falling; a consistent direction; mixed scales)."""
    steps = case.steps
    shapes = shapes_of(spec)
    params = [_f32(rng.standard_normal(shape)) for shape in shapes]
    params = [np.zeros_like(p) if i in case.zero_params else p for i, p in enumerate(params)]
    if case.grads == "zero":
        return tuple(params), tuple(np.zeros((steps, *shape)) for shape in shapes)
    fall = np.where(np.arange(1, steps + 1) <= max(1, steps // 5), 1.0, 0.05).reshape(steps, *(1,) * 3)
    grads = []
    for i, shape in enumerate(shapes):
        noise = rng.standard_normal((steps, *shape))
        profile = i % 5
        if profile == 1:
            noise = noise * small
        elif profile == 2:
            noise = noise * fall.reshape(steps, *(1,) * len(shape))
        elif profile == 3:
            noise = 0.5 + noise
        elif profile == 4:
            noise = noise * 10.0 ** rng.uniform(np.log10(small), 0.0, size=shape)
        grads.append(_f32(noise))
    return tuple(params), tuple(grads)


#: The curvatures h of a quadratic-loss case lie in [CURVATURE_LOW, 1], log-uniformly per element.
CURVATURE_LOW = 0.05


def quadratic_loss(spec: Spec, case: CaseSpec, rng: np.random.Generator) -> Quadratic | None:
    """The loss of a rule whose gradients are taken at the point (``spec.gradient``), else None.

    Per element, h = 10^U(log10 0.05, 0) and c = N(0, 1), rounded to binary32 and drawn after
    every other input of the case (so that adding the loss to a spec leaves its parameters and
    gradient stream as they were). ``zero_grad`` cases keep every gradient exactly zero: no loss.
    """
    if spec.gradient != "quadratic" or case.grads == "zero":
        return None
    shapes = shapes_of(spec)
    curvature = tuple(_f32(10.0 ** rng.uniform(np.log10(CURVATURE_LOW), 0.0, size=shape)) for shape in shapes)
    center = tuple(_f32(rng.standard_normal(shape)) for shape in shapes)
    return Quadratic(curvature, center)


def make_inputs(spec: Spec, case: CaseSpec) -> CaseInputs:
    """The inputs of one case; the seed depends only on the rule and case names."""
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{case.id}".encode()))
    inputs = _fixed_inputs(spec, case, rng)
    quadratic = quadratic_loss(spec, case, rng)
    return inputs if quadratic is None else dataclasses.replace(inputs, quadratic=quadratic)


def _fixed_inputs(spec: Spec, case: CaseSpec, rng: np.random.Generator) -> CaseInputs:
    """Parameters, the gradient stream (the per-step term of a quadratic loss) and s_t."""
    hyper = spec.hyper_values(case.hyper)
    steps = case.steps
    if spec.shapes is not None:
        params, grads = _own_shapes(spec, case, rng, small_scale(hyper))
        if case.schedule is not None:
            return CaseInputs(params, grads, schedule_multipliers(case.schedule, steps), case.schedule)
        return CaseInputs(params, grads, evaluate_lr_multipliers(case.lr_multiplier, steps))
    params = tuple(_f32(rng.standard_normal(shape)) for shape in SHAPES)
    if case.zero_params:
        params = tuple(np.zeros_like(p) if i in case.zero_params else p for i, p in enumerate(params))
    if case.grads == "zero":
        grads = tuple(np.zeros((steps, *shape)) for shape in SHAPES)
    else:
        small = small_scale(hyper)
        fall = np.where(np.arange(1, steps + 1) <= max(1, steps // 5), 1.0, 0.05)
        scales = 10.0 ** rng.uniform(np.log10(small), 0.0, size=SHAPES[4])
        grads = (
            _f32(rng.standard_normal((steps, *SHAPES[0]))),
            _f32(rng.standard_normal((steps, *SHAPES[1])) * small),
            _f32(rng.standard_normal((steps, *SHAPES[2])) * fall[:, None]),
            _f32(0.5 + rng.standard_normal((steps, *SHAPES[3]))),
            _f32(rng.standard_normal((steps, *SHAPES[4])) * scales),
        )
    if case.schedule is not None:
        return CaseInputs(params, grads, schedule_multipliers(case.schedule, steps), case.schedule)
    return CaseInputs(params, grads, evaluate_lr_multipliers(case.lr_multiplier, steps))
