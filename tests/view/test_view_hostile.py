"""The viewer against hostile folders and requests: links out of a run folder, pipes, numbers too long to be
numbers, methods other than GET, and a big run's search and memory bounds."""

import http.client
import json
import os
import threading
import time

import pytest

from agentrl.obs.dump import DumpedEpisode, write_dump
from agentrl.types import Sample
from agentrl.view.data import Sources, ViewError
from agentrl.view.server import make_server


def _episodes(n, text="hello"):
    return [DumpedEpisode(Sample(prompt_ids=[1], response_ids=[2, 3], loss_mask=[1, 1], rollout_logprobs=[-0.1, -0.2],
                                 reward=float(i), group_id=i, messages=[{"role": "user", "content": f"{text} {i}"}]),
                          {"kept": True}) for i in range(n)]


def _run(path, dumps=2, n=3):
    for k in range(dumps):
        write_dump(path / "rollout_data" / f"rollout_{k:06d}.jsonl.gz", {"kind": "rollout", "step": k + 1},
                   _episodes(n, f"text{k}"), {1: "a", 2: "b", 3: "c"})
    (path / "metrics.jsonl").write_text('{"step": 1, "rollout/reward_mean": 0.5}\n')
    return path


def test_links_out_of_the_folder_are_not_read(tmp_path, caplog):
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "secrets.json").write_text('{"token": "s3cr3t"}')
    write_dump(secret / "private.jsonl.gz", {"kind": "rollout"}, _episodes(2, "private"))
    (secret / "private.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "private"}]}) + "\n")
    run = _run(tmp_path / "run", dumps=1)
    (run / "config.json").symlink_to(secret / "secrets.json")
    (run / "summary.json").symlink_to(secret / "secrets.json")
    (run / "rollout_data" / "rollout_000001.jsonl.gz").symlink_to(secret / "private.jsonl.gz")
    (run / "rollout_data" / "eval_000000.jsonl.gz").symlink_to("../../elsewhere/private.jsonl.gz")
    os.symlink(run / "rollout_data" / "rollout_000000.jsonl.gz", run / "rollout_data" / "rollout_000002.jsonl.gz")
    sources = Sources([run])
    listing = sources.get("api/sources.json")["sources"][0]
    assert [r["name"] for r in listing["rollouts"]] == ["rollout_000000", "rollout_000002"]  # a link inside is fine
    assert listing["evals"] == []
    got = sources.get("api/0/run.json")
    assert got["config"] is None and got["summary"] is None and "s3cr3t" not in json.dumps(got)
    assert sources.get("api/0/rollout_000002/1.json")["record"]["reward"] == 1.0
    assert sources.get("api/0/search.json?q=private")["matches"] == {}
    assert any("points outside" in r.getMessage() for r in caplog.records)
    with pytest.raises(ViewError, match="no dump 'rollout_000001'"):
        sources.get("api/0/rollout_000001/0.json")

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "episodes.jsonl").symlink_to(secret / "private.jsonl")
    (evaluation / "metrics.jsonl").write_text("")
    assert Sources([evaluation]).sources[0].dumps == {}  # its episodes are not the linked file's


def test_the_folder_itself_may_be_a_link(tmp_path):
    run = _run(tmp_path / "real")
    (tmp_path / "alias").symlink_to(run)
    sources = Sources([tmp_path / "alias"])
    assert sources.get("api/0/rollout_000001/2.json")["record"]["reward"] == 2.0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_or_device_named_like_a_run_file_is_not_read(tmp_path):
    run = _run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")  # reading it would wait forever
    os.mkfifo(run / "config.json")
    (run / "summary.json").symlink_to("/dev/zero")  # reading it would never end
    os.mkfifo(run / "rollout_data" / "rollout_000009.jsonl.gz")
    result = {}
    reader = threading.Thread(target=lambda: result.update(run=Sources([run]).get("api/0/run.json")), daemon=True)
    reader.start()
    reader.join(10)
    assert result["run"]["metrics"] == [] and result["run"]["config"] is None and result["run"]["summary"] is None
    assert "rollout_000009" not in Sources([run]).sources[0].dumps


@pytest.mark.parametrize("path", ["api/0/rollout_000000/" + "9" * 5000 + ".json", "api/" + "9" * 5000 + "/run.json",
                                  "api/" + "1" * 40 + "/rollout_000000/index.json", "api/0/rollout_000000/-1.json",
                                  "api/0/rollout_000000/\u0663.json", "api/\uff10/run.json"])
def test_numbers_that_are_no_episode_are_no_such_path(tmp_path, path):
    with pytest.raises(ViewError):
        Sources([_run(tmp_path / "run")]).get(path)


