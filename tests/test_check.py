"""``optspec check`` end to end: exit codes, output, JSON, and targets that misbehave.

The target runs in a spawned worker process, so these tests also exercise the isolation:
a target that hangs is killed at the time limit, one that crashes the interpreter is
reported, and in both cases the remaining cases still run.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("torch")

from optspec.checking.runner import CheckReport, check, to_json
from optspec.cli import main

FIXTURES = "tests.fixtures.misbehaving"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "conformance" / "check-result.schema.json"


def assert_schema_valid(doc: dict) -> None:
    """The --json document is described by the published schema conformance/check-result.schema.json."""
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "check result does not match conformance/check-result.schema.json: " + "; ".join(
        f"at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5]
    )


def rows(report: CheckReport) -> dict[tuple[str, str], object]:
    return {(c.case, c.dtype): c for c in report.cases}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_torch_adamw_conforms_to_adamw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    code, out, _ = run_cli(capsys, "adamw", "torch.optim:AdamW", "--json", str(path))
    assert code == 0, f"torch.optim.AdamW should conform to adamw; output:\n{out}"
    assert "verdict: torch.optim:AdamW conforms to adamw" in out, out
    doc = json.loads(path.read_text())
    for key in ("optspec", "specs", "target", "environment", "cases", "behaviour", "verdict"):
        assert key in doc, f"--json output lacks {key!r}: {sorted(doc)}"
    assert doc["specs"]["adamw"]["sha256"], "the JSON must carry the spec hash"
    assert doc["target"]["kind"] == "torch" and doc["verdict"] == "conforms", doc["target"]
    assert doc["target"]["distribution"] == "torch" and doc["target"]["packageVersion"], doc["target"]
    assert "distribution torch " in out, f"the report should name the target's distribution and version:\n{out}"
    assert_schema_valid(doc)
    assert {c["status"] for c in doc["cases"]} == {"conforms"}, [c for c in doc["cases"] if c["status"] != "conforms"]
    statuses = {b["name"]: b["status"] for b in doc["behaviour"]}
    assert statuses["state_dict"] == "passed" and statuses["hyperparameters"] == "passed", statuses


def test_torch_adamw_claimed_as_adam_fails_with_a_diagnosis(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "adam", "torch.optim:AdamW", "--no-behaviour")
    assert code == 1, f"torch.optim.AdamW must not conform to adam (L2 decay); output:\n{out}"
    assert "diagnosis: behaves like adamw" in out and "decay_scale=lr" in out, f"the diagnosis should name adamw:\n{out}"
    assert "FAIL case knobs (float64)" in out, f"the failing case should be listed:\n{out}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["nosuchrule", "torch.optim:AdamW"], "unknown rule 'nosuchrule'"),
        (["adam", "torch.optim:AdamW", "--variant", "amsgrad=sometimes"], "has no value 'sometimes'"),
        (["adam", "torch.optim:AdamW", "--variant", "colour=red"], "unknown variant knob 'colour'"),
        (["adam", "torch.optim:AdamW", "--hyper", "beta1=2"], "outside its domain"),
        (["adam", "torch.optim:AdamW", "--hyper", "gamma=1"], "has no hyperparameter 'gamma'"),
        (["adam", "torch.optim:AdamW", "--map", "gamma=g"], "'gamma' is neither a hyperparameter"),
        (["adam", "no_such_module_xyz:Adam"], "cannot import module 'no_such_module_xyz'"),
        (["adam", "torch.optim:NoSuchAdam"], "has no attribute 'NoSuchAdam'"),
        (["adam", "torch.optim"], "must be MODULE:ATTRIBUTE"),
        (["adam", "torch.optim:Optimizer", "--timeout", "0"], "--timeout 0: must be positive"),
        (["sgd", "torch.optim:SGD", "--map", "momentum=momentm"], "takes no keyword 'momentm'; its signature is SGD("),
        (["sgd", "torch.optim:SGD", "--map", "lr=lr[x"], "'lr[x' is not a keyword name"),
        (["adam", "torch.optim:Adam", "--kwarg", "foreach=Tru e"], "--kwarg foreach=Tru e: not a Python literal"),
        (["adam", "torch.optim:Adam", "--kwarg", "foreach"], "--kwarg 'foreach' must be NAME=VALUE"),
        (["adam", "torch.optim:Adam", "--kwarg", "max_grad_norm=None"], "no keyword 'max_grad_norm'; its signature is Adam("),
        (["adam", "torch.optim:Adam", "--kwarg", "lr=0.1"], "is set from spec hyperparameter lr; use --hyper lr=VALUE"),
        (["adam", "torch.optim:Adam", "--inner", "torch.optim:SGD"], "rule 'adam' is not a composite rule"),
        (["adam", "torch.optim:Adam", "--kwarg", "amsgrad=True"], "selects the variant knob amsgrad; use --variant amsgrad="),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, f"optspec check {' '.join(argv)} should exit 2, got {code}; stderr: {err}"
    assert says in err and len(err.strip().splitlines()) == 1, f"expected one line mentioning {says!r}, got: {err!r}"


@pytest.mark.parametrize(
    ("target", "failure", "says"),
    [
        ("HangsOnKnobs", "timeout", "time limit"),
        ("CrashesOnKnobs", "crashed", "worker process died"),
        ("RaisesOnKnobs", "raised", "RuntimeError: boom"),
        ("WrongDtypeOnKnobs", "raised", "has dtype torch.float16"),
    ],
)
def test_misbehaving_target_is_reported_per_case(target: str, failure: str, says: str) -> None:
    # The time limit also bounds importing the target (torch and torch._dynamo: seconds on a busy machine).
    # Flag rows also run on the knobs case; without them a hang costs the time limit once, not per flag.
    report = check("adam", f"{FIXTURES}:{target}", behaviour=False, dtypes=("float32",), timeout=30.0, steps=10, flags=False)
    by_case = {c.case: c for c in report.cases}
    knobs = by_case["knobs"]
    assert (knobs.status, knobs.failure) == ("fails", failure), f"{target}: knobs case should fail with {failure}: {knobs}"
    assert says in knobs.message, f"{target}: the message should say {says!r}: {knobs.message}"
    for case in ("defaults", "zero_grad"):
        assert by_case[case].status == "conforms", f"{target}: case {case} should still run and conform: {by_case[case]}"
    assert report.exit_code == 1


def test_factory_returning_something_else_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain function that is not an optax factory could not be run in any case: bad input, not a verdict."""
    code, out, err = run_cli(capsys, "adam", f"{FIXTURES}:not_a_transformation", "--no-behaviour", "--quiet")
    assert code == 2, f"a function returning a dict must exit 2, got {code}; stdout: {out}"
    assert "could not run tests.fixtures.misbehaving:not_a_transformation" in err, err
    assert "not an optax GradientTransformation" in err and len(err.strip().splitlines()) == 1, err
    assert "does NOT conform" not in out, out


