"""The diagnosis names the variant a non-conforming optimizer really implements.

Mutation test: for every rule and every non-default value X of every knob, an optimizer
built from the float64 reference evaluator for variant X is claimed as the rule's default
variant; ``optspec check`` must fail it and name X. Cross-rule: torch.optim.AdamW claimed
as ``adam`` (L2 decay) must be diagnosed as ``adamw``. A wrong optimizer that no variant
reproduces is "unexplained", with the first divergence.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from fixtures.reference_optimizer import make_reference_optimizer

from optspec.checking.runner import check
from optspec.spec import SpecLibrary, variant_label

_LIBRARY = SpecLibrary()
MUTATIONS = [
    (spec.name, knob.name, value)
    for spec in _LIBRARY.all()
    for knob in spec.knobs.values()
    for value in knob.values
    if value != knob.default
]


def quick_check(rule: str, target: Any, **kwargs: Any):
    """Float64 only, 20-step cases, no behavioural checks: the diagnosis is what is under test."""
    return check(rule, target, library=_LIBRARY, isolate=False, behaviour=False, dtypes=("float64",), steps=20, **kwargs)


@pytest.mark.parametrize(("rule", "knob", "value"), MUTATIONS, ids=[f"{r}-{k}={v}" for r, k, v in MUTATIONS])
def test_diagnosis_names_the_mutated_variant(rule: str, knob: str, value: str) -> None:
    mutant = make_reference_optimizer(rule, {knob: value}, _LIBRARY)
    report = quick_check(rule, mutant)
    assert report.exit_code == 1, f"{rule} mutated to {knob}={value} and claimed as the default should not conform: " + "; ".join(
        f"{c.case}/{c.dtype}: {c.status} {c.message}" for c in report.cases
    )
    assert report.diagnosis is not None, f"{rule} mutated to {knob}={value}: no diagnosis was made"
    wanted = _LIBRARY.get(rule).full_variant({knob: value})
    named = [variant_label(m.variant) for m in report.diagnosis.matches if m.rule == rule]
    assert variant_label(wanted) in named, (
        f"{rule} mutated to {knob}={value}: the diagnosis should name {variant_label(wanted)}, "
        f"it says: {report.diagnosis.explanation}"
    )
    assert f"{knob}={value}" in report.diagnosis.explanation, report.diagnosis.explanation


def test_reference_optimizer_of_the_default_conforms() -> None:
    report = quick_check("adam", make_reference_optimizer("adam", None, _LIBRARY))
    assert report.exit_code == 0, "the reference-backed adam should conform: " + "; ".join(c.message for c in report.cases)


def test_torch_adamw_claimed_as_adam_is_diagnosed_as_decoupled_decay() -> None:
    report = quick_check("adam", torch.optim.AdamW)
    assert report.exit_code == 1, "torch.optim.AdamW must not pass as adam (L2 decay) on the knobs case"
    assert report.diagnosis is not None and report.diagnosis.matches, f"no variant matched: {report.diagnosis}"
    best = report.diagnosis.matches[0]
    assert (best.rule, best.variant.get("decay_scale")) == ("adamw", "lr"), report.diagnosis.explanation
    assert report.diagnosis.explanation.startswith("behaves like adamw"), report.diagnosis.explanation


def test_no_variant_matches_reports_the_first_divergence() -> None:
    class DoubleLrAdam(torch.optim.Adam):
        """Adam with the learning rate silently doubled: no declared variant does that."""

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                group["lr"] *= 2
            try:
                return super().step(closure)
            finally:
                for group in self.param_groups:
                    group["lr"] /= 2

    report = quick_check("adam", DoubleLrAdam)
    assert report.exit_code == 1, "an Adam with a doubled learning rate must not conform"
    assert report.diagnosis is not None and not report.diagnosis.matches, f"nothing should match: {report.diagnosis}"
    text = report.diagnosis.explanation
    assert text.startswith("unexplained: no declared variant of adam"), text
    assert not report.diagnosis.nearest and "closest" not in text, f"a candidate outside the budget was offered: {text}"
    assert "step 1, tensor" in text and "got" in text and "expected" in text, f"the first divergence is missing: {text}"
