"""`pytest -n 2 --dist loadgroup` (tox) keeps an xdist_group on one worker.

The conformance suite computes a rule x implementation group once per worker
(``conformance/test_conformance.py``: one jit compilation per group for optax), so a group split
across workers is computed, and compiled, twice. pytest 9.2 with pytest-xdist 3.8 split every
group silently (pytest-dev/pytest-xdist#1386); this runs a small grouped suite the way tox does
and fails if any group ran on more than one worker.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xdist")
pytest_plugins = ["pytester"]

SUITE = """
import json, os, pytest

PARAMS = [pytest.param(g, i, id=f"{g}-{i}", marks=pytest.mark.xdist_group(f"group-{g}")) for g in "abcd" for i in range(12)]

@pytest.mark.parametrize(("group", "index"), PARAMS)
def test_member(group, index):
    with open(os.environ["GROUPS_OUT"], "a") as f:
        f.write(json.dumps([group, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")
"""


def test_each_group_runs_on_one_worker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_groups=SUITE)
    pytester.makeini("[pytest]\naddopts =\n")
    out = pytester.path / "workers.jsonl"
    monkeypatch.setenv("GROUPS_OUT", str(out))
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=48)
    workers: dict[str, set[str]] = {}
    for line in out.read_text().splitlines():
        group, worker = json.loads(line)
        workers.setdefault(group, set()).add(worker)
    split = {g: sorted(w) for g, w in workers.items() if len(w) > 1}
    assert not split, (
        f"--dist loadgroup ran these xdist groups on several workers: {split} (pytest "
        f"{pytest.__version__}; pytest >= 9.2 with pytest-xdist 3.8 ignores the groups, "
        "pytest-dev/pytest-xdist#1386): every conformance group would be computed once per worker"
    )
    assert len(workers) == 4, f"every group ran: {sorted(workers)}"
