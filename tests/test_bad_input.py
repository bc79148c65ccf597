"""Issue 10: every bad input ends in one short line (exit 2), never a traceback.

One test (or a few) per numbered item of the issue, each reproducing the input that used to
end in a traceback, a wrong exit code or a silent pass.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optspec.cli import main
from optspec.errors import SpecError
from optspec.expr import MAX_OPERATIONS, parse_expr, to_source
from optspec.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
REPO_GOLDEN = ROOT / "conformance" / "golden"


def spec_text(step: str, domain: str = "[0, inf)", extra: str = "") -> str:
    """A one-equation rule named ``toy`` with the hyperparameter ``lr``."""
    return (
        'name = "toy"\ntitle = "Toy"\nreferences = [{ title = "A test rule" }]\n'
        f"step = [{json.dumps(step)}]\n{extra}\n"
        f'[hyper.lr]\ndefault = 1e-3\ndomain = "{domain}"\ndoc = "Learning rate."\n'
    )


def write_spec(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "toy.toml").write_text(text)
    return directory


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``optspec ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> str:
    """Assert exit 2 with exactly one short stderr line containing every fragment; return it."""
    assert "Traceback" not in err, f"a traceback instead of one line:\n{err[-3000:]}"
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code} instead of 2 (bad input); stderr: {err[-2000:]!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr instead of one: {err[-2000:]!r}"
    assert len(lines[0]) <= 1000, f"the error line is {len(lines[0])} characters long: {lines[0][:300]!r}..."
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} is not in the error line {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------- item 1


def chain(terms: int, op: str = "+") -> str:
    return "theta = theta - lr * grad" + f" {op} grad" * terms


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_item1_long_chains_parse_and_check_without_recursion(op: str) -> None:
    """A 3000-term chain (any of + - * /) loads: the walks over the left-deep tree are iterative."""
    spec = parse_spec(spec_text(chain(3000, op)), "specs/toy.toml")
    rule = spec.resolve()
    assert rule.reads == {"theta", "lr", "grad"}, f"names read by a {op}-chain: {sorted(rule.reads)}"
    text = to_source(rule.equations[0].equation.expr)
    assert text.count(f" {op} grad") >= 3000 and text.count("(") == 3002, f"to_source of a {op}-chain: {text[:80]}..."
    assert to_source(parse_expr(f"a {op} b {op} c")) == f"((a {op} b) {op} c)", f"{op} must stay left-associative"


def test_item1_list_golden_and_validate_accept_thousands_of_terms(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    specs = write_spec(tmp_path / "specs", spec_text(chain(1000)))
    code, out, err = cli(capsys, "list", "--specs", str(specs), "toy")
    assert code == 0 and "toy: Toy" in out, f"optspec list on a 1000-term chain: exit {code}, {err[-2000:]}"
    golden = tmp_path / "golden"
    shutil.copytree(REPO_GOLDEN, golden)
    code, out, err = cli(capsys, "golden", "--specs", str(specs), "--dir", str(golden), "toy")
    assert code == 0 and "toy.json" in out, f"optspec golden on a 1000-term chain: exit {code}, {err[-2000:]}"
    code, out, err = cli(capsys, "validate", "--specs", str(specs), "--dir", str(golden))
    assert code == 0, f"optspec validate with a 1000-term chain: exit {code}, {err[-2000:]}"


def test_item1_too_long_an_expression_is_one_spec_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    specs = write_spec(tmp_path, spec_text(chain(MAX_OPERATIONS + 1)))
    code, _, err = cli(capsys, "list", "--specs", str(specs), "toy")
    one_line_error(code, err, "toy.toml: rule 'toy', step equation 1", f"more than {MAX_OPERATIONS} operators", "characters)")


# --------------------------------------------------------------------------- item 4

CASE = '[[cases]]\nid = "x"\ncomment = "A case."\n'


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("[., inf)", "is not an interval"),
        ("[-, 1]", "is not an interval"),
        ("[0, 1e5e5]", "is not an interval"),
        ("[0, 1e999]", "overflows binary64"),
        ("[1e-400, 1]", "underflows to 0"),
        ("[1, 0]", "empty interval"),
    ],
)
def test_item4_bad_domains_are_one_spec_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: str, message: str
) -> None:
    specs = write_spec(tmp_path, spec_text("theta = theta - lr * grad", domain=domain))
    code, _, err = cli(capsys, "list", "--specs", str(specs), "toy")
    one_line_error(code, err, "toy.toml: rule 'toy', hyperparameter 'lr' domain", message)


@pytest.mark.parametrize(
    ("step", "extra", "message"),
    [
        ("theta = theta - lr * grad * 1e-400", "", "column 29: number 1e-400 underflows to 0"),
        ("theta = theta - lr * grad * \u0661\u0662", "", "column 29: unexpected character '\u0661'"),
        ("theta = theta - lr * grad", CASE + "steps = 100000000000\n", "case 'x': field steps: 100000000000 must be"),
        ("theta = theta - lr * grad", CASE + "hyper = { lr = 1e-400 }\n", "line 8: the number 1e-400 underflows to 0"),
        ("theta = theta - lr * grad", CASE + "hyper = { lr = 1e999 }\n", "line 8: the number 1e999 overflows binary64"),
        ("theta = theta - lr * grad", CASE + "hyper = { lr = 1" + "0" * 400 + " }\n", "is not a number binary64 can hold"),
    ],
)
def test_item4_numbers_and_steps_are_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, step: str, extra: str, message: str
) -> None:
    """Unicode digits, literals that underflow or overflow, and unbounded ``steps`` are refused when loading."""
    specs = write_spec(tmp_path, spec_text(step, extra=extra))
    code, _, err = cli(capsys, "list", "--specs", str(specs), "toy")
    one_line_error(code, err, "toy.toml", message)


def test_item4_largest_step_count_is_still_accepted() -> None:
    from optspec.spec import MAX_STEPS

    spec = parse_spec(spec_text("theta = theta - lr * grad", extra=CASE + f"steps = {MAX_STEPS}\n"), "specs/toy.toml")
    assert spec.case("x").steps == MAX_STEPS, "the bound itself is a valid step count"
    with pytest.raises(SpecError, match="must be a whole number"):
        parse_spec(spec_text("theta = theta - lr * grad", extra=CASE + f"steps = {MAX_STEPS + 1}\n"), "specs/toy.toml")


# --------------------------------------------------------------------------- items 2 and 3: golden files


def golden_error(path: Path, *fragments: str) -> str:
    """read_golden refuses the file with a one-line GoldenError naming every fragment; return the line."""
    from optspec.errors import GoldenError
    from optspec.golden import read_golden
    from optspec.spec import SpecLibrary

    with pytest.raises(GoldenError) as info:
        read_golden(path, SpecLibrary().get(path.stem))
    line = str(info.value)
    assert "\n" not in line and len(line) <= 1000, f"not one short line: {line[:2000]!r}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} is not in the error {line!r}"
    return line


def golden_copy(tmp_path: Path) -> Path:
    golden = tmp_path / "golden"
    shutil.copytree(REPO_GOLDEN, golden)
    return golden


def rehash(path: Path, edit) -> None:
    """Apply ``edit`` to the parsed file and store it with a recomputed content hash (a tamperer's edit)."""
    from optspec.golden import content_hash

    doc = json.loads(path.read_text())
    edit(doc)
    doc["contentSha256"] = content_hash(doc)
    path.write_text(json.dumps(doc))


def first_record(doc: dict) -> dict:
    return doc["testGroups"][0]["tests"][0]["expected"][0]


def nan_array(shape: list[int]) -> dict:
    from optspec.golden import encode_array

    return encode_array(np.full(shape, np.nan))


def zeros(shape: list[int]) -> dict:
    from optspec.golden import encode_array

    return encode_array(np.zeros(shape))


def shifted(array: dict) -> dict:
    """The stored array with 1e-3 added to every element."""
    from optspec.golden import decode_array, encode_array

    return encode_array(decode_array(array, "test") + 1e-3)


def test_item2_nan_budget_fails_the_comparison() -> None:
    """``not (error <= budget)``: a NaN budget, or a NaN expected value, can no longer pass."""
    from optspec.conformance import compare
    from optspec.golden import generate
    from optspec.spec import SpecLibrary

    spec = SpecLibrary().get("sgd")
    test = generate(spec).tests[0]
    observed = {step: [dict(s) for s in tensors] for step, tensors in test.expected.items()}
    assert compare(test, observed, "float64", "sgd").ok, "the reference itself must conform to its own golden test"
    nan_atol = {p: {s: [{k: math.nan for k in slots} for slots in t] for s, t in per.items()} for p, per in test.atol.items()}
    result = compare(replace(test, atol=nan_atol), observed, "float64", "sgd")
    assert not result.ok, "a NaN budget must fail the comparison, not pass every implementation"
    nan_expected = {s: [{k: np.full_like(v, np.nan) for k, v in slots.items()} for slots in t] for s, t in test.expected.items()}
    result = compare(replace(test, expected=nan_expected), observed, "float64", "sgd")
    assert not result.ok and "non-finite" in result.message, f"a NaN expected value must fail: {result.message}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: first_record(d)["atol"]["float64"]["theta"].__setitem__(0, math.nan), "NaN is not a JSON number"),
        (lambda d: first_record(d)["atol"]["float32"]["b"].__setitem__(1, math.inf), "Infinity is not a JSON number"),
        (lambda d: first_record(d)["values"]["theta"].__setitem__(0, nan_array([])), "theta[0]: holds a NaN or infinite"),
    ],
)
def test_item2_non_finite_budgets_and_values_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit, message: str
) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    shutil.copy(REPO_GOLDEN / "sgd.json", golden / "sgd.json")
    rehash(golden / "sgd.json", edit)
    golden_error(golden / "sgd.json", message)
    code, out, err = cli(capsys, "run", "--rule", "sgd", "--impl", "torch.for-loop", "--dir", str(golden))
    one_line_error(code, err, "sgd.json", message)
    assert "conform" not in out, f"`optspec run` ran checks against a file with NaN budgets: {out[-500:]}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: first_record(d)["values"]["theta"].__setitem__(2, shifted(first_record(d)["values"]["theta"][2])), "stored"),
        (
            lambda d: [
                r["atol"]["float32"].__setitem__("theta", [10 * x for x in r["atol"]["float32"]["theta"]])
                for g in d["testGroups"]
                for t in g["tests"]
                for r in t["expected"]
            ],
            "stored budget",
        ),
    ],
)
def test_item2_validate_catches_a_tampered_value_with_a_recomputed_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit, message: str
) -> None:
    """The content hash is recomputable; validate regenerates a sample and catches the edit."""
    golden = golden_copy(tmp_path)
    path = golden / "sgd.json"
    # The edit is applied to every test, so that whichever test the sample picks is a tampered one.
    rehash(path, lambda d: [edit({"testGroups": [{"tests": [t]}]}) for g in d["testGroups"] for t in g["tests"]])
    from optspec.golden import read_golden

    read_golden(path)  # the hash was recomputed: the reader alone cannot tell
    code, _, err = cli(capsys, "validate", "--dir", str(golden), "--sample", "1", "--seed", "7")
    one_line_error(code, err, "sgd.json: test 'sgd/", message, "tampered", "--seed 7")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100000 + b"]" * 100000, "JSON nested 100000 levels deep"),
        (b'{"format": "optspec-golden/1", "rule": "\xff\xfe"}', "not UTF-8 text (byte 0xff at offset 40)"),
        (b"[]", "does not match golden.schema.json at (top level): [] is not of type 'object'"),
        (b'"a string"', "does not match golden.schema.json at (top level): 'a string' is not of type 'object'"),
        (b'{"x": 1' + b"0" * 5000 + b"}", "has 5001 digits"),
    ],
)
def test_item3_corrupt_files_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "sgd.json").write_bytes(content)
    golden_error(golden / "sgd.json", "sgd.json", message)
    code, _, err = cli(capsys, "golden", "--check", "--dir", str(golden), "sgd")
    assert code == 1 and "Traceback" not in err, f"golden --check on a corrupt file: exit {code}, {err[-2000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "sgd.json" in lines[0] and message in lines[0], f"golden --check: {lines}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: first_record(d)["values"].pop("b"), "values: slot 'b' of the group's slots (theta, b) is missing"),
        (lambda d: first_record(d)["atol"]["float32"].pop("theta"), "atol float32: slot 'theta' of the group's slots"),
        (lambda d: first_record(d)["values"]["theta"].pop(), "values: slot 'theta' has 4 entries for 5 tensors"),
        (lambda d: first_record(d)["values"].__setitem__("c", first_record(d)["values"]["b"]), "unknown slot 'c'"),
        (lambda d: d["inputs"]["defaults"]["grads"].__setitem__(0, zeros([])), "shapes of params, grads and lrMultipliers"),
    ],
)
def test_item3_structural_edits_with_a_recomputed_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit, message: str
) -> None:
    path = tmp_path / "sgd.json"
    shutil.copy(REPO_GOLDEN / "sgd.json", path)
    rehash(path, edit)
    golden_error(path, "sgd.json", message)
