"""Shared pieces of the sandbox attack tests (``test_sandbox_*.py`` beside this file).

What the kernel grants is probed here independently of the sandbox (``Kernel``), so a test can
demand the strongest guarantee this machine allows instead of trusting the layers the sandbox
says it obtained. The tests run as root and as an unprivileged user (for example
``setpriv --reuid=65534 --regid=65534 --clear-groups``); each expectation names the layer that
must stop the attack for the identity the suite runs as.
"""

from __future__ import annotations

import os
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools import _sandbox_linux as lx
from tools.python_exec import PythonSandbox

MODES = ("default", "no_user_namespace")
"""``default``: every layer; ``no_user_namespace``: as root, the uid is dropped with setuid; as a
user, no namespace at all (what a container that forbids user namespaces gives)."""
RESOURCE_MODES = (*MODES, "no_cgroup")
"""For the resource limits: also without the run's cgroup (what a machine without a writable
cgroup gives; an unprivileged user never has one here)."""


def _userns_allowed() -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            lx.unshare(lx.CLONE_NEWUSER)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@dataclass(frozen=True)
class Kernel:
    """What this machine allows the identity running the tests."""

    root: bool
    userns: bool
    landlock: int
    seccomp: bool

    @classmethod
    def probe(cls) -> Kernel:
        return cls(root=os.geteuid() == 0, userns=_userns_allowed(), landlock=lx.landlock_abi(),
                   seccomp=platform.machine() in ("x86_64", "aarch64"))

    def namespaces(self, mode: str) -> bool:
        """Whether a sandbox in ``mode`` must get its namespaces (and so the new root)."""
        return self.root or (self.userns and mode != "no_user_namespace")


def sandbox(mode: str, **kw) -> PythonSandbox:
    switched_off = {"no_user_namespace": {"user_namespace": False}, "no_cgroup": {"cgroup": False}}
    return PythonSandbox(**switched_off.get(mode, {}), **kw)


def check_layers(kernel: Kernel, mode: str, layers: dict) -> None:
    """The sandbox obtained every layer this kernel grants in ``mode``."""
    ns = kernel.namespaces(mode)
    for name in ("net_namespace", "mount_namespace", "pid_namespace", "scratch_quota"):
        assert bool(layers.get(name)) is ns, (name, layers)
    assert bool(layers.get("landlock")) is bool(kernel.landlock), layers
    assert bool(layers.get("seccomp")) is kernel.seccomp, layers
    assert layers.get("capabilities_dropped") is True, layers
    if kernel.root:
        assert layers.get("uid", 0) >= 1_000_000_000, layers  # an unused, unprivileged host uid


def new_tag() -> str:
    """A short unique name (15 characters fit in a task's comm)."""
    return "atk" + uuid.uuid4().hex[:10]


NAME_ME = """
import ctypes as _ct
_ct.CDLL(None).prctl(15, {tag!r}.encode(), 0, 0, 0)  # PR_SET_NAME, how the test finds what is left
"""


def tasks_named(tag: str) -> list[str]:
    """Host tasks (``pid/tid state``) whose name is ``tag``: what a program left running."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == tag:
                    state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    found.append(f"{pid}/{tid} {state}")
        except OSError:
            continue
    return found


def live_tasks_named(tag: str) -> list[str]:
    """:func:`tasks_named` without zombies (a dead task waiting for its parent to reap it)."""
    return [t for t in tasks_named(tag) if not t.endswith(" Z")]


NO_USER_NAMESPACES = lx.CLONE_NEWUSER
NO_NAMESPACES = lx.CLONE_NEWUSER | lx.CLONE_NEWNS | lx.CLONE_NEWPID | lx.CLONE_NEWNET | lx.CLONE_NEWIPC | lx.CLONE_NEWUTS


def forbid_namespaces(flags: int) -> None:
    """Make this process (and what it starts) unable to create the namespaces in ``flags``, as a
    container runtime's seccomp profile does (user namespaces; all of them without
    CAP_SYS_ADMIN): ``unshare``/``clone`` with one of them fail with EPERM (``clone3`` answers
    ENOSYS so libc falls back to ``clone``). Irreversible."""
    import ctypes

    from tools import _sandbox_seccomp as sc

    nr = sc.NR[platform.machine()]
    ld, jeq, jset, ret, arg0 = 0x20, 0x15, 0x45, 0x06, 16
    prog = [(ld, 0, 0, 0), (jeq, 0, 2, nr["unshare"]), (ld, 0, 0, arg0), (jset, 5, 6, flags),
            (jeq, 0, 2, nr["clone"]), (ld, 0, 0, arg0), (jset, 2, 3, flags),
            (jeq, 0, 2, nr["clone3"]), (ret, 0, 0, sc.RET_ERRNO | 38), (ret, 0, 0, sc.RET_ERRNO | 1),
            (ret, 0, 0, sc.RET_ALLOW)]
    filt = (sc._SockFilter * len(prog))(*[sc._SockFilter(*ins) for ins in prog])
    fprog = sc._SockFprog(len(prog), ctypes.cast(filt, ctypes.POINTER(sc._SockFilter)))
    lx.prctl(lx.PR_SET_NO_NEW_PRIVS, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(ctypes.c_int(22), ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
