"""Tools from MCP servers (stdio or streamable HTTP, through the ``mcp`` package) as an environment's tools.

:class:`MCPTools` connects to the servers an environment lists, reads each server's tools
(``tools/list``: name, description, JSON schema) and gives them back as plain typed functions, so they
are tools like any other: their schemas go to the chat template, calls come in hermes
``<tool_call>`` format and run through :class:`~agentrl.tool.ToolExecutor` (argument checks, a timeout
per call, an exception or a result with ``isError`` becomes an ``Error: ...`` tool message).
:class:`MCPToolEnv` is a ready environment around them: a question from the row, the tools, and the
final answer (a reply with no tool call) graded against the row's label.

A server is a dict: ``{"command": "python", "args": ["server.py"], "env": {...}, "cwd": ...}`` (stdio:
the server is started as a subprocess and stopped with the environment) or ``{"url":
"http://127.0.0.1:8000/mcp"}`` (streamable HTTP). The connections live on a thread of their own with its
own event loop (MCP's client sessions are bound to the task that opened them), so an environment made
and closed anywhere, sync or async, opens and closes them cleanly.

What maps: tool names (a name served by two servers is an error), descriptions, parameter types and
descriptions (string, integer, number, boolean, array, object; the server's exact schema is what
:meth:`MCPToolEnv.tool_schemas` declares), required parameters, text results (other content is
shown by its type), ``isError``. What does not: MCP resources, prompts, sampling and elicitation
requests from the server, and progress notifications.

Example::

    >>> env = MCPToolEnv([{"command": "python", "args": ["my_server.py"]}])   # doctest: +SKIP
    >>> [s["function"]["name"] for s in env.tool_schemas()]                     # doctest: +SKIP
    ['multiply']
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.tool import HermesParser, ToolExecutor
from agentrl.utils.extras import require

_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list,
                              "object": dict}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


class MCPTools:
    """Connections to MCP servers and their tools as functions (``.tools``); ``close()`` ends them.

    Args:
        servers: each a ``{"command", "args"?, "env"?, "cwd"?}`` (stdio) or ``{"url"}`` (streamable HTTP).
        timeout: seconds to connect and list the tools; also each call's read timeout.
    """

    def __init__(self, servers: Sequence[Mapping[str, Any]], *, timeout: float = 30.0):
        require("mcp", extra="mcp", what="MCP tools")
        if not servers:
            raise ValueError("give at least one MCP server: {'command': ..., 'args': [...]} or {'url': ...}")
        self.servers, self.timeout = [dict(s) for s in servers], float(timeout)
        self._clients: dict[str, Any] = {}  # tool name -> the client that serves it
        self.schemas: dict[str, dict[str, Any]] = {}  # tool name -> the server's OpenAI-style schema
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True,
                                        name="agentrl-mcp")
        self._thread.start()
        if not self._ready.wait(self.timeout) or self._error is not None:
            self.close()
            raise RuntimeError(f"could not connect to the MCP servers {self.servers}: "
                               f"{self._error or f'no answer within {self.timeout:g} s'}") from self._error
        self.tools: tuple[Callable[..., Any], ...] = tuple(self._function(n) for n in self.schemas)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for server in self.servers:
                    client = await stack.enter_async_context(_client(server, self.timeout))
                    for tool in (await client.list_tools()).tools:
                        if tool.name in self.schemas:
                            raise ValueError(f"two MCP servers serve a tool named {tool.name!r}")
                        self._clients[tool.name] = client
                        self.schemas[tool.name] = {"type": "function", "function": {
                            "name": tool.name, "description": tool.description or "",
                            "parameters": dict(tool.input_schema or {"type": "object", "properties": {}})}}
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 -- reported to the constructor's thread
            self._error = e
            self._ready.set()

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call a tool on its server (from any event loop); its text, or RuntimeError with the server's error."""
        future = asyncio.run_coroutine_threadsafe(self._call(name, arguments), self._loop)
        return await asyncio.wrap_future(future)

    async def _call(self, name: str, arguments: dict[str, Any]) -> str:
        result = await self._clients[name].call_tool(name, arguments, read_timeout_seconds=self.timeout)
        text = "\n".join(getattr(c, "text", None) or f"[{getattr(c, 'type', 'content')}]" for c in result.content)
        if result.is_error:
            raise RuntimeError(text or "the MCP server reported an error")
        return text

    def _function(self, name: str) -> Callable[..., Any]:
        """An async function with the tool's name, docstring and typed parameters, calling the server."""
        spec = self.schemas[name]["function"]
        props: dict[str, Any] = spec["parameters"].get("properties") or {}
        required = set(spec["parameters"].get("required") or ())
        params, notes = [], []
        for pname, pschema in props.items():
            ptype = _PY_TYPES.get(str(pschema.get("type")), str)
            default = inspect.Parameter.empty if pname in required else pschema.get("default")
            params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=ptype if pname in required else ptype | None))
            notes.append(f"    {pname}: {pschema.get('description') or pschema.get('title') or pname}")

        async def call(**kwargs: Any) -> str:
            return await self.call(name, {k: v for k, v in kwargs.items() if v is not None or k in required})

        call.__name__ = call.__qualname__ = name
        call.__doc__ = (spec["description"] or name) + ("\n\nArgs:\n" + "\n".join(notes) if notes else "")
        call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        call.__annotations__ = {p.name: p.annotation for p in params}
        return call

    def close(self) -> None:
        """Close the sessions (stopping stdio servers) and the thread; calling it twice is allowed."""
        if self._thread.is_alive():
            if self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(self.timeout)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


