"""Agent programs as environments: ``async def agent(client: openai.AsyncOpenAI, task: dict) -> reward``.

An agent written against the OpenAI chat API (the ``openai`` SDK, or any framework with a
``base_url`` setting) becomes an environment with one line::

    register_agent("Calc-v0", "my_package.agent:solve", tasks="my_package/tasks.jsonl", max_turns=8)

and ``train.py``, ``agentrl eval`` and ``agentrl check-env`` use ``agentrl/Calc-v0`` like any other
id. In a rollout, :class:`AgentEnv` uses an OpenAI-compatible endpoint
(:func:`~agentrl.openai.endpoint.shared_endpoint`, on ``127.0.0.1``, one for the episodes of the
event loop) in front of the rollout's engine, opens an episode key, and awaits the agent with a client of that episode. Every call is
recorded as token ids (:class:`~agentrl.openai.capture.EpisodeCapture`): a conversation the agent
extends is one segment, token for token what a :class:`TextEnv` episode of the same conversation
gives; a conversation it rewrites starts a new segment.

The agent returns its reward (a number), a dict (``{"reward": 1.0, "info": {...}, ...}``: other
numbers become named reward components), or None: no reward of its own, left to
``--custom-rm-path`` (0.0 without one). An exception is a failed episode (data, not a crash); a call
beyond the turn limit or the context budget is refused (a 400 the agent sees) and the episode is
truncated.

The sample of an episode is its last segment that has completions; the earlier segments are kept in
``metadata["env_info"]["earlier_segments"]`` (token fields) and counted in ``metrics["segments"]``;
the trainer trains on the last one only (see ``docs/agents.md``).

Outside a rollout (``check_env``, notebooks, gymnasium tooling) the same class is a :class:`TextEnv`
with the roles turned around: ``reset`` runs the agent until its first call and returns that call's
messages; ``step(action)`` answers the pending call with ``action`` (parsed into content and
tool calls like any model output) and returns the messages of the agent's next call, or ends the
episode with the agent's reward when the agent returns. So ``check-env`` fuzzes the agent program with
malformed model output.

Example::

    >>> async def echo_agent(client, task):
    ...     out = await client.chat.completions.create(
    ...         model="policy", messages=[{"role": "user", "content": f"Say {task['word']}."}])
    ...     return float(task["word"] in (out.choices[0].message.content or ""))
    >>> env = AgentEnv(echo_agent, tasks=[{"word": "apple"}])
    >>> env.reset(seed=0)[0]
    [{'role': 'user', 'content': 'Say apple.'}]
    >>> env.step("apple")[1:3]
    (1.0, True)
    >>> env.close()
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agentrl.env.core import ResetResult, StepResult, TextEnv
from agentrl.env.registry import register
from agentrl.utils.imports import load_object

AgentFn = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, Any]]
"""``async (client: openai.AsyncOpenAI, task: dict) -> float | dict | None``."""

OracleFn = Callable[[dict[str, Any]], "list[str] | str"]
"""``(task) -> replies``: the model output that answers each of the agent's calls on ``task``."""

MODEL_NAME = "policy"
"""The model name agents use (``GET /v1/models`` lists it with the configured aliases)."""


def register_agent(env_id: str, agent: str | AgentFn, *, max_turns: int | None = None, **kwargs: Any) -> None:
    """Register the agent program ``agent`` as ``env_id``: ``"package.module:function"`` or
    ``"path/to/file.py:function"`` (imported when the env is made), or the function itself (this process only).

    ``kwargs`` go to :class:`AgentEnv` (``tasks``, ``model_names``, ``tool_parser``...); ``max_turns``
    bounds the model calls of an episode."""
    if isinstance(agent, str) and ":" not in agent:
        raise ValueError(f"agent must look like 'package.module:function' or 'path/to/file.py:function'; got {agent!r}")
    register(env_id, "agentrl.env.agent:AgentEnv", max_turns=max_turns, agent=agent, **kwargs)


