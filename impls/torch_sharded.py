"""torch.optim on sharded parameters, over a real gloo process group (:mod:`optspec.impls.torch_gang`).

Layouts (each rank holds only its part; the optimizer runs on every rank):

* ``dtensor.shard0`` — every parameter and gradient a ``DTensor`` placed ``Shard(0)`` on a 1-D
  CPU device mesh; ``torch.chunk`` splits dimension 0, so a dimension of ``n`` rows gives
  ranks ``ceil(n / N)`` rows each until the rows run out (uneven shards, and empty ones when
  ``n < N``, e.g. shape (3,) over 4 ranks is 1 + 1 + 1 + 0). 0-d tensors are ``Replicate()``.
* ``dtensor.shard1`` — the same on dimension 1 where the tensor has one, else dimension 0.
* ``fsdp2`` — the parameters of one module wrapped by ``fully_shard`` (``Shard(0)`` DTensors);
  each step is a forward and backward of ``sum_i <p_i, g_i>`` on every rank, so the gradient
  FSDP2 reduce-scatters (the mean over ranks of identical values) is exactly ``g``. fully_shard
  refuses 0-d parameters: they are left out of it (``ignored_params``) and stay replicated.
* ``zero`` — ``ZeroRedundancyOptimizer`` over replicated parameters: each rank owns whole
  parameters, steps them and broadcasts them to the others.

After each recorded step the parameters and every state tensor are gathered to rank 0
(``full_tensor()`` for DTensors, ``gather_object`` of the owners' state for ZeRO) and compared
with the same golden cases under the same error model as one process (:mod:`optspec.conformance`).

:func:`local_shards` gives the split a layout makes of a shape; the check of a third-party
optimizer uses it to recognise a target that reduces (a norm) over its local shard only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optspec.checking.targets import Group, Scenario, TargetError, TargetUsageError, _describe_exc, load
from optspec.checking.worker import TargetFailure
from optspec.errors import AdapterError
from optspec.impls import torch_gang
from optspec.impls.base import Binding, Plan
from optspec.impls.torch_optim import BINDINGS, torch_unavailable
from optspec.reference import CaseInputs, Trajectory

LAYOUTS = ("dtensor.shard0", "dtensor.shard1", "fsdp2", "zero")
#: ``--shard`` names of optspec check -> layout
SHARD_OPTIONS = {"dtensor": "dtensor.shard0", "dtensor1": "dtensor.shard1", "fsdp2": "fsdp2", "zero": "zero"}
#: time limit of one sharded case (every rank, all steps, the gathers)
CASE_TIMEOUT = 120.0


def shard_dim(layout: str, ndim: int) -> int | None:
    """The dimension a layout splits for a tensor of ``ndim`` dimensions (None: replicated or whole)."""
    if layout == "zero" or ndim == 0:
        return None
    if layout == "dtensor.shard1" and ndim >= 2:
        return 1
    return 0


def local_shards(shape: Sequence[int], layout: str, world_size: int) -> list[tuple[int, int, int]]:
    """``(dim, start, stop)`` of each rank's shard of a tensor of ``shape`` (``torch.chunk`` sizes).

    A replicated or whole tensor is one piece ``(-1, 0, 0)``.
    """
    dim = shard_dim(layout, len(shape))
    if dim is None:
        return [(-1, 0, 0)]
    n = int(shape[dim])
    size = math.ceil(n / world_size) if n else 0
    return [(dim, min(r * size, n), min((r + 1) * size, n)) for r in range(world_size)]


# --------------------------------------------------------------------------- inside a rank

_MESH: Any = None


def _mesh() -> Any:
    global _MESH
    if _MESH is None:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH = init_device_mesh("cpu", (torch_gang.world_size(),))
    return _MESH


def _placement(layout: str, ndim: int) -> Any:
    from torch.distributed.tensor import Replicate, Shard

    dim = shard_dim(layout, ndim)
    return Replicate() if dim is None else Shard(dim)


class _Holder:
    """Builds the torch module FSDP2 wraps (defined lazily: torch is imported inside a rank only)."""

    cls: Any = None

    @classmethod
    def make(cls, tensors: Sequence[Any]) -> Any:
        import torch

        if cls.cls is None:

            class Parameters(torch.nn.Module):
                """Holds the case's tensors; forward(grads) = sum_i <p_i, g_i>, whose gradient is g."""

                def __init__(self, values: Sequence[Any]) -> None:
                    super().__init__()
                    self.tensors = torch.nn.ParameterList([torch.nn.Parameter(v) for v in values])

                def forward(self, grads: Sequence[Any]) -> Any:
                    return sum((p * g).sum() for p, g in zip(self.tensors, grads))

            cls.cls = Parameters
        return cls.cls(tensors)


