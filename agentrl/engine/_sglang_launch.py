"""Start SGLang servers (and an sglang-router) as subprocesses; wait for health; shut them down.

``launch_sglang("Qwen/Qwen3-4B", num_servers=4, tp=2)`` runs, for server ``i``::

    python -m sglang.launch_server --model-path Qwen/Qwen3-4B --host 127.0.0.1 \\
        --port 30000+i --tp-size 2 [extra_args...]      # CUDA_VISIBLE_DEVICES=2i,2i+1

and, with several servers, ``python -m sglang_router.launch_router --worker-urls URL... --host
127.0.0.1 --port 30000+num_servers --policy cache_aware``. Each process writes its output to
``log_dir/<name>.log``; a process that dies or never becomes healthy raises
:class:`~agentrl.engine.base.EngineError` with the tail of its log, after every process started
so far is shut down. Shutdown sends SIGTERM to each process group, then SIGKILL after a grace
period; it runs on :meth:`SGLangCluster.close`, on leaving a ``with`` block, and at interpreter
exit.

``server_command`` / ``router_command`` replace the commands (the rest of the path runs as is):
tests point them at ``agentrl serve --engine fake``, since SGLang cannot be installed everywhere.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from agentrl.engine.base import EngineError

log = logging.getLogger(__name__)

ServerCommand = Callable[[int, int], list[str]]
"""``(server index, port) -> argv`` of one server."""
RouterCommand = Callable[[list[str], int], list[str]]
"""``(worker URLs, port) -> argv`` of the router."""


@dataclass
class ManagedProcess:
    """One subprocess with its log file."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class SGLangCluster:
    """Servers (and maybe a router) started by :func:`launch_sglang`; a context manager.

    Example::

        >>> with launch_sglang("Qwen/Qwen3-0.6B", num_servers=2) as cluster:   # doctest: +SKIP
        ...     engine = cluster.engine()
    """

    server_urls: list[str]
    router_url: str | None
    processes: list[ManagedProcess]
    log_dir: Path

    @property
    def url(self) -> str:
        """Where to send generate requests: the router if there is one, else the first server."""
        return self.router_url or self.server_urls[0]

    def engine(self, **kwargs: Any):
        """An :class:`~agentrl.engine.sglang.SGLangEngine` over this cluster (router if any,
        control calls to every server). ``kwargs`` go to its constructor."""
        from agentrl.engine.sglang import SGLangEngine

        urls = [self.router_url] if self.router_url else self.server_urls
        return SGLangEngine(urls, worker_urls=self.server_urls, **kwargs)

    def poll(self) -> dict[str, int | None]:
        """Exit code of each process (None while running)."""
        return {p.name: p.process.poll() for p in self.processes}

    def close(self, grace: float = 30.0) -> None:
        """SIGTERM every process group, wait up to ``grace`` seconds, SIGKILL what is left."""
        atexit.unregister(self.close)
        alive = [p for p in reversed(self.processes) if p.running()]  # the router first
        for p in alive:
            _signal_group(p.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM; sending SIGKILL", p.name, grace)
                _signal_group(p.process, signal.SIGKILL)
                p.process.wait(timeout=10)
        for p in self.processes:
            _signal_group(p.process, signal.SIGKILL)  # children that outlived their parent
            p.log_file.close()

    def __enter__(self) -> "SGLangCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def launch_sglang(
    model_path: str,
    num_servers: int = 1,
    base_port: int = 30000,
    *,
    tp: int = 1,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    gpus: Sequence[int] | None = None,
    router: bool | None = None,
    router_port: int | None = None,
    router_policy: str = "cache_aware",
    router_args: Sequence[str] = (),
    health_timeout: float = 900.0,
    log_dir: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    server_command: ServerCommand | None = None,
    router_command: RouterCommand | None = None,
) -> SGLangCluster:
    """Start ``num_servers`` SGLang servers on ports ``base_port + i`` and, when ``router`` (default:
    when there are several servers), an sglang-router on ``router_port`` (default
    ``base_port + num_servers``); return once every ``/health`` answers 200.

    Args:
        model_path: what ``--model-path`` gets (a folder or hub id).
        tp: tensor-parallel size of each server (``--tp-size``); server ``i`` gets GPUs
            ``gpus[i*tp:(i+1)*tp]`` through ``CUDA_VISIBLE_DEVICES``.
        extra_args: more ``sglang.launch_server`` flags (e.g. ``["--mem-fraction-static", "0.7"]``).
        gpus: GPU ids to spread over the servers; default ``0..num_servers*tp-1`` when there are
            several servers, else the inherited ``CUDA_VISIBLE_DEVICES``.
        health_timeout: seconds to wait for all servers (large models load slowly).
        log_dir: where the ``*.log`` files go (default: a new temporary folder).
        server_command, router_command: replace the default commands (for tests; see module doc).
    """
    if num_servers < 1 or tp < 1:
        raise ValueError(f"num_servers and tp must be >= 1; got {num_servers}, {tp}")
    router = num_servers > 1 if router is None else router
    router_port = base_port + num_servers if router_port is None else router_port
    ports = [base_port + i for i in range(num_servers)]
    for port in ports + ([router_port] if router else []):
        if not _port_free(host, port):
            raise EngineError(f"port {port} on {host} is already in use; pick another base_port/router_port "
                              "or stop what listens there")
    log_path = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="agentrl-sglang-"))
    log_path.mkdir(parents=True, exist_ok=True)
    server_command = server_command or _default_server_command(model_path, host, tp, list(extra_args))
    gpu_sets = _gpu_sets(num_servers, tp, gpus)
    cluster = SGLangCluster([f"http://{_url_host(host)}:{p}" for p in ports], None, [], log_path)
    atexit.register(cluster.close)
    try:
        for i, port in enumerate(ports):
            child_env = dict(os.environ if env is None else env)
            if gpu_sets is not None:
                child_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_sets[i])
            cluster.processes.append(_start(f"server-{i}", cluster.server_urls[i], server_command(i, port),
                                            child_env, log_path))
        _wait_healthy(cluster.processes, health_timeout)
        if router:
            url = f"http://{_url_host(host)}:{router_port}"
            argv = (router_command or _default_router_command(host, router_policy, list(router_args)))(
                cluster.server_urls, router_port)
            proc = _start("router", url, argv, dict(os.environ if env is None else env), log_path)
            cluster.processes.append(proc)
            cluster.router_url = url
            _wait_healthy([proc], health_timeout)
    except BaseException:
        cluster.close(grace=10.0)
        raise
    log.info("SGLang cluster up: servers %s%s (logs in %s)", cluster.server_urls,
             f", router {cluster.router_url}" if cluster.router_url else "", log_path)
    return cluster


