"""Issue 11: bindings know which library releases have each keyword and path.

A keyword at its default is never passed; a keyword value or code path the installed release
lacks is a skip that names the release ("not in torch 2.0.1"), never an error. The installed
version is replaced here (``installed_version``), so these run in seconds against any torch;
``tox -e oldest`` runs the real torch 2.0.1 and optax 0.2.3 (tests/test_oldest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optspec import errors
from optspec.cli import main
from optspec.conformance import enumerate_checks, load_goldens, missing_in, run_check
from optspec.errors import AdapterError
from optspec.impls import base, implementation, optax_jax, torch_optim
from optspec.impls.base import Plan, plan_case, release
from optspec.impls.defects import parse_defects
from optspec.spec import SpecLibrary

LIBRARY = SpecLibrary()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Pretend these library versions are installed (distribution -> version)."""
    versions: dict[str, str] = {}
    real = base.installed_version
    monkeypatch.setattr(base, "installed_version", lambda name: versions.get(name) or real(name))
    yield versions


def _plan(impl: str, rule: str, variant: Mapping[str, str], hyper: Mapping[str, float] | None = None) -> Plan:
    spec = LIBRARY.get(rule)
    return plan_case(implementation(impl), spec, spec.full_variant(variant), spec.hyper_values(hyper), "float32")


def test_release_numbers() -> None:
    assert release("2.13.0+cpu") == (2, 13, 0) and release("0.4.31") == (0, 4, 31) and release("2.4") < release("2.13")
    with pytest.raises(AdapterError, match="cannot read a release number from the version 'nightly'"):
        release("nightly")


def test_a_default_valued_flag_is_not_passed() -> None:
    """The issue's torch 2.0.1/2.5.1 errors: amsgrad passed decoupled_weight_decay=False to an Adam without it."""
    binding = torch_optim.BINDINGS["amsgrad"]
    spec = LIBRARY.get("amsgrad")
    variant = spec.full_variant({"weight_decay": "l2"})
    everything = binding.all_kwargs(spec.hyper_values(), variant)
    passed = binding.kwargs(spec.hyper_values(), variant)
    assert everything["decoupled_weight_decay"] is False, everything
    assert "decoupled_weight_decay" not in passed and passed["amsgrad"] is True, passed
    hyper = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0}
    sgd = torch_optim.BINDINGS["sgd"].kwargs(hyper, {"maximize": "off"})
    assert "maximize" not in sgd and "nesterov" not in sgd, sgd
    rms = optax_jax.BINDINGS["rmsprop"]
    rms_spec = LIBRARY.get("rmsprop")
    inside = rms.kwargs(rms_spec.hyper_values(), rms_spec.full_variant({"epsilon": "inside"}))
    assert "eps_in_sqrt" not in inside, "eps_in_sqrt=True is optax's default and absent before 0.2.4: it must not be passed"


def test_a_default_flag_is_a_bool_not_an_equal_number() -> None:
    """0 == False in Python; a hyperparameter that happens to be 0 is still passed."""
    assert base._same(False, False) and not base._same(0.0, False) and not base._same(0, False)


@pytest.mark.parametrize(
    ("version", "rule", "variant", "skip"),
    [
        ("2.0.1", "radam", {"weight_decay": "decoupled"}, "torch.optim.RAdam(decoupled_weight_decay=True) is not in torch 2.0.1"),
        ("2.1.2", "radam", {"weight_decay": "decoupled"}, "not in torch 2.1.2 (since torch 2.2)"),
        ("2.2.0", "radam", {"weight_decay": "decoupled"}, None),
        ("2.0.1", "nadam", {"weight_decay": "decoupled"}, "torch.optim.NAdam(decoupled_weight_decay=True) is not in torch 2.0.1"),
        ("2.1.0", "nadam", {"weight_decay": "decoupled"}, None),
        ("2.6.0", "amsgrad", {"weight_decay": "decoupled"}, "Adam(decoupled_weight_decay=True) is not in torch 2.6.0"),
        ("2.7.0", "amsgrad", {"weight_decay": "decoupled"}, None),
        ("2.0.1", "amsgrad", {"weight_decay": "l2"}, None),
        ("2.0.1", "radam", {"weight_decay": "l2"}, None),
    ],
)
def test_a_keyword_the_installed_torch_lacks_is_a_skip(
    installed: dict[str, str], version: str, rule: str, variant: dict[str, str], skip: str | None
) -> None:
    pytest.importorskip("torch")
    installed["torch"] = version
    plan = _plan("torch.for-loop", rule, variant)
    if skip is None:
        assert plan.skip is None, f"torch {version} has what {rule} {variant} needs, yet: {plan.skip}"
    else:
        assert plan.skip is not None and skip in plan.skip, f"torch {version}, {rule} {variant}: {plan.skip!r}"


