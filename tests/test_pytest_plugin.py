"""The pytest plugin (``pytest --optspec RULE=MODULE:ATTR``) and ``optspec.testing.assert_conforms``, in process.

pytest's ``pytester`` runs pytest inside a temporary directory, the way an author runs it in
their own repository; the plugin comes in through its ``pytest11`` entry point. The same flow
from a fresh virtual environment with only the built wheel is tests/test_pytest_plugin_wheel.py
(slow; ``tox -e plugin-wheel``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from optspec.errors import UsageError
from optspec.testing import assert_conforms, check_target

pytest_plugins = ["pytester"]

#: the planted optimizers (tests/fixtures/planted.py), written into each temporary project as planted.py
PLANTED = (Path(__file__).parent / "fixtures" / "planted.py").read_text()


def test_plugin_is_inert_without_the_option(pytester: pytest.Pytester) -> None:
    """Without --optspec the author's own tests run as before: nothing added, nothing imported."""
    pytester.makepyfile(
        test_own="""
        import sys

        def test_own():
            assert "optspec.testing" not in sys.modules, "the plugin imported optspec.testing without --optspec"
            assert "optspec.checking.runner" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    shown = [line for line in result.outlines if not line.startswith(("plugins:", "rootdir:"))]
    assert not any("optspec" in line for line in shown), "\n".join(result.outlines)


def test_plugin_comes_from_the_entry_point() -> None:
    """The plugin is registered through the installed distribution's pytest11 entry point."""
    code = "import importlib.metadata as m; print([e.value for e in m.entry_points(group='pytest11') if e.name == 'optspec'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "optspec.pytest_plugin" in out, f"no pytest11 entry point 'optspec' in the installed metadata: {out!r}"


def test_torch_adamw_passes_one_test_per_case_dtype_and_behaviour(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:randomly", "-v", "--optspec", "adamw=torch.optim:AdamW")
    text = "\n".join(result.outlines)
    assert result.ret == 0, f"torch.optim.AdamW conforms to adamw (tests/test_check.py); pytest said:\n{text}"
    for test in ("defaults-float64", "defaults-float32", "zero_grad-float32", "behaviour-state_dict", "behaviour-maximize"):
        assert f"optspec[adamw=torch.optim:AdamW]::{test} PASSED" in text, f"no passing test {test}:\n{text}"
    assert "verdict: torch.optim:AdamW conforms to adamw" in text, f"-v prints the report in the summary:\n{text}"


def test_a_broken_adamw_fails_readably(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(planted=PLANTED)
    # In process, pytester's run finds optspec already imported by the tests before it and warns that
    # it cannot rewrite its asserts (a line naming _pytest's file in site-packages): the harness's
    # warning, not the plugin's output, which is what the traceback check below reads.
    result = pytester.runpytest(
        "-p", "no:randomly", "-W", "ignore::pytest.PytestAssertRewriteWarning",
        "--optspec", "adamw=planted:BrokenAdamW", "--optspec-no-behaviour",
    )  # fmt: skip
    text = "\n".join(result.outlines)
    assert result.ret == 1, f"the planted coupled-decay AdamW must fail:\n{text}"
    assert "FAILED optspec[adamw=planted:BrokenAdamW]::knobs-float64" in text, text
    flag_row = "FAILED optspec[adamw=planted:BrokenAdamW]::scheduled(maximize=on)-float64"
    assert flag_row in text, f"flag rows are tests:\n{text}"
    assert "FAIL case knobs (float64): adamw x planted:BrokenAdamW" in text, f"the failure states the row:\n{text}"
    assert "diagnosis: behaves like adam" in text, f"the failure carries the diagnosis:\n{text}"
    assert "verdict: planted:BrokenAdamW does NOT conform to adamw" in text, text
    assert "Traceback" not in text and "site-packages" not in text, f"a verdict is a message, not a traceback:\n{text}"


def test_the_xfails_file_accepts_deviations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(planted=PLANTED)
    args = ("-p", "no:randomly", "--optspec", "sgd=planted:BrokenSGD", "--optspec-no-behaviour", "--optspec-dtype", "float64")
    result = pytester.runpytest(*args)
    text = "\n".join(result.outlines)
    assert result.ret == 1, f"the planted SGD that ignores weight_decay must fail:\n{text}"
    failed = sorted(line.split()[1] for line in result.outlines if line.startswith("FAILED "))
    assert failed and all(t.endswith("-float64") for t in failed), f"--optspec-dtype float64 runs float64 only:\n{text}"

    # The author accepts these deviations: an xfails file lists them (array-api-tests' format).
    pytester.makefile(".txt", xfails="# accepted deviations\n" + "\n".join(f"{t}  # coupled decay, on purpose" for t in failed))
    result = pytester.runpytest(*args, "--optspec-xfails", "xfails.txt", "-rx")
    text = "\n".join(result.outlines)
    assert result.ret == 0, f"every failure is listed in xfails.txt, so the run passes:\n{text}"
    assert "matches no optspec test" not in text, text
    outcomes = result.parseoutcomes()
    assert outcomes.get("xfailed") == len(failed) and "failed" not in outcomes, f"{outcomes}:\n{text}"
    assert "coupled decay, on purpose" in text, f"the reason from the file is shown:\n{text}"


def test_bad_input_is_one_line(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:randomly", "--optspec", "nosuchrule=torch.optim:AdamW")
    text = "\n".join(result.errlines + result.outlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "--optspec nosuchrule=torch.optim:AdamW: unknown rule 'nosuchrule'" in text and "Traceback" not in text, text
    result = pytester.runpytest("-p", "no:randomly", "--optspec", "adamw")
    assert "expected RULE=MODULE:ATTR" in "\n".join(result.errlines), result.errlines
    result = pytester.runpytest("-p", "no:randomly", "--optspec", "sgd=torch.optim:SGD", "--optspec-xfails", "missing.txt")
    assert "--optspec-xfails missing.txt: cannot read it" in "\n".join(result.errlines), result.errlines


def test_assert_conforms_raises_with_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "planted.py").write_text(PLANTED)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError) as raised:
        assert_conforms("sgd", "planted:BrokenSGD", behaviour=False, dtypes=("float64",))
    message = str(raised.value)
    assert message.startswith("optspec check sgd planted:BrokenSGD"), f"the message is the report:\n{message}"
    assert "FAIL case " in message and "\ndiagnosis: " in message, f"the report's failures and diagnosis:\n{message}"
    assert message.splitlines()[-1].startswith("verdict: planted:BrokenSGD does NOT conform to sgd"), message


def test_assert_conforms_takes_python_values() -> None:
    report = assert_conforms(
        "sgd",
        "torch.optim:SGD",
        maps={"momentum": "momentum"},
        hypers={"momentum": 0.9},
        kwargs={"foreach": False},
        behaviour=False,
    )
    assert report.conforms and report.kwargs == {"foreach": False} and report.overrides == {"momentum": 0.9}, report
    with pytest.raises(UsageError, match="only Python literals"):
        check_target("sgd", "torch.optim:SGD", kwargs={"foreach": object()})
    with pytest.raises(UsageError, match="unknown rule 'nosuchrule'"):
        check_target("nosuchrule", "torch.optim:SGD")
