"""Attacks on the Python sandbox that broke it before (issue 19), each in every mode this machine
allows, as root and as an unprivileged user.

Each test states the guarantee the probed kernel allows (see ``sandbox_attack_kit.Kernel``) and
asserts it; where the kernel cannot give it, it asserts that the result says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
from sandbox_attack_kit import MODES, NAME_ME, RESOURCE_MODES, Kernel, check_layers, live_tasks_named, new_tag, sandbox

from envs.tool_use import SAMPLES, ToolUseEnv
from tools.python_exec import PythonSandbox


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return Kernel.probe()


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def test_every_granted_layer_is_obtained(kernel, mode):
    r = sandbox(mode).run("print('ok')")
    assert r.stdout == "ok\n", r.to_text()
    check_layers(kernel, mode, r.layers)


# ----------------------------------------------------------------------------- outliving the run

ESCAPE = NAME_ME + """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
print("pdeathsig cleared:", libc.prctl(1, 0, 0, 0, 0) == 0)  # PR_SET_PDEATHSIG = 0
try:
    os.setsid()
    print("new session")
except OSError as e:
    print("setsid:", e.strerror)
try:
    if os.fork() == 0:
        os.setsid()
        while True:
            time.sleep(0.05)
except OSError as e:
    print("fork:", e.strerror)
print("armed", flush=True)
while True:
    time.sleep(0.05)
"""


def test_setsid_and_death_signal_escape_does_not_outlive_the_run(mode):
    """Before: ``run(timeout=2)`` returned after 12 s and the process lived on."""
    tag = new_tag()  # (how soon run() returns is test_sandbox_deadline.py's, a slow test)
    r = sandbox(mode, timeout=2.0).run(ESCAPE.format(tag=tag))
    assert r.stopped == "timeout" and "armed" in r.stdout, r.to_text()
    assert live_tasks_named(tag) == []
    time.sleep(0.5)
    assert live_tasks_named(tag) == []


def test_a_timed_out_tool_call_leaves_nothing_for_the_next_episode(mode):
    """Before: inside ToolUse-v0 the process stayed alive after the tool reported a timeout,
    holding a lock the next episode saw."""
    tag = new_tag()
    lock = ("import fcntl\ntry:\n    f = open('/tmp/episode.lock', 'a')\nexcept OSError:  # no writable /tmp without "
            "a mount namespace\n    f = open('episode.lock', 'a')\n")
    escape = ("import ctypes, os\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\ntry:\n    os.setsid()\n"
              "except OSError:\n    pass\n")  # as in the issue: leave the session, clear the death signal
    hold = NAME_ME.format(tag=tag) + lock + escape + (
        "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nimport time\nwhile True:\n    time.sleep(0.05)")
    probe = lock + "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('free')"
    env = ToolUseEnv(tools=["python"], tool_timeout=1.5, python_sandbox=sandbox(mode, timeout=1.5))
    try:
        env.reset(options={"question": "q", "answer": "1"})
        obs, *_ = env.step(_call("python", code=hold))
        text = obs[0]["content"]  # the sandbox's deadline or the executor's (it cancels the run) comes first
        assert "time limit" in text or "timed out" in text, obs
        assert live_tasks_named(tag) == []
        env.reset(options={"question": "q", "answer": "1"})
        obs, *_ = env.step(_call("python", code=probe))
        assert obs[0]["content"].startswith("free"), obs
    finally:
        env.close()


def _call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# ----------------------------------------------------------------------------- io_uring

IO_URING = """
import ctypes, errno, mmap, os, socket, struct
PATH = {path!r}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)  # io_uring_setup (same number on x86_64 and aarch64)
if fd < 0:
    print("io_uring_setup:", errno.errorcode.get(ctypes.get_errno()))
    raise SystemExit(0)