@pytest.mark.parametrize(
    ("version", "rule", "skipped"),
    [
        ("2.0.1", "adam", True),
        ("2.3.1", "sgd", True),
        ("2.3.1", "adagrad", True),
        ("2.4.0", "adamw", False),
        ("2.13.0+cpu", "sgd", False),
    ],
)
def test_the_fused_path_before_torch_2_4_is_a_skip(installed: dict[str, str], version: str, rule: str, skipped: bool) -> None:
    pytest.importorskip("torch")
    installed["torch"] = version
    plan = _plan("torch.fused", rule, {})
    if skipped:
        shown = version.split("+")[0]
        assert plan.skip is not None and f"the fused path is not in torch {shown}" in plan.skip, plan.skip
        assert missing_in([plan.skip]) == f"not in torch {shown}", "the matrix cell must read 'not in torch VERSION'"
    elif _takes_fused(rule):
        assert plan.skip is None, plan.skip
    else:
        # only the version is pretended: the installed class (torch 2.0.1's SGD, Adagrad) takes no fused
        # keyword, so the path does not exist here and nothing is planned (never an error cell)
        assert plan.skip is not None and "has no binding" in plan.skip, f"torch {version}, {rule}: {plan.skip!r}"
    assert implementation("torch.fused").binding("rmsprop") is None, "RMSprop has no fused path in any release: '-'"


def _takes_fused(rule: str) -> bool:
    """Whether the installed torch's class for ``rule`` has a ``fused`` keyword (every class of FUSED_RULES from 2.4)."""
    import inspect

    return "fused" in inspect.signature(torch_optim.resolve_target(torch_optim.BINDINGS[rule].target).__init__).parameters


def test_every_fused_rule_takes_fused_from_torch_2_4() -> None:
    """The fused cases above hold their plain claim (plan.skip is None) on every torch from 2.4."""
    pytest.importorskip("torch")
    import torch

    if release(torch.__version__) < (2, 4):
        pytest.skip(f"torch {torch.__version__}: SGD and Adagrad take fused from 2.4 (tests/test_oldest.py runs 2.0.1)")
    assert all(_takes_fused(rule) for rule in torch_optim.FUSED_RULES), "a class of FUSED_RULES has no fused keyword"


@pytest.mark.parametrize(
    ("version", "rule", "variant", "keyword"),
    [
        ("0.2.3", "rmsprop", {"epsilon": "outside"}, "eps_in_sqrt"),
        ("0.2.6", "amsgrad", {"maximum": "uncorrected"}, "bias_correction_nu"),
        ("0.2.6", "amsgrad", {"mu_correction": "off", "maximum": "corrected"}, "bias_correction_mu"),
    ],
)
def test_a_keyword_the_installed_optax_lacks_is_a_skip(
    installed: dict[str, str], version: str, rule: str, variant: dict[str, str], keyword: str
) -> None:
    installed["optax"] = version
    binding = optax_jax.BINDINGS[rule]
    spec = LIBRARY.get(rule)
    kwargs = binding.kwargs(spec.hyper_values(), spec.full_variant(variant))
    reason = binding.missing(kwargs)
    assert reason is not None and f"{keyword}=False) is not in optax {version}" in reason, reason
    installed["optax"] = "0.2.7"
    assert binding.missing(kwargs) is None, "optax 0.2.7 has eps_in_sqrt and bias_correction_mu/nu"


def test_missing_in_names_one_release_or_nothing() -> None:
    assert missing_in(["X: the fused path is not in torch 2.0.1 (since torch 2.4)"] * 2) == "not in torch 2.0.1"
    assert missing_in(["X: the fused path is not in torch 2.0.1 (since torch 2.4)", "cannot express epsilon=hat"]) == ""
    assert missing_in(["a value not in the domain"]) == ""


