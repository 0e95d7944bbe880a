"""Coalesce concurrent retrieval requests into one batched search.

An RL rollout sends many small requests at once (one query per episode turn). Dense search costs
about the same for 1 query as for 32 (one pass over the embeddings: on one H100, 13.5 ms for 1
query and 19 ms for 32 over 21M wiki-18-sized vectors), so the server queues requests while a
search runs and serves everything queued with the next single ``search`` call. An idle server
adds no delay: a lone request is searched at once.

Each request's rows are the first ``topk`` of a search at the batch's largest ``topk`` (both are
sorted best first, so these agree up to ties).

Requests take turns: a search takes at most ``max_batch`` queries, from the requests in the order
they wait, and a request with queries left over goes to the back of the line, behind those that
arrived during the search. A request of 200,000 queries is searched ``max_batch`` at a time, and
a one-query request that arrives meanwhile waits for one search, not for the whole batch.

Example::

    >>> import asyncio
    >>> from tools.retriever.index import load_retriever
    >>> batcher = QueryBatcher(load_retriever("envs/data/search_mini.jsonl", cache=False))
    >>> async def two_requests():
    ...     return await asyncio.gather(batcher.search(["capital of Canada"], 1), batcher.search(["red planet"], 2))
    >>> a, b = asyncio.run(two_requests())
    >>> a[0][0].title, [h.title for h in b[0]], batcher.searches
    ('Ottawa', ['Mars', 'Mercury (planet)'], 1)
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

from tools.retriever.index import Hit, SupportsSearch

log = logging.getLogger(__name__)


@dataclass
class _Request:
    queries: list[str]
    topk: int
    future: asyncio.Future = field(repr=False)
    done: int = 0
    """Queries searched so far."""
    rows: list[list[Hit]] = field(default_factory=list, repr=False)


class QueryBatcher:
    """Serve :meth:`search` calls from one event loop with as few retriever calls as possible."""

    def __init__(self, retriever: SupportsSearch, *, max_batch: int = 512):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        self.retriever = retriever
        self.max_batch = max_batch
        self.searches = 0  # retriever calls made (for tests and /health)
        self._pending: collections.deque[_Request] = collections.deque()
        self._worker: asyncio.Task | None = None

    async def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        """What ``retriever.search(queries, topk)`` returns, possibly computed with other requests."""
        if not queries:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Request(list(queries), topk, future))
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, unfinished = self._next_batch()
            await self._run(batch)
            self._pending.extend(unfinished)  # behind the requests that came during the search

    def _next_batch(self) -> tuple[list[tuple[_Request, int, int]], list[_Request]]:
        """``(request, start, stop)`` slices for one search, in waiting order, up to ``max_batch``
        queries; and the requests with queries left, which go to the back of the line."""
        batch: list[tuple[_Request, int, int]] = []
        size, unfinished = 0, []
        while self._pending and size < self.max_batch:
            r = self._pending.popleft()
            if r.future.done():  # the client went away
                continue
            stop = min(len(r.queries), r.done + self.max_batch - size)
            batch.append((r, r.done, stop))
            size += stop - r.done
            r.done = stop
            if stop < len(r.queries):
                unfinished.append(r)
        return batch, unfinished

    async def _run(self, batch: list[tuple[_Request, int, int]]) -> None:
        if not batch:
            return
        queries = [q for r, start, stop in batch for q in r.queries[start:stop]]
        k = max(r.topk for r, _, _ in batch)
        try:
            rows = await asyncio.to_thread(self.retriever.search, queries, k)
        except Exception as e:
            for r, _, _ in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        finally:
            self.searches += 1
        if len(batch) > 1:
            log.debug("served %d requests (%d queries) with one search", len(batch), len(queries))
        offset = 0
        for r, start, stop in batch:
            r.rows += [row[: r.topk] for row in rows[offset: offset + stop - start]]
            offset += stop - start
            if stop == len(r.queries) and not r.future.done():  # the client may have gone away
                r.future.set_result(r.rows)
