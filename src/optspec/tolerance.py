"""The error model: one rule for every tolerance in optspec.

For a case, a variant, a recorded step k, a tensor and a state slot (or the parameter),
let r_k be the float64 reference and S_k = max_i |r_k,i| its scale. The spec is also
evaluated in two float32 precisions (see :mod:`optspec.reference`), q_k (tensors in
float32, scalars in float64) and q'_k (everything in float32), which measure how much this
computation amplifies rounding:

    D_k  = max_i |q_k,i  - r_k,i|          D'_k = max_i |q'_k,i - r_k,i|

An implementation's values x_k pass when max_i |x_k,i - r_k,i| <= B_k with

    float32           b_j = max(D_j,                FLOOR * u32 * S_j)
    float32_scalar32  b_j = max(D'_j,               FLOOR * u32 * S_j)
    float64           b_j = max(D'_j * u64 / u32,   FLOOR * u64 * S_j)

    B_k = K * max_{j <= k} b_j        (over every step j up to k, not only recorded ones)

u32 = 2^-24 and u64 = 2^-53 are the unit roundoffs. The running maximum makes the budget
grow with the step count and never shrink: an absolute rounding error committed at an
earlier step, when the values were larger, persists into later steps where cancellation
has made the values (and a single float32 realisation's error) small. K = 8 allows an implementation to evaluate
the same algebra in another order (its rounding errors are of the same size but not the
same); FLOOR = 4 units in the last place of the scale covers steps where the float32
evaluation happens to be exact. The float64 budget scales the fully-float32 amplification
down to binary64 (a first-order condition estimate). ``float32_scalar32`` is not a
default: it is the budget of the known deviation "scalar arithmetic in float32" (optax
without x64, see :mod:`optspec.reference` for its weak-typing model), which a registry
entry must name.

Nothing else in optspec chooses a tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from optspec.reference import Trajectory

K = 8.0
FLOOR_ULPS = 4.0
U32 = 2.0**-24
U64 = 2.0**-53
PROFILES = ("float64", "float32", "float32_scalar32")

#: budgets[profile][step][tensor][slot]
Budgets = dict[str, dict[int, list[dict[str, float]]]]


def budgets(ref64: Trajectory, ref32: Trajectory, ref32s: Trajectory, keep: Iterable[int]) -> Budgets:
    """Budgets at the ``keep`` steps from trajectories recorded at every step 1..T."""
    keep = set(keep)
    out: Budgets = {profile: {} for profile in PROFILES}
    running: dict[tuple[str, int, str], float] = {}
    for step in sorted(ref64):
        per_tensor: dict[str, list[dict[str, float]]] = {profile: [] for profile in PROFILES}
        for index, slots in enumerate(ref64[step]):
            per: dict[str, dict[str, float]] = {profile: {} for profile in PROFILES}
            for slot, r in slots.items():
                scale = float(np.max(np.abs(r))) if r.size else 0.0
                d32 = _max_abs_diff(ref32[step][index][slot], r)
                d32s = _max_abs_diff(ref32s[step][index][slot], r)
                local = {
                    "float32": max(d32, FLOOR_ULPS * U32 * scale),
                    "float32_scalar32": max(d32s, FLOOR_ULPS * U32 * scale),
                    "float64": max(d32s * (U64 / U32), FLOOR_ULPS * U64 * scale),
                }
                for profile, value in local.items():
                    key = (profile, index, slot)
                    running[key] = max(running.get(key, 0.0), value)
                    per[profile][slot] = K * running[key]
            for profile in PROFILES:
                per_tensor[profile].append(per[profile])
        if step in keep:
            for profile in PROFILES:
                out[profile][step] = per_tensor[profile]
    return out


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    return float(np.max(diff))
