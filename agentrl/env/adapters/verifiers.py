"""A verifiers environment (``verifiers.v1``: a taskset, its tools, its rewards, its ``Env``) as an agentrl environment.

In verifiers an environment is a ``Taskset`` (tasks: a prompt, a system prompt, data), the task's
``@vf.reward``/``@vf.metric`` functions and judges (its rubric), tool servers (``Toolset`` classes
with ``@vf.tool`` methods) and an ``Env`` whose ``run(task, agents)`` drives the conversation: a
single agent answering (``SingleAgentEnv``, the default) or a loop of ``interaction.turn(message)``
calls where the environment plays the user (a game engine, a simulator). verifiers runs the model
as a program behind a harness; here agentrl plays the environment's one trainable seat itself, turn
by turn. ``VerifiersEnv("openenv", taskset_config={...})`` takes a verifiers taskset id (resolved by
verifiers' own loaders, with the ``Env`` it pairs with), or a ``Taskset`` class or
``"module:Class"`` with ``env=`` an ``Env`` class. The mapping:

* ``reset(seed, options)``: task ``options["task_index"]`` (else ``seed`` modulo the number of
  tasks; a random one without a seed) of the first ``num_tasks`` the taskset yields; the
  environment's ``run`` starts on a thread of its own and runs until it wants the model's reply.
  Its messages so far (the system prompt, the task's prompt, or the first user turn of a prompt-less
  task) are the opening messages.
* ``step(text)``: the reply is the seat's answer to that ``turn``: an assistant message on a real
  verifiers ``Trace``. A reply with hermes ``<tool_call>`` calls of the task's tools runs them
  (tool messages back, the turn goes on), as a verifiers tool harness does.
* Tools: the ``@vf.tool`` methods of the taskset's and the task's ``Toolset`` s, called in-process
  (named ``<server>_<tool>`` as verifiers advertises them; a setup per episode for per-task ones).
* Rewards: when ``run`` returns, the task is scored as verifiers scores it (``Task.score``: its
  ``@vf.reward`` functions with their weights, its metrics, its judges), and the episode ends
  (``terminated``) with ``trace.reward``, the weighted sum, including what ``run`` recorded itself
  (``trace.record_reward``). Metrics and rewards by name are in ``info``. ``@vf.stop`` conditions
  end the exchange as in verifiers.
* Not carried over: harnesses (agentrl is the program), sandboxes and runtimes (tasks that need a
  container), environments with several model seats (one seat is agentrl's; a second seat that
  needs a model is an error), ``Env.finalize`` (cross-agent judgement), judges that call a model
  (they need their own client), and tools served only over MCP by a remote box.

Example::

    >>> env = VerifiersEnv("my_tasks:MathTaskset")                              # doctest: +SKIP
    >>> messages, info = env.reset(seed=0)                                      # doctest: +SKIP
    >>> env.step("The answer is 4.")[1:3]                                       # doctest: +SKIP
    (1.0, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.tool import HermesParser, ToolExecutor
from agentrl.utils.extras import require


_TASKS: dict[tuple[type, str, int], list[Any]] = {}


VERIFIERS_MIN_VERSION = "0.4"
"""The verifiers release whose ``verifiers.v1`` API (tasksets, agent seats, ``AgentConfig``) the adapters follow."""


def load_verifiers(what: str) -> Any:
    """``verifiers.v1``, or :class:`~agentrl.utils.extras.MissingExtra` saying, in one line, that verifiers is
    missing or older than :data:`VERIFIERS_MIN_VERSION`; ``what`` names what needs it."""
    return require("verifiers.v1", extra="verifiers", what=what, package="verifiers",
                   min_version=VERIFIERS_MIN_VERSION)


class VerifiersEnv(TextEnv):
    """A verifiers taskset and its ``Env`` as an environment (see the module docstring).

    Args:
        taskset: a verifiers taskset id (``"openenv"``, an installed taskset package), a ``Taskset``
            subclass, or a ``"module:Class"`` / ``"path.py:Class"`` string naming one.
        env: the ``Env`` subclass that runs an episode (or its ``"module:Class"``); default: the one
            verifiers pairs with the taskset id, else ``SingleAgentEnv``.
        taskset_config: fields of the taskset's config (its ``TasksetConfig`` subclass).
        env_config: fields of the ``Env`` 's config.
        seat: the agent seat agentrl plays (default: the only one).
        num_tasks: how many tasks of the taskset are played (an infinite taskset is cut there).
        tool_timeout: seconds a tool call may take.
        timeout: seconds the environment may take to answer a reply.
    """

    def __init__(self, taskset: Any, *, env: Any = None, taskset_config: Mapping[str, Any] | None = None,
                 env_config: Mapping[str, Any] | None = None, seat: str | None = None, num_tasks: int = 64,
                 tool_timeout: float = 10.0, timeout: float = 60.0):
        super().__init__()
        vf = load_verifiers("verifiers environments")
        from verifiers.v1.configs.agent import agent_config_fields
        from verifiers.v1.utils import loaders
        from verifiers.v1.utils.generic import concrete_type

        from agentrl.utils.imports import load_object

        self.vf, self.timeout = vf, float(timeout)
        if isinstance(taskset, str) and ":" not in taskset:  # a verifiers taskset id
            taskset_cls = loaders.taskset_class(taskset)
            config = loaders.taskset_config_type(taskset)(id=taskset, **dict(taskset_config or {}))
            env_cls = load_object(env, what="verifiers Env") if isinstance(env, str) else env
            env_cls = env_cls or loaders.environment_class(taskset, "")
        else:
            taskset_cls = load_object(taskset, what="verifiers Taskset") if isinstance(taskset, str) else taskset
            config_cls = concrete_type(taskset_cls, vf.TasksetConfig, origin=vf.Taskset) or vf.TasksetConfig
            config = config_cls(**dict(taskset_config or {}))
            env_cls = (load_object(env, what="verifiers Env") if isinstance(env, str) else env) or vf.SingleAgentEnv
        if not (isinstance(taskset_cls, type) and issubclass(taskset_cls, vf.Taskset)):
            raise TypeError(f"taskset must name a verifiers Taskset; got {taskset_cls!r}")
        if not (isinstance(env_cls, type) and issubclass(env_cls, vf.Env)):
            raise TypeError(f"env must be a verifiers Env subclass; got {env_cls!r}")
        self.taskset = taskset_cls(config)
        key = (taskset_cls, config.model_dump_json(), num_tasks)
        if key not in _TASKS:  # an environment is made per episode: load the tasks once per process
            _TASKS[key] = list(itertools.islice(iter(self.taskset), num_tasks))
        self.tasks = _TASKS[key]
        if not self.tasks:
            raise ValueError(f"{taskset_cls.__name__} yielded no task")
        env_config_cls = concrete_type(env_cls, vf.EnvConfig, origin=vf.Env) or vf.EnvConfig
        self.env_config = env_config_cls(taskset=config, **dict(env_config or {}))
        # The Env's own run()/setup() over this config; its __init__ (harnesses, runtimes) is verifiers' machinery.
        self.vf_env: Any = object.__new__(env_cls)
        self.vf_env.config = self.env_config
        seats = list(agent_config_fields(self.env_config))
        if seat is None and len(seats) != 1:
            raise ValueError(f"{env_cls.__name__} has the seats {seats}: name the one agentrl plays with seat=")
        self.seat = seat or seats[0]
        if self.seat not in seats:
            raise ValueError(f"{env_cls.__name__} has no seat {self.seat!r}; its seats: {seats}")
        self.task_cls: Any = type(self.taskset).task_type()
        self._shared: list[Any] = list(self.taskset.toolsets(config))
        self._per_task: list[Any] = []
        self.tools = tuple(self._tool_functions())
        self.executor = ToolExecutor(self.tools, timeout=tool_timeout) if self.tools else None
        self.parser = HermesParser()
        self._thread = _LoopThread()
        self._thread.run(self._setup_shared(), self.timeout)
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._reply: asyncio.Future[str] | None = None
        self._episode: Any = None

    # -- the tools --------------------------------------------------------------------------------
    def _tool_functions(self) -> list[Callable[..., Any]]:
        from verifiers.v1.utils.decorators import discover_decorated

        probes = [*self._shared, *self.task_cls.toolsets(self.tasks[0].config)]
        functions = []
        for index, toolset in enumerate(probes):
            prefix = toolset.server_name
            for fn in discover_decorated(toolset, "tool"):
                name = getattr(fn, "tool_name", None) or fn.__name__
                functions.append(self._tool(index, f"{prefix}_{name}" if prefix else name, fn.__name__, fn))
        return functions

    def _tool(self, index: int, name: str, attr: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        import inspect

        async def call(**kwargs: Any) -> Any:
            toolsets = [*self._shared, *self._per_task]
            if index >= len(toolsets):
                raise RuntimeError("the episode has not started")
            result = getattr(toolsets[index], attr)(**kwargs)
            return await result if inspect.isawaitable(result) else result

        call.__name__ = call.__qualname__ = name
        call.__doc__ = fn.__doc__ or f"{name}."
        call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        call.__annotations__ = {k: v for k, v in getattr(fn, "__annotations__", {}).items()}
        return call

    async def _setup_shared(self) -> None:
        for toolset in self._shared:
            await toolset.setup()

    # -- the episode ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._stop_episode()
        row = dict(options or {})
        if "task_index" in row:
            index = int(row["task_index"]) % len(self.tasks)
        elif seed is not None:
            index = seed % len(self.tasks)
        else:
            index = int(self.np_random.integers(0, len(self.tasks)))
        task = self.tasks[index]
        self._events = queue.Queue()
        self._episode = self._thread.submit(self._play(task, self._events))
        kind, *rest = self._next_event()
        if kind != "reply":
            raise RuntimeError(f"{type(self.vf_env).__name__}.run() ended before the model's first turn")
        return rest[0], {"task_index": index, "task": task.data.name or task.key[:12]}

    def step(self, action: str):
        reply = self._reply
        if reply is None:
            if self._episode is None:
                raise RuntimeError("call reset() before step()")
            return [], 0.0, True, False, {"episode_over": True}  # stepping on after the end: nothing happens
        self._reply = None
        self._thread.call(reply.set_result, action)
        kind, *rest = self._next_event()
        if kind == "reply":
            return rest[0], 0.0, False, False, {}
        reward, info = rest
        return [], reward, True, False, info

    def _next_event(self) -> tuple[Any, ...]:
        try:
            event = self._events.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"{type(self.vf_env).__name__} did not answer within {self.timeout:g} s") from None
        if event[0] == "error":
            raise RuntimeError(f"{type(self.vf_env).__name__}.run() failed: {event[1]!r}") from event[1]
        if event[0] == "reply":
            self._reply = event[2]
            return event[0], event[1]
        return event

    async def _play(self, task: Any, events: queue.Queue[tuple[Any, ...]]) -> None:
        vf = self.vf
        try:
            self._per_task = list(self.task_cls.toolsets(task.config))
            for toolset in self._per_task:
                await toolset.setup()
                await toolset.setup_task(task)
            seats: dict[str, _Seat] = {}

            def make(name: str, spec: Any) -> _Seat:
                seats[name] = _Seat(self, name, spec, events, policy=name == self.seat)
                return seats[name]

            agents = vf.Agents(self.env_config, make)
            await self.vf_env.setup(agents)
            await self.vf_env.run(task, agents)
            trace = seats[self.seat].trace
            if trace is None:
                raise RuntimeError(f"{type(self.vf_env).__name__}.run() never ran the seat {self.seat!r}")
            await task.score(trace)
            info = {"rewards": {k: (r.score if r is not None else None) for k, r in trace.rewards.items()},
                    "metrics": dict(trace.metrics), "stop_condition": trace.stop_condition}
            events.put(("done", float(trace.reward), json.loads(json.dumps(info, default=repr))))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the environment's own failure: the step that waits on it raises it
            events.put(("error", e))
        finally:
            self._per_task = []

    def _stop_episode(self) -> None:
        episode, self._episode, self._reply = self._episode, None, None
        if episode is not None and not episode.done():
            self._thread.run(_cancel_others(), self.timeout)

    async def _ask(self, messages: list[dict[str, Any]], events: queue.Queue[tuple[Any, ...]]) -> str:
        """On the episode's loop: hand ``messages`` to the model's side and wait for its reply."""
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        events.put(("reply", messages, reply))
        return await reply

    def close(self) -> None:
        self._stop_episode()
        thread = getattr(self, "_thread", None)
        if isinstance(thread, _LoopThread):
            thread.stop()
        super().close()


class _Seat:
    """One agent seat of the verifiers ``Env``: agentrl's (``policy``) or one that needs a model of its own."""

    def __init__(self, env: VerifiersEnv, name: str, spec: Any, events: queue.Queue[tuple[Any, ...]], *,
                 policy: bool):
        self.env, self.name, self.spec, self.events, self.policy = env, name, spec, events, policy
        self.trainable = True
        self.trace: Any = None

    def _check(self) -> None:
        if not self.policy:
            raise RuntimeError(f"the seat {self.name!r} needs a model of its own; agentrl plays the seat "
                               f"{self.env.seat!r} only")

    async def run(self, task: Any, **_: Any) -> Any:
        """One segment on a prompted task: the reply (and its tool rounds), as a single-agent run."""
        self._check()
        conversation = _Conversation(self, task)
        await conversation.segment(conversation.opening(None))
        conversation.trace.stop("agent_completed")
        return conversation.trace

    @contextlib.asynccontextmanager
    async def interaction(self, task: Any, **_: Any) -> AsyncIterator[_Conversation]:
        self._check()
        conversation = _Conversation(self, task)
        try:
            yield conversation
        finally:
            if conversation.trace.stop_condition is None:
                conversation.trace.stop("user_closed")


