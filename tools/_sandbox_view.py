"""The filesystem a sandboxed program sees: only what Python needs, read-only, plus private scratch.

Imported only inside the sandbox's child process (see ``tools/_sandbox_child.py``).

With a mount namespace, :func:`build_root` makes a new root on a size- and inode-limited tmpfs
(the scratch quota) and :func:`enter_root` switches to it with ``pivot_root``::

    /            the tmpfs, read-only once built
    /work        the working directory (HOME, cwd): writable, on the scratch tmpfs (``/sandbox``
                 when the host's ``/work`` holds a path shown, see :data:`WORKDIRS`)
    /tmp         writable, on the same tmpfs (1777)
    /dev         null, zero, random, urandom (bind mounts of the host's nodes) and fd/std* links
    /proc        a fresh procfs of the sandbox's pid namespace (absent without one)
    /etc         passwd and group with the sandbox's user, ld.so.cache, localtime
    the interpreter's standard library and extension modules (``sys.path``, ``<base_prefix>/lib``),
    the system's shared libraries (``/usr/lib*``, ``/lib*``) and ``/usr/share/zoneinfo``:
    bind mounts of the host's, read-only

Every ``site-packages`` / ``dist-packages`` directory under them is covered by an empty
read-only tmpfs unless it is on ``sys.path`` (``site_packages=True``) or shown on purpose
(``readable_paths``), and so is every ``hidden_paths`` directory that would be visible. Nothing
else of the host is there: not the repository (unless a part of it is in ``readable_paths``),
not the datasets, not home directories, not ``/etc/shadow``.

Without a mount namespace the same path lists become Landlock rules (:func:`landlock_rules`):
reads limited to the paths above plus the working directory, writes to the working directory;
a readable directory that holds a hidden path is split into rules for its other entries.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence

import _sandbox_linux as lx

WORKDIRS = ("/work", "/sandbox", "/sandbox-work")
"""The working directory in the new root: the first of these that holds none of the host paths
shown (the host's ``/work`` may hold the interpreter's virtual environment)."""
DEVICES = ("null", "zero", "random", "urandom")
_DEVICE_POINTS = {f"/dev/{d}" for d in DEVICES}
SYSTEM_PATHS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/usr/share/zoneinfo",
                "/etc/ld.so.cache", "/etc/localtime")
_SITE_DIRS = ("site-packages", "dist-packages")


def python_paths() -> list[str]:
    """What the interpreter may read after start-up: ``sys.path`` and ``<base_prefix>/lib``."""
    paths = [p for p in sys.path if p and os.path.exists(p)]
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        lib = os.path.join(prefix, "lib")
        if os.path.isdir(lib):
            paths.append(lib)
    return paths


def visible_paths(readable: Sequence[str] = ()) -> list[str]:
    """Host paths the sandbox may read (existing ones only), shortest real path first:
    what Python needs, the system's libraries and the ``readable`` paths asked for."""
    paths = [p for p in (*python_paths(), *SYSTEM_PATHS, *readable) if os.path.exists(p)]
    return sorted(set(paths), key=lambda p: (len(os.path.realpath(p)), p))


