"""`pip install .` carries specs, adapters and golden vectors inside the optspec package only."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("optspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"optspec", f"optspec-{wheel.name.split('-')[1]}.dist-info"}, f"generic top-level names in the wheel: {tops}"
    for spec in (ROOT / "specs").glob("*.toml"):
        assert f"optspec/specs/{spec.name}" in names, f"{spec.name} is not shipped"
    for golden in (ROOT / "conformance" / "golden").glob("*.json"):
        assert f"optspec/vectors/{golden.name}" in names, f"golden {golden.name} is not shipped"
    for required in (
        "optspec/impls/deviations.toml",
        "optspec/impls/torch_optim.py",
        "optspec/specs/spec.schema.json",
        "optspec/cli.py",
        # optspec bench's timed bodies (asv_bench/benchmarks, shared with asv), the pytest plugin and its entry point
        "optspec/benchmarks/bodies.py",
        "optspec/benchmarks/param_sets.json",
        "optspec/bench_suite.py",
        "optspec/pytest_plugin.py",
    ):
        assert required in names, f"{required} is not shipped"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]\noptspec = optspec.pytest_plugin" in text, f"no pytest11 entry point in the wheel:\n{text}"
