"""A cgroup per sandbox run: memory (page cache, tmpfs and memfd included) and task limits, and a
way to kill every process of the run. Parent side; private to ``tools/python_exec.py``.

Where one can be had:

* **cgroup v2**: a child of the directory named by ``$AGENTRL_SANDBOX_CGROUP``, else of this
  process's own cgroup, when ``memory`` and ``pids`` are already enabled in its
  ``cgroup.subtree_control`` (a delegated cgroup); ``memory.max``, ``memory.swap.max = 0``,
  ``pids.max``; killed with ``cgroup.kill``.
* **cgroup v1** (hybrid hosts, where the controllers live in v1 hierarchies): a child of this
  process's cgroup in the ``memory`` and ``pids`` hierarchies when they are writable;
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``), ``pids.max``; killed by
  signalling every task listed until none is left.

Unprivileged users rarely get either (a writable cgroup needs root or a delegation); the run then
has no cgroup and :func:`create` says why.
"""

from __future__ import annotations

import os
import signal
import uuid

PREFIX = "agentrl-sandbox-"
_ENV = "AGENTRL_SANDBOX_CGROUP"


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount root, mount point, fstype, super options) of each cgroup filesystem."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if rest and rest[0] in ("cgroup", "cgroup2"):
                out.append((fields[3], fields[4], rest[0], rest[2] if len(rest) > 2 else ""))
    return out


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for the v2 unified hierarchy)."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _join(root: str, point: str, path: str) -> str | None:
    if not (path + "/").startswith(root.rstrip("/") + "/"):
        return None  # our cgroup is outside what this mount shows
    return os.path.join(point, path[len(root.rstrip("/")):].lstrip("/"))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _sweep(parent: str) -> None:
    """Remove empty run cgroups left by a process that no longer exists (e.g. a killed trainer)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        owner = name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class RunCgroup:
    """The cgroup directories of one run (one per hierarchy)."""

    def __init__(self, version: str, dirs: dict[str, str]) -> None:
        self.version = version
        self.dirs = dirs  # controller (or "unified") -> directory

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the run's first process writes its pid into."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def tasks(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return pids

    def kill(self) -> None:
        """SIGKILL every process of the run (returns at once; they may take a moment to exit)."""
        if self.version == "v2":
            try:
                _write(os.path.join(self.dirs["unified"], "cgroup.kill"), "1")
                return
            except OSError:
                pass  # kernels before 5.14: signal each task
        for pid in self.tasks():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self) -> bool:
        """Kill what is left and remove the directories; False while a process still exits."""
        self.kill()
        done = True
        for d in list(self.dirs.values()):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done


def create(memory_bytes: int, max_tasks: int) -> tuple[RunCgroup | None, str]:
    """A new cgroup for one run with the given limits, or (None, why not)."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as e:
        return None, f"cannot read the cgroup setup: {e}"
    name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    v2_why = _v2_parent(mounts, own)
    if isinstance(v2_why, tuple):
        parent = v2_why[0]
        return _make("v2", {"unified": parent}, name, {
            "unified": [("memory.max", str(memory_bytes)), ("memory.swap.max", "0"), ("pids.max", str(max_tasks))]})
    v1: dict[str, str] = {}
    for controller in ("memory", "pids"):
        for root, point, fstype, opts in mounts:
            if fstype == "cgroup" and controller in opts.split(",") and controller in own:
                d = _join(root, point, own[controller])
                if d and os.access(d, os.W_OK):
                    v1[controller] = d
    if set(v1) != {"memory", "pids"}:
        return None, f"{v2_why}; cgroup v1: memory and pids hierarchies not writable here"
    memsw = os.path.join(v1["memory"], "memory.memsw.limit_in_bytes")
    settings = {"memory": [("memory.limit_in_bytes", str(memory_bytes))], "pids": [("pids.max", str(max_tasks))]}
    if os.path.exists(memsw):
        settings["memory"].append(("memory.memsw.limit_in_bytes", str(memory_bytes)))
    return _make("v1", v1, name, settings)


def _v2_parent(mounts: list, own: dict[str, str]) -> tuple[str] | str:
    """(parent directory,) when a delegated cgroup v2 is usable, else the reason it is not."""
    parent = os.environ.get(_ENV)
    if not parent:
        v2 = [(root, point) for root, point, fstype, _ in mounts if fstype == "cgroup2"]
        if not v2 or "" not in own:
            return "cgroup v2 not mounted"
        parent = _join(v2[0][0], v2[0][1], own[""])
        if parent is None:
            return "own cgroup v2 not visible"
    try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
    except OSError as e:
        return f"cgroup v2 at {parent}: {e.strerror}"
    if not {"memory", "pids"} <= enabled:
        return f"cgroup v2 at {parent} does not delegate memory and pids (set ${_ENV} to a delegated cgroup)"
    if not os.access(parent, os.W_OK):
        return f"cgroup v2 at {parent} is not writable"
    return (parent,)


def _make(version: str, parents: dict[str, str], name: str,
          settings: dict[str, list[tuple[str, str]]]) -> tuple[RunCgroup | None, str]:
    dirs: dict[str, str] = {}
    try:
        for key, parent in parents.items():
            _sweep(parent)
            dirs[key] = os.path.join(parent, name)
            os.mkdir(dirs[key])
            for file, value in settings[key]:
                _write(os.path.join(dirs[key], file), value)
    except OSError as e:
        RunCgroup(version, dirs).remove()
        return None, f"cgroup {version}: {e}"
    return RunCgroup(version, dirs), ""
