"""Generate and compile the CUDA kernels of every rule.

``python -m optspec.impls.cuda.build --check`` is the CI command: it generates one
translation unit per rule (every golden variant of the rule in it) under
``impls/cuda/build/`` and compiles each with ``nvcc -arch=sm_90 -c`` (no GPU needed), so a
change to a spec, the generator or the runtime that breaks compilation fails CI. ``--host``
also builds the CPU emulation libraries that the host tests load, ``--device`` the shared
libraries with the kernels and launchers (for a machine with a GPU).

Compiler flags, and why:

* ``-fmad=false`` (nvcc) and ``-ffp-contract=off`` (host): no fused multiply-add, so that
  a kernel rounds exactly like the host build of the same body that CI verifies against the
  golden vectors (``+ - * / sqrt`` are IEEE-correctly rounded on both; an optimizer step is
  memory-bound, FMA buys nothing measurable);
* ``-std=c++17`` for ``if constexpr``; the host emulation is built with ``-O0`` (it runs
  tensors of at most 24 elements; -O0 halves the compile time CI pays per rule);
* nvcc links the CUDA runtime statically (its default), so the library loads beside any
  torch build; kernels run on the stream torch hands over.

Outputs are cached by a hash of the source and flags; a compile writes to a temporary
file and renames it, so concurrent test runs in one checkout do not clash.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from optspec.errors import AdapterError, OptspecError
from optspec.impls.cuda.codegen import GeneratedKernel, generate, no_kernel_reason, translation_unit
from optspec.spec import Spec, SpecLibrary

PACKAGE_DIR = Path(__file__).resolve().parent
RUNTIME_HEADER = PACKAGE_DIR / "optspec_mt.cuh"
ARCH = "sm_90"
NVCC_FLAGS = ("-std=c++17", "-O3", "-fmad=false", "-Xptxas", "-O3", "--expt-relaxed-constexpr")
HOST_FLAGS = ("-std=c++17", "-O0", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared", "-x", "c++")


def build_dir() -> Path:
    """``$OPTSPEC_CUDA_BUILD_DIR``, else ``impls/cuda/build`` beside this file if writable, else a temp dir."""
    env = os.environ.get("OPTSPEC_CUDA_BUILD_DIR")
    candidates = [Path(env)] if env else [PACKAGE_DIR / "build", Path(tempfile.gettempdir()) / "optspec-cuda-build"]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise AdapterError(f"no writable build directory for CUDA sources (tried {', '.join(map(str, candidates))})")


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    return None


def host_compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def rule_kernels(spec: Spec, all_variants: bool = False) -> list[GeneratedKernel]:
    """Kernels of the golden variants of a rule (or of every knob combination)."""
    combos = spec.all_combos() if all_variants else spec.golden_combos()
    kernels: dict[str, GeneratedKernel] = {}
    for combo in combos:
        if no_kernel_reason(spec.resolve(combo)) is not None:
            continue  # stated by main() and the adapter
        kernel = generate(spec.resolve(combo))
        kernels.setdefault(kernel.cname, kernel)
    return list(kernels.values())


def write_source(name: str, kernels: Sequence[GeneratedKernel], directory: Path | None = None) -> Path:
    """Write ``<name>.cu`` (and a copy of the runtime header) into the build directory."""
    directory = directory or build_dir()
    header = directory / RUNTIME_HEADER.name
    runtime = RUNTIME_HEADER.read_text()
    if not header.exists() or header.read_text() != runtime:
        _atomic_write(header, runtime)
    path = directory / f"{name}.cu"
    text = translation_unit(kernels)
    if not path.exists() or path.read_text() != text:
        _atomic_write(path, text)
    return path


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _digest(source: Path, flags: Iterable[str]) -> str:
    h = hashlib.sha256(source.read_bytes())
    h.update(RUNTIME_HEADER.read_bytes())
    h.update(" ".join(flags).encode())
    return h.hexdigest()[:16]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        errors = [line for line in output if "error" in line] or output[-5:]
        raise AdapterError(f"{what} failed ({' '.join(command[:1])} exit {result.returncode}): {' | '.join(errors[:5])}")


def _compile(command_head: list[str], source: Path, suffix: str, flags: Sequence[str], what: str) -> Path:
    output = source.with_name(f"{source.stem}.{_digest(source, [*command_head, *flags])}{suffix}")
    if output.exists():
        return output
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=suffix, dir=output.parent)
    os.close(fd)
    try:
        _run([*command_head, *flags, "-I", str(source.parent), "-o", tmp, str(source)], what)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def compile_object(source: Path, arch: str = ARCH) -> Path:
    """``nvcc -arch=<arch> -c``: the CI compile check."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise AdapterError("nvcc is not installed (needed to compile the CUDA kernels)")
    return _compile([nvcc], source, ".o", [f"-arch={arch}", *NVCC_FLAGS, "-c"], f"nvcc -c {source.name}")


