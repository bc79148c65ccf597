"""The adapter protocol and the declarative binding of a spec to a library optimizer.

An implementation under test is an :class:`Implementation`: it says whether its framework
is installed, which rules it binds, how it would run a golden case (a :class:`Plan`) and
runs it. Each binding is data (:class:`Binding`): which spec hyperparameter becomes which
keyword argument, which keyword arguments select each variant value, which requirements
(in the spec expression language, over hyperparameters) a configuration must meet, and
which library state key holds each spec state slot. A binding also says which library
releases have each keyword it may pass and each code path (:class:`Keyword`, :class:`Since`):
a keyword at its library default is never passed (so a release that lacks it still runs the
case), and a keyword value or path the installed release lacks makes the case a skip such as
"not in torch 2.0.1", never an error.

When a binding cannot express a variant value, the known-deviation registry
(``deviations.toml``) may say what the library deliberately does instead; the case is
then checked against that variant's golden values and reported as a known deviation.
Otherwise the case is skipped with the reason.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from typing import Any, Protocol

import jsonschema
import numpy as np

from optspec.errors import AdapterError, ExprError, SpecError
from optspec.expr import parse_expr
from optspec.reference import FLOAT64, CaseInputs, Trajectory, _Compiler
from optspec.spec import Spec


@dataclass(frozen=True)
class Requirement:
    """A condition over hyperparameters, e.g. ``dampening == 0``, and why it is needed."""

    condition: str
    reason: str

    def holds(self, hyper: Mapping[str, float]) -> bool:
        try:
            expr = parse_expr(self.condition)
        except ExprError as exc:
            raise SpecError(f"adapter requirement {self.condition!r}", exc.message, exc.column) from None
        fn, _ = _Compiler(dict.fromkeys(hyper, "scalar"), FLOAT64).compile(expr)
        return bool(fn({k: np.float64(v) for k, v in hyper.items()}))


@dataclass(frozen=True)
class Support:
    """How a binding selects one variant value: extra kwargs and requirements."""

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class Since:
    """The first library release that has a keyword or code path, and the released source that shows it."""

    version: str
    #: released source, ``file:line`` at that release (and the change, where known)
    evidence: str


_NO_DEFAULT = object()


@dataclass(frozen=True)
class Keyword:
    """A keyword argument a binding may pass: its library default and the release that added it.

    A value equal to ``default`` is never passed (the library's default behaviour is what the
    case asks for, in every release); any other value needs ``since`` (None: every supported release).
    """

    default: Any = _NO_DEFAULT
    since: Since | None = None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> (2, 13, 0), ``"0.4.31"`` -> (0, 4, 31)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        raise AdapterError(f"cannot read a release number from the version {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def public_version(version: str) -> str:
    """The version without its local label: ``"2.13.0+cpu"`` -> ``"2.13.0"``."""
    return version.split("+", 1)[0]


@cache
def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``torch``, ``optax``), or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def lacks(library: str, since: Since | None) -> str | None:
    """``"not in torch 2.0.1"`` when the installed ``library`` is older than ``since``, else None."""
    if since is None:
        return None
    version = installed_version(library)
    if version is None or release(version) >= release(since.version):
        return None
    return f"not in {library} {public_version(version)} (since {library} {since.version})"


@dataclass(frozen=True)
class Slot:
    """Where a spec state slot lives in the library's state, with a sign convention."""

    key: str
    sign: float = 1.0
    #: a rule-scope slot (``scope = "rule"``): one scalar in the library's state, compared for every tensor
    rule: bool = False