# --------------------------------------------------------------------------- jax releases


def test_x64_switches_in_the_installed_jax() -> None:
    jax = pytest.importorskip("jax")
    context = optax_jax._x64_context(jax)
    assert context is not None, f"jax {jax.__version__}: neither jax.enable_x64 nor jax.experimental.enable_x64"
    import jax.numpy as jnp

    with optax_jax.x64(True):
        assert jnp.asarray(1.0).dtype == jnp.float64, "x64(True) must make Python floats float64"
    with optax_jax.x64(False):
        assert jnp.asarray(1.0).dtype == jnp.float32, "x64(False) must keep JAX's float32 default"


@pytest.mark.parametrize(
    ("jax_source", "message"),
    [
        ("raise ImportError('jaxlib 0.1 is installed but jax requires jaxlib >= 0.4')", "jax/optax cannot be imported"),
        ("__version__ = '0.3.0'\n", "jax 0.3.0 has neither jax.enable_x64 nor jax.experimental.enable_x64"),
    ],
)
def test_an_unusable_jax_is_one_line_exit_2(tmp_path: Path, jax_source: str, message: str) -> None:
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text(jax_source)
    (tmp_path / "optax").mkdir()
    (tmp_path / "optax" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "optspec.cli", "run", "--rule", "sgd", "--impl", "optax", "--dtype", "float64"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- run --json and report columns


def _run_doc(torch: str, optax: str, statuses: Mapping[str, str]) -> dict:
    results = []
    for impl, status in statuses.items():
        message = "" if status != "skipped" else f"torch.optim.SGD: the fused path is not in torch {torch} (since torch 2.4)"
        if status == "fails":
            message = "sgd x torch.foreach, case c, float32: step 1 ..."
        results.append(
            {"id": f"{impl}::sgd/c::float32", "rule": "sgd", "implementation": impl, "status": status, "message": message}
        )
    return {
        "format": "optspec-run/1",
        "optspec": "0.1.0",
        "environment": {"python": "3.11.7", "packages": {"numpy": "1.26.4", "torch": torch, "optax": optax}},
        "results": results,
    }


def test_report_puts_runs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "run-2.0.1.json", tmp_path / "run-2.13.json"
    old.write_text(json.dumps(_run_doc("2.0.1", "0.2.3", {"torch.fused": "skipped", "torch.foreach": "fails"})))
    new.write_text(json.dumps(_run_doc("2.13.0+cpu", "0.2.8", {"torch.fused": "conforms", "torch.foreach": "conforms"})))
    out = tmp_path / "out"
    assert main(["report", str(old), str(new), "--out", str(out)]) == 0, capsys.readouterr().err
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["columns"] == [
        "torch.fused @ torch 2.0.1",
        "torch.fused @ torch 2.13.0",
        "torch.foreach @ torch 2.0.1",
        "torch.foreach @ torch 2.13.0",
    ], doc["columns"]
    row = doc["matrix"]["sgd"]
    assert row["torch.fused @ torch 2.0.1"]["shown"] == "not in torch 2.0.1", row
    assert row["torch.fused @ torch 2.13.0"]["status"] == "conforms" and row["torch.foreach @ torch 2.0.1"]["status"] == "fails"
    markdown = (out / "comparison.md").read_text()
    assert "| sgd | not in torch 2.0.1 | conforms | fails | conforms |" in markdown, markdown
    assert "numpy 1.26.4" in markdown and '<td class="fails">fails</td>' in (out / "comparison.html").read_text()


def test_report_of_two_runs_of_one_version_tells_them_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        path.write_text(json.dumps(_run_doc("2.13.0", "0.2.8", {"torch.foreach": "conforms"})))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert doc["columns"] == ["torch.foreach @ torch 2.13.0", "torch.foreach @ torch 2.13.0 (b.json)"], doc["columns"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{", "not JSON"),
        ("[]", "a result list without library versions"),
        ('{"format": "optspec-report/1"}', "not an `optspec run --json` document"),
        ('{"format": "optspec-run/1", "results": []}', "field 'environment.packages' is missing"),
        ('{"format": "optspec-run/1", "environment": {"packages": {}}, "results": [{"rule": "sgd"}]}', "field 'implementation'"),
        (
            '{"format": "optspec-run/1", "environment": {"packages": {}}, '
            '"results": [{"rule": "sgd", "implementation": "x", "status": "great", "message": ""}]}',
            "unknown status 'great'",
        ),
    ],
)
def test_report_of_a_bad_run_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err, err
    assert not (tmp_path / "out" / "comparison.json").exists(), "nothing is written for a bad run file"


def test_report_of_runs_takes_no_run_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_run_doc("2.13.0", "0.2.8", {"torch.foreach": "conforms"})))
    assert main(["report", str(path), "--rule", "sgd", "--out", str(tmp_path / "out")]) == 2
    assert "--rule, --impl, --dtype, --dir and --specs do not apply" in capsys.readouterr().err


