"""The pytest-benchmark suite: a user's optimizer step against torch.optim and optax.

Run by ``optspec bench RULE TARGET`` (:mod:`optspec.commands.bench`), or directly::

    pytest --pyargs optspec.bench_suite --optspec-bench adam=mylib.optim:MyAdam --benchmark-json out.json

One benchmark per implementation x parameter set x dtype: ``target`` (the user's torch
optimizer or optax factory, configured from the rule's defaults and the ``--optspec-variant``,
``--optspec-map``, ``--optspec-kwarg``, ``--optspec-hyper`` options exactly as ``optspec
check`` configures it) and torch.optim's for-loop, foreach and fused paths and optax under
``jax.jit`` for the same rule, variant and hyperparameters, on the asv parameter sets
(``asv_bench/benchmarks/param_sets.json``: ``--optspec-bench-set`` selects, default all; sets
too large for a CPU skip with the reason, as in asv). Benchmarks of one parameter set and
dtype form one pytest-benchmark group, so its table compares them directly.

The timed body is :meth:`StepBench.step` from ``optspec.benchmarks.bodies``, the one asv's
``Step.time_step`` times, with the same clock (:func:`sync_then_perf_counter`, which waits for
the device before reading ``time.perf_counter``): one function, two harnesses. Unlike asv,
torch and JAX share this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from optspec.benchmarks.bodies import (
    _SYNC,
    PARAM_SETS,
    TARGET,
    StepBench,
    TargetSpec,
    bench_prepared,
    sync_then_perf_counter,
    target_bench,
    target_prepared,
)

#: the implementations a user's optimizer is compared with (torch.compile and native CUDA: asv only)
COMPARED = ("torch.for-loop", "torch.foreach", "torch.fused", "optax.jit")
IMPLEMENTATIONS = (TARGET, *COMPARED)


def users(config: pytest.Config) -> list[TargetSpec]:
    """The ``--optspec-bench RULE=MODULE:ATTR`` targets with the shared ``--optspec-*`` options."""
    out = []
    for text in config.getoption("optspec_bench"):
        rule, sep, target = text.partition("=")
        if not sep or not rule.strip() or ":" not in target:
            raise pytest.UsageError(f"--optspec-bench {text}: expected RULE=MODULE:ATTR, e.g. adam=torch.optim:Adam")
        out.append(
            TargetSpec(
                rule.strip(),
                target.strip(),
                variant=tuple(config.getoption("optspec_variant")),
                maps=tuple(config.getoption("optspec_map")),
                kwargs=tuple(config.getoption("optspec_kwarg")),
                hypers=tuple(config.getoption("optspec_hyper")),
                specs=tuple(config.getoption("optspec_specs")),
            )
        )
    return out


def _combinations(config: pytest.Config) -> Iterator[Any]:
    sets = config.getoption("optspec_bench_set") or list(PARAM_SETS)
    implementations = config.getoption("optspec_bench_impl") or list(IMPLEMENTATIONS)
    dtypes = config.getoption("optspec_bench_dtype") or ["float32"]
    for name, known in (("set", list(PARAM_SETS)), ("impl", list(IMPLEMENTATIONS)), ("dtype", ["float32", "bf16-fp32state"])):
        for value in config.getoption(f"optspec_bench_{name}") or ():
            if value not in known:
                raise pytest.UsageError(f"--optspec-bench-{name} {value}: unknown (known: {', '.join(known)})")
    for user in users(config):
        for param_set in sets:
            for dtype in dtypes:
                for implementation in implementations:
                    shown = user.target if implementation == TARGET else implementation
                    yield pytest.param((user, implementation, param_set, dtype), id=f"{user.rule}-{param_set}-{dtype}-{shown}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    combinations = list(_combinations(metafunc.config))
    if not combinations:
        raise pytest.UsageError("the optspec bench suite needs --optspec-bench RULE=MODULE:ATTR (e.g. adam=torch.optim:Adam)")
    metafunc.parametrize("bench_case", combinations)


def build(user: TargetSpec, implementation: str, param_set: str, dtype: str) -> StepBench:
    """The bench of one combination: the user's optimizer, or a library's on the same configuration."""
    if implementation == TARGET:
        return target_bench(user, param_set, dtype)
    prepared, session = target_prepared(user, param_set, dtype)
    session.executor.close()
    return bench_prepared(prepared, implementation)


@pytest.mark.benchmark(timer=sync_then_perf_counter)
def test_step(benchmark: Any, bench_case: tuple[TargetSpec, str, str, str]) -> None:
    """One optimizer step, timed by pytest-benchmark (the asv suite's body)."""
    user, implementation, param_set, dtype = bench_case
    try:
        bench = build(user, implementation, param_set, dtype)
    except NotImplementedError as exc:
        pytest.skip(f"{implementation} on {param_set} ({dtype}): {exc}")
    benchmark.group = f"{user.rule} {param_set} {dtype}"
    benchmark.extra_info.update(
        rule=user.rule,
        implementation=implementation,
        target=user.target if implementation == TARGET else implementation,
        param_set=param_set,
        dtype=dtype,
        numel=bench.numel,
        gpu=bench.gpu,
    )
    try:
        benchmark(bench.step)
    finally:
        _SYNC[0] = lambda: None
