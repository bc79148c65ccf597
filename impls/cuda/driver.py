"""Run generated kernels: the work list, the buffers and the pass sequence of one step.

The same driver runs the CPU emulation library (``backend="host"``, numpy buffers) and the
CUDA library (``backend="cuda"``, torch CUDA tensors); only allocation and pointers differ.
A step is

1. ``host_scalars(hyper, t, eta_t, s_t, global_grad_norm)`` in double (generated C++);
2. for each reduction level l = 1..L: zero the accumulators once, run pass l;
3. the step pass (elementwise; writes theta and the state), then swap the per-tensor
   scalar-state buffers (read old, write new: no block reads a value another has written).

The work list is built once: tensor i's pointers ``{theta, grad, state...}``, its element
count, and its chunks ``(i, start)`` of ``chunk_size`` elements (every tensor has at least
one chunk, so an empty tensor still updates its per-tensor scalar state).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optspec.errors import AdapterError
from optspec.impls.cuda.codegen import INIT_PASS, STEP_PASS, GeneratedKernel

DTYPE_CODES = {"float32": 0, "bfloat16": 1}
DEFAULT_CHUNK = 65536

_P = ctypes.c_void_p
_LL = ctypes.c_longlong


@dataclass(frozen=True)
class KernelFunctions:
    info: Any
    host_scalars: Any
    init_scalars: Any
    run: Any


class KernelLibrary:
    """A compiled translation unit (host emulation or CUDA), loaded with ctypes."""

    def __init__(self, path: Path, kernels: Sequence[GeneratedKernel]) -> None:
        try:
            self._dll = ctypes.CDLL(str(path))
        except OSError as exc:
            raise AdapterError(f"cannot load {path.name}: {exc}") from None
        self.path = path
        self._functions: dict[str, KernelFunctions] = {}
        for kernel in kernels:
            k = kernel.cname
            info = getattr(self._dll, f"optspec_{k}_info")
            info.argtypes, info.restype = [_P], ctypes.c_int
            host_scalars = getattr(self._dll, f"optspec_{k}_host_scalars")
            host_scalars.argtypes = [_P, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, _P]
            host_scalars.restype = None
            init_scalars = getattr(self._dll, f"optspec_{k}_init_scalars")
            init_scalars.argtypes, init_scalars.restype = [_P, _P], None
            run = getattr(self._dll, f"optspec_{k}_run")
            run.argtypes = [ctypes.c_int, ctypes.c_int, _P, _P, _P, _LL, _LL, _P, _P, _P, _P, _LL]
            run.restype = ctypes.c_int
            functions = KernelFunctions(info, host_scalars, init_scalars, run)
            counts = np.zeros(6, dtype=np.int64)
            functions.info(counts.ctypes.data)
            want = [len(kernel.tensor_slots), len(kernel.scalar_slots), len(kernel.reductions), kernel.levels]
            want += [kernel.n_host, kernel.n_host_init]
            if counts.tolist() != want:
                raise AdapterError(f"{path.name}: kernel {k} does not match its generator ({counts.tolist()} != {want}); rebuild")
            self._functions[k] = functions

    def functions(self, kernel: GeneratedKernel) -> KernelFunctions:
        return self._functions[kernel.cname]


def work_list(numels: Sequence[int], chunk_size: int) -> np.ndarray:
    """``(nchunks, 2)`` int64 rows ``(tensor, start)``; at least one chunk per tensor."""
    if chunk_size <= 0 or chunk_size % 4:
        raise AdapterError(f"chunk_size must be a positive multiple of 4, not {chunk_size}")
    rows = [(i, start) for i, n in enumerate(numels) for start in range(0, max(int(n), 1), chunk_size)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def float_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the 16-bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class HostBackend:
    """numpy buffers; ``lanes`` emulated threads per chunk; optional misalignment by one element."""

    name = "host"

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = lanes

    def empty(self, n: int, dtype: str, misalign: bool = False) -> np.ndarray:
        np_dtype = {"float32": np.float32, "bfloat16": np.uint16, "float64": np.float64, "int64": np.int64}[dtype]
        if not misalign:
            return np.zeros(n, dtype=np_dtype)
        base = np.zeros(n + 1, dtype=np_dtype)
        return base[1:]  # 2 or 4 bytes past an aligned start: the kernel must take the scalar path

    def ptr(self, array: np.ndarray) -> int:
        return int(array.ctypes.data)

    def upload(self, values: np.ndarray, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(values, dtype={"int64": np.int64, "uint64": np.uint64, "float64": np.float64}[dtype])

    def write(self, target: np.ndarray, values: np.ndarray, dtype: str) -> None:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        target[...] = float_to_bf16_bits(flat.astype(np.float32)) if dtype == "bfloat16" else flat.astype(np.float32)

    def read(self, array: np.ndarray, dtype: str) -> np.ndarray:
        values = bf16_bits_to_float(array) if dtype == "bfloat16" else np.asarray(array)
        return np.array(values, dtype=np.float64)

    def zero(self, array: np.ndarray) -> None:
        array.fill(0)

    def extra(self) -> int:
        return self.lanes

    def sync(self) -> None:
        pass


class CudaBackend:
    """torch CUDA tensors; kernels run on torch's current stream."""

    name = "cuda"

    def __init__(self, device: Any = "cuda") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def empty(self, n: int, dtype: str, misalign: bool = False) -> Any:
        torch = self.torch
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64, "int64": torch.int64}[dtype]
        if not misalign:
            return torch.zeros(n, dtype=tdtype, device=self.device)
        return torch.zeros(n + 1, dtype=tdtype, device=self.device)[1:]

    def ptr(self, tensor: Any) -> int:
        return int(tensor.data_ptr())

    def upload(self, values: np.ndarray, dtype: str) -> Any:
        array = np.ascontiguousarray(values, dtype=np.int64 if dtype in ("int64", "uint64") else np.float64)
        return self.torch.from_numpy(array).to(self.device)

    def write(self, target: Any, values: Any, dtype: str) -> None:
        if isinstance(values, np.ndarray):
            values = self.torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(-1))
        target.copy_(values.reshape(-1))

    def read(self, tensor: Any, dtype: str) -> np.ndarray:
        return tensor.detach().to(device="cpu", dtype=self.torch.float64).numpy().copy()

    def zero(self, tensor: Any) -> None:
        tensor.zero_()

    def extra(self) -> int:
        return int(self.torch.cuda.current_stream(self.device).cuda_stream)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)


