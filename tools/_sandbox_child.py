"""Child side of the Python sandbox: set up isolation, then run the untrusted code.

Run as ``python -I -S -B -X utf8 _sandbox_child.py CONFIG_JSON`` with the code on stdin, a
private working directory as cwd, and a pipe at ``CONFIG["report_fd"]`` (see
``tools/python_exec.py``, which owns the protocol). Steps:

1. read the code, put ``/dev/null`` on stdin;
2. unshare namespaces (net, mount, pid, ipc, uts; a user namespace first when not root);
3. fork: the outer process waits and reports the inner one's exit status and CPU time; the
   inner one (pid 1 of the new pid namespace, if any) carries on and dies with its parent;
4. inner: read-only mounts except the working directory, a private /proc, ``no_new_privs``,
   Landlock, drop all capabilities, seccomp, write the isolation report, rlimits;
5. inner: install the audit hook, run the code (the value of a final expression is printed).

Each layer that cannot be had is recorded in the report (with the reason) and skipped.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_linux as lx  # noqa: E402

del sys.path[0]

AF_UNIX = 1  # socket.AF_UNIX on Linux, without importing socket here
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # audit event -> indices of path arguments that must lie inside the workdir
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
}
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "os.startfile", "pty.spawn"}
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"}


def _namespaces(cfg: dict, layers: dict, errors: dict) -> int:
    """Unshare the wanted namespaces; returns the flags obtained."""
    wanted = {"net_namespace": lx.CLONE_NEWNET, "mount_namespace": lx.CLONE_NEWNS,
              "pid_namespace": lx.CLONE_NEWPID}
    wanted = {k: v for k, v in wanted.items() if cfg[k]}
    for k in wanted:
        layers[k] = False
    if not wanted:
        return 0
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        try:
            lx.unshare(lx.CLONE_NEWUSER)
            lx.enter_user_namespace(uid, gid)
            layers["user_namespace"] = True
        except OSError as e:
            errors["user_namespace"] = str(e)
            for k in wanted:
                errors[k] = "needs root or an unprivileged user namespace"
            return 0
    extra = lx.CLONE_NEWIPC | lx.CLONE_NEWUTS
    try:
        lx.unshare(sum(wanted.values()) | extra)
        got = sum(wanted.values())
    except OSError:
        got = 0
        for k, flag in wanted.items():
            try:
                lx.unshare(flag)
                got |= flag
            except OSError as e:
                errors[k] = str(e)
    for k, flag in wanted.items():
        layers[k] = bool(got & flag)
    return got


def _confine(cfg: dict, got: int, host_mnt_ns: int, layers: dict, errors: dict) -> None:
    """Inner process: mounts, no_new_privs, Landlock, capabilities, seccomp (in this order)."""
    workdir = cfg["workdir"]
    if cfg["hidden_paths"] and not got & lx.CLONE_NEWNS:
        layers["hidden_paths"] = False
        errors["hidden_paths"] = "needs the mount namespace"
    if got & lx.CLONE_NEWNS:
        try:
            failed = lx.read_only_except(workdir, host_mnt_ns)
            if failed:
                errors["mount_namespace"] = f"could not remount read-only: {failed[:5]}"
            layers["mount_namespace"] = not failed
            if cfg["hidden_paths"]:
                try:
                    lx.hide(cfg["hidden_paths"], host_mnt_ns)
                    layers["hidden_paths"] = True
                except (OSError, RuntimeError) as e:
                    layers["hidden_paths"] = False
                    errors["hidden_paths"] = str(e)
            if got & lx.CLONE_NEWPID:
                try:
                    flags = lx.MS_NOSUID | lx.MS_NODEV | lx.MS_NOEXEC | lx.MS_RDONLY
                    lx.mount("proc", "/proc", "proc", flags)
                except OSError as e:
                    errors["proc"] = str(e)
        except (OSError, RuntimeError) as e:
            layers["mount_namespace"] = False
            errors["mount_namespace"] = str(e)
    try:
        lx.prctl(lx.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        errors["no_new_privs"] = str(e)
    if cfg["landlock"]:
        try:
            layers["landlock"] = lx.landlock_confine(workdir)
        except OSError as e:
            layers["landlock"] = 0
            errors["landlock"] = str(e)
    try:
        lx.drop_capabilities()
        layers["capabilities_dropped"] = True
    except OSError as e:
        layers["capabilities_dropped"] = False
        errors["capabilities_dropped"] = str(e)
    if cfg["seccomp"]:
        try:
            lx.install_seccomp()
            layers["seccomp"] = True
        except OSError as e:
            layers["seccomp"] = False
            errors["seccomp"] = str(e)


def _set_rlimits(limits: dict) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes raise OSError(EFBIG) instead
    for name, value in limits.items():  # soft == hard: RLIMIT_CPU then ends in SIGKILL, even for pid 1
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


def _install_audit_hook(workdir: str, block_ctypes: bool) -> None:
    """Friendly Python-level refusals (the kernel layers are the real barrier where present)."""
    realpath, fsdecode = os.path.realpath, os.fsdecode
    prefix = workdir.rstrip("/") + "/"

    def inside(path: object) -> bool:
        if isinstance(path, int) or path is None:
            return True
        p = realpath(fsdecode(path))  # type: ignore[arg-type]
        return p == workdir or p.startswith(prefix) or p == "/dev/null"

    own_pid = os.getpid()

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if flags & _WRITE_FLAGS and not inside(args[0]):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: "
                                      f"{fsdecode(args[0])!r}")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not "
                                          f"allowed: {fsdecode(args[i])!r}")
        elif event in _PROCESS_EVENTS:
            raise PermissionError(f"sandbox: creating processes is not allowed ({event})")
        elif event in _NET_EVENTS or (event == "socket.__new__" and args[1] != AF_UNIX):
            raise PermissionError(f"sandbox: network access is not allowed ({event})")
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, own_pid):
            raise PermissionError(f"sandbox: signalling other processes is not allowed ({event})")
        elif event == "import" and block_ctypes and args[0] in ("ctypes", "_ctypes"):
            raise ImportError("sandbox: ctypes is not available")

    sys.addaudithook(hook)


def _run_user_code(code: str, echo_last: bool) -> int:
    import ast
    import linecache

    name = "<code>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        tree = ast.parse(code, name)
    except SyntaxError as e:
        import traceback

        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        return 1
    last = None
    if echo_last and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
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
    import traceback

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


def main() -> None:
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.read()
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    report_fd = cfg["report_fd"]
    layers: dict = {"audit_hook": cfg["audit_hook"]}
    errors: dict = {}
    host_mnt_ns = os.stat("/proc/self/ns/mnt").st_ino
    got = _namespaces(cfg, layers, errors)

    pid = os.fork()
    if pid:  # outer: wait, then report how the inner process ended
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _, status, usage = os.wait4(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        record = {"exit": {"code": os.waitstatus_to_exitcode(status), "signal": sig,
                           "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}}
        os.write(report_fd, (json.dumps(record) + "\n").encode())
        os._exit(128 + sig if sig else os.WEXITSTATUS(status))

    lx.prctl(lx.PR_SET_PDEATHSIG, signal.SIGKILL)
    _confine(cfg, got, host_mnt_ns, layers, errors)
    os.write(report_fd, (json.dumps({"layers": layers, "errors": errors}) + "\n").encode())
    os.close(report_fd)
    if cfg.get("require_network_isolation") and not (layers.get("net_namespace") or layers.get("seccomp")):
        print("sandbox: network isolation is required but unavailable; code not run", file=sys.stderr)
        os._exit(3)
    limits = dict(cfg["rlimits"])
    nproc = limits.pop("NPROC_IN_USERNS", None)
    if nproc is not None and layers.get("user_namespace"):
        limits["NPROC"] = nproc  # outside a user namespace it would count all of the user's processes
    _set_rlimits(limits)
    if cfg["audit_hook"]:
        kernel_ok = layers.get("seccomp") and layers.get("landlock")
        _install_audit_hook(cfg["workdir"], block_ctypes=not kernel_ok)
    try:
        rc = _run_user_code(code, cfg["echo_last_expression"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    main()
