"""Time the main job, ``optspec run`` (the whole matrix: rules and schedules, every installed
implementation), as a fresh machine would run it, and print the wall and CPU time.

    python tools/bench_run.py                     # cold: empty caches (CUDA kernel builds, JAX compilations, schema matches)
    python tools/bench_run.py --repeat 2          # cold, then warm: the second run reuses the first's caches
    python tools/bench_run.py --warm              # the caches a plain `optspec run` uses (impls/cuda/build, ~/.cache/optspec)
    python tools/bench_run.py --jobs 1            # no worker processes
    python tools/bench_run.py --compare before.json --json after.json
                                                  # and every check's record must equal before.json's

CPU time is user + system of ``optspec run`` and its worker processes and compilers
(resource.RUSAGE_CHILDREN): on a shared machine it moves less than the wall time, so it is the
primary figure; the load average (``os.getloadavg``) before and after each run is printed beside
it. The target (issue 14) is under 60 s on 2 cores. Exit 1 when ``--compare`` finds a check whose
record differs (verdict or numbers) in any run, or one that is new or gone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def records(path: Path) -> dict[str, dict]:
    """``optspec run --json`` records by (rule or schedule, check id); the document is
    ``{"format": "optspec-run/1", ..., "results": [...]}`` (a bare list: an older run)."""
    doc = json.loads(path.read_text())
    results = doc["results"] if isinstance(doc, dict) else doc
    return {f"{r.get('rule') or r.get('schedule')}::{r['id']}": r for r in results}


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_once(command: list[str], env: dict[str, str]) -> tuple[int, str, float, float]:
    """Exit status, the summary line, wall and CPU seconds of one ``optspec run``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    return completed.returncode, summary, wall, cpu


def compare(before: Path, after: Path) -> int:
    """Print how ``after``'s records differ from ``before``'s; the number of differences."""
    old, new = records(before), records(after)
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    verdicts = sorted(k for k in changed if old[k]["status"] != new[k]["status"])
    added, gone = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    print(
        f"  compared with {before}: {len(old.keys() & new.keys())} checks in both, {len(changed)} records differ "
        f"({len(verdicts)} verdicts), {len(added)} new, {len(gone)} gone"
    )
    for key in changed[:10]:
        print(f"    {key}: {old[key]['status']} -> {new[key]['status']}")
    for key in (added + gone)[:10]:
        print(f"    {key}: {'new' if key in new else 'gone'}")
    return len(changed) + len(added) + len(gone)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", action="store_true", help="use the caches a plain optspec run uses (default: fresh ones)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run N times, sharing the caches (the first is cold)")
    parser.add_argument("--jobs", type=int, default=None, help="optspec run --jobs (default: its own)")
    parser.add_argument("--json", type=Path, default=None, help="keep the (last) run's --json here")
    parser.add_argument("--compare", type=Path, default=None, metavar="BEFORE", help="an earlier --json to compare with")
    args = parser.parse_args()
    differences = 0
    with tempfile.TemporaryDirectory(prefix="optspec-bench-") as scratch:
        out = args.json or Path(scratch) / "run.json"
        env = dict(os.environ)
        if not args.warm:
            env["OPTSPEC_CUDA_BUILD_DIR"] = str(Path(scratch) / "cuda-build")
            env["OPTSPEC_JAX_CACHE"] = str(Path(scratch) / "jax-cache")
            env["OPTSPEC_SCHEMA_CACHE"] = str(Path(scratch) / "schema-matched")
            env["OPTSPEC_BUDGET_CACHE"] = str(Path(scratch) / "budgets")
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
        command = [sys.executable, "-m", "optspec.cli", "run", "--quiet", "--json", str(out)]
        if args.jobs is not None:
            command += ["--jobs", str(args.jobs)]
        for index in range(max(1, args.repeat)):
            caches = "the user's caches" if args.warm else ("cold caches" if index == 0 else "warm caches")
            loaded = load()
            code, summary, wall, cpu = run_once(command, env)
            print(f"run {index + 1} ({caches}): optspec run: exit {code}; {summary}")
            print(
                f"  wall {wall:.1f} s, cpu {cpu:.1f} s (user + sys, with workers), {os.cpu_count()} CPUs, "
                f"jobs {args.jobs or 'default'}; before: {loaded}, after: {load()}"
            )
            if args.compare is not None:
                differences += compare(args.compare, out)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
