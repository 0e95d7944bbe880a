"""agentrl.utils.safe_json: the depth measured before decoding is exact, deep JSON is a ValueError
(never a RecursionError), and request bodies over the byte limit are refused before being read."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.utils import safe_json
from agentrl.utils.safe_json import BodyTooLargeError, JSONLimitError, check_depth, loads, nesting_depth


def reference_depth(text: str) -> int:
    """Character by character: brackets outside strings, escapes followed, unmatched closers ignored."""
    depth = floor = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            continue
        if c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        floor = min(floor, depth)
        deepest = max(deepest, depth - floor)
    return deepest


TRICKY = st.sampled_from(["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", "x", "é", "東", "🙂", "\ud800", " "])
JSON = st.recursive(st.none() | st.integers() | st.text(alphabet=TRICKY.map(lambda s: s[:1]), max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=JSON, ensure_ascii=st.booleans(), chunk=st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_depth_of_json_is_exact_across_chunk_boundaries(value, ensure_ascii, chunk):
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    old, safe_json._CHUNK = safe_json._CHUNK, chunk  # the scan carries its state from one chunk to the next
    try:
        assert nesting_depth(text) == reference_depth(text)
    finally:
        safe_json._CHUNK = old


@settings(max_examples=300, deadline=None)
@given(st.lists(TRICKY, max_size=40).map("".join), st.sampled_from([1, 3, 1 << 20]))
def test_depth_of_any_text_without_backslashes_matches_the_reference(text, chunk):
    if "\\" in text:
        return  # escapes are covered by the JSON test; outside strings a backslash stops the decoder anyway
    old, safe_json._CHUNK = safe_json._CHUNK, chunk
    try:
        assert nesting_depth(text) == reference_depth(text)
    finally:
        safe_json._CHUNK = old


def test_deep_json_is_a_value_error_not_a_recursion_error():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(deep)  # what every `except ValueError` around json.loads let through
    with pytest.raises(JSONLimitError, match="nested 100000 levels deep; at most 64") as info:
        loads(deep)
    assert isinstance(info.value, ValueError)
    assert loads("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(JSONLimitError):
        loads("[" * 65 + "]" * 65)
    assert loads('{"a": "' + "[" * 1000 + '"}') == {"a": "[" * 1000}  # brackets in strings are text
    check_depth("{" * 10, max_depth=10)
    with pytest.raises(JSONLimitError):
        check_depth("{" * 11, max_depth=10)


def test_other_decoding_failures_stay_value_errors():
    with pytest.raises(JSONLimitError, match="at most 10 are accepted"):
        loads('"' + "x" * 20 + '"', max_chars=10)
    with pytest.raises(json.JSONDecodeError):
        loads("{nope")
    with pytest.raises(ValueError, match="digits"):
        loads("1" * 5000)  # Python's integer digit limit


class FakeRequest:
    """What read_request_json uses of a Starlette request; counts the chunks it hands out."""

    def __init__(self, chunks: list[bytes], content_length: int | None = None):
        self.headers = {} if content_length is None else {"content-length": str(content_length)}
        self.chunks, self.read = chunks, 0

    async def stream(self):
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def test_request_body_limits_refuse_before_reading_and_decode_in_a_thread():
    declared = FakeRequest([b"{}"] * 3, content_length=10**9)
    with pytest.raises(BodyTooLargeError):
        asyncio.run(safe_json.read_request_json(declared, max_bytes=1000))
    assert declared.read == 0  # refused by its Content-Length, nothing read
    streamed = FakeRequest([b" " * 600] * 100)  # chunked: no Content-Length
    with pytest.raises(BodyTooLargeError):
        asyncio.run(safe_json.read_request_json(streamed, max_bytes=1000))
    assert streamed.read == 2  # stopped as soon as the limit was passed
    big = FakeRequest([json.dumps({"ids": list(range(20_000))}).encode()])
    value, size = asyncio.run(safe_json.read_request_json(big, max_bytes=10**6, inline_bytes=1000))
    assert value["ids"][-1] == 19_999 and size > 1000
    assert asyncio.run(safe_json.read_request_json(FakeRequest([b"  "]), max_bytes=10)) == (None, 2)
    with pytest.raises(ValueError, match="not UTF-8"):
        asyncio.run(safe_json.read_request_json(FakeRequest([b'{"a": "\xff"}']), max_bytes=100))
    with pytest.raises(JSONLimitError):
        asyncio.run(safe_json.read_request_json(FakeRequest([b"[" * 100]), max_bytes=1000))