class AgentEnv(TextEnv):
    """An agent program as an environment (see the module doc).

    Args:
        agent: the agent function, or its ``"package.module:function"`` path.
        tasks: tasks for resets without options (a list of dicts, or a JSONL file), drawn by seed;
            with ``options`` (a dataset row's fields) the options are the task.
        model_names: model names the agent may use (default: ``["policy"]``).
        tool_parser: the tool-call parser of model output (:func:`agentrl.tool.get_parser`).
        tokenizer: tokenizer of the text-environment view (``reset``/``step``); the rollout uses the policy's.
        max_calls: model calls per episode when no turn limit wraps the env.
        in_process: the agent's client reaches the endpoint's routes in process, without a socket (the
            default: cheaper per call; a streamed answer arrives whole); ``False``: over TCP, event by
            event. ``client.base_url`` is the TCP address either way (for programs in other processes).
        oracle: the model replies that solve a task, ``(task) -> list[str]`` (or its
            ``"package.module:function"`` path): the reply to each of the agent's calls in turn, written
            as model output (a tool call as the parser reads it). ``--sft-data oracle`` plays it for a
            warm start on the agent's own conversations; ``check-env --exploits`` checks it wins.
    """

    def __init__(self, agent: str | AgentFn, *, tasks: list[dict[str, Any]] | str | None = None,
                 model_names: list[str] | tuple[str, ...] = (MODEL_NAME,), tool_parser: str = "hermes",
                 tokenizer: str = "smollm2-135m-instruct", max_calls: int | None = None,
                 in_process: bool = True, oracle: str | OracleFn | None = None) -> None:
        super().__init__()
        self.agent: AgentFn = _load(agent) if isinstance(agent, str) else agent
        if not callable(self.agent):
            raise TypeError(f"agent must be an async function (client, task) -> reward; got {self.agent!r}")
        self.tasks = _tasks(tasks)
        self.model_names = list(model_names)
        self.tool_parser = tool_parser
        self.tokenizer_name = tokenizer
        self.max_calls = max_calls
        self.in_process = in_process
        self._oracle: OracleFn | None = load_object(oracle, what="oracle") if isinstance(oracle, str) else oracle
        if self._oracle is not None and not callable(self._oracle):
            raise TypeError(f"oracle must be a function (task) -> list of replies; got {oracle!r}")
        self._text_run: _TextRun | None = None

    @property
    def oracle(self) -> Callable[..., list[str]] | None:
        """The replies that solve the task of the episode just reset (from ``oracle=``); None without one."""
        if self._oracle is None:
            return None
        solver = self._oracle

        def plan(seed: int | None = None) -> list[str]:
            if self._text_run is None:
                raise RuntimeError("the oracle's plan is asked for before reset()")
            replies = solver(dict(self._text_run.task))
            if isinstance(replies, str):
                return [replies]
            if not isinstance(replies, (list, tuple)) or not all(isinstance(r, str) for r in replies):
                raise TypeError(f"oracle {getattr(solver, '__name__', solver)!r} must return a reply string or a list "
                                f"of reply strings; got {str(replies)[:80]!r} ({type(replies).__name__})")
            return list(replies)

        return plan

    def task_for(self, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
        """The task of an episode: the options when given, else a task drawn with the seeded RNG."""
        if options:
            return dict(options)
        if not self.tasks:
            raise ValueError(f"{type(self).__name__}: no task; pass options (a dataset row) or tasks=")
        return dict(self.tasks[int(self.np_random.integers(0, len(self.tasks)))])

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The tools the agent offered in its pending call (outside a rollout; ``[]`` before ``reset``)."""
        run = self._text_run
        capture = run.service.episodes.get(run.key) if run is not None and run.service is not None else None
        if capture is None or not capture.calls:
            return []
        return json.loads(capture.segments[capture.calls[-1].segment].tools_key)

    # -- in a rollout: the rollout's engine behind an endpoint ------------------------------------
    async def run_agent(self, engine: Any, template: Any, request: Any, config: Any, partial: Any, *,
                        outer: Any = None) -> str:
        """Run one episode of the agent against ``engine`` and fill the episode loop's record
        (``partial``); returns the status. Called by :func:`agentrl.rollout.run_episode`."""
        from agentrl.openai.endpoint import shared_endpoint
        from agentrl.openai.service import ChatService, SamplingPolicy

        self.seed_rng(request.env_seed)
        task = self.task_for(request.env_seed, request.options)
        policy = SamplingPolicy(base=config.sampling, max_new_tokens=config.max_new_tokens_per_turn,
                                max_context_tokens=config.max_context_tokens)
        service = ChatService(engine, template, model_names=self.model_names, tool_parser=self.tool_parser,
                              policy=policy, require_episode=True)
        key = service.open_episode(seed=request.sampling_seed)
        capture = service.episodes[key]
        capture.max_calls = _turn_limit(outer, config) or self.max_calls
        status = "ok"
        try:
            async with shared_endpoint() as (endpoint, directory):  # one server for the loop's episodes
                directory.add(service, key)
                try:
                    async with endpoint.client(key, in_process=self.in_process) as client:
                        result = await self.agent(client, task)
                finally:
                    directory.finish(key)
                    _fill(partial, capture)
        except Exception:
            if not capture.truncated:
                raise
            result = None  # the agent gave up on a refused call: the budget ended the episode
        if capture.truncated:
            status = "truncated"
        reward, rewards, info = _outcome(result)
        partial.reward = reward
        partial.turn_rewards = [0.0] * (partial.turns - 1) + [reward] if partial.turns else []  # an outcome reward
        partial.components = dict(rewards)
        partial.info.update(info)
        if rewards:
            partial.info["reward_components"] = rewards
        if not capture.calls:
            raise RuntimeError("the agent returned without calling the model")
        return status

    # -- outside a rollout: a TextEnv whose actions answer the agent's calls ----------------------
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        self.seed_rng(seed)
        await self._stop_run()
        self._text_run = _TextRun(self, self.task_for(seed, options), seed)
        event = await self._text_run.start()
        if event is None:
            raise RuntimeError("the agent returned without calling the model")
        return event, {}

    async def astep(self, action: str) -> StepResult:
        if self._text_run is None:
            raise RuntimeError("step() before reset()")
        return await self._text_run.answer(action)

    def close(self) -> None:
        if self._text_run is not None:
            run, self._text_run = self._text_run, None
            run.stop_from_sync(self._loop)
        super().close()

    async def _stop_run(self) -> None:
        if self._text_run is not None:
            run, self._text_run = self._text_run, None
            await run.stop()


_STOPPING: set[asyncio.Task] = set()
"""Text runs being stopped by a ``close()`` called on their own event loop (a reference until they end)."""


class _TextRun:
    """One episode of the text-environment view: the agent's calls wait for ``step`` actions."""

    def __init__(self, env: AgentEnv, task: dict[str, Any], seed: int | None) -> None:
        self.env, self.task, self.seed = env, task, seed
        self.pending: asyncio.Queue[tuple[list[int], asyncio.Future]] = asyncio.Queue()
        self.agent_task: asyncio.Task | None = None
        self.endpoint: Any = None
        self.service: Any = None
        self.key = ""
        self.reply: asyncio.Future | None = None

    async def start(self) -> list[dict[str, Any]] | None:
        from agentrl.openai.endpoint import AgentEndpoint
        from agentrl.openai.service import ChatService

        self.template = _text_template(self.env.tokenizer_name)
        self.service = ChatService(_StepEngine(self.pending), self.template, model_names=self.env.model_names,
                                   tool_parser=self.env.tool_parser, require_episode=True)
        self.key = self.service.open_episode(seed=self.seed)
        self.endpoint = await AgentEndpoint(self.service).start()
        self.client = self.endpoint.client(self.key, in_process=self.env.in_process)
        self.agent_task = asyncio.create_task(self.env.agent(self.client, dict(self.task)))
        return await self._next_messages()

    async def answer(self, action: str) -> StepResult:
        assert self.reply is not None and self.agent_task is not None
        from agentrl.engine.base import Completion

        if self.agent_task.done():  # stepped after the end: nothing more happens
            return [], 0.0, True, False, {}
        ids = self.template.tokenize(action) + list(self.template.end_of_turn_ids)
        self.reply.set_result(Completion(ids, [0.0] * len(ids), "stop"))
        messages = await self._next_messages()
        if messages is not None:
            return messages, 0.0, False, False, {}
        await self.stop()  # the endpoint and client go now, while their event loop runs
        reward, _, info = _outcome(self.agent_task.result())  # an agent's exception reaches the caller
        return [], reward, True, False, info

    async def _next_messages(self) -> list[dict[str, Any]] | None:
        """The new messages of the agent's next call (all of them when it starts a segment), or None when it returned."""
        assert self.agent_task is not None
        getter = asyncio.ensure_future(self.pending.get())
        await asyncio.wait({getter, self.agent_task}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            return None
        _, self.reply = getter.result()
        capture = self.service.episodes[self.key]
        call = capture.calls[-1]
        return capture.segments[call.segment].conv.messages[-call.new_messages:]

    def stop_from_sync(self, fallback: asyncio.AbstractEventLoop | None) -> None:
        """:meth:`stop` from synchronous code (``close()``), on the event loop the agent runs on: at once when
        that loop is idle or runs in another thread (e.g. ``close`` sent to a worker thread), else as soon as
        the caller, which runs on it, yields."""
        loop = self.agent_task.get_loop() if self.agent_task is not None else fallback
        if loop is None or loop.is_closed():
            return
        if not loop.is_running():
            loop.run_until_complete(self.stop())
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            task = loop.create_task(self.stop())
            _STOPPING.add(task)
            task.add_done_callback(_STOPPING.discard)
        else:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=60)

    async def stop(self) -> None:
        if self.agent_task is not None and not self.agent_task.done():
            self.agent_task.cancel()
            await asyncio.gather(self.agent_task, return_exceptions=True)
        waiting = [self.reply] if self.reply is not None else []
        while not self.pending.empty():
            waiting.append(self.pending.get_nowait()[1])
        from agentrl.openai.protocol import OpenAIError

        for future in waiting:  # the calls still open on the server end, so that it can stop
            if not future.done():
                future.set_exception(OpenAIError("the episode was closed", status=409, code="episode_finished"))
        if self.endpoint is not None:
            endpoint, self.endpoint = self.endpoint, None
            await self.client.close()
            await endpoint.stop()


class _StepEngine:
    """An engine whose completions are the text environment's actions."""

    weight_version = 0

    def __init__(self, pending: asyncio.Queue) -> None:
        self.pending = pending

    async def generate(self, input_ids: list[int], sampling: Any, *, rid: str | None = None) -> Any:
        future = asyncio.get_running_loop().create_future()
        await self.pending.put((input_ids, future))
        return await future

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        return 0

    async def abort(self, rid: str | None = None) -> None:
        return None

    async def health(self) -> bool:
        return True


@functools.lru_cache(maxsize=4)
def _text_template(tokenizer: str) -> Any:
    """The chat template of the text-environment view (loaded once per process: check_env resets many times)."""
    from agentrl.chat import ChatTemplate
    from agentrl.models import load_tokenizer

    return ChatTemplate(load_tokenizer(tokenizer))


def _fill(partial: Any, capture: Any) -> None:
    """The episode loop's record from the capture: the last segment with completions is the sample."""
    segments = [s for s in capture.segments if s.conv.num_turns]
    partial.conversation = segments[-1].conv if segments else None
    partial.turns = len(capture.calls)
    partial.weight_versions = [c.weight_version for c in capture.calls if c.finish_reason is not None]
    partial.metrics["segments"] = float(len(segments))
    partial.metrics["tool_calls"] = float(capture.tool_calls)
    partial.info["earlier_segments"] = [s.to_sample_fields() for s in segments[:-1]]


def _outcome(result: Any) -> tuple[float, dict[str, float], dict[str, Any]]:
    """(reward, named components, info) from what the agent returned."""
    if result is None:
        return 0.0, {}, {}
    if isinstance(result, dict):
        info = result.get("info") or {}
        if not isinstance(info, dict):
            raise ValueError(f"the agent's 'info' must be a dict; got {type(info).__name__} {str(info)[:60]!r}")
        rewards = {k: float(v) for k, v in result.items()
                   if k not in ("reward", "info") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        reward = result.get("reward")
        reward = sum(rewards.values()) if reward is None else reward
        return _finite(reward), rewards, json.loads(json.dumps(info, default=repr))
    return _finite(result), {}, {}


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the agent must return a finite number, a dict with 'reward', or None; got {value!r}")
    return float(value)


def _turn_limit(outer: Any, config: Any) -> int | None:
    env = outer
    while env is not None:
        if isinstance(getattr(env, "max_turns", None), int):
            return int(env.max_turns)
        env = getattr(env, "env", None)
    return getattr(config, "max_turns", None)


def _load(path: str) -> AgentFn:
    fn = load_object(path, what="agent")
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"agent {path!r} must be an async function (client, task) -> reward")
    return fn


def _tasks(tasks: list[dict[str, Any]] | str | None) -> list[dict[str, Any]]:
    if tasks is None:
        return []
    if isinstance(tasks, str):
        rows = []
        for n, line in enumerate(Path(tasks).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"tasks file {tasks}, line {n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"tasks file {tasks}, line {n}: a task must be a JSON object; got "
                                 f"{type(row).__name__}")
            rows.append(row)
        return rows
    if not all(isinstance(t, dict) for t in tasks):
        bad = next(t for t in tasks if not isinstance(t, dict))
        raise TypeError(f"tasks must be dicts (or a JSONL file of objects); got {type(bad).__name__} {str(bad)[:60]!r}")
    return [dict(t) for t in tasks]
