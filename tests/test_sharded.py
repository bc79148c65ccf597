"""Sharded columns: torch DTensor, FSDP2 and ZeRO over a real gloo group, checked against the golden cases.

The gang of ranks is started once per test session (optspec.impls.torch_gang.gang keeps one per
world size) and reused; the tests that kill it on purpose use their own Gang.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optspec.conformance import enumerate_checks, load_goldens, run_check
from optspec.golden import default_golden_dir
from optspec.impls import torch_gang
from optspec.impls.torch_sharded import TorchSharded, local_shards
from optspec.spec import SpecLibrary

pytest.importorskip("torch")

pytestmark = pytest.mark.sharded


def _checks(rule: str, layout: str, world_size: int, tests: set[str], dtypes: tuple[str, ...] = ("float64", "float32")):
    library = SpecLibrary()
    goldens = load_goldens(library, default_golden_dir(), [rule])
    impl = TorchSharded(layout, world_size)
    return [c for c in enumerate_checks(library, goldens, [impl], dtypes) if c.test.name in tests]


def test_case_shapes_give_uneven_and_empty_shards() -> None:
    """The golden cases' shapes (), (1,), (7,), (3, 5), (2, 3, 4) split unevenly at world size 2, with an empty shard."""
    assert local_shards((1,), "dtensor.shard0", 2) == [(0, 0, 1), (0, 1, 1)], "shape (1,) over 2 ranks: rank 1's shard is empty"
    assert local_shards((7,), "dtensor.shard0", 2) == [(0, 0, 4), (0, 4, 7)], "shape (7,) over 2 ranks: 4 + 3 rows"
    assert local_shards((3, 5), "dtensor.shard1", 2) == [(1, 0, 3), (1, 3, 5)], "Shard(1) of (3, 5): 3 + 2 columns"
    assert local_shards((3,), "dtensor.shard0", 4) == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 3)], "(3,) over 4: 1+1+1+0"
    assert local_shards((), "dtensor.shard0", 2) == [(-1, 0, 0)], "a 0-d tensor is replicated"
    library = SpecLibrary()
    golden = load_goldens(library, default_golden_dir(), ["adam"])["adam"]
    shapes = {tuple(p.shape) for p in golden.tests[0].inputs.params}
    assert {(1,), (7,), (3, 5)} <= shapes, f"the adam cases no longer have the shapes this test relies on: {shapes}"


@pytest.mark.parametrize("layout", ["dtensor.shard0", "dtensor.shard1", "fsdp2", "zero"])
def test_adam_conforms_sharded_at_world_size_2(layout: str) -> None:
    """torch.optim.Adam on sharded parameters matches the golden values under the one-process error model."""
    checks = _checks("adam", layout, 2, {"adam/default/defaults", "adam/amsgrad=raw/knobs"})
    assert len(checks) == 4, [c.id for c in checks]
    for check in checks:
        result = run_check(check)
        assert result.status == "conforms", f"{check.id}: {result.status}: {result.message}"
        assert {"theta", "m", "v"} <= set(result.compared_slots), f"{check.id}: compared only {result.compared_slots}"


@pytest.mark.parametrize("layout", ["dtensor.shard0", "fsdp2", "zero"])
def test_adam_conforms_sharded_at_world_size_4(layout: str) -> None:
    """World size 4: shape (3, 5) splits 1 + 1 + 1 + 0 rows, (1,) 1 + 0 + 0 + 0; ZeRO leaves ranks without parameters."""
    checks = _checks("adam", layout, 4, {"adam/default/defaults"}, ("float64",))
    assert len(checks) == 1, [c.id for c in checks]
    result = run_check(checks[0])
    assert result.status == "conforms", f"{checks[0].id}: {result.status}: {result.message}"


def test_optax_sharded_conforms_over_4_host_devices() -> None:
    """optax.adam with (2, 3, 4) split 4 ways on its last dimension (the others replicated: JAX refuses uneven splits)."""
    pytest.importorskip("jax")
    from optspec.impls.optax_sharded import OptaxSharded, split_dim

    assert split_dim((2, 3, 4), 4) == 2 and split_dim((2, 3, 4), 2) == 0, "the first dimension the device count divides"
    assert split_dim((7,), 2) is None and split_dim((), 4) is None and split_dim((1,), 2) is None, "uneven: replicated"
    library = SpecLibrary()
    goldens = load_goldens(library, default_golden_dir(), ["adam"])
    checks = [
        c for c in enumerate_checks(library, goldens, [OptaxSharded(4)], ("float64",)) if c.test.name == "adam/default/defaults"
    ]
    assert len(checks) == 1, [c.id for c in checks]
    result = run_check(checks[0])
    assert result.status == "conforms", f"{checks[0].id}: {result.status}: {result.message}"


