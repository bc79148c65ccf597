"""LAMB's zero-norm guard and the ``zero_params`` case field it needs (bug-catalogue D1).

phi = ||theta|| / ||r|| is 0 for a zero tensor, which then never moves (fixed in
cybertronai/pytorch-lamb PR #6); optax.scale_by_trust_ratio sets phi = 1 when either norm is
0. The golden case ``zero_bias`` starts tensor 2 at exactly zero so that the two guards part.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from optspec.errors import SpecError
from optspec.golden import read_golden
from optspec.spec import SpecLibrary, parse_spec

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = SpecLibrary()


@pytest.mark.parametrize("rule", ["lamb", "lars"])
def test_zero_bias_case_starts_tensor_2_at_zero_and_the_guard_moves_it(rule: str) -> None:
    spec = LIBRARY.get(rule)
    golden = read_golden(ROOT / "conformance" / "golden" / f"{rule}.json", spec)
    test = golden.find("zero_bias", spec.default_variant())
    assert test is not None
    assert np.all(test.inputs.params[2] == 0) and np.all(test.inputs.params[3] != 0)
    assert np.all(test.expected[1][2]["theta"] != 0), f"{rule}: the guarded rule left the zero tensor at zero"


def test_without_the_guard_a_zero_tensor_never_moves() -> None:
    spec = LIBRARY.get("lamb")
    golden = read_golden(ROOT / "conformance" / "golden" / "lamb.json", spec)
    test = golden.find("zero_bias", spec.full_variant({"guard": "none"}))
    assert test is not None
    assert all(np.all(test.expected[step][2]["theta"] == 0) for step in test.steps)


def test_a_zero_params_index_out_of_range_is_a_one_line_error() -> None:
    text = (ROOT / "specs" / "lamb.toml").read_text().replace("zero_params = [2]", "zero_params = [5]")
    with pytest.raises(SpecError, match=re.escape("zero_params")) as info:
        parse_spec(text, "lamb.toml")
    assert "\n" not in str(info.value)
