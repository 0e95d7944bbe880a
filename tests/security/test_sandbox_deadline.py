"""A run stopped at its deadline leaves nothing behind, and ``run(timeout=t)`` returns within
``t + 1`` s whatever the code does (issue 19). What is left is listed, not assumed: the host
tasks named by the program, the run's host directories, the kernel's lock table, the host's
unix sockets and the run's cgroups.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from sandbox_attack_kit import MODES, NAME_ME, RESOURCE_MODES, live_tasks_named, new_tag, sandbox, tasks_named

from tools._sandbox_cgroup import PREFIX

LEAVE_EVERYTHING = NAME_ME + """
import fcntl, os, socket, threading, time
made = []
for path in ["left.txt", "/tmp/left.txt"]:
    try:
        f = open(path, "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        fcntl.lockf(f, fcntl.LOCK_EX)
        st = os.fstat(f.fileno())
        made.append(f"{{os.major(st.st_dev):02x}}:{{os.minor(st.st_dev):02x}}:{{st.st_ino}}")
    except OSError:
        pass
for address in ["{tag}.sock", "\\0{tag}"]:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(address)
        s.listen(1)
    except OSError:
        pass

def spin():
    ctypes.CDLL(None).prctl(15, {tag!r}.encode(), 0, 0, 0)
    while True:
        pass

import ctypes
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
print("locks:", *made, flush=True)
while True:
    time.sleep(0.01)
"""


@pytest.fixture
def run_root(monkeypatch):
    """A private parent for the runs' host directories, so what is left can be listed."""
    root = tempfile.mkdtemp(prefix="agentrl-test-runs-")
    os.chmod(root, 0o711)  # an unprivileged code uid (no mount namespace) must reach its directory
    monkeypatch.setattr(tempfile, "tempdir", root)
    yield Path(root)
    os.rmdir(root)


def run_cgroups() -> list[str]:
    """Cgroups this process made for its runs, in any hierarchy."""
    mine = f"{PREFIX}{os.getpid()}-"
    found = []
    for base, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(base, d) for d in dirs if d.startswith(mine)]
        dirs[:] = [d for d in dirs if not d.startswith(PREFIX)]
    return found


def unix_sockets(tag: str) -> list[str]:
    with open("/proc/net/unix") as f:
        return [line for line in f if tag in line]


def locks_on(keys: list[str]) -> list[str]:
    with open("/proc/locks") as f:
        return [line for line in f if any(f" {k} " in line for k in keys)]


@pytest.mark.parametrize("mode", RESOURCE_MODES)
def test_a_run_killed_at_its_deadline_leaves_nothing(mode, run_root):
    tag = new_tag()
    others = set(run_cgroups())  # long-lived jails of this process (the graders' servers) are not this run's
    r = sandbox(mode, timeout=1.5).run(LEAVE_EVERYTHING.format(tag=tag))
    assert r.stopped == "timeout" and "locks:" in r.stdout, r.to_text()
    locks = r.stdout.split("locks:")[1].split()
    assert live_tasks_named(tag) == []
    assert list(run_root.iterdir()) == []
    assert locks_on(locks) == []
    assert unix_sockets(tag) == []
    assert set(run_cgroups()) - others == set()
    time.sleep(0.5)
    assert tasks_named(tag) == []  # nor zombies, a moment later


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


BEHAVIOURS = {
    "busy loop": "while True:\n    pass",
    "busy threads": "import threading\ndef spin():\n    while True:\n        pass\n"
                    "for _ in range(8):\n    threading.Thread(target=spin, daemon=True).start()\nspin()",
    "sleep": "import time\ntime.sleep(3600)",
    "blocked on a pipe": "import os\nr, w = os.pipe()\nos.read(r, 1)",
    "ignores signals": "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                       "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)",
    "escapes its session": "import ctypes, os\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\ntry:\n    os.setsid()\n"
                           "except OSError:\n    pass\nwhile True:\n    pass",
    "forks": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "closes its output": "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass",
    "floods then sleeps": "import sys, time\nsys.stdout.write('x' * 900_000)\nsys.stdout.flush()\ntime.sleep(3600)",
    "fills the scratch space": "import time\ntry:\n    with open('fill', 'wb') as f:\n        while True:\n"
                               "            f.write(b'x' * (1 << 20))\nexcept OSError:\n    pass\ntime.sleep(3600)",
    "holds memory": "import time\nblob = bytearray(200 * (1 << 20))\ntime.sleep(3600)",
}


@pytest.mark.slow  # a timing test: run it on a machine that is not overloaded
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_run_returns_within_a_second_of_its_deadline(behaviour, mode, run_root):
    tag = new_tag()
    code = NAME_ME.format(tag=tag) + BEHAVIOURS[behaviour]
    start = time.monotonic()
    r = sandbox(mode, timeout=1.0, max_file_mb=64, scratch_mb=32).run(code)
    assert time.monotonic() - start < 2.0, r
    assert r.stopped in ("timeout", "output"), r.to_text()
    assert live_tasks_named(tag) == []
    assert list(run_root.iterdir()) == []
