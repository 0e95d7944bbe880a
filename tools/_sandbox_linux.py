"""Linux kernel isolation primitives for the Python sandbox, through ``ctypes`` (stdlib only).

Imported only inside the sandbox's child process (see ``tools/_sandbox_child.py``), before any
untrusted code runs. Every function either succeeds or raises :class:`OSError`/:class:`RuntimeError`
with the reason, so the caller can record which layer it got.

Covered here:

* ``unshare`` of network / mount / pid / ipc / uts namespaces (a user namespace first when not root);
* a read-only view of every mount except one writable directory (mount namespace only; the
  namespace is verified to be private before anything is remounted);
* Landlock (filesystem writes and execution confined to one directory, TCP bind/connect denied,
  signals and abstract unix sockets scoped to the sandbox);
* dropping every capability (bounding, ambient, effective, permitted, inheritable);
* a seccomp filter denying process creation, exec, ``socket()``, namespace and mount syscalls,
  signals to other processes and access to other processes' memory;
* empty read-only tmpfs mounts hiding chosen directories.

Not covered: cgroups (memory/pids accounting across processes), and architectures other than
x86_64 and aarch64 for seccomp (the seccomp layer then reports itself unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``; raises OSError on failure."""
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(_LIBC.prctl(ctypes.c_int(option), *args), f"prctl({option})")


def unshare(flags: int) -> None:
    """``unshare(2)``; raises OSError on failure."""
    _check(_LIBC.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    """``mount(2)`` without filesystem data; raises OSError on failure."""
    enc = (lambda s: None if s is None else s.encode())
    ret = _LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None)
    _check(ret, f"mount({target!r})")


