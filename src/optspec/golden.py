"""Golden vectors: generate them from the specs, write them, read and verify them.

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

import base64
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from optspec import __version__
from optspec.cases import SHAPES, make_inputs, recorded_steps
from optspec.errors import GoldenError
from optspec.reference import FLOAT64, CaseInputs, Trajectory, run_reference
from optspec.spec import Spec, SpecDeclarations, quoted, shorten, variant_label
from optspec.tolerance import PROFILES, measure
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


def test_name(spec: SpecDeclarations, variant: Mapping[str, str], case: str) -> str:
    """The stable id of a golden test: ``<spec>/<non-default knobs or 'default'>/<case>``."""
    changed = {k: v for k, v in variant.items() if spec.knobs[k].default != v}
    return f"{spec.name}/{variant_label(changed) if changed else 'default'}/{case}"


# --------------------------------------------------------------------------- generation


def generate(spec: Spec, pool: Executor | None = None) -> GoldenFile:
    """Evaluate every golden combo x case of a spec in float64, with the error model's budgets.

    The budgets (an ensemble per test, the slow part) are measured in ``pool`` when given.
    """
    return generate_many([spec], pool)[0]


def generate_many(
    specs: Sequence[Spec], pool: Executor | None = None, on_test: Callable[[str], None] | None = None
) -> list[GoldenFile]:
    """:func:`generate` for several specs, measuring every test's budgets in one pool.

    ``on_test(rule)`` is called after each test's budgets are measured (progress).
    """
    jobs: list[tuple[Spec, dict[str, str], Any, Any]] = []
    measurements: list[tuple[Any, ...]] = []
    for spec in specs:
        inputs = {case.id: make_inputs(spec, case) for case in spec.cases}
        for variant in spec.golden_combos():
            rule = spec.resolve(variant)
            for case in spec.cases:
                hyper = spec.hyper_values(case.hyper)
                record = recorded_steps(case.steps)
                ref64 = run_reference(rule, hyper, inputs[case.id], FLOAT64, range(1, case.steps + 1))
                name = test_name(spec, variant, case.id)
                _check_finite(spec, name, ref64, "the float64 reference")
                jobs.append((spec, dict(variant), case, inputs[case.id]))
                measurements.append((rule, hyper, inputs[case.id], record, PROFILES, name, ref64))
    mapped = pool.map(_measure, measurements, chunksize=4) if pool is not None else map(_measure, measurements)
    tests: dict[str, list[GoldenTest]] = {spec.name: [] for spec in specs}
    for (spec, variant, case, case_inputs), (_, hyper, _, record, _, name, ref64), atol in zip(jobs, measurements, mapped):
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
                schedule=None if case.schedule is None else case.schedule.as_json(),  # type: ignore[attr-defined]
            )
        )
    return [GoldenFile(spec.name, spec.sha256, tuple(tests[spec.name]), f"conformance/golden/{spec.name}.json") for spec in specs]


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


# --------------------------------------------------------------------------- JSON encoding


def encode_array(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f8").tobytes()
    return {"shape": list(np.shape(array)), "data": base64.b64encode(data).decode("ascii")}


def decode_array(obj: Mapping[str, Any], where: str) -> np.ndarray:
    """A stored array; wrong length, a bad base64 string or a NaN/inf element is a GoldenError.

    The reference refuses to write non-finite values (its trajectories and inputs are
    checked when generated), so a non-finite element can only come from an edit.
    """
    shape = tuple(obj["shape"])
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (ValueError, TypeError) as exc:
        raise GoldenError(f"{where}: array data is not valid base64 ({exc})") from None
    count = math.prod(shape)
    if len(raw) != 8 * count:
        raise GoldenError(f"{where}: array of shape {list(shape)[:8]} needs {8 * count} bytes, found {len(raw)}")
    array = np.frombuffer(raw, dtype="<f8").reshape(shape).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise GoldenError(f"{where}: holds a NaN or infinite value, which the reference never writes")
    return array


def to_document(golden: GoldenFile, spec: Spec) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for test in golden.tests:
        if test.inputs_id not in inputs:
            inputs[test.inputs_id] = {
                "shapes": [list(s) for s in SHAPES],
                "steps": test.inputs.steps,
                "params": [encode_array(p) for p in test.inputs.params],
                "grads": [encode_array(g) for g in test.inputs.grads],
                "lrMultipliers": encode_array(test.inputs.lr_multipliers),
            }
        key = json.dumps([test.variant, test.hyper, test.lr_multiplier, test.schedule], sort_keys=True)
        group = groups.setdefault(
            key,
            {
                "variant": dict(test.variant),
                "hyper": dict(test.hyper),
                "shapes": [list(s) for s in SHAPES],
                "lrMultiplier": test.lr_multiplier,
                "slots": list(test.slots),
                "tests": [],
            },
        )
        if test.schedule is not None:
            group["schedule"] = dict(test.schedule)
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
                            for profile in PROFILES
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
        "errorModel": error_model_header(),
        "notes": FLAG_NOTES,
        "numberOfTests": len(golden.tests),
        "recordedSteps": sorted({s for t in golden.tests for s in t.steps}),
        "inputs": inputs,
        "testGroups": list(groups.values()),
    }
    doc["contentSha256"] = content_hash(doc)
    return doc


def content_hash(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "contentSha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- reading


@cache
def golden_schema() -> dict[str, Any]:
    return json.loads(resources.files("optspec.vectors").joinpath("golden.schema.json").read_text())


#: Golden files nest about ten levels deep; anything much deeper is refused before decoding
#: (the decoder recurses once per level).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class _BadNumber(ValueError):
    pass


def _json_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number (golden values and budgets are finite)")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} overflows binary64")
    return value


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise _BadNumber(f"the integer {text[:40]}... has {len(text)} digits")
    return int(text)


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (strings skipped), without recursing."""
    depth = deepest = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def load_json(path: Path, shown: str, what: str = "golden file") -> Any:
    """Read and decode a JSON file; every failure (missing, unreadable, not UTF-8, nested too
    deeply, not JSON, NaN, Infinity, a number binary64 cannot hold) is a one-line GoldenError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GoldenError(f"{shown}: {what} is missing; run `optspec golden` to generate it") from None
    except OSError as exc:
        raise GoldenError(f"{shown}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GoldenError(f"{shown}: the {what} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise GoldenError(f"{shown}: not a {what}: JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(text, parse_constant=_json_constant, parse_float=_json_float, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{shown}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _BadNumber as exc:
        raise GoldenError(f"{shown}: not a valid {what}: {exc}") from None
    except RecursionError:
        raise GoldenError(f"{shown}: not a {what}: JSON nested too deeply") from None


def schema_error(doc: Any, schema: Mapping[str, Any], shown: str, name: str) -> GoldenError | None:
    """The best-matching schema violation as a one-line GoldenError (None when ``doc`` matches)."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if error is None:
        return None
    where = shorten("/".join(str(p) for p in error.absolute_path) or "(top level)", 120)
    return GoldenError(f"{shown}: does not match {name} at {where}: {shorten(error.message, 200)}")


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
        inputs[input_id] = CaseInputs(params, grads, lr)
    tests: list[GoldenTest] = []
    for group in doc["testGroups"]:
        for item in group["tests"]:
            where = f"{shown}: test {quoted(item['name'])}"
            if item["inputs"] not in inputs:
                raise GoldenError(f"{where}: refers to unknown inputs {quoted(item['inputs'])}")
            case_inputs = inputs[item["inputs"]]
            schedule = group.get("schedule")
            if schedule is not None:
                from optspec.schedules import ScheduleRef

                ref = ScheduleRef(
                    schedule["name"], dict(schedule["variant"]), {k: float(v) for k, v in schedule["hyper"].items()}
                )
                case_inputs = dataclasses.replace(case_inputs, schedule=ref)
            slots = list(group["slots"])
            count = len(case_inputs.params)
            expected: Trajectory = {}
            atol: dict[str, dict[int, list[dict[str, float]]]] = {p: {} for p in PROFILES}
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
                for profile in PROFILES:
                    _check_slots(record["atol"][profile], slots, count, f"{where} step {step} atol {profile}")
                    atol[profile][step] = [
                        {slot: float(record["atol"][profile][slot][i]) for slot in slots} for i in range(count)
                    ]
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
                )
            )
    return GoldenFile(doc["rule"], doc["spec"]["sha256"], tuple(tests), shown)


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


