"""The GPU run's pieces that need neither a GPU nor time (tools/gpu/; the whole dry run is tox -e gpu-rehearsal).

* wheel tags: the device (CPython 3.12, manylinux x86_64) accepts the locked wheels and refuses
  a cp311 or a macOS build; the lock's lines parse and name each package once;
* closure: walking the requirements stops at the device's own packages and at NOT_CARRIED, and
  a requirement nobody provides is reported;
* asv phases: a phase's regex selects exactly its rules' combinations in asv's naming
  (``name('rule', 'impl', 'set', 'dtype')``), ``sgd+momentum`` included, and nothing else;
* the summary: a target with its numbers is met or MISSED by the issue's limits, a target
  without them is "not measured", never met;
* the collection plugin refuses anything but ``--collect-only``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "gpu"


def _load(name: str):
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheels = _load("wheels")
asv_plan = _load("asv_plan")
summary = _load("summary")


@pytest.mark.parametrize(
    ("filename", "accepted"),
    [
        ("rpds_py-2026.9.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("asv-0.6.6-cp36-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("jsonschema-4.26.0-py3-none-any.whl", True),
        ("rpds_py-2026.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", False),
        ("rpds_py-2026.9.1-cp312-cp312-macosx_11_0_arm64.whl", False),
        ("rpds_py-2026.9.1-cp312-cp312-manylinux_2_17_aarch64.whl", False),
    ],
)
def test_device_tags(filename: str, accepted: bool) -> None:
    tags = wheels.parse_wheel_filename(filename)[3]
    assert bool(tags & wheels.device_tags()) is accepted, (
        f"{filename}: the device (cp312 manylinux x86_64) should {'' if accepted else 'not '}accept it"
    )


def test_lock_lines_parse_once_each() -> None:
    entries = wheels.lock_entries()
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names)), f"a package is locked twice (two versions stop the install): {names}"
    assert {"asv", "jsonschema", "setuptools"} <= set(names), f"the lock lacks what the device needs: {names}"
    device = wheels.device_packages()
    carried_on_device = [n for n in names if n in device and n != "setuptools"]
    assert not carried_on_device, f"carried although the device has them (they would shadow its own): {carried_on_device}"


def test_walk_stops_at_device_and_not_carried(tmp_path: Path) -> None:
    def wheel(name: str, version: str, requires: list[str]) -> Path:
        import zipfile

        path = tmp_path / f"{name}-{version}-py3-none-any.whl"
        metadata = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
        )
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        return path

    wheels_by_name = {
        "top": wheel("top", "1.0", ["mid>=2", "numpy", "virtualenv", 'winonly; platform_system == "Windows"']),
        "mid": wheel("mid", "2.1", ["leaf"]),
        "leaf": wheel("leaf", "0.3", []),
    }
    carried, problems = wheels.walk([wheels.Requirement("top")], wheels_by_name, {"numpy"})
    assert sorted(carried) == ["leaf", "mid", "top"], f"walk should carry top, mid, leaf only, carried {carried}"
    assert problems == [], f"nothing is missing, yet: {problems}"
    carried, problems = wheels.walk([wheels.Requirement("top"), wheels.Requirement("absent")], wheels_by_name, {"numpy"})
    assert any("absent" in p for p in problems), f"a requirement nobody provides must be reported: {problems}"
    _, problems = wheels.walk([wheels.Requirement("mid>=3")], wheels_by_name, set())
    assert any("does not satisfy" in p for p in problems), f"a version below the requirement must be reported: {problems}"


def test_phase_regex_selects_exactly_its_rules() -> None:
    pattern = re.compile(asv_plan.regex("roofline", "torch.fused", ["adam", "sgd+momentum"]))

    def name(rule: str, impl: str = "torch.fused", param_set: str = "flat-64M", dtype: str = "float32") -> str:
        return f"optimizer_step.Roofline.track_ratio('{rule}', '{impl}', '{param_set}', '{dtype}')"

    assert pattern.search(name("adam")) and pattern.search(name("sgd+momentum")), "the phase must select its rules"
    refused = [
        name("adamw"),
        name("sgd"),
        name("adam", "torch.foreach"),
        name("adam", param_set="flat-16M"),
        name("adam", dtype="bf16-fp32state"),
        name("adam").replace("Roofline.track_ratio", "Step.time_step"),
    ]
    selected = [n for n in refused if pattern.search(n)]
    assert not selected, f"the phase regex selects combinations outside it: {selected}"


def _row(lines: list[str], rule: str) -> str:
    return next(line for line in lines if line.startswith(f"| {rule} |"))


def test_summary_targets() -> None:
    key = ("flat-64M", "float32")
    values = {
        summary.TIME: {
            ("adam", "native-cuda", *key): 1.0e-3,
            ("adam", "torch.fused", *key): 1.1e-3,
            ("lamb", "native-cuda", *key): 2e-3,
        },
        summary.RATIO: {
            ("adam", "native-cuda", *key): 1.05,
            ("lamb", "native-cuda", *key): 1.25,
            ("lion", "native-cuda", *key): 1.2,
        },
    }
    lines = summary.benchmark_section(values, "0" * 40, "gpu-test")
    assert "roofline <= 1.11: met" in _row(lines, "adam") and ">= 1.0x fused: met" in _row(lines, "adam"), _row(lines, "adam")
    assert "roofline <= 1.2: MISSED" in _row(lines, "lamb"), (
        f"LAMB at 1.25 of its two-pass floor misses 1.2: {_row(lines, 'lamb')}"
    )
    assert "roofline <= 1.11: MISSED" in _row(lines, "lion"), f"lion at 1.2 misses 1.11: {_row(lines, 'lion')}"
    assert "Targets: 2 met, 2 missed, 0 not measured." in lines, lines
    empty = summary.benchmark_section({}, None, "gpu-test")
    assert any("Not measured" in line for line in empty) and not any("met" in line.split() for line in empty), empty
    fused_only = summary.benchmark_section({summary.TIME: {("sgd", "torch.fused", *key): 1e-3}}, None, "gpu-test")
    row = _row(fused_only, "sgd")
    assert "roofline <= 1.11: not measured" in row and ">= 1.0x fused: not measured" in row, row


def test_pretend_cuda_refuses_a_real_run(tmp_path: Path) -> None:
    import os
    import subprocess

    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOOLS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pretend_cuda", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, f"pretend_cuda must refuse to load outside --collect-only:\n{result.stdout}"
    assert "pretend_cuda is only for --collect-only" in result.stdout + result.stderr, result.stdout + result.stderr


def test_conformance_page_from_junit(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="conformance.test_cuda_gpu" name="test_gpu_conforms[optspec.cuda::adam/default/defaults::float32]"/>'
        '<testcase classname="conformance.test_cuda_gpu" '
        'name="test_gpu_conforms[torch.capturable.cuda::adam/default/defaults::float32]">'
        '<failure message="adam x torch.capturable.cuda: m exceeds the float32 budget">trace</failure></testcase>'
        '<testcase classname="conformance.test_cuda_gpu" name="test_gpu_conforms[optax.gpu::adam/default/defaults::float64]">'
        '<skipped message="optax.gpu does not run float64"/></testcase>'
        '<testcase classname="conformance.test_cuda_gpu" name="test_multi_tensor_launch[lamb]"/>'
        "</testsuite></testsuites>"
    )
    cases = summary.junit_cases(junit)
    assert [c["status"] for c in cases] == ["passed", "failed", "skipped", "passed"], cases
    page = summary.conformance_page(cases, {"preflight": {"gpu": {"name": "NVIDIA H200"}}, "source": {"commit": "a" * 40}})
    assert "| torch.capturable.cuda | 0 | 1 | 0 | 0 |" in page, page
    assert "| optspec.cuda (multi_tensor_launch) | 1 | 0 | 0 | 0 |" in page, page
    assert "m exceeds the float32 budget" in page and "1 x optax.gpu does not run float64" in page, page
    assert "**1 FAILED** of 1" in page, page
