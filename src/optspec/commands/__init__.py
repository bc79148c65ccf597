"""Subcommands of the ``optspec`` command line, one module each (see :mod:`optspec.cli`)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from optspec.errors import UsageError
from optspec.spec import SpecLibrary


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--specs", action="append", default=[], metavar="DIR", help="an extra directory of rule specs (repeatable)"
    )


def library_from(args: argparse.Namespace) -> SpecLibrary:
    return SpecLibrary(extra_dirs=[Path(d) for d in args.specs])


def check_output_file(path: Path | None, option: str) -> None:
    """Fail before any work (UsageError, exit 2) when ``path`` cannot be written atomically:
    it is a directory, or its directory is missing or not writable."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    check_output_dir(path.parent, option, shown=path)


def check_output_dir(directory: Path, option: str, shown: Path | None = None) -> None:
    """Fail before any work when files cannot be created in ``directory`` (or, if it does not
    exist yet, in the nearest existing directory above it, where it would be created)."""
    shown = shown or directory
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {shown}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".optspec-write-test-", dir=existing)
    except OSError as exc:
        raise UsageError(f"{option} {shown}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def write_failed(path: Path, exc: OSError) -> UsageError:
    """A write that failed after all (disk full, a directory removed meanwhile), as one line."""
    return UsageError(f"cannot write {path}: {exc.strerror or exc}")
