"""Answers that attack their grader: the scoring jail (``envs/_scoring.py``) holds.

Before it, grading ran in a worker process of the trainer's own user: reasoning-gym scorers that
hand the answer to ``sympy.parse_expr`` (``countdown``, ``puzzle24``, ``simple_integration``...)
or to ``eval`` (``n_queens``, ``spiral_matrix``...) ran ``<answer>__import__('os').system(...)
</answer>`` as a shell command of that user, read any file it could, and sent the result back as
a pickle the trainer unpickled. Each attack below is sent as an answer through ReasoningGym-v0
and Math-v0; the host must see nothing (no file, no connection, no process left) and the answer
must score 0 with what happened in ``info``. Run as root and as an unprivileged user (see
docs/tools.md); the kernel layers the jail gets are those ``sandbox_attack_kit.Kernel`` probes.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from sandbox_attack_kit import Kernel, live_tasks_named, new_tag

pytest.importorskip("reasoning_gym")

from envs import _scoring  # noqa: E402
from envs.math import MathEnv  # noqa: E402
from envs.reasoning_gym_env import ReasoningGymEnv  # noqa: E402
from tools.python_exec import PythonSandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAME = 'import ctypes\nctypes.CDLL(None).prctl(15, b"{tag}", 0, 0, 0)\n'  # PR_SET_NAME: find what is left


def program(code: str) -> str:
    """A Python program as an expression that ``parse_expr`` and ``eval`` scorers both run."""
    return f"__import__('builtins').exec({code!r})"


PAYLOADS = {
    "os_system": "__import__('os').system('touch {marker}')",
    "read_shadow": "__import__('builtins').open('/etc/shadow').read()",
    "read_private_file": "__import__('builtins').open('{secret}').read()",
    "write_host_tmp": "__import__('builtins').open('{marker}', 'w').write('pwned')",
    "tcp_connect": "__import__('socket').create_connection(('127.0.0.1', '{port}'))",
    "unix_connect": "__import__('socket').socket(__import__('socket').AF_UNIX).connect('{unix}')",
    "fork_bomb": program(NAME + "import os\nwhile True:\n    os.fork()"),
    "thread_bomb": program(NAME + "import threading, time\nwhile True:\n"
                           "    threading.Thread(target=time.sleep, args=(60,)).start()"),
    "infinite_loop": program(NAME + "while True:\n    pass"),
    "huge_allocation": "__import__('builtins').bytearray(10**11)",
}
HARMLESS = ("os_system", "read_shadow", "read_private_file", "write_host_tmp", "tcp_connect", "unix_connect")
"""The payloads that may be run unjailed to see the old grader fail (no bombs, no loops)."""
TASKS = {"countdown": "parse_expr", "n_queens": "eval", "simple_integration": "parse_expr",
         "puzzle24": "parse_expr", "spiral_matrix": "eval", "polynomial_multiplication": "parse_expr"}
FAST_TASKS = ("countdown", "n_queens")


class Host:
    """What an attack could touch on the host, and how to tell whether it did."""

    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="agentrl-test-host-"))  # reachable by any uid (see below)
        os.chmod(root, 0o755)
        self.root = root
        self.tag = new_tag()
        self.marker = Path(tempfile.gettempdir()) / f"agentrl-pwned-{uuid.uuid4().hex}"
        self.secret = root / "secret.txt"
        self.secret.write_text("TOP-SECRET")
        self.secret.chmod(0o600)
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.unix_path = str(root / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(4)
        self.unix.setblocking(False)

    def answer(self, payload: str) -> str:
        return PAYLOADS[payload].format(marker=self.marker, secret=self.secret, port=self.tcp.getsockname()[1],
                                        unix=self.unix_path, tag=self.tag)

    def untouched(self) -> None:
        assert not self.marker.exists(), "a file appeared in the host's /tmp"
        for listener in (self.tcp, self.unix):
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert _left_below_servers() == []
        assert _gone(self.tag), live_tasks_named(self.tag)

    def close(self) -> None:
        self.tcp.close()
        self.unix.close()
        self.marker.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _gone(tag: str, patience: float = 3.0) -> bool:
    """No task named ``tag`` is alive, at the latest after ``patience`` seconds: a request's fork
    is SIGKILLed when it has answered (or at its deadline), and the kernel then tears it down."""
    deadline = time.monotonic() + patience
    while live_tasks_named(tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _left_below_servers(patience: float = 3.0) -> list[str]:
    """What a request left below the scoring servers (this process -> outer -> supervisor ->
    runner -> forks): more than the one spare fork per runner that waits for the next request,
    or anything below a fork. Killed forks get ``patience`` seconds to be gone."""
    deadline = time.monotonic() + patience
    while True:
        procs = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(pid)] = (int(fields[1]), fields[0])  # parent, state
        depth = {}
        for pid in procs:
            chain, p = 0, pid
            while p in procs and p != os.getpid() and chain < 64:
                p, chain = procs[p][0], chain + 1
            if p == os.getpid():
                depth[pid] = chain
        live = [pid for pid, d in depth.items() if d >= 4 and procs[pid][1] not in "ZX"]
        left = [f"{pid} (depth {depth[pid]})" for pid in live if depth[pid] >= 5]
        per_runner = collections.Counter(procs[pid][0] for pid in live if depth[pid] == 4)
        left += [f"runner {runner} has {n} forks" for runner, n in per_runner.items() if n > 1]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def host():
    h = Host()
    yield h
    h.close()


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return Kernel.probe()


@pytest.fixture(scope="module", autouse=True)
def _servers_closed_after():
    """Close the scoring servers after this module: nothing of them is left (and later tests that
    count this process's children do not see them)."""
    yield
    pids = [s.proc.pid for s in list(_scoring._POOL._all) if s.proc is not None]
    _scoring._POOL.close()
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert _left_below_servers() == []


def _rg_env(task: str) -> ReasoningGymEnv:
    return ReasoningGymEnv(task, size=5, seed=0, score_timeout=3.0)


def _cases(tasks):
    return [pytest.param(t, p, marks=() if t in FAST_TASKS else pytest.mark.slow) for t in tasks for p in PAYLOADS]


@pytest.mark.parametrize(("task", "payload"), _cases(TASKS))
def test_reasoning_gym_answers_that_attack_the_scorer(task, payload, host):
    """Before: ``os_system`` created the file, ``read_*`` read the files, ``write_host_tmp``
    wrote to the host's /tmp, the sockets connected (``TASKS`` names the scorer's evaluator)."""
    env = _rg_env(task)
    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step(f"Here it is:\n<answer>{host.answer(payload)}</answer>")
    assert terminated and reward == 0.0, info
    assert info.get("error"), info  # what happened is recorded, whatever the scorer made of it
    if payload == "infinite_loop":
        assert "longer than" in info["error"] or "stopped" in info["error"], info
    else:  # the scorer ran the answer and the jail stopped it (not a parse error)
        assert "stopped while scored" in info["error"], info
    host.untouched()


def test_correct_answers_still_score_in_the_jail():
    for task in ("countdown", "n_queens", "simple_integration"):
        env = _rg_env(task)
        env.reset(options={"index": 1})
        _, reward, _, _, info = env.step(f"<answer>{env.entry['answer']}</answer>")
        assert reward == 1.0 and "error" not in info, (task, info)


@pytest.mark.parametrize("payload", [*PAYLOADS, "power_tower"])
def test_math_answers_that_attack_the_grader(payload, host):
    """Math-v0's symbolic check (math-verify, or the sympy fallback) runs in the jail too."""
    env = MathEnv()
    env.reset(options={"question": "What is 1 + 1?", "answer": "x + 1"})
    answer = "9^{9^{9^{9}}}" if payload == "power_tower" else host.answer(payload)
    _, reward, terminated, _, info = env.step(f"\\boxed{{{answer}}}")
    assert terminated and reward == 0.0 and info["correct"] is False, info
    # math-verify grades these as wrong answers without evaluating them; a check that is stopped says why
    assert info["method"] in ("math_verify", "sympy", "timeout", "killed", "refused"), info
    assert (info["method"] in ("math_verify", "sympy")) is ("error" not in info), info
    host.untouched()


def test_every_symbolic_check_runs_jailed(kernel):
    """The grader's own view of the machine is the jail's, not the host's."""
    out = _scoring.run("os:listdir", "/", timeout=30.0)
    assert out.finished, out
    if kernel.namespaces("default"):
        assert "home" not in out.value and "etc" in out.value  # the new root: no /home, a generated /etc
    out = _scoring.run("builtins:open", "/etc/shadow", timeout=30.0)
    assert out.error and out.error.startswith(("FileNotFoundError", "PermissionError")), out
    out = _scoring.run("os:getuid", timeout=30.0)
    assert out.value != 0 or not kernel.root, out


def test_a_forged_reply_is_not_unpickled(host):
    """Before: the worker's reply was a pickle, so code running in the grader could make the
    trainer run anything by writing its own reply. Now replies are JSON read with limits."""
    bomb = pickle.dumps(_Bomb(str(host.marker)))
    for reply in (bomb, b"+" + bomb):  # "+": the mark of a reply from handle()
        forge = program(f"import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, {reply!r})\n"
                        "    except OSError:\n        pass\nos._exit(0)")
        out = _scoring.run("builtins:eval", forge, timeout=30.0)
        assert not out.finished and (out.error or out.stopped), out
        host.untouched()


class _Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_stopped_call_leaves_the_server_usable():
    out = _scoring.run("builtins:pow", 9, 9**9, timeout=0.5)  # C code, holding the GIL
    assert (out.finished, out.stopped) == (False, "timeout"), out
    assert _scoring.call("operator:add", 2, 3, timeout=60) == (True, 5)


def test_the_projects_data_stays_hidden_from_graders():
    """The jail shows the ``agentrl`` and ``envs`` packages, not their data (answer keys)."""
    data = REPO / "envs" / "data"
    files = sorted(p for p in data.iterdir() if p.is_file())
    assert files
    for path in files[:2]:
        out = _scoring.run("builtins:open", str(path), timeout=30.0)
        assert out.error and out.error.startswith(("FileNotFoundError", "PermissionError")), (path, out)
    assert _scoring.run("operator:contains", _scoring.PACKAGES, "envs", timeout=30.0).value is True
    out = _scoring.run("builtins:open", str(REPO / "README.md"), timeout=30.0)  # nor the rest of the repository
    assert out.error and out.error.startswith(("FileNotFoundError", "PermissionError")), out


# ----------------------------------------------------------------------------- the sandbox's serve mode

SERVE = """
seen = []
def handle(request, refused):
    seen.append(request)
    if request == b"spin":
        while True:
            pass
    if request == b"big":
        return b"x" * (1 << 21)
    return repr(seen).encode()
"""


def test_each_request_starts_from_the_servers_state():
    with PythonSandbox(memory_mb=256).serve(SERVE) as server:
        assert server.call(b"a", timeout=10.0).reply == b"[b'a']"
        assert server.call(b"b", timeout=10.0).reply == b"[b'b']"  # not [b'a', b'b']: a fresh fork each time


def test_a_request_is_stopped_at_its_deadline_and_the_server_goes_on():
    with PythonSandbox(memory_mb=256).serve(SERVE) as server:
        start = time.monotonic()
        spun = server.call(b"spin", timeout=1.0)
        assert spun.status in ("timeout", "died") and time.monotonic() - start < 3.0, spun
        assert spun.details.get("signal") == 9, spun
        assert server.call(b"too", timeout=10.0).reply == b"[b'too']"
        assert server.call(b"big", timeout=10.0).status == "too_large"  # over the 1 MiB reply limit
        assert server.call(b"end", timeout=10.0).status == "ok"
        outer = server.proc.pid
    assert not Path(f"/proc/{outer}").exists() or Path(f"/proc/{outer}/stat").read_text().split()[2] == "Z"
    assert _left_below_servers() == []


def test_closing_twice_leaves_the_hosts_temporary_directory_alone():
    """Removing a server's files a second time once chmod-ed their parent, the host's /tmp, to 0700."""
    before = os.stat(tempfile.gettempdir()).st_mode
    server = PythonSandbox(memory_mb=256).serve(SERVE)
    server.close()
    server.close()
    from tools._sandbox_io import remove_tree

    remove_tree(os.path.join(tempfile.gettempdir(), f"agentrl-gone-{uuid.uuid4().hex}"))  # a tree that is not there
    assert os.stat(tempfile.gettempdir()).st_mode == before


def test_the_devices_of_the_new_root_can_be_used():
    """``/dev/null`` and friends are bound without ``nodev`` (a request's fork writes its output there)."""
    r = PythonSandbox().run("open('/dev/null', 'w').write('x')\nprint(len(open('/dev/urandom', 'rb').read(8)))")
    assert r.stdout == "8\n", r.to_text()


# ----------------------------------------------------------------------------- without the full jail

CHILD = """
import json, logging, os, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import sandbox_attack_kit as kit
kit.forbid_namespaces({flags})
records = []
logging.basicConfig(level=logging.INFO)
logging.getLogger().addHandler(type("H", (logging.Handler,), {{"emit": lambda self, r: records.append(r)}})())
from envs.reasoning_gym_env import ReasoningGymEnv
env = ReasoningGymEnv("countdown", size=5, seed=0, score_timeout=3.0)
results = []
for answer in {answers!r}:
    env.reset(options={{"index": 0}})
    _, reward, _, _, info = env.step("<answer>" + answer + "</answer>")
    results.append([reward, info.get("error")])
warnings = [r.getMessage() for r in records if r.name == "envs._scoring" and r.levelno >= logging.WARNING]
print(json.dumps({{"results": results, "warnings": warnings}}))
"""


def _python_for(uid: int | None) -> list[str] | None:
    """The command running the tests' interpreter, as ``uid`` when given (root only)."""
    if uid is None:
        return [sys.executable]
    python = f"/usr/bin/python3.{sys.version_info.minor}"  # one that any uid may run (docs/tools.md)
    if not (os.path.exists(python) and os.stat(python).st_mode & 0o001 and shutil.which("setpriv")):
        return None
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python]


