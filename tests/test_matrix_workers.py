"""Worker processes give the results of one process: run_in_workers(jobs=2) == run_checks.

The workers take the caller's golden files (pickled once per worker) instead of reading them
again; a result must not depend on where it was computed.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from optspec import matrix_workers
from optspec.conformance import check_groups, enumerate_checks, load_goldens, run_checks
from optspec.impls import implementation
from optspec.spec import SpecLibrary

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "conformance" / "golden"
LIBRARY = SpecLibrary()

pytest.importorskip("torch")


def test_two_workers_give_the_results_of_one_process_in_order() -> None:
    goldens = load_goldens(LIBRARY, GOLDEN_DIR, ["sgd", "adadelta"])
    checks = enumerate_checks(LIBRARY, goldens, [implementation("torch.for-loop"), implementation("torch.foreach")])
    assert len(check_groups(checks)) == 4, "two rules x two paths should make four groups"
    seen: list[tuple[str, str, int]] = []
    parallel = matrix_workers.run_in_workers(checks, 2, [], GOLDEN_DIR, lambda rule, impl, n: seen.append((rule, impl, n)))
    alone = run_checks(checks)
    assert [r.check_id for r in parallel] == [c.id for c in checks], "results should come back in the callers' order"
    for got, want in zip(parallel, alone):
        assert got == want, f"{want.check_id}: the worker's result differs from this process's ({got.status} vs {want.status})"
    assert sorted(seen) == sorted((g[0].spec.name, g[0].implementation.name, len(g)) for g in check_groups(checks)), (
        f"one progress callback per group expected, got {seen}"
    )


def test_a_worker_uses_the_callers_golden_files_not_a_fresh_read(tmp_path: Path) -> None:
    goldens = load_goldens(LIBRARY, GOLDEN_DIR, ["sgd"])
    checks = enumerate_checks(LIBRARY, goldens, [implementation("torch.for-loop")])
    blob = matrix_workers._golden_blob(checks, tmp_path)  # a directory with no golden file in it
    matrix_workers._SHARED.clear()
    try:
        matrix_workers._start_worker(sys.getrecursionlimit(), blob)
        _, found = matrix_workers._goldens((), str(tmp_path.resolve()), "sgd")
        got, want = found["sgd"], goldens["sgd"]
        assert [t.name for t in got.tests] == [t.name for t in want.tests], "the worker should hold the caller's sgd tests"
        first = want.tests[0]
        assert np.array_equal(got.tests[0].expected[first.steps[-1]][0]["theta"], first.expected[first.steps[-1]][0]["theta"]), (
            "the worker's golden values should be the caller's"
        )
        assert got.path == want.path == pickle.loads(blob)[(str(tmp_path.resolve()), "sgd")].path, (
            "the blob should key the caller's file by directory and rule"
        )
    finally:
        matrix_workers._SHARED.clear()
