"""Golden vectors: generate them from the specs, write them, read and verify them.

One writer for every spec kind: :func:`write_all` and :func:`check_all` take rules and
schedules alike; a schedule's document comes from :mod:`optspec.schedule_golden` and lands
in ``conformance/golden/schedules/``. The file layer (array encoding, content hash, JSON
reading with limits, atomic writes) is :mod:`optspec.golden_format`.

One JSON file per rule, ``conformance/golden/<rule>.json``, laid out like Wycheproof's
test vectors: a header (format, generator, spec hash, error model, flag notes), shared
input sets, and test groups that share a variant, hyperparameters and shapes. Arrays are
stored bit-exactly as base64 of little-endian IEEE-754 binary64. The format is documented
for consumers in any language in ``conformance/README.md`` and checked by
``conformance/golden/golden.schema.json``.

A ``contentSha256`` over the canonical JSON of everything else detects corruption and
careless hand edits, not tampering (anyone can recompute it; ``optspec validate`` regenerates
a sample of tests for that); :func:`read_golden` refuses such a file, and any file that is not
well-formed (nesting, encoding, NaN or infinite numbers, missing or extra slots), with a
one-line error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from optspec import __version__
from optspec.cases import make_inputs, recorded_steps, shapes_of
from optspec.declarations import quoted, shorten
from optspec.errors import GoldenError

# Re-exported: the file layer every golden file kind shares (optspec.golden_format).
from optspec.golden_format import (  # noqa: F401
    MAX_JSON_DEPTH,
    content_hash,
    decode_array,
    dumps,
    encode_array,
    json_depth,
    load_json,
    schema_error,
    test_name,
    write_atomic,
)
from optspec.reference import FLOAT64, CaseInputs, Quadratic, Trajectory, run_reference
from optspec.schedule_golden import generate_schedule, schedule_document, schedule_golden_dir, schedule_golden_schema
from optspec.schedule_spec import ScheduleRef, ScheduleSpec
from optspec.spec import Spec
from optspec.tolerance import HALF_PROFILES, PROFILES, RULE_PROFILES, measure
from optspec.tolerance import header as error_model_header

FORMAT = "optspec-golden/1"

FLAG_NOTES = {
    "Defaults": "The spec's default hyperparameters.",
    "ZeroGradient": "Every gradient is exactly zero: state must stay consistent and nothing may become NaN.",
    "KnobsMatter": "Hyperparameters chosen so that every variant knob of the rule changes the trajectory.",
    "Scheduled": "The learning rate follows a schedule (lrMultipliers), so lr-scaled and unscaled terms part.",
    "NearEpsilon": "Tensor 1 has gradients of magnitude about 3*eps, where epsilon placement matters.",
    "FallingNorm": "Tensor 2's gradients shrink 20-fold after the first fifth of the steps (AMSGrad maxima part).",
    "NonDefaultVariant": "At least one knob has a value other than its default; see the group's variant.",
}


@dataclass(frozen=True)
class GoldenTest:
    tc_id: int
    name: str
    case: str
    comment: str
    flags: tuple[str, ...]
    variant: Mapping[str, str]
    hyper: Mapping[str, float]
    inputs_id: str
    inputs: CaseInputs
    lr_multiplier: str | None
    #: expected[step][tensor][slot]
    expected: Trajectory
    #: atol[profile][step][tensor][slot]
    atol: Mapping[str, Mapping[int, list[dict[str, float]]]]
    #: {"name", "variant", "hyper"} of the schedule spec that drives the lr, or None
    schedule: Mapping[str, Any] | None = None
    #: slots of scope "rule" (one scalar for the whole step, stored with every tensor)
    rule_slots: tuple[str, ...] = ()

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(self.expected))

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(self.expected[self.steps[0]][0])


@dataclass(frozen=True)
class GoldenFile:
    rule: str
    spec_sha256: str
    tests: tuple[GoldenTest, ...]
    path: str

    def test(self, name: str) -> GoldenTest:
        for test in self.tests:
            if test.name == name:
                return test
        raise GoldenError(f"{self.path}: no test named {name!r}")

    def find(self, case: str, variant: Mapping[str, str]) -> GoldenTest | None:
        for test in self.tests:
            if test.case == case and dict(test.variant) == dict(variant):
                return test
        return None


# --------------------------------------------------------------------------- generation


def generate(spec: Spec, pool: Executor | None = None) -> GoldenFile:
    """Evaluate every golden combo x case of a spec in float64, with the error model's budgets.

    The budgets (an ensemble per test, the slow part) are measured in ``pool`` when given.
    """
    return generate_many([spec], pool)[0]


def generate_many(
    specs: Sequence[Spec],
    pool: Executor | None = None,
    on_test: Callable[[str], None] | None = None,
    only: Mapping[str, Sequence[tuple[Mapping[str, str], str]]] | None = None,
) -> list[GoldenFile]:
    """:func:`generate` for several specs, measuring every test's budgets in one pool.

    ``on_test(rule)`` is called after each test's budgets are measured (progress). ``only``
    (rule -> (full variant, case id) pairs) generates just those tests of a rule, in that
    order (``optspec validate``'s sample); every other rule gets every golden combo x case.
    """
    if importlib.util.find_spec("ml_dtypes") is None:
        raise GoldenError("optspec golden: the bfloat16 budgets need ml_dtypes (pip install 'optspec[torch]')")
    jobs: list[tuple[Spec, dict[str, str], Any, Any, tuple[str, ...]]] = []
    measurements: list[tuple[Any, ...]] = []
    for spec in specs:
        chosen = only.get(spec.name) if only is not None else None
        if chosen is None:
            chosen = [(variant, case.id) for variant in spec.golden_combos() for case in spec.cases]
        inputs = {case_id: make_inputs(spec, spec.case(case_id)) for case_id in dict.fromkeys(c for _, c in chosen)}
        resolved: dict[str, Any] = {}
        for variant, case_id in chosen:
            variant = dict(variant)
            case = spec.case(case_id)
            label = repr(sorted(variant.items()))
            if label not in resolved:
                resolved[label] = spec.resolve(variant)
            rule = resolved[label]
            hyper = spec.hyper_values(case.hyper)
            record = recorded_steps(case.steps)
            ref64 = run_reference(rule, hyper, inputs[case.id], FLOAT64, range(1, case.steps + 1))
            name = test_name(spec, variant, case.id)
            _check_finite(spec, name, ref64, "the float64 reference")
            jobs.append((spec, variant, case, inputs[case.id], rule.rule_slots))
            measurements.append((rule, hyper, inputs[case.id], record, RULE_PROFILES, name, ref64))
    mapped = pool.map(_measure, measurements, chunksize=4) if pool is not None else map(_measure, measurements)
    tests: dict[str, list[GoldenTest]] = {spec.name: [] for spec in specs}
    for (spec, variant, case, case_inputs, rule_slots), (_, hyper, _, record, _, name, ref64), atol in zip(
        jobs, measurements, mapped
    ):
        atol = _without_half_overflow(atol)
        if on_test is not None:
            on_test(spec.name)
        for profile, per_step in atol.items():
            for step, tensors in per_step.items():
                for index, slots in enumerate(tensors):
                    for slot, value in slots.items():
                        if not np.isfinite(value):
                            raise GoldenError(
                                f"{spec.path}: case {name}: the {profile} evaluation overflows at step {step}, "
                                f"tensor {index}, slot {slot}; choose hyperparameters that keep float32 finite"
                            )
        flags = list(case.flags)
        if case.grads == "standard":
            flags += ["NearEpsilon", "FallingNorm"]
        if (case.lr_multiplier is not None or case.schedule is not None) and "Scheduled" not in flags:
            flags.append("Scheduled")
        if any(spec.knobs[k].default != v for k, v in variant.items()):
            flags.append("NonDefaultVariant")
        own = tests[spec.name]
        own.append(
            GoldenTest(
                tc_id=len(own) + 1,
                name=name,
                case=case.id,
                comment=case.comment,
                flags=tuple(flags),
                variant=variant,
                hyper=hyper,
                inputs_id=case.id,
                inputs=case_inputs,
                lr_multiplier=case.lr_multiplier_text,
                expected={step: ref64[step] for step in record},
                atol=atol,
                schedule=None if case.schedule is None else case.schedule.as_json(),
                rule_slots=rule_slots,
            )
        )
    return [GoldenFile(spec.name, spec.sha256, tuple(tests[spec.name]), f"conformance/golden/{spec.name}.json") for spec in specs]


def _without_half_overflow(atol: Any) -> Any:
    """The budgets without a 16-bit profile in which the spec is not finite: float16's range ends
    at 65504 and its smallest subnormal is 6e-8, so Adam's eps = 1e-8 rounds to 0 and a zero (or
    underflowing) gradient gives 0/0, as torch's float16 Adam does. That case has no budget in the
    profile, and a check of it in that dtype is skipped saying so."""

    def finite(per_step: Any) -> bool:
        return all(np.isfinite(v) for tensors in per_step.values() for slots in tensors for v in slots.values())

    return {p: per_step for p, per_step in atol.items() if p not in HALF_PROFILES or finite(per_step)}


def _measure(job: tuple[Any, ...]) -> Any:
    rule, hyper, inputs, record, profiles, name, ref64 = job
    return measure(rule, hyper, inputs, record, profiles, seed_text=name, ref64=ref64)


def measurement_pool(workers: int | None = None) -> Executor | None:
    """A process pool for budget measurement (None: measure in this process)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1:
        return None
    # spawn, not fork: the calling process may already run threads (JAX, torch), and a forked
    # copy of a multithreaded process can deadlock.
    # The workers compile expressions as deep as the caller does (optspec.cli raises the limit).
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=sys.setrecursionlimit,
        initargs=(sys.getrecursionlimit(),),
    )


