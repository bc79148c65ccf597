"""Progress of a long command, always on stderr (stdout stays the command's own output).

* on a terminal (stdout and stderr both TTYs): a tqdm bar with what was done last (the rule
  and implementation, the rule being measured, the case), done/total and the elapsed time;
* otherwise (a pipe, a file, CI's log): one plain line per step, e.g.
  ``optspec run: adam x optax: 120/3320 checks, 12.3 s``;
* with ``--quiet``: nothing.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Literal, TextIO

Mode = Literal["bar", "lines", "off"]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def progress_mode(quiet: bool, stdout: Any = None, stderr: Any = None) -> Mode:
    """``off`` when quiet, ``bar`` when stdout and stderr are terminals, else ``lines``."""
    if quiet:
        return "off"
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    return "bar" if _isatty(stdout) and _isatty(stderr) else "lines"


class Progress:
    """``total`` units of work (``unit``: checks, tests, runs) of the command ``what``."""

    def __init__(self, what: str, total: int | None, unit: str, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.mode: Mode = progress_mode(quiet, stderr=self.stream)
        self.started = time.monotonic()
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", file=self.stream, dynamic_ncols=True, leave=True)

    def set_total(self, total: int) -> None:
        """The amount of work, once it is known."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, label: str, count: int = 1) -> None:
        """``count`` more units done, the last of them described by ``label`` (``adam x optax``)."""
        self.done += count
        if self.mode == "bar":
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(count)
        elif self.mode == "lines":
            of = f"/{self.total}" if self.total is not None else ""
            elapsed = time.monotonic() - self.started
            print(f"{self.what}: {label}: {self.done}{of} {self.unit}, {elapsed:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
