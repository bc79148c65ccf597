"""Diagnosis: which declared variant does a non-conforming target implement?

Given the target's trajectories on the check's cases (float64 when it runs in float64),
every candidate — each knob combination of the claimed rule, and each knob combination of
every other rule whose hyperparameters are a subset of the claimed rule's (so the values
the target was given determine the candidate's) — is evaluated by the float64 reference
(:func:`optspec.reference.run_reference`) on the same inputs and compared with the
target under the error model's budget (:func:`optspec.conformance.compare`). A candidate
matches when it is within budget on every case the target ran.

To keep this fast, candidates are first screened on the first ``SCREEN_STEPS`` steps of
each case (prefix trajectories are exact: step k of a run does not depend on later
gradients); only survivors are evaluated on the whole case. Candidates of the claimed rule
are compared on theta and on every state slot the target exposes under the library's
state names; candidates of another rule on theta only (slot names need not mean the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from optspec.checking.expected import Expectations, truncate
from optspec.conformance import compare
from optspec.errors import SpecError
from optspec.reference import CaseInputs, Trajectory
from optspec.spec import Spec, SpecLibrary, variant_label

SCREEN_STEPS = 3


@dataclass(frozen=True)
class Observation:
    """The target's trajectory on one case, and the profile it is judged under."""

    case: str
    hyper: Mapping[str, float]
    inputs: CaseInputs
    observed: Trajectory
    profile: str


@dataclass(frozen=True)
class Candidate:
    rule: str
    variant: Mapping[str, str]
    same_rule: bool
    #: knob -> value that differ from the claimed variant (same rule) or are informative (other rule)
    changed: Mapping[str, str]

    @property
    def label(self) -> str:
        if self.same_rule:
            return f"{self.rule} with {variant_label(self.changed)}"
        return f"{self.rule} with {variant_label(self.variant)}"


@dataclass
class Diagnosis:
    matches: list[Candidate] = field(default_factory=list)
    explanation: str = ""
    first_divergence: str = ""
    searched: int = 0
    nearest: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "matches": [
                {"rule": c.rule, "variant": dict(c.variant), "sameRule": c.same_rule, "changed": dict(c.changed)}
                for c in self.matches
            ],
            "explanation": self.explanation,
            "firstDivergence": self.first_divergence,
            "candidatesSearched": self.searched,
            "nearest": self.nearest,
        }


def candidates(spec: Spec, claimed: Mapping[str, str], library: SpecLibrary) -> list[Candidate]:
    """Every other variant of the rule, then every variant of rules with a subset of its hyperparameters."""
    out: list[Candidate] = []
    for combo in spec.all_combos():
        if combo != dict(claimed):
            changed = {k: v for k, v in combo.items() if claimed.get(k) != v}
            out.append(Candidate(spec.name, combo, True, changed))
    out.sort(key=lambda c: len(c.changed))
    for other in library.all():
        if other.name == spec.name or not set(other.hyper) <= set(spec.hyper):
            continue
        combos = sorted(other.all_combos(), key=lambda c: sum(other.knobs[k].default != v for k, v in c.items()))
        for combo in combos:
            informative = {k: v for k, v in combo.items() if claimed.get(k) != v}
            out.append(Candidate(other.name, combo, False, informative))
    return out


def _matches(
    candidate: Candidate, spec: Spec, observations: Sequence[Observation], expectations: Expectations, steps: int | None
) -> tuple[bool, float]:
    """Whether the candidate is within budget on every observation (on a prefix when ``steps``)."""
    worst = 0.0
    for obs in observations:
        hyper = {name: obs.hyper[name] for name in spec.hyper}
        try:
            hyper = spec.hyper_values(hyper)
        except SpecError:
            return False, float("inf")
        inputs = obs.inputs if steps is None else truncate(obs.inputs, min(steps, obs.inputs.steps))
        record = [s for s in sorted(obs.observed) if s <= inputs.steps]
        if not record:
            continue
        tag = obs.case if steps is None else f"{obs.case}:first{inputs.steps}"
        test = expectations.test(spec, candidate.variant, hyper, inputs, record, tag, profiles=(obs.profile,))
        slots = None if candidate.same_rule else ["theta"]
        result = compare(test, {s: obs.observed[s] for s in record}, obs.profile, "diagnosis", slots)
        worst = max(worst, result.worst_ratio)
        if not result.ok:
            return False, worst
    return True, worst


def diagnose(
    spec: Spec,
    claimed: Mapping[str, str],
    observations: Sequence[Observation],
    library: SpecLibrary,
    expectations: Expectations,
    first_divergence: str,
    failing_cases: Sequence[str] = (),
) -> Diagnosis:
    """Search the variant space for what the target does; see the module docstring."""
    found: list[Candidate] = []
    nearest: tuple[float, Candidate] | None = None
    pool = candidates(spec, claimed, library)
    # Cases the claimed variant fails come first: they eliminate most candidates at once.
    failing = {obs.case for obs in observations if obs.case in failing_cases}
    observations = sorted(observations, key=lambda obs: obs.case not in failing)
    for candidate in pool:
        rule = spec if candidate.same_rule else library.get(candidate.rule)
        ok, worst = _matches(candidate, rule, observations, expectations, SCREEN_STEPS)
        if ok:
            ok, worst = _matches(candidate, rule, observations, expectations, None)
        if ok:
            found.append(candidate)
        elif nearest is None or worst < nearest[0]:
            nearest = (worst, candidate)
    diagnosis = Diagnosis(matches=found, first_divergence=first_divergence, searched=len(pool))
    if found:
        best = found[0]
        text = f"behaves like {best.label}: {describe(best, library, spec)}"
        if len(found) > 1:
            text += "; these cases cannot tell it from " + ", ".join(c.label for c in found[1:])
        diagnosis.explanation = text
    else:
        others = sorted({c.rule for c in pool if not c.same_rule})
        scope = f"{spec.name}" + (f" or of rules with the same hyperparameters ({', '.join(others)})" if others else "")
        diagnosis.explanation = (
            f"no declared variant of {scope} reproduces the target; first divergence from the claimed variant: {first_divergence}"
        )
        if nearest is not None and nearest[0] != float("inf"):
            diagnosis.nearest = f"closest: {nearest[1].label} (worst error {nearest[0]:.3g} times its budget)"
    return diagnosis


def describe(candidate: Candidate, library: SpecLibrary, claimed_spec: Spec) -> str:
    """The candidate's knob values in words, from the spec's own documentation."""
    spec = claimed_spec if candidate.same_rule else library.get(candidate.rule)
    parts = [] if candidate.same_rule else [spec.title]
    for knob, value in candidate.changed.items():
        doc = spec.knobs[knob].values[value].doc
        parts.append(f"{knob}={value}: {doc}" if doc else f"{knob}={value}")
    return "; ".join(parts) if parts else "the same equations"
