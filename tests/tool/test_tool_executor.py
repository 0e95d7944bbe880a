"""ToolExecutor: argument checks, concurrency, timeouts and errors that come back as messages."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Literal

import pytest

from agentrl.tool import ERROR_KINDS, HermesParser, ToolCall, ToolExecutor, summarize


def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


async def slow_echo(text: str, delay: float = 0.0) -> str:
    """Echo after a delay.

    Args:
        text: What to echo.
        delay: Seconds to wait.
    """
    await asyncio.sleep(delay)
    return text


def boom(message: str) -> str:
    """Always fails."""
    raise RuntimeError(message)


def pick(color: Literal["red", "blue"], sizes: tuple[int, ...] = ()) -> dict:
    """Return a dict."""
    return {"color": color, "sizes": list(sizes), "type": type(sizes).__name__}


async def test_results_are_in_call_order_and_calls_run_concurrently():
    ex = ToolExecutor([slow_echo], timeout=5.0, max_concurrency=8)
    calls = [ToolCall("slow_echo", {"text": str(i), "delay": 0.3 - 0.05 * i}) for i in range(5)]
    start = time.perf_counter()
    results = await ex.execute(calls)
    elapsed = time.perf_counter() - start
    assert [r.content for r in results] == ["0", "1", "2", "3", "4"]
    assert all(r.ok and r.error_kind is None for r in results)
    assert elapsed < 0.6  # concurrent: about the longest delay, not the 1.0 s sum


async def test_concurrency_limit_is_respected_for_sync_tools():
    active, peak, lock = 0, 0, threading.Lock()

    def work(i: int) -> int:
        """Work."""
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return i

    ex = ToolExecutor([work], max_concurrency=2)
    results = await ex.execute([ToolCall("work", {"i": i}) for i in range(6)])
    assert [r.content for r in results] == [str(i) for i in range(6)]
    assert peak == 2


async def test_every_error_kind_becomes_a_readable_message_and_is_counted():
    ex = ToolExecutor([add, slow_echo, boom], timeout=0.2)
    calls = [
        ToolCall("", {}, "<tool_call>{bad</tool_call>", error="invalid JSON in tool call"),
        ToolCall("ad", {"a": 1}),
        ToolCall("add", {"a": "one"}),
        ToolCall("add", {"b": 2, "c": 3}),
        ToolCall("boom", {"message": "disk on fire"}),
        ToolCall("slow_echo", {"text": "late", "delay": 5.0}),
        ToolCall("add", {"a": 2}),
    ]
    results = await ex.execute(calls)
    kinds = [r.error_kind for r in results]
    assert kinds == ["parse_error", "unknown_tool", "bad_arguments", "bad_arguments", "exception", "timeout", None]
    texts = [r.content for r in results]
    assert texts[0] == "Error: malformed tool call: invalid JSON in tool call"
    assert texts[1] == "Error: unknown tool 'ad' (did you mean 'add'?). Available tools: add, slow_echo, boom"
    assert texts[2] == ("Error: bad arguments for tool 'add': argument 'a' must be integer, got string 'one'. "
                        "Usage: add(a: integer, b: integer = 1)")
    assert "missing required argument 'a' (integer)" in texts[3] and "unexpected argument 'c'" in texts[3]
    assert texts[4] == "Error: tool 'boom' raised RuntimeError: disk on fire"
    assert texts[5] == "Error: tool 'slow_echo' timed out after 0.2 s"
    assert texts[6] == "3"
    assert all(not r.ok for r in results[:6]) and results[6].ok
    assert ex.stats == {"calls": 7, "errors": 6, "parse_error": 1, "unknown_tool": 1, "bad_arguments": 2,
                        "exception": 1, "timeout": 1}
    assert summarize(results) == ex.stats
    assert set(ERROR_KINDS) <= set(ex.stats)
    ex.reset_stats()
    assert set(ex.stats.values()) == {0}


async def test_tool_message_and_result_formatting():
    ex = ToolExecutor({"choose": pick, "nothing": lambda: None}, max_result_chars=50)
    (r,) = await ex.execute([ToolCall("choose", {"color": "red", "sizes": [1, 2]})])
    assert r.content == '{"color": "red", "sizes": [1, 2], "type": "tuple"}'  # converted to the annotated tuple
    assert r.to_message() == {"role": "tool", "name": "choose", "content": r.content}
    (r,) = await ex.execute([ToolCall("choose", {"color": "green"})])
    assert r.error_kind == "bad_arguments" and "one of 'red', 'blue'" in r.content
    (r,) = await ex.execute([ToolCall("nothing", {})])
    assert r.ok and r.content == ""
    long = ToolExecutor([slow_echo], max_result_chars=40)
    (r,) = await long.execute([ToolCall("slow_echo", {"text": "é" * 1000})])
    assert len(r.content) < 100 and "characters omitted" in r.content and r.content.startswith("é" * 20)


async def test_exceptions_never_propagate():
    def exits(code: int) -> str:
        """Calls sys.exit."""
        raise SystemExit(code)

    def raises_timeout() -> str:
        """A tool whose own operation timed out."""
        raise TimeoutError("upstream took too long")

    ex = ToolExecutor([exits, raises_timeout], timeout=5.0)
    r1, r2 = await ex.execute([ToolCall("exits", {"code": 3}), ToolCall("raises_timeout", {})])
    assert r1.error_kind == "exception" and "SystemExit" in r1.content
    assert r2.error_kind == "exception" and "TimeoutError: upstream took too long" in r2.content


def test_execute_sync_outside_a_loop_and_integer_floats():
    ex = ToolExecutor([add])
    assert [r.content for r in ex.execute_sync([ToolCall("add", {"a": 2.0, "b": 3})])] == ["5"]
    assert ex.execute_sync([ToolCall("add", {"a": 2.5})])[0].error_kind == "bad_arguments"
    assert ex.execute_sync([ToolCall("add", {"a": True})])[0].error_kind == "bad_arguments"
    assert ex.execute_sync([ToolCall("add", {"a": 1})])[0].content == "2"  # a second event loop works


def test_schemas_and_configuration_errors():
    ex = ToolExecutor([add, slow_echo])
    assert ex.names == ["add", "slow_echo"]
    assert [s["function"]["name"] for s in ex.schemas] == ["add", "slow_echo"]
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        ToolExecutor([add, add])
    with pytest.raises(ValueError, match="timeout > 0"):
        ToolExecutor([add], timeout=0)
    with pytest.raises(TypeError, match="cannot derive a tool name"):
        ToolExecutor([lambda: 1])
    with pytest.raises(TypeError, match="parameter 'x' has no type annotation"):
        ToolExecutor({"f": lambda x: x})


async def test_parser_to_messages_end_to_end():
    text = ('<tool_call>{"name": "add", "arguments": {"a": 40, "b": 2}}</tool_call>'
            '<tool_call>{"name": "add", "arguments": {"a": </tool_call>')
    results = await ToolExecutor([add]).execute(HermesParser().parse(text))
    assert [m["content"] for m in (r.to_message() for r in results)][0] == "42"
    assert results[1].error_kind == "parse_error" and "invalid JSON" in results[1].content


def test_error_messages_stay_bounded_whatever_the_model_sends():
    """An error quotes the call; a giant name or thousands of bad arguments must not flood the context."""
    ex = ToolExecutor([add], max_result_chars=None)
    name = "x" * 200_000
    text = '<tool_call>{"name": "%s", "arguments": {}}</tool_call>' % name
    unknown = ex.execute_sync(HermesParser().parse(text))[0]
    assert unknown.error_kind == "unknown_tool" and len(unknown.content) < 500
    assert "(200000 characters)" in unknown.content and "Available tools: add" in unknown.content
    extra = {f"k{i}": i for i in range(20_000)} | {"k" * 100_000: 1}
    bad = ex.execute_sync([ToolCall("add", {"a": "one", **extra})])[0]
    assert bad.error_kind == "bad_arguments" and len(bad.content) < 3000
    assert "argument 'a' must be integer" in bad.content and "more problems" in bad.content
    assert bad.content.endswith("Usage: add(a: integer, b: integer = 1)")


def test_error_messages_are_cut_even_without_a_result_limit():
    def fails(n: int) -> str:
        """Raises with a long message."""
        raise ValueError("why " * n)

    class Parser:  # a parser of one's own may say anything about a malformed call
        def parse(self, text: str) -> list[ToolCall]:
            return [ToolCall("", {}, text, "bad: " + text)]

    ex = ToolExecutor([fails], max_result_chars=None)
    r = ex.execute_sync([ToolCall("fails", {"n": 100_000})])[0]
    assert r.error_kind == "exception" and len(r.content) < 2200 and "characters omitted" in r.content
    r = ex.execute_sync(Parser().parse("z" * 1_000_000))[0]
    assert r.error_kind == "parse_error" and len(r.content) < 4200 and r.content.startswith("Error: malformed")


def test_deeply_nested_arguments_or_results_are_errors_not_exceptions():
    """A call built without the depth-capped parser (an adapter, a parser of one's own) still never raises."""
    def nest(n: int) -> list:
        """A list nested n deep.

        Args:
            n: Depth.
        """
        value: list = []
        for _ in range(n):
            value = [value]
        return value

    ex = ToolExecutor([add, nest])
    bad, deep, shallow = ex.execute_sync([ToolCall("add", {"a": nest(100_000)}), ToolCall("nest", {"n": 100_000}),
                                          ToolCall("nest", {"n": 2})])
    assert bad.error_kind == "bad_arguments" and "nested too deeply" in bad.content
    assert deep.error_kind == "exception" and "returned a list nested too deeply" in deep.content
    assert shallow.ok and shallow.content == "[[[]]]"


def test_a_result_that_cannot_be_printed_is_an_error_not_an_exception():
    class NoText:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def power(n: int) -> int:
        """Ten to the n.

        Args:
            n: Exponent.
        """
        return 10 ** n

    def opaque() -> object:
        """An object without a text form."""
        return NoText()

    huge, broken = ToolExecutor([power, opaque]).execute_sync([ToolCall("power", {"n": 5000}), ToolCall("opaque", {})])
    assert huge.error_kind == "exception" and "returned a int that cannot be shown as text (ValueError" in huge.content
    assert broken.error_kind == "exception" and "(RuntimeError: no text)" in broken.content


def test_an_exception_whose_message_cannot_be_printed_is_still_reported():
    class Mute(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    def mute() -> str:
        """Raises an exception without a printable message."""
        raise Mute()

    (r,) = ToolExecutor([mute]).execute_sync([ToolCall("mute", {})])
    assert r.error_kind == "exception" and r.content == "Error: tool 'mute' raised Mute: (its message cannot be shown)"
