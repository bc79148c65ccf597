"""Planted targets written the way real code writes them: the diagnosis names the variant or the mutation.

Each optimizer below is written in torch from the library's published equations (not from
the reference evaluator), in that library's evaluation order, then checked as the variant a
user would claim; ``optspec check`` must fail it and name the variant the library really
implements. The library and its source lines are cited in the variant's ``doc`` in specs/.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from optspec.checking.runner import check
from optspec.spec import SpecLibrary

_LIBRARY = SpecLibrary()


def quick_check(rule: str, target: Any, variant: dict[str, str]):
    """Float64 only, 20-step cases, no behavioural checks: the diagnosis is what is under test."""
    pairs = [f"{k}={v}" for k, v in variant.items()]
    return check(rule, target, library=_LIBRARY, variant=pairs, isolate=False, behaviour=False, dtypes=("float64",), steps=20)


class TFStyleRMSprop(torch.optim.Optimizer):
    """timm RMSpropTF's conventions: v_0 = 1, v += (g^2 - v)(1 - alpha), eps inside the root, lr inside the buffer."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                grad = p.grad + group["weight_decay"] * p
                v, buf = state["square_avg"], state["momentum_buffer"]
                v.add_((grad * grad - v) * (1 - group["alpha"]))
                avg = (v + group["eps"]).sqrt()
                buf.mul_(group["momentum"]).add_(group["lr"] * grad / avg)
                p.sub_(buf)


class OneCorrectionNAdamW(torch.optim.Optimizer):
    """timm NAdamW's step: decoupled decay, then (beta1 m + (1 - beta1) g) corrected by 1 - beta1^t as one term."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, grad = state["step"], p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                nesterov = m.lerp(grad, 1 - beta1)
                denom = v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
                p.addcdiv_(nesterov, denom, value=-group["lr"] / (1 - beta1**t))


class AuthorsRAdam(torch.optim.Optimizer):
    """The RAdam authors' code with degenerated_to_sgd=False: below rho_t = 5 neither the step nor the decay."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                state["step"] += 1
                t = state["step"]
                beta2_t = beta2**t
                rho_inf = 2 / (1 - beta2) - 1
                rho = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
                if rho >= 5:
                    r2 = (1 - beta2_t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)
                    p.mul_(1 - group["weight_decay"] * group["lr"])
                    p.addcdiv_(m, v.sqrt() + group["eps"], value=-group["lr"] * math.sqrt(r2) / (1 - beta1**t))


class RectifiedAdaBelief(torch.optim.Optimizer):
    """timm AdaBelief(rectify=True) with decoupled decay: eps_root added to s in place, RAdam-style step from rho_t >= 5."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        eps_root: float = 1e-16,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, eps_root=eps_root, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_var=torch.zeros_like(p))
                state["step"] += 1
                t, grad = state["step"], p.grad
                m, s = state["exp_avg"], state["exp_avg_var"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)
                residual = grad - m
                s.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(group["eps_root"])
                beta2_t = beta2**t
                rho_inf = 2 / (1 - beta2) - 1
                rho = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
                if rho >= 5:
                    r2 = (1 - beta2_t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)
                    p.addcdiv_(m, s.sqrt() + group["eps"], value=-group["lr"] * math.sqrt(r2) / (1 - beta1**t))
                else:
                    p.add_(m, alpha=-group["lr"] / (1 - beta1**t))


class DecayGatedLars(torch.optim.Optimizer):
    """timm Lars(always_adapt=False): the trust ratio only when weight_decay != 0; torch-SGD momentum (lr outside)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        eps: float = 0.0,
    ):
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                grad = p.grad
                if wd != 0:
                    w_norm, g_norm = p.norm(), grad.norm()
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + w_norm * wd + group["eps"])
                    ratio = torch.where(w_norm > 0, torch.where((grad + wd * p).norm() > 0, ratio, 1.0), 1.0)
                    grad = (grad + wd * p) * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad)
                p.sub_(group["lr"] * buf)


