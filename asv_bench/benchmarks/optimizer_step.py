"""asv benchmarks of one optimizer step: time, roofline ratio, state bytes and GPU peak memory.

Parameters (the full product; combinations that cannot run skip themselves by raising
``NotImplementedError`` in ``setup``, with the reason in asv's log):

* ``rule`` — every rule some adapter binds (read from the torch, optax and native-CUDA
  bindings, so a rule added there appears here), at its spec defaults, plus the
  configurations in :data:`EXTRA_CONFIGS` (e.g. ``sgd+momentum``);
* ``implementation`` — torch for-loop, foreach, fused, ``torch.compile``d step (foreach),
  optax under ``jax.jit``, and the native CUDA implementation when ``optspec.impls.cuda``
  exposes one (see :func:`native_implementations`);
* ``param_set`` — the tensor lists of ``param_sets.json`` (flat 1M/16M/64M, 1024 small
  tensors, ResNet-20, ResNet-50, GPT-2 124M). Without a GPU only sets of at most
  ``OPTSPEC_BENCH_CPU_MAX_NUMEL`` elements (default 2^20) run;
* ``dtype`` — ``float32``, or ``bf16-fp32state``: bfloat16 parameters and gradients with
  float32 optimizer state.

Metrics:

* ``Step.time_step`` — seconds per step. asv's timer synchronises the device first
  (:func:`sync_then_perf_counter`), so queued GPU work is inside the measured interval and
  asv's own repeat statistics stay valid.
* ``Step.track_state_bytes`` — bytes of optimizer state the implementation keeps (every
  tensor in ``optimizer.state`` / every array leaf of the optax state) after warm-up.
* ``Roofline.track_ratio`` — measured seconds per step divided by the physical limit
  ``minimum bytes / copy bandwidth``: 1.0 is the limit, lower is better. The minimum bytes
  come from the spec (:mod:`optspec.traffic`), the bandwidth from a large device copy
  measured once per process (GPU: :func:`torch_copy_bandwidth`, :func:`jax_copy_bandwidth`
  in the benchmark's own framework; CPU: :func:`cpu_copy_bandwidth` for every implementation).
* ``GpuMemory.track_peak_bytes`` — GPU memory high-water mark of one steady-state step in
  bytes (torch: ``max_memory_allocated`` after a reset, so it includes the parameters,
  gradients and state that are resident; JAX: the process's ``peak_bytes_in_use``, which
  also covers setup). Skipped without a GPU; ``peakmem_*`` would only see host RSS.

Without a GPU, torch and XLA run on ``OPTSPEC_BENCH_CPU_THREADS`` threads (default 1). At the
CPU sizes (at most 2^20 elements) a step's data fits in a server CPU's last-level cache, so the
CPU roofline ratio can fall below 1: the bandwidth limit is measured from DRAM. The ratio is
meaningful on GPUs at 16M elements and more.

JAX and torch never share a process: the frameworks are imported in ``setup`` only, and
asv starts a fresh process for every benchmark and parameter combination.

The timed bodies (the benches, their ``step()`` and the clock) live in :mod:`bodies`, shared
with the pytest-benchmark suite :mod:`optspec.bench_suite`; this module is asv's harness only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from .bodies import (
    _SYNC,
    DTYPES,
    NATIVE,
    PARAM_SETS,
    TORCH_PATHS,
    RuleConfig,
    StepBench,
    implementation_names,
    make_bench,
    measure_step_seconds,
    native_implementations,
    param_set_numel,
    param_set_tensors,
    prepare,
    rule_configs,
    sync_then_perf_counter,
)

__all__ = [
    "DTYPES",
    "PARAM_SETS",
    "TORCH_PATHS",
    "GpuMemory",
    "Roofline",
    "RuleConfig",
    "Step",
    "StepBench",
    "iter_combinations",
    "make_bench",
    "native_implementations",
    "param_set_numel",
    "param_set_tensors",
    "prepare",
]


# --------------------------------------------------------------------------- asv classes


def _params() -> tuple[list[str], list[str], list[str], list[str]]:
    return list(rule_configs()), implementation_names(), list(PARAM_SETS), list(DTYPES)


def has_gpu(implementation: str) -> bool:
    """Whether the framework of ``implementation`` sees a GPU (imports that framework only)."""
    if implementation == "optax.jit":
        import jax

        return jax.devices()[0].platform != "cpu"
    import torch

    return torch.cuda.is_available()


class _Combination:
    """Shared parameters and setup: one benchmark combination per process."""

    params = _params()
    param_names = ("rule", "implementation", "param_set", "dtype")
    timer = staticmethod(sync_then_perf_counter)
    timeout = 1200  # torch.compile in setup takes minutes on a busy CPU
    warmup_time = 0.5
    repeat = (2, 10, 5.0)  # (min samples, max samples, seconds)
    min_run_count = 2

    def setup(self, rule: str, implementation: str, param_set: str, dtype: str) -> None:
        self.bench = make_bench(rule, implementation, param_set, dtype)

    def teardown(self, *params: str) -> None:
        _SYNC[0] = lambda: None
        self.bench = None


class Step(_Combination):
    """Time per step and optimizer state bytes, for every rule x implementation x set x dtype."""

    def time_step(self, *params: str) -> None:
        """One optimizer step (asv times many and synchronises the device in its timer)."""
        self.bench.step()

    def track_state_bytes(self, *params: str) -> int:
        """Bytes of optimizer state the implementation keeps after warm-up."""
        return self.bench.state_bytes()

    track_state_bytes.unit = "bytes"  # type: ignore[attr-defined]


class Roofline(_Combination):
    """Seconds per step over the memory-bound minimum (1.0 is the physical limit)."""

    def setup(self, rule: str, implementation: str, param_set: str, dtype: str) -> None:
        if importlib.util.find_spec("optspec.traffic") is None:
            raise NotImplementedError("this commit has no optspec.traffic (minimum bytes from the spec)")
        super().setup(rule, implementation, param_set, dtype)

    def track_ratio(self, *params: str) -> float:
        """measured s/step / (spec minimum bytes / measured copy bandwidth); lower is better, >= ~1."""
        seconds = measure_step_seconds(self.bench)
        limit = self.bench.min_bytes() / self.bench.copy_bandwidth()
        return seconds / limit

    track_ratio.unit = "ratio"  # type: ignore[attr-defined]


class GpuMemory(_Combination):
    """GPU memory high-water mark of one steady-state step (bytes); skipped without a GPU."""

    def setup(self, rule: str, implementation: str, param_set: str, dtype: str) -> None:
        if not implementation.startswith(NATIVE) or native_implementations():
            if not has_gpu(implementation):
                raise NotImplementedError("no GPU: device peak memory is measured on GPUs only (peakmem_* is host RSS)")
        super().setup(rule, implementation, param_set, dtype)

    def track_peak_bytes(self, *params: str) -> int:
        """Device memory high-water mark (bytes) of one step after warm-up."""
        return self.bench.peak_bytes()

    track_peak_bytes.unit = "bytes"  # type: ignore[attr-defined]


def iter_combinations() -> Iterator[tuple[str, str, str, str]]:
    """Every parameter combination of the suite (for tests and tools)."""
    rules, implementations, sets, dtypes = _params()
    for rule in rules:
        for implementation in implementations:
            for param_set in sets:
                for dtype in dtypes:
                    yield rule, implementation, param_set, dtype
