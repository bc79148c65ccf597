"""Implementations under test: the generated kernels, on the CPU (CI) and on a GPU.

* ``optspec.cuda-host``: every rule's generated traits and the rule-independent chunk loop
  compiled by the host C++ compiler and run on the CPU, one emulated thread ("lane") after
  another. It uses a tiny chunk (8 elements), 3 lanes and one deliberately misaligned
  tensor, so the golden cases (tensors of 1, 1, 7, 15 and 24 elements) cross chunk
  boundaries and take both the 4-wide vector path and the scalar tail/misaligned path.
  Float32 only: scalars in double on the host, tensors in float32, which is exactly the
  error model's ``float32`` profile.
* ``optspec.cuda``: the same translation unit compiled by nvcc for sm_90 and launched on
  torch's current CUDA stream (64K-element chunks). ``unavailable()`` says why it cannot
  run (no torch, no CUDA device, no nvcc).

Every variant of every rule is bound: the kernels are generated from the spec, so there
is nothing a variant could fail to express; a rule the generator cannot handle fails with
a one-line error naming the rule and the equation.

For benchmarks, :func:`cuda_stepper` returns a :class:`~optspec.impls.cuda.driver.MultiTensorRunner`
over caller-owned torch CUDA tensors (float32, or bfloat16 parameters and gradients with
float32 state); :func:`bytes_per_param` gives the bytes a step moves, derived from the spec.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from optspec.errors import AdapterError, OptspecError
from optspec.impls.base import Binding, Plan, Slot, Support
from optspec.impls.cuda import build
from optspec.impls.cuda.codegen import GeneratedKernel, generate, no_kernel_reason
from optspec.impls.cuda.driver import CudaBackend, HostBackend, KernelLibrary, MultiTensorRunner
from optspec.reference import CaseInputs, Trajectory, gradient_at
from optspec.spec import SpecLibrary

_LOCK = threading.Lock()
_LIBRARIES: dict[tuple[str, str], tuple[KernelLibrary, dict[str, GeneratedKernel]]] = {}


def _kernel_library(backend: str, kernels: Sequence[GeneratedKernel], name: str | None) -> KernelLibrary:
    """Compile (cached on disk by content hash) and load a TU holding ``kernels``."""
    source = build.source_for(kernels, name)
    path = build.compile_host_library(source) if backend == "host" else build.compile_device_library(source)
    return KernelLibrary(path, kernels)


def load_kernel(
    spec_library: SpecLibrary, rule: str, variant: Mapping[str, str], backend: str
) -> tuple[GeneratedKernel, KernelLibrary]:
    """The kernel of one resolved rule and a loaded library containing it.

    A rule's golden variants share one library (one compile per rule); any other variant
    gets a library of its own.
    """
    spec = spec_library.get(rule)
    try:
        kernel = generate(spec.resolve(variant))
        with _LOCK:
            key = (backend, spec.sha256)
            if key not in _LIBRARIES:
                kernels = build.rule_kernels(spec)
                _LIBRARIES[key] = (_kernel_library(backend, kernels, rule), {k.cname: k for k in kernels})
            library, known = _LIBRARIES[key]
            if kernel.cname not in known:
                single = (backend, f"{spec.sha256}/{kernel.cname}")
                if single not in _LIBRARIES:
                    _LIBRARIES[single] = (_kernel_library(backend, [kernel], None), {kernel.cname: kernel})
                library = _LIBRARIES[single][0]
    except AdapterError:
        raise
    except OptspecError as exc:  # CodegenError, SpecError: one line naming rule and equation
        raise AdapterError(str(exc)) from None
    return kernel, library


def run_inputs(
    kernel: GeneratedKernel,
    library: KernelLibrary,
    backend: HostBackend | CudaBackend,
    inputs: CaseInputs,
    hyper: Mapping[str, float],
    record: Sequence[int],
    dtype: str = "float32",
    chunk_size: int = 65536,
    misalign: Sequence[bool] | None = None,
) -> Trajectory:
    """Run a golden case's inputs through the kernels; values at ``record`` steps, float64."""
    shapes = [np.shape(p) for p in inputs.params]
    numels = [int(np.prod(s)) if s else 1 for s in shapes]
    misalign = list(misalign) if misalign is not None else [False] * len(shapes)
    thetas = [backend.empty(n, dtype, bad) for n, bad in zip(numels, misalign)]
    grads = [backend.empty(n, dtype, bad) for n, bad in zip(numels, misalign)]
    for theta, param in zip(thetas, inputs.params):
        backend.write(theta, np.asarray(param).reshape(-1), dtype)
    runner = MultiTensorRunner(kernel, library, backend, thetas, grads, hyper, dtype, chunk_size, numels, misalign)
    wanted = set(record)
    trajectory: Trajectory = {}
    for t in range(1, inputs.steps + 1):
        # a quadratic loss's gradient is taken at the current parameters (read back, computed in float32)
        current = runner.snapshot() if inputs.quadratic is not None else None
        for index, (grad, stream) in enumerate(zip(grads, inputs.grads)):
            if current is None:
                backend.write(grad, np.asarray(stream[t - 1]).reshape(-1), dtype)
            else:
                point = current[index]["theta"].reshape(shapes[index])
                backend.write(grad, gradient_at(inputs, index, t, point, np.float32).reshape(-1), dtype)
        multiplier = float(inputs.lr_multipliers[t - 1])
        # the norm of all this step's gradients (global clipping), each tensor's norm then the norm of the norms, in float32
        norms = [np.linalg.norm(np.asarray(stream[t - 1], dtype=np.float32).reshape(-1)) for stream in inputs.grads]
        global_norm = float(np.linalg.norm(np.asarray(norms, dtype=np.float32)))
        runner.step(t, float(hyper["lr"]) * multiplier, multiplier, global_norm)
        if t in wanted:
            snapshot = runner.snapshot()
            trajectory[t] = [
                {slot: (value.reshape(shape) if value.ndim else value) for slot, value in tensor.items()}
                for tensor, shape in zip(snapshot, shapes)
            ]
    return trajectory


