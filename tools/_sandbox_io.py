"""Parent-side plumbing of the Python sandbox: bounded output capture, truncation, the report pipe.

Private to ``tools/python_exec.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

HARD_OUTPUT_BYTES = 1 << 20
"""A program that prints more than this (per stream) is stopped."""


def kill_group(pgid: int) -> None:
    """SIGKILL a process group; quiet when it is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Capture:
    """Output of one stream, read to EOF keeping ``keep`` bytes of head and of tail; usable at any
    time, also when reading had to stop early."""

    def __init__(self, keep: int, on_overflow: Callable[[], None]) -> None:
        self.keep, self.on_overflow = keep, on_overflow
        self.head, self.tail, self.total, self.fired = bytearray(), bytearray(), 0, False

    async def read(self, stream: asyncio.StreamReader | None) -> None:
        """Read ``stream`` to EOF; call ``on_overflow`` once more than the hard limit has arrived."""
        assert stream is not None
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.keep - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail += chunk
                del self.tail[:-self.keep]
            if self.total > HARD_OUTPUT_BYTES and not self.fired:
                self.fired = True
                self.on_overflow()

    def result(self) -> tuple[bytes, bool]:
        """(kept bytes with an elision mark, truncated)."""
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped > 0:
            return bytes(self.head) + f"\n... [{dropped} bytes omitted] ...\n".encode() + bytes(self.tail), True
        return bytes(self.head + self.tail), False


def fit(stdout: str, stderr: str, limit: int) -> tuple[str, str, bool]:
    """Cut stdout and stderr to ``limit`` characters together, keeping heads and tails.

    stderr (usually a traceback, whose end matters) gets up to half of the budget first."""
    if len(stdout) + len(stderr) <= limit:
        return stdout, stderr, False
    err_budget = min(len(stderr), max(limit // 2, limit - len(stdout)))
    out_budget = limit - err_budget
    return _cut(stdout, out_budget), _cut(stderr, err_budget), True


def _cut(text: str, budget: int) -> str:
    if len(text) <= budget:
        return text
    half = max(budget // 2, 1)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters omitted] ...\n{text[-half:]}"


def read_report(fd: int) -> dict[str, Any]:
    """Merge the JSON lines the child wrote on the report pipe (never blocks)."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    merged: dict[str, Any] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            merged.update(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("unreadable sandbox report line: %r", line[:200])
    return merged


def write_files(workdir: str, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        path = os.path.realpath(os.path.join(workdir, name))
        if not path.startswith(workdir + os.sep):
            raise ValueError(f"sandbox file name must stay inside the working directory, got {name!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)


def remove_tree(path: str) -> None:
    """Delete a run's host directory even where the program removed permissions (blocking: call
    it off the event loop, it may hold many files)."""

    if not os.path.lexists(path):  # removed already: never touch what holds it (the host's /tmp)
        return

    def retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        try:
            if failed != path:  # (the tree's own parent is not ours to change)
                os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
