"""Conformance of the sharded columns at world size 2 (``tox -e sharded``; the ``sharded`` marker).

The same golden cases and error model as ``test_conformance.py``, through the implementations
``optspec run --world-size 2`` adds: torch.optim classes on DTensor ``Shard(0)`` / ``Shard(1)``
parameters, under FSDP2's ``fully_shard`` and under ``ZeroRedundancyOptimizer``, over one gloo
group of 2 ranks started once for the session, and optax over 2 forced host devices. A library
that raises on sharded parameters where a registered defect says it does (torch Adafactor,
impls/defects.toml) is an expected failure with the defect's reason; any other error fails.
Each rule x implementation group runs once (``run_checks``), in this process: one gang per
process, so this module runs without xdist workers (``pytest -n 0``).
"""

from __future__ import annotations

import pytest

from optspec.conformance import Check, CheckResult, check_groups, enumerate_checks, load_goldens
from optspec.impls import sharded_implementations
from optspec.spec import SpecLibrary

from .conftest import GOLDEN_DIR
from .test_conformance import expect_verdict, grouped_result

pytestmark = pytest.mark.sharded

WORLD_SIZE = 2
_LIBRARY = SpecLibrary()
_CHECKS = enumerate_checks(_LIBRARY, load_goldens(_LIBRARY, GOLDEN_DIR), sharded_implementations(WORLD_SIZE))
_GROUPS = {(g[0].spec.name, g[0].implementation.name): g for g in check_groups(_CHECKS)}
_RESULTS: dict[str, CheckResult] = {}


def test_every_rule_with_a_torch_binding_has_sharded_columns() -> None:
    """`optspec run --world-size 2` shows a column per layout for every rule torch.optim or optax binds."""
    from optspec.impls import optax_jax, torch_optim

    columns: dict[str, set[str]] = {}
    for check in _CHECKS:
        columns.setdefault(check.spec.name, set()).add(check.implementation.name)
    torch_layouts = {f"torch.{layout}@{WORLD_SIZE}" for layout in ("dtensor.shard0", "dtensor.shard1", "fsdp2", "zero")}
    for rule in torch_optim.BINDINGS:
        assert torch_layouts <= columns.get(rule, set()), f"{rule}: sharded torch columns {sorted(columns.get(rule, ()))}"
    for rule in optax_jax.BINDINGS:
        assert f"optax.sharded@{WORLD_SIZE}" in columns.get(rule, set()), f"{rule}: no optax.sharded@{WORLD_SIZE} column"


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in _CHECKS])
def test_conforms_sharded(check: Check) -> None:
    expect_verdict(grouped_result(check, _GROUPS, _RESULTS))
