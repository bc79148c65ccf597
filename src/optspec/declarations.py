"""What every spec declares, and the loader every spec kind goes through.

A spec is a TOML file: an update rule (``specs/<rule>.toml``, :mod:`optspec.spec`) or a
learning-rate schedule (``specs/schedules/<name>.toml``, :mod:`optspec.schedule_spec`). Both
declare hyperparameters (a default in a real interval, :class:`Domain`) and variant knobs
(named values, one of them the default); both are read by :func:`load_table` (UTF-8 text,
TOML with binary64-exact numbers, the kind's JSON schema, the file named after the spec)
and found by a :class:`SpecFiles` library (the packaged directory plus extra directories).
Every problem is a one-line :class:`~optspec.errors.SpecError`.

This is the bottom of the spec layer: it imports only :mod:`optspec.errors`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Generic, TypeVar

import jsonschema

from optspec.errors import SpecError, UsageError

#: ASCII decimal numbers only: ``\d`` would also accept other scripts' digits.
_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DOMAIN = re.compile(
    rf"(?P<open>[\[(])\s*(?P<low>-?inf|{_DECIMAL})\s*,\s*(?P<high>[+-]?inf|{_DECIMAL})\s*(?P<close>[\])])", re.ASCII
)


def quoted(text: str, limit: int = 80) -> str:
    """``repr(text)``, shortened in the middle when longer than ``limit``: error lines stay short."""
    if len(text) <= limit:
        return repr(text)
    keep = limit // 2
    return f"{text[:keep]!r}...{text[-keep // 2 :]!r} ({len(text)} characters)"


def shorten(text: str, limit: int = 300) -> str:
    """``text`` on one line (newlines shown as ``\\n``), cut in the middle when longer than ``limit``."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...{text[-keep // 2 :]} ({len(text)} characters)"


def as_float(value: object, where: str) -> float:
    """A TOML number as binary64; an integer too large for binary64 is a SpecError, not an OverflowError."""
    try:
        result = float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        raise SpecError(where, f"{quoted(str(value))} is not a number binary64 can hold") from None
    if isinstance(value, int) and math.isfinite(result) and abs(result) > 2.0**53 and int(result) != value:
        raise SpecError(where, f"the integer {quoted(str(value))} is not exactly representable in binary64")
    return result


def parse_decimal(text: str) -> float:
    """A decimal literal as binary64; ValueError when it overflows or a nonzero value underflows to 0."""
    if not re.fullmatch(_DECIMAL, text, re.ASCII):
        raise ValueError(f"{text!r} is not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} overflows binary64; write inf for an unbounded end")
    mantissa = re.split(r"[eE]", text)[0]
    if value == 0 and any(c in "123456789" for c in mantissa):
        raise ValueError(f"the number {text} underflows to 0 in binary64")
    return value