def write_all(
    specs: Iterable[Spec], directory: Path, workers: int | None = None, on_test: Callable[[str], None] | None = None
) -> list[Path]:
    specs = list(specs)
    written = []
    with _pool(workers) as pool:
        goldens = generate_many(specs, pool, on_test)
    for spec, golden in zip(specs, goldens):
        path = directory / f"{spec.name}.json"
        write_atomic(path, dumps(to_document(golden, spec)))
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
    specs: Iterable[Spec], directory: Path, workers: int | None = None, on_test: Callable[[str], None] | None = None
) -> list[str]:
    """Regenerate in memory; return one message per file that differs (empty: all current)."""
    problems = []
    specs = list(specs)
    with _pool(workers) as pool:
        goldens = generate_many(specs, pool, on_test)
    for spec, golden in zip(specs, goldens):
        path = directory / f"{spec.name}.json"
        shown = str(path)
        fresh = json.loads(dumps(to_document(golden, spec)))
        try:
            stored = load_json(path, shown)
        except GoldenError as exc:
            problems.append(str(exc))
            continue
        if stored != fresh:
            # A file that is not even shaped like a golden file is named by its schema error.
            error = schema_error(stored, golden_schema(), shown, "golden.schema.json")
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
    if stored.get("inputs") != fresh["inputs"]:
        return "the stored inputs differ"
    fresh_names = {t["name"] for g in fresh["testGroups"] for t in g["tests"]}
    gone = sorted(set(stored_tests) - fresh_names)
    if gone:
        return f"test {gone[0]!r} no longer exists"
    return "the content hash differs"
