"""The command line: exit codes 0 / 1 / 2 and one-line errors that name what is wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optspec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optspec.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_lists_the_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("list", "golden", "validate", "run", "check", "bench"):
        assert command in result.stdout, f"`optspec --help` does not list {command!r}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--rule", "adamz"], "unknown rule 'adamz' (known rules:"),
        (["run", "--impl", "tensorflow"], "unknown implementation 'tensorflow' (known:"),
        (["list", "nope"], "unknown rule 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2, f"exit {result.returncode} for {args}: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], f"stderr for {args} is not one line naming the problem: {result.stderr!r}"
    assert "Traceback" not in result.stderr


def test_malformed_spec_exits_2(tmp_path: Path) -> None:
    lines = [
        'name = "broken"',
        'title = "x"',
        'references = [{title = "x"}]',
        'step = ["theta = theta - lr * gradd"]',
        "[hyper.lr]",
        "default = 0.1",
        'domain = "[0, inf)"',
        'doc = "x"',
    ]
    (tmp_path / "broken.toml").write_text("\n".join(lines) + "\n")
    result = _run("list", "--specs", str(tmp_path), "broken")
    assert result.returncode == 2
    assert (
        "broken.toml: rule 'broken', step equation 1 'theta = theta - lr * gradd', column 22: unknown name 'gradd'"
        in result.stderr
    ), result.stderr


def test_corrupt_golden_exits_2(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(ROOT / "conformance" / "golden", golden)
    path = golden / "adadelta.json"
    doc = json.loads(path.read_text())
    doc["testGroups"][0]["hyper"]["lr"] = 0.5
    path.write_text(json.dumps(doc))
    result = _run("run", "--rule", "adadelta", "--dir", str(golden))
    assert result.returncode == 2
    assert "adadelta.json: content hash mismatch" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    check = _run("golden", "--check", "--dir", str(golden), "adadelta")
    assert check.returncode == 1 and "adadelta.json: out of date" in check.stderr, check.stderr


def test_run_prints_the_matrix(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = _run("run", "--rule", "adadelta", "--impl", "torch.for-loop", "--dtype", "float64", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adadelta" in result.stdout and "conforms" in result.stdout, result.stdout
    doc = json.loads(out.read_text())
    records = doc["results"]
    assert records and all(r["status"] in ("conforms", "skipped") for r in records), records[:2]
    assert doc["format"] == "optspec-run/1" and doc["environment"]["packages"]["torch"], doc["environment"]


def test_validate(capsys: pytest.CaptureFixture[str]) -> None:
    # Specs, schemas, hashes and the registry; the regenerated sample of every golden file is
    # tox's own `optspec validate --sample 2` command, and tests/test_bad_input.py tests the sample.
    assert main(["validate", "--dir", str(ROOT / "conformance" / "golden"), "--sample", "0"]) == 0
    assert "known deviations are valid" in capsys.readouterr().out


def test_validate_selects_rules_and_schedules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--rule and --schedule validate only the files they name (as `optspec run` selects)."""
    golden = tmp_path / "golden"
    shutil.copytree(ROOT / "conformance" / "golden", golden)
    (golden / "adam.json").write_text("[]")
    (golden / "schedules" / "cosine.json").write_text("[]")
    assert main(["validate", "--dir", str(golden), "--rule", "sgd", "--rule", "lion", "--sample", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 rule specs with ") and " 0 schedules with 0 golden tests" in out, (
        f"--rule sgd --rule lion validates those two rules and no schedule: {out}"
    )
    assert main(["validate", "--dir", str(golden), "--schedule", "step", "--sample", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 rule specs with 0 golden tests, 1 schedules with "), f"--schedule step: {out}"
    assert main(["validate", "--dir", str(golden), "--rule", "adam", "--sample", "0"]) == 2
    assert "adam.json: does not match golden.schema.json" in capsys.readouterr().err, "the named file is validated"
    assert main(["validate", "--dir", str(golden), "--schedule", "cosine", "--sample", "0"]) == 2
    assert "cosine.json: does not match" in capsys.readouterr().err, "the named schedule file is validated"
