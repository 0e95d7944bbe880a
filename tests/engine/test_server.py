"""The SGLang-compatible server, spoken to by a plain HTTP client (httpx) over a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from agentrl.engine.base import Completion, SamplingParams
from agentrl.engine.server import BackgroundServer, build_parser, create_app, serve_main
from agentrl.models import load_tokenizer
from agentrl.testing import FakeEngine


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-qwen2")


class RecordingEngine(FakeEngine):
    """A FakeEngine that remembers the rids it was asked to abort and can fail on demand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aborts: list[str | None] = []
        self.loaded: list[str] = []

    async def abort(self, rid=None):
        self.aborts.append(rid)
        await super().abort(rid)

    async def update_weights(self, weights=None, *, version=None):
        self.loaded.append(weights)
        return await super().update_weights(weights, version=version)


def echo_next(ids, sampling):
    """Answers the three ids after the prompt's last id, then eos (2)."""
    return [ids[-1] + 1, ids[-1] + 2, ids[-1] + 3, 2]


@pytest.fixture
def served(tok):
    engine = RecordingEngine(responder=echo_next)
    with BackgroundServer(create_app(engine, tok, model_path="tiny-qwen2")) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield engine, client


@pytest.fixture(scope="module")
def shared_client(tok):
    """One server for the many malformed-request cases (they leave no state behind)."""
    engine = RecordingEngine(responder=echo_next)
    with BackgroundServer(create_app(engine, tok, model_path="tiny-qwen2")) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


def test_single_text_request_has_sglang_shape(served, tok):
    engine, client = served
    r = client.post("/generate", json={"text": "Hello world", "return_logprob": True,
                                       "sampling_params": {"max_new_tokens": 16, "temperature": 0.5}})
    assert r.status_code == 200
    out = r.json()
    prompt = tok.encode("Hello world")
    assert engine.requests[-1][0] == prompt
    assert engine.requests[-1][1].temperature == 0.5
    assert out["output_ids"] == [prompt[-1] + 1, prompt[-1] + 2, prompt[-1] + 3, 2]
    assert out["text"] == tok.decode(out["output_ids"], skip_special_tokens=True)
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": 2}
    assert meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == 4
    assert meta["weight_version"] == "0" and isinstance(meta["id"], str) and meta["id"]
    assert meta["output_token_logprobs"] == [[-0.1, out["output_ids"][0], None], [-0.2, out["output_ids"][1], None],
                                             [-0.3, out["output_ids"][2], None], [-0.4, 2, None]]


def test_input_ids_length_finish_and_text_in_logprobs(served, tok):
    engine, client = served
    out = client.post("/generate", json={"input_ids": [10, 20, 30], "rid": "abc", "return_logprob": True,
                                         "return_text_in_logprobs": True,
                                         "sampling_params": {"max_new_tokens": 2}}).json()
    assert out["output_ids"] == [31, 32]
    assert out["meta_info"]["id"] == "abc"
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 2}
    assert [e[2] for e in out["meta_info"]["output_token_logprobs"]] == [tok.decode([31]), tok.decode([32])]
    assert "output_token_logprobs" not in client.post("/generate", json={"input_ids": [5]}).json()["meta_info"]


def test_default_max_new_tokens_is_sglangs(served):
    engine, client = served
    client.post("/generate", json={"input_ids": [5]})
    assert engine.requests[-1][1].max_new_tokens == 128


def test_batches_of_ids_and_text_with_rid_prefix_and_per_prompt_params(served, tok):
    engine, client = served
    outs = client.post("/generate", json={"input_ids": [[1, 2], [7]], "rid": "b",
                                          "sampling_params": [{"max_new_tokens": 1}, {"max_new_tokens": 3}]}).json()
    assert [o["meta_info"]["id"] for o in outs] == ["b_0", "b_1"]
    assert [o["output_ids"] for o in outs] == [[3], [8, 9, 10]]
    outs = client.post("/generate", json={"text": ["one", "two"], "rid": ["x", "y"]}).json()
    assert [o["meta_info"]["id"] for o in outs] == ["x", "y"]
    assert [o["output_ids"][0] for o in outs] == [tok.encode("one")[-1] + 1, tok.encode("two")[-1] + 1]