def run_sharded(layout: str, ref: Any, cwd: str | None, sc: Scenario, schedule: Any = None) -> Trajectory | None:
    """Run the scenario on this rank's shards; rank 0 returns the gathered trajectory, the others None.

    ``schedule`` (a golden case's ``CaseInputs.schedule``) drives torch's own LR scheduler,
    stepped after each optimizer step, as :func:`optspec.impls.torch_optim.run_torch_optimizer` does.
    """
    import torch
    import torch.distributed as dist

    if layout not in LAYOUTS:
        raise TargetUsageError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if sc.kind != "torch":
        raise TargetUsageError("torch sharding runs torch.optim.Optimizer subclasses only")
    if sc.inner is not None or sc.checkpoint_after is not None or sc.check_grads:
        raise TargetUsageError("wrappers (--inner), checkpoints and gradient checks are not run on sharded parameters")
    if layout == "fsdp2" and sc.present is not None:
        raise TargetUsageError("FSDP2 computes every gradient; a step without a gradient cannot be expressed")
    if sc.quadratic is not None:
        raise TargetUsageError("gradients taken at the point (the rule's quadratic loss) are not fed to sharded parameters")
    cls = load(ref, cwd)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[sc.dtype]
    me = torch_gang.rank()
    full = [torch.tensor(np.asarray(v), dtype=torch_dtype) for v in sc.params]
    params, module, optimizer = _build(layout, cls, full, sc)
    owner = {i: g for g in sc.groups for i in g.indices}
    scheduler = None
    if schedule is not None:
        from optspec.impls.torch_schedulers import build_torch_scheduler

        try:
            scheduler = build_torch_scheduler(optimizer, schedule.name, schedule.variant, schedule.hyper)
        except AdapterError as exc:
            raise TargetError(str(exc)) from None
    trajectory: Trajectory = {}
    for t in range(1, sc.steps + 1):
        for group, spec_group in zip(optimizer.param_groups, sc.groups):
            if spec_group.lr_keyword is not None and scheduler is None:
                group[spec_group.lr_keyword] = spec_group.base_lr * float(sc.lr_multipliers[t - 1])
        grads = [torch.tensor(np.asarray(g[t - 1]), dtype=torch_dtype) for g in sc.grads]
        if module is not None:
            optimizer.zero_grad(set_to_none=True)
            module(grads).backward()
        else:
            for i, param in enumerate(params):
                if i not in owner or (sc.present is not None and not bool(sc.present[i][t - 1])):
                    param.grad = None
                elif layout == "zero":
                    param.grad = grads[i]
                else:
                    param.grad = _distribute(grads[i], layout)
        try:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        except Exception as exc:
            raise TargetError(f"step {t} raised {_describe_exc(exc)}") from None
        if t in sc.record:
            snapshot = _snapshot(layout, optimizer, params, sc.slots)
            if me == 0:
                trajectory[t] = snapshot
    dist.barrier()
    return trajectory if me == 0 else None


def _distribute(tensor: Any, layout: str) -> Any:
    from torch.distributed.tensor import distribute_tensor

    # every rank holds the full case data: each cuts its own shard, no communication
    return distribute_tensor(tensor, _mesh(), [_placement(layout, tensor.ndim)], src_data_rank=None)


