"""The minimum bytes per step derived from specs (optspec.traffic) against the known figures.

The float32 figures (SGD 12, SGD momentum 20, Adam 28, AMSGrad 36, bf16/fp32 Adam 22, LARS 28,
LAMB 40) are the memory-traffic anchors in the project's reference notes; they follow from
counting each stored tensor read once and written once per pass.
"""

from __future__ import annotations

import pytest

from optspec.spec import SpecLibrary, parse_spec
from optspec.traffic import Pass, Traffic, bytes_per_param, fold, step_traffic

LIBRARY = SpecLibrary()


def rule(name: str, **variant: str):
    return LIBRARY.get(name).resolve(variant)


@pytest.mark.parametrize(
    ("name", "variant", "hyper", "expected"),
    [
        ("sgd", {}, {}, 12),
        ("sgd", {}, {"weight_decay": 0.1}, 12),
        ("sgd", {}, {"momentum": 0.9}, 20),
        ("sgd", {"nesterov": "on"}, {"momentum": 0.9}, 20),
        ("adam", {}, {}, 28),
        ("adam", {}, {"weight_decay": 0.1}, 28),
        ("adam", {"amsgrad": "raw"}, {}, 36),
        ("adam", {"amsgrad": "corrected"}, {}, 36),
        ("adamw", {}, {}, 28),
        ("adagrad", {}, {}, 20),
        ("rmsprop", {}, {}, 20),
        ("rmsprop", {"centered": "on"}, {}, 28),
        ("rmsprop", {}, {"momentum": 0.9}, 28),
        ("adamax", {}, {}, 28),
        ("adadelta", {}, {}, 28),
    ],
)
def test_float32_bytes_per_param(name: str, variant: dict[str, str], hyper: dict[str, float], expected: int) -> None:
    traffic = step_traffic(rule(name, **variant), hyper)
    assert traffic.bytes_per_param() == expected, traffic.explain()


def test_bfloat16_parameters_with_float32_state() -> None:
    # theta read and written, grad read at 2 bytes; m and v read and written at 4 bytes.
    assert bytes_per_param(rule("adam"), param_bytes=2, state_bytes=4) == 22
    assert bytes_per_param(rule("sgd"), {"momentum": 0.9}, param_bytes=2, state_bytes=4) == 14


def test_dead_momentum_buffer_is_dropped() -> None:
    plain = step_traffic(rule("sgd"))
    assert plain.passes == (Pass(reads=("theta", "grad"), writes=("theta",)),)
    assert plain.state_tensors == ()
    assert step_traffic(rule("sgd"), {"momentum": 0.9}).state_tensors == ("b",)


def test_step_bytes_scales_with_elements() -> None:
    traffic = step_traffic(rule("adam"))
    assert traffic.step_bytes(1_000_000) == 28_000_000
    assert traffic.step_bytes(1_000_000, param_bytes=2) == 22_000_000


def test_every_packaged_rule_and_variant_has_a_traffic() -> None:
    """New specs get a figure without a table: at least theta and grad read, theta written."""
    for spec in LIBRARY.all():
        for combo in spec.golden_combos():
            traffic = step_traffic(spec.resolve(combo))
            assert traffic.bytes_per_param() >= 12, f"{spec.name} {combo}: {traffic.explain()}"
            assert "theta" in traffic.passes[-1].writes


_REFS = 'references = [{ title = "t", authors = "a", year = 2020, url = "https://example.org" }]'


def _inline(name: str, step: list[str], hyper: dict[str, float], state: list[str]) -> Traffic:
    lines = [f'name = "{name}"', f'title = "{name}"', _REFS, "step = ["]
    lines += [f'  "{equation}",' for equation in step]
    lines.append("]")
    for hname, default in hyper.items():
        lines += [f"[hyper.{hname}]", f"default = {default}", 'domain = "[0, inf)"', 'doc = "d"']
    for slot in state:
        lines += [f"[state.{slot}]", 'init = "0"', 'doc = "d"']
    spec = parse_spec("\n".join(lines), f"<{name}>")
    return step_traffic(spec.resolve())


LAMB = [
    "m = beta1 * m + (1 - beta1) * grad",
    "v = beta2 * v + (1 - beta2) * grad * grad",
    "r = (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps) + weight_decay * theta",
    "tn = norm(theta)",
    "rn = norm(r)",
    "phi = where(tn > 0, where(rn > 0, tn / rn, 1), 1)",
    "theta = theta - lr * phi * r",
]
LAMB_HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01}


