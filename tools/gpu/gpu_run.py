"""Every CUDA check and benchmark of optspec in one time-boxed device call (``tools/gpu/run.sh``).

On the device machine (no network; Python 3.12 with torch, jax, optax, CuPy, pytest; no asv,
no jsonschema), from the repository root, with ``$OUT`` set by the device tool:

1. ``preflight``: interpreter, framework versions, the GPU as torch, JAX and nvidia-smi see it
   (no CUDA device: stop, nothing else would mean anything);
2. ``wheels``: ``.whl/`` against the lock (``wheels.py check``: hashes, cp312 tags, closure);
   ``source``: the tree against the commit the dry run recorded in ``.whl/source.json``;
3. ``install``: the carried wheels into a temporary site (``pip install --no-index --no-deps
   --target``), then optspec itself with ``--no-deps`` (its build backend from ``.whl/build``);
   ``site``: every carried distribution importable from the site, its requirements met;
4. ``kernels``: ``python -m optspec.impls.cuda.build --device`` (every rule's kernel library);
5. ``tests``: ``pytest conformance/test_cuda_gpu.py`` with JUnit XML;
6. ``asv``: the GPU subset at 64M float32 parameters (``asv_plan.py``), phase by phase;
7. ``summary``: ``summary.md``, ``gpu-conformance.md``, the asv results as one archive.

Each step runs in its own process group under a time limit: at most its cap and never past
the run's deadline (``--budget`` seconds from the start, less a reserve for the summary); at
its limit it gets SIGINT (pytest then still writes its JUnit XML), then SIGKILL. ``$OUT`` gets
at most 8 files (the device tool's limit): run.log, env.json, summary.md, gpu-conformance.md,
junit-gpu.xml, asv-results.tar.gz.

``--dry-run`` (CPU, CI): fetches the wheels if they are not there (network), records the
source, copies the tree as the device will receive it (tracked and untracked-not-ignored
files and ``.whl/``, no ``.git``) and, in that copy, runs every step that needs no GPU with
the same commands: the wheel check; the installation into a temporary site (of the wheels
this interpreter can install: the cp312-only ones are tag-checked instead); the kernel build
with ``--check``; ``pytest --collect-only`` of the GPU tests with ``pretend_cuda``; asv's
discovery and the phase plan; one real ``asv run`` of one cheap CPU benchmark through the
recorded-commit repository; the summary and the packing of ``$OUT``.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAVEL_LIMIT = 64 * 2**20
OUT_LIMIT = 8
MACHINE_DRY = "dryrun-cpu"
#: Seconds kept back from every step for the summary and the packing.
RESERVE = 20
#: A step is not started with less than this left.
MIN_STEP = 10
#: Per-step caps in seconds (device run, dry run).
CAPS = {
    "preflight": (60, 60),
    "fetch": (0, 90),
    "wheels": (30, 30),
    "install": (60, 60),
    "optspec": (90, 90),
    "site": (30, 30),
    "kernels": (150, 200),
    "tests": (170, 90),
    "asv-setup": (45, 90),
}
#: Fallback estimate of one asv benchmark process on the device before any has been timed.
ASV_FIRST_GUESS_S = 6.0
DRY_BENCH = "^optimizer_step\\.Step\\.track_state_bytes\\('sgd', 'torch\\.for-loop', 'flat-1M', 'float32'\\)$"


def asv_plan_regex(tools: Path, phase: str, rules: list[str]) -> str:
    """asv_plan.regex (standard library only) for a phase ``metric:implementation`` and these rules."""
    sys.path.insert(0, str(tools))
    from asv_plan import regex

    metric, implementation = phase.split(":", 1)
    return regex(metric, implementation, rules)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Runner:
    """One run: the deadline, the log, the steps' records, the environment of every command."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = bool(args.dry_run)
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.work = Path(tempfile.mkdtemp(prefix="optspec-gpu."))
        if self.dry or (args.out and args.allow_no_gpu):
            self.out = Path(args.out) if args.out else self.work / "out"
        else:
            if not os.environ.get("OUT"):
                raise SystemExit("run.sh: $OUT is not set (the device tool sets it); use --dry-run on a CPU machine")
            self.out = Path(os.environ["OUT"])
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "run.log"
        self.log = self.log_path.open("w", encoding="utf-8")
        self.tree = REPO
        self.site = self.work / "site"
        self.results = self.work / "results"
        self.python = sys.executable
        self.steps: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {"mode": "dry-run" if self.dry else "device", "budget_s": args.budget}
        self.machine = MACHINE_DRY
        self.kernels_ok = False
        self.failed = False
        self.last_output: list[str] = []
        self.running: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.deadline - time.monotonic() - RESERVE

    def say(self, text: str) -> None:
        stamp = f"[{self.elapsed():6.1f}s]"
        print(f"{stamp} {text}", flush=True)
        self.log.write(f"{stamp} {text}\n")
        self.log.flush()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every command: the site first on the path, pip offline and unconfigured."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(
            # the dry run's stand-ins for device packages this interpreter lacks come after the site
            PYTHONPATH=os.pathsep.join([str(self.site), str(self.work / "standins"), str(self.tools)]),
            # asv drops PYTHONPATH in the benchmark processes; it passes this one on instead.
            ASV_PYTHONPATH=str(self.site),
            OPTSPEC_CUDA_BUILD_DIR=str(self.work / "cuda-build"),
            OPTSPEC_ASV_SOURCE=str(self.tree / ".whl" / "source.json"),
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            PIP_CONFIG_FILE=os.devnull,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
            PIP_ROOT_USER_ACTION="ignore",
        )
        env.update(extra)
        return env

    def network_env(self) -> dict[str, str]:
        """The dry run's registry steps (fetch, stand-ins): the caller's pip configuration, less a
        constraint file (tox sets one; ``--require-hashes`` downloads take none)."""
        return {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}

    def step(self, name: str, command: list[str], **kwargs: Any) -> dict[str, Any]:
        """Run one command in its own process group, time-boxed; its output goes to the log."""
        return self.finish_step(self.start_step(name, command, **kwargs))

    def start_step(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        cap: float | None = None,
        cwd: Path | None = None,
        required: bool = True,
    ) -> dict[str, Any]:
        """Start a step (its output in a log of its own); ``finish_step`` waits for it within its limit."""
        limit = min(cap if cap is not None else CAPS[name][1 if self.dry else 0], self.remaining())
        record: dict[str, Any] = {"step": name, "command": " ".join(command), "required": required}
        if limit < MIN_STEP:
            record.update(status="not run", seconds=0.0, detail=f"{max(0.0, self.remaining()):.0f} s left of the budget")
            return record
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        record["log"] = logs / f"{len(list(logs.iterdir())):02d}-{re.sub(r'[^a-z0-9]+', '-', name)}.log"
        handle = record["log"].open("w", encoding="utf-8")
        handle.write(f"===== {name}: {record['command']} (limit {limit:.0f} s)\n")
        handle.flush()
        record["begin"] = time.monotonic()
        record["until"] = record["begin"] + limit
        record["limit"] = round(limit)
        record["process"] = subprocess.Popen(
            command,
            cwd=cwd or self.tree,
            env=env or self.env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle.close()
        # when it really ended, for a step collected later (the dry run's background kernel check)
        record["ended"] = []
        threading.Thread(target=lambda: record["ended"].append((record["process"].wait(), time.monotonic())), daemon=True).start()
        self.running.append(record)
        return record

    def finish_step(self, record: dict[str, Any]) -> dict[str, Any]:
        name, required = record["step"], record.pop("required")
        if record in self.running:
            self.running.remove(record)
        process = record.pop("process", None)
        if process is None:
            self.say(f"{name}: NOT RUN ({record['detail']})")
        else:
            timed_out = False
            try:
                rc = process.wait(timeout=max(0.0, record.pop("until") - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._stop(process)
            ended = record.pop("ended")
            for _ in range(100):  # the waiter thread notes the end right after its wait() returns
                if ended or timed_out:
                    break
                time.sleep(0.01)
            seconds = (ended[0][1] if ended and not timed_out else time.monotonic()) - record.pop("begin")
            record.update(status="timed out" if timed_out else ("ok" if rc == 0 else "failed"), rc=rc, seconds=round(seconds, 1))
            log = record.pop("log")
            text = log.read_text(encoding="utf-8", errors="replace")
            self.log.write("\n" + text)
            self.log.flush()
            self.last_output = text.splitlines()[1:]
            self.say(f"{name}: {record['status']} in {seconds:.1f} s" + (f" (exit {rc})" if rc else ""))
            if record["status"] != "ok":
                for line in self.last_output[-25:]:
                    print(f"    | {line}", flush=True)
        self.steps.append(record)
        if record["status"] != "ok" and required:
            self.failed = True
        return record

    def steps_running(self) -> list[subprocess.Popen]:
        """Processes of steps started and not finished (the dry run's background kernel check)."""
        return [record["process"] for record in self.running if "process" in record]

    def _stop(self, process: subprocess.Popen) -> int:
        """SIGINT to the group (pytest and asv clean up and write what they have), then SIGKILL."""
        for sig, grace in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                return process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        return -9

    def tail(self, lines: int) -> list[str]:
        """The last lines of the last finished step's output."""
        return self.last_output[-lines:]

    @property
    def tools(self) -> Path:
        """tools/gpu of the tree the run uses (in a dry run, the rehearsal copy's)."""
        return self.tree / "tools" / "gpu"

    def python_step(self, name: str, code: str, *args: str, **kwargs: Any) -> dict[str, Any]:
        return self.step(name, [self.python, "-c", code, *args], **kwargs)

    # ------------------------------------------------------------------ steps

    def record_source(self) -> None:
        """Dry run, in the repository: commit, its author time, and the hash of every file that travels."""
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        when = subprocess.run(
            [*git, "log", "-1", "--format=%at", commit], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        files = {p: _sha256(REPO / p) for p in self.travelling_files() if not p.startswith(".whl/") and (REPO / p).is_file()}
        source = {"commit": commit, "commit_time": int(when), "dirty": [line[3:] for line in dirty], "files": files}
        target = REPO / ".whl" / "source.json"
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(source, indent=1, sort_keys=True))
        os.replace(tmp, target)
        self.say(
            f"source: recorded {commit[:12]} ({len(files)} files"
            + (f"; {len(dirty)} modified, not committed" if dirty else "")
            + ")"
        )

    def travelling_files(self) -> list[str]:
        """What the device tool sends: tracked and untracked-not-ignored files, plus the carried .whl/."""
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
        files = [p for p in listed if p and (REPO / p).is_file()]
        files += [str(p.relative_to(REPO)) for p in sorted((REPO / ".whl").rglob("*")) if p.is_file()]
        return files

    def rehearsal_copy(self) -> None:
        """Dry run: the tree as the device receives it, without .git; everything else runs there."""
        files = self.travelling_files()
        size = sum((REPO / p).stat().st_size for p in files)
        self.info["travel_bytes"] = size
        target = self.work / "tree"
        for path in files:
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, destination)
        self.tree = target
        verdict = "ok" if size <= TRAVEL_LIMIT else f"OVER the {TRAVEL_LIMIT / 2**20:.0f} MiB limit"
        self.say(f"travel: {len(files)} files, {size / 2**20:.1f} MiB with .whl/ ({verdict}); copied to {target}")
        if size > TRAVEL_LIMIT:
            self.failed = True

    def check_source(self) -> None:
        path = self.tree / ".whl" / "source.json"
        if not path.exists():
            self.say("source: .whl/source.json missing (run tools/gpu/run.sh --dry-run before the device call)")
            self.failed = True
            return
        source = json.loads(path.read_text())
        differ = [p for p, digest in source["files"].items() if not (self.tree / p).is_file() or _sha256(self.tree / p) != digest]
        self.info["source"] = {"commit": source["commit"], "modified_at_record": source["dirty"], "differs_now": differ}
        state = (
            "matches what was recorded"
            if not differ
            else f"DIFFERS from the record in {len(differ)} files ({', '.join(differ[:5])})"
        )
        note = f"; {len(source['dirty'])} files were modified, not committed, when recorded" if source["dirty"] else ""
        self.say(f"source: commit {source['commit'][:12]}; the tree {state}{note}")

    def preflight(self) -> bool:
        code = r"""
import importlib.metadata as md, json, platform, shutil, subprocess, sys
DRY = sys.argv[1] == "dry"
info = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine()}
NAMES = ("torch", "jax", "jaxlib", "jax-cuda13-plugin", "optax", "cupy-cuda13x", "numpy", "pytest", "pytest-xdist")
for name in (*NAMES, "pytest-timeout"):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = "not installed"
info["cupy"] = info.pop("cupy-cuda13x")
info["xdist"], info["pytest_timeout"] = info.pop("pytest-xdist"), info.pop("pytest-timeout")
if not DRY:  # what the frameworks see (imports take seconds: the device only)
    try:
        import torch
        info["torch_cuda"] = torch.cuda.is_available()
        if info["torch_cuda"]:
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_bytes": p.total_memory, "sm": f"{p.major}.{p.minor}",
                           "multiprocessors": p.multi_processor_count, "torch_cuda_version": torch.version.cuda}
    except Exception as exc:
        info["torch_cuda"] = False
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import jax
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:
        info["jax_devices"] = f"error: {type(exc).__name__}: {exc}"
nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
try:
    lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()
    info["nvcc"] = [line for line in lines if "release" in line][0]
except (OSError, IndexError) as exc:
    info["nvcc"] = f"not found: {exc}"
try:
    query = "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem"
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError) as exc:
    info["nvidia_smi"] = f"not available: {exc}"
print("PREFLIGHT " + json.dumps(info))
"""
        record = self.python_step("preflight", code, "dry" if self.dry else "device", required=not self.dry)
        found = [line for line in self.tail(400) if line.startswith("PREFLIGHT ")]
        info = json.loads(found[-1][len("PREFLIGHT ") :]) if found else {}
        self.info["preflight"] = info
        if info.get("gpu"):
            gpu = info["gpu"]
            self.say(
                f"preflight: {gpu['name']} ({gpu['memory_bytes'] / 2**30:.0f} GiB, sm {gpu['sm']}), torch {info.get('torch')}, "
                f"jax {info.get('jax')} on {info.get('jax_devices')}"
            )
            self.machine = "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-")
        elif not self.dry and self.args.allow_no_gpu:
            self.say(
                "preflight: torch sees no CUDA device; --allow-no-gpu: going on (a rehearsal: every GPU test and benchmark skips)"
            )
            self.machine = "rehearsal-no-gpu"
        elif not self.dry:
            self.say(
                f"preflight: torch sees no CUDA device ({info.get('torch_error', 'torch.cuda.is_available() is False')}): "
                "stopping"
            )
            self.failed = True
            return False
        return record["status"] == "ok" or self.dry

    def install(self) -> bool:
        """The carried wheels and optspec into the site; on a rehearsal machine (not the device's
        Python 3.12), only the wheels this interpreter takes, and stand-ins for device packages."""
        wheels = sorted(str(p) for p in (self.tree / ".whl").glob("*.whl"))
        if self.dry or self.args.allow_no_gpu:
            listed = subprocess.run(
                [self.python, str(self.tools / "wheels.py"), "installable"],
                capture_output=True,
                text=True,
                check=True,
                cwd=self.tree,
            ).stdout.split()
            skipped = sorted({Path(w).name for w in wheels} - {Path(w).name for w in listed})
            self.say(
                f"install: {len(listed)} of {len(wheels)} wheels install on Python {platform.python_version()}; "
                f"tag-checked only (cp312 binary): {', '.join(skipped) or 'none'}"
            )
            wheels = sorted(listed)
            # site_check.py: these are expected to come from this interpreter's own packages here.
            self.site.mkdir(parents=True, exist_ok=True)
            names = [re.sub(r"[-_.]+", "-", name.split("-")[0]).lower() for name in skipped]
            (self.site / ".cp312-only").write_text(" ".join(names))
            standins = [self.python, str(self.tools / "wheels.py"), "standins", str(self.work / "standins")]
            if self.step("standins", standins, env=self.network_env(), cap=60)["status"] != "ok":
                return False
            self.say("  " + (self.tail(1) or [""])[-1])
        pip = [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
        if self.step("install", [*pip, "--target", str(self.site), *wheels])["status"] != "ok":
            return False
        optspec = [
            *pip[:4],
            "--no-index",
            "--find-links",
            str(self.tree / ".whl" / "build"),
            "--no-deps",
            "--no-cache-dir",
            "--no-compile",
            "--target",
            str(self.site),
            str(self.tree),
        ]
        if self.step("optspec", optspec)["status"] != "ok":
            return False
        record = self.step("site", [self.python, str(self.tools / "site_check.py"), str(self.site)])
        for line in self.tail(50):
            if line.startswith("site: warning:"):
                self.say(line)
                self.info.setdefault("site_warnings", []).append(line)
        return record["status"] == "ok"

    def start_kernels(self) -> dict[str, Any]:
        """Device: every rule's kernel library (``--device``), on every core, before the tests.

        Dry run: the compile check (``--check``), in the background: the collection and asv's
        discovery need no kernels.
        """
        # the dry run groups the kernels as tox's compile check does (build.py's default, 2 jobs), so
        # that with --kernel-cache its translation units are the same files
        flag, jobs = ("--check", 2) if self.dry else ("--device", max(1, min(16, os.cpu_count() or 1)))
        env = self.env()
        if self.args.kernel_cache:
            # objects cached by content (source, runtime header, compiler and flags): a hit is an
            # identical compile that already succeeded (tox compiles them one step earlier)
            env["OPTSPEC_CUDA_BUILD_DIR"] = str(Path(self.args.kernel_cache).resolve())
        return self.start_step("kernels", [self.python, "-m", "optspec.impls.cuda.build", flag, "--jobs", str(jobs)], env=env)

    def finish_kernels(self, record: dict[str, Any]) -> None:
        self.kernels_ok = self.finish_step(record)["status"] == "ok"

    def tests(self) -> None:
        command = [self.python, "-m", "pytest", "conformance/test_cuda_gpu.py", "-p", "no:cacheprovider", "-q"]
        if self.dry:
            record = self.step("tests", [*command, "--collect-only", "-p", "pretend_cuda"])
            counted = [line for line in self.tail(20) if re.search(r"\d+ tests? collected", line)]
            if record["status"] == "ok" and counted:
                self.say(f"tests: {counted[-1].strip()} (collected as on the device; none run)")
            elif record["status"] == "ok":
                self.say("tests: collection printed no count")
                self.failed = True
            return
        pre = self.info.get("preflight", {})
        command += ["-ra", f"--junitxml={self.out / 'junit-gpu.xml'}"]
        if not str(pre.get("xdist", "not")).startswith("not"):
            command += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
        if not str(pre.get("pytest_timeout", "not")).startswith("not"):
            command += ["--timeout", "120"]
        if not self.kernels_ok:
            # node-id prefixes (pytest --deselect), not -k: a keyword would also match a folder's name
            module = "conformance/test_cuda_gpu.py::"
            for prefix in ("test_gpu_conforms[optspec.cuda::", "test_multi_tensor_launch", "test_bfloat16_launch"):
                command += ["--deselect", module + prefix]
            self.say("tests: the kernel build failed; optspec.cuda's tests are deselected (the torch and optax ones still run)")
        self.step("tests", command)

    def asv(self) -> None:
        conf = self.asv_config()
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        env = self.env(HOME=str(home))
        if not self.dry:
            env["OPTSPEC_BENCH_REQUIRE_GPU"] = "1"
        asv = [self.python, "-m", "asv"]
        pre = self.info.get("preflight", {})
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), cpu)
        if pre.get("gpu"):
            cpu = f"{cpu}; 1x {pre['gpu']['name']} ({pre['gpu']['memory_bytes'] / 2**30:.0f} GiB; {pre.get('nvidia_smi', '')})"
        machine = [
            *asv,
            "machine",
            "--config",
            str(conf),
            "--yes",
            "--machine",
            self.machine,
            "--os",
            f"{platform.system()} {platform.release()}",
            "--arch",
            platform.machine(),
            "--cpu",
            cpu,
            "--num_cpu",
            str(os.cpu_count()),
        ]
        if self.step("asv-setup", machine, env=env, cap=30, cwd=self.work)["status"] != "ok":
            return
        if not self.dry:
            self.seed_results()
        phases_path = self.work / "phases.json"
        plan = self.step(
            "asv-setup",
            [self.python, str(self.tools / "asv_plan.py"), "--conf", str(conf), "--out", str(phases_path)],
            env=env,
            cwd=self.work,
        )
        if plan["status"] != "ok":
            return
        phases = json.loads(phases_path.read_text())
        for line in self.tail(len(phases) + 1):
            self.say(f"  {line.strip()}")
        self.info["asv_phases"] = phases
        commit = json.loads((self.tree / ".whl" / "source.json").read_text())["commit"]
        run = [
            *asv,
            "run",
            "--config",
            str(conf),
            "--python=same",
            "--set-commit-hash",
            commit,
            "--machine",
            self.machine,
            "--launch-method",
            "spawn",
            "--show-stderr",
            "-a",
            "timeout=90",
        ]
        if self.dry:
            # One real benchmark through the same configuration: recorded commit, result file, archive.
            if self.step("asv-run", [*run, "--quick", "--bench", DRY_BENCH], env=env, cap=90, cwd=self.work)["status"] == "ok":
                self.check_dry_result(commit)
            self.probe_site(run, conf, env)
            return
        wanted = [p for p in phases if any(fnmatch.fnmatchcase(p["name"], g) for g in self.args.asv_phases.split(","))]
        for phase in phases:
            if phase not in wanted:
                self.say(f"asv {phase['name']}: left out (--asv-phases {self.args.asv_phases})")
            elif phase["name"].endswith(":native-cuda") and not self.kernels_ok:
                # every benchmark process would try the failed compile again
                wanted.remove(phase)
                self.steps.append(
                    {
                        "step": f"asv {phase['name']}",
                        "status": "not run",
                        "seconds": 0.0,
                        "detail": "the kernel build failed",
                        "phase": phase["name"],
                        "rules": phase["rules"],
                    }
                )
                self.say(f"asv {phase['name']}: NOT RUN (the kernel build failed)")
        per_process = ASV_FIRST_GUESS_S
        for phase in wanted:
            # the rules that fit the time left, at the per-process time measured so far
            fit = max(0, min(len(phase["rules"]), int(self.remaining() // per_process)))
            rules, left_out = phase["rules"][:fit], phase["rules"][fit:]
            name = f"asv {phase['name']}"
            if left_out:
                detail = f"~{per_process:.1f} s a process, {self.remaining():.0f} s left: {', '.join(left_out)} not run"
                self.steps.append(
                    {
                        "step": name + " (rest)",
                        "status": "not run",
                        "seconds": 0.0,
                        "detail": detail,
                        "phase": phase["name"],
                        "rules": left_out,
                    }
                )
                self.say(f"{name}: {len(left_out)} of {len(rules) + len(left_out)} rules NOT RUN ({detail})")
            if not rules:
                continue
            bench = asv_plan_regex(self.tools, phase["name"], rules)
            # cut off a phase far slower than estimated, so that the phases after it keep their time
            cap = min(self.remaining(), 30 + 2 * len(rules) * per_process)
            record = self.step(name, [*run, "--bench", bench], env=env, cap=cap, cwd=self.work, required=False)
            record.update(phase=phase["name"], rules=rules)
            if record["status"] in ("ok", "failed"):
                per_process = max(per_process * 0.5, record["seconds"] / len(rules))

    def seed_results(self) -> None:
        """Results of this machine already in the tree (a first call's, extracted there) go into the
        results directory first: asv adds to a commit's result file instead of replacing it."""
        committed = self.tree / "asv_bench" / "results" / self.machine
        if committed.is_dir():
            target = self.results / self.machine
            target.mkdir(parents=True, exist_ok=True)
            for path in committed.glob("*.json"):
                shutil.copy2(path, target / path.name)
            self.say(
                f"asv: seeded with {len(list(committed.glob('*.json')))} result files from asv_bench/results/{self.machine}/"
            )

    def probe_site(self, run: list[str], conf: Path, env: dict[str, str]) -> None:
        """Dry run: asv's benchmark processes import from the site, not from this interpreter's own packages.

        asv drops PYTHONPATH there and passes ASV_PYTHONPATH on instead. Here optspec may also be
        installed beside the interpreter (on the device it is not), so the suite's benchmark above
        cannot tell; a one-line benchmark that reports where ``optspec`` is found can.
        """
        probe = self.work / "probe"
        (probe / "benchmarks").mkdir(parents=True, exist_ok=True)
        (probe / "benchmarks" / "__init__.py").write_text("")
        (probe / "benchmarks" / "site_probe.py").write_text(
            "import importlib.util, os\n\n\ndef track_optspec_from_site():\n"
            "    spec = importlib.util.find_spec('optspec')\n"
            "    return 1.0 if spec and spec.origin.startswith(os.environ['OPTSPEC_PROBE_SITE']) else 0.0\n"
        )
        settings = json.loads(conf.read_text())
        settings.update(benchmark_dir=str(probe / "benchmarks"), results_dir=str(probe / "results"))
        probe_conf = probe / "asv.conf.json"
        probe_conf.write_text(json.dumps(settings, indent=2))
        command = [*run[: run.index("--config") + 1], str(probe_conf), *run[run.index("--config") + 2 :]]
        record = self.step("asv-probe", command, env={**env, "OPTSPEC_PROBE_SITE": str(self.site)}, cap=60, cwd=self.work)
        if record["status"] != "ok":
            return
        files = [f for f in (probe / "results" / self.machine).glob("*.json") if f.name != "machine.json"]
        result = json.loads(files[0].read_text())["results"].get("site_probe.track_optspec_from_site") if files else None
        if not result or result[0] != [1.0]:
            self.say(f"asv-probe: asv's benchmark processes do not import optspec from the site (result {result})")
            self.failed = True
        else:
            self.say("asv-probe: asv's benchmark processes import optspec from the site (ASV_PYTHONPATH)")

    def check_dry_result(self, commit: str) -> None:
        """The dry run's one benchmark left a value in a result file filed under the recorded commit."""
        sys.path.insert(0, str(self.tree / "asv_bench" / "tools"))
        from readme_table import values

        files = [f for f in (self.results / self.machine).glob("*.json") if f.name != "machine.json"]
        data = [json.loads(f.read_text()) for f in files]
        found = [d for d in data if d.get("commit_hash") == commit]
        value = (
            values(found[0], "optimizer_step.Step.track_state_bytes").get(("sgd", "torch.for-loop", "flat-1M", "float32"))
            if found
            else None
        )
        if value is None:
            self.say(f"asv-run: no value in a result file of commit {commit[:12]} under {self.results / self.machine}")
            self.failed = True
        else:
            self.say(
                f"asv-run: result filed under commit {commit[:12]} (track_state_bytes of plain sgd = {value:.0f}, as expected 0)"
            )
            if value != 0:
                self.failed = True

    def asv_config(self) -> Path:
        """asv.conf.json with results, environments and html under the work directory."""
        source = self.tree / "asv_bench" / "asv.conf.json"
        text = "\n".join(line for line in source.read_text().splitlines() if not re.match(r"\s*//", line))
        conf = json.loads(text)
        conf.update(
            repo=str(self.tree),
            dvcs="optspec-recorded",
            plugins=[".optspec_recorded_repo"],
            benchmark_dir=str(self.tree / "asv_bench" / "benchmarks"),
            results_dir=str(self.results),
            html_dir=str(self.work / "html"),
            env_dir=str(self.work / "env"),
        )
        shutil.copy2(self.tools / "optspec_recorded_repo.py", self.work / "optspec_recorded_repo.py")
        path = self.work / "asv.conf.json"
        path.write_text(json.dumps(conf, indent=2))
        return path

    def rerun_command(self) -> str | None:
        """The device command for what this run left out (phases not run or cut off), if anything."""
        if self.dry:
            return None
        phases = sorted(
            {r["phase"] for r in self.steps if r.get("phase") and r["status"] in ("not run", "timed out")},
            key=lambda name: [p["name"] for p in self.info.get("asv_phases", [])].index(name),
        )
        tests_done = any(r["step"] == "tests" and r["status"] in ("ok", "failed") for r in self.steps)
        if not phases and tests_done:
            return None
        parts = ["bash", "tools/gpu/run.sh", "--budget", "240"]
        if tests_done:
            parts += ["--skip", "tests"]
        if phases:
            parts += ["--asv-phases", ",".join(phases)]
        else:
            parts += ["--skip", "asv"]
        return " ".join(parts)

    def finish(self) -> int:
        """Summary, conformance page, archive; everything under $OUT; the short summary printed last."""
        steps_path = self.work / "steps.json"
        self.info["steps"] = self.steps
        self.info["rerun"] = self.rerun_command()
        self.info["elapsed_s"] = round(self.elapsed(), 1)
        steps_path.write_text(json.dumps(self.info, indent=2))
        archive = self.out / "asv-results.tar.gz"
        if self.results.exists():
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(self.results, arcname="results")
        command = [
            self.python,
            str(self.tools / "summary.py"),
            "--info",
            str(steps_path),
            "--results",
            str(self.results),
            "--machine",
            self.machine,
            "--junit",
            str(self.out / "junit-gpu.xml"),
            "--out",
            str(self.out / "summary.md"),
            "--conformance",
            str(self.out / "gpu-conformance.md"),
        ]
        if self.dry:
            command.append("--dry-run")
        result = subprocess.run(command, cwd=self.tree, env=self.env(), capture_output=True, text=True, timeout=60, check=False)
        self.log.write(f"\n===== summary\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            self.say(f"summary: failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:] or ''}")
            self.failed = True
        self.info["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "env.json").write_text(json.dumps(self.info, indent=2))
        self.log.close()
        produced = sorted(p for p in self.out.rglob("*") if p.is_file())
        deep = [p for p in produced if len(p.relative_to(self.out).parts) > 3]
        if len(produced) > OUT_LIMIT or deep:
            print(f"OUT: {len(produced)} files (limit {OUT_LIMIT}), {len(deep)} too deep: {[str(p) for p in produced]}")
            self.failed = True
        print(result.stdout.strip())
        print(f"OUT: {', '.join(p.name for p in produced)} ({len(produced)} files) in {self.out}")
        status = "FAILED" if self.failed else "ok"
        print(f"{'dry run' if self.dry else 'device run'} {status} in {self.elapsed():.0f} s (budget {self.args.budget} s)")
        return 1 if self.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU rehearsal: every step that needs no GPU")
    parser.add_argument("--budget", type=int, default=None, help="seconds for the whole run (device 420, dry run 240)")
    parser.add_argument("--skip", action="append", default=[], choices=["tests", "asv"], help="leave a part out (a rerun)")
    parser.add_argument(
        "--allow-no-gpu",
        action="store_true",
        help="device path on a machine without a GPU (a rehearsal of the script: everything GPU skips)",
    )
    parser.add_argument("--asv-phases", default="*", help="comma-separated globs of the asv phases to run (default: all)")
    parser.add_argument("--kernel-cache", help="the kernel build's cache directory (default: one in the work directory)")
    parser.add_argument("--out", help="dry run: where to write what $OUT gets on the device (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 240 if args.dry_run else 420
    run = Runner(args)
    run.say(f"optspec GPU run ({run.info['mode']}), budget {args.budget} s, work {run.work}, out {run.out}")
    try:
        if run.dry:
            record = run.step("fetch", [sys.executable, str(HERE / "wheels.py"), "fetch"], env=run.network_env(), cwd=REPO)
            if record["status"] == "ok":
                run.record_source()
                run.rehearsal_copy()
        if not run.failed and run.preflight():
            run.step("wheels", [run.python, str(run.tools / "wheels.py"), "check", "--json", str(run.work / "wheels.json")])
            if (run.work / "wheels.json").exists():
                run.info["wheels"] = json.loads((run.work / "wheels.json").read_text())
            run.check_source()
            if not run.failed and run.install():
                kernels = run.start_kernels()
                if not run.dry:
                    run.finish_kernels(kernels)
                if "tests" not in args.skip:
                    run.tests()
                if "asv" not in args.skip:
                    run.asv()
                if run.dry:
                    run.finish_kernels(kernels)
    except Exception as exc:  # the summary must still be written
        run.say(f"run: {type(exc).__name__}: {exc}")
        run.failed = True
        for record in run.steps_running():
            run._stop(record)
    status = run.finish()
    if run.dry:  # the rehearsal's copy, site and builds (about 50 MB); what $OUT would get stays
        for path in run.work.iterdir():
            if path == run.out or path.name == "logs":
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
    return status


if __name__ == "__main__":
    sys.exit(main())