def test_a_library_error_on_sharded_parameters_is_an_error_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimizer that raises on DTensors (as torch.optim.Adafactor does) shows as an error with its message, per cell."""
    from dataclasses import replace

    from optspec.conformance import matrix
    from optspec.impls import torch_optim

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))  # the fresh gang's ranks import tests.fixtures
    planted = replace(torch_optim.BINDINGS["adam"], target=f"{LAMB}.ShardRefusingAdam")
    monkeypatch.setitem(torch_optim.BINDINGS, "adam", planted)
    try:
        results = [run_check(c) for c in _checks("adam", "dtensor.shard1", 3, {"adam/default/defaults"}, ("float64",))]
    finally:
        torch_gang._GANGS.pop(3).close()
    assert [r.status for r in results] == ["error"], [(r.status, r.message) for r in results]
    assert "RuntimeError: aten.pow_.Scalar: in-place operations" in results[0].message, results[0].message
    cell = matrix(results)["adam"]["torch.dtensor.shard1@3"]
    assert cell.status == "error" and cell.failures == [results[0].message], (cell.status, cell.failures)


@pytest.mark.parametrize("layout", ["dtensor.shard0", "dtensor.shard1", "fsdp2"])
def test_torch_adafactor_raises_on_dtensors_as_registered(layout: str) -> None:
    """torch.optim.Adafactor squares a norm in place (_adafactor.py:394, :399): on a sharded gradient the
    norm is a pending _NormPartial reduction and DTensor refuses the in-place op. The cell is an error
    with torch's message and the registered defect; the same case conforms under ZeroRedundancyOptimizer."""
    (check,) = _checks("adafactor", layout, 2, {"adafactor/default/defaults"}, ("float32",))
    result = run_check(check)
    assert result.status == "error", f"{check.id}: expected torch's DTensor error, got {result.status}: {result.message}"
    assert "in-place operations that require placement changes are not supported" in result.message, result.message
    assert result.defect is not None and result.defect.id == "torch-adafactor-dtensor-inplace-norm", result.message
    assert "[known defect torch-adafactor-dtensor-inplace-norm]" in result.message, result.message


def test_torch_adafactor_conforms_under_zero() -> None:
    """ZeRO keeps whole parameters on their owning rank: Adafactor's factored moments are exact there."""
    (check,) = _checks("adafactor", "zero", 2, {"adafactor/default/defaults"}, ("float32",))
    result = run_check(check)
    assert result.status == "conforms", f"{check.id}: {result.status}: {result.message}"


def test_run_with_a_registered_library_error_exits_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A known library error is a verdict (exit 1, the cell reads "error: known defect"), not bad input (exit 2)."""
    from optspec.cli import main

    code = main(["run", "--rule", "adafactor", "--impl", "torch.dtensor.shard0@2", "--dtype", "float32", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1, f"optspec run exited {code}; stderr: {err[-2000:]}; stdout: {out[-3000:]}"
    assert "error: known defect" in out and "torch-adafactor-dtensor-inplace-norm" in out, out[-3000:]
    assert "optspec: error:" not in err, err[-2000:]
    assert "raise a registered library error, 0 could not run" in out, out[-1000:]


def test_gang_is_reused_across_calls() -> None:
    """One group per session: two calls reach the same rank processes."""
    first = torch_gang.gang(2).call("optspec.impls.torch_gang:identify", timeout=60)
    second = torch_gang.gang(2).call("optspec.impls.torch_gang:identify", timeout=60)
    assert first == second and first[:2] == (0, 2), f"rank 0 answered {first} then {second}: not the same process"


def test_a_bad_rank_is_killed_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung, dead or raising rank is reported as a failure naming it; after a hang or a death every
    rank was killed and the next call starts a fresh gang."""
    from optspec.checking.worker import TargetFailure

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))  # the spawned ranks import tests.fixtures.sharded
    gang = torch_gang.Gang(2)
    try:
        before = gang.call("optspec.impls.torch_gang:identify", timeout=60)
        for function, kind, words, restarts in [
            ("hang_on_rank1", "timeout", "ranks 1 of 2 gave no answer within the time limit of 4 s", True),
            ("die_on_rank1", "crashed", "rank 1 of 2 died (exit code 3)", True),
            ("raise_on_rank1", "raised", "rank 1 of 2: RuntimeError: planted failure on rank 1", False),
        ]:
            with pytest.raises(TargetFailure) as failure:
                gang.call(f"tests.fixtures.sharded:{function}", timeout=4)
            assert failure.value.kind == kind, f"{function}: reported as {failure.value.kind}: {failure.value.message}"
            assert words in failure.value.message, f"{function}: message {failure.value.message!r} lacks {words!r}"
            assert gang.alive != restarts, f"{function}: the ranks were {'not ' if restarts else ''}killed"
            after = gang.call("optspec.impls.torch_gang:identify", timeout=60)
            assert (after[2] != before[2]) == restarts, f"{function}: rank 0 was pid {before[2]}, then {after[2]}"
            before = after
    finally:
        gang.close()
    assert not gang.alive, "close() left ranks running"


