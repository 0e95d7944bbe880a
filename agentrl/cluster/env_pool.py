"""Environments (and the tools they call) in a pool of Ray actors, for CPU-heavy episodes.

With ``--num-env-workers N`` each episode's environment is made inside one of ``N``
:class:`EnvWorker` actors (the least busy) instead of the driver; the episode loop talks to it
through :class:`RemoteEnv`, a :class:`~agentrl.env.TextEnv` whose ``areset``/``astep`` are remote
calls. Sandboxed code execution, retrieval with a local index, simulators: their CPU work then
spreads over the cluster while the driver only moves messages.

A worker that dies fails the episodes it was hosting (``status="failed"``, the run goes on,
the group is filtered and counted as usual) and is replaced for the next episodes.

Example::

    pool = RayEnvPool(4)
    rollout.generate_fn = pool.generate_fn(rollout.generate_fn)   # episodes now run their envs remotely
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.rollout.episode import run_episode

log = logging.getLogger(__name__)

_DEAD = ("ActorDiedError", "RayActorError", "ActorUnavailableError")
"""How a dead worker shows in a failed episode's error."""


class EnvWorker:
    """Runs inside a Ray worker: hosts many environments, each behind a handle."""

    def __init__(self) -> None:
        self._envs: dict[int, TextEnv] = {}
        self._ids = itertools.count()

    async def make(self, env_id: str, max_turns: int | None, kwargs: dict[str, Any]) -> tuple[int, list[dict]]:
        from agentrl.env import make

        env = make(env_id, max_turns=max_turns, **kwargs)
        handle = next(self._ids)
        self._envs[handle] = env
        return handle, env.tool_schemas()

    async def reset(self, handle: int, seed: int | None, options: dict[str, Any] | None) -> Any:
        return await self._envs[handle].areset(seed=seed, options=options)

    async def step(self, handle: int, action: str) -> Any:
        return await self._envs[handle].astep(action)

    async def close(self, handle: int) -> None:
        env = self._envs.pop(handle, None)
        if env is not None:
            env.close()

    def size(self) -> int:
        return len(self._envs)


class RemoteEnv(TextEnv):
    """The driver's view of an environment living in an :class:`EnvWorker`."""

    def __init__(self, actor: Any, handle: int, schemas: list[dict], on_close: Any = None) -> None:
        super().__init__()
        self._actor, self._handle, self._schemas, self._on_close = actor, handle, schemas, on_close

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return await self._actor.reset.remote(self._handle, seed, options)

    async def astep(self, action: str):
        return await self._actor.step.remote(self._handle, action)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def close(self) -> None:
        self._actor.close.remote(self._handle)  # fire and forget; a dead worker has nothing to close
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class RayEnvPool:
    """``num_workers`` :class:`EnvWorker` actors; environments go to the least busy one.

    Args:
        num_workers: actors to start.
        options: Ray actor options of each worker (``num_cpus``...).
    """

    def __init__(self, num_workers: int, *, options: dict[str, Any] | None = None) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1; got {num_workers}")
        self.options = {"num_cpus": 1, **(options or {})}
        self.workers = [self._spawn() for _ in range(num_workers)]
        self.load = [0] * num_workers
        self.replaced = 0

    def _spawn(self) -> Any:
        import ray

        # ray's overloads of ray.remote omit the actor option max_concurrency
        return ray.remote(max_restarts=0, max_concurrency=1000)(EnvWorker).options(**self.options).remote()  # type: ignore[call-overload]

    async def make(self, env_id: str, *, max_turns: int | None = None, **kwargs: Any) -> RemoteEnv:
        """An environment in the least busy worker (a dead worker is replaced, and the call
        tried once more on the replacement)."""
        import ray

        i = min(range(len(self.workers)), key=self.load.__getitem__)
        for attempt in range(2):
            actor = self.workers[i]
            try:
                handle, schemas = await actor.make.remote(env_id, max_turns, kwargs)
                break
            except ray.exceptions.RayActorError:
                if attempt:
                    raise
                self.replace(i, actor)
        self.load[i] += 1

        def release() -> None:
            self.load[i] -= 1

        return RemoteEnv(actor, handle, schemas, on_close=release)

    def replace(self, index: int, dead: Any) -> None:
        """Put a fresh worker in place of ``dead`` (once, however many episodes noticed it)."""
        if self.workers[index] is dead:
            log.warning("environment worker %d died; starting a replacement", index)
            self.workers[index] = self._spawn()
            self.load[index] = 0
            self.replaced += 1

    def generate_fn(self, base: Any = None) -> Any:
        """Wrap a generate function (default :func:`~agentrl.rollout.run_episode`) so its
        episodes run their environment in this pool."""
        base = base or run_episode

        async def generate(engine: Any, template: Any, request: Any, config: Any, *, reward_fn: Any = None):
            env = await self.make(request.env_id, max_turns=config.max_turns, **config.env_kwargs)
            try:
                sample = await base(engine, template, request, config, env=env, reward_fn=reward_fn)
            finally:
                env.close()
            if sample.status == "failed" and any(name in (sample.error or "") for name in _DEAD):
                if env._actor in self.workers:
                    self.replace(self.workers.index(env._actor), env._actor)
            return sample

        return generate

    def close(self) -> None:
        import ray

        for actor in self.workers:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