def _check_finite(spec: Spec, name: str, trajectory: Trajectory, what: str) -> None:
    for step, tensors in trajectory.items():
        for index, slots in enumerate(tensors):
            for slot, value in slots.items():
                if not np.all(np.isfinite(value)):
                    raise GoldenError(
                        f"{spec.path}: case {name}: {what} is not finite at step {step}, tensor {index}, slot {slot}"
                    )


# --------------------------------------------------------------------------- the rule document


def to_document(golden: GoldenFile, spec: Spec) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for test in golden.tests:
        if test.inputs_id not in inputs:
            inputs[test.inputs_id] = {
                "shapes": [list(s) for s in shapes_of(spec)],
                "steps": test.inputs.steps,
                "params": [encode_array(p) for p in test.inputs.params],
                "grads": [encode_array(g) for g in test.inputs.grads],
                "lrMultipliers": encode_array(test.inputs.lr_multipliers),
            }
            if test.inputs.quadratic is not None:
                inputs[test.inputs_id]["gradient"] = loss_document(test.inputs.quadratic)
        key = json.dumps([test.variant, test.hyper, test.lr_multiplier, test.schedule], sort_keys=True)
        group = groups.setdefault(
            key,
            {
                "variant": dict(test.variant),
                "hyper": dict(test.hyper),
                "shapes": [list(s) for s in shapes_of(spec)],
                "lrMultiplier": test.lr_multiplier,
                "slots": list(test.slots),
                "tests": [],
            },
        )
        if test.schedule is not None:
            group["schedule"] = dict(test.schedule)
        if test.rule_slots:
            group["ruleSlots"] = list(test.rule_slots)
        group["tests"].append(
            {
                "tcId": test.tc_id,
                "name": test.name,
                "case": test.case,
                "comment": test.comment,
                "flags": list(test.flags),
                "inputs": test.inputs_id,
                "expected": [
                    {
                        "step": step,
                        "values": {slot: [encode_array(t[slot]) for t in test.expected[step]] for slot in test.slots},
                        "atol": {
                            profile: {slot: [t[slot] for t in test.atol[profile][step]] for slot in test.slots}
                            for profile in RULE_PROFILES
                            if profile in test.atol
                        },
                    }
                    for step in test.steps
                ],
            }
        )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "generator": {"name": "optspec", "version": __version__},
        "rule": spec.name,
        "title": spec.title,
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "errorModel": error_model_header(profiles=RULE_PROFILES),
        "notes": FLAG_NOTES,
        "numberOfTests": len(golden.tests),
        "recordedSteps": sorted({s for t in golden.tests for s in t.steps}),
        "inputs": inputs,
        "testGroups": list(groups.values()),
    }
    doc["contentSha256"] = content_hash(doc)
    return doc


