"""Child side of the Python sandbox: set up isolation, then run the untrusted code.

Run as ``python -I -S -B -X utf8 _sandbox_child.py CONFIG_JSON`` with the code on stdin, the run's
host directory (holding the files to pre-fill) as cwd, and a pipe at ``CONFIG["report_fd"]`` (see
``tools/python_exec.py``, which owns the protocol). Three processes, none of which the code can
outlive:

* **outer** (this process): joins the run's cgroups, enters a user namespace (as root too: the
  code's uid is then an unused host uid, ``uid_base + pid``) and new net/mount/pid/ipc/uts
  namespaces, forks the supervisor and waits. The parent kills it (its process group) at the
  deadline.
* **supervisor**: pid 1 of the new pid namespace; dies with the outer process
  (``PR_SET_PDEATHSIG``, set by trusted code), and when pid 1 dies the kernel kills every
  process of the namespace, whatever ``setsid`` or death signal they set. It builds the
  filesystem view (``tools/_sandbox_view.py``), forks the runner, reports its exit status and CPU
  time on the report pipe, and exits with it.
* **runner**: drops to the unprivileged uid, drops every capability, sets ``no_new_privs``,
  Landlock, the rlimits and the seccomp filter (``tools/_sandbox_seccomp.py``), reports the
  layers it got, installs the audit hook and runs the code (the value of a final expression is
  printed).

In serve mode (``CONFIG["serve"]``) the code comes in the config, stdin and stdout stay the
request and reply pipes, and the runner, confined as above but for seccomp, runs the code as
trusted setup and then answers each request in a fork that adds seccomp, the audit hook and a
Landlock layer without write access before it reads the request (``tools/_sandbox_serve.py``).

Each layer that cannot be had is recorded in the report (with the reason) and skipped.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import select
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_code as code_runner  # noqa: E402
import _sandbox_linux as lx  # noqa: E402
import _sandbox_seccomp as seccomp  # noqa: E402
import _sandbox_serve as serve_mode  # noqa: E402
import _sandbox_view as view  # noqa: E402

del sys.path[0]

SETUP_FAILED = 125
INSIDE_ID = 1000  # the code's uid and gid inside its user namespace
_NAMESPACES = {"net_namespace": lx.CLONE_NEWNET, "mount_namespace": lx.CLONE_NEWNS,
               "pid_namespace": lx.CLONE_NEWPID}
LINUX = sys.platform.startswith("linux")  # elsewhere only the rlimits and the audit hook apply


class Run:
    """What the three processes share: the config, the ids, the layers obtained so far."""

    def __init__(self, cfg: dict) -> None:
        if not LINUX:
            cfg.update(dict.fromkeys(("user_namespace", *_NAMESPACES, "landlock", "seccomp", "cgroup_procs"), False))
        self.cfg = cfg
        self.layers: dict = {"audit_hook": cfg["audit_hook"]}
        self.errors: dict = {}
        self.root = os.geteuid() == 0
        self.host_uid = cfg["uid_base"] + os.getpid() if self.root else os.geteuid()
        self.host_gid = self.host_uid if self.root else os.getegid()
        self.userns = False
        self.got = 0  # namespace flags obtained
        self.workdir = cfg["workdir"]
        self.mount_view = False
        self.layout = view.Plan(visible=[])
        self.last_cap = lx.last_capability() if LINUX else -1

    @property
    def ids(self) -> tuple[int, int]:
        """The code's uid and gid as seen inside its user namespace (or on the host without one)."""
        return (INSIDE_ID, INSIDE_ID) if self.userns else (self.host_uid, self.host_gid)

    def report(self, record: dict) -> None:
        os.write(self.cfg["report_fd"], (json.dumps(record) + "\n").encode())


# ----------------------------------------------------------------------------- outer process


def _join_cgroups(run: Run) -> None:
    paths = run.cfg["cgroup_procs"]
    if not paths:
        return
    try:
        for path in paths:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        run.layers["cgroup"] = True
    except OSError as e:
        run.layers["cgroup"] = False
        run.errors["cgroup"] = f"could not join the run's cgroup: {e}"


def _user_namespace_as_root(host_uid: int, host_gid: int) -> None:
    """Enter a new user namespace in which :data:`INSIDE_ID` is ``host_uid`` (unprivileged).

    Only a process outside the namespace with CAP_SETUID there may map another uid, so a short-
    lived helper forked before ``unshare`` writes the maps."""
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(w)
        os.read(r, 1)
        try:
            lx.write_id_maps(os.getppid(), f"{INSIDE_ID} {host_uid} 1\n", f"{INSIDE_ID} {host_gid} 1\n",
                             deny_setgroups=False)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - any failure means "no map"
            os._exit(1)
    os.close(r)
    try:
        lx.unshare(lx.CLONE_NEWUSER)
    finally:
        os.write(w, b"x")
        os.close(w)
        _, status = os.waitpid(helper, 0)
    if status != 0:
        raise RuntimeError("could not write the uid/gid maps of the new user namespace")


