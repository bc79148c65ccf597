"""Behavioural checks beyond the golden trajectories (bug classes of the catalogue).

Each check builds a scenario from the rule's ``knobs`` case (its ``defaults`` case when
there is none), runs the target on it in the worker and compares with the float64
reference of the claimed variant under the error model (:mod:`optspec.tolerance`).
Every check reports ``passed``, ``failed``, ``not applicable`` (with why) or ``skipped``.

=================  ===========================================================================
check              what must hold
=================  ===========================================================================
hyperparameters    changing any hyperparameter the target accepts (and any variant flag it
                   accepts) changes the result whenever it changes the reference's (flags
                   accepted and ignored: A8, A9, F5)
maximize           ``maximize=True`` follows the reference with maximize=on (ascends; F3, F4)
zero_gradients     gradients with exact zeros (some elements at step 1, everything later)
                   follow the reference and stay finite (B4, B13, A12)
none_gradients     a parameter whose ``.grad`` is None on some steps does not move and its
                   state and step counter do not advance (torch; A12, B5)
param_groups       two groups with different hyperparameters each follow their own reference
                   (nothing leaks between groups; B8, H4); a failure names the hyperparameter
                   whose per-group value is ignored when reverting it explains the run
param_groups_lr    two groups that differ only in lr each follow their own reference (a step
                   size cached across groups)
grad_unchanged     ``step()`` leaves ``p.grad`` as it was given (no weight decay or momentum
                   added into the gradient; torch)
state_dict         save after k steps, a new optimizer loads it and continues: bit-identical
                   to the uninterrupted run (torch; H2, H3, B7, J1)
non_finite         NaN and inf in a gradient make exactly the elements the reference makes
                   non-finite, non-finite (no silent repair, no crash, no leak; C2, K2). For
                   rules that take sign(...) (Lion) the reference's sign(NaN) is NaN, so the
                   element must become NaN; an element that freezes while its state holds the
                   NaN (torch.sign(NaN) == 0) is reported as such
zero_init          zero-initialised parameters move (rules whose step takes a norm of theta,
                   the LAMB/LARS trust-ratio guard; D1)
bfloat16           bfloat16 parameters follow the reference within the bfloat16 profile of
                   the error model (see :mod:`optspec.checking.expected`; B3, J2)
=================  ===========================================================================

A failed check whose failing comparisons all pass under the numeric finding of the cases
(the arithmetic of "computes in float32", or the variant the diagnosis names) follows from
that finding: it is marked ``follows`` and reported under the diagnosis, not on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from optspec.cases import make_inputs
from optspec.checking.expected import bfloat16_type, truncate
from optspec.checking.results import COMPUTES_IN_FLOAT32, FLOAT32_PROFILES, BehaviourResult, CheckReport
from optspec.checking.targets import Scenario
from optspec.checking.worker import TargetFailure
from optspec.conformance import Comparison, compare, compare_with_registry
from optspec.errors import SpecError
from optspec.expr import REDUCTIONS, Binary, Call, Expr, Name, Unary
from optspec.golden import GoldenTest
from optspec.reference import FLOAT64, CaseInputs, Trajectory
from optspec.spec import Hyper

if TYPE_CHECKING:
    from optspec.checking.runner import Session


def _result(name: str, status: str, message: str) -> BehaviourResult:
    return BehaviourResult(name, status, message)


def base_case(session: Session, case_id: str | None = None) -> tuple[str, dict[str, float], CaseInputs]:
    """The rule's ``knobs`` case (else ``defaults``) with the --hyper overrides, constant lr."""
    spec = session.spec
    ids = [c.id for c in spec.cases]
    case = spec.case(case_id or ("knobs" if "knobs" in ids else "defaults"))
    from dataclasses import replace

    merged = replace(case, hyper={**case.hyper, **session.overrides})
    inputs = make_inputs(spec, merged)
    inputs = CaseInputs(inputs.params, inputs.grads, np.ones_like(inputs.lr_multipliers))
    hyper = session.hyper_for(case.hyper)
    for name in hyper:
        # A hyperparameter the target does not take is held at the spec default, which the
        # target is assumed to implement (the note says so), so that the checks still run.
        if not session.naming.accepts(name, session.variant) and name not in session.overrides:
            hyper[name] = spec.hyper[name].default
    for names in session.naming.ties(session.variant).values():
        # Tied hyperparameters (--map eps_root=eps) take one value: the first one's.
        for other in names[1:]:
            hyper[other] = hyper[names[0]]
    return case.id, hyper, inputs


