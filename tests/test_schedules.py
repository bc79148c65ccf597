"""Schedule specs, their golden vectors, the check harness, and a schedule driving a rule.

Anchors are values that follow from the schedules' definitions (conventions.md §14), written
here by hand, not taken from an implementation under test.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from optspec.cases import make_inputs
from optspec.errors import GoldenError, SpecError
from optspec.golden import check_all, write_all
from optspec.impls.schedule_base import ScheduleBinding, ScheduleCheck, ScheduleRun, run_schedule_check
from optspec.schedules import (
    ScheduleLibrary,
    compare_schedule,
    evaluate_schedule,
    parse_schedule,
    read_schedule_golden,
    schedule_golden_dir,
    schedule_horizon,
    schedule_ref,
)
from optspec.spec import SpecLibrary, parse_spec

GOLDEN_ROOT = Path(__file__).parent.parent / "conformance" / "golden"
GOLDEN = schedule_golden_dir(GOLDEN_ROOT)
LIB = ScheduleLibrary()


def values(name: str, variant: dict[str, str] | None = None, **hyper: float) -> np.ndarray:
    spec = LIB.get(name)
    resolved = spec.resolve(variant or {})
    h = spec.hyper_values(hyper)
    return evaluate_schedule(resolved, h, 2 * schedule_horizon(resolved, h) + 1).lr


def test_golden_vectors_are_current() -> None:
    problems = check_all(LIB.all(), GOLDEN_ROOT)
    assert not problems, "stale schedule golden files (run `optspec golden`): " + "; ".join(problems)


def test_onecycle_torch_and_optax_boundaries() -> None:
    torch_conv = values("onecycle")
    optax_conv = values("onecycle", {"convention": "optax"})
    assert torch_conv[0] == pytest.approx(0.1 / 25, rel=1e-15), f"torch convention starts at max_lr/div: {torch_conv[0]}"
    assert abs(torch_conv[29] - 0.1) < 1e-15, f"torch convention peaks at pct*T - 1 = 29: value {torch_conv[29]}"
    assert torch_conv[99] == pytest.approx(0.1 / 25 / 1e4, rel=1e-12), f"torch convention ends at T - 1: {torch_conv[99]}"
    assert len(torch_conv) == 101, f"torch convention is defined up to index T = 100 only, got {len(torch_conv)} values"
    assert optax_conv[30] == pytest.approx(0.1, rel=1e-15), f"optax convention peaks at int(pct*T) = 30: {optax_conv[30]}"
    assert optax_conv[29] < 0.1 - 1e-6, f"optax convention is still rising at 29: {optax_conv[29]}"
    assert np.all(optax_conv[100:] == 0.1 / 25 / 1e4), "optax convention holds the final value from T on"


def test_cosine_past_end_conventions() -> None:
    clamped = values("cosine", eta_min=1e-3)
    periodic = values("cosine", {"past_end": "periodic"}, eta_min=1e-3)
    recursive = values("cosine", {"past_end": "recursive"}, eta_min=1e-3)
    assert clamped[50] == pytest.approx(1e-3, rel=1e-12) and np.all(clamped[50:] == clamped[50]), "clamped holds eta_min"
    assert periodic[100] == pytest.approx(0.1, rel=1e-14), f"periodic is back at lr at 2*T_max: {periodic[100]}"
    assert np.max(np.abs(recursive - periodic) / periodic) < 1e-12, "the recursion equals the closed form up to rounding"
    assert not np.array_equal(recursive, periodic), "the recursive form must round differently (the point of the variant)"


def test_multistep_milestone_index_uses_decayed_value() -> None:
    v = values("multistep")
    assert (v[29], v[30], v[79], v[80]) == (0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1), f"milestones at 30 and 80: {v[28:32]}"


def test_schedule_drives_rule_with_index_t_minus_1() -> None:
    spec = SpecLibrary().get("adamw")
    case = spec.case("multistep_schedule")
    inputs = make_inputs(spec, case)
    assert inputs.schedule is not None and inputs.schedule.name == "multistep", "the case must name its schedule spec"
    expected = np.where(np.arange(100) < 30, 1.0, np.where(np.arange(100) < 70, 0.3, 0.3 * 0.3))
    assert np.allclose(inputs.lr_multipliers, expected, rtol=1e-15, atol=0), (
        f"s_t = value[t-1] / lr: step 31 is the first decayed one; got s_30..s_32 = {inputs.lr_multipliers[29:32]}"
    )


SCHEDULE_TOML = """
name = "bad"
title = "t"
references = [{ title = "r" }]
horizon = "T"
phases = [ { label = "all", lr = "lr * nosuch" } ]
[hyper.lr]
default = 0.1
domain = "[0, inf)"
doc = "lr"
[hyper.T]
default = 5
domain = "[1, inf)"
doc = "T"
"""


def test_schedules_and_rules_go_through_one_loader(tmp_path: Path) -> None:
    """The same defect in a rule file and a schedule file gets the same one-line message."""
    rule_text = (Path(__file__).parent.parent / "specs" / "sgd.toml").read_text()
    schedule_text = (Path(__file__).parent.parent / "specs" / "schedules" / "cosine.toml").read_text()
    for kind, text, load in (("rule", rule_text, SpecLibrary), ("schedule", schedule_text, ScheduleLibrary)):
        directory = tmp_path / kind
        directory.mkdir()
        (directory / "other.toml").write_text(text)
        with pytest.raises(SpecError) as info:
            load([directory], include_packaged=False).get("other")
        message = str(info.value)
        assert f"the {kind} is named" in message and "'other.toml'; they must agree" in message, f"{kind}: {message}"
        (directory / "other.toml").write_bytes(b"name = '\xff'\n")
        with pytest.raises(SpecError) as info:
            load([directory], include_packaged=False).get("other")
        assert "is not UTF-8 text" in str(info.value) and "other.toml" in str(info.value), f"{kind}: {info.value}"
    shadow = SCHEDULE_TOML.replace("[hyper.T]", "[hyper.n]").replace('horizon = "T"', 'horizon = "n"')
    with pytest.raises(SpecError, match="hyperparameter 'n' shadows a built-in name"):
        parse_schedule(shadow, "<bad>")


def test_one_writer_and_checker_for_rules_and_schedules(tmp_path: Path) -> None:
    """golden.write_all puts a schedule's file under schedules/; check_all names the stale test."""
    (path,) = write_all([LIB.get("cosine")], tmp_path)
    assert path == tmp_path / "schedules" / "cosine.json", f"a schedule's golden file belongs in schedules/, not {path}"
    assert check_all([LIB.get("cosine")], tmp_path) == [], "a file just written must be current"
    doc = json.loads(path.read_text())
    doc["testGroups"][0]["tests"][0]["count"] += 1
    path.write_text(json.dumps(doc))
    (problem,) = check_all([LIB.get("cosine")], tmp_path)
    first = doc["testGroups"][0]["tests"][0]["name"]
    assert "out of date" in problem and repr(first) in problem, f"the stale test must be named: {problem}"


