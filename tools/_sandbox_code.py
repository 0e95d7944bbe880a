"""The sandboxed program's side: the audit hook and running the code (``tools/_sandbox_child.py``).

Imported by the sandbox's child process before any isolation is set up; used by its runner
process once the kernel layers are in place.
"""

from __future__ import annotations

import ast
import linecache
import os
import sys
import traceback
from collections.abc import Callable

AF_UNIX = 1  # socket.AF_UNIX on Linux, without importing socket here
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # audit event -> indices of path arguments that must lie inside a writable root
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
}
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "os.startfile", "pty.spawn"}
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"}


def install_audit_hook(writable: list[str], readable: list[str] | None, hidden: list[str],
                       block_ctypes: bool, on_refusal: Callable[[str], None] | None = None) -> None:
    """Friendly Python-level refusals (the kernel layers are the real barrier where present).

    ``on_refusal`` is called with each refusal's message before it is raised (the program may
    catch the exception; the caller still learns what was tried)."""
    realpath, fsdecode = os.path.realpath, os.fsdecode
    prefixes = [p.rstrip("/") + "/" for p in writable]
    read_prefixes = None if readable is None else [p.rstrip("/") + "/" for p in readable]
    hidden_prefixes = [realpath(p).rstrip("/") + "/" for p in hidden]

    def under(p: str, roots: list[str]) -> bool:
        return any(p == r[:-1] or p.startswith(r) for r in roots)

    def may_write(path: object) -> bool:
        if isinstance(path, int) or path is None:
            return True
        p = realpath(fsdecode(path))  # type: ignore[arg-type]
        return under(p, prefixes) or p == "/dev/null"

    def may_read(path: object) -> bool:
        if isinstance(path, int) or path is None:
            return True
        p = realpath(fsdecode(path))  # type: ignore[arg-type]
        if under(p, hidden_prefixes):
            return False
        return read_prefixes is None or under(p, read_prefixes)

    own_pid = os.getpid()

    def hook(event: str, args: tuple) -> None:
        try:
            check(event, args)
        except (PermissionError, ImportError) as e:
            if on_refusal is not None:
                on_refusal(str(e))
            raise

    def check(event: str, args: tuple) -> None:
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            writing = flags & _WRITE_FLAGS or any(c in mode for c in "wax+")
            if writing and not may_write(args[0]):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: "
                                      f"{fsdecode(args[0])!r}")
            if not writing and not may_read(args[0]):
                raise PermissionError(f"sandbox: reading {fsdecode(args[0])!r} is not allowed")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not may_write(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not "
                                          f"allowed: {fsdecode(args[i])!r}")
        elif event in ("os.listdir", "os.scandir") and args and not may_read(args[0]):
            raise PermissionError(f"sandbox: reading {fsdecode(args[0])!r} is not allowed")
        elif event in _PROCESS_EVENTS:
            raise PermissionError(f"sandbox: creating processes is not allowed ({event})")
        elif event in _NET_EVENTS or (event == "socket.__new__" and args[1] != AF_UNIX):
            raise PermissionError(f"sandbox: network access is not allowed ({event})")
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, own_pid):
            raise PermissionError(f"sandbox: signalling other processes is not allowed ({event})")
        elif event == "import" and block_ctypes and args[0] in ("ctypes", "_ctypes"):
            raise ImportError("sandbox: ctypes is not available")

    sys.addaudithook(hook)


def run_user_code(code: str, echo_last: bool) -> int:

    name = "<code>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        tree = ast.parse(code, name)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes; UnicodeEncodeError: lone surrogates

        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        return 1
    except (MemoryError, RecursionError):  # a program too large or too nested for the memory limit
        sys.stderr.write(f"MemoryError: the program ({len(code)} characters) is too large to compile within "
                         "the memory limit\n")
        return 1
    last = None
    if echo_last and tree.body and isinstance(expr := tree.body[-1], ast.Expr):
        tree.body.pop()
        last = ast.Expression(expr.value)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(tree, name, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, name, "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report everything the code raised
        _print_user_traceback(e)
        return 1
    return 0


def _print_user_traceback(exc: BaseException) -> None:
    """Print the traceback without this launcher's own frames (the audit hook, the exec call)."""

    this = os.path.abspath(__file__)
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    for e in _chain(te):
        e.stack = traceback.StackSummary.from_list([f for f in e.stack if f.filename != this])
    try:
        sys.stdout.flush()
    except OSError:
        pass
    sys.stderr.write("".join(te.format()))


def _chain(te):  # the exception and its causes/contexts
    seen = []
    while te is not None and te not in seen:
        seen.append(te)
        te = te.__cause__ or te.__context__
    return seen
