"""``optspec check --shard LAYOUT --world-size N``: a third-party optimizer on sharded parameters.

:class:`ShardedExecutor` is an :class:`~optspec.checking.worker.Executor` over a gloo gang of
N ranks (:mod:`optspec.impls.torch_gang`): describing the target happens on every rank, and
each case runs through :func:`optspec.impls.torch_sharded.run_sharded` — the parameters are
DTensors (``dtensor``: Shard(0), ``dtensor1``: Shard(1)), a ``fully_shard`` module (``fsdp2``)
or whole parameters owned by one rank (``zero``). The gathered parameters are compared with the
same float64 reference under the same error model as the one-process check. The behavioural
check :func:`reshard_behaviour` saves the optimizer state at one world size and loads it at another.

:func:`local_shard_diagnosis` explains a failure the one-process check would not see: when every
failing case matches the reference run on each rank's shard as a separate tensor, the target
takes its per-tensor reductions (the norm of a LAMB/LARS trust ratio, say) on its local shard
instead of on the whole tensor (DeepSpeed#490; pytorch PR#159856).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from optspec.checking.diagnose import Diagnosis
from optspec.checking.results import BehaviourResult
from optspec.checking.worker import TargetFailure
from optspec.conformance import compare
from optspec.errors import UsageError
from optspec.impls import torch_gang
from optspec.impls.torch_sharded import CASE_TIMEOUT, SHARD_OPTIONS, local_shards
from optspec.reference import CaseInputs, Trajectory

RUN_SCENARIO = "optspec.checking.targets:run_scenario"
#: the finding's name in the diagnosis and in --json
LOCAL_SHARD = "reductions on the local shard"


def layout_for(shard: str, world_size: int) -> str:
    """The layout of a ``--shard`` value; bad values are a UsageError."""
    if shard not in SHARD_OPTIONS:
        raise UsageError(f"--shard {shard}: unknown layout (known: {', '.join(SHARD_OPTIONS)})")
    if not 1 < world_size <= 64:
        raise UsageError(f"--world-size {world_size}: must be from 2 to 64")
    launched = torch_gang.launched_world_size()
    if launched is not None and launched != world_size:
        raise UsageError(f"--world-size {world_size}: under torchrun the world size is WORLD_SIZE = {launched}")
    return SHARD_OPTIONS[shard]


class ShardedExecutor:
    """Runs the check's calls on every rank of a gang; cases run on sharded parameters."""

    def __init__(self, layout: str, world_size: int) -> None:
        self.layout = layout
        self.world_size = world_size

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        # the process's gang of this size (reused by later checks, ended at exit)
        gang = torch_gang.gang(self.world_size)
        if function == RUN_SCENARIO:
            ref, cwd, scenario = args
            if scenario.kind != "torch":
                raise TargetFailure("usage", "--shard runs torch.optim.Optimizer subclasses only (optax: optspec run)")
            return gang.call(
                "optspec.impls.torch_sharded:run_sharded", self.layout, ref, cwd, scenario, timeout=max(timeout, CASE_TIMEOUT)
            )
        return gang.call(function, *args, timeout=timeout)

    def captured(self) -> list[str]:
        return []

    def close(self) -> None:
        """The gang stays for the next check of this process; :func:`optspec.impls.torch_gang.close_all` ends it at exit."""


def _pieces(shape: Sequence[int], layout: str, world_size: int) -> list[tuple[int, int, int]]:
    """Non-empty shards of a tensor (the whole tensor when it is not split)."""
    return [p for p in local_shards(shape, layout, world_size) if p[0] < 0 or p[2] > p[1]]


def _cut(value: np.ndarray, piece: tuple[int, int, int], leading: int = 0) -> np.ndarray:
    dim, start, stop = piece
    if dim < 0:
        return value
    index = [slice(None)] * value.ndim
    index[dim + leading] = slice(start, stop)
    return value[tuple(index)]


def split_inputs(inputs: CaseInputs, layout: str, world_size: int) -> tuple[CaseInputs, list[tuple[int, tuple[int, int, int]]]]:
    """The case with every tensor replaced by its shards, as separate tensors; and (tensor, shard) of each."""
    where: list[tuple[int, tuple[int, int, int]]] = []
    params, grads = [], []
    for i, (param, grad) in enumerate(zip(inputs.params, inputs.grads)):
        for piece in _pieces(np.shape(param), layout, world_size):
            where.append((i, piece))
            params.append(np.array(_cut(np.asarray(param), piece)))
            grads.append(np.array(_cut(np.asarray(grad), piece, leading=1)))
    return CaseInputs(tuple(params), tuple(grads), inputs.lr_multipliers, inputs.schedule), where


