"""OpenAI-compatible HTTP routes over a :class:`~agentrl.openai.service.ChatService`.

=====================================================  ==================================================
``GET  /v1/models``                                    the served model names
``POST /v1/chat/completions``                          ``chat.completion`` (or SSE chunks with ``stream``)
``POST /v1/completions``                               ``text_completion`` (or SSE chunks)
``POST /v1/episodes``                                  opens an episode: ``{"key", "base_url"}``
``POST /v1/episodes/{key}/finish``                     closes it: its calls and segments as token ids
``/episodes/{key}/v1/...``                             the routes above, inside an episode
=====================================================  ==================================================

A call belongs to an episode when its base URL holds the key (``/episodes/<key>/v1``) or its API
key is the key. Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``: 400 for
a malformed body or an unsupported field (named in ``param``), 404 for an unknown model or episode
key, 409 for a finished episode key, 401 for a missing key where one is required, 413 for a body
larger than the server accepts, 429 for a new episode while 100,000 are open; the server keeps
serving. An error after a stream has started is sent in-band as a ``data: {"error": ...}`` event.
A client that goes away before its answer (a timeout, a closed stream) has its engine request
aborted.

Example (in-process, with the scripted fake engine)::

    >>> import httpx
    >>> from fastapi import FastAPI
    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.engine.server import BackgroundServer
    >>> from agentrl.models import load_tokenizer
    >>> from agentrl.testing import FakeEngine
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> engine = FakeEngine(responder=lambda ids, sp: tok.encode("Hello!<|im_end|>", add_special_tokens=False))
    >>> app = FastAPI()
    >>> add_openai_routes(app, ChatService(engine, ChatTemplate(tok), model_names=["m"]))
    >>> with BackgroundServer(app) as server:
    ...     r = httpx.post(server.url + "/v1/chat/completions",
    ...                    json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    ...     bad = httpx.post(server.url + "/v1/chat/completions", json={"model": "gpt-9", "messages": []})
    >>> r.json()["choices"][0]["message"]["content"], bad.status_code, bad.json()["error"]["param"]
    ('Hello!', 400, 'messages')
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agentrl.openai.capture import EpisodeCapture
from agentrl.openai.protocol import OpenAIError, parse_chat_request, parse_completion_request
from agentrl.openai.service import ChatService, EpisodeDirectory
from agentrl.utils import safe_json

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 2**20
"""Default largest request body (413 beyond)."""
MAX_OPEN_EPISODES = 100_000
"""Most episodes clients may hold open over HTTP at once (429 beyond): each keeps its calls' tokens."""
DISCONNECT_POLL_S = 0.5
"""Seconds between checks that the client of a call still waits for its answer."""


