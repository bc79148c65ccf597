"""The record of documents that matched their schema (``$OPTSPEC_SCHEMA_CACHE``): it saves time only."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from optspec import golden_format
from optspec.golden_format import SCHEMA_CACHE_ENV, schema_cache_dir, schema_error

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["x"],
    "properties": {"x": {"type": "number"}},
}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "matched"
    monkeypatch.setenv(SCHEMA_CACHE_ENV, str(directory))
    return directory


def counting_validators(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every construction of a validator (a remembered match must not build one)."""
    built: list[object] = []
    real = jsonschema.Draft202012Validator

    def counting(schema: object) -> object:
        built.append(schema)
        return real(schema)

    monkeypatch.setattr(golden_format.jsonschema, "Draft202012Validator", counting)
    return built


def test_a_match_is_remembered_and_not_validated_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    assert len(list(cache.iterdir())) == 1, f"one matched document, one record: {list(cache.iterdir())}"
    built = counting_validators(monkeypatch)
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    assert built == [], "a document whose match is recorded was validated again"


def test_an_edited_document_is_validated_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    built = counting_validators(monkeypatch)
    error = schema_error({"x": "1.5"}, SCHEMA, "f.json", "s")
    assert error is not None and "f.json: does not match s at x: '1.5' is not of type 'number'" in str(error), (
        f"an edited document must be validated and its violation reported, got {error}"
    )
    assert len(built) == 1, "the edited document was not validated"


def test_a_violation_is_never_remembered(cache: Path) -> None:
    for _ in range(2):
        error = schema_error({"y": 1}, SCHEMA, "f.json", "s")
        assert error is not None and "'x' is a required property" in str(error), f"got {error}"
    assert not cache.exists() or not list(cache.iterdir()), f"a violation was recorded: {list(cache.iterdir())}"


def test_another_schema_is_another_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    stricter = {**SCHEMA, "properties": {"x": {"type": "integer"}}}
    error = schema_error({"x": 1.5}, stricter, "f.json", "s")
    assert error is not None and "is not of type 'integer'" in str(error), (
        f"a match under one schema must not pass the document under another: {error}"
    )


@pytest.mark.parametrize("value", ["off", "", "0", "none"])
def test_off_keeps_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(SCHEMA_CACHE_ENV, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert schema_cache_dir() is None
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    assert list(tmp_path.iterdir()) == [], f"{SCHEMA_CACHE_ENV}={value!r} wrote {list(tmp_path.rglob('*'))}"


def test_default_is_under_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEMA_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert schema_cache_dir() == tmp_path / "optspec" / "schema-matched"


def test_an_unwritable_cache_changes_nothing_but_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(SCHEMA_CACHE_ENV, str(blocker / "matched"))
    assert schema_error({"x": 1.5}, SCHEMA, "f.json", "s") is None
    error = schema_error({"y": 1}, SCHEMA, "f.json", "s")
    assert error is not None and "required property" in str(error), f"got {error}"


def test_a_repository_golden_file_loads_the_same_from_the_record(cache: Path) -> None:
    """read_golden through a remembered match gives the same file as a validated read."""
    from optspec.golden import default_golden_dir, read_golden
    from optspec.spec import SpecLibrary

    spec = SpecLibrary().get("sgd")
    path = default_golden_dir() / "sgd.json"
    first = read_golden(path, spec)
    assert len(list(cache.iterdir())) == 1
    second = read_golden(path, spec)
    assert [t.name for t in first.tests] == [t.name for t in second.tests]
    assert json.loads(path.read_text())["contentSha256"], "the repository file has a content hash"
