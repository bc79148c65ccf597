"""Run target code with a time limit, in a worker process that can be killed.

:class:`Isolated` keeps one ``spawn``-started worker process (spawn, because a forked
copy of a process that has imported JAX or torch may deadlock) and sends it calls of
module-level functions with picklable arguments. A call that does not answer within its
time limit gets the worker terminated (then killed) and is reported as a timeout; a worker
that dies (a segfault in a C extension, ``os._exit``) is reported likewise; the next call
starts a fresh worker. :class:`InProcess` runs the same calls directly, without a time
limit, for tests and for targets given as Python objects.

Robustness, not security: the worker runs the target with the user's rights (and with the
current directory first on ``sys.path``); it only keeps a misbehaving target from taking
optspec down with it:

* every request carries an id and every reply repeats it; a reply to another request (a
  stray) is dropped. A target that forks inside a call would leave a second copy of the
  worker that answers too: the copy never answers (it exits where it would reply), and the
  call during which the fork happened fails, naming the fork;
* the worker runs in its own session (process group); closing the executor kills the whole
  group, so the target's own child processes do not outlive the check, and a worker whose
  parent has gone away kills its group;
* the target's output (file descriptors 1 and 2, which also catches C-level prints) goes to a
  file, not to optspec's terminal; each call's output is read back, truncated to
  :data:`OUTPUT_LIMIT` characters, and :meth:`Isolated.captured` lists the distinct texts;
* every failure of the target becomes :class:`TargetFailure` with a one-line message of at
  most :data:`MESSAGE_LIMIT` characters, KeyboardInterrupt and SystemExit raised by the
  target included.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Protocol

from optspec.checking.targets import TargetError, TargetUsageError
from optspec.errors import UsageError

#: Longest failure message kept (folded to one line first).
MESSAGE_LIMIT = 500
#: Characters of a call's output kept for the report.
OUTPUT_LIMIT = 2000


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` folded to one line (newlines become `` | ``) and cut to ``limit`` characters."""
    folded = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    if len(folded) <= limit:
        return folded
    return f"{folded[: limit - 40]}... ({len(folded)} characters in all)"