def _default_server_command(model_path: str, host: str, tp: int, extra: list[str]) -> ServerCommand:
    def command(index: int, port: int) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path, "--host", host,
                "--port", str(port), "--tp-size", str(tp), *extra]
    return command


def _default_router_command(host: str, policy: str, extra: list[str]) -> RouterCommand:
    def command(worker_urls: list[str], port: int) -> list[str]:
        return [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls,
                "--host", host, "--port", str(port), "--policy", policy, *extra]
    return command


def _gpu_sets(num_servers: int, tp: int, gpus: Sequence[int] | None) -> list[list[int]] | None:
    if gpus is None and num_servers == 1:
        return None
    pool = list(gpus) if gpus is not None else list(range(num_servers * tp))
    if len(pool) < num_servers * tp:
        raise ValueError(f"{num_servers} servers x tp {tp} need {num_servers * tp} GPUs; got {pool}")
    return [pool[i * tp:(i + 1) * tp] for i in range(num_servers)]


def _start(name: str, url: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ManagedProcess:
    path = log_dir / f"{name}.log"
    log_file = open(path, "ab")  # noqa: SIM115 (closed by SGLangCluster.close)
    log.info("starting %s: %s", name, " ".join(argv))
    try:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # its own process group: we stop its children too
    except OSError as exc:
        log_file.close()
        raise EngineError(f"could not start {name} ({argv[0]}): {exc}") from exc
    return ManagedProcess(name, url, process, path, log_file)


def _wait_healthy(processes: list[ManagedProcess], timeout: float) -> None:
    pending = list(processes)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while pending:
            for p in list(pending):
                code = p.process.poll()
                if code is not None:
                    raise EngineError(f"{p.name} exited with code {code} before becoming healthy; "
                                      f"last lines of {p.log_path}:\n{p.log_tail()}")
                try:
                    if client.get(p.url + "/health").status_code == 200:
                        log.info("%s is healthy at %s", p.name, p.url)
                        pending.remove(p)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                p = pending[0]
                raise EngineError(f"{p.name} at {p.url} was not healthy after {timeout:.0f} s (raise health_timeout "
                                  f"for large models); last lines of {p.log_path}:\n{p.log_tail()}")
            if pending:
                time.sleep(0.2)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