@dataclass(frozen=True)
class Binding:
    rule: str
    target: str
    #: spec hyperparameter -> keyword (``"betas[0]"`` fills a tuple argument)
    hyper: Mapping[str, str]
    #: knob -> value -> Support; a value missing here cannot be expressed
    variants: Mapping[str, Mapping[str, Support]]
    state: Mapping[str, Slot]
    requires: tuple[Requirement, ...] = ()
    #: the distribution whose installed version gates ``keywords`` and ``paths`` (``torch``, ``optax``)
    library: str = ""
    #: keyword -> its default and the release that added it (see :class:`Keyword`)
    keywords: Mapping[str, Keyword] = field(default_factory=dict)
    #: code path (``fused``) -> the release from which the target has it on the CPU
    paths: Mapping[str, Since] = field(default_factory=dict)

    def kwargs(self, hyper: Mapping[str, float], variant: Mapping[str, str]) -> dict[str, Any]:
        """The keyword arguments for this configuration, without those at their declared default."""
        out = self.all_kwargs(hyper, variant)
        return {k: v for k, v in out.items() if k not in self.keywords or not _same(v, self.keywords[k].default)}

    def missing(self, kwargs: Mapping[str, Any], path: str | None = None) -> str | None:
        """Why the installed library cannot run these keyword arguments (or this path), else None."""
        if path is not None and path in self.paths:
            reason = lacks(self.library, self.paths[path])
            if reason is not None:
                return f"{self.target}: the {path} path is {reason}"
        for keyword, value in kwargs.items():
            declared = self.keywords.get(keyword)
            reason = lacks(self.library, declared.since) if declared is not None else None
            if reason is not None:
                return f"{self.target}({keyword}={value!r}) is {reason}"
        return None

    def all_kwargs(self, hyper: Mapping[str, float], variant: Mapping[str, str]) -> dict[str, Any]:
        """Every keyword argument the configuration sets, defaults included."""
        out: dict[str, Any] = {}
        for name, keyword in self.hyper.items():
            _put(out, keyword, hyper[name])
        for knob, value in variant.items():
            for keyword, setting in self.variants[knob][value].kwargs.items():
                _put(out, keyword, hyper[setting[1:]] if isinstance(setting, str) and setting.startswith("$") else setting)
        return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _same(value: Any, default: Any) -> bool:
    return default is not _NO_DEFAULT and type(value) is type(default) and value == default


def _put(out: dict[str, Any], keyword: str, value: Any) -> None:
    if keyword.endswith("]"):
        name, index = keyword[:-1].split("[")
        slots = out.setdefault(name, [None, None])
        slots.extend([None] * (int(index) + 1 - len(slots)))  # three-element tuples (Muon's NS coefficients)
        slots[int(index)] = value
    else:
        out[keyword] = value


@dataclass(frozen=True)
class Deviation:
    """A deliberate library choice, from ``deviations.toml`` (a library's bugs are in ``defects.toml``)."""

    id: str
    kind: str  # "variant", "precision" or "storage"
    implementations: tuple[str, ...]
    reason: str
    upstream: tuple[str, ...]
    rule: str | None = None
    knob: str | None = None
    asked: str | None = None
    implements: str | None = None
    dtype: str | None = None
    profile: str | None = None
    #: storage: state slots the library holds in binary32 whatever the parameter dtype
    slots: tuple[str, ...] = ()

    def applies_to(self, implementation: str) -> bool:
        return any(fnmatch.fnmatchcase(implementation, pattern) for pattern in self.implementations)

    @property
    def summary(self) -> str:
        if self.kind == "variant":
            return f"{self.knob}={self.implements} instead of {self.knob}={self.asked}"
        if self.kind == "storage":
            return f"state {', '.join(self.slots)} stored in float32 in {self.dtype} runs"
        return f"{self.dtype} runs with float32 step scalars (profile {self.profile})"


@dataclass(frozen=True)
class Plan:
    """How one golden case will be run, or why it will not."""

    skip: str | None = None
    binding: Binding | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: the variant whose golden values the run is compared with
    compared_variant: Mapping[str, str] = field(default_factory=dict)
    #: the library's own variant settings (may differ from compared_variant only by deviations)
    run_variant: Mapping[str, str] = field(default_factory=dict)
    deviations: tuple[Deviation, ...] = ()


class Implementation(Protocol):
    name: str
    framework: str
    dtypes: tuple[str, ...]

    def unavailable(self) -> str | None:
        """None when the framework is importable, else the reason (e.g. 'torch is not installed')."""

    def binding(self, rule: str) -> Binding | None: ...

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        """Run the plan; the trajectory holds ``theta`` and every slot the library exposes."""


def plan_case(impl: Implementation, spec: Spec, variant: Mapping[str, str], hyper: Mapping[str, float], dtype: str) -> Plan:
    """Decide how ``impl`` runs a golden case of ``spec`` with this variant and hyperparameters."""
    reason = impl.unavailable()
    if reason is not None:
        return Plan(skip=reason)
    binding = impl.binding(spec.name)
    if binding is None:
        return Plan(skip=f"{impl.name} has no binding for rule {spec.name!r}")
    # a code path of the library (torch's ``fused``) that the installed release lacks
    missing = binding.missing({}, getattr(impl, "path", None))
    if missing is not None:
        return Plan(skip=missing)
    if dtype not in impl.dtypes:
        return Plan(skip=f"{impl.name} does not run {dtype}")
    for requirement in binding.requires:
        if not requirement.holds(hyper):
            return Plan(skip=f"{binding.target}: {requirement.reason}")
    run_variant = dict(variant)
    compared = dict(variant)
    used: list[Deviation] = []
    for knob, value in variant.items():
        supported = binding.variants.get(knob, {})
        support = supported.get(value)
        if support is not None and all(r.holds(hyper) for r in support.requires):
            continue
        deviation = find_variant_deviation(spec.name, impl.name, knob, value)
        if deviation is None or deviation.implements not in supported:
            why = (
                "; ".join(r.reason for r in support.requires if not r.holds(hyper))
                if support is not None
                else f"cannot express {knob}={value}"
            )
            return Plan(skip=f"{binding.target}: {why}")
        run_variant[knob] = str(deviation.implements)
        compared[knob] = str(deviation.implements)
        used.append(deviation)
        fallback = supported[str(deviation.implements)]
        for requirement in fallback.requires:
            if not requirement.holds(hyper):
                return Plan(skip=f"{binding.target}: {requirement.reason}")
    kwargs = binding.kwargs(hyper, run_variant)
    missing = binding.missing(kwargs)
    if missing is not None:
        return Plan(skip=missing)
    return Plan(
        binding=binding,
        kwargs=kwargs,
        compared_variant=compared,
        run_variant=run_variant,
        deviations=tuple(used),
    )


