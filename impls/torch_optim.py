"""torch.optim under test: every code path of torch.optim on the CPU.

Each rule is bound to a ``torch.optim`` class by data alone; the runner sets
``param.grad`` each step, writes ``group["lr"] = eta * s_t`` before the step (what an
``LRScheduler`` does) and reads ``optimizer.state[param]``.

Paths (:data:`PATHS`, the keyword arguments that select them; torch 2.13 sources):

* ``for-loop``: ``foreach=False``, the single-tensor ``_single_tensor_<name>`` functions;
* ``foreach``: ``foreach=True``, ``_multi_tensor_<name>``;
* ``fused``: ``fused=True``, ``torch._fused_<name>_`` kernels (SGD, Adam, AdamW, Adagrad on the
  CPU: the classes with a ``fused`` argument, e.g. torch/optim/sgd.py:41, adagrad.py:41);
* ``differentiable``: ``differentiable=True`` (every bound class has it, e.g. sgd.py:40,
  adam.py:47); ``step()`` then runs with autograd enabled (``_use_grad_for_differentiable``)
  and the for-loop functions take their tensor-scalar branch (adam.py:477 ``if capturable or
  differentiable``), where the bias corrections are tensors of the step's float32 dtype;
* ``param-groups``: the for-loop kernels with every hyperparameter and flag given as an option
  of the parameter group (``[{"params": ..., "lr": ..., ...}]``) rather than a constructor keyword,
  so that an option read from the constructor instead of the group shows (float64 only);
* ``capturable``: ``capturable=True, foreach=True`` (Adam, AdamW, Adamax, Adadelta, RMSprop,
  RAdam, NAdam have the argument, e.g. adam.py:46; SGD and Adagrad do not). torch 2.13 refuses
  it on the CPU: each function raises unless the parameter's device is in
  ``_get_capturable_supported_devices()`` = cuda, xpu, hpu, the privateuse1 backend and xla
  (optimizer.py:218-225, adam.py:403-410). The path is probed once; where the probe raises,
  every capturable case is skipped with torch's message (on CUDA, :mod:`optspec.impls.torch_cuda`).

Parameter dtypes: float64, float32, bfloat16 and float16. torch keeps every state slot in the
parameter's dtype (``torch.zeros_like(p)``), except the step counter and NAdam's
``mu_product``, float32 tensors (``_get_scalar_dtype()``, optimizer.py:210-215); the fused CPU
kernels compute in float32 (``opmath_t``) and store in the parameter's dtype.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from optspec.errors import AdapterError, LibraryCannotRun
from optspec.impls.base import Binding, Keyword, Plan, Requirement, Since, Slot, Support, lacks
from optspec.reference import CaseInputs, Trajectory

_ON_OFF = {"off": Support({"maximize": False}), "on": Support({"maximize": True})}
_DEFAULT_ONLY = Support()

# Which torch releases have each keyword and path (the oldest supported release is torch 2.0).
# Evidence is the released source, read from the wheels on PyPI (file:line at that release).
# A keyword at its default is never passed, so e.g. Adam(amsgrad=True) runs on a torch whose
# Adam has no decoupled_weight_decay; a non-default value the installed torch lacks is a skip.

#: maximize: bool = False in torch 2.0.1 torch/optim/sgd.py:12, adam.py:16, adamw.py:22, rmsprop.py:22,
#: adagrad.py:23, adamax.py:22, adadelta.py:22 (RAdam and NAdam have none until 2.4; their bindings pass none)
_MAXIMIZE = Keyword(default=False)
#: RAdam: torch 2.1.0 torch/optim/radam.py has no decoupled_weight_decay; torch 2.2.0 torch/optim/radam.py:30 adds it
_RADAM_DECOUPLED = Keyword(default=False, since=Since("2.2", "torch 2.2.0 torch/optim/radam.py:30"))
#: NAdam: torch 2.0.1 torch/optim/nadam.py has none; torch 2.1.0 torch/optim/nadam.py:11 adds it
_NADAM_DECOUPLED = Keyword(default=False, since=Since("2.1", "torch 2.1.0 torch/optim/nadam.py:11"))
#: Adam: absent up to torch 2.6.0 (torch/optim/adam.py); torch 2.7.0 torch/optim/adam.py:48 adds it
_ADAM_DECOUPLED = Keyword(default=False, since=Since("2.7", "torch 2.7.0 torch/optim/adam.py:48"))
#: fused kernels on the CPU: torch 2.0.1 torch/optim/adam.py:47 raises "`fused=True` requires all the params
#: to be CUDA"; torch 2.3.0 torch/utils/_foreach_utils.py:14 lists ["cuda", "xpu", privateuse1];
#: torch 2.4.0 torch/utils/_foreach_utils.py:14 adds "cpu" (Adam, AdamW and SGD check that list,
#: torch 2.4.0 torch/optim/adam.py:83, sgd.py:61)
_FUSED_CPU = Since("2.4", "torch 2.4.0 torch/utils/_foreach_utils.py:14 (torch 2.3.0's line 14 has no 'cpu')")
#: Adagrad(fused=...): torch 2.4.0 torch/optim/adagrad.py:36, CPU only (adagrad.py:70 removes "cuda")
_FUSED_ADAGRAD = Since("2.4", "torch 2.4.0 torch/optim/adagrad.py:36 (CPU only: adagrad.py:70)")

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
        library="torch",
        keywords={"maximize": _MAXIMIZE, "nesterov": Keyword(default=False)},
        # SGD(fused=...) appears in torch 2.3.0 torch/optim/sgd.py:13, for CUDA only until 2.4
        paths={"fused": _FUSED_CPU},
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
        library="torch",
        keywords={"maximize": _MAXIMIZE, "amsgrad": Keyword(default=False)},
        paths={"fused": _FUSED_CPU},
    ),
    "adamw": Binding(
        rule="adamw",
        target="torch.optim.AdamW",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"decay_scale": {"lr": _DEFAULT_ONLY}, "maximize": _ON_OFF},
        state={"m": Slot("exp_avg"), "v": Slot("exp_avg_sq")},
        library="torch",
        keywords={"maximize": _MAXIMIZE},
        paths={"fused": _FUSED_CPU},
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
        library="torch",
        keywords={"maximize": _MAXIMIZE, "centered": Keyword(default=False)},
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
        library="torch",
        keywords={"maximize": _MAXIMIZE},
        paths={"fused": _FUSED_ADAGRAD},
    ),
    "adamax": Binding(
        rule="adamax",
        target="torch.optim.Adamax",
        hyper={"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _ON_OFF},
        state={"m": Slot("exp_avg"), "u": Slot("exp_inf")},
        library="torch",
        keywords={"maximize": _MAXIMIZE},
    ),
    "adadelta": Binding(
        rule="adadelta",
        target="torch.optim.Adadelta",
        hyper={"lr": "lr", "rho": "rho", "eps": "eps", "weight_decay": "weight_decay"},
        variants={"maximize": _ON_OFF},
        state={"Eg": Slot("square_avg"), "Ex": Slot("acc_delta")},
        library="torch",
        keywords={"maximize": _MAXIMIZE},
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
        library="torch",
        keywords={"decoupled_weight_decay": _RADAM_DECOUPLED},
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
        library="torch",
        keywords={"decoupled_weight_decay": _NADAM_DECOUPLED},
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
        library="torch",
        keywords={"amsgrad": Keyword(default=False), "decoupled_weight_decay": _ADAM_DECOUPLED},
        paths={"fused": _FUSED_CPU},
    ),
    # --- issue 12b: rules added after the 2019 Adam family (new entries only) ---
    "rprop": Binding(
        rule="rprop",
        target="torch.optim.Rprop",
        hyper={
            "lr": "lr",
            "eta_minus": "etas[0]",
            "eta_plus": "etas[1]",
            "step_size_min": "step_sizes[0]",
            "step_size_max": "step_sizes[1]",
        },
        # torch/optim/rprop.py:274-279: sign[sign.eq(0)] = 1, then step_size.mul_(sign).clamp_(...)
        variants={"zero_product": {"clip": _DEFAULT_ONLY}, "timing": {"current": _DEFAULT_ONLY}},
        state={"delta": Slot("step_size"), "prev": Slot("prev")},
    ),
    "asgd": Binding(
        rule="asgd",
        target="torch.optim.ASGD",
        hyper={"lr": "lr", "lambd": "lambd", "alpha": "alpha", "t0": "t0", "weight_decay": "weight_decay"},
        variants={"maximize": _ON_OFF},
        state={"eta": Slot("eta"), "mu": Slot("mu"), "ax": Slot("ax")},
    ),
}

#: rules whose torch.optim class has a fused path on the CPU (from torch 2.4; Binding.paths).
FUSED_RULES = frozenset(rule for rule, binding in BINDINGS.items() if "fused" in binding.paths)
#: torch.optim classes with a ``capturable`` argument in torch 2.13 (SGD and Adagrad have none).
CAPTURABLE_RULES = frozenset({"adam", "adamw", "adamax", "adadelta", "rmsprop", "radam", "nadam", "amsgrad"})

#: path -> the keyword arguments that select it, and the rules whose class has that path.
PATHS: dict[str, tuple[dict[str, bool], frozenset[str] | None]] = {
    "for-loop": ({"foreach": False}, None),
    "foreach": ({"foreach": True}, None),
    "fused": ({"fused": True}, FUSED_RULES),
    "differentiable": ({"differentiable": True, "foreach": False}, None),
    "capturable": ({"capturable": True, "foreach": True}, CAPTURABLE_RULES),
    # not a kernel but how hyperparameters arrive: in a parameter group's dict instead of the
    # constructor's keywords (torch.optim documents per-group options); the for-loop kernels
    "param-groups": ({"foreach": False}, None),
}
#: paths that pass every hyperparameter and flag as a parameter-group option
GROUP_OPTION_PATHS = frozenset({"param-groups"})


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
    group_options: Mapping[str, Any] | None = None,
) -> Trajectory:
    """Run a torch optimizer on the case inputs and read parameters and state.

    ``group_options`` go into the single parameter group's dict (``[{"params": ..., **options}]``)
    instead of the constructor's keywords."""
    import torch

    torch_dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    params = [torch.tensor(p, dtype=torch_dtype, device=device) for p in inputs.params]
    try:
        groups = params if group_options is None else [{"params": params, **group_options}]
        optimizer = optimizer_class(groups, **kwargs)
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
    # every step's gradients converted at once (the same elementwise rounding as one step at a
    # time); step t's gradient is row t - 1, a tensor of its own storage region
    all_grads = [torch.tensor(grads, dtype=torch_dtype, device=device) for grads in inputs.grads]
    for t in range(1, inputs.steps + 1):
        for group in optimizer.param_groups:
            if scheduler is None:
                group["lr"] = base_lr * float(inputs.lr_multipliers[t - 1])
        for param, grads in zip(params, all_grads):
            param.grad = grads[t - 1]
        try:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        except Exception as exc:
            missing = missing_kernel(exc, device)
            if missing is not None:
                raise LibraryCannotRun(f"{what}: {missing}") from None
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