@pytest.mark.parametrize(
    ("rule", "target", "row", "flag"),
    [
        ("adam", "tests.fixtures.flags:CorrectedMaxAmsgradAdam", "knobs[amsgrad=raw]", "amsgrad=True"),
        ("sgd", "tests.fixtures.flags:PreviousBufferNesterovSGD", "cosine_schedule[nesterov=on]", "nesterov=True"),
    ],
)
def test_a_wrong_flag_path_fails_naming_the_flag(rule: str, target: str, row: str, flag: str) -> None:
    """Both fixtures are torch.optim's own class with that flag off; only the flag's path is wrong."""
    report = check(rule, target, behaviour=False)
    by = rows(report)
    for dtype in ("float64", "float32"):
        result = by[(row, dtype)]
        assert result.status == "fails" and result.flag == flag, f"{row} ({dtype}) should fail with {flag}: {result}"
        assert f"with {flag}" in result.message, f"the failure should name the flag {flag}: {result.message}"
    plain = [c for c in report.cases if not c.flag]
    assert all(c.status == "conforms" for c in plain), [c for c in plain if c.status != "conforms"]
    assert report.exit_code == 1
    assert report.diagnosis is not None and report.diagnosis.explanation.startswith(f"the flag {flag} does not implement"), (
        report.diagnosis
    )
    assert_schema_valid(to_json(report))