def test_parallel_samples_expand_prompt_major(served):
    engine, client = served
    outs = client.post("/generate", json={"input_ids": [[1], [5]], "sampling_params": {"n": 2}}).json()
    assert [o["output_ids"][0] for o in outs] == [2, 2, 6, 6]
    single = client.post("/generate", json={"input_ids": [1], "rid": "p", "sampling_params": {"n": 3}}).json()
    assert isinstance(single, list) and [o["meta_info"]["id"] for o in single] == ["p_0", "p_1", "p_2"]


def test_batch_runs_concurrently(tok):
    engine = FakeEngine(responder=echo_next, latency=0.4)
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        start = time.monotonic()
        outs = httpx.post(server.url + "/generate", json={"input_ids": [[i] for i in range(1, 9)]}, timeout=30).json()
        elapsed = time.monotonic() - start
    assert len(outs) == 8 and elapsed < 1.5  # 8 x 0.4 s one after the other would take 3.2 s


def test_stop_string_is_trimmed_from_text_unless_no_stop_trim(tok):
    ids = tok.encode("The answer</a> tail")

    def responder(prompt, sampling):
        return Completion(ids, [-0.5] * len(ids), "stop", prompt_tokens=len(prompt), matched_stop="</a>")

    with BackgroundServer(create_app(FakeEngine(responder=responder), tok, model_path="m")) as server:
        trimmed = httpx.post(server.url + "/generate", json={"input_ids": [1]}).json()
        kept = httpx.post(server.url + "/generate", json={"input_ids": [1], "sampling_params": {"no_stop_trim": True}}).json()
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": "</a>"}
    assert trimmed["text"] == "The answer" and trimmed["output_ids"] == ids
    assert kept["text"] == tok.decode(ids)


def test_non_finite_logprob_is_sent_as_null(tok):
    engine = FakeEngine(responder=lambda p, s: Completion([5], [float("-inf")], "length"))
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        out = httpx.post(server.url + "/generate", json={"input_ids": [1], "return_logprob": True}).json()
    assert out["meta_info"]["output_token_logprobs"] == [[None, 5, None]]


def _events(response: httpx.Response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [line[len("data: "):] for line in response.text.split("\n\n") if line.strip()]
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


def test_stream_without_engine_streaming_sends_one_chunk_then_done(served):
    engine, client = served
    events = _events(client.post("/generate", json={"input_ids": [4], "stream": True, "return_logprob": True}))
    assert len(events) == 1
    assert events[0]["output_ids"] == [5, 6, 7, 2]
    assert events[0]["meta_info"]["finish_reason"]["type"] == "stop"
    batch = _events(client.post("/generate", json={"input_ids": [[4], [9]], "stream": True}))
    assert sorted((e["index"], e["output_ids"][0]) for e in batch) == [(0, 5), (1, 10)]


class StreamingEngine(FakeEngine):
    """Streams one token at a time through the optional ``generate_stream`` hook."""

    async def generate_stream(self, input_ids, sampling, *, rid=None) -> AsyncIterator[Completion]:
        full = await self.generate(input_ids, sampling, rid=rid)
        for n in range(1, len(full.token_ids) + 1):
            await asyncio.sleep(0)
            reason = full.finish_reason if n == len(full.token_ids) else "length"
            yield Completion(full.token_ids[:n], full.logprobs[:n], reason, full.weight_version, full.prompt_tokens)


def test_stream_is_cumulative_token_by_token_when_the_engine_streams(tok):
    with BackgroundServer(create_app(StreamingEngine(responder=echo_next), tok, model_path="m")) as server:
        r = httpx.post(server.url + "/generate", json={"input_ids": [4], "stream": True, "return_logprob": True})
    events = _events(r)
    assert [e["output_ids"] for e in events] == [[5], [5, 6], [5, 6, 7], [5, 6, 7, 2]]
    assert [e["meta_info"]["finish_reason"] for e in events[:-1]] == [None, None, None]
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2}
    assert len(events[2]["meta_info"]["output_token_logprobs"]) == 3
    assert events[-1]["text"] == tok.decode([5, 6, 7, 2], skip_special_tokens=True)


