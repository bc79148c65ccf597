"""The conformance matrix in worker processes: independent rule x implementation groups in parallel.

:func:`run_in_workers` gives each group of :func:`optspec.conformance.check_groups` (the checks
of one rule and one implementation) to a pool of spawned processes. A worker rebuilds the
group's checks from names alone (the spec directories, the golden directory, the rule, the
implementation and the dtypes), the same checks in the same order as the caller's, runs them
with :func:`optspec.conformance.run_checks` and sends the results back; the caller puts them
in the caller's order. Results are those of :func:`~optspec.conformance.run_checks` in one
process: every run is the same computation, only elsewhere.

Groups start longest first (an estimate: checks times a per-framework weight, jax compiles
are the slow part), so that the last group to finish is a short one.

Every process of the matrix, the caller's included (:func:`one_thread`), runs torch with one
intra-op thread: the cases' tensors have at most 24 elements, too few for torch to split, and
waking a second OpenMP thread for each tiny kernel cost up to 100 times the kernel itself on a
busy 2-core machine (a 4 x 6 bfloat16 matmul in torch.optim.Muon: 765 us of CPU with 2 threads,
6 us with one; a fused CPU Adam step of five tensors: 1031 us against 76 us).

The caller's golden files, already read and verified (schema, content hash, spec hash), go to
each worker once, pickled, when it starts: a worker does not read, validate and decode them
again (that was about 9 CPU seconds per run, most of it JSON-schema validation).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import cache
from pathlib import Path
from typing import Any

from optspec.conformance import Check, CheckResult, check_groups, enumerate_checks, load_goldens, run_checks
from optspec.errors import OptspecError

#: Relative cost of one check by framework, for the order groups start in.
WEIGHT = {"jax": 6.0, "torch": 1.0}


def default_jobs() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def one_thread() -> None:
    """torch in this process with one intra-op thread (see the module docstring); nothing without torch."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


def run_in_workers(
    checks: Sequence[Check],
    jobs: int,
    spec_dirs: Sequence[Path],
    golden_dir: Path,
    on_group: Callable[[str, str, int], None] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> list[CheckResult]:
    """:func:`optspec.conformance.run_checks` of ``checks`` in up to ``jobs`` processes, in order.

    With one job, or one group, everything runs in this process. ``meanwhile()`` (other work,
    e.g. the schedule checks) runs in this process while the workers run, or after the checks
    when there are none. The workers get the golden files of ``checks`` (read from
    ``golden_dir``) as the caller holds them.
    """
    groups = check_groups(checks)
    if jobs <= 1 or len(groups) <= 1:
        results = run_checks(checks, on_group)
        if meanwhile is not None:
            meanwhile()
        return results
    tasks = [
        (
            [str(Path(d).resolve()) for d in spec_dirs],
            str(Path(golden_dir).resolve()),
            group[0].spec.name,
            group[0].implementation.name,
            tuple(dict.fromkeys(c.dtype for c in group)),
            [c.id for c in group],
        )
        for group in groups
    ]
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i]) * WEIGHT.get(groups[i][0].implementation.framework, 1.0))
    results: list[list[CheckResult] | None] = [None] * len(groups)
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(groups)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(sys.getrecursionlimit(), _golden_blob(checks, golden_dir)),
    )
    try:
        futures: dict[Future[Any], int] = {pool.submit(_run_group, tasks[i]): i for i in order}
        pending = set(futures)
        if meanwhile is not None:
            meanwhile()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                outcome = future.result()
                if isinstance(outcome, str):  # an OptspecError in the worker, as its one line
                    raise OptspecError(outcome)
                results[index] = outcome
                if on_group is not None:
                    on_group(groups[index][0].spec.name, groups[index][0].implementation.name, len(groups[index]))
    finally:
        _stop(pool)
    return [result for group in results if group is not None for result in group]


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers (an interrupt must not leave them running)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


#: In a worker: the caller's golden files by (resolved golden directory, rule), set by :func:`_start_worker`.
_SHARED: dict[tuple[str, str], Any] = {}


def _golden_blob(checks: Sequence[Check], golden_dir: Path) -> bytes:
    """The golden files of ``checks``, pickled once for every worker."""
    files = {(str(Path(golden_dir).resolve()), c.spec.name): c.golden for c in checks}
    return pickle.dumps(files, protocol=pickle.HIGHEST_PROTOCOL)


def _start_worker(recursion_limit: int, goldens: bytes) -> None:
    sys.setrecursionlimit(recursion_limit)
    one_thread()
    _SHARED.update(pickle.loads(goldens))


@cache
def _library(spec_dirs: tuple[str, ...]) -> Any:
    from optspec.spec import SpecLibrary

    return SpecLibrary(extra_dirs=[Path(d) for d in spec_dirs])


def _goldens(spec_dirs: tuple[str, ...], golden_dir: str, rule: str) -> tuple[Any, Any]:
    """The spec library and the rule's golden file: the caller's, else read here."""
    library = _library(spec_dirs)
    shared = _SHARED.get((golden_dir, rule))
    return library, ({rule: shared} if shared is not None else load_goldens(library, Path(golden_dir), [rule]))


def _run_group(task: tuple[Any, ...]) -> list[CheckResult] | str:
    """In a worker: rebuild one group's checks by name and run them (an OptspecError as its message)."""
    from optspec.impls import implementation

    spec_dirs, golden_dir, rule, impl_name, dtypes, ids = task
    try:
        library, goldens = _goldens(tuple(spec_dirs), golden_dir, rule)
        checks = enumerate_checks(library, goldens, [implementation(impl_name)], dtypes)
        if [c.id for c in checks] != ids:
            raise OptspecError(f"worker: the checks of {rule} x {impl_name} differ from the caller's (files changed meanwhile?)")
        return run_checks(checks)
    except OptspecError as exc:
        return str(exc)
