"""Scoring untrusted answers in worker processes, with a time limit that always holds.

Some answer checks run as long as the answer tells them to, holding the GIL the whole time: a
20-character reply ``\\boxed{9^{9^{9^{9}}}}`` sends sympy (inside math-verify) into an integer
power that never ends, and reasoning-gym scorers hand answers to ``sympy.parse_expr``. In the
trainer's process that stalls every episode (math-verify's own ``signal.alarm`` works only in the
main thread, 5 s at a time; a thread cannot be stopped at all). Here such a check runs in a child
process, and a check that overruns its time is answered "timed out" and its process killed.

:func:`call` runs ``"module:function"`` with picklable arguments in one of the shared workers
(started on first use, at most :data:`MAX_WORKERS` at once, each serving one call at a time)
and returns ``(finished, value)``. It blocks its thread until the answer comes: from async code
call it through ``asyncio.to_thread``. A worker runs as the same user as its parent: this bounds
time, it is not a sandbox (a scorer that ``eval``s its input can still do what the user can).
POSIX only (``select`` on pipes). A process forked from one that has workers starts its own.

Example::

    >>> call("operator:add", 2, 3, timeout=30.0)
    (True, 5)
    >>> call("time:sleep", 60, timeout=0.5)   # killed after half a second
    (False, None)
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib
import logging
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["MAX_WORKERS", "START_TIMEOUT_S", "ScoringError", "call"]

MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Worker processes at most; callers beyond that wait for a free one."""
START_TIMEOUT_S = 300.0
"""Seconds a worker may take to start and import a function's module (not counted in ``timeout``)."""


class ScoringError(RuntimeError):
    """The function raised in its worker; the message is ``"<ExceptionType>: <message>"``."""


class _Worker:
    """One child process speaking length-prefixed pickles over its stdin/stdout."""

    def __init__(self, spawner: concurrent.futures.Executor) -> None:
        # started from the pool's one long-lived thread: the child asks to be killed when the
        # thread that started it ends (PR_SET_PDEATHSIG), and the callers' threads come and go
        self.proc = spawner.submit(_start).result()

    def run(self, request: bytes, timeout: float) -> tuple[str, Any]:
        """("ok", result), ("error", message), or ("timeout", None) after killing the process."""
        try:
            _write(self.proc.stdin, request)
        except OSError:  # the process died between two calls
            return "timeout", None
        kind, value = "timeout", None
        for limit in (START_TIMEOUT_S, timeout):  # "started" (module imported), then the answer
            message = _receive(self.proc.stdout.fileno(), limit)
            if message is None:
                self.kill()
                return "timeout", None
            kind, value = message
            if kind == "error":
                break
        return kind, value

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


def _start() -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-m", "envs._scoring"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0, env=env)


class _Pool:
    def __init__(self, size: int) -> None:
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentrl-scoring")
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a free slot: its worker starts when the slot is first used
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()

    def call(self, function: str, args: tuple[Any, ...], timeout: float) -> tuple[bool, Any]:
        request = pickle.dumps((function, args))  # an argument that cannot be pickled fails here, costing no worker
        worker = self._idle.get()
        kind, value = "timeout", None
        try:
            if worker is not None and worker.proc.poll() is not None:  # it died while idle
                self._discard(worker)
                worker = None
            if worker is None:
                worker = _Worker(self._spawner)
                with self._lock:
                    self._all.add(worker)
            kind, value = worker.run(request, timeout)
        finally:
            if kind == "timeout" and worker is not None:
                self._discard(worker)
                worker = None
            self._idle.put(worker)
        if kind == "error":
            raise ScoringError(value)
        return kind == "ok", value

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()

    def forget(self) -> None:
        """In a forked child: the workers are the parent's; start afresh without touching them."""
        self.__init__(MAX_WORKERS)  # type: ignore[misc]


_POOL = _Pool(MAX_WORKERS)
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL.forget)


def call(function: str, *args: Any, timeout: float) -> tuple[bool, Any]:
    """Run ``function`` (``"package.module:name"``) with ``args`` in a worker process.

    Returns ``(True, result)``, or ``(False, None)`` when it ran longer than ``timeout`` seconds
    or its process died (the worker is replaced). An exception in the function (or in importing
    its module) is raised here as :class:`ScoringError`.
    """
    if ":" not in function:
        raise ValueError(f"function must look like 'package.module:name'; got {function!r}")
    return _POOL.call(function, args, timeout)


def _write(stream: Any, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(fd: int, timeout: float) -> Any:
    """The next message on ``fd``, or None when it did not come within ``timeout`` s (or the worker died)."""
    deadline = time.monotonic() + timeout
    header = _read(fd, 8, deadline)
    if header is None:
        return None
    body = _read(fd, int.from_bytes(header, "little"), deadline)
    return None if body is None else pickle.loads(body)


def _read(fd: int, n: int, deadline: float) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(fd, n - got)
        if not chunk:  # end of file: the worker died
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _serve() -> None:
    """The worker's loop: read a call, import its module, say "started", answer."""
    _die_with_parent()
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the scorers print goes to stderr, not into the replies
    logging.disable(logging.WARNING)  # scorers' warnings about junk answers (math-verify: "Timeout during parsing")

    def send(obj: Any) -> None:
        _write(replies, pickle.dumps(obj))

    while True:
        header = requests.read(8)
        if len(header) < 8:
            return  # the parent closed the pipe: it is gone or done
        function, args = pickle.loads(requests.read(int.from_bytes(header, "little")))
        module, _, name = function.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            send(("error", f"{type(e).__name__}: {e}"))
            continue
        send(("started", None))
        try:
            send(("ok", fn(*args)))
        except Exception as e:  # noqa: BLE001 - reported to the parent
            send(("error", f"{type(e).__name__}: {e}"))


def _die_with_parent() -> None:
    """Linux: be killed when the parent dies, even in the middle of a computation (without it, a
    worker busy with a power tower would outlive a crashed trainer). Elsewhere the worker exits
    when it next reads its closed stdin. (The kernel sends the signal when the parent's thread
    that started this process ends: the pool starts workers from one thread that lives as long
    as the process.)"""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(0)


if __name__ == "__main__":
    _serve()
