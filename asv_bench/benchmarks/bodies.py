"""The timed bodies of one optimizer step, shared by two harnesses.

* the asv suite, :mod:`optimizer_step` beside this file (``asv run``; its docstring lists the
  parameters and metrics), and
* the pytest-benchmark suite :mod:`optspec.bench_suite` (``optspec bench RULE TARGET``,
  ``pytest --pyargs optspec.bench_suite --optspec-bench RULE=MODULE:ATTR``), which times a
  user's optimizer against the same torch and optax paths.

Both build a :class:`StepBench` with :func:`make_bench` (or :func:`target_bench` for a user's
optimizer) and time its ``step()``, one optimizer step, with :func:`sync_then_perf_counter`
as the clock: nothing here is written twice. This folder ships in the wheel as the package
``optspec.benchmarks`` (pyproject.toml), so the installed ``optspec bench`` and asv's
checkout import the same file; it imports optspec only inside functions, so asv can still
benchmark older commits.

Devices. Without a GPU, torch and XLA run on ``OPTSPEC_BENCH_CPU_THREADS`` threads (default
1), and only parameter sets of at most ``OPTSPEC_BENCH_CPU_MAX_NUMEL`` elements (2^20) run.
At the CPU sizes a step's data fits in a server CPU's last-level cache, so the CPU roofline
ratio can fall below 1: the bandwidth limit is measured from DRAM. The ratio is meaningful
on GPUs at 16M elements and more.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# JAX must not grab most of the GPU at start-up, or its peak-memory figure means nothing.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
#: Threads a CPU-only benchmark uses (torch intra-op, XLA's CPU backend). One thread keeps
#: numbers stable on shared or small machines; the CPU results record it in their machine name.
CPU_THREADS = int(os.environ.get("OPTSPEC_BENCH_CPU_THREADS", "1"))
if CPU_THREADS == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    # CPU-backend flags only: they leave a GPU backend alone.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

HERE = Path(__file__).resolve().parent
#: name -> {"doc": str, "tensors": [{"shape": [...], "count": n, "name": str}]}
PARAM_SETS: dict[str, dict[str, Any]] = json.loads((HERE / "param_sets.json").read_text())
#: Parameter sets larger than this (total elements) run only on a GPU.
CPU_MAX_NUMEL = int(os.environ.get("OPTSPEC_BENCH_CPU_MAX_NUMEL", str(1 << 20)))
#: Without a GPU, ``torch.compile`` runs only on sets of at most this many tensors: inductor
#: took over 10 minutes to compile the 1024-tensor step on a 2-core CPU.
CPU_MAX_COMPILE_TENSORS = int(os.environ.get("OPTSPEC_BENCH_CPU_MAX_COMPILE_TENSORS", "64"))
#: Set by run_gpu.sh: skip instead of falling back to the CPU when a framework sees no GPU
#: (a CPU-only JAX build on a GPU machine must not file CPU numbers under the GPU's name).
REQUIRE_GPU = os.environ.get("OPTSPEC_BENCH_REQUIRE_GPU", "") == "1"
DTYPES = ("float32", "bf16-fp32state")
TORCH_PATHS = {"torch.for-loop": "for-loop", "torch.foreach": "foreach", "torch.fused": "fused", "torch.compile": "foreach"}
NATIVE = "native-cuda"


@dataclass(frozen=True)
class RuleConfig:
    """A rule at its spec defaults with these hyperparameter and variant overrides."""

    rule: str
    hyper: Mapping[str, float] = field(default_factory=dict)
    variant: Mapping[str, str] = field(default_factory=dict)


#: Benchmark configurations beyond each rule's defaults; listed only when the rule is bound.
EXTRA_CONFIGS: dict[str, RuleConfig] = {
    "sgd+momentum": RuleConfig("sgd", hyper={"momentum": 0.9}),
    "adam+amsgrad": RuleConfig("adam", variant={"amsgrad": "raw"}),
}


# --------------------------------------------------------------------------- parameters


class NativeStepper(Protocol):
    """What a native CUDA implementation returns from ``make_benchmark_step``."""

    def __call__(self) -> None:
        """One in-place optimizer step on the CUDA tensors it was built with."""

    def state_tensors(self) -> Sequence[Any]:
        """The device tensors holding optimizer state (for ``track_state_bytes``)."""


def native_implementations() -> list[Any]:
    """Native CUDA implementations ``optspec.impls.cuda`` exposes (empty if none).

    Looked up as ``IMPLEMENTATIONS`` in ``optspec.impls.cuda`` or its ``adapter`` module; an
    implementation is native CUDA when its ``framework`` is ``"cuda"`` and it is not the CPU
    emulation (``backend == "host"``). Each follows ``optspec.impls.base.Implementation``.
    It is stepped by its ``make_benchmark_step(plan, hyper, params, grads, state_dtype)``
    (a :class:`NativeStepper`) if it has one, else by ``optspec.impls.cuda.adapter.cuda_stepper``
    (a multi-tensor runner over caller-owned CUDA tensors). Importing these modules must not
    initialise CUDA; anything missing skips the benchmark with a reason.
    """
    found: list[Any] = []
    for module_name in ("optspec.impls.cuda", "optspec.impls.cuda.adapter"):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # an unbuilt or broken CUDA package must not break the whole suite
            continue
        for impl in getattr(module, "IMPLEMENTATIONS", ()):
            native = getattr(impl, "framework", "cuda") == "cuda" and getattr(impl, "backend", "cuda") != "host"
            if native and all(impl.name != other.name for other in found):
                found.append(impl)
    return found


def native_stepper(impl: Any, plan: Any, hyper: Mapping[str, float], params: list[Any], grads: list[Any]) -> NativeStepper:
    """A :class:`NativeStepper` from the implementation's hook or from ``cuda_stepper``."""
    import torch

    make = getattr(impl, "make_benchmark_step", None)
    if make is not None:
        return make(plan, hyper, params, grads, torch.float32)
    try:
        from optspec.impls.cuda.adapter import cuda_stepper
    except ImportError:
        raise NotImplementedError(
            f"{impl.name} has no make_benchmark_step(plan, hyper, params, grads, state_dtype) and "
            "optspec.impls.cuda.adapter has no cuda_stepper"
        ) from None
    runner = cuda_stepper(plan.binding.rule, params, grads, hyper, plan.run_variant)
    return _RunnerStepper(runner, float(hyper["lr"]))


