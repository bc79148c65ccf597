"""A gloo process group of N ranks, started once and reused, each call with a time limit.

:class:`Gang` spawns ``world_size`` worker processes (the check worker's own serving loop,
:func:`optspec.checking.worker._worker_main`: own process group, output to a file, killed
when optspec goes away), joins them into one ``torch.distributed`` gloo group and then
sends every call to all ranks at once. A call returns rank 0's answer once every rank has
answered. A rank that dies, or a call that does not finish within its time limit, gets the
whole gang killed (every rank's process group) and is reported as a
:class:`~optspec.checking.worker.TargetFailure` naming the rank; the next call starts a
fresh gang. A rank that raises while the others wait in a collective is reported with its
own message after a short grace period (the waiting ranks are killed too).

:func:`gang` keeps one gang per world size for the life of the process (one ``optspec run``
or one test session) and :func:`close_all` ends them (registered with :mod:`atexit`).

Under ``torchrun`` (one machine or several, joined at a rendezvous endpoint) the ranks are the
processes torchrun started: rank 0 runs the optspec command and :class:`LaunchedGang` sends each
call to the others, which :func:`serve` (see README, "Across machines").
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from optspec.checking.worker import TargetFailure, _worker_main, one_line

#: Seconds the other ranks get to answer after one rank raised (they may wait in a collective).
GRACE_SECONDS = 10.0

# --------------------------------------------------------------------------- inside a rank

_RANK: int | None = None
_WORLD: int | None = None


def join_group(rank: int, world_size: int, init_method: str, seconds: float) -> int:
    """Join the gloo group (once per rank process); one intra-op thread, the machine is shared."""
    global _RANK, _WORLD
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=seconds)
        )
    _RANK, _WORLD = rank, world_size
    return rank


def rank() -> int:
    """This process's rank (after :func:`join_group`)."""
    if _RANK is None:
        raise RuntimeError("not a rank of an optspec gang (join_group was not called)")
    return _RANK


def world_size() -> int:
    if _WORLD is None:
        raise RuntimeError("not a rank of an optspec gang (join_group was not called)")
    return _WORLD


def identify() -> tuple[int, int, int]:
    """(rank, world size, process id) of this rank."""
    return rank(), world_size(), os.getpid()


# --------------------------------------------------------------------------- the parent side


