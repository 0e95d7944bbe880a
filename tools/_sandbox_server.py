"""Host side of the sandbox's serve mode: a jailed interpreter that answers requests.

Private to ``tools/python_exec.py`` (:meth:`PythonSandbox.serve` makes one); the jail's side is
``tools/_sandbox_serve.py``, which owns the protocol. Blocking calls (pipes and ``select``), one
request at a time per server: a pool of servers serves requests in parallel.

A request is answered in a fork of the jailed runner, killed at its deadline by the runner; the
runner itself is trusted code, but should it not answer within the deadline plus
:data:`GRACE_S`, the whole jail is killed here (every process of it: its pid namespace, process
group and cgroup) and the server is closed.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tools._sandbox_io import kill_group, read_report

if TYPE_CHECKING:
    from tools.python_exec import PythonSandbox

logger = logging.getLogger(__name__)

GRACE_S = 2.0
"""Seconds past a request's deadline after which the jail is deemed stuck and killed."""
_STOP_WAIT_S = 0.4


@dataclass(frozen=True)
class Served:
    """How one request ended."""

    status: str
    """``ok`` (``reply`` is what ``handle`` returned), ``error`` (``reply``: the exception
    ``prepare`` or ``handle`` raised, as text), ``timeout`` (killed at its deadline), ``died``
    (killed by a signal, e.g. its CPU limit, or exited), ``too_large`` (replied more than
    ``max_reply_bytes``) or ``lost`` (the jail stopped answering or died; the server is closed)."""
    reply: bytes = b""
    details: dict[str, Any] = field(default_factory=dict)
    """For a stopped request: the fork's ``exit``, ``signal``, ``cpu_seconds`` and ``max_rss_kb``."""


class SandboxServer:
    """One jailed interpreter answering requests; see :meth:`PythonSandbox.serve`."""

    def __init__(self, sandbox: PythonSandbox, setup: str, *, start_timeout: float, max_reply_bytes: int) -> None:
        self.max_reply_bytes = max_reply_bytes
        self.layers: dict[str, Any] = {}
        """Isolation layers obtained, as :attr:`SandboxResult.layers` (``seccomp`` is that of
        each request's fork)."""
        self.layer_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._workdir = os.path.realpath(tempfile.mkdtemp(prefix="agentrl-sandbox-serve-"))
        self._cgroup, cgroup_error = sandbox._make_cgroup()
        self._stderr = tempfile.TemporaryFile()  # the runner's own messages (set-up failures)
        read_fd, write_fd = os.pipe()
        self.proc: subprocess.Popen | None = None
        try:
            config = sandbox._config(self._workdir, write_fd, self._cgroup.procs_files if self._cgroup else [])
            config["rlimits"].pop("CPU")  # per request, in its fork
            config.update(serve=True, code=setup, max_reply_bytes=max_reply_bytes)
            argv, env = sandbox._command(config)
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                         cwd=self._workdir, env=env, start_new_session=True, pass_fds=(write_fd,))
            os.close(write_fd)
            write_fd = -1
            frame = self._receive(time.monotonic() + start_timeout)
            report = read_report(read_fd)
            self.layers, self.layer_errors = report.get("layers", {}), report.get("errors", {})
            self.layers["cgroup"] = self._cgroup.version if self._cgroup else False
            if self._cgroup is None and cgroup_error:
                self.layer_errors["cgroup"] = cgroup_error
            if frame is None or frame[0].get("status") != "ready":
                why = frame[1].decode("utf-8", "replace") if frame else self._stderr_tail()
                raise OSError(f"the sandbox server did not start: {why.strip()[-2000:] or 'no message'}")
        except BaseException:
            self.close()
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, request: bytes, timeout: float, start_timeout: float = 300.0) -> Served:
        """Answer ``request`` with the setup's ``handle`` in a fresh confined fork, stopped after
        ``timeout`` seconds (``prepare``, before it, may take up to ``start_timeout``)."""
        with self._lock:
            if not self.alive:
                return Served("lost")
            try:
                self._send({"timeout": timeout}, request)
            except OSError:
                self.close()
                return Served("lost")
            frame = self._receive(time.monotonic() + start_timeout)
            if frame is not None and frame[0].get("status") == "started":
                frame = self._receive(time.monotonic() + timeout + GRACE_S)
            if frame is None:
                logger.warning("sandbox server %s stopped answering; killing it", self.proc.pid if self.proc else "?")
                self.close()
                return Served("lost")
            header, payload = frame
            details: dict[str, Any] = {k: header[k] for k in ("exit", "signal", "cpu_seconds", "max_rss_kb") if k in header}
            return Served(str(header.get("status")), payload, details)

    def close(self) -> None:
        """Kill the jail (every process of it) and remove its files; idempotent."""
        if self._closed:
            return
        self._closed = True
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop(proc)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        if self._cgroup is not None:
            self._cgroup.kill()
        from tools.python_exec import _remove_run_files

        _remove_run_files(self._workdir, self._cgroup)
        self._stderr.close()

    def _send(self, header: dict[str, Any], payload: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        body = json.dumps(header).encode() + b"\n" + payload
        self.proc.stdin.write(len(body).to_bytes(8, "little") + body)
        self.proc.stdin.flush()

    def _receive(self, deadline: float) -> tuple[dict[str, Any], bytes] | None:
        """The next frame, or None when none came by ``deadline`` (or the jail closed its end)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        head = _read(fd, 8, deadline)
        if head is None:
            return None
        size = int.from_bytes(head, "little")
        if size > self.max_reply_bytes + 65536:
            return None
        body = _read(fd, size, deadline)
        if body is None:
            return None
        line, _, payload = body.partition(b"\n")
        try:
            header = json.loads(line)
        except ValueError:
            return None
        return (header, payload) if isinstance(header, dict) else None

    def _stderr_tail(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 4000))
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(fd: int, n: int, deadline: float) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the outer process (it kills and reaps the rest of the jail, see
    ``_sandbox_child._stop_on_sigterm``), SIGKILL to its process group after a moment."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        logger.warning("sandbox server %d did not stop in %g s; killing it", proc.pid, _STOP_WAIT_S)
    except OSError:
        pass
    kill_group(proc.pid)
    proc.wait()
