"""Where the training loop gets its rollouts: on demand (synchronous) or one step ahead (async).

:class:`RolloutStream` is the loop's producer/consumer. With ``--max-staleness 0`` it generates
rollout ``k`` when the loop asks for it, exactly as a plain loop would. With
``--max-staleness s > 0`` a producer task generates rollout ``k + 1`` while the trainer trains on
``k`` (on a worker thread, so the event loop keeps serving episodes):

* **bound**: rollout ``r`` may start only once rollout ``r - s - 1`` is trained and its weights
  synced, so no sample is more than ``s`` weight versions old when it is trained on; a group
  whose oldest turn is older anyway (``current_version - min(sample.weight_versions) > s``) is
  dropped and counted (``async/dropped_stale``).
* **next rollout**: ``--next-rollout-at F`` also waits until at most a fraction ``F`` of rollout
  ``r - 1``'s episodes are unfinished: 0 (default) once it has finished, so rollouts generate one
  after another; 1 at once, so the new rollout's episodes fill the engine beside the previous
  one's long tail (requests carry their rollout index as priority: the older rollout's turns go first).
* **partial rollouts**: each weight sync interrupts the turns in flight (see
  :mod:`agentrl.rollout.async_partial`): they continue under the new weights (``--partial-rollouts``),
  the sync waits for them (``--no-partial-rollouts``), or they go on through it
  (``--in-flight-weight-updates``).
* **one GPU**: ``--trainer-sms N`` runs the trainer thread's kernels on N SMs so the engine's
  decode steps keep the rest (:mod:`agentrl.utils.sm_share`).
* **metrics** per step: ``async/staleness_mean``, ``async/staleness_max`` (over kept samples, in
  weight versions), ``async/dropped_stale`` (groups), ``async/generate_s`` (the rollout's wall time, start to last
  episode), ``async/overlap_s`` (seconds of this
  rollout's generation that ran before the trainer asked for it, i.e. behind earlier steps), ``async/wait_s`` (seconds the trainer
  waited for it), ``async/resumed_turns``, ``async/carried_turns``, ``async/interrupt_wait_s``.

Every rollout draws its prompts and seeds from its index (``rollout_seed``), so sync and async
runs see the same prompts and sampling seeds; only the weights that sample them differ (one
exception: prompts drawn to replace groups that filters dropped come from the shared stream in
the order the overlapping rollouts ask for them). The
trainer gets the groups ordered by group id, not by completion time, so the same samples give the
same update however the requests were scheduled (several engines, retries, concurrency). A
checkpoint stores the data position *before* the prefetched rollout, so ``--load`` replays it.

Ctrl-C (SIGINT) or SIGTERM (what schedulers send before they kill a job): the first finishes the
current step, saves a checkpoint (with ``--save``) and ends the run (``stopping`` names the signal);
the second raises :class:`Interrupted` at once. Outside the stream (loading, the first evaluation)
:func:`stop_signals` stops the run at the end of the loading step (or at once, on a second signal).

On exit the stream stops the producer, restores the signal handlers, and closes what the run
started: the engine (its KV cache and worker thread), or with ``--use-ray`` the actors and the
placement group.

Example (the loop, abridged)::

    async with RolloutStream(c, cfg, start) as rollouts:
        for rollout_id in range(start, cfg.num_rollout):
            result = await rollouts.next(rollout_id)
            ...
            metrics |= await rollouts.run(c.trainer.train_step, batch)
            await rollouts.sync_weights(out / "weights")
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import logging
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentrl.engine.base import Closable, OnDevice, ReleasesMemory, ReportsMetrics, request_priority
from agentrl.rollout import RolloutProgress, RolloutResult
from agentrl.rollout.async_partial import InterruptibleEngine
from agentrl.sync import sync_weights
from agentrl.types import Group

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a run: Ctrl-C, and the SIGTERM schedulers send before they kill a job."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped at once by ``signum`` (a second Ctrl-C or SIGTERM, or one before the first rollout)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], None]]:
    """Ctrl-C and SIGTERM while a run loads (the model, the engine, the first evaluation): the first is recorded and
    the run stops at the next safe point, the returned check (a signal raised inside an import would leave
    half-imported modules behind); a second raises :class:`Interrupted` at once. Main thread only; the handlers
    before are restored on exit."""
    pending: list[int] = []

    def check() -> None:
        if pending:
            raise Interrupted(pending[0])

    def on_signal(signum: int, frame: Any) -> None:
        if pending:
            raise Interrupted(signum)
        pending.append(signum)
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning("%s: stopping once this loading step is done (%s again to stop now)", what, what)

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield check
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def sample_staleness(group: Group, version: int) -> list[int]:
    """Weight versions between ``version`` and each sample's oldest turn (samples that
    generated nothing are left out)."""
    return [version - min(s.weight_versions) for s in group.samples if s.weight_versions]


def drop_stale(groups: list[Group], version: int, max_staleness: int) -> tuple[list[Group], int, list[int]]:
    """Keep groups whose every sample is at most ``max_staleness`` versions old.

    Returns ``(kept, number dropped, staleness of each kept sample)``.

    Example::

        >>> from agentrl.types import Sample
        >>> g = lambda i, v: Group(i, [Sample(group_id=i, weight_versions=v)])
        >>> kept, dropped, ages = drop_stale([g(0, [3, 4]), g(1, [1])], version=4, max_staleness=1)
        >>> [x.group_id for x in kept], dropped, ages
        ([0], 1, [1])
    """
    kept, ages, dropped = [], [], 0
    for group in groups:
        age = sample_staleness(group, version)
        if age and max(age) > max_staleness:
            dropped += 1
        else:
            kept.append(group)
            ages += age
    return kept, dropped, ages


class RolloutStream:
    """The loop's source of rollouts and its way of training and syncing around them.

    Args:
        c: the run's components; in async mode ``c.interruptible`` is the rollout's engine, which
            weight syncs interrupt (the builders make it: ``agentrl.components.build_interruptible``),
            and ``c.sampler`` is wrapped for checkpoints while the stream is open.
        cfg: the run config (``max_staleness``, ``partial_rollouts``, ``use_ray``, ``colocate``...).
        start: the first rollout index of this run (after ``--load``).
        asynchronous: run the producer task, the trainer's worker thread and the interruptible engine;
            default: when ``--max-staleness`` > 0. At ``--max-staleness 0`` they then give exactly the
            synchronous loop's weights and metrics (``tests/cluster/test_async_loop.py`` checks it).
    """

    def __init__(self, c: Any, cfg: Any, start: int, *, asynchronous: bool | None = None) -> None:
        self.c, self.cfg, self.start = c, cfg, start
        self.max_staleness = int(cfg.asynchrony.max_staleness)
        self.asynchronous = self.max_staleness > 0 if asynchronous is None else asynchronous
        self.stopping: str | None = None
        """The signal's name (``SIGINT``: Ctrl-C, or ``SIGTERM``) once one arrived: the loop saves a checkpoint
        after this step and ends."""
        self.version = int(c.engine.weight_version)
        self._sampler = c.sampler
        self._sampler_states: dict[int, dict] = {}
        self._current = start - 1
        self._finished = start - 1
        self._results: dict[int, asyncio.Future] = {}
        self._spans: dict[int, tuple[float, float]] = {}
        self._launched = start - 1
        """The last rollout the producer started."""
        self._unfinished: dict[int, RolloutProgress] = {}
        """Unfinished episodes of the rollouts being generated (when to start the next one)."""
        self._asked: dict[int, float] = {}
        self._producer: asyncio.Task | None = None
        self._failed = False
        self._progress: asyncio.Condition | None = None
        self._executor: cf.ThreadPoolExecutor | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._released = False
        self._release_for_training = bool(cfg.cluster.use_ray and cfg.engine.colocate and not self.asynchronous)
        self.engine: InterruptibleEngine | None = None
        if self.asynchronous and cfg.asynchrony.trainer_sms and not cfg.cluster.use_ray:  # a clear error now, not in the worker
            from agentrl.utils.sm_share import confined_stream

            trainer_device = getattr(c.trainer, "device", "cpu")
            confined_stream(trainer_device, cfg.asynchrony.trainer_sms)
            engine_device = c.engine.device if isinstance(c.engine, OnDevice) else None
            if engine_device is not None and _same_gpu(engine_device, trainer_device) is False:
                log.warning("--trainer-sms %d: the engine is on %s and the trainer on %s; confining the trainer "
                            "only helps when they share a GPU", cfg.asynchrony.trainer_sms, engine_device, trainer_device)
        if self.asynchronous:
            if c.interruptible is None or c.rollout.engine is not c.interruptible:
                raise ValueError(f"--max-staleness {self.max_staleness}: weight syncs interrupt the rollout's turns, "
                                 "so the rollout must run on components.interruptible, an InterruptibleEngine "
                                 "(agentrl.components.build_interruptible)")
            self.engine = c.interruptible
            c.sampler = _CheckpointSampler(self)
            if not cfg.train.use_tis:
                log.warning("--max-staleness %d without --use-tis: samples from older weights are trained on "
                            "as if on-policy; add --use-tis to correct them", self.max_staleness)

    # --- the loop's calls ----------------------------------------------------------------------

    async def next(self, rollout_id: int) -> RolloutResult:
        """Rollout ``rollout_id``: generated now (sync) or taken from the producer (async)."""
        self._mark_finished(rollout_id - 1)
        self._current = rollout_id
        if not self.asynchronous:
            return await self._generate(rollout_id)
        self._asked[rollout_id] = time.perf_counter()
        self._ensure_producer()
        future = await self._result_future(rollout_id)
        result: RolloutResult = await future
        self._results.pop(rollout_id, None)
        return self._account(rollout_id, result)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a trainer call: inline when synchronous and local; on a worker thread otherwise
        (async: the event loop keeps serving episodes; Ray: the call waits on a remote actor)."""
        if self._release_for_training and not self._released:
            if isinstance(self.c.engine, ReleasesMemory):
                await self.c.engine.release_memory()
            self._released = True
        if not (self.asynchronous or self.cfg.cluster.use_ray):
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), functools.partial(_synced, fn, *args, **kwargs))

    async def sync_weights(self, staging_dir: str | Path) -> int:
        """Push the trainer's weights to the engine (interrupting turns in flight when async)."""
        if self._released:
            if isinstance(self.c.engine, ReleasesMemory):
                await self.c.engine.resume_memory()
            self._released = False
        if self.engine is None:
            version = await sync_weights(self.c.engine, self.c.trainer, staging_dir=staging_dir)
        else:
            async with self.engine.interrupted():
                version = await sync_weights(self.c.engine, self.c.trainer, staging_dir=staging_dir)
        self.version = int(version)
        self._mark_finished(self._current)
        return version

    async def __aenter__(self) -> "RolloutStream":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                previous = signal.signal(sig, self._on_signal)
                self._previous_handlers[sig] = signal.SIG_DFL if previous is None else previous
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sig, previous in self._previous_handlers.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous_handlers = {}
        if self._producer is not None:
            if self.engine is not None:
                await self.engine.abort()
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
        if self.asynchronous:
            self.c.sampler = self._sampler
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        close = getattr(self.c, "close", None)  # Ray actors and placement group (agentrl.cluster.build)
        if close is not None:
            await close()
        elif isinstance(self.c.engine, Closable):
            await self.c.engine.close()  # its KV cache and worker thread: a later run in this process needs the memory

    # --- producer ------------------------------------------------------------------------------

    async def _generate(self, rollout_id: int) -> RolloutResult:
        from agentrl.loop import rollout_seed

        cfg, c = self.cfg, self.c
        self._sampler_states[rollout_id] = self._sampler.state_dict()
        start = time.perf_counter()
        # the embedded engine admits an older rollout's turns first: they are not queued behind a newer
        # rollout's, which takes the slots the older one's long tail leaves free
        with request_priority(rollout_id):
            result = await c.rollout.generate(self._sampler.next_batch, cfg.rollout_batch_size,
                                              max_prompts=int(cfg.filters.over_sampling_factor * cfg.rollout_batch_size),
                                              first_group_id=rollout_id * 1_000_000,
                                              sampling_seed=rollout_seed(cfg, rollout_id),
                                              progress=self._unfinished.setdefault(rollout_id, RolloutProgress()))
        self._unfinished.pop(rollout_id - 2, None)
        self._spans[rollout_id] = (start, time.perf_counter())
        # groups finish in an order that depends on timing (and, on Ray, on which engine served them);
        # the trainer sees them by group id, so the same samples give the same update
        result.groups.sort(key=lambda g: g.group_id)
        if isinstance(c.engine, ReportsMetrics):
            result.metrics |= c.engine.metrics()
        return result

    async def _produce(self) -> None:
        """Start each rollout as soon as the staleness bound allows and the previous one is down to a
        fraction of its episodes (``--next-rollout-at``; 0: finished, 1: no wait, the new rollout fills
        the engine beside the previous one's long tail)."""
        running: set[asyncio.Task] = set()
        try:
            for rollout_id in range(self.start, self.cfg.num_rollout):
                cond = self._condition()
                async with cond:  # the staleness bound: rollout r waits for r - s - 1 to be trained
                    await cond.wait_for(lambda: self._failed or self._finished >= rollout_id - self.max_staleness - 1)  # noqa: B023 (awaited in this iteration)
                previous = self._unfinished.get(rollout_id - 1)
                if previous is not None and self.cfg.asynchrony.next_rollout_at < 1:  # and for r - 1 to finish (or reach its tail)
                    await previous.wait_until(int(self.cfg.asynchrony.next_rollout_at * self.cfg.episodes_per_rollout))
                self._unfinished.setdefault(rollout_id, RolloutProgress())  # before its task runs: r + 1 waits on it
                if self._failed:  # a rollout failed: start no more (those running finish; the loop sees the error)
                    break
                future = await self._result_future(rollout_id)
                task = asyncio.get_running_loop().create_task(self._generate_into(rollout_id, future))
                self._launched = rollout_id
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*list(running))
        except asyncio.CancelledError:  # the run is ending
            for task in list(running):
                task.cancel()
            await asyncio.gather(*list(running), return_exceptions=True)
            raise

    async def _generate_into(self, rollout_id: int, future: asyncio.Future) -> None:
        try:
            result = await self._generate(rollout_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:  # the loop sees it when it asks for this rollout; no new rollouts start
            if not future.done():
                future.set_exception(exc)
            self._failed = True
            await self._wake()
            return
        if not future.done():
            future.set_result(result)

    def _account(self, rollout_id: int, result: RolloutResult) -> RolloutResult:
        kept, dropped, ages = drop_stale(result.groups, self.version, self.max_staleness)
        if dropped:
            log.warning("rollout %d: dropped %d group(s) older than %d weight versions", rollout_id, dropped,
                        self.max_staleness)
        result.groups = kept
        start, end = self._spans.get(rollout_id, (0.0, 0.0))
        asked = self._asked.pop(rollout_id, end)
        m = {"async/staleness_mean": statistics.fmean(ages) if ages else 0.0,
             "async/staleness_max": float(max(ages, default=0)),
             "async/dropped_stale": float(dropped),
             "async/generate_s": max(0.0, end - start),
             "async/overlap_s": max(0.0, min(end, asked) - start),
             "async/wait_s": max(0.0, end - asked)}
        assert self.engine is not None  # set in __init__ when the loop is asynchronous, the only case that gets here
        stats = self.engine.stats
        m |= {"async/resumed_turns": float(stats.resumed), "async/resumed_tokens": float(stats.resumed_tokens),
              "async/carried_turns": float(stats.carried),
              "async/interrupt_wait_s": stats.wait_s}
        result.metrics |= m
        return result

    # --- internals -----------------------------------------------------------------------------

    def _ensure_producer(self) -> None:
        if self._producer is None:
            self._producer = asyncio.get_running_loop().create_task(self._produce())
            self._producer.add_done_callback(self._producer_ended)

    def _producer_ended(self, task: asyncio.Task) -> None:
        """A producer that dies of an error fails every rollout still awaited (the loop would wait forever)."""
        error = self._producer_error()
        if error is None:
            return
        for rollout_id, future in self._results.items():
            if rollout_id > self._launched and not future.done():  # those launched finish on their own
                future.set_exception(error)
        self._failed = True

    def _producer_error(self) -> BaseException | None:
        producer = self._producer
        if producer is None or not producer.done() or producer.cancelled():
            return None
        return producer.exception()

    async def _result_future(self, rollout_id: int) -> asyncio.Future:
        if rollout_id not in self._results:
            future = self._results[rollout_id] = asyncio.get_running_loop().create_future()
            error = self._producer_error()
            if error is not None and rollout_id > self._launched:
                future.set_exception(error)
        return self._results[rollout_id]

    def _condition(self) -> asyncio.Condition:
        if self._progress is None:
            self._progress = asyncio.Condition()
        return self._progress

    def _mark_finished(self, rollout_id: int) -> None:
        if rollout_id <= self._finished:
            return
        self._finished = rollout_id
        self._sampler_states = {r: s for r, s in self._sampler_states.items() if r > rollout_id}
        if self.asynchronous:
            asyncio.ensure_future(self._wake())

    async def _wake(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def _worker(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            device = getattr(self.c.trainer, "device", None)
            sms = self.cfg.asynchrony.trainer_sms if self.asynchronous and not self.cfg.cluster.use_ray else None
            self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="agentrl-train",
                                                   initializer=_bind_device, initargs=(device, sms))
        return self._executor

    def checkpoint_sampler_state(self) -> dict:
        """The data position to save after the step in progress: before the next rollout's draws
        (the producer may have drawn them already)."""
        return self._sampler_states.get(self._current + 1) or self._sampler.state_dict()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:  # the second: stop now, through the handler there was before the stream
            previous = self._previous_handlers.get(signum, signal.SIG_DFL)
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
            if callable(previous):
                previous(signum, frame)
            raise Interrupted(signum)  # the previous disposition was SIG_DFL or SIG_IGN (or returned): stop now
        self.stopping = signal.Signals(signum).name
        what = "Ctrl-C" if signum == signal.SIGINT else self.stopping
        then = "saving a checkpoint and stopping" if self.cfg.checkpoint.save else "stopping (no --save: no checkpoint)"
        log.warning("%s: finishing this rollout, %s (%s again to stop now)", what, then, what)


class _CheckpointSampler:
    """``c.sampler`` during an async run: draws go to the real sampler, but ``state_dict`` is
    the position before the prefetched rollout (what a checkpoint must store)."""

    def __init__(self, stream: RolloutStream) -> None:
        self._stream = stream

    def state_dict(self) -> dict:
        return self._stream.checkpoint_sampler_state()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream._sampler, name)


def _bind_device(device: Any, sms: int | None = None) -> None:
    """The trainer's thread: its device (threads start on CUDA device 0) and a stream of its own.

    The engine decodes on the default stream and copies each step's tokens to the host; were
    training kernels queued on that stream too, every decode step would wait for them. With
    ``sms`` (``--trainer-sms``) the stream's kernels run on that many SMs only
    (:func:`~agentrl.utils.sm_share.confined_stream`), leaving the rest to the engine's decode steps.
    """
    import torch

    if device is not None and torch.device(device).type == "cuda":
        device = torch.device(device)
        if device.index is None:  # plain "cuda": the current device of the process
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        if sms:
            from agentrl.utils.sm_share import confined_stream

            torch.cuda.set_stream(confined_stream(device, sms))
            log.info("trainer kernels confined to %d SMs of %s", sms, device)
        else:
            torch.cuda.set_stream(torch.cuda.Stream(device=device))


def _same_gpu(a: Any, b: Any) -> bool | None:
    """Whether two CUDA devices are the same GPU (a plain ``cuda`` is the current device); None
    unless both are CUDA devices."""
    import torch

    a, b = torch.device(a), torch.device(b)
    if a.type != "cuda" or b.type != "cuda":
        return None
    current = torch.cuda.current_device() if a.index is None or b.index is None else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _synced(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a trainer call and wait for its kernels (the engine reads the weights from another
    stream right after, e.g. the optimizer step's writes)."""
    import torch

    result = fn(*args, **kwargs)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.current_stream().synchronize()
    return result

