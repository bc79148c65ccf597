"""The error model: one rule for every tolerance in optspec.

For a case, a variant, a step k, a tensor and a state slot (or the parameter), let x*_k be
the exact value (the spec evaluated in ``numpy.longdouble``, 64-bit significand, when the
float64 profile is asked for; in binary64 otherwise, which is exact to well within a
binary32 budget) and S_k = max_i |x*_k,i| its scale. A *profile* is an arithmetic an
implementation may use (which format tensors, step-dependent scalars and constants are
rounded to). For each profile p the spec is evaluated

* once deterministically in p's formats (:mod:`optspec.reference`): q_k, which catches
  what round-to-nearest does that random perturbations do not (an update below half an
  ulp of theta is lost in binary32 every step);
* N times with Monte Carlo arithmetic (:mod:`optspec.mca`): every rounding site returns
  x (1 + u xi), u the unit roundoff of p's format for that site, half the members with
  xi ~ U(-1, 1) afresh (uncorrelated rounding, sqrt(n) growth) and half with one xi per
  site for scalar and constant sites (a value that is the same every step rounds the same
  way every step: linear growth, as theta (1 - eta lambda) against theta - eta lambda theta).

With the measured deviation

    D_j = max( max_i |q_j,i - x*_j,i| ,  max_members max_i |m_j,i - x*_j,i| )

an implementation's values y_k pass when  max_i |y_k,i - r_k,i| <= B_k  (r the float64
golden values) with

    b_j = max(D_j, FLOOR * u_p * S_j)        B_k = K * max_{j <= k} b_j

u_p the unit roundoff of p's tensor format, K = 4 and FLOOR = 4. K covers the tail of the
distribution of equivalent evaluations beyond the ensemble's largest member (an
implementation is one more draw, possibly with more operations than the spec writes) and,
for the float64 profile, the golden value's own rounding (|y - r| <= |y - x*| + |r - x*|).
FLOOR covers values that every evaluation happens to get exactly. The running maximum keeps
an absolute error committed at an earlier, larger value from being judged against a later,
smaller one. Nothing is scaled from one precision to another: every profile's budget is
measured in that profile. The ensemble is seeded (:data:`SEED`, and the test's name), so
budgets are reproducible bit for bit; the golden header records the seed and sizes.

Nothing else in optspec chooses a tolerance.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from optspec.expr import ROUNDING_FUNCTIONS, Call, walk
from optspec.mca import UNIT, Ensemble, MemberGroup, Spread, numpy_format, run_ensemble
from optspec.reference import FLOAT32, FLOAT32_SCALAR32, FLOAT64, CaseInputs, Precision, Trajectory, run_reference
from optspec.spec import ResolvedRule

K = 4.0
FLOOR_ULPS = 4.0
#: Members per profile and kind (random, systematic).
MEMBERS = 8
SEED = 20261201
U32 = UNIT["float32"]
U64 = UNIT["float64"]
#: The profiles every golden file stores (rules and schedules).
PROFILES = ("float64", "float32", "float32_scalar32")
#: The 16-bit parameter profiles a rule's golden file also stores: torch's bfloat16 and float16
#: runs (tensors and state in the parameter's format, step scalars Python doubles). A file
#: generated before they were stored lacks them; checks that need them are skipped saying so.
HALF_PROFILES = ("bfloat16", "float16")
RULE_PROFILES = (*PROFILES, *HALF_PROFILES)

#: budgets[profile][step][tensor][slot]
Budgets = dict[str, dict[int, list[dict[str, float]]]]


@dataclass(frozen=True)
class Profile:
    """An arithmetic an implementation may use: the formats values of each category round to.

    ``tensor``: the parameter's and state's format; ``scalar``: per-tensor values that
    depend on the step (t, lr, bias corrections, reductions); ``const``: expressions of
    hyperparameters and literals alone (folded in binary64 by Python and by JAX).
    """

    name: str
    tensor: str
    scalar: str
    const: str = "float64"
    doc: str = ""

    @property
    def unit(self) -> float:
        return UNIT[self.tensor]

    def precision(self) -> Precision:
        """The deterministic evaluation in this profile's formats."""
        return _precision(self.tensor, self.scalar)


