"""The viewer without a browser: what the page's paths answer, the HTTP server, the static export."""

import json
import re
import threading
import urllib.error
import urllib.request

import pytest

from agentrl.cli import main as agentrl_main
from agentrl.eval.store import RunStore
from agentrl.obs.dump import read_dump
from agentrl.types import Group, Sample
from agentrl.view.data import Sources, ViewError
from agentrl.view.export import export_data, export_html
from agentrl.view.server import make_server


def test_listing_and_run(recorded_run):
    sources = Sources([recorded_run])
    listing = sources.get("api/sources.json")["sources"]
    assert listing[0]["kind"] == "run"
    assert [r["step"] for r in listing[0]["rollouts"]] == [1, 2]
    assert [e["step"] for e in listing[0]["evals"]] == [0, 1, 2]
    run = sources.get("api/0/run.json")
    assert run["config"]["save-debug-rollout-data"] is True
    steps = [r["step"] for r in run["metrics"] if "rollout/reward_mean" in r]
    assert steps == [1, 2] and all(isinstance(v, (int, float)) for r in run["metrics"] for v in r.values())


def test_index_and_episode_equal_the_dump(recorded_run):
    sources = Sources([recorded_run])
    dump = read_dump(recorded_run / "rollout_data" / "rollout_000001.jsonl.gz")
    index = sources.get("api/0/rollout_000001/index.json")
    assert index["step"] == 2 and len(index["index"]) == len(dump.episodes)
    assert [e["status"] for e in index["index"]] == [e.sample.status for e in dump.episodes]
    for i, e in enumerate(dump.episodes):
        got = sources.get(f"api/0/rollout_000001/{i}.json")
        assert got["record"] == e.to_record()
        assert {int(k): v for k, v in got["token_text"].items()} == {
            t: dump.token_text[t] for t in set(e.sample.prompt_ids + e.sample.response_ids)}


def test_search_and_unknown_paths(recorded_run):
    sources = Sources([recorded_run])
    found = sources.get("api/0/search.json?q=FLAKY%20scorer")["matches"]
    failed = {name: [e["i"] for e in sources.get(f"api/0/{name}/index.json")["index"] if e["status"] == "failed"]
              for name in ("rollout_000000", "rollout_000001")}
    assert found == failed and all(failed.values())
    assert sources.get("api/0/search.json?q=")["matches"] == {}
    for bad in ("api/1/run.json", "api/0/rollout_000009/index.json", "api/0/rollout_000000/99.json",
                "api/0/../../etc/passwd/index.json", "api/x.json"):
        with pytest.raises(ViewError):
            sources.get(bad)


def test_an_evaluation_folder(tmp_path):
    store = RunStore(tmp_path / "eval")
    store.prepare({"model_path": "tiny-qwen2", "n_samples": 1})
    s = Sample(prompt_ids=[1], response_ids=[2], loss_mask=[1], rollout_logprobs=[-0.5], reward=1.0, group_id=3)
    store.append_group("sums", 3, Group(3, [s]))
    sources = Sources([tmp_path / "eval"])
    assert sources.get("api/sources.json")["sources"][0]["evals"] == [{"name": "episodes", "step": None}]
    assert sources.get("api/0/episodes/index.json")["index"][0]["task"] == "sums"
    ep = sources.get("api/0/episodes/0.json")
    assert ep["record"]["reward"] == 1.0
    # episodes.jsonl holds ids only: their texts come from the tokenizer named in run.json
    from agentrl.models import load_tokenizer

    tok = load_tokenizer("tiny-qwen2")
    assert ep["token_text"] == {"1": tok.decode([1]), "2": tok.decode([2])}


def test_folders_with_nothing_to_view_are_refused(tmp_path, capsys):
    with pytest.raises(ViewError, match="neither a training run"):
        Sources([tmp_path])
    assert agentrl_main(["view", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_http_server(recorded_run):
    server = make_server(Sources([recorded_run]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def get(path):
            with urllib.request.urlopen(server.url + path, timeout=10) as r:
                return r.status, r.headers, r.read().decode()

        status, headers, page = get("")
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        assert 'src="app.js"' in page
        assert get("app.js")[1]["Content-Type"].startswith("text/javascript")
        listing = json.loads(get("api/sources.json")[2])
        assert listing["sources"][0]["rollouts"][0]["name"] == "rollout_000000"
        with pytest.raises(urllib.error.HTTPError) as e:
            get("api/0/rollout_000000/99.json")
        assert e.value.code == 404 and "no episode 99" in json.loads(e.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_assets_reference_nothing_outside():
    from agentrl.view.server import asset

    for name in ("index.html", "app.js", "app.css"):
        text = asset(name)
        # the one URL in the page is SVG's namespace name, which is never fetched
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
        assert "@import" not in text and "url(" not in text


def test_export_holds_every_answer(recorded_run, tmp_path):
    sources = Sources([recorded_run])
    data = export_data(sources)
    n = sum(len(sources.get(f"api/0/{d}/index.json")["index"]) for d in sources.sources[0].dumps)
    assert sum(1 for k in data if re.fullmatch(r"api/0/\w+/\d+\.json", k)) == n
    path = tmp_path / "report.html"
    assert agentrl_main(["view", str(recorded_run), "--export", str(path)]) == 0
    html = path.read_text()
    assert 'src="app.js"' not in html and 'href="app.css"' not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    blob = re.search(r'<script id="agentrl-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert json.loads(blob) == json.loads(json.dumps(data))
    assert export_html(sources, tmp_path / "again.html").read_text() == html
