"""The pytest plugin as an author meets it: a project outside this repository, a fresh venv, only the wheel.

Slow (a virtual environment with torch is installed from pip's cache): marked ``slow``, so the
default run deselects it; ``tox -e plugin-wheel`` runs it. The fast in-process version of
these checks is tests/test_pytest_plugin.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "tests" / "fixtures" / "planted.py"

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "VIRTUAL_ENV", "PYTHONPATH"))}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project directory, its venv's bin directory): the wheel, torch and pytest installed, nothing else."""
    base = tmp_path_factory.mktemp("author")
    assert ROOT not in base.parents, f"the project must live outside the repository: {base}"
    wheels = base / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)], base
    )
    assert built.returncode == 0, f"building the wheel failed: {built.stderr[-3000:]}"
    (wheel,) = wheels.glob("optspec-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], base)
    assert made.returncode == 0, made.stderr
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text(), "the venv must not see system packages"
    bin_dir = venv / "bin"
    install = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    installed = _run([*install, f"{wheel}[torch]", "pytest==9.1.1"], base)
    assert installed.returncode == 0, f"installing the wheel failed: {installed.stderr[-3000:]}"
    proj = base / "mylib"
    (proj / "tests").mkdir(parents=True)
    (proj / "planted.py").write_text(PLANTED.read_text())
    (proj / "pyproject.toml").write_text('[project]\nname = "mylib"\nversion = "0"\ndependencies = ["optspec[torch]"]\n')
    (proj / "tests" / "test_own.py").write_text("def test_own():\n    assert 1 + 1 == 2\n")
    return proj, bin_dir


def test_optspec_comes_from_the_wheel(project: tuple[Path, Path]) -> None:
    proj, bin_dir = project
    where = _run([str(bin_dir / "python"), "-c", "import optspec; print(optspec.__file__)"], proj)
    assert where.returncode == 0 and str(bin_dir.parent) in where.stdout, f"optspec imported from {where.stdout!r}"
    assert str(ROOT) not in where.stdout, f"the fresh venv sees the repository: {where.stdout}"


def test_pytest_optspec_torch_adamw_passes(project: tuple[Path, Path]) -> None:
    proj, bin_dir = project
    result = _run([str(bin_dir / "pytest"), "-v", "-p", "no:cacheprovider", "--optspec", "adamw=torch.optim:AdamW"], proj)
    out = result.stdout
    assert result.returncode == 0, f"pytest --optspec adamw=torch.optim:AdamW failed ({result.returncode}):\n{out[-6000:]}"
    assert "tests/test_own.py::test_own PASSED" in out, f"the author's own tests still run:\n{out[-3000:]}"
    for test in ("defaults-float64", "knobs-float32", "behaviour-state_dict", "behaviour-param_groups"):
        assert f"optspec[adamw=torch.optim:AdamW]::{test} PASSED" in out, f"{test} did not pass:\n{out[-6000:]}"


def test_pytest_optspec_broken_adamw_fails_readably(project: tuple[Path, Path]) -> None:
    proj, bin_dir = project
    result = _run([str(bin_dir / "pytest"), "-p", "no:cacheprovider", "--optspec", "adamw=planted:BrokenAdamW"], proj)
    out = result.stdout
    assert result.returncode == 1, f"the planted AdamW must fail ({result.returncode}):\n{out[-6000:]}"
    assert "FAILED optspec[adamw=planted:BrokenAdamW]::knobs-float64" in out, out[-6000:]
    assert "FAIL case knobs (float64): adamw x planted:BrokenAdamW" in out, out[-6000:]
    assert "diagnosis: behaves like adam" in out and "Traceback" not in out, out[-6000:]