MALFORMED = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b"", "empty"),
    ({"sampling_params": {}}, "either 'text' or 'input_ids'"),
    ({"text": "a", "input_ids": [1]}, "not both"),
    ({"input_ids": []}, "non-empty"),
    ({"input_ids": [1, "x"]}, "integer token ids"),
    ({"input_ids": [[1], []]}, "input_ids[1]"),
    ({"input_ids": [1, 99999999]}, "out of range"),
    ({"input_ids": [-1]}, "out of range"),
    ({"text": 5}, "'text' must be"),
    ({"text": ""}, "empty after tokenization"),
    ({"input_ids": [1], "sampling_params": {"temprature": 0.5}}, "temprature"),
    ({"input_ids": [1], "sampling_params": {"temperature": -1}}, "temperature must be a finite number >= 0"),
    ({"input_ids": [1], "sampling_params": {"temperature": "hot"}}, "finite number"),
    ({"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p"),
    ({"input_ids": [1], "sampling_params": {"max_new_tokens": 2.5}}, "integer"),
    ({"input_ids": [1], "sampling_params": {"stop": 3}}, "'stop'"),
    ({"input_ids": [1], "sampling_params": {"n": 0}}, "'n'"),
    ({"input_ids": [1], "sampling_params": [{}, {}]}, "list of 2 dicts"),
    ({"input_ids": [[1], [2]], "rid": ["a"]}, "'rid' is a list of 1"),
    ({"input_ids": [[1], [2]], "rid": ["a", "a"]}, "duplicate"),
    ({"input_ids": [1], "rid": 5}, "'rid' must be"),
    ({"input_ids": [1], "return_logprob": "yes"}, "return_logprob"),
    ({"input_ids": [1], "stream": "yes"}, "'stream'"),
    ({"input_ids": [1], "sampling_param": {}}, "did you mean 'sampling_params'"),
    ({"input_ids": [1], "image_data": "http://x/cat.png"}, "image_data"),
    ({"input_ids": [1], "return_logprob": True, "logprob_start_len": 0}, "prompt logprobs"),
    ({"input_ids": [1], "top_logprobs_num": 5}, "top logprobs"),
    ({"input_ids": [1], "priority": "high"}, "'priority' must be an integer"),
    ({"input_ids": [1], "priority": True}, "'priority' must be an integer"),
]


