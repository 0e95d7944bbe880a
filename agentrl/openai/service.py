"""Chat and text completions over any :class:`~agentrl.engine.base.Engine`, with token capture by episode key.

:class:`ChatService` is what the HTTP routes (:mod:`agentrl.openai.routes`) call: it renders the
messages with the chat template (through an :class:`~agentrl.openai.capture.EpisodeCapture` when
the call belongs to an episode, so only new messages are tokenized), samples with the engine,
parses the output into ``content`` and ``tool_calls`` (hermes/Qwen ``<tool_call>`` by default, any
parser of :func:`agentrl.tool.get_parser`) and shapes the OpenAI answer.

Who decides how to sample is a :class:`SamplingPolicy`: on ``agentrl serve`` the request does
(``temperature``, ``top_p``, ``seed``...); in a rollout the rollout does (``--rollout-temperature``,
``--rollout-top-p``, the episode's seed), because the trainer recomputes logprobs at that
temperature: a request's sampling fields are then ignored, its ``max_tokens`` and ``stop`` still
apply, and its budget is capped by the rollout's per-turn and context limits.

Episode keys are unguessable (``secrets.token_urlsafe``): a call names one in its base URL
(``/episodes/<key>/v1``) or as its API key. A key that was never opened, or whose episode has
finished, is refused (404 / 409); with ``require_episode`` (the rollout's endpoint) a call without a
key is refused too (401).

Example (the scripted fake engine, no HTTP)::

    >>> import asyncio
    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> from agentrl.openai.protocol import parse_chat_request
    >>> from agentrl.testing import FakeEngine
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> text = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>'
    >>> service = ChatService(FakeEngine(script=[tok.encode(text, add_special_tokens=False)]),
    ...                       ChatTemplate(tok), model_names=["policy"])
    >>> req = parse_chat_request({"model": "policy", "messages": [{"role": "user", "content": "2+3?"}],
    ...                           "tools": [{"type": "function", "function": {"name": "add"}}]})
    >>> out = asyncio.run(service.chat(req, None))
    >>> out["choices"][0]["finish_reason"], out["choices"][0]["message"]["tool_calls"][0]["function"]
    ('tool_calls', {'name': 'add', 'arguments': '{"a": 2, "b": 3}'})
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.chat import ChatTemplate
from agentrl.chat.template import ChatTemplateError
from agentrl.engine.base import Completion, Engine, SamplingParams
from agentrl.openai import protocol as P
from agentrl.openai.capture import EpisodeCapture, Segment
from agentrl.openai.protocol import ChatRequest, CompletionRequest, OpenAIError

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
"""Tokens a call may generate when neither it nor the context length bounds them."""


@dataclass
class SamplingPolicy:
    """Whether the request or the rollout decides how to sample (see the module doc)."""

    base: SamplingParams | None = None
    """The rollout's sampling settings; None: the request's ``temperature``, ``top_p`` and ``seed``."""
    max_new_tokens: int | None = None
    """Most tokens one call may generate (the rollout's ``--rollout-max-response-len``)."""
    max_context_tokens: int | None = None
    """Most tokens a segment may hold, prompt and completions (beyond: 400 ``context_length_exceeded``)."""


class ChatService:
    """OpenAI chat/text completions over ``engine`` and ``template``; token capture per episode key.

    Args:
        engine: any engine (embedded, SGLang client, fake).
        template: the policy's chat template (its tokenizer decodes the output).
        model_names: names ``model`` may take (``GET /v1/models`` lists them); others get 404.
        tool_parser: name of the tool-call parser (:func:`agentrl.tool.get_parser`).
        policy: who decides how to sample.
        require_episode: refuse calls that name no episode key (the rollout's endpoint).
        context_length: the engine's context (default: its ``config.max_seq_len``, if any).
    """

    def __init__(self, engine: Engine, template: ChatTemplate, *, model_names: Sequence[str],
                 tool_parser: str = "hermes", policy: SamplingPolicy | None = None, require_episode: bool = False,
                 context_length: int | None = None) -> None:
        from agentrl.tool import get_parser

        if not model_names:
            raise ValueError("ChatService needs at least one model name")
        self.engine = engine
        self.template = template
        self.model_names = list(model_names)
        self.parser = get_parser(tool_parser)
        self.policy = policy or SamplingPolicy()
        self.require_episode = require_episode
        self.context_length = context_length or getattr(getattr(engine, "config", None), "max_seq_len", None)
        self.episodes: dict[str, EpisodeCapture] = {}
        self._finished: dict[str, None] = {}
        """The latest finished keys, oldest first (at most :attr:`EpisodeDirectory.REMEMBERED`: answered 409, older 404)."""

    # -- episodes ----------------------------------------------------------------------------
    def open_episode(self, *, seed: int | None = None) -> str:
        """A new episode key (unguessable); calls under it are captured."""
        key = secrets.token_urlsafe(24)
        self.episodes[key] = EpisodeCapture(self.template, seed=seed)
        return key

    def finish_episode(self, key: str) -> EpisodeCapture:
        """Close the episode: its key is refused from now on; its capture is returned."""
        capture = self.episodes.pop(key, None)
        if capture is None:
            raise self._key_error(key)
        capture.finished = True
        self._finished[key] = None
        while len(self._finished) > EpisodeDirectory.REMEMBERED:
            del self._finished[next(iter(self._finished))]
        return capture

    def resolve(self, path_key: str | None, api_key: str | None) -> EpisodeCapture | None:
        """The episode a call belongs to: the key in its path, else its API key when that is an episode key."""
        if path_key is not None:
            if path_key not in self.episodes:
                raise self._key_error(path_key)
            return self.episodes[path_key]
        if api_key and api_key in self.episodes:
            return self.episodes[api_key]
        if api_key and api_key in self._finished:
            raise self._key_error(api_key)
        if self.require_episode:
            raise OpenAIError("this endpoint serves agent episodes: give the episode's key as the API key or in the "
                              "base URL (/episodes/<key>/v1)", status=401, code="invalid_api_key")
        return None

    def route(self, path_key: str | None, api_key: str | None) -> tuple["ChatService", EpisodeCapture | None]:
        """The service of a call (this one) and its episode (see :meth:`resolve`)."""
        return self, self.resolve(path_key, api_key)

    def _key_error(self, key: str) -> OpenAIError:
        if key in self._finished:
            return OpenAIError("this episode has finished: its calls are recorded and its key takes no more",
                               status=409, code="episode_finished")
        return OpenAIError("unknown episode key", status=404, code="episode_not_found")

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise OpenAIError(f"the model {name!r} does not exist; this server serves {', '.join(self.model_names)}",
                              status=404, param="model", code="model_not_found")

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "agentrl"}
                                           for name in self.model_names]}

    # -- chat ------------------------------------------------------------------------------
    async def chat(self, req: ChatRequest, capture: EpisodeCapture | None) -> dict[str, Any]:
        """A ``chat.completion`` answer."""
        seg, prompt, sampling = self._begin(req, capture)
        completion = await self._generate(prompt, sampling)
        message, finish, text = self._finish_chat(req, capture, seg, completion)
        return P.chat_response(P.new_id("chatcmpl-"), req.model, message, finish,
                               logprobs=self._logprobs(completion) if req.logprobs else None,
                               usage_=P.usage(len(prompt), len(completion.token_ids)))

    def chat_stream(self, req: ChatRequest, capture: EpisodeCapture | None) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects: the role, text deltas as they are generated (the whole
        answer at the end when tool calls or stop strings must be found first), then the finish.
        The request is checked and rendered now (errors raise here, before a stream starts)."""
        seg, prompt, sampling = self._begin(req, capture)
        return self._chat_events(req, capture, seg, prompt, sampling)

    async def _chat_events(self, req: ChatRequest, capture: EpisodeCapture | None, seg: Segment | None,
                           prompt: list[int], sampling: SamplingParams) -> AsyncIterator[dict[str, Any]]:
        rid, model = P.new_id("chatcmpl-"), req.model
        yield P.chat_chunk(rid, model, {"role": "assistant", "content": ""})
        incremental = not self._parses_tools(req) and not req.stop
        sent = ""
        completion: Completion | None = None
        async for completion, finished in self._updates(prompt, sampling):
            if incremental and not finished:
                text = self._decode(completion.token_ids)
                if not text.endswith("\ufffd") and len(text) > len(sent):
                    yield P.chat_chunk(rid, model, {"content": text[len(sent):]})
                    sent = text
        assert completion is not None
        message, finish, _ = self._finish_chat(req, capture, seg, completion)
        content = message.get("content") or ""
        if content[len(sent):] if content.startswith(sent) else content:
            yield P.chat_chunk(rid, model, {"content": content[len(sent):] if content.startswith(sent) else content})
        if message.get("tool_calls"):
            yield P.chat_chunk(rid, model, {"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]})
        yield P.chat_chunk(rid, model, {}, finish, logprobs=self._logprobs(completion) if req.logprobs else None)
        if req.include_usage:
            yield P.chat_chunk(rid, model, None, usage_=P.usage(len(prompt), len(completion.token_ids)))

    # -- text completions ------------------------------------------------------------------------
    async def complete(self, req: CompletionRequest) -> dict[str, Any]:
        """A legacy ``text_completion`` answer (not captured: episodes are chat conversations)."""
        prompt = self._prompt_ids(req)
        completion = await self._generate(prompt, self._sampling(req.max_tokens, req.stop, req.temperature,
                                                                 req.top_p, req.seed, len(prompt), None))
        text, finish = self._completion_text(req, completion)
        if req.echo:
            text = self._decode(prompt) + text
        return P.completion_response(P.new_id("cmpl-"), req.model, text, finish,
                                     logprobs=self._text_logprobs(completion) if req.logprobs else None,
                                     usage_=P.usage(len(prompt), len(completion.token_ids)))

    def complete_stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """``text_completion`` chunks (the request is checked now, before a stream starts)."""
        prompt = self._prompt_ids(req)
        sampling = self._sampling(req.max_tokens, req.stop, req.temperature, req.top_p, req.seed, len(prompt), None)
        return self._completion_events(req, prompt, sampling)

    async def _completion_events(self, req: CompletionRequest, prompt: list[int],
                                 sampling: SamplingParams) -> AsyncIterator[dict[str, Any]]:
        rid = P.new_id("cmpl-")
        sent = self._decode(prompt) if req.echo else ""
        if sent:
            yield P.completion_response(rid, req.model, sent, None, logprobs=None, usage_=None)
        shown = ""
        completion: Completion | None = None
        async for completion, finished in self._updates(prompt, sampling):
            if not req.stop and not finished:
                text = self._decode(completion.token_ids, strip_stop=False)
                if not text.endswith("\ufffd") and len(text) > len(shown):
                    yield P.completion_response(rid, req.model, text[len(shown):], None, logprobs=None, usage_=None)
                    shown = text
        assert completion is not None
        text, finish = self._completion_text(req, completion)
        rest = text[len(shown):] if text.startswith(shown) else text
        yield P.completion_response(rid, req.model, rest, finish, usage_=None,
                                    logprobs=self._text_logprobs(completion) if req.logprobs else None)
        if req.include_usage:
            out = P.completion_response(rid, req.model, "", None, logprobs=None,
                                        usage_=P.usage(len(prompt), len(completion.token_ids)))
            out["choices"] = []
            yield out

    # -- internals --------------------------------------------------------------------------
    def _begin(self, req: ChatRequest, capture: EpisodeCapture | None) -> tuple[Segment | None, list[int], SamplingParams]:
        self.check_model(req.model)
        tools = req.tools
        if capture is not None and capture.max_calls is not None and len(capture.calls) >= capture.max_calls:
            capture.truncated = True
            raise OpenAIError(f"this episode has made its {capture.max_calls} model calls (the turn limit)",
                              code="turn_limit_reached")
        try:
            if capture is None:
                seg, prompt = None, self._render(req.messages, tools)
            else:
                seg, prompt = capture.begin_call(req.messages, tools)
        except ChatTemplateError as exc:
            raise OpenAIError(f"the chat template cannot render these messages: {exc}", param="messages") from None
        turn = len(capture.calls) - 1 if capture is not None else None
        seed = capture.seed if capture is not None else None
        try:
            sampling = self._sampling(req.max_tokens, req.stop, req.temperature, req.top_p, req.seed, len(prompt),
                                      None if seed is None or turn is None else seed + 7919 * turn)
        except OpenAIError:
            if capture is not None:
                capture.truncated = True
            raise
        return seg, prompt, sampling

    def _render(self, messages: list[P.Message], tools: list[dict[str, Any]] | None) -> list[int]:
        return EpisodeCapture(self.template).render(messages, tools)

    def _sampling(self, max_tokens: int | None, stop: list[str], temperature: float, top_p: float,
                  seed: int | None, prompt_len: int, episode_seed: int | None) -> SamplingParams:
        policy = self.policy
        context = policy.max_context_tokens or self.context_length
        room = None if context is None else context - prompt_len
        if room is not None and room <= 0:
            raise OpenAIError(f"the conversation holds {prompt_len} tokens; the context holds {context}",
                              param="messages", code="context_length_exceeded")
        bounds = [b for b in (max_tokens, policy.max_new_tokens, room) if b is not None]
        max_new = min(bounds) if bounds else DEFAULT_MAX_TOKENS
        stop_ids = sorted(set(self.template.stop_token_ids) | set(policy.base.stop_token_ids if policy.base else ()))
        if policy.base is not None:
            return policy.base.replace(max_new_tokens=max_new, stop=[*policy.base.stop, *stop],
                                       stop_token_ids=stop_ids, seed=episode_seed)
        return SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new, stop=list(stop),
                              stop_token_ids=stop_ids, seed=seed)

    async def _generate(self, prompt: list[int], sampling: SamplingParams) -> Completion:
        rid = P.new_id("oai-")
        try:
            completion = await self.engine.generate(prompt, sampling, rid=rid)
        except asyncio.CancelledError:  # the client went away (or the episode ended): free the engine's slot
            await _abort(self.engine, rid)
            raise
        if completion.finish_reason == "abort":
            raise OpenAIError("the request was aborted (the engine is updating its weights or shutting down)",
                              status=503, type="server_error", code="aborted")
        return completion

    async def _updates(self, prompt: list[int], sampling: SamplingParams) -> AsyncIterator[tuple[Completion, bool]]:
        """(completion so far, finished): token by token when the engine streams, else once."""
        stream = getattr(self.engine, "generate_stream", None)
        if stream is None:
            yield await self._generate(prompt, sampling), True
            return
        last: Completion | None = None
        rid, done = P.new_id("oai-"), False
        try:
            async for partial in stream(prompt, sampling, rid=rid):
                if last is not None:
                    yield last, False
                last = partial
            done = True
        finally:
            if not done:  # closed early: the client went away
                await _abort(self.engine, rid)
        if last is None or last.finish_reason == "abort":
            raise OpenAIError("the request was aborted", status=503, type="server_error", code="aborted")
        yield last, True

    def _parses_tools(self, req: ChatRequest) -> bool:
        return bool(req.tools) and req.tool_choice != "none"

    def _finish_chat(self, req: ChatRequest, capture: EpisodeCapture | None, seg: Segment | None,
                     completion: Completion) -> tuple[P.Message, str, str]:
        text = self._decode(completion.token_ids)
        content = _trim_stop(text, req.stop)
        calls = [c for c in self.parser.parse(content) if c.error is None] if self._parses_tools(req) else []
        if calls:
            for c in calls:
                content = content.replace(c.raw, "", 1)
            content = content.strip()
        message = P.assistant_message(content or (None if calls else ""),
                                      [P.tool_call_dict(c.name, c.arguments) for c in calls])
        finish = "length" if completion.finish_reason == "length" else "tool_calls" if calls else "stop"
        if capture is not None and seg is not None:
            capture.tool_calls += len(calls)
            capture.end_call(seg, completion.token_ids, completion.logprobs, finish, message,
                             weight_version=completion.weight_version)
        return message, finish, text

    def _completion_text(self, req: CompletionRequest, completion: Completion) -> tuple[str, str]:
        text = _trim_stop(self._decode(completion.token_ids, strip_stop=False), req.stop)
        return text, "length" if completion.finish_reason == "length" else "stop"

    def _prompt_ids(self, req: CompletionRequest) -> list[int]:
        self.check_model(req.model)
        if isinstance(req.prompt, list):
            vocab = len(self.template.tokenizer)
            if max(req.prompt) >= vocab:
                raise OpenAIError(f"token id {max(req.prompt)} is outside the vocabulary (size {vocab})",
                                  param="prompt")
            return list(req.prompt)
        ids = self.template.tokenize(req.prompt)
        if not ids:
            raise OpenAIError("'prompt' is empty after tokenization; send a non-empty prompt", param="prompt")
        return ids

    def _decode(self, ids: list[int], *, strip_stop: bool = True) -> str:
        end = len(ids)
        if strip_stop:
            stops = set(self.template.stop_token_ids)
            while end and ids[end - 1] in stops:
                end -= 1
        return self.template.tokenizer.decode(ids[:end], skip_special_tokens=not strip_stop)

    def _pieces(self, ids: list[int]) -> list[str]:
        return [self.template.tokenizer.decode([t], skip_special_tokens=False) for t in ids]

    def _logprobs(self, completion: Completion) -> dict[str, Any]:
        return P.logprobs_content(self._pieces(completion.token_ids), list(completion.logprobs))

    def _text_logprobs(self, completion: Completion) -> dict[str, Any]:
        return P.completion_logprobs(self._pieces(completion.token_ids), list(completion.logprobs))


async def _abort(engine: Engine, rid: str) -> None:
    """Abort ``rid`` on the engine, even from a task being cancelled (the abort is shielded)."""
    task = asyncio.ensure_future(engine.abort(rid))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        pass  # cancelled again while it was sent: it goes on in its own task
    except Exception as exc:  # noqa: BLE001 - the engine may be down; the request is gone either way
        log.warning("aborting %s failed: %s", rid, exc)


def _trim_stop(text: str, stops: list[str]) -> str:
    """OpenAI leaves a matched stop string out of the text (the engine keeps it in the tokens)."""
    for s in stops:
        if text.endswith(s):
            return text[: len(text) - len(s)]
    return text


class EpisodeDirectory:
    """Episode keys -> the :class:`ChatService` that opened them: one endpoint serves the episodes of many
    services (each episode's own sampling policy, parser and model names), so a rollout starts one server,
    not one per episode.

    Example::

        >>> from agentrl.chat import ChatTemplate
        >>> from agentrl.models import load_tokenizer
        >>> from agentrl.testing import FakeEngine
        >>> service = ChatService(FakeEngine(script=[[1]]), ChatTemplate(load_tokenizer("smollm2-135m-instruct")),
        ...                       model_names=["policy"], require_episode=True)
        >>> directory = EpisodeDirectory()
        >>> key = directory.add(service, service.open_episode())
        >>> directory.route(None, key)[0] is service
        True
        >>> directory.finish(key).finished
        True
        >>> directory.route(None, key)
        Traceback (most recent call last):
        ...
        agentrl.openai.protocol.OpenAIError: this episode has finished: its calls are recorded and its key takes no more
    """

    REMEMBERED = 100_000
    """Finished keys remembered (answered 409; older ones 404)."""

    def __init__(self) -> None:
        self.services: dict[str, ChatService] = {}
        self._finished: dict[str, None] = {}

    def add(self, service: ChatService, key: str) -> str:
        """Serve episode ``key`` (opened by ``service``) here; returns the key."""
        self.services[key] = service
        return key

    def finish(self, key: str) -> EpisodeCapture:
        """Finish the episode in its service and stop serving its key."""
        service = self.services.pop(key, None)
        if service is None:
            raise OpenAIError("unknown episode key", status=404, code="episode_not_found")
        self._finished[key] = None
        while len(self._finished) > self.REMEMBERED:
            del self._finished[next(iter(self._finished))]
        return service.finish_episode(key)

    def route(self, path_key: str | None, api_key: str | None) -> tuple[ChatService, EpisodeCapture | None]:
        """The service and episode of a call: its key in the path, else its API key."""
        key = path_key if path_key is not None else api_key
        service = self.services.get(key) if key is not None else None
        if service is not None:
            return service.route(key, None)
        if key is not None and key in self._finished:
            raise OpenAIError("this episode has finished: its calls are recorded and its key takes no more",
                              status=409, code="episode_finished")
        if path_key is not None:
            raise OpenAIError("unknown episode key", status=404, code="episode_not_found")
        raise OpenAIError("this endpoint serves agent episodes: give the episode's key as the API key or in the "
                          "base URL (/episodes/<key>/v1)", status=401, code="invalid_api_key")
