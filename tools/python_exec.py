"""A Python code-execution tool that runs untrusted code in a jail that holds as root.

Each run gets a fresh interpreter (``python -I -S -B``: no site-packages, no user site, no
environment variables read) with a minimal environment, a wall-clock timeout, CPU /
address-space / file-size / open-file / task rlimits, and its output is truncated. On Linux the
child then adds, layer by layer, whatever the kernel allows (``tools/_sandbox_child.py``):

============================  =================================================================
layer                         stops
============================  =================================================================
user namespace + uid          the host's permissions apply to an unused uid: as root too, the
                              code owns nothing on the host and its task cap (RLIMIT_NPROC) holds
network namespace             any network use (only a down loopback exists)
mount namespace (new root)    seeing the host: only the interpreter, shared libraries and a
                              private ``/work``, ``/tmp`` (tmpfs with a byte and file quota),
                              ``/dev`` (null, zero, random, urandom) and ``/proc``; read-only
pid namespace                 seeing or signalling host processes; outliving the run (its pid-1
                              supervisor dies with the sandbox, and the kernel kills the rest)
Landlock                      reading and writing outside the same view, exec, TCP, signals /
                              abstract unix sockets to processes outside
capabilities dropped          undoing any of the above (remounting, new namespaces)
seccomp (allowlist)           every system call a Python program does not need: fork/exec
                              (threads still work), sockets, io_uring, memfd, setsid, ...
cgroup (where writable)       memory beyond the limit, page cache and tmpfs included; tasks
audit hook (Python level)     the same things, with readable error messages
============================  =================================================================

:meth:`PythonSandbox.serve` keeps one such jail running and answers many requests with it, each
in a confined fork of its own (graders of model output, see ``envs/_scoring.py``).

Which layers were obtained is reported in :attr:`SandboxResult.layers`; when a layer is missing,
:meth:`SandboxResult.to_text` says so in the text the model sees. At the deadline every process
of the run is killed and reaped and its files removed (off the event loop) before :meth:`run`
returns, within about a second of the deadline. Not covered: CPU time on other cores, side
channels, kernel exploits. See ``docs/tools.md`` for what holds in which setting, as measured.

Example::

    >>> from tools.python_exec import PythonSandbox
    >>> sandbox = PythonSandbox(timeout=5.0, memory_mb=256)
    >>> print(sandbox.run("x = 6 * 7\\nx").to_text())
    42
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tools._sandbox_cgroup import RunCgroup
from tools._sandbox_cgroup import create as create_cgroup
from tools._sandbox_io import HARD_OUTPUT_BYTES, Capture, fit, kill_group, read_report, remove_tree, write_files

if TYPE_CHECKING:
    from tools._sandbox_server import SandboxServer

logger = logging.getLogger(__name__)

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
UID_BASE = 1_000_000_000
"""As root, the code of a run runs as host uid ``UID_BASE + pid`` (the pid of its first process):
unused, unique among the runs alive at once, owning nothing on the host."""
_ISOLATION_LAYERS = ("user_namespace", "net_namespace", "mount_namespace", "pid_namespace", "landlock", "seccomp",
                     "setup")  # whose failures the model's text explains
# After the deadline: up to 0.4 s for the sandbox to reap the run (then SIGKILL), output until
# 0.6 s, clean-up until 0.9 s (then it goes on in the background): run() is back within t + 1 s.
_GRACE_SECONDS = 0.4
_OUTPUT_UNTIL = 0.6
_CLEANUP_UNTIL = 0.9
_SANDBOX_OVERHEAD_MB = 64  # the cgroup's memory for the sandbox's own two processes
_SANDBOX_TASKS = 2  # tasks of the sandbox's own in the cgroup (outer and supervisor, or outer and map helper)


@dataclass(frozen=True)
class SandboxResult:
    """What one run produced and how it ended."""

    stdout: str
    """Standard output (head and tail kept when long, see ``truncated``)."""
    stderr: str
    """Standard error, including the traceback of an uncaught exception."""
    exit_code: int | None
    """The program's exit status; ``None`` when the sandbox stopped it."""
    stopped: str | None = None
    """Why the sandbox stopped the program: ``timeout``, ``cpu``, ``output`` or ``killed``."""
    seconds: float = 0.0
    """Wall-clock time of the run."""
    cpu_seconds: float | None = None
    """CPU time the program used, when known."""
    truncated: bool = False
    """True when output was cut to ``max_output_chars``."""
    layers: dict[str, Any] = field(default_factory=dict)
    """Isolation layers obtained, e.g. ``{"user_namespace": True, "mount_namespace": True,
    "landlock": 7, "seccomp": True, "scratch_quota": True, "uid": 1000012345, "cgroup": "v1"}``
    (``uid``: the host uid the code ran as)."""
    layer_errors: dict[str, str] = field(default_factory=dict)
    """Why a requested layer could not be had."""
    limits: dict[str, float] = field(default_factory=dict)
    """The limits the run had (``timeout``, ``cpu_seconds``, ``memory_mb``)."""

    @property
    def ok(self) -> bool:
        """The program ran to the end and exited with status 0."""
        return self.exit_code == 0 and self.stopped is None

    def protection(self) -> dict[str, str]:
        """Which mechanism guards each resource: ``kernel``, ``python`` (audit hook only) or ``none``.

        A ``tcp-only`` network entry means Landlock blocks TCP but UDP and unix sockets are open.
        """
        lay = self.layers
        hook = "python" if lay.get("audit_hook") else "none"
        if lay.get("net_namespace") or lay.get("seccomp"):
            net = "kernel"
        elif (lay.get("landlock") or 0) >= 4:
            net = "tcp-only"
        else:
            net = hook
        fs = "kernel" if lay.get("mount_namespace") or lay.get("landlock") else hook
        procs = "kernel" if lay.get("seccomp") else hook
        return {"network": net, "filesystem": fs, "processes": procs}

    def to_text(self) -> str:
        """The text a model reads: output, then bracketed notes on how the run ended."""
        body = self.stdout
        if self.stderr:
            body += ("" if not body or body.endswith("\n") else "\n") + self.stderr
        notes = []
        lim = self.limits
        if self.stopped == "timeout":
            notes.append(f"[stopped: the program ran longer than the {lim.get('timeout', 0):g} s time limit]")
        elif self.stopped == "cpu":
            notes.append(f"[stopped: CPU time limit of {lim.get('cpu_seconds', 0):g} s exceeded]")
        elif self.stopped == "output":
            notes.append(f"[stopped: the program printed more than {HARD_OUTPUT_BYTES} bytes]")
        elif self.stopped == "killed":
            notes.append("[stopped: the program was killed (possibly out of memory)]")
        elif "MemoryError" in self.stderr:
            notes.append(f"[memory limit of {lim.get('memory_mb', 0):g} MB reached]")
        elif self.exit_code not in (0, 1, None):
            notes.append(f"[exit status {self.exit_code}]")
        if self.layers.get("hidden_paths") is False:
            notes.append(f"[sandbox warning: hidden_paths are visible ({self.layer_errors.get('hidden_paths')})]")
        missing = [k for k, v in self.protection().items() if v != "kernel"]
        if missing:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(self.layer_errors.items()) if k in _ISOLATION_LAYERS)
            notes.append(f"[sandbox warning: no kernel-level isolation of {', '.join(missing)}"
                         + (f" ({why})" if why else "") + "]")
        else:  # Landlock and seccomp hold, but without the namespaces: no private /tmp, /proc, quota
            absent = [k for k in ("net_namespace", "mount_namespace", "pid_namespace") if self.layers.get(k) is False]
            if absent:
                why = self.layer_errors.get(absent[0], "")
                notes.append(f"[sandbox warning: no {', '.join(k.split('_')[0] for k in absent)} namespace"
                             + (f" ({why})" if why else "") + "]")
        if not body.strip() and self.ok:
            body = "(no output; use print() to show values)"
        return (body.rstrip("\n") + "\n" + "\n".join(notes)).strip("\n")