class _RunnerStepper:
    """``cuda_stepper``'s runner as a :class:`NativeStepper` (constant lr, step count kept here)."""

    def __init__(self, runner: Any, lr: float) -> None:
        self.runner = runner
        self.lr = lr
        self.t = 0

    def __call__(self) -> None:
        self.t += 1
        self.runner.step(self.t, self.lr, 1.0)

    def state_tensors(self) -> list[Any]:
        return [buffer for tensor in self.runner.state for buffer in tensor]


def implementation_names() -> list[str]:
    names = [*TORCH_PATHS, "optax.jit", NATIVE]
    names += [f"{NATIVE}:{impl.name}" for impl in native_implementations()[1:]]
    return names


def rule_configs() -> dict[str, RuleConfig]:
    """Every rule bound by an adapter, at its defaults, and the bound extra configurations."""
    from optspec.impls.optax_jax import BINDINGS as OPTAX
    from optspec.impls.torch_optim import BINDINGS as TORCH

    rules = set(TORCH) | set(OPTAX)
    native = native_implementations()
    if native:
        from optspec.spec import SpecLibrary

        for name in SpecLibrary().names:
            if any(_safe_binding(impl, name) for impl in native):
                rules.add(name)
    configs = {rule: RuleConfig(rule) for rule in sorted(rules)}
    configs.update({label: config for label, config in EXTRA_CONFIGS.items() if config.rule in rules})
    return dict(sorted(configs.items()))


