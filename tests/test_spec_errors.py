"""Malformed specs: each problem is a SpecError naming the file, rule, equation and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from optspec.errors import SpecError
from optspec.spec import load_spec, parse_spec

VALID = """
name = "toy"
title = "Toy momentum"
references = [{ title = "A test rule" }]
step = [
  "grad: g = grad",
  "b = mu * b + g",
  "update: theta = theta - lr * b",
]

[hyper.lr]
default = 0.1
domain = "[0, inf)"
doc = "Learning rate."

[hyper.mu]
default = 0.9
domain = "[0, 1)"
doc = "Momentum."

[state.b]
init = "0"
doc = "Buffer."

[variants.sign]
default = "off"
values.off = { doc = "Descend." }
values.on = { doc = "Ascend.", replace = { grad = ["grad: g = -grad"] } }
"""


def _parse(text: str) -> None:
    parse_spec(text, "specs/toy.toml")


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        _parse(text)
    return info.value


def test_valid_toy_spec_parses() -> None:
    spec = parse_spec(VALID, "specs/toy.toml")
    assert [c.id for c in spec.cases] == ["defaults", "zero_grad"], "the two standard cases are added to every rule"
    assert [loc.equation.target for loc in spec.resolve({"sign": "on"}).equations] == ["g", "b", "theta"]


@pytest.mark.parametrize(
    ("old", "new", "fragments", "column"),
    [
        ('"b = mu * b + g"', '"b = mu * b + gg"', ["specs/toy.toml: rule 'toy', step equation 2", "unknown name 'gg'"], 14),
        ('"b = mu * b + g"', '"b = mu * b + sqrt(g, g)"', ["step equation 2", "sqrt() takes 1 argument, got 2"], 14),
        ('"b = mu * b + g"', '"b = mu * b + h", "h = g"', ["step equation 2", "local 'h' is read before the step writes it"], 14),
        ('"b = mu * b + g"', '"b = mu * b + max(g, 1)"', ["max() takes per-tensor scalars"], 14),
        ('"b = mu * b + g"', '"b = mu * b + g", "lr = 2"', ["'lr' is read-only"], 1),
        ('"b = mu * b + g"', '"b = mu * b $ g"', ["step equation 2", "unexpected character '$'"], 12),
    ],
)
def test_equation_errors_name_file_rule_equation_and_column(old: str, new: str, fragments: list[str], column: int) -> None:
    error = _error(VALID.replace(old, new))
    for fragment in fragments:
        assert fragment in str(error), f"error {str(error)!r} does not mention {fragment!r}"
    assert error.column == column, f"error {str(error)!r}: column {error.column}, expected {column}"


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('init = "0"\ndoc = "Buffer."', 'doc = "Buffer."', "state slot 'b' has no init and is read before the step writes it"),
        (
            'init = "0"\ndoc = "Buffer."',
            'init = "0"\ndoc = "Buffer."\n\n[state.c]\ninit = "0"\ndoc = "Unused."',
            "unused state slot",
        ),
        (
            'init = "0"\ndoc = "Buffer."',
            'init = "c"\ndoc = "Buffer."\n\n[state.c]\ninit = "b"\ndoc = "Cycle."',
            "initialisation cycle: b -> c -> b",
        ),
        ('default = "off"', 'default = "sideways"', "default value 'sideways' is not one of its values"),
        (
            'replace = { grad = ["grad: g = -grad"] }',
            'replace = { gradient = ["grad: g = -grad"] }',
            "no equation is labelled 'gradient'",
        ),
        ('default = 0.9\ndomain = "[0, 1)"', 'default = 1.5\ndomain = "[0, 1)"', "default 1.5 is outside its domain [0.0, 1.0)"),
        ('"update: theta = theta - lr * b"', '"update: u = theta - lr * b"', "the step never assigns theta"),
        (
            "[hyper.mu]",
            '[hyper.unused]\ndefault = 1.0\ndomain = "[0, inf)"\ndoc = "x"\n\n[hyper.mu]',
            "hyperparameter 'unused' is never used",
        ),
        ('name = "toy"', 'name = "other"', "the rule is named 'other' but the file is 'toy.toml'"),
        ('title = "Toy momentum"', 'titel = "Toy momentum"', "field (top level)"),
        ('domain = "[0, inf)"', 'domain = "0 to inf"', "field hyper.lr.domain"),
        ("step = [", "step = ][", "not valid TOML"),
    ],
)
def test_structural_errors(old: str, new: str, fragment: str) -> None:
    assert old in VALID, f"test setup: {old!r} not in the valid spec"
    error = _error(VALID.replace(old, new, 1))
    assert fragment in str(error), f"error {str(error)!r} does not mention {fragment!r}"
    assert str(error).startswith("specs/toy.toml"), f"error {str(error)!r} does not start with the file name"


def test_unknown_variant_value_and_knob() -> None:
    spec = parse_spec(VALID, "specs/toy.toml")
    with pytest.raises(SpecError, match="knob 'sign' has no value 'up'"):
        spec.resolve({"sign": "up"})
    with pytest.raises(SpecError, match="unknown variant knob 'colour'"):
        spec.resolve({"colour": "red"})


def test_unknown_hyperparameter_in_a_case() -> None:
    text = VALID + '\n[[cases]]\nid = "big"\ncomment = "x"\nhyper = { momentum = 0.5 }\n'
    error = _error(text)
    assert "case 'big'" in str(error) and "unknown hyperparameter 'momentum'" in str(error), str(error)


def test_case_schedule_may_only_use_t() -> None:
    text = VALID + '\n[[cases]]\nid = "sched"\ncomment = "x"\nlr_multiplier = "mu ** t"\n'
    error = _error(text)
    assert "lr_multiplier" in str(error) and "only 't' may be used here, not 'mu'" in str(error), str(error)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "toy.toml"
    bad.write_bytes(b"\xff\xfe name")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(bad)


def test_every_shipped_spec_loads() -> None:
    from optspec.spec import SpecLibrary

    library = SpecLibrary()
    assert library.names, "no specs are shipped"
    for spec in library.all():
        assert spec.references and spec.doc, f"{spec.path}: a shipped spec needs references and a doc"
