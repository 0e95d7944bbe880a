"""Hermes and tag parsers on well-formed and malformed model text."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.tool import PARSERS, HermesParser, TagParser, ToolCall, ToolCallParser, get_parser


def tc(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


# ----------------------------------------------------------------------------- hermes, well-formed


def test_hermes_single_call_with_surrounding_text():
    text = "I will search.\n" + tc("search", {"query": "capital of France", "k": 2}) + "\nthen answer."
    (call,) = HermesParser().parse(text)
    assert call == ToolCall("search", {"query": "capital of France", "k": 2}, tc("search", {"query":
                            "capital of France", "k": 2}), None)


def test_hermes_several_calls_mixed_with_text_keep_order():
    text = "a " + tc("one", {"x": 1}) + " b\n" + tc("two", {}) + "\n<think>hmm</think>" + tc("three", {"y": [1, 2]})
    calls = HermesParser().parse(text)
    assert [c.name for c in calls] == ["one", "two", "three"]
    assert [c.arguments for c in calls] == [{"x": 1}, {}, {"y": [1, 2]}]
    assert all(c.error is None for c in calls)
    assert all(c.raw in text for c in calls)


def test_hermes_qwen_layout_with_newlines_and_arguments_as_string():
    text = '<tool_call>\n{"name": "calc", "arguments": "{\\"expression\\": \\"1+1\\"}"}\n</tool_call>'
    (call,) = HermesParser().parse(text)
    assert (call.name, call.arguments, call.error) == ("calc", {"expression": "1+1"}, None)


@pytest.mark.parametrize("body, name, args", [
    ('{"name": "f", "parameters": {"a": 1}}', "f", {"a": 1}),
    ('{"function": {"name": "f", "arguments": {"a": 1}}}', "f", {"a": 1}),
    ('{"name": "f"}', "f", {}),
    ('{"name": "f", "arguments": ""}', "f", {}),
    ('{"name": "f", "arguments": null}', "f", {}),
    ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', "f", {"a": 1}),
    ('{"name": "f", "arguments": {"q": "</tool_call> inside a string"}}', "f", {"q": "</tool_call> inside a string"}),
])
def test_hermes_accepted_variants(body, name, args):
    (call,) = HermesParser().parse(f"<tool_call>\n{body}\n</tool_call>")
    assert (call.name, call.arguments, call.error) == (name, args, None)


def test_hermes_list_and_sequence_in_one_block_give_several_calls():
    for body in ('[{"name": "a"}, {"name": "b"}]', '{"name": "a"}\n{"name": "b"}'):
        calls = HermesParser().parse(f"<tool_call>{body}</tool_call>")
        assert [(c.name, c.error) for c in calls] == [("a", None), ("b", None)]


def test_hermes_stuttered_opening_tag():
    (call,) = HermesParser().parse('<tool_call>\n<tool_call>{"name": "a", "arguments": {}}</tool_call>')
    assert (call.name, call.error) == ("a", None)


def test_hermes_non_ascii():
    text = "Suche: " + tc("search", {"query": "Zürich 東京 — ça va? 🙂"})
    (call,) = HermesParser().parse(text)
    assert call.arguments == {"query": "Zürich 東京 — ça va? 🙂"} and call.error is None
    (call,) = HermesParser().parse('<tool_call>{"name": "s", "arguments": {"q": "\\u6771\\u4eac"}}</tool_call>')
    assert call.arguments == {"q": "東京"}


def test_no_calls():
    assert HermesParser().parse("") == []
    assert HermesParser().parse("just an answer: 42, {\"name\": \"x\"}") == []
    assert HermesParser().parse("</tool_call> stray closing tag") == []


# ----------------------------------------------------------------------------- hermes, malformed


@pytest.mark.parametrize("body, name, fragment", [
    ('{"name": "f", "arguments": {"a": 1}', "f", "invalid JSON"),
    ("{'name': 'f'}", "", "invalid JSON"),
    ("not json at all", "", "invalid JSON"),
    ("", "", "invalid JSON"),
    ('{"arguments": {"a": 1}}', "", "no 'name'"),
    ('{"name": "", "arguments": {}}', "", "no 'name'"),
    ('{"name": 3, "arguments": {}}', "", "no 'name'"),
    ('{"name": "f", "arguments": [1, 2]}', "f", "'arguments' must be a JSON object"),
    ('{"name": "f", "arguments": "{broken"}', "f", "not valid JSON"),
    ("42", "", "must be a JSON object"),
    ('{"name": "f"} trailing words', "f", "invalid JSON"),
])
def test_hermes_malformed_calls_are_returned_with_an_error(body, name, fragment):
    text = f"before <tool_call>{body}</tool_call> after"
    (call,) = HermesParser().parse(text)
    assert call.name == name
    assert call.error is not None and fragment in call.error
    assert call.raw == f"<tool_call>{body}</tool_call>"


def test_hermes_error_message_shows_expected_format():
    (call,) = HermesParser().parse("<tool_call>{oops}</tool_call>")
    assert '<tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>' in call.error


def test_hermes_unclosed_tag():
    (call,) = HermesParser().parse('x <tool_call>{"name": "f", "arguments": {"a": 1}}')
    assert (call.name, call.arguments) == ("f", {"a": 1})
    assert call.error.startswith("unclosed <tool_call> tag")
    (call,) = HermesParser(allow_unclosed=True).parse('x <tool_call>{"name": "f", "arguments": {"a": 1}}')
    assert call.error is None
    (call,) = HermesParser().parse("<tool_call>{\"name\": \"f\", \"argu")
    assert call.name == "f" and "unclosed" in call.error


def test_hermes_unclosed_then_a_good_call():
    text = '<tool_call>{"name": "a"} <tool_call>{"name": "b", "arguments": {"k": 1}}</tool_call>'
    first, second = HermesParser().parse(text)
    assert first.name == "a" and "unclosed" in first.error
    assert (second.name, second.arguments, second.error) == ("b", {"k": 1}, None)


def test_hermes_broken_call_does_not_hide_later_calls():
    text = "<tool_call>{broken</tool_call> and " + tc("ok", {"a": 1})
    broken, ok = HermesParser().parse(text)
    assert broken.error and ok.error is None and ok.arguments == {"a": 1}


def test_hermes_custom_tags():
    p = HermesParser(open_tag="<function_call>", close_tag="</function_call>")
    (call,) = p.parse('<function_call>{"name": "f", "arguments": {}}</function_call>')
    assert call.name == "f" and call.error is None


def test_hermes_huge_text_is_linear():
    filler = "lorem ipsum { [ \" <tool_ " * 200_000  # ~5 MB of JSON-ish noise
    text = filler + tc("f", {"q": "x" * 100_000}) + filler + "<tool_call>" + "{" * 100_000
    start = time.perf_counter()
    calls = HermesParser().parse(text)
    assert time.perf_counter() - start < 2.0
    assert calls[0].arguments == {"q": "x" * 100_000} and calls[0].error is None
    assert len(calls) == 2 and calls[1].error


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list('<>/{}[]":,tool_cal namerguts\\\n') + ["<tool_call>", "</tool_call>",
                                 '{"name": "f", "arguments": ', '"arguments"', "null"]), max_size=60).map("".join))
def test_hermes_never_raises_on_noise(text):
    for call in HermesParser().parse(text):
        assert isinstance(call.name, str) and isinstance(call.arguments, dict)
        assert call.raw and call.raw in text


# ----------------------------------------------------------------------------- tag style


def test_tag_single_and_multiple_tags_in_order():
    p = TagParser(tags=("search", "python"), argument={"search": "query", "python": "code"})
    text = "First <search> Eiffel tower height </search>, then <python>print(1)</python>. <answer>x</answer>"
    calls = p.parse(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("search", {"query": "Eiffel tower height"}, None), ("python", {"code": "print(1)"}, None)]
    assert calls[0].raw == "<search> Eiffel tower height </search>"


def test_tag_default_argument_and_no_strip():
    (call,) = TagParser(strip=False).parse("<search> q </search>")
    assert call.arguments == {"query": " q "}


def test_tag_unclosed():
    (call,) = TagParser().parse("thinking <search>who wrote Hamlet")
    assert call.arguments == {"query": "who wrote Hamlet"} and call.error.startswith("unclosed <search> tag")
    (call,) = TagParser(allow_unclosed=True).parse("thinking <search>who wrote Hamlet")
    assert call.error is None


def test_tag_nested_is_an_error_and_scanning_goes_on():
    calls = TagParser().parse("<search>a <search>b</search></search> <search>c</search>")
    assert [c.error is None for c in calls] == [False, True]
    assert "nested" in calls[0].error and calls[1].arguments == {"query": "c"}


def test_tag_empty_and_other_tags_ignored():
    (call,) = TagParser().parse("<search>   </search>")
    assert call.error.startswith("empty <search></search>")
    assert TagParser(allow_empty=True).parse("<search></search>")[0].error is None
    assert TagParser().parse("<searcher>x</searcher> <Search>y</Search> </search>") == []


def test_tag_non_ascii_and_huge_text():
    (call,) = TagParser().parse("<search>Ελλάδα 首都 🙂</search>")
    assert call.arguments == {"query": "Ελλάδα 首都 🙂"}
    text = ("<sea" + "x" * 50) * 100_000 + "<search>needle</search>" + "<search>" + "y" * 1_000_000
    start = time.perf_counter()
    calls = TagParser().parse(text)
    assert time.perf_counter() - start < 2.0
    assert calls[0].arguments == {"query": "needle"} and calls[1].error


def test_tag_parser_rejects_bad_configuration():
    with pytest.raises(ValueError, match="non-empty names"):
        TagParser(tags=("a b",))
    with pytest.raises(ValueError, match="non-empty names"):
        TagParser(tags=())
    with pytest.raises(ValueError, match="must name every tag"):
        TagParser(tags=("search", "python"), argument={"search": "query"})


# ----------------------------------------------------------------------------- registry


def test_registry_and_protocol():
    assert set(PARSERS) == {"hermes", "tag"}
    p = get_parser("tag", tags=("lookup",))
    assert isinstance(p, TagParser) and isinstance(p, ToolCallParser)
    assert isinstance(get_parser("hermes"), ToolCallParser)
    expected = r"unknown tool-call parser 'hermse'; valid: hermes, tag \(did you mean 'hermes'\?\)"
    with pytest.raises(ValueError, match=expected):
        get_parser("hermse")
    with pytest.raises(TypeError):
        PARSERS["x"] = HermesParser  # type: ignore[index]
