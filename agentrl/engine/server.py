"""An HTTP server that speaks SGLang's native API over any :class:`~agentrl.engine.base.Engine`.

``agentrl serve --model-path tiny-qwen2 --port 30000`` serves the embedded engine so that any
SGLang client (``requests.post(url + "/generate", json=...)``, slime-style rollout code, our own
:class:`agentrl.engine.sglang.SGLangEngine`) works unchanged. The request and answer shapes are
SGLang's (``GenerateReqInput`` in ``sglang/srt/managers/io_struct.py``, ``http_server.py``):

=================================  ======================================================
``POST /generate``                 ``text`` or ``input_ids`` (single or batch),
                                   ``sampling_params``, ``return_logprob``, ``rid``,
                                   ``stream``, ``priority`` (higher first)
                                   -> ``{"text", "output_ids", "meta_info"}``
``GET /health``                    200 when the engine says it is healthy, else 503
``GET /health_generate``           200 when a one-token generation succeeds, else 503
``GET /get_model_info``            ``model_path``, ``tokenizer_path``, ``is_generation``,
                                   ``weight_version``...
``GET /get_server_info``           the server's arguments plus ``internal_states``
``GET /get_weight_version``        ``{"weight_version": ...}``
``POST /flush_cache``              drops the engine's prefix cache (if it has one)
``POST /abort_request``            ``{"rid": ...}`` or ``{"abort_all": true}``
``POST /update_weights_from_disk`` ``{"model_path", "weight_version"?}`` ->
                                   ``{"success", "message", "num_paused_requests"}``
``POST /update_weight_version``    ``{"new_version"}`` relabels the current weights
``/v1/models``,                    OpenAI-compatible chat and text completions, with
``/v1/chat/completions``,          token capture per episode key (when the tokenizer has a
``/v1/completions``                chat template; see :mod:`agentrl.openai.routes`)
=================================  ======================================================

A malformed request gets a 400 whose ``message`` says what was expected; the server keeps
serving. Engine failures get a 500 with the engine's message.

Requests are untrusted input and one client must not stall the others: a body larger than
``max_request_bytes`` is refused with 413 before it is read (by its ``Content-Length``, or as it
streams in), JSON nested deeper than 64 levels gets a 400 before it is decoded, a ``text`` prompt
with more characters than the context could hold as tokens gets a 400 before it is tokenized, and
large bodies are decoded and tokenized in a worker thread (``/health`` answers meanwhile).
``/update_weights_from_disk`` reads the weight files in a thread of their own, under
``weight_load_timeout``, and hands the engine tensors already in memory: a file that hangs on
open or read costs that request a 400, never the engine's other requests.

Example (in-process, with the scripted fake engine)::

    >>> import httpx
    >>> from agentrl.testing import FakeEngine
    >>> app = create_app(FakeEngine(responder=lambda ids, sp: [7, 8]), None, model_path="fake")
    >>> with BackgroundServer(app) as server:
    ...     r = httpx.post(server.url + "/generate", json={"input_ids": [1, 2, 3]})
    >>> r.json()["output_ids"], r.json()["meta_info"]["finish_reason"]
    ([7, 8], {'type': 'stop', 'matched': 8})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agentrl.engine._server_protocol import (
    GenerateItem,
    RequestError,
    output_dict,
    parse_generate_request,
)
from agentrl.engine._server_run import BackgroundServer, build_parser, serve_main
from agentrl.engine import _server_weights
from agentrl.engine._server_weights import WEIGHT_LOAD_TIMEOUT_S
from agentrl.engine.base import Completion, Engine, SamplingParams, request_priority
from agentrl.utils import safe_json

log = logging.getLogger(__name__)

__all__ = ["BackgroundServer", "build_parser", "create_app", "serve_main"]

_DISCONNECT_POLL_S = 0.5
MAX_REQUEST_BYTES = 64 * 2**20
"""Default largest request body, in bytes (413 beyond)."""
PARSE_TIMEOUT_S = 60.0
"""Seconds decoding and tokenizing one request may take in its worker thread (400 beyond)."""
_INLINE_BYTES = 16 * 2**10  # smaller bodies are decoded and tokenized on the event loop (well under 1 ms)


class _ServerState:
    """Everything one app instance owns (no module-level state)."""

    def __init__(self, engine: Engine, tokenizer: Any, *, model_path: str, tokenizer_path: str | None,
                 served_model_name: str, vocab_size: int | None, server_args: dict[str, Any],
                 health_timeout: float, max_request_bytes: int, max_prompt_chars: int | None,
                 weight_load_timeout: float) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self.served_model_name = served_model_name
        self.vocab_size = vocab_size
        self.server_args = server_args
        self.health_timeout = health_timeout
        self.max_request_bytes = max_request_bytes
        self.max_prompt_chars = max_prompt_chars
        self.weight_load_timeout = weight_load_timeout
        self.update_groups: dict[str, Any] = {}
        """Weight update groups joined through /init_weights_update_group, by name."""
        self.weight_read: concurrent.futures.Future | None = None
        """The latest weight-file read (a daemon thread of its own: one stuck on a file system holds no other)."""
        self.model_info = _model_config_info(model_path)
        self.inflight: dict[str, float] = {}
        """rid -> start time of every request being generated."""
        self.version_labels: dict[int, str] = {}
        """Engine weight version -> the label a client gave it (SGLang versions are strings)."""
        self.num_requests_total = 0

    def label(self, version: int) -> str:
        return self.version_labels.get(version, str(version))

    def register(self, rids: list[str]) -> None:
        busy = [r for r in rids if r in self.inflight]
        if busy:
            raise RequestError(f"request id {busy[0]!r} is already running; give each request a unique 'rid'")
        now = time.monotonic()
        for r in rids:
            self.inflight[r] = now
        self.num_requests_total += len(rids)

    async def abort(self, rid_prefix: str | None) -> list[str]:
        """Abort in-flight requests whose rid starts with ``rid_prefix`` (all when None)."""
        rids = [r for r in list(self.inflight) if rid_prefix is None or r.startswith(rid_prefix)]
        for r in rids:
            await self.engine.abort(r)
        return rids


def create_app(
    engine: Engine,
    tokenizer: Any,
    *,
    model_path: str,
    served_model_name: str | None = None,
    tokenizer_path: str | None = None,
    vocab_size: int | None = None,
    server_args: dict[str, Any] | None = None,
    health_timeout: float = 20.0,
    context_length: int | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    weight_load_timeout: float = WEIGHT_LOAD_TIMEOUT_S,
) -> FastAPI:
    """Build the FastAPI app serving ``engine`` with SGLang's native API.

    ``tokenizer`` (a Hugging Face tokenizer, or None) turns ``text`` prompts into token ids and
    output ids into ``text``; without one only ``input_ids`` requests are accepted and answers
    carry no ``text``. ``vocab_size`` bounds valid token ids (default: the engine's
    ``vocab_size`` attribute, else ``len(tokenizer)``). ``server_args`` is echoed by
    ``/get_server_info``. ``context_length`` (default: the engine's ``config.max_seq_len``) bounds
    a ``text`` prompt before tokenizing: longer than ``context_length`` times the longest token of
    the vocabulary in characters, it cannot fit. ``max_request_bytes`` bounds a request body (413
    beyond); ``weight_load_timeout`` bounds reading the files of ``/update_weights_from_disk``.
    """
    if vocab_size is None:
        vocab_size = getattr(engine, "vocab_size", None) or (len(tokenizer) if tokenizer is not None else None)
    if context_length is None:
        context_length = getattr(getattr(engine, "config", None), "max_seq_len", None)
    state = _ServerState(
        engine, tokenizer, model_path=model_path,
        tokenizer_path=tokenizer_path or (model_path if tokenizer is not None else None),
        served_model_name=served_model_name or model_path, vocab_size=vocab_size,
        server_args=dict(server_args or {}), health_timeout=health_timeout, max_request_bytes=max_request_bytes,
        max_prompt_chars=_max_prompt_chars(tokenizer, context_length), weight_load_timeout=weight_load_timeout,
    )
    app = FastAPI(title="agentrl serve (SGLang-compatible)")
    app.state.agentrl = state

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if await _engine_healthy(state) else 503)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        return Response(status_code=200 if await _health_generate(state) else 503)

    @app.get("/get_model_info")
    async def get_model_info() -> dict[str, Any]:
        return {
            "model_path": state.model_path,
            "tokenizer_path": state.tokenizer_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": state.label(state.engine.weight_version),
            "served_model_name": state.served_model_name,
            **state.model_info,
        }

    @app.get("/get_weight_version")
    async def get_weight_version() -> dict[str, Any]:
        return {"weight_version": state.label(state.engine.weight_version)}

    @app.get("/get_server_info")
    async def get_server_info() -> dict[str, Any]:
        return {
            "model_path": state.model_path,
            "tokenizer_path": state.tokenizer_path,
            "served_model_name": state.served_model_name,
            "skip_tokenizer_init": state.tokenizer is None,
            "vocab_size": state.vocab_size,
            **state.server_args,
            "weight_version": state.label(state.engine.weight_version),
            "internal_states": [{
                "num_running_reqs": len(state.inflight),
                "num_requests_total": state.num_requests_total,
                "engine": type(state.engine).__name__,
                **_engine_stats(state.engine),
            }],
            "version": _package_version(),
        }

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        flush = getattr(state.engine, "flush_cache", None)
        if flush is not None:
            result = flush()
            if asyncio.iscoroutine(result):
                await result
        return Response(content="Cache flushed.\n", status_code=200)

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await _json_body(request, state, allow_empty=True)
        if isinstance(body, JSONResponse):
            return body
        rid, abort_all = body.get("rid") or "", body.get("abort_all", False)
        if not isinstance(rid, str) or not isinstance(abort_all, bool):
            return _error(400, f"'rid' must be a string and 'abort_all' a boolean; got {body!r:.200}")
        if not rid and not abort_all:
            return _error(400, "give 'rid' (a request id or id prefix) or 'abort_all': true")
        aborted = await state.abort(None if abort_all else rid)
        log.info("aborted %d request(s): %s", len(aborted), aborted[:10])
        return Response(status_code=200)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> Response:
        body = await _json_body(request, state)
        if isinstance(body, JSONResponse):
            return body
        return await _server_weights.update_weights_from_disk(state, body)

    @app.post("/update_weight_version")
    async def update_weight_version(request: Request) -> Response:
        body = await _json_body(request, state)
        if isinstance(body, JSONResponse):
            return body
        new = body.get("new_version")
        if not isinstance(new, str) or not new or len(new) > _server_weights.MAX_VERSION_CHARS:
            return _error(400, f"'new_version' must be a non-empty string of at most "
                               f"{_server_weights.MAX_VERSION_CHARS} characters; got {new!r:.80}")
        try:
            abort_all = _server_weights.flag(body, "abort_all_requests", True)
        except ValueError as exc:
            return _error(400, str(exc))
        if abort_all:
            await state.abort(None)
        state.version_labels[state.engine.weight_version] = new
        return JSONResponse({"success": True, "message": f"Weight version updated to {new}", "new_version": new})

    for path, handler in (("/init_weights_update_group", _server_weights.init_weights_update_group),
                          ("/update_weights_from_distributed", _server_weights.update_weights_from_distributed),
                          ("/destroy_weights_update_group", _server_weights.destroy_weights_update_group)):
        app.add_api_route(path, _with_body(state, handler), methods=["POST"])
    for path in ("/update_weights_from_tensor", "/update_weights_from_ipc"):
        app.add_api_route(path, _not_supported(path), methods=["POST"])

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        body = await _json_body(request, state)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = await _parse_generate(state, body, request.state.body_bytes)
            state.register([item.rid for item in req.items])
        except RequestError as exc:
            return _error(400, str(exc))
        if req.stream:
            return StreamingResponse(_stream(state, req.items, batched=not req.is_single),
                                     media_type="text/event-stream")
        return await _generate(state, req.items, req.is_single, request)

    _add_openai_routes(app, state, engine, tokenizer, context_length)
    return app


def _add_openai_routes(app: FastAPI, state: _ServerState, engine: Engine, tokenizer: Any,
                       context_length: int | None) -> None:
    """The OpenAI-compatible routes (``/v1/chat/completions``...; see :mod:`agentrl.openai.routes`),
    when the tokenizer has a chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return
    from agentrl.chat import ChatTemplate
    from agentrl.openai.routes import add_openai_routes
    from agentrl.openai.service import ChatService

    names = list(dict.fromkeys([state.served_model_name, state.model_path]))
    add_openai_routes(app, ChatService(engine, ChatTemplate(tokenizer), model_names=names,
                                       context_length=context_length),
                      max_request_bytes=state.max_request_bytes)


# --- /generate ---------------------------------------------------------------------------


async def _parse_generate(state: _ServerState, body: dict[str, Any], size: int) -> Any:
    """The parsed request: on the event loop for a small body, else in a worker thread (decoding
    a long ``text`` takes the tokenizer a while), under ``PARSE_TIMEOUT_S``."""
    def parse() -> Any:
        return parse_generate_request(body, tokenizer=state.tokenizer, vocab_size=state.vocab_size,
                                      max_prompt_chars=state.max_prompt_chars)

    if size <= _INLINE_BYTES and not _long_text(body.get("text")):
        return parse()
    try:
        return await asyncio.wait_for(asyncio.to_thread(parse), PARSE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise RequestError(f"tokenizing the request took longer than {PARSE_TIMEOUT_S:g} s; send fewer or shorter "
                           "prompts, or input_ids") from None


def _long_text(text: Any) -> bool:
    if isinstance(text, str):
        return len(text) > _INLINE_BYTES
    return isinstance(text, list) and sum(len(t) for t in text if isinstance(t, str)) > _INLINE_BYTES


async def _run_one(state: _ServerState, item: GenerateItem) -> tuple[Completion, float]:
    start = time.monotonic()
    try:
        with request_priority(-item.priority):  # SGLang admits higher values first, the engine lower ones
            completion = await state.engine.generate(item.input_ids, item.sampling, rid=item.rid)
    finally:
        state.inflight.pop(item.rid, None)
    return completion, time.monotonic() - start


async def _generate(state: _ServerState, items: list[GenerateItem], is_single: bool, request: Request) -> Response:
    task = asyncio.ensure_future(asyncio.gather(*(_run_one(state, it) for it in items)))
    while True:  # abort the work when the client goes away, as SGLang does
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
        if done:
            break
        if await request.is_disconnected():
            log.info("client disconnected; aborting %s", [it.rid for it in items][:10])
            for it in items:
                if it.rid in state.inflight:
                    await state.engine.abort(it.rid)
    try:
        results = task.result()
    except (RequestError, ValueError) as exc:
        await _abort_rest(state, items)
        return _error(400, str(exc))
    except Exception as exc:  # an engine failure: report it, keep serving
        await _abort_rest(state, items)
        log.exception("generate failed")
        return _error(500, f"engine error: {type(exc).__name__}: {exc}")
    outs = [output_dict(it, c, tokenizer=state.tokenizer, weight_version=state.label(c.weight_version),
                        e2e_latency=dt) for it, (c, dt) in zip(items, results)]
    return JSONResponse(outs[0] if is_single else outs)


async def _abort_rest(state: _ServerState, items: list[GenerateItem]) -> None:
    for it in items:
        if it.rid in state.inflight:
            await state.engine.abort(it.rid)


async def _item_updates(state: _ServerState, item: GenerateItem) -> AsyncIterator[tuple[Completion, bool]]:
    """(completion so far, finished) pairs for one item: token by token when the engine
    offers ``generate_stream``, else the whole completion at once."""
    stream = getattr(state.engine, "generate_stream", None)
    try:
        if stream is None:
            yield await state.engine.generate(item.input_ids, item.sampling, rid=item.rid), True
            return
        last: Completion | None = None
        async for partial in stream(item.input_ids, item.sampling, rid=item.rid):
            if last is not None:
                yield last, False
            last = partial
        if last is None:
            raise RuntimeError("the engine's generate_stream yielded nothing")
        yield last, True
    finally:
        state.inflight.pop(item.rid, None)


async def _stream(state: _ServerState, items: list[GenerateItem], *, batched: bool) -> AsyncIterator[bytes]:
    """Server-sent events as SGLang sends them: cumulative ``text``/``output_ids`` per chunk,
    ``finish_reason`` null until the last chunk, ``"index"`` on batched chunks, then ``[DONE]``."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    start = time.monotonic()

    async def pump(index: int, item: GenerateItem) -> None:
        try:
            async for completion, finished in _item_updates(state, item):
                out = output_dict(item, completion, tokenizer=state.tokenizer, finished=finished,
                                  weight_version=state.label(completion.weight_version),
                                  e2e_latency=time.monotonic() - start if finished else None)
                if batched:
                    out["index"] = index
                await queue.put((index, out))
        except Exception as exc:  # reported in-band: the status line has already gone out
            log.warning("streamed request %s failed: %s", item.rid, exc)
            await queue.put((index, {"error": {"message": f"{type(exc).__name__}: {exc}"}}))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(items)]
    open_items = len(items)
    try:
        while open_items:
            _, out = await queue.get()
            if out is None:
                open_items -= 1
                continue
            yield b"data: " + json.dumps(out).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:  # the client went away (or we are done): stop what is still running
        await _abort_rest(state, items)
        for t in tasks:
            if not t.done():
                t.cancel()


# --- other endpoints ---------------------------------------------------------------------


async def _engine_healthy(state: _ServerState) -> bool:
    try:
        return bool(await asyncio.wait_for(state.engine.health(), state.health_timeout))
    except Exception as exc:
        log.warning("engine health check failed: %s", exc)
        return False


async def _health_generate(state: _ServerState) -> bool:
    """Generate one token, as SGLang's ``/health_generate`` does."""
    if not await _engine_healthy(state):
        return False
    rid = f"HEALTH_CHECK_{uuid.uuid4().hex}"
    try:
        await asyncio.wait_for(
            state.engine.generate([0], SamplingParams(temperature=0.0, max_new_tokens=1), rid=rid),
            state.health_timeout)
        return True
    except Exception as exc:
        log.warning("health_generate failed: %s: %s", type(exc).__name__, exc)
        await state.engine.abort(rid)
        return False


def _with_body(state: _ServerState, handler: Any):
    async def route(request: Request) -> Response:
        body = await _json_body(request, state)
        if isinstance(body, JSONResponse):
            return body
        return await handler(state, body)
    return route


def _not_supported(path: str):
    async def handler() -> JSONResponse:
        return JSONResponse({
            "success": False,
            "message": f"{path} is SGLang-only (it needs SGLang's tensor serialisation or NCCL groups); "
                       "this server loads new weights through /update_weights_from_disk or "
                       "/update_weights_from_distributed",
        }, status_code=400)
    return handler


def _engine_stats(engine: Engine) -> dict[str, Any]:
    """The engine's counters (``engine.stats``, a dataclass) when it keeps some."""
    stats = getattr(engine, "stats", None)
    if stats is None or not dataclasses.is_dataclass(stats) or isinstance(stats, type):
        return {}
    return {"engine_stats": dataclasses.asdict(stats)}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentrl")
    except PackageNotFoundError:
        return "unknown"


def _model_config_info(model_path: str) -> dict[str, Any]:
    config = Path(model_path) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return {}
    return {"model_type": data.get("model_type"), "architectures": data.get("architectures")}


async def _json_body(request: Request, state: _ServerState, *, allow_empty: bool = False
                     ) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object, or the error to answer (see :func:`safe_json.read_request_json`):
    413 when larger than ``max_request_bytes``, 400 when not UTF-8, not JSON, nested deeper than
    64 levels, or not an object."""
    try:
        body, request.state.body_bytes = await safe_json.read_request_json(
            request, max_bytes=state.max_request_bytes, inline_bytes=_INLINE_BYTES)
    except safe_json.BodyTooLargeError as exc:
        return _error(413, str(exc))
    except ValueError as exc:
        return _error(400, f"malformed JSON in the request body: {exc}")
    if body is None:
        return {} if allow_empty else _error(400, "the request body is empty; send a JSON object")
    if not isinstance(body, dict):
        return _error(400, f"the request body must be a JSON object; got {type(body).__name__}")
    return body


def _max_prompt_chars(tokenizer: Any, context_length: int | None) -> int | None:
    """Characters a prompt of ``context_length`` tokens can have at most: every token decodes to
    at most as many characters as its vocabulary entry has (byte-level entries: one per byte)."""
    if tokenizer is None or not context_length:
        return None
    try:
        longest = max(map(len, tokenizer.get_vocab()))
    except (AttributeError, TypeError, ValueError):
        return None
    return context_length * max(longest, 1)


def _error(status: int, message: str) -> JSONResponse:
    """SGLang's ``ErrorResponse`` shape."""
    kind = {400: "BadRequest", 413: "PayloadTooLarge"}.get(status, "InternalServerError")
    if status in (400, 413):
        log.info("400: %s", message)
    return JSONResponse({"object": "error", "message": message, "type": kind, "param": None, "code": status},
                        status_code=status)


if __name__ == "__main__":
    raise SystemExit(serve_main())
