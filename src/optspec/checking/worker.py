"""Run target code with a time limit, in a worker process that can be killed.

:class:`Isolated` keeps one ``spawn``-started worker process (spawn, because a forked
copy of a process that has imported JAX or torch may deadlock) and sends it calls of
module-level functions with picklable arguments. A call that does not answer within its
time limit gets the worker terminated (then killed) and is reported as a timeout; a worker
that dies (a segfault in a C extension, ``os._exit``) is reported likewise; the next call
starts a fresh worker. :class:`InProcess` runs the same calls directly, without a time
limit, for tests and for targets given as Python objects.

Every failure of the target becomes :class:`TargetFailure` with a one-line message.
"""

from __future__ import annotations

import importlib
import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any, Protocol

from optspec.checking.targets import TargetError, TargetUsageError


class TargetFailure(Exception):
    """A call into the target failed; ``kind`` is raised, timeout, crashed or usage."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


class Executor(Protocol):
    def call(self, function: str, *args: Any, timeout: float) -> Any:
        """Call ``module:function(*args)``; raise :class:`TargetFailure` when it fails."""

    def close(self) -> None: ...


def _resolve(function: str) -> Any:
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


def _invoke(function: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", _resolve(function)(*args)
    except TargetUsageError as exc:
        return "usage", str(exc)
    except TargetError as exc:
        return "raised", str(exc)
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        return "raised", f"{type(exc).__name__}: {exc}{where}"


def _worker_main(connection: Connection) -> None:
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        function, args = message
        status, payload = _invoke(function, args)
        try:
            connection.send((status, payload))
        except Exception as exc:  # an unpicklable result
            connection.send(("raised", f"the result cannot be sent back: {type(exc).__name__}: {exc}"))


class InProcess:
    """Calls in this process: no isolation and no time limit."""

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        del timeout
        status, payload = _invoke(function, args)
        if status != "ok":
            raise TargetFailure(status, payload)
        return payload

    def close(self) -> None:
        pass


class Isolated:
    """Calls in a spawned worker process, each with a time limit."""

    def __init__(self, startup_timeout: float = 180.0) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self.startup_timeout = startup_timeout
        #: a call made on every fresh worker before the real one (importing the target), so
        #: that interpreter start-up and imports do not count against a case's time limit
        self.warmup: tuple[str, tuple[Any, ...]] | None = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child,), daemon=True, name="optspec-check-worker")
        process.start()
        child.close()
        self._process, self._connection = process, parent

    def _stop(self) -> None:
        process, connection = self._process, self._connection
        self._process, self._connection = None, None
        if connection is not None:
            connection.close()
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        if self._process is None or not self._process.is_alive():
            self._stop()
            self._start()
            if self.warmup is not None:
                self._call(self.warmup[0], self.warmup[1], self.startup_timeout)
        return self._call(function, args, timeout)

    def _call(self, function: str, args: tuple[Any, ...], timeout: float) -> Any:
        assert self._connection is not None
        try:
            self._connection.send((function, args))
            if not self._connection.poll(timeout):
                self._stop()
                raise TargetFailure("timeout", f"no answer within the time limit of {timeout:g} s (the worker was killed)")
            status, payload = self._connection.recv()
        except (EOFError, OSError, BrokenPipeError):
            if self._process is not None:
                self._process.join(2)
            code = self._process.exitcode if self._process is not None else None
            self._stop()
            raise TargetFailure("crashed", f"the worker process died (exit code {code})") from None
        if status != "ok":
            raise TargetFailure(status, payload)
        return payload

    def close(self) -> None:
        if self._connection is not None and self._process is not None and self._process.is_alive():
            try:
                self._connection.send(None)
                self._process.join(2)
            except (OSError, BrokenPipeError):
                pass
        self._stop()
