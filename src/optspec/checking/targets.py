"""Third-party targets: import, describe, map hyperparameters, and run scenarios.

A target is named ``module:attribute`` (``attribute`` may be dotted) and is importable from
the current directory or the installed packages. Two kinds are recognised:

* ``torch`` — a subclass of ``torch.optim.Optimizer``, constructed as
  ``Target(params_or_groups, **kwargs)`` with torch-style keyword arguments (``lr``,
  ``betas=(beta1, beta2)``, ``eps``, ``weight_decay``, ``momentum``, ...). The runner sets
  ``group[lr_keyword] = eta * s_t`` before every step, as an ``LRScheduler`` would, sets
  ``param.grad`` (or leaves it ``None``) and calls ``step()``.
* ``optax`` — any other callable, called with optax-style keyword arguments
  (``learning_rate``, ``b1``, ``b2``, ``eps``, ...) and expected to return a
  ``GradientTransformation`` (``init``/``update``). A learning-rate schedule is passed as a
  function of optax's step count, ``count -> eta * s_{count+1}``. Steps run under
  ``jax.jit``; float64 runs enable x64.

The spec-to-keyword naming is derived from the bindings of torch.optim and optax
(:mod:`optspec.impls.torch_optim`, :mod:`optspec.impls.optax_jax`) and can be overridden
with ``--map SPEC=THEIRS``. Everything that runs target code (:func:`describe`,
:func:`run_scenario`) is a module-level function of picklable arguments, so that
:mod:`optspec.checking.worker` can run it in a separate process with a time limit.
"""

from __future__ import annotations

import importlib
import inspect
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optspec.impls import optax_jax, torch_optim
from optspec.impls.base import Binding, Support
from optspec.reference import Trajectory
from optspec.spec import Spec

KINDS = ("torch", "optax")


class TargetError(Exception):
    """The target misbehaved while running a scenario (raised, wrong shape or dtype...)."""


class TargetUsageError(Exception):
    """The target cannot be used at all (not importable, not an optimizer)."""


# --------------------------------------------------------------------------- naming


def _naming(bindings: Mapping[str, Binding]) -> dict[str, str]:
    names: dict[str, str] = {}
    for binding in bindings.values():
        for hyper, keyword in binding.hyper.items():
            names.setdefault(hyper, keyword)
    return names


#: spec hyperparameter -> keyword argument, per kind (``betas[0]`` fills a tuple argument).
NAMING: dict[str, dict[str, str]] = {
    "torch": _naming(torch_optim.BINDINGS),
    "optax": {"lr": "learning_rate", **_naming(optax_jax.BINDINGS)},
}
#: Library bindings whose variant keyword arguments and state keys a generic target reuses.
BINDINGS: dict[str, Mapping[str, Binding]] = {"torch": torch_optim.BINDINGS, "optax": optax_jax.BINDINGS}


def keyword_base(keyword: str) -> str:
    """``betas[0]`` -> ``betas``."""
    return keyword.split("[", 1)[0]


def put_keyword(out: dict[str, Any], keyword: str, value: Any) -> None:
    """Set ``out[keyword] = value``; ``name[i]`` fills position i of a tuple argument."""
    if keyword.endswith("]"):
        name, index = keyword[:-1].split("[", 1)
        current = list(out.get(name) or ())
        position = int(index)
        current.extend([None] * (position + 1 - len(current)))
        current[position] = value
        out[name] = tuple(current)
    else:
        out[keyword] = value


@dataclass(frozen=True)
class TargetInfo:
    """What :func:`describe` found out about a target."""

    ref: str
    kind: str
    qualname: str
    #: keyword arguments the constructor/factory accepts; None when it takes ``**kwargs``
    accepted: tuple[str, ...] | None
    defaults: Mapping[str, str]
    package: str
    package_version: str | None

    def accepts(self, keyword: str) -> bool:
        return self.accepted is None or keyword_base(keyword) in self.accepted


@dataclass(frozen=True)
class Configuration:
    """Keyword arguments for one (hyperparameters, variant) pair, or why there are none."""

    kwargs: Mapping[str, Any]
    lr_keyword: str | None
    base_lr: float
    #: reasons this configuration cannot be expressed (the case is skipped)
    problems: tuple[str, ...] = ()
    #: remarks worth reporting once (e.g. a knob keyword the target does not take)
    notes: tuple[str, ...] = ()
    #: spec hyperparameter -> keyword actually passed
    passed: Mapping[str, str] = field(default_factory=dict)