def test_bad_schedule_spec_names_file_phase_and_name() -> None:
    with pytest.raises(SpecError) as info:
        parse_schedule(SCHEDULE_TOML, "<bad>")
    assert "phase 'all' lr" in str(info.value) and "unknown name 'nosuch'" in str(info.value), str(info.value)
    with pytest.raises(SpecError) as info:
        parse_schedule(SCHEDULE_TOML.replace("nosuch", "1").replace("[hyper.T]", "[hyper.T2]"), "<bad>")
    assert "horizon" in str(info.value) and "'T'" in str(info.value), str(info.value)


def test_bad_case_schedule_is_a_one_line_spec_error() -> None:
    text = (Path(__file__).parent.parent / "specs" / "adamw.toml").read_text()
    for schedule, message in [
        ('{ name = "nosuch" }', "unknown schedule 'nosuch'"),
        ('{ name = "multistep", hyper = { gamma = -1 } }', "outside its domain"),
        ('{ name = "multistep", hyper = { lr = 1 } }', "schedule hyper 'lr' is the rule's lr"),
    ]:
        bad = text.replace(
            'schedule = { name = "multistep", hyper = { first = 30, second = 70, gamma = 0.3 } }', f"schedule = {schedule}"
        )
        with pytest.raises(SpecError) as info:
            parse_spec(bad, "<adamw>")
        assert "case 'multistep_schedule'" in str(info.value) and message in str(info.value), str(info.value)
        assert "\n" not in str(info.value), "errors are one line"