class Gang:
    """``world_size`` spawned ranks in one gloo group; see the module docstring."""

    def __init__(self, world_size: int, startup_timeout: float = 180.0) -> None:
        if world_size < 1:
            raise ValueError(f"world size {world_size} must be at least 1")
        self.world_size = world_size
        self.startup_timeout = startup_timeout
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._connections: list[Connection] = []
        self._requests = 0
        self._directory = tempfile.mkdtemp(prefix=f"optspec-gang{world_size}-")
        self.starts = 0

    @property
    def alive(self) -> bool:
        return bool(self._processes) and all(p.is_alive() for p in self._processes)

    def _output(self, r: int) -> str:
        return os.path.join(self._directory, f"rank{r}.txt")

    def _start(self) -> None:
        self.starts += 1
        store = os.path.join(self._directory, f"store{self.starts}")
        for r in range(self.world_size):
            open(self._output(r), "w").close()
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main, args=(child, self._output(r), os.getpid()), daemon=True, name=f"optspec-rank{r}"
            )
            process.start()
            child.close()
            self._processes.append(process)
            self._connections.append(parent)
        deadline = time.monotonic() + self.startup_timeout
        for r, connection in enumerate(self._connections):
            try:
                # a rank that dies while starting ends the wait at once (its sentinel)
                wait([connection, self._processes[r].sentinel], timeout=max(deadline - time.monotonic(), 0))
                ready = connection.poll() and connection.recv()
            except (EOFError, OSError):
                ready = None
            if not (isinstance(ready, tuple) and ready[:1] == ("ready",)):
                code = self._processes[r].exitcode
                self.close()
                raise TargetFailure("crashed", f"rank {r} of {self.world_size} did not start (exit code {code})")
        init = f"file://{store}"
        self._broadcast(
            lambda r: ("optspec.impls.torch_gang:join_group", (r, self.world_size, init, self.startup_timeout)),
            self.startup_timeout,
            "joining the gloo group",
        )

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        """Call ``module:function(*args)`` on every rank; rank 0's answer, or TargetFailure."""
        if not self.alive:
            self.close()
            self._start()
        return self._broadcast(lambda r: (function, args), timeout, "")

    def _broadcast(self, message: Any, timeout: float, what: str) -> Any:
        self._requests += 1
        request = self._requests
        during = f" while {what}" if what else ""
        try:
            for r, connection in enumerate(self._connections):
                function, args = message(r)
                connection.send((request, function, args))
        except (OSError, BrokenPipeError):
            self.close()
            raise TargetFailure("crashed", f"a rank of {self.world_size} died before the call{during}") from None
        answers: dict[int, tuple[str, Any]] = {}
        deadline = time.monotonic() + timeout
        pending = dict(enumerate(self._connections))
        while pending:
            remaining = deadline - time.monotonic()
            ready = wait(list(pending.values()), timeout=max(remaining, 0)) if remaining > 0 else []
            if not ready:
                raised = {r: a for r, a in answers.items() if a[0] != "ok"}
                waiting = ", ".join(str(r) for r in sorted(pending))
                self.close()
                if raised:
                    r, (status, payload) = min(raised.items())
                    raise TargetFailure(status, f"rank {r} of {self.world_size}: {payload} (ranks {waiting} then hung; killed)")
                raise TargetFailure(
                    "timeout",
                    f"ranks {waiting} of {self.world_size} gave no answer within the time limit of {timeout:g} s{during} "
                    f"(all ranks were killed){self._last_output(sorted(pending))}",
                )
            for connection in ready:
                r = next(k for k, c in pending.items() if c is connection)
                try:
                    reply = connection.recv()
                except (EOFError, OSError):
                    process = self._processes[r]
                    process.join(2)
                    code = process.exitcode
                    note = self._last_output([r])
                    self.close()
                    raise TargetFailure(
                        "crashed", f"rank {r} of {self.world_size} died (exit code {code}){during}; all ranks were killed{note}"
                    ) from None
                if not (isinstance(reply, tuple) and len(reply) == 3 and reply[0] == request):
                    continue  # a stray answer to another request
                answers[r] = (reply[1], reply[2])
                del pending[r]
                if reply[1] != "ok":
                    deadline = min(deadline, time.monotonic() + GRACE_SECONDS)
        raised = {r: a for r, a in answers.items() if a[0] != "ok"}
        if raised:
            r, (status, payload) = min(raised.items())
            others = sorted(set(raised) - {r})
            also = f" (ranks {', '.join(map(str, others))} raised too)" if others else ""
            raise TargetFailure(status, f"rank {r} of {self.world_size}: {payload}{also}")
        return answers[0][1]

    def _last_output(self, ranks: list[int]) -> str:
        for r in ranks:
            with contextlib.suppress(OSError):
                with open(self._output(r), "rb") as handle:
                    lines = [ln for ln in handle.read().decode("utf-8", "replace").splitlines() if ln.strip()]
                if lines:
                    return f"; rank {r}'s last output: {one_line(lines[-1], 200)}"
        return ""

    def close(self) -> None:
        """End every rank and its process group (a clean exit first when the rank is idle)."""
        processes, connections = self._processes, self._connections
        self._processes, self._connections = [], []
        for connection in connections:
            with contextlib.suppress(OSError, BrokenPipeError):
                connection.send(None)
            connection.close()
        for process in processes:
            process.join(0.5)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join(2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
            shutil.rmtree(self._directory, ignore_errors=True)


# --------------------------------------------------------------------------- under torchrun


def launched_world_size() -> int | None:
    """WORLD_SIZE when this process was started by torchrun (TORCHELASTIC_RUN_ID is set), else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["WORLD_SIZE"])


def _join_launched() -> None:
    """Join the group torchrun describes (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)."""
    if _RANK is None:
        join_group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", LAUNCHED_TIMEOUT)


#: gloo's time limit of one collective under torchrun (no rank can be killed from here: torchrun
#: ends the job when a rank dies, and a hung collective raises after this many seconds)
LAUNCHED_TIMEOUT = 600.0


class LaunchedGang:
    """The ranks torchrun started (on one machine or several): rank 0 drives, the others :func:`serve`.

    Each call is broadcast from rank 0 (``broadcast_object_list``), run on every rank in its
    own process, and the ranks' outcomes are gathered; rank 0's answer is returned.
    """

    def __init__(self) -> None:
        _join_launched()
        self.world_size = world_size()
        self.alive = True

    def call(self, function: str, *args: Any, timeout: float) -> Any:
        del timeout  # bounded by LAUNCHED_TIMEOUT per collective
        import torch.distributed as dist

        from optspec.checking.worker import _invoke

        dist.broadcast_object_list([(function, args)], src=0)
        status, payload = _invoke(function, args)
        outcomes: list[Any] = [None] * self.world_size
        dist.all_gather_object(outcomes, (status, payload if status != "ok" else None))
        raised = [(r, o) for r, o in enumerate(outcomes) if o[0] != "ok"]
        if raised:
            r, (kind, message) = raised[0]
            raise TargetFailure(kind, f"rank {r} of {self.world_size}: {message}")
        return payload

    def close(self) -> None:
        if self.alive:
            import torch.distributed as dist

            self.alive = False
            dist.broadcast_object_list([None], src=0)


def serve() -> int:
    """A torchrun rank other than 0: run what rank 0 broadcasts until it says stop."""
    import torch.distributed as dist

    from optspec.checking.worker import _invoke

    _join_launched()
    while True:
        message: list[Any] = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            break
        function, args = message[0]
        status, payload = _invoke(function, args)
        outcomes: list[Any] = [None] * world_size()
        dist.all_gather_object(outcomes, (status, payload if status != "ok" else None))
    dist.destroy_process_group()
    return 0


_GANGS: dict[int, Gang | LaunchedGang] = {}


def gang(world_size: int) -> Gang | LaunchedGang:
    """The process's gang of ``world_size`` ranks (created on first use, restarted after a failure).

    Under torchrun it is the launched ranks, and only their world size can be asked for.
    """
    launched = launched_world_size()
    if launched is not None and world_size != launched:
        raise TargetFailure(
            "usage", f"under torchrun the world size is WORLD_SIZE = {launched}; world size {world_size} cannot run"
        )
    if world_size not in _GANGS:
        _GANGS[world_size] = LaunchedGang() if launched is not None else Gang(world_size)
    return _GANGS[world_size]


@atexit.register
def close_all() -> None:
    """End every gang this process started."""
    for each in list(_GANGS.values()):
        each.close()
        if isinstance(each, Gang):
            shutil.rmtree(each._directory, ignore_errors=True)
    _GANGS.clear()