class Naming:
    """Turns spec hyperparameters and knob values into the target's keyword arguments."""

    def __init__(self, spec: Spec, info: TargetInfo, maps: Mapping[str, str]) -> None:
        self.spec = spec
        self.info = info
        self.maps = dict(maps)
        self.binding = BINDINGS[info.kind].get(spec.name)

    def keyword(self, hyper: str) -> str:
        return self.maps.get(hyper) or NAMING[self.info.kind].get(hyper, hyper)

    def knob_support(self, knob: str, value: str) -> Support | None:
        if self.binding is not None:
            return self.binding.variants.get(knob, {}).get(value)
        if knob == "maximize" and self.info.kind == "torch":
            return Support({"maximize": value == "on"})
        return None

    def configure(self, hyper: Mapping[str, float], variant: Mapping[str, str]) -> Configuration:
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        notes: list[str] = []
        passed: dict[str, str] = {}
        lr_keyword: str | None = None
        for name, value in hyper.items():
            keyword = self.keyword(name)
            if self.info.accepts(keyword):
                put_keyword(kwargs, keyword, value)
                passed[name] = keyword
                if name == "lr":
                    lr_keyword = keyword
            elif value == self.spec.hyper[name].default:
                notes.append(
                    f"the target takes no {keyword!r} argument (spec hyperparameter {name}); "
                    f"cases with {name} = {value:g} (the spec default) run without it"
                )
            else:
                problems.append(f"the target takes no {keyword!r} argument, needed for {name} = {value:g} (use --map {name}=...)")
        for knob, value in variant.items():
            support = self.knob_support(knob, value)
            if support is None:
                continue
            failing = [r.reason for r in support.requires if not r.holds(hyper)]
            if failing:
                problems.append(f"{knob}={value} is not expressible here: {'; '.join(failing)}")
            for raw_keyword, setting in support.kwargs.items():
                keyword = self.maps.get(raw_keyword, raw_keyword)
                from_hyper = isinstance(setting, str) and setting.startswith("$")
                actual = hyper[setting[1:]] if from_hyper else setting
                if self.info.accepts(keyword):
                    put_keyword(kwargs, keyword, actual)
                elif from_hyper and actual != self.spec.hyper[setting[1:]].default:
                    problems.append(f"the target takes no {keyword!r} argument, needed for {setting[1:]} = {actual:g}")
                else:
                    notes.append(f"the target takes no {keyword!r} argument; it is assumed to implement {knob}={value} itself")
        return Configuration(kwargs, lr_keyword, float(hyper["lr"]), tuple(problems), tuple(notes), passed)


# --------------------------------------------------------------------------- import


