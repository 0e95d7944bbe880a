"""Find tool calls in a model's text: hermes/Qwen ``<tool_call>{json}</tool_call>`` and tag style.

Parsers never raise on model text. A malformed call is still returned, with ``error`` set, so the
environment can answer it with a tool message saying what was wrong (see
:class:`agentrl.tool.executor.ToolExecutor`). Model text is untrusted input: scanning is linear
in its length (no regular expression with nested or overlapping quantifiers), and a call longer
than ``max_call_chars``, JSON nested deeper than ``max_depth`` (measured before decoding) and
calls after the first ``max_calls`` come back as malformed calls instead of being parsed.

Example::

    >>> text = 'Let me look. <tool_call>{"name": "search", "arguments": {"query": "Paris"}}</tool_call>'
    >>> HermesParser().parse(text)[0].arguments
    {'query': 'Paris'}
    >>> [c.arguments for c in TagParser(tags=("search",)).parse("<search>capital of France</search>")]
    [{'query': 'capital of France'}]
    >>> get_parser("hermse")
    Traceback (most recent call last):
    ...
    ValueError: unknown tool-call parser 'hermse'; valid: hermes, tag (did you mean 'hermes'?)
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentrl.utils import safe_json

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\r\n]*")
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]{1,200})"')

MAX_CALL_CHARS = 262_144
"""Default longest tool call parsed, in characters (a longer one is returned with ``error`` set)."""
MAX_CALLS = 64
_MAX_STUTTER = 8  # repeated opening tags skipped before one call (more count as calls of their own)
"""Default most tool calls read from one text; the rest become one call with ``error`` set."""


@dataclass
class ToolCall:
    """One tool call found in model text."""

    name: str
    """Tool name ('' when the call was too broken to tell)."""
    arguments: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the tool."""
    raw: str = ""
    """The exact text of the call, tags included."""
    error: str | None = None
    """Why the call is malformed; ``None`` for a well-formed call."""


@runtime_checkable
class ToolCallParser(Protocol):
    """Anything with ``parse(text) -> list[ToolCall]`` (calls in the order they appear)."""

    def parse(self, text: str) -> list[ToolCall]: ...


def _flatten(values: list[Any]) -> list[Any]:
    """A JSON list of calls counts as several calls (one level deep)."""
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) and v else [v])
    return out


def _too_many(calls: list[ToolCall], limit: int, rest: str) -> list[ToolCall]:
    """The first ``limit`` calls, then one malformed call standing for the unread ``rest``."""
    return [*calls[:limit], ToolCall("", {}, rest, f"more than {limit} tool calls in one message; the rest were not "
                                                    f"read. Make fewer calls at once.")]


def _skip_ws(text: str, i: int) -> int:
    """The index of the first non-whitespace character at or after ``i``."""
    match = _WS.match(text, i)
    assert match is not None  # [ \t\r\n]* matches the empty string anywhere
    return match.end()


def _strip_fence(text: str) -> str:
    """``text`` stripped, without a markdown code fence (```` ```json ... ``` ````) around it."""
    text = text.strip()
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        text = text[3:-3]
        text = (text[4:] if text.startswith("json") else text).strip()
    return text


class _NextFinder:
    """The next occurrence of ``needle`` at or after a position that only moves forward: each
    stretch of the text is searched once, so all the lookups of a parse cost linear time."""

    def __init__(self, text: str, needle: str) -> None:
        self.text, self.needle, self.at = text, needle, -2

    def at_or_after(self, i: int) -> int:
        if self.at != -1 and self.at < i:  # -1: none at or after an earlier position, so none now
            self.at = self.text.find(self.needle, i)
        return self.at


