"""The OpenAI chat-completions protocol: parse a request body, shape the answer. Pure functions, no I/O.

:func:`parse_chat_request` turns a ``POST /v1/chat/completions`` body into a :class:`ChatRequest`
(and :func:`parse_completion_request` a ``POST /v1/completions`` body), raising
:class:`OpenAIError` with the HTTP status, the offending parameter and a message when the body is
malformed or asks for something this server cannot do. The answer builders
(:func:`chat_response`, :func:`chat_chunk`, :func:`completion_response`) return the JSON the
official ``openai`` SDK parses.

Covered: ``model``, ``messages`` (roles system/developer/user/assistant/tool, text content as a
string or a list of text parts, assistant ``tool_calls``), ``tools`` (functions) and
``tool_choice`` (``auto``/``none``; tool names unique, without spaces or quotes, ``parameters`` a
JSON Schema object), ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``seed``, ``logprobs`` (the sampled token's logprob),
``stream`` with ``stream_options.include_usage``; ``n``, ``presence_penalty`` and
``frequency_penalty`` at their defaults. Refused by name (a 400 naming the parameter, never
silently ignored): ``n`` > 1, ``top_logprobs`` > 0 (engines return the sampled token's logprob
only), ``tool_choice`` ``required`` or a named function (output cannot be constrained),
``response_format`` other than text, ``logit_bias``, penalties other than 0, non-text content parts,
the deprecated ``functions``/``function_call``, audio, and any field the API does not define.
Accepted and without effect: ``user``, ``metadata``, ``store``, ``parallel_tool_calls``,
``service_tier``, ``prompt_cache_key``, ``safety_identifier``.

Example::

    >>> req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
    ...                           "max_tokens": 5})
    >>> req.messages, req.max_tokens
    ([{'role': 'user', 'content': 'Hi'}], 5)
    >>> parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "n": 2})
    Traceback (most recent call last):
    ...
    agentrl.openai.protocol.OpenAIError: 'n' = 2 is not supported: this server returns one choice per request; send n requests
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool")
_KNOWN = frozenset({
    "model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "stop", "seed", "logprobs", "top_logprobs", "stream", "stream_options", "n", "presence_penalty",
    "frequency_penalty",
})
_IGNORED = frozenset({
    "user", "metadata", "store", "parallel_tool_calls", "service_tier", "prompt_cache_key", "safety_identifier",
})
_REFUSED = {
    "logit_bias": "logit biases are not supported",
    "functions": "the deprecated 'functions' field is not supported; send 'tools'",
    "function_call": "the deprecated 'function_call' field is not supported; send 'tool_choice'",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning effort is not supported",
    "web_search_options": "web search is not supported",
    "verbosity": "verbosity is not supported",
}
_COMPLETION_KNOWN = frozenset({
    "model", "prompt", "temperature", "top_p", "max_tokens", "stop", "seed", "logprobs", "stream",
    "stream_options", "n", "echo", "presence_penalty", "frequency_penalty", "best_of", "suffix", "user",
})
_TOOL_NAME = re.compile(r'[^\s"\\]{1,200}')
"""Names the tool-call parsers can read back from the model's output (OpenAI's own rule,
``^[a-zA-Z0-9_-]{1,64}$``, is stricter; servers such as vLLM take dots and colons)."""
MAX_STOP = 4
"""Most stop strings a request may give (OpenAI's limit)."""


class OpenAIError(ValueError):
    """A request this server refuses: sent back as OpenAI's ``{"error": {...}}`` with ``status``."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A parsed chat-completions body (defaults are OpenAI's)."""

    model: str
    messages: list[Message]
    """As sent, with text parts joined into strings and ``developer`` kept as its own role."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    """``max_completion_tokens`` or ``max_tokens`` (None: as many as the context allows)."""
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False


@dataclass
class CompletionRequest:
    """A parsed legacy completions body: one text prompt (or its token ids)."""

    model: str
    prompt: str | list[int]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    echo: bool = False
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a chat-completions body; :class:`OpenAIError` names what is wrong."""
    body = _object(body)
    _check_fields(body, _KNOWN)
    if body.get("n", 1) not in (1, None):
        raise OpenAIError(f"'n' = {body['n']} is not supported: this server returns one choice per request; "
                          "send n requests", param="n")
    if body.get("top_logprobs") not in (None, 0):
        raise OpenAIError("'top_logprobs' > 0 is not supported: the engine returns the sampled token's logprob "
                          "only (set logprobs=true)", param="top_logprobs")
    tools = _tools(body.get("tools"))
    req = ChatRequest(
        model=_model(body), messages=_messages(body.get("messages")), tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_top_p(body),
        max_tokens=_max_tokens(body), stop=_stop(body.get("stop")), seed=_int(body, "seed"),
        logprobs=_bool(body, "logprobs"), stream=_bool(body, "stream"),
        include_usage=_include_usage(body),
    )
    return req


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a legacy completions body (one prompt: a string or a list of token ids)."""
    body = _object(body)
    _check_fields(body, _COMPLETION_KNOWN)
    for name, default in (("n", 1), ("best_of", 1)):
        if body.get(name, default) not in (default, None):
            raise OpenAIError(f"'{name}' = {body[name]} is not supported: one completion per request", param=name)
    if body.get("suffix") not in (None, ""):
        raise OpenAIError("'suffix' (insertion) is not supported", param="suffix")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt))):
        raise OpenAIError("'prompt' must be one string or one list of token ids (batches are not supported)",
                          param="prompt")
    logprobs = body.get("logprobs")
    if logprobs not in (None, 0, 1, True, False):
        raise OpenAIError("'logprobs' > 1 is not supported: the engine returns the sampled token's logprob only",
                          param="logprobs")
    max_tokens = _int(body, "max_tokens")
    if max_tokens is not None and max_tokens < 0:
        raise OpenAIError(f"'max_tokens' must be >= 0; got {max_tokens}", param="max_tokens")
    return CompletionRequest(
        model=_model(body), prompt=prompt, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_top_p(body), max_tokens=16 if max_tokens is None else max_tokens, stop=_stop(body.get("stop")),
        seed=_int(body, "seed"), logprobs=bool(logprobs), echo=_bool(body, "echo"), stream=_bool(body, "stream"),
        include_usage=_include_usage(body),
    )


# --- answers ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A fresh response or tool-call id (``chatcmpl-...``, ``call_...``)."""
    return f"{prefix}{secrets.token_hex(12)}"


def assistant_message(content: str | None, tool_calls: list[dict[str, Any]]) -> Message:
    """The ``message`` of a choice: ``content`` None when only tool calls came."""
    message: Message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def tool_call_dict(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``message.tool_calls``: arguments as a JSON string, as OpenAI sends them."""
    return {"id": new_id("call_"), "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def logprobs_content(tokens: list[str], logprobs: list[float]) -> dict[str, Any]:
    """``choice.logprobs``: one entry per generated token, ``top_logprobs`` empty."""
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                        for t, lp in zip(tokens, logprobs)], "refusal": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, message: Message, finish_reason: str, *,
                  logprobs: dict[str, Any] | None, usage_: dict[str, int]) -> dict[str, Any]:
    """The ``chat.completion`` object."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage_, "system_fingerprint": None}


def chat_chunk(rid: str, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None, *,
               logprobs: dict[str, Any] | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``delta`` None: the usage chunk, with no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish_reason}]
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_, "system_fingerprint": None}