def _import(ref: str, cwd: str | None) -> Any:
    if ":" not in ref:
        raise TargetUsageError(f"target {ref!r} must be MODULE:ATTRIBUTE, e.g. torch.optim:AdamW or optax:adam")
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise TargetUsageError(f"target {ref!r} must be MODULE:ATTRIBUTE, e.g. torch.optim:AdamW or optax:adam")
    directory = cwd or os.getcwd()
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError and anything the module raises while importing
        raise TargetUsageError(f"cannot import module {module_name!r} of target {ref!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise TargetUsageError(f"module {module_name!r} has no attribute {attribute!r} (target {ref!r})")
        obj = getattr(obj, part)
    return obj


def load(ref: str | Any, cwd: str | None = None) -> Any:
    """The target object: imported from ``module:attribute``, or ``ref`` itself if not a string."""
    return _import(ref, cwd) if isinstance(ref, str) else ref


def _torch_optimizer_class(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)


def describe(ref: str | Any, cwd: str | None = None) -> TargetInfo:
    """Import the target and say what kind it is and which keyword arguments it takes."""
    obj = load(ref, cwd)
    shown = ref if isinstance(ref, str) else f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
    if _torch_optimizer_class(obj):
        kind, signature_of = "torch", obj.__init__
        # torch.optim.Optimizer.__init__ imports torch._dynamo on first use (seconds); do it
        # here, under the start-up time limit, rather than inside the first case's limit.
        importlib.import_module("torch._dynamo")
    elif isinstance(obj, type) and obj.__module__.split(".")[0] == "torch":
        raise TargetUsageError(f"target {shown!r} is a torch class but not a torch.optim.Optimizer subclass")
    elif callable(obj) and not isinstance(obj, type):
        kind, signature_of = "optax", obj
    else:
        raise TargetUsageError(
            f"target {shown!r} is neither a torch.optim.Optimizer subclass "
            "nor a function returning an optax GradientTransformation"
        )
    accepted: tuple[str, ...] | None
    defaults: dict[str, str] = {}
    try:
        signature = inspect.signature(signature_of)
    except (TypeError, ValueError):
        accepted = None
    else:
        parameters = [p for p in signature.parameters.values() if p.name not in ("self", "params")]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            accepted = None
        else:
            accepted = tuple(
                p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            )
        defaults = {p.name: repr(p.default) for p in parameters if p.default is not inspect.Parameter.empty}
    package = (getattr(obj, "__module__", None) or "").split(".")[0]
    version = getattr(sys.modules.get(package), "__version__", None)
    return TargetInfo(shown, kind, getattr(obj, "__qualname__", repr(obj)), accepted, defaults, package, version)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Group:
    """A parameter group: which tensors, with which keyword arguments and base lr."""

    indices: tuple[int, ...]
    kwargs: Mapping[str, Any]
    lr_keyword: str | None
    base_lr: float


@dataclass(frozen=True)
class Scenario:
    """Everything one run of a target needs, as plain picklable data.

    ``grads[i]`` has shape ``(steps, *shape_i)``; ``present[i][t-1]`` False means tensor i
    has no gradient at step t (``param.grad = None``; torch only). With
    ``checkpoint_after = k`` the run saves ``state_dict()`` after step k (through
    ``torch.save``), builds a new optimizer on copies of the parameters, loads the state
    and continues (torch only).
    """

    kind: str
    groups: tuple[Group, ...]
    params: tuple[np.ndarray, ...]
    grads: tuple[np.ndarray, ...]
    lr_multipliers: np.ndarray
    dtype: str
    record: tuple[int, ...]
    #: spec slot -> (library state key, sign)
    slots: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    present: tuple[np.ndarray, ...] | None = None
    checkpoint_after: int | None = None

    @property
    def steps(self) -> int:
        return int(self.lr_multipliers.shape[0])


def run_scenario(ref: str | Any, cwd: str | None, scenario: Scenario) -> Trajectory:
    """Run the target on the scenario; problems of the target raise :class:`TargetError`."""
    obj = load(ref, cwd)
    if scenario.kind == "torch":
        return _run_torch(obj, scenario)
    return _run_optax(obj, scenario)


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_torch(cls: Any, sc: Scenario) -> Trajectory:
    import torch

    torch_dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[sc.dtype]

    def build(values: Sequence[Any]) -> tuple[list[Any], Any]:
        params = [torch.tensor(np.asarray(v), dtype=torch_dtype) for v in values]
        first = sc.groups[0]
        if len(sc.groups) == 1:
            arg: Any = [params[i] for i in first.indices]
        else:
            arg = [{"params": [params[i] for i in g.indices], **g.kwargs} for g in sc.groups]
        try:
            return params, cls(arg, **first.kwargs)
        except Exception as exc:
            raise TargetError(f"constructing the optimizer raised {_describe_exc(exc)}") from None

    params, optimizer = build(sc.params)
    owner = {i: g for g in sc.groups for i in g.indices}
    trajectory: Trajectory = {}
    wanted = set(sc.record)
    for t in range(1, sc.steps + 1):
        for group, spec_group in zip(optimizer.param_groups, sc.groups):
            if spec_group.lr_keyword is not None:
                group[spec_group.lr_keyword] = spec_group.base_lr * float(sc.lr_multipliers[t - 1])
        for i, param in enumerate(params):
            if i not in owner:
                continue
            if sc.present is not None and not bool(sc.present[i][t - 1]):
                param.grad = None
            else:
                param.grad = torch.tensor(sc.grads[i][t - 1], dtype=torch_dtype)
        try:
            optimizer.step()
        except Exception as exc:
            raise TargetError(f"step {t} raised {_describe_exc(exc)}") from None
        for i, param in enumerate(params):
            if param.dtype != torch_dtype or tuple(param.shape) != tuple(np.shape(sc.params[i])):
                raise TargetError(
                    f"after step {t}, parameter {i} has dtype {param.dtype} and shape {list(param.shape)}; "
                    f"expected {torch_dtype} and {list(np.shape(sc.params[i]))}"
                )
        if t in wanted:
            trajectory[t] = [_torch_snapshot(optimizer, p, sc.slots) for p in params]
        if sc.checkpoint_after == t:
            buffer = io.BytesIO()
            try:
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
            except Exception as exc:
                raise TargetError(f"state_dict() after step {t} cannot be saved and loaded: {_describe_exc(exc)}") from None
            values = [p.detach().clone() for p in params]
            params, optimizer = build([v.to(torch.float64).numpy() for v in values])
            with torch.no_grad():
                for new, old in zip(params, values):
                    new.copy_(old)
            try:
                optimizer.load_state_dict(saved)
            except Exception as exc:
                raise TargetError(f"load_state_dict() after step {t} raised {_describe_exc(exc)}") from None
    return trajectory


def _torch_snapshot(optimizer: Any, param: Any, slots: Mapping[str, tuple[str, float]]) -> dict[str, np.ndarray]:
    import torch

    values = {"theta": param.detach().to(torch.float64).numpy().copy()}
    state = optimizer.state.get(param, {})
    for slot, (key, sign) in slots.items():
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            values[slot] = sign * value.detach().to(torch.float64).numpy().copy()
    return values


def _run_optax(factory: Any, sc: Scenario) -> Trajectory:
    import jax

    with jax.enable_x64(sc.dtype == "float64"):
        return _run_optax_x64(factory, sc)


def _run_optax_x64(factory: Any, sc: Scenario) -> Trajectory:
    import jax
    import jax.numpy as jnp
    import optax

    if len(sc.groups) != 1:
        raise TargetError("optax targets take one group of parameters")
    group = sc.groups[0]
    jdtype = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}[sc.dtype]
    kwargs = dict(group.kwargs)
    if group.lr_keyword is not None and not np.all(sc.lr_multipliers == 1.0):
        values = jnp.asarray(group.base_lr * sc.lr_multipliers, dtype=jnp.float64 if sc.dtype == "float64" else jnp.float32)
        last = sc.steps - 1
        kwargs[group.lr_keyword] = lambda count: values[jnp.minimum(count, last)]
    try:
        tx = factory(**kwargs)
    except Exception as exc:
        raise TargetError(f"calling the factory raised {_describe_exc(exc)}") from None
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TargetError(f"the factory returned {type(tx).__name__}, not an optax GradientTransformation (init/update)")
    indices = group.indices
    params = [jnp.asarray(sc.params[i], dtype=jdtype) for i in indices]
    try:
        state = tx.init(params)
    except Exception as exc:
        raise TargetError(f"init raised {_describe_exc(exc)}") from None

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, new_state = tx.update(grads, state, params)
        return updates, optax.apply_updates(params, updates), new_state

    trajectory: Trajectory = {}
    wanted = set(sc.record)
    for t in range(1, sc.steps + 1):
        grads = [jnp.asarray(sc.grads[i][t - 1], dtype=jdtype) for i in indices]
        try:
            updates, params, state = step(params, state, grads)
        except Exception as exc:
            raise TargetError(f"step {t} raised {_describe_exc(exc)}") from None
        leaves = jax.tree_util.tree_leaves(updates)
        if len(leaves) != len(indices):
            raise TargetError(f"step {t} returned {len(leaves)} update arrays for {len(indices)} parameters")
        for position, (update, i) in enumerate(zip(leaves, indices)):
            shape = tuple(np.shape(sc.params[i]))
            if tuple(update.shape) != shape:
                raise TargetError(
                    f"step {t}: the update of parameter {position} has shape {list(update.shape)}, expected {list(shape)}"
                )
            if sc.dtype != "bfloat16" and update.dtype != jdtype:
                raise TargetError(
                    f"step {t}: the update of parameter {position} has dtype {update.dtype}, expected {jdtype.__name__}"
                )
        if t in wanted:
            snapshot = [{"theta": np.asarray(p, dtype=np.float64)} for p in params]
            for slot, (key, sign) in sc.slots.items():
                value = optax_jax.find_state_field(state, key)
                if isinstance(value, (list, tuple)) and len(value) == len(indices):
                    for position, item in enumerate(value):
                        if np.shape(item) == np.shape(snapshot[position]["theta"]):
                            snapshot[position][slot] = sign * np.asarray(item, dtype=np.float64)
            trajectory[t] = snapshot
    return trajectory


def state_slots(kind: str, spec: Spec) -> dict[str, tuple[str, float]]:
    """Spec slot -> (state key, sign) by the library naming of this kind, when the rule is bound."""
    binding = BINDINGS[kind].get(spec.name)
    if binding is None:
        return {}
    return {slot: (where.key, where.sign) for slot, where in binding.state.items()}


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