@pytest.mark.parametrize(
    ("rule", "target", "row"),
    [("adam", "torch.optim:Adam", "knobs[amsgrad=raw]"), ("sgd", "torch.optim:SGD", "cosine_schedule[nesterov=on]")],
)
def test_torch_flags_get_their_own_rows_and_conform(rule: str, target: str, row: str) -> None:
    report = check(rule, target, behaviour=False)
    by = rows(report)
    assert (row, "float64") in by and (row, "float32") in by, f"expected flag rows {row}: {sorted(by)}"
    assert {c.status for c in report.cases} == {"conforms"}, [c for c in report.cases if c.status != "conforms"]
    assert any(c.case.endswith("[maximize=on]") for c in report.cases), "maximize=True is a flag of torch.optim too"


def test_torch_nadam_is_a_known_deviation_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    """impls/deviations.toml torch-nadam-mu-product-float32 applies to check as to optspec run,
    in the behavioural checks too (their float64 comparisons use the registered arithmetic)."""
    code, out, _ = run_cli(capsys, "nadam", "torch.optim:NAdam")
    assert code == 0, f"torch.optim.NAdam is a registered deviation (mu_product in float32), expected exit 0:\n{out}"
    assert "torch-nadam-mu-product-float32" in out and "with known deviations" in out, out
    assert "FAIL" not in out, out


def test_step_scalars_in_float32_is_a_known_precision_deviation_for_torch() -> None:
    report = check("adamw", "tests.fixtures.precision:Float32ScalarsAdamW", behaviour=False)
    float32 = [c for c in report.cases if c.dtype == "float32"]
    assert report.exit_code == 0 and report.verdict == "deviation", [c for c in report.cases if c.status == "fails"]
    assert any(c.status == "deviation" and "step scalars in float32" in c.message for c in float32), float32
    assert all(c.status == "conforms" for c in report.cases if c.dtype == "float64"), "float64 uses float64 scalars"


def test_float32_computation_of_float64_parameters_is_a_named_finding(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "adamw", "tests.fixtures.precision:Float32InsideAdamW")
    assert code == 1, f"computing float64 parameters in float32 is a failure:\n{out}"
    assert "diagnosis: computes in float32" in out, f"the diagnosis should name the finding:\n{out}"
    assert "unexplained" not in out and "no declared variant" not in out, out
    assert "FAIL behaviour zero_gradients" not in out, f"behavioural failures that follow from it are grouped:\n{out}"
    assert "zero_gradients     failed (follows from: computes in float32)" in out, out
    assert "it also explains the failed behavioural check zero_gradients" in out, out


def test_kwarg_is_passed_to_the_constructor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    code, out, _ = run_cli(capsys, "adam", "torch.optim:Adam", "--kwarg", "foreach=True", "--no-behaviour", "--json", str(path))
    assert code == 0, out
    doc = json.loads(path.read_text())
    assert doc["kwargs"] == {"foreach": True}, doc["kwargs"]
    assert_schema_valid(doc)


def test_tied_hyperparameters_skip_cases_where_they_differ() -> None:
    """OneEpsAdaBelief uses one eps for the spec's eps and eps_root (adabelief-pytorch style)."""
    report = check(
        "adabelief", "tests.fixtures.wrappers:OneEpsAdaBelief", maps=["eps_root=eps"], hypers=["eps=1e-8"], dtypes=("float64",)
    )
    by = rows(report)
    skipped = by[("defaults", "float64")]
    assert skipped.status == "skipped" and "eps and eps_root are tied to one keyword 'eps'" in skipped.message, skipped
    assert by[("knobs", "float64")].status == "conforms", by[("knobs", "float64")]
    statuses = {b.name: b for b in report.behaviour}
    assert statuses["hyperparameters"].status == "passed", statuses["hyperparameters"]
    message = statuses["hyperparameters"].message
    assert "eps (eps = eps_root)" in message, f"the tied pair should be varied together: {message}"
    assert report.exit_code == 0, [c for c in report.cases if c.status == "fails"] + [
        b for b in report.behaviour if b.status == "failed"
    ]


def test_wrapper_with_inner_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "lookahead", "tests.fixtures.wrappers:Lookahead", "--inner", "torch.optim:SGD")
    assert code == 0, f"Lookahead(SGD(params), k, alpha) should conform to lookahead(sgd):\n{out}"
    assert "inner optimizer: torch.optim:SGD" in out and "momentum   float64  conforms" in out, out


