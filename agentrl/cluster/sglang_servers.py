"""SGLang servers as Ray actors (``--use-ray --engine sglang``), behind an :class:`EnginePool`.

Each :class:`SGLangServerActor` sits in a placement bundle of ``--rollout-num-gpus-per-engine``
GPUs and runs one ``python -m sglang.launch_server --tp-size N`` subprocess on them (through
:func:`agentrl.engine.sglang.launch_sglang`), bound to its node's address on port
``base_port + index`` so a replacement comes back at the same URL. The driver talks to each
server with its own :class:`~agentrl.engine.sglang.SGLangEngine`; the
:class:`~agentrl.cluster.EnginePool` over them does what an sglang-router would (least-loaded
routing, failover) and more: it health-checks every server with ``/health_generate``, restarts a
dead or hung one and loads the current weights into it (``/update_weights_from_disk``).

Weights reach the servers from a trainer group (several ranks) by SGLang's in-memory path
(:class:`InMemoryWeightsTrainer`: ``/init_weights_update_group`` once, ``/update_weights_from_distributed``
per sync, NCCL on GPUs, gloo on CPUs); from a one-rank trainer, from disk: the trainer actor writes an
HF folder per version under the run's ``weights`` folder (on storage every node sees) and each server
loads it (:class:`DiskWeights`). For an sglang-router in front of the servers instead of the pool, start
them with :func:`agentrl.engine.sglang.launch_sglang` (``router=True``) and pass
``--sglang-url ROUTER``.

``server_argv`` replaces SGLang's launch command (``agentrl serve`` in tests, since SGLang cannot
be installed on every machine).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SGLangServerActor:
    """Runs inside a Ray worker: one SGLang server process on the worker's GPUs."""

    def __init__(self, model_path: str, *, port: int, tp: int = 1, extra_args: list[str] | None = None,
                 server_argv: list[str] | None = None, health_timeout: float = 900.0) -> None:
        import sys

        import ray

        from agentrl.engine.sglang import launch_sglang

        host = ray.util.get_node_ip_address()
        pidfile = Path(tempfile.gettempdir()) / f"agentrl-sglang-{host}-{port}.pid"
        _reap(pidfile, host, port)
        command = None
        if server_argv is not None:  # a template: {python}, {host}, {port}, {model}
            def command(index: int, p: int) -> list[str]:
                return [a.format(python=sys.executable, host=host, port=p, model=model_path) for a in server_argv]
        self.cluster = launch_sglang(model_path, 1, port, tp=tp, host=host, extra_args=extra_args or [],
                                     router=False, health_timeout=health_timeout, server_command=command)
        pidfile.write_text(str(self.cluster.processes[0].process.pid))

    def url(self) -> str:
        return self.cluster.server_urls[0]

    def alive(self) -> bool:
        return all(code is None for code in self.cluster.poll().values())

    def stop(self) -> None:
        self.cluster.close(grace=10.0)


