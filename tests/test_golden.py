"""Golden vectors: bit-exact round trip, and every kind of corruption is a one-line GoldenError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from optspec.errors import GoldenError
from optspec.golden import (
    check_all,
    content_hash,
    decode_array,
    dumps,
    generate,
    read_golden,
    to_document,
    write_all,
    write_atomic,
)
from optspec.spec import SpecLibrary, parse_spec

ROOT = Path(__file__).resolve().parents[1]
REPO_GOLDEN = ROOT / "conformance" / "golden"


@pytest.fixture(scope="module")
def adamax():
    return SpecLibrary().get("adamax")


@pytest.fixture(scope="module")
def document(adamax) -> dict:
    return to_document(generate(adamax), adamax)


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "adamax.json"
    path.write_text(dumps(doc))
    return path


def test_round_trip_is_bit_exact(tmp_path: Path, adamax, document) -> None:
    fresh = generate(adamax)
    loaded = read_golden(_write(tmp_path, document), adamax)
    assert [t.name for t in loaded.tests] == [t.name for t in fresh.tests]
    for want, got in zip(fresh.tests, loaded.tests, strict=True):
        for step in want.steps:
            for i, slots in enumerate(want.expected[step]):
                for slot, value in slots.items():
                    assert np.array_equal(value, got.expected[step][i][slot]), f"{want.name} step {step} {slot}[{i}] changed"
                    assert value.tobytes() == got.expected[step][i][slot].tobytes(), "values must be stored bit-exactly"
        for a, b in zip(want.inputs.grads, got.inputs.grads, strict=True):
            assert a.tobytes() == b.tobytes(), f"{want.name}: gradients not stored bit-exactly"


def test_inputs_are_float32_representable(document) -> None:
    """float32 implementations must receive exactly the inputs of the float64 reference."""
    for input_id, item in document["inputs"].items():
        for array in [*item["params"], *item["grads"]]:
            values = decode_array(array, input_id)
            assert np.array_equal(values, values.astype(np.float32).astype(np.float64)), f"inputs {input_id} not float32-exact"


def test_hand_edit_is_detected(tmp_path: Path, adamax, document) -> None:
    doc = json.loads(json.dumps(document))
    doc["testGroups"][0]["tests"][0]["expected"][0]["atol"]["float32"]["theta"][0] *= 10
    with pytest.raises(GoldenError, match="content hash mismatch: the file was edited by hand or corrupted"):
        read_golden(_write(tmp_path, doc), adamax)


def test_truncated_file(tmp_path: Path, adamax, document) -> None:
    path = tmp_path / "adamax.json"
    path.write_text(dumps(document)[:5000])
    with pytest.raises(GoldenError) as info:
        read_golden(path, adamax)
    assert str(info.value).startswith(str(path)) and "not valid JSON (line" in str(info.value), str(info.value)


def test_schema_violation_names_the_field(tmp_path: Path, adamax, document) -> None:
    doc = json.loads(json.dumps(document))
    del doc["testGroups"][0]["tests"][0]["comment"]
    doc["contentSha256"] = content_hash(doc)
    with pytest.raises(GoldenError, match=r"does not match golden.schema.json at testGroups/0/tests/0: 'comment' is a required"):
        read_golden(_write(tmp_path, doc), adamax)


def test_array_of_wrong_length(tmp_path: Path, adamax, document) -> None:
    doc = json.loads(json.dumps(document))
    array = doc["testGroups"][0]["tests"][0]["expected"][0]["values"]["theta"][2]
    array["data"] = array["data"][:-12]
    doc["contentSha256"] = content_hash(doc)
    with pytest.raises(GoldenError, match=r"theta\[2\]: array of shape \[7\] needs 56 bytes"):
        read_golden(_write(tmp_path, doc), adamax)


def test_stale_spec_hash(tmp_path: Path, adamax, document) -> None:
    text = (ROOT / "specs" / "adamax.toml").read_text()
    changed = parse_spec(text.replace("default = 0.9", "default = 0.8", 1), "specs/adamax.toml")
    with pytest.raises(GoldenError, match=r"generated from another version of specs/adamax\.toml"):
        read_golden(_write(tmp_path, document), changed)


def test_missing_file(tmp_path: Path, adamax) -> None:
    with pytest.raises(GoldenError, match="golden file is missing; run `optspec golden`"):
        read_golden(tmp_path / "adamax.json", adamax)


def test_check_names_the_first_differing_test(tmp_path: Path, adamax, document) -> None:
    doc = json.loads(json.dumps(document))
    doc["testGroups"][1]["tests"][0]["comment"] = "edited"
    _write(tmp_path, doc)
    problems = check_all([adamax], tmp_path)
    name = document["testGroups"][1]["tests"][0]["name"]
    assert len(problems) == 1 and f"first differing test is {name!r}" in problems[0], problems
    write_all([adamax], tmp_path)
    assert check_all([adamax], tmp_path) == [], "a freshly written file must be current"


def test_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "x.json"
    write_atomic(path, "old\n")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new content\n")
    assert path.read_text() == "old\n", "a failed write must leave the previous file intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"], "no temporary file may be left behind"


def test_repository_golden_files_are_valid() -> None:
    library = SpecLibrary()
    for spec in library.all():
        golden = read_golden(REPO_GOLDEN / f"{spec.name}.json", spec)
        assert all(max(t.steps) >= 100 for t in golden.tests), f"{spec.name}: every case must run at least 100 steps"
        assert all(set(t.steps) >= {1, 2, 3, 10} for t in golden.tests), f"{spec.name}: steps 1, 2, 3 and 10 must be recorded"
        cases = {t.case for t in golden.tests}
        assert {"defaults", "zero_grad"} <= cases, f"{spec.name}: defaults and zero-gradient cases are required"
