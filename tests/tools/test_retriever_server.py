"""The Search-R1 retrieval protocol over HTTP: shapes, defaults, bad requests, the CLI."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentrl.engine.server import BackgroundServer
from tools.retriever import load_retriever
from tools.retriever.server import TABLE, create_app, main

REPO = Path(__file__).parents[2]
CORPUS = REPO / "tests" / "fixtures" / "search" / "corpus.jsonl"


@pytest.fixture(scope="module")
def server():
    app = create_app(load_retriever(CORPUS, "bm25", cache=False), default_topk=2, max_topk=10)
    with BackgroundServer(app) as s:
        yield s


def post(server, body):
    return httpx.post(server.url + "/retrieve", json=body, timeout=10)


def test_scored_results_have_search_r1_shape(server):
    r = post(server, {"queries": ["capital of Norway", "deepest lake"], "topk": 3, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 2
    first = result[0][0]
    assert set(first) == {"document", "score"} and set(first["document"]) == {"id", "contents"}
    assert first["document"]["id"] == "doc10" and first["document"]["contents"].startswith('"Oslo"\nOslo is')
    assert isinstance(first["score"], float) and first["score"] > 0
    assert result[1][0]["document"]["id"] == "doc0"
    assert [h["score"] for h in result[0]] == sorted((h["score"] for h in result[0]), reverse=True)


def test_unscored_results_are_lists_of_documents(server):
    r = post(server, {"queries": ["capital of Finland"], "topk": 1})  # return_scores defaults to false
    assert r.status_code == 200
    assert r.json() == {"result": [[{"id": "doc11", "contents": '"Helsinki"\nHelsinki is the capital and largest '
                                     'city of Finland, on the shore of the Gulf of Finland.'}]]}


def test_topk_defaults_and_limits(server):
    assert len(post(server, {"queries": ["board game two players"]}).json()["result"][0]) == 2  # server default
    assert len(post(server, {"queries": ["board game two players"], "topk": 0}).json()["result"][0]) == 2
    assert post(server, {"queries": [], "topk": 3}).json() == {"result": []}
    assert post(server, {"queries": ["zyzzyva"], "topk": 3}).json() == {"result": [[]]}
    extra = post(server, {"queries": ["capital of Norway"], "topk": 1, "unknown_field": 1})
    assert extra.status_code == 200


@pytest.mark.parametrize("body, needle", [
    ({"queries": "capital of Norway"}, "queries: Input should be a valid list"),
    ({"topk": 3}, "queries: Field required"),
    ({"queries": [1, 2]}, "queries.0: Input should be a valid string"),
    ({"queries": ["x"], "topk": -1}, "topk must be between 1 and 10"),
    ({"queries": ["x"], "topk": 11}, "topk must be between 1 and 10"),
    ({"queries": ["x"], "return_scores": "maybe"}, "return_scores: Input should be a valid boolean"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(server, body, needle):
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"] and '"queries"' in r.json()["expected"]
    assert post(server, {"queries": ["capital of Norway"], "topk": 1}).status_code == 200


def test_body_that_is_not_json_gets_400(server):
    r = httpx.post(server.url + "/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]


def test_health_describes_the_index(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["method"] == "bm25" and h["num_docs"] == 12 and h["default_topk"] == 2


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--corpus", "--method", "--model", "--index-dir", "--host", "--port", "--topk", "--device"):
        assert flag in out
    assert TABLE.parse(["--corpus", "c.jsonl"])[0].port == 8000


def test_cli_errors_are_clear_exit_codes(tmp_path, capsys):
    assert main(["--corpus", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--corpus", str(CORPUS), "--topk", "0"]) == 2


def test_build_only_writes_the_index(tmp_path):
    assert main(["--corpus", str(CORPUS), "--index-dir", str(tmp_path / "idx"), "--build-only", "--log-level", "warning"]) == 0
    assert (tmp_path / "idx" / "bm25" / "meta.json").is_file()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_over_a_real_socket(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "tools.retriever.server", "--corpus", str(CORPUS), "--port", str(port),
           "--index-dir", str(tmp_path / "idx"), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/retrieve", json={"queries": ["highest point in Africa"],
                                                                          "topk": 1, "return_scores": True})
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert r.json()["result"][0][0]["document"]["id"] == "doc6"
    finally:
        proc.terminate()
        proc.wait(10)
    assert json.loads((tmp_path / "idx" / "bm25" / "meta.json").read_text())["method"] == "bm25"


class SlowRetriever:
    """Wraps a retriever; each search takes 0.2 s and is recorded."""

    def __init__(self, inner, fail_on=None):
        self.inner, self.calls, self.fail_on = inner, [], fail_on

    def search(self, queries, topk):
        self.calls.append((list(queries), topk))
        time.sleep(0.2)
        if self.fail_on in queries:
            raise RuntimeError("index exploded")
        return self.inner.search(queries, topk)

    def describe(self):
        return {"method": "slow"}


async def test_concurrent_requests_are_batched_and_answered_separately():
    import asyncio

    inner = load_retriever(CORPUS, "bm25", cache=False)
    slow = SlowRetriever(inner)
    questions = ["capital of Norway", "deepest lake", "first computer programmer", "highest point in Africa",
                 "crocus spice", "board game squares", "capital of Finland", "Andes mountain"]
    with BackgroundServer(create_app(slow, max_batch=4)) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post("/retrieve", json={"queries": [q], "topk": 1 + i % 3, "return_scores": True})
                for i, q in enumerate(questions)))
    assert all(r.status_code == 200 for r in responses)
    for i, (q, r) in enumerate(zip(questions, responses)):
        expected = [h.id for h in inner.search([q], 1 + i % 3)[0]]
        assert [d["document"]["id"] for d in r.json()["result"][0]] == expected
    assert len(slow.calls) < len(questions)  # several requests per search
    assert all(len(queries) <= 4 for queries, _ in slow.calls)  # max_batch


def test_a_failing_search_gives_500_and_the_server_recovers():
    slow = SlowRetriever(load_retriever(CORPUS, "bm25", cache=False), fail_on="boom")
    with BackgroundServer(create_app(slow)) as s:
        r = httpx.post(s.url + "/retrieve", json={"queries": ["boom"]})
        assert r.status_code == 500 and "index exploded" in r.json()["message"]
        assert httpx.post(s.url + "/retrieve", json={"queries": ["capital of Norway"], "topk": 1}).status_code == 200