def choose_dtype(report: CheckReport) -> str:
    """float64 when the target ran the float64 cases, else float32."""
    ran64 = any(c.dtype == "float64" and c.status in ("conforms", "deviation") for c in report.cases)
    ran64 = ran64 or any(c.dtype == "float64" and c.failure == "numeric" for c in report.cases)
    return "float64" if ran64 else "float32"


def perturb(hyper: Hyper, value: float) -> float:
    """Another value in the hyperparameter's domain: 0 -> 0.1, bounded -> halfway up, else x2."""
    domain = hyper.domain
    if value == 0:
        options = [0.1, 1.0, 0.5 * domain.high if math.isfinite(domain.high) else 1.0]
    elif math.isfinite(domain.high):
        options = [value + (domain.high - value) / 2, value / 2]
    else:
        options = [2 * value, value / 2]
    for option in options:
        option = float(round(option)) if domain.integer else option
        if option != value and domain.contains(option):
            return option
    return value


def _identical(a: Trajectory, b: Trajectory) -> bool:
    for step in a:
        if step not in b:
            return False
        for x, y in zip(a[step], b[step]):
            if not np.array_equal(x["theta"], y["theta"], equal_nan=True):
                return False
    return True


def _select(trajectory: Trajectory, index: int, steps: Mapping[int, int] | None = None) -> Trajectory:
    """Tensor ``index`` of a trajectory as a one-tensor trajectory, steps renamed by ``steps``."""
    mapping = steps or {s: s for s in trajectory}
    return {new: [trajectory[old][index]] for old, new in mapping.items() if old in trajectory}


def _one(inputs: CaseInputs, index: int, present: np.ndarray | None = None) -> CaseInputs:
    grads = inputs.grads[index] if present is None else inputs.grads[index][present]
    steps = grads.shape[0]
    return CaseInputs((inputs.params[index],), (grads,), inputs.lr_multipliers[:steps])