def _request(server, method, path, body=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path):
    server = make_server(Sources([_run(tmp_path / "run")]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_server_answers_get_and_head_and_refuses_the_rest(server):
    status, headers, body = _request(server, "GET", "/api/0/rollout_000000/" + "9" * 5000 + ".json")
    assert status == 404 and "no such path" in json.loads(body)["error"]  # not a 500 with a traceback
    for path in ("/", "/app.js", "/api/0/rollout_000000/1.json"):
        status, head_headers, body = _request(server, "HEAD", path)
        _, get_headers, get_body = _request(server, "GET", path)
        assert status == 200 and body == b"" and head_headers["Content-Length"] == str(len(get_body)), path
        assert get_headers["X-Content-Type-Options"] == "nosniff"
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        status, headers, body = _request(server, method, "/api/sources.json", body=b"x" * 100)
        assert status == 405 and headers["Allow"] == "GET, HEAD" and b"GET and HEAD" in body, method
    assert _request(server, "GET", "/api/sources.json")[0] == 200  # still serving


def test_search_covers_the_dump_asked_for_and_stops_in_time(tmp_path):
    run = _run(tmp_path / "run", dumps=3)
    write_dump(run / "rollout_data" / "eval_000000.jsonl.gz", {"kind": "eval", "step": 0}, _episodes(2, "text1"))
    sources = Sources([run])
    assert sources.get("api/0/search.json?q=text1")["matches"] == {"rollout_000001": [0, 1, 2], "eval_000000": [0, 1]}
    one = sources.get("api/0/search.json?q=text1&dump=rollout_000001")
    assert one["matches"] == {"rollout_000001": [0, 1, 2]} and (one["searched"], one["dumps"]) == (1, 1)
    assert sources.get("api/0/search.json?q=text&dump=rollout_000002")["matches"] == {"rollout_000002": [0, 1, 2]}
    rollouts = sources.get("api/0/search.json?q=text1&dump=*")
    assert rollouts["matches"] == {"rollout_000001": [0, 1, 2]} and rollouts["dumps"] == 3
    with pytest.raises(ViewError, match="no dump"):
        sources.get("api/0/search.json?q=x&dump=rollout_000009")
    assert not sources._lines  # a search reads files through; it does not fill the episode cache
    stopped = Sources([run], search_seconds=0).get("api/0/search.json?q=text&dump=*")
    assert stopped["truncated"] and stopped["searched"] < stopped["dumps"] == 3


def test_the_episode_cache_is_bounded_in_bytes(tmp_path):
    run = _run(tmp_path / "run", dumps=4, n=50)
    sources = Sources([run], cache_bytes=1)
    for k in range(4):
        assert sources.get(f"api/0/rollout_{k:06d}/7.json")["record"]["reward"] == 7.0
        assert len(sources._lines) == 1  # the newest file only
    sources = Sources([run])
    for k in range(4):
        sources.get(f"api/0/rollout_{k:06d}/0.json")
    assert len(sources._lines) == 4  # small files: all kept


def test_a_big_run_lists_without_reading_episodes(tmp_path):
    """200 rollouts: the listing and every rollout's list read one line of each file, not its episodes."""
    run = tmp_path / "run"
    first = write_dump(run / "rollout_data" / "rollout_000000.jsonl.gz", {"kind": "rollout", "step": 1},
                       _episodes(64, "x" * 2000), compresslevel=1)
    for k in range(1, 200):
        os.link(first, run / "rollout_data" / f"rollout_{k:06d}.jsonl.gz")
    sources = Sources([run])
    t0 = time.monotonic()
    assert len(sources.get("api/sources.json")["sources"][0]["rollouts"]) == 200
    assert sum(len(sources.get(f"api/0/rollout_{k:06d}/index.json")["index"]) for k in range(200)) == 200 * 64
    assert not sources._lines and time.monotonic() - t0 < 30


def test_a_dump_named_with_markup_or_a_newline_is_left_out(tmp_path):
    run = _run(tmp_path / "run", dumps=1)
    for name in ("rollout_<!--<script>", "rollout_1\n", "eval_\u00e9"):
        write_dump(run / "rollout_data" / f"{name}.jsonl.gz", {"kind": "rollout"}, _episodes(1))
    assert list(Sources([run]).sources[0].dumps) == ["rollout_000000"]


def _blob(html):
    import re

    return re.search(r'<script id="agentrl-data" type="application/json">(.*?)</script>', html, re.S).group(1)


def test_an_export_past_what_a_browser_reads_keeps_the_lists_and_leaves_out_episodes(tmp_path, caplog):
    from agentrl.view.export import export_html

    run = _run(tmp_path / "run", dumps=3, n=20)
    whole = _blob(export_html(Sources([run]), tmp_path / "whole.html").read_text())
    assert sum(k.endswith("/7.json") for k in json.loads(whole)) == 3
    html = export_html(Sources([run]), tmp_path / "cut.html", max_chars=len(whole) // 2).read_text()
    blob = _blob(html)
    data = json.loads(blob)
    assert len(blob) <= len(whole) // 2 and html.rstrip().endswith("</html>")
    assert all(f"api/0/rollout_{k:06d}/index.json" in data for k in range(3))  # every list is kept
    episodes = [k for k in data if k.count("/") == 3 and not k.endswith("index.json")]
    assert 0 < len(episodes) < 60 and "api/0/rollout_000000/0.json" in data  # the first episodes, in order
    assert any("episodes left out" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("*.tmp"))