def split_trajectory(observed: Trajectory, where: Sequence[tuple[int, tuple[int, int, int]]]) -> Trajectory:
    return {
        step: [{slot: _cut(np.asarray(value), piece) for slot, value in tensors[i].items()} for i, piece in where]
        for step, tensors in observed.items()
    }


def local_shard_diagnosis(session: Any, failing: Sequence[Any]) -> Diagnosis | None:
    """The finding "reductions on the local shard", when every failing row supports it; else None.

    ``failing`` are the runner's rows (``result``, ``expected``, ``observation``) that failed
    numerically. Each is compared, under its own profile, with the float64 reference run on
    the split case (every rank's shard of every tensor a tensor of its own).
    """
    layout, world_size = session.shard
    if not failing or any(r.observation is None for r in failing):
        return None
    for r in failing:
        observation = r.observation
        inputs, where = split_inputs(observation.inputs, layout, world_size)
        if len(where) == len(observation.inputs.params):
            return None  # nothing was split: no local reduction to find
        tag = f"{r.result.case}[local shards {layout}@{world_size}]"
        expected = session.expectations.test(session.spec, session.variant, observation.hyper, inputs, r.expected.steps, tag)
        profile = observation.profile if observation.profile in expected.atol else r.result.dtype
        if not compare(expected, split_trajectory(observation.observed, where), profile, tag).ok:
            return None
    cases = ", ".join(sorted({f"{r.result.case} ({r.result.dtype})" for r in failing}))
    return Diagnosis(
        explanation=(
            f"{LOCAL_SHARD}: every failing case ({cases}) matches the reference run with each rank's shard "
            f"({layout}, world size {world_size}) as a tensor of its own, so the target takes its per-tensor reductions "
            "(a norm, e.g. a trust ratio's) over its local shard instead of the whole tensor (DeepSpeed#490; pytorch PR#159856)"
        ),
        first_divergence=failing[0].result.message,
    )


# --------------------------------------------------------------------------- behaviour: resharding a checkpoint

RESHARD = "state_dict across world sizes"


def reshard_behaviour(session: Any) -> BehaviourResult:
    """Save at the check's world size N after step k, load at another (2, or 4 when N = 2), go on: the trajectory is unchanged.

    Through ``torch.distributed.checkpoint`` (``get_optimizer_state_dict`` and DCP's resharding
    load); the defaults case in float64, compared with the float64 reference under its budget.
    """
    import tempfile

    from optspec.cases import make_inputs, recorded_steps

    layout, world_size = session.shard
    other = 2 if world_size != 2 else 4
    name = f"{RESHARD} ({world_size} -> {other})"
    if not layout.startswith("dtensor."):
        return BehaviourResult(name, "not applicable", f"the round trip runs the dtensor layouts, not {layout}")
    if torch_gang.launched_world_size() is not None:
        return BehaviourResult(name, "not applicable", "under torchrun only the launched world size runs")
    spec = session.spec
    case = spec.cases[0]
    hyper = session.hyper_for(case.hyper)
    inputs = make_inputs(spec, case)
    record = recorded_steps(case.steps)
    k = max(1, min(5, case.steps // 2))
    scenario = session.scenario(hyper, inputs, "float64", record, checkpoint_after=k)
    if isinstance(scenario, str):
        return BehaviourResult(name, "skipped", f"not expressible: {scenario}")
    expected = session.expectations.test(spec, session.variant, hyper, inputs, record, case.id)
    function = "optspec.impls.torch_sharded:run_checkpointed"
    timeout = max(session.timeout, CASE_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="optspec-dcp-") as directory:
        try:
            saved = torch_gang.gang(world_size).call(
                function, layout, session.target, session.cwd, scenario, directory, "save", timeout=timeout
            )
            loaded = torch_gang.gang(other).call(
                function, layout, session.target, session.cwd, scenario, directory, "load", timeout=timeout
            )
        except TargetFailure as exc:
            return BehaviourResult(name, "failed", f"the target failed: {exc.message}")
        finally:
            torch_gang.gang(other).close()
    comparison = compare(expected, {**saved, **loaded}, "float64", f"{spec.name}, case {case.id}, saved after step {k}")
    if comparison.ok:
        return BehaviourResult(name, "passed", "")
    return BehaviourResult(name, "failed", comparison.message)