# --------------------------------------------------------------------------- optspec check --shard

LAMB = "tests.fixtures.sharded_lamb"


def _check_lamb(target: str, shard: tuple[str, int] | None):
    from optspec.checking.runner import check

    # 5 steps (the inputs regenerated for the shorter case): the local-shard norm differs from step 1 on
    return check("lamb", f"{LAMB}:{target}", shard=shard, behaviour=False, dtypes=("float64",), steps=5, isolate=shard is None)


def test_local_shard_norm_fails_with_that_diagnosis() -> None:
    """LAMB's trust ratio taken on the local DTensor shard fails sharded, and the diagnosis names the local shard."""
    from optspec.checking.runner import format_report
    from optspec.checking.sharded import LOCAL_SHARD

    report = _check_lamb("LocalNormLamb", ("dtensor.shard0", 2))
    text = format_report(report)
    assert report.exit_code == 1, f"exit code {report.exit_code}, expected 1 (does not conform):\n{text}"
    failed = {c.case for c in report.cases if c.status == "fails"}
    assert {"defaults", "knobs"} <= failed, f"expected the defaults and knobs cases to fail sharded, failed: {failed}\n{text}"
    assert report.diagnosis is not None and report.diagnosis.explanation.startswith(LOCAL_SHARD), text
    assert "over its local shard instead of the whole tensor" in text, text


def test_whole_tensor_norm_conforms_sharded() -> None:
    """The same LAMB with norms of full_tensor() conforms on Shard(1) parameters: the diagnosis is not given to everything."""
    report = _check_lamb("GlobalNormLamb", ("dtensor.shard1", 2))
    failed = [f"{c.case}: {c.message}" for c in report.cases if c.status == "fails"]
    assert report.exit_code == 0 and not failed, f"exit code {report.exit_code}; failures: {failed}"


def test_local_shard_norm_conforms_on_one_process() -> None:
    """Unsharded, the planted optimizer is correct LAMB: only the sharded check can catch it."""
    report = _check_lamb("LocalNormLamb", None)
    failed = [f"{c.case}: {c.message}" for c in report.cases if c.status == "fails"]
    assert report.exit_code == 0 and not failed, f"exit code {report.exit_code}; failures: {failed}"


def test_check_shard_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from optspec.cli import main

    code = main(["check", "adam", "torch.optim:Adam", "--shard", "zero", "--world-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--world-size 1: must be from 2 to 64" in err, f"exit {code}, stderr {err!r}"
    code = main(["check", "adam", "optax:adam", "--shard", "dtensor"])
    err = capsys.readouterr().err
    assert code == 2 and "--shard: optax:adam is an optax factory" in err, f"exit {code}, stderr {err!r}"


@pytest.mark.parametrize(("target", "status"), [("torch.optim:Adam", "passed"), (f"{LAMB}:StatelessReloadAdam", "failed")])
def test_state_dict_reshards_from_4_to_2(target: str, status: str) -> None:
    """Adam's state saved at 4 ranks and loaded at 2 (torch.distributed.checkpoint) continues the trajectory; an Adam that
    drops its state on load fails the behavioural check."""
    from optspec.checking.runner import check
    from optspec.checking.sharded import RESHARD

    report = check("adam", target, shard=("dtensor.shard0", 4), dtypes=("float64",), steps=5, flags=False)
    (behaviour,) = report.behaviour
    assert behaviour.name == f"{RESHARD} (4 -> 2)", behaviour.name
    assert behaviour.status == status, f"{target}: {behaviour.status}: {behaviour.message}"
    if status == "failed":
        assert "slot m" in behaviour.message or "slot theta" in behaviour.message, behaviour.message


def test_the_same_command_runs_under_torchrun(tmp_path: Path) -> None:
    """torchrun with a rendezvous endpoint (here one machine, 2 ranks): rank 0 prints the matrix, rank 1 serves."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    torchrun, optspec = bin_dir / "torchrun", shutil.which("optspec", path=str(bin_dir))
    if not torchrun.exists() or optspec is None:
        pytest.skip("torchrun or the optspec script is not next to this interpreter")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d"]
    argv += ["--rdzv-endpoint", f"127.0.0.1:{port}", optspec, "run", "--world-size", "2", "--impl", "torch.zero@2"]
    argv += ["--rule", "adamax", "--dtype", "float64", "--json", str(tmp_path / "out.json")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["rule", "torch.zero@2"] in rows and ["adamax", "conforms"] in rows, f"no zero@2 column:\n{done.stdout}"