@pytest.mark.parametrize("flags", ["NO_USER_NAMESPACES", "NO_NAMESPACES"])
@pytest.mark.parametrize("who", ["self", "nobody"])
def test_without_user_namespaces_the_grader_says_so_and_holds(flags, who, host):
    """A container that forbids (user) namespaces: scoring runs with the layers left, the log
    says once which are missing, and the attacks still do nothing on the host."""
    if who == "nobody" and os.geteuid() != 0:
        pytest.skip("runs the check as uid 65534, which needs root")
    command = _python_for(65534 if who == "nobody" else None)
    if command is None:
        pytest.skip("no python3.11 and setpriv to run as uid 65534")
    site = [p for p in sys.path if p.endswith("site-packages")]
    answers = [host.answer(p) for p in ("os_system", "write_host_tmp", "read_private_file", "tcp_connect",
                                        "unix_connect", "fork_bomb", "huge_allocation")]
    if who == "nobody":
        os.chmod(host.secret, 0o644)  # readable by that uid on the host: only the jail may stop it
    script = CHILD.format(tests=str(Path(__file__).parent), repo=str(REPO), flags=f"kit.{flags}", answers=answers)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(host.root), "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(REPO), *site])}
    proc = subprocess.run([*command, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                          cwd=host.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for reward, error in out["results"]:
        assert reward == 0.0 and error and "stopped while scored" in error, out
    host.untouched()
    unprivileged = who == "nobody" or os.geteuid() != 0
    if flags == "NO_NAMESPACES" or unprivileged:  # no namespaces: said once, with the reasons
        assert len(out["warnings"]) == 1 and "namespace" in out["warnings"][0], out
    else:  # root without user namespaces keeps the others (owned by root, the code at an unused uid)
        assert out["warnings"] == [], out
