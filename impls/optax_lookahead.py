"""optax.lookahead bound to the composite spec ``specs/lookahead.toml``.

The composite's ``inner`` knob selects the fast optimizer; it is built by the inner rule's own
optax binding and factory (:mod:`optspec.impls.optax_jax`) from the prefixed hyperparameters
(``adam_beta1`` -> the adam binding's ``beta1``), at the inner spec's default variant.

optax's lookahead works on ``LookaheadParams(fast, slow)``. The adapter runner applies updates
to plain parameters, so :func:`lookahead` carries the slow weights in its state: each update
calls ``optax.lookahead``'s own ``update`` with ``LookaheadParams(fast=params, slow=state.slow)``
(gradients taken at the fast weights, as optax requires), returns the fast updates and adds the
slow updates to ``state.slow``: exactly what a training loop with ``optax.apply_updates`` on
``LookaheadParams`` does. ``state.slow`` is compared with the spec's ``slow`` slot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from optspec.impls.base import Binding, Requirement, Slot, Support
from optspec.spec import SpecLibrary

#: Inner rules optax.lookahead is checked with (they must be inner rules of the spec too).
INNER_RULES = ("sgd", "adam", "lamb")


class LookaheadCarry(NamedTuple):
    """optax.lookahead's state plus the slow weights it expects in LookaheadParams."""

    lookahead: Any
    slow: Any


def lookahead(
    learning_rate: Any,
    sync_period: float,
    slow_step_size: float,
    inner: str,
    bindings: Mapping[str, Binding],
    factories: Mapping[str, Callable[..., Any]],
    **prefixed: float,
) -> Any:
    """``optax.lookahead(fast, sync_period, slow_step_size)`` with the slow weights carried in state."""
    import optax

    inner_binding = bindings[inner]
    inner_spec = SpecLibrary().get(inner)
    given = {name[len(inner) + 1 :]: value for name, value in prefixed.items() if name.startswith(f"{inner}_")}
    hyper = {**inner_spec.hyper_values(), **given}  # defaults for what the default variant does not read
    variant = inner_spec.default_variant()
    fast = factories[inner](learning_rate=learning_rate, **inner_binding.kwargs(hyper, variant))
    wrapped = optax.lookahead(fast, sync_period=round(sync_period), slow_step_size=slow_step_size)

    def init(params: Any) -> LookaheadCarry:
        return LookaheadCarry(wrapped.init(optax.LookaheadParams.init_synced(params)), params)

    def update(updates: Any, state: LookaheadCarry, params: Any = None) -> tuple[Any, LookaheadCarry]:
        both, inner_state = wrapped.update(updates, state.lookahead, optax.LookaheadParams(fast=params, slow=state.slow))
        return both.fast, LookaheadCarry(inner_state, optax.apply_updates(state.slow, both.slow))

    return optax.GradientTransformation(init, update)


def register(bindings: dict[str, Binding], factories: dict[str, Callable[..., Any]]) -> None:
    """Add the ``lookahead`` binding and factory, derived from the inner rules' optax bindings."""
    spec = SpecLibrary().get("lookahead") if "lookahead" in SpecLibrary().names else None
    if spec is None:
        return
    hyper_map = {"k": "sync_period", "alpha": "slow_step_size"}
    supports: dict[str, Support] = {}
    state: dict[str, Slot] = {"slow": Slot("slow")}
    for rule in INNER_RULES:
        inner_binding = bindings.get(rule)
        if inner_binding is None or rule not in spec.knobs["inner"].values:
            continue
        inner_spec = SpecLibrary().get(rule)
        hyper_map.update({f"{rule}_{h}": f"{rule}_{h}" for h in inner_spec.hyper if f"{rule}_{h}" in spec.hyper})
        renamed = tuple(
            Requirement(_prefix(r.condition, rule, set(inner_spec.hyper)), f"inner {rule}: {r.reason}")
            for r in inner_binding.requires
        )
        supports[rule] = Support({"inner": rule}, renamed)
        state.update({f"{rule}_{slot}": where for slot, where in inner_binding.state.items()})
    bindings["lookahead"] = Binding(
        rule="lookahead", target="optax.lookahead", hyper=hyper_map, variants={"inner": supports}, state=state
    )
    factories["lookahead"] = lambda **kwargs: lookahead(bindings=bindings, factories=factories, **kwargs)


def _prefix(condition: str, rule: str, names: set[str]) -> str:
    """A requirement over the inner rule's hyperparameters, over the composite's prefixed names."""
    from optspec.expr import parse_expr, rename_names, to_source

    return to_source(rename_names(parse_expr(condition), {n: f"{rule}_{n}" for n in names if n != "lr"}))
