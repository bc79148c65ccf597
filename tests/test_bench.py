"""``optspec bench RULE TARGET``: a user's optimizer timed against torch.optim by pytest-benchmark, JSON out.

The suite's timed body is the asv suite's (asv_bench/benchmarks/bodies.py): both harnesses
import one file. CI's run at small CPU sizes is ``tox -e bench``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pytest_benchmark")

from optspec.cli import main

ASV_BENCH = Path(__file__).resolve().parents[1] / "asv_bench"

#: a user's optimizer in their own module: torch.optim.SGD under another name
MY_SGD = textwrap.dedent(
    """
    import torch


    class MySGD(torch.optim.SGD):
        pass
    """
)


def test_bench_writes_pytest_benchmark_json_for_a_users_optimizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mylib.py").write_text(MY_SGD)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "bench.json"
    argv = ["bench", "sgd", "mylib:MySGD", "--param-set", "many-small", "--param-set", "flat-64M"]
    argv += ["--impl", "target", "--impl", "torch.foreach", "--max-time", "0.01", "--min-rounds", "2", "--json", str(out)]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, f"optspec bench exited {code}:\n{printed}"
    doc = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "version"} <= set(doc), sorted(doc)
    timed = {b["extra_info"]["implementation"]: b for b in doc["benchmarks"]}
    assert sorted(timed) == ["target", "torch.foreach"], f"many-small ran for both; flat-64M skips on a CPU: {sorted(timed)}"
    mine = timed["target"]
    assert mine["extra_info"]["target"] == "mylib:MySGD" and mine["extra_info"]["numel"] == 1 << 20, mine["extra_info"]
    assert mine["group"] == "sgd many-small float32" == timed["torch.foreach"]["group"], "one group compares them"
    assert mine["stats"]["rounds"] >= 2 and mine["stats"]["mean"] > 0, mine["stats"]
    assert "without a GPU only parameter sets of at most" in printed, f"the skipped large set says why:\n{printed}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["bench", "nosuchrule", "torch.optim:SGD"], "unknown rule 'nosuchrule'"),
        (["bench", "sgd", "torch.optim:SGD", "--param-set", "huge"], "--param-set huge: unknown (known: flat-1M"),
        (["bench", "sgd", "torch.optim:SGD", "--impl", "mxnet"], "--impl mxnet: unknown"),
        (["bench", "sgd", "no_such_module_xyz:SGD"], "cannot import module 'no_such_module_xyz'"),
        (["bench", "sgd", "torch.optim:SGD", "--map", "momentum=momentm"], "takes no keyword 'momentm'"),
        (["bench", "sgd", "torch.optim:SGD", "--json", "/proc/no/such/dir/out.json"], "--json /proc/no/such/dir/out.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"optspec {' '.join(argv)} should exit 2, got {code}; stdout: {out[-2000:]}"
    assert says in err and len(err.strip().splitlines()) == 1, f"expected one line with {says!r}, got {err!r}"
    assert "benchmark" not in out, f"nothing is timed after bad input: {out[-2000:]}"


def test_both_harnesses_time_the_same_body() -> None:
    """asv's Step.time_step and the pytest-benchmark suite build their benches from one file."""
    import optspec.bench_suite as suite
    import optspec.benchmarks.bodies as bodies

    sys.path.insert(0, str(ASV_BENCH))
    try:
        from benchmarks import optimizer_step
    finally:
        sys.path.remove(str(ASV_BENCH))
    source = ASV_BENCH / "benchmarks" / "bodies.py"
    # An editable install imports the file itself; a wheel (tox) imports the copy setuptools made of it.
    assert Path(bodies.__file__).read_bytes() == source.read_bytes(), (
        f"optspec.benchmarks.bodies ({bodies.__file__}) is not the packaged asv_bench/benchmarks/bodies.py"
    )
    asv_body = Path(sys.modules[optimizer_step.make_bench.__module__].__file__)
    assert asv_body.read_bytes() == source.read_bytes(), (
        f"asv's optimizer_step builds its bench from {asv_body}, not from asv_bench/benchmarks/bodies.py"
    )
    assert suite.bench_prepared is bodies.bench_prepared and suite.target_bench is bodies.target_bench
    assert optimizer_step.Step.timer is optimizer_step.sync_then_perf_counter, "asv's clock is the shared one"
    marker = next(m for m in suite.test_step.pytestmark if m.name == "benchmark")
    assert marker.kwargs["timer"] is bodies.sync_then_perf_counter, "pytest-benchmark's clock is the shared one"