sq_entries, cq_entries, _, _, _, features = struct.unpack_from("6I", params, 0)
sq_head, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("7I", params, 40)
cq_head, cq_tail, cq_mask, _, _, cq_cqes = struct.unpack_from("6I", params, 80)
rw = mmap.PROT_READ | mmap.PROT_WRITE
size = max(sq_array + sq_entries * 4, cq_cqes + cq_entries * 16)
sq = mmap.mmap(fd, size, mmap.MAP_SHARED, rw, offset=0)
cq = sq if features & 1 else mmap.mmap(fd, cq_cqes + cq_entries * 16, mmap.MAP_SHARED, rw, offset=0x8000000)
sqes = mmap.mmap(fd, sq_entries * 64, mmap.MAP_SHARED, rw, offset=0x10000000)

def submit(opcode, target, addr=0, off=0):
    tail = struct.unpack_from("I", sq, sq_tail)[0]
    idx = tail & struct.unpack_from("I", sq, sq_mask)[0]
    sqes[idx * 64:(idx + 1) * 64] = struct.pack("BBHiQQIIQHHiQQ", opcode, 0, 0, target, off, addr, 0, 0, 7,
                                                0, 0, 0, 0, 0)
    struct.pack_into("I", sq, sq_array + idx * 4, idx)
    struct.pack_into("I", sq, sq_tail, tail + 1)
    libc.syscall(426, fd, 1, 1, 1, None, 0)  # io_uring_enter: submit one, wait for one
    head = struct.unpack_from("I", cq, cq_head)[0]
    slot = cq_cqes + (head & struct.unpack_from("I", cq, cq_mask)[0]) * 16
    struct.pack_into("I", cq, cq_head, head + 1)
    return struct.unpack_from("QiI", cq, slot)[1]

sock = submit(45, socket.AF_UNIX, off=socket.SOCK_STREAM)  # IORING_OP_SOCKET
addr = ctypes.create_string_buffer(struct.pack("H108s", socket.AF_UNIX, PATH.encode()))
if sock >= 0 and submit(16, sock, addr=ctypes.addressof(addr), off=110) == 0:  # IORING_OP_CONNECT
    os.write(sock, b"hello from the sandbox")
    print("connected")
"""


@pytest.fixture
def host_unix_socket():
    """A unix socket of the host that any uid could connect to (world-writable)."""
    d = tempfile.mkdtemp(prefix="agentrl-test-sock-")
    os.chmod(d, 0o777)
    path = os.path.join(d, "host.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(4)
    srv.setblocking(False)
    yield srv, path
    srv.close()
    os.unlink(path)
    os.rmdir(d)


def test_io_uring_cannot_open_sockets(mode, kernel, host_unix_socket):
    """Before: io_uring's SOCKET and CONNECT operations reached a host unix socket past the
    seccomp rule on socket()."""
    srv, path = host_unix_socket
    r = sandbox(mode).run(IO_URING.format(path=path))
    assert "connected" not in r.stdout, r.to_text()
    if kernel.seccomp:
        assert r.stdout.strip() == "io_uring_setup: EPERM", r.to_text()
    with pytest.raises(BlockingIOError):
        srv.accept()


# ----------------------------------------------------------------------------- reading host files

READ = """
for path in {paths!r}:
    try:
        with open(path, 'rb') as f:
            print("READ", path, f.read(64))
    except OSError as e:
        print("refused", path, type(e).__name__)
"""


@pytest.fixture
def private_file():
    """A 0600 file of the user running the tests, in its home directory when writable."""
    home = Path.home()
    where = home if os.access(home, os.W_OK) else Path(tempfile.gettempdir())
    fd, path = tempfile.mkstemp(prefix=".agentrl-test-secret-", dir=where)
    os.write(fd, b"TOP-SECRET-" + os.urandom(4).hex().encode())
    os.close(fd)
    os.chmod(path, 0o600)
    yield path
    os.unlink(path)


def test_host_files_stay_unreadable(mode, kernel, private_file):
    """Before: as root the code read /etc/shadow, a 0600 file in the user's home and
    ToolUse-v0's answer file."""
    paths = ["/etc/shadow", private_file, str(SAMPLES)]
    r = sandbox(mode).run(READ.format(paths=paths))
    assert r.stdout.count("refused") == len(paths) and "READ" not in r.stdout, r.to_text()
    if not (kernel.namespaces(mode) or kernel.landlock):  # only the audit hook: a Python-level refusal
        assert "sandbox warning" in r.to_text()


