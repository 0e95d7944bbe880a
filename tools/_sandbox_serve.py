"""The sandbox's serve mode: one jailed interpreter answering requests, each in a fresh fork.

Imported by the sandbox's child process (``tools/_sandbox_child.py``); the host side is
``tools/_sandbox_server.py``. The runner process, confined like a one-shot run (uid, namespaces,
new root, Landlock, no capabilities, rlimits) but without seccomp, runs the trusted *setup* code
once (imports: the expensive part), then serves requests read from stdin:

1. ``prepare(request)``, when the setup defined it, runs in the runner: trusted work such as
   importing what the request names, kept for the next requests (it returns true when it
   changed the runner's state);
2. a fork of the runner, made ahead (after the previous request, or after ``prepare`` changed
   the state) so that forking and confining are not the request's time, has closed every
   descriptor but two private pipes and confined itself further (a Landlock layer with no
   write access anywhere, the seccomp allowlist: no fork, exec or sockets, then the audit
   hook). It gets the request, sets its CPU limit (the timeout + 1 s) and calls
   ``handle(request, refused) -> bytes`` (``refused`` collects the audit hook's refusals);
3. the runner reads the reply (at most ``max_reply`` bytes), kills the fork at the request's
   deadline, answers on stdout and reaps the fork.

So what one request does (a scorer evaluating model output, say) cannot touch the runner, the
host or the next request: each starts from the runner's state after ``prepare``. Frames on both
pipes are an 8-byte little-endian length, then a JSON header line, then the payload bytes.
Request header: ``{"timeout": seconds}``. Reply header: ``{"status": ...}`` with status
``ready`` (once, after setup), ``started`` (after ``prepare``), then ``ok`` (payload: what
``handle`` returned), ``error`` (payload: the exception ``prepare``/``handle`` raised),
``timeout``, ``died`` (it ended without a reply, e.g. killed by its CPU limit) or
``too_large``; the last three with the fork's ``exit``, ``signal``, ``cpu_seconds`` and
``max_rss_kb``.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any


def write_frame(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    body = json.dumps(header).encode() + b"\n" + payload
    data = memoryview(len(body).to_bytes(8, "little") + body)
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int) -> tuple[dict[str, Any], bytes] | None:
    """The next frame on ``fd`` (blocking), None at end of file."""
    head = _read_exactly(fd, 8)
    body = None if head is None else _read_exactly(fd, int.from_bytes(head, "little"))
    if body is None:
        return None
    line, _, payload = body.partition(b"\n")
    return json.loads(line), payload


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def serve(setup: str, confine: Callable[[list[str]], None], max_reply: int) -> int:
    """Run ``setup``, then answer requests on stdin until it closes; returns the exit status.

    ``confine(refused)`` is called in each fork before it reads its request (see the module doc).
    """
    namespace: dict[str, Any] = {"__name__": "__sandbox_server__"}
    try:
        exec(compile(setup, "<setup>", "exec"), namespace)
        if not callable(namespace.get("handle")):
            raise NameError("the setup code must define handle(request: bytes, refused: list[str]) -> bytes")
    except BaseException:  # noqa: BLE001 - reported to the host
        write_frame(1, {"status": "error"}, traceback.format_exc().encode())
        return 1
    prepare = namespace.get("prepare")
    forks = _Forks(namespace["handle"], confine)
    spare = forks.new()  # made ahead: forking and confining are not the request's time
    write_frame(1, {"status": "ready"})
    while (frame := read_frame(0)) is not None:
        header, request = frame
        try:
            if prepare is not None and prepare(request):  # new state: the spare fork predates it
                spare.discard()
                spare = forks.new()
        except Exception as e:  # noqa: BLE001 - reported to the host
            write_frame(1, {"status": "error"}, f"{type(e).__name__}: {e}".encode())
            continue
        write_frame(1, {"status": "started"})
        timeout = float(header["timeout"])
        fork, answer = spare, spare.answer(request, timeout, max_reply)
        if answer is None:  # it died while it waited: once more with a new one
            fork = forks.new()
            answer = fork.answer(request, timeout, max_reply) or ({"status": "died"}, b"")
        reply_header, reply = answer
        if reply_header["status"] not in ("ok", "error"):
            reply_header.update(fork.discard())
        write_frame(1, reply_header, reply)
        forks.retire(fork)  # it replied and is exiting: reaped later, off the next request's time
        spare = forks.new()
    spare.discard()
    forks.reap(wait=True)
    return 0


class _Forks:
    """Makes the forks of the server and reaps them."""

    def __init__(self, handle: Callable[[bytes, list[str]], bytes], confine: Callable[[list[str]], None]) -> None:
        self.handle, self.confine = handle, confine
        self.dying: set[int] = set()
        """Forks killed but not reaped yet (tearing a big address space down takes milliseconds)."""

    def new(self) -> _Fork:
        self.reap(wait=False)
        return _Fork(self.handle, self.confine)

    def retire(self, fork: _Fork) -> None:
        if fork.kill():
            self.dying.add(fork.pid)

    def reap(self, wait: bool) -> None:
        """Reap the killed forks: all of them, or (``wait=False``) those already gone."""
        for pid in list(self.dying):
            if os.waitpid(pid, 0 if wait else os.WNOHANG)[0]:
                self.dying.discard(pid)


class _Fork:
    """A fork of the server, confined, waiting for one request on a pipe of its own."""

    def __init__(self, handle: Callable[[bytes, list[str]], bytes], confine: Callable[[list[str]], None]) -> None:
        request_r, self.requests = os.pipe()
        self.replies, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.requests)
            os.close(self.replies)
            _in_the_fork(handle, confine, request_r, reply_w)
        os.close(request_r)
        os.close(reply_w)
        self.killed = False

    def answer(self, request: bytes, timeout: float, max_reply: int) -> tuple[dict[str, Any], bytes] | None:
        """(header, reply) of the request, or None when the fork was gone before it got it."""
        deadline = time.monotonic() + timeout
        try:
            write_frame(self.requests, {"timeout": timeout}, request)
        except OSError:
            self.discard()
            return None
        finally:
            if self.requests >= 0:
                os.close(self.requests)
                self.requests = -1
        status, reply = _collect(self.replies, deadline, max_reply)
        if status == "ok":  # the first byte says whether handle() returned or raised
            status, reply = {b"+": "ok", b"!": "error"}.get(reply[:1], "died"), reply[1:]
        return {"status": status}, reply if status in ("ok", "error") else b""

    def kill(self) -> bool:
        """Close its pipes and SIGKILL it (it cannot have started anything: seccomp refuses
        fork); False when that was done already."""
        for fd in (self.requests, self.replies):
            if fd >= 0:
                os.close(fd)
        self.requests = self.replies = -1
        if self.killed:
            return False
        self.killed = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True

    def discard(self) -> dict[str, Any]:
        """Kill and reap it now; how it ended."""
        if not self.kill():
            return {}
        _, wait_status, usage = os.wait4(self.pid, 0)
        sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
        return {"exit": None if sig is not None else os.WEXITSTATUS(wait_status), "signal": sig,
                "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}


def _collect(fd: int, deadline: float, max_reply: int) -> tuple[str, bytes]:
    """Read the fork's reply until end of file: ("ok", reply), ("timeout", b"") or ("too_large", b"")."""
    reply = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "timeout", b""
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return "ok", bytes(reply)
        reply += chunk
        if len(reply) > max_reply + 1:
            return "too_large", b""


