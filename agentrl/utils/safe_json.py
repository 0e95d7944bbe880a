"""JSON from untrusted text (model output, request bodies, data files) with size and depth caps.

``json.loads`` recurses once per nesting level: ``"[" * 100_000`` raises ``RecursionError``, which
is not a ``ValueError`` and escapes the ``except ValueError`` around it (a 500 from a server, a
traceback from a loader, an exception out of an environment's ``step``). Here the nesting depth is
measured *before* decoding, in one linear pass over the text's bytes with numpy (about 10 ms per
MB, whatever the text holds), and a text nested deeper than ``max_depth`` is refused with
:class:`JSONLimitError`, a ``ValueError``. Brackets inside JSON strings do not count (escaped
quotes are followed), so the depth is exact for valid JSON.

Decoding itself stays ``json.loads`` (linear, in C). Its other ``ValueError``s pass through:
invalid JSON (``json.JSONDecodeError``) and integers longer than Python's digit limit. Catch
``ValueError`` to handle them all. :func:`read_request_json` reads an HTTP request's body the
same way, refusing one larger than a byte limit before (or while) reading it.

Example::

    >>> loads('{"a": [1, {"b": 2}]}')
    {'a': [1, {'b': 2}]}
    >>> nesting_depth('{"a": [1, {"b": "[[[["}]}')
    3
    >>> loads("[" * 100 + "]" * 100)
    Traceback (most recent call last):
    ...
    agentrl.utils.safe_json.JSONLimitError: JSON nested 100 levels deep; at most 64 are accepted
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import numpy as np

__all__ = ["MAX_DEPTH", "BodyTooLargeError", "JSONLimitError", "check_depth", "is_int", "loads", "nesting_depth",
           "read_request_json"]

MAX_DEPTH = 64
"""Default deepest nesting accepted (tool calls, request bodies and data rows are far shallower)."""

_CHUNK = 1 << 20  # bytes scanned per numpy pass: bounds the scratch memory to ~20 MB
_DELTA = np.zeros(256, np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONLimitError(ValueError):
    """JSON refused before decoding: longer or nested deeper than the caller accepts."""


class BodyTooLargeError(JSONLimitError):
    """A request body larger than the server accepts (HTTP 413)."""


def is_int(value: Any) -> bool:
    """Whether a decoded value (JSON, YAML) is an integer: ``True`` and ``False`` are not, though Python's bool is an int."""
    return isinstance(value, int) and not isinstance(value, bool)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting in ``text``, not counting brackets inside JSON strings.

    Linear time and bounded memory for any text, valid JSON or not. Closing brackets with no
    opening one before them (invalid JSON) lower nothing: ``"]][["`` has depth 2.
    """
    if "[" not in text and "{" not in text:
        return 0
    data = text.encode("utf-8", "surrogatepass")  # below 0x80 every byte is the ASCII character itself
    depth = floor = deepest = 0
    in_string, backslashes = False, 0  # carried from one chunk to the next
    for start in range(0, len(data), _CHUNK):
        b = np.frombuffer(data, np.uint8, count=min(_CHUNK, len(data) - start), offset=start)
        quote = b == _QUOTE
        is_bs = b == _BACKSLASH
        if backslashes or is_bs.any():  # a quote after an odd run of backslashes is escaped
            i = np.arange(len(b), dtype=np.int32)
            last_other = np.maximum.accumulate(np.where(is_bs, -1, i))  # last non-backslash at or before i
            run = np.empty(len(b), np.int64)  # backslashes right before position i
            run[0] = backslashes
            run[1:] = np.where(last_other[:-1] >= 0, i[:-1] - last_other[:-1], i[:-1] + 1 + backslashes)
            quote &= run % 2 == 0
            backslashes = int(len(b) - 1 - last_other[-1]) if last_other[-1] >= 0 else backslashes + len(b)
        else:
            backslashes = 0
        inside = (np.cumsum(quote, dtype=np.int32) + in_string) & 1  # 1 in a string (a quote counts itself)
        level = np.cumsum(_DELTA[b] * (1 - inside), dtype=np.int32) + depth  # brackets in strings do not count
        if int(level.min()) < floor:  # unmatched closing brackets: measure from the lowest point so far
            lowest = np.minimum.accumulate(np.minimum(level, floor))
            deepest = max(deepest, int((level - lowest).max()))
            floor = int(lowest[-1])
        else:
            deepest = max(deepest, int(level.max()) - floor)
        depth, in_string = int(level[-1]), bool(inside[-1])
    return deepest


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`JSONLimitError` when ``text`` nests deeper than ``max_depth``."""
    if text.count("[") + text.count("{") <= max_depth:
        return  # cannot nest deeper than it has opening brackets
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JSONLimitError(f"JSON nested {depth} levels deep; at most {max_depth} are accepted")


def loads(text: str, *, max_depth: int = MAX_DEPTH, max_chars: int | None = None) -> Any:
    """``json.loads(text)`` after checking its length and nesting depth.

    Raises :class:`JSONLimitError` over a limit, ``json.JSONDecodeError`` for invalid JSON, and
    ``ValueError`` for numbers Python will not convert: catch ``ValueError`` for all three.
    """
    if max_chars is not None and len(text) > max_chars:
        raise JSONLimitError(f"JSON text of {len(text)} characters; at most {max_chars} are accepted")
    check_depth(text, max_depth)
    return json.loads(text)


async def read_request_json(request: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH,
                            inline_bytes: int = 16 * 2**10) -> tuple[Any, int]:
    """``(value, size in bytes)`` of a Starlette request's JSON body (``None`` for an empty body).

    Raises :class:`BodyTooLargeError` when the body is larger than ``max_bytes``: at once when its
    ``Content-Length`` says so, else as soon as that many bytes have streamed in (the rest is not
    read). Raises ``ValueError`` when it is not UTF-8 or not JSON, nests deeper than
    ``max_depth``, or escapes a lone UTF-16 surrogate (``"\\ud800"``: valid JSON but not text;
    an answer echoing it could not be encoded). A body larger than ``inline_bytes`` is decoded
    in a worker thread, so the event loop serves other requests meanwhile.
    """
    too_large = BodyTooLargeError(f"the request body is larger than this server accepts ({max_bytes:,} bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None, size
    if size > inline_bytes:
        return await asyncio.to_thread(_decode_body, raw, max_depth), size
    return _decode_body(raw, max_depth), size


def _decode_body(raw: bytes, max_depth: int) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    value = loads(text, max_depth=max_depth)
    if _SURROGATE_ESCAPE.search(text):  # only a \u escape can make one: UTF-8 bytes cannot
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"a string of the body holds a lone UTF-16 surrogate ({exc.object[exc.start]!r}): "
                             "not Unicode text; escape characters beyond U+FFFF as a surrogate pair") from None
    return value