def _safe_binding(impl: Any, rule: str) -> Any:
    try:
        return impl.binding(rule)
    except Exception:
        return None


def param_set_tensors(name: str) -> list[tuple[int, ...]]:
    """The shapes of a parameter set, one per tensor, in order."""
    shapes: list[tuple[int, ...]] = []
    for entry in PARAM_SETS[name]["tensors"]:
        shapes += [tuple(entry["shape"])] * int(entry.get("count", 1))
    return shapes


def param_set_numel(name: str) -> int:
    return sum(math.prod(shape) for shape in param_set_tensors(name))


# --------------------------------------------------------------------------- timing


#: The current benchmark's device barrier; the timer calls it before reading the clock.
_SYNC: list[Callable[[], None]] = [lambda: None]


def sync_then_perf_counter() -> float:
    """asv's timer: wait for the device's queued work, then read ``time.perf_counter``."""
    _SYNC[0]()
    return time.perf_counter()


def measure_step_seconds(bench: StepBench, min_time: float = 0.25, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of enough back-to-back synced steps to last ``min_time``."""
    bench.sync()
    start = time.perf_counter()
    bench.step()
    bench.sync()
    single = max(time.perf_counter() - start, 1e-7)
    number = max(1, min(1000, math.ceil(min_time / single)))
    samples = []
    for _ in range(repeats):
        bench.sync()
        start = time.perf_counter()
        for _ in range(number):
            bench.step()
        bench.sync()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


@functools.cache
def cpu_copy_bandwidth() -> float:
    """Bytes per second (read plus written) of the best of five 256 MiB ``numpy.copyto``.

    Without a GPU every implementation is compared with this one figure: numpy copies on one
    thread, like the benchmarks (``OPTSPEC_BENCH_CPU_THREADS=1``), and it does not depend on
    which framework's copy kernel happens to be faster.
    """
    import numpy as np

    src = np.ones((1 << 28) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


@functools.cache
def torch_copy_bandwidth(device: str) -> float:
    """Bytes per second (read plus written) of the best of several large device-to-device copies.

    256 MiB on the CPU, 1 GiB on a GPU: far beyond any cache, so this is memory bandwidth.
    """
    import torch

    nbytes = (1 << 30) if device.startswith("cuda") else (1 << 28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    dst.copy_(src)
    sync()
    best = math.inf
    for _ in range(10 if device.startswith("cuda") else 5):
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * nbytes / best


@functools.cache
def jax_copy_bandwidth() -> float:
    """Bytes per second of the best of several jitted ``x + 1`` over a large float32 array.

    ``x + 1`` moves exactly the bytes of a copy (each element read once, written once) and
    cannot be elided; 256 MiB on the CPU, 1 GiB on a GPU.
    """
    import jax
    import jax.numpy as jnp

    gpu = jax.devices()[0].platform != "cpu"
    nbytes = (1 << 30) if gpu else (1 << 28)
    x = jnp.ones(nbytes // 4, dtype=jnp.float32)
    add_one = jax.jit(lambda a: a + 1.0)
    add_one(x).block_until_ready()
    best = math.inf
    for _ in range(10 if gpu else 5):
        start = time.perf_counter()
        add_one(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


# --------------------------------------------------------------------------- benches


class StepBench(Protocol):
    numel: int
    param_bytes: int
    gpu: bool
    #: the spec's minimum bytes of one step (imports optspec.traffic, absent in old commits)
    min_bytes: Callable[[], int]

    def step(self) -> None: ...
    def sync(self) -> None: ...
    def state_bytes(self) -> int: ...
    def peak_bytes(self) -> int: ...
    def copy_bandwidth(self) -> float: ...


@dataclass
class Prepared:
    """A benchmark combination resolved against the spec and an adapter's binding."""

    config: RuleConfig
    shapes: list[tuple[int, ...]]
    numel: int
    bf16: bool
    spec: Any
    hyper: dict[str, float]
    variant: dict[str, str]

    def min_bytes(self, run_variant: Mapping[str, str]) -> int:
        """Minimum bytes of one step from the spec (``optspec.traffic``)."""
        from optspec.traffic import step_traffic

        traffic = step_traffic(self.spec.resolve(run_variant), self.hyper)
        return traffic.step_bytes(self.numel, param_bytes=2 if self.bf16 else 4, state_bytes=4)


def prepare(rule: str, param_set: str, dtype: str) -> Prepared:
    """A configuration of :func:`rule_configs` (a bound rule) on a parameter set."""
    configs = rule_configs()
    if rule not in configs:
        raise NotImplementedError(f"no adapter binds {rule!r} at this commit")
    config = configs[rule]
    from optspec.spec import SpecLibrary

    return prepare_spec(SpecLibrary().get(config.rule), param_set, dtype, config)


def prepare_spec(spec: Any, param_set: str, dtype: str, config: RuleConfig | None = None) -> Prepared:
    """``spec`` (an :class:`optspec.spec.Spec`) at ``config``'s overrides (default: its defaults) on a parameter set."""
    if param_set not in PARAM_SETS:
        raise NotImplementedError(f"unknown parameter set {param_set!r} (known: {', '.join(PARAM_SETS)})")
    if dtype not in DTYPES:
        raise NotImplementedError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    config = config or RuleConfig(spec.name)
    shapes = param_set_tensors(param_set)
    return Prepared(
        config=config,
        shapes=shapes,
        numel=sum(math.prod(s) for s in shapes),
        bf16=dtype == "bf16-fp32state",
        spec=spec,
        hyper=spec.hyper_values(config.hyper),
        variant=spec.full_variant(config.variant),
    )


def check_size(prepared: Prepared, gpu: bool) -> None:
    if REQUIRE_GPU and not gpu:
        raise NotImplementedError("OPTSPEC_BENCH_REQUIRE_GPU=1 but this framework sees no GPU")
    if not gpu and prepared.numel > CPU_MAX_NUMEL:
        raise NotImplementedError(
            f"{prepared.numel} elements: without a GPU only parameter sets of at most {CPU_MAX_NUMEL} run "
            "(OPTSPEC_BENCH_CPU_MAX_NUMEL)"
        )


def _plan(adapter: Any, prepared: Prepared) -> Any:
    from optspec.impls.base import plan_case

    plan = plan_case(adapter, prepared.spec, prepared.variant, prepared.hyper, "float32")
    if plan.skip is not None:
        raise NotImplementedError(plan.skip)
    return plan


class TorchBench:
    """A torch.optim optimizer over CUDA tensors (or CPU ones without a GPU).

    ``implementation`` is a torch.optim path of :data:`TORCH_PATHS`, built from the adapter's
    binding; or, with ``constructor`` = ``(make, what)``, any torch optimizer built as
    ``make(params)`` (a user's, :func:`target_bench`), timed the same way.
    """

    def __init__(
        self, prepared: Prepared, implementation: str, constructor: tuple[Callable[[list[Any]], Any], str] | None = None
    ) -> None:
        import torch

        self.gpu = torch.cuda.is_available()
        check_size(prepared, self.gpu)
        self.device = "cuda" if self.gpu else "cpu"
        if not self.gpu:
            torch.set_num_threads(CPU_THREADS)
            if implementation == "torch.compile" and len(prepared.shapes) > CPU_MAX_COMPILE_TENSORS:
                raise NotImplementedError(
                    f"{len(prepared.shapes)} tensors: without a GPU torch.compile runs on sets of at most "
                    f"{CPU_MAX_COMPILE_TENSORS} tensors (OPTSPEC_BENCH_CPU_MAX_COMPILE_TENSORS)"
                )
        if constructor is None:
            make, what, run_variant = self._torch_optim(prepared, implementation)
        else:
            (make, what), run_variant = constructor, prepared.variant
        what = f"{what} on {self.device}"
        self.min_bytes = functools.partial(prepared.min_bytes, run_variant)
        self.numel = prepared.numel
        self.param_bytes = 2 if prepared.bf16 else 4
        dtype = torch.bfloat16 if prepared.bf16 else torch.float32
        generator = torch.Generator(device=self.device).manual_seed(0)
        self.params = []
        for shape in prepared.shapes:
            param = torch.randn(shape, generator=generator, device=self.device).mul_(0.1).to(dtype)
            param.grad = torch.randn(shape, generator=generator, device=self.device).mul_(1e-3).to(dtype)
            self.params.append(param)
        try:
            self.optimizer = make(self.params)
            self.optimizer.step()  # creates the state
        except (RuntimeError, ValueError, TypeError) as exc:
            raise NotImplementedError(f"{what} refused: {type(exc).__name__}: {exc}") from None
        if prepared.bf16:
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.dtype == torch.bfloat16:
                        state[key] = value.float()
            try:
                self.optimizer.step()
            except (RuntimeError, ValueError, TypeError) as exc:
                raise NotImplementedError(
                    f"{what} does not take float32 state with bfloat16 parameters: {type(exc).__name__}: {exc}"
                ) from None
        if implementation == "torch.compile":
            optimizer = self.optimizer

            @torch.compile(fullgraph=False)
            def compiled_step() -> None:
                optimizer.step()

            self._step: Callable[[], Any] = compiled_step
        else:
            self._step = self.optimizer.step
        for _ in range(2):  # compile, and reach the steady state
            self.step()
        self.sync()

    def _torch_optim(self, prepared: Prepared, implementation: str) -> tuple[Callable[[list[Any]], Any], str, dict[str, str]]:
        """(make, description, variant run) of torch.optim's own path for the rule."""
        from optspec.impls.torch_optim import TorchOptim, resolve_target

        path = TORCH_PATHS[implementation]
        plan = _plan(TorchOptim(path, self.device), prepared)
        kwargs = dict(plan.kwargs)
        kwargs.update({"fused": True} if path == "fused" else {"foreach": path == "foreach"})
        flags = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k in ("fused", "foreach"))
        cls = resolve_target(plan.binding.target)
        return (lambda params: cls(params, **kwargs)), f"{plan.binding.target}({flags})", dict(plan.run_variant)

    def step(self) -> None:
        """The timed body: one optimizer step."""
        self._step()

    def sync(self) -> None:
        if self.gpu:
            import torch

            torch.cuda.synchronize()

    def state_bytes(self) -> int:
        import torch

        return sum(
            value.numel() * value.element_size()
            for state in self.optimizer.state.values()
            for value in state.values()
            if torch.is_tensor(value)
        )

    def peak_bytes(self) -> int:
        import torch

        self.sync()
        torch.cuda.reset_peak_memory_stats()
        self.step()
        self.sync()
        return int(torch.cuda.max_memory_allocated())

    def copy_bandwidth(self) -> float:
        return torch_copy_bandwidth(self.device) if self.gpu else cpu_copy_bandwidth()