# --------------------------------------------------------------------------- registry

_REGISTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deviation": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "rule", "implementations", "knob", "asked", "implements", "reason", "upstream"],
                "properties": {
                    "id": {"type": "string"},
                    "rule": {"type": "string"},
                    "implementations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "knob": {"type": "string"},
                    "asked": {"type": "string"},
                    "implements": {"type": "string"},
                    "reason": {"type": "string", "minLength": 20},
                    "upstream": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
            },
        },
        "precision": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "implementations", "dtype", "profile", "reason", "upstream"],
                "properties": {
                    "id": {"type": "string"},
                    "implementations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "dtype": {"enum": ["float32", "float64"]},
                    "profile": {"enum": ["float32_scalar32", "float64_scalar32"]},
                    "reason": {"type": "string", "minLength": 20},
                    "upstream": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
            },
        },
        "storage": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "rule", "implementations", "dtype", "slots", "reason", "upstream"],
                "properties": {
                    "id": {"type": "string"},
                    "rule": {"type": "string"},
                    "implementations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "dtype": {"enum": ["float64"]},
                    "slots": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "reason": {"type": "string", "minLength": 20},
                    "upstream": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
            },
        },
        # Learning-rate schedule deviations: validated and read by optspec.impls.schedule_base.
        "schedule": {"type": "array", "items": {"type": "object"}},
    },
}


@cache
def deviations() -> tuple[Deviation, ...]:
    """The known-deviation registry, validated; a malformed file is an AdapterError."""
    shown = "impls/deviations.toml"
    try:
        text = resources.files("optspec.impls").joinpath("deviations.toml").read_text()
    except OSError as exc:
        raise AdapterError(f"{shown}: cannot read the known-deviation registry ({exc})") from None
    return parse_registry(text, shown)


def load_registry_table(text: str, shown: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A registry file's TOML, validated against ``schema``; a problem is a one-line AdapterError naming ``shown``."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AdapterError(f"{shown}: not valid TOML ({exc})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(table))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise AdapterError(f"{shown}: at {where}: {error.message}")
    return table


def parse_registry(text: str, shown: str) -> tuple[Deviation, ...]:
    """Parse and validate registry text; every problem is a one-line AdapterError naming ``shown``."""
    table = load_registry_table(text, shown, _REGISTRY_SCHEMA)
    # The schema fixes each kind's keys; lists become tuples, the rest maps onto Deviation's fields.
    kinds = {"deviation": "variant", "precision": "precision", "storage": "storage"}
    out = [
        Deviation(kind=kind, **{key: tuple(value) if isinstance(value, list) else value for key, value in item.items()})
        for section, kind in kinds.items()
        for item in table.get(section, [])
    ]
    ids = [d.id for d in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AdapterError(f"{shown}: duplicate deviation id {duplicates[0]!r}")
    return tuple(out)


def find_variant_deviation(rule: str, implementation: str, knob: str, asked: str) -> Deviation | None:
    for deviation in deviations():
        if (
            deviation.kind == "variant"
            and deviation.rule == rule
            and deviation.knob == knob
            and deviation.asked == asked
            and deviation.applies_to(implementation)
        ):
            return deviation
    return None


def find_storage_deviation(rule: str, implementation: str, dtype: str) -> Deviation | None:
    for deviation in deviations():
        if (
            deviation.kind == "storage"
            and deviation.rule == rule
            and deviation.dtype == dtype
            and deviation.applies_to(implementation)
        ):
            return deviation
    return None


def find_precision_deviation(implementation: str, dtype: str) -> Deviation | None:
    for deviation in deviations():
        if deviation.kind == "precision" and deviation.dtype == dtype and deviation.applies_to(implementation):
            return deviation
    return None