def _in_the_fork(handle: Callable[[bytes, list[str]], bytes], confine: Callable[[list[str]], None],
                 requests: int, out: int) -> None:
    """Keep only ``requests`` and ``out``, confine, wait for the request, answer, exit: this
    process never returns. The reply is ``+`` and what ``handle`` returned, or ``!`` and the
    exception it raised."""
    mark, reply = b"!", b""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):  # the server's pipes: what the handler prints goes nowhere
            os.dup2(null, fd)
        keep = sorted((requests, out))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        refused: list[str] = []
        confine(refused)
        frame = read_frame(requests)
        if frame is None:  # the server discarded this fork unused
            os._exit(0)
        header, request = frame
        cpu = int(header["timeout"]) + 1  # soft = hard: the handler cannot raise it again
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        reply = handle(request, refused)
        if not isinstance(reply, bytes):
            raise TypeError(f"handle() must return bytes, got {type(reply).__name__}")
        mark = b"+"
    except BaseException as e:  # noqa: BLE001 - reported as this request's error
        reply = f"{type(e).__name__}: {e}".encode("utf-8", "replace")
    try:
        view = memoryview(mark + reply)
        while view:
            view = view[os.write(out, view):]
        os.close(out)  # the server answers now, while this process is torn down
    except OSError:
        pass
    os._exit(0)