def _client(server: Mapping[str, Any], timeout: float) -> Any:
    from mcp.client import Client

    if "url" in server:
        return Client(str(server["url"]), read_timeout_seconds=timeout)
    if "command" not in server:
        raise ValueError(f"an MCP server needs 'command' (stdio) or 'url' (HTTP); got {dict(server)}")
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=str(server["command"]), args=[str(a) for a in server.get("args", [])],
                                   env=server.get("env"), cwd=server.get("cwd"))
    return Client(stdio_client(params), read_timeout_seconds=timeout)


class MCPToolEnv(TextEnv):
    """A question answered with the tools of MCP servers; the final reply is graded against the label.

    Args:
        servers: the MCP servers (see :class:`MCPTools`).
        system_prompt: the system message (the tools' schemas are appended: not every template renders them).
        tool_timeout: seconds each call may take.
        max_tool_calls_per_turn: calls run per reply.
        rows: what ``reset`` without a question draws from: ``{"prompt", "label"}`` dicts.

    Reward: 1.0 when the final reply's last ``<answer>...</answer>`` (or, without tags, the whole reply)
    equals the label, ignoring case and surrounding space; a reply with a tool call earns 0 and continues.
    """

    def __init__(self, servers: Sequence[Mapping[str, Any]], *, system_prompt: str | None = None,
                 tool_timeout: float = 10.0, max_tool_calls_per_turn: int = 8,
                 rows: Sequence[Mapping[str, Any]] = ()):
        super().__init__()
        self.mcp = MCPTools(servers, timeout=max(tool_timeout, 30.0))
        self.tools = self.mcp.tools
        self.executor = ToolExecutor(self.tools, timeout=tool_timeout, max_concurrency=max_tool_calls_per_turn)
        self.parser, self.max_calls = HermesParser(), max_tool_calls_per_turn
        import json

        described = "\n".join(json.dumps(s) for s in self.mcp.schemas.values())
        self.system_prompt = "\n\n".join(p for p in (
            system_prompt, "You can call these tools, one per <tool_call>{\"name\": ..., \"arguments\": {...}}"
            f"</tool_call>:\n{described}\nGive the final answer in <answer></answer> tags.") if p)
        self.rows = [dict(r) for r in rows]
        self.label: str | None = None

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(self.mcp.schemas.values())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        row = dict(options or {})
        if "prompt" not in row and "question" not in row:
            if not self.rows:
                raise ValueError("reset needs options with a 'prompt' and a 'label' (or rows=)")
            row = {**self.rows[int(self.np_random.integers(0, len(self.rows)))], **row}
        question = row.get("prompt", row.get("question"))
        label = row.get("label", row.get("answer"))
        if label is None:
            raise ValueError(f"a row needs a 'label'; got keys {sorted(row)}")
        self.label = str(label)
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": str(question)}]
        return messages, {"tools": list(self.mcp.schemas)}

    async def astep(self, action: str):
        if self.label is None:
            raise RuntimeError("call reset() before step()")
        calls = self.parser.parse(action)
        if calls:
            results = await self.executor.execute(calls[: self.max_calls])
            errors = sum(1 for r in results if r.error_kind)
            return ([r.to_message() for r in results], 0.0, False, False,
                    {"tool_calls": len(results), "tool_errors": errors})
        tagged = _ANSWER.findall(action[-10_000:])
        answer = (tagged[-1] if tagged else action).strip()
        correct = answer.lower() == self.label.strip().lower()
        return [], float(correct), True, False, {"answer": answer[:200], "correct": correct}

    def close(self) -> None:
        mcp = getattr(self, "mcp", None)
        if mcp is not None:
            mcp.close()
        super().close()
