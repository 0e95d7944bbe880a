"""The viewer over half-written folders (a kill mid-write, a garbled byte, a file that is not what its name
says) and over hostile requests: what can be read is shown, the rest is one clear error, never a dead page,
a failed export or a traceback."""

import http.client
import json
import re
import threading

import pytest

from agentrl.cli import main as agentrl_main
from agentrl.eval.store import RunStore
from agentrl.obs.dump import DumpedEpisode, write_dump
from agentrl.types import Group, Sample
from agentrl.view.data import Sources, ViewError
from agentrl.view.export import export_data
from agentrl.view.server import make_server


def _sample(i, text="hello"):
    return Sample(prompt_ids=[1, 2], response_ids=[3, 4], loss_mask=[1, 1], rollout_logprobs=[-0.1, -0.2],
                  reward=float(i), group_id=i, messages=[{"role": "user", "content": f"{text} {i}"}])


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as a kill leaves it: metrics cut mid-line and garbled, broken summary and config, one dump
    fine, one cut mid-stream, one that is not gzip, one that is a folder."""
    run = tmp_path / "run"
    dumps = run / "rollout_data"
    episodes = [DumpedEpisode(_sample(i), {"kept": True}) for i in range(40)]
    write_dump(dumps / "rollout_000000.jsonl.gz", {"kind": "rollout", "step": 1}, episodes[:3], {3: "a", 4: "b"})
    whole = write_dump(dumps / "rollout_000001.jsonl.gz", {"kind": "rollout", "step": 2}, episodes,
                       {3: "a", 4: "b"}, compresslevel=0).read_bytes()
    (dumps / "rollout_000001.jsonl.gz").write_bytes(whole[:len(whole) * 2 // 3])
    (dumps / "rollout_000002.jsonl.gz").write_bytes(b"not gzip")
    (dumps / "rollout_000003.jsonl.gz").mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "rollout/reward_mean": 0.5}\n[1, 2]\n7\n'
                                        b'{"step": 2, "note": "\xff\xfe", "rollout/reward_mean": 0.7}\n'
                                        b'{"step": 3, "rollout/rew')
    (run / "summary.json").write_text('{"steps": ')
    (run / "config.json").write_text("[1, 2]")
    return run


def test_a_half_written_run_shows_what_it_can(run_dir):
    sources = Sources([run_dir])
    assert [r["name"] for r in sources.get("api/sources.json")["sources"][0]["rollouts"]] == \
        ["rollout_000000", "rollout_000001", "rollout_000002"]  # a folder named like a dump is not one
    run = sources.get("api/0/run.json")
    assert [r["rollout/reward_mean"] for r in run["metrics"]] == [0.5, 0.7]
    assert run["config"] is None and run["summary"] is None
    assert sources.get("api/0/rollout_000000/2.json")["record"]["reward"] == 2.0
    cut = sources.get("api/0/rollout_000001/index.json")
    assert len(cut["index"]) == 40  # the header lists all; the episodes before the cut open
    assert sources.get("api/0/rollout_000001/0.json")["record"]["reward"] == 0.0
    with pytest.raises(ViewError, match="rollout_000002.jsonl.gz: cannot be read"):
        sources.get("api/0/rollout_000002/index.json")
    with pytest.raises(ViewError, match="cannot be read"):
        sources.get("api/0/rollout_000002/0.json")
    assert sources.get("api/0/search.json?q=hello 1")["matches"]["rollout_000000"] == [1]


def test_export_writes_everything_readable_and_warns_about_the_rest(run_dir, tmp_path, caplog):
    data = export_data(Sources([run_dir]))
    assert "api/0/rollout_000000/2.json" in data and "api/0/rollout_000001/0.json" in data
    assert "api/0/rollout_000002/index.json" not in data
    assert any("leaving out rollout_000002" in r.getMessage() for r in caplog.records)
    out = tmp_path / "report.html"
    assert agentrl_main(["view", str(run_dir), "--export", str(out)]) == 0
    blob = re.search(r'<script id="agentrl-data" type="application/json">(.*?)</script>', out.read_text(), re.S)
    assert json.loads(blob.group(1))["api/0/rollout_000000/1.json"]["record"]["reward"] == 1.0


def test_export_to_a_folder_is_one_line(run_dir, tmp_path, capsys):
    assert agentrl_main(["view", str(run_dir), "--export", str(tmp_path)]) == 2
    assert f"--export {tmp_path}: cannot write it" in capsys.readouterr().err


def test_an_evaluation_with_garbled_lines_keeps_positions(tmp_path):
    store = RunStore(tmp_path / "eval")
    store.prepare({"model_path": "nowhere"})
    store.append_group("t", 0, Group(0, [_sample(0)]))
    with open(store.episodes_path, "ab") as f:
        f.write(b'{"task": "t", "messages": "\xff"\n[1]\n')
    store.append_group("t", 1, Group(1, [_sample(1)]))
    sources = Sources([tmp_path / "eval"])
    index = sources.get("api/0/episodes/index.json")
    assert [e["i"] for e in index["index"]] == [0, 3] and index["episodes_total"] == 2
    assert sources.get("api/0/episodes/3.json")["record"]["reward"] == 1.0
    for i in (1, 2):
        with pytest.raises(ViewError, match=f"episode {i} is not a JSON object"):
            sources.get(f"api/0/episodes/{i}.json")
    assert sources.get("api/0/search.json?q=hello")["matches"] == {"episodes": [0, 3]}


def _get(server, path, host):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_the_server_answers_only_requests_addressed_to_this_machine(run_dir):
    server = make_server(Sources([run_dir]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            status, body = _get(server, "/api/0/run.json", host)
            assert status == 200 and json.loads(body)["metrics"], host
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}", ""):
            status, body = _get(server, "/api/0/run.json", host)
            assert status == 403 and b"metrics" not in body, host
        status, body = _get(server, "/api/0/rollout_000002/0.json", f"127.0.0.1:{port}")
        assert status == 404 and "cannot be read" in json.loads(body)["error"]
        status, _ = _get(server, "/api/0/../../../etc/passwd", f"127.0.0.1:{port}")
        assert status == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(run_dir, capsys, port):
    with pytest.raises(SystemExit) as e:
        agentrl_main(["view", str(run_dir), f"--port={port}"])
    assert e.value.code == 2 and "--port" in capsys.readouterr().err


def test_episode_text_cannot_close_the_export_script_or_open_markup(tmp_path):
    """Model output, a task name and the folder's name are data: in the export they stay inside the JSON block."""
    hostile = "</script><script>alert(1)</script><!-- <img src=x onerror=alert(2)> \u2028 ]]>"
    run = tmp_path / "<i>run"
    write_dump(run / "rollout_data" / "rollout_000000.jsonl.gz", {"kind": "rollout", "step": 1},
               [DumpedEpisode(_sample(0, hostile), {"kept": True, "error": hostile})], {3: hostile})
    out = tmp_path / "report.html"
    assert agentrl_main(["view", str(run), "--export", str(out)]) == 0
    html = out.read_text()
    assert html.lower().count("</script") == 2  # the data block's and the inlined app.js's closing tags
    assert "<img" not in html and "<i>run" not in html
    blob = json.loads(re.search(r'<script id="agentrl-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))
    episode = blob["api/0/rollout_000000/0.json"]
    assert episode["record"]["messages"][0]["content"] == f"{hostile} 0" and episode["record"]["error"] == hostile
    assert episode["token_text"]["3"] == hostile and blob["api/sources.json"]["sources"][0]["name"] == "<i>run"
