"""The CUDA generator: the host/device split, the byte count, errors, and the PTX it compiles to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optspec.impls.cuda import build
from optspec.impls.cuda.codegen import CodegenError, generate
from optspec.spec import SpecLibrary, parse_spec

_LIBRARY = SpecLibrary()

_MINIMAL = """
name = "{name}"
title = "t"
references = [{{ title = "synthetic", year = 2024 }}]
step = {step}
[hyper.lr]
default = 1e-3
domain = "[0, inf)"
doc = "lr"
[state.b]
init = "{init}"
doc = "b"
"""


def _rule(step: list[str], init: str = "0", name: str = "probe"):
    text = _MINIMAL.format(name=name, step="[" + ", ".join(f'"{e}"' for e in step) + "]", init=init)
    return parse_spec(text, f"<{name}>").resolve()


@pytest.mark.parametrize("rule", _LIBRARY.names)
def test_every_variant_of_every_rule_generates(rule: str) -> None:
    from optspec.impls.cuda.codegen import no_kernel_reason

    spec = _LIBRARY.get(rule)
    for combo in spec.all_combos():
        reason = no_kernel_reason(spec.resolve(combo))
        if reason is not None:
            # not elementwise (matrix products, axis means): stated, never a silent skip
            assert reason.startswith(f"rule {rule!r}: ") and "()" in reason, f"{rule} {combo}: unclear reason {reason!r}"
            continue
        kernel = generate(spec.resolve(combo))
        step = next(p for p in kernel.passes if p.number == 0)
        assert step.writes_theta and step.reads_grad
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", kernel.cname)


def test_adam_scalars_are_hoisted_to_the_host() -> None:
    kernel = generate(_LIBRARY.get("adam").resolve())
    categories = {cid.split("_", 1)[1]: category for cid, category in kernel.categories.items()}
    assert categories["bc1"] == "host" and categories["bc2"] == "host"
    assert all(categories[name] == "element" for name in ("m", "v", "vhat", "denom"))
    # beta ** t is computed once per step on the host, in double; the kernel body has no pow.
    assert "pow(hyper[1], t)" in kernel.body
    element_code = kernel.body.split("static OPTSPEC_HD void elem")[1].split("static inline void")[0]
    assert "pow" not in element_code


@pytest.mark.parametrize(
    ("rule", "variant", "dtype", "expected"),
    [
        ("sgd", {}, "float32", 20),  # theta r/w, grad r, momentum buffer r/w
        ("adam", {}, "float32", 28),
        ("adam", {"amsgrad": "raw"}, "float32", 36),
        ("adam", {}, "bfloat16", 22),
        ("adagrad", {}, "float32", 20),
    ],
)
def test_bytes_per_param_matches_the_physical_minimum(rule: str, variant: dict, dtype: str, expected: int) -> None:
    """Each input read once, each output written once (anchors.md's table)."""
    kernel = generate(_LIBRARY.get(rule).resolve(variant))
    size = 4 if dtype == "float32" else 2
    assert kernel.bytes_per_param(size, size) == expected


def test_norms_run_in_a_pass_before_the_update() -> None:
    rule = _rule(
        [
            "b = 0.9 * b + grad",
            "r = b + 0.01 * theta",
            "phi = where(norm(r) == 0, 1, norm(theta) / norm(r))",
            "theta = theta - lr * phi * r",
        ]
    )
    kernel = generate(rule)
    assert kernel.levels == 1 and kernel.reductions == ("norm", "norm")  # norm(r) is shared
    reduction_pass = next(p for p in kernel.passes if p.number == 1)
    assert reduction_pass.reads_theta and reduction_pass.reads_grad and not reduction_pass.writes_theta
    # pass 1 reads theta, grad, b (12 B); the step reads them again and writes theta and b (20 B)
    assert kernel.bytes_per_param() == 32


def test_reduction_of_a_scalar_is_a_clear_error() -> None:
    rule = _rule(["b = b + norm(lr) * grad", "theta = theta - b"])
    with pytest.raises(
        CodegenError, match=r"<probe>: rule 'probe', step equation 1 'b = b \+ norm\(lr\) \* grad'.*norm\(\) of a host scalar"
    ):
        generate(rule)


def test_reduction_in_an_initialiser_is_a_clear_error() -> None:
    rule = _rule(["b = b + grad", "theta = theta - lr * b"], init="norm(theta)")
    with pytest.raises(CodegenError, match=r"rule 'probe'.*state 'b' init 'norm\(theta\)'.*reductions in state initialisers"):
        generate(rule)


@pytest.mark.skipif(build.nvcc_path() is None, reason="nvcc is not installed")
def test_ptx_uses_128_bit_global_accesses_and_no_fma() -> None:
    """float32: ld/st.global.v4.f32 for theta, grad and state; bf16: 4 x 16-bit vectors; -fmad=false holds."""
    kernel = generate(_LIBRARY.get("adam").resolve())
    ptx = Path(build.compile_ptx(build.source_for([kernel], "ptx_probe_adam"))).read_text()
    entries = re.split(r"\.visible \.entry ", ptx)[1:]
    step_f32 = next(e for e in entries if "EffLi0E" in e.split("(")[0])
    step_bf16 = next(e for e in entries if "EttLi0E" in e.split("(")[0])
    assert step_f32.count("ld.global.v4.f32") >= 4  # theta, grad, m, v
    assert step_f32.count("st.global.v4.f32") >= 3  # theta, m, v
    assert step_bf16.count("ld.global.v4.u16") >= 2 and step_bf16.count("st.global.v4.u16") >= 1
    assert step_bf16.count("ld.global.v4.f32") >= 2 and step_bf16.count("st.global.v4.f32") >= 2
    assert "fma.rn" not in ptx
