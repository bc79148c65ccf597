"""The pytest plugin (entry point ``pytest11: optspec``): ``pytest --optspec RULE=MODULE:ATTR``.

In a library author's own repository, ``pytest --optspec adamw=mylib.optim:AdamW`` runs the
check of ``optspec check adamw mylib.optim:AdamW`` (:func:`optspec.testing.check_target`, the
same runner) once at collection and turns its report into tests, next to the project's own:

* ``optspec[adamw=mylib.optim:AdamW]::CASE-DTYPE``: one per case and dtype, including the
  flag rows (the report's ``knobs[amsgrad=raw]`` is the test ``knobs(amsgrad=raw)-float64``);
  a skipped case is a skipped test with its reason;
* ``optspec[adamw=mylib.optim:AdamW]::behaviour-NAME``: one per behavioural check.

A failing test's message is the report's: the failure, the diagnosis and the verdict. The
full report is printed in the terminal summary when anything failed (or with ``-v``).

``--optspec-xfails FILE`` marks the deviations the author accepts, as array-api-tests'
``--xfails-file`` does: one test id (a substring of the node id) per line, optionally followed
by ``# reason``; blank lines and lines starting with ``#`` are ignored. Every matching test is
marked ``xfail`` (strict or not as the ``xfail_strict`` ini option says); an id that matches no
test is a warning. ``--optspec-variant``, ``--optspec-map``, ``--optspec-kwarg``,
``--optspec-hyper``, ``--optspec-specs``, ``--optspec-dtype``, ``--optspec-inner``, ``--optspec-timeout`` and
``--optspec-no-behaviour`` are the options of ``optspec check`` and apply to every
``--optspec`` target.

``--optspec-bench RULE=MODULE:ATTR`` (with ``--optspec-bench-set``, ``-impl``, ``-dtype``) feeds
the pytest-benchmark suite :mod:`optspec.bench_suite` (``pytest --pyargs optspec.bench_suite``,
what ``optspec bench`` runs); the variant, map, kwarg, hyper and specs options apply to it too.

Without ``--optspec`` the plugin only registers its options: this module imports nothing but
pytest, and every hook returns at once, so other test runs are neither slowed nor changed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from optspec.checking.results import BehaviourResult, CaseResult, CheckReport

#: the stash key of the reports, for the terminal summary
_REPORTS = pytest.StashKey[list[Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("optspec", "optspec: conformance of an optimizer to a rule")
    group.addoption(
        "--optspec",
        action="append",
        default=[],
        metavar="RULE=MODULE:ATTR",
        help="check MODULE:ATTR against RULE (as optspec check), one test per case, dtype and behavioural check (repeatable)",
    )
    for name, metavar, what in (
        ("variant", "KNOB=VALUE", "the variant the target claims"),
        ("map", "SPEC=THEIRS", "the target's keyword for a spec hyperparameter"),
        ("kwarg", "NAME=VALUE", "a constructor argument the spec does not model (a Python literal)"),
        ("hyper", "NAME=VALUE", "override a hyperparameter in every case"),
        ("specs", "DIR", "an extra directory of rule specs"),
        ("dtype", "DTYPE", "float64 or float32 (default: both)"),
    ):
        group.addoption(
            f"--optspec-{name}", action="append", default=[], metavar=metavar, help=f"{what} (repeatable; every --optspec)"
        )
    group.addoption("--optspec-inner", default=None, metavar="MODULE:ATTR", help="the inner optimizer of a wrapper")
    group.addoption("--optspec-timeout", type=float, default=60.0, metavar="SECONDS", help="time limit of each run (default 60)")
    group.addoption("--optspec-no-behaviour", action="store_true", help="skip the behavioural checks")
    group.addoption(
        "--optspec-bench",
        action="append",
        default=[],
        metavar="RULE=MODULE:ATTR",
        help="time MODULE:ATTR's step against torch.optim and optax (with --pyargs optspec.bench_suite; repeatable)",
    )
    for name, metavar, what in (
        ("set", "NAME", "a parameter set of asv_bench/benchmarks/param_sets.json (default: all)"),
        ("impl", "NAME", "target, torch.for-loop, torch.foreach, torch.fused or optax.jit (default: all)"),
        ("dtype", "NAME", "float32 or bf16-fp32state (default: float32)"),
    ):
        group.addoption(f"--optspec-bench-{name}", action="append", default=[], metavar=metavar, help=f"{what} (repeatable)")
    group.addoption(
        "--optspec-xfails",
        default=None,
        metavar="FILE",
        help="test ids (node-id substrings, '# reason' allowed) of accepted deviations, marked xfail",
    )


def _parse_target(text: str) -> tuple[str, str]:
    rule, sep, target = text.partition("=")
    if not sep or not rule.strip() or ":" not in target:
        raise pytest.UsageError(f"--optspec {text}: expected RULE=MODULE:ATTR, e.g. --optspec adamw=torch.optim:AdamW")
    return rule.strip(), target.strip()


def read_xfails(path: Path) -> list[tuple[str, str]]:
    """(test id, reason) per non-blank, non-comment line of an xfails file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(f"--optspec-xfails {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    entries = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        test_id, _, reason = stripped.partition(" #")
        entries.append((test_id.strip(), reason.strip()))
    return entries


class OptspecFailure(Exception):
    """A failed row of the report; its message is shown without a traceback."""


class OptspecTarget(pytest.Collector):
    """The tests of one ``--optspec RULE=MODULE:ATTR``: the rows of its check report."""

    def __init__(self, *, report: CheckReport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report = report

    def collect(self) -> Iterator[pytest.Item]:
        seen: set[str] = set()
        for row in self.report.cases:
            # a flag row knobs[amsgrad=raw] is the test knobs(amsgrad=raw)-float64: brackets are pytest's parameters
            name = f"{row.case.replace('[', '(').replace(']', ')')}-{row.dtype}"
            if name not in seen:
                seen.add(name)
                yield OptspecItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}", row=row)
        for result in self.report.behaviour:
            name = f"behaviour-{result.name}"
            if name not in seen:
                seen.add(name)
                yield OptspecItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}", row=result)