def _enter_namespaces(run: Run) -> None:
    cfg = run.cfg
    wanted = {k: v for k, v in _NAMESPACES.items() if cfg[k]}
    for k in wanted:
        run.layers[k] = False
    if not wanted:
        return
    if cfg["user_namespace"] and run.host_uid != 0:
        try:
            if run.root:
                _user_namespace_as_root(run.host_uid, run.host_gid)
            else:
                lx.unshare(lx.CLONE_NEWUSER)
                lx.write_id_maps("self", f"{INSIDE_ID} {run.host_uid} 1\n", f"{INSIDE_ID} {run.host_gid} 1\n",
                                 deny_setgroups=True)
            run.userns = True
        except OSError as e:
            run.errors["user_namespace"] = str(e)
    run.layers["user_namespace"] = run.userns
    if not (run.userns or run.root):
        for k in wanted:
            run.errors[k] = "needs root or an unprivileged user namespace"
        return
    try:
        lx.unshare(sum(wanted.values()) | lx.CLONE_NEWIPC | lx.CLONE_NEWUTS)
        run.got = sum(wanted.values())
    except OSError:
        for k, flag in wanted.items():
            try:
                lx.unshare(flag)
                run.got |= flag
            except OSError as e:
                run.errors[k] = str(e)
    for k, flag in wanted.items():
        run.layers[k] = bool(run.got & flag)


def main() -> None:
    run = Run(json.loads(sys.argv[1]))
    if run.cfg.get("serve"):  # stdin stays the request pipe
        code = run.cfg["code"]
    else:
        code = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    _join_cgroups(run)
    files_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    if run.root:
        _hand_over_the_directory(run, new_root=run.cfg["mount_namespace"])
    host_mnt_ns = os.stat("/proc/self/ns/mnt").st_ino if LINUX else 0
    try:
        _enter_namespaces(run)
        if run.root and run.host_uid and not run.userns and not run.got & lx.CLONE_NEWNS:
            _hand_over_the_directory(run, new_root=False)  # the mount namespace was refused
        # after unshare: a bind's source must be in the new mount namespace; before setuid: the
        # descriptors reach paths that the code's uid may not (the interpreter under /root, say)
        readable = run.cfg.get("readable_paths", [])
        run.layout = (view.plan(run.cfg["site_packages"], run.cfg["hidden_paths"], readable) if LINUX
                      else view.Plan(view.visible_paths(readable)))
    except (OSError, RuntimeError) as e:
        _setup_failed(run, e)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        _supervisor(run, code, files_fd, alive_r, host_mnt_ns)
    _stop_on_sigterm(pid, signal.SIGTERM)
    os.close(alive_r)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _hand_over_the_directory(run: Run, new_root: bool) -> None:
    """As root: give the run's host directory to the code's uid, or keep uid 0 for the code when
    that uid could not even import (the interpreter unreadable to others, and no ``new_root`` to
    show it). Call it before entering a user namespace (and again if the mount namespace failed)."""
    if not new_root:
        shown = [*view.python_paths(), *run.cfg.get("readable_paths", [])]
        unreadable = [p for p in shown if not view.world_readable(p)]
        if unreadable:
            run.host_uid = run.host_gid = 0
            run.errors["uid"] = (f"the code runs as root (without capabilities): the interpreter's files "
                                 f"{unreadable[:2]} are not readable by other users, and there is no mount "
                                 f"namespace to show them")
    for dirpath, dirnames, filenames in os.walk(run.workdir):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, run.host_uid, run.host_gid)


def _stop_on_sigterm(child: int, child_signal: int) -> None:
    """On SIGTERM (the parent's "time is up"), signal ``child`` and reap it before exiting: once
    the outer process is gone, nothing of the run is left, not even a zombie. (The supervisor,
    pid 1 of its namespace, exits only after the kernel has reaped every other process in it.)"""

    def stop(*_: object) -> None:
        try:
            os.kill(child, child_signal)
            os.waitpid(child, 0)
        except OSError:
            pass
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)


def _setup_failed(run: Run, exc: BaseException) -> None:
    run.errors["setup"] = f"{type(exc).__name__}: {exc}"
    run.report({"layers": run.layers, "errors": run.errors})
    print(f"sandbox: could not set up the sandbox ({exc}); code not run", file=sys.stderr)
    os._exit(SETUP_FAILED)


