"""Scoring untrusted answers in a jail, with a time limit that always holds.

Answer checks run model output through code that can evaluate it: reasoning-gym scorers hand
the answer to ``sympy.parse_expr`` (``countdown``, ``puzzle24``, ``simple_integration``,
``intermediate_integration``, ``polynomial_multiplication``) or to plain ``eval``
(``n_queens``, ``spiral_matrix``, ``binary_matrix``, ``string_insertion``), both of which run
Python: ``<answer>__import__('os').system('...')</answer>`` is a shell command. Others run as
long as the answer tells them to, holding the GIL: ``\\boxed{9^{9^{9^{9}}}}`` sends sympy into
an integer power that never ends.

So every such check runs here, in a pool of jailed scoring servers
(:meth:`tools.python_exec.PythonSandbox.serve`): the Python sandbox's jail (unprivileged uid in
a user namespace, new root with only the interpreter, the libraries and site-packages read-only,
no network, pid namespace, Landlock, cgroup where writable) whose runner imports what scoring
needs once, then answers each call in a fresh fork that also has the seccomp allowlist (no
fork, exec or sockets), no write access anywhere and the audit hook, and is killed at its
deadline. What one answer does cannot reach the host, the trainer or the next answer.

:func:`run` runs ``"module:function"`` with picklable arguments and returns an
:class:`Outcome`: the value (JSON-serialisable), the exception it raised, or why it was stopped,
and the ``incidents``: what the jail refused during the call (a process, a socket, a write) and
the errors the evaluation of text ran into (``eval``/``exec`` raising ``MemoryError``,
``OSError``, ``RecursionError``, ``RuntimeError``, ``ImportError``...), which scorers usually
swallow. :func:`call` is the short form. Both block their thread (from async code call them
through ``asyncio.to_thread``); at most :data:`MAX_WORKERS` servers run at once, each serving
one call at a time. The project's ``agentrl`` and ``envs`` packages are shown to the jail (their
data directories are not), and the site-packages directories on ``sys.path``; nothing else of
the host. Where the kernel grants fewer layers (no user namespaces and not root), the servers
run with those it grants, and the first start says which are missing in a warning. A process
forked from one that has servers starts its own.

Example::

    >>> call("operator:add", 2, 3, timeout=30.0)
    (True, 5)
    >>> call("time:sleep", 60, timeout=0.5)   # killed after half a second
    (False, None)
    >>> run("builtins:eval", "__import__('os').system('id')", timeout=30.0).incidents[0]
    'sandbox: creating processes is not allowed (os.system)'
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import importlib.util
import json
import logging
import os
import pickle
import queue
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools._sandbox_server import SandboxServer, Served
    from tools.python_exec import PythonSandbox

__all__ = ["MAX_WORKERS", "START_TIMEOUT_S", "Outcome", "ScoringError", "call", "run"]

log = logging.getLogger(__name__)

MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Scoring servers at most; callers beyond that wait for a free one."""
START_TIMEOUT_S = 300.0
"""Seconds a server may take to start, and to import what a call names (not counted in ``timeout``)."""
MEMORY_MB = 4096
"""Address space of a scoring server and of each call (sympy, numpy and reasoning-gym loaded)."""
PACKAGES = ("agentrl", "envs")
"""The project's packages shown to the jail (scoring functions live in them)."""
_WATCHED = (OSError, MemoryError, RecursionError, RuntimeError, ImportError, SystemExit, KeyboardInterrupt)
"""Errors of evaluated text that are incidents, not wrong answers (see :func:`_watch`)."""
_ISOLATION = ("net_namespace", "mount_namespace", "pid_namespace", "landlock", "seccomp")


class ScoringError(RuntimeError):
    """The function raised in its jail; the message is ``"<ExceptionType>: <message>"``."""


@dataclass(frozen=True)
class Outcome:
    """How one scoring call ended."""

    finished: bool
    """The function returned; ``value`` is its result."""
    value: Any = None
    error: str | None = None
    """``"<ExceptionType>: <message>"`` when the function (or importing its module) raised."""
    stopped: str | None = None
    """Why the call was stopped: ``timeout``, ``killed`` (its CPU or memory limit, a crash),
    ``too_large`` (a result over 1 MiB) or ``lost`` (the server died; another takes its place)."""
    incidents: tuple[str, ...] = ()
    """What the jail refused during the call and what evaluating text ran into (see the module
    doc): signs that the answer tried to do something, even when the scorer caught the error."""


