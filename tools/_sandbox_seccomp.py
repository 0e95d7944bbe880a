"""The sandbox's seccomp filter: an allowlist of the system calls a Python program needs.

Imported only inside the sandbox's child process (see ``tools/_sandbox_child.py``). A system call
not on :data:`ALLOWED` fails: with ``EPERM`` when it is on :data:`DENIED` (the calls an attack
reaches for: process creation, ``exec``, sockets, namespaces, mounts, ``ptrace``, ``io_uring``,
``bpf``, ``keyctl``, ``memfd_create``, SysV shared memory, ``setsid``/``setpgid``, uid changes...),
with ``ENOSYS`` otherwise (as from an older kernel, so libc falls back where it can). A few calls
are allowed only with some arguments:

* ``clone``: threads only (``CLONE_THREAD`` set, no namespace flag); ``clone3`` answers ``ENOSYS``
  so libc falls back to ``clone``, whose flags a classic-BPF filter can read;
* ``prctl``: only the harmless options of :data:`PRCTL_ALLOWED` (names, ``PR_GET_*``); in
  particular ``PR_SET_PDEATHSIG`` and ``PR_SET_CHILD_SUBREAPER`` are refused;
* ``prlimit64``: only on the calling process (pid 0);
* ``socketpair``: ``AF_UNIX`` only (an anonymous connected pair; asyncio's event loop needs one);
* ``kill``/``tgkill``/``rt_(tg)sigqueueinfo``: only towards the sandboxed process itself
  (``kill`` also towards 0, its process group).

Other architectures' calling conventions and the x32 ABI are refused. Numbers are those of the
kernel's ``unistd`` tables for x86_64 and aarch64; other architectures get no filter (the layer
then reports itself unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

ALLOWED = (
    "read", "write", "futex", "mmap", "munmap", "mprotect", "madvise", "brk", "openat", "close", "fstat",
    "newfstatat", "statx", "lseek", "pread64", "pwrite64", "readv", "writev", "ioctl", "fcntl",
    "getdents64", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "getpid", "gettid", "clock_gettime",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll", "select", "pselect6",
    "readlink", "readlinkat", "getcwd", "stat", "lstat", "access", "faccessat", "faccessat2", "mremap",
    "dup", "dup2", "dup3", "pipe", "pipe2", "sched_yield", "nanosleep", "clock_nanosleep", "preadv",
    "pwritev", "preadv2", "pwritev2", "close_range", "open", "openat2", "creat", "getdents", "mkdir",
    "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat",
    "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
    "fchownat", "truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "utime", "utimes", "futimesat",
    "utimensat", "chdir", "fchdir", "umask", "statfs", "fstatfs", "flock", "sendfile", "copy_file_range",
    "splice", "tee", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "fadvise64", "readahead", "mknod", "mknodat", "mincore", "msync", "exit", "exit_group", "wait4",
    "waitid", "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "futex_waitv",
    "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "getpriority", "clock_getres", "gettimeofday", "time", "times", "getrusage",
    "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getpgrp",
    "getpgid", "getsid", "uname", "sysinfo", "getrlimit", "setrlimit", "arch_prctl", "getrandom", "getcpu",
    "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend", "sigaltstack", "pause", "alarm", "setitimer",
    "getitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4", "eventfd", "eventfd2",
    "epoll_create", "epoll_create1", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername", "restart_syscall",
    "map_shadow_stack",
)
"""Allowed whatever the arguments, most frequent first (the filter is a linear scan)."""
DENIED = (
    "fork", "vfork", "execve", "execveat", "socket", "connect", "bind", "listen", "accept", "accept4",
    "setsid", "setpgid", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capset", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace",
    "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "process_madvise", "io_uring_setup", "io_uring_enter", "io_uring_register", "io_setup", "io_submit",
    "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "memfd_create",
    "memfd_secret", "shmget", "shmat", "shmctl", "msgget", "semget", "mq_open", "seccomp", "personality",
    "kcmp", "name_to_handle_at", "open_by_handle_at", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr", "inotify_init", "inotify_init1", "fanotify_init", "tkill",
)
"""Refused with ``EPERM`` (a readable ``PermissionError``); everything else unlisted gets ``ENOSYS``."""

PRCTL_ALLOWED = {2: "PR_GET_PDEATHSIG", 3: "PR_GET_DUMPABLE", 15: "PR_SET_NAME", 16: "PR_GET_NAME",
                 21: "PR_GET_SECCOMP", 23: "PR_CAPBSET_READ", 39: "PR_GET_NO_NEW_PRIVS",
                 0x53564D41: "PR_SET_VMA"}
"""``prctl`` options the program may use (glibc names threads and anonymous mappings with them)."""

NR = {
    "x86_64": {
        "read": 0, "write": 1, "futex": 202, "mmap": 9, "munmap": 11, "mprotect": 10, "madvise": 28, "brk": 12,
        "openat": 257, "close": 3, "fstat": 5, "newfstatat": 262, "statx": 332, "lseek": 8, "pread64": 17,
        "pwrite64": 18, "readv": 19, "writev": 20, "ioctl": 16, "fcntl": 72, "getdents64": 217,
        "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "getpid": 39, "gettid": 186,
        "clock_gettime": 228, "epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441, "epoll_ctl": 233,
        "poll": 7, "ppoll": 271, "select": 23, "pselect6": 270, "readlink": 89, "readlinkat": 267, "getcwd": 79,
        "stat": 4, "lstat": 6, "access": 21, "faccessat": 269, "faccessat2": 439, "mremap": 25, "dup": 32,
        "dup2": 33, "dup3": 292, "pipe": 22, "pipe2": 293, "sched_yield": 24, "nanosleep": 35,
        "clock_nanosleep": 230, "preadv": 295, "pwritev": 296, "preadv2": 327, "pwritev2": 328,
        "close_range": 436, "open": 2, "openat2": 437, "creat": 85, "getdents": 78, "mkdir": 83, "mkdirat": 258,
        "rmdir": 84, "unlink": 87, "unlinkat": 263, "rename": 82, "renameat": 264, "renameat2": 316, "link": 86,
        "linkat": 265, "symlink": 88, "symlinkat": 266, "chmod": 90, "fchmod": 91, "fchmodat": 268,
        "fchmodat2": 452, "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260, "truncate": 76,
        "ftruncate": 77, "fallocate": 285, "fsync": 74, "fdatasync": 75, "utime": 132, "utimes": 235,
        "futimesat": 261, "utimensat": 280, "chdir": 80, "fchdir": 81, "umask": 95, "statfs": 137,
        "fstatfs": 138, "flock": 73, "sendfile": 40, "copy_file_range": 326, "splice": 275, "tee": 276,
        "getxattr": 191, "lgetxattr": 192, "fgetxattr": 193, "listxattr": 194, "llistxattr": 195,
        "flistxattr": 196, "fadvise64": 221, "readahead": 187, "mknod": 133, "mknodat": 259, "mincore": 27,
        "msync": 26, "exit": 60, "exit_group": 231, "wait4": 61, "waitid": 247, "set_tid_address": 218,
        "set_robust_list": 273, "get_robust_list": 274, "rseq": 334, "futex_waitv": 449,
        "sched_getaffinity": 204, "sched_getparam": 143, "sched_getscheduler": 145,
        "sched_get_priority_max": 146, "sched_get_priority_min": 147, "getpriority": 140, "clock_getres": 229,
        "gettimeofday": 96, "time": 201, "times": 100, "getrusage": 98, "getppid": 110, "getuid": 102,
        "geteuid": 107, "getgid": 104, "getegid": 108, "getgroups": 115, "getresuid": 118, "getresgid": 120,
        "getpgrp": 111, "getpgid": 121, "getsid": 124, "uname": 63, "sysinfo": 99, "getrlimit": 97,
        "setrlimit": 160, "arch_prctl": 158, "getrandom": 318, "getcpu": 309, "rt_sigpending": 127,
        "rt_sigtimedwait": 128, "rt_sigsuspend": 130, "sigaltstack": 131, "pause": 34, "alarm": 37,
        "setitimer": 38, "getitimer": 36, "timer_create": 222, "timer_settime": 223, "timer_gettime": 224,
        "timer_getoverrun": 225, "timer_delete": 226, "timerfd_create": 283, "timerfd_settime": 286,
        "timerfd_gettime": 287, "signalfd": 282, "signalfd4": 289, "eventfd": 284, "eventfd2": 290,
        "epoll_create": 213, "epoll_create1": 291, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47,
        "sendmmsg": 307, "recvmmsg": 299, "shutdown": 48, "getsockopt": 55, "setsockopt": 54,
        "getsockname": 51, "getpeername": 52, "restart_syscall": 219, "map_shadow_stack": 453, "clone": 56,
        "prctl": 157, "prlimit64": 302, "socketpair": 53, "kill": 62, "tgkill": 234, "tkill": 200,
        "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "fork": 57, "vfork": 58, "execve": 59,
        "execveat": 322, "socket": 41, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288,
        "setsid": 112, "setpgid": 109, "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114,
        "setresuid": 117, "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "setgroups": 116, "capset": 126,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "process_madvise": 440,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "io_setup": 206,
        "io_submit": 209, "bpf": 321, "keyctl": 250, "add_key": 248, "request_key": 249,
        "perf_event_open": 298, "userfaultfd": 323, "memfd_create": 319, "memfd_secret": 447, "shmget": 29,
        "shmat": 30, "shmctl": 31, "msgget": 68, "semget": 64, "mq_open": 240, "seccomp": 317,
        "personality": 135, "kcmp": 312, "name_to_handle_at": 303, "open_by_handle_at": 304, "setxattr": 188,
        "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199,
        "inotify_init": 253, "inotify_init1": 294, "fanotify_init": 300, "clone3": 435,
    },
    "aarch64": {
        "read": 63, "write": 64, "futex": 98, "mmap": 222, "munmap": 215, "mprotect": 226, "madvise": 233,
        "brk": 214, "openat": 56, "close": 57, "fstat": 80, "newfstatat": 79, "statx": 291, "lseek": 62,
        "pread64": 67, "pwrite64": 68, "readv": 65, "writev": 66, "ioctl": 29, "fcntl": 25, "getdents64": 61,
        "rt_sigaction": 134, "rt_sigprocmask": 135, "rt_sigreturn": 139, "getpid": 172, "gettid": 178,
        "clock_gettime": 113, "epoll_pwait": 22, "epoll_pwait2": 441, "epoll_ctl": 21, "ppoll": 73,
        "pselect6": 72, "readlinkat": 78, "getcwd": 17, "faccessat": 48, "faccessat2": 439, "mremap": 216,
        "dup": 23, "dup3": 24, "pipe2": 59, "sched_yield": 124, "nanosleep": 101, "clock_nanosleep": 115,
        "preadv": 69, "pwritev": 70, "preadv2": 286, "pwritev2": 287, "close_range": 436, "openat2": 437,
        "mkdirat": 34, "unlinkat": 35, "renameat": 38, "renameat2": 276, "linkat": 37, "symlinkat": 36,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "fchown": 55, "fchownat": 54, "truncate": 45,
        "ftruncate": 46, "fallocate": 47, "fsync": 82, "fdatasync": 83, "utimensat": 88, "chdir": 49,
        "fchdir": 50, "umask": 166, "statfs": 43, "fstatfs": 44, "flock": 32, "sendfile": 71,
        "copy_file_range": 285, "splice": 76, "tee": 77, "getxattr": 8, "lgetxattr": 9, "fgetxattr": 10,
        "listxattr": 11, "llistxattr": 12, "flistxattr": 13, "fadvise64": 223, "readahead": 213, "mknodat": 33,
        "mincore": 232, "msync": 227, "exit": 93, "exit_group": 94, "wait4": 260, "waitid": 95,
        "set_tid_address": 96, "set_robust_list": 99, "get_robust_list": 100, "rseq": 293, "futex_waitv": 449,
        "sched_getaffinity": 123, "sched_getparam": 121, "sched_getscheduler": 120,
        "sched_get_priority_max": 125, "sched_get_priority_min": 126, "getpriority": 141, "clock_getres": 114,
        "gettimeofday": 169, "times": 153, "getrusage": 165, "getppid": 173, "getuid": 174, "geteuid": 175,
        "getgid": 176, "getegid": 177, "getgroups": 158, "getresuid": 148, "getresgid": 150, "getpgid": 155,
        "getsid": 156, "uname": 160, "sysinfo": 179, "getrlimit": 163, "setrlimit": 164, "getrandom": 278,
        "getcpu": 168, "rt_sigpending": 136, "rt_sigtimedwait": 137, "rt_sigsuspend": 133, "sigaltstack": 132,
        "setitimer": 103, "getitimer": 102, "timer_create": 107, "timer_settime": 110, "timer_gettime": 108,
        "timer_getoverrun": 109, "timer_delete": 111, "timerfd_create": 85, "timerfd_settime": 86,
        "timerfd_gettime": 87, "signalfd4": 74, "eventfd2": 19, "epoll_create1": 20, "sendto": 206,
        "recvfrom": 207, "sendmsg": 211, "recvmsg": 212, "sendmmsg": 269, "recvmmsg": 243, "shutdown": 210,
        "getsockopt": 209, "setsockopt": 208, "getsockname": 204, "getpeername": 205, "restart_syscall": 128,
        "clone": 220, "prctl": 167, "prlimit64": 261, "socketpair": 199, "kill": 129, "tgkill": 131,
        "tkill": 130, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "execve": 221, "execveat": 281,
        "socket": 198, "connect": 203, "bind": 200, "listen": 201, "accept": 202, "accept4": 242, "setsid": 157,
        "setpgid": 154, "setuid": 146, "setgid": 144, "setreuid": 145, "setregid": 143, "setresuid": 147,
        "setresgid": 149, "setfsuid": 151, "setfsgid": 152, "setgroups": 159, "capset": 91, "unshare": 97,
        "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_open": 434,
        "pidfd_send_signal": 424, "pidfd_getfd": 438, "process_madvise": 440, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "io_setup": 0, "io_submit": 2, "bpf": 280,
        "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241, "userfaultfd": 282,
        "memfd_create": 279, "memfd_secret": 447, "shmget": 194, "shmat": 196, "shmctl": 195, "msgget": 186,
        "semget": 190, "mq_open": 180, "seccomp": 277, "personality": 92, "kcmp": 272, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14,
        "lremovexattr": 15, "fremovexattr": 16, "inotify_init1": 26, "fanotify_init": 262, "clone3": 435,
    },
}
"""System call numbers by architecture (names absent from an architecture do not exist there)."""

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SIGNAL_CALLS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
"""Signal calls whose first argument is a pid/tgid: allowed only towards the sandboxed process."""

CLONE_THREAD = 0x00010000
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
AF_UNIX = 1
_X32_BIT = 0x40000000

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ARG0 = 16  # offset of the low 32 bits of args[0] in struct seccomp_data (little endian)


def program(arch: str, own_pid: int) -> list[tuple[int, int, int, int]]:
    """The classic-BPF program as (code, jt, jf, k) tuples for ``arch``.

    Layout: check arch -> load nr -> (x86_64) refuse x32 -> allowlist -> argument-checked calls
    -> deny list (EPERM) -> ENOSYS. Each test is followed by its own return, so no jump is long.
    """
    if arch not in AUDIT_ARCH:
        raise OSError(errno.EOPNOTSUPP, f"seccomp filter not defined for architecture {arch!r}")
    nr = NR[arch]
    eperm, enosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [
        (_LD_ABS_W, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, AUDIT_ARCH[arch]),
        (_RET, 0, 0, eperm),
        (_LD_ABS_W, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == "x86_64":
        prog += [(_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, eperm)]
    for name in ALLOWED:
        if name in nr:
            prog += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, RET_ALLOW)]
    prog += [  # clone: threads only, no namespaces
        (_JEQ, 0, 5, nr["clone"]),
        (_LD_ABS_W, 0, 0, _ARG0),
        (_JSET, 0, 2, CLONE_THREAD),
        (_JSET, 1, 0, CLONE_NAMESPACES),
        (_RET, 0, 0, RET_ALLOW),
        (_RET, 0, 0, eperm),
        (_JEQ, 0, 1, nr["clone3"]),
        (_RET, 0, 0, enosys),
    ]
    prog += _one_of(nr["prctl"], sorted(PRCTL_ALLOWED), eperm)
    prog += _one_of(nr["prlimit64"], [0], eperm)
    prog += _one_of(nr["socketpair"], [AF_UNIX], eperm)
    for name in SIGNAL_CALLS:
        prog += _one_of(nr[name], [own_pid, 0] if name == "kill" else [own_pid], eperm)
    for name in DENIED:
        if name in nr:
            prog += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, eperm)]
    prog.append((_RET, 0, 0, enosys))
    return prog


def _one_of(nr: int, allowed_arg0: list[int], deny: int) -> list[tuple[int, int, int, int]]:
    """``nr`` is allowed when the low 32 bits of its first argument are in ``allowed_arg0``.

    Leaves the accumulator holding the syscall number for the next test when ``nr`` does not match.
    """
    n = len(allowed_arg0)
    block = [(_JEQ, 0, n + 3, nr), (_LD_ABS_W, 0, 0, _ARG0)]
    for i, value in enumerate(allowed_arg0):  # on a match jump to the ALLOW return
        block.append((_JEQ, n - i, 0, value))
    block += [(_RET, 0, 0, deny), (_RET, 0, 0, RET_ALLOW)]
    return block


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install() -> str:
    """Install the filter for this machine's architecture on the calling thread; returns the arch.

    Requires ``no_new_privs`` (or CAP_SYS_ADMIN). Irreversible and inherited by later threads.
    """
    arch = platform.machine()
    prog = program(arch, os.getpid())
    filt = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(filt, ctypes.POINTER(_SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(ctypes.c_int(22), ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
    return arch
