"""Linux kernel isolation primitives for the Python sandbox, through ``ctypes`` (stdlib only).

Imported only inside the sandbox's child process (see ``tools/_sandbox_child.py``), before any
untrusted code runs. Every function either succeeds or raises :class:`OSError`/:class:`RuntimeError`
with the reason, so the caller can record which layer it got.

Covered here:

* ``unshare`` of user / network / mount / pid / ipc / uts namespaces and the uid/gid maps;
* ``mount`` (with filesystem options), ``umount2``, ``pivot_root``, and remounting read-only while
  keeping the flags a user namespace may not clear;
* Landlock (reads limited to chosen paths, writes and creation to others, no ``exec``, TCP
  bind/connect denied, signals and abstract unix sockets scoped to the sandbox);
* dropping every capability (bounding, ambient, effective, permitted, inheritable).

The seccomp filter lives in ``tools/_sandbox_seccomp.py``, the filesystem view built from these
primitives in ``tools/_sandbox_view.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

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
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


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


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """``mount(2)``; raises OSError on failure."""
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    ret = _LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ret, f"mount({target!r})")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    """``umount2(2)``; raises OSError on failure."""
    _check(_LIBC.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no libc wrapper); raises OSError on failure."""
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.EOPNOTSUPP, f"pivot_root: unknown architecture {platform.machine()!r}")
    _check(_LIBC.syscall(ctypes.c_long(nr), os.fsencode(new_root), os.fsencode(put_old)), "pivot_root")


def write_id_maps(pid: int | str, uid_map: str, gid_map: str, deny_setgroups: bool) -> None:
    """Write ``/proc/<pid>/{uid,gid}_map`` of a process that has just entered a new user namespace.

    ``deny_setgroups`` must be true when the writer lacks CAP_SETGID in the parent namespace
    (an unprivileged user mapping its own ids)."""
    if deny_setgroups:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)


# ----------------------------------------------------------------------------- mounts

_ST_FLAGS = {getattr(os, f"ST_{name.upper()}", 0): flag for name, flag in (  # (Linux only, as all of this)
    ("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC), ("noatime", MS_NOATIME),
    ("nodiratime", MS_NODIRATIME), ("relatime", MS_RELATIME))}
_OPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


def locked_flags(path: str) -> int:
    """The per-mount flags of the mount holding ``path`` that a remount must keep."""
    st = os.statvfs(path).f_flag
    return sum(ms for st_flag, ms in _ST_FLAGS.items() if st & st_flag)


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
                flags |= _OPT_FLAGS.get(opt, 0)
            points.append((_unescape(fields[4]), flags))
    return points


def remount_read_only(point: str, flags: int, devices: bool = False) -> None:
    """Make one mount read-only (per mount, not the filesystem), keeping its locked ``flags``;
    ``nodev`` too unless it is the bind mount of a device node that must stay usable (a device
    on a read-only mount can still be written: only its inode is read-only)."""
    mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (0 if devices else MS_NODEV) | flags)


# ----------------------------------------------------------------------------- landlock

_SYS_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_AND_MAKE = sum(1 << b for b in range(4, 13))  # remove_dir/file, make_char/dir/reg/sock/fifo/block/sym
_FS_MAKE_DEVICES = (1 << 6) | (1 << 11)  # make_char, make_block
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

READ, WRITE, DEVICE, LIST = "read", "write", "device", "list"
"""Rule kinds for :func:`landlock_confine`: read a tree; read, write, create and delete in a
tree; read and write one device file; list the directories of a tree (names only, no file
contents: a rule for a directory that holds hidden paths, whose other entries get rules of their
own)."""


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    ret = _LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def landlock_rights(abi: int) -> dict[str, int]:
    """The filesystem rights handled by ``abi`` and those each rule kind grants."""
    handled = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_REMOVE_AND_MAKE
    handled |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    read = _FS_READ_FILE | _FS_READ_DIR
    write = handled & ~(_FS_EXECUTE | _FS_MAKE_DEVICES | _FS_IOCTL_DEV)
    device = (_FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE) & handled
    return {"handled": handled, READ: read, WRITE: write, DEVICE: device, LIST: _FS_READ_DIR}


def landlock_confine(rules: list[tuple[str, str]]) -> int:
    """Confine this process (and its future children) with Landlock; returns the ABI used.

    ``rules`` are (path, kind) with kind :data:`READ`, :data:`WRITE`, :data:`DEVICE` or :data:`LIST`; paths
    that do not exist are skipped. Everything not granted is denied: reading, writing, creating,
    deleting and executing. Network (ABI >= 4): TCP bind and connect denied. Scopes (ABI >= 6):
    no signals to and no abstract unix sockets of processes outside the sandbox. Requires
    ``no_new_privs``.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not supported by this kernel")
    rights = landlock_rights(abi)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("QQQ", rights["handled"], net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(_LIBC.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, kind in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                allowed = rights[kind]
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= _FILE_RIGHTS
                rule = _PathBeneath(allowed, fd)
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


def last_capability() -> int:
    """The highest capability number the kernel knows (read while /proc is still there)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_bounding_set(last: int) -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP, so call it before changing uid)."""
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)


def clear_capabilities() -> None:
    """Clear the ambient, effective, permitted and inheritable sets (always allowed)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_LIBC.capset(ctypes.byref(header), data), "capset")


def effective_capabilities() -> int:
    """The effective capability set of this process, as a bit mask."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_LIBC.capget(ctypes.byref(header), data), "capget")
    return data[0].effective | (data[1].effective << 32)