def test_tool_use_answer_file_is_invisible_to_its_python_tool():
    env = ToolUseEnv(tools=["python"])
    try:
        env.reset(options={"question": "q", "answer": "1"})
        code = f"print(open({str(SAMPLES)!r}).read())"
        obs, *_ = env.step(_call("python", code=code))
        assert "7006652" not in obs[0]["content"] and "Error" in obs[0]["content"], obs
    finally:
        env.close()


# ----------------------------------------------------------------------------- devices

DEVICES = """
import os
for path in ["/dev/kvm", "/dev/fuse", "/dev/loop0", "/dev/net/tun", "/dev/mem", "/dev/tty"]:
    try:
        os.close(os.open(path, os.O_RDWR))
        print("OPENED", path)
    except OSError as e:
        print("refused", path, e.errno)
print(sorted(os.listdir("/dev")))
"""


def test_host_devices_cannot_be_opened(mode, kernel):
    """Before: as root the code opened /dev/kvm (and made a VM), /dev/fuse and /dev/loop0."""
    r = sandbox(mode).run(DEVICES)
    assert "OPENED" not in r.stdout and r.stdout.count("refused") == 6, r.to_text()
    if kernel.namespaces(mode):
        assert r.stdout.splitlines()[-1] == str(sorted(["fd", "null", "random", "stderr", "stdin", "stdout",
                                                        "urandom", "zero"]))


# ----------------------------------------------------------------------------- threads and memory

THREADS = NAME_ME + """
import threading, time
stop = threading.Event()
started = 0
try:
    for _ in range(3000):
        threading.Thread(target=stop.wait, daemon=True).start()
        started += 1
except RuntimeError as e:
    print("refused:", e)
print("threads:", started)
stop.set()
"""


@pytest.mark.parametrize("mode", RESOURCE_MODES)
def test_threads_and_processes_are_capped(mode, kernel):
    """Before: no cap applied as root (3,000 threads in 1 s)."""
    # a large address space, so the thread stacks do not hit RLIMIT_AS before the cap
    r = sandbox(mode, max_processes=16, memory_mb=4096).run(THREADS.format(tag=new_tag()))
    started = int(r.stdout.split("threads:")[1])
    assert "refused: can't start new thread" in r.stdout, r.to_text()
    assert started < 16  # the main thread counts too


def test_tasks_are_capped_when_the_code_must_stay_root():
    """Without the mount namespace, root keeps uid 0 when the interpreter's files are not
    readable by other users (a pyenv under /root, say); RLIMIT_NPROC does not bind root, but the
    run's cgroup does, and without one the result says the cap is missing."""
    r = PythonSandbox(mount_namespace=False, max_processes=16, memory_mb=4096).run(THREADS.format(tag=new_tag()))
    started = int(r.stdout.split("threads:")[1])
    if r.layers["uid"] != 0 or r.layers["cgroup"]:
        assert started < 16, r.to_text()
    else:
        assert started > 16 and "RLIMIT_NPROC does not apply to root" in r.layer_errors["max_processes"]


MEMORY = """
import os
MB = 1 << 20
chunk = b"x" * MB
def fill(label, fd, limit_mb):
    stored = 0
    try:
        while stored < limit_mb:
            os.write(fd, chunk)
            stored += 1
    except OSError as e:
        pass
    print(label, stored)
try:
    fill("memfd", os.memfd_create("hog"), 640)
except OSError as e:
    print("memfd refused:", e.strerror)
for path in ["/dev/shm/hog", "/tmp/hog", "hog"]:
    try:
        fill(path, os.open(path, os.O_WRONLY | os.O_CREAT), 640)
    except OSError as e:
        print(path, "refused:", e)
"""