class OptspecItem(pytest.Item):
    """One case and dtype, or one behavioural check, of a check report."""

    def __init__(self, *, row: CaseResult | BehaviourResult, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.row = row

    @property
    def report(self) -> CheckReport:
        assert isinstance(self.parent, OptspecTarget)
        return self.parent.report

    def runtest(self) -> None:
        from optspec.checking.results import CaseResult

        row, report = self.row, self.report
        if isinstance(row, CaseResult):
            if row.status == "skipped":
                pytest.skip(f"case {row.case} ({row.dtype}): {row.message}")
            if row.status != "fails":
                return
            lines = [f"FAIL case {row.case} ({row.dtype}): {row.message}"]
        else:
            if row.status in ("not applicable", "skipped"):
                pytest.skip(f"behaviour {row.name}: {row.message}")
            if row.status != "failed":
                return
            follows = f" (follows from the diagnosis: {row.follows})" if row.follows else ""
            lines = [f"FAIL behaviour {row.name}{follows}: {row.message}"]
        if report.diagnosis is not None:
            lines.append(f"diagnosis: {report.diagnosis.explanation}")
        lines.append(_verdict(report))
        raise OptspecFailure("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, OptspecFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"optspec check {self.report.rule} {self.report.target}: {self.name}"


def _verdict(report: CheckReport) -> str:
    from optspec.checking.runner import format_report

    return format_report(report).rsplit("\n", 1)[-1]


def _check(config: pytest.Config, rule: str, target: str) -> CheckReport:
    from optspec.checking.runner import DTYPES
    from optspec.errors import OptspecError
    from optspec.testing import check_target

    dtypes = config.getoption("optspec_dtype")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise pytest.UsageError(f"--optspec-dtype {dtype}: must be one of {', '.join(DTYPES)}")
    try:
        return check_target(
            rule,
            target,
            variant=config.getoption("optspec_variant"),
            maps=config.getoption("optspec_map"),
            kwargs=config.getoption("optspec_kwarg"),
            hypers=config.getoption("optspec_hyper"),
            inner=config.getoption("optspec_inner"),
            timeout=config.getoption("optspec_timeout"),
            behaviour=not config.getoption("optspec_no_behaviour"),
            specs=config.getoption("optspec_specs"),
            **({"dtypes": tuple(dtypes)} if dtypes else {}),
        )
    except OptspecError as exc:
        raise pytest.UsageError(f"--optspec {rule}={target}: {exc}") from None


@pytest.hookimpl(tryfirst=True)  # before -k, -m and --deselect select among the items
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    targets: Sequence[str] = config.getoption("optspec")
    if not targets:
        return
    xfails_path = config.getoption("optspec_xfails")
    xfails = read_xfails(Path(xfails_path)) if xfails_path else []
    reports = config.stash.setdefault(_REPORTS, [])
    added: list[pytest.Item] = []
    for text in targets:
        rule, target = _parse_target(text)
        report = _check(config, rule, target)
        reports.append(report)
        name = f"optspec[{rule}={target}]"
        collector = OptspecTarget.from_parent(session, name=name, nodeid=name, report=report)
        added.extend(collector.collect())
    for test_id, reason in xfails:
        matched = [item for item in added if test_id in item.nodeid]
        for item in matched:
            item.add_marker(pytest.mark.xfail(reason=f"xfails file {xfails_path}" + (f": {reason}" if reason else "")))
        if not matched:
            warnings.warn(
                pytest.PytestWarning(f"--optspec-xfails {xfails_path}: {test_id!r} matches no optspec test"), stacklevel=1
            )
    items.extend(added)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    from optspec.checking.runner import format_report

    for report in reports:
        if report.conforms and config.getoption("verbose") <= 0:
            continue
        terminalreporter.write_sep("=", f"optspec check {report.rule} {report.target}")
        terminalreporter.write_line(format_report(report))
