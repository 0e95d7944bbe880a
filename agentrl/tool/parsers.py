"""Find tool calls in a model's text: hermes/Qwen ``<tool_call>{json}</tool_call>`` and tag style.

Parsers never raise on model text. A malformed call is still returned, with ``error`` set, so the
environment can answer it with a tool message saying what was wrong (see
:class:`agentrl.tool.executor.ToolExecutor`). Scanning is linear in the text length.

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

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


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


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


class HermesParser:
    """Hermes / Qwen2.5 / Qwen3 style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    Several calls per turn are allowed, text around them is ignored. Also accepted: ``arguments``
    given as a JSON string, ``parameters`` instead of ``arguments``, the OpenAI
    ``{"function": {"name", "arguments"}}`` shape, a JSON list of calls or several JSON objects in
    one block, a markdown code fence inside the tags, and a repeated opening tag. A ``</tool_call>``
    inside a JSON string does not end the call.

    Args:
        open_tag: The opening tag.
        close_tag: The closing tag.
        allow_unclosed: Accept a final call whose closing tag is missing (e.g. trimmed as a stop
            string) instead of marking it malformed.
    """

    def __init__(self, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>",
                 allow_unclosed: bool = False) -> None:
        self.open_tag, self.close_tag, self.allow_unclosed = open_tag, close_tag, allow_unclosed
        self.hint = f'expected {open_tag}{{"name": "<tool name>", "arguments": {{...}}}}{close_tag}'

    def parse(self, text: str) -> list[ToolCall]:
        """All tool calls in ``text``, in order."""
        calls: list[ToolCall] = []
        op, cl = self.open_tag, self.close_tag
        pos = text.find(op)
        while pos >= 0:
            body = _skip_ws(text, pos + len(op))
            while text.startswith(op, body):  # a stuttered opening tag
                body = _skip_ws(text, body + len(op))
            values, after = self._decode_values(text, body)
            if values is not None and text.startswith(cl, after):
                end = after + len(cl)
                calls += [self._to_call(v, text[pos:end], None) for v in _flatten(values)]
            else:
                close, reopen = text.find(cl, body), text.find(op, body)
                if close >= 0 and not (0 <= reopen < close):
                    end, inner = close + len(cl), text[body:close]
                    calls += self._from_text(inner, text[pos:end], None)
                else:
                    end = reopen if reopen >= 0 else len(text)
                    why = None if self.allow_unclosed and reopen < 0 else f"unclosed {op} tag: {self.hint}"
                    if values is not None and reopen < 0:
                        calls += [self._to_call(v, text[pos:end], why) for v in _flatten(values)]
                    else:
                        calls += self._from_text(text[body:end], text[pos:end], why)
            pos = text.find(op, end)
        return calls

    @staticmethod
    def _decode_values(text: str, i: int) -> tuple[list[Any] | None, int]:
        """JSON values starting at ``i`` (separated by whitespace/commas); (None, i) if none."""
        values: list[Any] = []
        while i < len(text) and text[i] in "{[":
            try:
                value, i = _DECODER.raw_decode(text, i)
            except json.JSONDecodeError:
                return None, i
            values.append(value)
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
        return (values or None), i

    def _from_text(self, inner: str, raw: str, error: str | None) -> list[ToolCall]:
        fenced = _FENCE.match(inner)
        inner = (fenced.group(1) if fenced else inner).strip()
        values, after = self._decode_values(inner, 0)
        if values is None or after != len(inner):
            try:
                values = [json.loads(inner)]
            except json.JSONDecodeError as e:
                name = re.search(r'"name"\s*:\s*"([^"\\]{1,200})"', inner)
                why = error or f"invalid JSON in tool call ({e.msg} at character {e.pos}): {self.hint}"
                return [ToolCall(name.group(1) if name else "", {}, raw, why)]
        return [self._to_call(v, raw, error) for v in _flatten(values)]

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
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                return ToolCall(name if isinstance(name, str) else "", {}, raw,
                                error or f"'arguments' is a string that is not valid JSON ({e.msg})")
        if not isinstance(name, str) or not name.strip():
            return ToolCall("", args if isinstance(args, dict) else {}, raw,
                            error or f"tool call has no 'name': {self.hint}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return ToolCall(name, {}, raw, error or f"'arguments' must be a JSON object, got {type(args).__name__}")
        return ToolCall(name.strip(), args, raw, error)


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

    A tag nested in the same tag (``<search>a <search>b</search></search>``) is marked malformed;
    the call's text runs to the first closing tag.
    """

    def __init__(self, tags: tuple[str, ...] | list[str] = ("search",), argument: str | Mapping[str, str] = "query",
                 strip: bool = True, allow_unclosed: bool = False, allow_empty: bool = False) -> None:
        if isinstance(tags, str):
            tags = (tags,)
        bad = [t for t in tags if not re.fullmatch(r"[A-Za-z_][\w.\-]*", t)]
        if not tags or bad:
            raise ValueError(f"TagParser tags must be non-empty names like 'search', got {list(tags)!r}")
        if not isinstance(argument, str) and set(argument) != set(tags):
            raise ValueError(f"TagParser argument mapping must name every tag {list(tags)!r}, got {dict(argument)!r}")
        self.tags, self.strip = tuple(tags), strip
        self.arguments = {t: argument if isinstance(argument, str) else argument[t] for t in self.tags}
        self.allow_unclosed, self.allow_empty = allow_unclosed, allow_empty
        self._open = re.compile("<(" + "|".join(re.escape(t) for t in self.tags) + ")>")

    def parse(self, text: str) -> list[ToolCall]:
        """All tagged calls in ``text``, in order."""
        calls: list[ToolCall] = []
        match = self._open.search(text)
        while match:
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