# --------------------------------------------------------------------------- reading


@cache
def golden_schema() -> dict[str, Any]:
    return json.loads(resources.files("optspec.vectors").joinpath("golden.schema.json").read_text())


def read_golden(path: str | Path, spec: Spec | None = None, shown: str | None = None) -> GoldenFile:
    """Load and verify a golden file; every problem is a one-line :class:`GoldenError`."""
    path = Path(path)
    shown = shown or str(path)
    return parse_document(load_json(path, shown), shown, spec)


def parse_document(doc: Any, shown: str, spec: Spec | None = None) -> GoldenFile:
    error = schema_error(doc, golden_schema(), shown, "golden.schema.json")
    if error is not None:
        raise error
    if doc["contentSha256"] != content_hash(doc):
        raise GoldenError(
            f"{shown}: content hash mismatch: the file was edited by hand or corrupted; regenerate it with `optspec golden`"
        )
    if spec is not None and doc["spec"]["sha256"] != spec.sha256:
        raise GoldenError(
            f"{shown}: generated from another version of {spec.path} (spec hash differs); regenerate it with `optspec golden`"
        )
    inputs: dict[str, CaseInputs] = {}
    for input_id, item in doc["inputs"].items():
        where = f"{shown}: inputs {quoted(input_id)}"
        params = tuple(decode_array(a, f"{where} params[{i}]") for i, a in enumerate(item["params"]))
        grads = tuple(decode_array(a, f"{where} grads[{i}]") for i, a in enumerate(item["grads"]))
        lr = decode_array(item["lrMultipliers"], f"{where} lrMultipliers")
        steps = int(item["steps"])
        if lr.shape != (steps,) or any(g.shape[:1] != (steps,) for g in grads) or len(params) != len(grads):
            raise GoldenError(f"{where}: shapes of params, grads and lrMultipliers disagree with steps={steps}")
        for i, (p, g) in enumerate(zip(params, grads)):
            if g.shape[1:] != p.shape:
                raise GoldenError(f"{where}: grads[{i}] has shape {list(g.shape)}, params[{i}] has {list(p.shape)}")
        inputs[input_id] = CaseInputs(params, grads, lr, quadratic=read_loss(item.get("gradient"), params, where))
    tests: list[GoldenTest] = []
    for group in doc["testGroups"]:
        for item in group["tests"]:
            where = f"{shown}: test {quoted(item['name'])}"
            if item["inputs"] not in inputs:
                raise GoldenError(f"{where}: refers to unknown inputs {quoted(item['inputs'])}")
            case_inputs = inputs[item["inputs"]]
            schedule = group.get("schedule")
            if schedule is not None:
                ref = ScheduleRef(
                    schedule["name"], dict(schedule["variant"]), {k: float(v) for k, v in schedule["hyper"].items()}
                )
                case_inputs = dataclasses.replace(case_inputs, schedule=ref)
            slots = list(group["slots"])
            rule_slots = tuple(group.get("ruleSlots", ()))
            stray = [slot for slot in rule_slots if slot not in slots]
            if stray:
                raise GoldenError(f"{where}: rule slot {quoted(stray[0])} is not one of the group's slots")
            count = len(case_inputs.params)
            expected: Trajectory = {}
            # A 16-bit profile is absent when the spec overflows in it (or the file predates it).
            stored = [p for p in RULE_PROFILES if p in PROFILES or all(p in r["atol"] for r in item["expected"])]
            atol: dict[str, dict[int, list[dict[str, float]]]] = {p: {} for p in stored}
            for record in item["expected"]:
                step = int(record["step"])
                values = record["values"]
                _check_slots(values, slots, count, f"{where} step {step} values")
                expected[step] = [
                    {slot: decode_array(values[slot][i], f"{where} step {step} {slot}[{i}]") for slot in slots}
                    for i in range(count)
                ]
                for i, p in enumerate(case_inputs.params):
                    for slot in slots:
                        shape = expected[step][i][slot].shape
                        if shape not in (p.shape, ()):
                            raise GoldenError(
                                f"{where} step {step} {slot}[{i}]: shape {list(shape)} does not fit tensor shape {list(p.shape)}"
                            )
                for profile in stored:
                    _check_slots(record["atol"][profile], slots, count, f"{where} step {step} atol {profile}")
                    atol[profile][step] = [
                        {slot: float(record["atol"][profile][slot][i]) for slot in slots} for i in range(count)
                    ]
                _check_rule_slots(expected[step], atol, step, rule_slots, f"{where} step {step}")
            tests.append(
                GoldenTest(
                    tc_id=int(item["tcId"]),
                    name=item["name"],
                    case=item["case"],
                    comment=item["comment"],
                    flags=tuple(item["flags"]),
                    variant=dict(group["variant"]),
                    hyper={k: float(v) for k, v in group["hyper"].items()},
                    inputs_id=item["inputs"],
                    inputs=case_inputs,
                    lr_multiplier=group["lrMultiplier"],
                    expected=expected,
                    atol=atol,
                    schedule=schedule,
                    rule_slots=rule_slots,
                )
            )
    return GoldenFile(doc["rule"], doc["spec"]["sha256"], tuple(tests), shown)