def add_openai_routes(app: Starlette, service: ChatService | EpisodeDirectory, *,
                      max_request_bytes: int = MAX_REQUEST_BYTES, allow_open_episodes: bool = True) -> None:
    """Add the OpenAI routes (see the module doc) to ``app``, served by ``service``, or by the service of
    each call's episode key (an :class:`~agentrl.openai.service.EpisodeDirectory`). ``allow_open_episodes``:
    clients may open and finish episodes over HTTP (``agentrl serve``); the rollout opens them itself."""

    async def body_of(request: Request) -> Any:
        try:
            body, _ = await safe_json.read_request_json(request, max_bytes=max_request_bytes)
        except safe_json.BodyTooLargeError as exc:
            raise OpenAIError(str(exc), status=413) from None
        except ValueError as exc:
            raise OpenAIError(f"malformed JSON in the request body: {exc}") from None
        if body is None:
            raise OpenAIError("the request body is empty; send a JSON object")
        return body

    def episode_of(request: Request) -> tuple[ChatService, EpisodeCapture | None]:
        auth = request.headers.get("authorization", "")
        api_key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        return service.route(request.path_params.get("key"), api_key)

    async def models(request: Request) -> Response:
        served, _ = episode_of(request)
        return JSONResponse(served.models())

    async def chat(request: Request) -> Response:
        served, capture = episode_of(request)
        req = parse_chat_request(await body_of(request))
        if req.stream:
            return _sse(served.chat_stream(req, capture))
        return JSONResponse(await _unless_disconnected(request, served.chat(req, capture)))

    async def completions(request: Request) -> Response:
        served, _ = episode_of(request)
        req = parse_completion_request(await body_of(request))
        if req.stream:
            return _sse(served.complete_stream(req))
        return JSONResponse(await _unless_disconnected(request, served.complete(req)))

    # Starlette routes (no FastAPI dependency resolution per request: a third of a call's CPU time)
    _openai_not_found(app)
    for prefix in ("/v1", "/episodes/{key}/v1"):
        app.add_route(prefix + "/models", _guarded(models), methods=["GET"])
        app.add_route(prefix + "/chat/completions", _guarded(chat), methods=["POST"])
        app.add_route(prefix + "/completions", _guarded(completions), methods=["POST"])

    if allow_open_episodes:
        assert isinstance(service, ChatService), "episodes are opened over HTTP on a single service only"

        async def open_episode(request: Request) -> Response:
            if len(service.episodes) >= MAX_OPEN_EPISODES:
                raise OpenAIError(f"{MAX_OPEN_EPISODES:,} episodes are open; finish some first "
                                  "(POST /v1/episodes/<key>/finish)", status=429, code="too_many_episodes")
            key = service.open_episode()
            return JSONResponse({"key": key, "base_url": str(request.base_url).rstrip("/") + f"/episodes/{key}/v1"})

        async def finish_episode(request: Request) -> Response:
            return JSONResponse(capture_json(service.finish_episode(request.path_params["key"])))

        app.add_route("/v1/episodes", _guarded(open_episode), methods=["POST"])
        app.add_route("/v1/episodes/{key}/finish", _guarded(finish_episode), methods=["POST"])


def capture_json(capture: EpisodeCapture) -> dict[str, Any]:
    """An episode's record: each segment's token fields and messages, and each call."""
    return {
        "segments": [{**s.to_sample_fields(), "messages": s.conv.messages, "num_turns": s.conv.num_turns}
                     for s in capture.segments],
        "calls": [vars(c) for c in capture.calls],
    }


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """The result of ``work``; cancelled (its engine request aborted) when the client goes away
    first, as SGLang does: a client that gave up must not hold a slot of the engine."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise OpenAIError("the client closed the connection before the answer", status=499,
                                  code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


def _guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with its :class:`OpenAIError` (and template or engine failures) answered as OpenAI errors."""
    import functools

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except OpenAIError as exc:
            return error_response(exc)
        except asyncio.CancelledError:  # the episode ended (its timeout, its endpoint stopping) during the call
            return error_response(OpenAIError("the episode ended during this call", status=409,
                                              code="episode_finished"))
        except Exception as exc:  # an engine failure: report it, keep serving
            log.exception("OpenAI route failed")
            return error_response(OpenAIError(f"engine error: {type(exc).__name__}: {exc}", status=500,
                                              type="server_error"))
    return wrapper


def _openai_not_found(app: Starlette) -> None:
    """Unknown paths and methods under ``/v1`` and ``/episodes`` answered in OpenAI's error shape."""
    from starlette.exceptions import HTTPException

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith(("/v1/", "/episodes/")):
            return error_response(OpenAIError(f"{request.method} {request.url.path}: {exc.detail}",
                                              status=exc.status_code))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(HTTPException, handler)


def error_response(exc: OpenAIError) -> JSONResponse:
    if exc.status < 500:
        log.info("%d: %s", exc.status, exc)
    return JSONResponse(exc.body(), status_code=exc.status)


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
        except OpenAIError as exc:
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        except Exception as exc:  # the status line has gone out: report in-band
            log.warning("streamed completion failed: %s", exc)
            yield b"data: " + json.dumps({"error": {"message": f"{type(exc).__name__}: {exc}",
                                                    "type": "server_error", "param": None, "code": None}}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")