@pytest.mark.parametrize("mode", RESOURCE_MODES)
def test_memory_outside_the_address_space_limit_is_bounded(mode, kernel):
    """Before: 640 MB in a memfd at a 128 MB limit. Now memfd_create is refused, /dev/shm is not
    there or not writable, and files land in the scratch tmpfs, whose size is the bound."""
    r = sandbox(mode, memory_mb=128, scratch_mb=16, max_file_mb=64, timeout=20).run(MEMORY)
    lines = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines() if line.split(" ")[-1].isdigit())
    if kernel.seccomp:
        assert "memfd refused: Operation not permitted" in r.stdout, r.to_text()
    if kernel.namespaces(mode):
        stored = sum(int(v) for k, v in lines.items() if k != "memfd")
        assert stored <= 16, r.to_text()  # /tmp and the working directory share the 16 MB tmpfs
        assert "/dev/shm/hog refused" in r.stdout
    elif kernel.landlock:
        assert "/dev/shm/hog refused" in r.stdout and "/tmp/hog refused" in r.stdout
        assert r.layers["scratch_quota"] is False  # the working directory is on the host's disk


# ----------------------------------------------------------------------------- disk quota

FILES = """
import os
made = 0
try:
    for i in range(60_000):
        open(f"f{i}", "w").close()
        made += 1
except OSError as e:
    print("stopped:", e.strerror)
print("files:", made)
try:
    with open("big", "wb") as f:
        for _ in range(64):
            f.write(b"x" * (1 << 20))
except OSError as e:
    print("big:", e.strerror)
"""


@pytest.mark.parametrize("mode", RESOURCE_MODES)
def test_scratch_space_has_a_quota(mode, kernel):
    """Before: no disk or inode quota."""
    r = sandbox(mode, scratch_mb=8, max_files=500, max_file_mb=64, timeout=30).run(FILES)
    if kernel.namespaces(mode):
        assert "stopped: No space left on device" in r.stdout and "files: 500" in r.stdout, r.to_text()
        assert "big: No space left on device" in r.stdout
    else:
        assert r.layers["scratch_quota"] is False and "needs the mount namespace" in r.layer_errors["scratch_quota"]


@pytest.mark.slow
def test_cleaning_up_many_files_does_not_freeze_the_event_loop(mode, kernel):
    """Before: removing 60,000 files left by a run blocked the event loop for 1.2 s. Measured
    where the files land on the host's disk (no scratch tmpfs), else in the tmpfs."""
    sb = sandbox(mode, max_files=70_000, scratch_mb=256, timeout=300)  # on a host disk it can take a minute
    code = "import os\nfor i in range(60_000):\n    open(f'f{i}', 'w').close()\nprint('done')"

    async def main() -> tuple[float, str]:
        worst, last, running = 0.0, time.monotonic(), True

        async def tick() -> None:
            nonlocal worst, last
            while running:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                worst, last = max(worst, now - last), now

        ticker = asyncio.create_task(tick())
        result = await sb.arun(code)
        running = False
        await ticker
        return worst, result.stdout

    worst, out = asyncio.run(main())
    assert out == "done\n"
    assert worst < 0.5, f"the event loop stalled {worst:.2f} s"


# ----------------------------------------------------------------------------- parallel runs

WRITER = """
import os, time
for path, secret in [("secret.txt", "S1"), ("/tmp/secret.txt", "S2")]:
    try:
        open(path, "w").write(secret)
    except OSError:
        pass  # no writable /tmp without a mount namespace
print(os.getcwd(), flush=True)
time.sleep(3)
"""
SNOOPER = """
import glob, os
found = []
for pattern in ["/tmp/*", "/tmp/*/*", "/work/*", "/sandbox/*", {host_dir!r} + "/*", "/proc/*/cwd/*"]:
    try:
        for p in glob.glob(pattern):
            try:
                if open(p).read() in ("S1", "S2"):
                    found.append(p)
            except OSError:
                pass
    except OSError:
        pass
print("found:", found)
"""