class GeneratedCuda:
    """The generated kernels as an :class:`~optspec.impls.base.Implementation`."""

    framework = "cuda"
    dtypes = ("float32",)

    def __init__(self, backend: str, spec_library: SpecLibrary | None = None) -> None:
        if backend not in ("host", "cuda"):
            raise ValueError(f"backend must be 'host' or 'cuda', not {backend!r}")
        self.backend = backend
        self.name = "optspec.cuda-host" if backend == "host" else "optspec.cuda"
        self._spec_library = spec_library

    @cached_property
    def specs(self) -> SpecLibrary:
        return self._spec_library or SpecLibrary()

    def unavailable(self) -> str | None:
        if self.backend == "host":
            if build.host_compiler() is None:
                return "no host C++ compiler (g++, c++ or clang++) to build the CPU emulation of the kernels"
            return None
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (the CUDA kernels run on torch CUDA tensors)"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        if build.nvcc_path() is None:
            return "nvcc is not installed (needed to compile the CUDA kernels)"
        return None

    def binding(self, rule: str) -> Binding | None:
        if rule not in self.specs.names:
            return None
        spec = self.specs.get(rule)
        if no_kernel_reason(spec.resolve()) is not None:
            return None  # not elementwise (Muon, Adafactor): see codegen.no_kernel_reason
        return Binding(
            rule=rule,
            target=f"generated kernel ({self.backend})",
            hyper={h: h for h in spec.hyper},
            variants={knob.name: {value: Support() for value in knob.values} for knob in spec.knobs.values()},
            state={name: Slot(name) for name in spec.state} | _variant_slots(spec),
        )

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        kernel, library = load_kernel(self.specs, plan.binding.rule, plan.run_variant, self.backend)
        if self.backend == "host":
            count = len(inputs.params)
            misalign = [i == 3 for i in range(count)]
            return run_inputs(kernel, library, HostBackend(lanes=3), inputs, hyper, record, dtype, 8, misalign)
        return run_inputs(kernel, library, CudaBackend(), inputs, hyper, record, dtype)


def _variant_slots(spec: Any) -> dict[str, Slot]:
    slots: dict[str, Slot] = {}
    for knob in spec.knobs.values():
        for value in knob.values.values():
            for name in value.state:
                slots[name] = Slot(name)
    return slots


def cuda_stepper(
    rule: str,
    params: Sequence[Any],
    grads: Sequence[Any],
    hyper: Mapping[str, float] | None = None,
    variant: Mapping[str, str] | None = None,
    chunk_size: int = 65536,
) -> MultiTensorRunner:
    """A fused multi-tensor optimizer over caller-owned CUDA tensors (for benchmarks).

    ``params`` and ``grads`` are contiguous torch CUDA tensors, all float32 or all bfloat16
    (state is float32 either way); they are updated in place by ``stepper.step(t, lr, s_t)``
    with one launch per pass for the whole list. Hyperparameters default to the spec's.
    """
    import torch

    specs = SpecLibrary()
    spec = specs.get(rule)
    kernel, library = load_kernel(specs, rule, spec.full_variant(variant), "cuda")
    dtypes = {p.dtype for p in params} | {g.dtype for g in grads}
    if dtypes == {torch.float32}:
        dtype = "float32"
    elif dtypes == {torch.bfloat16}:
        dtype = "bfloat16"
    else:
        raise AdapterError(f"{rule}: params and grads must be all float32 or all bfloat16, got {sorted(map(str, dtypes))}")
    flat_params = [p.view(-1) for p in params]
    flat_grads = [g.view(-1) for g in grads]
    values = spec.hyper_values(hyper)
    return MultiTensorRunner(kernel, library, CudaBackend(params[0].device), flat_params, flat_grads, values, dtype, chunk_size)


def bytes_per_param(rule: str, variant: Mapping[str, str] | None = None, dtype: str = "float32") -> int:
    """Bytes one step of the generated kernel moves per parameter (derived from the spec)."""
    spec = SpecLibrary().get(rule)
    kernel = generate(spec.resolve(variant))
    size = {"float32": 4, "bfloat16": 2}[dtype]
    return kernel.bytes_per_param(size, size)


IMPLEMENTATIONS = (GeneratedCuda("host"), GeneratedCuda("cuda"))