# ----------------------------------------------------------------------------- supervisor


def _die_with_parent(parent: int | None, alive_fd: int | None = None) -> None:
    """Die with the parent process; exit now if it already died. Across a pid namespace the
    parent's pid is not visible, so an inherited pipe (EOF once the parent is gone) tells."""
    if LINUX:
        lx.prctl(lx.PR_SET_PDEATHSIG, signal.SIGKILL)
    if alive_fd is not None:
        if select.select([alive_fd], [], [], 0)[0]:
            os._exit(SETUP_FAILED)
        os.close(alive_fd)
    elif os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _supervisor(run: Run, code: str, files_fd: int, outer_alive: int, host_mnt_ns: int) -> None:
    try:
        _die_with_parent(None, outer_alive)
        if run.userns and run.root:  # become the unprivileged host uid (keeping the namespace's capabilities)
            os.setgroups([])
            os.setresgid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
            os.setresuid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
        _build_view(run, files_fd, host_mnt_ns)
    except (OSError, RuntimeError) as e:
        _setup_failed(run, e)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        _runner(run, code, me)
    _stop_on_sigterm(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    run.report({"exit": {"code": os.waitstatus_to_exitcode(status), "signal": sig,
                         "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}})
    os._exit(128 + sig if sig else os.WEXITSTATUS(status))


def _build_view(run: Run, files_fd: int, host_mnt_ns: int) -> None:
    cfg, layout = run.cfg, run.layout
    run.layers["scratch_quota"] = False
    if run.got & lx.CLONE_NEWNS:
        if os.stat("/proc/self/ns/mnt").st_ino == host_mnt_ns:
            raise RuntimeError("refusing to mount: still in the host mount namespace")
        uid, gid = run.ids
        view.build_root(run.workdir, layout, scratch_bytes=cfg["scratch_bytes"], max_files=cfg["max_files"],
                        files_fd=files_fd, uid=uid, gid=gid, proc=bool(run.got & lx.CLONE_NEWPID),
                        errors=run.errors)
        failed = view.enter_root(run.workdir, layout)
        if failed:
            run.errors["mount_namespace"] = f"could not remount read-only: {failed[:5]}"
        run.layers["mount_namespace"] = not failed
        run.layers["scratch_quota"] = "scratch_quota" not in run.errors
        run.layers["hidden_paths"] = True
        run.workdir, run.mount_view = layout.workdir, True
    else:
        run.errors["scratch_quota"] = "needs the mount namespace"
        if cfg["hidden_paths"]:  # Landlock's read rules leave them out (see view.read_rules)
            run.layers["hidden_paths"] = bool(cfg["landlock"])
            if not run.layers["hidden_paths"]:
                run.errors["hidden_paths"] = "needs the mount namespace or Landlock"
    os.close(files_fd)
    for _, _, fd, _ in layout.binds:
        os.close(fd)


# ----------------------------------------------------------------------------- runner


def _runner(run: Run, code: str, supervisor: int) -> None:
    serving = bool(run.cfg.get("serve"))
    try:
        _die_with_parent(supervisor)
        _confine(run, with_seccomp=not serving)
        if serving:
            _check_serving(run)
    except (OSError, RuntimeError) as e:
        _setup_failed(run, e)
    run.report({"layers": run.layers, "errors": run.errors})
    os.close(run.cfg["report_fd"])
    sys.argv = [""]  # as for code read from stdin (the config stays private)
    os.environ["HOME"] = run.workdir
    os.environ["TMPDIR"] = "/tmp" if run.mount_view else run.workdir
    cfg = run.cfg
    if cfg.get("require_network_isolation") and not (run.layers.get("net_namespace") or run.layers.get("seccomp")):
        print("sandbox: network isolation is required but unavailable; code not run", file=sys.stderr)
        os._exit(3)
    if serving:
        os._exit(serve_mode.serve(code, _request_confinement(run), cfg["max_reply_bytes"]))
    if cfg["audit_hook"]:
        kernel_ok = run.layers.get("seccomp") and run.layers.get("landlock")
        writable = [run.workdir, "/tmp"] if run.mount_view else [run.workdir]
        readable = None if run.mount_view else [*run.layout.visible, run.workdir, *(f"/dev/{d}" for d in view.DEVICES)]
        code_runner.install_audit_hook(writable, readable, cfg["hidden_paths"], block_ctypes=not kernel_ok)
    try:
        rc = code_runner.run_user_code(code, cfg["echo_last_expression"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc & 0xFF if isinstance(rc, int) else 1)


def _confine(run: Run, with_seccomp: bool = True) -> None:
    """Unprivileged uid, no capabilities, no_new_privs, Landlock, rlimits, seccomp (in this order)."""
    cfg, layers, errors = run.cfg, run.layers, run.errors
    if LINUX and (run.root or run.userns):
        lx.drop_bounding_set(run.last_cap)
    if run.root and not run.userns and run.host_uid != 0:
        os.setgroups([])
        os.setresgid(run.host_gid, run.host_gid, run.host_gid)
        os.setresuid(run.host_uid, run.host_uid, run.host_uid)
    layers["uid"] = run.host_uid
    limits = dict(cfg["rlimits"])
    if LINUX:
        lx.clear_capabilities()
        layers["capabilities_dropped"] = lx.effective_capabilities() == 0
        limits["NPROC"] = cfg["max_processes"] + _other_tasks(run)
        lx.prctl(lx.PR_SET_NO_NEW_PRIVS, 1)
    if run.host_uid == 0 and not layers.get("cgroup"):  # the cgroup's pids.max caps the tasks, if any
        errors["max_processes"] = "not enforced: RLIMIT_NPROC does not apply to root, and there is no cgroup"
    if cfg["landlock"]:
        try:
            rules = view.landlock_rules(run.layout.visible, run.workdir, run.mount_view, cfg["hidden_paths"],
                                        cfg.get("readable_paths", []))
            layers["landlock"] = lx.landlock_confine(rules)
        except OSError as e:
            layers["landlock"] = 0
            errors["landlock"] = str(e)
            if cfg["hidden_paths"] and not run.mount_view:
                layers["hidden_paths"] = False
                errors["hidden_paths"] = "needs the mount namespace or Landlock"
    _set_rlimits(limits)
    if cfg["seccomp"] and with_seccomp:
        try:
            seccomp.install()
            layers["seccomp"] = True
        except OSError as e:
            layers["seccomp"] = False
            errors["seccomp"] = str(e)


def _check_serving(run: Run) -> None:
    """Serve mode: make the runner's memory unreachable to its forks (``/proc/<pid>/mem`` of a
    non-dumpable process needs CAP_SYS_PTRACE), and find out, in a throw-away fork, whether the
    seccomp filter can be installed (each request's fork installs it)."""
    if not LINUX:
        return
    lx.prctl(lx.PR_SET_DUMPABLE, 0)
    if not run.cfg["seccomp"]:
        return
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    run.layers["seccomp"] = ok
    if not ok:
        try:
            seccomp.program(platform.machine(), os.getpid())
            run.errors["seccomp"] = "prctl(PR_SET_SECCOMP) failed"
        except OSError as e:
            run.errors["seccomp"] = str(e)


def _request_confinement(run: Run):
    """What each request's fork does before it reads its request (see ``tools/_sandbox_serve.py``):
    a Landlock layer that allows no writing at all, the seccomp filter, then the audit hook,
    whose refusals go to ``refused``."""
    cfg, layers = run.cfg, run.layers
    rules = [rule for rule in view.landlock_rules(run.layout.visible, run.workdir, run.mount_view,
                                                  cfg["hidden_paths"], cfg.get("readable_paths", []))
             if rule[1] != lx.WRITE]
    readable = None if run.mount_view else [*run.layout.visible, *(f"/dev/{d}" for d in view.DEVICES)]
    kernel_ok = layers.get("seccomp") and layers.get("landlock")

    def confine(refused: list[str]) -> None:
        if layers.get("landlock"):
            lx.landlock_confine(rules)
        if layers.get("seccomp"):
            seccomp.install()
        if cfg["audit_hook"]:
            code_runner.install_audit_hook([], readable, cfg["hidden_paths"], block_ctypes=not kernel_ok,
                                           on_refusal=refused.append)

    return confine


def _other_tasks(run: Run) -> int:
    """Tasks that RLIMIT_NPROC counts with the code's own but are not the code's.

    In a user namespace it counts the tasks of the uid in that namespace: the supervisor (and,
    for an unprivileged user, the outer process, which entered the namespace itself). As root
    without one the code's uid is fresh. Otherwise every process of the user counts, so the
    limit is set above what runs now (read from /proc: call it before Landlock)."""
    if run.userns:
        return 1 if run.root else 2
    return 0 if run.root else _tasks_of(run.host_uid) - 1


def _tasks_of(uid: int) -> int:
    """Threads of every process of ``uid`` (RLIMIT_NPROC counts them all, outside a user namespace)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def _set_rlimits(limits: dict) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes raise OSError(EFBIG) instead
    for name, value in limits.items():  # soft == hard: RLIMIT_CPU then ends in SIGKILL
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


if __name__ == "__main__":
    main()
