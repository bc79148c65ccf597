"""Adding a rule means adding a TOML file: a new rule runs through reference, golden and conformance.

The rule here (sign descent with momentum and decoupled decay, Lion-like) exists only in a
temporary directory. No Python is written for it except a hand-written implementation
under test, which plays the part of a third-party library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from optspec.cli import main
from optspec.conformance import enumerate_checks, load_goldens, run_check
from optspec.golden import check_all, write_all
from optspec.impls.base import Binding, Plan, Slot, Support
from optspec.reference import FLOAT64, CaseInputs, Trajectory, run_reference
from optspec.spec import SpecLibrary

SPEC = """
name = "signum"
title = "Sign descent with momentum"
doc = "b_t = mu b_{t-1} + (1 - mu) g_t;  theta_t = theta_{t-1} (1 - eta_t lambda) - eta_t sign(b_t)"
references = [{ title = "signSGD: Compressed Optimisation for Non-Convex Problems", arxiv = "1802.04434", year = 2018 }]
step = [
  "grad: g = grad",
  "b = mu * b + (1 - mu) * g",
  "decay: theta = theta * (1 - lr * weight_decay)",
  "theta = theta - lr * sign(b)",
]

[hyper.lr]
default = 1e-3
domain = "[0, inf)"
doc = "Learning rate."

[hyper.mu]
default = 0.9
domain = "[0, 1)"
doc = "Momentum."

[hyper.weight_decay]
default = 0.0
domain = "[0, inf)"
doc = "Decoupled decay."

[state.b]
init = "0"
doc = "Momentum buffer."

[variants.decay]
default = "lr"
values.lr = { doc = "Scaled by the learning rate." }
values.unscaled = { doc = "Not scaled.", replace = { decay = ["decay: theta = theta * (1 - weight_decay)"] } }

[[cases]]
id = "decayed"
comment = "Decay strong enough that its scaling matters."
flags = ["KnobsMatter"]
hyper = { lr = 1e-2, weight_decay = 0.05 }
"""


class HandWrittenSignum:
    """A third-party implementation written without optspec's evaluator."""

    framework = "numpy"
    dtypes = ("float32", "float64")

    def __init__(self, name: str, broken: bool = False) -> None:
        self.name = name
        self.broken = broken

    def unavailable(self) -> str | None:
        return None

    def binding(self, rule: str) -> Binding | None:
        if rule != "signum":
            return None
        return Binding(
            rule="signum",
            target="HandWrittenSignum",
            hyper={"mu": "mu", "weight_decay": "weight_decay"},
            variants={"decay": {"lr": Support()}},
            state={"b": Slot("buffer")},
        )

    def run(self, plan: Plan, inputs: CaseInputs, hyper: Mapping[str, float], dtype: str, record: Sequence[int]) -> Trajectory:
        real = np.float32 if dtype == "float32" else np.float64
        mu, wd = real(plan.kwargs["mu"]), real(plan.kwargs["weight_decay"])
        out: Trajectory = {s: [] for s in record}
        for param, grads in zip(inputs.params, inputs.grads, strict=True):
            theta, buffer = param.astype(real), np.zeros(param.shape, real)
            for t in range(1, inputs.steps + 1):
                lr = real(hyper["lr"] * inputs.lr_multipliers[t - 1])
                buffer = mu * buffer + (1 - mu) * grads[t - 1].astype(real)
                theta = theta * (1 - (lr if not self.broken else 1) * wd) - lr * np.sign(buffer)
                if t in out:
                    out[t].append({"theta": theta.astype(np.float64), "b": buffer.astype(np.float64)})
        return out


@pytest.fixture
def rule_dir(tmp_path: Path) -> Path:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "signum.toml").write_text(SPEC)
    return tmp_path


def test_new_rule_runs_through_reference_golden_and_conformance(rule_dir: Path) -> None:
    library = SpecLibrary(extra_dirs=[rule_dir / "specs"])
    spec = library.get("signum")
    assert spec.path.endswith("signum.toml")

    # reference
    case = spec.case("defaults")
    from optspec.cases import make_inputs

    inputs = make_inputs(spec, case)
    trajectory = run_reference(spec.resolve(), spec.hyper_values(), inputs, FLOAT64, [1])
    g1 = inputs.grads[2][0]
    expected = inputs.params[2] - 1e-3 * np.sign(0.1 * g1)
    assert np.allclose(trajectory[1][2]["theta"], expected, rtol=0, atol=1e-15), (
        "one reference step disagrees with the closed form"
    )

    # golden
    golden_dir = rule_dir / "golden"
    write_all([spec], golden_dir)
    assert check_all([spec], golden_dir) == [], "freshly written golden vectors are not current"

    # conformance
    goldens = load_goldens(library, golden_dir, ["signum"])
    good = [run_check(c) for c in enumerate_checks(library, goldens, [HandWrittenSignum("mine")])]
    not_conforming = [r.message for r in good if r.variant["decay"] == "lr" and r.status != "conforms"]
    assert not not_conforming, not_conforming
    unscaled = [r for r in good if r.variant["decay"] == "unscaled"]
    assert unscaled and all(r.status == "skipped" and "cannot express decay=unscaled" in r.message for r in unscaled), [
        (r.status, r.message) for r in unscaled
    ]

    broken = [run_check(c) for c in enumerate_checks(library, goldens, [HandWrittenSignum("broken", broken=True)])]
    failed = [r for r in broken if r.status == "fails"]
    assert failed, "an implementation with unscaled decay passed as lr-scaled decay"
    assert any("signum/default/decayed" in r.message for r in failed), [r.message for r in failed]


def test_new_rule_through_the_command_line(rule_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs, golden = str(rule_dir / "specs"), str(rule_dir / "golden")
    assert main(["list", "--specs", specs, "signum"]) == 0
    assert "variant decay: lr (default), unscaled" in capsys.readouterr().out
    assert main(["golden", "--specs", specs, "--dir", golden, "signum"]) == 0
    assert main(["golden", "--specs", specs, "--dir", golden, "--check", "signum"]) == 0