def completion_response(rid: str, model: str, text: str, finish_reason: str | None, *,
                        logprobs: dict[str, Any] | None, usage_: dict[str, int] | None,
                        chunk: bool = False) -> dict[str, Any]:
    """The legacy ``text_completion`` object (also each streamed chunk)."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage_, "system_fingerprint": None}


def completion_logprobs(tokens: list[str], logprobs: list[float], offset: int = 0) -> dict[str, Any]:
    """Legacy ``choice.logprobs``: tokens, token_logprobs, text offsets; no top logprobs."""
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


# --- validation -------------------------------------------------------------------------------


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(f"the request body must be a JSON object; got {type(body).__name__}")
    return body


def _check_fields(body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name in _REFUSED:
            raise OpenAIError(f"'{name}' is not supported: {_REFUSED[name]}", param=name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise OpenAIError("'response_format' other than {\"type\": \"text\"} is not supported: output cannot be "
                          "constrained to a schema", param="response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise OpenAIError(f"'{name}' other than 0 is not supported", param=name)
    unknown = sorted(set(body) - known - _IGNORED - {"response_format"})
    if unknown:
        raise OpenAIError(f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0])


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("'model' is required: a model name from GET /v1/models", param="model")
    return model


def _text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise OpenAIError(f"{where}.content[{i}]: only text parts are supported; got {kind!r}",
                                  param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise OpenAIError(f"{where}.content must be a string or a list of text parts; got {type(content).__name__}",
                      param=f"{where}.content")


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise OpenAIError("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise OpenAIError(f"{where}: role must be one of {', '.join(ROLES)}; got {got!r}", param=where)
        msg: Message = {"role": m["role"], "content": _text(m.get("content"), where)}
        if m["role"] == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], where)
        elif msg["content"] is None:
            if m["role"] != "assistant":
                raise OpenAIError(f"{where}: a {m['role']} message needs 'content'", param=f"{where}.content")
        if m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise OpenAIError(f"{where}: a tool message needs 'tool_call_id' (the id of the call it answers)",
                                  param=f"{where}.tool_call_id")
            msg["tool_call_id"] = call_id
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise OpenAIError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    out = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            raise OpenAIError(f"{where}.tool_calls[{j}] must be {{\"id\", \"type\": \"function\", \"function\": "
                              "{\"name\", \"arguments\": <JSON string>}}", param=f"{where}.tool_calls")
        out.append({"id": str(call.get("id") or ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": fn["arguments"]}})
    return out


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise OpenAIError("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}", param="tools")
    names: set[str] = set()
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise OpenAIError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", "
                              "\"description\", \"parameters\"}}}} (only function tools are supported)",
                              param=f"tools[{i}]")
        _check_function(fn, f"tools[{i}].function")
        if fn["name"] in names:
            raise OpenAIError(f"tools[{i}]: two tools are named {fn['name']!r}; tool names must be unique",
                              param=f"tools[{i}].function.name")
        names.add(fn["name"])
    return [dict(t) for t in raw]


def _check_function(fn: dict[str, Any], where: str) -> None:
    """A function tool's ``name`` (see :data:`_TOOL_NAME`), ``description`` (a string) and ``parameters``
    (a JSON Schema object: a dict whose ``properties``, if any, is a dict)."""
    name = fn["name"]
    if not _TOOL_NAME.fullmatch(name):
        raise OpenAIError(f"{where}.name must be 1 to 200 characters without spaces, quotes or backslashes (the "
                          f"model writes it in its tool calls); got {name[:80]!r}", param=f"{where}.name")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise OpenAIError(f"{where}.description must be a string; got {type(fn['description']).__name__}",
                          param=f"{where}.description")
    params = fn.get("parameters")
    if params is not None and not (isinstance(params, dict) and isinstance(params.get("properties", {}), dict)):
        raise OpenAIError(f"{where}.parameters must be a JSON Schema object such as {{\"type\": \"object\", "
                          "\"properties\": {...}}", param=f"{where}.parameters")


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> str:
    if raw is None:
        return "auto"
    if raw in ("auto", "none"):
        return str(raw)
    raise OpenAIError(f"'tool_choice' {raw!r} is not supported: the model's output cannot be forced to a tool call; "
                      "use 'auto' or 'none'", param="tool_choice")


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise OpenAIError(f"'{name}' must be a number in [{low:g}, {high:g}]; got {value!r}", param=name)
    return float(value)


def _top_p(body: dict[str, Any]) -> float:
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise OpenAIError(f"'top_p' must be in (0, 1]; got {top_p}", param="top_p")
    return top_p


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIError(f"'{name}' must be an integer; got {value!r}", param=name)
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise OpenAIError(f"'{name}' must be true or false; got {value!r}", param=name)
    return value


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = _int(body, name)
        if value is not None:
            if value < 1:
                raise OpenAIError(f"'{name}' must be >= 1; got {value}", param=name)
            return value
    return None


def _stop(raw: Any) -> list[str]:
    stops = [raw] if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise OpenAIError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP}; got {raw!r}",
                          param="stop")
    return list(stops)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise OpenAIError("'stream_options' must be {\"include_usage\": true|false}", param="stream_options")
    return bool(options.get("include_usage"))
