"""Continuous batching: one worker thread owns the model and loops prefill -> decode -> finish.

Requests arrive from any thread (the engine's coroutines) into a queue. Between two decode
steps the worker runs pending commands (weight updates, memory release), retires aborted
requests, prefills newly arrived prompts (up to a token budget) into free slots, and then decodes
one token for every running request. Finished requests leave at once; the last running request
moves into the hole so that running requests always occupy slots ``0 .. n-1``.

With a runner that supports mixed steps (``mixed``), admission and the next decode step are one
forward pass instead (:meth:`Scheduler._admit_mixed`): the running rows' next tokens and up to
``prefill_token_budget`` new prompt tokens, taken from the waiting requests in order; a prompt
that does not fit is cut, and its rest goes first in the following steps (one such partial prompt
at a time, kept in slot ``n`` just above the running rows). Requests of the step that share a
prompt prefix (the n samples of one prompt) compute it once: the others read it from that
request's slot and get a copy after the step. With ``overlap`` and ``admit_ahead``, a mixed step is launched while
the decode step before it is still in flight (the decode rows' inputs are that step's samples, on
the device), and the next decode step is launched before the mixed step is read, so the host's
admission work (prefix matching, moving parked keys/values, recording finished requests) runs
while the GPU computes.

Per-slot state lives in numpy arrays, so the per-step bookkeeping is vectorised; Python loops
touch only requests that carry stop strings or custom stop ids, and those that finish. The
only host/device synchronisation per step is one copy of the sampled ids and logprobs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from agentrl.engine.base import Completion, EngineError, FinishReason
from agentrl.engine.embedded.mixed import Part
from agentrl.engine.embedded.request import Request, SchedulerStats
from agentrl.engine.embedded.request import fail as _fail
from agentrl.engine.embedded.request import resolve as _resolve
from agentrl.engine.embedded.runner import MixedRunner, PrefixRunner, Runner
from agentrl.engine.embedded.sampling import SamplingRows, uniforms
from agentrl.engine.embedded.stops import StopStrings
from agentrl.utils.openmp import release_thread_pool

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        *,
        max_slots: int,
        max_seq_len: int,
        eos_ids: set[int],
        tokenizer: Any,
        prefill_token_budget: int,
        overlap: bool = False,
        admit_ahead: bool = False,
        admit_wait_steps: int = 0,
        prefix_cache: bool = False,
        high_priority_stream: bool = False,
        mixed: bool = False,
    ) -> None:
        self.runner = runner
        self.mixed = mixed and getattr(runner, "supports_mixed", False)
        # a mixed step the runner replays from a graph holds at most this many tokens, running rows
        # included; a budget above it asks for larger steps, which run eagerly (None: no bound)
        graph_tokens = getattr(runner, "graph_tokens", None) if self.mixed else None
        self.step_tokens = graph_tokens if graph_tokens and prefill_token_budget <= graph_tokens else None
        self.high_priority_stream = high_priority_stream
        self.admit_wait_steps = admit_wait_steps
        self.prefix_cache = prefix_cache and getattr(runner, "supports_prefix", False)
        self.max_seq_len = max_seq_len
        # finished requests' keys/values kept in free slots (>= n), slot -> the tokens at positions
        # [0, len); insertion order is the eviction order (oldest first)
        self._parked: dict[int, np.ndarray] = {}
        # the same tokens as rows of one array (valid up to _plen), so a prompt is matched against all at once
        self._ptok = np.zeros((max_slots, max_seq_len) if self.prefix_cache else (0, 0), np.int64)
        self._plen = np.zeros(max_slots, np.int64)
        self._failed: set[int] = set()  # completed slots whose request failed (nothing to keep)
        self.overlap = overlap and getattr(runner, "supports_pipeline", False)
        self.admit_ahead = admit_ahead
        self.max_slots = max_slots
        self.prefill_token_budget = prefill_token_budget
        self.eos_ids = np.array(sorted(eos_ids), dtype=np.int64)
        self.stops = StopStrings(tokenizer) if tokenizer is not None else None
        self.version = 0
        self.stats = SchedulerStats()
        self.error: BaseException | None = None
        s = max_slots
        self.n = 0  # running requests occupy slots [0, n)
        self.reqs: list[Request | None] = [None] * s
        self.last = np.zeros(s, np.int64)  # last sampled token (next decode input)
        self.length = np.zeros(s, np.int64)  # tokens in the KV cache = next input's position
        self.ngen = np.zeros(s, np.int64)
        self.max_new = np.zeros(s, np.int64)
        self.temperature = np.zeros(s, np.float64)
        self.top_p = np.ones(s, np.float64)
        self.top_k = np.full(s, -1, np.int64)
        self.seed = np.zeros(s, np.uint64)
        self.ignore_eos = np.zeros(s, bool)
        self.custom = np.zeros(s, bool)  # has stop strings or stop token ids
        self.out_ids = np.zeros((s, max_seq_len), np.int64)
        self.out_lp = np.zeros((s, max_seq_len), np.float32)
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._by_rid: dict[str, Request] = {}
        self._abort: set[str] = set()
        self._commands: deque[tuple[Callable[[], Any], cf.Future, bool]] = deque()
        self._stop = False
        self._allocated = False
        self._inflight: _Launched | None = None  # a launched step whose tokens are not read yet
        self._decode_until = 0.0  # when the last collected decode step's tokens reached the host
        self._step_t0: float | None = None  # when the step now running began
        self._ahead = 0  # launched, unread steps (0, 1, or 2 while a mixed step is launched over a decode step)
        self._zombies: set[int] = set()  # finished rows that an in-flight step still computes
        self._zombie_step = 0  # stats.steps when the oldest of them finished
        self._chunk: _Chunk | None = None  # a prompt prefilled in part (mixed steps), in slot n
        self._thread: threading.Thread | None = None

    # --- called from any thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agentrl-engine", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, req: Request) -> cf.Future:
        with self._cv:
            if self._stop:
                raise EngineError("the engine is closed")
            if req.rid in self._by_rid:
                raise EngineError(f"a request with rid {req.rid!r} is already running; rids must be unique")
            self._by_rid[req.rid] = req
            req.arrival_step = self.stats.steps
            self._enqueue(req)
            self._cv.notify()
        return req.future

    def _enqueue(self, req: Request) -> None:
        """Queue ``req`` behind every waiting request of its priority or a lower one (the queue stays
        sorted by priority, then arrival)."""
        waiting = self._waiting
        if not waiting or waiting[-1].priority <= req.priority:  # the common case: one priority
            waiting.append(req)
            return
        at = len(waiting)
        while at and waiting[at - 1].priority > req.priority:
            at -= 1
        waiting.insert(at, req)

    def call(self, fn: Callable[[], Any], *, needs_idle: bool = False) -> cf.Future:
        """Run ``fn`` on the worker between steps (after running requests finish if ``needs_idle``)."""
        fut: cf.Future = cf.Future()
        with self._cv:
            if self._stop:
                raise EngineError("the engine is closed")
            self._commands.append((fn, fut, needs_idle))
            self._cv.notify()
        return fut

    def abort(self, rid: str | None = None) -> None:
        with self._cv:
            targets = list(self._by_rid) if rid is None else [rid] if rid in self._by_rid else []
            waiting = {r.rid for r in self._waiting}
            for r in targets:
                if r in waiting:
                    req = self._by_rid.pop(r)
                    self._waiting.remove(req)
                    _resolve(req.future, Completion([], [], "abort", self.version, len(req.prompt)))
                else:
                    self._abort.add(r)
            self._cv.notify()

    def shutdown(self, timeout: float | None = None) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def busy_now(self) -> float:
        """``stats.busy_s`` plus the step now running, so it bounds the other seconds read before it
        from another thread (a step adds its prefill and decode time before its busy time)."""
        t0 = self._step_t0
        busy = self.stats.busy_s
        return busy + (time.perf_counter() - t0 if t0 is not None else 0.0)

    # --- worker ------------------------------------------------------------------------------------

    def _run(self) -> None:
        device = getattr(self.runner, "device", None)
        if device is not None and device.type == "cuda":  # threads start on device 0; CUDA graphs capture on the current one
            torch.cuda.set_device(device)
            if self.high_priority_stream:
                torch.cuda.synchronize(device)  # the weights were loaded on the default stream
                # lower numbers run first; out-of-range values map to the highest priority
                torch.cuda.set_stream(torch.cuda.Stream(device=device, priority=-100))
        cpu = device is None or device.type == "cpu"
        with torch.inference_mode():
            mark = None  # when the last step ended; steps that follow without a wait count from it
            while True:
                with self._cv:
                    while not (self._stop or self._waiting or self._commands or self._abort or self.n or self._chunk):
                        mark = None
                        if cpu:  # idle OpenMP workers of this thread would slow the other threads' (a trainer's)
                            release_thread_pool()
                        self._cv.wait()
                    if self._stop:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                    aborts, self._abort = self._abort, set()
                t0 = self._step_t0 = time.perf_counter() if mark is None else mark
                try:
                    self._step(commands, aborts)
                except Exception as exc:  # a failed step fails its requests, not the engine
                    log.exception("engine step failed")
                    self._fail_running(exc)
                mark = time.perf_counter()
                self.stats.busy_s += mark - t0
                self._step_t0 = None  # after busy_s: a reader never misses the step (see busy_now)
            self._drain()

    def _step(self, commands: list, aborts: set[str]) -> None:
        if self._inflight is not None and (commands or aborts or (self._admittable() and not self._admit_ahead())):
            self._settle()  # the batch is about to change: read the step in flight first
        held = self._run_commands(commands)
        if aborts:
            for slot in sorted((s for s in range(self.n) if self._running(s).rid in aborts), reverse=True):
                self._finish(slot, "abort", None)
            if self._chunk is not None and self._chunk.req.rid in aborts:
                self._drop_chunk("abort")
        # a command waiting for idleness blocks admissions (not the rest of a prompt already begun)
        if (not held or self._chunk is not None) and self._admittable():
            if self._admit(new=not held):
                return  # a mixed step decoded the running rows too
        if self.n:
            self._decode()

    def _admit_ahead(self) -> bool:
        """Whether a mixed step may be launched while a decode step is in flight (its samples, still on
        the device, are the decode rows' inputs): with ``overlap``, over a decode step (not a mixed
        one), while the finished rows may ride along one more step (see :meth:`_zombies_ride`)."""
        return (self.admit_ahead and self.mixed and self.overlap and self._inflight is not None
                and not self._inflight.mixed
                and self._zombies_ride())

    def _admittable(self) -> bool:
        """Whether to prefill waiting requests (or the rest of a prompt) before the next decode step."""
        if self._chunk is not None:
            return True
        if not self._waiting or self.n >= self.max_slots:
            return False
        if self.admit_wait_steps <= 0 or self.n == 0:
            return True
        enough = min(self.max_slots - self.n, max(1, self.max_slots // 8))
        with self._cv:
            if len(self._waiting) >= enough:
                return True
            oldest = min((r.arrival_step for r in self._waiting), default=self.stats.steps)
        return self.stats.steps - oldest >= self.admit_wait_steps

    def _run_commands(self, commands: list) -> bool:
        held = False
        for fn, fut, needs_idle in commands:
            if needs_idle and (self.n or self._chunk is not None):
                with self._cv:
                    self._commands.appendleft((fn, fut, needs_idle))
                held = True
                continue
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
        return held

    def _admit(self, new: bool = True) -> bool:
        """Prefill waiting requests (``new``) and the rest of a partial prompt; True when this was a
        mixed step, which decoded the running rows as well."""
        if self._inflight is not None and not self._admit_ahead():  # joins happen between steps, or over a decode step
            return False
        if not self._allocate():
            return False
        if self.mixed:
            return self._admit_mixed(new)
        self._admit_whole()
        return False

    def _allocate(self) -> bool:
        """Allocate the KV cache if needed; False (waiting requests failed) when it cannot be."""
        if not self._allocated:
            with self._cv:
                if not self._waiting:
                    return False
            try:
                self.runner.allocate()
            except Exception as exc:  # e.g. out of memory: every waiting request learns why
                log.exception("could not allocate the KV cache")
                self.runner.release()
                with self._cv:
                    for req in self._waiting:
                        self._by_rid.pop(req.rid, None)
                        _fail(req.future, EngineError(f"could not allocate the KV cache: {exc!r}"))
                    self._waiting.clear()
                return False
            self._allocated = True
        return True

    def _admit_whole(self) -> None:
        """Prefill whole prompts in a forward pass of their own (runners without mixed steps)."""
        batch: list[Request] = []
        budget = self.prefill_token_budget
        with self._cv:
            while self._waiting and self.n + len(batch) < self.max_slots:
                req = self._waiting[0]
                if batch and len(req.prompt) > budget:
                    break
                budget -= len(req.prompt)
                batch.append(self._waiting.popleft())
        if not batch:
            return
        slots = list(range(self.n, self.n + len(batch)))
        cached = self._reuse_prefixes(slots, batch) if self.prefix_cache else None
        for slot, req in zip(slots, batch):
            self._place(slot, req)
        self.n += len(batch)
        try:
            slots_np = np.asarray(slots)
            reuse = () if cached is None else (cached,)  # runners without a prefix cache take no `cached`
            t0 = time.perf_counter()
            sampled = self.runner.prefill(slots, [r.prompt for r in batch], self._rows(slots_np), *reuse)
            host = sampled.cpu().numpy()
            self.stats.prefill_s += time.perf_counter() - t0
            self.stats.prefills += 1
            self.stats.prompt_tokens += sum(len(r.prompt) for r in batch)
            self._record(host, slots_np)
        except Exception as exc:  # fail this prefill's requests; running ones carry on
            log.exception("prefill of %d request(s) failed", len(batch))
            err = EngineError(f"prefill failed: {exc!r}")
            for slot in reversed(range(self.n)):
                if slot not in self._zombies and any(self.reqs[slot] is r for r in batch):
                    self._complete(slot, err, None)
            self._compact()

    def _admit_mixed(self, new: bool) -> bool:
        """One forward pass for the running rows' next tokens and up to ``prefill_token_budget`` prompt
        tokens: first the rest of a partial prompt, then waiting requests in order (``new``), each in
        the next free slot, over its cached prefix. A prompt cut by the budget stays partial."""
        t_plan = time.perf_counter()
        under = self._inflight  # a decode step in flight (_admit_ahead): its samples are this step's inputs
        n, budget = self.n, self.prefill_token_budget
        if self.step_tokens is not None:  # fit the largest graph (at least a few prompt tokens, so prompts move on)
            budget = min(budget, max(self.step_tokens - n, self.MIN_STEP_PROMPT_TOKENS))
        plans: list[tuple[Request, int, int, int, int, int]] = []  # req, slot, start, stop, prefix slot, prefix len
        follows: list[tuple[int, int, int]] = []  # (source slot, slot, length): shared prefixes to copy after the step
        heads: dict[bytes, list[int]] = {}  # first MIN_PREFIX tokens -> plans that may share their prompt
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            stop = min(len(chunk.req.prompt), chunk.done + budget)
            plans.append((chunk.req, n, chunk.done, stop, n, 0))
            budget -= stop - chunk.done
            self._lead(heads, 0, chunk.req)
        while new and budget > 0 and n + len(plans) < self.max_slots:
            with self._cv:
                if not self._waiting:
                    break
                req = self._waiting.popleft()
            slot = n + len(plans)
            self._place(slot, req)
            self.stats.prompt_tokens += len(req.prompt)
            start, src, shared = 0, slot, 0
            if self.prefix_cache:
                parked, length = self._match(req.tokens)
                lead, shared = self._shared(heads, plans, req.tokens)
                if shared > length:
                    self._evict(slot, slot + 1)
                    start, src = shared, plans[lead][1]
                    follows.append((src, slot, shared))
                    self.stats.cached_prompt_tokens += shared
                else:
                    start = self._reuse(slot, req, parked, length, slot + 1)
            stop = min(len(req.prompt), start + budget)
            plans.append((req, slot, start, stop, src, shared))
            budget -= stop - start
            if src == slot:
                self._lead(heads, len(plans) - 1, req)
            if stop < len(req.prompt):
                break  # the budget is spent: the rest of this prompt goes first next step
        if not plans:
            return False
        done = [p for p in plans if p[3] == len(p[0].prompt)]
        slots = np.concatenate([np.arange(n), [p[1] for p in done]]).astype(np.int64)
        ahead = np.zeros(len(slots), np.int64)
        ahead[:n] = self._ahead  # the decode rows' draws come after those of the step in flight
        try:
            parts = [Part(slot, req.tokens[start:stop], start, src, shared, stop == len(req.prompt))
                     for req, slot, start, stop, src, shared in plans]
            handle = cast(MixedRunner, self.runner).launch_mixed(  # self.mixed: the runner supports_mixed
                None if under is not None else self.last[:n], self.length[:n], parts, self._rows(slots, ahead))
            for src, slot, length in follows:
                self.runner.move(src, slot, length)
        except Exception as exc:  # fail this step's prefills; running requests carry on
            log.exception("mixed step with %d prefill(s) failed", len(plans))
            err = EngineError(f"prefill failed: {exc!r}")
            for req, slot, *_ in plans:
                self.reqs[slot] = None
                with self._cv:
                    self._by_rid.pop(req.rid, None)
                _fail(req.future, err)
            return False
        self.stats.prefills += 1
        if n:
            self.length[:n] += 1
            self.stats.steps += 1
            self.stats.graph_steps += int(bool(getattr(self.runner, "last_step_graphed", False)))
            self.stats.graphs_captured = getattr(self.runner, "graphs_captured", 0)
        self._ahead += 1
        self.n = n + len(done)
        if len(done) < len(plans):
            req, slot, _, stop, _, _ = plans[-1]
            self._chunk = _Chunk(req, slot, stop)
        entry = _Launched(handle, slots, t_plan, mixed=True)
        planned = time.perf_counter() - t_plan
        if not (self.overlap and self.admit_ahead) or not len(slots):  # read it now
            self._collect(entry)
            return True
        # pipelined: the step stays in flight (the next decode step is launched before it is read);
        # the step launched before it is read now, its finished rows riding along in this one
        self._inflight = entry
        if under is not None:
            self._collect(under)
            # the planning overlapped that decode step: count it as prefill time, not decode time
            self.stats.decode_s -= planned
            self.stats.prefill_s += planned
        return True

    MIN_STEP_PROMPT_TOKENS = 64
    """Prompt tokens a mixed step takes however many rows are running (with ``step_tokens``)."""

    def _lead(self, heads: dict[bytes, list[int]], index: int, req: Request) -> None:
        """Let later requests of the step share the prompt of plan ``index``."""
        if len(req.prompt) > self.MIN_PREFIX:
            heads.setdefault(req.tokens[: self.MIN_PREFIX].tobytes(), []).append(index)

    def _shared(self, heads: dict[bytes, list[int]], plans: list, prompt: np.ndarray) -> tuple[int, int]:
        """The plan of this step whose prompt shares the longest prefix with ``prompt`` (at least
        ``MIN_PREFIX`` tokens, at most all but its last token and what that plan computes by the end
        of the step), and that length; (-1, 0) when none does."""
        if len(prompt) <= self.MIN_PREFIX or not heads:
            return -1, 0
        candidates = heads.get(prompt[: self.MIN_PREFIX].tobytes())
        if not candidates:
            return -1, 0
        best, best_len = -1, 0
        for i in candidates:
            other, stop = plans[i][0].tokens, plans[i][3]
            m = min(len(prompt) - 1, stop, len(other))
            same = prompt[:m] == other[:m]
            common = m if same.all() else int(same.argmin())
            if common > best_len:
                best, best_len = i, common
        return (best, best_len) if best_len >= self.MIN_PREFIX else (-1, 0)

    def _drop_chunk(self, reason: FinishReason | BaseException) -> None:
        """End the partially prefilled request (abort, failure, shutdown): it has no tokens yet."""
        chunk, self._chunk = self._chunk, None
        if chunk is None:
            return
        self.reqs[chunk.slot] = None
        with self._cv:
            self._by_rid.pop(chunk.req.rid, None)
        if isinstance(reason, BaseException):
            _fail(chunk.req.future, reason)
        else:
            _resolve(chunk.req.future, Completion([], [], reason, self.version, len(chunk.req.prompt)))

    def _follow_chunk(self) -> None:
        """Keep the partial prompt in slot ``n`` after running rows left (a parked entry there trades places)."""
        chunk = self._chunk
        if chunk is None or chunk.slot == self.n:
            return
        src, dst = chunk.slot, self.n
        here = self._parked.pop(dst, None)
        if here is not None:
            self._prefix_runner().swap(dst, src, max(len(here), chunk.done))
            self._keep(src, here)
        else:
            self.runner.move(src, dst, chunk.done)
        self.reqs[src] = None
        version = chunk.req.version  # the weights its first part was computed with
        self._place(dst, chunk.req)
        chunk.req.version = version
        chunk.slot = dst

    def _place(self, slot: int, req: Request) -> None:
        sp = req.sampling
        req.version = self.version
        self.reqs[slot] = req
        self.length[slot] = len(req.prompt)
        self.ngen[slot] = 0
        self.max_new[slot] = req.max_new
        self.temperature[slot] = sp.temperature
        self.top_p[slot] = sp.top_p
        self.top_k[slot] = sp.top_k if sp.top_k and sp.top_k > 0 else -1
        self.seed[slot] = np.uint64(req.seed)
        self.ignore_eos[slot] = sp.ignore_eos
        self.custom[slot] = bool(sp.stop or sp.stop_token_ids)

    ZOMBIE_STEPS = 8
    """Decode steps a finished row may ride along in (see :meth:`_decode`) before it is compacted away."""

    def _decode(self) -> None:
        """Read one decode step's tokens. With ``overlap``, the next step is launched first (its
        input tokens stay on the device), so the GPU computes while the host does bookkeeping;
        rows that finish meanwhile are computed on and dropped ("zombies") until a step is not
        launched ahead (:meth:`_zombies_ride`), whose end frees their slots."""
        if self._inflight is None:
            self._inflight = self._launch(self.last[: self.n])
        current = self._inflight
        ahead = None
        # an admission can wait for the next step only when it can be launched over it (mixed steps)
        admission = self._admittable() and not (self.mixed and self.admit_ahead)
        n = self.n  # (not when every row ends with the steps in flight: a step of max_new_tokens=1 prompts)
        if (self.overlap and not (admission or self._abort or self._commands) and self._zombies_ride()
                and bool((self.ngen[:n] + self._ahead < self.max_new[:n]).any())):
            ahead = self._launch(None)
        self._inflight = ahead
        self._collect(current)
        if self._inflight is None:
            self._compact()

    def _zombies_ride(self) -> bool:
        """Whether the next step may be launched while finished rows still sit among the running ones.
        Freeing their slots needs a step that is not launched ahead, and the GPU idles while the host
        reads it and compacts; in a multi-turn rollout some request finishes at most steps, so the
        rows ride along (each costs one row of the batch) until an admission reads the pipeline
        anyway, ``ZOMBIE_STEPS`` steps have passed, or they are half the batch. A row's position
        never passes the cache's last one, where the decode kernel leaves a padding row's keys
        unread and parked prefixes never reach."""
        if not self._zombies:
            return True
        if 2 * len(self._zombies) > self.n or self.stats.steps - self._zombie_step >= self.ZOMBIE_STEPS:
            return False
        return int(self.length[list(self._zombies)].max()) < self.max_seq_len

    def _launch(self, tokens: np.ndarray | None) -> _Launched:
        n = self.n
        t0 = time.perf_counter()
        rows = SamplingRows(
            temperature=self.temperature[:n], top_p=self.top_p[:n], top_k=self.top_k[:n],
            u=uniforms(self.seed[:n], self.ngen[:n] + self._ahead),
        )
        t1 = time.perf_counter()
        handle = self.runner.launch(tokens, self.length[:n].copy(), rows)
        launch = time.perf_counter() - t1
        self.length[:n] += 1  # the input token is now in the cache
        self._ahead += 1
        self.stats.steps += 1
        graphed = bool(getattr(self.runner, "last_step_graphed", False))
        self.stats.graph_steps += int(graphed)
        self.stats.graphs_captured = getattr(self.runner, "graphs_captured", 0)
        self.stats.capture_s = getattr(self.runner, "capture_s", 0.0)
        self.stats.launch_s += launch
        if not graphed:
            self.stats.eager_s += launch
        return _Launched(handle, np.arange(n), t0)

    def _collect(self, entry: _Launched) -> None:
        host = self.runner.collect(entry.handle)  # [2, rows]; the one sync per step
        self._ahead -= 1
        now = time.perf_counter()  # steps overlap under `overlap`: count the time any is in flight once
        span = now - max(entry.t0, self._decode_until)
        if entry.mixed:
            self.stats.prefill_s += span
        else:
            self.stats.decode_s += span
        self._decode_until = now
        slots = entry.slots
        if self._zombies:
            keep = np.fromiter((s not in self._zombies for s in slots.tolist()), dtype=bool, count=len(slots))
            host, slots = host[:, keep], slots[keep]
        self._record(host, slots)

    def _settle(self) -> None:
        if self._inflight is not None:
            current, self._inflight = self._inflight, None
            self._collect(current)
        self._compact()

    def _rows(self, slots: np.ndarray, ahead: np.ndarray | int = 0) -> SamplingRows:
        """Sampling of ``slots``; ``ahead``: their tokens drawn in steps launched but not read yet."""
        return SamplingRows(
            temperature=self.temperature[slots], top_p=self.top_p[slots], top_k=self.top_k[slots],
            u=uniforms(self.seed[slots], self.ngen[slots] + ahead),
        )

    def _record(self, host: np.ndarray, slots: np.ndarray) -> None:
        """Append sampled tokens (``host`` [2, len(slots)]: ids, logprobs) and retire finished requests."""
        ids, lps = host[0].astype(np.int64), host[1].astype(np.float32)
        k = self.ngen[slots]
        self.out_ids[slots, k] = ids
        self.out_lp[slots, k] = lps
        self.ngen[slots] = k + 1
        self.last[slots] = ids
        self.stats.generated_tokens += len(slots)
        done: dict[int, tuple[FinishReason, Any]] = {}
        for i in np.flatnonzero(np.isin(ids, self.eos_ids) & ~self.ignore_eos[slots]).tolist():
            done[int(slots[i])] = ("stop", int(ids[i]))
        for i in np.flatnonzero(self.custom[slots]).tolist():
            slot = int(slots[i])
            if slot not in done and (hit := self._custom_stop(slot, int(ids[i]))) is not None:
                done[slot] = ("stop", hit)
        for i in np.flatnonzero(self.ngen[slots] >= self.max_new[slots]).tolist():
            done.setdefault(int(slots[i]), ("length", None))
        for slot, (reason, matched) in done.items():
            self._complete(slot, reason, matched)
        if self._inflight is None:
            self._compact()

    def _running(self, slot: int) -> Request:
        """The request in ``slot``, one of the running rows ``[0, n)``, which always hold one."""
        req = self.reqs[slot]
        assert req is not None, f"running slot {slot} holds no request"
        return req

    def _prefix_runner(self) -> PrefixRunner:
        """The runner, with the prefix cache on (only a runner that supports_prefix turns it on)."""
        return cast(PrefixRunner, self.runner)

    def _custom_stop(self, slot: int, token: int) -> int | str | None:
        sp = self._running(slot).sampling
        if token in sp.stop_token_ids:
            return token
        if sp.stop and self.stops is not None:
            return self.stops.find(self.out_ids[slot, : self.ngen[slot]], sp.stop)
        return None

    def _finish(self, slot: int, reason: FinishReason | BaseException, matched: Any) -> None:
        self._complete(slot, reason, matched)
        if self._inflight is None:
            self._compact()

    def _complete(self, slot: int, reason: FinishReason | BaseException, matched: Any) -> None:
        """Resolve the request in ``slot``; the slot is freed by the next :meth:`_compact`."""
        req = self._running(slot)
        k = int(self.ngen[slot])
        if isinstance(reason, BaseException):
            _fail(req.future, reason)
            self._failed.add(slot)
        else:
            completion = Completion(
                token_ids=self.out_ids[slot, :k].tolist(), logprobs=self.out_lp[slot, :k].tolist(),
                finish_reason=reason, weight_version=req.version, prompt_tokens=len(req.prompt), matched_stop=matched,
            )
            _resolve(req.future, completion)
        self.stats.finished += 1
        with self._cv:
            self._by_rid.pop(req.rid, None)
        if not self._zombies:
            self._zombie_step = self.stats.steps
        self._zombies.add(slot)
        # while it rides along (_zombies_ride), a finished row samples greedily: top-k/top-p would keep
        # every step's sampling out of the CUDA graph for a row whose tokens are dropped
        self.temperature[slot], self.top_p[slot], self.top_k[slot] = 0.0, 1.0, -1

    def _compact(self) -> None:
        """Free finished slots, moving the last running request into each hole (slots stay dense).
        With the prefix cache, a finished request's keys/values are first parked in a free slot."""
        for slot in sorted(self._zombies, reverse=True):  # descending: a moved row is never a zombie
            if self.prefix_cache and slot not in self._failed:
                self._park(slot)
            self.runner.free(slot)
            last = self.n - 1
            if slot != last:
                self.runner.move(last, slot, int(self.length[last]))
                for arr in (self.last, self.length, self.ngen, self.max_new, self.temperature, self.top_p,
                            self.top_k, self.seed, self.ignore_eos, self.custom):
                    arr[slot] = arr[last]
                g = int(self.ngen[last])
                self.out_ids[slot, :g] = self.out_ids[last, :g]
                self.out_lp[slot, :g] = self.out_lp[last, :g]
                self.reqs[slot] = self.reqs[last]
            self.reqs[last] = None
            self.n = last
        self._zombies.clear()
        self._failed.clear()
        self._follow_chunk()

    # --- prefix cache ------------------------------------------------------------------------------

    MIN_PREFIX = 16
    """Shortest cached prefix worth reusing, in tokens."""

    def _park(self, slot: int) -> None:
        """Keep the keys/values of the finished request in ``slot`` (running rows are ``[0, n)``) in a
        free slot, so that a later prompt that starts with the same tokens skips their prefill."""
        req = self._running(slot)
        k = int(self.ngen[slot])
        tokens = np.concatenate([req.tokens, self.out_ids[slot, :k]])
        tokens = tokens[: min(int(self.length[slot]), self.max_seq_len - 1)]  # what the cache holds
        if len(tokens) < self.MIN_PREFIX:
            return
        target: int | None
        if slot == self.n - 1:  # the top running row: once freed, it is a free slot already
            target = slot
        else:
            target = next((s for s in range(self.max_slots - 1, self.n - 1, -1)
                           if s not in self._parked and s != self._chunk_slot()), None)
            if target is None and self._parked:
                target = next(iter(self._parked))  # evict the oldest
            if target is None:  # every slot is running: nowhere to keep it
                return
            self.runner.move(slot, target, len(tokens))
        self._parked.pop(target, None)
        self._keep(target, tokens)

    def _keep(self, slot: int, tokens: np.ndarray) -> None:
        self._parked[slot] = tokens
        self._ptok[slot, : len(tokens)] = tokens
        self._plen[slot] = len(tokens)

    def _match(self, prompt: np.ndarray) -> tuple[int | None, int]:
        """The parked slot sharing the longest prefix with ``prompt`` (at least ``MIN_PREFIX`` tokens,
        at most all but the prompt's last token), and that length."""
        if not self._parked or len(prompt) <= self.MIN_PREFIX:
            return None, 0
        slots = np.fromiter(self._parked, dtype=np.int64, count=len(self._parked))
        # entries that share the first MIN_PREFIX tokens (a cheap [entries, 16] test; hundreds of parked
        # entries times their whole length would cost about a millisecond per prompt)
        prompt = np.asarray(prompt, dtype=np.int64)
        head = prompt[: self.MIN_PREFIX]
        slots = slots[(self._ptok[slots, : self.MIN_PREFIX] == head).all(axis=1) & (self._plen[slots] >= self.MIN_PREFIX)]
        if not len(slots):
            return None, 0
        lens = self._plen[slots]
        m = int(min(len(prompt) - 1, lens.max()))
        if m < self.MIN_PREFIX:
            return None, 0
        same = self._ptok[slots, :m] == prompt[:m]  # [candidates, m]
        common = np.minimum(np.where(same.all(axis=1), m, same.argmin(axis=1)), lens)
        best = int(common.argmax())  # the first (oldest) of the longest
        if common[best] < self.MIN_PREFIX:
            return None, 0
        return int(slots[best]), int(common[best])

    def _reuse_prefixes(self, slots: list[int], batch: list[Request]) -> list[int]:
        """Bring the best parked prefix of each new request into its slot; returns the cached lengths."""
        floor = self.n + len(batch)  # slots [n, floor) are about to run
        return [self._reuse(slot, req, *self._match(req.tokens), floor) for slot, req in zip(slots, batch)]

    def _reuse(self, slot: int, req: Request, src: int | None, length: int, floor: int) -> int:
        """Bring the parked prefix ``src`` (``length`` tokens, from :meth:`_match`) of ``req`` into its
        ``slot``; returns ``length``.

        A request goes to the lowest free slot, which may hold another request's parked prefix: that
        one is swapped into the slot the request's own prefix leaves (the usual case for the next
        turn of an episode), else moved to a free slot at or above ``floor``, else dropped."""
        if src == slot:
            del self._parked[slot]
        elif src is not None:
            consumed = length >= len(self._parked[src]) - 1  # a continuation: src is free afterwards
            if consumed and slot in self._parked:
                here = self._parked.pop(slot)
                del self._parked[src]
                self._prefix_runner().swap(slot, src, max(len(here), length))
                self._keep(src, here)
            else:
                self._evict(slot, floor)
                self.runner.move(src, slot, length)
                if consumed:
                    del self._parked[src]
        else:
            self._evict(slot, floor)
        self.stats.cached_prompt_tokens += length
        return length

    def _evict(self, slot: int, floor: int) -> None:
        """Clear ``slot`` of a parked prefix: move it to a free unparked slot at or above ``floor``, or drop it."""
        tokens = self._parked.pop(slot, None)
        if tokens is None:
            return
        target = next((s for s in range(self.max_slots - 1, floor - 1, -1)
                       if s not in self._parked and s != slot and s != self._chunk_slot()), None)
        if target is not None:
            self.runner.move(slot, target, len(tokens))
            self._keep(target, tokens)

    def _chunk_slot(self) -> int:
        return -1 if self._chunk is None else self._chunk.slot

    def clear_prefix_cache(self) -> None:
        """Forget parked keys/values (after a weight update they no longer match the model)."""
        self._parked.clear()

    def _fail_running(self, exc: BaseException) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"engine step failed: {exc!r}")
        self._inflight, self._ahead = None, 0
        if self._chunk is not None:
            self._drop_chunk(err)
        for slot in reversed(range(self.n)):
            if slot not in self._zombies:
                self._complete(slot, err, None)
        self._compact()

    def _drain(self) -> None:
        """On shutdown: running and waiting requests end with 'abort', commands fail."""
        try:
            self._settle()
        except Exception:  # noqa: BLE001 - closing anyway
            log.exception("could not read the last decode step")
            self._inflight, self._ahead = None, 0
        if self._chunk is not None:
            self._drop_chunk("abort")
        for slot in reversed(range(self.n)):
            if slot not in self._zombies:
                self._complete(slot, "abort", None)
        self._compact()
        with self._cv:
            for req in self._waiting:
                _resolve(req.future, Completion([], [], "abort", self.version, len(req.prompt)))
            self._waiting.clear()
            self._by_rid.clear()
            for _, fut, _ in self._commands:
                _fail(fut, EngineError("the engine was closed before this call ran"))
            self._commands.clear()
        self._parked.clear()
        self.runner.release()
        self._allocated = False

    def release_memory(self) -> None:
        """Free the KV cache (worker thread, idle); the next admitted request allocates it again."""
        self._parked.clear()
        self.runner.release()
        self._allocated = False

    def resume_memory(self) -> None:
        if not self._allocated:
            self.runner.allocate()
            self._allocated = True


@dataclass(eq=False)
class _Launched:
    """A step launched on the runner whose samples are not read yet."""

    handle: Any
    slots: np.ndarray
    """The rows it samples, in order: the decode rows ``[0, n)``, then the slots of prompts that end in it."""
    t0: float
    mixed: bool = False


@dataclass(eq=False)
class _Chunk:
    """A request whose prompt is prefilled in parts: positions ``[0, done)`` are in ``slot``."""

    req: Request
    slot: int
    done: int