#: torch's message for a dtype its kernel was not compiled for: ``"addcmul_cpu_out" not implemented for 'Half'``
_NO_KERNEL = re.compile(r"^\"(?P<kernel>\w+)\" not implemented for '(?P<dtype>Half|BFloat16)'$")
_TORCH_DTYPE_NAMES = {"Half": "float16", "BFloat16": "bfloat16"}


def missing_kernel(exc: BaseException, device: str) -> str | None:
    """``"not run: torch 2.0.1 has no CPU float16 kernel for addcmul_cpu_out"`` when ``exc`` is torch
    saying that the installed release has no kernel for a 16-bit dtype (torch 2.0.1's CPU addcmul,
    addcdiv and clamp have no Half kernel); else None."""
    import torch

    match = _NO_KERNEL.match(str(exc)) if isinstance(exc, RuntimeError) else None
    if match is None:
        return None
    version = torch.__version__.split("+", 1)[0]
    dtype = _TORCH_DTYPE_NAMES[match.group("dtype")]
    return f"not run: torch {version} has no {device.upper()} {dtype} kernel for {match.group('kernel')}"


def _numpy(tensor: Any) -> np.ndarray:
    import torch

    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


@cache
def path_keywords(optimizer_class: Any, path: str) -> Mapping[str, bool] | None:
    """The keywords that select ``path`` on ``optimizer_class``, or None when the class has no such path.

    A keyword the class does not take is dropped when it asks for the default (``foreach=False``
    on a class with one code path, such as torch.optim.Muon: torch/optim/_muon.py:88-99 takes no
    foreach) and means the path does not exist when it asks for more (``differentiable=True`` on
    Muon or Adafactor, which take no ``differentiable``).
    """
    accepted = inspect.signature(optimizer_class.__init__).parameters
    keywords: dict[str, bool] = {}
    for keyword, value in PATHS[path][0].items():
        if keyword in accepted:
            keywords[keyword] = value
        elif value:
            return None
    return keywords


