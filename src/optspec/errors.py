"""Errors that optspec reports to a user as one line, with exit code 2.

Every error names what is wrong and where: the file, the rule, the equation, the case.
The command line catches :class:`OptspecError` and prints ``str(error)``; nothing else
should escape as a traceback for bad input.
"""

from __future__ import annotations


class OptspecError(Exception):
    """Base class: an input or usage problem that the user can fix."""

    exit_code = 2


class SpecError(OptspecError):
    """A malformed spec: bad TOML, an unknown name, a cycle, wrong arity, a bad variant.

    ``location`` is a human-readable path such as
    ``specs/adam.toml: rule 'adam', step equation 3 'm = ...'``; ``column`` is 1-based
    inside the equation text when known.
    """

    def __init__(self, location: str, message: str, column: int | None = None) -> None:
        self.location = location
        self.message = message
        self.column = column
        col = f", column {column}" if column is not None else ""
        super().__init__(f"{location}{col}: {message}")


class ExprError(Exception):
    """A syntax or arity error inside one expression; turned into a SpecError by callers."""

    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"column {column}: {message}")


class GoldenError(OptspecError):
    """A missing, corrupt, hand-edited or out-of-date golden vector file."""


class UsageError(OptspecError):
    """A bad command-line request: unknown rule, variant, implementation or hyperparameter."""


class AdapterError(OptspecError):
    """An implementation under test could not be built or run (framework missing, raised)."""


class LibraryCannotRun(AdapterError):
    """The installed library has no kernel for this check (torch 2.0.1's CPU float16 addcmul):
    neither bad input nor a wrong result, so the check is skipped with this message (``not run: ...``)."""
