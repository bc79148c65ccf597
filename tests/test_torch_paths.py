"""torch.optim's code paths and 16-bit dtypes in the conformance matrix.

* every path of ``optspec.impls.torch_optim.PATHS`` is an implementation; capturable, which
  torch 2.13 refuses on the CPU, is "not run" with torch's own message, never a pass;
* bfloat16 and float16 checks are rows of their own ("sgd bfloat16"), judged under the golden
  file's profile of that dtype; a file without those budgets makes them skipped, saying so;
* torch's fused SGD bfloat16/float16 defect on the CPU reproduces, fails in the matrix and is
  the registered defect (impls/defects.toml) that the conformance test expects to fail.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from optspec.conformance import HALF_DTYPES, enumerate_checks, load_goldens, matrix, run_check
from optspec.errors import AdapterError
from optspec.impls import implementation
from optspec.impls.defects import defects, find_defect, parse_defects
from optspec.spec import SpecLibrary

torch = pytest.importorskip("torch")

LIBRARY = SpecLibrary()
GOLDEN = Path(__file__).resolve().parents[1] / "conformance" / "golden"


def _checks(rule: str, impl: str, dtype: str) -> list:
    goldens = load_goldens(LIBRARY, GOLDEN, [rule])
    return [c for c in enumerate_checks(LIBRARY, goldens, [implementation(impl)], (dtype,))]


def test_every_torch_path_is_an_implementation() -> None:
    from optspec.impls.torch_optim import IMPLEMENTATIONS

    names = [i.name for i in IMPLEMENTATIONS]
    assert names == [
        "torch.for-loop",
        "torch.foreach",
        "torch.fused",
        "torch.differentiable",
        "torch.capturable",
        "torch.param-groups",
    ], names
    kernels = [i for i in IMPLEMENTATIONS if i.path != "param-groups"]
    assert all(set(HALF_DTYPES) <= set(i.dtypes) for i in kernels), "every torch kernel path must run bfloat16 and float16"


def test_capturable_on_the_cpu_is_not_run_with_torchs_reason() -> None:
    # torch/optim/optimizer.py:218-225 lists cuda, xpu, hpu, privateuse1 and xla; adam.py:403-410 raises otherwise.
    reason = implementation("torch.capturable").unavailable()
    assert reason is not None and "capturable=True" in reason and "cuda" in reason, reason
    results = [run_check(c) for c in _checks("adam", "torch.capturable", "float32")]
    assert results and {r.status for r in results} == {"skipped"}, {r.status for r in results}
    assert matrix(results)["adam"]["torch.capturable"].status == "skipped"


def test_differentiable_runs_with_autograd_enabled_path() -> None:
    from optspec.impls.torch_optim import PATHS

    kwargs, rules = PATHS["differentiable"]
    assert kwargs == {"differentiable": True, "foreach": False} and rules is None
    results = [run_check(c) for c in _checks("sgd", "torch.differentiable", "float64")]
    ran = [r for r in results if r.status != "skipped"]
    assert ran and all(r.status == "conforms" for r in ran), [r.message for r in ran if r.status != "conforms"]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_rows_of_the_for_loop_path_conform(dtype: str) -> None:
    results = [run_check(c) for c in _checks("sgd", "torch.for-loop", dtype)]
    table = matrix(results)
    assert list(table) == [f"sgd {dtype}"], list(table)
    ran = [r for r in results if r.status != "skipped"]
    assert ran and all(r.status == "conforms" and r.profile == dtype for r in ran), [r.message for r in ran]


def test_a_golden_file_without_half_budgets_skips_and_says_so() -> None:
    (check,) = [c for c in _checks("sgd", "torch.for-loop", "bfloat16") if c.test.name == "sgd/default/defaults"]
    old = dataclasses.replace(check.test, atol={p: v for p, v in check.test.atol.items() if p not in HALF_DTYPES})
    golden = dataclasses.replace(check.golden, tests=(old,))
    result = run_check(dataclasses.replace(check, test=old, golden=golden))
    assert result.status == "skipped" and "has no bfloat16 budgets (regenerate: optspec golden sgd)" in result.message, result
    cell = matrix([result])["sgd bfloat16"]["torch.for-loop"]
    assert cell.status == "skipped", "a skipped bfloat16 check must never read as a pass in the matrix"


def test_a_skipped_half_row_is_not_folded_into_the_float32_cell() -> None:
    (check,) = [c for c in _checks("sgd", "torch.for-loop", "float32") if c.test.name == "sgd/default/defaults"]
    passed = run_check(check)
    half = run_check(dataclasses.replace(check, dtype="float16", test=dataclasses.replace(check.test, atol={})))
    table = matrix([passed, half])
    assert table["sgd"]["torch.for-loop"].status == "conforms"
    assert table["sgd float16"]["torch.for-loop"].status == "skipped", table


def test_fused_sgd_half_defect_reproduces() -> None:
    """The registered defect, at its root: the vectorised loop of FusedSGDKernel.cpp never stores param.

    64 elements span whole SIMD blocks on any vector width up to 512 bits; with lr 0.1 and gradient
    1 for 3 steps the for-loop path moves every element by 0.3 and the fused one must too.
    """
    for dtype in (torch.bfloat16, torch.float16):
        moved = {}
        for fused in (False, True):
            param = torch.zeros(64, dtype=dtype)
            optimizer = torch.optim.SGD([param], lr=0.1, fused=fused)
            for _ in range(3):
                param.grad = torch.ones(64, dtype=dtype)
                optimizer.step()
            moved[fused] = int((param != 0).sum())
        assert moved[False] == 64, f"{dtype}: the for-loop path moved {moved[False]} of 64 elements"
        if moved[True] == 64:
            pytest.fail(
                f"{dtype}: torch {torch.__version__} fused SGD now updates every element: the defect "
                "torch-fused-sgd-cpu-half-vector-blocks is fixed here; restrict or remove its registry entry"
            )
        assert moved[True] < 64


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_fused_sgd_half_defect_fails_in_the_matrix(dtype: str) -> None:
    results = [run_check(c) for c in _checks("sgd", "torch.fused", dtype)]
    cell = matrix(results)[f"sgd {dtype}"]["torch.fused"]
    assert cell.status == "fails", f"sgd {dtype} x torch.fused must fail (FusedSGDKernel.cpp:39-80), got {cell.status}"
    assert list(cell.defects) == ["torch-fused-sgd-cpu-half-vector-blocks"], cell.defects
    failed = [r for r in results if r.status == "fails"]
    assert all("[known defect torch-fused-sgd-cpu-half-vector-blocks]" in r.message for r in failed), failed[0].message
    # The float32 cell of the same path stays clean: the defect is the 16-bit template only.
    clean = [run_check(c) for c in _checks("sgd", "torch.fused", "float32")]
    assert matrix(clean)["sgd"]["torch.fused"].status == "conforms"


def test_a_defect_never_applies_to_a_pass_or_another_cell() -> None:
    assert find_defect("sgd", "torch.fused", "float32") is None
    assert find_defect("sgd", "torch.for-loop", "bfloat16") is None
    assert find_defect("adam", "torch.fused", "bfloat16") is None
    assert all(d.evidence and d.upstream for d in defects())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[defect]]\nid = 'x'\n", "impls/defects.toml: at defect/0: 'rule' is a required property"),
        ("defect = 3\n", "impls/defects.toml: at defect: 3 is not of type 'array'"),
        ("[[defect", "impls/defects.toml: not valid TOML"),
        (
            "[[defect]]\nid = 'x'\nrule = 'adam'\nimplementations = ['torch.*']\ndtypes = ['float32']\n"
            "reason = 'a reason of twenty characters'\nevidence = ['file.py:1 says so']\nupstream = ['none']\n"
            "raises = 'placement ([a-z'\n",
            "impls/defects.toml: defect 'x': raises is not a regular expression",
        ),
    ],
)
def test_defect_registry_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(AdapterError) as info:
        parse_defects(text, "impls/defects.toml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_differentiable_float64_adam_is_the_registered_float32_step_scalars() -> None:
    """adam.py:477-526: with differentiable=True the bias corrections are float32 tensors (the step's dtype).

    Under the float64 budget the defaults case fails by about 8e-9 relative; it passes under the
    float64_scalar32 profile (binary64 tensors, binary32 step scalars), measured for it on the fly.
    """
    (check,) = [c for c in _checks("adam", "torch.differentiable", "float64") if c.test.name == "adam/default/defaults"]
    result = run_check(check)
    assert result.status == "deviation" and result.profile == "float64_scalar32", result
    assert [d.id for d in result.deviations] == ["torch-differentiable-float32-step-scalars"], result.deviations
    plain = run_check(dataclasses.replace(check, implementation=implementation("torch.for-loop")))
    assert plain.status == "conforms" and plain.profile == "float64", "the for-loop path must conform in float64"


def test_adagrad_group_initial_accumulator_is_the_registered_defect() -> None:
    """adagrad.py:79-97 fills state['sum'] from the constructor argument, not the group's option."""
    results = [run_check(c) for c in _checks("adagrad", "torch.param-groups", "float64")]
    failed = [r for r in results if r.status == "fails"]
    assert failed and all(r.case == "knobs" for r in failed), [(r.test, r.status) for r in results]
    assert all(r.defect is not None and r.defect.id == "torch-adagrad-group-initial-accumulator-ignored" for r in failed)
    assert all(r.status in ("conforms", "deviation", "skipped") for r in results if r.case != "knobs")
    # The same hyperparameters as constructor keywords conform.
    keywords = [run_check(c) for c in _checks("adagrad", "torch.for-loop", "float64") if c.test.case == "knobs"]
    assert keywords and all(r.status in ("conforms", "deviation") for r in keywords), [r.message for r in keywords]
