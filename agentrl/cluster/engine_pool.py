"""Several engines behind one :class:`~agentrl.engine.base.Engine`: routing, health, restarts.

:class:`EnginePool` sends each ``generate`` to the least-loaded healthy engine. When an engine
fails (its ``generate`` raises an :class:`~agentrl.engine.base.EngineError` or a connection
error, it aborts a request nobody aborted, or it stops answering health checks), the pool

1. marks it dead and moves the requests it was serving to the other engines (same prompt, same
   sampling seed: the episode sees one completion, never a failure, never a duplicate);
2. restarts it with ``factory(index)`` (a new process, actor or server), pushes the current
   weights and version to it, and puts it back in rotation.

Requests whose own input is wrong (:class:`~agentrl.engine.embedded.InvalidRequest`,
``ValueError``, ``TypeError``) are not retried: they fail the same way everywhere.

The pool keeps the last weights it was given so a restarted engine can be brought up to date:
a path or a Ray object reference as given, a mapping by reference, an iterator of
``(name, tensor)`` pairs (``trainer.weights()``) as CPU copies (an iterator can be read once).

Nothing here imports Ray: the members may be in-process engines, HTTP clients or the Ray
proxies of :mod:`agentrl.cluster.ray_engine`.

Example::

    >>> import asyncio
    >>> from agentrl.engine import EngineError, SamplingParams
    >>> from agentrl.testing import FakeEngine
    >>> broken = FakeEngine(responder=lambda ids, sp: [5], fail_with=EngineError("gone"))
    >>> pool = EnginePool([broken, FakeEngine(responder=lambda ids, sp: [7])],
    ...                   factory=lambda i: FakeEngine(responder=lambda ids, sp: [9]))
    >>> async def main():
    ...     outs = [(await pool.generate([1], SamplingParams())).token_ids for _ in range(3)]
    ...     await pool.wait_healthy()
    ...     return outs, pool.stats.restarts
    >>> asyncio.run(main())
    ([[7], [7], [7]], 1)
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentrl.engine.base import Closable, Completion, Engine, EngineError, ReleasesMemory, SamplingParams

log = logging.getLogger(__name__)

EngineFactory = Callable[[int], "Engine | Awaitable[Engine]"]
"""``factory(index) -> Engine`` (or a coroutine): a fresh replacement for engine ``index``."""

REQUEST_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError)
"""Errors that are the request's fault (the embedded engine's ``InvalidRequest`` is a
``ValueError``): raised to the caller, not retried."""


@runtime_checkable
class CollectiveWeights(Protocol):
    """Weights that reach several engines in one collective (a broadcast group that must be formed
    with all of them: :class:`~agentrl.cluster.weight_broadcast.BroadcastWeights`), not one
    ``update_weights`` call per engine."""

    async def push_to(self, engines: list[Any], version: int) -> None:
        """Load the weights on ``engines`` as weight version ``version``."""
        ...


@dataclass
class PoolStats:
    """Counters since the pool was made (logged as ``engine/...`` metrics)."""

    requests: int = 0
    retries: int = 0
    """Requests sent again after their engine failed."""
    failures: int = 0
    """Times an engine was found dead or hung."""
    restarts: int = 0
    """Engines replaced by the factory (or found healthy again) and brought up to date."""
    restart_errors: int = 0


@dataclass(eq=False)
class _Slot:
    index: int
    engine: Any
    state: str = "up"
    """up | down (dead, waiting for a restart) | failed (gave up restarting)."""
    load: int = 0
    dead: asyncio.Event = field(default_factory=asyncio.Event)
    down_since: float = 0.0
    restarts: int = 0
    reason: str = ""


class _EngineDied(Exception):
    """Internal: the engine serving a request was marked dead meanwhile."""


class EnginePool:
    """An :class:`~agentrl.engine.base.Engine` over ``engines``, with failover and restarts.

    Args:
        engines: the members (any ``Engine``).
        factory: builds a replacement for a dead engine (``factory(index)``, may be async);
            without one, a dead engine stays out of rotation until a health check passes again
            (e.g. an SGLang server restarted by someone else).
        health_interval: seconds between health checks of every engine (0: no checks; failures
            are still noticed when requests fail).
        health_timeout: a health check that takes longer than this marks the engine hung.
        max_attempts: tries of one request before its error is raised.
        max_restarts: restarts of one engine before the pool gives up on it.
        restart_backoff: seconds before the first restart attempt; doubles on each failure.
        wait_timeout: how long a request waits for some engine to be healthy before failing.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        factory: EngineFactory | None = None,
        health_interval: float = 10.0,
        health_timeout: float = 60.0,
        max_attempts: int = 5,
        max_restarts: int = 10,
        restart_backoff: float = 0.5,
        wait_timeout: float = 600.0,
    ) -> None:
        if not engines:
            raise ValueError("EnginePool needs at least one engine; got none")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1; got {max_attempts}")
        self._slots = [_Slot(i, e) for i, e in enumerate(engines)]
        self.factory = factory
        self.health_interval, self.health_timeout = health_interval, health_timeout
        self.max_attempts, self.max_restarts = max_attempts, max_restarts
        self.restart_backoff, self.wait_timeout = restart_backoff, wait_timeout
        self.stats = PoolStats()
        self._version = max(int(e.weight_version) for e in engines)
        self._weights: Any = None
        self._have_weights = False
        self._turn = itertools.count()
        self._inflight: dict[str, tuple[_Slot, str]] = {}
        self._aborted: set[str] = set()
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task] = set()
        self._monitor: asyncio.Task | None = None
        self._closed = False

    # --- the Engine protocol -----------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._version

    @property
    def engines(self) -> list[Any]:
        """The current members (a restarted engine replaces its predecessor here)."""
        return [s.engine for s in self._slots]

    async def generate(self, input_ids: list[int], sampling: SamplingParams, *, rid: str | None = None) -> Completion:
        """Serve on the least-loaded healthy engine; on an engine failure, again on another."""
        self._ensure_monitor()
        rid = rid or uuid.uuid4().hex
        self.stats.requests += 1
        last_error = ""
        tried: set[int] = set()
        try:
            for attempt in range(self.max_attempts):
                if rid in self._aborted:
                    return Completion([], [], "abort", self._version, len(input_ids))
                slot = await self._pick(avoid=tried)
                tried.add(slot.index)
                sent = rid if attempt == 0 else f"{rid}.retry{attempt}"
                self._inflight[rid] = (slot, sent)
                slot.load += 1
                try:
                    result = await self._serve(slot, slot.engine.generate(list(input_ids), sampling, rid=sent))
                except _EngineDied:
                    last_error = f"engine {slot.index} died while serving it ({slot.reason})"
                except REQUEST_ERRORS:
                    raise
                except Exception as exc:  # a dead server, a killed actor, a broken step
                    last_error = f"engine {slot.index}: {type(exc).__name__}: {exc}"
                    self._mark_dead(slot, last_error)
                else:
                    if result.finish_reason != "abort" or rid in self._aborted:
                        return result
                    # an abort nobody asked for: the engine is shutting down or was replaced
                    last_error = f"engine {slot.index} aborted the request on its own"
                    await self._check(slot)
                finally:
                    slot.load -= 1
                    self._inflight.pop(rid, None)
                self.stats.retries += 1
                log.info("request %s: %s; retrying (%d/%d)", rid, last_error, attempt + 1, self.max_attempts - 1)
        finally:
            self._aborted.discard(rid)
        raise EngineError(f"request {rid} failed on {self.max_attempts} attempts; last: {last_error}")

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        """Load ``weights`` on every healthy engine; remember them for engines restarted later.

        An engine that fails the update is marked dead (and restarted with these weights).
        Raises :class:`EngineError` when no engine took them.
        """
        if isinstance(weights, Iterator):
            weights = {name: t.detach().to("cpu", copy=True) for name, t in weights}
        new = self._version + 1 if version is None else int(version)
        self._weights, self._version, self._have_weights = weights, new, True
        up = [s for s in self._slots if s.state == "up"]
        if isinstance(weights, CollectiveWeights):  # all engines at once
            try:
                await weights.push_to([s.engine for s in up], new)
            except Exception as exc:
                await self.check_health()  # find the engine that broke it; the next sync re-forms the group
                raise EngineError(f"weight broadcast to version {new} failed: {type(exc).__name__}: {exc}") from exc
            return new
        results = await asyncio.gather(*(self._push(s.engine) for s in up), return_exceptions=True)
        ok = 0
        for slot, result in zip(up, results):
            if isinstance(result, BaseException):
                self._mark_dead(slot, f"weight update failed: {type(result).__name__}: {result}")
            else:
                ok += 1
        if not ok and up:
            raise EngineError(f"weight update to version {new} failed on every engine: "
                              + "; ".join(str(r) for r in results))
        return new

    async def abort(self, rid: str | None = None) -> None:
        targets = list(self._inflight) if rid is None else [rid] if rid in self._inflight else []
        self._aborted.update(targets)
        if rid is None:
            await asyncio.gather(*(_quiet(s.engine.abort(None)) for s in self._slots if s.state == "up"))
            return
        for r in targets:
            slot, sent = self._inflight[r]
            await _quiet(slot.engine.abort(sent))

    async def health(self) -> bool:
        """True when at least one engine is in rotation."""
        return any(s.state == "up" for s in self._slots)

    # --- more -----------------------------------------------------------------------------------

    def health_status(self) -> list[str]:
        """State of each engine: up | down | failed."""
        return [s.state for s in self._slots]

    def metrics(self) -> dict[str, float]:
        """``engine/...`` numbers for the step metrics."""
        return {"engine/healthy": float(sum(s.state == "up" for s in self._slots)),
                "engine/requests": float(self.stats.requests), "engine/retries": float(self.stats.retries),
                "engine/failures": float(self.stats.failures), "engine/restarts": float(self.stats.restarts)}

    async def check_health(self) -> list[str]:
        """Health-check every engine now (restarting dead or hung ones); return the states."""
        await asyncio.gather(*(self._check(s) for s in self._slots))
        return self.health_status()

    async def wait_healthy(self, timeout: float = 600.0) -> None:
        """Wait until no engine is down (restarts done); raise :class:`EngineError` on timeout."""
        deadline = time.monotonic() + timeout
        cond = self._condition()
        async with cond:
            while any(s.state == "down" for s in self._slots):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineError(f"engines still down after {timeout:.0f} s: {self.health_status()}")
                try:
                    await asyncio.wait_for(cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def release_memory(self) -> None:
        """Free every engine's KV cache (colocated training); engines that cannot
        (not :class:`~agentrl.engine.base.ReleasesMemory`) are skipped."""
        await asyncio.gather(*(e.release_memory() for e in self._memory_releasers()))

    async def resume_memory(self) -> None:
        await asyncio.gather(*(e.resume_memory() for e in self._memory_releasers()))

    async def close(self) -> None:
        """Stop health checks and restarts; close the members that can be closed."""
        self._closed = True
        for task in [*self._tasks, *([self._monitor] if self._monitor else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._monitor] if self._monitor else []), return_exceptions=True)
        await asyncio.gather(*(_close(s.engine) for s in self._slots), return_exceptions=True)

    async def __aenter__(self) -> "EnginePool":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- internals ------------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def _pick(self, avoid: AbstractSet[int] = frozenset()) -> _Slot:
        """The least-loaded engine in rotation (ties taken in turn), preferring engines not in
        ``avoid`` (those a retried request already tried); waits while none is in rotation."""
        cond = self._condition()
        deadline = time.monotonic() + self.wait_timeout
        async with cond:
            while True:
                up = [s for s in self._slots if s.state == "up"]
                if up:
                    pool = [s for s in up if s.index not in avoid] or up
                    turn = next(self._turn) % len(pool)
                    return min(pool[turn:] + pool[:turn], key=lambda s: s.load)  # ties go round the pool
                if all(s.state == "failed" for s in self._slots) or self._closed:
                    raise EngineError(f"no engine left: {self.health_status()} (restarts exhausted or pool closed)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineError(f"no healthy engine for {self.wait_timeout:.0f} s: {self.health_status()}")
                try:
                    await asyncio.wait_for(cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def _serve(self, slot: _Slot, coro: Awaitable[Completion]) -> Completion:
        """Await ``coro``, or raise :class:`_EngineDied` as soon as ``slot`` is marked dead."""
        work = asyncio.ensure_future(coro)
        died = asyncio.ensure_future(slot.dead.wait())
        try:
            await asyncio.wait({work, died}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            raise _EngineDied()
        finally:
            for task in (work, died):
                if not task.done():
                    task.cancel()
            if not work.done():
                await asyncio.gather(work, return_exceptions=True)

    def _mark_dead(self, slot: _Slot, reason: str) -> None:
        if slot.state != "up":
            return
        slot.state, slot.reason, slot.down_since = "down", reason, time.monotonic()
        slot.dead.set()
        self.stats.failures += 1
        log.warning("engine %d is down: %s%s", slot.index, reason,
                    "; restarting it" if self.factory else "; waiting for it to pass a health check")
        if self.factory is not None and not self._closed:
            self._spawn(self._restart(slot))
        self._spawn(self._notify())

    async def _restart(self, slot: _Slot) -> None:
        assert self.factory is not None  # started only with a factory
        old = slot.engine
        await asyncio.gather(_close(old), return_exceptions=True)
        delay = self.restart_backoff
        while not self._closed:
            if slot.restarts >= self.max_restarts:
                slot.state = "failed"
                log.error("engine %d: giving up after %d restarts (last failure: %s)", slot.index,
                          slot.restarts, slot.reason)
                await self._notify()
                return
            slot.restarts += 1
            await asyncio.sleep(delay)
            try:
                engine = self.factory(slot.index)
                if inspect.isawaitable(engine):
                    engine = await engine
                await self._push(engine)
            except Exception as exc:
                self.stats.restart_errors += 1
                log.warning("engine %d: restart %d failed: %s: %s", slot.index, slot.restarts,
                            type(exc).__name__, exc)
                delay *= 2
                continue
            await self._bring_up(slot, engine)
            return

    async def _bring_up(self, slot: _Slot, engine: Any) -> None:
        slot.engine, slot.dead, slot.state = engine, asyncio.Event(), "up"
        self.stats.restarts += 1
        log.info("engine %d is back (weight version %d) after %.1f s", slot.index, self._version,
                 time.monotonic() - slot.down_since)
        await self._notify()

    async def _push(self, engine: Any) -> None:
        """Bring ``engine`` to the pool's weights (again if an update arrived meanwhile)."""
        while self._have_weights and engine.weight_version != self._version:
            version = self._version
            if isinstance(self._weights, CollectiveWeights):
                await self._weights.push_to([engine], version)
            else:
                await engine.update_weights(self._weights, version=version)
            if version == self._version:
                return

    async def _check(self, slot: _Slot) -> None:
        if slot.state == "failed":
            return
        try:
            ok = bool(await asyncio.wait_for(slot.engine.health(), self.health_timeout))
            reason = "health check failed"
        except asyncio.TimeoutError:
            ok, reason = False, f"no answer to a health check within {self.health_timeout:g} s (hung)"
        except Exception as exc:
            ok, reason = False, f"health check raised {type(exc).__name__}: {exc}"
        if slot.state == "up" and not ok:
            self._mark_dead(slot, reason)
        elif slot.state == "down" and ok and self.factory is None:
            try:
                await self._push(slot.engine)
            except Exception as exc:
                log.warning("engine %d answers again but took no weights: %s", slot.index, exc)
                return
            await self._bring_up(slot, slot.engine)

    def _ensure_monitor(self) -> None:
        if self._monitor is None and self.health_interval > 0 and not self._closed:
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.health_interval)
            try:
                await self.check_health()
            except Exception:  # never let the watchdog die
                log.exception("engine health check failed")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _memory_releasers(self) -> list[ReleasesMemory]:
        return [s.engine for s in self._slots if s.state == "up" and isinstance(s.engine, ReleasesMemory)]


async def _quiet(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except Exception as exc:
        log.debug("ignored: %s", exc)


async def _close(engine: Any) -> None:
    if isinstance(engine, Closable):
        await engine.close()