def site_dirs(visible: list[str], site_packages: bool, readable: Sequence[str] = ()) -> list[str]:
    """``site-packages`` / ``dist-packages`` directories in ``visible`` (or one level down, in a
    ``python*`` directory) that must stay hidden: all but those on ``sys.path`` (with
    ``site_packages``) and those shown on purpose (``readable``)."""
    keep = {os.path.realpath(p) for p in sys.path if p} if site_packages else set()
    keep |= {os.path.realpath(p) for p in readable}
    found = []
    for base in visible:
        if not os.path.isdir(base):
            continue
        subdirs = [base] + [os.path.join(base, n) for n in _listdir(base) if n.startswith("python")]
        for d in subdirs:
            found += [os.path.join(d, n) for n in _SITE_DIRS if os.path.isdir(os.path.join(d, n))]
    return sorted({p for p in found if os.path.realpath(p) not in keep})


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _inside(path: str, parents: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


class Plan:
    """The new root, worked out on the host side (before the process loses access to any path)."""

    def __init__(self, visible: list[str]) -> None:
        self.visible = visible
        """Host paths the code may read (the Landlock rules when there is no mount namespace)."""
        self.symlinks: list[tuple[str, str]] = []
        """(path, target) symbolic links leading to the bound paths, as on the host."""
        self.binds: list[tuple[str, bool, int, int]] = []
        """(real path, is a directory, O_PATH descriptor, per-mount flags to keep) to bind read-only."""
        self.hidden: list[str] = []
        """Directories inside the binds to cover with an empty tmpfs."""
        self.workdir = WORKDIRS[0]
        """The working directory in the new root."""


def _resolve(path: str, bound: list[str], links: list[tuple[str, str]], depth: int = 0) -> str:
    """The real path of ``path``; records the symlinks met on the way that lie outside ``bound``."""
    if depth > 20:
        raise OSError(f"too many symbolic links resolving {path!r}")
    parts = [p for p in path.split("/") if p]
    cur = "/"
    for i, part in enumerate(parts):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            if not _inside(cur, bound) and (nxt, target) not in links:
                links.append((nxt, target))
            resolved = os.path.normpath(os.path.join(cur, target))
            rest = "/".join(parts[i + 1 :])
            return _resolve(os.path.join(resolved, rest) if rest else resolved, bound, links, depth + 1)
        cur = nxt
    return cur


def plan(site_packages: bool, hidden: list[str], readable: Sequence[str] = ()) -> Plan:
    """What the sandbox will see; opens an ``O_PATH`` descriptor on each path to bind, so the
    binds work after the process has switched to a uid that may not reach them by name."""
    result = Plan(visible=visible_paths(readable))
    bound: list[str] = []
    for path in result.visible:
        real = _resolve(path, bound, result.symlinks)
        if _inside(real, bound) or not os.path.exists(real):
            continue
        fd = os.open(real, os.O_PATH | os.O_CLOEXEC)
        result.binds.append((real, os.path.isdir(real), fd, lx.locked_flags(real)))
        bound.append(real)
    cover = [*hidden, *site_dirs(result.visible, site_packages, readable)]
    real_cover = {os.path.realpath(p) for p in cover if os.path.isdir(p)}
    result.hidden = sorted(p for p in real_cover if _inside(p, bound))
    shown = bound + [path for path, _ in result.symlinks]
    result.workdir = next(w for w in WORKDIRS if not any(_inside(p, [w]) for p in shown))
    return result


def _copy_files(src_fd: int, dest: str, uid: int, gid: int) -> None:
    """Copy the files staged in the directory ``src_fd`` into ``dest``, owned by ``uid``/``gid``."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=src_fd):
        out_dir = os.path.normpath(os.path.join(dest, dirpath))
        for name in dirnames:
            os.mkdir(os.path.join(out_dir, name), 0o755)
            os.chown(os.path.join(out_dir, name), uid, gid)
        for name in filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
            with os.fdopen(fd, "rb") as src, open(os.path.join(out_dir, name), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.chown(os.path.join(out_dir, name), uid, gid)


def build_root(root: str, layout: Plan, *, scratch_bytes: int, max_files: int, files_fd: int, uid: int,
               gid: int, proc: bool, errors: dict) -> None:
    """Build the new root on a fresh tmpfs mounted at ``root`` (private mount namespace only).

    ``files_fd`` is the host directory whose files are copied into ``/work``. ``uid``/``gid`` own
    ``/work`` (ids as seen in the sandbox's user namespace; the caller
    already runs as them, so everything it creates is theirs). Problems that leave the sandbox
    usable go to ``errors``.
    """
    lx.mount(None, "/", None, lx.MS_REC | lx.MS_PRIVATE)
    lx.mount("tmpfs", root, "tmpfs", lx.MS_NOSUID | lx.MS_NODEV,
             f"size={scratch_bytes},nr_inodes={max_files + 1024},mode=755")
    for path, target in layout.symlinks:
        os.makedirs(root + os.path.dirname(path), mode=0o755, exist_ok=True)
        if not os.path.lexists(root + path):
            os.symlink(target, root + path)
    for real, is_dir, fd, _ in layout.binds:
        target = root + real
        try:
            if is_dir:
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                open(target, "a").close()
            lx.mount(f"/proc/self/fd/{fd}", target, None, lx.MS_BIND | lx.MS_REC)
        except OSError as e:
            errors.setdefault("view", f"{real}: {e}")
    for path in layout.hidden:
        lx.mount("tmpfs", root + path, "tmpfs", lx.MS_RDONLY | lx.MS_NOSUID | lx.MS_NODEV | lx.MS_NOEXEC,
                 "size=4k,nr_inodes=1,mode=755")
    os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
    for dev in DEVICES:
        open(f"{root}/dev/{dev}", "a").close()
        lx.mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, lx.MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/etc", mode=0o755, exist_ok=True)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"sandbox:x:{uid}:{gid}:sandbox:{layout.workdir}:/bin/sh\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"sandbox:x:{gid}:\n")
    os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
    if proc:
        try:
            lx.mount("proc", root + "/proc", "proc", lx.MS_NOSUID | lx.MS_NODEV | lx.MS_NOEXEC | lx.MS_RDONLY)
        except OSError as e:
            errors["proc"] = str(e)
    for path, mode in ((layout.workdir, 0o700), ("/tmp", 0o1777)):
        os.makedirs(root + path, mode, exist_ok=True)  # /tmp may hold a bound path already
        os.chmod(root + path, mode)
        os.chown(root + path, uid, gid)
    st = os.statvfs(root)  # the skeleton's inodes do not count against the quota
    try:
        lx.mount(None, root, None, lx.MS_REMOUNT | lx.MS_NOSUID | lx.MS_NODEV,
                 f"nr_inodes={st.f_files - st.f_ffree + max_files}")
    except OSError as e:
        errors["scratch_quota"] = f"inode limit is max_files + 1024: {e}"
    _copy_files(files_fd, root + layout.workdir, uid, gid)
    for path in (layout.workdir, "/tmp"):  # their own mounts, so they stay writable when / is made read-only
        lx.mount(root + path, root + path, None, lx.MS_BIND | lx.MS_REC)


def enter_root(root: str, layout: Plan) -> list[str]:
    """``pivot_root`` into ``root``, drop the old root and make every mount but /work and /tmp
    read-only. Returns the mount points that could not be made read-only."""
    prefix = root.rstrip("/")
    points = [(p[len(prefix):] or "/", flags) for p, flags in lx.mount_points()  # before: /proc may be absent after
              if p == prefix or p.startswith(prefix + "/")]
    os.chdir(root)
    lx.pivot_root(".", ".")
    lx.umount(".", lx.MNT_DETACH)
    os.chdir("/")
    failed = []
    locked = {real: flags for real, _, _, flags in layout.binds}
    for point, flags in points:
        if point in (layout.workdir, "/tmp"):
            continue
        try:
            lx.remount_read_only(point, flags | locked.get(point, 0), devices=point in _DEVICE_POINTS)
        except OSError:
            failed.append(point)
    os.chdir(layout.workdir)
    return failed


def landlock_rules(visible: list[str], workdir: str, mount_view: bool, hidden: Sequence[str] = (),
                   readable: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Landlock rules for the same view: inside the new root, or on the host without one. There
    a visible directory holding a ``hidden`` path is split around it (see :func:`read_rules`),
    and the directory holding each ``readable`` path may be listed (names only), as Python's
    import system lists a ``sys.path`` directory before it imports a package from it."""
    devices = [(f"/dev/{d}", lx.DEVICE) for d in DEVICES]
    if mount_view:
        return [("/", lx.READ), (workdir, lx.WRITE), ("/tmp", lx.WRITE), *devices]
    real_hidden = [os.path.realpath(h) for h in hidden]
    reads = [rule for p in visible for rule in read_rules(os.path.realpath(p), real_hidden)]
    lists = [(os.path.dirname(os.path.realpath(p)), lx.LIST) for p in readable]
    return [*reads, *lists, (workdir, lx.WRITE), *devices]


def read_rules(path: str, hidden: list[str], depth: int = 0) -> list[tuple[str, str]]:
    """Rules to read the tree at ``path`` except the ``hidden`` trees inside it: the whole tree
    when none is inside; else listing only for ``path`` itself (names, not contents) and the
    same, one level down, for each entry but the hidden ones (Landlock can only allow)."""
    inside = [h for h in hidden if h != path and _inside(h, [path])]
    if any(path == h for h in hidden):
        return []
    if not inside or depth > 8 or not os.path.isdir(path) or os.path.islink(path):
        return [(path, lx.READ)]
    rules = [(path, lx.LIST)]
    for name in sorted(_listdir(path)):
        rules += read_rules(os.path.join(path, name), inside, depth + 1)
    return rules


def world_readable(path: str) -> bool:
    """Whether any uid may read ``path`` (every directory above it searchable by others)."""
    mode = os.stat(path).st_mode
    if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
        return False
    parent = os.path.dirname(path)
    while parent != path:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        path, parent = parent, os.path.dirname(parent)
    return True


def hidden_outside(hidden: list[str], visible: list[str]) -> list[str]:
    """The ``hidden`` paths inside the ``visible`` ones (Landlock then reads them with
    :func:`read_rules`, which leaves their names listable but their contents closed)."""
    real = [os.path.realpath(p) for p in visible]
    return [h for h in hidden if _inside(os.path.realpath(h), real)]
