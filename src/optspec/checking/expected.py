"""Expected values of a scenario: the float64 reference and the error model's budgets.

For a rule variant, hyperparameters and inputs this evaluates the spec with
:func:`optspec.reference.run_reference` at every step in float64 and in the error model's
lower precisions, and folds the differences into budgets with
:func:`optspec.tolerance.budgets` — exactly what :mod:`optspec.golden` stores for the
golden cases, but for any hyperparameters (``--hyper``) and any gradient stream (the
behavioural checks). The result is a :class:`optspec.golden.GoldenTest`, so that
:func:`optspec.conformance.compare` applies unchanged.

bfloat16 budget. The error model (:mod:`optspec.tolerance`) measures how much a rule, case
and variant amplify rounding by evaluating the spec in a lower precision q and taking
``D_j = max_i |q_j,i - r_j,i|`` against the float64 trajectory r; a step's budget is
``b_j = max(D_j, FLOOR * u * S_j)`` and the budget at step k is ``K * max_{j<=k} b_j``, with
u the unit roundoff of the arithmetic. The bfloat16 profile is the same model with
bfloat16 in place of binary32: q is the spec evaluated with tensors (parameters, state,
elementwise intermediates) in bfloat16 (``ml_dtypes.bfloat16``; an 8-bit significand, so
u = 2^-8 — ``ml_dtypes.finfo(bfloat16).eps / 2``) and scalars in binary64 (binary32 for
JAX targets, as the float32_scalar32 profile), and u = 2^-8 in the floor. K and FLOOR are
tolerance.K and tolerance.FLOOR_ULPS; no other constant enters. The bfloat16 evaluation
rounds every update into bfloat16 parameters, so the budget includes the swamping of small
updates (an update below half an ulp of theta is lost) that any bfloat16-parameter
implementation suffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from optspec.golden import GoldenTest
from optspec.reference import FLOAT32, FLOAT32_SCALAR32, FLOAT64, CaseInputs, Precision, Trajectory, run_reference
from optspec.spec import ResolvedRule, Spec
from optspec.tolerance import FLOOR_ULPS, K, budgets


def bfloat16_type() -> Any | None:
    """numpy's bfloat16 (from ml_dtypes, installed with JAX), or None."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def bfloat16_unit_roundoff() -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps) / 2


def bfloat16_precision(scalar32: bool) -> Precision:
    bf16 = bfloat16_type()
    if bf16 is None:
        raise RuntimeError("ml_dtypes is not installed")
    scalar = np.float32 if scalar32 else np.float64
    return Precision("bfloat16_scalar32" if scalar32 else "bfloat16", bf16, scalar)


def bfloat16_budgets(ref64: Trajectory, ref16: Trajectory, keep: Iterable[int]) -> dict[int, list[dict[str, float]]]:
    """``K * max_{j<=k} max(D_j, FLOOR * u_bf16 * S_j)`` at the ``keep`` steps (see the module doc)."""
    keep = set(keep)
    unit = bfloat16_unit_roundoff()
    running: dict[tuple[int, str], float] = {}
    out: dict[int, list[dict[str, float]]] = {}
    for step in sorted(ref64):
        per_tensor: list[dict[str, float]] = []
        for index, slots in enumerate(ref64[step]):
            per: dict[str, float] = {}
            for slot, r in slots.items():
                scale = float(np.max(np.abs(r))) if r.size else 0.0
                q = ref16[step][index][slot]
                with np.errstate(invalid="ignore"):
                    diff = np.abs(q - r)
                d = float(np.max(diff)) if diff.size and np.all(np.isfinite(diff)) else (0.0 if not diff.size else float("inf"))
                key = (index, slot)
                running[key] = max(running.get(key, 0.0), d, FLOOR_ULPS * unit * scale)
                per[slot] = K * running[key]
            per_tensor.append(per)
        if step in keep:
            out[step] = per_tensor
    return out


def truncate(inputs: CaseInputs, steps: int) -> CaseInputs:
    """The first ``steps`` steps of a gradient stream."""
    return CaseInputs(inputs.params, tuple(g[:steps] for g in inputs.grads), inputs.lr_multipliers[:steps])


class Expectations:
    """Reference trajectories and budgets, cached within one check."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], ResolvedRule] = {}
        self._refs: dict[tuple[Any, ...], Trajectory] = {}

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
        key = (
            spec.name,
            spec.sha256,
            repr(sorted(variant.items())),
            repr(sorted(hyper.items())),
            tag,
            inputs.steps,
            precision.name,
        )
        if key not in self._refs:
            rule = self.rule(spec, variant)
            self._refs[key] = run_reference(rule, hyper, inputs, precision, range(1, inputs.steps + 1))
        return self._refs[key]

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
        """A GoldenTest for these inputs; ``bfloat16`` ('torch' or 'optax') adds that profile's budgets.

        ``profiles`` lists the budgets the caller will use: the float32 evaluation (which
        only the float32 profile needs) is skipped when it is not asked for, and then the
        float32 entries of ``atol`` are absent.
        """
        ref64 = self.reference(spec, variant, hyper, inputs, FLOAT64, tag)
        ref32s = self.reference(spec, variant, hyper, inputs, FLOAT32_SCALAR32, tag)
        if "float32" in profiles:
            ref32 = self.reference(spec, variant, hyper, inputs, FLOAT32, tag)
            atol: dict[str, Any] = dict(budgets(ref64, ref32, ref32s, record))
        else:
            # budgets() needs a float32 trajectory; only its float32 profile reads it, and that is dropped.
            atol = {p: v for p, v in budgets(ref64, ref32s, ref32s, record).items() if p != "float32"}
        if bfloat16 is not None:
            ref16 = self.reference(spec, variant, hyper, inputs, bfloat16_precision(bfloat16 == "optax"), tag)
            atol["bfloat16"] = bfloat16_budgets(ref64, ref16, record)
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
