"""The known-defect registry (``defects.toml``): failures confirmed as the library's bugs.

A defect never changes a verdict: a check it applies to still fails, and ``optspec run`` prints
the entry under the matrix so that a reader sees why. The conformance test turns such a failure
into an expected failure with the entry's reason (pytest's xfail), so the suite stays green on a
library with a recorded, evidenced bug and goes red on any failure nobody explained.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from optspec.errors import AdapterError
from optspec.impls import base

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "defect": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "rule", "implementations", "dtypes", "reason", "evidence", "upstream"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "rule": {"type": "string", "minLength": 1},
                    "implementations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "dtypes": {
                        "type": "array",
                        "items": {"enum": ["float32", "float64", "bfloat16", "float16"]},
                        "minItems": 1,
                    },
                    "reason": {"type": "string", "minLength": 20},
                    "evidence": {"type": "array", "items": {"type": "string", "minLength": 10}, "minItems": 1},
                    "upstream": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "library": {"type": "string", "minLength": 1},
                    "fixed_in": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"},
                    "raises": {"type": "string", "minLength": 3},
                },
            },
        }
    },
}


@dataclass(frozen=True)
class Defect:
    """A library bug: ``implementations`` (glob patterns) compute ``rule`` wrongly in ``dtypes``."""

    id: str
    rule: str
    implementations: tuple[str, ...]
    dtypes: tuple[str, ...]
    reason: str
    evidence: tuple[str, ...]
    upstream: tuple[str, ...]
    #: a defect of ``library``'s releases before ``fixed_in`` (both or neither)
    library: str | None = None
    fixed_in: str | None = None
    #: a library that raises instead of computing: a regular expression the error message matches
    #: (the cell is an error cell with the library's message; the check is a failure, not exit 2)
    raises: str | None = None

    def present(self) -> bool:
        """Whether the installed library has the defect: always, unless a release fixed it and is installed."""
        if self.library is None or self.fixed_in is None:
            return True
        return base.lacks(self.library, base.Since(self.fixed_in, "")) is not None

    @property
    def label(self) -> str:
        """How a failure names it: ``[known defect ID]``, with the fixing release for an old release's defect."""
        if self.library is None or self.fixed_in is None:
            return f"[known defect {self.id}]"
        installed = base.public_version(base.installed_version(self.library) or "none")
        return f"[known defect {self.id}: a defect of {self.library} before {self.fixed_in} (installed {installed})]"

    def applies_to(self, rule: str, implementation: str, dtype: str) -> bool:
        """Whether this defect explains a wrong result of ``rule`` by ``implementation`` in ``dtype``."""
        return self.raises is None and self._covers(rule, implementation, dtype)

    def explains_error(self, rule: str, implementation: str, dtype: str, message: str) -> bool:
        """Whether this defect is the library's error ``message`` for ``rule`` by ``implementation`` in ``dtype``."""
        if self.raises is None or re.search(self.raises, message) is None:
            return False
        return self._covers(rule, implementation, dtype)

    def _covers(self, rule: str, implementation: str, dtype: str) -> bool:
        return (
            rule == self.rule
            and dtype in self.dtypes
            and any(fnmatch.fnmatchcase(implementation, pattern) for pattern in self.implementations)
            and self.present()
        )


@cache
def defects() -> tuple[Defect, ...]:
    """The registry, validated; a malformed file is a one-line AdapterError."""
    shown = "impls/defects.toml"
    try:
        text = resources.files("optspec.impls").joinpath("defects.toml").read_text()
    except OSError as exc:
        raise AdapterError(f"{shown}: cannot read the known-defect registry ({exc})") from None
    return parse_defects(text, shown)


def parse_defects(text: str, shown: str) -> tuple[Defect, ...]:
    table = base.load_registry_table(text, shown, _SCHEMA)
    out = tuple(
        Defect(**{key: tuple(value) if isinstance(value, list) else value for key, value in item.items()})
        for item in table.get("defect", [])
    )
    for defect in out:
        if defect.raises is not None:
            try:
                re.compile(defect.raises)
            except re.error as exc:
                raise AdapterError(f"{shown}: defect {defect.id!r}: raises is not a regular expression ({exc})") from None
    halves = [d.id for d in out if (d.library is None) != (d.fixed_in is None)]
    if halves:
        raise AdapterError(f"{shown}: defect {halves[0]!r}: give library and fixed_in together")
    ids = [d.id for d in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AdapterError(f"{shown}: duplicate defect id {duplicates[0]!r}")
    return out


def find_defect(rule: str, implementation: str, dtype: str) -> Defect | None:
    """The defect that explains a failing check, if one is registered."""
    return next((d for d in defects() if d.applies_to(rule, implementation, dtype)), None)


def find_error_defect(rule: str, implementation: str, dtype: str, message: str) -> Defect | None:
    """The defect that is this error of the library (an entry with ``raises``), if one is registered."""
    return next((d for d in defects() if d.explains_error(rule, implementation, dtype, message)), None)