class Checker:
    """Runs the behavioural checks of one session."""

    def __init__(self, session: Session, report: CheckReport) -> None:
        self.s = session
        self.spec = session.spec
        self.report = report
        self.dtype = choose_dtype(report)
        self.case, self.hyper, self.inputs = base_case(session)
        # The numeric finding of the cases, by which a failed comparison may be explained.
        self.finding_profiles: tuple[str, ...] = ()
        self.finding_variant: Mapping[str, str] | None = None
        self.finding = ""
        diagnosis = report.diagnosis
        if any(c.finding == COMPUTES_IN_FLOAT32 for c in report.cases):
            self.finding_profiles, self.finding = FLOAT32_PROFILES, COMPUTES_IN_FLOAT32
        elif diagnosis is not None and diagnosis.matches and diagnosis.matches[0].same_rule:
            if not any(c.flag for c in report.cases if c.status == "fails"):
                self.finding_variant = dict(diagnosis.matches[0].variant)
                self.finding = diagnosis.matches[0].label
        self.explained = 0
        self.unexplained = 0

    def expected_compare(
        self,
        hyper: Mapping[str, float],
        inputs: CaseInputs,
        observed: Trajectory,
        tag: str,
        variant: Mapping[str, str] | None = None,
        profile: str | None = None,
        bfloat16: str | None = None,
        counts: bool = True,
    ) -> Comparison:
        record = sorted(observed)
        # Measure only the budgets this comparison (and a finding's explanation) reads.
        judged = profile or self.dtype
        # float32_scalar32 too for float32: a registered [[precision]] deviation is judged there.
        extra = ("float32_scalar32",) if judged == "float32" else ()
        wanted = [p for p in (judged, *extra, *self.finding_profiles) if p != "bfloat16"]
        test = self.s.expectations.test(
            self.spec,
            variant or self.s.variant,
            hyper,
            inputs,
            record,
            f"behaviour:{tag}",
            bfloat16=bfloat16,
            profiles=tuple(dict.fromkeys(wanted)),
        )
        # The library's registered arithmetic applies as in the cases (torch NAdam's float32 mu_product).
        comparison, _, _ = compare_with_registry(self.spec, self.s.info.origin, test, observed, judged, f"{tag}")
        if not comparison.ok and counts:
            if self._explained_by_finding(test, hyper, inputs, observed, variant, profile):
                self.explained += 1
            else:
                self.unexplained += 1
        return comparison

    def _explained_by_finding(
        self,
        test: GoldenTest,
        hyper: Mapping[str, float],
        inputs: CaseInputs,
        observed: Trajectory,
        variant: Mapping[str, str] | None,
        profile: str | None,
    ) -> bool:
        """Whether the numeric finding of the cases accounts for this failed comparison."""
        if profile is not None and profile != self.dtype:
            return False
        if self.finding_profiles:
            return any(compare(test, observed, p, "").ok for p in self.finding_profiles)
        if self.finding_variant is not None:
            changed = {k: v for k, v in (variant or self.s.variant).items() if self.s.variant.get(k) != v}
            other = {**self.finding_variant, **changed}
            record = sorted(observed)
            alternative = self.s.expectations.test(
                self.spec, other, hyper, inputs, record, "behaviour:finding", profiles=(self.dtype,)
            )
            return compare(alternative, observed, self.dtype, "").ok
        return False

    def run(self, scenario: Scenario | str) -> Trajectory | str:
        if isinstance(scenario, str):
            return f"not expressible: {scenario}"
        return self.s.run(scenario)

    # ------------------------------------------------------------------ checks

    def hyperparameters(self) -> BehaviourResult:
        name = "hyperparameters"
        inputs = truncate(self.inputs, 10)
        record = [10]
        base = self.s.scenario(self.hyper, inputs, self.dtype, record)
        if isinstance(base, str):
            return _result(name, "skipped", f"the base configuration is not expressible: {base}")
        base_obs = self.s.run(base)
        profile = self.dtype
        problems: list[str] = []
        checked: list[str] = []
        invisible: list[str] = []
        unaccepted: list[str] = []

        def reference_moves(h2: Mapping[str, float], variant2: Mapping[str, str]) -> float | None:
            ref_a = self.s.expectations.test(
                self.spec, self.s.variant, self.hyper, inputs, record, "behaviour:sensitivity", profiles=(profile,)
            )
            ref_b = self.s.expectations.reference(self.spec, variant2, h2, inputs, FLOAT64, "behaviour:sensitivity")
            comparison = compare(ref_a, ref_b, profile, "reference", ["theta"])
            if comparison.ok:
                return None
            return max(float(np.max(np.abs(a["theta"] - b["theta"]), initial=0.0)) for a, b in zip(ref_a.expected[10], ref_b[10]))

        ties = self.s.naming.ties(self.s.variant)
        for hname, hyper in self.spec.hyper.items():
            keyword = self.s.naming.keyword(hname, self.s.variant)
            if not self.s.naming.accepts(hname, self.s.variant):
                unaccepted.append(keyword)
                continue
            tied = ties.get(keyword, [hname])
            if tied[0] != hname:
                continue  # a tied hyperparameter is varied with the first of its keyword
            new = perturb(hyper, self.hyper[hname])
            if new == self.hyper[hname]:
                continue
            h2 = {**self.hyper, **dict.fromkeys(tied, new)}
            if len(tied) > 1:
                hname = " = ".join(tied)
            moved = reference_moves(h2, self.s.variant)
            if moved is None:
                invisible.append(hname)
                continue
            try:
                observed = self.run(self.s.scenario(h2, inputs, self.dtype, record))
            except TargetFailure as exc:
                problems.append(f"changing {keyword!r} (spec {hname}) to {new:g} made the target fail: {exc.message}")
                continue
            if isinstance(observed, str):
                continue
            checked.append(keyword if len(tied) == 1 else f"{keyword} ({hname})")
            if _identical(base_obs, observed):
                problems.append(
                    f"{keyword!r} (spec {hname}) is accepted but ignored: changing it from {self.hyper[hname]:g} to {new:g} "
                    f"left every parameter bit-identical after 10 steps, while the reference moves by up to {moved:.3g}"
                )
        for knob_name, knob in self.spec.knobs.items():
            for value in knob.values:
                if value == self.s.variant[knob_name]:
                    continue
                support = self.s.naming.knob_support(knob_name, value)
                if support is None or not support.kwargs:
                    continue
                keywords = [self.s.naming.maps.get(k, k) for k in support.kwargs]
                if not all(self.s.info.accepts(k) for k in keywords):
                    continue
                if not all(r.holds(self.hyper) for r in support.requires):
                    continue
                variant2 = {**self.s.variant, knob_name: value}
                moved = reference_moves(self.hyper, variant2)
                if moved is None:
                    continue
                scenario = self.s.scenario(self.hyper, inputs, self.dtype, record, variant=variant2)
                try:
                    observed = self.run(scenario)
                except TargetFailure as exc:
                    problems.append(f"setting {', '.join(keywords)} for {knob_name}={value} failed: {exc.message}")
                    continue
                if isinstance(observed, str):
                    continue
                checked.append(", ".join(f"{k}={support.kwargs[k]!r}" for k in support.kwargs))
                if _identical(base_obs, observed):
                    settings = ", ".join(f"{k}={v!r}" for k, v in support.kwargs.items())
                    problems.append(
                        f"{settings} (variant {knob_name}={value}) is accepted but ignored: the parameters after 10 "
                        f"steps are bit-identical to {knob_name}={self.s.variant[knob_name]}, while the reference moves "
                        f"by up to {moved:.3g}"
                    )
        if problems:
            return _result(name, "failed", "; ".join(problems))
        detail = f"each of {', '.join(checked)} changes the result" if checked else "nothing to vary"
        if invisible:
            detail += f"; not checked (the reference itself does not change on this case): {', '.join(invisible)}"
        if unaccepted:
            detail += f"; not accepted by the target: {', '.join(unaccepted)}"
        return _result(name, "passed" if checked else "not applicable", detail)

    def maximize(self) -> BehaviourResult:
        name = "maximize"
        knob = self.spec.knobs.get("maximize")
        if knob is None or "on" not in knob.values:
            return _result(name, "not applicable", f"rule {self.spec.name} has no maximize variant")
        support = self.s.naming.knob_support("maximize", "on")
        keywords = [self.s.naming.maps.get(k, k) for k in (support.kwargs if support else {})]
        if not keywords or not all(self.s.info.accepts(k) for k in keywords):
            return _result(name, "not applicable", "the target takes no maximize argument")
        inputs = truncate(self.inputs, 5)
        record = [1, 2, 5]
        on = {**self.s.variant, "maximize": "on"}
        observed = self.run(self.s.scenario(self.hyper, inputs, self.dtype, record, variant=on))
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        comparison = self.expected_compare(self.hyper, inputs, observed, "maximize", on)
        if comparison.ok:
            return _result(name, "passed", "maximize=True follows the reference of maximize=on (ascends)")
        off = {**self.s.variant, "maximize": "off"}
        descends = self.expected_compare(self.hyper, inputs, observed, "maximize-off", off, counts=False)
        if descends.ok:
            return _result(name, "failed", "maximize=True is ignored: the target descends exactly as with maximize=False")
        return _result(name, "failed", f"with maximize=True: {comparison.message}")

    def zero_gradients(self) -> BehaviourResult:
        name = "zero_gradients"
        steps = 6
        # The defaults case: with L2 decay, lambda * theta would hide the zero gradient.
        _, hyper, inputs = base_case(self.s, "defaults")
        inputs = truncate(inputs, steps)
        grads = [g.copy() for g in inputs.grads]
        for g in grads:
            g[2:] = 0.0
        grads[4].reshape(steps, -1)[0, :3] = 0.0
        grads[2][:2, 0] = 0.0
        inputs = CaseInputs(inputs.params, tuple(grads), inputs.lr_multipliers)
        record = list(range(1, steps + 1))
        observed = self.run(self.s.scenario(hyper, inputs, self.dtype, record))
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        reference = self.s.expectations.reference(self.spec, self.s.variant, hyper, inputs, FLOAT64, "behaviour:zero gradients")
        for step in record:
            for index, (want, got) in enumerate(zip(reference[step], observed[step])):
                for slot, value in got.items():
                    bad = ~np.isfinite(value) & np.isfinite(want[slot])
                    if np.any(bad):
                        return _result(
                            name,
                            "failed",
                            f"with zero gradients: {slot} of tensor {index} {list(np.shape(value))} became non-finite "
                            f"({value.reshape(-1)[int(np.argmax(bad.reshape(-1)))]!s}) at step {step} "
                            "where the reference is finite",
                        )
        comparison = self.expected_compare(hyper, inputs, observed, "zero gradients")
        if comparison.ok:
            return _result(name, "passed", "zero gradient elements and all-zero steps follow the reference and stay finite")
        return _result(name, "failed", f"with zero gradients (some elements at step 1, all from step 3): {comparison.message}")

    def none_gradients(self) -> BehaviourResult:
        name = "none_gradients"
        if self.s.info.kind != "torch":
            return _result(name, "not applicable", "optax has no per-parameter None gradient")
        if self.s.inner_info is not None:
            return _result(
                name,
                "not applicable",
                "a wrapper counts optimizer steps for every parameter (its synchronisation does not skip a None gradient)",
            )
        steps = 6
        full = truncate(self.inputs, steps)
        inputs = CaseInputs((full.params[2], full.params[3]), (full.grads[2], full.grads[3]), full.lr_multipliers)
        present_b = np.array([True, False, False, True, True, True])
        present = (np.ones(steps, dtype=bool), present_b)
        record = list(range(1, steps + 1))
        observed = self.run(self.s.scenario(self.hyper, inputs, self.dtype, record, present=present))
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        a = self.expected_compare(self.hyper, _one(inputs, 0), _select(observed, 0), "none-grad A")
        if not a.ok:
            return _result(name, "failed", f"the parameter that always has a gradient: {a.message}")
        for step in (2, 3):
            for slot, value in observed[step][1].items():
                before = observed[1][1].get(slot)
                if before is None or not np.array_equal(before, value, equal_nan=True):
                    return _result(
                        name,
                        "failed",
                        f"{slot} of a parameter whose grad is None at steps 2 and 3 changed at step {step} "
                        f"(max change {float(np.max(np.abs(value - before))) if before is not None else float('nan'):.3g}); "
                        "it must be left alone",
                    )
        mapping = {1: 1, 4: 2, 5: 3, 6: 4}
        b = self.expected_compare(self.hyper, _one(inputs, 1, present_b), _select(observed, 1, mapping), "none-grad B")
        if not b.ok:
            return _result(
                name,
                "failed",
                "after grad=None at steps 2-3 the parameter must continue as if those steps did not happen "
                f"(its own step counter t = 2 at step 4): {b.message}",
            )
        return _result(name, "passed", "a parameter with grad None is left alone and its step counter does not advance")

    def _two_groups(self, name: str, second: Mapping[str, float], changed: Sequence[str], explain: bool) -> BehaviourResult:
        """Run two one-tensor groups (the first with the base hyperparameters) and compare each with its reference."""
        steps = 10
        full = truncate(self.inputs, steps)
        inputs = CaseInputs((full.params[2], full.params[3]), (full.grads[2], full.grads[3]), full.lr_multipliers)
        record = [1, 2, 3, 10]
        observed = self.run(self.s.scenario(self.hyper, inputs, self.dtype, record, groups=[((0,), self.hyper), ((1,), second)]))
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        what = f"two groups ({', '.join(changed)} in the second)"
        for index, (hyper, label) in enumerate(((self.hyper, "first"), (second, "second"))):
            comparison = self.expected_compare(hyper, _one(inputs, index), _select(observed, index), f"{label} group")
            if comparison.ok:
                continue
            if explain and index == 1:
                ignored = self._ignored_per_group(second, _one(inputs, 1), _select(observed, 1))
                if ignored:
                    return _result(name, "failed", f"{what}: {ignored}")
            return _result(name, "failed", f"{what}: {comparison.message}")
        return _result(name, "passed", f"each group follows its own hyperparameters ({', '.join(changed)})")

    def _ignored_per_group(self, second: Mapping[str, float], inputs: CaseInputs, observed: Trajectory) -> str:
        """Which per-group hyperparameter the second group ignores: reverting it to the constructor's value explains the run."""
        record = sorted(observed)
        for hname in self.spec.hyper:
            if second[hname] == self.hyper[hname]:
                continue
            reverted = {**second, hname: self.hyper[hname]}
            test = self.s.expectations.test(
                self.spec, self.s.variant, reverted, inputs, record, "behaviour:group revert", profiles=(self.dtype,)
            )
            if compare(test, observed, self.dtype, "").ok:
                keyword = self.s.naming.keyword(hname, self.s.variant)
                return (
                    f"the second group's {keyword!r} (spec {hname}) = {second[hname]:g} is ignored: the group follows the "
                    f"reference with {hname} = {self.hyper[hname]:g}, the value given to the constructor"
                )
        return ""

    def _group_perturbations(self, only: Sequence[str] | None = None) -> tuple[dict[str, float], list[str]]:
        second = dict(self.hyper)
        changed: list[str] = []
        ties = self.s.naming.ties(self.s.variant)
        for hname, hyper in self.spec.hyper.items():
            if only is not None and hname not in only:
                continue
            keyword = self.s.naming.keyword(hname, self.s.variant)
            tied = ties.get(keyword, [hname])
            if tied[0] != hname or not self.s.naming.accepts(hname, self.s.variant):
                continue
            if self.s.inner_info is not None and self.s.naming.owner(hname, self.s.variant) is not self.s.inner_info:
                continue  # a wrapper's own hyperparameters (k, alpha) are not per group
            new = perturb(hyper, self.hyper[hname])
            if new != self.hyper[hname]:
                second.update(dict.fromkeys(tied, new))
                changed.append(f"{' = '.join(tied)} {self.hyper[hname]:g} -> {new:g}")
        return second, changed

    def param_groups(self) -> BehaviourResult:
        name = "param_groups"
        if self.s.info.kind != "torch":
            return _result(name, "not applicable", "optax has no parameter groups (it uses masks)")
        second, changed = self._group_perturbations()
        if not changed:
            return _result(name, "not applicable", "the target accepts no hyperparameter that could differ between groups")
        return self._two_groups(name, second, changed, explain=True)

    def param_groups_lr(self) -> BehaviourResult:
        name = "param_groups_lr"
        if self.s.info.kind != "torch":
            return _result(name, "not applicable", "optax has no parameter groups (it uses masks)")
        second, changed = self._group_perturbations(only=["lr"])
        if not changed:
            return _result(name, "not applicable", "the target takes no lr keyword")
        return self._two_groups(name, second, changed, explain=False)

    def grad_unchanged(self) -> BehaviourResult:
        name = "grad_unchanged"
        if self.s.info.kind != "torch":
            return _result(name, "not applicable", "optax updates are pure functions of the gradients")
        inputs = truncate(self.inputs, 5)
        scenario = self.s.scenario(self.hyper, inputs, self.dtype, [1, 5])
        if isinstance(scenario, str):
            return _result(name, "skipped", f"not expressible: {scenario}")
        try:
            self.s.run(replace(scenario, check_grads=True))
        except TargetFailure as exc:
            if exc.kind == "raised" and "modified p.grad" in exc.message:
                return _result(name, "failed", f"{exc.message}; step() must leave the gradient it was given alone")
            raise
        return _result(name, "passed", "step() leaves p.grad bit-identical (5 steps of the base case)")

    def state_dict(self) -> BehaviourResult:
        name = "state_dict"
        if self.s.info.kind != "torch":
            return _result(name, "not applicable", "optax state is a plain pytree (nothing to save or load)")
        steps, after = 10, 4
        inputs = truncate(self.inputs, steps)
        record = list(range(after + 1, steps + 1))
        whole = self.run(self.s.scenario(self.hyper, inputs, "float32", record))
        if isinstance(whole, str):
            return _result(name, "skipped", whole)
        resumed = self.run(self.s.scenario(self.hyper, inputs, "float32", record, checkpoint_after=after))
        assert not isinstance(resumed, str)
        for step in record:
            for index, (a, b) in enumerate(zip(whole[step], resumed[step])):
                for slot in a:
                    if slot not in b or not np.array_equal(a[slot], b[slot], equal_nan=True):
                        diff = float(np.max(np.abs(a[slot] - b[slot]))) if slot in b else float("nan")
                        return _result(
                            name,
                            "failed",
                            f"save after step {after}, load into a new optimizer, continue: at step {step}, tensor {index}, "
                            f"{slot} differs from the uninterrupted run by up to {diff:.3g} (float32; must be bit-identical)",
                        )
        return _result(name, "passed", f"state_dict after step {after} -> new optimizer -> continue is bit-identical")

    def non_finite(self) -> BehaviourResult:
        name = "non_finite"
        steps = 4
        inputs = truncate(self.inputs, steps)
        grads = [g.copy() for g in inputs.grads]
        grads[2][1, 1] = np.nan
        grads[2][1, 4] = np.inf
        grads[4].reshape(steps, -1)[1, 0] = -np.inf
        inputs = CaseInputs(inputs.params, tuple(grads), inputs.lr_multipliers)
        record = list(range(1, steps + 1))
        scenario = self.s.scenario(self.hyper, inputs, self.dtype, record)
        if not isinstance(scenario, str) and self.s.info.kind == "torch":
            scenario = replace(scenario, all_state=True)
        try:
            observed = self.run(scenario)
        except TargetFailure as exc:
            return _result(name, "failed", f"a NaN/inf gradient at step 2 made the target fail: {exc.message}")
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        reference = self.s.expectations.reference(self.spec, self.s.variant, self.hyper, inputs, FLOAT64, "behaviour:non-finite")
        for step in record:
            for index, (want, got) in enumerate(zip(reference[step], observed[step])):
                expect_bad = ~np.isfinite(want["theta"])
                got_bad = ~np.isfinite(got["theta"])
                if np.array_equal(expect_bad, got_bad):
                    continue
                where = int(np.argmax(expect_bad != got_bad))
                if expect_bad.reshape(-1)[where]:
                    what = (
                        f"is finite ({got['theta'].reshape(-1)[where]:.6g}) where the reference is non-finite: "
                        "the NaN/inf gradient was silently repaired or skipped"
                    )
                    frozen = self._frozen_with_hidden_nan(observed, index, where, step)
                    if frozen:
                        what = frozen
                else:
                    what = "is non-finite where the reference is finite: the NaN/inf leaked into other elements"
                return _result(
                    name,
                    "failed",
                    f"NaN and inf gradient elements at step 2: at step {step}, tensor {index} {list(np.shape(want['theta']))}, "
                    f"element {where} {what}",
                )
        return _result(name, "passed", "NaN and inf gradients propagate into exactly the elements the reference makes non-finite")

    def _frozen_with_hidden_nan(self, observed: Trajectory, index: int, where: int, step: int) -> str:
        """For rules that take sign(...): the element stopped moving while a state tensor holds its NaN."""
        rule = self.s.expectations.rule(self.spec, self.s.variant)
        if not any(_calls(loc.equation.expr, "sign") for loc in rule.equations):
            return ""
        before = observed[1][index]["theta"].reshape(-1)[where]
        frozen = all(observed[s][index]["theta"].reshape(-1)[where] == before for s in observed if s >= 2)
        hidden = sorted(
            key[len("state:") :]
            for key, value in observed[step][index].items()
            if key.startswith("state:") and np.isnan(value.reshape(-1)[where])
        )
        if not (frozen or hidden):
            return ""
        how = "froze at its step-1 value" if frozen else "stays finite"
        where_nan = f" while state {', '.join(hidden)} holds the NaN" if hidden else ""
        return (
            f"{how}{where_nan}: the target's sign(NaN) is 0 (torch.sign), so the element silently stops training and "
            "the NaN stays hidden in the state; the spec's sign(NaN) is NaN (numpy.sign), so the reference makes the "
            "element NaN, which a NaN check would see"
        )

    def zero_init(self) -> BehaviourResult:
        name = "zero_init"
        rule = self.s.expectations.rule(self.spec, self.s.variant)
        if not any(_norm_of_theta(loc.equation.expr) for loc in rule.equations):
            return _result(name, "not applicable", f"rule {self.spec.name} takes no norm of theta (no trust ratio)")
        steps = 3
        inputs = truncate(self.inputs, steps)
        inputs = CaseInputs(tuple(np.zeros_like(p) for p in inputs.params), inputs.grads, inputs.lr_multipliers)
        record = [1, 2, 3]
        observed = self.run(self.s.scenario(self.hyper, inputs, self.dtype, record))
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        comparison = self.expected_compare(self.hyper, inputs, observed, "zero-initialised parameters")
        if comparison.ok:
            return _result(name, "passed", "zero-initialised parameters move as the reference does")
        stuck = [i for i, t in enumerate(observed[1]) if t["theta"].size and not np.any(t["theta"])]
        if stuck:
            return _result(
                name,
                "failed",
                f"zero-initialised parameters {stuck} never moved after step 1 (trust ratio 0 when ||theta|| = 0); "
                f"the reference moves them: {comparison.message}",
            )
        return _result(name, "failed", f"zero-initialised parameters: {comparison.message}")

    def bfloat16(self) -> BehaviourResult:
        name = "bfloat16"
        if bfloat16_type() is None:
            return _result(name, "skipped", "ml_dtypes (numpy bfloat16, installed with JAX) is not available")
        steps = 20
        inputs = truncate(self.inputs, steps)
        record = [1, 2, 3, 10, 20]
        try:
            observed = self.run(self.s.scenario(self.hyper, inputs, "bfloat16", record))
        except TargetFailure as exc:
            if exc.kind == "raised":
                return _result(name, "not applicable", f"the target does not run bfloat16 parameters: {exc.message}")
            raise
        if isinstance(observed, str):
            return _result(name, "skipped", observed)
        comparison = self.expected_compare(
            self.hyper, inputs, observed, "bfloat16", profile="bfloat16", bfloat16=self.s.info.kind
        )
        if comparison.ok:
            return _result(name, "passed", "bfloat16 parameters follow the reference within the bfloat16 budget")
        return _result(name, "failed", f"bfloat16 parameters: {comparison.message}")