class GlobalClipLamb(torch.optim.Optimizer):
    """timm Lamb's defaults: gradients divided by max(global norm / max_grad_norm, 1), trust ratio only with decay."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            clip = (global_norm / group["max_grad_norm"]).clamp(min=1.0)
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, grad = state["step"], p.grad / clip
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / (v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"])
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm, u_norm = p.norm(), update.norm()
                    update.mul_(torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, 1.0), 1.0))
                p.add_(update, alpha=-group["lr"])


PLANTED = [
    ("rmsprop", TFStyleRMSprop, {"epsilon": "inside", "momentum_lr": "inside"}, "init=ones"),
    ("nadam", OneCorrectionNAdamW, {"weight_decay": "decoupled"}, "schedule=one_correction"),
    (
        "radam",
        AuthorsRAdam,
        {"comparison": "nonstrict", "below_threshold": "skip", "weight_decay": "decoupled"},
        "weight_decay=decoupled_when_rectified",
    ),
    ("adabelief", RectifiedAdaBelief, {"weight_decay": "decoupled"}, "rectify=on"),
    ("lars", DecayGatedLars, {"denominator": "separate", "momentum_lr": "outside"}, "adaptation=when_decay"),
    ("lamb", GlobalClipLamb, {"adaptation": "when_decay"}, "grad_clip=global"),
]


@pytest.mark.parametrize(("rule", "target", "claimed", "named"), PLANTED, ids=[p[3] for p in PLANTED])
def test_a_library_convention_is_named(rule: str, target: type, claimed: dict[str, str], named: str) -> None:
    report = quick_check(rule, target, claimed)
    statuses = "; ".join(f"{c.case}: {c.status} {c.message}" for c in report.cases)
    assert report.exit_code == 1, f"{target.__name__} claimed as {rule} {claimed} should not conform: {statuses}"
    assert report.diagnosis is not None and report.diagnosis.matches, (
        f"{target.__name__}: the diagnosis should name {named}; it says: {report.diagnosis and report.diagnosis.explanation}"
    )
    assert report.diagnosis.explanation.startswith(f"behaves like {rule} with {named}"), (
        f"{target.__name__} implements {named}; the diagnosis says: {report.diagnosis.explanation}"
    )


class Float32Adam(torch.optim.Optimizer):
    """Adam computed on float32 copies of float64 parameters (state kept in float32), written back."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    zeros = torch.zeros_like(p, dtype=torch.float32)
                    state.update(step=0, exp_avg=zeros, exp_avg_sq=zeros.clone())
                state["step"] += 1
                t, p32 = state["step"], p.float()
                grad = p.grad.float() + group["weight_decay"] * p32
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                p32.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))
                p.copy_(p32)


class NoFirstCorrectionAdam(torch.optim.Adam):
    """torch's Adam with the lr scaled by 1 - beta1^t before each step: the first bias correction cancelled."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        saved = []
        for group in self.param_groups:
            steps = [int(self.state[p]["step"]) for p in group["params"] if self.state.get(p)]
            t = 1 + max(steps, default=0)
            saved.append(group["lr"])
            group["lr"] = group["lr"] * (1 - group["betas"][0] ** t)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, saved):
                group["lr"] = lr


class GroupCounterAdam(torch.optim.Optimizer):
    """Adam whose step count lives in the parameter group and is advanced once per tensor (a real slip)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, step=0))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                group["step"] += 1
                t = group["step"]
                grad = p.grad + group["weight_decay"] * p
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))


SLIPS = [
    (Float32Adam, "float32", "computes in float32"),
    (NoFirstCorrectionAdam, "drop_bias_correction[beta1]", "the bias correction 1 - beta1^t is missing"),
    (GroupCounterAdam, "shared_step_counter", "one step counter is shared by the parameter group"),
]


@pytest.mark.parametrize(("target", "mutation", "words"), SLIPS, ids=[s[1] for s in SLIPS])
def test_a_slip_in_torch_code_is_named_as_a_mutation(target: type, mutation: str, words: str) -> None:
    report = quick_check("adam", target, {})
    assert report.exit_code == 1, f"{target.__name__} should not conform to adam: " + "; ".join(c.message for c in report.cases)
    assert report.diagnosis is not None and report.diagnosis.matches, f"{target.__name__}: nothing named: {report.diagnosis}"
    best = report.diagnosis.matches[0]
    assert [m.name for m in best.mutations] == [mutation], (
        f"{target.__name__} should be diagnosed as mutation {mutation}; the diagnosis says: {report.diagnosis.explanation}"
    )
    assert words in report.diagnosis.explanation, report.diagnosis.explanation
