"""Group fan-out, concurrency and over-sampling around the episode loop.

:class:`Rollout` turns prompt rows into groups of ``n_samples_per_prompt`` episodes, with at
most ``concurrency`` episodes in flight, runs the filters on each finished group, and keeps
drawing prompts until ``batch_size`` groups survive (or the over-sampling cap is reached).
Surplus groups still in flight at that point are cancelled and counted, never half-kept.

**Failed episodes** (status ``failed``: an environment, tool, reward-function or engine error, a
timeout) are run again with the same request, hence the same environment and sampling seeds, up
to ``config.max_episode_retries`` times. One that still fails is left out: the first filter is
always :func:`~agentrl.rollout.filters.drop_failed`, so it takes no part in its group's statistics
(the group is compared over the episodes that finished) and never reaches the batch; it is never
scored as a zero reward. ``rollout/episode_retries`` counts the retries and
``rollout/failed_excluded`` the episodes left out.

Example::

    rollout = Rollout(engine, ChatTemplate(tokenizer), RolloutConfig(n_samples_per_prompt=4),
                      default_env_id="agentrl/Math-v0", filters=default_filters(dynamic_sampling=True))
    result = await rollout.generate(sampler.next_batch, batch_size=32)
    result.groups, result.metrics["rollout/reward_mean"]
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.data.prompts import PromptRow
from agentrl.engine.base import Engine
from agentrl.rollout.episode import EpisodeRequest, RewardFn, RolloutConfig, engine_failed, run_episode, timed_out
from agentrl.rollout.filters import GroupFilter, drop_failed
from agentrl.types import Group, Sample

log = logging.getLogger(__name__)

GenerateFn = Callable[..., Awaitable[Sample]]
"""``async fn(engine, template, request, config, *, reward_fn=None) -> Sample``: the signature of
:func:`~agentrl.rollout.episode.run_episode`, which a ``--custom-generate-function-path`` replaces."""


@dataclass
class RolloutResult:
    groups: list[Group]
    """Groups that passed every filter, in completion order."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Groups dropped, by filter name."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``rollout/...`` metrics over every finished episode (kept or not)."""
    prompts_used: int = 0
    engine_error: str | None = None
    """The first error of an episode the engine failed (:func:`~agentrl.rollout.engine_failed`), if any."""
    finished: list[Group] = field(default_factory=list)
    """Every group that finished, kept or dropped, with all its episodes (failed ones included)."""

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]


class RolloutProgress:
    """Episodes of one :meth:`Rollout.generate` call not yet finished, for a caller that waits on
    them (the async loop starts the next rollout once the current one is down to ``--next-rollout-at``)."""

    def __init__(self) -> None:
        self.unfinished = 0
        self.launched = False
        """Episodes were counted in (before that, 0 unfinished means 'not started')."""
        self.done = False
        """The generate call returned (cancelled episodes no longer count)."""
        self._waiters: list[tuple[int, asyncio.Future]] = []

    async def wait_until(self, at_most: int) -> None:
        """Return once the call has launched its episodes and at most ``at_most`` are unfinished,
        or once it has returned."""
        if not self._reached(at_most):
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((at_most, future))
            await future

    def _reached(self, at_most: int) -> bool:
        return self.done or (self.launched and self.unfinished <= at_most)

    def _add(self, n: int) -> None:
        self.unfinished += n
        self.launched = True
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiting = []
        for at_most, future in self._waiters:
            if future.done():
                continue
            if self._reached(at_most):
                future.set_result(None)
            else:
                waiting.append((at_most, future))
        self._waiters = waiting


class Rollout:
    def __init__(
        self,
        engine: Engine,
        template: Any,
        config: RolloutConfig,
        *,
        default_env_id: str | None = None,
        filters: Sequence[GroupFilter] = (drop_failed,),
        generate_fn: GenerateFn | None = None,
        reward_fn: RewardFn | None = None,
        seed: int = 0,
    ):
        self.engine = engine
        self.template = template
        self.config = config
        self.default_env_id = default_env_id
        self.filters = [drop_failed] + [f for f in filters if f is not drop_failed]  # failures never count
        self.generate_fn = generate_fn or run_episode
        self.reward_fn = reward_fn
        self.seed = seed
        self._semaphore: asyncio.Semaphore | None = None

    # -- one group ---------------------------------------------------------------------
    def requests_for(self, row: PromptRow, group_id: int, sampling_seed: int | None = None) -> list[EpisodeRequest]:
        """The episodes of one group; ``sampling_seed`` (default ``config.sampling.seed``) seeds their sampling."""
        env_id = row.env_id or self.default_env_id
        if env_id is None:
            raise ValueError(f"{row.source}: the row names no environment and no default --env was given")
        options = row.reset_options()
        env_seed = int(options.pop("seed", self.seed * 1_000_003 + row.index))
        base = self.config.sampling.seed if sampling_seed is None else sampling_seed
        return [
            EpisodeRequest(env_id=env_id, options=options, env_seed=env_seed,
                           sampling_seed=None if base is None else base + 10_007 * group_id + i,
                           group_id=group_id, sample_index=i, label=row.label,
                           metadata={**row.metadata, "prompt_index": row.index})
            for i in range(self.config.n_samples_per_prompt)
        ]

    async def generate_group(self, row: PromptRow, group_id: int, sampling_seed: int | None = None,
                             progress: RolloutProgress | None = None) -> Group:
        requests = self.requests_for(row, group_id, sampling_seed)
        samples = await asyncio.gather(*(self._episode(r, progress) for r in requests))
        return Group(group_id=group_id, samples=list(samples))

    async def _episode(self, request: EpisodeRequest, progress: RolloutProgress | None = None) -> Sample:
        try:
            return await self._run_episode(request)
        finally:
            if progress is not None:  # counted in when its group was launched
                progress._add(-1)

    async def _run_episode(self, request: EpisodeRequest) -> Sample:
        """The episode, run again (same request, same seeds) while it fails, at most ``max_episode_retries`` times."""
        retries = 0
        while True:
            sample = await self._attempt(request)
            if sample.status != "failed" or retries >= self.config.max_episode_retries:
                break
            retries += 1
            log.info("episode g%d/s%d failed (%s); retry %d of %d", request.group_id, request.sample_index,
                     sample.error, retries, self.config.max_episode_retries)
        sample.metrics["retries"] = float(retries)
        return sample

    async def _attempt(self, request: EpisodeRequest) -> Sample:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        async with self._semaphore:
            try:
                sample = await self.generate_fn(self.engine, self.template, request, self.config,
                                                reward_fn=self.reward_fn)
                if not isinstance(sample, Sample):
                    raise TypeError(f"the generate function returned {type(sample).__name__}, expected a Sample")
                sample.group_id, sample.sample_index = request.group_id, request.sample_index
                sample.validate()
                return sample
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken custom generate function is recorded, not fatal
                log.warning("episode g%d/s%d failed: %s", request.group_id, request.sample_index, e)
                return Sample(status="failed", error=f"{type(e).__name__}: {e}", group_id=request.group_id,
                              sample_index=request.sample_index, env_id=request.env_id, label=request.label)

    # -- a batch of groups ---------------------------------------------------------------
    async def generate(
        self,
        next_rows: Callable[[int], list[PromptRow]],
        batch_size: int,
        *,
        max_prompts: int | None = None,
        first_group_id: int = 0,
        sampling_seed: int | None = None,
        progress: RolloutProgress | None = None,
    ) -> RolloutResult:
        """Collect ``batch_size`` groups that pass the filters.

        ``next_rows(n)`` hands out the next ``n`` prompt rows (e.g. ``PromptSampler.next_batch``).
        ``max_prompts`` caps over-sampling (default ``2 * batch_size`` when a filter can drop
        groups). Fewer than ``batch_size`` groups come back only when that cap is reached.
        ``sampling_seed`` seeds this batch's episodes (default ``config.sampling.seed``, read now:
        several batches may be generated at once). ``progress`` counts the unfinished episodes.
        """
        cap = max_prompts or 2 * batch_size
        seed = self.config.sampling.seed if sampling_seed is None else sampling_seed
        start = time.perf_counter()
        kept: list[Group] = []
        finished: list[Group] = []
        dropped: Counter[str] = Counter()
        pending: set[asyncio.Task[Group]] = set()
        launched = 0

        def launch(n: int) -> None:
            nonlocal launched
            rows = next_rows(n)
            if progress is not None:
                progress._add(len(rows) * self.config.n_samples_per_prompt)
            for row in rows:
                pending.add(asyncio.create_task(self.generate_group(row, first_group_id + launched, seed, progress)))
                launched += 1

        launch(min(batch_size, cap))
        try:
            while pending and len(kept) < batch_size:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    pending.discard(task)
                    group = task.result()
                    finished.append(group)
                    survivor, reason = self._filter(group)
                    if survivor is None:
                        dropped[reason] += 1
                    elif len(kept) < batch_size:
                        kept.append(survivor)
                    else:
                        dropped["surplus"] += 1
                missing = batch_size - len(kept) - len(pending)
                if missing > 0 and launched < cap:
                    launch(min(missing, cap - launched))
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                dropped["cancelled_surplus"] += len(pending)
            if progress is not None:
                progress._finish()
        if len(kept) < batch_size:
            log.warning("rollout: only %d of %d groups passed the filters after %d prompts (drops: %s)",
                        len(kept), batch_size, launched, dict(dropped))
        metrics = rollout_metrics(finished, kept, dropped, time.perf_counter() - start)
        engine_error = next((s.error for g in finished for s in g.samples if engine_failed(s)), None)
        return RolloutResult(groups=kept, dropped=dict(dropped), metrics=metrics, prompts_used=launched,
                             engine_error=engine_error, finished=finished)

    def _filter(self, group: Group) -> tuple[Group | None, str]:
        for f in self.filters:
            result = f(group)
            if result is None:
                return None, getattr(f, "__name__", "filter")
            group = result
        return group, ""


def rollout_metrics(finished: list[Group], kept: list[Group], dropped: Counter, seconds: float) -> dict[str, float]:
    """``rollout/`` metrics over every finished episode; ``rollout/kept_*`` over those kept."""
    samples = [s for g in finished for s in g.samples]
    m: dict[str, float] = {"rollout/time": seconds, "rollout/groups_finished": float(len(finished)),
                           "rollout/groups_kept": float(len(kept))}
    if not samples:
        return m
    statuses = Counter(s.status for s in samples)
    for status in ("ok", "truncated", "aborted", "failed"):
        m[f"rollout/status_{status}"] = statuses.get(status, 0) / len(samples)
    m["rollout/failed_excluded"] = float(statuses.get("failed", 0))  # after retries; never scored
    m["rollout/episode_retries"] = sum(s.metrics.get("retries", 0.0) for s in samples)
    m["rollout/engine_failed"] = sum(map(engine_failed, samples)) / len(samples)  # of the failed: the engine's
    rewards = [s.reward for s in samples if s.trainable]
    if rewards:
        m["rollout/reward_mean"] = statistics.fmean(rewards)
        m["rollout/reward_std"] = statistics.pstdev(rewards)
    m["rollout/response_len_mean"] = statistics.fmean(len(s.response_ids) for s in samples)
    m["rollout/timed_out"] = sum(map(timed_out, samples)) / len(samples)  # of the failed: --episode-timeout's
    m["rollout/generated_tokens"] = float(sum(s.num_generated_tokens for s in samples))
    for key in ("turns", "tool_calls", "tool_errors", "time_generate", "time_env", "time_total"):
        m[f"rollout/{key}_mean"] = statistics.fmean(s.metrics.get(key, 0.0) for s in samples)
    m["rollout/tokens_per_s"] = m["rollout/generated_tokens"] / max(seconds, 1e-9)
    trained = [[s.reward for s in g.samples if s.trainable] for g in finished]
    zero_var = sum(1 for rewards in trained if len(rewards) > 1 and len(set(rewards)) == 1)
    m["rollout/zero_variance_groups"] = zero_var / len(finished)
    for reason, n in dropped.items():
        m[f"rollout/dropped_{reason}"] = float(n)
    kept_rewards = [s.reward for g in kept for s in g.samples]
    if kept_rewards:
        m["rollout/kept_reward_mean"] = statistics.fmean(kept_rewards)
    return m
