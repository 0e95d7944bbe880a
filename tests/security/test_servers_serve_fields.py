"""Hostile field values against ``agentrl serve``'s SGLang API: each is a 400 (or a 200 doing what it
says) in SGLang's error shape, never a 500, a silently ignored setting, or a server that fails the
next client. Uses the scripted FakeEngine and the tiny tokenizer."""

from __future__ import annotations

import httpx
import pytest

from agentrl.engine._server_protocol import NEUTRAL_SAMPLING, RequestError, parse_generate_request
from agentrl.engine.server import BackgroundServer, create_app
from agentrl.testing import FakeEngine


def echo(ids, sampling):
    return [ids[-1] + 1, 2]


@pytest.fixture
def server(tokenizer):
    engine = FakeEngine(responder=echo)
    with BackgroundServer(create_app(engine, tokenizer, model_path="m")) as s:
        yield engine, s


def assert_sglang_400(r: httpx.Response, clue: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["object"] == "error" and body["code"] == 400 and clue in body["message"], body


@pytest.mark.parametrize("path, raw", [
    ("/generate", b'{"text": "a \\ud800 b"}'),  # tokenizer: TypeError
    ("/generate", b'{"input_ids": [1, 2], "rid": "\\udc00"}'),  # the answer echoes the rid
    ("/generate", b'{"input_ids": [1], "sampling_params": {"stop": ["\\udfff"]}}'),
    ("/update_weight_version", b'{"new_version": "\\ud800"}'),  # stored, then echoed by every info route
    ("/abort_request", b'{"rid": "\\ud83d"}'),
])
def test_a_lone_surrogate_is_a_400_and_later_clients_are_served(server, path, raw):
    _, s = server
    r = httpx.post(s.url + path, content=raw, headers={"content-type": "application/json"})
    assert_sglang_400(r, "lone UTF-16 surrogate")  # before: 500 (UnicodeEncodeError / TypeError)
    for route in ("/get_model_info", "/get_server_info", "/get_weight_version"):
        assert httpx.get(s.url + route).status_code == 200  # before: 500 for every client after the label was set
    # a surrogate pair (an emoji as json.dumps escapes it) is text, and is served
    ok = httpx.post(s.url + "/generate", content=b'{"text": "\\ud83d\\ude00"}',
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("key, value", [
    ("regex", "[0-9]+"), ("json_schema", '{"type": "object"}'), ("ebnf", "root ::= 'a'"),
    ("min_p", 0.1), ("min_p", "x"), ("repetition_penalty", 1.3), ("repetition_penalty", True),
    ("frequency_penalty", 0.5), ("presence_penalty", -1), ("min_new_tokens", 20), ("logit_bias", {"5": 10}),
])
def test_sampling_params_the_server_cannot_honour_are_refused(server, key, value):
    _, s = server
    r = httpx.post(s.url + "/generate", json={"input_ids": [1], "sampling_params": {key: value}})
    assert_sglang_400(r, f"'{key}'")  # before: 200, sampled without the grammar or the penalty


def test_sglangs_neutral_values_of_those_params_are_accepted():
    neutral = {**NEUTRAL_SAMPLING, "spaces_between_special_tokens": False, "skip_special_tokens": False,
               "no_stop_trim": True, "max_new_tokens": 3}
    item = parse_generate_request({"input_ids": [1], "sampling_params": neutral}).items[0]
    assert item.sampling.max_new_tokens == 3 and not item.skip_special_tokens and item.no_stop_trim


@pytest.mark.parametrize("params, clue", [
    ({"stop": ""}, "non-empty string"),  # before: 500 from the engine (IndexError)
    ({"stop": ["ok", ""]}, "non-empty strings"),
    ({"stop": ["s"] * 65}, "at most 64 strings"),
    ({"stop": "x" * 5000}, "of at most 1024 characters"),
    ({"skip_special_tokens": "no"}, "'skip_special_tokens' must be true or false"),
    ({"spaces_between_special_tokens": 0}, "'spaces_between_special_tokens' must be true or false"),
])
def test_malformed_stop_strings_and_text_options_are_400(server, params, clue):
    _, s = server
    assert_sglang_400(httpx.post(s.url + "/generate", json={"input_ids": [1], "sampling_params": params}), clue)
    assert httpx.post(s.url + "/generate", json={"input_ids": [1]}).status_code == 200


def test_a_string_is_not_taken_for_a_boolean(server):
    engine, s = server
    r = httpx.post(s.url + "/generate", json={"input_ids": [1], "return_logprob": True,
                                              "return_text_in_logprobs": "no"})
    assert_sglang_400(r, "'return_text_in_logprobs' must be true or false")
    r = httpx.post(s.url + "/update_weight_version", json={"new_version": "v2", "abort_all_requests": "no"})
    assert_sglang_400(r, "'abort_all_requests' must be true or false")
    assert not engine._abort_all  # before: "no" is truthy, so every running request was aborted
    assert httpx.get(s.url + "/get_weight_version").json()["weight_version"] == "0"


def test_a_file_that_is_no_weight_file_is_a_400(server, tmp_path):
    engine, s = server
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    garbage = tmp_path / "folder"
    garbage.mkdir()
    (garbage / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    for path in (text, garbage):
        r = httpx.post(s.url + "/update_weights_from_disk", json={"model_path": str(path)})
        assert r.status_code == 400, r.text  # before: 500 (UnpicklingError / SafetensorError)
        assert r.json()["success"] is False and "not a readable weight file" in r.json()["message"]
    assert engine.weight_version == 0 and httpx.get(s.url + "/health").status_code == 200


@pytest.mark.parametrize("label, clue", [
    ("9" * 5000, "at most 256 characters"),  # before: 500 (int() of 5,000 digits)
    (True, "non-empty string"),  # before: the label "True"
    ("", "non-empty string"),
    (-3, "[0, 2**63)"),
    (2**64, "[0, 2**63)"),
])
def test_a_bad_weight_version_label_is_refused_before_reading_files(server, tmp_path, label, clue):
    engine, s = server
    r = httpx.post(s.url + "/update_weights_from_disk", json={"model_path": str(tmp_path), "weight_version": label})
    assert r.status_code == 400 and clue in r.json()["message"], r.text
    assert engine.weight_version == 0


def test_a_label_of_other_digits_is_kept_as_a_label():
    from agentrl.engine._server_weights import weight_version_label

    assert weight_version_label("12") == ("12", 12)
    assert weight_version_label("²") == ("²", None)  # before: int("²") raised (a 500): isdigit() is not int()
    assert weight_version_label("step-7") == ("step-7", None)


def test_flags_of_the_weight_routes_must_be_booleans(server, tmp_path):
    engine, s = server
    for key in ("abort_all_requests", "flush_cache"):
        r = httpx.post(s.url + "/update_weights_from_disk", json={"model_path": str(tmp_path), key: "false"})
        assert r.status_code == 400 and f"'{key}' must be true or false" in r.json()["message"]
    with pytest.raises(RequestError, match="'return_text_in_logprobs'"):
        parse_generate_request({"input_ids": [1], "return_text_in_logprobs": 1})
