"""torch.optim.lr_scheduler under test, driven for real.

Each schedule spec is bound to a scheduler built on a real optimizer (one float64 parameter,
``lr`` = the spec's ``lr``). A run reads ``group["lr"]`` (and, for OneCycleLR, the cycled
``group["betas"][0]``) for index n, then calls ``optimizer.step()`` and ``scheduler.step()``,
as a training loop does: index n is the lr of step t = n + 1. torch evaluates schedules in
Python doubles whatever the parameter dtype, so only the float64 profile applies.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from optspec.errors import AdapterError
from optspec.impls.base import Requirement, Since, lacks
from optspec.impls.schedule_base import ScheduleBinding, ScheduleRun, implemented_variant, int_hyper
from optspec.impls.torch_optim import torch_unavailable
from optspec.schedules import ScheduleTest

_Builder = Any  # (optimizer, hyper, variant) -> LRScheduler


def _lr_scheduler() -> Any:
    import torch.optim.lr_scheduler as lr_scheduler

    return lr_scheduler


def _linear_warmup(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    return _lr_scheduler().LinearLR(
        opt, start_factor=h["start_factor"], end_factor=h["end_factor"], total_iters=int_hyper(h, "total_iters")
    )


def _warmup(opt: Any, h: Mapping[str, float]) -> Any:
    """LinearLR from init_value to lr over warmup_steps (start_factor = init_value / lr)."""
    return _lr_scheduler().LinearLR(
        opt, start_factor=h["init_value"] / h["lr"], end_factor=1.0, total_iters=int_hyper(h, "warmup_steps")
    )


def _warmup_cosine(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    s = _lr_scheduler()
    w = int_hyper(h, "warmup_steps")
    cosine = s.CosineAnnealingLR(opt, T_max=int_hyper(h, "decay_steps") - w, eta_min=h["end_value"])
    return s.SequentialLR(opt, [_warmup(opt, h), cosine], milestones=[w])


def _wsd(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    s = _lr_scheduler()
    stable = s.ConstantLR(opt, factor=1.0, total_iters=0)
    decay = s.LinearLR(opt, start_factor=1.0, end_factor=h["end_value"] / h["lr"], total_iters=int_hyper(h, "decay_steps"))
    milestones = [int_hyper(h, "warmup_steps"), int_hyper(h, "decay_start")]
    return s.SequentialLR(opt, [_warmup(opt, h), stable, decay], milestones=milestones)


def _warmup_exponential(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    s = _lr_scheduler()
    decay = s.ExponentialLR(opt, gamma=h["gamma"])
    return s.SequentialLR(opt, [_warmup(opt, h), decay], milestones=[int_hyper(h, "warmup_steps")])


def _onecycle(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    return _lr_scheduler().OneCycleLR(
        opt,
        max_lr=h["lr"],
        total_steps=int_hyper(h, "total_steps"),
        pct_start=h["pct_start"],
        anneal_strategy=v["anneal"],
        cycle_momentum=True,
        base_momentum=h["base_momentum"],
        max_momentum=h["max_momentum"],
        div_factor=h["div_factor"],
        final_div_factor=h["final_div_factor"],
        three_phase=v["phases"] == "three",
    )


def _cyclic(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    return _lr_scheduler().CyclicLR(
        opt,
        base_lr=h["base_lr"],
        max_lr=h["lr"],
        step_size_up=int_hyper(h, "step_size_up"),
        step_size_down=int_hyper(h, "step_size_down"),
        mode=v["mode"],
        gamma=h["gamma"],
        cycle_momentum=True,
        base_momentum=h["base_momentum"],
        max_momentum=h["max_momentum"],
    )


#: CyclicLR cycles Adam's beta1 (the runner's optimizer has betas, not momentum) from torch 2.3
_CYCLIC_BETAS = Since(
    "2.3",
    "torch 2.3.1 torch/optim/lr_scheduler.py:1279 ('momentum' or 'betas'); 2.2.2 :1271 and 2.0.1 :1230 need 'momentum'",
)


def _cyclic_combination(variant: Mapping[str, str]) -> str | None:
    reason = lacks("torch", _CYCLIC_BETAS)
    return None if reason is None else f"cycle_momentum=True on an optimizer with betas (Adam) is {reason}"


def _chained(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    s = _lr_scheduler()
    warmup = s.LinearLR(opt, start_factor=h["start_factor"], end_factor=1.0, total_iters=int_hyper(h, "warmup_steps"))
    # optimizer= is optional (torch 2.4.0 lr_scheduler.py:1125-1127: the first scheduler's by default) and
    # not taken before (torch 2.0.1 lr_scheduler.py:865, 2.1.2 :860: __init__(self, schedulers))
    return s.ChainedScheduler([warmup, s.ExponentialLR(opt, gamma=h["gamma"])])


def _swalr(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    from torch.optim.swa_utils import SWALR

    return SWALR(opt, swa_lr=h["swa_lr"], anneal_epochs=int_hyper(h, "anneal_epochs"), anneal_strategy=v["anneal"])


def _plateau(opt: Any, h: Mapping[str, float], v: Mapping[str, str]) -> Any:
    relative = h["atol"] == 0
    return _lr_scheduler().ReduceLROnPlateau(
        opt,
        mode="min",
        factor=h["factor"],
        patience=int_hyper(h, "patience"),
        threshold=h["rtol"] if relative else h["atol"],
        threshold_mode="rel" if relative else "abs",
        cooldown=int_hyper(h, "cooldown"),
        min_lr=h["min_lr"],
        eps=h["eps"],
    )


def _r(condition: str, reason: str) -> Requirement:
    return Requirement(condition, reason)


_WARMUP_FACTOR = (
    _r("init_value > 0", "LinearLR rejects start_factor = init_value / lr = 0"),
    _r("init_value <= lr", "LinearLR needs start_factor = init_value / lr <= 1"),
)

#: LinearLR multiplies lr by start_factor + (1 - start_factor) n / W, in double: the spec's from_start form.
_FROM_START = frozenset({"from_start"})

BINDINGS: dict[str, ScheduleBinding] = {
    b.schedule: b
    for b in (
        ScheduleBinding(
            "constant", "torch.optim.lr_scheduler.LambdaLR", {}, lambda o, h, v: _lr_scheduler().LambdaLR(o, lambda n: 1.0)
        ),
        ScheduleBinding(
            "linear_warmup",
            "torch.optim.lr_scheduler.LinearLR",
            {},
            _linear_warmup,
            (_r("start_factor > 0", "LinearLR rejects start_factor = 0 (a warm-up from exactly 0 needs LambdaLR)"),),
        ),
        ScheduleBinding(
            "step",
            "torch.optim.lr_scheduler.StepLR",
            {},
            lambda o, h, v: _lr_scheduler().StepLR(o, step_size=int_hyper(h, "step_size"), gamma=h["gamma"]),
        ),
        ScheduleBinding(
            "multistep",
            "torch.optim.lr_scheduler.MultiStepLR",
            {},
            lambda o, h, v: _lr_scheduler().MultiStepLR(
                o, milestones=[int_hyper(h, "first"), int_hyper(h, "second")], gamma=h["gamma"]
            ),
        ),
        ScheduleBinding(
            "exponential",
            "torch.optim.lr_scheduler.ExponentialLR",
            {},
            lambda o, h, v: _lr_scheduler().ExponentialLR(o, gamma=h["gamma"]),
        ),
        ScheduleBinding(
            "polynomial",
            "torch.optim.lr_scheduler.PolynomialLR",
            {},
            lambda o, h, v: _lr_scheduler().PolynomialLR(o, total_iters=int_hyper(h, "total_iters"), power=h["power"]),
            (_r("end_value == 0", "PolynomialLR always decays to 0 (no end value)"),),
        ),
        ScheduleBinding(
            "cosine",
            "torch.optim.lr_scheduler.CosineAnnealingLR",
            {"past_end": frozenset({"recursive"})},
            lambda o, h, v: _lr_scheduler().CosineAnnealingLR(o, T_max=int_hyper(h, "T_max"), eta_min=h["eta_min"]),
            (_r("exponent == 1", "CosineAnnealingLR has no exponent"),),
        ),
        ScheduleBinding(
            "warmup_cosine",
            "torch.optim.lr_scheduler.SequentialLR(LinearLR, CosineAnnealingLR)",
            {"past_end": frozenset({"recursive"}), "warmup_form": _FROM_START},
            _warmup_cosine,
            (_r("exponent == 1", "CosineAnnealingLR has no exponent"), *_WARMUP_FACTOR),
        ),
        ScheduleBinding(
            "onecycle",
            "torch.optim.lr_scheduler.OneCycleLR",
            {"convention": frozenset({"torch"}), "phases": frozenset({"two", "three"}), "anneal": frozenset({"cos", "linear"})},
            _onecycle,
        ),
        ScheduleBinding(
            "wsd",
            "torch.optim.lr_scheduler.SequentialLR(LinearLR, ConstantLR, LinearLR)",
            {"warmup_form": _FROM_START},
            _wsd,
            (*_WARMUP_FACTOR, _r("end_value <= lr", "LinearLR needs end_factor = end_value / lr <= 1")),
        ),
        ScheduleBinding(
            "warmup_exponential",
            "torch.optim.lr_scheduler.SequentialLR(LinearLR, ExponentialLR)",
            {"warmup_form": _FROM_START},
            _warmup_exponential,
            _WARMUP_FACTOR,
        ),
        ScheduleBinding(
            "cyclic",
            "torch.optim.lr_scheduler.CyclicLR",
            {"mode": frozenset({"triangular", "triangular2", "exp_range"})},
            _cyclic,
            combination=_cyclic_combination,
        ),
        ScheduleBinding(
            "sgdr",
            "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts",
            {"past_end": frozenset({"restart"})},
            lambda o, h, v: _lr_scheduler().CosineAnnealingWarmRestarts(
                o, T_0=int_hyper(h, "T_0"), T_mult=int_hyper(h, "T_mult"), eta_min=h["eta_min"]
            ),
        ),
        ScheduleBinding(
            "multiplicative",
            "torch.optim.lr_scheduler.MultiplicativeLR",
            {},
            lambda o, h, v: _lr_scheduler().MultiplicativeLR(o, lambda n, factor=h["factor"]: factor),
        ),
        ScheduleBinding(
            "chained",
            "torch.optim.lr_scheduler.ChainedScheduler(LinearLR, ExponentialLR)",
            {},
            _chained,
        ),
        ScheduleBinding(
            "swalr",
            "torch.optim.swa_utils.SWALR",
            {"anneal": frozenset({"cos", "linear"})},
            _swalr,
        ),
        ScheduleBinding(
            "warmup_constant",
            "torch.optim.lr_scheduler.LinearLR(init_value / lr, 1.0, warmup_steps)",
            {"warmup_form": _FROM_START},
            lambda o, h, v: _lr_scheduler().LinearLR(
                o, start_factor=h["init_value"] / h["lr"], end_factor=1.0, total_iters=int_hyper(h, "warmup_steps")
            ),
            _WARMUP_FACTOR,
        ),
        ScheduleBinding(
            "reduce_on_plateau",
            "torch.optim.lr_scheduler.ReduceLROnPlateau",
            {"convention": frozenset({"torch"}), "timing": frozenset({"next_step"})},
            _plateau,
            (_r("rtol * atol == 0", "ReduceLROnPlateau takes one threshold, relative (rel) or absolute (abs), not both"),),
            step_inputs={"loss": "metrics"},
        ),
    )
}


class TorchScheduler:
    """A torch.optim.lr_scheduler stepping a real optimizer (Adam, so that beta1 can cycle)."""

    name = "torch.lr_scheduler"
    dtypes = ("float64",)

    def unavailable(self) -> str | None:
        return torch_unavailable()

    def binding(self, schedule: str) -> ScheduleBinding | None:
        return BINDINGS.get(schedule)

    def run(self, binding: ScheduleBinding, test: ScheduleTest, variant: Mapping[str, str], dtype: str) -> ScheduleRun:
        import torch

        param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([param], lr=test.hyper["lr"])
        what = f"{binding.target}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SequentialLR's and OneCycleLR's construction-time notices
                scheduler = binding.build(optimizer, test.hyper, variant)
        except Exception as exc:
            raise AdapterError(f"{what}: construction raised {type(exc).__name__}: {exc}") from None
        cycles = "max_momentum" in optimizer.param_groups[0]
        lrs: list[float] = []
        momenta: list[float] = []
        for n in range(test.count):
            group = optimizer.param_groups[0]
            lrs.append(float(group["lr"]))
            if cycles:
                momenta.append(float(group["betas"][0]))
            param.grad = torch.zeros_like(param)
            optimizer.step()
            fed = {keyword: test.inputs[name][n] for name, keyword in binding.step_inputs.items()}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scheduler.step(**fed)
            except ValueError as exc:
                return ScheduleRun(_values(lrs, momenta, cycles), refused_at=n + 1, refusal=f"ValueError: {exc}")
            except Exception as exc:
                raise AdapterError(f"{what}: scheduler.step() to index {n + 1} raised {type(exc).__name__}: {exc}") from None
        return ScheduleRun(_values(lrs, momenta, cycles))


def _values(lrs: list[float], momenta: list[float], cycles: bool) -> dict[str, list[float]]:
    return {"lr": lrs, "momentum": momenta} if cycles else {"lr": lrs}


def build_torch_scheduler(optimizer: Any, name: str, variant: Mapping[str, str], hyper: Mapping[str, float]) -> Any:
    """The real scheduler for a rule case's schedule (used by the torch.optim adapter).

    A variant value torch lacks is replaced by the one a registered deviation says it implements.
    """
    binding = BINDINGS.get(name)
    if binding is None:
        raise AdapterError(f"torch has no binding for schedule {name!r}")
    variant = implemented_variant(binding, TorchScheduler.name, variant)
    for requirement in binding.requires:
        if not requirement.holds(hyper):
            raise AdapterError(f"{binding.target}: {requirement.reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return binding.build(optimizer, hyper, variant)


IMPLEMENTATIONS = (TorchScheduler(),)