def test_run_json_records_library_versions(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "run.json"
    code = main(["run", "--rule", "adadelta", "--impl", "torch.for-loop", "--dtype", "float64", "--quiet", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert code == 0 and doc["format"] == "optspec-run/1", doc.get("format")
    packages = doc["environment"]["packages"]
    assert {"torch", "jax", "optax", "numpy"} <= set(packages) and doc["environment"]["python"], doc["environment"]
    import torch

    assert packages["torch"].split("+")[0] == torch.__version__.split("+")[0], packages


# --------------------------------------------------------------------------- [[defect]] entries of old releases


class _WrongOptax:
    """An adapter named like optax's whose every run is wrong (theta stays at zero)."""

    name, framework, dtypes = "optax", "jax", ("float32", "float64")

    def unavailable(self) -> str | None:
        return None

    def binding(self, rule: str) -> Any:
        return optax_jax.BINDINGS.get(rule)

    def run(self, plan: Plan, inputs: Any, hyper: Mapping[str, float], dtype: str, record: Any) -> dict:
        return {t: [{"theta": np.zeros_like(np.asarray(p, dtype=np.float64))} for p in inputs.params] for t in record}


@pytest.mark.parametrize(("version", "named"), [("0.2.3", True), ("0.2.4", False)])
def test_a_failure_of_a_release_with_a_registered_defect_names_it(installed: dict[str, str], version: str, named: bool) -> None:
    installed["optax"] = version
    goldens = load_goldens(LIBRARY, ROOT / "conformance" / "golden", ["adabelief"])
    check = next(c for c in enumerate_checks(LIBRARY, goldens, [_WrongOptax()], ("float64",)) if c.test.case == "defaults")
    result = run_check(check)
    assert result.status == "fails", "a registered defect never turns a failure into a pass"
    marker = "[known defect optax-adabelief-previous-moment: a defect of optax before 0.2.4 (installed 0.2.3)"
    assert (marker in result.message) is named, result.message
    assert (result.defect is not None and result.defect.id == "optax-adabelief-previous-moment") is named, result.defect


_DEFECT = """
[[defect]]
id = "d"
rule = "adagrad"
implementations = ["torch.foreach"]
library = "torch"
fixed_in = "2.1"
dtypes = ["float64"]
reason = "a reason long enough to pass"
evidence = ["torch 2.0.1 torch/optim/adagrad.py:353"]
upstream = ["the fix"]
"""


def test_a_defect_applies_while_the_installed_release_predates_the_fix(installed: dict[str, str]) -> None:
    (defect,) = parse_defects(_DEFECT, "impls/test.toml")
    installed["torch"] = "2.0.1"
    assert defect.present(), "torch 2.0.1 predates the fix in 2.1"
    installed["torch"] = "2.1.0"
    assert not defect.present(), "torch 2.1.0 has the fix"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('fixed_in = "2.1"\n', "", "defect 'd': give library and fixed_in together"),
        ('fixed_in = "2.1"', 'fixed_in = "two"', "at defect/0/fixed_in: 'two' does not match"),
        ('dtypes = ["float64"]', 'dtypes = ["bfloat8"]', "at defect/0/dtypes/0"),
    ],
)
def test_a_malformed_defect_entry_is_one_line(old: str, new: str, message: str) -> None:
    assert old in _DEFECT
    with pytest.raises(AdapterError) as info:
        parse_defects(_DEFECT.replace(old, new), "impls/test.toml")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_matrix_cells_say_what_the_release_lacks_or_which_defect_fails() -> None:
    from optspec.commands.run import cell_text
    from optspec.conformance import Cell

    lacking = Cell(status="skipped", skips=["torch.optim.SGD: the fused path is not in torch 2.0.1 (since torch 2.4)"] * 3)
    assert cell_text(lacking) == "not in torch 2.0.1"
    assert cell_text(Cell(status="skipped", skips=["cannot express epsilon=hat"])) == "skipped"
    defect = Cell(status="fails", failures=["step 1 ... [known defect d: a defect of torch before 2.1 (installed 2.0.1); fix]"])
    assert cell_text(defect) == "fails: known defect"
    mixed = Cell(status="fails", failures=[*defect.failures, "step 2: max abs error 1e-3 > budget 1e-9"])
    assert cell_text(mixed) == "fails", "an unregistered failure in the cell must not read as a known defect"


# --------------------------------------------------------------------------- a kernel the installed torch lacks

#: torch 2.0.1's own message (measured: torch.optim.Adadelta on a CPU float16 parameter, step 1)
_NO_HALF = "\"addcmul_cpu_out\" not implemented for 'Half'"


def test_a_missing_16_bit_kernel_is_named_and_nothing_else_is() -> None:
    pytest.importorskip("torch")
    import torch

    version = torch.__version__.split("+")[0]
    assert torch_optim.missing_kernel(RuntimeError(_NO_HALF), "cpu") == (
        f"not run: torch {version} has no CPU float16 kernel for addcmul_cpu_out"
    )
    bf16 = RuntimeError("\"clamp_scalar_cpu\" not implemented for 'BFloat16'")
    assert torch_optim.missing_kernel(bf16, "cpu") == f"not run: torch {version} has no CPU bfloat16 kernel for clamp_scalar_cpu"
    for other in (
        RuntimeError("\"addcmul_cpu_out\" not implemented for 'Long'"),  # not a parameter dtype optspec runs
        RuntimeError("!needs_dynamic_casting<func_t>::check(iter) INTERNAL ASSERT FAILED"),  # a torch bug: an error cell
        RuntimeError(f"while stepping: {_NO_HALF}"),  # only torch's message exactly
        TypeError(_NO_HALF),
    ):
        assert torch_optim.missing_kernel(other, "cpu") is None, f"{other!r} must stay an error, not a skip"


def test_a_missing_kernel_is_a_skip_cell_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path: torch raises its message at step 1, the runner raises LibraryCannotRun, the check is skipped."""
    pytest.importorskip("torch")
    import torch

    from optspec.commands.run import cell_text
    from optspec.conformance import matrix

    def no_half(self: Any, closure: Any = None) -> None:
        raise RuntimeError(_NO_HALF)

    monkeypatch.setattr(torch.optim.Adadelta, "step", no_half)
    goldens = load_goldens(LIBRARY, ROOT / "conformance" / "golden", ["adadelta"])
    checks = enumerate_checks(LIBRARY, goldens, [implementation("torch.for-loop")], ("float16",))
    assert checks, "adadelta has no float16 checks on torch.for-loop"
    results = [run_check(check) for check in checks]
    ran = [r for r in results if "not run: torch" in r.message]
    assert ran, f"no check reached the optimizer: {sorted({r.message[:80] for r in results})}"
    assert all(r.status == "skipped" for r in ran), f"a missing kernel must be a skip: {[(r.status, r.message) for r in ran][:2]}"
    assert all("has no CPU float16 kernel for addcmul_cpu_out" in r.message for r in ran), ran[0].message
    cell = matrix(ran)["adadelta float16"]["torch.for-loop"]
    version = torch.__version__.split("+")[0]
    assert cell_text(cell) == f"not run: torch {version} has no CPU float16 kernel", cell_text(cell)
    with pytest.raises(AdapterError, match="step 1 raised RuntimeError: boom") as info:
        monkeypatch.setattr(torch.optim.Adadelta, "step", lambda self, closure=None: (_ for _ in ()).throw(RuntimeError("boom")))
        implementation("torch.for-loop").run(_plan_for(checks[0]), checks[0].test.inputs, checks[0].test.hyper, "float16", [1])
    assert not isinstance(info.value, errors.LibraryCannotRun), "any other torch error stays an error (exit 2)"


def _plan_for(check: Any) -> Plan:
    return plan_case(check.implementation, check.spec, check.test.variant, check.test.hyper, check.dtype)