def test_wrapper_without_inner_is_exit_2_with_the_advice(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "lookahead", "tests.fixtures.wrappers:Lookahead", "--no-behaviour", "--quiet")
    assert code == 2, f"a wrapper that cannot be constructed must exit 2, got {code}:\n{out}"
    assert "could not run tests.fixtures.wrappers:Lookahead" in err and "--inner MODULE:ATTR" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_cases_are_skipped_only_for_hyperparameters_the_claimed_variant_reads() -> None:
    """lamb's default variant (clip=none) never reads max_ratio: its cases with max_ratio = 1 still run."""
    report = check("lamb", "tests.fixtures.keywords:NoMaxRatioLamb", behaviour=False, dtypes=("float64",), steps=5)
    by = rows(report)
    for case in ("knobs", "zero_bias", "scheduled"):
        assert by[(case, "float64")].status == "conforms", f"case {case} must run without max_ratio: {by[(case, 'float64')]}"


def test_a_skip_names_the_map_that_works() -> None:
    report = check("sgd", "tests.fixtures.keywords:RenamedDecaySGD", behaviour=False, dtypes=("float32",), steps=5)
    knobs = rows(report)[("knobs", "float32")]
    assert knobs.status == "skipped" and "use --map weight_decay=weightdecay" in knobs.message, knobs
    fixed = check(
        "sgd",
        "tests.fixtures.keywords:RenamedDecaySGD",
        maps=["weight_decay=weightdecay"],
        behaviour=False,
        dtypes=("float32",),
        steps=5,
    )
    assert rows(fixed)[("knobs", "float32")].status == "conforms", rows(fixed)[("knobs", "float32")]


def test_wrapper_inner_rule_follows_the_inner_class() -> None:
    report = check("lookahead", "tests.fixtures.wrappers:Lookahead", inner="torch.optim:Adam", behaviour=False)
    assert report.variant["inner"] == "adam", f"Lookahead(Adam) is lookahead with inner=adam: {report.variant}"
    assert report.exit_code == 0, [c for c in report.cases if c.status != "conforms"]
    assert report.inner is not None and report.inner.ref == "torch.optim:Adam", report.inner


def test_wrapper_that_resets_the_inner_state_fails() -> None:
    report = check(
        "lookahead", "tests.fixtures.wrappers:ResettingLookahead", inner="torch.optim:SGD", behaviour=False, dtypes=("float64",)
    )
    momentum = rows(report)[("momentum", "float64")]
    assert momentum.status == "fails" and momentum.failure == "numeric", f"resetting SGD momentum at a sync must fail: {momentum}"
    assert report.exit_code == 1


@pytest.mark.slow  # two checks with a variant search: about 70 s on a shared 2-core machine (tox -e slow)
def test_optax_schedule_free_sgd_verdicts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """optax.contrib.schedule_free_sgd against its own variant (warmup=schedule).

    With warmup_steps = 0 (the spec's "no warmup", which defaults and zero_grad use) optax builds
    warmup_constant_schedule(0, lr, 0) because it only tests `warmup_steps is not None`
    (optax/contrib/_schedule_free.py:278-283), and a polynomial schedule with transition_steps <= 0
    is the constant init_value 0 (optax/schedules/_schedule.py:126-131): the learning rate is 0 and
    theta never moves, so those cases fail. With a positive warmup in every case the target conforms.
    """
    pytest.importorskip("optax")
    common = ["schedule_free_sgd", "optax.contrib:schedule_free_sgd", "--variant", "warmup=schedule", "--map", "momentum=b1"]
    path = tmp_path / "zero.json"
    code, out, _ = run_cli(capsys, *common, "--no-behaviour", "--quiet", "--json", str(path))
    assert code == 1, f"warmup_steps=0 freezes optax's schedule-free SGD (lr 0); output:\n{out}"
    doc = json.loads(path.read_text())
    status = {(c["case"], c["dtype"]): c["status"] for c in doc["cases"]}
    assert status[("defaults", "float64")] == "fails" and status[("knobs", "float64")] == "conforms", status
    path = tmp_path / "warm.json"
    code, out, _ = run_cli(capsys, *common, "--hyper", "warmup_steps=4", "--no-behaviour", "--quiet", "--json", str(path))
    assert code == 0, f"with warmup in every case optax's schedule-free SGD conforms to warmup=schedule; output:\n{out}"