def run(function: str, *args: Any, timeout: float, preload: Iterable[str | tuple[Any, ...]] = ()) -> Outcome:
    """Run ``function`` (``"package.module:name"``) with ``args`` in a jailed scoring server.

    ``preload`` names what the server does before the call, once for all later calls (in the
    server, so each call's fork starts with it done): modules to import (skipped when not
    installed), the expensive imports of a scorer that imports lazily, and warm-ups, trusted
    code that runs the scorer once on trusted input so that what it imports lazily and the
    tables it builds on first use are there in every fork: ``"module:function"`` called without
    arguments, or ``("module:function", *args)`` with picklable ``args`` that must not come
    from model output. Returns an :class:`Outcome`; raises :class:`OSError` when no server
    could start.
    """
    if ":" not in function:
        raise ValueError(f"function must look like 'package.module:name'; got {function!r}")
    return _POOL.run(pickle.dumps((function, args, tuple(preload))), timeout)


def call(function: str, *args: Any, timeout: float) -> tuple[bool, Any]:
    """:func:`run`, shortened: ``(True, result)``, or ``(False, None)`` when it ran longer than
    ``timeout`` seconds or was stopped. An exception in the function (or in importing its
    module) is raised here as :class:`ScoringError`."""
    outcome = run(function, *args, timeout=timeout)
    if outcome.error is not None:
        raise ScoringError(outcome.error)
    return outcome.finished, outcome.value


# ----------------------------------------------------------------------------- host side


class _Pool:
    def __init__(self, size: int) -> None:
        self._idle: queue.LifoQueue[SandboxServer | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a free slot: its server starts when the slot is first used
        self._all: set[SandboxServer] = set()
        self._lock = threading.Lock()
        self._reported = False

    def run(self, request: bytes, timeout: float) -> Outcome:
        server = self._idle.get()
        try:
            if server is not None and not server.alive:
                self._discard(server)
                server = None
            if server is None:
                server = self._start()
            served = server.call(request, timeout, START_TIMEOUT_S)
        finally:
            if server is not None and not server.alive:
                self._discard(server)
                server = None
            self._idle.put(server)
        return _outcome(served)

    def _start(self) -> SandboxServer:
        server = _sandbox().serve(_SETUP.format(path=_jail_sys_path()), start_timeout=START_TIMEOUT_S)
        with self._lock:
            self._all.add(server)
            first, self._reported = not self._reported, True
        if first:
            _report_layers(server.layers, server.layer_errors)
        return server

    def _discard(self, server: SandboxServer) -> None:
        server.close()
        with self._lock:
            self._all.discard(server)

    def close(self) -> None:
        with self._lock:
            servers, self._all = list(self._all), set()
        for s in servers:
            s.close()

    def forget(self) -> None:
        """In a forked child: the servers are the parent's; start afresh without touching them."""
        self.__init__(MAX_WORKERS)  # type: ignore[misc]


def _outcome(served: Served) -> Outcome:
    if served.status == "ok":
        try:
            reply = json.loads(served.reply)
            incidents = tuple(str(i)[:300] for i in reply.get("incidents", ())[:20])
        except (ValueError, RecursionError, TypeError, AttributeError):
            return Outcome(False, error="ValueError: unreadable reply from the scoring jail")
        if "error" in reply:
            return Outcome(False, error=str(reply["error"])[:2000], incidents=incidents)
        return Outcome(True, reply.get("value"), incidents=incidents)
    if served.status == "error":  # importing the module, or the jail's own code, failed
        return Outcome(False, error=served.reply.decode("utf-8", "replace")[:2000])
    stopped = {"died": "killed"}.get(served.status, served.status)
    return Outcome(False, stopped=stopped)


def _sandbox() -> PythonSandbox:
    from tools.python_exec import PythonSandbox

    shown = _shown_packages()
    hidden = [d for pkg in shown for d in _data_dirs(pkg)]
    readable = [*shown, *(p for p in _site_dirs() if not any(_inside(p, s) for s in shown))]
    return PythonSandbox(memory_mb=MEMORY_MB, max_open_files=256, scratch_mb=16, readable_paths=tuple(readable),
                         hidden_paths=tuple(hidden))


def _shown_packages() -> list[str]:
    """The directories of the project's packages (:data:`PACKAGES`)."""
    dirs = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs += [os.path.realpath(d) for d in spec.submodule_search_locations]
    return dirs


def _data_dirs(package_dir: str) -> list[str]:
    """Directories under a package that hold no Python module (data, such as answer keys)."""
    hidden = []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if dirpath != package_dir and not any(f.endswith(".py") for f in filenames):
            hidden.append(dirpath)
            dirnames[:] = []
    return hidden


def _site_dirs() -> list[str]:
    return [os.path.realpath(p) for p in sys.path
            if p and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages") and os.path.isdir(p)]


def _jail_sys_path() -> list[str]:
    """The jail's ``sys.path``: the roots of the shown packages, then this one's entries that the
    jail can see (the standard library, site-packages); script and ``PYTHONPATH`` directories
    are left out (only their ``agentrl``/``envs`` packages are shown)."""
    roots = list(dict.fromkeys(os.path.dirname(d) for d in _shown_packages()))
    prefixes = {os.path.realpath(os.path.join(p, "lib")) for p in (sys.base_prefix, sys.base_exec_prefix)}
    site = set(_site_dirs())
    keep = [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)]
    keep = [p for p in keep if p in site or any(_inside(p, x) for x in prefixes)]
    return list(dict.fromkeys([*roots, *keep]))


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _report_layers(layers: dict[str, Any], errors: dict[str, str]) -> None:
    """Say once which layers the scoring jail got: a warning naming what is missing, and why."""
    missing = [k for k in _ISOLATION if not layers.get(k)]
    held = [k for k in _ISOLATION if layers.get(k)]
    if missing:
        why = "; ".join(f"{k}: {errors[k]}" for k in ("user_namespace", *missing) if k in errors)
        log.warning("answer scoring runs in a jail without %s (%s); each call is still confined by %s and "
                    "rlimits (see docs/tools.md, 'Graders')", ", ".join(missing), why or "not granted here",
                    ", ".join(held) or "nothing but")
    else:
        log.info("answer scoring runs jailed (%s; cgroup: %s)", ", ".join(held), layers.get("cgroup") or "none")


_POOL = _Pool(MAX_WORKERS)
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL.forget)