def _check_rule_slots(
    values: list[dict[str, np.ndarray]],
    atol: Mapping[str, Mapping[int, list[dict[str, float]]]],
    step: int,
    rule_slots: Sequence[str],
    where: str,
) -> None:
    """A rule-scope slot is one scalar: every tensor's entry (value and budget) is the same."""
    for slot in rule_slots:
        first = values[0][slot] if values else None
        if any(v[slot].shape != () or v[slot] != first for v in values):
            raise GoldenError(f"{where}: rule slot {quoted(slot)} must be one scalar, the same for every tensor")
        for profile, per_step in atol.items():
            budgets = {t[slot] for t in per_step[step]}
            if len(budgets) > 1:
                raise GoldenError(f"{where}: rule slot {quoted(slot)} has different {profile} budgets for different tensors")


def loss_document(quadratic: Quadratic) -> dict[str, Any]:
    """The ``gradient`` field of an input set: g_t = curvature * (theta_{t-1} - center) + grads[t-1]."""
    return {
        "loss": "quadratic",
        "at": "theta",
        "curvature": [encode_array(h) for h in quadratic.curvature],
        "center": [encode_array(c) for c in quadratic.center],
    }


def read_loss(item: Mapping[str, Any] | None, params: Sequence[np.ndarray], where: str) -> Quadratic | None:
    """The quadratic loss of an input set (None without a ``gradient`` field); shapes must match ``params``."""
    if item is None:
        return None
    arrays = {}
    for field in ("curvature", "center"):
        if len(item[field]) != len(params):
            raise GoldenError(f"{where}: gradient {field} has {len(item[field])} arrays for {len(params)} tensors")
        arrays[field] = tuple(decode_array(a, f"{where} gradient {field}[{i}]") for i, a in enumerate(item[field]))
        for i, (a, p) in enumerate(zip(arrays[field], params)):
            if a.shape != p.shape:
                raise GoldenError(f"{where}: gradient {field}[{i}] has shape {list(a.shape)}, params[{i}] has {list(p.shape)}")
    return Quadratic(arrays["curvature"], arrays["center"])


