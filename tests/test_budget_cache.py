"""``optspec check``'s record of measured budgets (``$OPTSPEC_BUDGET_CACHE``): the same numbers, sooner."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from optspec.cases import make_inputs, recorded_steps
from optspec.checking import budget_cache
from optspec.checking.budget_cache import CACHE_ENV, cache_dir, key, measured
from optspec.spec import SpecLibrary
from optspec.tolerance import PROFILES, measure


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "budgets"
    monkeypatch.setenv(CACHE_ENV, str(directory))
    return directory


def scenario(steps: int = 5):
    spec = SpecLibrary().get("adam")
    case = dataclasses.replace(spec.case("defaults"), steps=steps)
    variant = spec.default_variant()
    return spec, spec.resolve(variant), variant, spec.hyper_values(case.hyper), make_inputs(spec, case), recorded_steps(steps)


def test_a_recorded_measurement_is_bit_for_bit_the_measured_one(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, rule, variant, hyper, inputs, record = scenario()
    direct = measure(rule, hyper, inputs, record, PROFILES, seed_text="adam/defaults")
    first = measured(rule, spec.sha256, variant, hyper, inputs, record, PROFILES, "adam/defaults")
    assert len(list(cache.iterdir())) == 1, "one measurement, one record"

    def no_measure(*args: object, **kwargs: object) -> None:
        raise AssertionError("a recorded measurement was measured again")

    monkeypatch.setattr(budget_cache, "measure", no_measure)
    again = measured(rule, spec.sha256, variant, hyper, inputs, record, PROFILES, "adam/defaults")
    for got, what in ((first, "measured through the record"), (again, "read back from the record")):
        assert got.keys() == direct.keys(), f"{what}: profiles {sorted(got)} != {sorted(direct)}"
        for profile in direct:
            for step in direct[profile]:
                for index, slots in enumerate(direct[profile][step]):
                    for slot, value in slots.items():
                        stored = got[profile][step][index][slot]
                        assert float(stored).hex() == float(value).hex(), (
                            f"{what}: {profile} step {step} {slot}[{index}] is {stored!r}, measure gives {value!r}"
                        )


@pytest.mark.parametrize(
    "change",
    ["hyper", "variant", "inputs", "record", "profiles", "seed", "spec"],
)
def test_anything_the_budgets_depend_on_changes_the_key(change: str) -> None:
    spec, _, variant, hyper, inputs, record = scenario()
    args = dict(
        spec_sha256=spec.sha256, variant=variant, hyper=hyper, inputs=inputs, record=record, profiles=PROFILES, seed_text="s"
    )
    base = key(**args)
    if change == "hyper":
        args["hyper"] = {**hyper, "lr": np.nextafter(hyper["lr"], 1.0)}
    elif change == "variant":
        args["variant"] = {**variant, "maximize": "on"}
    elif change == "inputs":
        grads = list(inputs.grads)
        grads[0] = grads[0].copy()
        grads[0].flat[3] = np.nextafter(grads[0].flat[3], np.inf)
        args["inputs"] = dataclasses.replace(inputs, grads=tuple(grads))
    elif change == "record":
        args["record"] = list(record)[:-1]
    elif change == "profiles":
        args["profiles"] = ("float64", "float32")
    elif change == "seed":
        args["seed_text"] = "t"
    else:
        args["spec_sha256"] = "0" * 64
    assert key(**args) != base, f"a change of {change} must name another measurement"


def test_an_unreadable_record_is_measured_again(cache: Path) -> None:
    spec, rule, variant, hyper, inputs, record = scenario()
    first = measured(rule, spec.sha256, variant, hyper, inputs, record, PROFILES, "x")
    (path,) = cache.iterdir()
    path.write_text("{not json")
    assert measured(rule, spec.sha256, variant, hyper, inputs, record, PROFILES, "x") == first
    assert path.read_text().startswith('{"'), "the broken record is replaced by the measurement"


@pytest.mark.parametrize("value", ["off", "", "0"])
def test_off_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(CACHE_ENV, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() is None
    spec, rule, variant, hyper, inputs, record = scenario(steps=2)
    measured(rule, spec.sha256, variant, hyper, inputs, record, PROFILES, "x")
    assert list(tmp_path.iterdir()) == [], f"{CACHE_ENV}={value!r} wrote {list(tmp_path.rglob('*'))}"


def test_default_is_under_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "optspec" / "budgets"


def test_the_code_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, _, variant, hyper, inputs, record = scenario(steps=2)
    before = key(spec.sha256, variant, hyper, inputs, record, PROFILES, "x")
    monkeypatch.setattr(budget_cache, "code_fingerprint", lambda: "another version of optspec")
    assert key(spec.sha256, variant, hyper, inputs, record, PROFILES, "x") != before, (
        "budgets measured by other code must not be read back"
    )
