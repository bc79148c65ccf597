"""Assertions for a library author's own test suite: ``assert_conforms(rule, target, ...)``.

The same check as ``optspec check RULE TARGET`` (:func:`optspec.checking.runner.check`, not a
second copy of it), with Python values instead of command-line strings::

    from optspec.testing import assert_conforms

    def test_my_adam():
        assert_conforms("adam", "mylib.optim:MyAdam", variant={"amsgrad": "raw"}, maps={"beta1": "betas[0]"})

A target that does not conform raises :class:`AssertionError` whose message is the check's
report (the case table, every failure, the diagnosis and the verdict). A target that conforms,
possibly through known deviations, returns the :class:`~optspec.checking.results.CheckReport`.
Bad input (an unknown rule, variant or keyword, a target that cannot be imported or run) raises
:class:`optspec.errors.UsageError` with the same one-line message the command prints: it is a
mistake in the test, not a verdict on the optimizer.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optspec.checking.results import CheckReport
from optspec.checking.runner import DTYPES, check, format_report
from optspec.checking.worker import valid_timeout
from optspec.errors import UsageError
from optspec.spec import SpecLibrary

__all__ = ["assert_conforms", "check_target"]


def _assignments(values: Mapping[str, Any] | Sequence[str] | None, what: str) -> list[str]:
    """``{"beta1": "b1"}`` (or already ``["beta1=b1"]``) as the runner's ``NAME=VALUE`` strings."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [f"{name}={value}" for name, value in values.items()]
    if isinstance(values, str):
        raise UsageError(f"{what}: give a mapping such as {{'name': value}}, not the string {values!r}")
    return [str(item) for item in values]


def _hypers(values: Mapping[str, float] | Sequence[str] | None) -> list[str]:
    if isinstance(values, Mapping):
        # repr round-trips a float exactly; the runner parses it with float()
        return [f"{name}={float(value)!r}" for name, value in values.items()]
    return _assignments(values, "hypers")


def _kwargs(values: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Fixed constructor arguments as the runner's literals; only Python literals travel to the worker."""
    if not isinstance(values, Mapping):
        return _assignments(values, "kwargs")
    out = []
    for name, value in values.items():
        text = repr(value)
        try:
            same = ast.literal_eval(text) == value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            same = False
        if not same:
            raise UsageError(
                f"kwargs {name}={text[:60]}: only Python literals (None, True, 0.5, 'text', (1, 2)) can be passed to the target"
            )
        out.append(f"{name}={text}")
    return out


def check_target(
    rule: str,
    target: str | Any,
    *,
    variant: Mapping[str, str] | Sequence[str] | None = None,
    kwargs: Mapping[str, Any] | Sequence[str] | None = None,
    maps: Mapping[str, str] | Sequence[str] | None = None,
    hypers: Mapping[str, float] | Sequence[str] | None = None,
    inner: str | Any | None = None,
    specs: Sequence[str | Path] = (),
    timeout: float = 60.0,
    behaviour: bool = True,
    dtypes: Sequence[str] = DTYPES,
    isolate: bool | None = None,
) -> CheckReport:
    """Run ``optspec check`` on ``target`` and return its report (no assertion).

    ``target`` is ``"module:attribute"`` (run in a worker process with ``timeout``) or the
    class or factory itself (run in this process unless ``isolate=True``). ``variant`` is the
    variant the target claims (``{"amsgrad": "raw"}``), ``maps`` the target's keyword for a
    spec hyperparameter (``{"beta1": "betas[0]"}``), ``kwargs`` constructor arguments the spec
    does not model (Python literals), ``hypers`` hyperparameter overrides, ``inner`` the inner
    optimizer of a wrapper, ``specs`` extra spec directories: the options of ``optspec check``.
    """
    valid_timeout(timeout)
    return check(
        rule,
        target,
        library=SpecLibrary(extra_dirs=[Path(d) for d in specs]),
        variant=_assignments(variant, "variant"),
        hypers=_hypers(hypers),
        maps=_assignments(maps, "maps"),
        timeout=timeout,
        isolate=isolate,
        behaviour=behaviour,
        dtypes=dtypes,
        kwargs=_kwargs(kwargs),
        inner=inner,
    )


def assert_conforms(
    rule: str,
    target: str | Any,
    *,
    variant: Mapping[str, str] | Sequence[str] | None = None,
    kwargs: Mapping[str, Any] | Sequence[str] | None = None,
    maps: Mapping[str, str] | Sequence[str] | None = None,
    hypers: Mapping[str, float] | Sequence[str] | None = None,
    inner: str | Any | None = None,
    specs: Sequence[str | Path] = (),
    timeout: float = 60.0,
    behaviour: bool = True,
    dtypes: Sequence[str] = DTYPES,
    isolate: bool | None = None,
) -> CheckReport:
    """Assert that ``target`` conforms to ``rule`` (known deviations allowed); see :func:`check_target`.

    Raises AssertionError with the check's report as the message when it does not.
    """
    report = check_target(
        rule,
        target,
        variant=variant,
        kwargs=kwargs,
        maps=maps,
        hypers=hypers,
        inner=inner,
        specs=specs,
        timeout=timeout,
        behaviour=behaviour,
        dtypes=dtypes,
        isolate=isolate,
    )
    if not report.conforms:
        raise AssertionError(format_report(report))
    return report