def test_tampered_schedule_golden_is_refused(tmp_path: Path) -> None:
    doc = json.loads((GOLDEN / "cosine.json").read_text())
    doc["testGroups"][0]["tests"][0]["atol"]["float64"]["lr"][3] *= 2
    path = tmp_path / "cosine.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GoldenError, match="content hash mismatch"):
        read_schedule_golden(path, LIB.get("cosine"))


def test_comparison_catches_one_ulp_scale_error_and_says_where() -> None:
    golden = read_schedule_golden(GOLDEN / "cosine.json", LIB.get("cosine"))
    test = golden.tests[0]
    good = test.expected["lr"].copy()
    assert compare_schedule(test, {"lr": good}, "float64", "ctx").ok, "the golden values themselves must pass"
    shifted = np.roll(good, 1)  # an off-by-one index convention
    result = compare_schedule(test, {"lr": shifted}, "float64", "ctx")
    assert not result.ok and "index n=0 (step t=1)" in result.message, result.message


class _NeverRefuses:
    """A fake implementation that extrapolates past OneCycleLR's end instead of raising."""

    name = "fake"
    dtypes = ("float64",)

    def unavailable(self) -> str | None:
        return None

    def binding(self, schedule: str) -> ScheduleBinding:
        return ScheduleBinding(
            schedule,
            "fake",
            {"convention": frozenset({"torch"}), "phases": frozenset({"two"}), "anneal": frozenset({"cos"})},
            lambda h, v: None,
        )

    def run(self, binding, test, variant, dtype) -> ScheduleRun:  # type: ignore[no-untyped-def]
        return ScheduleRun({"lr": [*test.expected["lr"], 0.0]})


def test_undefined_indices_must_be_refused() -> None:
    golden = read_schedule_golden(GOLDEN / "onecycle.json", LIB.get("onecycle"))
    test = golden.find("defaults", {"convention": "torch", "phases": "two", "anneal": "cos"})
    assert test is not None and test.defined_until == 101, "torch's one-cycle is defined for n <= total_steps"
    result = run_schedule_check(ScheduleCheck(LIB.get("onecycle"), _NeverRefuses(), test, "float64", golden))
    assert result.status == "fails" and "must raise" in result.message, result.message


def _schedule_knob_pairs() -> list[tuple[str, str, str, str]]:
    return [
        (spec.name, knob.name, a, b)
        for spec in LIB.all()
        for knob in spec.knobs.values()
        for a, b in itertools.combinations(knob.values, 2)
    ]


def _same_function(spec, knob: str, a: str, b: str) -> bool:
    values = spec.knobs[knob].values
    return values[a].same_function_as == b or values[b].same_function_as == a


