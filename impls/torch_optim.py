"""torch.optim under test: the for-loop, foreach and fused implementations.

Each rule is bound to a ``torch.optim`` class by data alone; the runner sets
``param.grad`` each step, writes ``group["lr"] = eta * s_t`` before the step (what an
``LRScheduler`` does) and reads ``optimizer.state[param]``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optspec.errors import AdapterError
from optspec.impls.base import Binding, Plan, Requirement, Slot, Support
from optspec.reference import CaseInputs, Trajectory

_ON_OFF = {"off": Support({"maximize": False}), "on": Support({"maximize": True})}
_DEFAULT_ONLY = Support()

BINDINGS: dict[str, Binding] = {
    "sgd": Binding(
        rule="sgd",
        target="torch.optim.SGD",
        hyper={"lr": "lr", "momentum": "momentum", "dampening": "dampening", "weight_decay": "weight_decay"},
        variants={
            "weight_decay": {"l2": _DEFAULT_ONLY},
            "dampening": {"first_step_undamped": _DEFAULT_ONLY},
            "nesterov": {
                "off": Support({"nesterov": False}),
                "on": Support(
                    {"nesterov": True},
                    (
                        Requirement("momentum > 0", "Nesterov needs momentum > 0"),
                        Requirement("dampening == 0", "Nesterov needs dampening = 0"),
                    ),
                ),
            },
            "maximize": _ON_OFF,
        },
        state={"b": Slot("momentum_buffer")},
    ),
    "adam": Binding(
        rule="adam",
        target="torch.optim.Adam",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "epsilon": {"outside": _DEFAULT_ONLY},
            "amsgrad": {"off": Support({"amsgrad": False}), "raw": Support({"amsgrad": True})},
            "maximize": _ON_OFF,
        },
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq"), "vmax": Slot("max_exp_avg_sq")},
    ),
    "adamw": Binding(
        rule="adamw",
        target="torch.optim.AdamW",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"decay_scale": {"lr": _DEFAULT_ONLY}, "maximize": _ON_OFF},
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq")},
    ),
    "rmsprop": Binding(
        rule="rmsprop",
        target="torch.optim.RMSprop",
        hyper={"lr": "lr", "alpha": "alpha", "eps": "eps", "weight_decay": "weight_decay", "momentum": "momentum"},
        variants={
            "centered": {"off": Support({"centered": False}), "on": Support({"centered": True})},
            "epsilon": {"outside": _DEFAULT_ONLY},
            "momentum_lr": {"outside": _DEFAULT_ONLY},
            # torch/optim/rmsprop.py: square_avg starts at zeros; weight_decay is added to the gradient
            "init": {"zeros": _DEFAULT_ONLY},
            "weight_decay": {"l2": _DEFAULT_ONLY},
            "maximize": _ON_OFF,
        },
        state={"v": Slot("square_avg"), "gbar": Slot("grad_avg"), "b": Slot("momentum_buffer")},
    ),
    "adagrad": Binding(
        rule="adagrad",
        target="torch.optim.Adagrad",
        hyper={
            "lr": "lr",
            "lr_decay": "lr_decay",
            "weight_decay": "weight_decay",
            "initial_accumulator_value": "initial_accumulator_value",
            "eps": "eps",
        },
        variants={"epsilon": {"outside": _DEFAULT_ONLY}, "maximize": _ON_OFF},
        state={"G": Slot("sum")},
    ),
    "adamax": Binding(
        rule="adamax",
        target="torch.optim.Adamax",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _ON_OFF},
        state={"m": Slot("exp_avg"), "u": Slot("exp_inf")},
    ),
    "adadelta": Binding(
        rule="adadelta",
        target="torch.optim.Adadelta",
        hyper={"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _ON_OFF},
        state={"Eg": Slot("square_avg"), "Ex": Slot("acc_delta")},
    ),
    "radam": Binding(
        rule="radam",
        target="torch.optim.RAdam",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "comparison": {"strict": _DEFAULT_ONLY},
            "epsilon": {"raw": _DEFAULT_ONLY},
            "below_threshold": {"sgd": _DEFAULT_ONLY},
            "weight_decay": {
                "l2": Support({"decoupled_weight_decay": False}),
                "decoupled": Support({"decoupled_weight_decay": True}),
            },
        },
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq")},
        requires=(Requirement("threshold == 5", "torch.optim.RAdam hard-codes the threshold rho_t > 5"),),
    ),
    "nadam": Binding(
        rule="nadam",
        target="torch.optim.NAdam",
        hyper={
            "lr": "lr",
            "beta1": "betas[0]",
            "beta2": "betas[1]",
            "eps": "eps",
            "weight_decay": "weight_decay",
            "momentum_decay": "momentum_decay",
        },
        variants={
            # 0.96 ** (t * 1e9) == 0.0 in double, so mu_t = beta1 exactly: optax's constant-beta1 NAdam
            "schedule": {"dozat": _DEFAULT_ONLY, "constant": Support({"momentum_decay": 1e9})},
            "weight_decay": {
                "l2": Support({"decoupled_weight_decay": False}),
                "decoupled": Support({"decoupled_weight_decay": True}),
            },
        },
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq"), "mu_product": Slot("mu_product")},
    ),
    "amsgrad": Binding(
        rule="amsgrad",
        target="torch.optim.Adam",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={
            "maximum": {"raw": Support({"amsgrad": True})},
            "mu_correction": {"on": _DEFAULT_ONLY},
            "weight_decay": {
                "l2": Support({"decoupled_weight_decay": False}),
                "decoupled": Support({"decoupled_weight_decay": True}),
            },
        },
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq"), "vmax": Slot("max_exp_avg_sq")},
    ),
}

#: torch.optim classes that accept ``fused=True`` on the CPU in torch 2.13.
FUSED_RULES = frozenset({"sgd", "adam", "adamw", "adagrad", "amsgrad"})


def torch_unavailable() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'optspec[torch]')"
    return None


def resolve_target(target: str) -> Any:
    module_name, _, attribute = target.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def run_torch_optimizer(
    optimizer_class: Any,
    kwargs: Mapping[str, Any],
    slots: Mapping[str, Slot],
    inputs: CaseInputs,
    base_lr: float,
    dtype: str,
    record: Sequence[int],
    what: str,
    device: str = "cpu",
) -> Trajectory:
    """Run a torch optimizer on the case inputs and read parameters and state."""
    import torch

    torch_dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[dtype]
    params = [torch.tensor(p, dtype=torch_dtype, device=device) for p in inputs.params]
    try:
        optimizer = optimizer_class(params, **kwargs)
    except Exception as exc:  # the library's own error, reported with its message
        raise AdapterError(f"{what}: constructing the optimizer raised {type(exc).__name__}: {exc}") from None
    wanted = set(record)
    trajectory: Trajectory = {}
    scheduler = None
    if inputs.schedule is not None:  # a schedule spec: drive torch's own scheduler, stepped after each step
        from optspec.impls.torch_schedulers import build_torch_scheduler

        try:
            scheduler = build_torch_scheduler(optimizer, inputs.schedule.name, inputs.schedule.variant, inputs.schedule.hyper)
        except AdapterError as exc:
            raise AdapterError(f"{what}: {exc}") from None
    for t in range(1, inputs.steps + 1):
        for group in optimizer.param_groups:
            if scheduler is None:
                group["lr"] = base_lr * float(inputs.lr_multipliers[t - 1])
        for param, grads in zip(params, inputs.grads):
            param.grad = torch.tensor(grads[t - 1], dtype=torch_dtype, device=device)
        try:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        except Exception as exc:
            raise AdapterError(f"{what}: step {t} raised {type(exc).__name__}: {exc}") from None
        if t in wanted:
            snapshot = []
            for param in params:
                state = optimizer.state[param]
                values = {"theta": _numpy(param)}
                for slot, where in slots.items():
                    value = state.get(where.key)
                    if isinstance(value, torch.Tensor):
                        values[slot] = where.sign * _numpy(value)
                snapshot.append(values)
            trajectory[t] = snapshot
    return trajectory


def _numpy(tensor: Any) -> np.ndarray:
    import torch

    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


#: torch.optim classes without a ``foreach`` keyword: one code path, run as the for-loop
#: (torch.optim.Muon.__init__, torch/optim/_muon.py:88-99, takes no foreach).
SINGLE_PATH_RULES = frozenset({"muon"})


class TorchOptim:
    """One torch.optim code path: ``for-loop`` (foreach=False), ``foreach`` or ``fused``."""

    framework = "torch"
    dtypes = ("float32", "float64")

    def __init__(self, path: str, device: str = "cpu") -> None:
        self.path = path
        self.device = device
        suffix = "" if device == "cpu" else f".{device}"
        self.name = f"torch.{path}{suffix}"

    def unavailable(self) -> str | None:
        reason = torch_unavailable()
        if reason is None and self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device (torch.cuda.is_available() is False)"
        return reason

    def binding(self, rule: str) -> Binding | None:
        if self.path == "fused" and rule not in FUSED_RULES:
            return None
        if self.path == "foreach" and rule in SINGLE_PATH_RULES:
            return None
        return BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        kwargs = dict(plan.kwargs)
        if self.path == "fused":
            kwargs["fused"] = True
        elif plan.binding.rule not in SINGLE_PATH_RULES:
            kwargs["foreach"] = self.path == "foreach"
        return run_torch_optimizer(
            resolve_target(plan.binding.target),
            kwargs,
            plan.binding.state,
            inputs,
            hyper["lr"],
            dtype,
            record,
            f"{self.name} {plan.binding.target}",
            self.device,
        )


IMPLEMENTATIONS = (TorchOptim("for-loop"), TorchOptim("foreach"), TorchOptim("fused"))

_MUON_RMS = Requirement(
    "consistent_rms == 0.2", "torch.optim.Muon's match_rms_adamw factor is fixed at 0.2 (torch/optim/_muon.py:81)"
)

BINDINGS["muon"] = Binding(
    rule="muon",
    target="torch.optim.Muon",
    hyper={
        "lr": "lr",
        "momentum": "momentum",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "ns_a": "ns_coefficients[0]",
        "ns_b": "ns_coefficients[1]",
        "ns_c": "ns_coefficients[2]",
    },
    variants={
        # torch/optim/_muon.py:55 (bfloat16), :59 (clamp), :333-334 (lerp buffer and Nesterov, no correction)
        "ns_dtype": {"bfloat16": _DEFAULT_ONLY},
        "normalise": {"clamp": _DEFAULT_ONLY},
        "nesterov": {"on": Support({"nesterov": True}), "off": Support({"nesterov": False})},
        "bias_correction": {"off": _DEFAULT_ONLY},
        # :77-84: None / "original" is sqrt(max(1, A / B)), "match_rms_adamw" 0.2 sqrt(max(A, B))
        "lr_scale": {
            "rows_over_cols": Support({"adjust_lr_fn": None}),
            "match_rms": Support({"adjust_lr_fn": "match_rms_adamw"}, (_MUON_RMS,)),
        },
    },
    state={"b": Slot("momentum_buffer")},
)

BINDINGS["adafactor"] = Binding(
    rule="adafactor",
    target="torch.optim.Adafactor",
    hyper={"lr": "lr", "eps1": "eps[0]", "eps2": "eps[1]", "d": "d", "weight_decay": "weight_decay"},
    variants={
        # torch/optim/_adafactor.py:387 (factor every ndim > 1), :403/:413 (clamps), :380-381 (relative step),
        # :415 (clipping always), :384-385 (decay times lr)
        "factored": {"always": _DEFAULT_ONLY},
        "epsilon": {"clamp": _DEFAULT_ONLY},
        "step_size": {"relative": _DEFAULT_ONLY},
        "clipping": {"on": _DEFAULT_ONLY},
        "momentum": {"off": _DEFAULT_ONLY},
        "decay": {"lr": _DEFAULT_ONLY},
    },
    state={"v": Slot("variance")},
    requires=(
        Requirement("decay_rate == 0.8", "torch's beta2_decay is left at its default -0.8 (_adafactor.py:28)"),
        Requirement("d >= 1", "torch.optim.Adafactor rejects d < 1 (_adafactor.py:46-47)"),
    ),
)