class TorchOptim:
    """One torch.optim code path (a key of :data:`PATHS`) on one device.

    ``param-groups`` runs in float64 only: it checks where hyperparameters are read, not arithmetic.
    """

    framework = "torch"

    def __init__(self, path: str, device: str = "cpu") -> None:
        if path not in PATHS:
            raise ValueError(f"unknown torch.optim path {path!r} (known: {', '.join(PATHS)})")
        self.path = path
        self.dtypes: tuple[str, ...] = (
            ("float64",) if path in GROUP_OPTION_PATHS else ("float32", "float64", "bfloat16", "float16")
        )
        self.device = device
        suffix = "" if device == "cpu" else f".{device}"
        self.name = f"torch.{path}{suffix}"

    def unavailable(self) -> str | None:
        reason = torch_unavailable()
        if reason is None and self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device (torch.cuda.is_available() is False)"
        if reason is None and self.path == "capturable":
            return capturable_refused(self.device)
        return reason

    def binding(self, rule: str) -> Binding | None:
        rules = PATHS[self.path][1]
        if rules is not None and rule not in rules:
            return None
        binding = BINDINGS.get(rule)
        if binding is None or torch_unavailable() is not None:
            return binding
        try:
            optimizer_class = resolve_target(binding.target)
        except AttributeError:  # a class the installed torch does not have yet (torch.optim.Muon before 2.9)
            return None
        if path_keywords(optimizer_class, self.path) is None:
            # a path the binding dates (fused CPU from 2.4) on a release whose class lacks even the keyword
            # (torch 2.0.1's SGD and Adagrad take no fused): the plan's skip names the release, not "-"
            dated = binding.paths.get(self.path)
            return binding if dated is not None and lacks(binding.library, dated) is not None else None
        return binding

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        assert plan.binding is not None
        per_group = self.path in GROUP_OPTION_PATHS
        optimizer_class = resolve_target(plan.binding.target)
        selected = path_keywords(optimizer_class, self.path) or {}
        kwargs = {**({} if per_group else plan.kwargs), **selected}
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
            group_options=dict(plan.kwargs) if per_group else None,
        )


@cache
def capturable_refused(device: str) -> str | None:
    """None when ``capturable=True`` steps on ``device``, else why not (torch's own message).

    A probe rather than a device list: one Adam step on a one-element tensor, so that a torch
    that allows the path on this device is run, and one that refuses it is skipped with its reason.
    """
    import torch

    try:  # making the tensors is part of the probe: a torch without that device raises there
        param = torch.zeros(1, device=device)
        param.grad = torch.ones(1, device=device)
        torch.optim.Adam([param], capturable=True, foreach=True).step()
    except Exception as exc:  # torch's AssertionError names the supported devices
        return f"torch {torch.__version__} does not run capturable=True on {device}: {type(exc).__name__}: {exc}"
    return None


IMPLEMENTATIONS = tuple(TorchOptim(path) for path in PATHS)

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