ALL_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("float64", "float64", "float64", doc="binary64 throughout (torch and optax with x64)"),
        Profile("float32", "float32", "float64", doc="binary32 tensors, binary64 step scalars (torch.optim)"),
        Profile("float32_scalar32", "float32", "float32", doc="binary32 tensors and step scalars (JAX without x64)"),
        Profile("bfloat16", "bfloat16", "float64", doc="bfloat16 tensors, binary64 step scalars"),
        Profile("bfloat16_scalar32", "bfloat16", "float32", doc="bfloat16 tensors, binary32 step scalars"),
        Profile(
            "float64_scalar32",
            "float64",
            "float32",
            doc="binary64 tensors, binary32 step scalars (torch's differentiable path: the step is a float32 tensor)",
        ),
        Profile("float16", "float16", "float64", doc="binary16 tensors, binary64 step scalars (torch.optim)"),
        Profile("float16_scalar32", "float16", "float32", doc="binary16 tensors, binary32 step scalars"),
    )
}


def _precision(tensor: str, scalar: str) -> Precision:
    known = {("float64", "float64"): FLOAT64, ("float32", "float64"): FLOAT32, ("float32", "float32"): FLOAT32_SCALAR32}
    if (tensor, scalar) in known:
        return known[(tensor, scalar)]
    return _custom_precision(tensor, scalar)


@cache
def _custom_precision(tensor: str, scalar: str) -> Precision:
    return Precision(f"{tensor}_{scalar}", numpy_format(tensor), numpy_format(scalar))


def ensembles_for(profiles: Collection[str], members: int = MEMBERS, seed: int = SEED) -> list[Ensemble]:
    """The Monte Carlo ensembles that measure ``profiles``: one pass in a binary64 carrier for
    the binary32 profiles, one in longdouble for the float64 profile, and one more binary64 pass,
    seeded with ``seed + 1``, for the 16-bit profiles. The 16-bit pass is separate so that adding
    or dropping it leaves every binary32 and binary64 budget bit for bit as it was (the members'
    draws depend on which groups share a pass)."""
    by_pass: dict[tuple[type[np.floating[Any]], bool], list[MemberGroup]] = {}
    for name in profiles:
        p = ALL_PROFILES[name]
        # float64_scalar32: binary32 scalar rounding exceeds binary64 tensor rounding by 2^29, so
        # binary64 carries it (its tensor sites are then exact, within the FLOOR term).
        carrier = np.longdouble if p.tensor == p.scalar == "float64" else np.float64
        half = p.tensor in ("bfloat16", "float16")
        for systematic in (False, True):
            by_pass.setdefault((carrier, half), []).append(MemberGroup(name, members, p.tensor, p.scalar, p.const, systematic))
    return [Ensemble(tuple(groups), carrier, seed + half) for (carrier, half), groups in by_pass.items()]


def measure(
    rule: ResolvedRule,
    hyper: Mapping[str, float],
    inputs: CaseInputs,
    keep: Iterable[int],
    profiles: Collection[str] = PROFILES,
    seed_text: str = "",
    ref64: Trajectory | None = None,
    members: int = MEMBERS,
) -> Budgets:
    """Budgets B_k of ``profiles`` at the ``keep`` steps (see the module docstring).

    ``seed_text`` (the test's name) seeds the ensemble with :data:`SEED`; ``ref64`` is the
    float64 reference at every step, if the caller already has it.
    """
    every = range(1, inputs.steps + 1)
    deterministic: dict[str, Trajectory] = {}
    for name in profiles:
        precision = ALL_PROFILES[name].precision()
        if precision is FLOAT64 and ref64 is not None:
            deterministic[name] = ref64
        else:
            deterministic[name] = run_reference(rule, hyper, inputs, precision, every)
    spread: Spread = {}
    exact: dict[int, list[dict[str, Any]]] = {}
    for ensemble in ensembles_for(profiles, members):
        part, values = run_ensemble(rule, hyper, inputs, ensemble, seed_text)
        for step, tensors in part.items():
            merged = spread.setdefault(step, [{} for _ in tensors])
            for index, slots in enumerate(tensors):
                for slot, per_profile in slots.items():
                    merged[index].setdefault(slot, {}).update(per_profile)
        # The widest carrier's unperturbed member is the exact value.
        if not exact or ensemble.carrier is np.longdouble:
            exact = values
    if _rounds_explicitly(rule):
        # Inside round_bf16 a float64 run computes as a float32 one does (bfloat16 with a binary32
        # accumulator): a rounding flip the float32 members show is one a float64 run can show too.
        for tensors in spread.values():
            for slots in tensors:
                for per_profile in slots.values():
                    if "float64" in per_profile and "float32" in per_profile:
                        per_profile["float64"] = max(per_profile["float64"], per_profile["float32"])
    return combine(deterministic, spread, exact, keep)


