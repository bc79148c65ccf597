"""A record on disk of the error model's budgets that ``optspec check`` measured before.

:func:`optspec.tolerance.measure` is a pure function of the resolved rule, the hyperparameters,
the inputs, the recorded steps, the profiles and the ensemble's seed text, computed by
optspec's own code with numpy: about a quarter of a second per case, most of a check's own
time. :func:`measured` returns the budgets of an earlier identical measurement when one is
recorded, else measures and records them. The key is the sha256 of everything the budgets
depend on: the spec file's hash, the variant, the hyperparameters (``float.hex``), the input
arrays' bytes, dtypes and shapes, the gradient-at-the-point loss, the steps, the profiles, the
seed text, the ensemble size, numpy's version, the machine and the source of every module of
the ``optspec`` package (any edit to the code is another key). A budget loaded from the record
is bit for bit the one :func:`~optspec.tolerance.measure` gives.

Records are JSON (every float as ``float.hex``, exact), one file per key, written atomically
(:func:`optspec.golden_format.write_atomic`); a record that cannot be read, or that does not
decode into budgets, is measured again, and a directory that cannot be written changes nothing
but the time. ``$OPTSPEC_BUDGET_CACHE`` names the directory (``off`` or empty: no record);
default ``$XDG_CACHE_HOME/optspec/budgets``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Collection, Iterable, Mapping
from functools import cache
from pathlib import Path

import numpy as np

from optspec.golden_format import user_cache_dir, write_atomic
from optspec.reference import CaseInputs, Trajectory
from optspec.spec import ResolvedRule
from optspec.tolerance import MEMBERS, Budgets, measure

CACHE_ENV = "OPTSPEC_BUDGET_CACHE"


def cache_dir() -> Path | None:
    """Where budgets are recorded (None: nowhere)."""
    return user_cache_dir(CACHE_ENV, "budgets")


@cache
def code_fingerprint() -> str:
    """sha256 of the source of every module of the installed ``optspec`` package, numpy's version and the machine."""
    import optspec

    digest = hashlib.sha256(f"numpy {np.__version__} {platform.machine()} {platform.system()}\n".encode())
    root = Path(optspec.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def key(
    spec_sha256: str,
    variant: Mapping[str, str],
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    record: Iterable[int],
    profiles: Collection[str],
    seed_text: str,
    members: int = MEMBERS,
) -> str:
    """The sha256 naming one measurement (see the module docstring)."""
    digest = hashlib.sha256(code_fingerprint().encode())
    head = {
        "spec": spec_sha256,
        "variant": sorted(variant.items()),
        "hyper": sorted((k, float(v).hex()) for k, v in hyper.items()),
        "steps": inputs.steps,
        "record": sorted(record),
        "profiles": list(profiles),
        "seed": seed_text,
        "members": members,
        "inputs": inputs.digest(),
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    return digest.hexdigest()


def _encode(budgets: Budgets) -> str:
    return json.dumps(
        {
            profile: {
                str(step): [{slot: float(value).hex() for slot, value in slots.items()} for slots in tensors]
                for step, tensors in per_step.items()
            }
            for profile, per_step in budgets.items()
        },
        sort_keys=True,
    )


def _decode(text: str) -> Budgets:
    doc = json.loads(text)
    return {
        profile: {
            int(step): [{slot: float.fromhex(value) for slot, value in slots.items()} for slots in tensors]
            for step, tensors in per_step.items()
        }
        for profile, per_step in doc.items()
    }


def measured(
    rule: ResolvedRule,
    spec_sha256: str,
    variant: Mapping[str, str],
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    record: Iterable[int],
    profiles: Collection[str],
    seed_text: str,
    ref64: Trajectory | None = None,
) -> Budgets:
    """:func:`optspec.tolerance.measure` of these arguments, from the record when it holds them."""
    record = list(record)
    directory = cache_dir()
    name = key(spec_sha256, variant, hyper, inputs, record, profiles, seed_text) if directory is not None else None
    if name is not None:
        try:
            return _decode((directory / f"{name}.json").read_text())
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    budgets = measure(rule, hyper, inputs, record, profiles, seed_text=seed_text, ref64=ref64)
    if name is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(directory / f"{name}.json", _encode(budgets))
        except (OSError, ValueError):
            pass
    return budgets