def _check_slots(table: Mapping[str, Any], slots: list[str], count: int, where: str) -> None:
    """``table`` has exactly the group's slots, each with one entry per tensor."""
    missing = [slot for slot in slots if slot not in table]
    if missing:
        raise GoldenError(
            f"{where}: slot {quoted(missing[0])} of the group's slots ({shorten(', '.join(slots), 120)}) is missing"
        )
    unknown = [slot for slot in table if slot not in slots]
    if unknown:
        raise GoldenError(f"{where}: unknown slot {quoted(unknown[0])} (the group's slots: {shorten(', '.join(slots), 120)})")
    for slot in slots:
        if len(table[slot]) != count:
            raise GoldenError(f"{where}: slot {quoted(slot)} has {len(table[slot])} entries for {count} tensors")


# --------------------------------------------------------------------------- write / check


def default_golden_dir() -> Path:
    """The repository's ``conformance/golden`` when run from a checkout, else the packaged copy."""
    local = Path.cwd() / "conformance" / "golden"
    if local.is_dir():
        return local
    return Path(str(resources.files("optspec.vectors")))


def golden_path(spec: Spec | ScheduleSpec, directory: Path) -> Path:
    """Where a spec's golden file lives: ``<dir>/<rule>.json`` or ``<dir>/schedules/<schedule>.json``."""
    if isinstance(spec, ScheduleSpec):
        return schedule_golden_dir(directory) / f"{spec.name}.json"
    return directory / f"{spec.name}.json"


