"""Time the main job, ``optspec run`` (the whole matrix: rules and schedules, every installed
implementation), as a fresh machine would run it, and print the wall and CPU time.

    python tools/bench_run.py                     # cold: empty kernel build cache
    python tools/bench_run.py --warm              # reuse the kernel build cache of impls/cuda/build
    python tools/bench_run.py --jobs 1            # no worker processes
    python tools/bench_run.py --compare before.json --json after.json
                                                  # and every check's record must equal before.json's

CPU time is user + system of ``optspec run`` and its worker processes (resource.RUSAGE_CHILDREN):
on a shared machine it moves less than the wall time. The target (issue 14) is under 60 s wall
on 2 cores. Exit 1 when ``--compare`` finds a check whose record differs (verdict or numbers).
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
    """``optspec run --json`` records by (rule or schedule, check id)."""
    return {f"{r.get('rule') or r.get('schedule')}::{r['id']}": r for r in json.loads(path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", action="store_true", help="keep the kernel build cache (default: a fresh one)")
    parser.add_argument("--jobs", type=int, default=None, help="optspec run --jobs (default: its own)")
    parser.add_argument("--json", type=Path, default=None, help="keep the run's --json here")
    parser.add_argument("--compare", type=Path, default=None, metavar="BEFORE", help="an earlier --json to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optspec-bench-") as scratch:
        out = args.json or Path(scratch) / "run.json"
        env = dict(os.environ)
        if not args.warm:
            env["OPTSPEC_CUDA_BUILD_DIR"] = str(Path(scratch) / "cuda-build")
        command = [sys.executable, "-m", "optspec.cli", "run", "--quiet", "--json", str(out)]
        if args.jobs is not None:
            command += ["--jobs", str(args.jobs)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
        print(f"optspec run: exit {completed.returncode}; {summary}")
        print(f"wall {wall:.1f} s, cpu {cpu:.1f} s (user + sys, with workers), {os.cpu_count()} CPUs")
        if args.compare is None:
            return 0
        old, new = records(args.compare), records(out)
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        verdicts = sorted(k for k in changed if old[k]["status"] != new[k]["status"])
        print(
            f"compared with {args.compare}: {len(old.keys() & new.keys())} checks in both, {len(changed)} records differ "
            f"({len(verdicts)} verdicts), {len(new.keys() - old.keys())} new, {len(old.keys() - new.keys())} gone"
        )
        for key in changed[:10]:
            print(f"  {key}: {old[key]['status']} -> {new[key]['status']}")
        return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
