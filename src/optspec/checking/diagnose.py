"""Diagnosis: what does a non-conforming target implement?

Given the target's trajectories on the check's cases (float64 when it runs in float64),
the search evaluates candidates with the float64 reference
(:func:`optspec.reference.run_reference`) on the same inputs and compares each with the
target under the error model's budget (:func:`optspec.conformance.compare`). A candidate
matches when it is within budget on every case the target ran. The candidates, in order:

1. declared variants: each other knob combination of the claimed rule, then each knob
   combination of every rule whose hyperparameters are a subset of the claimed rule's (so
   the values the target was given determine the candidate's);
2. single generic mutations of the claimed variant (:mod:`optspec.checking.mutations`:
   a bias correction dropped or off by one step, a slot initialised to 1, the step in
   float32, constant or late decoupled decay, the lr moved into or out of a momentum
   buffer, a step counter shared by the tensors), searched only when no declared variant
   matches;
3. pairs of those mutations (not the float32 one), only when no single one matches and
   there are at most ``PAIR_LIMIT`` singles;
4. a variant one knob away from the claimed one with one mutation of it, only when nothing
   above matches and there are at most ``VARIANT_MUTATION_LIMIT`` such candidates.

The best explanation is named only when it reproduces the target within the error model;
otherwise the diagnosis says "unexplained" and shows the first divergence from the claimed
variant. Nothing outside the budget is ever offered as an explanation.

To keep this fast, candidates are first screened on the first ``SCREEN_STEPS`` steps of
each case (prefix trajectories are exact: step k of a run does not depend on later
gradients); only survivors are evaluated on the whole case, and references are cached by
:class:`~optspec.checking.expected.Expectations`. Candidates of the claimed rule are compared
on theta and on every state slot the target exposes under the library's state names;
candidates of another rule on theta only (slot names need not mean the same).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from optspec.checking.expected import Expectations, truncate
from optspec.checking.mutations import Mutation, mutated_spec, mutations
from optspec.conformance import compare
from optspec.errors import SpecError
from optspec.golden import GoldenTest
from optspec.reference import CaseInputs, Quadratic, Trajectory
from optspec.spec import Spec, SpecLibrary, variant_label

SCREEN_STEPS = 3
#: pairs of mutations are searched only when there are at most this many single ones
PAIR_LIMIT = 12
#: a variant one knob away with one mutation: searched only when there are at most this many such candidates
VARIANT_MUTATION_LIMIT = 120


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
    #: generic mutations applied to the variant (claimed rule only)
    mutations: tuple[Mutation, ...] = ()

    @property
    def label(self) -> str:
        if self.mutations:
            names = " + ".join(m.name for m in self.mutations)
            if self.changed:
                return f"{self.rule} with {variant_label(self.changed)} and mutation {names}"
            return f"{self.rule} ({variant_label(self.variant)}) with mutation {names}"
        if self.same_rule:
            return f"{self.rule} with {variant_label(self.changed)}"
        return f"{self.rule} with {variant_label(self.variant)}"


@dataclass
class Diagnosis:
    matches: list[Candidate] = field(default_factory=list)
    explanation: str = ""
    first_divergence: str = ""
    searched: int = 0
    #: kept for the JSON shape; never set: a candidate outside the budget is no explanation
    nearest: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "matches": [
                {
                    "rule": c.rule,
                    "variant": dict(c.variant),
                    "sameRule": c.same_rule,
                    "changed": dict(c.changed),
                    "mutations": [m.name for m in c.mutations],
                }
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


def mutation_candidates(
    spec: Spec, claimed: Mapping[str, str], observations: Sequence[Observation], pairs: bool = False
) -> list[Candidate]:
    """Single mutations of the claimed variant (``pairs``: two of them together, the float32 one excepted)."""
    variant = spec.full_variant(claimed)
    singles = [m for m in mutations(spec.resolve(variant)) if m.profile is None or _all_float64(observations)]
    if not pairs:
        return [Candidate(spec.name, variant, True, {}, (m,)) for m in singles]
    rewrites = [m for m in singles if m.profile is None]
    if len(rewrites) > PAIR_LIMIT:
        return []
    out = []
    for a, b in itertools.combinations(rewrites, 2):
        if _group(a) == _group(b):
            continue  # two edits of the same bias correction: one replaces the other
        # a reordering rewrite goes last, so that the other's equation indices still hold
        ordered = (b, a) if a.name == "decay_after_update" else (a, b)
        out.append(Candidate(spec.name, variant, True, {}, ordered))
    return out


def variant_mutation_candidates(
    spec: Spec, claimed: Mapping[str, str], observations: Sequence[Observation], limit: int = VARIANT_MUTATION_LIMIT
) -> list[Candidate]:
    """Each variant one knob away from the claimed one, with each single mutation of it (none if more than ``limit``)."""
    claimed = spec.full_variant(claimed)
    out: list[Candidate] = []
    for knob in spec.knobs.values():
        for value in knob.values:
            if value == claimed[knob.name]:
                continue
            variant = {**claimed, knob.name: value}
            singles = [m for m in mutations(spec.resolve(variant)) if m.profile is None or _all_float64(observations)]
            out += [Candidate(spec.name, variant, True, {knob.name: value}, (m,)) for m in singles]
            if len(out) > limit:
                return []
    return out


def _group(mutation: Mutation) -> str:
    return mutation.name.split("[")[1] if "[" in mutation.name and "bias_correction" in mutation.name else mutation.name


def _all_float64(observations: Sequence[Observation]) -> bool:
    return bool(observations) and all(obs.profile == "float64" for obs in observations)


def _test(
    candidate: Candidate,
    spec: Spec,
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    record: Sequence[int],
    tag: str,
    profile: str,
    expectations: Expectations,
) -> GoldenTest:
    """The expected trajectory and budgets of a candidate (per-tensor mutations run tensor by tensor)."""
    muts = candidate.mutations
    if not any(m.per_tensor is not None for m in muts):
        target = mutated_spec(spec, muts)
        return expectations.test(target, candidate.variant, hyper, inputs, record, tag, profiles=(profile,))
    count = len(inputs.params)
    parts = []
    for index in range(count):
        loss = inputs.quadratic
        one = CaseInputs(
            (inputs.params[index],),
            (inputs.grads[index],),
            inputs.lr_multipliers,
            inputs.schedule,
            None if loss is None else Quadratic((loss.curvature[index],), (loss.center[index],)),
        )
        target = mutated_spec(spec, muts, (index, count))
        parts.append(expectations.test(target, candidate.variant, hyper, one, record, f"{tag}#{index}", profiles=(profile,)))
    expected = {step: [part.expected[step][0] for part in parts] for step in parts[0].expected}
    atol = {name: {step: [part.atol[name][step][0] for part in parts] for step in per} for name, per in parts[0].atol.items()}
    return replace(parts[0], inputs=inputs, expected=expected, atol=atol)


def _matches(
    candidate: Candidate, spec: Spec, observations: Sequence[Observation], expectations: Expectations, steps: int | None
) -> tuple[bool, float]:
    """Whether the candidate is within budget on every observation (on a prefix when ``steps``)."""
    worst = 0.0
    profile_override = next((m.profile for m in candidate.mutations if m.profile is not None), None)
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
        profile = profile_override or obs.profile
        test = _test(candidate, spec, hyper, inputs, record, tag, profile, expectations)
        slots = None if candidate.same_rule else ["theta"]
        result = compare(test, {s: obs.observed[s] for s in record}, profile, "diagnosis", slots)
        worst = max(worst, result.worst_ratio)
        if not result.ok:
            return False, worst
    return True, worst


def _search(
    pool: Sequence[Candidate],
    spec: Spec,
    library: SpecLibrary,
    observations: Sequence[Observation],
    expectations: Expectations,
) -> list[Candidate]:
    found: list[Candidate] = []
    for candidate in pool:
        rule = spec if candidate.same_rule else library.get(candidate.rule)
        ok, _ = _matches(candidate, rule, observations, expectations, SCREEN_STEPS)
        if ok:
            ok, _ = _matches(candidate, rule, observations, expectations, None)
        if ok:
            found.append(candidate)
    return found


def diagnose(
    spec: Spec,
    claimed: Mapping[str, str],
    observations: Sequence[Observation],
    library: SpecLibrary,
    expectations: Expectations,
    first_divergence: str,
    failing_cases: Sequence[str] = (),
) -> Diagnosis:
    """Search declared variants, then mutations, for what the target does; see the module docstring."""
    # Cases the claimed variant fails come first: they eliminate most candidates at once.
    failing = {obs.case for obs in observations if obs.case in failing_cases}
    observations = sorted(observations, key=lambda obs: obs.case not in failing)
    pool = candidates(spec, claimed, library)
    found = _search(pool, spec, library, observations, expectations)
    searched = len(pool)
    stages = (
        lambda: mutation_candidates(spec, claimed, observations),
        lambda: mutation_candidates(spec, claimed, observations, pairs=True),
        lambda: variant_mutation_candidates(spec, claimed, observations),
    )
    for stage in stages:
        if found:
            break
        more = stage()
        searched += len(more)
        found = _search(more, spec, library, observations, expectations)
    diagnosis = Diagnosis(matches=found, first_divergence=first_divergence, searched=searched)
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
            f"unexplained: no declared variant of {scope} and no generic mutation of the claimed variant "
            f"reproduces the target within the error model; first divergence from the claimed variant: {first_divergence}"
        )
    return diagnosis


def describe(candidate: Candidate, library: SpecLibrary, claimed_spec: Spec) -> str:
    """The candidate in words: its knob values from the spec's own documentation, or its mutations."""
    spec = claimed_spec if candidate.same_rule else library.get(candidate.rule)
    parts = [] if candidate.same_rule else [spec.title]
    for knob, value in candidate.changed.items():
        doc = spec.knobs[knob].values[value].doc
        parts.append(f"{knob}={value}: {doc}" if doc else f"{knob}={value}")
    parts += [m.description for m in candidate.mutations]
    return "; ".join(parts) if parts else "the same equations"
