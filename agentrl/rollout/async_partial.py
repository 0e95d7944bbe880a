"""Partial rollouts: what happens to generations in flight when the weights change under them.

In asynchronous training the engine gets new weights while episodes of the next rollout are
mid-turn. :class:`InterruptibleEngine` wraps the rollout's engine and, around each weight update
(``async with engine.interrupted(): ...``), does one of two things:

* ``resume=True`` (partial rollouts, the default): abort the turns in flight, wait until they
  have returned their tokens so far, let the update run, then continue each turn *under the new
  weights* from where it stopped (the prompt plus the tokens already generated, with the
  remaining token budget). The old-weight tokens are kept with their rollout logprobs, so the
  trainer sees exactly what was sampled; truncated importance sampling (``--use-tis``, Yao et al.
  2025) reweights those tokens by ``min(pi_train / pi_rollout, C)``. The turn reports the oldest
  weight version it used, so staleness is counted from its oldest token.
* ``resume=False``: hold new turns and wait until the turns in flight finish before the update
  runs (no turn mixes weights; the update waits for the slowest turn).
* ``in_flight=True`` (``--in-flight-weight-updates``): neither abort nor wait. The engine loads
  the new weights between two decode steps and the turns in flight go on, keeping the keys and
  values their earlier tokens got under the old weights (as PipelineRL does). Nothing is
  prefilled again, which a resumed turn must do for its whole context; the tokens after the
  update come from the new weights over an old-weight cache, and their rollout logprobs are
  what was sampled, so ``--use-tis`` corrects them as it corrects any stale token. Needs an
  engine that updates between decode steps (the embedded engine, in process or as a Ray actor).

Why resume rather than discard: with long-tailed response lengths, the turns in flight at an
update are mostly the long ones; throwing them away wastes the most tokens, and waiting for them
stalls the trainer. Measured in ``docs/scaling.md`` (``bench/async_speedup.py``).

Not covered: a stop *string* split across the interruption is not matched (each piece is
checked on its own; stop token ids are unaffected).

Example::

    >>> import asyncio
    >>> from agentrl.engine import SamplingParams
    >>> from agentrl.testing import FakeEngine
    >>> engine = InterruptibleEngine(FakeEngine(responder=lambda ids, sp: [4, 5]))
    >>> asyncio.run(engine.generate([1, 2], SamplingParams(max_new_tokens=8))).token_ids
    [4, 5]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agentrl.engine.base import Completion, Engine, SamplingParams

log = logging.getLogger(__name__)

_SEED_STRIDE = 104_729
"""The n-th continuation of a seeded turn samples with ``seed + n * _SEED_STRIDE`` (a fresh stream)."""


@dataclass
class InterruptStats:
    interrupts: int = 0
    """Weight updates that interrupted (or waited for) turns in flight."""
    resumed: int = 0
    """Turns continued under newer weights after an abort."""
    resumed_tokens: int = 0
    """Old-weight tokens kept in continued turns."""
    carried: int = 0
    """Turns in flight that went on through a weight update (``in_flight``), counted per update."""
    wait_s: float = 0.0
    """Seconds weight updates waited for turns in flight to return (abort) or finish (drain)."""


class InterruptibleEngine:
    """An :class:`~agentrl.engine.base.Engine` whose turns in flight can be paused around a
    weight update (see the module doc). Other calls go to the wrapped engine unchanged."""

    def __init__(self, engine: Engine, *, resume: bool = True, in_flight: bool = False) -> None:
        self.engine = engine
        self.resume = resume
        self.in_flight = in_flight
        self.stats = InterruptStats()
        self._inflight: set[str] = set()
        """rids of the pieces now at the engine."""
        self._interrupted: set[str] = set()
        self._open: asyncio.Event | None = None
        self._idle: asyncio.Condition | None = None

    @property
    def weight_version(self) -> int:
        return self.engine.weight_version

    async def generate(self, input_ids: list[int], sampling: SamplingParams, *, rid: str | None = None) -> Completion:
        rid = rid or uuid.uuid4().hex
        prompt = list(input_ids)
        tokens: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        for piece in itertools.count():
            await self._gate().wait()
            budget = sampling.max_new_tokens - len(tokens)
            if budget <= 0:
                return Completion(tokens, logprobs, "length", min(versions), len(prompt))
            sent = rid if piece == 0 else f"{rid}.part{piece}"
            params = sampling if piece == 0 else sampling.replace(
                max_new_tokens=budget, seed=None if sampling.seed is None else sampling.seed + piece * _SEED_STRIDE)
            self._inflight.add(sent)
            try:
                c = await self.engine.generate(prompt + tokens, params, rid=sent)
            finally:
                self._inflight.discard(sent)
                await self._notify()
            tokens += c.token_ids
            logprobs += c.logprobs
            versions.append(c.weight_version)
            if c.finish_reason == "abort" and sent in self._interrupted:
                self._interrupted.discard(sent)
                self.stats.resumed += 1
                self.stats.resumed_tokens += len(c.token_ids)
                continue
            return Completion(tokens, logprobs, c.finish_reason, min(versions), len(prompt), c.matched_stop)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def interrupted(self) -> AsyncIterator[None]:
        """Hold new turns; abort (``resume``) or wait for (drain) the turns in flight; run the
        body (the weight update); then let every held or aborted turn go on. With ``in_flight``
        only run the body: the turns go on through it."""
        if self.in_flight:
            if self._inflight:
                self.stats.interrupts += 1
                self.stats.carried += len(self._inflight)
            yield
            return
        gate = self._gate()
        gate.clear()
        start = time.perf_counter()
        try:
            if self._inflight:
                self.stats.interrupts += 1
                if self.resume:
                    targets = list(self._inflight)
                    self._interrupted.update(targets)
                    await asyncio.gather(*(self.engine.abort(r) for r in targets))
                cond = self._condition()
                async with cond:
                    await cond.wait_for(lambda: not self._inflight)
            self.stats.wait_s += time.perf_counter() - start
            yield
        finally:
            self._interrupted.clear()
            gate.set()

    async def abort(self, rid: str | None = None) -> None:
        """Abort for good (not resumed): one turn by its rid, or every turn in flight."""
        targets = list(self._inflight) if rid is None else [r for r in self._inflight if r == rid or
                                                             r.startswith(f"{rid}.part")]
        await asyncio.gather(*(self.engine.abort(r) for r in targets))

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        async with self.interrupted():
            return await self.engine.update_weights(weights, version=version)

    async def health(self) -> bool:
        return await self.engine.health()

    # --- internals ------------------------------------------------------------------------------

    def _gate(self) -> asyncio.Event:
        if self._open is None:
            self._open = asyncio.Event()
            self._open.set()
        return self._open

    def _condition(self) -> asyncio.Condition:
        if self._idle is None:
            self._idle = asyncio.Condition()
        return self._idle

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()