@dataclass(frozen=True)
class Domain:
    """A real interval such as ``[0, 1)``; ``integer`` restricts it to whole numbers."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    integer: bool = False

    @classmethod
    def parse(cls, text: str, integer: bool = False, where: str = "domain") -> Domain:
        """``[low, high]`` with ``(`` / ``)`` for open ends; a bound is a decimal number or ``inf``.

        Anything else (``"[., inf)"``, ``"[0, 1e5e5]"``, a bound that underflows to 0 or
        overflows, ``low > high``) is a :class:`~optspec.errors.SpecError` at ``where``.
        """
        match = _DOMAIN.fullmatch(text.strip())
        if match is None:
            raise SpecError(where, f"{quoted(text)} is not an interval like '[0, 1)' or '(0, inf)'")
        bounds = []
        for part in ("low", "high"):
            bound = match.group(part)
            try:
                bounds.append(float(bound) if bound.lstrip("+-") == "inf" else parse_decimal(bound))
            except ValueError as exc:
                raise SpecError(where, f"{quoted(text)}: {exc}") from None
        low, high = bounds
        low_closed, high_closed = match.group("open") == "[", match.group("close") == "]"
        if low > high or (low == high and not (low_closed and high_closed)):
            raise SpecError(where, f"{quoted(text)} is an empty interval")
        return cls(low, high, low_closed, high_closed, integer)

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def bound(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x)

        text = f"{'[' if self.low_closed else '('}{bound(self.low)}, {bound(self.high)}{']' if self.high_closed else ')'}"
        return f"{text} (integers)" if self.integer else text


@dataclass(frozen=True)
class Hyper:
    name: str
    default: float
    domain: Domain
    doc: str


#: The most knob combinations a spec may have (each is resolved and checked when it loads).
MAX_COMBINATIONS = 4096


class SpecDeclarations:
    """What every spec (an update rule or a schedule) declares: hyperparameters and variant knobs.

    Subclasses are frozen dataclasses with ``name``, ``path``, ``hyper`` (name -> :class:`Hyper`),
    ``knobs`` (name -> knob with ``default`` and ``values``), ``cases`` (each with an ``id``) and
    ``extra_combos``; they set ``kind`` ("rule", "schedule") and implement :meth:`resolve`.
    """

    kind = "spec"
    name: str
    path: str
    hyper: Mapping[str, Hyper]
    knobs: Mapping[str, Any]
    cases: tuple[Any, ...]
    extra_combos: tuple[Mapping[str, str], ...]

    @property
    def where(self) -> str:
        """The spec's location in error messages: ``<path>: <kind> '<name>'``."""
        return f"{self.path}: {self.kind} {self.name!r}"

    def resolve(self, variant: Mapping[str, str] | None = None) -> Any:
        """The spec with one value chosen for every knob (the default for knobs ``variant`` omits)."""
        raise NotImplementedError

    def case(self, case_id: str) -> Any:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise SpecError(self.where, f"no case {case_id!r} (cases: {', '.join(c.id for c in self.cases)})")

    def resolve_every_combination(self) -> list[Any]:
        """Every knob combination resolved (at most :data:`MAX_COMBINATIONS`); the golden extra
        combos must name real knobs and values. Returns the resolved specs, in :meth:`all_combos` order."""
        combos = self.all_combos()
        if len(combos) > MAX_COMBINATIONS:
            raise SpecError(self.where, f"{len(combos)} knob combinations; at most {MAX_COMBINATIONS} are supported")
        resolved = [self.resolve(combo) for combo in combos]
        for extra in self.extra_combos:
            self.full_variant(extra, f"{self.where}, golden.extra_combos")
        return resolved

    def default_variant(self) -> dict[str, str]:
        return {name: knob.default for name, knob in self.knobs.items()}

    def full_variant(self, partial: Mapping[str, str] | None = None, where: str | None = None) -> dict[str, str]:
        """The default variant with ``partial`` applied; unknown knobs or values are errors."""
        variant = self.default_variant()
        for knob_name, value in (partial or {}).items():
            if knob_name not in self.knobs:
                known = ", ".join(self.knobs) or "none"
                raise SpecError(where or self.where, f"unknown variant knob {knob_name!r} (knobs: {known})")
            values = self.knobs[knob_name].values
            if value not in values:
                raise SpecError(where or self.where, f"knob {knob_name!r} has no value {value!r} (values: {', '.join(values)})")
            variant[knob_name] = value
        return variant

    def all_combos(self) -> list[dict[str, str]]:
        """Every combination of knob values (the product over knobs)."""
        names = list(self.knobs)
        return [dict(zip(names, values)) for values in itertools.product(*(self.knobs[n].values for n in names))]

    def hyper_values(self, overrides: Mapping[str, float] | None = None, where: str | None = None) -> dict[str, float]:
        """Defaults with ``overrides``; unknown names and values outside the domain are errors."""
        values = {name: h.default for name, h in self.hyper.items()}
        for name, value in (overrides or {}).items():
            if name not in self.hyper:
                raise SpecError(where or self.where, f"unknown hyperparameter {name!r} (known: {', '.join(self.hyper)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(where or self.where, f"hyperparameter {name}={value!r} is not a number")
            domain = self.hyper[name].domain
            value = as_float(value, f"{where or self.where}, hyperparameter {name!r}")
            if not domain.contains(value):
                raise SpecError(where or self.where, f"hyperparameter {name}={value!r} is outside its domain {domain}")
            values[name] = float(value)
        return values

    def golden_combos(self) -> list[dict[str, str]]:
        """The default variant, each knob value with the others at default, and extras."""
        combos = [self.default_variant()]
        for knob in self.knobs.values():
            for value in knob.values:
                if value != knob.default:
                    combos.append(self.full_variant({knob.name: value}))
        for extra in self.extra_combos:
            full = self.full_variant(extra)
            if full not in combos:
                combos.append(full)
        return combos


def variant_label(variant: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "(no knobs)"


def spec_hash(table: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of the parsed TOML: comments and layout do not count."""
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _BadFloat(Exception):
    def __init__(self, literal: str, message: str) -> None:
        super().__init__(message)
        self.literal = literal
        self.message = message


def _toml_float(literal: str) -> float:
    """tomllib's ``parse_float``: refuse literals that overflow or underflow to 0 instead of keeping inf or 0."""
    if literal.lstrip("+-") in ("inf", "nan"):
        return float(literal)
    try:
        return parse_decimal(literal.replace("_", ""))
    except ValueError as exc:
        raise _BadFloat(literal, str(exc)) from None


def load_toml(text: str, shown: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure (syntax, a number binary64 cannot hold, nesting) as one SpecError."""
    try:
        return tomllib.loads(text, parse_float=_toml_float)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(shown, f"not valid TOML: {exc}") from None
    except _BadFloat as exc:
        line = text[: text.find(exc.literal)].count("\n") + 1 if exc.literal in text else None
        raise SpecError(shown, f"line {line}: {exc.message}" if line else exc.message) from None
    except RecursionError:
        raise SpecError(shown, "not valid TOML: arrays or tables nested too deeply") from None


def check_identifier(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
        raise SpecError(where, f"{name!r} is not a valid name (letters, digits, underscore)")


# --------------------------------------------------------------------------- the shared loader


def read_spec_text(path: str | Path, shown: str, what: str) -> str:
    """The text of a spec file; unreadable or non-UTF-8 files are one SpecError naming ``what``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(shown, f"cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(shown, f"the {what} is not UTF-8 text: {exc.reason}") from None


def load_table(text: str, shown: str, schema: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """TOML text checked against the kind's JSON schema; the spec's ``name`` must match the file name.

    ``kind`` ("rule", "schedule") names the spec in the messages; a ``shown`` path starting
    with ``<`` (text not read from a file) skips the file-name check.
    """
    table = load_toml(text, shown)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(table))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SpecError(shown, f"field {shorten(where, 120)}: {shorten(error.message, 200)}")
    name = str(table["name"])
    if Path(shown).stem != name and not shown.startswith("<"):
        raise SpecError(shown, f"the {kind} is named {name!r} but the file is {Path(shown).name!r}; they must agree")
    return table


def packaged_schema(*parts: str) -> dict[str, Any]:
    """A JSON schema shipped in ``optspec.specs`` (``spec.schema.json``, ``schedules/schedule.schema.json``)."""
    return json.loads(resources.files("optspec.specs").joinpath(*parts).read_text())


def parse_hypers(tables: Mapping[str, Mapping[str, Any]], where: str, reserved: Collection[str]) -> dict[str, Hyper]:
    """``[hyper.<name>]`` tables: a valid name not in ``reserved``, a domain, a default inside it, a doc."""
    hypers: dict[str, Hyper] = {}
    for hname, h in tables.items():
        check_identifier(hname, f"{where}, hyperparameter {hname!r}")
        if hname in reserved:
            raise SpecError(where, f"hyperparameter {hname!r} shadows a built-in name")
        domain = Domain.parse(h["domain"], bool(h.get("integer", False)), f"{where}, hyperparameter {hname!r} domain")
        default = as_float(h["default"], f"{where}, hyperparameter {hname!r} default")
        if not domain.contains(default):
            raise SpecError(where, f"hyperparameter {hname!r}: default {h['default']!r} is outside its domain {domain}")
        hypers[hname] = Hyper(hname, default, domain, h["doc"])
    return hypers


def check_knob_default(default: str, values: Collection[str], where: str) -> None:
    """A knob's default must be one of its values."""
    if default not in values:
        raise SpecError(where, f"default value {default!r} is not one of its values ({', '.join(values)})")


# --------------------------------------------------------------------------- libraries

S = TypeVar("S")


class SpecFiles(Generic[S]):
    """The spec files of one kind: a packaged directory plus extra directories, loaded on demand.

    Subclasses set ``kind`` (for messages) and implement :meth:`_load`; a name in an extra
    directory replaces a packaged one.
    """

    kind = "spec"

    def __init__(self, packaged: Traversable | None, shown_prefix: str, extra_dirs: Iterable[str | Path] = ()) -> None:
        self._paths: dict[str, tuple[Path, str]] = {}
        if packaged is not None and packaged.is_dir():
            for entry in sorted(packaged.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".toml"):
                    self._paths[entry.name[:-5]] = (Path(str(entry)), f"{shown_prefix}{entry.name}")
        for directory in extra_dirs:
            for path in sorted(Path(directory).glob("*.toml")):
                self._paths[path.stem] = (path, str(path))
        self._cache: dict[str, S] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def get(self, name: str) -> S:
        if name not in self._paths:
            raise UsageError(f"unknown {self.kind} {name!r} (known {self.kind}s: {', '.join(self.names)})")
        if name not in self._cache:
            path, shown = self._paths[name]
            self._cache[name] = self._load(name, path, shown)
        return self._cache[name]

    def all(self) -> list[S]:
        return [self.get(name) for name in self.names]

    def loaded(self) -> list[S]:
        """The specs :meth:`get` has loaded so far, in name order (nothing more is parsed)."""
        return [self._cache[name] for name in sorted(self._cache)]

    def _load(self, name: str, path: Path, shown: str) -> S:
        raise NotImplementedError
