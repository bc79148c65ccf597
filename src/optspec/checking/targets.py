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

import difflib
import importlib
import inspect
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from optspec.impls import optax_jax, torch_optim
from optspec.impls.base import Binding, Support
from optspec.reference import Quadratic, Trajectory
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
    #: the installed distribution that provides ``package`` (None for a local module)
    distribution: str | None = None
    #: ``Qualname(signature)`` for messages, truncated
    signature: str = ""
    #: the module that defines the target (``torch.optim.nadam`` for timm's re-exported NAdam)
    module: str = ""

    @property
    def origin(self) -> str:
        """``module:qualname`` where the target is defined: what the deviation registry matches
        (a library's class re-exported by another package keeps the library's deviations)."""
        return f"{self.module}:{self.qualname}" if self.module else self.ref

    def accepts(self, keyword: str) -> bool:
        return self.accepted is None or keyword_base(keyword) in self.accepted

    def accepts_explicitly(self, keyword: str) -> bool:
        """The signature names ``keyword`` (a ``**kwargs`` catch-all does not count)."""
        return self.accepted is not None and keyword_base(keyword) in self.accepted

    def advice(self, hyper: str, keyword: str) -> str:
        """The ``--map`` that would pass ``hyper``: a close keyword of the signature, else the list of them."""
        if self.accepted is None:
            return f"use --map {hyper}=KEYWORD"
        close = difflib.get_close_matches(keyword_base(keyword), self.accepted, n=1, cutoff=0.5)
        if close:
            return f"use --map {hyper}={close[0]} if that is its keyword"
        return f"use --map {hyper}=KEYWORD with one of {', '.join(self.accepted) or '(none)'}"


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
    #: keyword arguments of the inner optimizer of a wrapper (``--inner``)
    inner_kwargs: Mapping[str, Any] = field(default_factory=dict)