def compile_ptx(source: Path, arch: str = ARCH) -> Path:
    nvcc = nvcc_path()
    if nvcc is None:
        raise AdapterError("nvcc is not installed (needed to compile the CUDA kernels)")
    return _compile([nvcc], source, ".ptx", [f"-arch={arch}", *NVCC_FLAGS, "-ptx"], f"nvcc -ptx {source.name}")


def compile_device_library(source: Path, arch: str = ARCH) -> Path:
    """Kernels and launchers as a shared library loaded with ctypes."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise AdapterError("nvcc is not installed (needed to compile the CUDA kernels)")
    flags = [f"-arch={arch}", *NVCC_FLAGS, "-shared", "-Xcompiler", "-fPIC"]
    return _compile([nvcc], source, ".cuda.so", flags, f"nvcc -shared {source.name}")


def compile_host_library(source: Path) -> Path:
    """The CPU emulation of the same passes, compiled by the host C++ compiler."""
    cxx = host_compiler()
    if cxx is None:
        raise AdapterError("no host C++ compiler (g++, c++ or clang++) found")
    return _compile([cxx], source, ".host.so", list(HOST_FLAGS), f"{Path(cxx).name} {source.name}")


def source_for(kernels: Sequence[GeneratedKernel], name: str | None = None) -> Path:
    """Write the TU for ``kernels``; the name is the rule, or rule + a hash for a custom set."""
    if name is None:
        digest = hashlib.sha256(",".join(k.cname for k in kernels).encode()).hexdigest()[:8]
        name = f"{kernels[0].rule}_set_{digest}"
    return write_source(name, kernels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optspec.impls.cuda.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="nvcc -arch=sm_90 -c every rule's translation unit")
    parser.add_argument("--host", action="store_true", help="build the CPU emulation libraries (g++)")
    parser.add_argument("--device", action="store_true", help="build the kernel libraries (nvcc -shared)")
    parser.add_argument("--ptx", action="store_true", help="also write PTX (to inspect vector loads)")
    parser.add_argument("--rules", nargs="*", help="only these rules (default: every spec)")
    parser.add_argument("--all-variants", action="store_true", help="every knob combination, not only the golden ones")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles (default 2)")
    args = parser.parse_args(argv)
    library = SpecLibrary()
    start = time.perf_counter()
    try:
        per_rule: list[tuple[str, Path, int]] = []
        everything: list[GeneratedKernel] = []
        names = args.rules or library.names
        for name in names:
            reason = no_kernel_reason(library.get(name).resolve())
            if reason is not None:
                print(f"no kernel: {reason}")
                continue
            kernels = rule_kernels(library.get(name), args.all_variants)
            everything += kernels
            per_rule.append((name, write_source(name, kernels), len(kernels)))
        # The compile check needs no per-rule library: a few large translation units (one per
        # job) compile faster than one per rule, since nvcc's fixed cost per unit dominates.
        jobs = max(1, args.jobs)
        groups = [everything[i::jobs] for i in range(jobs) if everything[i::jobs]]
        combined = [
            (f"check_{i + 1}of{len(groups)}", write_source(f"check_{i + 1}of{len(groups)}", g), len(g))
            for i, g in enumerate(groups)
        ]
        generated = time.perf_counter() - start
        print(f"generated {len(everything)} kernels for {len(names)} rules in {generated:.2f} s -> {build_dir()}")
        steps = []
        if args.check:
            steps.append(("nvcc -c", compile_object, combined))
        if args.ptx:
            steps.append(("nvcc -ptx", compile_ptx, combined))
        if args.host:
            steps.append(("host", compile_host_library, per_rule))
        if args.device:
            steps.append(("nvcc -shared", compile_device_library, per_rule))
        for label, step, sources in steps:
            t0 = time.perf_counter()

            def one(item: tuple[str, Path, int], step=step) -> tuple[str, Path, float]:  # type: ignore[no-untyped-def]
                s = time.perf_counter()
                return item[0], step(item[1]), time.perf_counter() - s

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for rule, output, seconds in pool.map(one, sources):
                    print(f"  {label:<13} {rule:<12} {seconds:6.2f} s  {output.name}")
            print(f"{label}: {len(sources)} translation units in {time.perf_counter() - t0:.1f} s")
    except OptspecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