class _Conversation:
    """What ``agent.interaction(task)`` yields in verifiers (``turn``, ``trace``), played by agentrl."""

    def __init__(self, seat: _Seat, task: Any):
        vf = seat.env.vf
        from verifiers.v1.trace import AgentInfo, TraceTask

        self.seat, self.task, self.vf = seat, task, vf
        self.trace = vf.Trace(task=TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
                              agent=AgentInfo(config=seat.spec, name=seat.name))
        seat.trace = self.trace
        self.started = self.over = False

    def opening(self, message: Any) -> list[Any]:
        vf, data = self.vf, self.task.data
        messages: list[Any] = []
        if data.system_prompt:
            messages.append(vf.SystemMessage(content=data.system_prompt))
        if isinstance(data.prompt, str):
            messages.append(vf.UserMessage(content=data.prompt))
        elif data.prompt:
            messages.extend(data.prompt)
        return messages + self._as_messages(message)

    def _as_messages(self, message: Any) -> list[Any]:
        from verifiers.v1.dialects.chat import parse_message

        if message is None:
            return []
        if isinstance(message, str):
            return [self.vf.UserMessage(content=message)]
        return [parse_message(m) if isinstance(m, dict) else m for m in message]

    async def turn(self, message: Any = None) -> Any:
        if self.over:
            raise RuntimeError("the exchange is over (the run ended); read interaction.trace")
        prompted = not self.started and self.task.data.prompt is not None
        if message is None and not prompted:
            raise ValueError("nothing to run a turn on: a bare turn() takes a prompted task's opening reply")
        new = self.opening(message) if not self.started else self._as_messages(message)
        if await self._stopped():
            self.over = True
            return self.vf.Segment(messages=[], terminated=True)
        return await self.segment(new)

    async def _stopped(self) -> bool:
        from verifiers.v1.utils.decorators import invoke_all

        hooks = self.task.hooks("stop")
        if not hooks or not self.started:
            return False
        results = await invoke_all(hooks, {"task": self.task.data, "trace": self.trace})
        for fn, result in zip(hooks, results):
            if result:
                self.trace.stop(fn.__name__)
                return True
        return False

    async def segment(self, new: list[Any]) -> Any:
        """Append ``new``, then the model's replies (and tool rounds) until a reply without tool calls."""
        from verifiers.v1.graph import MessageNode

        env = self.seat.env
        self.started = True
        produced: list[Any] = []
        while True:
            for m in new:
                self._append(MessageNode, m, sampled=False)
            text = await env._ask([_as_dict(m) for m in new], self.seat.events)
            reply = self.vf.AssistantMessage(content=text)
            self._append(MessageNode, reply, sampled=True)
            produced.append(reply)
            calls = env.parser.parse(text) if env.executor is not None else []
            if not calls:
                return self.vf.Segment(messages=produced)
            assert env.executor is not None
            results = await env.executor.execute(calls)
            new = [self.vf.ToolMessage(tool_call_id=uuid.uuid4().hex[:8], name=r.call.name, content=r.content)
                   for r in results]
            produced.extend(new)

    def _append(self, node_cls: type, message: Any, *, sampled: bool) -> None:
        nodes = self.trace.nodes
        nodes.append(node_cls(parent=len(nodes) - 1 if nodes else None, message=message, sampled=sampled))


def _as_dict(message: Any) -> dict[str, Any]:
    from verifiers.v1.types import content_text

    out = {"role": message.role, "content": content_text(message.content) or ""}
    if message.role == "tool" and getattr(message, "name", None):
        out["name"] = message.name
    return out


async def _cancel_others() -> None:
    """Cancel every other task of this loop (an unfinished episode) and wait until they are gone."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _LoopThread:
    """An event loop on a daemon thread of its own: the verifiers episode lives there between steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="agentrl-verifiers")
        self.thread.start()

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float) -> Any:
        return self.submit(coro).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
