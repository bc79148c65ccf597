"""The asv GPU subset of ``run.sh``, in priority order, as ``asv run --bench`` regexes.

One phase per (metric, implementation) at 64M float32 parameters (``flat-64M``), so that a phase
killed at its time limit loses only its own results (asv saves a run's results at its end):

1. ``Roofline.track_ratio`` and 2. ``Step.time_step`` of ``native-cuda`` (optspec's generated
   kernels) and ``torch.fused``; 3. the same two of ``optax.jit``; 4. ``GpuMemory.track_peak_bytes``
   of all three.

A phase lists only the rules its implementation binds at that size, decided as the benchmark's
own ``setup`` decides (``optimizer_step.prepare`` and ``optspec.impls.base.plan_case``, with
the device's availability taken as given), so no process is spent on a combination that would
skip. Then asv's own discovery and filter (``asv.benchmarks.Benchmarks``) count what each
regex selects, which is exactly what ``asv run --bench`` will run; a phase that selects fewer
combinations than it has rules is an error (a typo in a name or a regex).

    python3 tools/gpu/asv_plan.py --conf WORK/asv.conf.json --out WORK/phases.json

Needs optspec and asv importable (the run's site on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PARAM_SET = "flat-64M"
DTYPE = "float32"
METRICS = {
    "roofline": "optimizer_step.Roofline.track_ratio",
    "time": "optimizer_step.Step.time_step",
    "peak": "optimizer_step.GpuMemory.track_peak_bytes",
}
#: (metric, implementation) in the order they run.
ORDER = [
    ("roofline", "native-cuda"),
    ("roofline", "torch.fused"),
    ("time", "native-cuda"),
    ("time", "torch.fused"),
    ("roofline", "optax.jit"),
    ("time", "optax.jit"),
    ("peak", "native-cuda"),
    ("peak", "torch.fused"),
    ("peak", "optax.jit"),
]


class _Available:
    """An implementation with ``unavailable()`` answered None: the device's answer, assumed here."""

    def __init__(self, impl: Any) -> None:
        self._impl = impl

    def unavailable(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._impl, name)


def implementations() -> dict[str, Any]:
    """The adapters the benchmark's setup plans with, by benchmark implementation name."""
    from optspec.impls.cuda.adapter import GeneratedCuda
    from optspec.impls.optax_jax import OptaxJit
    from optspec.impls.torch_optim import TorchOptim

    return {"native-cuda": GeneratedCuda("cuda"), "torch.fused": TorchOptim("fused", "cuda"), "optax.jit": OptaxJit()}


def bound_rules(step: Any, impl: Any) -> list[str]:
    """Benchmark rule labels (``adam``, ``sgd+momentum`` ...) that ``impl`` runs at PARAM_SET."""
    from optspec.impls.base import plan_case

    labels = []
    for label in step.rule_configs():
        prepared = step.prepare(label, PARAM_SET, DTYPE)
        plan = plan_case(_Available(impl), prepared.spec, prepared.variant, prepared.hyper, "float32")
        if plan.skip is None:
            labels.append(label)
    return labels


def regex(metric: str, implementation: str, rules: list[str]) -> str:
    names = "|".join(re.escape(r) for r in rules)
    params = f"'(?:{names})', '{re.escape(implementation)}', '{re.escape(PARAM_SET)}', '{DTYPE}'"
    return f"^{re.escape(METRICS[metric])}\\({params}\\)$"


def plan() -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "asv_bench"))
    from benchmarks import optimizer_step as step

    adapters = implementations()
    missing = [name for _, name in ORDER if name not in step.implementation_names()]
    if missing:
        raise SystemExit(f"asv_plan: the benchmark suite has no implementation {missing[0]!r}")
    rules = {name: bound_rules(step, impl) for name, impl in adapters.items()}
    phases = []
    for metric, implementation in ORDER:
        if rules[implementation]:
            phases.append(
                {
                    "name": f"{metric}:{implementation}",
                    "rules": rules[implementation],
                    "bench": regex(metric, implementation, rules[implementation]),
                }
            )
    return phases


def count(conf_path: Path, phases: list[dict[str, Any]]) -> None:
    """Discover the suite with asv itself and count each phase's selection."""
    sys.path.insert(0, str(HERE))
    import optspec_recorded_repo  # noqa: F401 - registers the repository type the configuration names
    from asv import environment
    from asv.benchmarks import Benchmarks
    from asv.config import Config
    from asv.repo import get_repo

    conf = Config.load(str(conf_path))
    environments = list(environment.get_environments(conf, [":same"]))
    discovered = Benchmarks.discover(conf, get_repo(conf), environments, [None], check=True)
    suite = list(discovered._all_benchmarks.values())
    for phase in phases:
        selected = Benchmarks(conf, suite, regex=[phase["bench"]])
        phase["count"] = sum(
            len(idx) if idx is not None else 1 for name, idx in selected.benchmark_selection.items() if name in selected
        )
        if phase["count"] != len(phase["rules"]):
            raise SystemExit(
                f"asv_plan: phase {phase['name']} selects {phase['count']} benchmark combinations for "
                f"{len(phase['rules'])} rules ({', '.join(phase['rules'])}); regex {phase['bench']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu/asv_plan.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, required=True, help="the run's asv configuration (written by gpu_run.py)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the phases (JSON)")
    args = parser.parse_args(argv)
    phases = plan()
    count(args.conf, phases)
    args.out.write_text(json.dumps(phases, indent=2))
    for phase in phases:
        print(f"  {phase['name']:<22} {phase['count']:3d} benchmark processes: {', '.join(phase['rules'])}")
    print(f"asv subset: {sum(p['count'] for p in phases)} benchmark processes in {len(phases)} phases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