def _norm_of_theta(expr: Expr) -> bool:
    """Whether ``expr`` applies a reduction to an expression that reads theta."""
    if isinstance(expr, Call):
        if expr.func in REDUCTIONS and any(_reads_theta(a) for a in expr.args):
            return True
        return any(_norm_of_theta(a) for a in expr.args)
    if isinstance(expr, Binary):
        return _norm_of_theta(expr.left) or _norm_of_theta(expr.right)
    if isinstance(expr, Unary):
        return _norm_of_theta(expr.operand)
    return False


def _calls(expr: Expr, func: str) -> bool:
    """Whether ``expr`` calls ``func`` anywhere."""
    if isinstance(expr, Call):
        return expr.func == func or any(_calls(a, func) for a in expr.args)
    if isinstance(expr, Binary):
        return _calls(expr.left, func) or _calls(expr.right, func)
    if isinstance(expr, Unary):
        return _calls(expr.operand, func)
    return False


def _reads_theta(expr: Expr) -> bool:
    if isinstance(expr, Name):
        return expr.id == "theta"
    if isinstance(expr, Call):
        return any(_reads_theta(a) for a in expr.args)
    if isinstance(expr, Binary):
        return _reads_theta(expr.left) or _reads_theta(expr.right)
    if isinstance(expr, Unary):
        return _reads_theta(expr.operand)
    return False


CHECKS: tuple[str, ...] = (
    "hyperparameters",
    "maximize",
    "zero_gradients",
    "none_gradients",
    "param_groups",
    "param_groups_lr",
    "grad_unchanged",
    "state_dict",
    "non_finite",
    "zero_init",
    "bfloat16",
)


def run_behaviour(session: Session, report: CheckReport, only: Sequence[str] = CHECKS) -> list[BehaviourResult]:
    """Run the behavioural checks; a target failure inside one is that check's failure."""
    checker = Checker(session, report)
    results = []
    for check_name in only:
        method: Callable[[], BehaviourResult] = getattr(checker, check_name)
        checker.explained = checker.unexplained = 0
        try:
            result = method()
        except TargetFailure as exc:
            result = _result(check_name, "failed", f"the target failed: {exc.message}")
        except SpecError as exc:
            result = _result(check_name, "skipped", f"cannot build the scenario: {exc}")
        if result.status == "failed" and checker.finding and checker.explained and not checker.unexplained:
            result.follows = checker.finding
        results.append(result)
    return results
