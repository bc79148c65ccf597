"""``optspec check`` end to end: exit codes, output, JSON, and targets that misbehave.

The target runs in a spawned worker process, so these tests also exercise the isolation:
a target that hangs is killed at the time limit, one that crashes the interpreter is
reported, and in both cases the remaining cases still run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from optspec.checking.runner import check
from optspec.cli import main

FIXTURES = "tests.fixtures.misbehaving"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_torch_adamw_conforms_to_adamw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    code, out, _ = run_cli(capsys, "adamw", "torch.optim:AdamW", "--json", str(path))
    assert code == 0, f"torch.optim.AdamW should conform to adamw; output:\n{out}"
    assert "verdict: torch.optim:AdamW conforms to adamw" in out, out
    doc = json.loads(path.read_text())
    for key in ("optspec", "specs", "target", "environment", "cases", "behaviour", "verdict"):
        assert key in doc, f"--json output lacks {key!r}: {sorted(doc)}"
    assert doc["specs"]["adamw"]["sha256"], "the JSON must carry the spec hash"
    assert doc["target"]["kind"] == "torch" and doc["verdict"] == "conforms", doc["target"]
    assert {c["status"] for c in doc["cases"]} == {"conforms"}, [c for c in doc["cases"] if c["status"] != "conforms"]
    statuses = {b["name"]: b["status"] for b in doc["behaviour"]}
    assert statuses["state_dict"] == "passed" and statuses["hyperparameters"] == "passed", statuses


def test_torch_adamw_claimed_as_adam_fails_with_a_diagnosis(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "adam", "torch.optim:AdamW", "--no-behaviour")
    assert code == 1, f"torch.optim.AdamW must not conform to adam (L2 decay); output:\n{out}"
    assert "diagnosis: behaves like adamw" in out and "decay_scale=lr" in out, f"the diagnosis should name adamw:\n{out}"
    assert "FAIL case knobs (float64)" in out, f"the failing case should be listed:\n{out}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["nosuchrule", "torch.optim:AdamW"], "unknown rule 'nosuchrule'"),
        (["adam", "torch.optim:AdamW", "--variant", "amsgrad=sometimes"], "has no value 'sometimes'"),
        (["adam", "torch.optim:AdamW", "--variant", "colour=red"], "unknown variant knob 'colour'"),
        (["adam", "torch.optim:AdamW", "--hyper", "beta1=2"], "outside its domain"),
        (["adam", "torch.optim:AdamW", "--hyper", "gamma=1"], "has no hyperparameter 'gamma'"),
        (["adam", "torch.optim:AdamW", "--map", "gamma=g"], "'gamma' is neither a hyperparameter"),
        (["adam", "no_such_module_xyz:Adam"], "cannot import module 'no_such_module_xyz'"),
        (["adam", "torch.optim:NoSuchAdam"], "has no attribute 'NoSuchAdam'"),
        (["adam", "torch.optim"], "must be MODULE:ATTRIBUTE"),
        (["adam", "torch.optim:Optimizer", "--timeout", "0"], "--timeout 0: must be positive"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, f"optspec check {' '.join(argv)} should exit 2, got {code}; stderr: {err}"
    assert says in err and len(err.strip().splitlines()) == 1, f"expected one line mentioning {says!r}, got: {err!r}"


@pytest.mark.parametrize(
    ("target", "failure", "says"),
    [
        ("HangsOnKnobs", "timeout", "time limit"),
        ("CrashesOnKnobs", "crashed", "worker process died"),
        ("RaisesOnKnobs", "raised", "RuntimeError: boom"),
        ("WrongDtypeOnKnobs", "raised", "has dtype torch.float16"),
    ],
)
def test_misbehaving_target_is_reported_per_case(target: str, failure: str, says: str) -> None:
    report = check("adam", f"{FIXTURES}:{target}", behaviour=False, dtypes=("float32",), timeout=5.0, steps=10)
    by_case = {c.case: c for c in report.cases}
    knobs = by_case["knobs"]
    assert (knobs.status, knobs.failure) == ("fails", failure), f"{target}: knobs case should fail with {failure}: {knobs}"
    assert says in knobs.message, f"{target}: the message should say {says!r}: {knobs.message}"
    for case in ("defaults", "zero_grad"):
        assert by_case[case].status == "conforms", f"{target}: case {case} should still run and conform: {by_case[case]}"
    assert report.exit_code == 1


def test_factory_returning_something_else_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain function that is not an optax factory could not be run in any case: bad input, not a verdict."""
    code, out, err = run_cli(capsys, "adam", f"{FIXTURES}:not_a_transformation", "--no-behaviour")
    assert code == 2, f"a function returning a dict must exit 2, got {code}; stdout: {out}"
    assert "could not run tests.fixtures.misbehaving:not_a_transformation" in err, err
    assert "not an optax GradientTransformation" in err and len(err.strip().splitlines()) == 1, err
    assert "does NOT conform" not in out, out