@pytest.mark.parametrize(("schedule", "knob", "a", "b"), _schedule_knob_pairs(), ids=lambda x: str(x))
def test_every_schedule_variant_pair_is_discriminated(schedule: str, knob: str, a: str, b: str) -> None:
    """Some golden case separates every pair of knob values by >= 100x the float32 tolerance.

    A value declared ``same_function_as`` another computes the same function in exact
    arithmetic (only its rounding, hence its budget, differs): for such a pair the converse
    must hold, so that the declaration cannot hide a real difference.
    """
    spec = LIB.get(schedule)
    if _same_function(spec, knob, a, b):
        golden = read_schedule_golden(GOLDEN / f"{schedule}.json", spec)
        default = spec.default_variant()
        for case in spec.cases:
            ta = golden.find(case.id, {**default, knob: a})
            tb = golden.find(case.id, {**default, knob: b})
            assert ta is not None and tb is not None, f"{schedule}: no golden test for {knob}={a} or {knob}={b} in {case.id}"
            assert ta.defined == tb.defined, f"{schedule}: {knob}={a} and {knob}={b} are defined on different indices"
            gap = np.abs(ta.expected["lr"] - tb.expected["lr"])
            budget = 100 * np.maximum(ta.atol["float64"]["lr"], tb.atol["float64"]["lr"])
            assert np.all(gap <= budget), (
                f"{schedule}: {knob}={a} is declared the same function as {knob}={b}, but case {case.id} index "
                f"{int(np.argmax(gap - budget))} differs by {float(gap.max()):.3e} (> 100x the float64 budget)"
            )
        return
    golden = read_schedule_golden(GOLDEN / f"{schedule}.json", spec)
    default = spec.default_variant()
    best, where = 0.0, "no common case"
    for case in spec.cases:
        ta = golden.find(case.id, {**default, knob: a})
        tb = golden.find(case.id, {**default, knob: b})
        assert ta is not None and tb is not None, f"{schedule}: no golden test for {knob}={a} or {knob}={b} in case {case.id}"
        n = min(ta.defined, tb.defined)
        gap = np.abs(ta.expected["lr"][:n] - tb.expected["lr"][:n])
        budget = ta.atol["float32"]["lr"][:n]
        ratios = np.where(budget > 0, gap / np.where(budget > 0, budget, 1.0), np.where(gap > 0, np.inf, 0.0))
        if n and float(ratios.max()) > best:
            best, where = float(ratios.max()), f"case {case.id} index {int(ratios.argmax())}"
        if ta.defined != tb.defined:
            best, where = np.inf, f"case {case.id}: defined for {ta.defined} vs {tb.defined} indices"
    assert best >= 100, (
        f"{schedule}: {knob}={a} and {knob}={b} are separated by only {best:.3g}x the float32 budget (best: {where})"
    )


# --------------------------------------------------------------------------- carried state and input sequences

_PLATEAU = "reduce_on_plateau"


def _plateau(variant: dict[str, str], losses: list[float], **hyper: float) -> list[float]:
    spec = LIB.get(_PLATEAU)
    resolved = spec.resolve(variant)
    h = spec.hyper_values({"factor": 0.5, "patience": 2, "rtol": 0.1, "cooldown": 0, **hyper})
    return [float(x) for x in evaluate_schedule(resolved, h, len(losses), inputs={"loss": losses}).lr]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # torch cuts after patience + 1 = 3 bad losses (L1, L2, L3) and the cut sets the lr of the next index
        ({"convention": "torch", "timing": "next_step"}, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]),
        # optax cuts at patience = 2 bad losses (L1, L2) and scales the update that was fed L2
        ({"convention": "optax", "timing": "same_step"}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]),
        ({"convention": "optax", "timing": "next_step"}, [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ({"convention": "torch", "timing": "same_step"}, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]),
    ],
    ids=lambda x: ",".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else "",
)
def test_plateau_cut_index_follows_each_convention(variant: dict[str, str], expected: list[float]) -> None:
    """A flat loss: hand-derived from the definitions (torch bad > patience, optax bad == patience)."""
    got = _plateau(variant, [1.0] * 7)
    assert got == pytest.approx(expected, rel=1e-15), f"{variant}: lr {got}, expected {expected} on a flat loss"


