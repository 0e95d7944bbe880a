"""The embedded engine as a Ray actor, and its :class:`~agentrl.engine.base.Engine` proxy.

:class:`RayEngineActor` holds an :class:`~agentrl.engine.embedded.EmbeddedEngine` in its own
process (on the GPU or CPUs of its placement bundle). :class:`RayEngine` is the driver-side
proxy: every ``Engine`` method is a remote call; a dead actor turns into an
:class:`~agentrl.engine.base.EngineError` so an :class:`~agentrl.cluster.EnginePool` can move its
requests and restart it. Weights arrive as a state dict of HF-named CPU tensors through the Ray
object store (the trainer actor puts it there once; every engine reads the same object).

Health: besides the engine's own check, the actor reports itself unhealthy when it has requests
in flight but its scheduler has not advanced for ``hang_timeout`` seconds (a hung step).

Example::

    >>> engine = RayEngine.spawn("tiny-qwen2", options={"num_cpus": 1})   # doctest: +SKIP
    >>> asyncio.run(engine.generate([1, 2, 3], SamplingParams(max_new_tokens=4)))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from agentrl.engine.base import Completion, EngineError, SamplingParams

log = logging.getLogger(__name__)


class RayEngineActor:
    """Runs inside a Ray worker: an embedded engine plus a progress watchdog."""

    def __init__(self, model_path: str, *, device: str | None = None, num_threads: int | None = None,
                 hang_timeout: float = 300.0, engine_kwargs: dict[str, Any] | None = None) -> None:
        import torch

        from agentrl.engine.embedded import EmbeddedEngine

        if num_threads:
            torch.set_num_threads(num_threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.engine = EmbeddedEngine(model_path, device=device, **(engine_kwargs or {}))
        self.hang_timeout = hang_timeout
        self._inflight = 0
        self._progress = (self._counter(), time.monotonic())

    async def generate(self, input_ids: list[int], sampling: SamplingParams, rid: str | None = None) -> Completion:
        self._inflight += 1
        try:
            return await self.engine.generate(input_ids, sampling, rid=rid)
        finally:
            self._inflight -= 1

    async def update_weights(self, weights: Any = None, version: int | None = None) -> int:
        return await self.engine.update_weights(weights, version=version)

    async def abort(self, rid: str | None = None) -> None:
        await self.engine.abort(rid)

    async def health(self) -> bool:
        if not await self.engine.health():
            return False
        counter, now = self._counter(), time.monotonic()
        if counter != self._progress[0] or not self._inflight:
            self._progress = (counter, now)
            return True
        return now - self._progress[1] < self.hang_timeout

    async def release_memory(self) -> None:
        await self.engine.release_memory()

    async def resume_memory(self) -> None:
        await self.engine.resume_memory()

    def weight_version(self) -> int:
        return self.engine.weight_version

    async def join_broadcast(self, address: str, port: int, rank: int, world_size: int, backend: str) -> None:
        from agentrl.cluster.weight_broadcast import BroadcastGroup

        self.group = await asyncio.to_thread(BroadcastGroup, address, port, rank, world_size, backend)

    async def receive_broadcast(self, meta: list, version: int) -> int:
        from agentrl.cluster.weight_broadcast import receive_weights

        weights = await asyncio.to_thread(receive_weights, self.group, meta, self.engine.device)
        return await self.engine.update_weights(weights, version=version)

    def where(self) -> dict[str, Any]:
        """Host, process id and device (for logs and tests)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.engine.device)}

    def _counter(self) -> int:
        s = self.engine.stats
        return s.steps + s.prefills


class RayEngine:
    """Driver-side :class:`~agentrl.engine.base.Engine` over a :class:`RayEngineActor`."""

    def __init__(self, actor: Any, *, name: str = "engine") -> None:
        self.actor = actor
        self.name = name
        self._version = 0

    @classmethod
    def spawn(cls, model_path: str, *, options: dict[str, Any] | None = None, name: str = "engine",
              **actor_kwargs: Any) -> "RayEngine":
        """Start an actor (``options``: Ray's ``num_gpus``, ``num_cpus``, ``scheduling_strategy``...);
        ``actor_kwargs`` go to :class:`RayEngineActor`. Returns at once; :meth:`ready` waits."""
        import ray

        # ray's overloads of ray.remote omit the actor option max_concurrency
        remote = ray.remote(max_restarts=0, max_concurrency=1000)(RayEngineActor)  # type: ignore[call-overload]
        actor = remote.options(**(options or {})).remote(model_path, **actor_kwargs)
        return cls(actor, name=name)

    async def ready(self) -> "RayEngine":
        """Wait until the actor has loaded its model."""
        self._version = await self._call(self.actor.weight_version.remote())
        return self

    @property
    def weight_version(self) -> int:
        return self._version

    async def generate(self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None) -> Completion:
        return await self._call(self.actor.generate.remote(list(input_ids), sampling, rid))

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        self._version = int(await self._call(self.actor.update_weights.remote(weights, version)))
        return self._version

    async def abort(self, rid: str | None = None) -> None:
        await self._call(self.actor.abort.remote(rid))

    async def health(self) -> bool:
        try:
            return bool(await self._call(self.actor.health.remote()))
        except EngineError:
            return False

    async def join_broadcast(self, address: str, port: int, rank: int, world_size: int, backend: str) -> None:
        await self._call(self.actor.join_broadcast.remote(address, port, rank, world_size, backend))

    async def receive_broadcast(self, meta: list, version: int) -> int:
        self._version = int(await self._call(self.actor.receive_broadcast.remote(meta, version)))
        return self._version

    async def release_memory(self) -> None:
        await self._call(self.actor.release_memory.remote())

    async def resume_memory(self) -> None:
        await self._call(self.actor.resume_memory.remote())

    async def close(self) -> None:
        """Kill the actor (its bundle's resources go back to the placement group)."""
        import ray

        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # already gone
            log.debug("killing %s: %s", self.name, exc)

    async def _call(self, ref: Any) -> Any:
        import ray

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError:
            raise  # the actor's own exception (an EngineError, an InvalidRequest...), re-raised as that type
        except ray.exceptions.RayError as exc:  # the actor died, was killed, or its node is gone
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