class Naming:
    """Turns spec hyperparameters and knob values into the target's keyword arguments.

    ``fixed`` (``--kwarg``) is passed in every configuration. Several spec hyperparameters
    mapped to one keyword (``--map eps_root=eps``) are *tied*: a configuration in which the
    hyperparameters the variant reads differ cannot be expressed. With ``inner_info`` (a
    composite spec checked through ``--inner``), ``lr`` and the inner rule's prefixed
    hyperparameters (``sgd_momentum`` -> ``momentum``) go to the inner optimizer.
    """

    def __init__(
        self,
        spec: Spec,
        info: TargetInfo,
        maps: Mapping[str, str],
        fixed: Mapping[str, Any] | None = None,
        inner_info: TargetInfo | None = None,
    ) -> None:
        self.spec = spec
        self.info = info
        self.maps = dict(maps)
        self.fixed = dict(fixed or {})
        self.inner_info = inner_info
        self.binding = BINDINGS[info.kind].get(spec.name)
        self._reads: dict[tuple[tuple[str, str], ...], frozenset[str]] = {}

    def inner_rule(self, variant: Mapping[str, str]) -> str | None:
        """The inner rule of a composite spec under ``variant`` (None for a plain rule)."""
        return variant.get("inner") if "inner" in self.spec.knobs else None

    def owner(self, hyper: str, variant: Mapping[str, str]) -> TargetInfo:
        """Who takes ``hyper``: the inner optimizer (lr and its prefixed hyperparameters) or the target."""
        inner = self.inner_rule(variant)
        if self.inner_info is not None and inner is not None and (hyper == "lr" or hyper.startswith(f"{inner}_")):
            return self.inner_info
        return self.info

    def keyword(self, hyper: str, variant: Mapping[str, str] | None = None) -> str:
        if hyper in self.maps:
            return self.maps[hyper]
        inner = self.inner_rule(variant or self.spec.default_variant())
        if inner is not None and hyper.startswith(f"{inner}_"):
            hyper = hyper[len(inner) + 1 :]
        return NAMING[self.info.kind].get(hyper, hyper)

    def accepts(self, hyper: str, variant: Mapping[str, str] | None = None) -> bool:
        """Whether the optimizer that takes ``hyper`` accepts its keyword."""
        variant = variant or self.spec.default_variant()
        return self.owner(hyper, variant).accepts(self.keyword(hyper, variant))

    def ties(self, variant: Mapping[str, str] | None = None) -> dict[str, list[str]]:
        """keyword -> the spec hyperparameters mapped to it, where there are several."""
        groups: dict[str, list[str]] = {}
        for name in self.spec.hyper:
            groups.setdefault(self.keyword(name, variant), []).append(name)
        return {k: v for k, v in groups.items() if len(v) > 1}

    def reads(self, variant: Mapping[str, str]) -> frozenset[str]:
        """The hyperparameters the resolved variant reads (in its step or its state initialisers)."""
        key = tuple(sorted(variant.items()))
        if key not in self._reads:
            try:
                rule = self.spec.resolve(dict(variant))
            except Exception:  # an unresolvable variant reads everything (its own error is reported elsewhere)
                self._reads[key] = frozenset(self.spec.hyper)
            else:
                self._reads[key] = frozenset(name for name in self.spec.hyper if name in rule.reads)
        return self._reads[key]

    def knob_support(self, knob: str, value: str) -> Support | None:
        if self.binding is not None:
            return self.binding.variants.get(knob, {}).get(value)
        if knob == "maximize" and self.info.kind == "torch":
            return Support({"maximize": value == "on"})
        return None

    def configure(self, hyper: Mapping[str, float], variant: Mapping[str, str]) -> Configuration:
        kwargs: dict[str, Any] = dict(self.fixed)
        inner_kwargs: dict[str, Any] = {}
        problems: list[str] = []
        notes: list[str] = []
        passed: dict[str, str] = {}
        lr_keyword: str | None = None
        reads = self.reads(variant)
        by_keyword: dict[str, list[str]] = {}
        for name in hyper:
            by_keyword.setdefault(self.keyword(name, variant), []).append(name)
        for keyword, names in by_keyword.items():
            read = [n for n in names if n in reads]
            if len({hyper[n] for n in read}) > 1:
                values = ", ".join(f"{n} = {hyper[n]:g}" for n in read)
                problems.append(
                    f"{' and '.join(read)} are tied to one keyword {keyword!r} (--map); this case needs them to differ ({values})"
                )
                continue
            if not read and keyword in self.fixed:
                continue  # --kwarg fixes a keyword whose hyperparameter this variant does not read
            name = (read or names)[0]
            value = hyper[name]
            owner = self.owner(name, variant)
            who = "the inner optimizer" if owner is self.inner_info else "the target"
            if owner.accepts(keyword):
                put_keyword(inner_kwargs if owner is self.inner_info else kwargs, keyword, value)
                for n in names:
                    passed[n] = keyword
                if "lr" in names:
                    lr_keyword = keyword
            elif not read:
                continue  # the variant does not read it: nothing to pass
            elif value == self.spec.hyper[name].default:
                notes.append(
                    f"{who} takes no {keyword!r} argument (spec hyperparameter {name}); "
                    f"cases with {name} = {value:g} (the spec default) run without it"
                )
            else:
                inner = self.inner_rule(variant)
                if self.inner_info is None and inner is not None and (name == "lr" or name.startswith(f"{inner}_")):
                    advice = "it is a hyperparameter of the inner optimizer: use --inner MODULE:ATTR"
                else:
                    advice = owner.advice(name, keyword)
                problems.append(f"{who} takes no {keyword!r} argument, needed for {name} = {value:g} ({advice})")
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
        return Configuration(kwargs, lr_keyword, float(hyper["lr"]), tuple(problems), tuple(notes), passed, inner_kwargs)

    def knob_keywords(self, knob: str, value: str) -> dict[str, Any] | None:
        """The target keywords (after --map) and settings that select ``knob=value``, when it is a flag of the target.

        A flag is a knob value the binding selects with keyword arguments that the target's
        signature names explicitly; None otherwise.
        """
        support = self.knob_support(knob, value)
        if support is None or not support.kwargs:
            return None
        keywords = {self.maps.get(k, k): v for k, v in support.kwargs.items()}
        if not all(self.info.accepts_explicitly(k) for k in keywords):
            return None
        return keywords


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
    qualname = getattr(obj, "__qualname__", repr(obj))
    try:
        shown_signature = f"{qualname}{inspect.signature(signature_of)}"
    except (TypeError, ValueError):
        shown_signature = f"{qualname}(...)"
    if len(shown_signature) > 300:
        shown_signature = shown_signature[:297] + "..."
    package = (getattr(obj, "__module__", None) or "").split(".")[0]
    distribution = _distribution(package)
    version: str | None = None
    if distribution is not None:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = None
    if version is None:
        version = getattr(sys.modules.get(package), "__version__", None)
    module = getattr(obj, "__module__", None) or ""
    return TargetInfo(shown, kind, qualname, accepted, defaults, package, version, distribution, shown_signature, module)