def _documents(
    specs: Sequence[Spec | ScheduleSpec], workers: int | None, on_test: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """The golden document of every spec, rules and schedules alike, in the order given.

    Rule budgets are measured in one process pool (the slow part); a schedule's budgets are
    a few evaluations of scalars, done in this process.
    """
    rules = [spec for spec in specs if isinstance(spec, Spec)]
    if rules:
        with _pool(workers) as pool:
            goldens = iter(generate_many(rules, pool, on_test))
    documents = []
    for spec in specs:
        if isinstance(spec, ScheduleSpec):
            documents.append(schedule_document(generate_schedule(spec), spec))
            if on_test is not None:
                on_test(f"schedule {spec.name}")
        else:
            documents.append(to_document(next(goldens), spec))
    return documents


def _schema_of(spec: Spec | ScheduleSpec) -> tuple[dict[str, Any], str]:
    if isinstance(spec, ScheduleSpec):
        return schedule_golden_schema(), "schedule-golden.schema.json"
    return golden_schema(), "golden.schema.json"


def write_all(
    specs: Iterable[Spec | ScheduleSpec],
    directory: Path,
    workers: int | None = None,
    on_test: Callable[[str], None] | None = None,
) -> list[Path]:
    """Generate and write the golden file of every spec (rules and schedules) under ``directory``."""
    specs = list(specs)
    written = []
    for spec, doc in zip(specs, _documents(specs, workers, on_test)):
        path = golden_path(spec, directory)
        write_atomic(path, dumps(doc))
        written.append(path)
    return written


@contextmanager
def _pool(workers: int | None) -> Iterator[Executor | None]:
    pool = measurement_pool(workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def check_all(
    specs: Iterable[Spec | ScheduleSpec],
    directory: Path,
    workers: int | None = None,
    on_test: Callable[[str], None] | None = None,
) -> list[str]:
    """Regenerate in memory; return one message per file that differs (empty: all current)."""
    problems = []
    specs = list(specs)
    for spec, doc in zip(specs, _documents(specs, workers, on_test)):
        path = golden_path(spec, directory)
        shown = str(path)
        what = "schedule golden file" if isinstance(spec, ScheduleSpec) else "golden file"
        fresh = json.loads(dumps(doc))
        try:
            stored = load_json(path, shown, what)
        except GoldenError as exc:
            problems.append(str(exc))
            continue
        if stored != fresh:
            # A file that is not even shaped like a golden file is named by its schema error.
            schema, schema_name = _schema_of(spec)
            error = schema_error(stored, schema, shown, schema_name)
            problems.append(
                f"{error}; run `optspec golden`"
                if error is not None
                else f"{shown}: out of date: {_first_difference(stored, fresh)}; run `optspec golden`"
            )
    return problems


def _first_difference(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> str:
    for key in fresh:
        if key in ("testGroups", "contentSha256", "inputs"):
            continue
        if stored.get(key) != fresh[key]:
            return f"header field {key!r} differs"
    stored_tests = {t["name"]: (g, t) for g in stored.get("testGroups", []) for t in g.get("tests", [])}
    for group in fresh["testGroups"]:
        for test in group["tests"]:
            if test["name"] not in stored_tests:
                return f"test {test['name']!r} is new"
            old_group, old_test = stored_tests[test["name"]]
            if old_test != test or {k: v for k, v in old_group.items() if k != "tests"} != {
                k: v for k, v in group.items() if k != "tests"
            }:
                return f"first differing test is {test['name']!r}"
    if stored.get("inputs") != fresh.get("inputs"):
        return "the stored inputs differ"
    fresh_names = {t["name"] for g in fresh["testGroups"] for t in g["tests"]}
    gone = sorted(set(stored_tests) - fresh_names)
    if gone:
        return f"test {gone[0]!r} no longer exists"
    return "the content hash differs"