def _reap(pidfile: Path, host: str, port: int, wait: float = 30.0) -> None:
    """Stop the server a killed predecessor left on this port (an actor killed with SIGKILL never
    ran its clean-up; the server runs in its own process group), then wait for the port."""
    import os
    import signal
    import socket
    import time

    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
            log.warning("stopped the server a previous actor left on port %d", port)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
        pidfile.unlink(missing_ok=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                time.sleep(0.2)


class SGLangServer:
    """Driver side of one server: its actor and an :class:`~agentrl.engine.sglang.SGLangEngine`
    client; closing it stops the server and kills the actor."""

    def __init__(self, actor: Any, url: str, **client_kwargs: Any) -> None:
        from agentrl.engine.sglang import SGLangEngine

        self.actor, self.url = actor, url
        self.client = SGLangEngine(url, max_retries=1, **client_kwargs)

    def __getattr__(self, name: str) -> Any:  # generate, abort, health, weight_version...
        return getattr(self.client, name)

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        return await self.client.update_weights(weights, version=version)

    async def close(self) -> None:
        import ray

        try:
            await self.client.aclose()
            await self.actor.stop.remote()
        except Exception as exc:  # a dead actor has nothing left to stop
            log.debug("stopping %s: %s", self.url, exc)
        ray.kill(self.actor, no_restart=True)


class DiskWeights(str):
    """The path of an HF folder of one weight version (what SGLang servers load; a ``str``, so
    :meth:`SGLangEngine.update_weights <agentrl.engine.sglang.SGLangEngine.update_weights>` takes it as is)."""

    @property
    def path(self) -> str:
        return str(self)


class DiskWeightsTrainer:
    """Wraps a trainer so that ``weights()`` writes an HF folder and names it (keeping the two
    newest versions: a restarting server may still be loading the previous one)."""

    def __init__(self, trainer: Any, staging_dir: str | Path) -> None:
        self._trainer = trainer
        self.staging = Path(staging_dir)
        self._version = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def weights(self) -> DiskWeights:
        self._version += 1
        target = self.staging / f"weights_{self._version:06d}"
        self._trainer.export_hf(target)
        for old in sorted(self.staging.glob("weights_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return DiskWeights(str(target))


class InMemoryWeightsTrainer:
    """Wraps a :class:`~agentrl.cluster.trainer_group.TrainerGroup` so that its weights reach the SGLang servers
    by SGLang's in-memory path, with no HF folder per sync: the first sync forms the weight-update group
    (``/init_weights_update_group`` on each server), every sync sends the gathered tensors bucket by bucket
    from rank 0 (``/update_weights_from_distributed``). When the pool's servers change (one restarted), the
    group is formed again with the ones the pool hands over."""

    def __init__(self, group: Any, *, backend: str, bucket_bytes: int) -> None:
        import asyncio

        self._trainer = group
        self.backend, self.bucket_bytes = backend, bucket_bytes
        self.members: list[Any] = []
        self.formed = 0
        self.lock = asyncio.Lock()  # one sync at a time: each is a collective of every rank

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def weights(self) -> "InMemoryWeights":
        return InMemoryWeights(self)

    def form(self, engines: list[Any]) -> None:
        """(Re-)form the weight-update group with ``engines`` (blocking)."""
        if self.members:
            self._trainer.disconnect_servers()
        self.formed += 1
        urls = [getattr(e, "url", None) or e.urls[0] for e in engines]  # SGLangServer, or an --sglang-url client
        self._trainer.connect_servers(urls, group_name=f"agentrl_weights_{self.formed}", backend=self.backend)
        self.members = list(engines)


class InMemoryWeights:
    """What :meth:`InMemoryWeightsTrainer.weights` returns: the :class:`~agentrl.cluster.EnginePool` hands it every
    server at once (``push_to``, a :class:`~agentrl.cluster.engine_pool.CollectiveWeights`)."""

    def __init__(self, owner: InMemoryWeightsTrainer) -> None:
        self.owner = owner

    async def push_to(self, engines: list[Any], version: int) -> None:
        import asyncio

        owner = self.owner
        async with owner.lock:
            if [id(e) for e in engines] != [id(e) for e in owner.members]:
                await asyncio.to_thread(owner.form, engines)
            await asyncio.to_thread(owner._trainer.update_servers, version, bucket_bytes=owner.bucket_bytes)
        for e in engines:
            e.note_weight_version(version)


async def spawn_server(model_path: str, index: int, *, options: dict[str, Any], base_port: int, tp: int,
                       extra_args: list[str], server_argv: list[str] | None = None) -> SGLangServer:
    """Start server ``index`` (port ``base_port + index``) and wait until it is healthy.
    ``server_argv`` replaces SGLang's command: a list of strings with ``{python}``, ``{host}``,
    ``{port}`` and ``{model}`` placeholders."""
    import ray

    remote = ray.remote(max_restarts=0)(SGLangServerActor)
    actor = remote.options(**options).remote(model_path, port=base_port + index, tp=tp, extra_args=extra_args,
                                              server_argv=server_argv)
    url = await actor.url.remote()  # type: ignore[union-attr]  # ray types actor methods as plain functions
    log.info("SGLang server %d up at %s", index, url)
    return SGLangServer(actor, url)
