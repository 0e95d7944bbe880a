"""An OpenAI-compatible endpoint served on the running event loop, in front of any engine.

:class:`AgentEndpoint` runs the routes of :mod:`agentrl.openai.routes` with uvicorn as a task of
the current event loop (the rollout's), bound to ``127.0.0.1`` on a free port, so an agent program
in the same process (an ``openai.AsyncOpenAI`` client) or in a subprocess (any program with a
``base_url`` setting) reaches the rollout's engine through it. Every call must name an episode key
(opened by its service); calls without one get 401. :func:`shared_endpoint` gives the episodes of one
event loop a single endpoint (an :class:`~agentrl.openai.service.EpisodeDirectory` routes each call
to the service of its episode): it starts with the first episode and stops when the last one leaves.

Example::

    >>> import asyncio
    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> from agentrl.testing import FakeEngine
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> engine = FakeEngine(responder=lambda ids, sp: tok.encode("4<|im_end|>", add_special_tokens=False))
    >>> async def main():
    ...     async with AgentEndpoint(ChatService(engine, ChatTemplate(tok), model_names=["policy"],
    ...                                          require_episode=True)) as endpoint:
    ...         key = endpoint.service.open_episode()
    ...         async with endpoint.client(key) as client:
    ...             out = await client.chat.completions.create(
    ...                 model="policy", messages=[{"role": "user", "content": "2+2?"}])
    ...         return out.choices[0].message.content, len(endpoint.service.finish_episode(key).segments)
    >>> asyncio.run(main())
    ('4', 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentrl.openai.service import ChatService, EpisodeDirectory

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5
"""Seconds a stopping endpoint waits for calls still in flight."""
KEEP_ALIVE_S = 3600
"""Seconds an idle connection stays open: an episode's client keeps one for all its calls, and closes it
when the episode ends (uvicorn's default, 5 s, races with an agent whose tool ran longer)."""


class AgentEndpoint:
    """The OpenAI routes over ``service``, served by a task of the running event loop.

    ``host`` defaults to the loopback address: agent programs run on this machine, and an episode
    key is all that separates one episode's calls from another's.
    """

    def __init__(self, service: ChatService | EpisodeDirectory, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host, self.port = host, port
        self.app: Any = None
        """The ASGI app of the routes, once started."""
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, key: str) -> str:
        """The base URL of one episode: ``http://127.0.0.1:<port>/episodes/<key>/v1``."""
        return f"{self.url}/episodes/{key}/v1"

    def client(self, key: str, *, in_process: bool = True, **kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` client of episode ``key`` (no retries: a retried call would be recorded twice).

        ``in_process`` (the default, for an agent on this event loop): its requests reach the routes through
        httpx's ASGI transport, with no socket, HTTP parsing or connection pool on either side (a quarter
        to 40% less CPU per call, measured); a streamed answer then arrives whole, its events together at the end.
        ``client.base_url`` is the TCP address either way, for programs in other processes. Otherwise it
        speaks plain HTTP over TCP and loads no CA certificates (~50 ms of CPU per client)."""
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", None)
        if "http_client" not in kwargs:
            if in_process and self.app is not None:
                import httpx

                kwargs["http_client"] = openai.DefaultAsyncHttpxClient(
                    transport=httpx.ASGITransport(app=self.app, client=("127.0.0.1", 0)), timeout=kwargs["timeout"])
            else:
                kwargs["http_client"] = openai.DefaultAsyncHttpxClient(verify=False, timeout=kwargs["timeout"])
        return openai.AsyncOpenAI(base_url=self.base_url(key), api_key=key, **kwargs)

    async def start(self) -> "AgentEndpoint":
        import uvicorn
        from starlette.applications import Starlette

        from agentrl.engine._server_run import listening_socket
        from agentrl.openai.routes import add_openai_routes

        app = self.app = Starlette()
        add_openai_routes(app, self.service, allow_open_episodes=False)
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _LoopServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                                   timeout_graceful_shutdown=STOP_TIMEOUT_S,
                                                   timeout_keep_alive=KEEP_ALIVE_S))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done() or loop.time() > deadline:
                sock.close()
                if self._task.done() and self._task.exception() is not None:
                    raise RuntimeError(f"the agent endpoint did not start: {self._task.exception()}")
                raise RuntimeError(f"the agent endpoint did not start within {STARTUP_TIMEOUT_S:g} s")
            await asyncio.sleep(0.001)
        return self

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        self._server.stopping.set()
        try:
            await self._task
        finally:
            self._server = self._task = self.app = None

    async def __aenter__(self) -> "AgentEndpoint":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


@dataclass
class _Shared:
    directory: EpisodeDirectory = field(default_factory=EpisodeDirectory)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    endpoint: AgentEndpoint | None = None
    users: int = 0


_SHARED: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared]" = weakref.WeakKeyDictionary()
"""The shared endpoint of each event loop (a cache of a resource bound to the loop; it goes with the loop)."""


@contextlib.asynccontextmanager
async def shared_endpoint() -> AsyncIterator[tuple[AgentEndpoint, EpisodeDirectory]]:
    """The running event loop's endpoint and its directory, for one episode: the first episode starts it,
    the last one to leave stops it. Add the episode's key to the directory; finish it there.

    Example (two episodes, one server)::

        >>> async def main():
        ...     async with shared_endpoint() as (a, _), shared_endpoint() as (b, _):
        ...         return a is b
        >>> asyncio.run(main())
        True
    """
    loop = asyncio.get_running_loop()
    shared = _SHARED.get(loop)
    if shared is None:
        shared = _SHARED[loop] = _Shared()
    async with shared.lock:
        if shared.endpoint is None:
            shared.endpoint = await AgentEndpoint(shared.directory).start()
        shared.users += 1
        endpoint = shared.endpoint
    try:
        yield endpoint, shared.directory
    finally:
        async with shared.lock:
            shared.users -= 1
            if shared.users == 0 and shared.endpoint is not None:
                last, shared.endpoint = shared.endpoint, None
                await last.stop()


def _loop_server_class() -> Any:
    import uvicorn

    class LoopServer(uvicorn.Server):
        """uvicorn on a loop it does not own: the host's signal handlers (Ctrl-C stops training) stay,
        and stopping takes milliseconds (uvicorn's own loop looks at ``should_exit`` every 100 ms and
        its shutdown sleeps 100 ms more: an episode's endpoint would cost it 0.2 s)."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.stopping = asyncio.Event()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def main_loop(self) -> None:
            await self.on_tick(0)  # the default headers (date, server)
            await self.stopping.wait()

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()  # idle ones close now, busy ones after their answer
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.config.timeout_graceful_shutdown or STOP_TIMEOUT_S)
            while (self.server_state.connections or self.server_state.tasks) and loop.time() < deadline:
                await asyncio.sleep(0.005)
            for task in self.server_state.tasks:
                task.cancel()

    return LoopServer


def _LoopServer(config: Any) -> Any:
    return _loop_server_class()(config)