class MultiTensorRunner:
    """One optimizer over a list of tensors: owns the state, the work list and the scratch."""

    def __init__(
        self,
        kernel: GeneratedKernel,
        library: KernelLibrary,
        backend: HostBackend | CudaBackend,
        thetas: Sequence[Any],
        grads: Sequence[Any],
        hyper: Mapping[str, float],
        dtype: str = "float32",
        chunk_size: int = DEFAULT_CHUNK,
        numels: Sequence[int] | None = None,
        misalign: Sequence[bool] | None = None,
    ) -> None:
        if dtype not in DTYPE_CODES:
            raise AdapterError(f"{kernel.rule}: the CUDA kernels run float32 or bfloat16, not {dtype}")
        missing = [h for h in kernel.hyper_names if h not in hyper]
        if missing:
            raise AdapterError(f"{kernel.rule}: hyperparameter {missing[0]!r} has no value")
        self.kernel = kernel
        self.fn = library.functions(kernel)
        self.backend = backend
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.thetas = list(thetas)
        self.grads = list(grads)
        self.numels = [int(n) for n in (numels if numels is not None else [len(t) for t in self.thetas])]
        misalign = list(misalign) if misalign is not None else [False] * len(self.thetas)
        count = len(self.thetas)
        ns, nss, nr = len(kernel.tensor_slots), len(kernel.scalar_slots), len(kernel.reductions)
        self.state = [[backend.empty(n, "float32", bad) for _ in range(ns)] for n, bad in zip(self.numels, misalign)]
        pointers = np.zeros((count, 2 + ns), dtype=np.uint64)
        for i in range(count):
            pointers[i, 0] = backend.ptr(self.thetas[i])
            pointers[i, 1] = backend.ptr(self.grads[i])
            for j in range(ns):
                pointers[i, 2 + j] = backend.ptr(self.state[i][j])
        chunks = work_list(self.numels, chunk_size)
        self.nchunks = int(chunks.shape[0])
        self._ptrs = backend.upload(pointers.view(np.int64), "int64")
        self._numel = backend.upload(np.asarray(self.numels, dtype=np.int64), "int64")
        self._chunks = backend.upload(chunks, "int64")
        self._red = backend.empty(max(1, count * nr), "float64")
        self._ps = [backend.empty(max(1, count * nss), "float64"), backend.empty(max(1, count * nss), "float64")]
        self._hyper = np.asarray([float(hyper[h]) for h in kernel.hyper_names] or [0.0], dtype=np.float64)
        self._hs = np.zeros(max(1, kernel.n_host), dtype=np.float64)
        self._hs_init = np.zeros(max(1, kernel.n_host_init), dtype=np.float64)
        self.fn.init_scalars(self._hyper.ctypes.data, self._hs_init.ctypes.data)
        self._pass(INIT_PASS, self._hs_init)

    def _pass(self, number: int, hs: np.ndarray) -> None:
        b = self.backend
        code = self.fn.run(
            number,
            DTYPE_CODES[self.dtype],
            b.ptr(self._ptrs),
            b.ptr(self._numel),
            b.ptr(self._chunks),
            self.nchunks,
            self.chunk_size,
            hs.ctypes.data,
            b.ptr(self._red),
            b.ptr(self._ps[0]),
            b.ptr(self._ps[1]),
            b.extra(),
        )
        if code != 0:
            what = "unknown pass or dtype" if code == -1 else f"CUDA error {code}"
            raise AdapterError(f"{self.kernel.rule} [{self.kernel.cname}]: pass {number} failed: {what}")
        if number in (INIT_PASS, STEP_PASS):
            self._ps.reverse()

    def step(self, t: int, lr: float, lr_multiplier: float, global_grad_norm: float = float("nan")) -> None:
        """One step at 1-based count ``t`` with eta_t = ``lr`` and s_t = ``lr_multiplier``.

        ``global_grad_norm`` is the norm of all tensors' gradients of this step, for rules that
        read it (global clipping); without it a rule that reads it gets NaN, never a silent 0.
        """
        self.fn.host_scalars(
            self._hyper.ctypes.data, float(t), float(lr), float(lr_multiplier), float(global_grad_norm), self._hs.ctypes.data
        )
        if self.kernel.levels:
            self.backend.zero(self._red)
            for level in range(1, self.kernel.levels + 1):
                self._pass(level, self._hs)
        self._pass(STEP_PASS, self._hs)

    def snapshot(self) -> list[dict[str, np.ndarray]]:
        """theta, tensor slots and per-tensor scalar slots of every tensor, as float64 arrays."""
        self.backend.sync()
        nss = len(self.kernel.scalar_slots)
        scalars = self.backend.read(self._ps[0], "float64") if nss else None
        out = []
        for i in range(len(self.thetas)):
            values = {"theta": self.backend.read(self.thetas[i], self.dtype)}
            for j, name in enumerate(self.kernel.tensor_slots):
                values[name] = self.backend.read(self.state[i][j], "float32")
            for j, name in enumerate(self.kernel.scalar_slots):
                assert scalars is not None
                values[name] = np.array(scalars[i * nss + j])
            out.append(values)
        return out
