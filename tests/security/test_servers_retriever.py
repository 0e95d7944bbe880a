"""Hostile clients against ``agentrl retriever``: a request cannot carry unbounded queries or bytes,
a big request takes turns with small ones, and malformed bodies are 4xx, never 500."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from agentrl.engine.server import BackgroundServer
from tools.retriever import load_retriever
from tools.retriever.server import create_app

CORPUS = Path(__file__).parents[1] / "fixtures" / "search" / "corpus.jsonl"


@pytest.fixture(scope="module")
def bm25():
    return load_retriever(CORPUS, "bm25", cache=False)


class GatedRetriever:
    """Records every search; holds the first one until ``gate`` opens, so tests control the order."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.gate, self.first_started = threading.Event(), threading.Event()

    def search(self, queries, topk):
        self.calls.append(list(queries))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.gate.wait(60)
        return self.inner.search(queries, topk)

    def describe(self):
        return {"method": "gated"}


def test_200000_queries_in_one_request_are_refused(bm25):
    with BackgroundServer(create_app(bm25)) as s:
        r = httpx.post(s.url + "/retrieve", json={"queries": ["capital of Norway"] * 200_000}, timeout=60)
        assert r.status_code == 400 and "200,000 queries in one request; at most 10,000" in r.json()["message"]
        assert httpx.post(s.url + "/retrieve", json={"queries": ["capital of Norway"], "topk": 1}).status_code == 200


async def test_a_big_request_takes_turns_with_a_small_one(bm25):
    gated = GatedRetriever(bm25)
    big = [f"question {i} about lakes" for i in range(2000)]
    with BackgroundServer(create_app(gated, max_batch=64)) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
            big_request = asyncio.ensure_future(client.post("/retrieve", json={"queries": big, "topk": 1}))
            await asyncio.to_thread(gated.first_started.wait, 60)  # the first slice of the big one is searching
            small_request = asyncio.ensure_future(client.post("/retrieve", json={"queries": ["capital of Finland"],
                                                                                 "topk": 1}))
            await asyncio.sleep(0.2)  # the small request arrives and waits
            gated.gate.set()
            small, large = await small_request, await big_request
    assert small.status_code == 200 and small.json()["result"][0][0]["id"] == "doc11"
    assert large.status_code == 200 and len(large.json()["result"]) == 2000
    assert all(len(queries) <= 64 for queries in gated.calls)  # before: one search of all 2,000
    # the small query rides in the second search, not after the 32 slices of the big one
    assert "capital of Finland" in gated.calls[1]
    assert sum(len(q) for q in gated.calls) == 2001


def test_every_query_of_a_big_request_gets_its_own_rows(bm25):
    queries = ["capital of Norway", "deepest lake", "capital of Finland"] * 50
    with BackgroundServer(create_app(bm25, max_batch=7)) as s:
        rows = httpx.post(s.url + "/retrieve", json={"queries": queries, "topk": 1}).json()["result"]
    assert [r[0]["id"] for r in rows] == [h[0].id for h in bm25.search(queries, 1)]


@pytest.mark.parametrize("body, status, clue", [
    (b"[" * 100_000, 400, "nested"),
    (b'{"queries": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested"),
    (b'{"queries": ["\xff"]}', 400, "not UTF-8"),
    (b'{"queries": ["' + b"x" * 20_000 + b'"]}', 400, "queries.0 has 20,000 characters"),
    (b"", 400, "body"),
    (b"null", 400, "body"),
    (b'{"queries": ["\\ud800 lake"]}', 400, "lone UTF-16 surrogate"),
    # JSON types are kept: a string or a boolean is not taken for a number or a flag
    (b'{"queries": ["deepest lake"], "return_scores": "no"}', 400, "return_scores"),
    (b'{"queries": ["deepest lake"], "topk": "3"}', 400, "topk"),
    (b'{"queries": ["deepest lake"], "topk": true}', 400, "topk"),
])
def test_malformed_bodies_are_4xx_and_the_server_keeps_serving(bm25, body, status, clue):
    with BackgroundServer(create_app(bm25)) as s:
        r = httpx.post(s.url + "/retrieve", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and clue in r.json()["message"], r.text
        assert httpx.post(s.url + "/retrieve", json={"queries": ["deepest lake"], "topk": 1}).status_code == 200


def test_a_body_over_the_limit_is_413(bm25):
    with BackgroundServer(create_app(bm25, max_request_bytes=1 << 20)) as s:
        r = httpx.post(s.url + "/retrieve", json={"queries": ["q" * 1000] * 2000})
        assert r.status_code == 413 and "1,048,576 bytes" in r.json()["message"]