def _rounds_explicitly(rule: ResolvedRule) -> bool:
    """Whether the step rounds to a narrower format explicitly (``round_bf16``)."""
    return any(
        isinstance(node, Call) and node.func in ROUNDING_FUNCTIONS for loc in rule.equations for node in walk(loc.equation.expr)
    )


def combine(
    deterministic: Mapping[str, Trajectory],
    spread: Mapping[int, list[dict[str, dict[str, float]]]],
    exact: Mapping[int, list[dict[str, Any]]],
    keep: Iterable[int],
) -> Budgets:
    """``B_k = K max_{j<=k} max(D_j, FLOOR u S_j)`` per profile from the measured deviations."""
    keep = set(keep)
    out: Budgets = {profile: {} for profile in deterministic}
    running: dict[tuple[str, int, str], float] = {}
    for step in sorted(exact):
        per_profile: dict[str, list[dict[str, float]]] = {profile: [] for profile in deterministic}
        for index, slots in enumerate(exact[step]):
            per: dict[str, dict[str, float]] = {profile: {} for profile in deterministic}
            for slot, truth in slots.items():
                scale = float(np.max(np.abs(truth))) if truth.size else 0.0
                for profile, trajectory in deterministic.items():
                    d_det = _max_abs_diff(trajectory[step][index][slot], truth)
                    d_mca = spread[step][index][slot].get(profile, 0.0)
                    local = max(d_det, d_mca, FLOOR_ULPS * ALL_PROFILES[profile].unit * scale)
                    key = (profile, index, slot)
                    running[key] = max(running.get(key, 0.0), local)
                    per[profile][slot] = K * running[key]
            for profile in deterministic:
                per_profile[profile].append(per[profile])
        if step in keep:
            for profile in deterministic:
                out[profile][step] = per_profile[profile]
    return out


def header(method: str = "monte-carlo-arithmetic", profiles: Iterable[str] = PROFILES) -> dict[str, Any]:
    """The ``errorModel`` header of a golden file: what reproduces its budgets."""
    members = MEMBERS if method == "monte-carlo-arithmetic" else 0
    return {
        "method": method,
        "K": K,
        "floorUlps": FLOOR_ULPS,
        "profiles": list(profiles),
        "ensemble": {"random": members, "systematic": members, "seed": SEED, "exact": "longdouble (64-bit significand)"},
        "doc": "conformance/README.md#error-model",
    }


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| (in the wider of the two types); inf when anything is not finite."""
    if np.size(a) == 0:
        return 0.0
    worst = float(np.max(np.abs(np.subtract(a, b))))
    return worst if np.isfinite(worst) else float("inf")


def sequence_budgets(lower: Mapping[str, Trajectory], exact: Trajectory, keep: Iterable[int]) -> Budgets:
    """Budgets of a sequence evaluated deterministically only (learning-rate schedules).

    A schedule's value at each index is a closed form of a few operations with no state
    carried from step to step (except in the recursive forms, which are registered
    deviations), so the deterministic evaluation in each profile (``lower``, by profile)
    measures its rounding against ``exact``, the longdouble evaluation. The same K, FLOOR
    and running maximum apply.
    """
    spread = {step: [{slot: {} for slot in slots} for slots in tensors] for step, tensors in exact.items()}
    return combine(lower, spread, exact, keep)
