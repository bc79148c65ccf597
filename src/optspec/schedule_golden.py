"""Schedule golden vectors: generate them from a schedule spec, as a document, read and verify them.

One JSON file per schedule, ``conformance/golden/schedules/<name>.json`` (format
``optspec-schedule-golden/1``, checked by ``schedules/schedule-golden.schema.json``): a header
(format, generator, spec hash, index convention, error model, flag notes) and test groups
that share a variant and hyperparameters. Each test holds ``values[output]`` for the defined
indices n = 0 .. definedUntil - 1 (bit-exact binary64, :mod:`optspec.golden_format`) and a
budget per profile and index from the error model (:func:`optspec.tolerance.sequence_budgets`).
Files are written and checked by the same writer as rule golden files
(:func:`optspec.golden.write_all`, :func:`optspec.golden.check_all`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from optspec import __version__
from optspec.declarations import quoted
from optspec.errors import GoldenError
from optspec.golden_format import content_hash, decode_array, encode_array, load_json, schema_error, test_name
from optspec.reference import EXTENDED, FLOAT32, FLOAT32_SCALAR32, FLOAT64, Trajectory
from optspec.schedule_reference import ScheduleValues, evaluate_schedule, schedule_horizon
from optspec.schedule_spec import INDEX_CONVENTION, ScheduleSpec
from optspec.tolerance import PROFILES, sequence_budgets
from optspec.tolerance import header as error_model_header

SCHEDULE_FORMAT = "optspec-schedule-golden/1"
SCHEDULE_FLAG_NOTES = {
    "Defaults": "The spec's default hyperparameters.",
    "PastEnd": "Indices beyond the horizon T are covered: periodic, clamped and held conventions part there.",
    "NonDefaultVariant": "At least one knob has a value other than its default; see the group's variant.",
    "OffGrid": "Boundaries such as pct_start * T are not integers, so floor and float boundary conventions part.",
}


@dataclass(frozen=True)
class ScheduleTest:
    tc_id: int
    name: str
    case: str
    comment: str
    flags: tuple[str, ...]
    variant: Mapping[str, str]
    hyper: Mapping[str, float]
    count: int
    #: expected[output] has one value per defined index
    expected: Mapping[str, np.ndarray]
    #: atol[profile][output] has one budget per defined index
    atol: Mapping[str, Mapping[str, np.ndarray]]
    #: input name -> the sequence fed to the schedule (index n reads inputs[name][n])
    inputs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def defined(self) -> int:
        return int(self.expected["lr"].shape[0])

    @property
    def defined_until(self) -> int | None:
        """The first undefined index (an implementation must refuse it), or None."""
        return self.defined if self.defined < self.count else None


@dataclass(frozen=True)
class ScheduleGoldenFile:
    schedule: str
    spec_sha256: str
    tests: tuple[ScheduleTest, ...]
    path: str

    def find(self, case: str, variant: Mapping[str, str]) -> ScheduleTest | None:
        for test in self.tests:
            if test.case == case and dict(test.variant) == dict(variant):
                return test
        return None


def _as_trajectory(values: ScheduleValues) -> Trajectory:
    out: Trajectory = {}
    for n in range(values.defined):
        slots = {"lr": np.array(values.lr[n])}
        if values.momentum is not None:
            slots["momentum"] = np.array(values.momentum[n])
        out[n + 1] = [slots]
    return out


def generate_schedule(spec: ScheduleSpec) -> ScheduleGoldenFile:
    """Every golden combo x case in float64, with error-model budgets from float32 evaluations.

    The budget of index n is :func:`optspec.tolerance.sequence_budgets` applied to the
    sequence as a trajectory of one scalar (step n + 1): K times the running maximum of each
    profile's deviation from the longdouble evaluation (or FLOOR ulps of the running
    maximum value).
    """
    tests: list[ScheduleTest] = []
    for variant in spec.golden_combos():
        resolved = spec.resolve(variant)
        non_default = any(spec.knobs[k].default != v for k, v in variant.items())
        for case in spec.cases:
            hyper = spec.hyper_values(case.hyper)
            count = 2 * schedule_horizon(resolved, hyper) + 1
            ref64 = evaluate_schedule(resolved, hyper, count, FLOAT64, case.inputs)
            ref32 = evaluate_schedule(resolved, hyper, count, FLOAT32, case.inputs)
            ref32s = evaluate_schedule(resolved, hyper, count, FLOAT32_SCALAR32, case.inputs)
            name = test_name(spec, variant, case.id)
            if not np.all(np.isfinite(ref64.lr)) or (ref64.momentum is not None and not np.all(np.isfinite(ref64.momentum))):
                raise GoldenError(f"{spec.path}: case {name}: the float64 schedule is not finite")
            if ref64.defined == 0:
                raise GoldenError(f"{spec.path}: case {name}: the schedule is undefined at index 0")
            steps = range(1, ref64.defined + 1)
            exact = evaluate_schedule(resolved, hyper, count, EXTENDED, case.inputs)
            lower = {"float64": ref64, "float32": ref32, "float32_scalar32": ref32s}
            per_step = sequence_budgets({p: _as_trajectory(v) for p, v in lower.items()}, _as_trajectory(exact), steps)
            outputs = ["lr"] + (["momentum"] if ref64.momentum is not None else [])
            atol = {
                profile: {out: np.array([per_step[profile][s][0][out] for s in steps]) for out in outputs} for profile in PROFILES
            }
            for profile, per_output in atol.items():
                for out, values in per_output.items():
                    if not np.all(np.isfinite(values)):
                        raise GoldenError(f"{spec.path}: case {name}: the {profile} budget of {out} is not finite")
            expected = {"lr": ref64.lr}
            if ref64.momentum is not None:
                expected["momentum"] = ref64.momentum
            flags = [*case.flags, "PastEnd"]
            if non_default:
                flags.append("NonDefaultVariant")
            tests.append(
                ScheduleTest(
                    len(tests) + 1, name, case.id, case.comment, tuple(flags), variant, hyper, count, expected, atol,
                    dict(case.inputs),
                )
            )  # fmt: skip
    return ScheduleGoldenFile(spec.name, spec.sha256, tuple(tests), f"conformance/golden/schedules/{spec.name}.json")


def schedule_document(golden: ScheduleGoldenFile, spec: ScheduleSpec) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for test in golden.tests:
        key = json.dumps([test.variant, test.hyper, test.inputs], sort_keys=True)
        group = groups.setdefault(key, {"variant": dict(test.variant), "hyper": dict(test.hyper), "tests": []})
        if test.inputs:
            group.setdefault("inputs", {name: list(values) for name, values in test.inputs.items()})
        group["tests"].append(
            {
                "tcId": test.tc_id,
                "name": test.name,
                "case": test.case,
                "comment": test.comment,
                "flags": list(test.flags),
                "count": test.count,
                "definedUntil": test.defined_until,
                "values": {out: encode_array(v) for out, v in test.expected.items()},
                "atol": {p: {out: [float(x) for x in v] for out, v in test.atol[p].items()} for p in PROFILES},
            }
        )
    doc: dict[str, Any] = {
        "format": SCHEDULE_FORMAT,
        "generator": {"name": "optspec", "version": __version__},
        "schedule": spec.name,
        "title": spec.title,
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "indexConvention": INDEX_CONVENTION,
        "errorModel": error_model_header("deterministic"),
        "notes": SCHEDULE_FLAG_NOTES,
        "numberOfTests": len(golden.tests),
        "testGroups": list(groups.values()),
    }
    doc["contentSha256"] = content_hash(doc)
    return doc


@cache
def schedule_golden_schema() -> dict[str, Any]:
    return json.loads(resources.files("optspec.vectors").joinpath("schedules", "schedule-golden.schema.json").read_text())


def read_schedule_golden(path: str | Path, spec: ScheduleSpec | None = None, shown: str | None = None) -> ScheduleGoldenFile:
    """Load and verify a schedule golden file; every problem is a one-line GoldenError."""
    path = Path(path)
    shown = shown or str(path)
    doc = load_json(path, shown, "schedule golden file")
    error = schema_error(doc, schedule_golden_schema(), shown, "schedule-golden.schema.json")
    if error is not None:
        raise error
    if doc["contentSha256"] != content_hash(doc):
        raise GoldenError(f"{shown}: content hash mismatch: the file was edited by hand or corrupted; regenerate it")
    if spec is not None and doc["spec"]["sha256"] != spec.sha256:
        raise GoldenError(f"{shown}: generated from another version of {spec.path}; regenerate it with `optspec golden`")
    tests = []
    for group in doc["testGroups"]:
        for item in group["tests"]:
            where = f"{shown}: test {quoted(item['name'])}"
            expected = {out: decode_array(a, f"{where} {out}") for out, a in item["values"].items()}
            defined = expected["lr"].shape
            if len(defined) != 1:
                raise GoldenError(f"{where}: lr values must be a 1-d array, not shape {list(defined)[:8]}")
            atol = {p: {out: np.array(v, dtype=np.float64) for out, v in item["atol"][p].items()} for p in PROFILES}
            for out, values in expected.items():
                if values.shape != defined or any(atol[p].get(out, np.empty(0)).shape != defined for p in PROFILES):
                    raise GoldenError(f"{where}: {out} values and budgets must have one entry per defined index")
            for p in PROFILES:
                if set(atol[p]) != set(expected):
                    raise GoldenError(f"{where}: the {p} budgets cover {sorted(atol[p])}, the values {sorted(expected)}")
            until = item["definedUntil"]
            if (until is None and defined[0] != item["count"]) or (until is not None and until != defined[0]):
                raise GoldenError(f"{where}: definedUntil={until} disagrees with {defined[0]} values of {item['count']}")
            tests.append(
                ScheduleTest(
                    int(item["tcId"]), item["name"], item["case"], item["comment"], tuple(item["flags"]),
                    dict(group["variant"]), {k: float(v) for k, v in group["hyper"].items()},
                    int(item["count"]), expected, atol,
                    {name: tuple(float(x) for x in v) for name, v in group.get("inputs", {}).items()},
                )
            )  # fmt: skip
    return ScheduleGoldenFile(doc["schedule"], doc["spec"]["sha256"], tuple(tests), shown)


def schedule_golden_dir(golden_dir: Path) -> Path:
    return golden_dir / "schedules"