# ----------------------------------------------------------------------------- jail side

_SETUP = """
import os, site, sys
os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
sys.path[:] = {path!r}
for entry in list(sys.path):
    site.addsitedir(entry)  # .pth files (editable installs, namespace packages)
from envs._scoring import _jail_handle as handle, _jail_preparer
prepare = _jail_preparer()
"""


def _jail_preparer() -> Any:
    """``prepare`` of the jail's server: before the fork, import and warm up what the call
    names, once; true when that changed the server's state (its next fork is then made anew)."""
    done: set[str] = set()

    def prepare(request: bytes) -> bool:
        function, _, preload = pickle.loads(request)
        todo = [item for item in (*preload, function.partition(":")[0]) if repr(item) not in done]
        for item in todo:
            name, *args = (item,) if isinstance(item, str) else item
            module, _, warm_up = name.partition(":")
            try:
                loaded = importlib.import_module(module)
            except ImportError:
                if item not in preload:
                    raise
                continue
            done.add(repr(item))
            if warm_up:
                try:
                    getattr(loaded, warm_up)(*args)
                except Exception:  # noqa: BLE001 - a warm-up only saves time; the call itself will tell
                    pass
        return bool(todo)

    return prepare


def _jail_handle(request: bytes, refused: list[str]) -> bytes:
    """In a confined fork: call the function, watch what evaluated text runs into, reply JSON."""
    logging.disable(logging.WARNING)  # scorers' warnings about junk answers
    function, args, _ = pickle.loads(request)
    module, _, name = function.partition(":")
    trouble: list[str] = []
    builtins.eval, builtins.exec = _watch(builtins.eval, trouble), _watch(builtins.exec, trouble)
    try:
        reply: dict[str, Any] = {"value": getattr(importlib.import_module(module), name)(*args)}
    except BaseException as e:  # noqa: BLE001 - reported to the caller
        reply = {"error": f"{type(e).__name__}: {e}"}
        if not isinstance(e, Exception):
            trouble.append(f"{type(e).__name__}: {e}")
    reply["incidents"] = [*refused, *trouble]
    try:
        return json.dumps(reply).encode()
    except (TypeError, ValueError) as e:
        return json.dumps({"error": f"TypeError: the result is not JSON-serialisable ({e})",
                           "incidents": reply["incidents"]}).encode()


def _watch(real: Any, trouble: list[str]) -> Any:
    """``eval``/``exec`` that note the :data:`_WATCHED` errors raised by the text they run (a
    scorer that evaluates an answer usually catches every error and scores it like a typo)."""

    def evaluate(source: Any, globals: Any = None, locals: Any = None, /, **kw: Any) -> Any:
        if globals is None:  # the caller's namespaces, as the built-ins use
            frame = sys._getframe(1)
            globals, locals = frame.f_globals, frame.f_locals if locals is None else locals
        try:
            return real(source, globals, locals, **kw)
        except _WATCHED as e:
            trouble.append(f"{type(e).__name__}: {e}"[:300])
            raise

    evaluate.__name__ = evaluate.__qualname__ = real.__name__
    return evaluate
