"""``agentrl/ToolUse-v0``: OpenAI-style function calling on arithmetic and word problems.

The model gets a problem and a set of tools (by default ``calculator`` and ``python``). Each
turn it either calls tools or answers:

* **Tool turn.** Every hermes-format call in the reply,
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, is parsed with
  :class:`~agentrl.tool.HermesParser` and run by a :class:`~agentrl.tool.ToolExecutor`
  (concurrently, each call under ``tool_timeout``). The observation is one
  ``{"role": "tool", "name": ..., "content": ...}`` message per call, in call order. A malformed
  call, an unknown tool, bad arguments, an exception or a timeout is answered by a tool message
  starting with ``Error:`` that says what went wrong, and counted in ``info["tool_errors"]``.
  At most ``max_tool_calls_per_turn`` calls are run; the rest get one extra tool message saying
  they were not run (counted as one error). What a tool returns is its output, not an error, even
  when it reports a problem itself (the calculator's ``Error: division by zero``, the traceback
  of a program run by ``python``).
* **Answer turn.** A reply without a tool call is the final answer: it is graded against the
  label with :func:`envs._math_grading.grade` (``\\boxed{}``, else ``<answer>...</answer>``,
  else ``#### x``, else the last number when ``fallback_last_number``) and the episode ends.

Reward: 1.0 for a correct answer; ``format_reward`` (default 0) for a wrong answer given in an
explicit format (``\\boxed{}``, ``<answer>``, ``####``); else 0. With ``tool_error_penalty=p > 0``
each tool turn also gets ``-p * tool_errors`` (so the episode's return is the answer's reward
minus ``p`` per failed call; the penalty is given on the turn of the error, so an episode cut by
the turn limit is penalised too). With the default limits a turn costs at most
``p * (max_tool_calls_per_turn + 1)``.

Shaping (:mod:`agentrl.env.shaping`): ``shaping={"tool_call": w}`` adds ``w`` on the first turn
whose tool calls all run without an error, once an episode. How it can be gamed: any valid call (``1+1``)
followed by any answer collects it; it is paid once, so an episode earns at most ``w`` from it, and with
``w < 1`` a wrong answer never earns what a right one does. Every step's ``info["reward_components"]``
holds ``task`` (1 for a correct answer, else 0), ``format`` (``format_reward`` for a wrong answer in an
explicit format), ``tool_errors`` (minus the penalty) and the shaping terms; held-out success counts the
task alone. ``oracle()`` (the warm start's demonstrations, ``--sft-data oracle``) calls the calculator
on the row's ``expression`` when the row has one, then answers ``\\boxed{<answer>}``; ``exploits()`` are
scripted policies that collect the shaping without answering right.

``info`` of every step has ``tool_calls`` (calls found in the reply, those not run included)
and ``tool_errors`` (tool messages reporting an error), the counts the rollout sums into
episode metrics; ``extracted`` is the graded answer on the answer turn (None before);
``tool_error_kinds`` counts errors by kind (:data:`agentrl.tool.ERROR_KINDS` and
``too_many_calls``). The answer turn adds ``answer_format``, ``gold``, ``correct``,
``method`` and the episode's totals ``episode_tool_calls`` / ``episode_tool_errors``.

Tool declarations reach the model two ways. ``env.tool_schemas()`` gives the OpenAI-style
schemas, which the rollout passes to the chat template as ``tools=``; templates that read them
(Qwen2.5, Qwen3, Llama-3.1...) declare them in their own words. SmolLM2's ChatML template
ignores ``tools``, so by default (``describe_tools=True``) the system message also lists the
schemas and the call format. Set ``describe_tools=False`` with a template that renders
``tools``, or the model reads the declarations twice.

Sync tools run on a thread pool private to the env (``tool_threads`` workers, by default
``max_tool_calls_per_turn``), not on asyncio's default executor: that one is shared by every
env on the event loop and has ``min(32, cpu_count + 4)`` threads, so 64 concurrent episodes
calling a slow sync tool would queue behind 6 threads on a 2-core machine
(``bench/rollout_concurrency.py`` measures it). Async tools (the ``python`` sandbox) are awaited
on the loop. A sync tool that times out cannot be interrupted; its thread runs on.

Options of ``reset``: ``{"question" (or "prompt"): str | list of messages, "answer" (or
"label"): str}`` (a GSM8K ``"... #### 72"`` label counts as ``72``); a list of messages is used
as the opening, with the system message prepended when it has none. Without a question a row
of ``samples`` (default: the 24 word problems of ``envs/data/tool_use_sample.jsonl``) is drawn
with the seeded RNG, or picked with ``{"index": i}``.

Example::

    >>> env = ToolUseEnv(tools=("calculator",))
    >>> messages, info = env.reset(options={"question": "What is 17 * 23?", "answer": "391"})
    >>> [m["role"] for m in messages], [s["function"]["name"] for s in env.tool_schemas()]
    (['system', 'user'], ['calculator'])
    >>> call = '<tool_call>{"name": "calculator", "arguments": {"expression": "17*23"}}</tool_call>'
    >>> obs, reward, terminated, truncated, info = env.step(call)
    >>> obs, info["tool_calls"], info["tool_errors"]
    ([{'role': 'tool', 'name': 'calculator', 'content': '391'}], 1, 0)
    >>> env.step("17 * 23 = \\\\boxed{391}")[1:3]
    (1.0, True)
    >>> env.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import inspect
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.env.shaping import combine, shaping_weights
from agentrl.tool import HermesParser, ToolExecutor, function_schema, tool_name
from agentrl.tool.schema import type_hints
from envs._math_grading import grade, parse_label
from envs.math import load_samples

__all__ = ["BUILTIN_TOOLS", "SAMPLES", "SHAPING_TERMS", "SYSTEM_PROMPT", "ToolUseEnv", "describe_tools"]

SAMPLES = Path(__file__).parent / "data" / "tool_use_sample.jsonl"
"""The built-in word problems (``{"question", "answer"}`` a line)."""
BUILTIN_TOOLS = ("calculator", "python")
"""Tool names ``ToolUseEnv(tools=...)`` accepts besides callables."""
SYSTEM_PROMPT = (
    "Solve the problem. Use the tools when they help you compute. When you know the answer, reply "
    "without a tool call and put the final answer in \\boxed{}, for example \\boxed{42}."
)
"""The default system message (the tool block follows it when ``describe_tools``)."""
_EXPLICIT_FORMATS = ("boxed", "answer_tag", "####")
SHAPING_TERMS = {"tool_call": "w on the first turn whose tool calls all run without an error, once an episode"}
"""The shaping terms ``ToolUseEnv(shaping=...)`` takes (see the module doc)."""


def describe_tools(schemas: Sequence[Mapping[str, Any]]) -> str:
    """The system-message text that declares ``schemas`` and the hermes call format.

    Example::

        >>> from tools.calculator import calculator
        >>> print(describe_tools([function_schema(calculator)]).splitlines()[-3])
        {"name": "calculator", "arguments": {"expression": "..."}}
    """
    lines = [json.dumps(s.get("function", s), ensure_ascii=False) for s in schemas]
    first: Mapping[str, Any] = schemas[0].get("function", schemas[0]) if schemas else {"name": "tool", "parameters": {}}
    required = first.get("parameters", {}).get("required", [])
    example = {"name": first["name"], "arguments": {k: "..." for k in required}}
    return (
        "You can call these tools, given as JSON schemas:\n<tools>\n" + "\n".join(lines) + "\n</tools>\n"
        "To call a tool, write a JSON object with its name and arguments between <tool_call> and "
        "</tool_call>, for example:\n<tool_call>\n" + json.dumps(example) + "\n</tool_call>\n"
        "You may call several tools in one message. The results come back in tool messages."
    )


class ToolUseEnv(TextEnv):
    """Tool calling with checked answers (see the module docstring).

    Args:
        tools: Tool names from :data:`BUILTIN_TOOLS` or typed functions (sync or async).
        tool_timeout: Seconds each tool call may take.
        max_tool_calls_per_turn: Calls run per turn; further calls get one error message.
        tool_threads: Worker threads for sync tools, private to this env (None:
            ``max_tool_calls_per_turn``). 0 runs them on the event loop's shared default
            executor instead (see the module docstring for why that is slow at scale).
        max_result_chars: Longer tool outputs are cut (head and tail kept).
        python_sandbox: Configuration of the ``python`` tool (a
            :class:`tools.python_exec.PythonSandbox`; default: 5 s, 512 MB, no network).
        system_prompt: The system message (None: none, unless ``describe_tools``).
        describe_tools: Append the tool schemas and the call format to the system message.
        format_reward: Reward of a wrong answer given in an explicit format.
        tool_error_penalty: Reward subtracted per tool error, on the turn it happens.
        fallback_last_number: Grade the last number of an answer with no explicit format.
        samples: What ``reset`` without a question draws from: None (the built-in problems),
            a JSONL path or a list of ``{"question", "answer"}`` dicts.
        shaping: Shaping term -> weight (:data:`SHAPING_TERMS`).
    """

    def __init__(
        self,
        *,
        tools: Sequence[str | Callable[..., Any]] = BUILTIN_TOOLS,
        tool_timeout: float = 10.0,
        max_tool_calls_per_turn: int = 8,
        tool_threads: int | None = None,
        max_result_chars: int = 4000,
        python_sandbox: Any = None,
        system_prompt: str | None = SYSTEM_PROMPT,
        describe_tools: bool = True,
        format_reward: float = 0.0,
        tool_error_penalty: float = 0.0,
        fallback_last_number: bool = True,
        samples: str | Sequence[Mapping[str, Any]] | None = None,
        shaping: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_tool_calls_per_turn, bool) or not isinstance(max_tool_calls_per_turn, int) \
                or max_tool_calls_per_turn < 1:
            raise ValueError(f"max_tool_calls_per_turn must be an integer >= 1; got {max_tool_calls_per_turn!r}")
        if tool_threads is not None and (not isinstance(tool_threads, int) or tool_threads < 0):
            raise ValueError(f"tool_threads must be None or an integer >= 0; got {tool_threads!r}")
        if tool_error_penalty < 0 or format_reward < 0:
            raise ValueError(f"tool_error_penalty and format_reward must be >= 0; got {tool_error_penalty!r}, "
                             f"{format_reward!r}")
        if isinstance(tools, (str, bytes)) or not tools:
            raise ValueError(f"tools must be a non-empty list of names {list(BUILTIN_TOOLS)} or functions; "
                             f"got {tools!r}")
        self.tools = tuple(_resolve_tool(t, python_sandbox, tool_timeout) for t in tools)
        self.max_tool_calls_per_turn = max_tool_calls_per_turn
        self.tool_threads = max_tool_calls_per_turn if tool_threads is None else tool_threads
        self._pool: ThreadPoolExecutor | None = None
        runnable = {tool_name(t): self._threaded(t) if self.tool_threads and not _is_async(t) else t
                    for t in self.tools}
        self.executor = ToolExecutor(runnable, timeout=tool_timeout, max_concurrency=max_tool_calls_per_turn,
                                     max_result_chars=max_result_chars)
        self.parser = HermesParser()
        parts = [system_prompt, describe_tools and _describe(self.tools)]
        self.system_prompt = "\n\n".join(p for p in parts if p) or None
        self.format_reward, self.tool_error_penalty = float(format_reward), float(tool_error_penalty)
        self.fallback_last_number = fallback_last_number
        self.samples = load_samples(str(SAMPLES) if samples is None else samples)
        self.shaping = shaping_weights(shaping, SHAPING_TERMS, "ToolUse")
        self.label: str | None = None
        self.expression: str | None = None
        self.done = False
        self.episode_tool_calls = self.episode_tool_errors = 0
        self.paid_tool_call = False

    @property
    def tool_names(self) -> list[str]:
        return self.executor.names

    # -- the episode -----------------------------------------------------------------------
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.seed_rng(seed)
        options = dict(options or {})
        question = options.get("question", options.get("prompt"))
        index = None
        if question is not None:
            label = options.get("answer") if options.get("answer") is not None else options.get("label")
            if label is None:
                raise ValueError(f"reset options with a question need 'answer' (or 'label'); "
                                 f"got keys {sorted(options)}")
        else:
            n = len(self.samples)
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, n))
            if not 0 <= index < n:
                raise IndexError(f"options['index'] must be in [0, {n}); got {index}")
            question, label = self.samples[index]["question"], self.samples[index]["answer"]
        self.label, self.done = str(label), False
        self.expression = options.get("expression") if index is None else self.samples[index].get("expression")
        self.episode_tool_calls = self.episode_tool_errors = 0
        self.paid_tool_call = False
        return self._opening(question), {"gold": parse_label(self.label), "index": index, "tools": self.tool_names}

    async def astep(self, action: str):
        if self.label is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, _info(0, 0, None, error="the episode is over; call reset()")
        action = action if isinstance(action, str) else str(action)
        calls = self.parser.parse(action)  # linear, capped: cheap even on a megabyte of junk
        if calls:
            return await self._call_tools(calls)
        return await asyncio.to_thread(self._answer, action)  # grading may wait on a symbolic check

    async def _call_tools(self, calls: list) -> tuple:
        run, skipped = calls[: self.max_tool_calls_per_turn], calls[self.max_tool_calls_per_turn:]
        results = await self.executor.execute(run)
        messages = [r.to_message() for r in results]
        kinds = Counter(r.error_kind for r in results if r.error_kind)
        if skipped:
            messages.append({"role": "tool", "name": skipped[0].name, "content": (
                f"Error: {len(skipped)} more tool call(s) in your message were not run: at most "
                f"{self.max_tool_calls_per_turn} calls per turn. Make fewer calls at once.")})
            kinds["too_many_calls"] += 1
        errors = sum(kinds.values())
        self.episode_tool_calls += len(calls)
        self.episode_tool_errors += errors
        earned = {"tool_call": 0.0 if errors or self.paid_tool_call else 1.0}
        self.paid_tool_call = self.paid_tool_call or not errors
        reward, parts = combine(0.0, earned, self.shaping)
        parts |= {"format": 0.0, "tool_errors": -self.tool_error_penalty * errors if errors else 0.0}
        info = _info(len(calls), errors, None, tool_error_kinds=dict(sorted(kinds.items())),
                     tool_calls_skipped=len(skipped), reward_components=parts)
        return messages, reward + parts["tool_errors"], False, False, info

    def _answer(self, action: str) -> tuple:
        self.done = True
        correct, graded = grade(action, self.label or "", fallback_last_number=self.fallback_last_number)
        formatted = not correct and graded["answer_format"] in _EXPLICIT_FORMATS
        reward, parts = combine(1.0 if correct else 0.0, {}, self.shaping)
        parts |= {"format": self.format_reward if formatted else 0.0, "tool_errors": 0.0}
        info = _info(0, 0, graded.pop("extracted"), **graded, episode_tool_calls=self.episode_tool_calls,
                     episode_tool_errors=self.episode_tool_errors, reward_components=parts)
        return [], reward + parts["format"], True, False, info

    # -- demonstrations and exploits -------------------------------------------------------------
    def oracle(self) -> str:
        """The reply that solves the current state: a calculator call on the row's ``expression`` (when it
        has one and no call was made yet), then the answer in ``\\boxed{}``."""
        if self.label is None:
            raise RuntimeError("call reset() before oracle()")
        if self.expression and not self.episode_tool_calls and "calculator" in self.tool_names:
            call = {"name": "calculator", "arguments": {"expression": str(self.expression)}}
            return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        return f"\\boxed{{{parse_label(self.label)}}}"

    def exploits(self) -> dict[str, Callable[[], str]]:
        """Scripted policies that collect the shaping without a right answer
        (:func:`agentrl.env.shaping.check_shaping`): one valid call then a wrong answer; calls every turn."""
        name = self.tool_names[0]
        argument = "expression" if name == "calculator" else "code"
        value = "1+1" if name == "calculator" else "print(2)"
        call = f'<tool_call>{{"name": "{name}", "arguments": {{"{argument}": "{value}"}}}}</tool_call>'
        wrong = f"\\boxed{{{parse_label(self.label or '0')}1}}"
        return {"call_then_wrong": lambda: wrong if self.episode_tool_calls else call, "call_forever": lambda: call}

    def _opening(self, question: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(question, list):  # already a chat prompt
            messages = [dict(m) for m in question]
            has_system = any(m.get("role") == "system" for m in messages)
            return messages if has_system or not self.system_prompt else [self._system(), *messages]
        return ([self._system()] if self.system_prompt else []) + [{"role": "user", "content": str(question)}]

    def _system(self) -> dict[str, Any]:
        return {"role": "system", "content": self.system_prompt}

    # -- sync tools on a private thread pool ------------------------------------------------
    def _threaded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """An async twin of ``fn`` (same name, signature, docs and schema) that runs it on this
        env's pool."""
        env = self

        async def run(**kwargs: Any) -> Any:
            if env._pool is None:
                env._pool = ThreadPoolExecutor(env.tool_threads, thread_name_prefix=f"{type(env).__name__}-tool")
            return await asyncio.get_running_loop().run_in_executor(env._pool, functools.partial(fn, **kwargs))

        run.__name__ = run.__qualname__ = tool_name(fn)
        run.__doc__ = inspect.getdoc(fn.func if isinstance(fn, functools.partial) else fn)
        run.__annotations__ = dict(type_hints(fn))  # resolved here: the wrapper's module differs
        run.__wrapped__ = fn  # type: ignore[attr-defined]  # inspect.signature follows it
        return run

    def close(self) -> None:
        """Stop the tool threads (a call still running finishes on its own) and the private loop."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def _info(tool_calls: int, tool_errors: int, extracted: str | None, **extra: Any) -> dict[str, Any]:
    return {"tool_calls": tool_calls, "tool_errors": tool_errors, "extracted": extracted, **extra}


def _describe(tools: Sequence[Callable[..., Any]]) -> str:
    return describe_tools([function_schema(t) for t in tools])


def _resolve_tool(tool: str | Callable[..., Any], python_sandbox: Any, tool_timeout: float) -> Callable[..., Any]:
    if callable(tool):
        tool_name(tool)  # fails early, with a clear message, for lambdas and the like
        return tool
    if tool == "calculator":
        from tools.calculator import calculator

        return calculator
    if tool == "python":
        from tools.python_exec import PythonSandbox

        sandbox = python_sandbox or PythonSandbox(timeout=min(5.0, tool_timeout), memory_mb=512)
        if isinstance(sandbox, PythonSandbox):  # the answer keys stay hidden, even with site_packages=True
            sandbox = dataclasses.replace(sandbox, hidden_paths=(*sandbox.hidden_paths, str(SAMPLES.parent)))
        return sandbox.as_tool("python")
    close = difflib.get_close_matches(str(tool), BUILTIN_TOOLS, n=1)
    raise ValueError(f"unknown tool {tool!r}; expected one of {list(BUILTIN_TOOLS)} or a typed function"
                     + (f" (did you mean {close[0]!r}?)" if close else ""))


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