class TargetFailure(Exception):
    """A call into the target failed; ``kind`` is raised, timeout, crashed or usage."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = one_line(message)
        super().__init__(self.message)


class Executor(Protocol):
    def call(self, function: str, *args: Any, timeout: float) -> Any:
        """Call ``module:function(*args)``; raise :class:`TargetFailure` when it fails."""

    def captured(self) -> list[str]:
        """The distinct non-empty outputs the target printed so far, in order."""

    def close(self) -> None: ...


def _resolve(function: str) -> Any:
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


def _invoke(function: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", _resolve(function)(*args)
    except TargetUsageError as exc:
        return "usage", one_line(str(exc))
    except TargetError as exc:
        return "raised", one_line(str(exc))
    except BaseException as exc:  # KeyboardInterrupt and SystemExit raised by the target as well
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        text = str(exc)
        return "raised", one_line(f"{type(exc).__name__}{': ' + text if text else ''}{where}")


# --------------------------------------------------------------------------- inside the worker

_FORKS = 0


def _count_fork() -> None:
    global _FORKS
    _FORKS += 1


def _watch_parent(parent: int) -> None:
    """Kill the worker's process group once the parent has gone away (SIGKILL of optspec)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def _redirect_output(path: str) -> int:
    """Point file descriptors 1 and 2 at ``path`` (append mode); return its descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return fd


def _worker_main(connection: Connection, output_path: str | None = None, parent: int | None = None) -> None:
    with contextlib.suppress(OSError):
        os.setsid()  # own session and process group: the parent kills the whole group
    pid = os.getpid()
    os.register_at_fork(after_in_parent=_count_fork)
    fd = _redirect_output(output_path) if output_path else None
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="optspec-parent-watch").start()
    connection.send(("ready", pid))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        except Exception:  # a request that cannot be unpickled here
            continue
        if message is None:
            return
        request, function, args = message
        if fd is not None:
            os.ftruncate(fd, 0)
        forks = _FORKS
        status, payload = _invoke(function, args)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if os.getpid() != pid:
            # A copy made by os.fork() inside the target: the worker itself answers this
            # request; the copy must neither answer nor go on serving requests.
            os._exit(0)
        if _FORKS != forks:
            status, payload = "raised", "the target forked a child process during the call; its results cannot be trusted"
        try:
            connection.send((request, status, payload))
        except Exception as exc:  # an unpicklable result
            connection.send((request, "raised", one_line(f"the result cannot be sent back: {type(exc).__name__}: {exc}")))


# --------------------------------------------------------------------------- executors


class InProcess:
    """Calls in this process: no isolation and no time limit (Python-level output is captured)."""

    def __init__(self) -> None:
        self._captured: dict[str, None] = {}

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        del timeout
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            status, payload = _invoke(function, args)
        _remember(self._captured, buffer.getvalue())
        if status != "ok":
            raise TargetFailure(status, payload)
        return payload

    def captured(self) -> list[str]:
        return list(self._captured)

    def close(self) -> None:
        pass


def _remember(seen: dict[str, None], text: str) -> None:
    text = text.strip("\n")
    if text.strip():
        if len(text) > OUTPUT_LIMIT + 100:
            text = f"{text[:OUTPUT_LIMIT]}\n... ({len(text)} characters in all)"
        seen.setdefault(text, None)


class Isolated:
    """Calls in a spawned worker process, each with a time limit."""

    def __init__(self, startup_timeout: float = 180.0) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        #: the limit for a fresh worker to start (interpreter and optspec, not the target)
        self.startup_timeout = startup_timeout
        #: a call made on every fresh worker before the real one (importing the target), so
        #: that interpreter start-up and imports do not count against a case's time limit
        self.warmup: tuple[str, tuple[Any, ...]] | None = None
        #: how long the first call (importing the target) took; a re-import on a fresh worker
        #: may take up to three times as long (plus 5 s) when that exceeds the case's limit
        self._first_call_seconds: float | None = None
        self._requests = 0
        #: (request id, status) of every dropped reply that answered another request
        self.strays: list[tuple[int, str]] = []
        self._captured: dict[str, None] = {}
        fd, self._output_path = tempfile.mkstemp(prefix="optspec-target-output-", suffix=".txt")
        os.close(fd)

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self._output_path, os.getpid()), daemon=True, name="optspec-check-worker"
        )
        process.start()
        child.close()
        self._process, self._connection = process, parent
        try:
            ready = parent.poll(self.startup_timeout) and parent.recv()
        except (EOFError, OSError):
            ready = None
        if not (isinstance(ready, tuple) and ready[:1] == ("ready",)):
            code = process.exitcode
            self._stop()
            raise TargetFailure("crashed", f"the worker process did not start (exit code {code}){self._output_note()}")

    def _stop(self) -> None:
        process, connection = self._process, self._connection
        self._process, self._connection = None, None
        if connection is not None:
            connection.close()
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        # The target's own children are in the worker's process group: end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.join(1)

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        if self._process is None or not self._process.is_alive():
            self._stop()
            self._start()
            if self.warmup is not None:
                limit = timeout
                if self._first_call_seconds is not None:
                    limit = max(timeout, 3 * self._first_call_seconds + 5)
                self._call(self.warmup[0], self.warmup[1], limit)
        if self._first_call_seconds is None:
            start = time.monotonic()
            result = self._call(function, args, timeout)
            self._first_call_seconds = time.monotonic() - start
            return result
        return self._call(function, args, timeout)

    def _call(self, function: str, args: tuple[Any, ...], timeout: float) -> Any:
        assert self._connection is not None
        self._requests += 1
        request = self._requests
        deadline = time.monotonic() + timeout
        try:
            self._connection.send((request, function, args))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._connection.poll(remaining):
                    self._stop()
                    raise TargetFailure(
                        "timeout",
                        f"no answer within the time limit of {timeout:g} s (the worker was killed){self._output_note()}",
                    )
                reply = self._connection.recv()
                if isinstance(reply, tuple) and len(reply) == 3 and reply[0] == request:
                    break
                # A stray: an answer to another request (or not an answer at all); dropped.
                is_reply = isinstance(reply, tuple) and len(reply) == 3
                self.strays.append((reply[0] if is_reply else -1, str(reply[1]) if is_reply else type(reply).__name__))
            _, status, payload = reply
        except (EOFError, OSError, BrokenPipeError):
            if self._process is not None:
                self._process.join(2)
            code = self._process.exitcode if self._process is not None else None
            self._stop()
            raise TargetFailure("crashed", f"the worker process died (exit code {code}){self._output_note()}") from None
        self._collect()
        if status != "ok":
            raise TargetFailure(status, payload)
        return payload

    def _read_output(self) -> str:
        """The current call's output: its first OUTPUT_LIMIT characters and how long it was."""
        try:
            with open(self._output_path, "rb") as handle:
                data = handle.read(4 * OUTPUT_LIMIT)
                size = os.fstat(handle.fileno()).st_size
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        if size > len(data) or len(text) > OUTPUT_LIMIT:
            text = f"{text[:OUTPUT_LIMIT]}\n... ({size} bytes in all)"
        return text

    def _collect(self) -> None:
        _remember(self._captured, self._read_output())

    def _output_note(self) -> str:
        """After a timeout or crash: the output so far is remembered, and its last line quoted."""
        text = self._read_output()
        _remember(self._captured, text)
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("... (")]
        return f"; its last output: {one_line(lines[-1], 200)}" if lines else ""

    def captured(self) -> list[str]:
        return list(self._captured)

    def close(self) -> None:
        if self._connection is not None and self._process is not None and self._process.is_alive():
            try:
                self._connection.send(None)
                self._process.join(2)
            except (OSError, BrokenPipeError):
                pass
        self._stop()
        with contextlib.suppress(OSError):
            os.unlink(self._output_path)


def valid_timeout(seconds: float, option: str = "--timeout") -> float:
    """A time limit in seconds: finite, positive and at most a day."""
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 86400:
        what = "must be positive" if math.isfinite(seconds) and seconds <= 0 else "must be a number of seconds from 0 to 86400"
        raise UsageError(f"{option} {seconds:g}: {what}")
    return seconds