def test_lamb_norms_need_a_second_pass() -> None:
    traffic = _inline("lamb", LAMB, LAMB_HYPER, ["m", "v"])
    assert len(traffic.passes) == 2
    # pass 1 updates the moments and reduces ||theta|| and ||r||; pass 2 recomputes r.
    assert traffic.passes[0] == Pass(reads=("theta", "grad", "m", "v"), writes=("m", "v"))
    assert traffic.passes[1] == Pass(reads=("theta", "m", "v"), writes=("theta",))
    assert traffic.bytes_per_param() == 40


def test_lars_norms_then_update() -> None:
    lars = [
        "u = grad + weight_decay * theta",
        "phi = where(norm(theta) > 0, trust * norm(theta) / (norm(u) + eps), 1)",
        "b = -lr * phi * u + momentum * b",
        "theta = theta + b",
    ]
    hyper = {"lr": 1.0, "weight_decay": 1e-4, "trust": 1e-3, "eps": 0.0, "momentum": 0.9}
    traffic = _inline("lars", lars, hyper, ["b"])
    assert traffic.passes[0] == Pass(reads=("theta", "grad"), writes=())
    assert traffic.bytes_per_param() == 28


def test_expensive_recompute_spills_a_temporary() -> None:
    step = [
        "a = 0.5 * a + grad",
        "b = 0.25 * b + grad",
        "c = 0.125 * c + grad",
        "r = a + b + c",
        "theta = theta - lr * r / norm(r)",
    ]
    traffic = _inline("spill", step, {"lr": 1e-3}, ["a", "b", "c"])
    assert traffic.passes[0].writes == ("a", "b", "c", "tmp:r")
    assert traffic.passes[1] == Pass(reads=("theta", "tmp:r"), writes=("theta",))
    assert traffic.bytes_per_param() == 44


def test_stored_result_is_written_in_the_cheapest_pass() -> None:
    # theta's update needs no reduction, but the norm(grad) pass comes first: writing theta in
    # the second pass avoids keeping a copy of its old value, which the second pass reads.
    step = ["old = theta", "theta = theta - lr * s", "s = 0.5 * s + norm(grad) * old"]
    traffic = _inline("defer", step, {"lr": 1e-3}, ["s"])
    assert traffic.passes == (Pass(("grad",), ()), Pass(("theta", "s"), ("theta", "s")))
    assert traffic.bytes_per_param() == 20


def test_overwritten_input_needed_later_is_saved() -> None:
    # the new theta feeds a norm in pass 1, so it is written there; pass 2 needs the old theta.
    step = ["old = theta", "theta = theta - lr * (grad + s)", "s = 0.5 * s + norm(theta) * old"]
    traffic = _inline("save", step, {"lr": 1e-3}, ["s"])
    assert traffic.passes[0] == Pass(("theta", "grad", "s"), ("theta", "saved:theta"))
    assert traffic.passes[1] == Pass(("s", "saved:theta"), ("s",))
    assert traffic.bytes_per_param() == 32


def test_lr_is_never_folded() -> None:
    # lr is the scheduled eta_t: lr = 0 must not make the update (and its reads) vanish.
    assert bytes_per_param(rule("adam"), {"lr": 0.0}) == 28


def test_fold_simplifies_zeros_and_where() -> None:
    from optspec.expr import Name, Num, parse_expr

    assert fold(parse_expr("momentum * b + g"), {"momentum": 0.0}) == Name("g", 16)
    assert isinstance(fold(parse_expr("where(momentum == 0, g, b)"), {"momentum": 0.0}), Name)
    assert fold(parse_expr("1 - dampening"), {"dampening": 0.0}) == Num(1.0, 3)


@pytest.mark.parametrize(("name", "expected"), [("lamb", 40), ("lars", 28)])
def test_packaged_trust_ratio_rules(name: str, expected: int) -> None:
    """The packaged LAMB and LARS specs, when present, match the reference figures."""
    if name not in LIBRARY.names:
        pytest.skip(f"no specs/{name}.toml in this checkout")
    assert step_traffic(LIBRARY.get(name).resolve()).bytes_per_param() == expected