def _build(layout: str, cls: Any, full: Sequence[Any], sc: Scenario) -> tuple[list[Any], Any, Any]:
    """(parameters, FSDP2 module or None, optimizer) for the layout."""
    module = None
    if layout == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        module = _Holder.make(full)
        try:
            # fully_shard refuses 0-d parameters: those stay replicated plain tensors (ignored_params)
            scalars = {p for p in module.tensors if p.ndim == 0}
            fully_shard(module, mesh=_mesh(), ignored_params=scalars or None)
        except Exception as exc:
            raise TargetError(f"fully_shard raised {_describe_exc(exc)}") from None
        params = list(module.tensors)
    elif layout == "zero":
        params = list(full)
    else:
        params = [_distribute(p, layout) for p in full]
    first = sc.groups[0]
    arg: Any = (
        [params[i] for i in first.indices]
        if len(sc.groups) == 1
        else [{"params": [params[i] for i in g.indices], **g.kwargs} for g in sc.groups]
    )
    try:
        if layout == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            optimizer = ZeroRedundancyOptimizer(arg, optimizer_class=cls, **first.kwargs)
        else:
            optimizer = cls(arg, **first.kwargs)
    except Exception as exc:
        raise TargetError(f"constructing the optimizer raised {_describe_exc(exc)}") from None
    return params, module, optimizer


def _gathered(value: Any) -> np.ndarray:
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().to(torch.float64).numpy().copy()


def _snapshot(layout: str, optimizer: Any, params: Sequence[Any], slots: Mapping[str, tuple[str, float]]) -> list[dict]:
    """Every parameter and slot, gathered (a collective: every rank calls it at the same point)."""
    import torch
    import torch.distributed as dist

    if layout == "zero":
        local = {}
        for i, param in enumerate(params):
            state = optimizer.optim.state.get(param)
            if state:
                local[i] = {
                    key: value.detach().to(torch.float64).numpy().copy()
                    for key, value in state.items()
                    if isinstance(value, torch.Tensor) and value.is_floating_point()
                }
        everyone: list[Any] = [None] * torch_gang.world_size() if torch_gang.rank() == 0 else []
        dist.gather_object(local, everyone if torch_gang.rank() == 0 else None, dst=0)
        merged: dict[int, dict[str, np.ndarray]] = {}
        for part in everyone:
            merged.update(part or {})
        out = []
        for i, param in enumerate(params):
            values = {"theta": _gathered(param)}
            for slot, (key, sign) in slots.items():
                if key in merged.get(i, {}):
                    values[slot] = sign * merged[i][key]
            out.append(values)
        return out
    out = []
    for param in params:
        values = {"theta": _gathered(param)}
        state = optimizer.state.get(param, {})
        for slot, (key, sign) in slots.items():
            value = state.get(key)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                values[slot] = sign * _gathered(value)
        out.append(values)
    return out


# --------------------------------------------------------------------------- the implementations


class TorchSharded:
    """A torch.optim class on sharded parameters: ``torch.<layout>@<world size>``."""

    framework = "torch"
    dtypes = ("float32", "float64")

    def __init__(self, layout: str, world_size: int) -> None:
        self.layout = layout
        self.world_size = world_size
        self.name = f"torch.{layout}@{world_size}"

    def unavailable(self) -> str | None:
        reason = torch_unavailable()
        if reason is None:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_gloo_available():
                return "torch.distributed with the gloo backend is not available"
        return reason

    def binding(self, rule: str) -> Binding | None:
        return BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        module, _, attribute = plan.binding.target.rpartition(".")
        scenario = Scenario(
            kind="torch",
            groups=(Group(tuple(range(len(inputs.params))), dict(plan.kwargs), "lr", float(hyper["lr"])),),
            params=tuple(inputs.params),
            grads=tuple(inputs.grads),
            lr_multipliers=inputs.lr_multipliers,
            dtype=dtype,
            record=tuple(record),
            slots={slot: (where.key, where.sign) for slot, where in plan.binding.state.items()},
        )
        try:
            trajectory = torch_gang.gang(self.world_size).call(
                "optspec.impls.torch_sharded:run_sharded",
                self.layout,
                f"{module}:{attribute}",
                None,
                scenario,
                inputs.schedule,
                timeout=CASE_TIMEOUT,
            )
        except TargetFailure as exc:
            raise AdapterError(f"{self.name} {plan.binding.target}: {exc.message}") from None
        return trajectory


