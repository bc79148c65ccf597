"""The diagnosis names generic mutations (optspec.checking.mutations) it finds in a target.

For each mutation: the float64 reference of the mutated rule produces the target's
trajectories on the rule's cases (20 steps, as the diagnosis tests use), :func:`diagnose`
is asked what the target does when it is claimed as the unmutated variant, and it must name
that mutation. A target no declared variant or mutation reproduces is "unexplained".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optspec.cases import make_inputs, recorded_steps
from optspec.checking.diagnose import Diagnosis, Observation, diagnose
from optspec.checking.expected import Expectations
from optspec.checking.mutations import Mutation, by_name, mutations
from optspec.conformance import compare
from optspec.reference import FLOAT32, FLOAT64, CaseInputs, Precision, run_reference
from optspec.spec import Spec, SpecLibrary

_LIBRARY = SpecLibrary()
STEPS = 20

#: A heavy-ball rule with the lr outside the buffer and no knobs: only a mutation can move it.
HEAVY_BALL = """
name = "{name}"
title = "Heavy ball"
doc = "b = mu b + g; theta -= eta b"
references = [{{ title = "Some methods of speeding up the convergence of iteration methods", year = 1964 }}]
step = ["b = momentum * b + {increment}", "theta = theta - {step}"]
[hyper.lr]
default = 0.1
domain = "[0, inf)"
doc = "lr"
[hyper.momentum]
default = 0.9
domain = "[0, 1)"
doc = "mu"
[state.b]
init = "0"
doc = "buffer"
[[cases]]
id = "scheduled"
comment = "a decaying lr separates the lr inside from outside the buffer"
lr_multiplier = "0.9 ** (t - 1)"
"""


Scenario = tuple[str, dict[str, float], CaseInputs, tuple[int, ...]]


def _cases(spec: Spec, hyper: Mapping[str, float] | None = None) -> list[Scenario]:
    out = []
    for case in spec.cases:
        merged = replace(case, hyper={**case.hyper, **(hyper or {})}, steps=STEPS)
        values = spec.hyper_values(merged.hyper)
        out.append((case.id, values, make_inputs(spec, merged), recorded_steps(STEPS)))
    return out


def _mutant_trajectory(spec: Spec, variant: Mapping[str, str], mutation: Mutation, hyper, inputs, record, precision: Precision):
    """What a target with the mutation computes: the reference of the mutated rule."""
    rule = spec.resolve(variant)
    if mutation.per_tensor is None:
        return run_reference(mutation.apply(rule), hyper, inputs, precision, record)
    count = len(inputs.params)
    out = {step: [] for step in record}
    for index in range(count):
        one = CaseInputs((inputs.params[index],), (inputs.grads[index],), inputs.lr_multipliers)
        part = run_reference(mutation.apply(rule, index, count), hyper, one, precision, record)
        for step in record:
            out[step] += part[step]
    return out


def _diagnose_mutant(spec: Spec, mutation: Mutation, library: SpecLibrary, variant: Mapping[str, str] | None = None) -> Diagnosis:
    claimed = spec.full_variant(variant or {})
    observations = []
    failing = []
    expectations = Expectations()
    for case, hyper, inputs, record in _cases(spec):
        # the float32 mutation is "the step computed in binary32": the reference in FLOAT32 precision
        precision = FLOAT32 if mutation.profile == "float32" else FLOAT64
        observed = _mutant_trajectory(spec, claimed, mutation, hyper, inputs, record, precision)
        observations.append(Observation(case, hyper, inputs, observed, "float64"))
        expected = expectations.test(spec, claimed, hyper, inputs, record, case, profiles=("float64",))
        if not compare(expected, observed, "float64", case).ok:
            failing.append(case)
    assert failing, f"{spec.name} with mutation {mutation.name} conforms on every case: the cases cannot see this mutation"
    return diagnose(spec, claimed, observations, library, expectations, "(first divergence)", failing)


SINGLE = [
    ("adam", "drop_bias_correction[beta1]"),
    ("adam", "drop_bias_correction[beta2]"),
    ("adam", "bias_correction_early[beta2]"),
    ("adam", "init_one[v]"),
    ("adam", "float32"),
    ("adamw", "decay_constant"),
    ("adamw", "decay_after_update"),
    ("adam", "shared_step_counter"),
]


@pytest.mark.parametrize(("rule", "name"), SINGLE, ids=[f"{r}-{n}" for r, n in SINGLE])
def test_diagnosis_names_the_mutation(rule: str, name: str) -> None:
    spec = _LIBRARY.get(rule)
    mutation = by_name(spec.resolve(), name)
    diagnosis = _diagnose_mutant(spec, mutation, _LIBRARY)
    named = [m.name for c in diagnosis.matches for m in c.mutations]
    assert diagnosis.matches and name in [m.name for m in diagnosis.matches[0].mutations], (
        f"{rule} with mutation {name}: the diagnosis should name it first; matches {named}, says: {diagnosis.explanation}"
    )
    assert name in diagnosis.explanation and mutation.description in diagnosis.explanation, (
        f"the explanation should give the mutation's name and description: {diagnosis.explanation}"
    )
    assert diagnosis.explanation.startswith(f"behaves like {rule}"), diagnosis.explanation


@pytest.mark.parametrize(
    ("increment", "step", "name"),
    [("grad", "lr * b", "lr_into_buffer"), ("lr * grad", "b", "lr_out_of_buffer")],
    ids=["lr_into_buffer", "lr_out_of_buffer"],
)
def test_diagnosis_names_the_lr_moved_across_the_buffer(tmp_path: Path, increment: str, step: str, name: str) -> None:
    (tmp_path / "heavyball.toml").write_text(HEAVY_BALL.format(name="heavyball", increment=increment, step=step))
    library = SpecLibrary([tmp_path], include_packaged=False)
    spec = library.get("heavyball")
    mutation = by_name(spec.resolve(), name)
    diagnosis = _diagnose_mutant(spec, mutation, library)
    assert diagnosis.matches and diagnosis.matches[0].mutations == (mutation,), (
        f"heavy ball ({increment} into the buffer, theta -= {step}) with mutation {name}: should be named; "
        f"says: {diagnosis.explanation}"
    )


def test_a_pair_of_mutations_is_named_when_no_single_one_explains() -> None:
    spec = _LIBRARY.get("adam")
    rule = spec.resolve()
    first, second = by_name(rule, "drop_bias_correction[beta1]"), by_name(rule, "init_one[v]")
    both = Mutation("both", "both", lambda r: second.apply(first.apply(r)))
    diagnosis = _diagnose_mutant(spec, both, _LIBRARY)
    names = [[m.name for m in c.mutations] for c in diagnosis.matches]
    assert [first.name, second.name] in names, f"adam with two mutations: the pair should be named; says {diagnosis.explanation}"


def test_every_rule_reading_a_bias_correction_or_zero_slot_has_mutations() -> None:
    """The mutations come from the equations: no rule is named in mutations.py, and rules get what their equations show."""
    kinds = {spec.name: {m.name.split("[")[0] for m in mutations(spec.resolve())} for spec in _LIBRARY.all()}
    assert {"drop_bias_correction", "bias_correction_early", "init_one"} <= kinds["adam"], kinds["adam"]
    assert {"decay_constant", "decay_after_update"} <= kinds["adamw"], kinds["adamw"]
    assert "drop_bias_correction" not in kinds["sgd"], f"sgd has no bias correction: {kinds['sgd']}"
    assert all("float32" in names for names in kinds.values()), kinds
    source = Path(__file__).parents[1].joinpath("src/optspec/checking/mutations.py").read_text()
    named = [name for name in _LIBRARY.names if f'"{name}"' in source]
    assert not named, f"mutations.py names rules {named}: mutations must be derived from the equations"


def test_a_target_nothing_explains_is_unexplained() -> None:
    """Adam whose step is scaled by 1.5: no declared variant or mutation does that."""
    spec = _LIBRARY.get("adam")
    observations = []
    failing = []
    expectations = Expectations()
    claimed = spec.default_variant()
    for case, hyper, inputs, record in _cases(spec):
        observed = run_reference(spec.resolve(), {**hyper, "lr": hyper["lr"] * 1.5}, inputs, FLOAT64, record)
        observations.append(Observation(case, hyper, inputs, observed, "float64"))
        failing.append(case)
    diagnosis = diagnose(spec, claimed, observations, _LIBRARY, expectations, "step 1, tensor 0: got x, expected y", failing)
    assert not diagnosis.matches, f"nothing should explain a 1.5x learning rate: {diagnosis.explanation}"
    assert diagnosis.explanation.startswith("unexplained:"), diagnosis.explanation
    assert "step 1, tensor 0: got x, expected y" in diagnosis.explanation, f"no first divergence in: {diagnosis.explanation}"
    assert "closest" not in diagnosis.explanation and not diagnosis.nearest, "a candidate outside the budget is no explanation"
    assert np.isfinite(diagnosis.searched) and diagnosis.searched > len(spec.all_combos()), (
        f"the search should cover variants and mutations, it covered {diagnosis.searched}"
    )


def test_a_variant_one_knob_away_with_a_mutation_is_named() -> None:
    """Adam with torch's amsgrad (the raw maximum) and m_0 = 1, claimed as plain adam.

    (amsgrad=raw without the first bias correction would be a declared variant of the amsgrad
    rule, mu_correction=off, and is rightly named as that.)
    """
    spec = _LIBRARY.get("adam")
    actual = spec.full_variant({"amsgrad": "raw"})
    mutation = by_name(spec.resolve(actual), "init_one[m]")
    claimed = spec.default_variant()
    expectations = Expectations()
    observations = []
    for case, hyper, inputs, record in _cases(spec):
        observed = _mutant_trajectory(spec, actual, mutation, hyper, inputs, record, FLOAT64)
        observations.append(Observation(case, hyper, inputs, observed, "float64"))
    failing = [o.case for o in observations]
    diagnosis = diagnose(spec, claimed, observations, _LIBRARY, expectations, "(first divergence)", failing)
    assert diagnosis.matches, f"adam with amsgrad=raw and m_0 = 1 should be named; says {diagnosis.explanation}"
    best = diagnosis.matches[0]
    assert (dict(best.changed), [m.name for m in best.mutations]) == ({"amsgrad": "raw"}, [mutation.name]), (
        f"expected amsgrad=raw with mutation {mutation.name}; the diagnosis says: {diagnosis.explanation}"
    )
