"""Expected values of a scenario: the float64 reference and the error model's budgets.

For a rule variant, hyperparameters and inputs this evaluates the spec with
:func:`optspec.reference.run_reference` in float64 and measures the error model's budgets
with :func:`optspec.tolerance.measure` (an earlier identical measurement is read back from
:mod:`optspec.checking.budget_cache`) — exactly what :mod:`optspec.golden` stores for the
golden cases, but for any hyperparameters (``--hyper``) and any gradient stream (the
behavioural checks). The result is a :class:`optspec.golden.GoldenTest`, so that
:func:`optspec.conformance.compare` applies unchanged.

bfloat16 budget: the same model with the ``bfloat16`` profile (tensors rounded to bfloat16,
an 8-bit significand, u = 2^-8; step scalars in binary64 for torch targets) or
``bfloat16_scalar32`` (step scalars in binary32, for JAX targets), stored under
``atol["bfloat16"]``. The deterministic bfloat16 evaluation rounds every update into
bfloat16 parameters, so the budget includes the swamping of small updates (an update below
half an ulp of theta is lost) that any bfloat16-parameter implementation suffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from optspec.checking.budget_cache import measured
from optspec.golden import GoldenTest
from optspec.reference import FLOAT64, CaseInputs, Precision, Trajectory, run_reference
from optspec.spec import ResolvedRule, Spec


def bfloat16_type() -> Any | None:
    """numpy's bfloat16 (from ml_dtypes, installed with JAX), or None."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def truncate(inputs: CaseInputs, steps: int) -> CaseInputs:
    """The first ``steps`` steps of a gradient stream."""
    return replace(inputs, grads=tuple(g[:steps] for g in inputs.grads), lr_multipliers=inputs.lr_multipliers[:steps])


class Expectations:
    """Reference trajectories and budgets, cached within one check."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], ResolvedRule] = {}
        self._refs: dict[tuple[Any, ...], Trajectory] = {}
        self._budgets: dict[tuple[Any, ...], Any] = {}

    def rule(self, spec: Spec, variant: Mapping[str, str]) -> ResolvedRule:
        key = (spec.name + "@" + spec.sha256, repr(sorted(variant.items())))
        if key not in self._rules:
            self._rules[key] = spec.resolve(variant)
        return self._rules[key]

    def reference(
        self,
        spec: Spec,
        variant: Mapping[str, str],
        hyper: Mapping[str, float],
        inputs: CaseInputs,
        precision: Precision,
        tag: str,
    ) -> Trajectory:
        """Every step 1..T of the reference in ``precision``; ``tag`` names the inputs for the cache."""
        key = (*self._key(spec, variant, hyper, inputs, tag), precision.name)
        if key not in self._refs:
            rule = self.rule(spec, variant)
            self._refs[key] = run_reference(rule, hyper, inputs, precision, range(1, inputs.steps + 1))
        return self._refs[key]

    @staticmethod
    def _key(spec: Spec, variant: Mapping[str, str], hyper: Mapping[str, float], inputs: CaseInputs, tag: str) -> tuple[Any, ...]:
        return (spec.name, spec.sha256, repr(sorted(variant.items())), repr(sorted(hyper.items())), tag, inputs.steps)

    def test(
        self,
        spec: Spec,
        variant: Mapping[str, str],
        hyper: Mapping[str, float],
        inputs: CaseInputs,
        record: Sequence[int],
        tag: str,
        bfloat16: str | None = None,
        profiles: Sequence[str] = ("float64", "float32", "float32_scalar32"),
    ) -> GoldenTest:
        """A GoldenTest for these inputs with the budgets of ``profiles`` only (each is measured);
        ``bfloat16`` ('torch' or 'optax') adds that profile's budgets as ``atol["bfloat16"]``."""
        ref64 = self.reference(spec, variant, hyper, inputs, FLOAT64, tag)
        wanted = list(profiles)
        if bfloat16 is not None:
            wanted.append("bfloat16_scalar32" if bfloat16 == "optax" else "bfloat16")
        key = (*self._key(spec, variant, hyper, inputs, tag), tuple(wanted), tuple(record))
        if key not in self._budgets:
            rule = self.rule(spec, variant)
            self._budgets[key] = measured(
                rule, spec.sha256, variant, hyper, inputs, record, wanted, seed_text=f"{spec.name}/{tag}", ref64=ref64
            )
        atol: dict[str, Any] = dict(self._budgets[key])
        for name in ("bfloat16", "bfloat16_scalar32"):
            if name in atol:
                atol["bfloat16"] = atol.pop(name)
        return GoldenTest(
            tc_id=0,
            name=f"{spec.name}/{tag}",
            case=tag,
            comment="",
            flags=(),
            variant=dict(variant),
            hyper=dict(hyper),
            inputs_id=tag,
            inputs=inputs,
            lr_multiplier=None,
            expected={step: ref64[step] for step in record},
            atol=atol,
        )


def restrict(test: GoldenTest, steps: Iterable[int]) -> GoldenTest:
    """The same test compared only at ``steps``."""
    keep = [s for s in test.steps if s in set(steps)]
    return replace(
        test,
        expected={s: test.expected[s] for s in keep},
        atol={profile: {s: per[s] for s in keep if s in per} for profile, per in test.atol.items()},
    )