@pytest.mark.parametrize("body, clue", MALFORMED, ids=[c for _, c in MALFORMED])
def test_malformed_requests_get_400_with_a_clear_message_and_the_server_keeps_serving(shared_client, body, clue):
    client = shared_client
    if isinstance(body, bytes):
        r = client.post("/generate", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/generate", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400 and clue in r.json()["message"]
    good = client.post("/generate", json={"input_ids": [1]})
    assert good.status_code == 200 and good.json()["output_ids"] == [2, 3, 4, 2]


def test_ignored_sglang_fields_are_accepted(served):
    engine, client = served
    r = client.post("/generate", json={"input_ids": [1], "log_metrics": False, "priority": 3, "routed_dp_rank": None,
                                       "logprob_start_len": -1, "sampling_params": {"skip_special_tokens": False,
                                                                                    "repetition_penalty": 1.0}})
    assert r.status_code == 200


def test_text_needs_a_tokenizer():
    with BackgroundServer(create_app(FakeEngine(responder=echo_next), None, model_path="m")) as server:
        bad = httpx.post(server.url + "/generate", json={"text": "hi"})
        good = httpx.post(server.url + "/generate", json={"input_ids": [1]}).json()
    assert bad.status_code == 400 and "input_ids" in bad.json()["message"]
    assert "text" not in good and good["output_ids"] == [2, 3, 4, 2]


def test_engine_errors_are_400_for_bad_input_and_500_otherwise_and_serving_continues(tok):
    calls = []

    def responder(ids, sampling):
        calls.append(ids)
        if ids == [13]:
            raise ValueError("prompt of 13 tokens exceeds the context")
        if ids == [66]:
            raise RuntimeError("CUDA fell over")
        return [1]

    with BackgroundServer(create_app(FakeEngine(responder=responder), tok, model_path="m")) as server:
        assert httpx.post(server.url + "/generate", json={"input_ids": [13]}).status_code == 400
        r = httpx.post(server.url + "/generate", json={"input_ids": [66]})
        assert r.status_code == 500 and "CUDA fell over" in r.json()["message"]
        assert httpx.post(server.url + "/generate", json={"input_ids": [3]}).json()["output_ids"] == [1]


def test_info_endpoints(served, tok):
    engine, client = served
    info = client.get("/get_model_info").json()
    assert info["model_path"] == "tiny-qwen2" and info["is_generation"] is True
    assert info["weight_version"] == "0" and "tokenizer_path" in info
    server = client.get("/get_server_info").json()
    assert server["vocab_size"] == len(tok) and server["internal_states"][0]["num_running_reqs"] == 0
    assert "version" in server
    assert client.get("/get_weight_version").json() == {"weight_version": "0"}
    assert client.post("/flush_cache").status_code == 200 and client.get("/flush_cache").status_code == 200


def test_engine_counters_show_in_server_info(tok):
    import dataclasses

    @dataclasses.dataclass
    class Stats:
        steps: int = 7

    engine = FakeEngine(responder=echo_next)
    engine.stats = Stats()
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        info = httpx.get(server.url + "/get_server_info").json()
    assert info["internal_states"][0]["engine_stats"] == {"steps": 7}


def test_answers_do_not_wait_for_delayed_acks(served):
    # Without TCP_NODELAY on the accepted sockets every answer took ~40 ms (Nagle + delayed ACK).
    import statistics

    engine, client = served
    times = []
    for _ in range(15):
        start = time.perf_counter()
        client.post("/generate", json={"input_ids": [1]})
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.025


def test_health_endpoints(served):
    engine, client = served
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    assert engine.requests[-1][0] == [0] and engine.requests[-1][1].max_new_tokens == 1
    broken = FakeEngine(responder=echo_next, fail_with=RuntimeError("dead"))
    with BackgroundServer(create_app(broken, None, model_path="m")) as server:
        assert httpx.get(server.url + "/health").status_code == 503
        assert httpx.get(server.url + "/health_generate").status_code == 503


def test_update_weights_from_disk_bumps_and_labels_the_version(served, tmp_path):
    import torch
    from safetensors.torch import save_file

    engine, client = served
    save_file({"w": torch.arange(3.0)}, str(tmp_path / "model.safetensors"))
    r = client.post("/update_weights_from_disk", json={"model_path": str(tmp_path)})
    assert r.status_code == 200 and r.json()["success"] is True and "num_paused_requests" in r.json()
    (loaded,) = engine.loaded  # the tensors, read from disk by the server: the engine opens no file
    assert list(loaded) == ["w"] and loaded["w"].tolist() == [0.0, 1.0, 2.0]
    assert client.post("/generate", json={"input_ids": [1]}).json()["meta_info"]["weight_version"] == "1"
    r = client.post("/update_weights_from_disk", json={"model_path": str(tmp_path), "weight_version": "7"})
    assert r.json()["success"] and "7" in r.json()["message"]
    assert client.post("/generate", json={"input_ids": [1]}).json()["meta_info"]["weight_version"] == "7"
    client.post("/update_weights_from_disk", json={"model_path": str(tmp_path), "weight_version": "step_9"})
    assert client.get("/get_model_info").json()["weight_version"] == "step_9"
    assert client.post("/generate", json={"input_ids": [1]}).json()["meta_info"]["weight_version"] == "step_9"
    r = client.post("/update_weight_version", json={"new_version": "rl-10"})
    assert r.json() == {"success": True, "message": "Weight version updated to rl-10", "new_version": "rl-10"}
    assert client.get("/get_weight_version").json() == {"weight_version": "rl-10"}


@pytest.mark.parametrize("body, clue", [({"model_path": "/no/such/folder"}, "does not exist"),
                                        ({}, "'model_path'"), ({"model_path": 3}, "'model_path'")])
def test_update_weights_from_disk_failures_are_400_success_false(served, body, clue):
    engine, client = served
    r = client.post("/update_weights_from_disk", json=body)
    assert r.status_code == 400 and r.json()["success"] is False and clue in r.json()["message"]
    assert engine.weight_version == 0


def test_sglang_only_weight_paths_answer_400(served):
    engine, client = served
    for path in ("/update_weights_from_tensor", "/update_weights_from_ipc"):
        r = client.post(path, json={})
        assert r.status_code == 400 and "SGLang-only" in r.json()["message"]
    # the distributed path exists (tests/cluster/test_server_weight_sync.py); bad requests are 400s
    r = client.post("/init_weights_update_group", json={})
    assert r.status_code == 400 and "master_address" in r.json()["message"]
    r = client.post("/update_weights_from_distributed", json={"names": ["w"], "dtypes": ["float32"], "shapes": [[1]]})
    assert r.status_code == 400 and "/init_weights_update_group first" in r.json()["message"]


def _post_in_thread(url: str, body: dict, results: list) -> threading.Thread:
    t = threading.Thread(target=lambda: results.append(httpx.post(url, json=body, timeout=30).json()))
    t.start()
    return t


def test_abort_request_by_rid_prefix_and_all(tok):
    engine = RecordingEngine(responder=echo_next, latency=0.5)
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        results: list = []
        t = _post_in_thread(server.url + "/generate", {"input_ids": [[1], [2]], "rid": "job"}, results)
        time.sleep(0.2)
        assert httpx.post(server.url + "/abort_request", json={"rid": "job"}).status_code == 200
        t.join()
        assert sorted(engine.aborts) == ["job_0", "job_1"]
        assert [o["meta_info"]["finish_reason"]["type"] for o in results[0]] == ["abort", "abort"]
        assert httpx.post(server.url + "/abort_request", json={}).status_code == 400
        assert httpx.post(server.url + "/abort_request", json={"abort_all": True}).status_code == 200


def test_duplicate_running_rid_is_rejected(tok):
    engine = FakeEngine(responder=echo_next, latency=0.5)
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        results: list = []
        t = _post_in_thread(server.url + "/generate", {"input_ids": [1], "rid": "same"}, results)
        time.sleep(0.2)
        r = httpx.post(server.url + "/generate", json={"input_ids": [1], "rid": "same"})
        t.join()
    assert r.status_code == 400 and "already running" in r.json()["message"]
    assert results[0]["meta_info"]["id"] == "same"


def test_client_disconnect_aborts_the_request(tok):
    engine = RecordingEngine(responder=echo_next, latency=1.0)
    with BackgroundServer(create_app(engine, tok, model_path="m")) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/generate", json={"input_ids": [1], "rid": "gone"}, timeout=0.3)
        deadline = time.monotonic() + 3
        while "gone" not in engine.aborts and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "gone" in engine.aborts


def test_serve_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        serve_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model-path", "--host", "--port", "--engine-device", "--engine-dtype", "--engine-max-batch-size",
                 "--log-level", "--tokenizer-path", "--engine-admit-wait-steps"):
        assert flag in text
    assert all(a.help for a in build_parser()._actions)


def test_serve_cli_requires_a_model_for_the_embedded_engine(capsys):
    assert serve_main(["--port", "0"]) == 2
    assert "--model-path is required" in capsys.readouterr().err


def test_serve_cli_reports_bad_ports_and_models_in_one_line(capsys, tmp_path):
    assert serve_main(["--engine", "fake", "--port", "99999"]) == 2
    assert "--port 99999 is not a TCP port" in capsys.readouterr().err
    with socket.socket() as taken:  # a port in use is reported before any model is loaded
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main(["--model-path", str(tmp_path / "absent"), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert serve_main(["--model-path", str(tmp_path / "absent"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "agentrl serve: model" in err and "not found" in err and "Traceback" not in err


def test_sampling_params_round_trip_to_the_engine(served):
    engine, client = served
    sp = SamplingParams(temperature=0.3, top_p=0.9, top_k=20, max_new_tokens=7, stop=["</s>"],
                        stop_token_ids=[5], ignore_eos=True, seed=11)
    client.post("/generate", json={"input_ids": [1], "sampling_params": sp.to_sglang()})
    assert engine.requests[-1][1] == sp