@dataclass
class PythonSandbox:
    """Runs Python code in an isolated child process. Configuration only; no state between runs.

    Example::

        >>> sb = PythonSandbox(timeout=1.0)
        >>> sb.run("print(sum(range(10)))").stdout
        '45\\n'
        >>> sb.run("while True: pass").stopped
        'timeout'
    """

    timeout: float = 5.0
    """Wall-clock limit in seconds; every process of the run is killed when it passes, and
    :meth:`run` returns within about ``timeout + 1`` s whatever the code does."""
    memory_mb: int = 512
    """Address-space limit (RLIMIT_AS) in MiB; allocations beyond it raise MemoryError. With a
    cgroup, the run's memory (page cache and scratch files included) is capped at
    ``memory_mb + scratch_mb`` plus 64 MiB for the sandbox's own processes."""
    max_output_chars: int = 4000
    """Characters of stdout+stderr kept in the text (head and tail); the rest is elided."""
    cpu_seconds: int | None = None
    """CPU-time limit (RLIMIT_CPU); ``None`` means ``ceil(timeout) + 1``."""
    max_processes: int = 16
    """Threads (and processes) the program may have at once, its main thread included
    (RLIMIT_NPROC on the program's own uid, and ``pids.max`` with a cgroup)."""
    max_file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), in MiB."""
    max_open_files: int = 64
    """RLIMIT_NOFILE."""
    scratch_mb: int = 64
    """Size of the private tmpfs that holds ``/work`` and ``/tmp`` (needs the mount namespace)."""
    max_files: int = 4096
    """Files and directories the program may create in its scratch space (tmpfs inodes)."""
    user_namespace: bool = True
    """Enter a new user namespace (as root too) before the other namespaces. As root the code
    then runs as an unused host uid (``UID_BASE + pid``) that owns nothing on the host; without a
    user namespace root switches to that uid with ``setuid``, and an unprivileged user gets no
    namespaces at all."""
    network_namespace: bool = True
    """Run in a new network namespace (no interfaces but a down loopback)."""
    mount_namespace: bool = True
    """Run in a new mount namespace, in a new root that holds only what Python needs
    (read-only) and a private ``/work`` and ``/tmp`` on a size-limited tmpfs."""
    pid_namespace: bool = True
    """Run under a pid-1 supervisor in a new pid namespace (with its own /proc): when it dies,
    the kernel kills every process of the run."""
    landlock: bool = True
    """Confine reads to what Python needs, writes to the working directory, and deny TCP with
    Landlock."""
    seccomp: bool = True
    """Allow only the system calls a Python program needs (an allowlist seccomp filter)."""
    cgroup: bool = True
    """Put each run in its own cgroup where one can be created (memory and task limits)."""
    audit_hook: bool = True
    """Install a Python audit hook giving readable refusals (not a security boundary alone)."""
    hidden_paths: tuple[str, ...] = ()
    """Directories the code must never see, e.g. a dataset with reference answers. The new root
    shows none of the host's data anyway; these are covered with an empty read-only tmpfs
    wherever they would be visible (inside site-packages with ``site_packages=True``, say;
    without a mount namespace Landlock leaves them out of the readable directories)."""
    readable_paths: tuple[str, ...] = ()
    """Host directories (or files) shown read-only besides what Python needs, e.g. the source
    directory of a package the code imports (``hidden_paths`` inside them stay hidden)."""
    require_network_isolation: bool = False
    """Refuse to run code when neither a network namespace nor seccomp could be had."""
    site_packages: bool = False
    """Let the code import installed packages (drops ``-S``; their directories become visible);
    the stdlib is always available."""
    echo_last_expression: bool = True
    """Print the repr of a final bare expression, as a notebook cell does."""
    python_executable: str = field(default_factory=lambda: sys.executable)
    """Interpreter used for the child."""

    def __post_init__(self) -> None:
        for name in ("timeout", "memory_mb", "max_output_chars", "max_file_mb", "max_open_files", "max_processes",
                     "scratch_mb", "max_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PythonSandbox.{name} must be > 0, got {getattr(self, name)!r}")
        missing = [p for p in self.hidden_paths if not os.path.isdir(p)]
        if missing:
            raise ValueError(f"PythonSandbox.hidden_paths must be existing directories, got {missing!r}")
        missing = [p for p in self.readable_paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"PythonSandbox.readable_paths must exist, got {missing!r}")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError(f"PythonSandbox.cpu_seconds must be >= 1 or None, got {self.cpu_seconds!r}")

    @property
    def cpu_limit(self) -> int:
        """The RLIMIT_CPU value used."""
        return self.cpu_seconds if self.cpu_seconds is not None else math.ceil(self.timeout) + 1

    def _config(self, workdir: str, report_fd: int, cgroup_procs: list[str]) -> dict[str, Any]:
        mib = 1 << 20
        rlimits = {"AS": self.memory_mb * mib, "CPU": self.cpu_limit, "FSIZE": self.max_file_mb * mib,
                   "NOFILE": self.max_open_files, "CORE": 0}
        return {"workdir": workdir, "report_fd": report_fd, "rlimits": rlimits, "max_processes": self.max_processes,
                "user_namespace": self.user_namespace, "net_namespace": self.network_namespace,
                "mount_namespace": self.mount_namespace, "pid_namespace": self.pid_namespace,
                "landlock": self.landlock, "seccomp": self.seccomp, "audit_hook": self.audit_hook,
                "echo_last_expression": self.echo_last_expression, "site_packages": self.site_packages,
                "hidden_paths": [os.path.realpath(p) for p in self.hidden_paths],
                "readable_paths": [os.path.realpath(p) for p in self.readable_paths],
                "require_network_isolation": self.require_network_isolation, "uid_base": UID_BASE,
                "scratch_bytes": self.scratch_mb * mib, "max_files": self.max_files, "cgroup_procs": cgroup_procs}

    def _make_cgroup(self) -> tuple[RunCgroup | None, str]:
        if not self.cgroup:
            return None, ""
        memory = (self.memory_mb + self.scratch_mb + _SANDBOX_OVERHEAD_MB) << 20
        return create_cgroup(memory, self.max_processes + _SANDBOX_TASKS)

    def _command(self, config: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """The child's command line and environment for ``config`` (see :meth:`_config`)."""
        args = ["-I", "-B", "-X", "utf8"] + ([] if self.site_packages else ["-S"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": config["workdir"], "TMPDIR": config["workdir"],
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        return [self.python_executable, *args, _CHILD, json.dumps(config)], env

    def serve(self, setup: str, *, start_timeout: float = 300.0, max_reply_bytes: int = 1 << 20) -> SandboxServer:
        """Start one jailed interpreter that answers requests, each in a fork of its own.

        ``setup`` is trusted code run once in the jail (imports: the slow part); it defines
        ``handle(request: bytes, refused: list[str]) -> bytes``, called in a fresh fork per
        request after seccomp, a Landlock layer without write access and the audit hook are in
        place (``refused`` lists what the audit hook refused), and optionally
        ``prepare(request: bytes)``, called in the server before the fork (trusted work, such as
        imports the request names, kept for later requests). The jail is this sandbox's (same
        view, uid, namespaces, limits); ``timeout`` and ``cpu_seconds`` apply per request
        (:meth:`SandboxServer.call`), not to the server. Blocking; call it off the event loop.

        Example::

            >>> server = PythonSandbox(memory_mb=256).serve(
            ...     "def handle(request, refused):\\n    return str(eval(request)).encode()")
            >>> server.call(b"6 * 7", timeout=5.0).reply
            b'42'
            >>> server.call(b"__import__('os').system('id')", timeout=5.0).status
            'error'
            >>> server.close()
        """
        from tools._sandbox_server import SandboxServer

        return SandboxServer(self, setup, start_timeout=start_timeout, max_reply_bytes=max_reply_bytes)

    async def arun(self, code: str, files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
        """Run ``code``; ``files`` (relative name -> content) are written to the working directory first."""
        start = time.monotonic()
        deadline = start + self.timeout
        workdir = os.path.realpath(tempfile.mkdtemp(prefix="agentrl-sandbox-"))
        cgroup, cgroup_error = self._make_cgroup()
        proc = None
        read_fd, write_fd = os.pipe()
        try:
            write_files(workdir, files or {})
            argv, env = self._command(self._config(workdir, write_fd, cgroup.procs_files if cgroup else []))
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=workdir, env=env, start_new_session=True,
                    pass_fds=(write_fd,))
            finally:
                os.close(write_fd)
            result = await self._supervise(proc, code, read_fd, start, deadline, cgroup)
            return _with_cgroup_layer(result, cgroup, cgroup_error)
        finally:
            if proc is not None and proc.returncode is None:  # cancelled, or an error of ours
                try:
                    await _stop(proc, cgroup)
                except asyncio.CancelledError:
                    _kill_all(proc, cgroup)
            os.close(read_fd)
            await _clean_up(workdir, cgroup, deadline + _CLEANUP_UNTIL)

    async def _supervise(self, proc: asyncio.subprocess.Process, code: str, read_fd: int, start: float,
                         deadline: float, cgroup: RunCgroup | None) -> SandboxResult:
        stopped: list[str] = []

        def overflow() -> None:
            if not stopped:
                stopped.append("output")
            _terminate(proc.pid)

        keep = self.max_output_chars * 4 + 64  # bytes per stream kept at head and at tail
        out, err = Capture(keep, overflow), Capture(keep, overflow)
        readers = [asyncio.create_task(out.read(proc.stdout)), asyncio.create_task(err.read(proc.stderr))]

        async def feed_and_wait() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(code.encode("utf-8", "surrogatepass"))
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the child died before reading everything; its report says why
            await proc.wait()

        try:
            try:
                await asyncio.wait_for(feed_and_wait(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                if not stopped:
                    stopped.append("timeout")
                await _stop(proc, cgroup)
            _kill_all(proc, cgroup)  # nothing of the run may outlive it
            # the pipes close when the last process holding them is gone (at once, unless the kernel
            # is still tearing the run down); what arrived until then is kept either way
            await asyncio.wait(readers, timeout=max(deadline + _OUTPUT_UNTIL - time.monotonic(), 0.1))
        finally:
            for task in readers:
                task.cancel()
        report = read_report(read_fd)
        exit_info = report.get("exit", {})
        exit_code: int | None = exit_info.get("code", proc.returncode)
        sig = exit_info.get("signal")
        cpu = exit_info.get("cpu_seconds")
        if not stopped and sig is not None:
            # We did not kill it (no timeout), so a SIGKILL after spending a good part of the CPU
            # limit is RLIMIT_CPU's. The accounting is tick-based and, on a loaded machine, the
            # reported time can fall well short of the limit.
            cpu_hit = sig == signal.SIGXCPU or (
                sig == signal.SIGKILL and cpu is not None and cpu >= 0.5 * self.cpu_limit - 0.05)
            stopped.append("cpu" if cpu_hit else "killed")
        if stopped:
            exit_code = None
        (out_bytes, out_cut), (err_bytes, err_cut) = out.result(), err.result()
        stdout, stderr, cut = fit(out_bytes.decode("utf-8", "replace"), err_bytes.decode("utf-8", "replace"),
                                  self.max_output_chars)
        return SandboxResult(
            stdout=stdout, stderr=stderr, exit_code=exit_code, stopped=stopped[0] if stopped else None,
            seconds=time.monotonic() - start, cpu_seconds=cpu, truncated=cut or out_cut or err_cut,
            layers=report.get("layers", {}), layer_errors=report.get("errors", {}),
            limits={"timeout": self.timeout, "cpu_seconds": self.cpu_limit, "memory_mb": self.memory_mb})

    def run(self, code: str, files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
        """Blocking :meth:`arun`, for use outside an event loop (or in a worker thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(code, files))
        raise RuntimeError("PythonSandbox.run() was called inside a running event loop; "
                           "use `await sandbox.arun(code)` there instead")

    def as_tool(self, name: str = "python") -> Callable[[str], Awaitable[str]]:
        """An async tool function ``name(code: str) -> str`` using this configuration."""
        sandbox = self

        async def python(code: str) -> str:
            return (await sandbox.arun(code)).to_text()

        python.__name__ = python.__qualname__ = name
        python.__doc__ = _TOOL_DOC.format(timeout=self.timeout, memory=self.memory_mb)
        return python


def _terminate(pid: int) -> None:
    """Ask the sandbox's outer process to stop the run: it kills the code and reaps every
    process of the run before it exits (see ``_sandbox_child._stop_on_sigterm``)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _kill_all(proc: asyncio.subprocess.Process, cgroup: RunCgroup | None) -> None:
    kill_group(proc.pid)
    if cgroup is not None:
        cgroup.kill()


async def _stop(proc: asyncio.subprocess.Process, cgroup: RunCgroup | None) -> None:
    """Stop the run at once: reaped by its own supervisor when it can be (so nothing is left when
    this returns), killed outright after half a second when not."""
    _terminate(proc.pid)
    try:
        await asyncio.wait_for(proc.wait(), _GRACE_SECONDS)
    except asyncio.TimeoutError:
        logger.warning("sandbox process %d did not stop in %g s; killing it", proc.pid, _GRACE_SECONDS)
    _kill_all(proc, cgroup)
    await proc.wait()


def _with_cgroup_layer(result: SandboxResult, cgroup: RunCgroup | None, why_not: str) -> SandboxResult:
    joined = cgroup is not None and result.layers.get("cgroup", True) is not False
    layers = {**result.layers, "cgroup": cgroup.version if joined and cgroup else False}
    errors = dict(result.layer_errors)
    if cgroup is None and why_not:
        errors["cgroup"] = why_not
    return dataclasses.replace(result, layers=layers, layer_errors=errors)


def _remove_run_files(workdir: str, cgroup: RunCgroup | None) -> None:
    remove_tree(workdir)
    if cgroup is None:
        return
    for _ in range(200):  # a cgroup can be removed once its last process has exited
        if cgroup.remove():
            return
        time.sleep(0.01)
    logger.warning("sandbox cgroup %s could not be removed", cgroup.dirs)


async def _clean_up(workdir: str, cgroup: RunCgroup | None, wait_until: float) -> None:
    """Remove the run's directory and cgroup on a thread of its own (a program may leave thousands
    of files); wait for it until ``wait_until`` at most, then let it finish in the background. Not
    the event loop's executor: ``asyncio.run`` would wait for that one before returning."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def work() -> None:
        try:
            _remove_run_files(workdir, cgroup)
        finally:
            try:
                loop.call_soon_threadsafe(finish)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

    threading.Thread(target=work, name="sandbox-cleanup", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), max(wait_until - time.monotonic(), 0.05))
    except (asyncio.TimeoutError, asyncio.CancelledError):
        logger.info("sandbox clean-up of %s continues in the background", workdir)


_TOOL_DOC = """Run a Python program in a sandbox and return what it printed.

    The program runs in a fresh interpreter with only the standard library, no network and no
    files but its own working directory; limits: {timeout:g} s, {memory} MB of memory.
    The value of a final bare expression is printed too.

    Args:
        code: The complete Python program to run.
    """


def python(code: str) -> str:
    """Run a Python program in a sandbox and return what it printed.

    The program runs in a fresh interpreter with only the standard library, no network and no
    files but its own working directory; limits: 5 s, 512 MB of memory. The value of a final
    bare expression is printed too.

    Args:
        code: The complete Python program to run.
    """
    return PythonSandbox().run(code).to_text()
