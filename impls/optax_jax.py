"""optax under ``jax.jit``, in float32 (JAX's default, x64 off) and float64 (x64 on).

Each rule is bound to a factory that builds the optax ``GradientTransformation`` the way
optax's documentation composes it: the alias itself where it exists, and
``optax.chain(optax.add_decayed_weights(lambda), alias)`` for L2 weight decay, which the
aliases leave out. A learning-rate schedule is passed as a schedule function of optax's
step count, so step t uses eta * s_t as in the spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from optspec.errors import AdapterError, LibraryCannotRun
from optspec.golden_format import user_cache_dir
from optspec.impls.base import Binding, Keyword, Plan, Requirement, Since, Slot, Support, installed_version, lacks
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
    centered: bool,
    momentum: float | None,
    weight_decay: float,
    initial_scale: float = 0.0,
    **flags: bool,
) -> Any:
    """``flags``: ``eps_in_sqrt`` (optax >= 0.2.4), passed only when the case sets it off its default."""
    import optax

    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.rmsprop(
            learning_rate, decay=decay, eps=eps, initial_scale=initial_scale, centered=centered, momentum=momentum, **flags
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
    learning_rate: Schedule, b1: float, b2: float, eps: float, weight_decay: float, decoupled: bool, **flags: bool
) -> Any:
    """L2: chain(add_decayed_weights, amsgrad). Decoupled: scale_by_amsgrad, add_decayed_weights, then the lr.

    ``flags``: ``bias_correction_mu`` and ``bias_correction_nu`` (optax >= 0.2.7), passed only off their defaults.
    """
    import optax

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


def rprop(learning_rate: Schedule, eta_minus: float, eta_plus: float, min_step_size: float, max_step_size: float) -> Any:
    """optax.rprop: learning_rate is the initial step size only (a constant; Rprop specs have no scheduled case)."""
    import optax

    return optax.rprop(
        learning_rate, eta_minus=eta_minus, eta_plus=eta_plus, min_step_size=min_step_size, max_step_size=max_step_size
    )


def yogi(learning_rate: Schedule, b1: float, b2: float, eps: float, eps_root: float, initial_accumulator_value: float) -> Any:
    """optax.yogi is chain(scale_by_yogi, scale_by_learning_rate); built from its parts to pass eps_root and the initial value."""
    import optax

    return optax.chain(
        optax.scale_by_yogi(b1=b1, b2=b2, eps=eps, eps_root=eps_root, initial_accumulator_value=initial_accumulator_value),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamaxw(learning_rate: Schedule, b1: float, b2: float, eps: float, weight_decay: float) -> Any:
    import optax

    return optax.adamaxw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def novograd(learning_rate: Schedule, b1: float, b2: float, eps: float, eps_root: float, weight_decay: float) -> Any:
    import optax

    return optax.novograd(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)


def sign_sgd(learning_rate: Schedule) -> Any:
    import optax

    return optax.sign_sgd(learning_rate)


def signum(learning_rate: Schedule, beta: float) -> Any:
    import optax

    return optax.signum(learning_rate, beta=beta)


def adan(learning_rate: Schedule, b1: float, b2: float, b3: float, eps: float, eps_root: float, weight_decay: float) -> Any:
    import optax

    return optax.adan(learning_rate, b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root, weight_decay=weight_decay)


def adopt(learning_rate: Schedule, b1: float, b2: float, eps: float, use_clipping: bool, nesterov: bool) -> Any:
    import optax.contrib

    return optax.contrib.adopt(learning_rate, b1=b1, b2=b2, eps=eps, use_clipping=use_clipping, nesterov=nesterov)


def ademamix(
    learning_rate: Schedule, b1: float, b2: float, b3: float, alpha: float, eps: float, eps_root: float, weight_decay: float
) -> Any:
    import optax.contrib

    return optax.contrib.ademamix(
        learning_rate, b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root, weight_decay=weight_decay
    )


def simplified_ademamix(
    learning_rate: Schedule, b1: float, b2: float, alpha: float, eps: float, eps_root: float, weight_decay: float
) -> Any:
    import optax.contrib

    return optax.contrib.simplified_ademamix(
        learning_rate, b1=b1, b2=b2, alpha=alpha, eps=eps, eps_root=eps_root, weight_decay=weight_decay
    )


def optimistic_gradient_descent(learning_rate: Schedule, alpha: float, beta: float) -> Any:
    import optax

    return optax.optimistic_gradient_descent(learning_rate, alpha=alpha, beta=beta)


def optimistic_adam(learning_rate: Schedule, alpha: float, beta: float, b1: float, b2: float, eps: float, eps_root: float) -> Any:
    import optax

    return optax.optimistic_adam_v2(learning_rate, alpha=alpha, beta=beta, b1=b1, b2=b2, eps=eps, eps_root=eps_root)


def madgrad(learning_rate: Schedule, momentum: float, weight_decay: float, eps: float) -> Any:
    import optax.contrib

    return optax.contrib.madgrad(learning_rate, momentum=momentum, weight_decay=weight_decay, eps=eps)


def fromage(learning_rate: Schedule, min_norm: float) -> Any:
    import optax

    return optax.fromage(learning_rate, min_norm=min_norm)


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
    "rprop": rprop,
    "yogi": yogi,
    "adamaxw": adamaxw,
    "novograd": novograd,
    "sign_sgd": sign_sgd,
    "signum": signum,
    "adan": adan,
    "adopt": adopt,
    "ademamix": ademamix,
    "simplified_ademamix": simplified_ademamix,
    "optimistic_gradient_descent": optimistic_gradient_descent,
    "optimistic_adam": optimistic_adam,
    "madgrad": madgrad,
    "fromage": fromage,
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

# Which optax releases have each keyword (the oldest supported release is optax 0.2.0), from the
# released wheels on PyPI. A keyword at its default is never passed; the release before the one
# that added it behaves as that default (the evidence names the line).

#: optax 0.2.4 optax/_src/transform.py:98 (scale_by_rms) adds eps_in_sqrt: bool = True; optax 0.2.3
#: optax/_src/transform.py:117 computes g * rsqrt(nu + eps), eps inside the root (the default)
_EPS_IN_SQRT = Keyword(default=True, since=Since("0.2.4", "optax 0.2.4 optax/_src/transform.py:98"))
#: optax 0.2.7 optax/_src/transform.py:327-328 (scale_by_amsgrad) adds bias_correction_mu/nu: bool = True;
#: optax 0.2.6 and older correct both (optax 0.2.3 optax/_src/transform.py:291-293: mu_hat, nu_hat, max(nu_max, nu_hat))
_AMSGRAD_CORRECTION = Keyword(default=True, since=Since("0.2.7", "optax 0.2.7 optax/_src/transform.py:327"))
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
        library="optax",
        keywords={"eps_in_sqrt": _EPS_IN_SQRT},
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
        library="optax",
        keywords={"bias_correction_mu": _AMSGRAD_CORRECTION, "bias_correction_nu": _AMSGRAD_CORRECTION},
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
    # --- issue 12b: rules added after the 2019 Adam family (new entries only) ---
    "rprop": Binding(
        rule="rprop",
        target="optax.rprop",
        hyper={
            "eta_minus": "eta_minus",
            "eta_plus": "eta_plus",
            "step_size_min": "min_step_size",
            "step_size_max": "max_step_size",
        },
        # optax/_src/transform.py:929-954: Delta kept where s == 0; the update is the stored u_{t-1}
        variants={"zero_product": {"keep": Support()}, "timing": {"lagged": Support()}},
        state={"delta": Slot("step_sizes"), "u": Slot("prev_updates")},
    ),
    "yogi": Binding(
        rule="yogi",
        target="optax.yogi",
        hyper={
            "beta1": "b1",
            "beta2": "b2",
            "eps": "eps",
            "eps_root": "eps_root",
            "initial_accumulator_value": "initial_accumulator_value",
        },
        variants={},
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "adamaxw": Binding(
        rule="adamaxw",
        target="optax.adamaxw",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
        variants={},
        state={"m": Slot("mu"), "u": Slot("nu")},
    ),
    "novograd": Binding(
        rule="novograd",
        target="optax.novograd",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps", "eps_root": "eps_root", "weight_decay": "weight_decay"},
        variants={},
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "sign_sgd": Binding(rule="sign_sgd", target="optax.sign_sgd", hyper={}, variants={}, state={}),
    "signum": Binding(rule="signum", target="optax.signum", hyper={"beta": "beta"}, variants={}, state={"b": Slot("ema")}),
    "adan": Binding(
        rule="adan",
        target="optax.adan",
        hyper={
            "beta1": "b1",
            "beta2": "b2",
            "beta3": "b3",
            "eps": "eps",
            "eps_root": "eps_root",
            "weight_decay": "weight_decay",
        },
        # optax/_src/alias.py:914-925: add_decayed_weights after scale_by_adan, before the lr
        variants={"weight_decay": {"decoupled": Support()}},
        state={"m": Slot("m"), "v": Slot("v"), "n": Slot("n"), "gprev": Slot("g")},
    ),
    "adopt": Binding(
        rule="adopt",
        target="optax.contrib.adopt",
        hyper={"beta1": "b1", "beta2": "b2", "eps": "eps"},
        variants={
            "clipping": {"on": Support({"use_clipping": True}), "off": Support({"use_clipping": False})},
            "nesterov": {"off": Support({"nesterov": False}), "on": Support({"nesterov": True})},
        },
        state={"m": Slot("mu"), "v": Slot("nu")},
    ),
    "ademamix": Binding(
        rule="ademamix",
        target="optax.contrib.ademamix",
        hyper={
            "beta1": "b1",
            "beta2": "b2",
            "beta3": "b3",
            "alpha": "alpha",
            "eps": "eps",
            "eps_root": "eps_root",
            "weight_decay": "weight_decay",
        },
        variants={},
        state={"m1": Slot("m1"), "m2": Slot("m2"), "v": Slot("nu")},
    ),
    "simplified_ademamix": Binding(
        rule="simplified_ademamix",
        target="optax.contrib.simplified_ademamix",
        hyper={
            "beta1": "b1",
            "beta2": "b2",
            "alpha": "alpha",
            "eps": "eps",
            "eps_root": "eps_root",
            "weight_decay": "weight_decay",
        },
        variants={},
        state={"m": Slot("m"), "v": Slot("n")},
    ),
    "optimistic_gradient_descent": Binding(
        rule="optimistic_gradient_descent",
        target="optax.optimistic_gradient_descent",
        hyper={"alpha": "alpha", "beta": "beta"},
        variants={},
        state={"prev": Slot("previous_gradient")},
    ),
    "optimistic_adam": Binding(
        rule="optimistic_adam",
        target="optax.optimistic_adam_v2",
        hyper={"alpha": "alpha", "beta": "beta", "beta1": "b1", "beta2": "b2", "eps": "eps", "eps_root": "eps_root"},
        variants={},
        state={"m": Slot("mu"), "v": Slot("nu"), "prev": Slot("previous_gradient")},
    ),
    "madgrad": Binding(
        rule="madgrad",
        target="optax.contrib.madgrad",
        hyper={"momentum": "momentum", "weight_decay": "weight_decay", "eps": "eps"},
        variants={},
        state={"G": Slot("grad_sum_sq"), "s": Slot("s"), "x0": Slot("x0")},
    ),
    "fromage": Binding(rule="fromage", target="optax.fromage", hyper={"min_norm": "min_norm"}, variants={}, state={}),
}


def jax_unavailable() -> str | None:
    """Why optax cannot run: not installed (a reason, the cells are skipped), or installed but
    unusable (an AdapterError: one line, exit 2)."""
    for module in ("jax", "optax"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'optspec[jax]')"
    problem = _jax_problem()
    if problem is not None:
        raise AdapterError(problem)
    return None


@cache
def _jax_problem() -> str | None:
    installed = ", ".join(f"{name} {installed_version(name)}" for name in ("jax", "jaxlib", "optax"))
    try:
        import jax
        import optax  # noqa: F401
    except Exception as exc:
        return f"jax/optax cannot be imported ({installed}): {type(exc).__name__}: {_first_line(exc)}"
    if _x64_context(jax) is None:
        return f"jax {jax.__version__} has neither jax.enable_x64 nor jax.experimental.enable_x64 ({installed})"
    return None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _x64_context(jax: Any) -> Callable[[bool], Any] | None:
    """The context manager that switches x64 on or off: ``jax.enable_x64`` (newer jax) or
    ``jax.experimental.enable_x64`` (jax 0.4.31 has no jax.enable_x64; jax/experimental/x64_context.py:30
    defines enable_x64(new_val=True)), else None."""
    context = getattr(jax, "enable_x64", None)
    if callable(context):
        return context
    try:
        from jax.experimental import enable_x64
    except ImportError:
        return None
    return enable_x64


#: ``$OPTSPEC_JAX_CACHE``: the directory of JAX's persistent compilation cache for optspec's runs
#: (``off`` or an empty value: none); default ``$XDG_CACHE_HOME/optspec/jax`` (``~/.cache/optspec/jax``).
CACHE_ENV = "OPTSPEC_JAX_CACHE"


def compilation_cache_dir() -> str | None:
    """Where :func:`use_compilation_cache` keeps compiled programs (None: nowhere)."""
    directory = user_cache_dir(CACHE_ENV, "jax")
    return None if directory is None else str(directory)


@cache
def use_compilation_cache() -> str | None:
    """Switch on JAX's persistent compilation cache (once per process); the directory, or None.

    The cache stores XLA's compiled executable under a key of the program (the lowered HLO,
    its constants included), the compile options and the jax/jaxlib/backend versions, so a
    program compiled once is loaded on later runs instead of compiled again: the executable
    is the same, and so is every number it computes. Compilation is most of optax's time in
    the matrix (a jit compilation per batch of runs). Every entry is kept, however fast its
    compilation (JAX's default keeps only those over 1 s). A cache directory the user set for
    JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
    """
    import jax

    configured = getattr(jax.config, "jax_compilation_cache_dir", None)
    if configured:
        return str(configured)
    directory = compilation_cache_dir()
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    for option, value in (("jax_persistent_cache_min_compile_time_secs", 0.0), ("jax_persistent_cache_min_entry_size_bytes", -1)):
        try:
            jax.config.update(option, value)
        except (AttributeError, KeyError, ValueError):  # an option this jax release does not have
            pass
    return directory


def x64(enabled: bool) -> Any:
    """``with x64(dtype == "float64"):`` in every supported jax release."""
    import jax

    context = _x64_context(jax)
    if context is None:
        raise AdapterError(f"jax {jax.__version__} has neither jax.enable_x64 nor jax.experimental.enable_x64")
    return context(enabled)


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


@cache
def _has_attribute(target: str) -> bool:
    """Whether a dotted ``optax.name`` / ``optax.contrib.name`` target exists in the installed optax
    (a composite target such as ``optax.chain(...)`` is taken to exist)."""
    if "(" in target:
        return True
    module_name, _, attribute = target.rpartition(".")
    try:
        return hasattr(importlib.import_module(module_name), attribute)
    except ImportError:
        return False


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

    def grads(self, t: int) -> list[Any]:
        """The gradients of step ``t``: the stored ones, or a quadratic loss's at the current params
        (h * (p - c) + n_t in the run's dtype, as a training loop's gradient follows its params)."""
        fixed = [g[t - 1, ...] for g in self.all_grads]
        loss = self.inputs.quadratic
        if loss is None:
            return fixed
        import jax.numpy as jnp

        return [
            jnp.asarray(h, dtype=self.jdtype) * (p - jnp.asarray(c, dtype=self.jdtype)) + n
            for h, c, p, n in zip(loss.curvature, loss.center, self.params, fixed)
        ]

    def advance(self, t: int, params: Any, state: Any) -> None:
        """Take the parameters and state after step ``t``; record them when ``t`` is recorded."""
        self.params, self.state = params, state
        if t in self.wanted:
            snapshot = [{"theta": np.asarray(p, dtype=np.float64)} for p in params]
            for slot, where in self.slots.items():
                value = find_state_field(state, where.key)
                if where.rule and value is not None and np.ndim(value) == 0:
                    for index in range(len(params)):
                        snapshot[index][slot] = where.sign * np.asarray(value, dtype=np.float64)
                elif isinstance(value, (list, tuple)) and len(value) == len(params):
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


#: aliases that take a schedule as learning_rate only from a release (every other alias: all supported releases)
SCHEDULE_SINCE = {
    "fromage": Since(
        "0.2.6", "optax 0.2.6 optax/_src/alias.py:1132 (if not callable(learning_rate)); 0.2.3 alias.py:907 squares it"
    ),
}


class OptaxJit:
    framework = "jax"
    name = "optax"
    dtypes = ("float32", "float64")

    def unavailable(self) -> str | None:
        return jax_unavailable()

    def binding(self, rule: str) -> Binding | None:
        binding = BINDINGS.get(rule)
        if binding is None or self.unavailable() is not None:
            return binding
        # a transformation the installed optax does not have yet (optax.contrib.muon, adopt,
        # ademamix... are not in optax 0.2.3): no binding, never an error cell
        return binding if _has_attribute(binding.target) else None

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        use_compilation_cache()
        with x64(dtype == "float64"):
            tx, slots, inputs, record, what = self._item(plan, inputs, hyper, dtype, record)
            return run_optax_transformation(tx, slots, inputs, dtype, record, what)

    def run_many(
        self, jobs: Sequence[tuple[Plan, CaseInputs, Mapping[str, float], str, Sequence[int]]]
    ) -> list[Trajectory | AdapterError]:
        """:meth:`run` of each ``(plan, inputs, hyper, dtype, record)``, the same results, compiled in batches."""
        use_compilation_cache()
        outcomes: list[Trajectory | AdapterError | None] = [None] * len(jobs)
        for dtype in dict.fromkeys(job[3] for job in jobs):
            with x64(dtype == "float64"):
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
        takes = lacks("optax", SCHEDULE_SINCE.get(plan.binding.rule)) if callable(learning_rate) else None
        if takes is not None:  # a schedule the installed optax's alias cannot take: not run, never an error
            raise LibraryCannotRun(f"optax {plan.binding.target}(learning_rate=<schedule>) is {takes}")
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


def _decay_coupled_or_inside(core: Callable[[float], Any], weight_decay: float, coupled: bool) -> Any:
    """The D-Adaptation family's decay: coupled, chain(add_decayed_weights(lambda), core(0)) as their
    docstrings say; decoupled, the transformation's own weight_decay argument."""
    import optax

    return optax.chain(optax.add_decayed_weights(weight_decay), core(0.0)) if coupled else core(weight_decay)


def prodigy(
    learning_rate: Schedule,
    betas: tuple[float, float],
    beta3: float,
    eps: float,
    estim_lr0: float,
    estim_lr_coef: float,
    weight_decay: float,
    safeguard_warmup: bool,
    coupled: bool,
) -> Any:
    """optax.contrib.prodigy (optax/contrib/_prodigy.py:45-173); coupled decay is
    chain(add_decayed_weights, prodigy), as its docstring says (:73-74)."""
    import optax
    import optax.contrib

    def core(decay: float) -> Any:
        return optax.contrib.prodigy(
            learning_rate,
            betas=tuple(betas),
            beta3=beta3,
            eps=eps,
            estim_lr0=estim_lr0,
            estim_lr_coef=estim_lr_coef,
            weight_decay=decay,
            safeguard_warmup=safeguard_warmup,
        )

    return _decay_coupled_or_inside(core, weight_decay, coupled)


FACTORIES["prodigy"] = prodigy

BINDINGS["prodigy"] = Binding(
    rule="prodigy",
    target="optax.contrib.prodigy",
    hyper={
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "beta3": "beta3",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "d0": "estim_lr0",
        "d_coef": "estim_lr_coef",
    },
    variants={
        # optax/contrib/_prodigy.py:129: bc is always applied (bias_correction=off: impls/deviations.toml)
        "bias_correction": {"on": Support()},
        # :156 decoupled weight_decay * dlr * p; coupled: chain(add_decayed_weights, prodigy) (:73-74)
        "decay": {"decoupled": Support({"coupled": False}), "coupled": Support({"coupled": True})},
        # :154 estim_lr = max(estim_lr, lr_estimate): no growth clamp
        "growth": {"unbounded": Support()},
        "safeguard_warmup": {"off": Support({"safeguard_warmup": False}), "on": Support({"safeguard_warmup": True})},
    },
    state={
        "m": Slot("exp_avg"),
        "v": Slot("exp_avg_sq"),
        "s": Slot("grad_sum"),
        "x0": Slot("params0"),
        "d": Slot("estim_lr", rule=True),
        "r": Slot("numerator_weighted", rule=True),
    },
)


def dadapt_adam(
    learning_rate: Schedule,
    betas: tuple[float, float],
    eps: float,
    estim_lr0: float,
    weight_decay: float,
    coupled: bool,
) -> Any:
    """optax.contrib.dadapt_adamw (optax/contrib/_dadapt_adamw.py:42-147); coupled decay is
    chain(add_decayed_weights, dadapt_adamw), as its docstring says (:63-64)."""
    import optax
    import optax.contrib

    def core(decay: float) -> Any:
        return optax.contrib.dadapt_adamw(learning_rate, betas=tuple(betas), eps=eps, estim_lr0=estim_lr0, weight_decay=decay)

    return _decay_coupled_or_inside(core, weight_decay, coupled)


FACTORIES["dadapt_adam"] = dadapt_adam

BINDINGS["dadapt_adam"] = Binding(
    rule="dadapt_adam",
    target="optax.contrib.dadapt_adamw",
    hyper={"beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay", "d0": "estim_lr0"},
    variants={
        # optax/contrib/_dadapt_adamw.py:107: bc always applied (bias_correction=off: impls/deviations.toml)
        "bias_correction": {"on": Support()},
        # :132 decoupled weight_decay * dlr * p; coupled: chain(add_decayed_weights, dadapt_adamw) (:63-64)
        "decay": {"coupled": Support({"coupled": True}), "decoupled": Support({"coupled": False})},
        # :130 estim_lr = max(estim_lr, d_estimate): no growth clamp
        "growth": {"unbounded": Support()},
    },
    state={
        "m": Slot("exp_avg"),
        "v": Slot("exp_avg_sq"),
        "s": Slot("grad_sum"),
        "d": Slot("estim_lr", rule=True),
        "r": Slot("numerator_weighted", rule=True),
    },
)


def schedule_free_sgd(
    learning_rate: Schedule, b1: float, weight_decay: float, warmup_steps: float, weight_lr_power: float
) -> Any:
    """optax.contrib.schedule_free_sgd (optax/contrib/_schedule_free.py:224-295); see :func:`_warmup_keyword`."""
    import optax.contrib

    return optax.contrib.schedule_free_sgd(
        learning_rate, b1=b1, weight_decay=weight_decay, weight_lr_power=weight_lr_power, **_warmup_keyword(warmup_steps)
    )


def _warmup_keyword(warmup_steps: float) -> dict[str, int]:
    """``warmup_steps`` as an int when positive, else not passed: its default means no warmup in every
    release (None in optax 0.2.8, _schedule_free.py:226, tested with `is not None`, :278; 0 in optax 0.2.3,
    tested with `> 0`), while warmup_steps=0 in optax 0.2.8 would be a schedule that is 0 at every step
    (optax/schedules/_schedule.py:126-131)."""
    return {"warmup_steps": int(warmup_steps)} if warmup_steps > 0 else {}


def schedule_free_adamw(
    learning_rate: Schedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    warmup_steps: float,
    weight_lr_power: float,
) -> Any:
    """optax.contrib.schedule_free_adamw (optax/contrib/_schedule_free.py:298-381); see :func:`_warmup_keyword`."""
    import optax.contrib

    return optax.contrib.schedule_free_adamw(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        weight_lr_power=weight_lr_power,
        **_warmup_keyword(warmup_steps),
    )


FACTORIES["schedule_free_sgd"] = schedule_free_sgd
FACTORIES["schedule_free_adamw"] = schedule_free_adamw

#: optax's weight is max_lr ** weight_lr_power (optax/contrib/_schedule_free.py:171): no polynomial t^r
_NO_POLYNOMIAL_WEIGHT = Requirement(
    "r == 0", "optax.contrib.schedule_free weights by max_lr ** weight_lr_power only (_schedule_free.py:171)"
)
#: the weight reads learning_rate(step_count), step_count from 1 (:150, :164), the inner step the schedule
#: from count 0: the warmup=schedule variant; warmup=inside is not expressible
_OPTAX_WARMUP = {"schedule": Support()}

BINDINGS["schedule_free_sgd"] = Binding(
    rule="schedule_free_sgd",
    target="optax.contrib.schedule_free_sgd",
    hyper={
        "momentum": "b1",
        "weight_decay": "weight_decay",
        "warmup_steps": "warmup_steps",
        "weight_lr_power": "weight_lr_power",
    },
    variants={"warmup": _OPTAX_WARMUP},
    # ScheduleFreeState.z (:39); weight_sum and max_lr are scalars of the whole tree, not per tensor
    state={"z": Slot("z")},
    requires=(_NO_POLYNOMIAL_WEIGHT,),
)
BINDINGS["schedule_free_adamw"] = Binding(
    rule="schedule_free_adamw",
    target="optax.contrib.schedule_free_adamw",
    hyper={
        "beta1": "b1",
        "beta2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "warmup_steps": "warmup_steps",
        "weight_lr_power": "weight_lr_power",
    },
    # scale_by_rms(eps_in_sqrt=False, bias_correction=True) (:369-371), add_decayed_weights at the params (y) (:372)
    variants={"warmup": _OPTAX_WARMUP, "bias_correction": {"vhat": Support()}, "decay_point": {"y": Support()}},
    state={"z": Slot("z"), "v": Slot("nu")},
    requires=(_NO_POLYNOMIAL_WEIGHT,),
)
