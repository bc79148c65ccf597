"""Issue 10: every bad input ends in one short line (exit 2), never a traceback.

One test (or a few) per numbered item of the issue, each reproducing the input that used to
end in a traceback, a wrong exit code or a silent pass.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

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