def _distribution(package: str) -> str | None:
    """The installed distribution providing the top-level ``package`` (``torch`` -> ``torch``), if any."""
    try:
        found = metadata.packages_distributions().get(package)
    except Exception:  # broken metadata of some unrelated distribution
        return None
    return sorted(found)[0] if found else None


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Group:
    """A parameter group: which tensors, with which keyword arguments and base lr."""

    indices: tuple[int, ...]
    kwargs: Mapping[str, Any]
    lr_keyword: str | None
    base_lr: float
    #: keyword arguments of the inner optimizer (a wrapper checked with ``--inner``)
    inner_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """Everything one run of a target needs, as plain picklable data.

    ``grads[i]`` has shape ``(steps, *shape_i)``; ``present[i][t-1]`` False means tensor i
    has no gradient at step t (``param.grad = None``; torch only). With
    ``checkpoint_after = k`` the run saves ``state_dict()`` after step k (through
    ``torch.save``), builds a new optimizer on copies of the parameters, loads the state
    and continues (torch only). With ``inner`` (torch wrappers, ``--inner``) the optimizer is
    ``Target(Inner(params_or_groups, **inner_kwargs), **kwargs)``. With ``check_grads`` a
    step that changes ``param.grad`` raises :class:`TargetError`; with ``all_state`` every
    floating-point state tensor of a parameter's shape is recorded as ``state:KEY``.
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
    inner: str | Any | None = None
    check_grads: bool = False
    all_state: bool = False
    #: a loss whose gradient is taken at the parameters (``grads`` is then its per-step term n_t)
    quadratic: Quadratic | None = None

    @property
    def steps(self) -> int:
        return int(self.lr_multipliers.shape[0])


def run_scenario(ref: str | Any, cwd: str | None, scenario: Scenario) -> Trajectory:
    """Run the target on the scenario; problems of the target raise :class:`TargetError`."""
    obj = load(ref, cwd)
    if scenario.kind == "torch":
        inner = load(scenario.inner, cwd) if scenario.inner is not None else None
        return _run_torch(obj, scenario, inner)
    return _run_optax(obj, scenario)


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_torch(cls: Any, sc: Scenario, inner: Any = None) -> Trajectory:
    import torch

    torch_dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[sc.dtype]

    def build(values: Sequence[Any]) -> tuple[list[Any], Any]:
        params = [torch.tensor(np.asarray(v), dtype=torch_dtype) for v in values]
        first = sc.groups[0]
        own = (lambda g: g.inner_kwargs) if inner is not None else (lambda g: g.kwargs)
        if len(sc.groups) == 1:
            arg: Any = [params[i] for i in first.indices]
        else:
            arg = [{"params": [params[i] for i in g.indices], **own(g)} for g in sc.groups]
        if inner is not None:
            try:
                arg = inner(arg, **first.inner_kwargs)
            except Exception as exc:
                raise TargetError(f"constructing the inner optimizer raised {_describe_exc(exc)}") from None
        try:
            return params, cls(arg, **first.kwargs)
        except Exception as exc:
            raise TargetError(f"constructing the optimizer raised {_describe_exc(exc)}") from None

    params, optimizer = build(sc.params)
    _train_mode(optimizer)
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
                param.grad = _torch_gradient(sc, i, t, param, torch_dtype)
        given = {i: p.grad.clone() for i, p in enumerate(params) if sc.check_grads and p.grad is not None}
        try:
            optimizer.step()
        except Exception as exc:
            raise TargetError(f"step {t} raised {_describe_exc(exc)}") from None
        for i, before in given.items():
            after = params[i].grad
            same = (
                after is not None
                and after.shape == before.shape
                and bool(((after == before) | (after.isnan() & before.isnan())).all())
            )
            if not same:
                change = "set it to None" if after is None else f"changed it by up to {float((after - before).abs().max()):.3g}"
                raise TargetError(f"step {t} modified p.grad of parameter {i} ({list(before.shape)}): it {change}")
        for i, param in enumerate(params):
            if param.dtype != torch_dtype or tuple(param.shape) != tuple(np.shape(sc.params[i])):
                raise TargetError(
                    f"after step {t}, parameter {i} has dtype {param.dtype} and shape {list(param.shape)}; "
                    f"expected {torch_dtype} and {list(np.shape(sc.params[i]))}"
                )
        if t in wanted:
            trajectory[t] = [_torch_snapshot(optimizer, p, sc.slots, sc.all_state) for p in params]
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
            _train_mode(optimizer)
    return trajectory


def _train_mode(optimizer: Any) -> None:
    """``optimizer.train()`` when the optimizer has one: Schedule-Free optimizers refuse to step in
    eval mode (schedulefree/sgd_schedulefree.py:111-114) and keep y as the parameters only in
    train mode (:90-101). A training loop calls it before its first step, and so does the check."""
    train = getattr(optimizer, "train", None)
    if callable(train):
        try:
            train()
        except Exception as exc:
            raise TargetError(f"optimizer.train() raised {_describe_exc(exc)}") from None


def _torch_gradient(sc: Scenario, index: int, t: int, param: Any, dtype: Any) -> Any:
    """The gradient of step t: the stored one, or the quadratic loss's at the parameter as it is now
    (h * (p - c) + n_t in the parameter's dtype)."""
    import torch

    noise = torch.tensor(sc.grads[index][t - 1], dtype=dtype)
    if sc.quadratic is None:
        return noise
    h = torch.tensor(sc.quadratic.curvature[index], dtype=dtype)
    c = torch.tensor(sc.quadratic.center[index], dtype=dtype)
    return h * (param.detach() - c) + noise


def _torch_snapshot(
    optimizer: Any, param: Any, slots: Mapping[str, tuple[str, float]], all_state: bool = False
) -> dict[str, np.ndarray]:
    import torch

    values = {"theta": param.detach().to(torch.float64).numpy().copy()}
    state: dict[str, Any] = {}
    inner_names = ("optimizer", "base_optimizer", "_base_optimizer")
    base = next((getattr(optimizer, a) for a in inner_names if hasattr(optimizer, a)), None)
    for holder in (base, optimizer):  # a wrapper's own state over its inner optimizer's
        if holder is not None and hasattr(holder, "state"):
            state.update(holder.state.get(param, {}))
    for slot, (key, sign) in slots.items():
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            values[slot] = sign * value.detach().to(torch.float64).numpy().copy()
    if all_state:
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == param.shape:
                values[f"state:{key}"] = value.detach().to(torch.float64).numpy().copy()
    return values


def _run_optax(factory: Any, sc: Scenario) -> Trajectory:
    with optax_jax.x64(sc.dtype == "float64"):
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
        if sc.quadratic is not None:
            loss = sc.quadratic
            grads = [
                jnp.asarray(loss.curvature[i], dtype=jdtype) * (p - jnp.asarray(loss.center[i], dtype=jdtype)) + g
                for i, p, g in zip(indices, params, grads)
            ]
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


def state_slots(kind: str, spec: Spec, inner: str | None = None) -> dict[str, tuple[str, float]]:
    """Spec slot -> (state key, sign) by the library naming of this kind, when the rule is bound.

    For a composite spec checked through ``--inner``, the inner rule's slots (prefixed,
    ``sgd_b`` -> ``momentum_buffer``) by the inner rule's binding.
    """
    binding = BINDINGS[kind].get(spec.name)
    if binding is not None:
        return {slot: (where.key, where.sign) for slot, where in binding.state.items()}
    inner_binding = BINDINGS[kind].get(inner) if inner is not None else None
    if inner_binding is None:
        return {}
    return {f"{inner}_{slot}": (where.key, where.sign) for slot, where in inner_binding.state.items()}


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