def test_parallel_runs_do_not_see_each_others_scratch(mode):
    """Before: parallel episodes saw each other's scratch files."""
    sb = sandbox(mode, timeout=10)

    async def main():
        writer = asyncio.create_task(sb.arun(WRITER))
        await asyncio.sleep(1.0)  # the writer has written by now (its result says where)
        snooper = await sb.arun(SNOOPER.format(host_dir=tempfile.gettempdir()))
        return await writer, snooper

    writer, snooper = asyncio.run(main())
    assert writer.stdout, writer.to_text()
    assert "found: []" in snooper.stdout, (writer.stdout, snooper.to_text())


# ----------------------------------------------------------------------------- odd input


@pytest.mark.parametrize("code", ["print('\\ud800')", "x = '\udcff'", "s = '\ud800'\nprint(len(s))"])
def test_a_lone_surrogate_gives_a_result_not_an_exception(code):
    """Before: a lone surrogate in the code raised UnicodeEncodeError out of run()."""
    r = sandbox("default").run(code, files={"data.txt": "\ud800"})
    assert r.exit_code == 1 and "surrogates not allowed" in r.stderr, r.to_text()


def test_a_lone_surrogate_through_the_tool():
    tool = sandbox("default").as_tool()
    text = asyncio.run(tool(code="print('a')\n'\ud800'"))
    assert "surrogates not allowed" in text


def test_the_working_directory_is_private(mode):
    """The working directory (the run's host directory without a mount namespace) is the
    code's own: other users cannot even list it."""
    r = sandbox(mode).run("import os\nprint(oct(os.stat('.').st_mode & 0o777))", files={"a.txt": "x"})
    assert r.stdout == "0o700\n", r.to_text()


# ----------------------------------------------------------------------------- containers

IN_A_CONTAINER = """
import json, sys
sys.path[:0] = {paths!r}
import sandbox_attack_kit as kit
kit.forbid_namespaces(getattr(kit, {forbidden!r}))
from tools.python_exec import PythonSandbox
r = PythonSandbox().run(open(sys.argv[1]).read())
print(json.dumps({{"kernel": kit.Kernel.probe().__dict__, "stdout": r.stdout, "layers": r.layers,
                  "text": r.to_text()}}))
"""


@pytest.mark.parametrize("forbidden", ["NO_USER_NAMESPACES", "NO_NAMESPACES"])
def test_in_a_container_that_forbids_namespaces_the_sandbox_degrades_and_says_so(forbidden, tmp_path,
                                                                                 private_file):
    """Where a container forbids user namespaces: as root the code still runs as an unused uid
    in all the other namespaces; as a user it gets none, and Landlock and seccomp carry the load.
    Where it forbids every namespace (root without CAP_SYS_ADMIN), root gets none either."""
    import subprocess
    import sys

    attack = tmp_path / "attack.py"
    attack.write_text(READ.format(paths=["/etc/shadow", private_file, str(SAMPLES)]) + IO_URING.format(path="/x"))
    attack.chmod(0o644)
    tmp_path.chmod(0o755)
    code = IN_A_CONTAINER.format(paths=[str(Path(__file__).parent), str(Path(__file__).parents[2])],
                                 forbidden=forbidden)
    out = subprocess.run([sys.executable, "-c", code, str(attack)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    kernel, layers, text = Kernel(**result["kernel"]), result["layers"], result["text"]
    assert kernel.userns is False and layers["user_namespace"] is False
    assert result["stdout"].count("refused") == 3 and "READ" not in result["stdout"], text
    assert "io_uring_setup: EPERM" in result["stdout"]
    if kernel.root and forbidden == "NO_USER_NAMESPACES":
        assert layers["mount_namespace"] and layers["pid_namespace"] and layers["uid"] >= 1_000_000_000
        assert "sandbox warning" not in text
    else:
        assert not layers["mount_namespace"] and layers["landlock"] and layers["seccomp"], text
        why = "Operation not permitted" if kernel.root else "needs root or an unprivileged user namespace"
        assert "[sandbox warning: no net, mount, pid namespace (" in text and text.endswith(why + ")]"), text
