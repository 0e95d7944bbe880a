"""Hostile model replies against the tool-call parsers: every one comes back as calls (malformed
ones with ``error`` set), never as an exception, and the work done grows linearly with the text.

No test here times anything: the inputs are large enough that the quadratic (or worse) scans they
replaced would not finish in any CI run (2,000 spaces after an unclosed code fence took the old
fence regex 9 s, 4,000 more than 20 s; these tests use 200,000), and the linear ones are checked
by counting the characters handed to the JSON decoder. bench/adversarial_parsing.py measures.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.tool import HermesParser, TagParser
from agentrl.tool import parsers as parsers_module

MIB = 1 << 20


def fill(unit: str, size: int = MIB) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def test_unclosed_code_fence_followed_by_whitespace():
    for text in ("<tool_call>```json" + " " * 200_000 + "</tool_call>",
                 "<tool_call>```" + " \n" * 100_000 + "x</tool_call>",
                 "<tool_call>```" + " " * 200_000):
        (call,) = HermesParser().parse(text)
        assert call.error and call.raw == text


def test_fenced_calls_still_parse():
    body = '```json\n{"name": "f", "arguments": {"a": 1}}\n```'
    (call,) = HermesParser().parse(f"<tool_call>\n{body}\n</tool_call>")
    assert (call.name, call.arguments, call.error) == ("f", {"a": 1}, None)


@pytest.mark.parametrize("text", [
    "<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": ' + '{"a": ' * 20_000 + "1" + "}" * 20_001 + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": "' + "[" * 5000 + "]" * 5000 + '"}</tool_call>',  # a string: text
    '<tool_call>{"name": "f", "arguments": ' + json.dumps("[" * 5000 + "]" * 5000) + "}</tool_call>",
    "<tool_call>" + "[" * 100_000,
])
def test_deeply_nested_json_is_a_malformed_call_not_a_recursion_error(text):
    (call,) = HermesParser().parse(text)
    assert call.error and ("nested" in call.error or "not valid JSON" in call.error or "unclosed" in call.error)


def test_nesting_up_to_the_limit_is_accepted():
    args = {"a": json.loads("[" * 60 + "]" * 60)}
    (call,) = HermesParser().parse('<tool_call>{"name": "f", "arguments": ' + json.dumps(args) + "}</tool_call>")
    assert call.error is None and call.arguments == args
    (call,) = HermesParser(max_depth=4).parse('<tool_call>{"name": "f", "arguments": {"a": [[[1]]]}}</tool_call>')
    assert "nested 5 levels deep; at most 4" in call.error


def test_a_number_python_will_not_convert_is_a_malformed_call():
    (call,) = HermesParser().parse('<tool_call>{"name": "f", "arguments": {"a": ' + "9" * 5000 + "}}</tool_call>")
    assert call.error and "digits" in call.error


def test_calls_longer_than_the_cap_are_refused_without_decoding(monkeypatch):
    decoded: list[int] = []
    real = parsers_module._DECODER.raw_decode
    monkeypatch.setattr(parsers_module, "_DECODER", type("Spy", (), {
        "raw_decode": staticmethod(lambda s, i=0: decoded.append(len(s) - i) or real(s, i))})())
    call_text = '<tool_call>{"name": "f", "arguments": {"q": "' + "x" * 5000 + '"}}</tool_call>'
    (call,) = HermesParser(max_call_chars=1000).parse(call_text)
    assert "at most 1000 are parsed" in call.error and call.name == "f"  # the name is still read
    assert max(decoded, default=0) <= 1000
    (call,) = HermesParser(max_call_chars=10_000).parse(call_text)
    assert call.error is None and call.arguments == {"q": "x" * 5000}
    (call,) = TagParser(max_call_chars=10).parse("<search>" + "q" * 50 + "</search>")
    assert "at most 10" in call.error and call.arguments == {"query": "q" * 10}


@pytest.mark.parametrize("unit", [
    '<tool_call>{"a": "',  # each unclosed call's JSON string runs on to the end of the text
    '<tool_call>{"name": "f", "arguments": {"x": [',
    "<tool_call>```json" + " " * 50,
    "<tool_call>" + "[" * 70,
])
def test_decoding_work_is_linear_in_the_text(monkeypatch, unit):
    """The JSON decoder is handed each character a bounded number of times: a call never reaches
    past the next opening tag (before, each unclosed call was decoded to the end of the text:
    quadratic). The depth scan before decoding covers the same text."""
    examined: list[int] = []
    real_decode = parsers_module._DECODER.raw_decode
    monkeypatch.setattr(parsers_module, "_DECODER", type("Spy", (), {
        "raw_decode": staticmethod(lambda s, i=0: examined.append(len(s) - i) or real_decode(s, i))})())
    text = fill(unit, 200_000)
    calls = HermesParser().parse(text)
    assert len(calls) >= 2 and all(c.error for c in calls)
    assert sum(examined) <= 4 * len(text)


def test_many_calls_are_capped_and_the_rest_is_one_malformed_call():
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    calls = HermesParser().parse(fill(call))
    assert len(calls) == 65 and all(c.error is None for c in calls[:64])
    assert "more than 64 tool calls" in calls[-1].error and calls[-1].raw.startswith("<tool_call>")
    listed = HermesParser().parse("<tool_call>" + json.dumps([{"name": "f"}] * 10_000) + "</tool_call>")
    assert len(listed) == 65 and "more than 64" in listed[-1].error
    tags = TagParser().parse(fill("<search>q</search>"))
    assert len(tags) == 65 and "more than 64" in tags[-1].error


def test_stuttered_opening_tags_are_bounded():
    calls = HermesParser().parse(fill("<tool_call>"))
    assert len(calls) == 65 and all(c.error for c in calls)
    (call,) = HermesParser().parse("<tool_call>" * 3 + '{"name": "a"}</tool_call>')
    assert (call.name, call.error) == ("a", None)


def test_unclosed_tags_end_the_tag_scan():
    (call,) = TagParser(tags=("search", "answer")).parse(fill("<search><answer>"))
    assert call.name == "search" and "unclosed" in call.error


def test_an_opening_tag_inside_a_json_string_starts_a_new_call():
    """The price of linear time: a call never reaches past the next opening tag."""
    first, second = HermesParser().parse('<tool_call>{"name": "f", "arguments": {"q": "<tool_call>"}}</tool_call>')
    assert first.error and second.error


NOISE = st.lists(st.sampled_from(list('<>/{}[]":,\\ \n') + [
    "<tool_call>", "</tool_call>", "```", "```json", '{"name": "f", "arguments": ', '"arguments"', "null",
    "[" * 70, "9" * 5000, "\ud800", "<search>", "</search>"]), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(NOISE)
def test_parsers_never_raise_on_hostile_noise(text):
    for parser in (HermesParser(), HermesParser(allow_unclosed=True), TagParser(("search", "x"))):
        for call in parser.parse(text):
            assert isinstance(call.name, str) and isinstance(call.arguments, dict)
            assert call.raw and call.raw in text