def implementations(world_size: int) -> list[TorchSharded]:
    return [TorchSharded(layout, world_size) for layout in LAYOUTS]


# --------------------------------------------------------------------------- resharding a checkpoint


def run_checkpointed(layout: str, ref: Any, cwd: str | None, sc: Scenario, directory: str, phase: str) -> Trajectory | None:
    """One half of a state_dict round trip across world sizes through ``torch.distributed.checkpoint``.

    ``phase="save"`` runs steps 1..k (k = ``sc.checkpoint_after``) and saves the parameters
    and the optimizer state (``get_model_state_dict`` / ``get_optimizer_state_dict``, DTensor
    shards) to ``directory``; ``phase="load"`` builds the parameters and a fresh optimizer at
    this gang's world size, loads both from ``directory`` (DCP reshards) and runs steps
    k+1..T. Rank 0 returns the steps it recorded. ``dtensor.*`` layouts only.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not layout.startswith("dtensor."):
        raise TargetUsageError(f"the resharding round trip runs the dtensor layouts only, not {layout}")
    k = sc.checkpoint_after
    if k is None or phase not in ("save", "load"):
        raise TargetUsageError("run_checkpointed needs checkpoint_after and phase 'save' or 'load'")
    cls = load(ref, cwd)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[sc.dtype]
    full = [torch.tensor(np.asarray(v), dtype=torch_dtype) for v in sc.params]
    module = _Holder.make([_distribute(p, layout) for p in full])
    params = list(module.tensors)
    first = sc.groups[0]
    try:
        optimizer = cls(params, **first.kwargs)
    except Exception as exc:
        raise TargetError(f"constructing the optimizer raised {_describe_exc(exc)}") from None
    steps = range(1, k + 1) if phase == "save" else range(k + 1, sc.steps + 1)
    if phase == "load":
        try:
            model_state = get_model_state_dict(module)
            optim_state = get_optimizer_state_dict(module, optimizer)  # initialises the state to load into
            dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=directory)
            set_model_state_dict(module, model_state)
            set_optimizer_state_dict(module, optimizer, optim_state)
        except Exception as exc:
            raise TargetError(
                f"loading the checkpoint at world size {torch_gang.world_size()} raised {_describe_exc(exc)}"
            ) from None
    trajectory: Trajectory = {}
    for t in steps:
        for group in optimizer.param_groups:
            if first.lr_keyword is not None:
                group[first.lr_keyword] = first.base_lr * float(sc.lr_multipliers[t - 1])
        for param, g in zip(params, sc.grads):
            param.grad = _distribute(torch.tensor(np.asarray(g[t - 1]), dtype=torch_dtype), layout)
        try:
            optimizer.step()
        except Exception as exc:
            raise TargetError(f"step {t} raised {_describe_exc(exc)}") from None
        if t in sc.record:
            snapshot = _snapshot(layout, optimizer, params, sc.slots)
            if torch_gang.rank() == 0:
                trajectory[t] = snapshot
    if phase == "save":
        try:
            dcp.save(
                {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, optimizer)},
                checkpoint_id=directory,
            )
        except Exception as exc:
            raise TargetError(
                f"saving the checkpoint at world size {torch_gang.world_size()} raised {_describe_exc(exc)}"
            ) from None
    dist.barrier()
    return trajectory if torch_gang.rank() == 0 else None