def test_plateau_cooldown_delays_the_next_count() -> None:
    """cooldown = 2 after the cut that follows L3: L4 and L5 are not counted, L6-L8 are, so the next cut sets lr[9]."""
    got = _plateau({"convention": "torch", "timing": "next_step"}, [1.0] * 10, cooldown=2)
    expected = [0.1] * 4 + [0.05] * 5 + [0.025]
    assert got == pytest.approx(expected, rel=1e-15), f"cooldown 2: lr {got}, expected {expected}"
    improving = _plateau({"convention": "torch", "timing": "next_step"}, [1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    assert improving == [0.1] * 6, f"losses improving by more than rtol = 10% must never cut, got {improving}"


def test_plateau_inputs_are_checked_and_cannot_drive_a_rule() -> None:
    spec = LIB.get(_PLATEAU)
    resolved = spec.resolve({})
    with pytest.raises(SpecError) as info:
        evaluate_schedule(resolved, spec.hyper_values({}), 7, inputs={"loss": [1.0] * 3})
    assert "input 'loss'" in str(info.value) and "3 values" in str(info.value), str(info.value)
    with pytest.raises(SpecError) as info:
        schedule_ref({"name": _PLATEAU}, 0.1, "case 'x'", LIB)
    assert "reads the input sequence loss" in str(info.value) and "\n" not in str(info.value), str(info.value)


_STATEFUL_TOML = """
name = "counter"
title = "t"
references = [ { title = "t" } ]
horizon = "T"
state = [ "c = 0" ]
phases = [ { label = "all", lr = "lr * c" } ]
next = [ "c = c + step" ]

[hyper.lr]
default = 1.0
domain = "[0, inf)"
doc = "d"

[hyper.T]
default = 3
domain = "[1, inf)"
integer = true
doc = "d"

[hyper.step]
default = 2.0
domain = "(0, inf)"
doc = "d"
"""


def test_state_carries_across_indices_and_bad_state_is_a_spec_error() -> None:
    spec = parse_schedule(_STATEFUL_TOML, "<counter>")
    got = evaluate_schedule(spec.resolve({}), spec.hyper_values({}), 4).lr
    assert list(got) == [0.0, 2.0, 4.0, 6.0], f"c starts at 0 and grows by step after each index, got {list(got)}"
    for old, new, message in [
        ('next = [ "c = c + step" ]', 'next = [ "step = c + 1" ]', "'step' is not a state name"),
        ('next = [ "c = c + step" ]', 'next = [ "c = c + nosuch" ]', "unknown name 'nosuch'"),
        ('state = [ "c = 0" ]', 'state = [ "c = n" ]', "state 'c'"),
    ]:
        with pytest.raises(SpecError) as info:
            parse_schedule(_STATEFUL_TOML.replace(old, new), "<counter>")
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(SpecError) as info:
        parse_schedule(_STATEFUL_TOML + '\n[[cases]]\nid = "x"\ncomment = "c"\ninputs = { loss = [1.0] }\n', "<counter>")
    assert "unknown input 'loss'" in str(info.value), str(info.value)


def test_sgdr_restarts_at_cumulative_cycle_lengths() -> None:
    """T_0 = 10, T_mult = 2: restarts at 10, 30, 70 (torch keeps restarting; optax holds eta_min after 3 cycles)."""
    restart = values("sgdr")
    hold = values("sgdr", {"past_end": "hold"})
    for n in (0, 10, 30, 70):
        assert restart[n] == 0.1, f"index {n} starts a cycle, lr {restart[n]} != 0.1"
    assert restart[9] == pytest.approx(0.05 * (1 + np.cos(np.pi * 9 / 10)), rel=1e-15), "T_cur = 9 of T_i = 10"
    assert restart[50] == pytest.approx(0.05 * (1 + np.cos(np.pi * 20 / 40)), rel=1e-15), "T_cur = 20 of T_i = 40"
    assert np.all(hold[70:] == 0.0) and np.array_equal(hold[:70], restart[:70]), "hold parts from restart at n = 70 only"