class OptaxBench:
    """An optax transformation under ``jax.jit`` with parameters and state donated.

    Built from the adapter's binding of the rule, or, with ``factory`` = ``(make, what)``,
    from any ``make()`` returning a ``GradientTransformation`` (a user's, :func:`target_bench`).
    """

    def __init__(self, prepared: Prepared, factory: tuple[Callable[[], Any], str] | None = None) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        self.gpu = jax.devices()[0].platform != "cpu"
        check_size(prepared, self.gpu)
        if factory is None:
            from optspec.impls.optax_jax import FACTORIES, OptaxJit

            plan = _plan(OptaxJit(), prepared)
            run_variant: Mapping[str, str] = plan.run_variant
            target = f"optax {plan.binding.target}"
            tx = FACTORIES[plan.binding.rule](learning_rate=prepared.hyper["lr"], **plan.kwargs)
        else:
            make, target = factory
            run_variant = prepared.variant
            tx = make()
            if not (hasattr(tx, "init") and hasattr(tx, "update")):
                raise NotImplementedError(f"{target} returned {type(tx).__name__}, not an optax GradientTransformation")
        self.min_bytes = functools.partial(prepared.min_bytes, run_variant)
        self.numel = prepared.numel
        self.param_bytes = 2 if prepared.bf16 else 4
        dtype = jnp.bfloat16 if prepared.bf16 else jnp.float32
        keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(prepared.shapes))
        master = [0.1 * jax.random.normal(keys[2 * i], shape, jnp.float32) for i, shape in enumerate(prepared.shapes)]
        self.grads = [
            (1e-3 * jax.random.normal(keys[2 * i + 1], s, jnp.float32)).astype(dtype) for i, s in enumerate(prepared.shapes)
        ]

        # State initialised from float32 values stays float32 (optax promotes, then casts the
        # update to the parameter dtype in apply_updates); checked below.
        # Distinct buffers for every leaf: parameters and state are donated, and a state that
        # holds the parameters themselves (lookahead's slow weights) would be donated twice.
        def fresh(leaf: Any) -> Any:
            return jnp.array(leaf, copy=True) if isinstance(leaf, jax.Array) else leaf

        self.state = jax.tree_util.tree_map(fresh, tx.init(master))
        self.params = [jnp.array(p, dtype=dtype, copy=True) for p in master]
        del master

        def update(params: Any, state: Any, grads: Any) -> Any:
            updates, new_state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), new_state

        self._update = jax.jit(update, donate_argnums=(0, 1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            for _ in range(2):
                self.step()
            self.sync()
        floating = [leaf for leaf in jax.tree_util.tree_leaves(self.state) if getattr(leaf, "ndim", 0) > 0]
        if any(leaf.dtype != jnp.float32 for leaf in floating if jnp.issubdtype(leaf.dtype, jnp.floating)):
            raise NotImplementedError(f"{target} does not keep float32 state for {dtype.__name__} parameters")

    def step(self) -> None:
        """The timed body: one jitted update."""
        self.params, self.state = self._update(self.params, self.state, self.grads)

    def sync(self) -> None:
        import jax

        jax.block_until_ready((self.params, self.state))

    def state_bytes(self) -> int:
        import jax

        return sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree_util.tree_leaves(self.state))

    def peak_bytes(self) -> int:
        import jax

        self.step()
        self.sync()
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            raise NotImplementedError("this JAX backend reports no peak_bytes_in_use")
        return int(stats["peak_bytes_in_use"])

    def copy_bandwidth(self) -> float:
        return jax_copy_bandwidth() if self.gpu else cpu_copy_bandwidth()


class NativeBench(TorchBench):
    """A native CUDA implementation from ``optspec.impls.cuda`` (see :func:`native_implementations`)."""

    def __init__(self, prepared: Prepared, implementation: str) -> None:
        available = native_implementations()
        if not available:
            raise NotImplementedError("optspec.impls.cuda exposes no native CUDA implementation")
        wanted = implementation.partition(":")[2]
        impl = next((i for i in available if i.name == wanted), None) if wanted else available[0]
        if impl is None:
            raise NotImplementedError(f"optspec.impls.cuda has no implementation {wanted!r}")
        import torch

        self.gpu = torch.cuda.is_available()
        if not self.gpu:
            raise NotImplementedError("no CUDA device (torch.cuda.is_available() is False)")
        reason = impl.unavailable()
        if reason is not None:
            raise NotImplementedError(f"{impl.name}: {reason}")
        plan = _plan(impl, prepared)
        self.device = "cuda"
        self.min_bytes = functools.partial(prepared.min_bytes, plan.run_variant)
        self.numel = prepared.numel
        self.param_bytes = 2 if prepared.bf16 else 4
        dtype = torch.bfloat16 if prepared.bf16 else torch.float32
        generator = torch.Generator(device="cuda").manual_seed(0)
        params = [torch.randn(s, generator=generator, device="cuda").mul_(0.1).to(dtype) for s in prepared.shapes]
        grads = [torch.randn(s, generator=generator, device="cuda").mul_(1e-3).to(dtype) for s in prepared.shapes]
        self.stepper = native_stepper(impl, plan, prepared.hyper, params, grads)
        self._step = self.stepper
        for _ in range(2):
            self.step()
        self.sync()

    def state_bytes(self) -> int:
        tensors = getattr(self.stepper, "state_tensors", None)
        if tensors is None:
            return -1  # the implementation does not say; asv records -1, not a guess
        return sum(t.numel() * t.element_size() for t in tensors())


def make_bench(rule: str, implementation: str, param_set: str, dtype: str) -> StepBench:
    """Build the benchmark of one combination; ``NotImplementedError`` says why it cannot run."""
    if implementation.startswith(NATIVE) and not native_implementations():
        raise NotImplementedError("optspec.impls.cuda exposes no native CUDA implementation")
    return bench_prepared(prepare(rule, param_set, dtype), implementation)


def bench_prepared(prepared: Prepared, implementation: str) -> StepBench:
    """The benchmark of a resolved configuration under one of :func:`implementation_names`."""
    if implementation in TORCH_PATHS:
        bench: StepBench = TorchBench(prepared, implementation)
    elif implementation == "optax.jit":
        bench = OptaxBench(prepared)
    elif implementation.startswith(NATIVE):
        if not native_implementations():
            raise NotImplementedError("optspec.impls.cuda exposes no native CUDA implementation")
        bench = NativeBench(prepared, implementation)
    else:
        raise NotImplementedError(f"unknown implementation {implementation!r}")
    _SYNC[0] = bench.sync
    return bench


#: the implementation name of a user's optimizer (``optspec bench RULE TARGET``)
TARGET = "target"


@dataclass(frozen=True)
class TargetSpec:
    """A user's optimizer as ``optspec check`` takes it: ``module:attribute`` and the check's options."""

    rule: str
    target: str
    variant: Sequence[str] = ()
    maps: Sequence[str] = ()
    kwargs: Sequence[str] = ()
    hypers: Sequence[str] = ()
    specs: Sequence[str] = ()


def target_prepared(user: TargetSpec, param_set: str, dtype: str) -> tuple[Prepared, Any]:
    """The user's rule, claimed variant and ``--hyper`` overrides on a parameter set, and the open check session.

    The session (:func:`optspec.checking.runner.open_session`, in this process) maps the spec's
    hyperparameters to the target's keywords exactly as ``optspec check`` does; bad input raises
    ``optspec.errors.UsageError``. The caller closes ``session.executor``.
    """
    from optspec.checking.runner import open_session
    from optspec.spec import SpecLibrary

    library = SpecLibrary(extra_dirs=[Path(d) for d in user.specs])
    session = open_session(
        user.rule, user.target, library, user.variant, user.hypers, user.maps, isolate=False, kwargs=user.kwargs
    )
    config = RuleConfig(user.rule, hyper=dict(session.overrides), variant=dict(session.claimed))
    return prepare_spec(session.spec, param_set, dtype, config), session


def target_bench(user: TargetSpec, param_set: str, dtype: str) -> StepBench:
    """The benchmark of a user's torch optimizer or optax factory at the rule's defaults (and ``--hyper``)."""
    from optspec.checking.targets import load

    prepared, session = target_prepared(user, param_set, dtype)
    try:
        config = session.naming.configure(prepared.hyper, session.variant)
        if config.problems:
            raise NotImplementedError(f"{user.target} cannot express the configuration: {'; '.join(config.problems)}")
        obj = load(user.target, os.getcwd())
        kwargs = dict(config.kwargs)
        shown = f"{user.target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        if session.info.kind == "torch":
            bench: StepBench = TorchBench(prepared, TARGET, constructor=(lambda params: obj(params, **kwargs), shown))
        else:
            bench = OptaxBench(prepared, factory=(lambda: obj(**kwargs), shown))
    finally:
        session.executor.close()
    _SYNC[0] = bench.sync
    return bench