class HermesParser:
    """Hermes / Qwen2.5 / Qwen3 style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    Several calls per turn are allowed, text around them is ignored. Also accepted: ``arguments``
    given as a JSON string, ``parameters`` instead of ``arguments``, the OpenAI
    ``{"function": {"name", "arguments"}}`` shape, a JSON list of calls or several JSON objects in
    one block, a markdown code fence inside the tags, and a repeated opening tag. A ``</tool_call>``
    inside a JSON string does not end the call; an opening tag always starts a new call.

    Untrusted text is parsed in linear time: a call never reaches past the next opening tag, a
    call longer than ``max_call_chars`` or JSON nested deeper than ``max_depth`` is returned with
    ``error`` set (the depth is measured before decoding, see :mod:`agentrl.utils.safe_json`), and
    after ``max_calls`` calls the rest of the text is one malformed call.

    Args:
        open_tag: The opening tag.
        close_tag: The closing tag.
        allow_unclosed: Accept a final call whose closing tag is missing (e.g. trimmed as a stop
            string) instead of marking it malformed.
        max_call_chars: Longest call parsed, in characters between the tags.
        max_depth: Deepest JSON nesting accepted in a call.
        max_calls: Most calls read from one text.
    """

    def __init__(self, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>",
                 allow_unclosed: bool = False, max_call_chars: int = MAX_CALL_CHARS,
                 max_depth: int = safe_json.MAX_DEPTH, max_calls: int = MAX_CALLS) -> None:
        if not open_tag or not close_tag:
            raise ValueError(f"HermesParser tags must be non-empty; got {open_tag!r}, {close_tag!r}")
        if min(max_call_chars, max_depth, max_calls) < 1:
            raise ValueError(f"max_call_chars, max_depth and max_calls must be >= 1; got {max_call_chars!r}, "
                             f"{max_depth!r}, {max_calls!r}")
        self.open_tag, self.close_tag, self.allow_unclosed = open_tag, close_tag, allow_unclosed
        self.max_call_chars, self.max_depth, self.max_calls = max_call_chars, max_depth, max_calls
        self.hint = f'expected {open_tag}{{"name": "<tool name>", "arguments": {{...}}}}{close_tag}'

    def parse(self, text: str) -> list[ToolCall]:
        """All tool calls in ``text``, in order."""
        calls: list[ToolCall] = []
        op = self.open_tag
        closes = _NextFinder(text, self.close_tag)
        pos = text.find(op)
        while pos >= 0:
            if len(calls) >= self.max_calls:
                return _too_many(calls, self.max_calls, text[pos:])
            body = _skip_ws(text, pos + len(op))
            for _ in range(_MAX_STUTTER):  # a stuttered opening tag
                if not text.startswith(op, body):
                    break
                body = _skip_ws(text, body + len(op))
            reopen = text.find(op, body)
            stop = reopen if reopen >= 0 else len(text)  # a call never runs into the next opening tag
            close = closes.at_or_after(body)
            end, found = self._call(text, pos, body, stop, close if 0 <= close < stop else -1)
            calls += found
            if len(calls) > self.max_calls:  # a JSON list of many calls
                return _too_many(calls, self.max_calls, found[0].raw)
            pos = text.find(op, max(end, pos + 1))
        return calls

    def _call(self, text: str, pos: int, body: int, stop: int, close: int) -> tuple[int, list[ToolCall]]:
        """The call opened at ``pos`` (JSON from ``body``; ``close``: its closing tag or -1)."""
        cl, cap = self.close_tag, self.max_call_chars
        values, after = self._decode_values(text[body:min(stop, body + cap)])
        if values is not None and text.startswith(cl, body + after):  # JSON, then the closing tag
            end = body + after + len(cl)
            return end, [self._to_call(v, text[pos:end], None) for v in _flatten(values)[: self.max_calls + 1]]
        if close >= 0:
            end = close + len(cl)
            return end, self._from_text(text[body:close], text[pos:end], None)
        why = None if self.allow_unclosed and stop == len(text) else f"unclosed {self.open_tag} tag: {self.hint}"
        raw = text[pos:stop]
        if values is not None and stop == len(text):
            return stop, [self._to_call(v, raw, why) for v in _flatten(values)[: self.max_calls + 1]]
        return stop, self._from_text(text[body:stop], raw, why)

    def _decode_values(self, text: str) -> tuple[list[Any] | None, int]:
        """JSON values at the start of ``text`` (separated by whitespace/commas); (None, 0) if none."""
        if not text or text[0] not in "{[":
            return None, 0
        try:
            safe_json.check_depth(text, self.max_depth)
        except safe_json.JSONLimitError:
            return None, 0
        values: list[Any] = []
        i = 0
        while i < len(text) and text[i] in "{[":
            try:
                value, i = _DECODER.raw_decode(text, i)
            except ValueError:  # invalid JSON, or an integer longer than Python converts
                return None, i
            values.append(value)
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
        return (values or None), i

    def _from_text(self, inner: str, raw: str, error: str | None) -> list[ToolCall]:
        if len(inner) > self.max_call_chars:
            name = _NAME.search(inner, 0, self.max_call_chars)
            why = error or (f"tool call of {len(inner)} characters; at most {self.max_call_chars} are parsed: "
                            f"{self.hint}")
            return [ToolCall(name.group(1) if name else "", {}, raw, why)]
        inner = _strip_fence(inner)
        values, after = self._decode_values(inner)
        if values is None or after != len(inner):
            try:
                values = [safe_json.loads(inner, max_depth=self.max_depth)]
            except ValueError as e:
                name = _NAME.search(inner)
                return [ToolCall(name.group(1) if name else "", {}, raw, error or f"invalid JSON in tool call ({_json_problem(e)}): {self.hint}")]
        return [self._to_call(v, raw, error) for v in _flatten(values)[: self.max_calls + 1]]

    def _to_call(self, value: Any, raw: str, error: str | None) -> ToolCall:
        if not isinstance(value, dict):
            return ToolCall("", {}, raw, error or f"tool call must be a JSON object, got {type(value).__name__}: "
                            f"{self.hint}")
        if "name" not in value and isinstance(value.get("function"), dict):
            value = value["function"]
        name = value.get("name")
        args = value.get("arguments", value.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = safe_json.loads(args, max_depth=self.max_depth) if args.strip() else {}
            except ValueError as e:
                return ToolCall(name if isinstance(name, str) else "", {}, raw,
                                error or f"'arguments' is a string that is not valid JSON ({_json_problem(e)})")
        if not isinstance(name, str) or not name.strip():
            return ToolCall("", args if isinstance(args, dict) else {}, raw,
                            error or f"tool call has no 'name': {self.hint}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return ToolCall(name, {}, raw, error or f"'arguments' must be a JSON object, got {type(args).__name__}")
        return ToolCall(name.strip(), args, raw, error)


def _json_problem(e: ValueError) -> str:
    """What a decoding error says to the model."""
    return f"{e.msg} at character {e.pos}" if isinstance(e, json.JSONDecodeError) else str(e)


class TagParser:
    """Tag style, as in Search-R1: ``<search>query</search>`` calls tool ``search(query=...)``.

    Args:
        tags: Tag names that are tool calls; each tag's name is the tool name.
        argument: The keyword argument that receives the text between the tags, or a mapping
            tag -> argument name (e.g. ``{"search": "query", "python": "code"}``).
        strip: Strip whitespace around that text.
        allow_unclosed: Accept a final call whose closing tag is missing (e.g. trimmed as a stop
            string) instead of marking it malformed.
        allow_empty: Accept an empty ``<search></search>`` instead of marking it malformed.
        max_call_chars: Longest text between the tags; a longer call is marked malformed (its
            argument keeps the first ``max_call_chars`` characters).
        max_calls: Most calls read from one text; the rest of the text becomes one malformed call.

    A tag nested in the same tag (``<search>a <search>b</search></search>``) is marked malformed;
    the call's text runs to the first closing tag. Scanning is linear in the text length: an
    unclosed tag runs to the end of the text and ends the scan.
    """

    def __init__(self, tags: tuple[str, ...] | list[str] = ("search",), argument: str | Mapping[str, str] = "query",
                 strip: bool = True, allow_unclosed: bool = False, allow_empty: bool = False,
                 max_call_chars: int = MAX_CALL_CHARS, max_calls: int = MAX_CALLS) -> None:
        if isinstance(tags, str):
            tags = (tags,)
        bad = [t for t in tags if not re.fullmatch(r"[A-Za-z_][\w.\-]*", t)]
        if not tags or bad:
            raise ValueError(f"TagParser tags must be non-empty names like 'search', got {list(tags)!r}")
        if not isinstance(argument, str) and set(argument) != set(tags):
            raise ValueError(f"TagParser argument mapping must name every tag {list(tags)!r}, got {dict(argument)!r}")
        self.tags, self.strip = tuple(tags), strip
        self.arguments = {t: argument if isinstance(argument, str) else argument[t] for t in self.tags}
        if max_call_chars < 1 or max_calls < 1:
            raise ValueError(f"max_call_chars and max_calls must be >= 1; got {max_call_chars!r}, {max_calls!r}")
        self.allow_unclosed, self.allow_empty = allow_unclosed, allow_empty
        self.max_call_chars, self.max_calls = max_call_chars, max_calls
        self._open = re.compile("<(" + "|".join(re.escape(t) for t in self.tags) + ")>")

    def parse(self, text: str) -> list[ToolCall]:
        """All tagged calls in ``text``, in order."""
        calls: list[ToolCall] = []
        match = self._open.search(text)
        while match:
            if len(calls) >= self.max_calls:
                return _too_many(calls, self.max_calls, text[match.start():])
            tag, body = match.group(1), match.end()
            op, cl = f"<{tag}>", f"</{tag}>"
            close = text.find(cl, body)
            error = None
            if close < 0:
                end = inner_end = len(text)
                if not self.allow_unclosed:
                    error = f"unclosed {op} tag: expected {op}...{cl}"
            else:
                end, inner_end = close + len(cl), close
                if text.find(op, body, close) >= 0:
                    error = f"nested {op} tags are not allowed: expected {op}...{cl}"
            inner = text[body:inner_end]
            value = inner.strip() if self.strip else inner
            if len(value) > self.max_call_chars:
                error = error or f"{op} call of {len(value)} characters; at most {self.max_call_chars} are accepted"
                value = value[: self.max_call_chars]
            if error is None and not value.strip() and not self.allow_empty:
                error = f"empty {op}{cl}: put the {self.arguments[tag]} between the tags"
            calls.append(ToolCall(tag, {self.arguments[tag]: value}, text[match.start():end], error))
            match = self._open.search(text, end)
        return calls


PARSERS: Mapping[str, type] = types.MappingProxyType({"hermes": HermesParser, "tag": TagParser})
"""Parser classes by name (read-only)."""


def get_parser(name: str, **kwargs: Any) -> ToolCallParser:
    """Build the parser registered as ``name`` with ``kwargs``; unknown names list the valid ones."""
    if name not in PARSERS:
        close = difflib.get_close_matches(name, list(PARSERS), n=1)
        raise ValueError(f"unknown tool-call parser {name!r}; valid: {', '.join(PARSERS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    return PARSERS[name](**kwargs)