def enter_user_namespace(uid: int, gid: int) -> None:
    """Map the current (unprivileged) uid/gid to root of the new user namespace just entered."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


# ----------------------------------------------------------------------------- mounts

_ATIME_FLAGS = {"noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
                "strictatime": MS_STRICTATIME}
_LOCKED_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, **_ATIME_FLAGS}


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 4 <= len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags to preserve) for every mount visible to this process."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            flags = 0
            for opt in fields[5].split(","):
                flags |= _LOCKED_FLAGS.get(opt, 0)
            points.append((_unescape(fields[4]), flags))
    return points


def read_only_except(writable: str, host_mnt_ns: int) -> list[str]:
    """Make every mount read-only except ``writable`` (bind-mounted onto itself, kept writable).

    Must run in a fresh mount namespace: the caller passes the inode of the mount namespace it
    started in, and nothing is remounted unless the current namespace is a different one and
    mount propagation to the host has been switched off. Returns the mount points that could
    not be remounted (e.g. ones hidden under another mount).
    """
    if os.stat("/proc/self/ns/mnt").st_ino == host_mnt_ns:
        raise RuntimeError("refusing to remount: still in the host mount namespace")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(writable, writable, None, MS_BIND | MS_REC)
    os.chdir(writable)  # the old cwd still points into the mount underneath the new bind
    failed = []
    for point, flags in mount_points():
        if point == writable:
            continue
        try:
            mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    return failed


def hide(paths: list[str], host_mnt_ns: int) -> None:
    """Mount an empty read-only tmpfs over each directory in ``paths`` (fresh mount namespace only)."""
    if os.stat("/proc/self/ns/mnt").st_ino == host_mnt_ns:
        raise RuntimeError("refusing to mount: still in the host mount namespace")
    for path in paths:
        mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


# ----------------------------------------------------------------------------- landlock

_SYS_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446

_LL_FS_EXECUTE = 1 << 0
_LL_FS_WRITE_FILE = 1 << 1
_LL_FS_WRITE_MASK_V1 = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write + remove + make_*
_LL_FS_REFER = 1 << 13  # ABI 2
_LL_FS_TRUNCATE = 1 << 14  # ABI 3
_LL_NET_BIND_TCP = 1 << 0  # ABI 4
_LL_NET_CONNECT_TCP = 1 << 1
_LL_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
_LL_SCOPE_SIGNAL = 1 << 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    ret = _LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def landlock_confine(writable: str, also_writable_files: tuple[str, ...] = ("/dev/null",)) -> int:
    """Confine this process (and its future children) with Landlock; returns the ABI used.

    Filesystem: writing, creating, removing, renaming and executing are denied everywhere except
    writes under ``writable`` (and writing to ``also_writable_files``); reading stays allowed.
    Network (ABI >= 4): TCP bind and connect denied. Scopes (ABI >= 6): no signals to and no
    abstract unix sockets of processes outside the sandbox. Requires ``no_new_privs``.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not supported by this kernel")
    fs = _LL_FS_EXECUTE | _LL_FS_WRITE_MASK_V1
    if abi >= 2:
        fs |= _LL_FS_REFER
    if abi >= 3:
        fs |= _LL_FS_TRUNCATE
    net = (_LL_NET_BIND_TCP | _LL_NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_LL_SCOPE_ABSTRACT_UNIX | _LL_SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(_LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        file_rights = _LL_FS_WRITE_FILE | (_LL_FS_TRUNCATE if abi >= 3 else 0)
        rules = [(writable, fs & ~_LL_FS_EXECUTE)] + [(p, file_rights) for p in also_writable_files]
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(rights, fd)
                _check(_LIBC.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1),
                                     ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path!r})")
            finally:
                os.close(fd)
        _check(_LIBC.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


# ----------------------------------------------------------------------------- capabilities


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Drop every capability from all sets, so no later ``execve`` or call can regain one."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_LIBC.capset(ctypes.byref(header), data), "capset")


# ----------------------------------------------------------------------------- seccomp

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# syscalls denied with EPERM (clone is checked separately, clone3 answers ENOSYS so libc
# falls back to clone, whose flags a classic BPF filter can inspect). socketpair stays allowed:
# an anonymous connected pair reaches nothing outside (asyncio's event loop needs one), while
# socket() of any family could reach a named unix socket even in an empty network namespace.
_DENIED = {
    "x86_64": {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "socket": 41,
               "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
               "chroot": 161, "ptrace": 101, "process_vm_writev": 311, "bpf": 321, "keyctl": 250,
               "add_key": 248, "request_key": 249, "perf_event_open": 298, "userfaultfd": 323,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
               "fspick": 433, "mount_setattr": 442, "tkill": 200, "process_vm_readv": 310,
               "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "process_madvise": 440},
    "aarch64": {"execve": 221, "execveat": 281, "socket": 198, "unshare": 97,
                "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "ptrace": 117,
                "process_vm_writev": 271, "bpf": 280, "keyctl": 219, "add_key": 217, "request_key": 218,
                "perf_event_open": 241, "userfaultfd": 282, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
                "tkill": 130, "process_vm_readv": 270, "pidfd_open": 434, "pidfd_send_signal": 424,
                "pidfd_getfd": 438, "process_madvise": 440},
}
# signal syscalls whose first argument is a pid/tgid: allowed only towards the sandboxed process
# itself (kill also towards 0, its own process group); kill(-1) would reach every process of the uid
_SIGNALS = {"x86_64": {"kill": 62, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
            "aarch64": {"kill": 129, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240}}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_X32_BIT = 0x40000000

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(arch: str, own_pid: int) -> list[tuple[int, int, int, int]]:
    """The classic-BPF seccomp program as (code, jt, jf, k) tuples for ``arch``.

    Layout: check arch -> load nr -> (x86_64) deny x32 -> clone: allow only threads ->
    clone3: ENOSYS -> signals: only to ``own_pid`` -> denied list: EPERM -> allow.
    """
    if arch not in _AUDIT_ARCH:
        raise OSError(errno.EOPNOTSUPP, f"seccomp filter not defined for architecture {arch!r}")
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    denied = sorted(_DENIED[arch].values())
    prog: list[tuple[int, int, int, int]] = [
        (_LD_ABS_W, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, _AUDIT_ARCH[arch]),
        (_RET, 0, 0, eperm),
        (_LD_ABS_W, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == "x86_64":
        prog += [(_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, eperm)]
    prog += [
        (_JEQ, 0, 4, _CLONE[arch]),
        (_LD_ABS_W, 0, 0, 16),  # low 32 bits of args[0] (clone flags), little endian
        (_JSET, 0, 1, CLONE_THREAD),
        (_RET, 0, 0, _RET_ALLOW),
        (_RET, 0, 0, eperm),
        (_JEQ, 0, 1, _CLONE3),
        (_RET, 0, 0, enosys),
    ]
    for name, nr in _SIGNALS[arch].items():
        prog += [
            (_JEQ, 0, 5, nr),
            (_LD_ABS_W, 0, 0, 16),  # low 32 bits of args[0]: the pid_t the kernel uses
            (_JEQ, 1, 0, own_pid),
            (_JEQ, 0, 1, 0 if name == "kill" else own_pid),
            (_RET, 0, 0, _RET_ALLOW),
            (_RET, 0, 0, eperm),
        ]
    n = len(denied)
    for i, nr in enumerate(denied):  # on match jump to the EPERM return after the list
        prog.append((_JEQ, n - i, 0, nr))
    prog += [(_RET, 0, 0, _RET_ALLOW), (_RET, 0, 0, eperm)]
    return prog


def install_seccomp() -> str:
    """Install the seccomp filter for this machine's architecture; returns the architecture.

    Requires ``no_new_privs`` (or CAP_SYS_ADMIN). Irreversible, inherited by threads.
    """
    arch = platform.machine()
    prog = seccomp_program(arch, os.getpid())
    filt = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(filt, ctypes.POINTER(_SockFilter)))
    _check(_LIBC.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(fprog),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_SECCOMP)")
    return arch
